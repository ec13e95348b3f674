"""How often a followed run asks Azure ML's control plane, how soon its log is read, and every
rank's log on a multi-node job.

Azure ML's control plane has no emulator: the stand-ins below replace it at the narrowest seam
and count each call of an SDK method there. SDK v1: runs with ``get_children``, ``get_status``,
``get_details`` and ``get_tags``, where a listed run carries the ``status`` and ``tags`` its
listing returned (azureml-core's ``Run.status``/``Run.tags`` read the ``_run_dto`` the listing
or the last ``get_status`` brought). SDK v2: an ``MLClient`` whose ``jobs.get``, ``jobs.list``
and run history's ``get_run_details`` are counted, seen through the product's ``V2Run``; a job
that ``jobs.list`` returns carries its ``status`` and ``tags``. Everything behind the seam is
real: each log is an append blob in Azurite read through a real SAS URL, the session and its
rows are the product's own. Time is simulated (:class:`SimulatedTime`), so a minute of
following takes a moment and the rates are exact.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import wait_for
from test_system import DISTRIBUTED, RUN_CONFIG, attach_and_read, make_cluster  # noqa: F401

from aml_debug_magics.node.announce import Announcement, format_announcement
from aml_debug_magics.records import DebugRequest, Status, StepSpec
from aml_debug_magics.session import DebugSession, current_session
from aml_debug_magics.targets.follow import RunFollower
from aml_debug_magics.ui.text import TextView

# azureml-core's RunStatus lists (what Run.wait_for_completion waits through), as Azure ML has them
GOING_ON = frozenset({"NotStarted", "Queued", "Preparing", "Provisioning", "Starting", "Running",
                      "Finalizing", "CancelRequested"})


# -- the control plane's stand-ins -----------------------------------------------------------------


@dataclass
class RunRecord:
    """A run as run history holds it."""

    id: str
    name: str
    status: str = "NotStarted"
    tags: dict[str, str] = field(default_factory=dict)
    log_files: dict[str, str] = field(default_factory=dict)
    children: list[RunRecord] = field(default_factory=list)


class ControlPlane:
    """Run history: every call through it is counted by SDK method name."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def count(self, method: str) -> None:
        with self._lock:
            self.calls[method] += 1

    def total(self) -> int:
        with self._lock:
            return sum(self.calls.values())


class SdkV1Run:
    """An SDK v1 run object: ``status`` and ``tags`` as its listing (or last ``get_status``)
    brought them; each method is one call to run history."""

    def __init__(self, record: RunRecord, plane: ControlPlane) -> None:
        self.record, self.plane = record, plane
        self.id, self.name = record.id, record.name
        self.status, self.tags = record.status, dict(record.tags)

    def get_status(self) -> str:
        self.plane.count("get_status")
        self.status, self.tags = self.record.status, dict(self.record.tags)
        return self.status

    def get_details(self) -> dict[str, Any]:
        self.plane.count("get_details")
        return {"runId": self.id, "status": self.record.status,
                "logFiles": dict(self.record.log_files)}

    def get_tags(self) -> dict[str, str]:
        self.plane.count("get_tags")
        return dict(self.record.tags)

    def get_children(self) -> list[SdkV1Run]:
        self.plane.count("get_children")
        return [SdkV1Run(child, self.plane) for child in self.record.children]

    def cancel(self) -> None:
        for record in [self.record, *self.record.children]:
            record.status = "Canceled"

    def get_portal_url(self) -> str:
        return f"https://ml.azure.com/runs/{self.id}"


class StandInJobs:
    """``MLClient.jobs`` with run history's ``get_run_details``; each call counted."""

    def __init__(self, plane: ControlPlane, records: dict[str, RunRecord]) -> None:
        self.plane, self.records = plane, records
        self._runs_operations = SimpleNamespace(get_run_details=self._details)

    @staticmethod
    def _job(record: RunRecord) -> SimpleNamespace:
        return SimpleNamespace(name=record.id, display_name=record.name, status=record.status,
                               tags=dict(record.tags), studio_url="")

    def get(self, name: str) -> SimpleNamespace:
        self.plane.count("jobs.get")
        return self._job(self.records[name])

    def list(self, parent_job_name: str) -> list[SimpleNamespace]:
        self.plane.count("jobs.list")
        return [self._job(child) for child in self.records[parent_job_name].children]

    def begin_cancel(self, name: str) -> None:
        for record in [self.records[name], *self.records[name].children]:
            record.status = "Canceled"

    def _details(self, name: str) -> SimpleNamespace:
        self.plane.count("get_run_details")
        record = self.records[name]
        return SimpleNamespace(status=record.status, log_files=dict(record.log_files))


def pipeline_of(steps: int, azurite: Any, debugged: str = "train") -> tuple[RunRecord, Any]:
    """A running pipeline of ``steps`` running child runs, the first named ``debugged``; each
    child has an empty log blob listed; the debugged step's log is returned to write into."""
    parent = RunRecord("pipeline_1", "pipeline", status="Running")
    logs = {}
    for index in range(steps):
        name = debugged if index == 0 else f"step{index}"
        child = RunRecord(f"{name}_run", name, status="Running")
        log = azurite.append_blob(f"runs/{parent.id}/{child.id}/{index}/user_logs/std_log.txt",
                                  "starting\n")
        child.log_files = {"user_logs/std_log.txt": log.url()}
        parent.children.append(child)
        logs[name] = log
    return parent, logs[debugged]


# -- simulated time ------------------------------------------------------------------------


class SimulatedTime:
    """The follower's clock and pause: the follower moves time forward as it pauses, up to the
    point the test lets it reach; the test waits until it is there."""

    def __init__(self) -> None:
        self.now = 0.0
        self._limit = 0.0
        self._waiting = False
        self._released = False
        self._condition = threading.Condition()

    def clock(self) -> float:
        return self.now

    def pause(self, seconds: float) -> None:
        with self._condition:
            wanted = self.now + max(seconds, 0.0)
            while wanted > self._limit and not self._released:
                self._waiting = True
                self._condition.notify_all()
                self._condition.wait()
            self._waiting = False
            self.now = wanted if not self._released else self.now

    def run_until(self, moment: float, ended: threading.Event | None = None) -> None:
        """Let the follower run until simulated ``moment``; returns once it waits there (or,
        given ``ended``, once that is set: a follower that returned waits no more)."""
        with self._condition:
            self._limit = moment
            self._waiting = False
            self._condition.notify_all()
        wait_for(lambda: self._waiting or (ended is not None and ended.is_set()), 60,
                 f"the follower to reach {moment} s")

    def release(self) -> None:
        """From now on pauses end at once (the session is being stopped)."""
        with self._condition:
            self._released = True
            self._condition.notify_all()


# -- the session around the follower -------------------------------------------------------


class Following:
    """The azureml target's following half: a RunFollower on ``run`` in its own thread."""

    def __init__(self, run: Any, is_pipeline: bool, time_source: SimulatedTime | None,
                 **options: Any) -> None:
        self.run, self.is_pipeline, self.time = run, is_pipeline, time_source
        self.options = options
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self, events: DebugSession) -> None:
        timing = {"clock": self.time.clock, "pause": self.time.pause} if self.time else {}
        follower = RunFollower(
            self.run, events.request.steps, events, is_pipeline=self.is_pipeline,
            going_on=GOING_ON, stopping=self.stopping, prober=lambda host, port: "reachable",
            **timing, **self.options,
        )
        self.thread = threading.Thread(target=follower.follow, args=("run",), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self.time:
            self.time.release()
        if self.thread is not None:
            self.thread.join(15)


def follow_session(run: Any, names: list[str], folder: Path, *, is_pipeline: bool = True,
                   time_source: SimulatedTime | None = None, **options: Any) -> DebugSession:
    specs = [StepSpec(name=name, source_directory=folder, script_name="train.py",
                      debug=index == 0) for index, name in enumerate(names)]
    request = DebugRequest("%aml_debug_pipeline steps", specs, target="azureml")
    target = Following(run, is_pipeline, time_source, **options)
    return DebugSession(request, target, TextView(write=lambda text: None)).start()


def announcement_line(rank: int = 0, port: int = 5678) -> str:
    return format_announcement(Announcement(
        addresses=(f"10.0.0.{4 + rank}",), port=port, rank=rank, attach_deadline=1.8e9,
        script="/mnt/azureml/cr/j/abc/exe/wd/train.py", cwd="/mnt/azureml/cr/j/abc/exe/wd"))


def announced(session: DebugSession, step: str = "train") -> bool:
    return session.row(step).status == Status.WAITING


BUDGET = 2.0  # control-plane calls per second, per session, whatever the step count


def measure(plane: ControlPlane, time_source: SimulatedTime, until: float) -> float:
    """Calls per second while the follower runs on from where it is to ``until``, the window's
    first call left out: a window closed at both ends holds one call at each end (at 2 a second,
    61 in 30 s), and the follower's first call may come just after the count was read."""
    calls, start = plane.total(), time_source.now
    time_source.run_until(until)
    return max(0, plane.total() - calls - 1) / (time_source.now - start)


# -- the budget --------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 10, 50])
def test_an_sdk_v1_pipeline_asks_the_control_plane_at_most_twice_a_second(
    azurite, tmp_path, steps
):
    """Before the announcement and after it, whatever the step count; the announcement is
    seen within a fraction of a second of reaching the log blob."""
    plane, time_source = ControlPlane(), SimulatedTime()
    parent, train_log = pipeline_of(steps, azurite)
    names = [child.name for child in parent.children]
    session = follow_session(SdkV1Run(parent, plane), names, tmp_path, time_source=time_source)
    try:
        before = measure(plane, time_source, 30.0)
        assert before <= BUDGET, (before, plane.calls)
        assert not announced(session)
        train_log.append(announcement_line() + "\n")
        appended = time_source.now
        time_source.run_until(appended + 0.5)
        assert announced(session), session.row("train").detail
        steady = measure(plane, time_source, appended + 120.0)
        assert steady <= BUDGET / 2, (steady, plane.calls)
        assert plane.calls["get_tags"] == 0  # the listing carries them
    finally:
        session.stop()


def test_a_single_run_asks_only_for_its_status_and_its_details_until_announced(
    azurite, tmp_path
):
    plane, time_source = ControlPlane(), SimulatedTime()
    record = RunRecord("run_1", "train", status="Running")
    log = azurite.append_blob("runs/run_1/user_logs/std_log.txt", "starting\n")
    record.log_files = {"user_logs/std_log.txt": log.url()}
    session = follow_session(SdkV1Run(record, plane), ["train"], tmp_path, is_pipeline=False,
                             time_source=time_source)
    try:
        assert measure(plane, time_source, 30.0) <= BUDGET
        log.append(announcement_line() + "\n")
        time_source.run_until(time_source.now + 0.5)
        assert announced(session)
        calls = dict(plane.calls)
        assert measure(plane, time_source, time_source.now + 120) <= BUDGET / 2
        # after the announcement: now and then, for another rank's log
        assert plane.calls["get_details"] - calls.get("get_details", 0) <= 8, plane.calls
    finally:
        session.stop()


def test_an_sdk_v2_pipeline_keeps_to_the_budget_through_v2run(azurite, tmp_path):
    """``V2Run`` is the product's seam to azure-ai-ml: ``jobs.list`` of the children carries
    their statuses and tags."""
    pytest.importorskip("azure.ai.ml", reason="azure-ai-ml is the v2 extra")
    from aml_debug_magics.targets.azureml_v2 import V2Run

    plane, time_source = ControlPlane(), SimulatedTime()
    parent, train_log = pipeline_of(10, azurite)
    records = {record.id: record for record in [parent, *parent.children]}
    client = SimpleNamespace(jobs=StandInJobs(plane, records))
    run = V2Run(client, StandInJobs._job(parent))
    session = follow_session(run, [c.name for c in parent.children], tmp_path,
                             time_source=time_source)
    try:
        before = measure(plane, time_source, 30.0)
        assert before <= BUDGET, (before, plane.calls)
        train_log.append(announcement_line() + "\n")
        time_source.run_until(time_source.now + 0.5)
        assert announced(session)
        steady = measure(plane, time_source, time_source.now + 120)
        assert steady <= BUDGET / 2, (steady, plane.calls)
    finally:
        session.stop()


def test_a_step_that_changes_is_seen_soon_after_a_quiet_spell(azurite, tmp_path):
    """The back-off while nothing changes ends when something does: a step that ends after a
    long quiet spell is reported within the slowest poll."""
    plane, time_source = ControlPlane(), SimulatedTime()
    parent, train_log = pipeline_of(3, azurite)
    train_log.append(announcement_line() + "\n")
    session = follow_session(SdkV1Run(parent, plane), [c.name for c in parent.children],
                             tmp_path, time_source=time_source)
    try:
        time_source.run_until(600.0)
        assert announced(session)
        parent.children[2].status = "Completed"
        time_source.run_until(time_source.now + 10.5)
        assert session.row("step2").status == Status.FINISHED
        for child in parent.children:
            child.status = "Completed"
        parent.status = "Completed"
        ended = threading.Event()
        threading.Thread(target=lambda: (session.wait(60), ended.set()), daemon=True).start()
        time_source.run_until(time_source.now + 10.5, ended)
        assert session.state == "finished"
    finally:
        session.stop()


def test_without_simulated_time_the_real_follower_still_ends(azurite, tmp_path):
    """The same follower on the real clock: a finished pipeline ends the session."""
    plane = ControlPlane()
    parent, train_log = pipeline_of(2, azurite)
    train_log.append(announcement_line() + "\n")
    session = follow_session(SdkV1Run(parent, plane), [c.name for c in parent.children],
                             tmp_path, poll_fast=0.05, poll_slow=0.05)
    try:
        wait_for(lambda: announced(session), 10, "the announcement")
        for record in [parent, *parent.children]:
            record.status = "Completed"
        assert session.wait(30) == "finished"
    finally:
        session.stop()


# -- every rank's log, on the simulated cluster --------------------------------------------------


def test_ranks_on_the_second_node_are_found_in_the_multi_node_log_layout(
    ip, tmp_path, make_cluster  # noqa: F811  (the system tests' fixture)
):
    """2 nodes x 2 processes writing ``user_logs/std_log_node_N_process_M.txt``, as the current
    runtime does on several nodes: each rank's announcement is found in its own log, and a
    debugger on this machine attaches to each rank on its node (the second node's included)."""
    (tmp_path / "dist").mkdir()
    (tmp_path / "dist" / "dist.py").write_text(DISTRIBUTED)
    cluster = make_cluster(nodes=2, processes_per_node=2, layout="nodes")
    assert ip.run_cell(RUN_CONFIG).success
    ip.run_line_magic(
        "aml_debug_run", "--target azureml --workspace ws --timeout 120 --ranks all config"
    )
    session = current_session("run")
    wait_for(lambda: len([r for r in session.rows if r.status == Status.WAITING]) == 4, 90,
             "four ranks to wait")
    listed = set(cluster.runs[0].log_files)
    assert listed == {f"user_logs/std_log_node_{n}_process_{p}.txt" for n in (0, 1) for p in (0, 1)}
    by_rank = {row.rank: row for row in session.rows}
    first, second = cluster.nodes[0].address, cluster.nodes[1].address
    assert {rank: row.address for rank, row in by_rank.items()} == {
        0: f"{first}:5678", 1: f"{first}:5679", 2: f"{second}:5678", 3: f"{second}:5679"}
    for rank, row in sorted(by_rank.items()):
        assert attach_and_read(row, tmp_path / "dist" / "dist.py", 3, "rank") == str(rank)
    assert session.wait(60) == "finished"
    assert any("rank 3 done" in line for line in by_rank[3].last_lines)  # each rank's own lines
    assert not any("rank 3 done" in line for line in by_rank[0].last_lines)
