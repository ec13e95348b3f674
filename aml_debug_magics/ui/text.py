"""The session's facts as plain text: for terminal IPython, and under the widget panel.

Lines print when something changes (a status, an address, a message), never on a countdown tick.
The session runs on after the magic returned, under the terminal's prompt, so a row prints only
for what the user acts on: its status, where to attach, the reachability verdict, a closed
port; a detail that only moves on (a follower's "Running (0:42)") waits for the next status.
Nothing prints once the session has ended.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from aml_debug_magics.records import Status
from aml_debug_magics.session import DebugSession, StepRow

LINES_ON_FAILURE = 10


def format_left(seconds: float | None) -> str:
    """``4:05 left`` style countdown text; empty when nothing is being waited for."""
    if seconds is None:
        return ""
    whole = int(seconds + 0.5)
    return f"{whole // 60}:{whole % 60:02d} left"


def row_line(row: StepRow, now: float) -> str:
    """One line with what a row shows: status, where to attach, time left, why it ended."""
    parts = [f"[{row.label}] {row.status}"]
    if row.address and row.status in (Status.WAITING, Status.POST_MORTEM):
        verb = "listen on" if row.announcement.mode == "connect" else "attach to"
        parts.append(f"{verb} {row.address}" + (f" {row.path}" if row.path else ""))
    elif row.address and row.status == Status.ATTACHED:
        parts.append(f"to {row.address}")
    elif not row.debugged:
        parts.append("(no debugger)")
    deadline = row.announcement.attach_deadline if row.announcement else None
    if row.status in (Status.WAITING, Status.POST_MORTEM) and deadline:
        clock_time = time.strftime("%H:%M:%S", time.localtime(deadline))
        parts.append(f"until {clock_time} ({format_left(row.seconds_left(now))})")
    if row.detail:
        parts.append(f"- {row.detail}")
    if row.trial and row.status in (Status.STARTING, Status.WAITING):
        parts.append(f"- {row.trial}")
    if row.reachability and row.status in (Status.WAITING, Status.ATTACHED):
        parts.append(f"- {row.reachability}")
    return " ".join(parts)


def session_text(session: DebugSession, now: float) -> str:
    """Every fact of the session, as the panel's plain-text stand-in."""
    lines = [f"{session.title}: {session.state}"]
    if session.note:
        lines.append(session.note)
    for row in session.rows:
        lines.append(row_line(row, now))
        waits = row.status in (Status.WAITING, Status.POST_MORTEM)
        config = row.attach_config() if waits else None
        if config:
            lines.append(json.dumps(config, indent=4))
    if session.service is not None:
        lines.append(service_line(session))
    if session.message:
        lines.append(session.message)
    return "\n".join(lines)


def service_line(session: DebugSession) -> str:
    service = session.service
    text = f"scoring URL {service.scoring_url} (health: {service.health or 'unknown'})"
    return text + (f"\ntest request: {service.response}" if service.response else "")


class TextView:
    """Prints a session's changes as lines; the attach config once per announcement."""

    def __init__(
        self, *, clock: Callable[[], float] | None = None, write: Callable[[str], None] = print
    ) -> None:
        self._clock = clock or time.time
        self._write = write
        self._session: DebugSession | None = None
        self._shown: dict[tuple[str, int], tuple] = {}
        self._snapshots_told: set[tuple[str, int]] = set()
        self._state = ""
        self._message = ""

    def show(self, session: DebugSession) -> None:
        self._session = session
        self._clock = session.clock if session.clock else self._clock
        debugged = ", ".join(r.label for r in session.rows if r.debugged)
        self._write(f"{session.title}: debugging {debugged} on the {session.request.target} target")
        self._note = ""
        self._service = ""

    def refresh(self, row: StepRow | None) -> None:
        session = self._session
        if session is None:
            return
        if row is None:
            if session.state != self._state and session.state != "starting":
                self._state = session.state
                self._write(f"{session.title}: {session.state}")
            if session.service is not None and service_line(session) != self._service:
                self._service = service_line(session)
                self._write(self._service)
            if session.note and session.note != self._note:
                self._note = session.note
                self._write(session.note)
            if session.message and session.message != self._message:
                self._message = session.message
                self._write(session.message)
            return
        facts = (row.status, row.address, row.attached, row.reachability, row.port_closed)
        if self._shown.get((row.step, row.rank)) == facts:
            return
        self._shown[(row.step, row.rank)] = facts
        self._write(row_line(row, self._clock()))
        if row.status == Status.WAITING and (config := row.attach_config()):
            self._write("VS Code attach configuration:\n" + json.dumps(config, indent=4))
        if row.status == Status.FAILED and row.last_lines:
            tail = list(row.last_lines)[-LINES_ON_FAILURE:]
            self._write("\n".join(f"    {line}" for line in tail))
        told = (row.step, row.rank)
        if row.status in (Status.FAILED, Status.POST_MORTEM) and row.snapshot is not None \
                and told not in self._snapshots_told:
            self._snapshots_told.add(told)
            self._write(f"[{row.label}] its frames and locals at the failure: "
                        "%aml_debug_step where, %aml_debug_step vars")

    def show_debugger(self, row: StepRow, debugger: Any) -> None:
        """The notebook's debugger opened on ``row``: how to drive it, where it first stops,
        and its end (each stop after that prints from the command that led to it)."""
        from aml_debug_magics.debugger.commands import USAGE, where_text

        self._write(f"[{row.label}] debugging here, attaching to {debugger.address}: {USAGE}")
        said: set[str] = set()

        def say(state: dict[str, Any]) -> None:
            status = state["status"]
            if status in said or status not in ("stopped", "ended", "error"):
                return
            said.add(status)
            self._write(where_text(state, debugger.title))

        debugger.listen(say)

    def show_snapshot(self, row: StepRow, snapshot: Any) -> None:
        """``row``'s snapshot (its frames from the log) where no widget can show it."""
        from aml_debug_magics.debugger.commands import where_text

        self._write(where_text(snapshot.state(), snapshot.title))

    def close(self) -> None:
        """The session ended: nothing more prints, whatever a target still reports."""
        self._session = None
