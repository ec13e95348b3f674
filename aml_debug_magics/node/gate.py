"""The gate in front of debugpy: owns the public debug port, in a small process of its own.

    python -I -S gate.py LISTENER_FD CONTROL_FD [--allow CIDR,...] [--reattach-window S]
        [--rank N]

Started by ``bootstrap.py`` (which binds the port and passes it in), never by hand. A bare TCP
connect and close on a debugpy listener (a port scanner, a health check, a reachability probe)
makes debugpy's adapter exit while the script waits forever; the gate forwards to debugpy, on
loopback, only connections that open with a debug-protocol header, and drops the rest.

Being a process of its own, it outlives the script long enough to deliver debugpy's last
messages (the exit code, ``terminated``), and then ends debugpy's adapter whatever state that is
in: a client that sent a malformed message can leave the adapter listening for good.

Who may attach, and for how long: with ``--allow``, connections from other source addresses are
closed before a byte reaches debugpy (counted, one log line per ``REFUSAL_LOG_EVERY`` seconds at
most). The word ``node`` in the list admits the node itself: a connection whose source is the
address it arrived at, as an SSH tunnel through the node's sshd arrives (``ssh -L
PORT:NODE_IP:PORT``); an IPv4-mapped IPv6 source (``::ffff:10.0.0.5``) is its IPv4 address.
Once an attached debugger has left, the port takes a new one only for ``--reattach-window``
seconds (0: none), then closes for good and says so.

Standard library only; it travels into an Azure ML run's snapshot as ``aml_debug_gate.py``.
"""

from __future__ import annotations

import ipaddress
import os
import selectors
import signal
import socket
import sys
import time

DAP_HEADER = b"Content-Length:"
HANDSHAKE_TIMEOUT = 30.0  # a connection that says nothing for this long is dropped
EXIT_GRACE = 5.0  # after the script ends, open debug sessions get this long to finish
ADAPTER_MARKER = "AML_DEBUG_ADAPTER_OF"  # set in the adapter's environment only
REFUSAL_LOG_EVERY = 30.0
DEFAULT_REATTACH_WINDOW = 60.0
QUICK_ACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only


def say(message: str) -> None:
    print(f"aml-debug: {message}", flush=True)


def find_adapter_pid(marker: str) -> int | None:
    """The pid of debugpy's adapter, which daemonizes: found by a variable only its env has."""
    needle = f"{ADAPTER_MARKER}={marker}".encode()
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            with open(f"/proc/{pid}/environ", "rb") as environ:
                if needle in environ.read().split(b"\0"):
                    return int(pid)
        except OSError:
            continue
    return None


def _is_running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _kill(pid: int | None) -> None:
    """End a process (debugpy's adapter): SIGTERM, then SIGKILL if it lingers."""
    if pid is None or not _is_running(pid):
        return
    for sig, wait in ((signal.SIGTERM, 1.0), (signal.SIGKILL, 1.0)):
        try:
            os.kill(pid, sig)
        except OSError:
            return
        until = time.monotonic() + wait
        while time.monotonic() < until:
            if not _is_running(pid):
                return
            time.sleep(0.02)


class DebugGate:
    """Owns the public debug port; forwards only debug-protocol clients to debugpy on loopback.

    Runs in a process of its own (``--serve-gate``), so it outlives the script long enough to
    deliver debugpy's last messages, and then ends the adapter whatever state it is in. Anything
    that does not open with a debug-protocol header (a bare connect and close, an HTTP probe) is
    closed without debugpy ever seeing it.

    Commands arrive on the control socket, one a line: ``upstream PORT`` (debugpy's loopback
    port), ``adapter MARKER`` (the value of ``ADAPTER_MARKER`` in the adapter's environment),
    ``close`` (the deadline passed: close everything now). End of input means the script is
    over: stop accepting, let open sessions finish, then end the adapter. The gate writes one
    line back, ``wanted``, when a debugger is waiting for debugpy to listen (a script may start
    debugpy only then).
    """

    def __init__(
        self,
        listener: socket.socket,
        control: socket.socket | None = None,
        *,
        allow: Allowlist | None = None,
        reattach_window: float = DEFAULT_REATTACH_WINDOW,
        rank: int = 0,
    ) -> None:
        self._listener = listener
        self._allow = allow  # None: any source
        self._refused = 0
        self._refusals_told_at = 0.0
        self._reattach_window = reattach_window
        self._reattach_until: float | None = None
        self._rank = rank
        self._control = control
        self._control_buffer = b""
        self._selector = selectors.DefaultSelector()
        self._upstream_port: int | None = None
        self._adapter_marker: str | None = None
        self._pending: dict[socket.socket, tuple[str, bytes, float]] = {}
        self._waiting: list[tuple[socket.socket, str, bytes]] = []  # spoke before debugpy was up
        self._wanted = False  # "wanted" written
        self._peers: dict[socket.socket, socket.socket] = {}
        self._draining_since: float | None = None

    def serve(self) -> None:
        self._listener.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ)
        if self._control is not None:
            self._selector.register(self._control, selectors.EVENT_READ)
        try:
            while not self._finished():
                for key, _ in self._selector.select(timeout=0.5):
                    sock = key.fileobj
                    if sock is self._control:
                        self._command()
                    elif sock is self._listener:
                        self._accept()
                    elif sock in self._pending:
                        self._handshake(sock)
                    elif sock in self._peers:
                        self._pump(sock)
                self._drop_silent()
                self._end_reattach_window()
        finally:
            self._shut()
            if self._adapter_marker:
                _kill(find_adapter_pid(self._adapter_marker))

    def _finished(self) -> bool:
        if self._listener.fileno() >= 0 or self._draining_since is None:
            return False
        return not self._peers or time.monotonic() - self._draining_since > EXIT_GRACE

    def _command(self) -> None:
        chunk = self._control.recv(4096) if self._control else b""
        if not chunk:  # the script ended: no new connections, let sessions finish
            self._selector.unregister(self._control)
            self._control = None
            self._close_listener()
            self._draining_since = time.monotonic()
            return
        self._control_buffer += chunk
        *lines, self._control_buffer = self._control_buffer.split(b"\n")
        for line in lines:
            verb, _, value = line.decode().partition(" ")
            if verb == "upstream":
                self._upstream_port = int(value)
                for conn, who, seen in self._waiting:
                    self._forward(conn, who, seen)
                self._waiting.clear()
            elif verb == "adapter":
                self._adapter_marker = value
            elif verb == "close":
                self._close_listener()
                self._draining_since = time.monotonic() - EXIT_GRACE - 1
                for sock in list(self._peers):
                    if sock in self._peers:  # its pair's other end may have dropped it already
                        self._drop_pair(sock)

    def _close_listener(self) -> None:
        if self._listener.fileno() >= 0:
            self._selector.unregister(self._listener)
            self._listener.close()

    def _shut(self) -> None:
        for sock in [self._listener, *self._pending, *self._peers]:
            sock.close()
        for conn, _, _ in self._waiting:
            conn.close()

    def _accept(self) -> None:
        try:
            conn, (host, port, *_) = self._listener.accept()
            arrived_at = conn.getsockname()[0]
        except OSError:
            return
        if self._allow is not None and not self._allow.admits(host, arrived_at):
            conn.close()
            self._refused += 1
            now = time.monotonic()
            if now - self._refusals_told_at >= REFUSAL_LOG_EVERY:
                say(f"refused {self._refused} connection(s) from addresses not allowed to "
                    f"attach (the last from {host})")
                self._refused, self._refusals_told_at = 0, now
            return
        conn.setblocking(True)
        self._pending[conn] = (f"{host}:{port}", b"", time.monotonic())
        self._selector.register(conn, selectors.EVENT_READ)

    def _end_reattach_window(self) -> None:
        """Once the debugger has left: close the port for good when the window is over."""
        if self._reattach_until is None or self._peers:
            return
        if time.monotonic() >= self._reattach_until and self._listener.fileno() >= 0:
            self._reattach_until = None
            self._close_listener()
            for conn in list(self._pending):
                self._selector.unregister(conn)
                conn.close()
            self._pending.clear()
            reason = (
                f"the debugger left and nobody re-attached within {self._reattach_window:g} s: "
                "the port is closed for good" if self._reattach_window else
                "the debugger left: the port is closed for good"
            )
            _tell_closed(reason, self._rank)

    def _handshake(self, conn: socket.socket) -> None:
        who, seen, since = self._pending[conn]
        chunk = self._recv(conn)
        seen += chunk
        if chunk and len(seen) < len(DAP_HEADER) and DAP_HEADER.startswith(seen):
            self._pending[conn] = (who, seen, since)
            return
        del self._pending[conn]
        self._selector.unregister(conn)
        if not seen.startswith(DAP_HEADER):
            if seen:
                say(f"ignored a connection from {who}: it did not speak the debug protocol")
            conn.close()
        elif self._upstream_port is None:
            self._waiting.append((conn, who, seen))
            self._want()
        else:
            self._forward(conn, who, seen)

    def _want(self) -> None:
        """Tell the script, once, that a debugger waits for debugpy."""
        if self._wanted or self._control is None:
            return
        self._wanted = True
        try:
            self._control.sendall(b"wanted\n")
        except OSError:
            pass

    def _forward(self, conn: socket.socket, who: str, seen: bytes) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self._upstream_port), timeout=10)
            upstream.settimeout(None)
            upstream.sendall(seen)
        except OSError as error:
            say(f"could not reach the debugger for {who}: {error}")
            conn.close()
            return
        say(f"debugger connected from {who}")
        for end in (conn, upstream):  # each message on at once, as the ends write it
            try:
                end.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self._reattach_until = None
        self._peers[conn], self._peers[upstream] = upstream, conn
        self._selector.register(conn, selectors.EVENT_READ)
        self._selector.register(upstream, selectors.EVENT_READ)

    def _pump(self, sock: socket.socket) -> None:
        data = self._recv(sock)
        if data:
            try:
                self._peers[sock].sendall(data)
                return
            except OSError:
                pass
        self._drop_pair(sock)

    def _drop_pair(self, sock: socket.socket) -> None:
        for end in (sock, self._peers[sock]):
            self._selector.unregister(end)
            self._peers.pop(end, None)
            end.close()
        if not self._peers and self._listener.fileno() >= 0:
            self._reattach_until = time.monotonic() + self._reattach_window

    @staticmethod
    def _recv(sock: socket.socket) -> bytes:
        """The bytes waiting on ``sock``, acknowledged at once (Linux): debugpy's adapter sends
        ``continued`` and ``stopped`` back to back, and with Nagle's algorithm on its side the
        second waited for our delayed acknowledgement of the first, 40 ms, on every step."""
        try:
            data = sock.recv(65536)
            if QUICK_ACK is not None:
                sock.setsockopt(socket.IPPROTO_TCP, QUICK_ACK, 1)
            return data
        except OSError:
            return b""

    def _drop_silent(self) -> None:
        now = time.monotonic()
        for conn, (_, _, since) in list(self._pending.items()):
            if now - since > HANDSHAKE_TIMEOUT:
                del self._pending[conn]
                self._selector.unregister(conn)
                conn.close()


def _tell_closed(reason: str, rank: int) -> None:
    """The machine-readable line (announce.py's format, its one writer) and a human line."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)  # -I leaves the gate's own folder off the path
    try:
        import aml_debug_announce as announce  # shipped beside this file
    except ImportError:
        import announce  # type: ignore[no-redef]  # in the package's node/ folder
    print(announce.format_port_closed(announce.PortClosed(reason, rank)), flush=True)
    say(reason)


THIS_NODE = "node"  # in an allowlist: the node itself (an SSH tunnel through its sshd)


def _plain_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """``text`` as an address; an IPv4-mapped IPv6 one (``::ffff:10.0.0.5``) as its IPv4."""
    address = ipaddress.ip_address(text.split("%")[0])
    if address.version == 6 and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


class Allowlist:
    """The sources that may attach: networks, and with ``this_node`` the node itself."""

    def __init__(self, networks: list, this_node: bool = False) -> None:
        self.networks = networks  # IPv4Network and IPv6Network
        self.this_node = this_node

    def admits(self, source: str, arrived_at: str = "") -> bool:
        """Whether a connection from ``source``, arrived at the local address ``arrived_at``,
        may reach debugpy. A source equal to the address it arrived at is this node itself:
        no other host can complete a TCP handshake from one of our own addresses."""
        try:
            address = _plain_address(source)
        except ValueError:
            return False
        if self.this_node and arrived_at:
            try:
                if address == _plain_address(arrived_at) or address.is_loopback:
                    return True
            except ValueError:
                pass
        return any(address in network for network in self.networks)

    @property
    def admits_everyone(self) -> bool:
        return any(network.prefixlen == 0 for network in self.networks)


def _network(part: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """One ``--allow`` entry: an address or a network; host bits set are refused, naming it."""
    try:
        network = ipaddress.ip_network(part, strict=False)
    except ValueError:
        raise ValueError(
            f"{part!r} is neither an address nor a network (like 10.0.0.4 or 10.1.0.0/16)"
        ) from None
    if network.network_address != ipaddress.ip_interface(part).ip:
        raise ValueError(
            f"{part} has host bits set: give the network {network} or the address "
            f"{ipaddress.ip_interface(part).ip} alone"
        )
    if network.version == 6 and network.network_address.ipv4_mapped and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        network = ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}")
    return network


def parse_allow(text: str) -> Allowlist | None:
    """``any`` (None), or addresses and networks like ``10.0.0.4,127.0.0.1,10.1.0.0/16``, and
    ``node`` for the node itself. Raises ValueError naming the entry that is wrong.

    >>> parse_allow("10.0.0.4,node").admits("::ffff:10.0.0.4")
    True
    """
    if text.strip() == "any":
        return None
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise ValueError(f"an empty entry in {text!r}")
    networks = [_network(part) for part in parts if part != THIS_NODE]
    return Allowlist(networks, this_node=THIS_NODE in parts)


def admits_everyone(text: str) -> bool:
    """Whether ``--allow`` ``text`` lets everyone who reaches the port attach: ``any``,
    ``0.0.0.0/0`` or ``::/0``."""
    try:
        allowlist = parse_allow(text)
    except ValueError:
        return False
    return allowlist is None or allowlist.admits_everyone


def main(listener_fd: int, control_fd: int, options: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C for the script must not cut the log
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # runs serve()'s cleanup
    given = dict(zip(options[::2], options[1::2]))
    listener = socket.socket(fileno=listener_fd)
    control = socket.socket(fileno=control_fd)
    DebugGate(
        listener, control,
        allow=parse_allow(given.get("--allow", "any")),
        reattach_window=float(given.get("--reattach-window", DEFAULT_REATTACH_WINDOW)),
        rank=int(given.get("--rank", 0)),
    ).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]))
