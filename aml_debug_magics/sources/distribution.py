"""How many processes Azure ML starts for a distributed step, and with which framework's launcher.

In: the user's SDK objects: an SDK v2 command job or node (its ``distribution``, a
``PyTorchDistribution``, ``MpiDistribution`` or ``TensorFlowDistribution`` or the same as a dict
or from YAML, and ``resources.instance_count``), or an SDK v1 ``RunConfiguration`` (what
``ScriptRunConfig(distributed_job_config=...)`` writes into its ``run_config``, and what a
``PythonScriptStep`` carries as ``runconfig``). Out: a :class:`Distribution` for the step, or
None for a step of one process. Azure ML's own counts, as its docs state them:

- PyTorch and MPI: ``instance_count`` nodes, ``process_count_per_instance`` processes on each
  (SDK v1: ``node_count``, and ``PyTorchConfiguration.process_count`` in all or
  ``MpiConfiguration.process_count_per_node``);
- TensorFlow: one process per task, ``worker_count`` workers (the instance count where unsaid)
  and ``parameter_server_count`` parameter servers, over ``instance_count`` nodes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aml_debug_magics.errors import DebugInputError
from aml_debug_magics.records import Distribution

LOCAL_PROCESS_LIMIT = 16  # ranks the local target starts for one step; more are refused
FRAMEWORKS = ("pytorch", "mpi", "tensorflow")


def _field(source: Any, name: str) -> Any:
    if isinstance(source, Mapping):
        return source.get(name)
    return getattr(source, name, None)


def _count(value: Any, what: str, step: str) -> int:
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = -1
    if count < 0:
        raise DebugInputError(f"step {step!r}: {what} must be a whole number (got {value!r})")
    return count


def read_v2(node: Any, step: str) -> Distribution | None:
    """The distribution of an SDK v2 command job or pipeline node, or None when it has none."""
    declared = getattr(node, "distribution", None)
    resources = getattr(node, "resources", None)
    instances = _field(resources, "instance_count") or getattr(node, "instance_count", None)
    nodes = max(1, _count(instances or 1, "instance_count", step))
    if not declared:
        return None
    framework = str(_field(declared, "type") or "").lower()
    if framework not in FRAMEWORKS:
        raise DebugInputError(
            f"step {step!r}: distribution type {framework or '?'!r} cannot run on the local "
            f"target (it runs {', '.join(FRAMEWORKS)}); use --target azureml"
        )
    if framework == "tensorflow":
        workers = _field(declared, "worker_count")
        servers = _field(declared, "parameter_server_count") or 0
        return _made(Distribution(
            framework, nodes, 1,
            workers=_count(workers if workers is not None else nodes, "worker_count", step),
            parameter_servers=_count(servers, "parameter_server_count", step),
        ), step)
    per_instance = _field(declared, "process_count_per_instance") or 1
    return _made(Distribution(framework, nodes, _count(
        per_instance, "process_count_per_instance", step)), step)


def read_v1(runconfig: Any, step: str) -> Distribution | None:
    """The distribution an SDK v1 ``RunConfiguration`` asks for, or None for one process."""
    if runconfig is None:
        return None
    framework = str(getattr(runconfig, "framework", "") or "").lower()
    communicator = str(getattr(runconfig, "communicator", "") or "").lower()
    nodes = max(1, _count(getattr(runconfig, "node_count", 1) or 1, "node_count", step))
    if framework == "pytorch":
        total = getattr(getattr(runconfig, "pytorch", None), "process_count", None) or nodes
        total = _count(total, "process_count", step)
        if total % nodes:
            raise DebugInputError(f"step {step!r}: PyTorchConfiguration's process_count "
                                  f"({total}) is not a multiple of its node_count ({nodes})")
        return _made(Distribution("pytorch", nodes, total // nodes), step)
    if framework == "tensorflow" or communicator == "parameterserver":
        tensorflow = getattr(runconfig, "tensorflow", None)
        workers = _count(getattr(tensorflow, "worker_count", 1) or 1, "worker_count", step)
        servers = _count(getattr(tensorflow, "parameter_server_count", 0) or 0,
                         "parameter_server_count", step)
        return _made(Distribution("tensorflow", nodes, 1, workers=workers,
                                  parameter_servers=servers), step)
    if communicator in ("intelmpi", "openmpi", "mpi"):
        per_node = getattr(getattr(runconfig, "mpi", None), "process_count_per_node", 1) or 1
        return _made(Distribution("mpi", nodes, _count(per_node, "process_count_per_node",
                                                       step)), step)
    return None


def _made(distribution: Distribution, step: str) -> Distribution | None:
    """``distribution``, checked; None where it is one process on one node (nothing to emulate)."""
    if distribution.world_size < 1:
        raise DebugInputError(f"step {step!r}: its distribution starts no process "
                              f"({distribution.describe()})")
    if distribution.world_size == 1:
        return None
    return distribution


def check_local(distribution: Distribution | None, step: str) -> None:
    """Refuse, in one line, a distribution the local target will not start as processes here."""
    if distribution is not None and distribution.world_size > LOCAL_PROCESS_LIMIT:
        raise DebugInputError(
            f"step {step!r} asks for {distribution.describe()}: the local target starts at most "
            f"{LOCAL_PROCESS_LIMIT} processes for one step; lower instance_count or the "
            "processes per instance to debug it here, or use --target azureml"
        )
