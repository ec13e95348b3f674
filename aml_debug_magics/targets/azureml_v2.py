"""The azureml target for SDK v2 jobs: the same follower as SDK v1 (``azureml.py``), another way
in and out of Azure ML.

In: the StepSpecs of ``sources/sdk_v2.py`` and the user's job (a PipelineJob or a command job),
and an ``MLClient``. What is submitted is a detached deep copy of that job (Azure ML's
``create_or_update`` rewrites what it is given: code and environments become ARM ids), so the
user's object is never touched and the same cell runs again. In the copy, each debugged node
gets its own copy of its component (a component is shared by every node made from it) and runs
``export AML_DEBUG_SOURCE_ROOT="$PWD" && <its command, the debugged Python invocation wrapped
by the bootstrap>`` (the rest of the shell line is kept, ``${{...}}`` left for Azure ML), with
an environment derived to hold debugpy; the bootstrap's files sit in the node's code folder
while the job is uploaded. Out: a run with the SDK v1 run's methods (:class:`V2Run`: status,
``logFiles`` from run history, tags, children, cancel), so the follower, the log tailing and
the probe are the ones SDK v1 uses.
"""

from __future__ import annotations

import contextlib
import copy
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aml_debug_magics.errors import DebugInputError
from aml_debug_magics.failures import first_line
from aml_debug_magics.node.bootstrap import SOURCE_ROOT_VARIABLE
from aml_debug_magics.records import ShellCommand
from aml_debug_magics.targets.environment import (
    BOOTSTRAP,
    DEBUGPY_REQUIREMENT,
    bootstrap_options,
    shipped_bootstrap,
)

if TYPE_CHECKING:
    from aml_debug_magics.records import DebugRequest, StepSpec

SOURCE_ROOT = SOURCE_ROOT_VARIABLE  # where the bootstrap learns the code folder, after a cd


def is_pipeline(job: Any) -> bool:
    """Whether ``job`` is a PipelineJob (a command job has a ``jobs`` attribute too: every
    azure-ai-ml node answers any attribute name)."""
    from azure.ai.ml.entities import PipelineJob

    return isinstance(job, PipelineJob)


def detached_copy(job: Any) -> tuple[Any, dict[int, Any]]:
    """A deep copy of an azure-ai-ml job that shares nothing with ``job``, and the copy of each
    object in it (by the original's ``id``), to find a node's copy at any depth.

    ``copy.deepcopy`` alone fails on it: the SDK's input and output dicts, and its nodes, answer
    any attribute name (``__deepcopy__`` included) and refuse unknown keys, so the standard
    rebuild breaks. Those are made as empty shells first and filled after, through ``dict``
    itself; everything else is copied the standard way, in the same memo, so the copy's nodes
    point at each other as the original's do.
    """
    memo: dict[int, Any] = {}
    shells = []
    for value in _answering_any_attribute(job):
        shell = type(value).__new__(type(value))
        memo[id(value)] = shell
        shells.append((value, shell))
    memo.setdefault(id(memo), []).extend(value for value, _ in shells)  # kept alive meanwhile
    copied = copy.deepcopy(job, memo)
    for value, shell in shells:
        if isinstance(value, dict):
            items = {copy.deepcopy(k, memo): copy.deepcopy(v, memo) for k, v in value.items()}
            dict.update(shell, items)
        if hasattr(value, "__dict__"):
            vars(shell).update(copy.deepcopy(vars(value), memo))
    return copied, memo


def _answering_any_attribute(root: Any) -> list[Any]:
    """Every object reachable from ``root`` that the standard deep copy cannot rebuild: dicts
    with a ``__getattr__`` of their own, and objects whose attribute lookup raises."""
    seen: set[int] = set()
    found: list[Any] = []
    pending = [root]
    while pending:
        value = pending.pop()
        if id(value) in seen or isinstance(value, str | bytes | int | float | type | Path):
            continue
        seen.add(id(value))
        try:
            getattr(value, "__deepcopy__", None)
            rebuilt = not (isinstance(value, dict) and hasattr(type(value), "__getattr__"))
        except Exception:
            rebuilt = False
        if not rebuilt:
            found.append(value)
        if isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list | tuple | set | frozenset):
            pending.extend(value)
        with contextlib.suppress(TypeError):
            pending.extend(vars(value).values())
    return found


def debug_command(name: str, command: ShellCommand | None, request: DebugRequest) -> str:
    """The node's line with its debugged Python invocation run by the bootstrap, shipped in the
    code folder: the variable keeps that folder known after a ``cd``. For
    ``cd src && python t.py`` the line becomes ``export AML_DEBUG_SOURCE_ROOT="$PWD" && cd src
    && python "$AML_DEBUG_SOURCE_ROOT/aml_debug_bootstrap.py" --listen 0.0.0.0:5678 ... -- t.py``.
    """
    if command is None or command.interpreter is None:
        written = command.text if command else ""
        raise DebugInputError(f"node {name!r} runs `{written}`: nothing in it runs Python to debug")
    options = " ".join(shlex.quote(option) for option in bootstrap_options(request))
    insertion = f'"${SOURCE_ROOT}/{BOOTSTRAP}" {options} --'
    return f'export {SOURCE_ROOT}="$PWD" && {command.wrapped(insertion)}'


@contextlib.contextmanager
def debug_ready_v2(
    specs: list[StepSpec], request: DebugRequest, notes: list[str]
) -> Iterator[Any]:
    """A detached copy of the job to submit (``request.submitted``), its debugged nodes made to
    run the bootstrap; yields it while the bootstrap's files are in their code folders."""
    submitted, copies = detached_copy(request.submitted)
    for spec in specs:
        if not spec.debug:
            continue
        node = copies[id(spec.sdk_object)]
        if node is not submitted:  # a pipeline's: the nodes made from its component keep theirs
            node._component = detached_copy(node.component)[0]
        node.command = debug_command(spec.name, spec.command, request)
        node.environment = debug_environment(spec.name, node.environment, notes)
    with shipped_bootstrap([spec.source_directory for spec in specs if spec.debug]):
        yield submitted


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
