"""Read Azure ML parallel steps (SDK v1 ``ParallelRunStep``; SDK v2 parallel nodes, from
``parallel_run_function``) into StepSpecs the local target runs through the node's runner.

In: the user's step or node (duck-read: its ``ParallelRunConfig`` and the arguments the SDK
built from it; a v2 node's task, ``input_data``, ``mini_batch_size``, ``error_threshold`` and
``append_row_to``). Out: a :class:`StepSpec` whose script is the user's entry script (its row
is named after it and maps its folder), which the local target runs through the node's runner
(:data:`RUNNER`, ``node/parallel_entry.py``) in that folder, with the runner's options (the
entry script, each primary input, file or tabular, the mini-batch size or the partition keys
with each input's name in the run context, output action, append-row file name, error
threshold, the output folder) and, after ``--``, the program arguments; inputs and outputs
are read as the step's SDK reads them elsewhere (a dataset becomes an ``--input NAME=PATH``
stand-in, a ``PipelineData`` or node output a folder). For a target that submits
(``azureml``), the spec only names the entry script; the debug copy there names the shipped
shim (``SHIPPED_NAMES``) as the entry script instead.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aml_debug_magics.errors import DebugInputError
from aml_debug_magics.records import Argument, DataFolder, DebugRequest, ExternalInput, StepSpec
from aml_debug_magics.sources.batch import is_batch_deployment

RUNNER = Path(__file__).resolve().parents[1] / "node" / "parallel_entry.py"
SHIPPED_NAMES = {"parallel_entry.py": "aml_debug_parallel_entry.py"}  # node file -> snapshot
SHIM = SHIPPED_NAMES["parallel_entry.py"]
_INPUT_FLAG = re.compile(r"--input(?:_ds_|_fds_|_pipeline_param_)?\d+")
_PLACEHOLDER = re.compile(r"\$\{\{\s*(inputs|outputs)\.(\w+)\s*\}\}")


def _class_names(value: Any) -> set[str]:
    return {cls.__name__ for cls in type(value).__mro__}


def is_parallel_step(step: Any) -> bool:
    """Whether ``step`` is an SDK v1 ``ParallelRunStep``."""
    return "_ParallelRunStepBase" in _class_names(step)


def entry_script_of(step: Any) -> str:
    return step._parallel_run_config.entry_script


def program_arguments(step: Any) -> list[Any]:
    """The ``arguments=`` the user gave the step: the SDK put them inside the runner's own
    (after its flags, before its ``--input_*`` ones); found by building those without them."""
    built = list(step._arguments or [])
    given = step._arguments
    step._arguments = None
    try:
        runner_only = step._generate_main_file_args()
    finally:
        step._arguments = given
    head = next((i for i, v in enumerate(runner_only)
                 if isinstance(v, str) and _INPUT_FLAG.fullmatch(v)), len(runner_only))
    tail = len(runner_only) - head
    return built[head:len(built) - tail]


def read_parallel_step(
    step: Any, *, debug: bool, base_directory: Path, read_step: Callable[..., StepSpec]
) -> StepSpec:
    """A StepSpec that runs ``step``'s entry script through the parallel runner, here;
    ``read_step`` reads a v1 step's script, arguments, inputs and outputs into a spec (as for
    a PythonScriptStep)."""
    config = step._parallel_run_config
    folder = (base_directory / (config.source_directory or ".")).resolve()
    if not (folder / config.entry_script).is_file():
        raise DebugInputError(
            f"step {step.name!r}: entry script not found: {folder / config.entry_script} "
            "(check the ParallelRunConfig's source_directory and entry_script)"
        )
    kind = "tabular" if step._input_ds_type == "tabular" else "files"
    keys = _partition_keys(getattr(step, "_partition_keys", None))
    options: list[Any] = [
        "--entry-script", config.entry_script, "--input-kind", kind,
        *(["--partition-keys", json.dumps(keys)] if keys
          else ["--mini-batch-size", str(step._mini_batch_size)]),
        "--error-threshold", str(step._error_threshold),
        "--output-action", config.output_action.lower(),
        "--append-row-file-name", config.append_row_file_name or "parallel_run_step.txt",
        *_failure_options(config.run_max_try, config.allowed_failed_count,
                          config.allowed_failed_percent),
    ]
    for primary in step._inputs or []:
        options += ["--input", primary]
        if keys and getattr(primary, "name", None):  # its dataset, from the run context
            options += ["--input-name", primary.name]
    outputs = list(step._output or [])
    if outputs:
        options += ["--output", outputs[0]]
    return read_step(
        name=step.name,
        source_directory=folder,
        script_name=config.entry_script,
        arguments=[*options, "--", *program_arguments(step)],
        inputs=[*(step._inputs or []), *(getattr(step, "_side_inputs", None) or [])],
        outputs=outputs,
        runconfig=step._runconfig,
        debug=debug,
        sdk_object=step,
        base_directory=base_directory,
    )


def check_worker_listens(request: DebugRequest) -> None:
    """On Azure ML a debugged parallel step's worker listens for the debugger (the shipped
    shim): ``--connect``, and ``--via storage`` / ``auto`` typed, are refused before a submit."""
    if request.target != "azureml":
        return
    found = next((spec.name for spec in request.steps if spec.debug and (
        is_parallel_step(spec.sdk_object) or is_parallel_node(spec.sdk_object))), None)
    if found is None:
        return
    if request.connect is not None:
        raise DebugInputError(
            f"--connect: {found!r} is a parallel step, whose worker on Azure ML listens for the "
            "debugger: drop --connect and attach to the port the panel shows"
        )
    if request.via != "listen" and not request.via_default:
        raise DebugInputError(
            f"--via {request.via}: {found!r} is a parallel step, whose worker on Azure ML only "
            "listens for the debugger: use --via listen"
        )


def check_mini_batches(specs: list[StepSpec], mini_batches: int | None, target: str) -> int | None:
    """``--mini-batches N``, checked: at least 1, on the local target, with a parallel step."""
    if mini_batches is None:
        return None
    if mini_batches < 1:
        raise DebugInputError(f"--mini-batches {mini_batches}: give 1 or more")
    if target != "local":
        raise DebugInputError(
            "--mini-batches is for the local target: on Azure ML the runner hands out every "
            "mini-batch"
        )
    if not any(is_parallel_spec(spec) for spec in specs):
        raise DebugInputError("--mini-batches is for parallel steps, and none is being run")
    return mini_batches


def is_parallel_spec(spec: StepSpec) -> bool:
    """Whether ``spec`` is a parallel step's (``ParallelRunStep``, SDK v2 parallel node, a batch
    deployment): its script is the user's entry script, which the local target runs through
    :data:`RUNNER`."""
    return (is_parallel_step(spec.sdk_object) or is_parallel_node(spec.sdk_object)
            or is_batch_deployment(spec.sdk_object))


def entry_stop_line(spec: StepSpec | None) -> int | None:
    """Where the notebook's debugger first stops in a parallel step's entry script: the first
    line of ``init()``, which the runner calls first (above it the module only imports and
    defines), else of ``run()``; None for any other step, or an entry script with neither
    (the stop then goes on the script's first line).

    For ``def init():`` / ``global model`` / ``model = load()`` it is the line of ``model =``:
    a ``global`` statement and a docstring run no code a debugger could stop on.
    """
    if spec is None or not is_parallel_spec(spec):
        return None
    try:
        tree = ast.parse(spec.script.read_text(encoding="utf-8", errors="replace"))
    except (OSError, SyntaxError, ValueError):
        return None
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    for name in ("init", "run"):
        runs = [statement for statement in getattr(functions.get(name), "body", [])
                if not isinstance(statement, ast.Global | ast.Nonlocal) and not (
                    isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)
                    and isinstance(statement.value.value, str))]
        if runs:
            return runs[0].lineno
    return None


def is_parallel_node(node: Any) -> bool:
    """Whether ``node`` is an SDK v2 parallel node (``parallel_run_function(...)``'s, or a
    parallel component's in a pipeline)."""
    return "Parallel" in _class_names(node) and "ParallelComponent" in _class_names(
        getattr(node, "component", None)
    )


def read_parallel_node(
    name: str,
    node: Any,
    *,
    debug: bool,
    base: Path,
    resolve: Callable[[str], Argument],
    target: str = "local",
) -> StepSpec:
    """A StepSpec that runs an SDK v2 parallel node's entry script through the runner, here.

    ``base`` is the folder its ``code`` is read from; ``resolve`` answers what an
    ``inputs.X`` / ``outputs.Y`` placeholder of the node stands for (a path, a literal's text,
    an ExternalInput, or the DataFolder of an output)."""
    task = node.task
    entry = getattr(task, "entry_script", None)
    code = getattr(task, "code", None)
    code = getattr(code, "path", code)
    if not entry or (code is not None and not isinstance(code, str | Path)):
        raise DebugInputError(f"node {name!r}: its task has no entry_script and code folder "
                              "(a RunFunction gives both)")
    if str(code).startswith("azureml:") or "://" in str(code):
        raise DebugInputError(f"node {name!r}: its code is {code}, not a folder on this machine")
    folder = (base / str(code or ".")).resolve()
    if not (folder / entry).is_file():
        raise DebugInputError(f"node {name!r}: entry script not found: {folder / entry} (check "
                              "the task's code and entry_script)")
    if target != "local":
        return StepSpec(name=name, source_directory=folder, script_name=entry, debug=debug,
                        sdk_object=node)
    port = _placeholder_name(node.input_data, name, "input_data", "inputs")
    data = resolve(f"inputs.{port}")
    declared = (getattr(node.component, "inputs", None) or {}).get(port)
    tabular = str(getattr(declared, "type", "")).lower() == "mltable"
    keys = _partition_keys(getattr(node, "partition_keys", None))
    options: list[Argument] = [
        "--entry-script", entry, "--input-kind", "tabular" if tabular else "files",
        *(["--partition-keys", json.dumps(keys)] if keys else
          ["--mini-batch-size", str(node.mini_batch_size or ("1MB" if tabular else "10"))]),
        "--error-threshold", str(-1 if node.error_threshold is None else node.error_threshold),
        *_failure_options(_max_retries(node), getattr(node, "mini_batch_error_threshold", None)),
        "--input", data,
    ]
    append_row_to = getattr(task, "append_row_to", None)
    if append_row_to:
        port = _placeholder_name(append_row_to, name, "append_row_to", "outputs")
        options += ["--output-action", "append_row", "--output", resolve(f"outputs.{port}")]
    else:
        options += ["--output-action", "summary_only"]
    program = [_program_word(word, resolve, name)
               for word in shlex.split(getattr(task, "program_arguments", None) or "")]
    values = [*options, *program]
    writes = [v for v in values if isinstance(v, DataFolder) and v.name.startswith(f"{name}.")]
    return StepSpec(
        name=name,
        source_directory=folder,
        script_name=entry,
        arguments=[*options, "--", *program],
        environment={str(k): str(v) for k, v in (node.environment_variables or {}).items()},
        reads=list(dict.fromkeys(v for v in values
                                 if isinstance(v, DataFolder) and v not in writes)),
        writes=list(dict.fromkeys(writes)),
        external=list(dict.fromkeys(v for v in values if isinstance(v, ExternalInput))),
        debug=debug,
        sdk_object=node,
    )


def _partition_keys(keys: Any) -> list[str]:
    """A step's or node's ``partition_keys`` as a list (a ``PipelineParameter``'s default is
    their JSON, as the SDK asks); empty without."""
    keys = getattr(keys, "default_value", keys)
    if isinstance(keys, str):
        try:
            keys = json.loads(keys)
        except ValueError:
            keys = [key.strip() for key in keys.split(",")]
    if keys and not isinstance(keys, list | tuple):
        keys = [keys]
    return [str(key) for key in keys or []]


def _failure_options(
    run_max_try: Any, allowed_failed_count: Any = None, allowed_failed_percent: Any = None
) -> list[str]:
    """The runner's options for what a failed mini-batch does: tried again up to
    ``run_max_try`` times (Azure ML's default: 3), then counted against the allowed failed
    mini-batches (SDK v1 ``allowed_failed_count`` / ``allowed_failed_percent``, SDK v2
    ``mini_batch_error_threshold``)."""
    options = ["--run-max-try", str(int(run_max_try) if run_max_try is not None else 3)]
    if allowed_failed_count is not None:
        options += ["--allowed-failed-count", str(int(allowed_failed_count))]
    if allowed_failed_percent is not None:
        options += ["--allowed-failed-percent", f"{float(allowed_failed_percent):g}"]
    return options


def _max_retries(node: Any) -> Any:
    """An SDK v2 node's ``retry_settings.max_retries`` (an object or a dict), or None."""
    settings = getattr(node, "retry_settings", None)
    if isinstance(settings, dict):
        return settings.get("max_retries")
    return getattr(settings, "max_retries", None)


def _placeholder_name(text: Any, node: str, field: str, kind: str) -> str:
    found = _PLACEHOLDER.fullmatch(str(text or "").strip())
    if not found or found[1] != kind:
        raise DebugInputError(f"node {node!r}: its {field} is {text!r}; the local target reads "
                              f"it as ${{{{{kind}.NAME}}}}")
    return found[2]


def _program_word(word: str, resolve: Callable[[str], Argument], node: str) -> Argument:
    """A word of ``program_arguments``: a placeholder alone is what it stands for; one inside
    a word is replaced by its text (a literal, or a local path)."""
    whole = _PLACEHOLDER.fullmatch(word)
    if whole:
        return resolve(f"{whole[1]}.{whole[2]}")

    def text_of(found: re.Match[str]) -> str:
        value = resolve(f"{found[1]}.{found[2]}")
        if not isinstance(value, str):
            raise DebugInputError(f"node {node!r}: program_arguments word {word!r} holds data "
                                  "inside a longer word: give it as a word of its own")
        return value

    return _PLACEHOLDER.sub(text_of, word)
