"""``mldesigner execute``: run one component function of a source file with the given inputs."""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import os
import sys
from pathlib import Path
from typing import Any

from mldesigner import Input, Output


def _parse_value(annotation: Any, text: str) -> Any:
    kind = annotation.type if isinstance(annotation, Input) else {
        int: "integer", float: "number", bool: "boolean", str: "string"
    }.get(annotation, "string")
    if kind == "integer":
        return int(text)
    if kind == "number":
        return float(text)
    if kind == "boolean":
        return text.lower() in ("true", "1", "yes")
    return text


def _execute(source: str, name: str | None, inputs: dict, outputs: dict) -> Any:
    path = Path(source).resolve()
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    found = [f for f in vars(module).values() if getattr(f, "_is_mldesigner_component", False)]
    if name is not None:
        found = [f for f in found if f._component_name == name]
    if len(found) != 1:
        raise SystemExit(f"mldesigner: no single component named {name!r} in {source}")
    function = found[0]
    arguments = {}
    for parameter in inspect.signature(function).parameters.values():
        annotation = parameter.annotation
        if isinstance(annotation, Output):
            folder = outputs.get(parameter.name, parameter.name)
            if annotation.type == "uri_folder":
                os.makedirs(folder, exist_ok=True)
            arguments[parameter.name] = folder
        elif parameter.name in inputs:
            arguments[parameter.name] = _parse_value(annotation, inputs[parameter.name])
    return function(**arguments)


def _pairs(items: list[str] | None) -> dict[str, str]:
    return dict(item.split("=", 1) for item in items or [])


def main() -> None:
    parser = argparse.ArgumentParser(prog="mldesigner")
    commands = parser.add_subparsers(dest="action")
    execute = commands.add_parser("execute")
    execute.add_argument("--source", required=True)
    execute.add_argument("--name")
    execute.add_argument("--inputs", nargs="*")
    execute.add_argument("--outputs", nargs="*")
    args = parser.parse_args(sys.argv[1:] or ["-h"])
    if args.action == "execute":
        _execute(args.source, args.name, _pairs(args.inputs), _pairs(args.outputs))
