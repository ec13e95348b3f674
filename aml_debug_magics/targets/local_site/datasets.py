"""A dataset consumed directly, on the local target: the SDK's own ``TabularDataset`` or
``FileDataset`` over the local copy.

In: what the local target wrote for one input (``local_run.describe``): the dataset's kind, its
definition as the SDK holds it (the ``mltable`` YAML of azureml-dataprep's dataflow: reading
settings, column types, filters) and the local path standing in for its data (the user's
``--input NAME=PATH``, or the copy downloaded once through the workspace). Out: the SDK object
the step's script gets from ``Run.get_context().input_datasets[NAME]``, as on Azure ML: the
definition kept whole, only its paths pointed at the local copy. azureml-core and
azureml-dataprep read ``file://`` paths themselves without a workspace (``to_pandas_dataframe``,
``take``, ``skip``, ``random_split``, ``keep_columns``, ``filter``, ``to_path``, ``download``,
``mount``...); only their factories refuse a local path, so the object is made from its
definition instead. What would reach the dataset's workspace (``register``, ``get_profile``...)
raises one line naming ``--target azureml``: it would record the local paths there. Runs in
the script's process, under the kernel's Python, on first use of ``input_datasets``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

# how a TabularDataset downloaded through the workspace was written (``to_csv_files()``), and how
# one whose definition could not be read is read
_PLAIN_CSV = [{"read_delimited": {
    "delimiter": ",", "header": "all_files_same_headers", "encoding": "utf8",
    "infer_column_types": True, "empty_as_string": False, "support_multi_line": False,
}}]
_GLOB = re.compile(r"[*?\[]")
# what reaches the dataset's workspace: it would record the local copy's file:// paths there
WORKSPACE_METHODS = (
    "register", "update", "add_tags", "remove_tags", "unregister_all_versions", "get_profile",
    "submit_profile_run", "get_profile_runs",
)


def dataset_object(kind: str, definition: str | None, path: str, downloaded: bool) -> Any:
    """The SDK's ``TabularDataset`` (``kind`` "TabularDataset") or ``FileDataset`` reading
    ``path`` as ``definition`` reads its own data (``downloaded``: ``path`` is the copy
    the workspace gave, written as the SDK's ``to_csv_files()`` writes it)."""
    import yaml
    from azureml.data import FileDataset, TabularDataset
    from azureml.dataprep.api.engineless_dataflow import EnginelessDataflow

    spec = yaml.safe_load(definition) if definition else None
    if not isinstance(spec, dict):
        plain = _PLAIN_CSV if kind == "TabularDataset" else []
        spec = {"type": "mltable", "transformations": plain}
    elif downloaded and kind == "TabularDataset":  # the copy holds the dataset's rows as CSV
        spec = {"type": "mltable", "transformations": _PLAIN_CSV}
    spec["paths"] = local_paths(spec.get("paths") or [], Path(path))
    dataflow = EnginelessDataflow(yaml.safe_dump(spec, sort_keys=False))
    dataset_class = TabularDataset if kind == "TabularDataset" else FileDataset
    dataset = dataset_class._create(dataflow)
    for method in WORKSPACE_METHODS:
        setattr(dataset, method, _refusal(kind, method))
    return dataset


def _refusal(kind: str, method: str) -> Callable[..., Any]:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            f"{kind}.{method}: on the local target of aml_debug_magics the dataset reads a local "
            "copy and has no workspace; debug this step with --target azureml"
        )

    return refuse


def local_paths(paths: list[dict[str, str]], local: Path) -> list[dict[str, str]]:
    """The dataset's ``paths`` pointed at ``local``: a file is itself; a folder keeps what the
    dataset's patterns select below their fixed part (``data/*.csv`` gives ``LOCAL/*.csv``),
    else is the whole folder."""
    base = local.resolve().as_uri()
    if local.is_file():
        return [{"file": base}]
    tails = []
    for entry in paths:
        for value in entry.values() if isinstance(entry, dict) else ():
            parts = str(value).rstrip("/").split("/")
            first = next((i for i, part in enumerate(parts) if _GLOB.search(part)), None)
            if first is not None and "/".join(parts[first:]) not in tails:
                tails.append("/".join(parts[first:]))
    return [{"pattern": f"{base}/{tail}"} for tail in tails] or [{"folder": base}]
