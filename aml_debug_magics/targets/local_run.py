"""The run context a step sees on the local target: ``Run.get_context()`` as on Azure ML.

In: ``AML_DEBUG_LOCAL_RUN``, which the local target writes with :func:`describe` into the
environment of each SDK v1 step (the run's id, its experiment, its pipeline run's id, and the
local path of every input by the name the step gave it, e.g. ``as_named_input("raw")``, the
definition of each dataset consumed directly, the folder of each named output). Out: once the
step's script imports azureml-core, ``Run.get_context()`` returns one :class:`LocalRun` for the
process. It answers ``input_datasets`` (a dataset consumed directly: the SDK's own object over
its local copy, ``local_site/datasets.py``), ``output_datasets``, ``parent``, ``experiment``
and ``id`` as a submitted run does, and everything else (``log``, ``log_row``, ``tag``,
``set_tags``, ``upload_file`` ...) as azureml-core's offline run does: it prints what it would
have recorded. Also here: the variables every job sees (:func:`job_variables`: the
experiment, an MLflow store under the session's folder) and what the row says of the metrics
logged into it. ``local_site/sitecustomize.py`` calls :func:`patch` right after
``azureml.core.run`` is first imported; a step that never imports azureml never loads this
module.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from aml_debug_magics.node.options import LOCAL_VARIABLE
from aml_debug_magics.sources.inputs import cache_root

ENVIRONMENT_VARIABLE = "AML_DEBUG_LOCAL_RUN"  # local_site/sitecustomize.py looks for it
DATASET_KINDS = ("TabularDataset", "FileDataset")
NO_WORKSPACE = (
    "run.experiment.workspace: a step on the local target of aml_debug_magics runs without an "
    "Azure ML workspace; give the data it fetches with --input NAME=PATH, or debug it with "
    "--target azureml"
)


def describe(
    *, run_id: str, experiment: str, parent_id: str | None, inputs: Mapping[str, Path],
    datasets: Mapping[str, Any] = (), outputs: Mapping[str, Path] = (),
) -> str:
    """The value of ``AML_DEBUG_LOCAL_RUN`` for one step (what :func:`patch` reads back).

    ``datasets``: the ``ExternalInput`` of each input consumed directly (no ``as_mount()``,
    no ``as_download()``), by name: the step gets the dataset object over its local path.
    ``outputs``: the local folder of each output, by name (``run.output_datasets``).
    """
    direct = {}
    for name, data in dict(datasets).items():
        if data.mode == "direct" and data.kind in DATASET_KINDS and name in inputs:
            direct[name] = {
                "kind": data.kind,
                "definition": _definition(data.source),
                "downloaded": _is_downloaded(Path(inputs[name])),
            }
    return json.dumps({
        "run_id": run_id,
        "experiment": experiment,
        "parent_id": parent_id,
        "input_datasets": {name: str(path) for name, path in inputs.items()},
        "direct_datasets": direct,
        "output_datasets": {name: str(path) for name, path in dict(outputs).items()},
    })


def _definition(dataset: Any) -> str | None:
    """The dataset's own definition (its dataflow's ``mltable`` YAML), or None when the SDK
    object holds none this version of azureml-dataprep can write."""
    try:
        return dataset._dataflow._to_yaml_string()
    except Exception:  # an older dataflow, or a dataset whose definition needs the service
        return None


def _is_downloaded(path: Path) -> bool:
    """Whether ``path`` is a copy downloaded through the workspace (not the user's stand-in)."""
    root, path = cache_root().resolve(), path.resolve()
    return path.is_relative_to(root) and not path.is_relative_to(root / "stand-ins")


def job_variables(
    *, experiment: str, session_run_id: str, run_id: str,
    mlflow_run: tuple[str, str] | None = None,
) -> dict[str, str]:
    """What Azure ML gives every job in its environment, as far as it holds on this machine:
    the run's id (``AZUREML_RUN_ID``), the experiment (``AZUREML_ARM_PROJECT_NAME``) and an
    MLflow tracking store, so ``mlflow.start_run()`` and ``mlflow.log_metric`` record locally
    (a file store under the session's folder, never the code folder); with ``mlflow_run`` (the
    experiment's id and the step's run's id in that store), ``MLFLOW_EXPERIMENT_ID`` and
    ``MLFLOW_RUN_ID``, which ``mlflow.start_run()`` resumes as on Azure ML. ``AML_DEBUG_LOCAL``
    tells the bootstrap it does not run on Azure ML, whose jobs have an ``AZUREML_RUN_ID`` too.
    Not set: the workspace's variables (``AZUREML_ARM_SUBSCRIPTION`` ...: there is no workspace
    here); without them azureml-core's ``Run.get_context()`` stays offline, as outside a run.
    """
    variables = {
        LOCAL_VARIABLE: "1",
        "AZUREML_RUN_ID": run_id,
        "AZUREML_ARM_PROJECT_NAME": experiment,
        "MLFLOW_TRACKING_URI": tracking_store(session_run_id).as_uri(),
        "MLFLOW_EXPERIMENT_NAME": experiment,
        "MLFLOW_ALLOW_FILE_STORE": "true",  # MLflow 3.7 and later refuse a file store without it
    }
    if mlflow_run is not None:
        variables["MLFLOW_EXPERIMENT_ID"], variables["MLFLOW_RUN_ID"] = mlflow_run
    return variables


def tracking_store(session_run_id: str) -> Path:
    """The session's MLflow file store (open it with ``mlflow ui --backend-store-uri``)."""
    return cache_root() / "sessions" / session_run_id / "mlruns"


def metrics_logged(session_run_id: str) -> int:
    """How many metric values the session's steps logged with MLflow so far (one line each in
    the file store's ``EXPERIMENT/RUN/metrics/NAME`` files)."""
    count = 0
    for metric in tracking_store(session_run_id).glob("*/*/metrics/**/*"):
        if metric.is_file():
            with open(metric, "rb") as lines:
                count += sum(1 for line in lines if line.strip())
    return count


def metrics_note(session_run_id: str, before: int) -> str:
    """What a step's row says of the metrics it logged, or nothing when it logged none."""
    logged = metrics_logged(session_run_id) - before
    if logged <= 0:
        return ""
    store = tracking_store(session_run_id).as_uri()
    return f"metrics: {logged} logged, open with `mlflow ui --backend-store-uri {store}`"


def new_run_id(experiment: str | None = None) -> str:
    """An id shaped as Azure ML shapes it: a script run's ``EXPERIMENT_SECONDS_HEX``, else
    (a pipeline run, a step run) a GUID."""
    if experiment:
        return f"{experiment}_{int(time.time())}_{uuid.uuid4().hex[:8]}"
    return str(uuid.uuid4())


class LocalExperiment:
    """What ``run.experiment`` answers: its name; there is no workspace on this machine."""

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def workspace(self) -> Any:
        """Not on this machine: the SDK's own ``RunEnvironmentException``, which the SDK's
        callers (``Model.get_model_path``) take as "not in a submitted run" and fall back on."""
        from azureml.exceptions import AzureMLException, RunEnvironmentException

        class NoWorkspaceHere(RunEnvironmentException):
            def __init__(self) -> None:
                AzureMLException.__init__(self, NO_WORKSPACE)  # not the SDK's "outside a run"

        raise NoWorkspaceHere()

    def __repr__(self) -> str:
        return f"LocalExperiment(name={self.name!r})"


class LocalRun:
    """A step's run on the local target: Azure ML's answers for where its data is and whose
    child it is, the offline run's for the rest."""

    def __init__(
        self,
        offline_run: Any,
        *,
        experiment: LocalExperiment,
        parent: LocalRun | None = None,
        input_datasets: Mapping[str, str] | None = None,
        direct_datasets: Mapping[str, Mapping[str, Any]] | None = None,
        output_datasets: Mapping[str, str] | None = None,
    ) -> None:
        self._offline_run = offline_run
        self._experiment = experiment
        self._parent = parent
        self._input_paths = dict(input_datasets or {})
        self._direct = dict(direct_datasets or {})
        self._output_datasets = dict(output_datasets or {})
        self._input_datasets: dict[str, Any] | None = None

    @property
    def id(self) -> str:
        return self._offline_run.id

    @property
    def input_datasets(self) -> dict[str, Any]:
        """Each input by its name, as Azure ML gives it: a mount's or a download's local path;
        for a dataset consumed directly, the SDK's ``TabularDataset`` or ``FileDataset`` over
        its local copy (made on first use: azureml-dataprep loads then)."""
        if self._input_datasets is None:
            found: dict[str, Any] = dict(self._input_paths)
            if self._direct:
                from aml_debug_magics.targets.local_site.datasets import dataset_object

                for name, dataset in self._direct.items():
                    found[name] = dataset_object(
                        dataset["kind"], dataset.get("definition"), self._input_paths[name],
                        bool(dataset.get("downloaded")),
                    )
            self._input_datasets = found
        return self._input_datasets

    @property
    def output_datasets(self) -> dict[str, str]:
        """Each named output's local folder by its name, where the step writes it."""
        return dict(self._output_datasets)

    @property
    def parent(self) -> LocalRun | None:
        """The pipeline's run for a pipeline step; None for a script run."""
        return self._parent

    @property
    def experiment(self) -> LocalExperiment:
        return self._experiment

    def child_run(self, name: str | None = None, run_id: str | None = None,
                  outputs: Any = None) -> LocalRun:
        child = self._offline_run.child_run(name=name, run_id=run_id, outputs=outputs)
        return LocalRun(child, experiment=self._experiment, parent=self)

    def __getattr__(self, name: str) -> Any:  # log, log_row, tag, set_tags, upload_file ...
        return getattr(self._offline_run, name)

    def __enter__(self) -> LocalRun:
        self._offline_run.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._offline_run.__exit__(*exc_info)

    def __repr__(self) -> str:
        return f"LocalRun(id={self.id!r}, experiment={self._experiment.name!r})"


_the_run: LocalRun | None = None


def run_from_environment(run_module: ModuleType) -> LocalRun:
    """The process's one LocalRun, read from ``AML_DEBUG_LOCAL_RUN`` on first use."""
    global _the_run
    if _the_run is None:
        described = json.loads(os.environ[ENVIRONMENT_VARIABLE])
        offline = run_module._OfflineRun
        experiment = LocalExperiment(described["experiment"])
        parent = None
        if described.get("parent_id"):
            parent = LocalRun(offline(run_id=described["parent_id"]), experiment=experiment)
        _the_run = LocalRun(
            offline(run_id=described["run_id"]), experiment=experiment, parent=parent,
            input_datasets=described.get("input_datasets"),
            direct_datasets=described.get("direct_datasets"),
            output_datasets=described.get("output_datasets"),
        )
    return _the_run


def patch(run_module: ModuleType) -> None:
    """Make ``Run.get_context()`` (in ``azureml.core.run``, just imported) return the LocalRun.

    ``allow_offline=False`` too: on the local target the run is this one, not a missing one.
    """

    def get_context(cls: type, allow_offline: bool = True, used_for_context_manager: bool = False,
                    **kwargs: Any) -> LocalRun:
        return run_from_environment(run_module)

    run_module.Run.get_context = classmethod(get_context)
