"""Read Azure ML SDK v1 steps (and a ScriptRunConfig) into plain records a target can run.

The SDK objects are duck-read, never imported here: the user built them, so their modules are
already loaded, and ``import azureml`` stays out of ``%load_ext``. What a step reads and writes
(``PipelineData``, ``OutputFileDatasetConfig``) becomes a :class:`DataFolder`; the local target
turns each into a folder on this machine, passed to the step that writes it and to every step
that reads it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aml_debug_magics.errors import DebugInputError

SUPPORTED_KIND = "PythonScriptStep"
_OUTPUT_PREFIX = "DatasetOutputConfig:"
_INPUT_PREFIX = "DatasetConsumptionConfig:"


@dataclass(frozen=True)
class DataFolder:
    """A piece of data passed between steps (a PipelineData or an OutputFileDatasetConfig)."""

    name: str


Argument = str | DataFolder


@dataclass
class StepSpec:
    """One script to run: where, with which arguments and environment, and whether to debug it."""

    name: str
    source_directory: Path
    script_name: str
    arguments: list[Argument] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    reads: list[DataFolder] = field(default_factory=list)
    writes: list[DataFolder] = field(default_factory=list)
    debug: bool = True
    sdk_object: Any = None  # the user's step or ScriptRunConfig, for targets that submit it

    @property
    def script(self) -> Path:
        return self.source_directory / self.script_name


def _class_names(value: Any) -> set[str]:
    return {cls.__name__ for cls in type(value).__mro__}


def _is_step(value: Any) -> bool:
    return "PipelineStep" in _class_names(value)


def _kind(step: Any) -> str:
    return type(step).__name__


def steps_of(pipeline: Any, variable: str) -> list[Any]:
    """The SDK steps held by a ``Pipeline``, a list of steps, or one step.

    Steps that produce a ``PipelineData`` a listed step reads are added, as ``Pipeline`` itself
    does (``resolve_closure``).
    """
    if "Pipeline" in _class_names(pipeline) and hasattr(pipeline, "_graph_builder"):
        steps = list(getattr(pipeline._graph_builder, "_step2node", {}))
        if not steps:
            raise DebugInputError(f"the pipeline {variable!r} holds no steps")
    elif _is_step(pipeline):
        steps = [pipeline]
    elif isinstance(pipeline, list | tuple):
        if not pipeline:
            raise DebugInputError(f"{variable!r} is an empty list: put the pipeline's steps in it")
        strays = [
            f"{type(s).__name__} at index {i}" for i, s in enumerate(pipeline) if not _is_step(s)
        ]
        if strays:
            raise DebugInputError(
                f"{variable!r} must hold pipeline steps only; it also holds {', '.join(strays)}"
            )
        steps = list(pipeline)
    else:
        raise DebugInputError(
            f"{variable!r} is a {type(pipeline).__name__}: give an Azure ML Pipeline, a list of "
            f"steps, or one {SUPPORTED_KIND}"
        )
    for step in list(steps):
        for item in list(getattr(step, "_inputs", []) or []):
            producer = getattr(_bound(item), "_producer", None)
            if producer is not None and producer not in steps:
                steps.append(producer)
    return steps


def pick_steps(steps: Sequence[Any], wanted: Sequence[str] | None) -> set[str]:
    """Names of the steps to debug: ``wanted``, checked, or every PythonScriptStep."""
    names = [s.name for s in steps]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DebugInputError(
            f"several steps are named {duplicates[0]!r}: give each step a unique name"
        )
    if not wanted:
        return {s.name for s in steps if _kind(s) == SUPPORTED_KIND}
    by_name = {s.name: s for s in steps}
    for name in wanted:
        if name not in by_name:
            raise DebugInputError(f"no step named {name!r}; the steps are: {', '.join(names)}")
        if _kind(by_name[name]) != SUPPORTED_KIND:
            raise DebugInputError(
                f"step {name!r} is a {_kind(by_name[name])}: only {SUPPORTED_KIND} steps can be "
                "debugged so far"
            )
    return set(wanted)


def read_steps(
    steps: Sequence[Any], debugged: set[str], *, base_directory: Path, target: str = "local"
) -> list[StepSpec]:
    """StepSpecs for ``steps``, in an order where every step runs after what it reads.

    For a target that submits the steps (``azureml``), data is left to Azure ML: the specs
    only say which step is which and where its script lives.
    """
    if target != "local":
        return [_submitted_spec(step, step.name in debugged, base_directory) for step in steps]
    for step in steps:
        if _kind(step) != SUPPORTED_KIND:
            raise DebugInputError(
                f"step {step.name!r} is a {_kind(step)}, which the {target} target cannot run "
                f"yet (it runs {SUPPORTED_KIND} steps): use --target azureml"
            )
    specs = [
        _spec(
            name=step.name,
            source_directory=getattr(step, "_source_directory", None),
            script_name=getattr(step, "_script_name", None),
            arguments=getattr(step, "_arguments", None) or [],
            inputs=getattr(step, "_inputs", None) or [],
            outputs=getattr(step, "_outputs", None) or [],
            runconfig=getattr(step, "_runconfig", None),
            debug=step.name in debugged,
            sdk_object=step,
            base_directory=base_directory,
        )
        for step in steps
    ]
    after = {s.name: {p.name for p in getattr(s, "run_after_steps", []) or []} for s in steps}
    return _dependency_order(specs, after)


def _submitted_spec(sdk_object: Any, debug: bool, base_directory: Path) -> StepSpec:
    script = getattr(sdk_object, "_script_name", None) or getattr(sdk_object, "script", None)
    folder = getattr(sdk_object, "_source_directory", None) or getattr(
        sdk_object, "source_directory", None
    )
    name = getattr(sdk_object, "name", None) or Path(script or "run").stem
    source_directory = (base_directory / (folder or ".")).resolve()
    if debug and not (script and (source_directory / script).is_file()):
        raise DebugInputError(
            f"step {name!r}: script not found: {source_directory / (script or '?')} (check "
            "source_directory and script_name)"
        )
    return StepSpec(
        name=name,
        source_directory=source_directory,
        script_name=script or "",
        debug=debug,
        sdk_object=sdk_object,
    )


def read_script_run(
    config: Any, variable: str, *, base_directory: Path, target: str = "local"
) -> StepSpec:
    """A StepSpec for an SDK v1 ``ScriptRunConfig``."""
    if "ScriptRunConfig" not in _class_names(config):
        raise DebugInputError(
            f"{variable!r} is a {type(config).__name__}: give a script path or a ScriptRunConfig"
        )
    if not getattr(config, "script", None):
        raise DebugInputError(
            f"{variable!r} runs a command, not a script: give it script= to debug it"
        )
    if target != "local":
        return _submitted_spec(config, True, base_directory)
    spec = _spec(
        name=Path(config.script).stem,
        source_directory=config.source_directory,
        script_name=config.script,
        arguments=config.arguments or [],
        inputs=[],
        outputs=[],
        runconfig=config.run_config,
        debug=True,
        sdk_object=config,
        base_directory=base_directory,
    )
    produced = [d for d in spec.reads if d not in spec.writes]
    if produced:
        raise DebugInputError(
            f"{variable!r} reads {produced[0].name!r}, which only a pipeline step can write: "
            "debug the pipeline with %aml_debug_pipeline"
        )
    return spec


def script_spec(
    script: str, arguments: Sequence[str], *, base_directory: Path
) -> StepSpec:
    """A StepSpec for ``%aml_debug_run SCRIPT ARGS``."""
    path = (base_directory / script).resolve()
    if not path.is_file():
        raise DebugInputError(f"script not found: {script} (looked in {base_directory})")
    return StepSpec(
        name=path.stem, source_directory=path.parent, script_name=path.name,
        arguments=list(arguments),
    )


# ---------------------------------------------------------------------------------------------


def _bound(item: Any) -> Any:
    """What an input binding (``data.as_input()``, ``as_mount()``) points at."""
    return getattr(item, "_bind_object", item)


def _spec(
    *,
    name: str,
    source_directory: str | os.PathLike[str] | None,
    script_name: str | None,
    arguments: Iterable[Any],
    inputs: Iterable[Any],
    outputs: Iterable[Any],
    runconfig: Any,
    debug: bool,
    sdk_object: Any,
    base_directory: Path,
) -> StepSpec:
    if not script_name:
        raise DebugInputError(f"step {name!r} has no script_name")
    folder = (base_directory / (source_directory or ".")).resolve()
    if not (folder / script_name).is_file():
        raise DebugInputError(
            f"step {name!r}: script not found: {folder / script_name} (check source_directory "
            "and script_name)"
        )
    by_arg_value = {
        getattr(item, "arg_val", None): item for item in [*inputs, *outputs]
    }
    writes = [_data_folder(item, name) for item in outputs]
    reads = [_data_folder(item, name) for item in inputs]
    resolved: list[Argument] = []
    for argument in arguments:
        if isinstance(argument, str) and argument.startswith((_OUTPUT_PREFIX, _INPUT_PREFIX)):
            argument = by_arg_value.get(argument, argument)
        value = _argument(argument, name)
        if isinstance(value, DataFolder) and value not in writes and value not in reads:
            (writes if _is_output(argument) else reads).append(value)
        resolved.append(value)
    return StepSpec(
        name=name,
        source_directory=folder,
        script_name=script_name,
        arguments=resolved,
        environment=_environment_of(runconfig),
        reads=[d for d in reads if d not in writes],
        writes=writes,
        debug=debug,
        sdk_object=sdk_object,
    )


def _is_output(value: Any) -> bool:
    names = _class_names(value)
    return bool(names & {"OutputDatasetConfig", "PipelineData"}) and "InputPortBinding" not in names


def _data_folder(item: Any, step: str) -> DataFolder:
    item = _bound(item)
    names = _class_names(item)
    if "DatasetConsumptionConfig" in names:
        source = item.dataset
        if "OutputDatasetConfig" in _class_names(source):
            return DataFolder(source.name)
        label = getattr(item, "name", None) or getattr(source, "name", None) or "a dataset"
        raise DebugInputError(
            f"step {step!r} reads the {type(source).__name__} {label!r}, which needs an Azure ML "
            "workspace: use --target azureml"
        )
    if "PipelineData" in names:
        return DataFolder(item._name)
    if "OutputDatasetConfig" in names:
        return DataFolder(item.name)
    raise DebugInputError(
        f"step {step!r} reads a {type(item).__name__}, which needs an Azure ML workspace: "
        "use --target azureml"
    )


def _argument(value: Any, step: str) -> Argument:
    if isinstance(value, str):
        if value.startswith((_OUTPUT_PREFIX, _INPUT_PREFIX)):
            raise DebugInputError(
                f"step {step!r}: argument {value!r} names data the step does not list"
            )
        return value
    if isinstance(value, bool | int | float):
        return str(value)
    if "PipelineParameter" in _class_names(value):
        return _argument(value.default_value, step)
    return _data_folder(value, step)


def _environment_of(runconfig: Any) -> dict[str, str]:
    if runconfig is None:
        return {}
    found: dict[str, str] = {}
    environment = getattr(runconfig, "environment", None)
    for source in (
        getattr(environment, "environment_variables", None),
        getattr(runconfig, "environment_variables", None),
    ):
        if isinstance(source, Mapping):
            found.update({str(k): str(v) for k, v in source.items()})
    return found


def _dependency_order(specs: list[StepSpec], after: dict[str, set[str]]) -> list[StepSpec]:
    writers: dict[DataFolder, str] = {}
    for spec in specs:
        for data in spec.writes:
            writers[data] = spec.name
    needs: dict[str, set[str]] = {}
    for spec in specs:
        needs[spec.name] = set(after.get(spec.name, ()))
        for data in spec.reads:
            if data not in writers:
                raise DebugInputError(
                    f"step {spec.name!r} reads {data.name!r}, which no step of the pipeline writes"
                )
            needs[spec.name].add(writers[data])
    ordered: list[StepSpec] = []
    done: set[str] = set()
    while len(ordered) < len(specs):
        ready = [s for s in specs if s.name not in done and needs[s.name] <= done]
        if not ready:
            stuck = sorted(s.name for s in specs if s.name not in done)
            raise DebugInputError(f"the steps {', '.join(stuck)} wait on each other in a cycle")
        ordered.append(ready[0])
        done.add(ready[0].name)
    return ordered
