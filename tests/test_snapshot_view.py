"""The snapshot of a failed step, read back from its output into its row and shown as text
(``%aml_debug_step where`` / ``vars`` / ``eval``) while no debugger is attached.

Real parts: the bootstrap running a failing script, on this machine (the local target) and on
the simulated cluster (``tests/simcluster.py``: the node's log read from Azurite); the
snapshot lines it writes, in one part or several. The only stand-in is the cluster's control
plane, which Azure ML's cannot be here.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
from conftest import wait_for
from test_system import (
    COMMAND_JOB,
    PIPELINE,
    TRAIN_FAILS,
    TRAIN_FAILS_RAISE,
    cluster,
    make_cluster,
    project,
    v2_cluster,
)

from aml_debug_magics.debugger import snapshot as snapshot_view
from aml_debug_magics.session import current_session

# the system tests' fixtures, used here
__all__ = ["cluster", "make_cluster", "project", "v2_cluster"]

FAILS = textwrap.dedent(
    """\
    def fit(data, divisor):
        total = sum(data)
        return total / divisor


    def main():
        learning_rate = 0.5
        batch = [1, 2, 3]
        api_token = "abc123"
        fit(batch, 0)


    main()
    """
)
RAISE_LINE = 3


@pytest.fixture(autouse=True)
def no_debugger_from_an_earlier_test(monkeypatch):
    """A fresh kernel: no snapshot read, no debugger opened yet."""
    from aml_debug_magics.debugger import controller

    monkeypatch.setattr(snapshot_view, "_latest", [])
    monkeypatch.setattr(controller, "_latest", [])


def traceback_frames(lines) -> list[str]:
    """The ``File "...", line N, in F`` lines python printed, as ``F  PATH:N``, innermost
    first (as a call stack lists them)."""
    frames = []
    for line in lines:
        text = line.strip()
        if text.startswith('File "'):
            path, rest = text[len('File "'):].split('", line ', 1)
            number, function = rest.split(", in ")
            frames.append(f"{function}  {path}:{number}")
    return frames[::-1]


def step(ip, capsys, line: str) -> str:
    capsys.readouterr()
    ip.run_line_magic("aml_debug_step", line)
    return capsys.readouterr().out


def run_failing(ip, tmp_path, text: str = FAILS, options: str = "--post-mortem off"):
    (tmp_path / "train.py").write_text(text)
    ip.run_line_magic("aml_debug_run", f"--timeout 0.3 {options} train.py")
    session = current_session("run")
    assert session.wait(120) == "failed"
    return session.rows[0]


def test_the_row_keeps_the_snapshot_and_never_shows_its_lines(ip, tmp_path):
    row = run_failing(ip, tmp_path)
    assert row.snapshot is not None and row.snapshot["exception"] == "ZeroDivisionError"
    assert [f["function"] for f in row.snapshot["frames"]] == ["<module>", "main", "fit"]
    assert row.snapshot["frames"][-1]["locals"]["divisor"] == "0"
    assert row.snapshot["frames"][1]["locals"]["api_token"] == "REDACTED"
    assert "ZeroDivisionError: division by zero" in row.last_lines
    assert not [line for line in row.last_lines if "AML_DEBUG v1 snapshot" in line]


def test_a_snapshot_in_several_parts_is_put_back_together(ip, tmp_path):
    """Random locals in 200 frames: more than one 60,000-character line of the log."""
    deep = textwrap.dedent(
        """\
        import base64, os


        def deep(level):
            noise = base64.b64encode(os.urandom(290)).decode()
            if level == 0:
                raise ValueError("bottom")
            deep(level - 1)


        deep(200)
        """
    )
    row = run_failing(ip, tmp_path, deep)
    assert row.snapshot is not None and len(row.snapshot["frames"]) == 202
    assert row.snapshot["frames"][-1]["locals"]["level"] == "0"
    assert not [line for line in row.last_lines if "AML_DEBUG v1 snapshot" in line]


def test_where_vars_and_eval_read_the_snapshot(ip, tmp_path, capsys):
    row = run_failing(ip, tmp_path)
    where = step(ip, capsys, "where")
    script = tmp_path / "train.py"
    assert where.startswith(f"[train] failed at {script}:{RAISE_LINE} in fit (a snapshot")
    assert "ZeroDivisionError: division by zero" in where
    assert f"  ->    {RAISE_LINE} |     return total / divisor" in where
    stack = where.split("call stack:\n", 1)[1].splitlines()
    assert [line[4:] for line in stack] == traceback_frames(row.last_lines)
    assert stack[0].startswith("  * fit")  # the innermost, marked
    assert step(ip, capsys, "") == where
    assert step(ip, capsys, "vars").splitlines() == [
        "Locals of fit:", "  data = [1, 2, 3]", "  divisor = 0", "  total = 6",
    ]
    assert step(ip, capsys, "vars data").strip() == "data = [1, 2, 3]"
    in_main = step(ip, capsys, "vars 1")
    assert in_main.splitlines()[0] == "Locals of main:"
    assert "  learning_rate = 0.5" in in_main and "  api_token = REDACTED" in in_main
    assert step(ip, capsys, "eval total * 2").strip() == snapshot_view.NOT_EVALUATED
    for move in ("next", "continue", "break train.py:2"):
        assert step(ip, capsys, move).strip() == snapshot_view.NOT_RUN


def test_a_long_value_is_printed_in_slices_from_the_snapshot(ip, tmp_path, capsys):
    text = 'def main():\n    words = "x" * 1000\n    raise KeyError(words[:3])\n\n\nmain()\n'
    run_failing(ip, tmp_path, text)
    first = step(ip, capsys, "vars words")
    assert first.startswith("words = 'xxx") and len(first) < 500  # 400 characters were kept
    assert step(ip, capsys, "vars words 390").startswith("words = ...xxxxxxxx")


def test_a_bad_frame_number_is_one_line(ip, tmp_path):
    from IPython.core.error import UsageError

    run_failing(ip, tmp_path)
    with pytest.raises(UsageError, match=r"the snapshot has frames 0 to 2 \(got 7\)"):
        ip.run_line_magic("aml_debug_step", "vars 7")


def test_without_a_snapshot_or_a_debugger_the_step_magic_says_how_to_open_one(ip):
    from IPython.core.error import UsageError

    with pytest.raises(UsageError, match="no debugger is open"):
        ip.run_line_magic("aml_debug_step", "where")


def test_a_step_on_a_simulated_node_keeps_its_snapshot_from_the_log(ip, project, cluster,
                                                                     capsys):
    """The node's log, read from Azurite as the azureml target follows a run, carries the
    snapshot; the row keeps it and ``where`` shows the node's frames."""
    (project / "train" / "train.py").write_text(TRAIN_FAILS)
    assert ip.run_cell(PIPELINE).success
    ip.run_line_magic("aml_debug_pipeline", "steps --step train --target azureml --workspace ws "
                      "--timeout 1 --post-mortem off")
    session = current_session("pipeline")
    train = session.row("train")
    wait_for(lambda: train.snapshot is not None, 120, "the snapshot in the node's log")
    assert session.wait(120) == "failed"
    assert train.snapshot["frames"][-1]["locals"]["numbers"] == "[3, 1, 4, 1, 5]"
    assert not [line for line in train.last_lines if "AML_DEBUG v1 snapshot" in line]
    where = step(ip, capsys, "where")
    assert f"train.py:{TRAIN_FAILS_RAISE} in fit (a snapshot" in where
    stack = where.split("call stack:\n", 1)[1].splitlines()
    assert [line[4:] for line in stack] == traceback_frames(train.last_lines)
    # the node's path, as its traceback says; the source, the local file it maps to
    node_copy = Path(train.snapshot["frames"][-1]["file"])
    assert node_copy != project / "train" / "train.py"
    node_copy.unlink()  # the node's copy is the node's: here, only the mapped local file
    source = session.show_frames(train).state()["source"]
    assert source["path"] == str(node_copy)
    assert source["text"] == TRAIN_FAILS.rstrip("\n") and source["line"] == TRAIN_FAILS_RAISE


def test_show_frames_opens_the_debugger_view_on_the_snapshot_read_only(ip, tmp_path):
    """The row's Show frames button (what its click calls): the notebook debugger's view with
    the snapshot's frames, source, line and locals, and nothing that needs the process."""
    from test_debug_here import custom

    ip.run_line_magic("config", "AmlDebugMagics.view = 'widgets'")
    row = run_failing(ip, tmp_path)
    session = current_session("run")
    shown = session.view.rows[0]
    assert shown.frames.description == "Show frames" and shown.frames.layout.display is None
    shown.frames.click()
    view = shown.debugger.children[0]
    state = view.state
    assert view.title == "train" and state["read_only"] == snapshot_view.READ_ONLY
    assert state["status"] == "stopped"
    assert state["stopped"]["exception"]["id"] == "ZeroDivisionError"
    assert "Traceback (most recent call last):" in state["stopped"]["exception"]["details"]
    script = str(tmp_path / "train.py")
    assert [(f["name"], f["path"], f["line"]) for f in state["frames"]] == [
        ("fit", script, RAISE_LINE), ("main", script, 10), ("<module>", script, 13)]
    assert state["frame_id"] == state["frames"][0]["id"]
    assert state["source"] == {"path": script, "text": (tmp_path / "train.py").read_text()
                               .rstrip("\n"), "line": RAISE_LINE}
    assert [(v["name"], v["value"]) for v in state["scopes"][0]["variables"]] == [
        ("data", "[1, 2, 3]"), ("divisor", "0"), ("total", "6")]

    custom(view, {"action": "select_frame", "frame_id": state["frames"][1]["id"]})
    assert view.state["source"]["line"] == 10
    assert ("learning_rate", "0.5") in [(v["name"], v["value"])
                                        for v in view.state["scopes"][0]["variables"]]
    replies = []
    view.send = replies.append
    custom(view, {"action": "evaluate", "expression": "total", "frame_id": None,
                  "request_id": "r1"})
    custom(view, {"action": "full_value", "variables_reference": view.state["frame_id"],
                  "name": "batch", "request_id": "r2"})
    assert replies[0]["error"] == snapshot_view.NOT_EVALUATED
    assert (replies[1]["value"], replies[1]["length"]) == ("[1, 2, 3]", 9)
    custom(view, {"action": "next"})  # the page hides the buttons; a stray one changes nothing
    assert view.state["source"]["line"] == 10 and row.snapshot is not None


def test_a_file_changed_since_shows_the_lines_the_snapshot_kept(ip, tmp_path):
    row = run_failing(ip, tmp_path)
    (tmp_path / "train.py").write_text("# rewritten since the run\n")
    snapshot = snapshot_view.SnapshotDebugger(row.snapshot)
    snapshot.select_frame(snapshot.frame_numbered(1))  # main, at line 10: lines 5 to 13 kept
    lines = snapshot.state()["source"]["text"].split("\n")
    assert lines[9] == "    fit(batch, 0)" and lines[5] == "def main():"
    assert lines[:4] == [""] * 4  # above the kept lines: nothing is made up


class RunsById:
    """The control plane's run lookup (``Run.get``), standing in over the simulated cluster:
    the runs it made, by id; any other id is not found, as Azure ML answers."""

    def __init__(self, cluster) -> None:
        self.cluster = cluster

    def get_run(self, run_id: str):
        runs = [r for parent in self.cluster.runs for r in (parent, *parent.children)]
        found = next((r for r in runs if r.id == run_id), None)
        if found is None:
            raise LookupError(f"Run {run_id} was not found")
        return found


@pytest.fixture
def failed_pipeline(ip, project, cluster, monkeypatch):
    """PIPELINE run on the cluster with its train step failing, nobody attaching; the
    pipeline's run, once it ended."""
    from aml_debug_magics.targets import workspace

    (project / "train" / "train.py").write_text(TRAIN_FAILS)
    assert ip.run_cell(PIPELINE).success
    ip.run_line_magic("aml_debug_pipeline", "steps --step train --target azureml --workspace ws "
                      "--timeout 1 --post-mortem off")
    assert current_session("pipeline").wait(120) == "failed"
    ip.run_line_magic("aml_debug_pipeline", "--stop")
    monkeypatch.setattr(workspace, "SdkWorkspace", lambda user_workspace: RunsById(cluster))
    snapshot_view._latest.clear()  # what the postmortem shows comes from the logs alone
    return cluster.runs[-1]


def test_postmortem_reads_a_failed_runs_snapshot_from_its_log(ip, failed_pipeline, capsys):
    """A step run's id (as the studio shows it): its log, read from storage, gives the
    frames; ``where`` and ``vars`` read them after."""
    train = next(r for r in failed_pipeline.children if r.name == "train")
    capsys.readouterr()
    ip.run_line_magic("aml_debug_postmortem", f"{train.id} --workspace ws")
    shown = capsys.readouterr().out
    assert shown.startswith("[train] failed at ")
    assert f"train.py:{TRAIN_FAILS_RAISE} in fit (a snapshot" in shown
    assert "ZeroDivisionError: division by zero" in shown
    stack = shown.split("call stack:\n")[1].splitlines()
    assert stack[0].startswith("  * fit  ") and stack[-1].startswith("    <module>  ")
    assert step(ip, capsys, "vars").splitlines()[0] == "Locals of fit:"
    assert "  numbers = [3, 1, 4, 1, 5]" in step(ip, capsys, "vars")


def test_postmortem_on_a_pipeline_reads_its_steps(ip, failed_pipeline, capsys):
    capsys.readouterr()
    ip.run_line_magic("aml_debug_postmortem", f"{failed_pipeline.id} --workspace ws")
    assert "in fit (a snapshot from the log" in capsys.readouterr().out


def test_postmortem_says_why_there_is_no_snapshot(ip, failed_pipeline):
    from IPython.core.error import UsageError

    prep = next(r for r in failed_pipeline.children if r.name == "prep")
    with pytest.raises(UsageError, match=r"no AML_DEBUG line, so these magics did not debug it"):
        ip.run_line_magic("aml_debug_postmortem", f"{prep.id} --workspace ws")
    with pytest.raises(UsageError, match=r"no run 'nope' found in the workspace: Run nope was"):
        ip.run_line_magic("aml_debug_postmortem", "nope --workspace ws")


class LoggedRun:
    """A run as the SDK returns it (the control plane, standing in) whose one log is a real
    blob in Azurite, holding ``text``."""

    def __init__(self, azurite, text: str, status: str = "Failed") -> None:
        self.id = self.name = "train_1"
        self.status = status
        self.log = azurite.append_blob(f"logs/{id(self)}/std_log.txt", text)

    def get_details(self):
        return {"runId": self.id, "logFiles": {"user_logs/std_log.txt": self.log.url()}}

    def get_children(self):
        return []

    def get_status(self):
        return self.status


@pytest.mark.parametrize("log, why", [
    ("hello\nAML_DEBUG v1 outcome {\"attached\": false, \"rank\": 0}\nbye\n",
     r"no debugged script failed in it \(the run is Completed\)"),
    ('AML_DEBUG v1 failed {"exception": "E", "file": "a.py", "line": 1, "function": "f"}\n'
     "aml-debug: could not write the snapshot of the failure: MemoryError: \n",
     r"the node said: aml-debug: could not write the snapshot of the failure: MemoryError"),
    ("just a script\n", r"no AML_DEBUG line, so these magics did not debug it"),
])
def test_postmortem_names_what_the_log_holds_instead(azurite, log, why):
    from aml_debug_magics.errors import DebugInputError
    from aml_debug_magics.targets.postmortem import read_snapshots

    run = LoggedRun(azurite, log, status="Completed")
    with pytest.raises(DebugInputError, match=why):
        read_snapshots(RunsOf(run), run.id)


class RunsOf:
    def __init__(self, run) -> None:
        self.run = run

    def get_run(self, run_id: str):
        return self.run


def test_postmortem_on_a_cut_log_says_how_many_parts_are_there(azurite):
    from aml_debug_magics.errors import DebugInputError
    from aml_debug_magics.node import snapshot
    from aml_debug_magics.targets.postmortem import read_snapshots

    big = snapshot.take(_raised(), max_bytes=10**7)
    big["frames"][0]["locals"] = {f"v{i}": os.urandom(150).hex() for i in range(600)}
    lines = snapshot.encode_lines(big)
    assert len(lines) >= 3
    run = LoggedRun(azurite, "\n".join(lines[:2]) + "\n")
    with pytest.raises(DebugInputError, match=rf"was cut: 2 of its {len(lines)} parts are there"):
        read_snapshots(RunsOf(run), run.id)
    run.log.append("\n".join(lines[2:]) + "\n")
    found = read_snapshots(RunsOf(run), run.id)
    assert [f.label for f in found] == ["train_1"] and found[0].snapshot == json.loads(
        json.dumps(big))


def _raised() -> BaseException:
    try:
        {}["missing"]
    except KeyError as error:
        return error
    raise AssertionError("no KeyError")


def test_the_text_view_says_once_how_to_read_the_snapshot(ip, tmp_path, capsys):
    row = run_failing(ip, tmp_path, options="--post-mortem 0.5")
    shown = capsys.readouterr().out
    assert shown.count("[train] its frames and locals at the failure: %aml_debug_step where") == 1
    assert "AML_DEBUG v1 snapshot" not in shown
    current_session("run").show_frames(row)  # where no widget shows: the frames as text
    assert capsys.readouterr().out.startswith(f"[train] failed at {tmp_path / 'train.py'}:3")


def test_a_debugger_opened_after_the_snapshot_is_the_one_driven(ip, tmp_path, capsys):
    """Debug here during the post-mortem: %aml_debug_step drives the live debugger (eval
    works), and once it has ended, says so, rather than going back to the older snapshot."""
    from aml_debug_magics.records import Status

    (tmp_path / "train.py").write_text(FAILS)
    ip.run_line_magic("aml_debug_run", "--timeout 0.3 --post-mortem 120 train.py")
    session = current_session("run")
    row = session.rows[0]
    wait_for(lambda: row.status == Status.POST_MORTEM, 60, "the post-mortem")
    assert row.snapshot is not None
    assert "(a snapshot from the log" in step(ip, capsys, "where")
    session.debug_here(row)
    wait_for(lambda: session.debugger_of(row) is not None
             and session.debugger_of(row).state()["status"] == "stopped", 60, "the stop")
    assert step(ip, capsys, "eval total").strip() == "total (int) = 6"
    step(ip, capsys, "continue")
    assert session.wait(60) == "failed"
    assert step(ip, capsys, "where").startswith("[train.py (train)] ended - the script ended")


def test_postmortem_reads_an_sdk_v2_jobs_snapshot_by_its_name(ip, project, v2_cluster,
                                                             monkeypatch, capsys):
    """An SDK v2 command job, failed on the cluster: ``--workspace`` names an MLClient (here
    a stand-in with ``jobs``), whose job of that name has the log."""
    from types import SimpleNamespace

    from aml_debug_magics.targets import azureml_v2

    (project / "numbers").mkdir()
    (project / "numbers" / "numbers.txt").write_text("2 7 1")
    (project / "train" / "train.py").write_text(TRAIN_FAILS)
    assert ip.run_cell(COMMAND_JOB).success
    ip.run_line_magic("aml_debug_job", "train_job --target azureml --workspace ml_client "
                      "--timeout 1 --post-mortem off")
    assert current_session("job").wait(120) == "failed"
    ip.run_line_magic("aml_debug_job", "--stop")
    monkeypatch.setattr(azureml_v2, "V2Workspace", lambda ml_client: RunsById(v2_cluster))
    ip.user_ns["ml_client"] = SimpleNamespace(jobs="the control plane, standing in")
    capsys.readouterr()
    ip.run_line_magic("aml_debug_postmortem", f"{v2_cluster.runs[-1].id} --workspace ml_client")
    shown = capsys.readouterr().out
    assert f"train.py:{TRAIN_FAILS_RAISE} in fit (a snapshot from the log" in shown
    assert "  numbers = [2, 7, 1]" in step(ip, capsys, "vars")
