"""Whether this machine can reach the address a node announced, and what to do if not.

In: an announcement. Out: one line for the row (reachable, refused, or timed out with the SSH
tunnel to use instead). A bare TCP connect, closed at once: the node's gate passes only
debug-protocol connections on to debugpy, so the probe cannot break the session.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from aml_debug_magics.node.announce import Announcement

PROBE_TIMEOUT = 3.0


def probe(host: str, port: int, timeout: float = PROBE_TIMEOUT) -> str:
    """``reachable``, ``refused`` or ``timed out``: a bare TCP connect, closed at once."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timed out"
    except OSError as error:
        return "timed out" if "unreachable" in str(error).lower() else f"failed ({error})"
    return "reachable"


def reachability(announcement: Announcement, prober: Callable[[str, int], str] = probe) -> str:
    """What the panel says about reaching the announced node from this machine."""
    host, port = announcement.addresses[0], announcement.port
    if announcement.mode == "connect":
        return "the node connects out to your VS Code: keep it listening"
    if announcement.source == "guide":
        return (
            "not probed: this script runs the guide's own debugpy listener, which a bare "
            "connect would end"
        )
    verdict = prober(host, port)
    if verdict == "reachable":
        return f"{host}:{port} is reachable from this machine"
    if verdict == "refused":
        return (
            f"{host}:{port} refused the connection: wrong port, or the script listens on "
            "loopback only"
        )
    return (
        f"{host}:{port} {verdict} from here: the guide requires this machine and the cluster "
        "on the same virtual network. Where the cluster allows SSH, tunnel instead: "
        f"ssh azureuser@PUBLIC_IP -p 50000 -L {port}:{host}:{port} (PUBLIC_IP and the port "
        f"are on the cluster's Nodes tab), then attach to localhost:{port}"
    )
