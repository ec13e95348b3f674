"""SDK v1 steps and runs made debug-ready for the submit: the bootstrap runs the user's script.

In: the StepSpecs of ``sources/sdk_v1.py`` (their ``PythonScriptStep`` or ``ScriptRunConfig``,
and the user's ``Pipeline`` when one was given) and the request. For the submit only, each
debugged step runs the bootstrap (its files and a copy of debugpy are placed in the step's
source folder for the snapshot and removed right after, whatever happens) with the guide's
``--remote_debug`` flags left out and a copy of its RunConfiguration that holds the user's own
environment object, unchanged, so Azure ML reuses the image it built. Out: what to submit (the
user's Pipeline with its graph built again from the debug-ready steps, the steps, or the
ScriptRunConfig); the user's objects are restored after. Nothing in the user's scripts or
folders changes.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

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

GUIDE_FLAGS = {  # the guide's flags and how many values each takes
    "--remote_debug": 0,
    "--remote_debug_connection_timeout": 1,
    "--remote_debug_client_ip": 1,
    "--remote_debug_port": 1,
}

def debug_runconfig(runconfig: Any) -> Any:
    """A copy of ``runconfig`` for the debugged step that holds the user's environment object
    itself (curated, registered, user-managed or image-only: Azure ML reuses its image) and
    every Docker setting the user made (``shm_size``, ``arguments``, ...), with Docker on, as
    the guide asks (``DockerConfiguration``, not the deprecated ``docker.enabled``).
    """
    from azureml.core import RunConfiguration
    from azureml.core.runconfig import DockerConfiguration

    with warnings.catch_warnings():  # the SDK's vendored YAML loader warns on every load
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
        if runconfig is None:
            built = RunConfiguration()
        else:
            built = copy.deepcopy(runconfig)
            built.environment = runconfig.environment
        if built.docker is None:
            built.docker = DockerConfiguration(use_docker=True)
        else:
            built.docker.use_docker = True
    return built


def pipeline_to_submit(pipeline: Any, steps: list[Any]) -> Any:
    """A copy of the user's ``Pipeline`` whose graph is built again from ``steps`` as they are
    now: a Pipeline builds its graph when it is made, so the user's holds the steps as written.

    The copy keeps everything the user gave ``Pipeline(...)``: its workspace, description,
    default datastore, default source directory, closure setting and notification choice. The
    user's object (its graph, builder and context) is left as it was.
    """
    submitted = copy.copy(pipeline)
    context = copy.copy(pipeline._graph_context)
    builder = copy.copy(pipeline._graph_builder)
    builder._context = context
    submitted._graph_context, submitted._graph_builder = context, builder
    submitted._graph = builder.build(pipeline._name, steps, finalize=False)
    return submitted


def strip_guide_flags(arguments: list[Any]) -> tuple[list[Any], bool]:
    """``arguments`` without the guide's ``--remote_debug*`` flags (the bootstrap does that job;
    the guide's snippet listens on the client's address and fails with errno 99)."""
    kept, skip, stripped = [], 0, False
    for value in arguments:
        if skip:
            skip -= 1
            continue
        if isinstance(value, str) and value.split("=", 1)[0] in GUIDE_FLAGS:
            stripped = True
            skip = 0 if "=" in value else GUIDE_FLAGS[value]
            continue
        kept.append(value)
    return kept, stripped


def parallel_debug_copy(step: Any, request: DebugRequest, notes: list[str]) -> dict[str, Any]:
    """Make a ``ParallelRunStep`` run its debug copy: one node, one worker process, the shipped
    shim as its entry script (it starts debugpy in the worker and hands each call to the
    user's entry script); returns the fields it changed, as they were, to put back."""
    config = step._parallel_run_config
    fields = ("_script_name", "_arguments", "_runconfig", "_parallel_run_config", "_node_count",
              "_process_count_per_node", "_allow_reuse")
    saved = {field: getattr(step, field) for field in fields}
    arguments = list(step._arguments)
    entry = arguments.index("--scoring_module_name") + 1
    arguments[entry] = parallel.SHIM
    if "--process_count_per_node" in arguments:
        arguments[arguments.index("--process_count_per_node") + 1] = 1
    else:  # without it, the runner starts one worker per core
        arguments[entry + 1:entry + 1] = ["--process_count_per_node", 1]
    runconfig = debug_runconfig(step._runconfig)
    runconfig.node_count = 1
    runconfig.environment_variables = {
        **(runconfig.environment_variables or {}),
        **parallel_worker_environment(request, config.entry_script),
    }
    debug_config = copy.copy(config)
    debug_config.entry_script, debug_config.node_count = parallel.SHIM, 1
    debug_config.process_count_per_node = 1
    for field, value in zip(fields, (parallel.SHIM, arguments, runconfig, debug_config, 1, 1,
                                     False), strict=True):
        setattr(step, field, value)
    notes.append(
        f"{step.name}: the debug copy runs on 1 node with 1 worker process (the step asks for "
        f"{config.node_count} x {config.process_count_per_node or 'one per core'})"
    )
    return saved


@contextlib.contextmanager
def debug_ready(
    specs: list[StepSpec], request: DebugRequest, notes: list[str],
    variables: dict[str, dict[str, str]] | None = None,
) -> Iterator[Any]:
    """The debugged steps' SDK objects made to run the bootstrap, for the submit only; yields
    what to submit: the user's Pipeline (``request.submitted``) built again from them, else the
    steps, or the one ScriptRunConfig. ``variables``: more environment variables for a step's
    node, by step name (the storage relay's blob URLs), set on the run configuration's copy."""
    saved: list[tuple[Any, dict[str, Any]]] = []
    try:
        for spec in specs:
            if not spec.debug:
                continue
            sdk = spec.sdk_object
            if parallel.is_parallel_step(sdk):
                saved.append((sdk, parallel_debug_copy(sdk, request, notes)))
                continue
            is_step = hasattr(sdk, "_script_name")
            fields = (
                ("_script_name", "_arguments", "_runconfig", "_allow_reuse")
                if is_step
                else ("script", "arguments", "run_config")
            )
            saved.append((sdk, {f: getattr(sdk, f) for f in fields}))
            script, arguments, runconfig = (getattr(sdk, f) for f in fields[:3])
            arguments, stripped = strip_guide_flags(list(arguments or []))
            if stripped:
                notes.append(f"{spec.name}: the guide's --remote_debug flags were left out")
            built = debug_runconfig(runconfig)
            if variables and spec.name in variables:
                built.environment_variables = {**(built.environment_variables or {}),
                                               **variables[spec.name]}
            command = [*azureml_bootstrap_options(request), "--", script, *arguments]
            values = [BOOTSTRAP, command, built]
            for field, value in zip(fields, values, strict=False):
                setattr(sdk, field, value)
            if is_step:
                if saved[-1][1]["_allow_reuse"]:
                    notes.append(f"{spec.name}: reuse is off, so the step runs and can be attached")
                sdk._allow_reuse = False
        objects = [spec.sdk_object for spec in specs]
        folders = [spec.source_directory for spec in specs if spec.debug]
        shim = any(spec.debug and parallel.is_parallel_step(spec.sdk_object) for spec in specs)
        with shipped_bootstrap(folders, parallel.SHIPPED_NAMES if shim else None,
                               with_debugpy=True):
            notes.append(shipped_debugpy_note())
            notes.append(post_mortem_note(request.post_mortem, request.timeout))
            if request.submitted is not None:  # its graph checks the bootstrap is in place
                yield pipeline_to_submit(request.submitted, objects)
            else:
                yield objects if hasattr(objects[0], "_script_name") else objects[0]
    finally:
        for sdk, fields in saved:
            for field, value in fields.items():
                setattr(sdk, field, value)
