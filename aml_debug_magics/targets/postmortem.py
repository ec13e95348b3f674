"""A finished run's failure, read back from its logs: what ``%aml_debug_postmortem`` shows.

In: a run id (SDK v1) or a job name (SDK v2), and the workspace seam the azureml target
submits through (``SdkWorkspace``, ``V2Workspace``: the only objects the tests replace). Out:
the snapshots the run's logs hold (``AML_DEBUG v1 snapshot`` parts, put back together by
``node/snapshot.py``), one per failed process, of the run and of its child runs; or, when there
is none, one line saying why. Each stdout log is read once, whole, with the reader that follows
a live run (``logs.RunLogs``): one control-plane call per run for its details (and one for its
children), the rest from storage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aml_debug_magics.debugger.snapshot import SNAPSHOT_LINE
from aml_debug_magics.errors import DebugInputError
from aml_debug_magics.failures import first_line
from aml_debug_magics.logs import RunLogs
from aml_debug_magics.node.announce import Failure, parse_line
from aml_debug_magics.node.snapshot import SnapshotReader

NOT_WRITTEN = "could not write the snapshot of the failure"  # the bootstrap's own words
CHILD_LEVELS = 3  # a pipeline's steps, and pipelines inside it


@dataclass
class FoundSnapshot:
    """One failed process's snapshot, and which run and rank it came from."""

    label: str  # the run's name, with its rank when it is not 0
    snapshot: dict[str, Any]


@dataclass
class _RunLog:
    """What one run's logs said, for the line that explains a missing snapshot."""

    label: str
    listed: bool = False
    ours: bool = False  # an AML_DEBUG line: the run was started by our bootstrap
    failures: list[Failure] = field(default_factory=list)
    parts: dict[int, tuple[set[int], int]] = field(default_factory=dict)  # rank: (seen, of)
    not_written: str = ""
    found: list[FoundSnapshot] = field(default_factory=list)
    problem: str = ""


def postmortem_workspace(user_ns: dict[str, Any], variable: str | None) -> Any:
    """The seam to look a run up through: an SDK v2 ``MLClient`` in ``variable`` (it has
    ``jobs``; a v1 ``Workspace`` has none) gives ``V2Workspace`` (job names), anything else
    ``SdkWorkspace`` (v1 run ids; without ``variable``, ``Workspace.from_config()``)."""
    from aml_debug_magics.targets import azureml_v2, workspace

    value = user_ns.get(variable) if variable else None
    if value is not None and hasattr(value, "jobs"):
        return azureml_v2.V2Workspace(value)
    return workspace.find_workspace(user_ns, variable)


def read_snapshots(seam: Any, run_id: str) -> list[FoundSnapshot]:
    """The snapshots in the logs of run ``run_id`` and its child runs; DebugInputError with
    the reason when there is none."""
    try:
        run = seam.get_run(run_id)
    except Exception as error:
        raise DebugInputError(f"no run {run_id!r} found in the workspace: "
                              f"{first_line(error)}") from None
    logs = [_read(each) for each in _with_children(run, CHILD_LEVELS)]
    found = [snapshot for log in logs for snapshot in log.found]
    if found:
        return found
    raise DebugInputError(_why_none(run_id, run, logs))


def _with_children(run: Any, levels: int) -> list[Any]:
    children = run.get_children() if levels else []
    return [run, *(grand for child in children for grand in _with_children(child, levels - 1))]


def _read(run: Any) -> _RunLog:
    label = str(getattr(run, "name", None) or getattr(run, "id", ""))
    said = _RunLog(label)
    reader = SnapshotReader()

    def on_line(line: str, rank: int) -> None:
        if NOT_WRITTEN in line:
            said.not_written = line.strip()
        if parse_line(line) is not None:
            said.ours = True
        if SNAPSHOT_LINE not in line:
            return
        said.ours = True
        _count_part(said, line)
        found = reader.feed(line)
        if found is not None:
            name = label if found[0] == 0 else f"{label} (rank {found[0]})"
            said.found.append(FoundSnapshot(name, found[1]))

    def on_news(news: Any) -> None:
        if isinstance(news, Failure):
            said.failures.append(news)

    logs = RunLogs(run, on_line, on_news)
    said.listed = logs.take_details(run.get_details())
    logs.read()
    said.problem = logs.problem
    return said


def _count_part(said: _RunLog, line: str) -> None:
    try:
        body = json.loads(line.split(SNAPSHOT_LINE, 1)[1])
        seen, _ = said.parts.setdefault(int(body["rank"]), (set(), int(body["parts"])))
        seen.add(int(body["part"]))
    except (KeyError, TypeError, ValueError):
        return


def _why_none(run_id: str, run: Any, logs: list[_RunLog]) -> str:
    """One line: why run ``run_id``'s logs hold no snapshot."""
    where = f"no snapshot in the logs of run {run_id!r}"
    cut = [(log.label, rank, len(seen), count) for log in logs
           for rank, (seen, count) in log.parts.items()]
    if cut:
        label, rank, kept, count = cut[0]
        return (f"{where}: the snapshot in {label}'s log (rank {rank}) was cut: {kept} of its "
                f"{count} parts are there")
    not_written = next((log.not_written for log in logs if log.not_written), "")
    if not_written:
        return f"{where}: the node said: {not_written}"
    if any(log.failures for log in logs):
        return (f"{where}: the failure is logged, without a snapshot (a bootstrap from before "
                "snapshots, or its output was cut)")
    if any(log.ours for log in logs):
        status = run.get_status()
        return f"{where}: no debugged script failed in it (the run is {status})"
    problems = [log.problem for log in logs if log.problem]
    if problems:
        return f"{where}: its logs could not be read: {problems[0]}"
    if not any(log.listed for log in logs):
        return f"{where}: it lists no log yet (queued, or still preparing?)"
    return (f"{where}: its logs hold no AML_DEBUG line, so these magics did not debug it "
            "(%aml_debug_pipeline, %aml_debug_run and %aml_debug_job write the snapshot)")
