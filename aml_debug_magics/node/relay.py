"""The node's end of the storage relay: a process of its own between two blob chains and the
debug port on this machine's loopback.

    AML_DEBUG_RELAY_UP=<chain> AML_DEBUG_RELAY_DOWN=<chain> \\
        python aml_debug_relay.py --port P [--host 127.0.0.1] [--stop-file PATH] < secret

Its chains: ``AML_DEBUG_RELAY_UP_<rank>`` / ``_DOWN_<rank>``, its own rank's, where the notebook
relays several ranks of a distributed step, else ``AML_DEBUG_RELAY_UP`` / ``_DOWN``; with
``--post-mortem`` (the relay of a failure's window) the second pair, ``AML_DEBUG_RELAY_UP_PM``
/ ``_DOWN_PM`` (``..._PM_<rank>``).

In: the first line of its standard input, this end's Diffie-Hellman secret (hex; the bootstrap
announces the matching public value in its log, which only the node writes); then frames read
from the "down" chain (the node's read-only SAS), starting with the notebook's ``KEY``: on
``OPEN`` it connects to HOST:PORT (the gate in front of debugpy), ``DATA`` goes to that
connection, ``CLOSE`` closes it. Out: what the debugger writes, as sealed frames appended to the
"up" chain (add-only SAS). Chains, keys and frames are ``relay_wire.py``'s. A process of its
own, so debugpy never traces or suspends it.

It ends when its standard input closes (the bootstrap ends, or tells it nobody attached) once
no connection is open (or :data:`DRAIN_LIMIT` seconds later), when ``--stop-file`` appears, when
the notebook says ``BYE`` or falls silent, or when storage fails for good; every connection to
the debugger closes then, so a paused debuggee runs on. Exit status: 0, or 1 with one line
saying why. Its log names the blobs, never their signatures. Standard library only: this file
travels into a run's snapshot as ``aml_debug_relay.py``.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time

try:
    from aml_debug_magics.node import relay_wire
    from aml_debug_magics.node.options import (
        POST_MORTEM_CHAINS,
        RELAY_DOWN_VARIABLE,
        RELAY_UP_VARIABLE,
        relay_chain,
    )
except ImportError:  # shipped into a run's snapshot beside this file
    import aml_debug_relay_wire as relay_wire  # type: ignore[no-redef]
    from aml_debug_options import (  # type: ignore[no-redef]
        POST_MORTEM_CHAINS,
        RELAY_DOWN_VARIABLE,
        RELAY_UP_VARIABLE,
        relay_chain,
    )

SILENCE_VARIABLE = "AML_DEBUG_RELAY_SILENCE"  # --silence's default, where the bootstrap starts it
DRAIN_LIMIT = 30.0  # after the bootstrap ends, open debug sessions get this long to finish
CONNECT_TIMEOUT = 5.0


def say(message: str) -> None:
    print(f"aml-debug: relay: {message}", flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="aml_debug_relay.py")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--stop-file", default=None)
    parser.add_argument(
        "--post-mortem", action="store_true",
        help=f"relay a failure's window: the chains in ${RELAY_UP_VARIABLE}{POST_MORTEM_CHAINS} "
             f"and ${RELAY_DOWN_VARIABLE}{POST_MORTEM_CHAINS}")
    parser.add_argument(
        "--silence", type=float,
        default=float(os.environ.get(SILENCE_VARIABLE) or relay_wire.SILENCE_LIMIT),
        help="seconds without a frame from the notebook before the debugger is detached")
    args = parser.parse_args(argv)
    chains = POST_MORTEM_CHAINS if args.post_mortem else ""
    up = relay_chain(os.environ, RELAY_UP_VARIABLE + chains)  # this rank's own, where each has one
    down = relay_chain(os.environ, RELAY_DOWN_VARIABLE + chains)
    if not up or not down:
        say(f"${RELAY_UP_VARIABLE}{chains} and ${RELAY_DOWN_VARIABLE}{chains} must hold the "
            "blob URLs")
        return 2
    # the raw descriptor, never sys.stdin: a thread blocked in a buffered read holds its lock,
    # and the interpreter's exit then aborts ("could not acquire lock for <stdin>")
    first, rest = _read_line(0)
    try:
        keys = relay_wire.KeyPair(int(first, 16))
    except ValueError:
        say("the first line of standard input must be this end's secret (hex)")
        return 2

    def connect(channel: int) -> socket.socket | None:
        try:
            connection = socket.create_connection((args.host, args.port), CONNECT_TIMEOUT)
        except OSError as error:
            say(f"channel {channel}: the debug port refused ({error.strerror})")
            return None
        connection.settimeout(None)
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection

    tunnel = relay_wire.Tunnel(up, down, keys=keys, on_open=connect,
                               silence=args.silence)
    parent_gone = threading.Event()
    gone_since: list[float] = []

    def watch_parent() -> None:
        while rest and os.read(0, 4096):
            pass
        gone_since.append(time.monotonic())
        parent_gone.set()
        tunnel.wake()

    threading.Thread(target=watch_parent, name="relay-parent", daemon=True).start()
    say(f"up {tunnel.writer.blob.name}, down {tunnel.reader.blob.name}; "
        f"debug port {args.host}:{args.port}")

    def done() -> bool:
        if args.stop_file and os.path.exists(args.stop_file):
            return True
        if not parent_gone.is_set():
            return False
        return tunnel.channels == 0 or time.monotonic() - gone_since[0] > DRAIN_LIMIT

    tunnel.run_until(done)
    tunnel.close()
    if isinstance(tunnel.error, relay_wire.NotebookSilent):
        say(f"stopped: {tunnel.error}: the debugger is detached and the script runs on")
        return 1
    if tunnel.error is not None:
        say(f"stopped: {tunnel.error}")
        return 1
    by = "; the notebook ended it" if tunnel.bye_heard.is_set() else ""
    say(f"ended ({tunnel.requests} storage requests{by})")
    return 0


def _read_line(descriptor: int) -> tuple[str, bool]:
    """The first line of ``descriptor`` and whether more may follow (no end of file yet)."""
    line = b""
    while not line.endswith(b"\n"):
        data = os.read(descriptor, 1)
        if not data:
            return line.decode(errors="replace").strip(), False
        line += data
    return line.decode(errors="replace").strip(), True


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
