"""Which target runs a typed request: chosen above ``targets/`` and ``deploy/``, never inside them.

In: the :class:`~aml_debug_magics.records.DebugRequest` the magics typed. Out: the target the
session starts: for a scoring script (``request.deployment``) one of ``deploy/`` (the inference
server here, its Docker image, or an image Azure ML packages), else one of ``targets/`` (steps
run here, or submitted to Azure ML). Each target's module is imported only once it is chosen:
the Azure ML ones pull in the Azure SDKs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aml_debug_magics.errors import DebugInputError

if TYPE_CHECKING:
    from aml_debug_magics.records import DebugRequest
    from aml_debug_magics.session import Target


def make_target(request: DebugRequest) -> Target:
    """The target for ``request``; the magics hand this to ``open_session``."""
    if request.deployment is not None:
        return _deploy_target(request)
    if request.target == "local":
        from aml_debug_magics.targets.local import LocalPipelineTarget

        return LocalPipelineTarget(request)
    if request.target == "azureml":
        from aml_debug_magics.targets.azureml import AzureMLTarget

        return AzureMLTarget(request, request.workspace, experiment=request.experiment)
    raise DebugInputError(f"unknown target {request.target!r}: use local or azureml")


def _deploy_target(request: DebugRequest) -> Target:
    if request.target == "local":
        from aml_debug_magics.deploy.local import LocalDeployTarget

        return LocalDeployTarget(request, request.deployment)
    if request.target == "docker" and request.deployment.online is not None:
        from aml_debug_magics.deploy.docker_v2 import OnlineDeploymentDockerTarget

        return OnlineDeploymentDockerTarget(request, request.deployment)
    if request.target == "docker":
        from aml_debug_magics.deploy.docker import DockerDeployTarget

        return DockerDeployTarget(request, request.deployment)
    from aml_debug_magics.deploy.package import PackageDeployTarget

    return PackageDeployTarget(request, request.deployment, request.workspace)
