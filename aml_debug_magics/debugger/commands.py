"""``%aml_debug_step``: the notebook debugger as lines of text, where no widget can show.

In: the words the user typed (``next``, ``vars loss``, ``break train.py:12``...) and the
debugger opened last (a row's Debug here, or ``--debug-here``). Out: the text to print, in the
panel's text style: where the script stands, its variables, an evaluation's result. A command
that lets the script run (continue, next, step, out, pause) waits for the next stop or the end.
A value too long to print is printed in slices of ``TEXT_VALUE_SHOWN`` characters, each
saying how to print the next (``vars NAME FROM``). While no debugger is attached, the last
failure's snapshot (``debugger/snapshot.py``) answers ``where`` and ``vars`` (``vars N``: the
locals of frame N of the call stack, 0 the innermost); what needs the process says it has ended.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aml_debug_magics.debugger.controller import DebuggerController, latest
from aml_debug_magics.debugger.dap import DapError
from aml_debug_magics.debugger.snapshot import (
    NOT_EVALUATED,
    NOT_RUN,
    SnapshotDebugger,
    latest_snapshot,
)
from aml_debug_magics.errors import DebugInputError

USAGE = ("%aml_debug_step [continue|next|step|out|pause|stop|where|vars [NAME [FROM]]|eval EXPR|"
         "break FILE:LINE]")
MOVES = {"continue": "continue", "next": "next", "step": "stepIn", "out": "stepOut"}
CONTEXT_LINES = 2  # source lines shown above and below the current one
VARIABLES_SHOWN = 50
TEXT_VALUE_SHOWN = 10_000  # characters of one value printed at once
GROUPS = ("special variables", "function variables")  # debugpy's folders of dunders, methods


def run_command(line: str, controller: DebuggerController | SnapshotDebugger | None = None
                ) -> str:
    """Do what ``%aml_debug_step LINE`` asks of the debugger; the text to print."""
    controller = controller or _driven()
    if controller is None:
        raise DebugInputError("no debugger is open: click Debug here on a row, or run the magic "
                              "with --debug-here")
    word, _, rest = line.strip().partition(" ")
    rest = rest.strip()
    word = word or "where"
    try:
        if isinstance(controller, SnapshotDebugger):
            return _on_snapshot(controller, word, rest)
        if word in MOVES or word == "pause":
            return _move(controller, word)
        if word == "stop":
            controller.close()
            return _heading(controller.state(), controller.title)
        if word == "where":
            return where_text(controller.state(), controller.title)
        if word == "vars":
            return _variables_text(controller, rest)
        if word == "eval":
            if not rest:
                raise DebugInputError("eval wants an expression: %aml_debug_step eval loss * 2")
            result, error = controller.evaluate(rest)
            return f"error: {error}" if error else _variable_line(result)
        if word == "break":
            return _toggle_breakpoint(controller, rest)
    except DapError as error:
        raise DebugInputError(str(error)) from None
    raise DebugInputError(f"unknown debugger command {word!r}: {USAGE}")


def _driven() -> DebuggerController | SnapshotDebugger | None:
    """The attached debugger; while none is, the last failure's snapshot; else the debugger
    that ended (which says why)."""
    live = latest()
    if live is not None and live.active:
        return live
    return latest_snapshot() or live


def _on_snapshot(snapshot: SnapshotDebugger, word: str, rest: str) -> str:
    """A command on a snapshot: where and vars read it; what needs the process says it ended."""
    if word == "where":
        return where_text(snapshot.state(), snapshot.title)
    if word == "vars" and rest.isdigit():
        snapshot.select_frame(snapshot.frame_numbered(int(rest)))
        return _variables_text(snapshot, "")
    if word == "vars":
        return _variables_text(snapshot, rest)
    if word == "eval":
        return NOT_EVALUATED
    if word in (*MOVES, "pause", "stop", "break"):
        return NOT_RUN
    raise DebugInputError(f"unknown debugger command {word!r}: {USAGE}")


def _move(controller: DebuggerController, word: str) -> str:
    """Let the script run (or pause it), then wait for where it stops next (Ctrl-C: stop
    waiting; the script runs on)."""
    version = controller.version
    if word == "pause":
        if controller.state()["status"] == "stopped":
            return where_text(controller.state(), controller.title)
        controller.pause()
    else:
        controller.step(MOVES[word])
    try:
        while True:
            state = controller.state()
            if controller.version > version and state["status"] != "running":
                return where_text(state, controller.title)
            version = controller.version
            controller.wait_change(version)
    except KeyboardInterrupt:
        return f"{_heading(controller.state(), controller.title)}\n" \
               "(stopped waiting; %aml_debug_step pause stops the script)"


def _heading(state: dict[str, Any], title: str) -> str:
    label = f"[{title}] " if title else ""
    stopped = state.get("stopped")
    frames = state.get("frames") or []
    if state["status"] == "stopped" and stopped and frames:
        top = next((f for f in frames if f["id"] == state.get("frame_id")), frames[0])
        if state.get("read_only"):
            text = f"{label}failed at {top['path']}:{top['line']} in {top['name']} " \
                   f"(a snapshot from the log: the process has ended)"
        else:
            text = f"{label}stopped at {top['path']}:{top['line']} in {top['name']} " \
                   f"({stopped['reason']})"
        exception = stopped.get("exception")
        if exception:
            text += f"\n{exception['id']}: {exception['description']}"
        return text
    message = f" - {state['message']}" if state.get("message") else ""
    return f"{label}{state['status']}{message}"


def where_text(state: dict[str, Any], title: str = "") -> str:
    """Where the script stands: the current line in its source, and the call stack."""
    lines = [_heading(state, title)]
    source = state.get("source")
    if state["status"] == "stopped" and source and source.get("line"):
        text = source["text"].splitlines()
        current = source["line"]
        for number in range(max(1, current - CONTEXT_LINES),
                            min(len(text), current + CONTEXT_LINES) + 1):
            mark = "->" if number == current else "  "
            lines.append(f"  {mark} {number:4d} | {text[number - 1]}")
    if state.get("frames"):
        lines.append("call stack:")
        for frame in state["frames"]:
            mark = "*" if frame["id"] == state.get("frame_id") else " "
            lines.append(f"  {mark} {frame['name']}  {frame['path']}:{frame['line']}")
    if len(state.get("processes") or []) > 1:
        names = ", ".join(f"{p['name']}{' *' if p['id'] == state['process'] else ''}"
                          for p in state["processes"])
        lines.append(f"processes: {names}")
    return "\n".join(lines)


def _variable_line(variable: dict[str, Any] | None) -> str:
    if variable is None:
        return ""
    if not variable["value"] and not variable.get("type"):  # a statement ran: no value
        return variable["name"]
    kind = f" ({variable['type']})" if variable.get("type") else ""
    more = " ..." if variable.get("shortened") else ""
    return f"{variable['name']}{kind} = {variable['value']}{more}"


def _variables_text(controller: DebuggerController | SnapshotDebugger, words: str) -> str:
    """The selected frame's first scope, or the children of the variable ``NAME`` in it, or its
    value (from character ``FROM``): ``words`` is "", "NAME" or "NAME FROM"."""
    name, _, start = words.rpartition(" ")
    if not name or not start.isdigit():
        name, start = words, ""
    controller.require_active()
    state = controller.state()
    if state["status"] != "stopped" or not state["scopes"]:
        raise DebugInputError("the script is not stopped: %aml_debug_step pause stops it")
    scope = state["scopes"][0]
    if not name:
        shown = [v for v in scope["variables"] if v["name"] not in GROUPS]
        return "\n".join([f"{scope['name']}:", *(f"  {_variable_line(v)}" for v in shown)])
    variable = next((v for v in scope["variables"] if v["name"] == name), None)
    if variable is None:
        raise DebugInputError(f"no variable {name!r} in {scope['name']}: %aml_debug_step vars "
                              "lists them")
    if start or not variable["variables_reference"]:
        return _value_text(controller, scope["variables_reference"], variable, int(start or 0))
    children = [v for v in controller.variables(variable["variables_reference"])
                if v["name"] not in GROUPS]
    lines = [_variable_line({**variable, "shortened": False, "value": ""}).rstrip(" =") + ":"]
    for child in children[:VARIABLES_SHOWN]:
        lines.append(f"  {_variable_line(child)}")
    if len(children) > VARIABLES_SHOWN:
        lines.append(f"  ({len(children) - VARIABLES_SHOWN} more)")
    return "\n".join(lines)


def _value_text(controller: DebuggerController | SnapshotDebugger, reference: int,
                variable: dict[str, Any], start: int) -> str:
    """``TEXT_VALUE_SHOWN`` characters of the variable's value from ``start``; where they sit
    in the whole, and the command that prints the next ones."""
    name = variable["name"]
    text, length = controller.value_slice(reference, name, start=start, count=TEXT_VALUE_SHOWN)
    if start and start >= length:
        raise DebugInputError(f"the value of {name} has {length:,} characters: FROM must be "
                              "less than that")
    kind = f" ({variable['type']})" if variable.get("type") else ""
    end = start + len(text)
    if start == 0 and end >= length:
        return f"{name}{kind} = {text}"
    place = f"characters {start:,} to {end:,} of {length:,}"
    more = f"; the next: %aml_debug_step vars {name} {end}" if end < length else ""
    return f"{name}{kind} = {'...' if start else ''}{text}\n({place}{more})"


def _toggle_breakpoint(controller: DebuggerController, where: str) -> str:
    path, _, line = where.rpartition(":")
    if not path or not line.isdigit() or int(line) < 1:
        raise DebugInputError(f"break wants FILE:LINE, like train.py:12 (got {where!r})")
    controller.require_active()
    local = _known_path(controller.state(), path)
    asked = int(line)
    answers = controller.toggle_breakpoint(local, asked)
    lines = ", ".join(str(n) for n in sorted({n for n in answers.values() if n})) or "none"
    after = f" (breakpoints in that file: {lines})"
    if asked not in answers:
        return f"breakpoint cleared at {local}:{asked}{after}"
    bound = answers[asked]
    if bound is None:
        return f"breakpoint set at {local}:{asked}, not bound to a line yet{after}"
    if bound != asked:
        return f"breakpoint set at {local}:{asked}: the debugger bound it to line {bound}{after}"
    return f"breakpoint set at {local}:{asked}{after}"


def _known_path(state: dict[str, Any], path: str) -> str:
    """``path`` as the debugger knows it: a file here, or the file of a frame, the source
    shown or a breakpoint whose path ends with it (``train.py`` for ``/src/steps/train.py``)."""
    known = [f["path"] for f in state.get("frames") or []]
    if state.get("source"):
        known.append(state["source"]["path"])
    known.extend(state.get("breakpoints") or {})
    tail = "/" + path.lstrip("/")
    for candidate in known:
        if candidate == path or candidate.endswith(tail):
            return candidate
    here = Path(path).expanduser()
    if here.is_file():
        return str(here.resolve())
    raise DebugInputError(f"no file {path!r} here or in the call stack: give its full path")
