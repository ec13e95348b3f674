"""The notebook's end of the storage relay: a 127.0.0.1 port a debugger attaches to, pumped
through two blob chains to the node's relay (``node/relay.py``).

In: connections a DAP client (VS Code, or any) makes to :meth:`StorageRelay.start`'s port; each
becomes a channel (``OPEN``, ``DATA``, ``CLOSE`` frames) appended to the "down" chain, which only
the notebook may write. Out: the frames the node appends to the "up" chain, read back and
written to the channel's connection. The wire (chains, frames, rotation, polling, retries) is
``node/relay_wire.py``'s, the one module both ends share. Standard library only.

    >>> relay = StorageRelay(up_chain, down_chain)   # doctest: +SKIP
    >>> port = relay.start()         # attach VS Code to 127.0.0.1:port
    >>> relay.stop()                 # closes the port and every channel, deletes the down blobs
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading

from aml_debug_magics.node import relay_wire


class StorageRelay:
    """Serves 127.0.0.1:<port> and carries each accepted connection through the blobs.

    ``up_url`` / ``down_url`` are chains as ``relay_wire`` names them (blob URLs with the
    notebook's own SAS, space-separated): read on "up", create/write/delete on "down".
    """

    def __init__(self, up_url: str, down_url: str) -> None:
        self._up, self._down = up_url, down_url
        self._listener: socket.socket | None = None
        self._tunnel: relay_wire.Tunnel | None = None
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.port = 0

    @property
    def error(self) -> relay_wire.RelayWireError | None:
        """Why the relay stopped by itself (storage refused or unreachable), else None."""
        return self._tunnel.error if self._tunnel is not None else None

    @property
    def requests(self) -> int:
        """Storage requests this end made so far (reads of "up", appends to "down")."""
        return self._tunnel.requests if self._tunnel is not None else 0

    def start(self) -> int:
        """Start serving; return the 127.0.0.1 port to attach to."""
        self._tunnel = relay_wire.Tunnel(self._down, self._up)
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        self._listener, self.port = listener, listener.getsockname()[1]
        self._spawn(self._accept, "relay-accept")
        self._spawn(lambda: self._tunnel.run_until(self._stopping.is_set), "relay-reader")
        return self.port

    def stop(self, *, delete: bool = True) -> None:
        """Close the port and every channel (the node gets ``CLOSE``), stop pumping, and
        (best effort) delete the "down" blobs; the "up" ones are the notebook's to delete with
        its own key, and they expire anyway."""
        if self._tunnel is None or self._stopping.is_set():
            return
        self._stopping.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):  # wakes accept(): close() alone leaves it waiting
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
        self._tunnel.wake()
        self._tunnel.close()
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

    def _accept(self) -> None:
        assert self._listener is not None and self._tunnel is not None
        for channel in itertools.count(1):
            try:
                connection, _ = self._listener.accept()
            except OSError:  # the port closed: stop() was called
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
