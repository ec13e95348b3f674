"""Ports on this machine: checked before anything starts, so a taken one is one clear line."""

from __future__ import annotations

import socket

from aml_debug_magics.errors import DebugInputError


def check_port_free(port: int, host: str = "127.0.0.1") -> None:
    """Raise a one-line error when ``port`` cannot be bound (0 means any port: always fine)."""
    if port == 0:
        return
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except PermissionError:
            raise DebugInputError(
                f"port {port} needs privileges to bind (ports below 1024 are root's): pick one "
                "above 1023 with --port, or --port 0 for any free port"
            ) from None
        except OSError:
            raise DebugInputError(
                f"port {port} is in use on {host}: pick another with --port, or --port 0 for "
                "any free port"
            ) from None


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` just now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]
