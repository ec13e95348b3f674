"""Read Azure ML SDK v2 jobs (``command(...)`` jobs, PipelineJobs from ``@dsl.pipeline`` or from
``load_job`` of a pipeline YAML, nested pipeline components included) into the plain records a
target runs.

In: the user's job object, duck-read (``azure.ai.ml`` is already imported by whoever built it,
and stays out of ``%load_ext``), the nodes to debug and, per node, which of its Python
invocations to debug. Out: one :class:`~aml_debug_magics.records.StepSpec` per command node, in
dependency order; a node of a nested pipeline is named ``outer.inner``. A node's ``command`` is
kept whole as a :class:`~aml_debug_magics.records.ShellCommand` (Azure ML runs it through bash,
in the code folder), with the span of the Python invocation to debug, if any, and every
``${{inputs.X}}`` / ``${{outputs.Y}}`` it holds resolved: literals become their text, a
``uri_file``/``uri_folder`` input with a local path that path, one from elsewhere an
:class:`~aml_debug_magics.records.ExternalInput` (``--input NAME=PATH``), an output a
:class:`~aml_debug_magics.records.DataFolder` that the nodes reading it share. Bindings to
``${{parent.inputs.X}}`` and ``${{parent.jobs.N.outputs.Y}}`` (objects after ``@dsl.pipeline``,
strings after ``load_job``) take the pipeline's values and the producer's folder, an input with
no value its ``default:``, and relative paths (``code:``, an input's ``path:``) are read from
the YAML file that wrote them, as Azure ML reads them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aml_debug_magics.errors import DebugInputError
from aml_debug_magics.records import Argument, DataFolder, ExternalInput, ShellCommand, StepSpec
from aml_debug_magics.sources import distribution, mldesigner, parallel, sweep
from aml_debug_magics.sources.sdk_v1 import dependency_order
from aml_debug_magics.sources.shell_line import PythonCall, read_line, resolve_optional

_PARENT_INPUT = re.compile(r"^\$\{\{\s*parent\.inputs\.(\w+)\s*\}\}$")
_PARENT_JOB_OUTPUT = re.compile(r"^\$\{\{\s*parent\.jobs\.(\w+)\.outputs\.(\w+)\s*\}\}$")
_PARENT_OUTPUT = re.compile(r"^\$\{\{\s*parent\.outputs\.(\w+)\s*\}\}$")


def _class_names(value: Any) -> set[str]:
    return {cls.__name__ for cls in type(value).__mro__}


def _is_pipeline_node(node: Any) -> bool:
    """A node that runs a pipeline component (``Command`` objects have ``jobs`` too)."""
    return "Pipeline" in _class_names(node) and "PipelineComponent" in _class_names(
        getattr(node, "component", None)
    )


@dataclass
class _Scope:
    """One pipeline's level: its nodes, its inputs' values, and its parent level."""

    prefix: str  # "" for the job itself, "outer." inside the node outer
    nodes: dict[str, Any]
    inputs: dict[str, Argument | None]  # None: declared with no value
    base: Path  # where the relative paths of this level's YAML are read from


@dataclass
class JobNode:
    """A node to run, by its full name, with the level it sits in."""

    name: str
    node: Any
    scope: _Scope

    @property
    def is_command(self) -> bool:
        """A command node, or a sweep node (its one trial is a command)."""
        return "Command" in _class_names(self.node) or sweep.is_sweep(self.node)


def nodes_of(job: Any, variable: str, *, base_directory: Path) -> dict[str, JobNode]:
    """The nodes of a PipelineJob by full name (a nested pipeline's nodes as ``outer.inner``),
    or a command job as its only node."""
    names = _class_names(job)
    base = _folder(getattr(job, "base_path", None), base_directory)
    if "PipelineJob" in names:
        if not getattr(job, "jobs", None):
            raise DebugInputError(f"the pipeline {variable!r} holds no jobs")
        top = _Scope("", dict(job.jobs), {}, base)
        top.inputs = {
            name: _value(getattr(value, "_data", value), name, f"the pipeline {variable!r}",
                         top, base)
            for name, value in (getattr(job, "inputs", None) or {}).items()
        }
        found: dict[str, JobNode] = {}
        _flatten(top, found)
        return found
    if ("Command" in names and hasattr(job, "command")) or parallel.is_parallel_node(job):
        return {job.name or variable: JobNode(job.name or variable, job,
                                              _Scope("", {}, {}, base))}
    raise DebugInputError(
        f"{variable!r} is a {type(job).__name__}: give a command(...) job or a PipelineJob "
        "(from a @dsl.pipeline function or load_job)"
    )


def _flatten(scope: _Scope, found: dict[str, JobNode]) -> None:
    for name, node in scope.nodes.items():
        full = scope.prefix + name
        if not _is_pipeline_node(node):
            found[full] = JobNode(full, node, scope)
            continue
        component = node.component
        inner = _Scope(f"{full}.", dict(component.jobs),
                       {}, _folder(getattr(component, "base_path", None), scope.base))
        for port, declared in (component.inputs or {}).items():
            given = getattr((node.inputs or {}).get(port), "_data", None)
            value = _value(given, port, f"node {full!r}", scope,
                           _folder(getattr(node, "base_path", None), scope.base))
            inner.inputs[port] = value if value is not None else _default(declared)
        _flatten(inner, found)


def pick_nodes(nodes: dict[str, JobNode], wanted: Sequence[str] | None) -> set[str]:
    """Names of the nodes asked for, checked: ``wanted``, or every command node."""
    commands = {name for name, job_node in nodes.items()
                if job_node.is_command or parallel.is_parallel_node(job_node.node)}
    if not wanted:
        return commands
    for name in wanted:
        inside = [n for n in nodes if n.startswith(f"{name}.")]
        if inside:
            raise DebugInputError(
                f"node {name!r} is a pipeline: name one of its nodes, like --node {inside[0]} "
                f"(its nodes are: {', '.join(inside)})"
            )
        if name not in nodes:
            raise DebugInputError(
                f"no node named {name!r}; the nodes are: {', '.join(nodes)} (a node's name is "
                "its name in the pipeline: its variable's in a pipeline function, its key under "
                "jobs: in YAML; outer.inner inside a nested pipeline)"
            )
        if name not in commands:
            raise DebugInputError(
                f"node {name!r} is a {type(nodes[name].node).__name__}: only command and "
                "parallel nodes can be debugged"
            )
    return set(wanted)


def parse_calls(values: Sequence[str], nodes: dict[str, JobNode]) -> dict[str, int]:
    """``--call NODE=N`` values as ``{NODE: N}`` (N counts a node's Python invocations from 1)."""
    calls: dict[str, int] = {}
    for value in values:
        name, sep, number = value.rpartition("=")
        if not sep or not name or not number.isdigit() or int(number) < 1:
            raise DebugInputError(
                f"--call takes NODE=N, like train=2 for the node's second Python command "
                f"(got {value!r})"
            )
        if name not in nodes:
            raise DebugInputError(f"--call {value}: no node named {name!r}; the nodes are: "
                                  f"{', '.join(nodes)}")
        calls[name] = int(number)
    return calls


def read_job(
    job: Any,
    variable: str,
    wanted: Sequence[str] | None = None,
    *,
    base_directory: Path,
    target: str = "local",
    calls: Sequence[str] = (),
    notes: list[str] | None = None,
    params: str | None = None,
) -> list[StepSpec]:
    """StepSpecs for every node of ``job``, in an order where each runs after what it reads.

    ``wanted`` names the nodes to debug (default: every command node that starts Python); a
    node named there that starts no Python is refused. ``calls`` (``NODE=N``) picks which of a
    node's Python invocations to debug; ``notes`` receives a line for each debugged node that
    has several. For a target that submits the job (``azureml``), a node that is not debugged
    goes as it is, whatever it runs: its spec only names it.
    """
    nodes = nodes_of(job, variable, base_directory=base_directory)
    asked = pick_nodes(nodes, wanted)
    chosen = parse_calls(calls, nodes)
    specs = []
    for name, job_node in nodes.items():
        try:
            spec = _node_spec(job_node, name in asked, bool(wanted), chosen.get(name),
                              base_directory, notes, target, params)
        except DebugInputError:
            if target == "local" or name in asked:
                raise
            spec = StepSpec(name, base_directory, "", debug=False, sdk_object=job_node.node)
        specs.append(spec)
    if not any(spec.debug for spec in specs):
        commands = "; ".join(f"{s.name} runs `{_one_line(s.command.text)}`"
                             for s in specs if s.command is not None)
        raise DebugInputError(f"nothing in {variable!r} starts Python (python SCRIPT or python "
                              f"-m MODULE) to debug: {commands}")
    for name in chosen:
        if not next(s for s in specs if s.name == name).debug:
            raise DebugInputError(f"--call {name}=...: node {name!r} is not debugged (add "
                                  f"--node {name})")
    return dependency_order(specs, {})


def _node_spec(
    job_node: JobNode, asked: bool, named: bool, call_number: int | None, base_directory: Path,
    notes: list[str] | None, target: str = "local", params: str | None = None,
) -> StepSpec:
    name, node = job_node.name, job_node.node
    if parallel.is_parallel_node(node):
        return parallel.read_parallel_node(
            name, node, debug=asked, target=target,
            base=_folder(getattr(node.component, "base_path", None) or job_node.scope.base,
                         base_directory),
            resolve=lambda written: _placeholder(written, job_node, base_directory),
        )
    if not job_node.is_command:
        raise DebugInputError(
            f"node {name!r} is a {type(node).__name__}: the local target runs command nodes only"
        )
    trial = ""  # a sweep node runs one trial: its point, for the row
    if sweep.is_sweep(node):
        if target != "local":
            if named and asked:
                raise DebugInputError(f"node {name!r} is a sweep: on Azure ML a sweep inside a "
                                      "pipeline goes as it is; debug one trial on the local "
                                      "target, or the sweep on its own")
            return StepSpec(name, base_directory, "", debug=False, sdk_object=node)
        node, point = sweep.trial_node(node, params if asked else None)
        job_node = JobNode(name, node, job_node.scope)
        trial = point.describe()
    text = node.command or ""
    component_source = None  # an mldesigner component's file, where its function is
    if asked and mldesigner.is_mldesigner_command(text):
        component_source = mldesigner.source_of(text)
        text = mldesigner.as_python(text, target)
    if target == "local":  # on Azure ML, Azure ML resolves them
        text = resolve_optional(text, lambda held: _given(held, job_node, base_directory))
    folder = _code_folder(name, node, job_node.scope.base, base_directory)
    line = read_line(text)
    debug = asked and bool(line.calls)
    if asked and named and not line.calls:
        raise DebugInputError(
            f"node {name!r} runs `{_one_line(text)}`: nothing in it starts Python "
            "(python SCRIPT or python -m MODULE) to debug; leave it out of --node and it runs "
            "as written"
        )
    call = _chosen_call(name, line.calls, call_number, notes) if debug else None
    placeholders: dict[str, Argument] = {}
    for found in line.placeholders:
        written = text[found.start:found.end]
        placeholders[written] = _placeholder(found.name, job_node, base_directory)
    writes = [v for v in placeholders.values()
              if isinstance(v, DataFolder) and v.name.startswith(f"{name}.")]
    reads = [v for v in placeholders.values() if isinstance(v, DataFolder) and v not in writes]
    external = [v for v in placeholders.values() if isinstance(v, ExternalInput)]
    script = component_source or _script_name(call or (line.calls[0] if line.calls else None),
                                              folder, text)
    if call is not None and not call.module and "$" not in call.program:
        if not (folder / script).is_file():
            raise DebugInputError(
                f"node {name!r}: script not found: {folder / script} (check code= and the "
                "command)"
            )
    return StepSpec(
        name=name,
        source_directory=folder,
        script_name=script,
        arguments=[_argument(w.raw, placeholders) for w in call.arguments] if call else [],
        environment={str(k): str(v) for k, v in (node.environment_variables or {}).items()},
        reads=list(dict.fromkeys(reads)),
        writes=list(dict.fromkeys(writes)),
        external=list(dict.fromkeys(external)),
        debug=debug,
        sdk_object=node,
        command=ShellCommand(text, call.interpreter if call else None, placeholders),
        trial=trial,
        distribution=distribution.read_v2(node, name) if target == "local" else None,
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _chosen_call(
    name: str, calls: list[PythonCall], number: int | None, notes: list[str] | None
) -> PythonCall:
    if number is not None and number > len(calls):
        raise DebugInputError(
            f"--call {name}={number}: node {name!r} starts Python {len(calls)} time(s): "
            + "; ".join(f"{i} `{c.text}`" for i, c in enumerate(calls, 1))
        )
    index = (number or 1) - 1
    if len(calls) > 1 and notes is not None:
        others = ", ".join(f"--call {name}={i} `{c.text}`"
                           for i, c in enumerate(calls, 1) if i - 1 != index)
        notes.append(f"node {name!r} starts Python {len(calls)} times: the debugger waits in "
                     f"`{calls[index].text}`; to pick another: {others}")
    return calls[index]


def _script_name(call: PythonCall | None, folder: Path, text: str) -> str:
    """The script's path in the code folder, for messages and path mappings; the best guess."""
    if call is not None:
        return call.script_in(lambda path: (folder / path).is_file())
    words = text.split()
    return next((w for w in words if (folder / w).is_file()), words[0] if words else "")


def _argument(raw: str, placeholders: dict[str, Argument]) -> Argument:
    """A word of the debugged invocation: a placeholder standing alone is what it stands for."""
    return placeholders.get(raw, raw)


def _folder(path: Any, base_directory: Path) -> Path:
    return (base_directory / str(path)).resolve() if path else base_directory.resolve()


def _code_folder(name: str, node: Any, scope_base: Path, base_directory: Path) -> Path:
    """``code`` read from the folder of the YAML (or the notebook) that declared it."""
    code = getattr(node, "code", None)
    if code is not None and not isinstance(code, str | Path):
        code = getattr(code, "path", None)
    if isinstance(code, str) and (code.startswith("azureml:") or "://" in code):
        raise DebugInputError(f"node {name!r}: its code is {code}, not a folder on this machine")
    base = _folder(getattr(getattr(node, "component", None), "base_path", None)
                   or getattr(node, "base_path", None) or scope_base, base_directory)
    folder = (base / str(code or ".")).resolve()
    if not folder.is_dir():
        raise DebugInputError(f"node {name!r}: its code folder {folder} does not exist (code= "
                              "is read from the folder of the YAML that declares it)")
    return folder


def _placeholder(written_name: str, job_node: JobNode, base_directory: Path) -> Argument:
    name, node = job_node.name, job_node.node
    kind, _, port = written_name.partition(".")
    if kind == "outputs" and port in (node.outputs or {}):
        return DataFolder(f"{name}.{port}", output_kind(node, port))
    if kind == "inputs" and port in (node.inputs or {}):
        value = _value(getattr(node.inputs[port], "_data", None), port, f"node {name!r}",
                       job_node.scope, _folder(getattr(node, "base_path", None) or
                                               job_node.scope.base, base_directory))
        if value is None:
            declared = (getattr(getattr(node, "component", None), "inputs", None) or {}).get(port)
            value = _default(declared)
        if value is None:
            raise DebugInputError(f"node {name!r}: input {port!r} has no value (and no "
                                  "default)")
        return value
    if kind in ("inputs", "outputs"):
        raise DebugInputError(f"node {name!r}: its command names ${{{{{written_name}}}}}, "
                              "which it does not declare")
    raise DebugInputError(f"node {name!r}: its command holds ${{{{{written_name}}}}}, which "
                          "the local target cannot fill in (only inputs.X and outputs.Y)")


def _given(written_name: str, job_node: JobNode, base_directory: Path) -> bool:
    """Whether a placeholder of an optional block has a value (an optional input left out
    has none)."""
    try:
        _placeholder(written_name, job_node, base_directory)
    except DebugInputError:
        return False
    return True


def _default(declared: Any) -> Argument | None:
    default = getattr(declared, "default", None)
    return None if default is None else str(default)


def _value(
    value: Any, port: str, owner: str, scope: _Scope, base: Path
) -> Argument | None:
    """What an input is given at ``scope``'s level, or None when it has no value."""
    names = _class_names(value)
    if isinstance(value, str):
        parent_input = _PARENT_INPUT.match(value)
        if parent_input:
            return _parent_input(parent_input[1], port, owner, scope)
        job_output = _PARENT_JOB_OUTPUT.match(value)
        if job_output:
            return _output_folder(job_output[1], job_output[2], scope, owner)
    if "NodeOutput" in names and getattr(value, "_owner", None) is not None:
        return _output_folder(value._owner.name, value._port_name, scope, owner)
    if "PipelineInput" in names:
        key = getattr(value, "_port_name", None) or getattr(value, "_name", None)
        return _parent_input(str(key), port, owner, scope)
    if isinstance(value, bool | int | float | str):
        return str(value)
    if "Input" in names or isinstance(value, dict):
        return _data_input(value, port, base)
    return None if value is None else str(value)


def _parent_input(key: str, port: str, owner: str, scope: _Scope) -> Argument | None:
    if key not in scope.inputs:
        raise DebugInputError(f"{owner}: input {port!r} is bound to the pipeline's {key!r}, "
                              "which the pipeline does not declare")
    value = scope.inputs[key]
    if value is None:
        raise DebugInputError(f"{owner}: input {port!r} is bound to the pipeline's {key!r}, "
                              "which has no value")
    return value


PRIMITIVE_TYPES = ("string", "integer", "number", "boolean")


def output_kind(node: Any, port: str) -> str:
    """What a node's output ``port`` is locally, from the type its component declares: a file
    (``uri_file``), a value (a primitive type: an mldesigner function's return), else a
    folder."""
    declared = str(getattr((getattr(node, "outputs", None) or {}).get(port), "type", "") or "")
    if declared == "uri_file":
        return "uri_file"
    return "primitive" if declared in PRIMITIVE_TYPES else "uri_folder"


def _output_folder(node_name: str, port: str, scope: _Scope, owner: str) -> DataFolder:
    """The folder a node's output is: a command node's own, or for a pipeline node, the folder
    of the inner node whose output is bound to that pipeline output."""
    if node_name not in scope.nodes:
        raise DebugInputError(f"{owner}: reads the outputs of {node_name!r}, which is not a node "
                              f"of its pipeline (the nodes are: {', '.join(scope.nodes)})")
    node = scope.nodes[node_name]
    if not _is_pipeline_node(node):
        return DataFolder(f"{scope.prefix}{node_name}.{port}", output_kind(node, port))
    for inner_name, inner in node.component.jobs.items():
        for inner_port, output in (getattr(inner, "outputs", None) or {}).items():
            bound = getattr(output, "_data", None)
            if isinstance(bound, str):
                match = _PARENT_OUTPUT.match(bound)
                bound_to = match[1] if match else None
            else:
                bound_to = getattr(bound, "_port_name", None) if "PipelineOutput" in \
                    _class_names(bound) else None
            if bound_to == port:
                inner_scope = _Scope(f"{scope.prefix}{node_name}.", dict(node.component.jobs),
                                     {}, scope.base)
                return _output_folder(inner_name, inner_port, inner_scope, owner)
    raise DebugInputError(f"{owner}: reads output {port!r} of the pipeline node "
                          f"{node_name!r}, which no node inside it writes")


def _data_input(value: Any, port: str, base: Path) -> Argument:
    """A data input: a local path (relative to the YAML or notebook that wrote it), or an
    :class:`ExternalInput` for the user's ``--input``."""
    read = value.get if isinstance(value, dict) else lambda key: getattr(value, key, None)
    path = str(read("path") or "")
    if not path and read("default") is not None:
        return str(read("default"))
    local = None if "://" in path or path.startswith("azureml:") else base / path
    if local is not None and path and local.exists():
        return str(local.resolve())
    return ExternalInput(
        name=port, kind=f"{read('type') or 'uri'} input",
        points_to=path or "no path", mode=str(read("mode") or "mount"),
        source=value, downloadable=False,
    )

