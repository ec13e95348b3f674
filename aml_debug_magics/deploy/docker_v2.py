"""The docker target for an SDK v2 deployment: its environment's image, and the inference server's
own debug switch where the server in the image has one.

In: the request and a deployment read from an SDK v2 object (``deploy/sdk_v2.py``): the image,
the conda file, the code folder, the model, the environment variables. Out: what the docker
target reports (the container's lines, its end), and, before the container starts, where VS Code
must listen.

azureml-inference-server-http 1.x reads ``AZUREML_DEBUG_PORT`` (``server/config.py``) and, in each
worker, at import of ``server/entry.py``, calls ``debugpy.connect(PORT)`` (that is
127.0.0.1:PORT) then ``debugpy.wait_for_client()`` with no timeout; without debugpy it exits.
So the debugger is the side that listens: the container shares the host's network (``--network
host``, a Linux engine) to reach a VS Code listening on 127.0.0.1:PORT, and the server is bound to
127.0.0.1 (it binds every interface by default). The commands, in order:

1. ``docker build``: ``FROM`` the environment's image, its conda file applied (as Azure ML builds
   an environment's image), and debugpy added;
2. a probe: does the server in that image have the switch (its source names AZUREML_DEBUG_PORT)
   and is debugpy importable there;
3. ``docker run`` with ``AZUREML_DEBUG_PORT``, or, when the probe says no, the entry script that
   starts debugpy in the worker (``docker.py``'s way), on the same image;
4. ``docker rm --force`` at stop.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from aml_debug_magics.deploy.docker import (
    APP_ROOT,
    DEBUG_PORT_IN_IMAGE,
    DockerDeployTarget,
    engine_problem,
)
from aml_debug_magics.deploy.local import DEBUGGING_TIMEOUT_S
from aml_debug_magics.node.announce import Announcement
from aml_debug_magics.records import Status
from aml_debug_magics.targets.environment import DEBUGPY_REQUIREMENT

if TYPE_CHECKING:
    from aml_debug_magics.deploy.local import Deployment
    from aml_debug_magics.records import DebugRequest
    from aml_debug_magics.session import DebugSession

SWITCH = "AZUREML_DEBUG_PORT"
PROBE = (
    "import importlib.util as u, pathlib; s = u.find_spec('azureml_inference_server_http'); "
    "f = [p.read_text() for p in pathlib.Path(s.origin).parent.glob('server/*.py')] if s else []; "
    f"print('server-debug-switch', any('{SWITCH}' in t for t in f) and "
    "u.find_spec('debugpy') is not None)"
)
SERVE_ON_LOOPBACK = (  # azmlinfsrv, bound to 127.0.0.1 (on the host's network)
    "import sys; from azureml_inference_server_http import amlserver; "
    "amlserver.DEFAULT_HOST = '127.0.0.1'; sys.argv = ['azmlinfsrv', *sys.argv[1:]]; "
    "amlserver.run()"
)
PROBE_TIMEOUT = 120.0
BUILD_TIMEOUT = 3600.0


def dockerfile(image: str, conda_file: dict | None) -> str:
    """The image the deployment runs in, as Azure ML builds it, with debugpy added."""
    lines = [f"FROM {image}"]
    if conda_file:
        lines += ["COPY conda.yaml /tmp/aml-debug-conda.yaml",
                  "RUN conda env update -n base -f /tmp/aml-debug-conda.yaml"]
    lines.append(f"RUN python -m pip install --no-cache-dir '{DEBUGPY_REQUIREMENT}'")
    return "\n".join(lines) + "\n"


def build_folder(deployment: Deployment) -> tuple[Path, str]:
    """A build context (the Dockerfile and the conda file, as JSON, which YAML reads) and the
    tag of the image it builds, named by its content."""
    online = deployment.online
    text = dockerfile(deployment.image or "IMAGE", online.conda_file if online else None)
    folder = Path(tempfile.mkdtemp(prefix="aml_debug_image_"))
    (folder / "Dockerfile").write_text(text)
    conda = json.dumps(online.conda_file, indent=1, sort_keys=True) if online and \
        online.conda_file else ""
    if conda:
        (folder / "conda.yaml").write_text(conda + "\n")
    digest = hashlib.sha256((text + conda).encode()).hexdigest()[:12]
    return folder, f"aml-debug-{_readable(online.name if online else None)}:{digest}"


def model_mount(deployment: Deployment) -> tuple[list[str], dict[str, str]]:
    """The model mounted where Azure ML puts it (``azureml-models/NAME/VERSION/`` in the app
    root, under its own name) and ``AZUREML_MODEL_DIR``; nothing without a model."""
    online = deployment.online
    if online is None or deployment.model_dir is None:
        return [], {}
    model_dir = f"{APP_ROOT}/azureml-models/{online.model_name}/{online.model_version}"
    found = online.model_path or next(deployment.model_dir.iterdir())
    return (["-v", f"{found.resolve()}:{model_dir}/{found.name}:ro"],
            {"AZUREML_MODEL_DIR": model_dir})


def run_with_switch(
    request: DebugRequest, deployment: Deployment, tag: str, name: str, debug_port: int
) -> list[str]:
    """``docker run`` with the server's own debug switch: it connects to 127.0.0.1:debug_port."""
    script = deployment.entry_script.relative_to(deployment.source_dir).as_posix()
    mounts, model_variables = model_mount(deployment)
    environment = {
        **deployment.environment_variables,
        **model_variables,
        SWITCH: str(debug_port),
        "SCORING_TIMEOUT_MS": str(DEBUGGING_TIMEOUT_S * 1000),
        "WORKER_TIMEOUT": str(DEBUGGING_TIMEOUT_S),
    }
    run = ["docker", "run", "--rm", "--name", name, "--network", "host",
           "-v", f"{deployment.source_dir}:{APP_ROOT}", *mounts]
    for key, value in environment.items():
        run += ["-e", f"{key}={value}"]
    return [*run, "--entrypoint", "python", tag, "-c", SERVE_ON_LOOPBACK,
            "--entry_script", f"{APP_ROOT}/{script}", "--port", str(deployment.scoring_port)]


def run_with_entry_script(base: list[str], deployment: Deployment, tag: str) -> list[str]:
    """``docker.py``'s ``docker run`` (debugpy started in the worker by the entry script) on the
    built image, with the deployment's model and environment variables."""
    mounts, model_variables = model_mount(deployment)
    image_at = base.index(deployment.image or "IMAGE")
    extra = [*mounts]
    for key, value in {**deployment.environment_variables, **model_variables}.items():
        extra += ["-e", f"{key}={value}"]
    return [*base[:image_at], *extra, tag, *base[image_at + 1:]]


def has_debug_switch(probe_output: str) -> bool:
    """What the probe printed: True when the server in the image has ``AZUREML_DEBUG_PORT`` and
    debugpy is there for it."""
    return "server-debug-switch True" in probe_output


class OnlineDeploymentDockerTarget(DockerDeployTarget):
    """Builds the environment's image, asks it whether its server has the debug switch, runs it."""

    def __init__(self, request: DebugRequest, deployment: Deployment) -> None:
        super().__init__(request, deployment)  # the entry script's form, on the given image
        self.build_context, self.tag = build_folder(deployment)
        entry_form, remove = self.commands
        self.build = ["docker", "build", "-t", self.tag, str(self.build_context)]
        self.probe = ["docker", "run", "--rm", "--entrypoint", "python", self.tag, "-c", PROBE]
        self.with_switch = run_with_switch(request, deployment, self.tag, self.container,
                                           self.debug_port)
        self.with_entry_script = run_with_entry_script(entry_form, deployment, self.tag)
        self.commands = [self.with_switch, remove]

    def shown(self) -> str:
        import shlex

        return "\n".join([
            shlex.join(self.build), shlex.join(self.probe),
            "# when it prints server-debug-switch True:", shlex.join(self.with_switch),
            "# else:", shlex.join(self.with_entry_script), shlex.join(self.commands[1]),
        ])

    def start(self, events: DebugSession) -> None:
        problem = engine_problem()
        if problem is not None:
            events.target_note(f"{problem}: on a machine with Docker, run:\n{self.shown()}")
            events.step_status(self.name, Status.NOT_RUN, f"{problem}; the commands are above")
            events.target_done(failed=True)
            return
        threading.Thread(target=self._build_then_run, args=(events,), name="aml-debug-build",
                         daemon=True).start()

    def _build_then_run(self, events: DebugSession) -> None:
        events.step_status(self.name, Status.STARTING, f"building {self.tag}")
        for command, timeout in ((self.build, BUILD_TIMEOUT), (self.probe, PROBE_TIMEOUT)):
            if self._stopping.is_set():
                return
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
            if done.returncode != 0:
                last = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
                events.step_status(self.name, Status.FAILED,
                                   f"{command[1]} failed (status {done.returncode}): {last[0]}")
                events.target_done(failed=True)
                return
        if has_debug_switch(done.stdout):
            events.step_news(self.name, self.listen_here())
        else:
            self.commands[0] = self.with_entry_script
            self.debug_port = self.request.port or DEBUG_PORT_IN_IMAGE
        super().start(events)

    def listen_here(self) -> Announcement:
        """Where VS Code must listen before the server's worker starts: it connects once."""
        script = self.deployment.entry_script.relative_to(self.deployment.source_dir).as_posix()
        return Announcement(addresses=("127.0.0.1",), port=self.debug_port, mode="connect",
                            script=f"{APP_ROOT}/{script}", source_root=APP_ROOT,
                            just_my_code=self.request.just_my_code)

    def dispose(self) -> None:
        import shutil

        shutil.rmtree(self.build_context, ignore_errors=True)
        super().dispose()


def _readable(name: str | None) -> str:
    import re

    return re.sub(r"[^a-z0-9_.-]+", "-", (name or "deployment").lower()).strip("-.") or "app"
