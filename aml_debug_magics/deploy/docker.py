"""The docker target: the guide's ``docker run`` of a packaged image, done right.

Publishes the scoring port and the debug port on 127.0.0.1, mounts the user's source folder at
``/var/azureml-app`` (not the translated guide's ``/var/azureml-apps``), loads score.py through
``aml_debug_entry.py`` so debugpy starts in the server's worker, starts the services with
``runsvdir /var/runit``, and attaches to ``localhost`` (never ``0.0.0.0``).
"""

from __future__ import annotations

import dataclasses
import shlex
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from aml_debug_magics.deploy.local import DEBUGGING_TIMEOUT_S, Deployment, post_json
from aml_debug_magics.node.announce import Announcement
from aml_debug_magics.records import Status

if TYPE_CHECKING:
    from aml_debug_magics.records import DebugRequest
    from aml_debug_magics.session import DebugSession

APP_ROOT = "/var/azureml-app"
TOOLS = "/var/aml-debug"  # the bootstrap's files, mounted read-only
MODEL_ROOT = "/var/azureml-models/debug"
SCORING_PORT_IN_IMAGE = 5001
DEBUG_PORT_IN_IMAGE = 5678


def ship_entry(folder: Path) -> Path:
    """Write the entry script and the bootstrap's files (standalone names) into ``folder``."""
    from aml_debug_magics.node.bootstrap import ENTRY_SHIPPED_NAMES, SHIPPED_NAMES
    from aml_debug_magics.targets.environment import NODE_FILES

    for source, shipped in {**SHIPPED_NAMES, **ENTRY_SHIPPED_NAMES}.items():
        shutil.copyfile(NODE_FILES / source, folder / shipped)
    return folder


def docker_commands(
    request: DebugRequest, deployment: Deployment, tools: Path, debug_port: int, name: str
) -> list[list[str]]:
    """The commands that run the image for debugging, and follow its output."""
    script = deployment.entry_script.relative_to(deployment.source_dir).as_posix()
    environment = {
        "AZUREML_ENTRY_SCRIPT": f"{TOOLS}/aml_debug_entry.py",
        "AML_DEBUG_USER_SCRIPT": f"{APP_ROOT}/{script}",
        "AML_DEBUG_SOURCE_ROOT": APP_ROOT,
        "AML_DEBUG_LISTEN": f"0.0.0.0:{DEBUG_PORT_IN_IMAGE}",
        "AML_DEBUG_TIMEOUT": f"{request.timeout:g}",
        "AML_DEBUG_WAIT_IN_INIT": "1" if deployment.wait_in_init else "0",
        "AML_DEBUG_JUST_MY_CODE": "1" if request.just_my_code else "0",
        "SCORING_TIMEOUT_MS": str(DEBUGGING_TIMEOUT_S * 1000),
        "WORKER_TIMEOUT": str(DEBUGGING_TIMEOUT_S),
        "PYTHONPATH": TOOLS,
    }
    run = [
        "docker", "run", "--detach", "--rm", "--name", name,
        "-p", f"127.0.0.1:{deployment.scoring_port}:{SCORING_PORT_IN_IMAGE}",
        "-p", f"127.0.0.1:{debug_port}:{DEBUG_PORT_IN_IMAGE}",
        "-v", f"{deployment.source_dir}:{APP_ROOT}",
        "-v", f"{tools}:{TOOLS}:ro",
    ]
    if deployment.model_dir is not None:
        run += ["-v", f"{deployment.model_dir}:{MODEL_ROOT}:ro"]
        environment["AZUREML_MODEL_DIR"] = MODEL_ROOT
    for key, value in environment.items():
        run += ["-e", f"{key}={value}"]
    run += [deployment.image or "IMAGE", "runsvdir", "/var/runit"]
    return [run, ["docker", "logs", "--follow", name]]


def engine_problem() -> str | None:
    """None when a Docker engine answers; else one line saying why not."""
    if shutil.which("docker") is None:
        return "the docker command is not installed"
    try:
        answer = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            capture_output=True, text=True, timeout=15,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"docker version failed ({error})"
    if answer.returncode != 0 or not answer.stdout.strip():
        lines = (answer.stderr or answer.stdout).strip().splitlines()
        return f"no Docker engine answers ({lines[-1] if lines else 'no server version'})"
    return None


class DockerDeployTarget:
    def __init__(self, request: DebugRequest, deployment: Deployment) -> None:
        self.request = request
        self.deployment = deployment
        self.name = request.steps[0].name
        self.container = f"aml-debug-{self.name}".lower()
        self.debug_port = request.port or DEBUG_PORT_IN_IMAGE
        self.tools = ship_entry(Path(tempfile.mkdtemp(prefix="aml_debug_tools_")))
        self.commands = docker_commands(
            request, deployment, self.tools, self.debug_port, self.container
        )
        self._logs: subprocess.Popen[str] | None = None

    def start(self, events: DebugSession) -> None:
        shown = "\n".join(shlex.join(command) for command in self.commands)
        problem = engine_problem()
        if problem is not None:
            events.target_note(f"{problem}: on a machine with Docker, run:\n{shown}")
            events.step_status(self.name, Status.NOT_RUN, f"{problem}; the commands are above")
            events.target_done(failed=True)
            return
        started = subprocess.run(self.commands[0], capture_output=True, text=True)
        if started.returncode != 0:
            events.step_status(self.name, Status.FAILED, started.stderr.strip().splitlines()[-1])
            events.target_done(failed=True)
            return
        events.target_note(f"container {self.container}:\n{shown}")
        events.service_update(
            scoring_url=f"http://127.0.0.1:{self.deployment.scoring_port}/score", health="starting"
        )
        self._logs = subprocess.Popen(
            self.commands[1], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        threading.Thread(target=self._follow, args=(events,), daemon=True).start()

    def _follow(self, events: DebugSession) -> None:
        from aml_debug_magics.node.announce import LogReader

        reader = LogReader()
        for raw in self._logs.stdout:
            line = raw.rstrip("\n")
            events.step_output(self.name, line)
            for news in reader.feed(line):
                if isinstance(news, Announcement):
                    news = self.as_seen_from_here(news)
                events.step_news(self.name, news)

    def as_seen_from_here(self, news: Announcement) -> Announcement:
        """The container's announcement, pointed at the published port on localhost."""
        return dataclasses.replace(news, addresses=("localhost",), port=self.debug_port)

    def score(self, body: str) -> tuple[int, str]:
        return post_json(f"http://127.0.0.1:{self.deployment.scoring_port}/score", body)

    def dispose(self) -> None:
        """The session is replaced or the kernel ends: the copied node files go."""
        shutil.rmtree(self.tools, ignore_errors=True)

    def stop(self) -> None:
        if self._logs is not None:
            subprocess.run(["docker", "rm", "--force", self.container], capture_output=True)
            self._logs.terminate()
