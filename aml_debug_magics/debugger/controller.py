"""The notebook's debugger for one row: DAP events in, whole ``state`` snapshots out.

In: the row's attach configuration (address, ``pathMappings``, ``justMyCode``), the debuggee's
events through :class:`~aml_debug_magics.debugger.dap.DapClient`, and the user's actions (the
view's custom messages, or ``%aml_debug_step``). Out: one ``state`` dict per change (a stop, a
continue, the end), replaced whole, in the shape ``DebuggerView`` documents, handed to every
listener; and the answers to the view's requests (children of a variable, a full value, an
evaluation). A value too large to show is read in slices the debuggee cuts (``value_slice``):
never whole, since debugpy answering with a 50 MB value stalls every request after it. Once the
script ended or the debugger detached, every action says so. Paths are the user's local paths:
debugpy translates them through the row's path mappings, and the source shown is the local
file, or the debuggee's copy (DAP ``source``) when there is none here.

One lock serialises everything that touches the client or the snapshot; requests wait for their
answers under it (the answers arrive on the client's reader thread, which never takes it).
"""

from __future__ import annotations

import ast
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aml_debug_magics.debugger.dap import MAIN, Bound, DapClient, DapClosed, DapError
from aml_debug_magics.node.bootstrap import ENTRY_SHIPPED_NAMES, SHIPPED_NAMES

log = logging.getLogger(__name__)

VALUE_SHOWN = 200  # characters of a value in the tree; the rest on demand
FULL_VALUE_LIMIT = 4_000_000  # characters of a "full value" sent to the page at most
# a value's repr, cut in the debuggee: "LENGTH:CHARACTERS", read raw (unquoted); the expression
# stands on lines of its own, so a trailing comment in it ends nothing else
VALUE_SLICE = ("(lambda text: '%d:%s' % (len(text), text[{start}:{end}]))"
               "(repr((\n{expression}\n)))")
FRAMES_SHOWN = 100
FRAME_KEYS = ("id", "name", "path", "line", "local")
STEPS = ("continue", "next", "stepIn", "stepOut")  # the DAP requests that let a thread run

Listener = Callable[[dict[str, Any]], None]
NODE_FOLDER = Path(__file__).resolve().parents[1] / "node"
NODE_NAMES = frozenset({*SHIPPED_NAMES.values(), *ENTRY_SHIPPED_NAMES.values(),
                        "aml_debug_parallel_entry.py"})  # their names in a run's snapshot
SERVER_START = NODE_FOLDER.parent / "deploy" / "serve.py"  # starts the local inference server
# what debugpy adds to a user-unhandled exception's stop: the frame it pauses in, and a note
PAUSED_FRAME_MARK = " (Current frame)"
PAUSED_NOTE = re.compile(r"\s+\(note: full exception trace is shown but execution is paused "
                         r"at: .*\)$")


def is_node_file(path: str) -> bool:
    """Whether ``path`` is one of the files that start the user's script under the debugger
    (``aml_debug_magics/node/``, or its copy shipped beside the script, and the local inference
    server's ``deploy/serve.py``): not the user's code."""
    name = path.replace("\\", "/").rsplit("/", 1)[-1]
    return name in NODE_NAMES or bool(path) and (Path(path).parent == NODE_FOLDER
                                                 or Path(path) == SERVER_START)


def shown_variable(variable: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """A DAP variable (or evaluate result) as the view shows it: its value cut to 200 chars."""
    value = str(variable.get("value", variable.get("result", "")))
    return {
        "name": name if name is not None else variable.get("name", ""),
        "value": value[:VALUE_SHOWN],
        "type": variable.get("type") or "",
        "variables_reference": variable.get("variablesReference", 0),
        "shortened": len(value) > VALUE_SHOWN,
    }


def last_line(text: str) -> str:
    """What an evaluation's traceback comes to: its last line (``NameError: ...``)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else text


def first_statement_line(script: Path) -> int | None:
    """The line of the first statement ``script`` runs, where the entry stop goes."""
    try:
        tree = ast.parse(script.read_text(encoding="utf-8", errors="replace"))
    except (OSError, SyntaxError, ValueError):
        return None
    return tree.body[0].lineno if tree.body else None


@dataclass
class Stop:
    """Where one process stands still: its thread, why, and the exception if one."""

    thread_id: int
    reason: str
    description: str
    exception: dict[str, str] | None = None


@dataclass
class Listed:
    """Variables handed to the page under one reference, and the frame they belong to."""

    frame_id: int | None
    variables: list[dict[str, Any]] = field(default_factory=list)


class DebuggerController:
    """Attach to one debuggee and keep the view's ``state`` current.

    ``entry``: a script the debuggee is about to run (a row still waiting for its debugger);
    the debugger then stops at its first statement, so breakpoints can be set before it runs
    on (VS Code's ``stopOnEntry``); ``entry_line``: where in it that stop goes instead (a
    parallel entry script's ``init()``, which its runner calls first). ``script``: the user's
    script, shown (without a current line) until the first stop, so breakpoints can be set in
    it meanwhile: a scoring script, which the server imports on its own schedule, gets no entry
    stop but is shown.
    """

    def __init__(
        self,
        host: str,
        port: int,
        attach_arguments: dict[str, Any],
        *,
        title: str = "",
        entry: Path | None = None,
        entry_line: int | None = None,
        script: Path | None = None,
    ) -> None:
        self.title = title
        self.address = f"{host}:{port}"
        self._client = DapClient(host, port, attach_arguments, self._event)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._listeners: list[Listener] = []
        self.status = "connecting"
        self.message = f"attaching to {self.address}"
        self.blocked = ""  # why the page's buttons cannot reach the kernel now, if they cannot
        self.process = MAIN
        self.stops: dict[str, Stop] = {}
        self.frames: list[dict[str, Any]] = []
        self.frame_id: int | None = None
        self.source: dict[str, Any] | None = None
        self.scopes: list[dict[str, Any]] = []
        self.bound: dict[str, Bound] = {}  # path -> {line asked: line debugpy bound it to}
        self.raised = False
        self.exit_code: int | None = None
        self._entry = entry
        self._entry_line = (entry_line or first_statement_line(entry)) if entry else None
        self._entry_in_function = entry_line is not None
        self._script = entry or script
        self._listed: dict[int, Listed] = {}
        self._texts: dict[str, str] = {}
        self._unhandled_shown: dict[str, tuple[Any, ...]] = {}  # process -> see _reported_again
        self.version = 0  # counts snapshots, so a waiter can tell a new one from the last
        self._published: tuple[dict[str, Any], str] | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def listen(self, listener: Listener) -> None:
        """Call ``listener(state)`` now and after every change (from the debugger's threads)."""
        with self._lock:
            self._listeners.append(listener)
            state = self.state()
        listener(state)

    def start(self) -> threading.Thread:
        """Attach in the background; the state says when it is done, or why it failed."""
        attaching = threading.Thread(target=self._attach, name="aml-debug-attach", daemon=True)
        attaching.start()
        return attaching

    def _attach(self) -> None:
        breakpoints = {}
        if self._entry is not None and self._entry_line is not None:
            breakpoints[str(self._entry)] = [self._entry_line]
        try:
            bound = self._client.start(breakpoints, raised=self.raised)
        except DapError as error:
            with self._lock:
                self.status, self.message = "error", f"could not attach to {self.address}: {error}"
                self._publish()
            return
        with self._lock:
            if self.status == "connecting":  # a stop may have come first
                self.status, self.message = "running", f"attached to {self.address}"
            wanted = self._client.breakpoints  # the entry stop may have come and gone
            for path, answers in bound.items():
                self._set_bound(path, {line: where for line, where in answers.items()
                                       if line in wanted.get(path, [])})
            self._publish()

    def close(self) -> None:
        """Detach: the script runs on without the debugger."""
        with self._lock:
            ended = self.status in ("ended", "error")
            self._client.close()
            if not ended:
                self.status = "ended"
                self.message = "detached: the script runs on without the debugger"
            self.stops.clear()
            self._clear_frames()
            self._publish()

    def set_blocked(self, reason: str) -> None:
        """Why the page's buttons cannot reach the kernel now ("" once they can again)."""
        with self._lock:
            if reason != self.blocked:
                self.blocked = reason
                self._publish()

    @property
    def active(self) -> bool:
        return self.status not in ("ended", "error")

    def require_active(self) -> None:
        """DapError saying the debugger has ended (and why), once it has."""
        if not self.active:
            raise DapError(f"the debugger has ended: {self.message}")

    # -- the snapshot ---------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The whole state the view shows (see ``DebuggerView``)."""
        with self._lock:
            stop = self.stops.get(self.process)
            status = self.status
            if status in ("running", "stopped"):
                status = "stopped" if stop else "running"
            return {
                "status": status,
                "message": self.message,
                "processes": [{"id": p.id, "name": p.name} for p in self._client.live()],
                "process": self.process,
                "stopped": None if stop is None else {
                    "reason": stop.reason, "description": stop.description,
                    "thread_id": stop.thread_id, "exception": stop.exception,
                },
                "frames": [{key: f[key] for key in FRAME_KEYS} for f in self.frames],
                "frame_id": self.frame_id,
                "source": self.source or self._script_source(),
                "scopes": list(self.scopes),
                "breakpoints": {path: sorted({line for line in answers.values() if line})
                                for path, answers in self.bound.items()},
                "exceptions": {"uncaught": True, "raised": self.raised},
            }

    def _script_source(self) -> dict[str, Any] | None:
        """Before the first stop, and while running: the script, without a current line, to
        set breakpoints in."""
        if self._script is None or not self.active or self.frames:
            return None
        text = self._text(str(self._script), 0)
        return None if text is None else {"path": str(self._script), "text": text, "line": 0}

    def _publish(self) -> None:
        """Hand a new snapshot to the listeners; the same one again goes nowhere."""
        state = self.state()
        if (state, self.blocked) == self._published:
            return
        self._published = (state, self.blocked)
        self.version += 1
        self._changed.notify_all()
        for listener in list(self._listeners):
            try:
                listener(state)
            except Exception:  # a closed widget must not stop the others
                log.debug("a debugger listener failed", exc_info=True)

    def wait_change(self, version: int, timeout: float | None = None) -> bool:
        """Block until a snapshot newer than ``version`` (True), or ``timeout`` (False)."""
        with self._lock:
            return self._changed.wait_for(lambda: self.version > version, timeout)

    # -- what the debuggee reports ----------------------------------------------------------

    def _event(self, process_id: str, event: str, body: dict[str, Any]) -> None:
        with self._lock:
            if event == "stopped":
                self._stopped(process_id, body)
            elif event == "continued":
                stop = self.stops.get(process_id)
                every = body.get("allThreadsContinued", True)
                if every or (stop and stop.thread_id == body.get("threadId")):
                    self._resumed(process_id)
            elif event == "exited":
                if process_id == MAIN:
                    self.exit_code = body.get("exitCode")
                return
            elif event in ("terminated", "closed"):
                self._process_ended(process_id)
            elif event in ("process_added", "process"):
                pass
            elif event == "output" and body.get("category") == "important":
                self.message = body.get("output", "").strip()
            else:
                return
            self._publish()

    def _stopped(self, process_id: str, body: dict[str, Any]) -> None:
        thread_id = body.get("threadId")
        if thread_id is None:
            threads = self._client.request(process_id, "threads").get("threads", [])
            thread_id = threads[0]["id"] if threads else 0
        reason = body.get("reason", "")
        stop = Stop(thread_id, reason, body.get("description") or body.get("text") or reason)
        if reason == "exception":
            stop.exception, user_unhandled = self._exception(process_id, thread_id)
            stop.description = stop.exception["description"] or stop.description
            if self._reported_again(process_id, thread_id, stop.exception, user_unhandled):
                return
        else:
            self._unhandled_shown.pop(process_id, None)
        if self.status == "connecting":
            self.status = "running"
        self.message = ""  # the page says why it stopped
        self.stops[process_id] = stop
        self.process = process_id
        self._show_stop(stop, early=True)
        if self._entry is not None and self.frames:
            self._leave_entry()

    def _name_entry_stop(self, stop: Stop) -> None:
        """A stop on the entry breakpoint says so."""
        if self._entry is None or not self.frames or stop.reason != "breakpoint":
            return
        top = self.frames[0]
        if top["path"] == str(self._entry) and top["line"] == self._entry_line:
            where = f"{top['name']}()'s" if self._entry_in_function else "the script's"
            stop.reason, stop.description = "entry", f"paused before {where} first line"

    def _leave_entry(self) -> None:
        """The first stop is the entry stop (or a breakpoint before it): the entry breakpoint
        goes; the user's others in the same file stay."""
        entry, self._entry = str(self._entry), None
        kept = [line for line in self._client.breakpoints.get(entry, [])
                if line != self._entry_line]
        try:
            self._set_bound(entry, self._client.set_breakpoints(entry, kept))
        except DapError:
            return

    def _set_bound(self, path: str, answers: Bound) -> None:
        if answers:
            self.bound[path] = answers
        else:
            self.bound.pop(path, None)

    def _exception(self, process_id: str, thread_id: int) -> tuple[dict[str, str], bool]:
        """The exception the thread stopped on, and whether it stopped as user-unhandled."""
        try:
            info = self._client.request(process_id, "exceptionInfo", threadId=thread_id)
        except DapError as error:
            return {"id": "", "description": str(error), "details": ""}, False
        details = info.get("details") or {}
        exception_id = info.get("exceptionId", "")
        return {
            "id": PAUSED_NOTE.sub("", exception_id),
            "description": info.get("description", ""),
            "details": details.get("stackTrace") or details.get("message") or "",
        }, bool(PAUSED_NOTE.search(exception_id))

    def _reported_again(self, process_id: str, thread_id: int, exception: dict[str, str],
                        user_unhandled: bool) -> bool:
        """Whether this stop is the bootstrap's report, as uncaught, of the exception the last
        stop showed as user-unhandled, and so was passed (continued): a library frame between
        the script and the bootstrap, which catches what the script leaves uncaught (the
        bootstrap's own frames in an installed package, runpy's for ``-m``), made debugpy stop
        on it first."""
        shown = self._unhandled_shown.pop(process_id, None)
        innermost = exception["details"].split("\n", 1)[0].removesuffix(PAUSED_FRAME_MARK)
        raised = (thread_id, exception["id"], exception["description"], innermost)
        if user_unhandled:
            self._unhandled_shown[process_id] = raised
            return False
        if shown != raised:
            return False
        try:
            self._client.request(process_id, "continue", threadId=thread_id)
        except DapError:
            return False
        return True

    def _show_stop(self, stop: Stop, *, early: bool = False) -> None:
        """Frames of the stopped thread, and the top frame's source and first scope. ``early``:
        publish once the stack and the source are known, before the scopes (debugpy takes
        tens of milliseconds for each of ``scopes`` and ``variables``: the line mark moves
        first)."""
        self._clear_frames()
        try:
            trace = self._client.request(self.process, "stackTrace", threadId=stop.thread_id,
                                         startFrame=0, levels=FRAMES_SHOWN)
        except DapError as error:
            self.message = f"cannot read the call stack: {error}"
            return
        for frame in trace.get("stackFrames", []):
            path = (frame.get("source") or {}).get("path", "")
            self.frames.append({
                "id": frame["id"], "name": frame.get("name", "").removesuffix(PAUSED_FRAME_MARK),
                "path": path,
                "line": frame.get("line", 0), "local": bool(path) and Path(path).is_file(),
                "source_reference": (frame.get("source") or {}).get("sourceReference", 0),
            })
        users = [frame for frame in self.frames if not is_node_file(frame["path"])]
        self.frames = users or self.frames  # the bootstrap's frames below the user's go
        if not self.frames:
            return
        self._show_source(self.frames[0])
        if early:
            self._name_entry_stop(stop)
            self._publish()
        self._load_scopes(self.frames[0]["id"])

    def _clear_frames(self) -> None:
        self.frames, self.frame_id, self.source, self.scopes = [], None, None, []
        self._listed.clear()

    def _select_frame(self, frame_id: int) -> None:
        frame = next((f for f in self.frames if f["id"] == frame_id), None)
        if frame is None:
            raise DapError(f"no frame {frame_id} in the current stop")
        self._show_source(frame)
        self._load_scopes(frame_id)

    def _show_source(self, frame: dict[str, Any]) -> None:
        self.frame_id = frame["id"]
        text = self._text(frame["path"], frame.get("source_reference", 0))
        self.source = None if text is None else {
            "path": frame["path"], "text": text, "line": frame["line"],
        }
        self.scopes = []

    def _load_scopes(self, frame_id: int) -> None:
        scopes = self._client.request(self.process, "scopes", frameId=frame_id).get("scopes", [])
        self.scopes = []
        for index, scope in enumerate(scopes):
            reference = scope.get("variablesReference", 0)
            variables = self._variables(reference, frame_id) if index == 0 and reference else []
            self.scopes.append({
                "name": scope.get("name", ""), "variables_reference": reference,
                "expensive": bool(scope.get("expensive")), "variables": variables,
            })
            self._listed.setdefault(reference, Listed(frame_id))

    def _text(self, path: str, source_reference: int) -> str | None:
        """The file's text: the local copy, or the debuggee's (DAP ``source``)."""
        if path in self._texts:
            return self._texts[path]
        text = None
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            try:
                body = self._client.request(
                    self.process, "source", sourceReference=source_reference,
                    source={"path": path, "sourceReference": source_reference},
                )
                text = body.get("content")
            except DapError:
                text = None
        if text is not None:
            self._texts[path] = text
        return text

    def _variables(self, reference: int, frame_id: int | None) -> list[dict[str, Any]]:
        variables = self._client.request(self.process, "variables",
                                         variablesReference=reference).get("variables", [])
        self._listed[reference] = Listed(frame_id, variables)
        for variable in variables:
            if variable.get("variablesReference"):
                self._listed.setdefault(variable["variablesReference"], Listed(frame_id))
        return [shown_variable(v) for v in variables]

    def _resumed(self, process_id: str) -> None:
        self.stops.pop(process_id, None)
        if process_id == self.process:
            self._clear_frames()

    def _process_ended(self, process_id: str) -> None:
        self._resumed(process_id)
        if process_id != MAIN:
            if self.process == process_id:
                self.process = MAIN
            return
        if self.status in ("ended", "error"):
            return
        self.status = "ended"
        code = "" if self.exit_code is None else f" (exit code {self.exit_code})"
        self.message = f"the script ended{code}"

    # -- what the user asks -------------------------------------------------------------------

    def act(self, action: dict[str, Any]) -> dict[str, Any] | None:
        """Serve one of the view's messages; the reply to send back, if it asks for one."""
        name = action.get("action")
        request_id = action.get("request_id")
        with self._lock:
            try:
                if name in STEPS:
                    self.step(name)
                elif name == "pause":
                    self.pause()
                elif name == "stop":
                    self.close()
                elif name == "toggle_breakpoint":
                    self.toggle_breakpoint(str(action["path"]), int(action["line"]))
                elif name == "select_frame":
                    self.select_frame(int(action["frame_id"]))
                elif name == "select_process":
                    self.select_process(str(action["id"]))
                elif name == "exceptions":
                    self.set_raised(bool(action.get("raised")))
                elif name == "variables":
                    variables = self.variables(int(action["variables_reference"]))
                    return {"reply": request_id, "variables": variables}
                elif name == "full_value":
                    frame_id = action.get("frame_id")
                    value, length = self.value_slice(
                        int(action["variables_reference"]), str(action["name"]),
                        None if frame_id is None else int(frame_id))
                    return {"reply": request_id, "value": value, "length": length}
                elif name == "evaluate":
                    result, error = self.evaluate(str(action["expression"]), action.get("frame_id"))
                    return {"reply": request_id, "result": result, "error": error}
                else:
                    raise DapError(f"unknown debugger action {name!r}")
            except (DapError, KeyError, ValueError, TypeError) as error:
                reason = str(error) if isinstance(error, DapError) else f"bad message: {error!r}"
                if request_id is not None:
                    return {"reply": request_id, "error": reason, "result": None,
                            "variables": [], "value": ""}
                if self.active:  # once ended, the status line keeps saying why
                    self.message = reason
                    self._publish()
        return None

    def _stopped_thread(self) -> int:
        self.require_active()
        stop = self.stops.get(self.process)
        if stop is None:
            raise DapError("the script is running: pause it first")
        return stop.thread_id

    def step(self, command: str) -> None:
        """``continue``, ``next`` (step over), ``stepIn`` or ``stepOut`` in the stopped thread."""
        if command not in STEPS:
            raise DapError(f"{command!r} is not a step: one of {', '.join(STEPS)}")
        with self._lock:
            thread_id = self._stopped_thread()
            self._client.request(self.process, command, threadId=thread_id)
            self._resumed(self.process)
            self.message = ""
            self._publish()

    def pause(self) -> None:
        with self._lock:
            self.require_active()
            if self.process in self.stops:
                return
            threads = self._client.request(self.process, "threads").get("threads", [])
            if not threads:
                raise DapError("the process has no thread to pause")
            self._client.request(self.process, "pause", threadId=threads[0]["id"])

    def toggle_breakpoint(self, path: str, line: int) -> Bound:
        """Set a breakpoint at ``path:line``, or clear the one there: asked for that line, or
        bound to it (debugpy binds a line that runs nothing to one that does). Every line now
        asked in ``path``, and the line each is bound to (None: not bound yet).

        >>> controller.toggle_breakpoint("/src/train.py", 9999)  # doctest: +SKIP
        {9999: 40}
        """
        with self._lock:
            self.require_active()
            lines = set(self._client.breakpoints.get(path, []))
            bound_here = {asked for asked, where in self.bound.get(path, {}).items()
                          if where == line}
            if line in lines or bound_here:
                lines -= {line, *bound_here}
            else:
                lines.add(line)
            answers = self._client.set_breakpoints(path, sorted(lines))
            self._set_bound(path, answers)
            self._publish()
            return answers

    def select_frame(self, frame_id: int) -> None:
        with self._lock:
            self.require_active()
            self._select_frame(frame_id)
            self._publish()

    def select_process(self, process_id: str) -> None:
        with self._lock:
            self.require_active()
            if process_id not in {p.id for p in self._client.live()}:
                raise DapError(f"no process {process_id!r} under the debugger")
            self.process = process_id
            self._clear_frames()
            stop = self.stops.get(process_id)
            if stop is not None:
                self._show_stop(stop)
            self._publish()

    def set_raised(self, raised: bool) -> None:
        with self._lock:
            self.require_active()
            self.raised = raised
            self._client.set_raised(raised)
            self._publish()

    def variables(self, reference: int) -> list[dict[str, Any]]:
        """The children of a variable (or a scope), as the tree shows them."""
        with self._lock:
            self.require_active()
            known = self._listed.get(reference)
            if known is None:
                raise DapError("that variable belongs to an earlier stop: it is gone")
            return self._variables(reference, known.frame_id)

    def value_slice(self, reference: int, name: str, frame_id: int | None = None,
                    start: int = 0, count: int = FULL_VALUE_LIMIT) -> tuple[str, int]:
        """Characters ``start`` to ``start + count`` of the whole value (its ``repr``) of the
        variable ``name`` listed under ``reference``, and the whole value's length; with
        ``reference`` 0, of the expression ``name`` evaluated again in ``frame_id`` (default:
        the selected frame), as an evaluation's result. The debuggee cuts the slice, so the
        answer stays small whatever the value's size.

        >>> controller.value_slice(locals_reference, "notes", count=5)  # doctest: +SKIP
        ("'nnnn", 12000002)
        """
        with self._lock:
            self._stopped_thread()
            if reference == 0:
                return self._slice_of(name, frame_id if frame_id is not None else self.frame_id,
                                      start, count)
            known = self._listed.get(reference)
            variable = next((v for v in (known.variables if known else []) if v["name"] == name),
                            None)
            if known is None or variable is None:
                raise DapError(f"no variable {name!r} in the current stop")
            if not variable.get("evaluateName"):  # debugpy's own rows (len(), a range): as listed
                value = str(variable.get("value", ""))
                return value[start:start + count], len(value)
            return self._slice_of(variable["evaluateName"], known.frame_id, start, count)

    def _slice_of(self, expression: str, frame_id: int | None, start: int,
                  count: int) -> tuple[str, int]:
        """A slice of ``expression``'s repr, cut in the debuggee (raw: debugpy adds no quotes),
        and the repr's length."""
        cut = VALUE_SLICE.format(start=start, end=start + count, expression=expression)
        try:
            body = self._client.request(self.process, "evaluate", expression=cut,
                                        frameId=frame_id, context="repl",
                                        format={"rawString": True})
        except DapClosed:
            raise
        except DapError as error:
            raise DapError(last_line(str(error))) from None
        length, colon, text = str(body.get("result", "")).partition(":")
        if not colon or not length.isdigit():
            raise DapError(f"{expression!r} has no value")
        return text, int(length)

    def evaluate(self, expression: str, frame_id: int | None = None
                 ) -> tuple[dict[str, Any] | None, str | None]:
        """Evaluate ``expression`` in a frame of the stop (default: the selected one): the
        result as a variable, or the error's last line."""
        with self._lock:
            self._stopped_thread()
            frame = frame_id if frame_id is not None else self.frame_id
            try:
                body = self._client.request(self.process, "evaluate", expression=expression,
                                            frameId=frame, context="repl")
            except DapClosed:
                raise
            except DapError as error:
                return None, last_line(str(error))
            reference = body.get("variablesReference", 0)
            if reference:
                self._listed.setdefault(reference, Listed(frame))
            return shown_variable(body, name=expression), None


def controller_for(config: dict[str, Any] | None, *, label: str, script: Path | None,
                   stop_at_entry: bool, entry_line: int | None = None) -> DebuggerController:
    """A debugger attaching where VS Code's attach ``config`` for a row would (the node's
    address, or the relay's port here), with its path mappings. ``stop_at_entry``: the
    ``script`` still waits for its debugger to start it, so the debugger stops at its first
    line, or at ``entry_line`` (never for a scoring script, which the server imports on its
    own time)."""
    from aml_debug_magics.errors import DebugInputError

    if config is None:
        raise DebugInputError(f"{label} has no debug port to attach to now")
    if "connect" not in config:
        raise DebugInputError(f"{label} connects out to a listening VS Code (--connect): the "
                              "notebook's debugger attaches to a listening node only")
    endpoint = config["connect"]
    arguments = {key: config[key] for key in ("pathMappings", "justMyCode") if key in config}
    shown = script if script is not None and script.is_file() else None
    entry = shown if stop_at_entry else None
    name = script.name if script is not None else label
    title = f"{name} ({label})" if name != label else name
    return DebuggerController(endpoint["host"], int(endpoint["port"]), arguments, title=title,
                              entry=entry, entry_line=entry_line, script=shown)


def page_state(controller: DebuggerController, state: dict[str, Any]) -> dict[str, Any]:
    """``state`` as the page shows it: ``unsupported``, saying why, while its buttons cannot
    reach the kernel (a cell runs on a kernel without subshells)."""
    if controller.blocked and state["status"] in ("running", "stopped"):
        return {**state, "status": "unsupported", "message": controller.blocked}
    return state


def attach_view(controller: DebuggerController, view: Any) -> None:
    """Tie a ``DebuggerView`` to ``controller``: states to the page, its messages back."""

    def show(state: dict[str, Any]) -> None:
        view.state = page_state(controller, state)

    view.title = controller.title
    view.on_action(controller.act, controller.close)
    controller.listen(show)


_latest: list[DebuggerController] = []
_latest_lock = threading.Lock()


def remember(controller: DebuggerController) -> None:
    """``controller`` is the one ``%aml_debug_step`` drives from now on."""
    with _latest_lock:
        _latest[:] = [controller]


def latest() -> DebuggerController | None:
    with _latest_lock:
        return _latest[0] if _latest else None
