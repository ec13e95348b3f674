"""The docker target: the guide's ``docker run`` of a packaged image, done right.

Publishes the scoring port and the debug port on 127.0.0.1, mounts the user's source folder at
``/var/azureml-app`` (not the translated guide's ``/var/azureml-apps``), loads score.py through
``aml_debug_entry.py`` so debugpy starts in the server's worker, starts the services with
``runsvdir /var/runit``, and attaches to ``localhost`` (never ``0.0.0.0``).

In: the request and its deployment (the image, the folders). Out: the container's output lines
and announcements, and its end (its status, the last line it wrote), reported to the session.
``docker run`` is followed in the foreground (its status is the container's), under a name of
its own per session so two sessions never collide, and the kernel's watchdog removes the
container if the kernel dies. Stop ends the client first (so nothing can create the container
afterwards, even mid-pull), then removes the container.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from aml_debug_magics import reaper
from aml_debug_magics.deploy.failures import RecentFailures, tell_row
from aml_debug_magics.deploy.local import DEBUGGING_TIMEOUT_S, Deployment, post_json
from aml_debug_magics.node.announce import Announcement, Failure
from aml_debug_magics.records import Status

if TYPE_CHECKING:
    from aml_debug_magics.records import DebugRequest
    from aml_debug_magics.session import DebugSession

APP_ROOT = "/var/azureml-app"
TOOLS = "/var/aml-debug"  # the bootstrap's files, mounted read-only
MODEL_ROOT = "/var/azureml-models/debug"
SCORING_PORT_IN_IMAGE = 5001
DEBUG_PORT_IN_IMAGE = 5678
DOCKER_RUN_FAILED = 125  # docker's own status when the container could not be created
REMOVE_TIMEOUT = 60.0


def container_name(step: str) -> str:
    """A container name of this session's own (``aml-debug-score-1a2b3c4d``): two sessions,
    in one kernel or two, never ask the engine for the same name."""
    readable = re.sub(r"[^a-z0-9_.-]+", "-", step.lower()).strip("-.") or "app"
    return f"aml-debug-{readable}-{uuid.uuid4().hex[:8]}"


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
    """The command that runs the image for debugging (its output is the container's, its
    status the container's), and the one that removes the container."""
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
        "docker", "run", "--rm", "--name", name,
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
    return [run, ["docker", "rm", "--force", name]]


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
    """Runs the image with Docker on this machine, debugpy in its scoring worker."""

    def __init__(self, request: DebugRequest, deployment: Deployment) -> None:
        self.request = request
        self.deployment = deployment
        self.name = request.steps[0].name
        self.container = container_name(self.name)
        self.debug_port = request.port or DEBUG_PORT_IN_IMAGE
        self.tools = ship_entry(Path(tempfile.mkdtemp(prefix="aml_debug_tools_")))
        self.commands = docker_commands(
            request, deployment, self.tools, self.debug_port, self.container
        )
        self._client: subprocess.Popen[str] | None = None
        self._follower: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.failures = RecentFailures()  # the requests run() failed, newest first

    def start(self, events: DebugSession) -> None:
        shown = "\n".join(shlex.join(command) for command in self.commands)
        problem = engine_problem()
        if problem is not None:
            events.target_note(f"{problem}: on a machine with Docker, run:\n{shown}")
            events.step_status(self.name, Status.NOT_RUN, f"{problem}; the commands are above")
            events.target_done(failed=True)
            return
        with self._lock:
            if self._stopping.is_set():
                return
            reaper.watch_container(self.container)  # before it exists: a pull may take long
            self._client = subprocess.Popen(
                self.commands[0], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True, start_new_session=True,
            )
            reaper.watch(self._client.pid)
        events.target_note(f"container {self.container}:\n{shown}")
        events.service_update(
            scoring_url=f"http://127.0.0.1:{self.deployment.scoring_port}/score", health="starting"
        )
        events.step_status(self.name, Status.STARTING, f"container {self.container} starting")
        self._follower = threading.Thread(
            target=self._follow, args=(events, self._client), name="aml-debug-docker", daemon=True
        )
        self._follower.start()

    def _follow(self, events: DebugSession, client: subprocess.Popen[str]) -> None:
        from aml_debug_magics.node.announce import LogReader

        reader = LogReader()
        last = ""
        assert client.stdout is not None
        for raw in client.stdout:
            line = raw.rstrip("\n")
            last = line.strip() or last
            self.failures.line(line)
            events.step_output(self.name, line)
            for news in reader.feed(line):
                if isinstance(news, Failure):  # run() raised: a 500, and the server serves on
                    self.failures.failed(news)
                    tell_row(events, self.name, news)
                    continue
                if isinstance(news, Announcement):
                    news = self.as_seen_from_here(news)
                events.step_news(self.name, news)
        code = client.wait()
        reaper.forget(client.pid)
        if self._stopping.is_set():
            return
        reaper.forget_container(self.container)  # --rm: the engine removed it as it ended
        events.service_update(health="down")
        if code == 0:
            events.step_status(self.name, Status.FINISHED, "the container ended (status 0)",
                               exit_code=0)
        else:
            what = "docker run failed" if code == DOCKER_RUN_FAILED else "the container ended"
            detail = f"{what} (status {code})" + (f": {last}" if last else "")
            events.step_status(self.name, Status.FAILED, detail, exit_code=code)
        events.target_done(failed=code != 0)

    def as_seen_from_here(self, news: Announcement) -> Announcement:
        """The container's announcement, pointed at the published port on localhost."""
        return dataclasses.replace(news, addresses=("localhost",), port=self.debug_port)

    def score(self, body: str) -> tuple[int, str]:
        return post_json(f"http://127.0.0.1:{self.deployment.scoring_port}/score", body)

    def dispose(self) -> None:
        """The session is replaced or the kernel ends: the copied node files go."""
        shutil.rmtree(self.tools, ignore_errors=True)

    def stop(self) -> None:
        """End the container: its client first (then nothing can create it any more, even
        mid-pull), then the container itself. Safe to call more than once."""
        with self._lock:
            self._stopping.set()
            client, self._client = self._client, None
        if client is None:
            return
        if client.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(client.pid, signal.SIGKILL)  # the client only: the container is apart
        client.wait()
        reaper.forget(client.pid)
        try:
            removed = subprocess.run(self.commands[1], stdin=subprocess.DEVNULL,
                                     capture_output=True, text=True, timeout=REMOVE_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired):
            removed = None  # the watchdog still has it: removed when the kernel ends
        if removed and (removed.returncode == 0 or "No such container" in removed.stderr):
            reaper.forget_container(self.container)
        if self._follower is not None and self._follower is not threading.current_thread():
            self._follower.join(timeout=10)
