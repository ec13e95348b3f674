"""Following a submitted run until it ends: its steps' statuses, logs and announcements.

In: the run the SDK returned (SDK v1, or SDK v2's job seen through ``azureml_v2.V2Run``) and
the session's steps. Out, to the session: each step's status in words, its log lines, what it
announces and whether its address is reachable from here, and the end of the session once the
run reaches a status its SDK's own waiting loop stops at. Polls fast while a debugged step has
not yet said where to attach, slowly after.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aml_debug_magics.failures import first_line, user_error
from aml_debug_magics.logs import RunLogs
from aml_debug_magics.node.announce import Announcement, AttachOutcome
from aml_debug_magics.records import Status
from aml_debug_magics.targets.reachability import reachability
from aml_debug_magics.targets.statuses import NEVER_STARTED, SUCCEEDED, in_words, row_status

if TYPE_CHECKING:
    from aml_debug_magics.records import StepSpec
    from aml_debug_magics.session import DebugSession

POLL_FAST = 1.0  # seconds between two looks while a debugged step has not said where it is
POLL_SLOW = 10.0  # seconds between two looks after that (statuses only change slowly then)
FAILURES_TOLD = 5  # failures in a row before the note says the run is not being followed
RETRY_LONGEST = 30.0


class RunFollower:
    """Follows one run (a pipeline's children, or a single run) until it ends or ``stopping``."""

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
    ) -> None:
        self.run, self.steps, self.events = run, steps, events
        self.is_pipeline = is_pipeline
        self.going_on = going_on
        self.prober = prober
        self.opener = opener
        self.poll_fast = POLL_FAST if poll_fast is None else poll_fast
        self.poll_slow = POLL_SLOW if poll_slow is None else poll_slow
        self._stopping = stopping

    def ended(self, status: str | None) -> bool:
        """Whether a run in ``status`` has ended, by its SDK's own lists."""
        return bool(status) and status not in self.going_on

    def follow(self, note: str) -> None:
        """Follow until the run ends or Stop. An unexpected error (a transient SDK or HTTP
        failure, a reply that is not what it should be) is shown, redacted, and retried with a
        back-off; after ``FAILURES_TOLD`` in a row the note says the run is not being followed,
        and retrying goes on at the longest back-off: the session stays stoppable."""
        by_name = {s.name: s for s in self.steps}
        followers: dict[str, StepFollower] = {}
        failures = 0
        events = self.events
        while not self._stopping.is_set():
            try:
                if self._poll(by_name, followers):
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
                self._stopping.wait(min(RETRY_LONGEST, 2.0 ** failures * self.poll_fast))
                continue
            if failures:
                failures = 0
                events.target_note(note)
            waiting = any(f.waiting for f in followers.values()) or not followers
            self._stopping.wait(self.poll_fast if waiting else self.poll_slow)

    def _poll(self, by_name: dict[str, StepSpec], followers: dict[str, StepFollower]) -> bool:
        """One round of following; True once the run and every followed step have ended."""
        events = self.events
        if not self.is_pipeline and not followers:
            followers[self.steps[0].name] = StepFollower(self, self.run, by_name, events)
        if self.is_pipeline:
            for child in self.run.get_children():
                name = getattr(child, "name", None)
                if name in by_name and name not in followers:
                    followers[name] = StepFollower(self, child, by_name, events, name)
        for follower in followers.values():
            follower.poll()
        status = self.run.get_status()
        if not self.ended(status):
            return False
        ended = f"the run ended {in_words(status)}"
        for follower in followers.values():  # a step after a failed one stays NotStarted
            if not follower.ended and follower.status in NEVER_STARTED:
                follower.never_ran = True
                events.step_status(follower.name, Status.NOT_RUN, ended)
        if not all(f.ended for f in followers.values()):
            return False
        for spec in self.steps:
            if spec.name not in followers:
                events.step_status(spec.name, Status.NOT_RUN, ended)
        events.target_done(failed=status not in SUCCEEDED)
        return True


class StepFollower:
    """One step run: its status, its logs and tags, and the probe of what it announces."""

    def __init__(self, target: RunFollower, run: Any, by_name: dict[str, StepSpec],
                 events: DebugSession, name: str | None = None) -> None:
        self.target, self.run, self.events = target, run, events
        self.name = name or next(iter(by_name))
        self.spec = by_name[self.name]
        self.status = ""
        self.started_at = time.time()
        self.announced = False
        self.never_ran = False  # the whole run ended before this step started
        self.logs = RunLogs(
            run,
            lambda line, node: events.step_output(self.name, line),
            self._news,
            **({"opener": target.opener} if target.opener else {}),
        )

    @property
    def ended(self) -> bool:
        return self.target.ended(self.status) or self.never_ran

    @property
    def waiting(self) -> bool:
        return self.spec.debug and not self.announced and not self.ended

    def poll(self) -> None:
        status = self.run.get_status()
        if self.ended:
            return
        self.logs.poll()
        ours = row_status(status, self.target.ended(status))
        if status != self.status:
            self.status = status
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
            seconds = int(time.time() - self.started_at)
            problem = f"; {self.logs.problem}" if self.logs.problem else ""
            self.events.step_status(
                self.name, Status.RUNNING,
                f"{in_words(status)} ({seconds // 60}:{seconds % 60:02d}); waiting for its log "
                f"to say where to attach, reading {self.logs.describe()}{problem}",
            )

    def _news(self, news: Announcement | AttachOutcome) -> None:
        self.events.step_news(self.name, news)
        if isinstance(news, Announcement):
            self.announced = True
            threading.Thread(
                target=lambda: self.events.step_reachability(
                    self.name, news.rank, reachability(news, self.target.prober)
                ),
                name="aml-debug-probe",
                daemon=True,
            ).start()
