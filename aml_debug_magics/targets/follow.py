"""Following a submitted run until it ends: its steps' statuses, logs and announcements.

In: the run the SDK returned (SDK v1, or SDK v2's job seen through ``azureml_v2.V2Run``) and
the session's steps. Out, to the session: each step's status in words, its log lines, what it
announces and whether its address is reachable from here, and the end of the session once the
run reaches a status its SDK's own waiting loop stops at. Azure ML's control plane is asked at
most ``CALLS_PER_SECOND`` times a second, whatever the step count; the log blobs (storage) are
read ten times a second while a debugged step has not yet said where to attach.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aml_debug_magics.failures import first_line, user_error
from aml_debug_magics.logs import RunLogs
from aml_debug_magics.node.announce import Announcement, AttachOutcome, Failure, PortClosed
from aml_debug_magics.records import Status
from aml_debug_magics.targets.reachability import reachability
from aml_debug_magics.targets.statuses import (
    BEFORE_START,
    NEVER_STARTED,
    SUCCEEDED,
    in_words,
    row_status,
)

if TYPE_CHECKING:
    from aml_debug_magics.records import StepSpec
    from aml_debug_magics.relay.paths import RelayPaths
    from aml_debug_magics.session import DebugSession

POLL_FAST = 1.0  # seconds between two listings while a debugged step has not said where it is
POLL_SLOW = 10.0  # the longest pause between two listings (doubling to it while nothing changes)
CALLS_PER_SECOND = 2.0  # Azure ML control-plane calls a session makes, whatever its step count
CALLS_BURST = 2  # ... of which at most this many back to back
LOG_READ_WAITING = 0.1  # seconds between two reads of a log blob (storage) before its announcement
DETAILS_WAITING = 0.6  # seconds between two asks for a started, debugged step's log list
DETAILS_SLOWEST = 60.0  # ... and the longest gap, once one is listed (another rank's may come)
FAILURES_TOLD = 5  # failures in a row before the note says the run is not being followed
RETRY_LONGEST = 30.0


class CallBudget:
    """A token bucket over the control plane: ``CALLS_PER_SECOND``, bursts of ``CALLS_BURST``."""

    def __init__(self, clock: Callable[[], float], rate: float, burst: int) -> None:
        self.clock, self.rate, self.burst = clock, rate, burst
        self.tokens, self._at = float(burst), clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self._at) * self.rate)
        self._at = now

    def take(self) -> bool:
        """Spend one call if the budget has one now."""
        self._refill()
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def spend(self) -> None:
        """Count a call the budget could not refuse."""
        self._refill()
        self.tokens -= 1

    def next_call(self) -> float:
        """When the budget next has a call to spend."""
        self._refill()
        return self._at + max(0.0, 1 - self.tokens) / self.rate


class RunFollower:
    """Follows one run (a pipeline's children, or a single run) until it ends or ``stopping``.

    Azure ML's control plane is asked within a budget (:class:`CallBudget`), whatever the step
    count: one listing per round, which carries the steps' statuses and tags where the SDK's
    listing does (an SDK v1 ``Run``'s ``status`` and ``tags`` come with ``get_children``, an SDK
    v2 job's with ``jobs.list``); the pipeline's own status only while no listed step is going
    on; a step's details (its log list) soon and often while it is started, debugged and not
    announced, rarely after. Listings come every ``poll_fast`` while a debugged step has not
    announced, and slow down by doubling to ``poll_slow`` while nothing changes. The log blobs
    are storage, read apart from that budget: every ``LOG_READ_WAITING`` s while a step has not
    announced, every ``poll_fast`` for a debugged step, at each listing for the others.
    """

    def __init__(
        self,
        run: Any,
        steps: list[StepSpec],
        events: DebugSession,
        *,
        is_pipeline: bool,
        going_on: frozenset[str],
        stopping: threading.Event,
        prober: Callable[[str, int], str],
        poll_fast: float | None = None,
        poll_slow: float | None = None,
        opener: Any = None,
        clock: Callable[[], float] = time.monotonic,
        pause: Callable[[float], object] | None = None,
        paths: RelayPaths | None = None,
    ) -> None:
        self.run, self.steps, self.events = run, steps, events
        self.paths = paths  # --via storage / auto: which way each announced step is reached
        self.is_pipeline = is_pipeline
        self.going_on = going_on
        self.prober = prober
        self.opener = opener
        self.poll_fast = POLL_FAST if poll_fast is None else poll_fast
        self.poll_slow = max(self.poll_fast, POLL_SLOW if poll_slow is None else poll_slow)
        self.clock = clock
        self._stopping = stopping
        self._pause = pause or stopping.wait
        self.budget = CallBudget(clock, CALLS_PER_SECOND, CALLS_BURST)
        self.followers: dict[str, StepFollower] = {}
        self._by_name = {s.name: s for s in steps}
        self._listing_due = clock()
        self._listing_gap = self.poll_fast
        self._changed = False
        self._run_status = ""
        self._run_status_wanted = False
        self._answered = False  # whether this round's listing came back

    def ended(self, status: str | None) -> bool:
        """Whether a run in ``status`` has ended, by its SDK's own lists."""
        return bool(status) and status not in self.going_on

    def changed(self) -> None:
        """Something moved (a status, an announcement): listings come fast again."""
        self._changed = True

    def follow(self, note: str) -> None:
        """Follow until the run ends or Stop. An unexpected error (a transient SDK or HTTP
        failure, a reply that is not what it should be) is shown, redacted, and retried with a
        back-off; after ``FAILURES_TOLD`` in a row the note says the run is not being followed,
        and retrying goes on at the longest back-off: the session stays stoppable."""
        failures = 0
        events = self.events
        while not self._stopping.is_set():
            try:
                if self._round():
                    return
            except Exception as error:
                failures += 1
                problem = first_line(error)
                if problem != type(error).__name__:
                    problem = f"{type(error).__name__}: {problem}"
                if failures >= FAILURES_TOLD:
                    events.target_note(
                        f"{note}; not following the run: {failures} failures in a row, the last "
                        f"{problem}; retrying every {RETRY_LONGEST:g} s (Stop cancels the run)"
                    )
                else:
                    events.target_note(f"{note}; could not follow the run ({problem}); retrying")
                self._pause(min(RETRY_LONGEST, 2.0 ** failures * self.poll_fast))
                self._listing_due = self.clock()
                continue
            if failures and self._answered:  # a listing came back: following again
                failures = 0
                events.target_note(note)
            self._pause(max(0.0, self._next_moment() - self.clock()))

    @property
    def _waiting(self) -> list[StepFollower]:
        return [f for f in self.followers.values() if f.waiting]

    def _round(self) -> bool:
        """What is due now: control-plane calls within the budget, then log reads; True once
        the run and every followed step have ended."""
        now = self.clock()
        self._answered = False
        for follower in self._waiting:  # a started step's log list: what discovery waits on
            if follower.started and follower.details_due <= now and self.budget.take():
                follower.ask_details(now)
        if self._run_status_wanted and self.budget.take():
            self._run_status, self._run_status_wanted = self.run.get_status(), False
        if self._listing_due <= now and self.budget.take():
            self._list(now)
            self._answered = True
            if self.is_pipeline and not any(f.under_way for f in self.followers.values()):
                self._run_status_wanted = True  # the pipeline's own status tells if it ended
                if self.budget.take():
                    self._run_status, self._run_status_wanted = self.run.get_status(), False
        for follower in self.followers.values():
            if not follower.waiting and follower.details_due <= now and self.budget.take():
                follower.ask_details(now)
        for follower in self.followers.values():
            if follower.read_due <= now:
                follower.read(now)
        return self._done()

    def _list(self, now: float) -> None:
        """One listing: the children (with their statuses), or the single run's status."""
        if self.is_pipeline:
            for child in self.run.get_children():
                name = getattr(child, "name", None)
                if name not in self._by_name:
                    continue
                if name not in self.followers:
                    self.followers[name] = StepFollower(self, child, self._by_name[name], now)
                    self.changed()
                self.followers[name].listed(child, now)
        else:
            name = self.steps[0].name
            if name not in self.followers:
                self.followers[name] = StepFollower(self, self.run, self._by_name[name], now)
            status = self.run.get_status()
            self._run_status = status
            self.followers[name].listed(self.run, now, status)
        waiting = bool(self._waiting) or not self.followers
        if self._changed or waiting:
            self._listing_gap = self.poll_fast
        else:
            self._listing_gap = min(self.poll_slow, self._listing_gap * 2)
        self._changed = False
        self._listing_due = now + self._listing_gap

    def _next_moment(self) -> float:
        """When the next thing is due: a listing, a step's details (once the budget has a call
        for them) or a log read."""
        calls = [self._listing_due, *(f.details_due for f in self.followers.values())]
        if self._run_status_wanted:
            calls.append(self.clock())
        moment = max(min(calls), self.budget.next_call())
        reads = [f.read_due for f in self.followers.values()]
        return min([moment, *reads])

    def _done(self) -> bool:
        status = self._run_status
        if not self.ended(status):
            return False
        events = self.events
        ended = f"the run ended {in_words(status)}"
        for follower in self.followers.values():  # a step after a failed one stays NotStarted
            if not follower.ended and follower.status in NEVER_STARTED:
                follower.never_ran = True
                events.step_status(follower.name, Status.NOT_RUN, ended)
        if not all(f.ended for f in self.followers.values()):
            return False
        for follower in self.followers.values():  # the last lines, before the end is told
            follower.read(self.clock())
        for spec in self.steps:
            if spec.name not in self.followers:
                events.step_status(spec.name, Status.NOT_RUN, ended)
        events.target_done(failed=status not in SUCCEEDED)
        return True


class StepFollower:
    """One step run: its status, its logs and tags, and the probe of what it announces."""

    def __init__(self, target: RunFollower, run: Any, spec: StepSpec, now: float) -> None:
        self.target, self.run, self.events = target, run, target.events
        self.spec = spec
        self.name = spec.name
        self.status = ""
        self.started_at = time.time()
        self.announced = False
        self.failed_ranks: set[int] = set()  # ranks in a relayed post-mortem: its window next
        self.never_ran = False  # the whole run ended before this step started
        self.details_due = float("inf")  # asked once the step has started
        self.details_gap = DETAILS_WAITING
        self.read_due = float("inf")
        events = self.events
        self.logs = RunLogs(
            run,
            lambda line, rank: events.step_output(self.name, line, rank),
            self._news,
            **({"opener": target.opener} if target.opener else {}),
        )

    @property
    def ended(self) -> bool:
        return self.target.ended(self.status) or self.never_ran

    @property
    def started(self) -> bool:
        return bool(self.status) and self.status not in BEFORE_START

    @property
    def under_way(self) -> bool:
        """Queued or further, and not ended: the pipeline cannot have ended meanwhile."""
        return self.status not in ("", "NotStarted") and not self.ended

    @property
    def waiting(self) -> bool:
        return self.spec.debug and not self.announced and not self.ended

    def listed(self, run: Any, now: float, status: str | None = None) -> None:
        """What a listing says of this step: its status and, where it carries them, its tags."""
        self.run = self.logs.run = run
        was_started = self.started
        if status is None:
            status = getattr(run, "status", None)
            if not isinstance(status, str):
                self.target.budget.spend()  # a listing without statuses: one call per step
                status = run.get_status()
        tags = getattr(run, "tags", None)
        if isinstance(tags, dict):
            self.logs.take_tags(tags)
        self.update(status, now)
        if self.started and not was_started and not self.ended:
            self.details_due = now  # its log list: now that there can be one
            self.details_gap = DETAILS_WAITING
        if not self.spec.debug and not self.ended:
            self.read_due = now  # the others' logs are read at each listing

    def ask_details(self, now: float) -> None:
        """The step's details: its log list (and its status, where the details carry it)."""
        details = self.run.get_details() or {}
        if self.logs.take_details(details):
            self.read_due = now
        status = details.get("status")
        if isinstance(status, str) and status:
            self.update(status, now)
        if self.ended:
            self.details_due = float("inf")  # its last details came when it ended
        elif self.waiting and not self.logs.listed:
            self.details_due = now + DETAILS_WAITING
        elif not self.logs.listed or self.spec.debug:
            # a log still to come, or another rank's: asked again less and less often
            self.details_gap = min(DETAILS_SLOWEST, self.details_gap * 2)
            self.details_due = now + self.details_gap
        else:
            self.details_due = float("inf")  # from now on its log is read from storage only
        if self.waiting:
            self._say_waiting()

    def read(self, now: float) -> None:
        """New lines from every listed log of the step (storage, not the control plane)."""
        self.logs.read()
        if self.logs.expired:
            self.details_due = min(self.details_due, now)
        if self.waiting and self.started:
            self.read_due = now + LOG_READ_WAITING
        elif self.spec.debug and not self.ended:
            self.read_due = now + self.target.poll_fast
        else:
            self.read_due = float("inf")  # until the next listing

    def update(self, status: str, now: float) -> None:
        """A status from a listing or the step's details, told to the row when it changed."""
        if self.ended or not status:
            return
        ours = row_status(status, self.target.ended(status))
        if status == self.status:
            return
        self.status = status
        self.target.changed()
        if self.ended:  # its last lines, for the failure's cause: from every log it has now
            if status == "Failed" or not self.logs.listed:
                self.target.budget.spend()  # once per step, and counted
                self.logs.take_details(self.run.get_details())
            self.logs.read()
        if ours != Status.RUNNING or not self.announced:
            words = in_words(status)
            detail = "" if words == str(ours) else words
            if status == "Failed":  # the script's own exception, from its log
                lines = list(self.events.row(self.name).last_lines)
                cause = user_error(lines, self.spec.script_name)
                detail = f"Failed: {cause}" if cause else "Failed: see its last lines"
            code = {Status.FINISHED: 0, Status.FAILED: 1}.get(ours)
            self.events.step_status(self.name, ours, detail, exit_code=code)
        if self.waiting and ours == Status.RUNNING:
            self.read_due = now
            if self.logs.listed:  # else its details come first, and say it
                self._say_waiting()

    def _say_waiting(self) -> None:
        seconds = int(time.time() - self.started_at)
        problem = f"; {self.logs.problem}" if self.logs.problem else ""
        self.events.step_status(
            self.name, Status.RUNNING,
            f"{in_words(self.status)} ({seconds // 60}:{seconds % 60:02d}); waiting for its log "
            f"to say where to attach, reading {self.logs.describe()}{problem}",
        )

    def _news(self, news: Announcement | AttachOutcome | PortClosed | Failure) -> None:
        paths = self.target.paths
        if paths is not None and isinstance(news, Announcement) and news.via != "listen":
            self.announced = True
            self.target.changed()
            threading.Thread(target=self._relayed, args=(paths, news), name="aml-debug-relay",
                             daemon=True).start()
            return
        if paths is not None and isinstance(news, Failure) and news.attach is not None \
                and news.attach.via != "listen":  # a post-mortem through its own relay
            self.failed_ranks.add(news.rank)
            threading.Thread(target=self._relayed_failure, args=(paths, news),
                             name="aml-debug-relay", daemon=True).start()
            return
        if paths is not None and isinstance(news, AttachOutcome | PortClosed) and not getattr(
                news, "attached", False):  # the window missed, or the port closed
            paths.end_step(self.name, news.rank, post_mortem=news.rank in self.failed_ranks)
        self.events.step_news(self.name, news)
        if isinstance(news, Announcement):
            self.announced = True
            self.target.changed()
            threading.Thread(
                target=lambda: self.events.step_reachability(
                    self.name, news.rank, reachability(news, self.target.prober)
                ),
                name="aml-debug-probe",
                daemon=True,
            ).start()

    def _relayed(self, paths: RelayPaths, news: Announcement) -> None:
        """The row shows the path the debugger takes: the node's own address, or this
        machine's end of the storage relay."""
        def ended(reason: str) -> None:
            self.events.step_news(self.name, PortClosed(
                f"the storage relay ended: {reason}; the debugger is detached and the script "
                "runs on", news.rank))

        try:
            shown, path, line = paths.arrived(self.name, news, self.target.prober, ended)
        except Exception as error:
            self.events.step_news(self.name, news)
            self.events.step_reachability(
                self.name, news.rank, f"the storage relay did not start: {first_line(error)}")
            return
        self.events.step_news(self.name, shown)
        self.events.step_reachability(self.name, news.rank, line, path=path)

    def _relayed_failure(self, paths: RelayPaths, failure: Failure) -> None:
        """The row of a failed rank shows where to attach for its post-mortem: the node's own
        address, or this machine's end of the failure's own relay."""
        attach = failure.attach
        assert attach is not None

        def ended(reason: str) -> None:
            self.events.step_news(self.name, PortClosed(
                f"the storage relay ended: {reason}; the process exits as python would",
                failure.rank))

        try:
            shown, path, line = paths.arrived(self.name, attach, self.target.prober, ended,
                                              post_mortem=True)
        except Exception as error:
            self.events.step_news(self.name, failure)
            self.events.step_reachability(
                self.name, failure.rank,
                f"the storage relay of the post-mortem did not start: {first_line(error)}")
            return
        self.events.step_news(self.name, dataclasses.replace(failure, attach=shown))
        self.events.step_reachability(self.name, failure.rank, line, path=path)
