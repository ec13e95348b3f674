"""The environment of each rank of a distributed step on this machine, as Azure ML gives it.

In: a step's :class:`Distribution`. Out: one mapping of variables per rank (rank order), what
Azure ML's launcher sets on a node for that framework, with every node's address this machine's
loopback and every port a free one picked here just now:

- PyTorch: ``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
  ``NODE_RANK``, ``LOCAL_WORLD_SIZE`` (``torch.distributed``'s ``env://``);
- MPI: the ``OMPI_COMM_WORLD_*`` variables Azure ML's ``mpirun`` gives (``SIZE``, ``RANK``,
  ``LOCAL_RANK``, ``LOCAL_SIZE``, ``NODE_RANK``) and ``AZ_BATCHAI_MPI_MASTER_NODE``, without MPI
  installed: a script that only reads them runs as on the cluster, one that calls MPI needs it;
- TensorFlow: ``TF_CONFIG`` with a worker (and parameter server) per process, each on its own
  port, and this process's task.

The ranks' debug ports are another matter: ``debug_port`` spreads ``--port`` over the ranks.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from aml_debug_magics.ports import free_port
from aml_debug_magics.records import Distribution

LOCAL_HOST = "127.0.0.1"
# what torch.distributed says when a script asks for NCCL where there is no GPU (or no NCCL)
NO_NCCL = ("ProcessGroupNCCL is only supported with GPUs", "doesn't have NCCL built in")


def rank_environments(distribution: Distribution) -> list[dict[str, str]]:
    """The variables of each rank, rank 0 first.

    >>> [e["RANK"] for e in rank_environments(Distribution("pytorch", 2, 2))]
    ['0', '1', '2', '3']
    """
    size = distribution.world_size
    if distribution.framework == "tensorflow":
        addresses = [f"{LOCAL_HOST}:{free_port()}" for _ in range(size)]
        cluster = {"worker": addresses[:distribution.workers]}
        if distribution.parameter_servers:
            cluster["ps"] = addresses[distribution.workers:]
        return [
            {"TF_CONFIG": json.dumps({
                "cluster": cluster,
                "task": {"type": "worker", "index": rank} if rank < distribution.workers
                else {"type": "ps", "index": rank - distribution.workers},
                "environment": "cloud",
            })}
            for rank in range(size)
        ]
    if distribution.framework == "mpi":
        return [{
            "OMPI_COMM_WORLD_SIZE": str(size),
            "OMPI_COMM_WORLD_RANK": str(rank),
            "OMPI_COMM_WORLD_LOCAL_RANK": str(distribution.local_rank(rank)),
            "OMPI_COMM_WORLD_LOCAL_SIZE": str(distribution.processes_per_node),
            "OMPI_COMM_WORLD_NODE_RANK": str(distribution.node_of(rank)),
            "AZ_BATCHAI_MPI_MASTER_NODE": LOCAL_HOST,
        } for rank in range(size)]
    master_port = str(free_port())
    return [{
        "MASTER_ADDR": LOCAL_HOST,
        "MASTER_PORT": master_port,
        "WORLD_SIZE": str(size),
        "RANK": str(rank),
        "LOCAL_RANK": str(distribution.local_rank(rank)),
        "NODE_RANK": str(distribution.node_of(rank)),
        "LOCAL_WORLD_SIZE": str(distribution.processes_per_node),
    } for rank in range(size)]


def debug_port(base: int, distribution: Distribution, rank: int) -> int:
    """The ``--listen`` port a rank's bootstrap is given for ``--port base``: the bootstrap adds
    the local rank, as on a node, so here each rank ends on ``base + rank`` (every node is this
    machine); 0 stays 0 (any free port)."""
    if not base:
        return 0
    local = distribution.local_rank(rank) if distribution.framework != "tensorflow" else 0
    return base + rank - local


def ranks_text(ranks: list[int]) -> str:
    """``ranks 1-3``, ``rank 2``, ``ranks 1, 3``: how a row names other ranks."""
    if len(ranks) == 1:
        return f"rank {ranks[0]}"
    if ranks == list(range(ranks[0], ranks[-1] + 1)):
        return f"ranks {ranks[0]}-{ranks[-1]}"
    return "ranks " + ", ".join(str(r) for r in ranks)


def with_backend_hint(lines: Iterable[str], detail: str) -> str:
    """A failed rank's ``detail``, led by what to do when it failed asking for NCCL here.

    >>> with_backend_hint(["RuntimeError: ProcessGroupNCCL is only supported with GPUs, no GPUs "
    ...                    "found!"], "exit status 1")[:57]
    'NCCL needs GPUs and this machine has none: use backend="g'
    """
    if not any(marker in line for line in lines for marker in NO_NCCL):
        return detail
    return ('NCCL needs GPUs and this machine has none: use backend="gloo" locally (e.g. "nccl" '
            f'if torch.cuda.is_available() else "gloo"); {detail}')
