"""A debug session: one target, the rows it reports on, one view, and their lifecycle.

Every text a target hands in goes through ``redact`` here, the one way to the screen.

Data flows one way: a target runs the steps and reports what happens (``step_status``,
``step_news``, ``step_output``) from its own threads; the session keeps one :class:`StepRow` per
step and rank and hands changed rows to its view. The view calls back only for the user's
buttons (stop, write launch.json). A target never touches a widget; the view never touches a
target.
"""

from __future__ import annotations

import atexit
import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aml_debug_magics.debugger.snapshot import (
    SNAPSHOT_LINE,
    SnapshotDebugger,
    forget_snapshots,
    remember_snapshot,
)
from aml_debug_magics.errors import DebugInputError
from aml_debug_magics.node.announce import Announcement, AttachOutcome, Failure, PortClosed
from aml_debug_magics.node.snapshot import SnapshotReader
from aml_debug_magics.ports import check_port_free, free_port
from aml_debug_magics.records import ENDED, DebugRequest, ServiceInfo, Status
from aml_debug_magics.redaction import redact
from aml_debug_magics.relay.paths import waiting_ranks
from aml_debug_magics.sources.parallel import check_worker_listens, entry_stop_line

LINES_SHOWN = 40


@dataclass
class StepRow:
    """What the panel shows for one step (and rank)."""

    step: str
    debugged: bool
    local_root: Path  # the step's source folder (SDK v2: its code folder)
    rank: int = 0
    script_in_root: str = ""  # the script's path in local_root, like steps/train.py
    trial: str = ""  # one trial of a sweep: the point it runs and how it was chosen
    status: Status = Status.QUEUED
    announcement: Announcement | None = None
    attached: bool = False
    exit_code: int | None = None
    detail: str = ""
    reachability: str = ""  # what a probe of the announced address from here found
    path: str = ""  # how the debugger reaches the node: "" (its address), "via storage"...
    port_closed: bool = False  # the debug port closed for good while the script runs on
    node: int | None = None  # a distributed step's rank: the node it runs on
    failure: Failure | None = None  # the script's uncaught exception, once it failed
    snapshot: dict[str, Any] | None = None  # its frames and locals, once the log held them all
    last_lines: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=LINES_SHOWN)
    )
    snapshot_parts: SnapshotReader = field(default_factory=SnapshotReader, repr=False,
                                           compare=False)  # a snapshot's lines, until complete

    @property
    def label(self) -> str:
        if self.node is not None:
            return f"{self.step} (node {self.node}, rank {self.rank})"
        return self.step if self.rank == 0 else f"{self.step} (rank {self.rank})"

    @property
    def address(self) -> str:
        """``host:port`` to attach to, or an empty string before the step announced itself."""
        if self.announcement is None:
            return ""
        return f"{self.announcement.addresses[0]}:{self.announcement.port}"

    def seconds_left(self, now: float) -> float | None:
        """Time left to attach, computed from the deadline (None when nobody is waited for)."""
        if self.status not in (Status.WAITING, Status.POST_MORTEM) or self.announcement is None:
            return None
        return self.announcement.seconds_left(now)

    @property
    def failure_headline(self) -> str:
        """``ZeroDivisionError at steps/train.py:42 in fit``, once the script failed."""
        if self.failure is None:
            return ""
        where = self.failure.attach or self.announcement
        root = (where.source_root or where.cwd) if where is not None else None
        return self.failure.headline(root)

    @property
    def attachable(self) -> bool:
        """Whether the announced port may still take a debugger (not after the end, a missed
        window, or a closed port)."""
        return (
            self.announcement is not None and not self.port_closed
            and self.status not in ENDED and self.status != Status.TIMED_OUT
        )

    def source_roots(self) -> list[tuple[str, str]]:
        """``(node folder, local folder)`` of each of the attach config's path mappings."""
        config = self.attach_config() or {}
        return [(m["remoteRoot"], m["localRoot"]) for m in config.get("pathMappings", [])]

    def attach_config(self) -> dict[str, Any] | None:
        if self.announcement is None:
            return None
        from aml_debug_magics.launch import attach_config

        return attach_config(
            self.announcement, self.local_root, script_in_root=self.script_in_root or None,
            step=self.step,
        )


class Target(Protocol):
    """Runs the session's steps somewhere and reports to ``events``; ``stop`` ends them all."""

    def start(self, events: DebugSession) -> None: ...

    def stop(self) -> None: ...


class View(Protocol):
    def show(self, session: DebugSession) -> None: ...

    def refresh(self, row: StepRow | None) -> None: ...  # None: the session's own state

    def close(self) -> None: ...


class DebugSession:
    """Rows, a target and a view, tied together; thread-safe for the target's reports."""

    def __init__(
        self,
        request: DebugRequest,
        target: Target,
        view: View,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.request = request
        self.title = request.title
        self.clock = clock
        self.rows: list[StepRow] = [
            StepRow(step=s.name, debugged=s.debug, local_root=s.source_directory,
                    script_in_root=s.script_name, trial=s.trial)
            for s in request.steps
        ]
        self.state = "starting"
        self.service = ServiceInfo() if request.deployment is not None else None
        self.note = ""  # a standing fact from the target, e.g. where step data goes
        self.message = ""  # the answer to the user's last button
        self.backup_tag = time.strftime("%Y%m%d-%H%M%S-") + f"{id(self) % 10000:04d}"
        self._target = target
        self.view = view
        self._lock = threading.RLock()
        self._ended = threading.Event()
        self.debuggers: dict[tuple[str, int], Any] = {}  # the notebook's debugger, per row

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> DebugSession:
        """Show the view and start the target; an interrupt on the way stops everything."""
        try:
            self.view.show(self)
            self._target.start(self)
            with self._lock:
                if self.state == "starting":
                    self.state = "running"
            self.view.refresh(None)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """End the session's processes and close its ports; rows still running say stopped."""
        self._target.stop()
        forget_snapshots(self)
        for debugger in list(self.debuggers.values()):  # after the target: nothing runs on
            debugger.close()
        with self._lock:
            for row in self.rows:
                if row.status not in ENDED:
                    row.status = Status.STOPPED
                    row.detail = "stopped from the notebook"
                    self.view.refresh(row)
            if self.state in ("starting", "running"):
                self.state = "stopped"
        self._ended.set()
        self.view.refresh(None)
        self.view.close()

    def dispose(self) -> None:
        """The session is replaced (or the kernel ends): after ``stop``, let the view and the
        target free what they hold (widgets, temporary folders)."""
        for part in (self.view, self._target):
            dispose = getattr(part, "dispose", None)
            if dispose is not None:
                dispose()

    def wait(self, timeout: float | None = None) -> str:
        """Block until the session ends (or ``timeout``); its state: finished, failed..."""
        self._ended.wait(timeout)
        return self.state

    @property
    def active(self) -> bool:
        return self.state in ("starting", "running")

    # -- what a target reports ------------------------------------------------------------

    def row(self, step: str, rank: int = 0) -> StepRow:
        with self._lock:
            for row in self.rows:
                if row.step == step and row.rank == rank:
                    return row
            first = next(r for r in self.rows if r.step == step)
            row = StepRow(step, first.debugged, first.local_root, rank=rank,
                          script_in_root=first.script_in_root)
            self.rows.insert(self.rows.index(first) + rank, row)
            return row

    def rank_rows(self, step: str, nodes: list[int], debugged: set[int]) -> None:
        """One row per rank of a distributed step, made before any rank speaks: rank ``r``
        runs on node ``nodes[r]``; the ranks in ``debugged`` wait for a debugger."""
        with self._lock:
            for rank, node in enumerate(nodes):
                row = self.row(step, rank)
                row.node = node
                row.debugged = row.debugged and rank in debugged
                self.view.refresh(row)

    def step_status(
        self, step: str, status: Status, detail: str = "", exit_code: int | None = None,
        rank: int | None = None,
    ) -> None:
        """The status of every row of ``step``, or of its ``rank``'s row alone."""
        with self._lock:
            rows = [r for r in self.rows if r.step == step] or [self.row(step)]
            if rank is not None:
                rows = [self.row(step, rank)]
            for row in rows:
                if row.status == Status.STOPPED:
                    continue
                keep = status == Status.FINISHED and row.status in ENDED
                if not keep:
                    row.status = status
                    row.detail = redact(detail)
                    row.exit_code = exit_code
                if status == Status.FAILED and row.failure is not None \
                        and self.request.deployment is None:  # a server's end is not a request's
                    row.detail = redact(f"{row.failure_headline}; {detail}" if detail
                                        else row.failure_headline)
                self.view.refresh(row)

    def step_news(
        self, step: str, news: Announcement | AttachOutcome | PortClosed | Failure
    ) -> None:
        with self._lock:
            row = self.row(step, news.rank)
            if isinstance(news, Failure):
                if self.request.deployment is not None:  # a request failed: it serves on
                    row.failure = news
                    row.detail = redact(f"serving; the last request failed: "
                                        f"{row.failure_headline} (HTTP 500)")
                else:
                    self._failed(row, news)
            elif isinstance(news, Announcement):
                row.announcement = news
                row.status = Status.WAITING
                row.detail = ""
            elif isinstance(news, PortClosed):
                row.port_closed = True
                row.detail = redact(news.reason)
                if row.status == Status.ATTACHED:
                    row.status = Status.RUNNING
            elif news.attached:
                row.attached = True
                row.status = Status.ATTACHED
            elif row.failure is not None and row.failure.goes_on:  # a runner caught it
                row.status = Status.RUNNING
                row.port_closed = True
                row.detail = redact(f"{row.failure_headline}; no debugger came to the exception "
                                    "in time: its mini-batch failed, the runner goes on")
            elif row.failure is not None:
                row.status = Status.TIMED_OUT
                row.detail = redact(f"{row.failure_headline}; no debugger came to the exception "
                                    "in time: the script exits")
            else:
                row.status = Status.TIMED_OUT
                if not row.port_closed:  # else the closing said why already
                    row.detail = "no debugger attached in time; the script runs on without one"
            self.view.refresh(row)
        opened = isinstance(news, Announcement) or (
            isinstance(news, Failure) and news.attach is not None
        )
        if opened and self.request.write_launch_json:
            self.write_launch_json(row)
        if opened and self.request.debug_here and row.debugged \
                and row.announcement is not None and row.announcement.mode == "listen":
            self.debug_here(row)

    @staticmethod
    def _failed(row: StepRow, failure: Failure) -> None:
        """The script failed with nobody attached: the row names the exception and, with a
        post-mortem, offers the new window at it."""
        row.failure = failure
        row.attached = False
        if failure.attach is None:
            then = ("its mini-batch failed, the runner goes on" if failure.goes_on
                    else "no post-mortem: the script exits")
            row.detail = redact(f"{row.failure_headline}; {then}")
            return
        row.announcement = failure.attach
        row.port_closed = False
        row.status = Status.POST_MORTEM
        row.detail = redact(row.failure_headline)

    def step_reachability(self, step: str, rank: int, text: str, *, path: str = "") -> None:
        with self._lock:
            row = self.row(step, rank)
            row.reachability = redact(text)
            row.path = path
            self.view.refresh(row)

    def service_update(self, **facts: str) -> None:
        with self._lock:
            for name, value in facts.items():
                setattr(self.service, name, redact(value))
        self.view.refresh(None)

    def target_note(self, note: str) -> None:
        self.note = redact(note)
        self.view.refresh(None)

    def step_output(self, step: str, line: str, rank: int = 0) -> None:
        """A line of the step's output: into its rank's row where that rank has one (it
        announced itself), else into the step's first row. A snapshot's part goes to that
        row's reader instead; the whole snapshot, to the row of the rank it names."""
        with self._lock:
            rows = [r for r in self.rows if r.step == step]
            row = next((r for r in rows if r.rank == rank), None) or rows[0]
            if SNAPSHOT_LINE not in line:
                row.last_lines.append(redact(line))
                return
            found = row.snapshot_parts.feed(line)
            if found is None:
                return
            row = self.row(step, found[0])
            row.snapshot = found[1]
        # %aml_debug_step reads it while no debugger is attached
        remember_snapshot(SnapshotDebugger(found[1], title=row.label, roots=row.source_roots()),
                          owner=self)
        self.view.refresh(row)

    def show_frames(self, row: StepRow) -> Any:
        """Open the notebook debugger's view on ``row``'s snapshot (its Show frames button),
        read-only; the snapshot's debugger, or None when the row has no snapshot."""
        if row.snapshot is None:
            self.message = f"{row.label} has no snapshot of a failure"
            self.view.refresh(None)
            return None
        snapshot = SnapshotDebugger(row.snapshot, title=row.label, roots=row.source_roots())
        remember_snapshot(snapshot, owner=self)
        show = getattr(self.view, "show_snapshot", None)
        if show is not None:
            show(row, snapshot)
        self.message = f"showing the frames of {row.label}'s failure, from its log"
        self.view.refresh(None)
        return snapshot

    def target_done(self, failed: bool) -> None:
        with self._lock:
            if self.state in ("starting", "running"):
                self.state = "failed" if failed else "finished"
        self._ended.set()
        self.view.refresh(None)
        self.view.close()

    # -- what the user's buttons ask for ---------------------------------------------------

    def send_test_request(self) -> threading.Thread | None:
        """Post the sample request in the background (a breakpoint may hold it for long)."""
        body = self.request.deployment.sample_request if self.request.deployment else None
        if not body:
            self.service_update(response="no --sample-request was given to %aml_debug_deploy")
            return None
        self.service_update(response="sent; waiting for the answer")

        def send() -> None:
            try:
                status, text = self._target.score(body)
            except Exception as error:
                lines = list(self.rows[0].last_lines)[-5:]
                answer = f"failed: {error}" + "".join(f"\n    {line}" for line in lines)
            else:
                answer = f"HTTP {status}: {text.strip()}"
            self.service_update(response=answer)

        sender = threading.Thread(target=send, name="aml-debug-test-request", daemon=True)
        sender.start()
        return sender

    def debug_here(self, row: StepRow) -> Any:
        """Open the notebook's debugger on ``row`` (its Debug here button, or --debug-here);
        the debugger, or None when the row cannot take one now (the message says why)."""
        from aml_debug_magics.debugger.controller import controller_for, remember

        with self._lock:
            opened = self.debugger_of(row)
            if opened is not None:
                self.message = f"the debugger is open on {row.label} already"
                debugger = None
            else:
                script = row.local_root / row.script_in_root if row.script_in_root else None
                waiting = row.status == Status.WAITING and not row.attached
                spec = next((s for s in self.request.steps if s.name == row.step), None)
                try:
                    debugger = controller_for(
                        row.attach_config() if row.attachable else None, label=row.label,
                        script=script,
                        stop_at_entry=waiting and self.request.deployment is None,
                        entry_line=entry_stop_line(spec),
                    )
                except DebugInputError as error:
                    self.message = str(error)
                    debugger = None
                else:
                    self.debuggers[(row.step, row.rank)] = debugger
                    self.message = f"debugging {row.label} here"
        if debugger is not None:
            remember(debugger)
            show = getattr(self.view, "show_debugger", None)
            if show is not None:
                show(row, debugger)
            debugger.start()
        self.view.refresh(row)
        self.view.refresh(None)
        return debugger

    def debugger_of(self, row: StepRow) -> Any:
        """The notebook's debugger open on ``row`` and still attached, or None."""
        debugger = self.debuggers.get((row.step, row.rank))
        return debugger if debugger is not None and debugger.active else None

    def write_launch_json(self, row: StepRow | None = None) -> str:
        """Merge the attach config of ``row`` (default: every announced row) into launch.json."""
        from aml_debug_magics.launch import LaunchJsonError, merge_into_launch_json

        rows = [row] if row else [r for r in self.rows if r.announcement]
        configs = [c for c in (r.attach_config() for r in rows) if c]
        if not configs:
            return "nothing to write yet: no step has said where to attach"
        try:
            result = merge_into_launch_json(
                self.request.launch_json, configs, backup_tag=self.backup_tag
            )
        except (LaunchJsonError, OSError) as error:
            self.message = f"launch.json not written: {error}"
        else:
            backup = f" (backup: {result.backup.name})" if result.backup else ""
            names = ", ".join(repr(n) for n in [*result.replaced, *result.added])
            self.message = f"wrote {names} to {result.path.resolve()}{backup}"
        self.view.refresh(None)
        return self.message


# ---------------------------------------------------------------------------------------------
# Opening sessions: one per magic at a time


_live: dict[str, DebugSession] = {}
_live_lock = threading.Lock()


def check_request(request: DebugRequest) -> None:
    """What the node would refuse after a submit and a provisioning, refused here, at once."""
    from aml_debug_magics.node import options

    try:
        allow = "any" if request.allow == "auto" else request.allow
        options.check_limits(request.timeout, request.ranks, allow,
                             post_mortem=request.post_mortem)
    except options.UsageError as error:
        raise DebugInputError(str(error)) from None
    if not 0 <= request.port <= 65535:
        raise DebugInputError(f"--port must be between 0 and 65535 (got {request.port})")
    if not any(s.debug for s in request.steps):
        raise DebugInputError("no step to debug: name one with --step")
    check_via(request)
    check_worker_listens(request)
    if request.connect is None:
        return
    host, _, port = request.connect.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise DebugInputError(
            f"--connect wants HOST:PORT where VS Code listens, like 127.0.0.1:5678 "
            f"(got {request.connect!r})"
        )


def check_via(request: DebugRequest) -> None:
    """``--via storage`` and ``auto`` relay each waiting rank, on Azure ML, to a listener.
    The default ``auto`` listens instead where it cannot relay (``relay.paths.choose_paths``)."""
    if request.via == "listen" or request.via_default:
        return
    if request.target != "azureml":
        raise DebugInputError(f"--via {request.via} is for --target azureml: on this machine "
                              "the debugger attaches directly")
    if request.connect is not None:
        raise DebugInputError(f"--via {request.via} relays to the node's own listener: drop "
                              "--connect")
    for spec in request.steps:  # one relay per waiting rank: their number is known here
        if spec.debug:
            waiting_ranks(request.ranks, spec)


def check_ports(request: DebugRequest) -> None:
    """The ports this machine must bind for ``request`` are free and may be bound."""
    if request.connect is None and request.target == "local":
        check_port_free(request.port)
    if request.deployment is not None:  # every deploy target serves on this machine at last
        if request.deployment.scoring_port:
            check_port_free(request.deployment.scoring_port)
        else:  # picked now, right before the target binds it: least time for others to take it
            request.deployment.scoring_port = free_port()


def open_session(
    kind: str,
    request: DebugRequest,
    view: View,
    make_target: Callable[[DebugRequest], Target],
    *,
    clock: Callable[[], float] = time.time,
) -> DebugSession:
    """Check ``request``, stop the previous session of this ``kind``, start a new one on the
    target ``make_target`` makes (once the checks passed and the ports are free)."""
    check_request(request)
    stop_session(kind)  # first: a re-run with the same --port finds it free
    check_ports(request)
    session = DebugSession(request, make_target(request), view, clock=clock)
    with _live_lock:
        _live[kind] = session
    try:
        session.start()
    except BaseException:
        with _live_lock:
            _live.pop(kind, None)
        raise
    return session


def current_session(kind: str) -> DebugSession | None:
    """The session the magic ``kind`` (``pipeline``, ``run``, ``deploy``) started last."""
    with _live_lock:
        return _live.get(kind)


def stop_session(kind: str) -> bool:
    """Stop the session of ``kind``; it is forgotten only once stopped, so an interrupted stop
    can be run again (``--stop``)."""
    with _live_lock:
        session = _live.get(kind)
    if session is None:
        return False
    session.stop()
    with _live_lock:
        if _live.get(kind) is session:
            del _live[kind]
    session.dispose()
    return True


def stop_all() -> None:
    for kind in list(_live):
        stop_session(kind)


atexit.register(stop_all)
