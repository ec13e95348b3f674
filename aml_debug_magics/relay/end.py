"""The notebook's end of the storage relay: a 127.0.0.1 port a debugger attaches to, pumped
through two blob chains to the node's relay (``node/relay.py``).

In: the node's public key (from its announcement, which only the node writes) and connections
a DAP client (VS Code, or any) makes to :meth:`StorageRelay.start`'s port; each becomes a
channel (``OPEN``, ``DATA``, ``CLOSE`` frames) sealed and appended to the "down" chain, which
only the notebook may write. Out: the frames the node appends to the "up" chain, checked (a
frame the node did not seal ends the relay) and screened (:class:`ReverseRequestScreen`), then
written to the channel's connection; and, once, ``on_end(reason)`` when the relay ends by
itself. The wire (keys, chains, frames, rotation, polling, retries) is ``node/relay_wire.py``'s,
the one module both ends share. Standard library only.

    >>> relay = StorageRelay(up_chain, down_chain, node_key)   # doctest: +SKIP
    >>> port = relay.start()         # attach VS Code to 127.0.0.1:port
    >>> relay.stop()                 # the node reads BYE and detaches; the down blobs go
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import threading
from collections.abc import Callable

from aml_debug_magics.node import relay_wire

# reverse requests a debug adapter may send its client; an attach session through the relay
# needs none but debugpy's own child sessions (startDebugging), screened below
REFUSED_REQUESTS = ("runInTerminal", "startDebugging")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ReverseRequestScreen:
    """One channel's debug-protocol messages from the node, whole: what the client may get,
    and error answers for the reverse requests it must not (a ``runInTerminal`` would run a
    command on this machine; a ``startDebugging`` or ``debugpyAttach`` anywhere but this
    relay's own port would send the client elsewhere)."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._pending = b""

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        """(bytes for the client, bytes back to the node) out of ``data``."""
        self._pending += data
        passed, answers = [], []
        while True:
            end = self._pending.find(b"\r\n\r\n")
            if end < 0:
                break
            length = _content_length(self._pending[:end])
            if length is None or len(self._pending) < end + 4 + length:
                break
            message = self._pending[: end + 4 + length]
            self._pending = self._pending[end + 4 + length :]
            answer = self._refusal(message[end + 4 :])
            if answer is None:
                passed.append(message)
            elif answer:
                answers.append(answer)
        return b"".join(passed), b"".join(answers)

    def _refusal(self, body: bytes) -> bytes | None:
        """None to pass the message; else the answer to send the node (empty for an event)."""
        try:
            message = json.loads(body)
        except ValueError:
            return None
        if not isinstance(message, dict):
            return None
        kind, name = message.get("type"), message.get("command") or message.get("event")
        arguments = message.get("arguments") or message.get("body") or {}
        if kind == "event" and name == "debugpyAttach":
            return None if self._ours(arguments) else b""
        if kind != "request" or name not in REFUSED_REQUESTS:
            return None
        if name == "startDebugging" and self._ours(arguments.get("configuration") or {}):
            return None
        answer = json.dumps({
            "seq": 0, "type": "response", "request_seq": message.get("seq", 0),
            "success": False, "command": name,
            "message": f"the storage relay does not pass {name} to this machine's debugger",
        }).encode()
        return b"Content-Length: %d\r\n\r\n" % len(answer) + answer

    def _ours(self, configuration: dict) -> bool:
        """A debugpy child session: it attaches back to this relay's own port."""
        connect = configuration.get("connect") or {}
        return (isinstance(configuration.get("subProcessId"), int)
                and connect.get("host") in LOOPBACK and connect.get("port") == self._port)


def _content_length(header: bytes) -> int | None:
    for line in header.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return int(value)
    return None


class StorageRelay:
    """Serves 127.0.0.1:<port> and carries each accepted connection through the blobs.

    ``up_url`` / ``down_url`` are chains as ``relay_wire`` names them (blob URLs with the
    notebook's own SAS, space-separated): read on "up", create/write/delete on "down".
    ``node_key`` is the public value from the node's announcement; ``on_end(reason)`` is called
    once if the relay ends by itself (storage refused or unreachable, a blob deleted, a frame
    the node did not seal, the node's end gone).
    """

    def __init__(
        self, up_url: str, down_url: str, node_key: str | None,
        on_end: Callable[[str], None] | None = None,
    ) -> None:
        if not node_key:
            raise relay_wire.RelayWireError(
                "the node's announcement carries no relay key (its bootstrap predates the "
                "keyed relay: run the job again with this version)")
        self._node_key = relay_wire.decode_public(node_key)
        self._up, self._down = up_url, down_url
        self._on_end = on_end
        self._listener: socket.socket | None = None
        self._tunnel: relay_wire.Tunnel | None = None
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._screens: dict[int, ReverseRequestScreen] = {}
        self.port = 0

    @property
    def error(self) -> relay_wire.RelayWireError | None:
        """Why the relay stopped by itself, else None."""
        return self._tunnel.error if self._tunnel is not None else None

    @property
    def requests(self) -> int:
        """Storage requests this end made so far (reads of "up", appends to "down")."""
        return self._tunnel.requests if self._tunnel is not None else 0

    def start(self) -> int:
        """Start serving; return the 127.0.0.1 port to attach to."""
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        self._listener, self.port = listener, listener.getsockname()[1]
        self._tunnel = relay_wire.Tunnel(
            self._down, self._up, keys=relay_wire.KeyPair(), peer=self._node_key,
            heartbeat=relay_wire.HEARTBEAT, screen=self._screen,
        )
        self._spawn(self._accept, "relay-accept")
        self._spawn(self._read, "relay-reader")
        return self.port

    def stop(self, *, delete: bool = True) -> None:
        """Close the port and every channel; the node gets ``CLOSE`` and ``BYE`` (a paused
        debuggee runs on), read before the "down" blobs are deleted (best effort) when a
        debugger was attached. The "up" ones are the notebook's to delete with its own key."""
        if self._tunnel is None or self._stopping.is_set():
            return
        self._stopping.set()
        self._close_port()
        attached = self._tunnel.channels > 0
        self._tunnel.close(wait_for_bye=relay_wire.BYE_WAIT if attached else 0.0)
        self._tunnel.wake()
        for thread in self._threads:
            thread.join(5)
        if delete:
            for url in relay_wire.chain_urls(self._down):
                blob = relay_wire.AppendBlob(url)
                try:
                    blob.delete()
                except (OSError, relay_wire.RelayWireError):
                    pass
                finally:
                    blob.close()

    def _read(self) -> None:
        assert self._tunnel is not None
        self._tunnel.run_until(lambda: False)
        error = self._tunnel.error
        if error is not None and not self._stopping.is_set():
            self._close_port()  # a re-attach is refused at once, not carried to nothing
            if self._on_end is not None:
                self._on_end(str(error))

    def _close_port(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):  # wakes accept(): close() alone leaves it waiting
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()

    def _screen(self, channel: int, payload: bytes) -> tuple[bytes, bytes]:
        screen = self._screens.setdefault(channel, ReverseRequestScreen(self.port))
        return screen.feed(payload)

    def _accept(self) -> None:
        assert self._listener is not None and self._tunnel is not None
        for channel in itertools.count(1):
            try:
                connection, _ = self._listener.accept()
            except OSError:  # the port closed: stop() was called, or the relay ended
                return
            if self._stopping.is_set():
                connection.close()
                return
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._tunnel.add(channel, connection)

    def _spawn(self, target, name: str) -> None:  # type: ignore[no-untyped-def]
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)
