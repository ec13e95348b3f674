"""The azureml deploy target: ``Model.package`` an image that debugs score.py, then run it.

The image gets an environment that adds debugpy, and ``aml_debug_entry.py`` as its entry
script, which loads the user's score.py unedited (see ``entry.py``). Building takes minutes:
the panel shows how long it has been going. Then the docker target runs the pulled image.
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
from aml_debug_magics.failures import first_line
from aml_debug_magics.node.bootstrap import ENTRY_SHIPPED_NAMES
from aml_debug_magics.records import Status
from aml_debug_magics.targets.environment import DEBUGPY_REQUIREMENT, shipped_bootstrap

if TYPE_CHECKING:
    from aml_debug_magics.records import DebugRequest
    from aml_debug_magics.session import DebugSession

ENTRY = ENTRY_SHIPPED_NAMES["entry.py"]
PROGRESS_EVERY = 5.0


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

    def start(self, events: DebugSession) -> None:
        threading.Thread(
            target=self._package_then_run, args=(events,), name="aml-debug-package", daemon=True
        ).start()

    def _package_then_run(self, events: DebugSession) -> None:
        started = time.time()
        events.step_status(self.name, Status.STARTING, "packaging the image in Azure ML")
        try:
            with inference_config(self.request, self.deployment) as config:
                package = self.workspace.package(self.request.models, config)
            done = threading.Event()
            waiter = threading.Thread(target=lambda: (package.wait_for_creation(), done.set()))
            waiter.start()
            while not done.wait(PROGRESS_EVERY) and not self._stopping.is_set():
                minutes, seconds = divmod(int(time.time() - started), 60)
                events.step_status(
                    self.name, Status.STARTING, f"packaging the image: {minutes}:{seconds:02d}"
                )
            if self._stopping.is_set():
                return
            events.step_status(self.name, Status.STARTING, f"pulling {package.location}")
            package.pull()
        except Exception as error:
            message = first_line(error)
            events.step_status(self.name, Status.FAILED, f"packaging failed: {message}")
            events.target_done(failed=True)
            return
        image = dataclasses.replace(self.deployment, image=package.location)
        self.docker = DockerDeployTarget(self.request, image)
        self.docker.start(events)

    def score(self, body: str) -> tuple[int, str]:
        if self.docker is None:
            raise RuntimeError("the image is not running yet")
        return self.docker.score(body)

    def stop(self) -> None:
        self._stopping.set()
        if self.docker is not None:
            self.docker.stop()
