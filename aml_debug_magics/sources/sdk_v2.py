"""Read Azure ML SDK v2 jobs (``command(...)`` jobs, and ``@dsl.pipeline`` PipelineJobs of
command nodes) into the plain records a target runs.

In: the user's job object, duck-read (``azure.ai.ml`` is already imported by whoever built it,
and stays out of ``%load_ext``). Out: one :class:`~aml_debug_magics.records.StepSpec` per command
node, in dependency order. A node's ``command`` is split like a shell would and its
``${{inputs.X}}`` / ``${{outputs.Y}}`` are resolved: literals become their text, a
``uri_file``/``uri_folder`` input with a local path becomes that path, one from elsewhere an
:class:`~aml_debug_magics.records.ExternalInput` (``--input NAME=PATH``), an output a
:class:`~aml_debug_magics.records.DataFolder` that the nodes reading it share, and
``${{parent.inputs.X}}`` bindings take the pipeline's values.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aml_debug_magics.errors import DebugInputError
from aml_debug_magics.records import Argument, DataFolder, ExternalInput, StepSpec
from aml_debug_magics.sources.sdk_v1 import dependency_order

_PLACEHOLDER = re.compile(r"\$\{\{\s*(inputs|outputs)\.(\w+)\s*\}\}")
_PYTHONS = re.compile(r"^python(3(\.\d+)?)?$")


def _class_names(value: Any) -> set[str]:
    return {cls.__name__ for cls in type(value).__mro__}


def nodes_of(job: Any, variable: str) -> dict[str, Any]:
    """The command nodes of a PipelineJob by name, or a command job as its only node."""
    names = _class_names(job)
    if "PipelineJob" in names:
        nodes = dict(getattr(job, "jobs", None) or {})
        if not nodes:
            raise DebugInputError(f"the pipeline {variable!r} holds no jobs")
        return nodes
    if "Command" in names and hasattr(job, "command"):
        return {job.name or variable: job}
    raise DebugInputError(
        f"{variable!r} is a {type(job).__name__}: give a command(...) job or a PipelineJob "
        "from a @dsl.pipeline function"
    )


def pick_nodes(nodes: dict[str, Any], wanted: Sequence[str] | None) -> set[str]:
    """Names of the nodes to debug: ``wanted``, checked, or every command node."""
    commands = {name for name, node in nodes.items() if "Command" in _class_names(node)}
    if not wanted:
        return commands
    for name in wanted:
        if name not in nodes:
            raise DebugInputError(
                f"no node named {name!r}; the nodes are: {', '.join(nodes)} (a node's name is "
                "its variable's name inside the pipeline function)"
            )
        if name not in commands:
            raise DebugInputError(
                f"node {name!r} is a {type(nodes[name]).__name__}: only command nodes can be "
                "debugged"
            )
    return set(wanted)


def read_job(
    job: Any, variable: str, debugged: set[str], *, base_directory: Path, target: str = "local"
) -> list[StepSpec]:
    """StepSpecs for every node of ``job``, in an order where each runs after what it reads.

    For a target that submits the job (``azureml``), a node that is not debugged goes as it is,
    whatever it runs: its spec only names it.
    """
    nodes = nodes_of(job, variable)
    pipeline_inputs = {
        name: getattr(value, "_data", value)
        for name, value in (getattr(job, "inputs", None) or {}).items()
    } if "PipelineJob" in _class_names(job) else {}
    specs = []
    for name, node in nodes.items():
        try:
            specs.append(_node_spec(name, node, name in debugged, pipeline_inputs, base_directory))
        except DebugInputError:
            if target == "local" or name in debugged:
                raise
            specs.append(StepSpec(name, base_directory, "", debug=False, sdk_object=node))
    return dependency_order(specs, {})


def _node_spec(
    name: str, node: Any, debug: bool, pipeline_inputs: dict[str, Any], base_directory: Path
) -> StepSpec:
    if "Command" not in _class_names(node):
        raise DebugInputError(
            f"node {name!r} is a {type(node).__name__}: the local target runs command nodes only"
        )
    words = shlex.split(node.command or "")
    if len(words) < 2 or not _PYTHONS.match(Path(words[0]).name) or words[1].startswith("-"):
        raise DebugInputError(
            f"node {name!r} runs `{node.command}`: only a `python SCRIPT ARGS` command can run "
            "under the debugger (and on the local target)"
        )
    code = node.code if isinstance(node.code, str | Path) else None
    folder = (base_directory / (code or ".")).resolve()
    script = words[1]
    if not (folder / script).is_file():
        raise DebugInputError(
            f"node {name!r}: script not found: {folder / script} (check code= and the command)"
        )
    writes: list[DataFolder] = []
    reads: list[DataFolder] = []
    external: list[ExternalInput] = []
    arguments: list[Argument] = []
    for word in words[2:]:
        value = _resolve_word(word, name, node, pipeline_inputs, base_directory)
        if isinstance(value, DataFolder):
            (writes if value.name.startswith(f"{name}.") else reads).append(value)
        elif isinstance(value, ExternalInput):
            external.append(value)
        arguments.append(value)
    return StepSpec(
        name=name,
        source_directory=folder,
        script_name=script,
        arguments=arguments,
        environment={str(k): str(v) for k, v in (node.environment_variables or {}).items()},
        reads=list(dict.fromkeys(reads)),
        writes=list(dict.fromkeys(writes)),
        external=list({e.name: e for e in external}.values()),
        debug=debug,
        sdk_object=node,
    )


def _resolve_word(
    word: str, name: str, node: Any, pipeline_inputs: dict[str, Any], base_directory: Path
) -> Argument:
    whole = _PLACEHOLDER.fullmatch(word)
    if whole:
        return _placeholder(whole[1], whole[2], name, node, pipeline_inputs, base_directory)

    def text(found: re.Match[str]) -> str:
        value = _placeholder(found[1], found[2], name, node, pipeline_inputs, base_directory)
        if not isinstance(value, str):
            raise DebugInputError(
                f"node {name!r}: write {found[0]} as a word of its own in the command (like "
                f"--data {found[0]}), not inside {word!r}"
            )
        return value

    return _PLACEHOLDER.sub(text, word)


def _placeholder(
    kind: str, port: str, name: str, node: Any, pipeline_inputs: dict[str, Any],
    base_directory: Path,
) -> Argument:
    if kind == "outputs":
        if port not in (node.outputs or {}):
            raise DebugInputError(f"node {name!r}: its command names ${{{{outputs.{port}}}}}, "
                                  "which it does not declare")
        return DataFolder(f"{name}.{port}")
    if port not in (node.inputs or {}):
        raise DebugInputError(
            f"node {name!r}: its command names ${{{{inputs.{port}}}}}, which it does not declare"
        )
    return _input_value(port, getattr(node.inputs[port], "_data", None), name, pipeline_inputs,
                        base_directory)


def _input_value(
    port: str, value: Any, name: str, pipeline_inputs: dict[str, Any], base_directory: Path
) -> Argument:
    names = _class_names(value)
    if "NodeOutput" in names and getattr(value, "_owner", None) is not None:
        return DataFolder(f"{value._owner.name}.{value._port_name}")
    if "PipelineInput" in names:
        key = getattr(value, "_port_name", None) or getattr(value, "_name", None)
        if key not in pipeline_inputs:
            raise DebugInputError(f"node {name!r}: input {port!r} is bound to the pipeline's "
                                  f"{key!r}, which has no value")
        return _input_value(key, pipeline_inputs[key], name, pipeline_inputs, base_directory)
    if isinstance(value, bool | int | float | str):
        return str(value)
    if "Input" in names:
        path = str(getattr(value, "path", "") or "")
        local = None if "://" in path or path.startswith("azureml:") else base_directory / path
        if local is not None and path and local.exists():
            return str(local.resolve())
        return ExternalInput(
            name=port, kind=f"{getattr(value, 'type', 'uri')} input",
            points_to=path or "no path", mode=str(getattr(value, "mode", None) or "mount"),
            source=value, downloadable=False,
        )
    if value is None:
        raise DebugInputError(f"node {name!r}: input {port!r} has no value")
    return str(value)
