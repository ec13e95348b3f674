"""The local deploy target: the user's ``score.py`` under the Azure ML inference server here.

The server runs as a subprocess, bound to 127.0.0.1 on a free port, with one worker; debugpy
starts inside that worker (see ``entry.py``), so an attach stops in ``init()`` and ``run()``.
While debugging, the server's scoring and worker timeouts are raised: a request paused at a
breakpoint must not be killed.
"""

from __future__ import annotations

import json
import shutil
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from aml_debug_magics.deploy.failures import RecentFailures, tell_row
from aml_debug_magics.errors import DebugInputError
from aml_debug_magics.failures import user_error
from aml_debug_magics.node.announce import Announcement, AttachOutcome, Failure, PortClosed
from aml_debug_magics.records import Status
from aml_debug_magics.targets.environment import NODE_FILES
from aml_debug_magics.targets.local import LocalProcess

if TYPE_CHECKING:
    from aml_debug_magics.records import DebugRequest
    from aml_debug_magics.session import DebugSession

PACKAGE = Path(__file__).resolve().parent
DEBUGGING_TIMEOUT_S = 24 * 3600  # scoring and worker timeouts while a debugger may pause them
HEALTH_POLL = 0.25


@dataclass(frozen=True)
class OnlineDeployment:
    """What an SDK v2 deployment object says beyond its scoring script (``sdk_v2.py``): what the
    docker target builds and mounts."""

    kind: str  # ManagedOnlineDeployment, KubernetesOnlineDeployment
    name: str | None
    model_name: str | None = None
    model_version: str | None = None
    model_path: Path | None = None  # the model's own file or folder, on this machine
    image: str | None = None
    conda_file: dict | None = None


@dataclass
class Deployment:
    """What ``%aml_debug_deploy`` serves: the entry script, its folder, the model folder."""

    entry_script: Path
    source_dir: Path
    model_dir: Path | None = None
    scoring_port: int = 0
    wait_in_init: bool = False
    sample_request: str | None = None  # JSON text
    image: str | None = None
    # an SDK v2 deployment's own environment_variables, and what else it said (deploy/sdk_v2.py)
    environment_variables: dict[str, str] = field(default_factory=dict)
    online: OnlineDeployment | None = None


def server_environment(
    request: DebugRequest, deployment: Deployment, listen: str, *, model_dir: Path | None = None
) -> dict:
    """Environment variables for the server and for ``entry.py`` inside its worker;
    ``AZUREML_MODEL_DIR`` is ``model_dir`` (the model's folder as laid out for the server)."""
    environment = {
        **deployment.environment_variables,  # the deployment's own, under the debugger's
        "AML_DEBUG_USER_SCRIPT": str(deployment.entry_script),
        "AML_DEBUG_LISTEN": listen,
        "AML_DEBUG_TIMEOUT": f"{request.timeout:g}",
        "AML_DEBUG_WAIT_IN_INIT": "1" if deployment.wait_in_init else "0",
        "AML_DEBUG_JUST_MY_CODE": "1" if request.just_my_code else "0",
        "SCORING_TIMEOUT_MS": str(DEBUGGING_TIMEOUT_S * 1000),
        "WORKER_TIMEOUT": str(DEBUGGING_TIMEOUT_S),
        "AML_APP_ROOT": str(deployment.source_dir),
        "AML_DEBUG_SOURCE_ROOT": str(deployment.source_dir),
    }
    if model_dir is not None:
        environment["AZUREML_MODEL_DIR"] = str(model_dir)
    return environment


def post_json(url: str, body: str, timeout: float = DEBUGGING_TIMEOUT_S) -> tuple[int, str]:
    """POST ``body`` (JSON text); the status and the response text, also for HTTP errors."""
    request = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode("utf-8", "replace")


class LocalDeployTarget:
    """Runs the inference server on this machine with debugpy in its worker."""

    def __init__(self, request: DebugRequest, deployment: Deployment) -> None:
        self.request = request
        self.deployment = deployment
        self.name = request.steps[0].name
        self.scoring_url = f"http://127.0.0.1:{deployment.scoring_port}/score"
        self.health_url = f"http://127.0.0.1:{deployment.scoring_port}/"
        self.process: LocalProcess | None = None
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self._events: DebugSession | None = None
        self._laid_out: Path | None = None  # azureml-models/ made for --model, removed at stop
        self.failures = RecentFailures()  # the requests run() failed, newest first

    def _lay_out_models(self) -> Path | None:
        """``--model NAME[:VERSION]`` with ``--model-dir``: ``azureml-models/NAME/VERSION/`` in
        the app root, as Azure ML's container has it, so ``Model.get_model_path('NAME')``
        finds the model; links only, removed at stop. None without ``--model``."""
        if not self.request.models or self.deployment.model_dir is None:
            return None
        name, _, version = self.request.models[0].partition(":")
        root = self.deployment.source_dir / "azureml-models"
        if root.exists() or root.is_symlink():
            raise DebugInputError(
                f"{root} exists: move it aside to let --model lay out azureml-models/{name}"
            )
        folder = root / name / (version or "1")
        folder.mkdir(parents=True)
        model = self.deployment.model_dir
        entries = list(model.iterdir())
        # VERSION/ holds what was registered: the one file or folder, or the folder of several
        held = entries[0] if len(entries) == 1 else model
        (folder / held.name).symlink_to(held)
        self._laid_out = root
        return folder

    def start(self, events: DebugSession) -> None:
        self._events = events
        deployment = self.deployment
        model_folder = self._lay_out_models()
        arguments = [
            "--entry_script", str(NODE_FILES / "entry.py"),
            "--port", str(deployment.scoring_port),
            "--worker_count", "1",
        ]
        if deployment.model_dir is not None:
            arguments += ["--model_dir", str(deployment.model_dir)]
        events.service_update(scoring_url=self.scoring_url, health="starting")
        events.step_status(self.name, Status.STARTING)
        self.process = LocalProcess(
            PACKAGE / "serve.py",
            arguments,
            cwd=deployment.source_dir,
            debug=False,
            env=server_environment(
                self.request, deployment, f"127.0.0.1:{self.request.port}",
                model_dir=model_folder or deployment.model_dir,
            ),
            on_line=lambda line: self._output(events, line),
            on_news=lambda news: self._news(events, news),
        ).start()
        self._watcher = threading.Thread(
            target=self._watch, args=(events,), name="aml-debug-deploy-health", daemon=True
        )
        self._watcher.start()

    def _output(self, events: DebugSession, line: str) -> None:
        self.failures.line(line)
        events.step_output(self.name, line)

    def _news(
        self, events: DebugSession, news: Announcement | AttachOutcome | PortClosed | Failure
    ) -> None:
        if isinstance(news, Failure):  # run() raised: the request got a 500, the server serves on
            self.failures.failed(news)
            tell_row(events, self.name, news)
        else:
            events.step_news(self.name, news)

    def _watch(self, events: DebugSession) -> None:
        healthy = False
        while not self._stopping.is_set():
            code = self.process.returncode
            if code is not None:
                if not self._stopping.is_set():
                    events.service_update(health="down")
                    lines = list(events.row(self.name).last_lines)
                    cause = user_error(lines, self.deployment.entry_script) or "see its last lines"
                    if not self.request.models and any(MODEL_NOT_FOUND in ln for ln in lines):
                        cause += (
                            "; the script looks for a registered model (Model.get_model_path): "
                            "add --model NAME[:VERSION] with --model-dir to lay out "
                            "azureml-models/NAME/VERSION here"
                        )
                    events.step_status(
                        self.name, Status.FAILED,
                        f"the inference server exited (status {code}): {cause}",
                        exit_code=code,
                    )
                    events.target_done(failed=True)
                return
            if not healthy and self._healthy():
                healthy = True
                events.service_update(health="healthy")
                row = events.row(self.name)
                if row.status in (Status.STARTING, Status.TIMED_OUT):
                    events.step_status(self.name, Status.RUNNING, "serving")
            self._stopping.wait(HEALTH_POLL if not healthy else 2.0)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.health_url, timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def score(self, body: str) -> tuple[int, str]:
        return post_json(self.scoring_url, body)

    def stop(self) -> None:
        self._stopping.set()
        if self.process is not None:
            self.process.stop()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout=10)
        if self._events is not None:
            self._events.service_update(health="stopped")
        if self._laid_out is not None:
            shutil.rmtree(self._laid_out, ignore_errors=True)
            self._laid_out = None


MODEL_NOT_FOUND = "ModelNotFoundException"  # what Model.get_model_path raises, in its message
def read_sample_request(value: str | None, base: Path) -> str | None:
    """The ``--sample-request`` body: a JSON file's text, or JSON given inline. Raises
    ValueError naming what is wrong."""
    if value is None:
        return None
    path = base / value
    try:
        is_file = path.is_file()
    except OSError:  # too long for a file name (or not one at all): JSON given inline
        is_file = False
    text = path.read_text() if is_file else value
    try:
        json.loads(text)
    except ValueError as error:
        where = f"{path}" if text is not value else "--sample-request"
        raise ValueError(f"{where} is not JSON ({error})") from None
    return text
