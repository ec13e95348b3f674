"""A failed script's snapshot, shown as the notebook debugger shows a stop: read-only.

In: a snapshot read back from a run's log (``node/snapshot.py``: for each frame, outermost
first, its file, line, function, source lines around the line and its locals as bounded
reprs). Out: the ``state`` dict ``DebuggerController`` publishes, in the same shape (see
``DebuggerView``), with ``read_only`` saying it is a snapshot; answers to the view's and to
``%aml_debug_step``'s questions (another frame, a value from a character on). Stepping,
breakpoints and evaluation need the process, which has ended: they are refused in one line.
Nothing here talks to a debuggee; every answer comes from the snapshot.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aml_debug_magics.debugger.controller import VALUE_SHOWN
from aml_debug_magics.debugger.dap import DapError
from aml_debug_magics.node.snapshot import redact, where_text

SNAPSHOT_LINE = "AML_DEBUG v1 snapshot "  # how node/snapshot.py's lines start
READ_ONLY = ("a snapshot of the failure, read from the log: the process has ended; attach "
             "during the post-mortem window to step or evaluate")
NOT_EVALUATED = ("not available in a snapshot: the process has ended; attach during the "
                 "post-mortem window to evaluate")
NOT_RUN = ("this is a snapshot of the failure: the process has ended, nothing runs; attach "
           "during the post-mortem window to step")

log = logging.getLogger(__name__)
Listener = Callable[[dict[str, Any]], None]


class SnapshotDebugger:
    """What the notebook debugger shows of a stop, made from ``snapshot``; selected at first:
    the innermost frame, where the exception was raised.

    Frames keep the node's paths, as its traceback printed them. A frame's source is the
    file here when it holds the lines the snapshot kept (the same path, or the path under a
    local root of ``roots``: the row's path mappings, ``(node folder, local folder)``), else
    the kept lines alone, at their own line numbers.
    """

    def __init__(self, snapshot: dict[str, Any], *, title: str = "",
                 roots: list[tuple[str, str]] | None = None) -> None:
        self.snapshot = snapshot
        self.title = title
        self.roots = roots or []
        self.blocked = ""
        self.version = 0
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._listeners: list[Listener] = []
        kept = snapshot.get("frames") or []
        # innermost first, as a debugger lists them; ids count from 1 (0 is "no frame")
        self._frames = [{"id": len(kept) - index, **frame} for index, frame in
                        enumerate(reversed(kept))]
        self.frame_id: int | None = self._frames[0]["id"] if self._frames else None

    # -- what the controller offers, answered from the snapshot ------------------------------

    active = True  # a snapshot does not end: closing its view loses nothing

    def require_active(self) -> None:
        """Nothing to check: the snapshot is always there to read."""

    def state(self) -> dict[str, Any]:
        with self._lock:
            frame = self._frame(self.frame_id)
            exception = {
                "id": str(self.snapshot.get("exception", "")),
                "description": str(self.snapshot.get("message", "")),
                "details": self.details(),
            }
            return {
                "status": "stopped",
                "message": "",
                "read_only": READ_ONLY,
                "processes": [],
                "process": "",
                "stopped": {
                    "reason": "exception", "description": exception["description"],
                    "thread_id": 0, "exception": exception,
                },
                "frames": [
                    {"id": f["id"], "name": f["function"], "path": f["file"], "line": f["line"],
                     "local": Path(f["file"]).is_file()}
                    for f in self._frames
                ],
                "frame_id": self.frame_id,
                "source": None if frame is None else _source(frame, self.roots),
                "scopes": [] if frame is None else [{
                    "name": f"Locals of {frame['function']}", "variables_reference": frame["id"],
                    "expensive": False,
                    "variables": [_variable(name, value) for name, value in
                                  frame["locals"].items()],
                }],
                "breakpoints": {},
                "exceptions": {"uncaught": True, "raised": False},
            }

    def details(self) -> str:
        """The traceback as the node printed it, and what the snapshot left out, if anything."""
        text = where_text(self.snapshot)
        truncated = self.snapshot.get("truncated")
        return f"{text}\n(the snapshot was cut: {truncated})" if truncated else text

    def listen(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)
            state = self.state()
        listener(state)

    def wait_change(self, version: int, timeout: float | None = None) -> bool:
        with self._lock:
            return self._changed.wait_for(lambda: self.version > version, timeout)

    def set_blocked(self, reason: str) -> None:
        with self._lock:
            if reason != self.blocked:
                self.blocked = reason
                self._publish()

    def close(self) -> None:
        """Nothing to detach from: the process has ended already."""

    def select_frame(self, frame_id: int) -> None:
        with self._lock:
            if self._frame(frame_id) is None:
                raise DapError(f"no frame {frame_id} in the snapshot")
            self.frame_id = frame_id
            self._publish()

    def frame_numbered(self, number: int) -> int:
        """The id of the frame ``number`` of ``where``'s call stack (0: the innermost)."""
        if not 0 <= number < len(self._frames):
            raise DapError(f"the snapshot has frames 0 to {len(self._frames) - 1} (got {number})")
        return self._frames[number]["id"]

    def variables(self, reference: int) -> list[dict[str, Any]]:
        """A snapshot's values are text: they have no children."""
        return []

    def value_slice(self, reference: int, name: str, frame_id: int | None = None, *,
                    start: int = 0, count: int | None = None) -> tuple[str, int]:
        """The kept text of the local ``name`` of the frame ``reference`` (a scope's id is its
        frame's); from ``start``, ``count`` characters."""
        frame = self._frame(reference or frame_id)
        if frame is None or name not in frame["locals"]:
            raise DapError(f"no local {name!r} in that frame of the snapshot")
        text = frame["locals"][name]
        end = len(text) if count is None else start + count
        return text[start:end], len(text)

    def evaluate(self, expression: str, frame_id: int | None = None
                 ) -> tuple[dict[str, Any] | None, str | None]:
        return None, NOT_EVALUATED

    def step(self, command: str) -> None:
        raise DapError(NOT_RUN)

    def pause(self) -> None:
        raise DapError(NOT_RUN)

    def toggle_breakpoint(self, path: str, line: int) -> dict[int, int | None]:
        raise DapError(NOT_RUN)

    def act(self, action: dict[str, Any]) -> dict[str, Any] | None:
        """Serve one of the view's messages, as ``DebuggerController.act`` does."""
        name = action.get("action")
        request_id = action.get("request_id")
        try:
            if name == "stop":
                self.close()
            elif name == "select_frame":
                self.select_frame(int(action["frame_id"]))
            elif name == "variables":
                return {"reply": request_id, "variables": []}
            elif name == "full_value":
                value, length = self.value_slice(int(action["variables_reference"]),
                                                 str(action["name"]), action.get("frame_id"))
                return {"reply": request_id, "value": value, "length": length}
            elif name == "evaluate":
                return {"reply": request_id, "result": None, "error": NOT_EVALUATED}
            else:
                raise DapError(NOT_RUN)
        except (DapError, KeyError, ValueError, TypeError) as error:
            reason = str(error) if isinstance(error, DapError) else f"bad message: {error!r}"
            if request_id is not None:
                return {"reply": request_id, "error": reason, "result": None,
                        "variables": [], "value": ""}
        return None

    # -- inside -----------------------------------------------------------------------------

    def _frame(self, frame_id: int | None) -> dict[str, Any] | None:
        return next((f for f in self._frames if f["id"] == frame_id), None)

    def _publish(self) -> None:
        self.version += 1
        self._changed.notify_all()
        state = self.state()
        for listener in list(self._listeners):
            try:
                listener(state)
            except Exception:  # a closed widget must not stop the others
                log.debug("a snapshot listener failed", exc_info=True)


def _variable(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "value": value[:VALUE_SHOWN], "type": "", "variables_reference": 0,
            "shortened": len(value) > VALUE_SHOWN}


def _source(frame: dict[str, Any], roots: list[tuple[str, str]]) -> dict[str, Any]:
    """The frame's file here when its lines are the ones the snapshot kept, else those lines
    at their own numbers (blank above them)."""
    kept, first = frame.get("source") or [], int(frame.get("source_first_line") or 1)
    node_path = frame["file"]
    candidates = [node_path] + [local + node_path[len(remote):] for remote, local in roots
                                if remote and node_path.startswith(remote.rstrip("/") + "/")]
    for candidate in candidates:
        try:
            here = Path(candidate).read_text(encoding="utf-8", errors="replace").splitlines()
        except (OSError, ValueError):
            continue
        if kept and [redact(line) for line in here[first - 1:first - 1 + len(kept)]] == kept:
            return {"path": node_path, "text": "\n".join(here), "line": frame["line"]}
    return {"path": node_path, "text": "\n" * (first - 1) + "\n".join(kept),
            "line": frame["line"]}


_latest: list[tuple[SnapshotDebugger, object, Any]] = []  # with its owner and the debugger then
_latest_lock = threading.Lock()


def remember_snapshot(debugger: SnapshotDebugger, owner: object = None) -> None:
    """``debugger`` is the snapshot ``%aml_debug_step`` reads while no debugger is attached,
    until a debugger is opened after it; ``owner`` (a session) may forget it."""
    from aml_debug_magics.debugger.controller import latest

    with _latest_lock:
        _latest[:] = [(debugger, owner, latest())]


def latest_snapshot() -> SnapshotDebugger | None:
    """The snapshot remembered last, unless the notebook's debugger was opened since."""
    from aml_debug_magics.debugger.controller import latest

    with _latest_lock:
        if not _latest:
            return None
        debugger, _, live_then = _latest[0]
    return debugger if latest() is live_then else None


def forget_snapshots(owner: object) -> None:
    """``owner`` ended (a session stopped or replaced): its snapshot is read no more."""
    with _latest_lock:
        if _latest and _latest[0][1] is owner:
            _latest.clear()
