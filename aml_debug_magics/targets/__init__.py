"""Where the steps run: ``local`` (subprocesses here), ``azureml`` (submitted to Azure ML), and
for scoring scripts the targets in ``deploy/``. A target reports to the session; it never
touches a widget.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aml_debug_magics.errors import DebugInputError

if TYPE_CHECKING:
    from aml_debug_magics.records import DebugRequest
    from aml_debug_magics.session import Target


def make_target(request: DebugRequest) -> Target:
    if request.deployment is not None:
        from aml_debug_magics.deploy import make_deploy_target

        return make_deploy_target(request)
    if request.target == "local":
        from aml_debug_magics.targets.local import LocalPipelineTarget

        return LocalPipelineTarget(request)
    if request.target == "azureml":
        from aml_debug_magics.targets.azureml import AzureMLTarget

        return AzureMLTarget(request, request.workspace, experiment=request.experiment)
    raise DebugInputError(f"unknown target {request.target!r}: use local or azureml")
