"""The requests a scoring script's ``run()`` failed, as the inference server's worker tells them.

In: the server's output, line by line (a failure's snapshot comes in ``AML_DEBUG v1 snapshot``
parts), and the worker's ``failed`` lines (``node/worker_debugger.py`` writes both when
``run()`` raises with no debugger attached; the server answers the request with a 500 and
serves on). Out: the last :data:`KEPT` failures with their snapshots, newest first
(:class:`RecentFailures`), and the deploy row told of each (:func:`tell_row`): it names the
exception and stays serving.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aml_debug_magics.node.snapshot import SnapshotReader

if TYPE_CHECKING:
    from aml_debug_magics.node.announce import Failure
    from aml_debug_magics.session import DebugSession

KEPT = 3  # failures kept for a deploy row, with their snapshots


@dataclass(frozen=True)
class ScoringFailure:
    """One request whose ``run()`` raised: where, and the frames' snapshot (None when its
    lines did not all come)."""

    failure: Failure
    snapshot: dict[str, Any] | None


class RecentFailures:
    """Pairs each ``failed`` line with the snapshot written just before it; keeps the last
    :data:`KEPT`, newest first. Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reader = SnapshotReader()
        self._snapshot: dict[str, Any] | None = None
        self.newest_first: list[ScoringFailure] = []

    def line(self, line: str) -> None:
        """One line of the server's output."""
        with self._lock:
            found = self._reader.feed(line)
            if found is not None:
                self._snapshot = found[1]

    def failed(self, failure: Failure) -> list[ScoringFailure]:
        """A ``failed`` line: the failures kept, newest (this one) first."""
        with self._lock:
            snapshot, self._snapshot = self._snapshot, None
            if snapshot is not None and snapshot.get("exception") != failure.exception:
                snapshot = None  # not this failure's: its own lines were lost
            self.newest_first = [ScoringFailure(failure, snapshot), *self.newest_first][:KEPT]
            return list(self.newest_first)


def tell_row(events: DebugSession, step: str, failure: Failure) -> None:
    """The deploy row names ``failure`` and stays as it was (serving): the server answered the
    request with a 500 and takes the next one."""
    events.step_news(step, failure)  # the session's deploy row says it and serves on
