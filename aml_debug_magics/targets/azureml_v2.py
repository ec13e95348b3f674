"""The azureml target for SDK v2 jobs: the same follower as SDK v1 (``azureml.py``), another way
in and out of Azure ML.

In: the StepSpecs of ``sources/sdk_v2.py`` and the user's job (a PipelineJob or a command job),
and an ``MLClient``. For the submit only, each debugged node's command runs the bootstrap
(``python aml_debug_bootstrap.py [options] -- train.py ...``, the shipped files in its code
folder while the job is uploaded) and its environment is a derived one with debugpy added; all
is restored after, whatever happens. Out: a run with the SDK v1 run's methods
(:class:`V2Run`: status, ``logFiles`` from run history, tags, children, cancel), so the
follower, the log tailing and the probe are the ones SDK v1 uses.
"""

from __future__ import annotations

import contextlib
import copy
import shlex
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from aml_debug_magics.errors import DebugInputError
from aml_debug_magics.failures import first_line
from aml_debug_magics.targets.environment import (
    BOOTSTRAP,
    DEBUGPY_REQUIREMENT,
    bootstrap_options,
    shipped_bootstrap,
)

if TYPE_CHECKING:
    from aml_debug_magics.records import DebugRequest, StepSpec


@contextlib.contextmanager
def debug_ready_v2(
    specs: list[StepSpec], request: DebugRequest, notes: list[str]
) -> Iterator[Any]:
    """The job to submit (``request.submitted``), its debugged nodes made to run the bootstrap
    for the submit only; yields it."""
    saved: list[tuple[Any, str, Any]] = []
    try:
        for spec in specs:
            if not spec.debug:
                continue
            node = spec.sdk_object
            saved.append((node, node.command, node.environment))
            words = shlex.split(node.command)
            wrapped = [words[0], BOOTSTRAP, *bootstrap_options(request), "--", *words[1:]]
            node.command = " ".join(w if "${{" in w else shlex.quote(w) for w in wrapped)
            node.environment = debug_environment(spec.name, node.environment, notes)
        with shipped_bootstrap([s.source_directory for s in specs if s.debug]):
            yield request.submitted
    finally:
        for node, command, environment in saved:
            node.command, node.environment = command, environment


def check_environments(specs: list[StepSpec]) -> None:
    """Before anything is submitted: every debugged node's environment can take debugpy."""
    for spec in specs:
        if spec.debug:
            _extendable(spec.name, spec.sdk_object.environment)


def _extendable(node: str, environment: Any) -> None:
    if environment is None or isinstance(environment, str):
        raise DebugInputError(
            f"node {node!r} uses the registered environment {environment!r}, which cannot be "
            f"extended here: add {DEBUGPY_REQUIREMENT} to it (or give the node an Environment "
            "with a conda file)"
        )


def debug_environment(node: str, environment: Any, notes: list[str]) -> Any:
    """A copy of the node's environment with debugpy added to its conda file's pip list; a
    registered or curated one (``azureml:NAME@VERSION``) cannot be extended: one line says
    what to add."""
    _extendable(node, environment)
    derived = copy.deepcopy(environment)
    if getattr(derived, "name", None):
        derived.name = f"{derived.name}-aml-debug"  # never overwrite theirs
        derived.version = None
    conda = copy.deepcopy(getattr(derived, "conda_file", None))
    if not isinstance(conda, dict):
        conda = {"name": "aml-debug", "dependencies": ["python=3.10", "pip"]}
        notes.append(f"{node}: the environment had no conda file: one with debugpy was added")
    dependencies = conda.setdefault("dependencies", [])
    pip = next((d for d in dependencies if isinstance(d, dict) and "pip" in d), None)
    if pip is None:
        pip = {"pip": []}
        dependencies.append(pip)
    if not any(str(p).startswith("debugpy") for p in pip["pip"]):
        pip["pip"].append(DEBUGPY_REQUIREMENT)
    derived.conda_file = conda
    return derived


# ---------------------------------------------------------------------------------------------
# The seam: MLClient


class V2Workspace:
    """Submits through ``MLClient.jobs.create_or_update`` and answers as an SDK v1 run does.
    The only object the tests replace (Azure's control plane is not reachable from here)."""

    def __init__(self, ml_client: Any) -> None:
        self.ml_client = ml_client

    def submit(self, experiment: str, job: Any) -> V2Run:
        created = self.ml_client.jobs.create_or_update(job, experiment_name=experiment)
        return V2Run(self.ml_client, created)


class V2Run:
    """An SDK v2 job with the methods the follower reads (those of an SDK v1 run)."""

    def __init__(self, ml_client: Any, job: Any) -> None:
        self.ml_client, self.job = ml_client, job
        self.id = job.name
        self.name = getattr(job, "display_name", None) or job.name

    def get_status(self) -> str:
        return self.ml_client.jobs.get(self.id).status

    def get_details(self) -> dict[str, Any]:
        """Run history's ``logFiles`` (name -> SAS URL), what ``jobs.stream`` reads too."""
        details = self.ml_client.jobs._runs_operations.get_run_details(self.id)
        return {"runId": self.id, "logFiles": dict(getattr(details, "log_files", None) or {})}

    def get_tags(self) -> dict[str, str]:
        return dict(self.ml_client.jobs.get(self.id).tags or {})

    def get_children(self) -> list[V2Run]:
        return [V2Run(self.ml_client, child)
                for child in self.ml_client.jobs.list(parent_job_name=self.id)]

    def cancel(self) -> None:
        self.ml_client.jobs.begin_cancel(self.id)

    def get_portal_url(self) -> str:
        return getattr(self.job, "studio_url", "") or ""


def find_ml_client(user_ns: dict[str, Any], variable: str | None) -> V2Workspace:
    """The MLClient in ``variable``, else ``MLClient.from_config``; one line if neither."""
    if variable:
        if variable not in user_ns:
            raise DebugInputError(f"no variable named {variable!r} in this notebook")
        return V2Workspace(user_ns[variable])
    try:
        from azure.ai.ml import MLClient
        from azure.identity import DefaultAzureCredential

        return V2Workspace(MLClient.from_config(DefaultAzureCredential()))
    except Exception as error:
        raise DebugInputError(
            "no Azure ML workspace: pass --workspace VARIABLE (an MLClient) or put a "
            f"config.json next to the notebook ({first_line(error)})"
        ) from None
