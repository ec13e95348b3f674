"""Debugging a scoring script (``init()`` / ``run()``): locally under the Azure ML inference
server, in its Docker image, or in an image Azure ML packages; given as ``--entry-script`` or as
an SDK v2 online deployment (``sdk_v2.py``)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aml_debug_magics.deploy.local import Deployment


def make_deployment(
    *,
    entry_script: str,
    source_dir: str | None,
    model_dir: str | None,
    scoring_port: int,
    wait_in_init: bool,
    sample_request: str | None,
    image: str | None,
    target: str,
    models: list[str],
    base: Path,
) -> Deployment:
    """Check what ``%aml_debug_deploy`` was given; one line naming what to fix if it is wrong."""
    from aml_debug_magics.deploy.local import Deployment, read_sample_request
    from aml_debug_magics.errors import DebugInputError

    folder = (base / source_dir).resolve() if source_dir else None
    script = ((folder or base) / entry_script).resolve()
    if not script.is_file():
        raise DebugInputError(f"entry script not found: {script}")
    folder = folder or script.parent
    if folder not in script.parents:
        raise DebugInputError(f"the entry script {script} is not inside --source-dir {folder}")
    try:
        tree = ast.parse(script.read_text(encoding="utf-8", errors="replace"))
    except SyntaxError:
        tree = None  # the server reports it with its own lines, on the panel
    for needed, why in (("run", "for every request"), ("init", "once, at start")):
        if tree is not None and needed not in _top_level_names(tree):
            raise DebugInputError(
                f"{script.name} defines no {needed}(): the inference server calls it {why}"
            )
    model = None
    if model_dir is not None:
        model = (base / model_dir).resolve()
        if not model.is_dir():
            raise DebugInputError(f"--model-dir {model_dir}: no such folder ({model})")
    try:
        sample = read_sample_request(sample_request, base)
    except ValueError as error:
        raise DebugInputError(str(error)) from None
    if target == "docker" and not image:
        raise DebugInputError("--target docker needs --image (e.g. what Model.package pulled)")
    if target == "azureml" and not models:
        raise DebugInputError("--target azureml needs --model NAME[:VERSION] to package")
    # the port is checked (or, when 0, picked) once the previous session has stopped
    return Deployment(script, folder, model, scoring_port, wait_in_init, sample, image)


def _top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names
