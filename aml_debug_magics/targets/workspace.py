"""The SDK v1 workspace seam: where ``--target azureml`` submits, packages and downloads.

In: the user's ``Workspace`` (or ``config.json``). Out: SDK runs (``get_children``,
``get_details``, ``get_status``, ``get_tags``, ``cancel``, ``get_portal_url``), a package, a
downloaded folder. The only object the tests replace: Azure's control plane is not reachable
from a test machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aml_debug_magics.errors import DebugInputError
from aml_debug_magics.failures import first_line


class SdkWorkspace:
    """Submits through the real SDK: ``Pipeline(workspace, steps)`` or a ScriptRunConfig, to an
    ``Experiment``. The only object the tests replace (Azure's control plane is not reachable
    from a test machine); what it returns are SDK runs: ``get_children``, ``get_details``,
    ``get_status``, ``get_tags``, ``cancel``, ``get_portal_url``."""

    def __init__(self, workspace: Any) -> None:
        self.workspace = workspace

    @property
    def resource_id(self) -> str:
        """``subscription/resource group/name``: what tells two workspaces apart."""
        return "/".join(
            str(getattr(self.workspace, part, "") or "")
            for part in ("subscription_id", "resource_group", "name")
        )

    def submit(self, experiment: str, what: list[Any] | Any) -> Any:
        """Submit a ``Pipeline`` (on its own workspace, with all its settings), a list of
        steps (as ``Pipeline(workspace, steps)``) or a ScriptRunConfig."""
        from azureml.core import Experiment

        workspace = self.workspace
        if isinstance(what, list):
            from azureml.pipeline.core import Pipeline

            what = Pipeline(workspace=self.workspace, steps=what)
        elif hasattr(what, "_graph_context"):  # a Pipeline is bound to the workspace it was made on
            workspace = what._graph_context._workspace
        return Experiment(workspace, experiment).submit(what)

    def get_run(self, run_id: str) -> Any:
        """The SDK run ``run_id`` in this workspace (a pipeline's, a step's, a script's)."""
        from azureml.core import Run

        return Run.get(self.workspace, run_id)

    def relay_account(self) -> Any:
        """The default datastore's storage account, for ``--via storage``'s blobs."""
        from aml_debug_magics.relay.blobs import account_of_v1

        return account_of_v1(self.workspace)

    def package(self, models: list[str], inference_config: Any) -> Any:
        """``Model.package`` for models named ``NAME`` or ``NAME:VERSION``."""
        from azureml.core.model import Model

        found = []
        for model in models:
            name, _, version = model.partition(":")
            number = int(version) if version else None
            found.append(Model(self.workspace, name=name, version=number))
        return Model.package(self.workspace, found, inference_config)


    def download(self, data: Any, folder: Path) -> Path:
        """Download an ``ExternalInput`` into ``folder`` with the SDK's own calls; the path the
        step sees (a DataReference to a file: that file)."""
        if data.kind == "FileDataset":
            data.source.download(target_path=str(folder), overwrite=True)
            return folder
        if data.kind == "TabularDataset":
            data.source.to_csv_files().download(target_path=str(folder), overwrite=True)
            return folder
        from azureml.core import Datastore

        datastore, _, path = data.points_to.partition("/")
        Datastore.get(self.workspace, datastore).download(
            str(folder), prefix=path or None, overwrite=True, show_progress=False
        )
        return folder / path if path else folder


def pipeline_workspace(pipeline: Any) -> SdkWorkspace:
    """The workspace the user's ``Pipeline`` was made on (``Pipeline(ws, steps)``)."""
    return SdkWorkspace(pipeline._graph_context._workspace)


def find_workspace(user_ns: dict[str, Any], variable: str | None) -> SdkWorkspace:
    """The workspace in ``variable``, else ``Workspace.from_config()``; one line if neither."""
    if variable:
        if variable not in user_ns:
            raise DebugInputError(f"no variable named {variable!r} in this notebook")
        return SdkWorkspace(user_ns[variable])
    try:
        from azureml.core import Workspace

        return SdkWorkspace(Workspace.from_config())
    except Exception as error:
        raise DebugInputError(
            "no Azure ML workspace: pass --workspace VARIABLE or put a config.json next to the "
            f"notebook ({first_line(error)})"
        ) from None
