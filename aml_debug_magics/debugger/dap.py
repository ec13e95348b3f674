"""The Debug Adapter Protocol client: the notebook attaches to a debuggee as VS Code does.

In: a debuggee's attach address (``host``/``port`` of its debugpy adapter) and the attach
arguments of the row's launch.json configuration (``pathMappings``, ``justMyCode``). Out: DAP
requests answered as their ``body`` dicts (or :class:`DapError`), and every event handed to one
``on_event(process_id, event, body)`` callback on the client's own event thread, in order.

Each connection has one reader thread (length-prefixed JSON off the socket) and one event thread
(so a callback may send requests and wait for their answers). A ``debugpyAttach`` event (the
adapter announcing a child process: a gunicorn worker, a subprocess) opens a second connection
to the same adapter with the event's body as attach arguments, as VS Code does; every process is
then addressed by its id (``main`` for the first). Closing detaches (``terminateDebuggee``
false): the script runs on.

Breakpoints are asked for by line and answered by line: debugpy binds each to a line that runs
(line 9999 of a 40-line file to its last line), and ``setBreakpoints`` says which, one answer per
line asked, in order. Exceptions stop where uncaught, and where user-unhandled (debugpy's
``userUnhandled`` filter, VS Code's "User Uncaught Exceptions"): raised in the user's code and
handed to a library's that catches it, as the inference server catches what a scoring
script's ``run()`` raises, or a runner what the function it calls raises; where raised too,
on request.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import queue
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

MAIN = "main"
REQUEST_TIMEOUT = 30.0
QUICK_ACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only
EventHandler = Callable[[str, str, dict[str, Any]], None]
Bound = dict[int, "int | None"]  # line asked -> line debugpy bound it to (None: not bound)


class DapError(Exception):
    """A request the adapter refused or could not answer; the message says why."""


class DapClosed(DapError):
    """The connection to the debuggee ended (it exited, or its adapter closed)."""


@dataclass
class _Pending:
    done: threading.Event = field(default_factory=threading.Event)
    reply: dict[str, Any] | None = None


class _AckingSocket(io.RawIOBase):
    """The socket's bytes, acknowledged at once (Linux's ``TCP_QUICKACK``, which each delayed
    acknowledgement turns off again). debugpy's adapter sends ``continued`` and then
    ``stopped`` back to back: with Nagle's algorithm on its side the second waits for our
    acknowledgement of the first, which Linux delays by 40 ms, on every step."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = self._sock.recv_into(buffer)
        if QUICK_ACK is not None:
            with contextlib.suppress(OSError):
                self._sock.setsockopt(socket.IPPROTO_TCP, QUICK_ACK, 1)
        return count


class DapConnection:
    """One socket to a debugpy adapter: requests with their answers, events in order."""

    def __init__(self, sock: socket.socket, on_event: Callable[[str, dict[str, Any]], None],
                 name: str = MAIN) -> None:
        self.name = name
        self._sock = sock
        self._reader = io.BufferedReader(_AckingSocket(sock))
        self._on_event = on_event
        self._lock = threading.Lock()
        self._seq = 0
        self._pending: dict[int, _Pending] = {}
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.closed = threading.Event()
        for run, job in ((self._read_forever, "reader"), (self._dispatch_events, "events")):
            threading.Thread(target=run, name=f"aml-debug-dap-{job}-{name}", daemon=True).start()

    @classmethod
    def open(cls, host: str, port: int, on_event: Callable[[str, dict[str, Any]], None],
             name: str = MAIN, timeout: float = 10.0) -> DapConnection:
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as error:
            raise DapClosed(f"cannot connect to the debugger at {host}:{port}: {error}") from None
        sock.settimeout(None)
        return cls(sock, on_event, name)

    def _read_forever(self) -> None:
        try:
            while True:
                length = None
                while True:
                    line = self._reader.readline()
                    if not line:
                        raise EOFError
                    line = line.strip()
                    if not line:
                        break
                    key, _, value = line.decode("ascii").partition(":")
                    if key.strip().lower() == "content-length":
                        length = int(value)
                if length is None:
                    raise ValueError("a message without Content-Length")
                self._received(json.loads(self._reader.read(length)))
        except (EOFError, OSError, ValueError):
            pass
        finally:
            self._ended()

    def _received(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "response":
            with self._lock:
                pending = self._pending.pop(message.get("request_seq"), None)
            if pending is not None:
                pending.reply = message
                pending.done.set()
        elif kind == "event":
            self._events.put(message)
        elif kind == "request":  # a reverse request (runInTerminal...): we run no terminals
            with contextlib.suppress(DapClosed):
                self._write({"type": "response", "request_seq": message.get("seq"),
                             "command": message.get("command"), "success": False,
                             "message": "not supported by the notebook debugger"})

    def _dispatch_events(self) -> None:
        while (message := self._events.get()) is not None:
            try:
                self._on_event(message.get("event", ""), message.get("body") or {})
            except Exception:  # one bad event must not end the debugging
                log.exception("handling the debugger's %r event failed", message.get("event"))

    def _ended(self) -> None:
        self.closed.set()
        with self._lock:
            pending, self._pending = list(self._pending.values()), {}
        for waiting in pending:
            waiting.done.set()
        self._events.put({"event": "aml_debug_closed"})
        self._events.put(None)
        try:
            self._sock.close()
        except OSError:
            pass

    def _write(self, message: dict[str, Any], pending: _Pending | None = None) -> None:
        """Number ``message`` and send it; ``pending`` waits for the answer to that number."""
        with self._lock:
            if self.closed.is_set():
                raise DapClosed("the debug connection is closed")
            self._seq += 1
            if pending is not None:
                self._pending[self._seq] = pending
            body = json.dumps({**message, "seq": self._seq}).encode()
            try:
                self._sock.sendall(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            except OSError:
                self._pending.pop(self._seq, None)
                raise DapClosed("the debug connection is closed") from None

    def send(self, command: str, arguments: dict[str, Any] | None = None) -> _Pending:
        """Send a request; the answer arrives in the returned pending's ``reply``."""
        pending = _Pending()
        self._write({"type": "request", "command": command, "arguments": arguments or {}},
                    pending)
        return pending

    @staticmethod
    def answer(command: str, pending: _Pending, timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
        """The body of a sent request's answer, or DapError with the adapter's reason."""
        if not pending.done.wait(timeout):
            raise DapError(f"the debugger did not answer {command!r} within {timeout:.0f} s")
        reply = pending.reply
        if reply is None:
            raise DapClosed("the debug connection closed")
        if not reply.get("success"):
            error = (reply.get("body") or {}).get("error") or {}
            raise DapError(error.get("format") or reply.get("message") or f"{command} failed")
        return reply.get("body") or {}

    def request(self, command: str, timeout: float = REQUEST_TIMEOUT,
                **arguments: Any) -> dict[str, Any]:
        return self.answer(command, self.send(command, arguments), timeout)

    def close(self) -> None:
        """Detach (the debuggee runs on) and close the socket."""
        if not self.closed.is_set():
            try:
                self.request("disconnect", timeout=5, terminateDebuggee=False)
            except DapError:
                pass
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()


@dataclass
class DebuggedProcess:
    """One process under the debugger: the script's own, or a child its adapter handed off."""

    id: str
    name: str
    connection: DapConnection
    ended: bool = False
    initialized: threading.Event = field(default_factory=threading.Event, repr=False)


class DapClient:
    """The debuggee at ``host:port`` and its children, attached with ``attach_arguments``.

    >>> client = DapClient("127.0.0.1", 5678, {"justMyCode": True}, on_event=print)
    >>> client.start({"/home/me/src/train.py": [12, 9999]}, raised=False)  # doctest: +SKIP
    {'/home/me/src/train.py': {12: 12, 9999: 40}}
    >>> client.request("main", "threads")  # doctest: +SKIP
    {'threads': [{'id': 1, 'name': 'MainThread'}]}
    """

    def __init__(self, host: str, port: int, attach_arguments: dict[str, Any],
                 on_event: EventHandler) -> None:
        self.host, self.port = host, port
        self.attach_arguments = attach_arguments
        self._on_event = on_event
        self._lock = threading.Lock()
        self.processes: dict[str, DebuggedProcess] = {}
        self.breakpoints: dict[str, list[int]] = {}  # path -> lines asked for
        self.raised = False
        self._closing = False

    def start(self, breakpoints: dict[str, list[int]], raised: bool = False
              ) -> dict[str, Bound]:
        """Connect and attach to the script's own process with these breakpoints; the
        breakpoints as the adapter bound them (``{path: {line asked: line bound}}``)."""
        for path, lines in breakpoints.items():  # beside any set while connecting
            self.breakpoints[path] = sorted({*self.breakpoints.get(path, []), *lines})
        self.raised = raised
        return self._attach(MAIN, "script", self.attach_arguments)

    def _attach(self, process_id: str, name: str, arguments: dict[str, Any]
                ) -> dict[str, Bound]:
        connection = DapConnection.open(
            self.host, self.port, lambda event, body: self._event(process_id, event, body),
            name=process_id,
        )
        try:
            connection.request("initialize", clientID="aml-debug-magics", clientName="notebook",
                               adapterID="debugpy", pathFormat="path", linesStartAt1=True,
                               columnsStartAt1=True, supportsVariableType=True,
                               supportsRunInTerminalRequest=False)
            with self._lock:
                self.processes[process_id] = DebuggedProcess(process_id, name, connection)
            attaching = connection.send("attach", {"request": "attach", **arguments})
            self._wait_initialized(self.processes[process_id], attaching)
            bound = {path: self._set_breakpoints(connection, path, lines)
                     for path, lines in self.breakpoints.items()}
            connection.request("setExceptionBreakpoints", filters=self._exception_filters())
            connection.request("configurationDone")
            connection.answer("attach", attaching)
        except DapError:
            with self._lock:
                self.processes.pop(process_id, None)
            connection.close()
            raise
        return bound

    @staticmethod
    def _wait_initialized(process: DebuggedProcess, attaching: _Pending) -> None:
        """debugpy sends ``initialized`` after ``attach``; configuration goes after that."""
        while not process.initialized.wait(0.2):
            if attaching.done.is_set():  # attach answered first: refused, or no event coming
                process.connection.answer("attach", attaching)
                return
            if process.connection.closed.is_set():
                raise DapClosed("the debugger closed the connection while attaching")

    def _event(self, process_id: str, event: str, body: dict[str, Any]) -> None:
        if event == "initialized":
            with self._lock:
                process = self.processes.get(process_id)
            if process is not None:
                process.initialized.set()
            return
        if event == "debugpyAttach":
            child = str(body.get("subProcessId") or len(self.processes))
            name = body.get("name") or f"process {child}"
            threading.Thread(target=self._attach_child, args=(child, name, body),
                             name=f"aml-debug-attach-{child}", daemon=True).start()
            return
        if event == "process" and body.get("name"):  # what the process runs, and its pid
            script = str(body["name"]).replace("\\", "/").rsplit("/", 1)[-1]
            pid = body.get("systemProcessId")
            self._rename(process_id, f"{script} (pid {pid})" if pid else script)
        if event in ("terminated", "aml_debug_closed"):
            with self._lock:
                process = self.processes.get(process_id)
                if process is not None:
                    process.ended = True
        if event == "aml_debug_closed":
            if self._closing:
                return
            event = "closed"
        self._on_event(process_id, event, body)

    def _rename(self, process_id: str, name: str) -> None:
        with self._lock:
            process = self.processes.get(process_id)
            if process is not None:
                process.name = name

    def _attach_child(self, child: str, name: str, arguments: dict[str, Any]) -> None:
        if self._closing:
            return
        try:
            self._attach(child, name, arguments)
        except DapError as error:
            self._on_event(child, "output", {"category": "important",
                                             "output": f"could not attach to {name}: {error}"})
            return
        self._on_event(child, "process_added", {"name": name})

    def _exception_filters(self) -> list[str]:
        """Uncaught and user-unhandled exceptions stop; raised ones too when asked."""
        return ["uncaught", "userUnhandled", *(["raised"] if self.raised else [])]

    @staticmethod
    def _set_breakpoints(connection: DapConnection, path: str, lines: list[int]) -> Bound:
        body = connection.request("setBreakpoints", source={"path": path},
                                  breakpoints=[{"line": line} for line in lines])
        answers = body.get("breakpoints", [])  # one per line asked, in order
        return {line: answer.get("line") if answer.get("verified") else None
                for line, answer in zip(lines, answers, strict=False)}

    def live(self) -> list[DebuggedProcess]:
        with self._lock:
            return [p for p in self.processes.values() if not p.ended]

    def request(self, process_id: str, command: str, timeout: float = REQUEST_TIMEOUT,
                **arguments: Any) -> dict[str, Any]:
        with self._lock:
            process = self.processes.get(process_id)
        if process is None or process.ended:
            raise DapClosed(f"the process {process_id!r} has ended")
        return process.connection.request(command, timeout, **arguments)

    def set_breakpoints(self, path: str, lines: list[int]) -> Bound:
        """Set ``path``'s breakpoints in every process; each line asked, and the line it is
        bound to in a process (None while no process has bound it)."""
        wanted = sorted(set(lines))
        if wanted:
            self.breakpoints[path] = wanted
        else:
            self.breakpoints.pop(path, None)
        bound: Bound = dict.fromkeys(wanted)
        for process in self.live():
            try:
                answers = self._set_breakpoints(process.connection, path, wanted)
            except DapClosed:
                continue
            for line, where in answers.items():
                bound[line] = bound[line] or where
        return bound

    def set_raised(self, raised: bool) -> None:
        """Stop on raised exceptions too (``True``) or only on uncaught ones."""
        self.raised = raised
        for process in self.live():
            try:
                process.connection.request("setExceptionBreakpoints",
                                           filters=self._exception_filters())
            except DapClosed:
                continue

    def close(self) -> None:
        """Detach from every process; the scripts run on."""
        self._closing = True
        with self._lock:
            processes = list(self.processes.values())
        for process in processes:
            process.connection.close()
