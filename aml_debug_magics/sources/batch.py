"""An SDK v2 batch deployment read as what Azure ML's batch runner runs: its scoring script.

In: a ``BatchDeployment`` or ``ModelBatchDeployment`` (azure-ai-ml) with a
``code_configuration``, and the local folder or file ``--input PATH`` gives as the job's input.
Out: a :class:`StepSpec` the local target runs through the parallel runner (``RUNNER``, as a
parallel step): ``init()`` once, ``run(mini_batch)`` per ``mini_batch_size`` files,
``output_action`` ``append_row`` into ``output_file_name`` or ``summary_only``, and
``error_threshold``; its ``environment_variables``, and ``AZUREML_MODEL_DIR`` as Azure ML sets
it (the folder holding the model's folder, so ``os.path.join(AZUREML_MODEL_DIR, "model")``
finds a model registered from ``./model``). The output folder is a local one the panel names;
the runner gives it to the script as ``AZUREML_BI_OUTPUT_PATH``. ``logging_level`` is Azure ML's
runner's own logging: nothing of the user's script reads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aml_debug_magics.errors import DebugInputError
from aml_debug_magics.records import DataFolder, StepSpec

BATCH_CLASSES = {"BatchDeployment", "ModelBatchDeployment"}
DEFAULT_MINI_BATCH_SIZE = 10  # Azure ML's default for a batch deployment
DEFAULT_OUTPUT_FILE = "predictions.csv"


def is_batch_deployment(value: Any) -> bool:
    return type(value).__name__ in BATCH_CLASSES and hasattr(value, "code_configuration")


def batch_output(spec: StepSpec) -> tuple[DataFolder, str] | None:
    """Where a batch deployment's ``append_row`` output goes (its folder, the file's name), or
    None for any other step and for ``summary_only``."""
    if not is_batch_deployment(spec.sdk_object) or "append_row" not in spec.arguments:
        return None
    folder = spec.arguments[spec.arguments.index("--output") + 1]
    name = spec.arguments[spec.arguments.index("--append-row-file-name") + 1]
    return (folder, str(name)) if isinstance(folder, DataFolder) else None


def read_batch_deployment(deployment: Any, variable: str, input_path: str | None, *,
                          base: Path) -> StepSpec:
    """The StepSpec of ``deployment`` run here on ``input_path`` (a folder of files, or one)."""
    code = getattr(deployment, "code_configuration", None)
    script = getattr(code, "scoring_script", None)
    if code is None or not script:
        raise DebugInputError(f"{variable} has no code_configuration: an MLflow model's batch "
                              "deployment runs Azure ML's own scoring, with no user code to step "
                              "through")
    if not input_path:
        raise DebugInputError(f"{variable} is a batch deployment: give the files it scores "
                              "with --input PATH (a folder or a file)")
    data = (base / input_path).resolve()
    if not data.exists():
        raise DebugInputError(f"--input {input_path}: no such file or folder (looked in {base})")
    root = Path(getattr(deployment, "base_path", None) or base)
    folder = (root / str(getattr(code, "code", None) or ".")).resolve()
    if not (folder / script).is_file():
        raise DebugInputError(f"{variable}: scoring script not found: {folder / script} (check "
                              "code_configuration's code and scoring_script)")
    environment = {str(k): str(v)
                   for k, v in (getattr(deployment, "environment_variables", None) or {}).items()}
    model_path = getattr(getattr(deployment, "model", None), "path", None)
    if model_path:
        if str(model_path).startswith("azureml:") or "://" in str(model_path):
            raise DebugInputError(f"{variable}: its model is {model_path}, not a folder on this "
                                  "machine: give Model(path=LOCAL_FOLDER) to debug it here")
        environment["AZUREML_MODEL_DIR"] = str((root / str(model_path)).resolve().parent)
    output_action = str(getattr(deployment, "output_action", None) or "append_row").lower()
    threshold = getattr(deployment, "error_threshold", None)
    name = getattr(deployment, "name", None) or variable
    output = DataFolder(f"{name}.output")
    options = [
        "--entry-script", script, "--input-kind", "files",
        "--mini-batch-size", str(getattr(deployment, "mini_batch_size", None)
                                 or DEFAULT_MINI_BATCH_SIZE),
        "--error-threshold", str(-1 if threshold is None else threshold),
        "--input", str(data),
        "--output-action", "summary_only" if "summary" in output_action else "append_row",
        "--append-row-file-name", getattr(deployment, "output_file_name", None)
        or DEFAULT_OUTPUT_FILE,
        "--output", output,
    ]
    return StepSpec(name=name, source_directory=folder, script_name=script,
                    arguments=[*options, "--"], environment=environment, writes=[output],
                    sdk_object=deployment)
