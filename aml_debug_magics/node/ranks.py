"""Where this process stands: its rank in a distributed run, and the addresses it is reached at.

In: the launcher's environment variables (torch, MPI, TensorFlow's TF_CONFIG, Azure Batch) and
this machine's network interfaces. Out: a :class:`Rank` and the node's IPv4 addresses, best first,
for the announcement.
Standard library only: this file travels into a run's snapshot as ``aml_debug_ranks.py``.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import struct
from dataclasses import dataclass

RANK_VARIABLES = ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")
LOCAL_RANK_VARIABLES = ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID")
VIRTUAL_INTERFACE_PREFIXES = ("docker", "br-", "veth", "virbr", "cni", "flannel", "cali", "vxlan")


@dataclass(frozen=True)
class Rank:
    rank: int | None  # None: a worker node that does not say its rank
    local_rank: int


def _first_int(environ: dict[str, str], names: tuple[str, ...]) -> int | None:
    for name in names:
        value = environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return None


def _tensorflow_rank(environ: dict[str, str]) -> int | None:
    """A TensorFlow task's place in ``TF_CONFIG``'s cluster: chief, workers, then parameter
    servers, in that order."""
    try:
        config = json.loads(environ.get("TF_CONFIG") or "{}")
        cluster, task = config.get("cluster") or {}, config.get("task") or {}
        before = {"chief": 0, "worker": len(cluster.get("chief") or [])}
        before["ps"] = before["worker"] + len(cluster.get("worker") or [])
        return before[task["type"]] + int(task.get("index", 0))
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


def detect_rank(environ: dict[str, str]) -> Rank:
    """This process's rank from the launcher's variables (torch, MPI, TensorFlow, Azure Batch)."""
    rank = _first_int(environ, RANK_VARIABLES)
    if rank is None:
        rank = _tensorflow_rank(environ)
    local_rank = _first_int(environ, LOCAL_RANK_VARIABLES)
    if rank is None:
        is_master = environ.get("AZ_BATCH_IS_CURRENT_NODE_MASTER", "true").lower() != "false"
        rank = (local_rank or 0) if is_master else None
    return Rank(rank, local_rank or 0)


def _interface_ipv4(name: str) -> str | None:
    try:
        import fcntl
    except ImportError:
        return None
    siocgifaddr = 0x8915  # Linux
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            request = struct.pack("256s", name[:15].encode())
            packed = fcntl.ioctl(probe.fileno(), siocgifaddr, request)
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


def _default_route_interfaces() -> set[str]:
    try:
        with open("/proc/net/route") as routes:
            rows = [line.split() for line in routes.readlines()[1:]]
    except OSError:
        return set()
    return {row[0] for row in rows if len(row) > 1 and row[1] == "00000000"}


def node_addresses(bind_host: str) -> list[str]:
    """This machine's IPv4 addresses a debugger could reach, best first; never loopback alone
    unless that is all there is or all that is bound.

    ``gethostbyname(gethostname())`` is only one candidate among others: on many images it gives
    127.0.1.1 or a docker bridge.
    """
    if bind_host not in ("0.0.0.0", "", "::"):
        return [bind_host]
    default_interfaces = _default_route_interfaces()
    scored: dict[str, int] = {}

    def consider(address: str, score: int) -> None:
        try:
            ip = ipaddress.IPv4Address(address)
        except ValueError:
            return
        if ip.is_loopback or ip.is_unspecified:
            return
        if ip.is_link_local:
            score += 10
        scored[address] = min(score, scored.get(address, score))

    try:
        interfaces = [name for _, name in socket.if_nameindex()]
    except OSError:
        interfaces = []
    for name in interfaces:
        address = _interface_ipv4(name)
        if address:
            if name in default_interfaces:
                consider(address, 0)
            elif name.startswith(VIRTUAL_INTERFACE_PREFIXES):
                consider(address, 5)
            else:
                consider(address, 1)
    if not scored:  # the host name's addresses only where no interface could be read: they
        # may belong to another network namespace (a container's host) and be no address here
        try:
            for address in socket.gethostbyname_ex(socket.gethostname())[2]:
                consider(address, 2)
        except OSError:
            pass
    return sorted(scored, key=lambda a: (scored[a], a)) or ["127.0.0.1"]
