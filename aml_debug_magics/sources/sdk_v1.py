"""Read Azure ML SDK v1 steps (and a ScriptRunConfig) into plain records a target can run.

The SDK objects are duck-read, never imported here: the user built them, so their modules are
already loaded, and ``import azureml`` stays out of ``%load_ext``. What a step reads and writes
(``PipelineData``, ``OutputFileDatasetConfig``) becomes a :class:`DataFolder`; the local target
turns each into a folder on this machine, passed to the step that writes it and to every step
that reads it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from aml_debug_magics.errors import DebugInputError
from aml_debug_magics.records import Argument, DataFolder, ExternalInput, StepSpec
from aml_debug_magics.sources import distribution
from aml_debug_magics.sources.parallel import is_parallel_step, read_parallel_step
from aml_debug_magics.sources.sweep import (
    hyperdrive_trial,
    is_hyperdrive_step,
    point_arguments,
    read_hyperdrive_step,
)

SUPPORTED_KIND = "PythonScriptStep"
_OUTPUT_PREFIX = "DatasetOutputConfig:"
_INPUT_PREFIX = "DatasetConsumptionConfig:"
_REFERENCE_PREFIX = "$AZUREML_DATAREFERENCE_"


def _class_names(value: Any) -> set[str]:
    return {cls.__name__ for cls in type(value).__mro__}


def is_pipeline_step(value: Any) -> bool:
    """Whether ``value`` is a pipeline step (of any kind), not a ScriptRunConfig."""
    return "PipelineStep" in _class_names(value)


def _kind(step: Any) -> str:
    return type(step).__name__


def is_pipeline(value: Any) -> bool:
    """Whether ``value`` is an SDK ``Pipeline`` (then it is submitted itself, with the
    description, defaults and workspace the user gave it)."""
    return "Pipeline" in _class_names(value) and hasattr(value, "_graph_builder")


def steps_of(pipeline: Any, variable: str) -> list[Any]:
    """The SDK steps held by a ``Pipeline``, a list of steps, or one step.

    Steps that produce a ``PipelineData`` a listed step reads are added, as ``Pipeline`` itself
    does (``resolve_closure``).
    """
    if is_pipeline(pipeline):
        steps = list(getattr(pipeline._graph_builder, "_step2node", {}))
        if not steps:
            raise DebugInputError(f"the pipeline {variable!r} holds no steps")
    elif is_pipeline_step(pipeline):
        steps = [pipeline]
    elif isinstance(pipeline, list | tuple):
        if not pipeline:
            raise DebugInputError(f"{variable!r} is an empty list: put the pipeline's steps in it")
        strays = [
            f"{type(s).__name__} at index {i}" for i, s in enumerate(pipeline)
            if not is_pipeline_step(s)
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
    return _with_predecessors(steps)


def _with_predecessors(steps: list[Any]) -> list[Any]:
    """``steps`` and every step they wait on, to a fixed point, as ``Pipeline`` resolves its
    closure: ``run_after``, the producers of ``PipelineData`` (and its dataset forms) and of
    ``OutputFileDatasetConfig``, however many levels deep."""
    found, pending = list(steps), list(steps)
    while pending:
        step = pending.pop(0)
        reads = [*(getattr(step, "_inputs", None) or [])]
        reads += getattr(step, "_arguments", None) or []
        waits_on = getattr(step, "run_after_steps", None) or []
        for needed in [*waits_on, *map(_producer_of, reads)]:
            if is_pipeline_step(needed) and not any(needed is f for f in found):
                found.append(needed)
                pending.append(needed)
    return found


def _producer_of(item: Any) -> Any:
    """The step that writes what ``item`` reads, or None (external data, plain values)."""
    item = _bound(item)
    if "DatasetConsumptionConfig" in _class_names(item):
        item = item.dataset
    names = _class_names(item)
    if "OutputDatasetConfig" in names:
        return getattr(getattr(item, "_origin", None), "producer_step", None)
    if "PipelineOutputAbstractDataset" in names:
        item = item._pipeline_data
    if "PipelineData" in _class_names(item):
        return getattr(item, "_producer", None)
    return None


def pick_steps(steps: Sequence[Any], wanted: Sequence[str] | None) -> set[str]:
    """Names of the steps to debug: ``wanted``, checked, or every PythonScriptStep."""
    names = [s.name for s in steps]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DebugInputError(
            f"several steps are named {duplicates[0]!r}: give each step a unique name"
        )
    if not wanted:
        return {s.name for s in steps if _debuggable(s)}
    by_name = {s.name: s for s in steps}
    for name in wanted:
        if name not in by_name:
            raise DebugInputError(f"no step named {name!r}; the steps are: {', '.join(names)}")
        if not _debuggable(by_name[name]):
            raise DebugInputError(
                f"step {name!r} is a {_kind(by_name[name])}: only {SUPPORTED_KIND}, "
                "ParallelRunStep and HyperDriveStep (one trial) steps can be debugged so far"
            )
    return set(wanted)


def _debuggable(step: Any) -> bool:
    return _kind(step) == SUPPORTED_KIND or is_parallel_step(step) or is_hyperdrive_step(step)


def read_steps(
    steps: Sequence[Any], debugged: set[str], *, base_directory: Path, target: str = "local",
    params: str | None = None,
) -> list[StepSpec]:
    """StepSpecs for ``steps``, in an order where every step runs after what it reads.

    For a target that submits the steps (``azureml``), data is left to Azure ML: the specs
    only say which step is which and where its script lives.
    """
    if target != "local":
        sweeps = [step.name for step in steps if is_hyperdrive_step(step)]
        if debugged and debugged <= set(sweeps):
            raise DebugInputError(
                f"step {sorted(debugged)[0]!r} is a HyperDriveStep: on Azure ML it runs its sweep "
                "as it is; debug one trial on the local target, or its HyperDriveConfig with "
                "%aml_debug_run --target azureml"
            )
        return [_submitted_spec(step, step.name in debugged and step.name not in sweeps,
                                base_directory) for step in steps]
    for step in steps:
        if not _debuggable(step):
            asked = ", ".join(repr(name) for name in sorted(debugged)) or "the pipeline"
            raise DebugInputError(
                f"{asked} can be debugged, but the pipeline also holds step {step.name!r}, a "
                f"{_kind(step)}, which the {target} target cannot run yet (it runs "
                f"{SUPPORTED_KIND}, ParallelRunStep and HyperDriveStep steps): use --target "
                "azureml"
            )
    specs = [
        read_parallel_step(step, debug=step.name in debugged, base_directory=base_directory,
                           read_step=_spec)
        if is_parallel_step(step) else read_hyperdrive_step(
            step, debug=step.name in debugged, base_directory=base_directory, read_step=_spec,
            params=params,
        ) if is_hyperdrive_step(step) else _spec(
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
    return dependency_order(specs, after)


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
    config: Any,
    variable: str,
    *,
    base_directory: Path,
    target: str = "local",
    namespace: Mapping[str, Any] | None = None,
) -> StepSpec:
    """A StepSpec for an SDK v1 ``ScriptRunConfig``.

    Its data is what its arguments hold, what its ``run_config.data`` names, and what a
    ``HyperDriveStep`` built from it took out of its arguments (the step keeps the dataset and
    leaves ``DatasetConsumptionConfig:NAME`` behind): that step is looked for in ``namespace``
    (the user's variables). Data left behind by name alone is read as an input of that name,
    for ``--input NAME=PATH`` to give.
    """
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
    inputs = _data_of_script_run(config, namespace or {})
    spec = _spec(
        name=Path(config.script).stem,
        source_directory=config.source_directory,
        script_name=config.script,
        arguments=[_named_data(a, inputs) for a in config.arguments or []],
        inputs=list(inputs.values()),
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


def read_hyperdrive(
    config: Any, variable: str, params: str | None, *, base_directory: Path, target: str,
    namespace: Mapping[str, Any],
) -> StepSpec:
    """The StepSpec of one trial of a ``HyperDriveConfig``: its ScriptRunConfig read as for
    ``%aml_debug_run`` (its data too), the point appended to its arguments."""
    trial, point = hyperdrive_trial(config, params)
    if target == "local":  # read from the user's own ScriptRunConfig: a HyperDriveStep may hold it
        spec = read_script_run(config.run_config, variable, base_directory=base_directory,
                               target=target, namespace=namespace)
        spec.arguments += point_arguments(point)
    else:  # the copy is what is submitted
        spec = read_script_run(trial, variable, base_directory=base_directory, target=target)
    spec.trial = point.describe()
    return spec


def _data_of_script_run(config: Any, namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The named inputs of a ScriptRunConfig outside its arguments, by name: its
    ``run_config.data`` and what a ``HyperDriveStep`` took out of its arguments."""
    found: dict[str, Any] = {}
    data = getattr(getattr(config, "run_config", None), "data", None)
    for name, item in (data or {}).items() if isinstance(data, Mapping) else ():
        if "DatasetConsumptionConfig" in _class_names(item):
            found[item.name] = item
        elif "Data" in _class_names(item):  # written by hand: a dataset id and a mechanism
            dataset = getattr(getattr(item, "data_location", None), "dataset", None)
            identity = getattr(dataset, "id", None) or getattr(dataset, "name", None)
            found[name] = ExternalInput(
                name=name, kind="dataset",
                points_to=f"dataset {identity}" if identity else "a dataset",
                mode=str(getattr(item, "mechanism", None) or "mount"), downloadable=False,
            )
    for value in list(namespace.values()):
        for step in _steps_in(value):
            tuning = getattr(step, "_hyperdrive_config", None)
            if tuning is None or getattr(tuning, "run_config", None) is not config:
                continue
            for item in getattr(step, "_inputs", None) or []:
                if "DatasetConsumptionConfig" in _class_names(_bound(item)):
                    found.setdefault(_bound(item).name, item)
    return found


def _steps_in(value: Any) -> list[Any]:
    """The steps a variable holds: a step, a list of steps, or a Pipeline's steps."""
    if is_pipeline_step(value):
        return [value]
    if isinstance(value, list | tuple):
        return [item for item in value if is_pipeline_step(item)]
    if "Pipeline" in _class_names(value) and hasattr(value, "_graph_builder"):
        return list(getattr(value._graph_builder, "_step2node", {}))
    return []


def _named_data(argument: Any, inputs: Mapping[str, Any]) -> Any:
    """An argument the SDK rewrote to ``DatasetConsumptionConfig:NAME``: the input of that name
    (an ExternalInput as is; a dataset the step's inputs map by that string), or, when the
    dataset is gone, an input known by its name alone."""
    if not (isinstance(argument, str) and argument.startswith(_INPUT_PREFIX)):
        return argument
    name = argument[len(_INPUT_PREFIX):]
    if name not in inputs:
        return ExternalInput(
            name=name, kind="dataset", points_to="a dataset a HyperDriveStep took out of the "
            "ScriptRunConfig's arguments", downloadable=False,
        )
    return inputs[name] if isinstance(inputs[name], ExternalInput) else argument


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
    inputs, outputs = list(inputs), list(outputs)
    by_arg_value = {key: item for item in [*inputs, *outputs] for key in _argument_keys(item)}
    writes = [_data_folder(item, name) for item in outputs]
    reads = [_data_folder(item, name) for item in inputs]
    named = {
        input_name: value for item, value in zip(inputs, reads, strict=True)
        if (input_name := _input_name(item))
    }
    resolved: list[Argument] = []
    for argument in arguments:
        if isinstance(argument, str) and argument.startswith(
            (_OUTPUT_PREFIX, _INPUT_PREFIX, _REFERENCE_PREFIX)
        ):
            argument = by_arg_value.get(argument, argument)
        value = _argument(argument, name)
        if isinstance(value, DataFolder | ExternalInput) and value not in writes + reads:
            (writes if _is_output(argument) else reads).append(value)
        input_name = _input_name(argument)
        if input_name and isinstance(value, DataFolder | ExternalInput):
            named.setdefault(input_name, value)
        resolved.append(value)
    return StepSpec(
        name=name,
        source_directory=folder,
        script_name=script_name,
        arguments=resolved,
        environment=_environment_of(runconfig),
        reads=[d for d in reads if isinstance(d, DataFolder) and d not in writes],
        writes=[d for d in writes if isinstance(d, DataFolder)],
        external=list({d.name: d for d in reads if isinstance(d, ExternalInput)}.values()),
        debug=debug,
        sdk_object=sdk_object,
        named_inputs=named,
        distribution=distribution.read_v1(runconfig, name),
    )


def _input_name(item: Any) -> str | None:
    """The name a step's input has in ``Run.get_context().input_datasets`` (a dataset consumed
    by name, as a mount or download, or directly), or None (a PipelineData, a DataReference)."""
    if isinstance(item, ExternalInput):
        return item.name if item.kind == "dataset" else None
    item = _bound(item)
    if "DatasetConsumptionConfig" in _class_names(item):
        return item.name
    if "PipelineOutputAbstractDataset" in _class_names(item):
        return getattr(item, "_input_name", None)
    return None


def _argument_keys(item: Any) -> list[str]:
    """The strings the SDK puts in a step's arguments in place of ``item``."""
    keys = [getattr(item, "arg_val", None)]
    bound = _bound(item)
    if "PipelineOutputAbstractDataset" in _class_names(bound):
        keys += [_INPUT_PREFIX + bound._input_name, _REFERENCE_PREFIX + bound._pipeline_data._name]
    elif "PipelineData" in _class_names(bound):
        keys.append(_REFERENCE_PREFIX + bound._name)
    elif "DataReference" in _class_names(bound):
        keys.append(_REFERENCE_PREFIX + bound.data_reference_name)
    return [k for k in keys if isinstance(k, str)]


def _is_output(value: Any) -> bool:
    names = _class_names(value)
    return bool(
        names & {"OutputDatasetConfig", "PipelineData", "PipelineOutputAbstractDataset"}
    ) and "InputPortBinding" not in names


def _data_folder(item: Any, step: str) -> DataFolder | ExternalInput:
    """What a step input or output is: data another step writes, or data from outside."""
    if isinstance(item, DataFolder | ExternalInput):  # read already (a ScriptRunConfig's data)
        return item
    binding = item
    item = _bound(item)
    names = _class_names(item)
    if "DatasetConsumptionConfig" in names:
        source = item.dataset
        if "PipelineParameter" in _class_names(source):  # a dataset as a parameter's default
            source = source.default_value
        if "OutputDatasetConfig" in _class_names(source):
            return DataFolder(source.name)
        if "PipelineOutputAbstractDataset" in _class_names(source):
            return DataFolder(source._pipeline_data._name)
        return _dataset_input(item, source)
    if "PipelineOutputAbstractDataset" in names:
        return DataFolder(item._pipeline_data._name)
    if "PipelineData" in names:
        return DataFolder(item._name)
    if "OutputDatasetConfig" in names:
        return DataFolder(item.name)
    if "DataReference" in names:
        datastore = getattr(getattr(item, "datastore", None), "name", None) or "a datastore"
        return ExternalInput(
            name=item.data_reference_name, kind="DataReference",
            points_to=f"{datastore}/{item.path_on_datastore or ''}",
            mode=str(getattr(binding, "mode", None) or item.mode or "mount"), source=item,
        )
    if "_PipelineIO" in names:  # a PipelineParameter holding a DataPath, with its binding
        parameter = getattr(item, "_datapath_param", None)
        datapath = getattr(parameter, "default_value", None) or getattr(item, "_datapath", None)
        binding_mode = getattr(getattr(item, "_datapath_compute_binding", None), "mode", None)
        return ExternalInput(
            name=getattr(parameter, "name", None) or item._name, kind="DataPath parameter",
            points_to=_datapath_text(datapath), mode=str(binding_mode or "mount"), source=datapath,
        )
    if "DataPath" in names:
        return ExternalInput(
            name=_datapath_text(item), kind="DataPath", points_to=_datapath_text(item),
            source=item,
        )
    raise DebugInputError(
        f"step {step!r} reads a {type(item).__name__.lstrip('_')}, which the local target "
        "cannot stand in for: use --target azureml"
    )


def _dataset_input(consumption: Any, dataset: Any) -> ExternalInput:
    kind = type(dataset).__name__
    registered = getattr(dataset, "name", None)
    if registered:
        version = getattr(dataset, "version", None)
        points_to = f"dataset {registered!r}" + (f" version {version}" if version else "")
    else:
        try:  # its repr holds the definition, paths quoted (and escaped once more in JSON)
            definition = repr(dataset)
        except Exception:  # a dataset without a definition raises from repr
            definition = ""
        paths = re.findall(r'(?:pattern|file|folder): \\?"([^"\\]+)', definition)
        points_to = ", ".join(paths) or "an unregistered dataset"
    return ExternalInput(
        name=consumption.name, kind=kind, points_to=points_to,
        mode=str(getattr(consumption, "mode", None) or "direct"), source=dataset,
    )


def _datapath_text(datapath: Any) -> str:
    datastore = getattr(datapath, "datastore_name", None) or getattr(
        getattr(datapath, "datastore", None), "name", None
    )
    path = getattr(datapath, "path_on_datastore", None) or ""
    return f"{datastore or 'a datastore'}/{path}"


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
        default = value.default_value
        if "DataPath" in _class_names(default):
            return ExternalInput(
                name=value.name, kind="DataPath parameter", points_to=_datapath_text(default),
                source=default,
            )
        return _argument(default, step)
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


def dependency_order(specs: list[StepSpec], after: dict[str, set[str]]) -> list[StepSpec]:
    """``specs`` ordered so each runs after the steps in ``after`` and the writers of what it
    reads; one line naming the data no step writes, or the steps that wait on each other."""
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
