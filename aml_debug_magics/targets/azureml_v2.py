"""The azureml target for SDK v2 jobs: the same follower as SDK v1 (``azureml.py``), another way
in and out of Azure ML.

In: the StepSpecs of ``sources/sdk_v2.py`` and the user's job (a PipelineJob or a command job),
and an ``MLClient``. What is submitted is a detached deep copy of that job (Azure ML's
``create_or_update`` rewrites what it is given: code and environments become ARM ids), so the
user's object is never touched and the same cell runs again. In the copy, each debugged node
gets its own copy of its component (a component is shared by every node made from it) and runs
``export AML_DEBUG_SOURCE_ROOT="$PWD" && <its command, the debugged Python invocation wrapped
by the bootstrap>`` (the rest of the shell line is kept, ``${{...}}`` left for Azure ML); its
environment is left as the user gave it (curated, registered, or built: Azure ML reuses the
image), and the bootstrap's files and a copy of debugpy, used only where the environment has
none, sit in the node's code folder while the job is uploaded. Out: a run with the SDK v1
run's methods (:class:`V2Run`: status, ``logFiles`` from run history, tags, children,
cancel), so the follower, the log tailing and the probe are the ones SDK v1 uses.
"""

from __future__ import annotations

import contextlib
import copy
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aml_debug_magics.errors import DebugInputError
from aml_debug_magics.failures import first_line
from aml_debug_magics.node.bootstrap import SOURCE_ROOT_VARIABLE
from aml_debug_magics.records import ShellCommand
from aml_debug_magics.sources import parallel
from aml_debug_magics.targets.bootstrap_command import BOOTSTRAP
from aml_debug_magics.targets.environment import (
    azureml_bootstrap_options,
    parallel_worker_environment,
    post_mortem_note,
    shipped_bootstrap,
    shipped_debugpy_note,
)

if TYPE_CHECKING:
    from aml_debug_magics.records import DebugRequest, StepSpec


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
    options = " ".join(shlex.quote(option) for option in azureml_bootstrap_options(request))
    # the variable tells the bootstrap where the code folder is, after a cd
    insertion = f'"${SOURCE_ROOT_VARIABLE}/{BOOTSTRAP}" {options} --'
    return f'export {SOURCE_ROOT_VARIABLE}="$PWD" && {command.wrapped(insertion)}'


@contextlib.contextmanager
def debug_ready_v2(
    specs: list[StepSpec], request: DebugRequest, notes: list[str],
    variables: dict[str, dict[str, str]] | None = None,
) -> Iterator[Any]:
    """A detached copy of the job to submit (``request.submitted``), its debugged nodes made to
    run the bootstrap (with ``variables``, by node name, added to their environment variables:
    the storage relay's blob URLs); yields it while the bootstrap's files are in their code
    folders."""
    submitted, copies = detached_copy(request.submitted)
    private: set[int] = set()  # the pipeline nodes given their own component on the way
    for spec in specs:
        if not spec.debug:
            continue
        node = _own_node(submitted, spec.name, private) or copies[id(spec.sdk_object)]
        if node is not submitted:  # a pipeline's: the nodes made from its component keep theirs
            node._component = detached_copy(node.component)[0]
        if parallel.is_parallel_node(node):
            debug_parallel_node(spec.name, node, request, notes)
        else:
            node.command = debug_command(spec.name, spec.command, request)
        if variables and spec.name in variables:
            node.environment_variables = {**(node.environment_variables or {}),
                                          **variables[spec.name]}
    folders = [spec.source_directory for spec in specs if spec.debug]
    shim = any(spec.debug and parallel.is_parallel_node(spec.sdk_object) for spec in specs)
    with shipped_bootstrap(folders, parallel.SHIPPED_NAMES if shim else None, with_debugpy=True):
        notes.append(shipped_debugpy_note())
        notes.append(post_mortem_note(request.post_mortem, request.timeout))
        yield submitted


def _own_node(submitted: Any, name: str, private: set[int]) -> Any:
    """The node ``name`` (``outer.inner``) of the copy to submit, reached through components
    of its own: a pipeline component is shared by every node made from it (``outer1`` and
    ``outer2`` of one ``load_component``), so each pipeline node on the way gets its own copy
    of it before anything inside changes. None where ``name`` is no path of nodes."""
    if not is_pipeline(submitted):
        return None
    first, *inner = name.split(".")
    node = submitted.jobs.get(first)
    for part in inner:
        if node is None or not hasattr(node.component, "jobs"):
            return None
        if id(node) not in private:
            node._component = detached_copy(node.component)[0]
            private.add(id(node))
        node = node.component.jobs.get(part)
    return node


def debug_parallel_node(name: str, node: Any, request: DebugRequest, notes: list[str]) -> None:
    """The copy's parallel node made to run on one instance with one worker process, the
    shipped shim as its entry script (it starts debugpy in the worker and hands each call to
    the user's entry script, named in the node's environment variables)."""
    task = copy.copy(node.task)
    entry_script, task.entry_script = task.entry_script, parallel.SHIM
    node.task = task
    if getattr(node.component, "task", None) is not None:
        node.component.task = task
    node.environment_variables = {
        **(node.environment_variables or {}),
        **parallel_worker_environment(request, entry_script),
    }
    asked = (getattr(node.resources, "instance_count", None) or 1,
             node.max_concurrency_per_instance or 1)
    if node.resources is not None:
        node.resources.instance_count = 1
    node.max_concurrency_per_instance = 1
    notes.append(f"{name}: the debug copy runs on 1 instance with 1 worker process (the node "
                 f"asks for {asked[0]} x {asked[1]})")


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

    def get_run(self, name: str) -> V2Run:
        """The job named ``name`` (a pipeline's, a node's, a command job's)."""
        return V2Run(self.ml_client, self.ml_client.jobs.get(name))

    def relay_account(self) -> Any:
        """The default datastore's storage account, for ``--via storage``'s blobs."""
        from aml_debug_magics.relay.blobs import account_of_v2

        return account_of_v2(self.ml_client)

    def environment(self, name: str, version: str | None, label: str | None) -> Any:
        """The environment registered as ``name`` at ``version`` (or ``label``: latest), as
        ``ml_client.environments.get`` reads it: its conda file, or its image alone."""
        return self.ml_client.environments.get(name, version=version, label=label)


class V2Run:
    """An SDK v2 job with the methods the follower reads (those of an SDK v1 run). As an SDK v1
    run's, ``status`` and ``tags`` are those the job came with (from ``jobs.list``, or the last
    ``jobs.get``): reading them asks Azure ML nothing."""

    def __init__(self, ml_client: Any, job: Any) -> None:
        self.ml_client, self.job = ml_client, job
        self.id = job.name
        self.name = getattr(job, "display_name", None) or job.name
        self.status: str = getattr(job, "status", None) or ""
        self.tags: dict[str, str] = dict(getattr(job, "tags", None) or {})

    def get_status(self) -> str:
        job = self.ml_client.jobs.get(self.id)
        self.status, self.tags = job.status, dict(job.tags or {})
        return self.status

    def get_details(self) -> dict[str, Any]:
        """Run history's ``logFiles`` (name -> SAS URL), what ``jobs.stream`` reads too, and the
        status that comes with them."""
        details = self.ml_client.jobs._runs_operations.get_run_details(self.id)
        return {"runId": self.id, "status": getattr(details, "status", None),
                "logFiles": dict(getattr(details, "log_files", None) or {})}

    def get_tags(self) -> dict[str, str]:
        self.get_status()
        return self.tags

    def get_children(self) -> list[V2Run]:
        return [V2Run(self.ml_client, child)
                for child in self.ml_client.jobs.list(parent_job_name=self.id)]

    def cancel(self) -> None:
        self.ml_client.jobs.begin_cancel(self.id)

    def get_portal_url(self) -> str:
        return getattr(self.job, "studio_url", "") or ""


def environment_reader(workspace: Any) -> Callable[[str, str | None, str | None], Any]:
    """Reads a registered environment through ``workspace`` (a :class:`V2Workspace`; any
    other, or none: the MLClient of ``config.json``, found on the first read). Raises
    ``DebugInputError`` when there is no workspace to read through."""
    found: list[V2Workspace] = [workspace] if isinstance(workspace, V2Workspace) else []

    def read(name: str, version: str | None, label: str | None) -> Any:
        if not found:
            found.append(_configured_ml_client())
        return found[0].environment(name, version, label)

    return read


def _configured_ml_client() -> V2Workspace:
    """The MLClient of the ``config.json`` next to the notebook (or above it, or in a
    ``.azureml`` folder: where ``MLClient.from_config`` looks)."""
    here = Path.cwd().resolve()
    if not any((folder / name).is_file() for folder in (here, *here.parents)
               for name in ("config.json", ".azureml/config.json")):
        raise DebugInputError("no workspace to read it through: no config.json here or above")
    try:
        from azure.ai.ml import MLClient
        from azure.identity import DefaultAzureCredential

        return V2Workspace(MLClient.from_config(DefaultAzureCredential()))
    except Exception as error:
        raise DebugInputError(f"no workspace to read it through ({first_line(error)})") from None


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
