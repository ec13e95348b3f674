"""The azureml target: real SDK objects, real log blobs in Azurite, a stand-in control plane.

Azure ML's control plane (submit, runs, statuses) cannot be reached from a test machine. The
``StandInWorkspace`` below replaces only that seam; the steps, RunConfigurations and
ScriptRunConfigs it receives are the real SDK classes, and every log it lists is an append blob
in Azurite read through a real SAS URL over HTTP.
"""

from __future__ import annotations

import os
import socket
import textwrap
import warnings
from pathlib import Path

import pytest
from conftest import need_python_script_step, wait_for
from IPython.core.error import UsageError

from aml_debug_magics.node.announce import Announcement, format_announcement, tag_key
from aml_debug_magics.node.ranks import node_addresses
from aml_debug_magics.records import DebugRequest, Status
from aml_debug_magics.session import DebugSession, current_session
from aml_debug_magics.sources.sdk_v1 import pick_steps, read_steps, steps_of
from aml_debug_magics.targets.azureml import AzureMLTarget
from aml_debug_magics.targets.reachability import reachability
from aml_debug_magics.targets.runconfig import debug_runconfig, strip_guide_flags
from aml_debug_magics.ui.text import TextView


class Run:
    """A run as the SDK returns it: get_status, get_details (with logFiles), get_tags,
    get_children, cancel, get_portal_url. The test moves its status and writes its logs."""

    def __init__(self, run_id: str, name: str = "", status: str = "NotStarted") -> None:
        self.id, self.name, self.status = run_id, name, status
        self.log_files: dict[str, str] = {}
        self.tags: dict[str, str] = {}
        self.children: list[Run] = []
        self.cancelled = False

    def get_status(self) -> str:
        return self.status

    def get_details(self) -> dict:
        return {"runId": self.id, "status": self.status, "logFiles": dict(self.log_files)}

    def get_tags(self) -> dict:
        return dict(self.tags)

    def get_children(self) -> list[Run]:
        return list(self.children)

    def cancel(self) -> None:
        self.cancelled = True
        self.status = "Canceled"
        for child in self.children:
            child.status = "Canceled"

    def get_portal_url(self) -> str:
        return f"https://ml.azure.com/runs/{self.id}"


class StandInWorkspace:
    """The control-plane seam: ``submit`` records what it was given (and which files the source
    folders held at that moment, i.e. what the snapshot would contain) and returns a Run."""

    def __init__(self, folders: list[Path], fail_with: Exception | None = None) -> None:
        self.folders = folders
        self.fail_with = fail_with
        self.submitted: list[dict] = []
        self.run = Run("pipeline_1", status="Running")

    def submit(self, experiment: str, what):
        items = what if isinstance(what, list) else [what]
        self.submitted.append({
            "experiment": experiment,
            "folders": {f: sorted(p.name for p in f.iterdir()) for f in self.folders},
            "items": [
                {key: getattr(item, key, None) for key in (
                    "name", "_script_name", "_arguments", "_runconfig", "_allow_reuse",
                    "script", "arguments", "run_config")}
                for item in items
            ],
        })
        if self.fail_with:
            raise self.fail_with
        return self.run


@pytest.fixture
def project(tmp_path, monkeypatch):
    steps_module = need_python_script_step()
    monkeypatch.chdir(tmp_path)
    for folder, name in (("prep", "prep.py"), ("train", "train.py")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / name).write_text("print('hi')\n")
    from azureml.core import RunConfiguration
    from azureml.pipeline.core import PipelineData

    prepared = PipelineData("prepared")
    settings = RunConfiguration()
    settings.environment.python.conda_dependencies.add_pip_package("scikit-learn")
    prep = steps_module.PythonScriptStep(
        name="prep", script_name="prep.py", source_directory="prep",
        arguments=["--out", prepared], outputs=[prepared],
    )
    train = steps_module.PythonScriptStep(
        name="train", script_name="train.py", source_directory="train",
        arguments=["--data", prepared, "--remote_debug", "--remote_debug_client_ip", "10.1.1.1",
                   "--epochs", 3],
        inputs=[prepared], runconfig=settings, allow_reuse=True,
    )
    return tmp_path, prep, train, prepared, settings


def start(project, workspace, *, view=None, prober=lambda host, port: "reachable", **options):
    tmp_path, prep, train, *_ = project
    found = steps_of([prep, train], "steps")
    specs = read_steps(found, pick_steps(found, ["train"]), base_directory=tmp_path,
                       target="azureml")
    request = DebugRequest("%aml_debug_pipeline steps", specs, target="azureml", timeout=300,
                           **options)
    target = AzureMLTarget(request, workspace, poll_fast=0.05, poll_slow=0.05, prober=prober)
    printed: list[str] = []
    session = DebugSession(request, target, view or TextView(write=printed.append)).start()
    return session, target, printed


def test_submits_debug_ready_steps_and_leaves_everything_as_it_was(project):
    tmp_path, prep, train, prepared, settings = project
    folders = (tmp_path / "prep", tmp_path / "train")
    before = {f: sorted(p.name for p in f.iterdir()) for f in folders}
    workspace = StandInWorkspace(list(before))
    session, target, printed = start(project, workspace)
    wait_for(lambda: workspace.submitted, 30, "the submit")
    submitted = workspace.submitted[0]
    sent_prep, sent_train = submitted["items"]
    assert sent_train["_script_name"] == "aml_debug_bootstrap.py"
    arguments = sent_train["_arguments"]
    options = arguments[: arguments.index("--")]
    assert options[:-2] == [
        "--listen", "0.0.0.0:5678", "--timeout", "300", "--ranks", "0", "--just-my-code"]
    assert options[-2] == "--allow"  # this machine's own addresses, and the node itself
    assert options[-1].split(",") == [*node_addresses("0.0.0.0"), "127.0.0.1", "node"]
    after_dashes = arguments[arguments.index("--") + 1 :]
    assert after_dashes[:3] == ["train.py", "--data", prepared]
    assert after_dashes[2] is prepared  # the input object itself, for the SDK to bind
    assert after_dashes[3:] == ["--epochs", 3]  # the guide's flags left out
    runconfig = sent_train["_runconfig"]
    assert runconfig.environment is settings.environment  # submitted as it is: no rebuild
    pip = list(runconfig.environment.python.conda_dependencies.pip_packages)
    assert "debugpy>=1.8.1,<1.9" not in pip and "scikit-learn" in pip
    assert runconfig.docker.use_docker is True
    assert sent_train["_allow_reuse"] is False
    assert sent_prep["_script_name"] == "prep.py" and sent_prep["_allow_reuse"] is True
    snapshot = submitted["folders"][tmp_path / "train"]
    assert {"aml_debug_bootstrap.py", "aml_debug_announce.py", "aml_debug_gate.py",
            "aml_debug_debugpy"} <= set(snapshot)
    assert submitted["folders"][tmp_path / "prep"] == before[tmp_path / "prep"]

    wait_for(lambda: session.note, 30, "the run link")
    assert "https://ml.azure.com/runs/pipeline_1" in session.note
    assert "reuse is off" in session.note and "--remote_debug flags were left out" in session.note
    # the user's folders and objects are exactly as they were
    assert {f: sorted(p.name for p in f.iterdir()) for f in before} == before
    assert (train._script_name, train._allow_reuse) == ("train.py", True)
    assert train._runconfig is settings
    pip_before = list(settings.environment.python.conda_dependencies.pip_packages)
    assert "debugpy>=1.8.1,<1.9" not in pip_before
    session.stop()
    assert workspace.run.cancelled


def test_a_failed_submit_says_why_and_leaves_the_folder(project):
    tmp_path = project[0]
    before = sorted(p.name for p in (tmp_path / "train").iterdir())
    url = "https://x.blob.core.windows.net/c?sv=1&sig=SECRET123&se=2"
    workspace = StandInWorkspace([tmp_path / "train"], RuntimeError(f"quota exceeded at {url}"))
    session, target, printed = start(project, workspace)
    wait_for(lambda: session.state == "failed", 30, "the failure")
    assert all(r.status == Status.FAILED for r in session.rows)
    assert "submit failed: quota exceeded" in session.rows[1].detail
    assert "SECRET123" not in "\n".join(printed) and "sig=REDACTED" in session.rows[1].detail
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == before


def add_child(workspace, azurite, name, layout="user_logs/std_log.txt"):
    child = Run(f"{name}_run", name=name, status="Running")
    log = azurite.append_blob(f"{workspace.run.id}/{child.id}/{layout}")
    child.log_files = {layout: log.url()}
    workspace.run.children.append(child)
    return child, log


def announcement_line(rank=0, port=5678, host="10.0.0.4") -> str:
    return format_announcement(Announcement(
        addresses=(host,), port=port, rank=rank, attach_deadline=1.8e9,
        script="/mnt/azureml/cr/j/abc/exe/wd/train.py", cwd="/mnt/azureml/cr/j/abc/exe/wd"))


def test_follows_a_step_that_announces_late_then_ends(project, azurite):
    tmp_path = project[0]
    workspace = StandInWorkspace([])
    session, target, printed = start(project, workspace)
    prep, _ = add_child(workspace, azurite, "prep")
    prep.status = "Completed"
    train, log = add_child(workspace, azurite, "train")
    wait_for(lambda: "waiting for its log to say where to attach" in session.row("train").detail,
             30, "the waiting message")
    assert "user_logs/std_log.txt" in session.row("train").detail
    log.append("Installing debugpy\n" + announcement_line() + "\nip_address: 10.0.0.4\n")
    row = session.row("train")
    wait_for(lambda: row.status == Status.WAITING, 30, "the announcement")
    assert row.address == "10.0.0.4:5678"
    config = row.attach_config()
    assert config["pathMappings"] == [{"localRoot": str(tmp_path / "train"),
                                       "remoteRoot": "/mnt/azureml/cr/j/abc/exe/wd"}]
    wait_for(lambda: row.reachability, 30, "the probe")
    assert row.reachability == "10.0.0.4:5678 is reachable from this machine"
    log.append(format_announcement(Announcement(("10.0.0.4",), 5678)).replace(
        "announce", "outcome").split(" {")[0] + ' {"attached": true, "pid": 1, "rank": 0}\n')
    wait_for(lambda: row.status == Status.ATTACHED, 30, "the attach")
    train.status = "Completed"
    workspace.run.status = "Completed"
    wait_for(lambda: session.state == "finished", 30, "the run to end")
    assert [r.status for r in session.rows] == [Status.FINISHED, Status.FINISHED]
    assert "Installing debugpy" in row.last_lines


def test_old_layout_multi_node_and_tags(project, azurite):
    workspace = StandInWorkspace([])
    session, target, printed = start(project, workspace)
    train = Run("train_run", name="train", status="Running")
    logs = [azurite.append_blob(f"p/train/azureml-logs/70_driver_log_{n}.txt") for n in (0, 1)]
    train.log_files = {
        f"azureml-logs/70_driver_log_{n}.txt": log.url() for n, log in enumerate(logs)
    }
    workspace.run.children.append(train)
    logs[1].append(announcement_line(rank=1, port=5679, host="10.0.0.5") + "\n")
    train.tags = {tag_key(0): announcement_line(rank=0, port=5678)}  # rank 0's log is late
    wait_for(lambda: len([r for r in session.rows if r.step == "train" and r.address]) == 2,
             30, "both ranks to announce")  # rank 1 from its log, rank 0 from the tags
    assert {(r.rank, r.address) for r in session.rows if r.step == "train"} == {
        (0, "10.0.0.4:5678"), (1, "10.0.0.5:5679")}
    session.stop()


def test_a_step_that_fails_before_announcing_shows_its_last_lines(project, azurite):
    workspace = StandInWorkspace([])
    session, target, printed = start(project, workspace)
    train, log = add_child(workspace, azurite, "train")
    log.append("Traceback (most recent call last):\nModuleNotFoundError: No module named 'torch'\n")
    wait_for(lambda: "No module named 'torch'" in "\n".join(session.row("train").last_lines),
             30, "the log lines")
    train.status = "Failed"
    workspace.run.status = "Failed"
    wait_for(lambda: session.state == "failed", 30, "the failure")
    assert session.row("train").status == Status.FAILED
    assert session.row("prep").status == Status.NOT_RUN
    assert any("ModuleNotFoundError" in line for line in printed)  # the text view shows them


def test_a_cancelled_run_stops_the_rows(project, azurite):
    workspace = StandInWorkspace([])
    session, target, printed = start(project, workspace)
    train, log = add_child(workspace, azurite, "train")
    wait_for(lambda: session.row("train").status == Status.RUNNING, 30, "running")
    workspace.run.cancel()  # cancelled in the studio
    wait_for(lambda: session.state == "failed", 30, "the end")
    assert session.row("train").status == Status.STOPPED


def test_reachability_tells_refused_timed_out_and_guide_listeners_apart():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        ours = Announcement(("127.0.0.1",), port)
        assert reachability(ours) == f"127.0.0.1:{port} is reachable from this machine"
    assert "refused the connection" in reachability(Announcement(("127.0.0.1",), port))
    far = reachability(Announcement(("10.0.0.4",), 5678), lambda h, p: "timed out")
    assert "same virtual network" in far
    assert "ssh azureuser@PUBLIC_IP -p 50000 -L 5678:10.0.0.4:5678" in far
    assert "localhost:5678" in far
    probed = []
    guide = Announcement(("10.0.0.4",), 5678, source="guide")
    assert "not probed" in reachability(guide, lambda h, p: probed.append(h) or "reachable")
    assert probed == []


def test_building_the_runconfig_warns_of_nothing_deprecated(project):
    settings = project[4]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        built = debug_runconfig(settings)
    assert built.docker.use_docker
    assert strip_guide_flags(["--remote_debug_port=5678", "--x", 1]) == (["--x", 1], True)


def test_magic_with_azureml_target_needs_a_workspace(ip, tmp_path):
    (tmp_path / "job.py").write_text("print(1)\n")
    with pytest.raises(UsageError, match="needs a ScriptRunConfig variable"):
        ip.run_line_magic("aml_debug_run", "--target azureml job.py")
    ip.run_cell("from azureml.core import ScriptRunConfig\n"
                "config = ScriptRunConfig(source_directory='.', script='job.py')")
    with pytest.raises(UsageError, match="no Azure ML workspace: pass --workspace"):
        ip.run_line_magic("aml_debug_run", "--target azureml config")
    assert current_session("run") is None


@pytest.mark.skipif(not os.environ.get("AML_DEBUG_WORKSPACE_CONFIG"),
                    reason="set AML_DEBUG_WORKSPACE_CONFIG to a workspace config.json to run "
                           "against a real Azure ML workspace")
def test_live_against_a_real_workspace(ip, tmp_path):
    (tmp_path / "job.py").write_text(textwrap.dedent("""\
        import sys
        print("live", sys.argv[1:])
    """))
    ip.run_cell(
        "from azureml.core import Workspace, ScriptRunConfig\n"
        f"ws = Workspace.from_config({os.environ['AML_DEBUG_WORKSPACE_CONFIG']!r})\n"
        "config = ScriptRunConfig(source_directory='.', script='job.py', arguments=['x'],"
        f" compute_target={os.environ.get('AML_DEBUG_COMPUTE', 'cpu-cluster')!r})"
    )
    ip.run_line_magic("aml_debug_run", "--target azureml --workspace ws --timeout 60 config")
    session = current_session("run")
    wait_for(lambda: session.rows[0].announcement, 1800, "the node to announce itself")
    wait_for(lambda: session.state in ("finished", "failed"), 1800, "the run to end")
    assert session.state == "finished"


def test_allow_any_is_passed_on_and_warned_about(project):
    workspace = StandInWorkspace([])
    session, target, printed = start(project, workspace, allow="any")
    wait_for(lambda: workspace.submitted, 30, "the submit")
    arguments = workspace.submitted[0]["items"][1]["_arguments"]
    assert arguments[arguments.index("--allow") + 1] == "any"
    wait_for(lambda: session.note.startswith("--allow any: anyone who reaches the node's port"),
             10, "the warning on the panel")
    session.stop()


class FlakyRun(Run):
    """A run whose control-plane calls fail ``failures`` times first (the SDK raising on a
    transient service error, with a SAS URL in its message), then answer."""

    def __init__(self, failures: int) -> None:
        super().__init__("pipeline_1", status="Running")
        self.failures = failures

    def get_children(self) -> list[Run]:
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("ServiceError: GET https://acct.blob.core.windows.net/x?sv=1"
                               "&sig=SeCrEt%2B&se=2 failed: 503")
        return super().get_children()


def test_a_transient_control_plane_error_is_shown_redacted_and_following_goes_on(project):
    workspace = StandInWorkspace([])
    workspace.run = FlakyRun(failures=2)
    session, target, printed = start(project, workspace)
    wait_for(lambda: "could not follow the run (RuntimeError" in session.note, 10, "the problem")
    assert "SeCrEt" not in session.note and "sig=REDACTED" in session.note
    wait_for(lambda: workspace.run.failures == 0 and session.note.startswith("run pipeline_1"),
             10, "the note to be clean again")
    assert target._follower.is_alive()
    workspace.run.status = "Completed"
    assert session.wait(10) == "finished"


def test_a_control_plane_that_keeps_failing_is_said_and_stays_stoppable(project):
    workspace = StandInWorkspace([])
    workspace.run = FlakyRun(failures=10_000)
    session, target, printed = start(project, workspace)
    wait_for(lambda: "not following the run: 5 failures in a row" in session.note, 30,
             "the give-up note")
    assert "SeCrEt" not in session.note and "Stop cancels the run" in session.note
    session.stop()
    assert workspace.run.cancelled and not target._follower.is_alive()
    assert not any("SeCrEt" in line for line in printed)


def sdk_v1_statuses() -> set[str]:
    """Every run status azureml-core names, and those a PipelineRun's steps report."""
    from azureml._restclient.constants import RunStatus

    return {*RunStatus.list(), "Finished", "PartiallyExecuted", "Bypassed", "Unknown"}


def test_the_sdk_v1_lists_are_the_ones_the_rows_are_tested_against():
    """``Run.wait_for_completion`` waits through the running and post-processing lists
    (NotResponding and Paused among them: a run may come back from both);
    ``PipelineRun.wait_for_completion`` through its own (Unknown among them)."""
    from aml_debug_magics.targets.statuses import going_on_statuses

    ended = sdk_v1_statuses() - going_on_statuses("v1")
    assert ended == {"Completed", "Failed", "Canceled", "Finished", "PartiallyExecuted",
                     "Bypassed"}


@pytest.mark.parametrize("status", sorted(sdk_v1_statuses()))
def test_every_run_status_is_said_in_words_and_every_terminal_one_ends_the_session(
    project, azurite, status
):
    from aml_debug_magics.targets.statuses import going_on_statuses, in_words

    workspace = StandInWorkspace([])
    session, target, printed = start(project, workspace)
    train, log = add_child(workspace, azurite, "train")
    train.status = workspace.run.status = status
    row = session.row("train")
    words = in_words(status)
    wait_for(lambda: words in row.detail or words == str(row.status), 10,
             f"{status} in words on the row")
    if any(c.isupper() for c in status[1:]):
        assert status not in row.detail
    if status in going_on_statuses("v1"):
        assert session.wait(0.5) == "running"
        session.stop()
    else:
        assert session.wait(10) == ("finished" if status in ("Completed", "Finished")
                                    else "failed")
