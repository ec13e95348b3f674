"""The run context a step sees on the local target: ``Run.get_context()`` as on Azure ML.

In: ``AML_DEBUG_LOCAL_RUN``, which the local target writes with :func:`describe` into the
environment of each SDK v1 step (the run's id, its experiment, its pipeline run's id, and the
local path of every input by the name the step gave it, e.g. ``as_named_input("raw")``). Out:
once the step's script imports azureml-core, ``Run.get_context()`` returns one
:class:`LocalRun` for the process. It answers ``input_datasets``, ``parent``, ``experiment``
and ``id`` as a submitted run does, and everything else (``log``, ``log_row``, ``tag``,
``set_tags``, ``upload_file`` ...) as azureml-core's offline run does: it prints what it would
have recorded. ``local_site/sitecustomize.py`` calls :func:`patch` right after
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

ENVIRONMENT_VARIABLE = "AML_DEBUG_LOCAL_RUN"  # local_site/sitecustomize.py looks for it


def describe(
    *, run_id: str, experiment: str, parent_id: str | None, inputs: Mapping[str, Path]
) -> str:
    """The value of ``AML_DEBUG_LOCAL_RUN`` for one step (what :func:`patch` reads back)."""
    return json.dumps({
        "run_id": run_id,
        "experiment": experiment,
        "parent_id": parent_id,
        "input_datasets": {name: str(path) for name, path in inputs.items()},
    })


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
        raise RuntimeError(
            "run.experiment.workspace: a step on the local target of aml_debug_magics runs "
            "without an Azure ML workspace; give the data it fetches with --input NAME=PATH, "
            "or debug it with --target azureml"
        )

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
    ) -> None:
        self._offline_run = offline_run
        self._experiment = experiment
        self._parent = parent
        self._input_datasets = dict(input_datasets or {})

    @property
    def id(self) -> str:
        return self._offline_run.id

    @property
    def input_datasets(self) -> dict[str, str]:
        """Each input's local path by its name, as a mount or a download gives it on Azure ML
        (an input read directly, a dataset object there, is its local path here too)."""
        return dict(self._input_datasets)

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
