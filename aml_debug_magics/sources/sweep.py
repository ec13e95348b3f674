"""One trial of a hyperparameter sweep, as the plain run Azure ML would start for it.

In: a sweep the user built (SDK v1 ``HyperDriveConfig``; SDK v2 ``command(...).sweep(...)``, a
``Sweep`` node, or a ``SweepJob`` from ``load_job``), duck-read, and the point the user asked
for with ``--params lr=0.01,batch=32``. Out: the trial's point (:class:`TrialPoint`: one value
per parameter, read from the SDK's own parameter expressions, and how each was chosen, for the
panel) and the trial itself, made the way Azure ML makes it: SDK v1 appends ``--NAME VALUE`` to
the ScriptRunConfig's arguments (the name as given, ``--`` put in front when it has none); SDK
v2 gives the point to the trial command's ``${{search_space.X}}`` (and to the inputs the
builder bound to the search space). Without ``--params``, each parameter takes the first point
of its expression: a choice its first value, a bounded distribution its low end (``uniform``,
``quniform``, ``randint``: the lower bound; ``loguniform``: ``exp`` of it), a normal one its
mean (``normal``: ``mu``; ``lognormal``: ``exp(mu)``), each ``q`` form rounded as Azure ML
rounds (``round(x / q) * q``). The sweep's sampling, early termination, limits and primary
metric do not apply to one trial, and the panel says so.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aml_debug_magics.errors import DebugInputError
from aml_debug_magics.records import StepSpec

IGNORED = "sampling, early termination, limits and primary metric do not apply to one trial"
_SEARCH_SPACE = re.compile(r"\$\{\{\s*search_space\.(\w+)\s*\}\}")
_INTEGER = re.compile(r"^[+-]?\d+$")


def _class_names(value: Any) -> set[str]:
    return {cls.__name__ for cls in type(value).__mro__}


@dataclass(frozen=True)
class Expression:
    """A parameter expression of either SDK, as its kind and its arguments."""

    kind: str  # choice, randint, uniform, quniform, loguniform, qloguniform, normal, ...
    arguments: tuple[Any, ...]  # a choice's values; a distribution's bounds, mean, sigma, q

    def __str__(self) -> str:
        return f"{self.kind}({', '.join(map(repr, self.arguments))})"

    def first(self) -> tuple[Any, str]:
        """The first point and how it was chosen."""
        kind, arguments = self.kind, self.arguments
        if kind == "choice":
            return arguments[0], f"first of {self}"
        if kind == "randint":
            return 0, f"low end of {self}"
        bounded = kind in ("uniform", "quniform", "loguniform", "qloguniform")
        value = arguments[0]
        if kind.endswith("log" + ("uniform" if bounded else "normal")):
            value = math.exp(value)
        if kind.startswith("q"):
            value = _rounded(value, arguments[2])
        return value, f"{'low end' if bounded else 'mean'} of {self}"

    def point(self, value: Any) -> Any:
        """``value`` as the sampler gives it (a choice's own option), or None when the sampler
        could not give it (not a choice's option, outside a distribution's bounds)."""
        arguments = self.arguments
        if self.kind == "choice":
            return next((option for option in arguments
                         if option == value or str(option) == str(value)), None)
        if isinstance(value, str):
            return None
        if self.kind == "randint":
            return value if isinstance(value, int) and 0 <= value < arguments[0] else None
        low, high = arguments[:2]
        if self.kind.endswith("loguniform"):
            low, high = math.exp(low), math.exp(high)
        if self.kind.endswith("uniform") and not low <= value <= high:
            return None
        return value

    def range_text(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(map(str, self.arguments))
        if self.kind == "randint":
            return f"an integer from 0 to {self.arguments[0] - 1}"
        low, high = self.arguments[:2]
        if self.kind.endswith("loguniform"):
            low, high = math.exp(low), math.exp(high)
        return f"a number from {low:g} to {high:g}"


def _rounded(value: float, q: float) -> float | int:
    rounded = round(value / q) * q
    return int(rounded) if isinstance(q, int) and float(rounded).is_integer() else rounded


def expression_of(name: str, value: Any) -> Expression:
    """An SDK v1 expression (``choice(16, 32)`` is ``["choice", [[16, 32]]]``) or an SDK v2
    one (``Choice(values=[16, 32])``, ``Uniform(min_value=..., max_value=...)``)."""
    if isinstance(value, list | tuple) and len(value) == 2 and isinstance(value[0], str):
        kind, arguments = value[0], list(value[1])
        if kind == "choice":
            arguments = list(arguments[0])
        return Expression(kind, tuple(arguments))
    kind = getattr(value, "type", None)
    fields = {
        "choice": ("values",), "randint": ("upper",),
        "uniform": ("min_value", "max_value"), "loguniform": ("min_value", "max_value"),
        "quniform": ("min_value", "max_value", "q"), "qloguniform": ("min_value", "max_value", "q"),
        "normal": ("mu", "sigma"), "lognormal": ("mu", "sigma"),
        "qnormal": ("mu", "sigma", "q"), "qlognormal": ("mu", "sigma", "q"),
    }
    if kind not in fields:
        raise DebugInputError(f"the search space's {name!r} is a {type(value).__name__}, not a "
                              "parameter expression this can read")
    arguments = [getattr(value, field) for field in fields[kind]]
    if kind == "choice":
        arguments = list(arguments[0])
    return Expression(kind, tuple(arguments))


@dataclass(frozen=True)
class TrialPoint:
    """One point of a search space: a value per parameter (its name as the sweep gives it) and
    how each was chosen."""

    values: dict[str, Any]
    chosen: dict[str, str]

    def describe(self) -> str:
        """What the panel says, e.g. ``one trial: lr=0.001 (low end of uniform(0.001, 0.1));
        sampling, ... do not apply to one trial``."""
        said = ", ".join(f"{name}={value} ({self.chosen[name]})"
                         for name, value in self.values.items())
        return f"one trial: {said}; {IGNORED}"


def parse_value(text: str) -> Any:
    """A value as the sampler would give it: an integer, a number, else the text."""
    if _INTEGER.match(text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def choose_point(space: Mapping[str, Any], params: str | None) -> TrialPoint:
    """The point to run: ``params`` (``lr=0.01,batch=32``) where given, the first point of each
    expression elsewhere; one line for an unknown name or a value the sampler could not give.

    >>> choose_point({"--lr": ["uniform", [0.001, 0.1]]}, "lr=0.01").values
    {'--lr': 0.01}
    """
    expressions = {name: expression_of(name, value) for name, value in space.items()}
    values, chosen = {}, {}
    for name, expression in expressions.items():
        values[name], chosen[name] = expression.first()
    by_bare_name = {name.lstrip("-"): name for name in expressions}
    for item in filter(None, (params or "").split(",")):
        given, sep, text = item.partition("=")
        given = given.strip()
        if not sep or not given:
            raise DebugInputError(f"--params takes NAME=VALUE pairs separated by commas, like "
                                  f"lr=0.01,batch=32 (got {item!r})")
        name = by_bare_name.get(given.lstrip("-"))
        if name is None:
            raise DebugInputError(f"--params {item}: the search space has no {given!r} (it has "
                                  f"{', '.join(expressions)})")
        value = expressions[name].point(parse_value(text.strip()))
        if value is None:
            raise DebugInputError(f"--params {item}: {name} is {expressions[name]}: give "
                                  f"{expressions[name].range_text()}")
        values[name], chosen[name] = value, "given with --params"
    return TrialPoint(values, chosen)


def is_sweep(value: Any) -> bool:
    """Whether ``value`` is a sweep of either SDK (a HyperDriveConfig, a Sweep, a SweepJob)."""
    return bool(_class_names(value) & {"HyperDriveConfig", "Sweep", "SweepJob"})


# -- SDK v1 -----------------------------------------------------------------------------------


def hyperdrive_trial(config: Any, params: str | None) -> tuple[Any, TrialPoint]:
    """The ScriptRunConfig a ``HyperDriveConfig`` runs, as a copy whose arguments end with the
    point, and that point: Azure ML appends ``--NAME VALUE`` for each parameter."""
    script_run = getattr(config, "run_config", None) or getattr(config, "_run_config", None)
    if "ScriptRunConfig" not in _class_names(script_run):
        raise DebugInputError("this HyperDriveConfig runs an estimator, not a ScriptRunConfig: "
                              "build it with run_config=ScriptRunConfig(...) to debug a trial")
    space = (getattr(config, "_generator_config", None) or {}).get("parameter_space") or {}
    point = choose_point(space, params)
    trial = copy.copy(script_run)
    trial.arguments = [*(script_run.arguments or []), *point_arguments(point)]
    return trial, point


def is_hyperdrive_step(step: Any) -> bool:
    return "HyperDriveStep" in _class_names(step)


def read_hyperdrive_step(
    step: Any, *, debug: bool, base_directory: Path, read_step: Callable[..., StepSpec],
    params: str | None = None,
) -> StepSpec:
    """A StepSpec that runs one trial of a pipeline's ``HyperDriveStep``, here: its
    ScriptRunConfig with the step's inputs and outputs, the point appended to the arguments the
    step holds; ``read_step`` reads a v1 step into a spec (as for a PythonScriptStep). The
    step's outputs (the best run's metrics and model) are HyperDrive's to write, not the
    trial's: their folders stay empty, and the row says so."""
    config = step._hyperdrive_config
    _, point = hyperdrive_trial(config, params if debug else None)
    script_run = config.run_config
    spec = read_step(
        name=step.name, source_directory=script_run.source_directory,
        script_name=script_run.script,
        arguments=[*(getattr(step, "_arguments", None) or []), *point_arguments(point)],
        inputs=getattr(step, "_inputs", None) or [], outputs=getattr(step, "_outputs", None) or [],
        runconfig=script_run.run_config, debug=debug, sdk_object=step,
        base_directory=base_directory,
    )
    left_empty = ", ".join(data.name for data in spec.writes)
    spec.trial = point.describe() + (
        f"; {left_empty}: written by HyperDrive from the best run, left empty here"
        if left_empty else ""
    )
    return spec


def point_arguments(point: TrialPoint) -> list[str]:
    """``--NAME VALUE`` for each parameter, as Azure ML adds them to a trial's arguments."""
    arguments = []
    for name, value in point.values.items():
        arguments += [name if name.startswith("-") else f"--{name}", str(value)]
    return arguments


# -- SDK v2 -----------------------------------------------------------------------------------


def sweep_trial_job(sweep: Any, params: str | None) -> tuple[Any, TrialPoint]:
    """A plain ``command(...)`` job that runs one trial of a v2 sweep (a ``Sweep`` or a
    ``SweepJob``), and the point it runs: each ``${{search_space.X}}`` of the trial's command
    reads the input X, given the point's value, as do the inputs the builder bound to X. Paths
    relative to the sweep's YAML (``code``, an input's ``path``) are made absolute."""
    from azure.ai.ml import Input, Output, command

    point = choose_point(dict(sweep.search_space or {}), params)
    trial = sweep.trial
    base = Path(str(getattr(sweep, "base_path", None) or ".")).resolve()
    declared = getattr(trial, "inputs", None) or {}  # a builder's component declares them
    inputs: dict[str, Any] = {}
    for name in [*declared, *(sweep.inputs or {})]:
        given = (sweep.inputs or {}).get(name)
        value = getattr(given, "_data", given)
        if value is None:  # bound to the search space, or left to the component's default
            value = getattr(declared.get(name), "default", None)
        if value is None:
            continue
        if "Input" in _class_names(value) and getattr(value, "path", None):
            path = str(value.path)
            if "://" not in path and not path.startswith("azureml:") and (base / path).exists():
                value = Input(type=value.type, path=str((base / path).resolve()),
                              mode=getattr(value, "mode", None))
        inputs[name] = value
    inputs.update(point.values)
    text = _SEARCH_SPACE.sub(lambda m: "${{inputs." + m[1] + "}}", trial.command or "")
    code = getattr(trial, "code", None)
    if isinstance(code, str | Path) and "://" not in str(code) and not str(code).startswith(
        "azureml:"
    ):
        code = str((base / str(code)).resolve())
    job = command(
        command=text, code=code, inputs=inputs,
        outputs={name: _output(out, (getattr(trial, "outputs", None) or {}).get(name), Output)
                 for name, out in (sweep.outputs or {}).items()},
        environment=getattr(trial, "environment", None),
        environment_variables=dict(getattr(trial, "environment_variables", None) or {}),
        compute=getattr(sweep, "compute", None),
        resources=getattr(trial, "resources", None) or getattr(sweep, "resources", None),
        distribution=getattr(trial, "distribution", None),
        display_name=getattr(sweep, "display_name", None),
        experiment_name=getattr(sweep, "experiment_name", None),
    )
    job.name = getattr(sweep, "name", None) or None
    return job, point


def _output(given: Any, declared: Any, output_class: type) -> Any:
    """An output as the sweep gives it, or one of the type its component declares."""
    value = getattr(given, "_data", given)
    if value is not None and "Output" in _class_names(value):
        return value
    return output_class(type=getattr(declared, "type", None) or "uri_folder")


class SweepTrialNode:
    """A pipeline's sweep node seen as the command node its one trial is: the trial's command
    with the point written in for ``${{search_space.X}}`` and for the inputs bound to the search
    space (Azure ML substitutes the text), the node's other inputs and its outputs as bound."""

    def __init__(self, sweep: Any, point: TrialPoint) -> None:
        trial = sweep.trial
        self.name = sweep.name
        self.component = trial  # its base_path, and its inputs' defaults
        self.code = getattr(trial, "code", None)
        self.base_path = getattr(sweep, "base_path", None)
        self.inputs = {name: value for name, value in (sweep.inputs or {}).items()
                       if name not in point.values}
        self.outputs = sweep.outputs
        self.environment_variables = dict(getattr(trial, "environment_variables", None) or {})

        def written(match: re.Match[str]) -> str:
            return str(point.values[match[2]]) if match[2] in point.values else match[0]

        self.command = re.sub(r"\$\{\{\s*(search_space|inputs)\.(\w+)\s*\}\}", written,
                              trial.command or "")


def trial_node(sweep: Any, params: str | None) -> tuple[SweepTrialNode, TrialPoint]:
    """A pipeline's sweep node as the command node of its one trial, and the point it runs."""
    point = choose_point(dict(sweep.search_space or {}), params)
    return SweepTrialNode(sweep, point), point
