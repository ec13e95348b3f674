"""The azureml deploy target: ``Model.package`` an image that debugs score.py, then run it.

The image gets an environment that adds debugpy, and ``aml_debug_entry.py`` as its entry
script, which loads the user's score.py unedited (see ``entry.py``). Building takes minutes:
the panel shows how long it has been going. Then the docker target runs the pulled image.
A build that fails ends the row with Azure ML's reason in one line; a Stop while the image builds
or is pulled ends it there: no container starts afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from aml_debug_magics.deploy.docker import DockerDeployTarget
from aml_debug_magics.deploy.local import Deployment
from aml_debug_magics.node.bootstrap import ENTRY_SHIPPED_NAMES
from aml_debug_magics.records import Status
from aml_debug_magics.redaction import redact
from aml_debug_magics.targets.environment import DEBUGPY_REQUIREMENT, shipped_bootstrap

if TYPE_CHECKING:
    from aml_debug_magics.records import DebugRequest
    from aml_debug_magics.session import DebugSession

ENTRY = ENTRY_SHIPPED_NAMES["entry.py"]
PROGRESS_EVERY = 5.0


def one_line(error: BaseException) -> str:
    """An SDK error on one line: ``wait_for_creation`` spreads its state and Azure ML's message
    over several lines (``State: Failed``, ``Error:``, ``Message: ...``)."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return redact(text) if text else type(error).__name__


def debug_environment(request: DebugRequest, deployment: Deployment) -> Any:
    """An Azure ML Environment for scoring with debugpy and the debugging settings."""
    import warnings

    from azureml.core import Environment
    from azureml.core.conda_dependencies import CondaDependencies

    with warnings.catch_warnings():  # the SDK's vendored YAML loader warns on every load
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
        environment = Environment(name=f"aml-debug-{request.steps[0].name}")
        environment.python.conda_dependencies = CondaDependencies.create(
            pip_packages=["azureml-defaults", "azureml-inference-server-http", DEBUGPY_REQUIREMENT]
        )
    script = deployment.entry_script.relative_to(deployment.source_dir).as_posix()
    # nothing here switches the debugger on: the image may be deployed one day, and its debug
    # port must not ship with it; `docker run -e AML_DEBUG_LISTEN=...` (the docker target) does
    environment.environment_variables = {"AML_DEBUG_USER_SCRIPT": script}
    return environment


@contextlib.contextmanager
def inference_config(request: DebugRequest, deployment: Deployment) -> Iterator[Any]:
    """The InferenceConfig to package, with ``aml_debug_entry.py`` and the bootstrap's files in
    the source folder while it is in use (they are removed after, whatever happens)."""
    from azureml.core.model import InferenceConfig

    with shipped_bootstrap([deployment.source_dir], extra=ENTRY_SHIPPED_NAMES):
        yield InferenceConfig(
            entry_script=ENTRY,
            source_directory=str(deployment.source_dir),
            environment=debug_environment(request, deployment),
        )


class PackageDeployTarget:
    """Packages with Azure ML (through the workspace seam), pulls, then runs it with Docker."""

    def __init__(self, request: DebugRequest, deployment: Deployment, workspace: Any) -> None:
        self.request = request
        self.deployment = deployment
        self.workspace = workspace
        self.name = request.steps[0].name
        self.docker: DockerDeployTarget | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    def start(self, events: DebugSession) -> None:
        threading.Thread(
            target=self._package_then_run, args=(events,), name="aml-debug-package", daemon=True
        ).start()

    def _package_then_run(self, events: DebugSession) -> None:
        events.step_status(self.name, Status.STARTING, "packaging the image in Azure ML")
        try:
            with inference_config(self.request, self.deployment) as config:
                package = self.workspace.package(self.request.models, config)
            self._wait_for_creation(package, events)
            if self._stopping.is_set():
                return
            events.step_status(self.name, Status.STARTING, f"pulling {package.location}")
            package.pull()
        except Exception as error:
            if not self._stopping.is_set():
                events.step_status(self.name, Status.FAILED, f"packaging failed: {one_line(error)}")
                events.target_done(failed=True)
            return
        with self._lock:  # a Stop during the pull: the image stays pulled, nothing runs it
            if self._stopping.is_set():
                return
            image = dataclasses.replace(self.deployment, image=package.location)
            self.docker = DockerDeployTarget(self.request, image)
        self.docker.start(events)

    def _wait_for_creation(self, package: Any, events: DebugSession) -> None:
        """``package.wait_for_creation()``, with the time it has taken on the row; its error
        raised here; returns early on Stop."""
        started = time.time()
        failures: list[Exception] = []
        done = threading.Event()

        def wait() -> None:
            try:
                package.wait_for_creation()
            except Exception as error:
                failures.append(error)
            finally:
                done.set()

        threading.Thread(target=wait, name="aml-debug-package-build", daemon=True).start()
        while not done.wait(PROGRESS_EVERY):
            if self._stopping.is_set():
                return
            minutes, seconds = divmod(int(time.time() - started), 60)
            events.step_status(
                self.name, Status.STARTING, f"packaging the image: {minutes}:{seconds:02d}"
            )
        if failures:
            raise failures[0]

    def score(self, body: str) -> tuple[int, str]:
        if self.docker is None:
            raise RuntimeError("the image is not running yet")
        return self.docker.score(body)

    def stop(self) -> None:
        with self._lock:
            self._stopping.set()
            docker = self.docker
        if docker is not None:
            docker.stop()

    def dispose(self) -> None:
        """The session is replaced or the kernel ends: the docker target's files go."""
        if self.docker is not None:
            self.docker.dispose()
