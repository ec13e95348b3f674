"""A small Debug Adapter Protocol client that attaches the way VS Code does.

Length-prefixed JSON over a TCP socket (or a child's pipes): ``initialize``, ``attach`` with the
launch.json configuration, breakpoints, ``configurationDone``, then it waits for ``stopped``,
reads variables and continues. Responses and events are read by one thread into a queue.
"""

from __future__ import annotations

import json
import queue
import socket
import threading
import time
from typing import Any, BinaryIO


class DapError(AssertionError):
    pass


class DapClient:
    def __init__(self, reader: BinaryIO, writer: BinaryIO, closer=None) -> None:
        self._reader, self._writer, self._closer = reader, writer, closer
        self._seq = 0
        self._messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._backlog: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        threading.Thread(target=self._read_forever, daemon=True).start()

    @classmethod
    def connect(cls, host: str, port: int, timeout: float = 10.0) -> DapClient:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.settimeout(None)
        return cls(sock.makefile("rb"), sock.makefile("wb"), sock.close)

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
                    name, _, value = line.decode().partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                body = self._reader.read(length)
                self._messages.put(json.loads(body))
        except (EOFError, OSError, ValueError):
            self._messages.put(None)

    def send(self, command: str, **arguments: Any) -> int:
        self._seq += 1
        message = {"seq": self._seq, "type": "request", "command": command, "arguments": arguments}
        body = json.dumps(message).encode()
        self._writer.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self._writer.flush()
        return self._seq

    def _next(self, match, timeout: float) -> dict[str, Any]:
        for message in self._backlog:
            if match(message):
                self._backlog.remove(message)
                return message
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DapError(f"timed out; events so far: {[e['event'] for e in self.events]}")
            try:
                message = self._messages.get(timeout=left)
            except queue.Empty:
                continue
            if message is None:
                raise DapError("the debug connection closed")
            if message.get("type") == "event":
                self.events.append(message)
            if match(message):
                return message
            self._backlog.append(message)

    def response(self, seq: int, timeout: float = 30.0) -> dict[str, Any]:
        reply = self._next(
            lambda m: m.get("type") == "response" and m.get("request_seq") == seq, timeout
        )
        if not reply.get("success"):
            raise DapError(f"{reply.get('command')} failed: {reply.get('message')}")
        return reply.get("body") or {}

    def request(self, command: str, timeout: float = 30.0, **arguments: Any) -> dict[str, Any]:
        return self.response(self.send(command, **arguments), timeout)

    def event(self, name: str, timeout: float = 30.0) -> dict[str, Any]:
        found = self._next(lambda m: m.get("type") == "event" and m.get("event") == name, timeout)
        return found.get("body") or {}

    def attach(self, config: dict[str, Any], breakpoints: dict[str, list[int]],
               exception_filters: list[str] | None = None) -> None:
        """initialize, attach, breakpoints (and exception filters, like ``["uncaught"]``),
        configurationDone: VS Code's order."""
        self.request("initialize", clientID="vscode", adapterID="debugpy", pathFormat="path",
                     linesStartAt1=True, columnsStartAt1=True, supportsRunInTerminalRequest=False)
        attach_seq = self.send("attach", **config)
        self.event("initialized")
        for path, lines in breakpoints.items():
            self.request("setBreakpoints", source={"path": path},
                         breakpoints=[{"line": line} for line in lines])
        if exception_filters is not None:
            self.request("setExceptionBreakpoints", filters=exception_filters)
        self.request("configurationDone")
        self.response(attach_seq)

    def wait_stopped(self, timeout: float = 30.0) -> dict[str, Any]:
        """The top frame where the debuggee stopped: ``{"line", "source": {"path"}, "id", ...}``."""
        stopped = self.event("stopped", timeout)
        frames = self.request("stackTrace", threadId=stopped["threadId"])["stackFrames"]
        self.stopped_thread = stopped["threadId"]
        return frames[0]

    def locals_of(self, frame: dict[str, Any]) -> dict[str, str]:
        scopes = self.request("scopes", frameId=frame["id"])["scopes"]
        reference = next(s for s in scopes if s["name"] == "Locals")["variablesReference"]
        variables = self.request("variables", variablesReference=reference)["variables"]
        return {v["name"]: v["value"] for v in variables}

    def evaluate(self, frame: dict[str, Any], expression: str) -> str:
        return self.request("evaluate", expression=expression, frameId=frame["id"],
                            context="repl")["result"]

    def resume(self) -> None:
        self.request("continue", threadId=self.stopped_thread)

    def wait_closed(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Wait until the other end closes the connection; the messages that came first."""
        seen: list[dict[str, Any]] = []

        def record(message: dict[str, Any]) -> bool:
            seen.append(message)
            return False

        try:
            self._next(record, timeout)
        except DapError as error:
            if "closed" not in str(error):
                raise
        return seen

    def close(self) -> None:
        try:
            self.send("disconnect")
        except OSError:
            pass
        if self._closer:
            self._closer()


def evaluate_at_first_stop(config: dict[str, Any], breakpoints: dict[str, list[int]],
                           expression: str) -> str:
    """Attach with a launch.json ``config``, wait for the first breakpoint, evaluate
    ``expression`` in that frame, continue and detach; the value as the debugger shows it.

    The stop must be in one of the files the breakpoints name, as this machine has them: that
    proves the config's pathMappings (a wrong mapping still 'verifies' a breakpoint)."""
    client = DapClient.connect(config["connect"]["host"], config["connect"]["port"])
    try:
        client.attach(config, breakpoints)
        frame = client.wait_stopped(60)
        assert frame["source"]["path"] in breakpoints, frame["source"]
        value = client.evaluate(frame, expression)
        client.resume()
    finally:
        client.close()
    return value
