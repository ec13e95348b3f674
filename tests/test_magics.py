"""The magics, driven exactly as a user types them, on the local target with a real debugger."""

from __future__ import annotations

import gc
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from conftest import REPO, children_of, free_port, need_python_script_step, port_refuses, wait_for
from dap_client import DapClient, evaluate_at_first_stop
from IPython.core.error import UsageError

from aml_debug_magics.records import Status
from aml_debug_magics.session import current_session

pytestmark = pytest.mark.every_python(
    "IPython and the magics' parsing, help and one-line errors, and the local target, under "
    "this kernel's Python"
)


PREP = textwrap.dedent(
    """\
    import argparse, pathlib
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    args = parser.parse_args()
    pathlib.Path(args.out, "numbers.txt").write_text("1 2 3 4\\n")
    print("prepared", args.out)
    """
)
TRAIN = textwrap.dedent(
    """\
    import argparse, os, pathlib
    parser = argparse.ArgumentParser()
    parser.add_argument("--data")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--model")
    args = parser.parse_args()
    numbers = [int(n) for n in pathlib.Path(args.data, "numbers.txt").read_text().split()]
    weight = sum(numbers) * args.lr
    pathlib.Path(args.model, "weight.txt").write_text(str(weight))
    print("trained", weight, os.environ["STEP_COLOUR"])
    """
)
TRAIN_BREAK = 8  # weight = ...
EVALUATE = textwrap.dedent(
    """\
    import pathlib, sys
    print("evaluated", pathlib.Path(sys.argv[1], "weight.txt").read_text())
    """
)
PIPELINE_CELL = """
from azureml.core import RunConfiguration
from azureml.data import OutputFileDatasetConfig
from azureml.pipeline.core import PipelineData, PipelineParameter
from azureml.pipeline.steps import PythonScriptStep


settings = RunConfiguration()
settings.environment_variables = {"STEP_COLOUR": "teal"}
prepared = PipelineData("prepared")
model = OutputFileDatasetConfig(name="model")
learning_rate = PipelineParameter("learning_rate", default_value=0.5)
prep = PythonScriptStep(name="prep", script_name="prep.py", source_directory="prep",
                        arguments=["--out", prepared], outputs=[prepared])
train = PythonScriptStep(name="train", script_name="train.py", source_directory="train",
                         arguments=["--data", prepared, "--lr", learning_rate, "--model", model],
                         inputs=[prepared], runconfig=settings)
evaluate = PythonScriptStep(name="evaluate", script_name="evaluate.py", source_directory="train",
                            arguments=[model.as_input()])
steps = [prep, train, evaluate]
"""


@pytest.fixture
def pipeline(ip, tmp_path):
    """Three steps built with the real SDK classes: prep -> PipelineData -> train -> evaluate."""
    need_python_script_step()
    for folder, name, text in (
        ("prep", "prep.py", PREP), ("train", "train.py", TRAIN), ("train", "evaluate.py", EVALUATE)
    ):
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / name).write_text(text)
    assert ip.run_cell(PIPELINE_CELL).success
    return tmp_path


def panel_row(session, step: str):
    return next(w for w in session.view.rows if w.row.step == step)


def attach(config: dict, breakpoints: dict[str, list[int]]) -> DapClient:
    client = DapClient.connect(config["connect"]["host"], config["connect"]["port"])
    client.attach(config, breakpoints)
    return client


def test_pipeline_step_stops_at_a_breakpoint_and_feeds_the_next_step(ip, pipeline):
    ip.run_line_magic("config", "AmlDebugMagics.view = 'widgets'")
    ip.run_line_magic("aml_debug_pipeline", "steps --step train --timeout 60")
    session = current_session("pipeline")
    train = panel_row(session, "train")
    wait_for(lambda: train.row.status == Status.WAITING, 60, "train to wait for a debugger")
    # the panel shows the row's news once the view has refreshed it: wait for what the user sees
    wait_for(lambda: train.copy.text and "127.0.0.1" in train.address.value, 30,
             "the panel to show the attach config")
    assert [r.status for r in session.rows if r.step == "prep"] == [Status.FINISHED]
    config = json.loads(train.copy.text)  # exactly what the Copy button puts on the clipboard
    assert train.address.value == f"<code>127.0.0.1:{config['connect']['port']}</code>"

    client = attach(config, {str(pipeline / "train" / "train.py"): [TRAIN_BREAK]})
    try:
        frame = client.wait_stopped()
        assert frame["line"] == TRAIN_BREAK
        assert client.evaluate(frame, "args.lr") == "0.5"
        assert client.evaluate(frame, "numbers") == "[1, 2, 3, 4]"
        wait_for(lambda: train.row.status == Status.ATTACHED, 10, "the row to say attached")
        client.resume()
    finally:
        client.close()
    wait_for(lambda: session.state == "finished", 60, "the pipeline to finish")
    assert [r.status for r in session.rows] == [Status.FINISHED] * 3
    assert "trained 5.0 teal" in session.row("train").last_lines
    assert "evaluated 5.0" in session.row("evaluate").last_lines
    assert port_refuses("127.0.0.1", config["connect"]["port"])


def test_a_failing_step_stops_the_rest_and_shows_why(ip, pipeline):
    (pipeline / "prep" / "prep.py").write_text("raise SystemExit('no input data found')\n")
    ip.run_line_magic("aml_debug_pipeline", "steps --step train")
    session = current_session("pipeline")
    wait_for(lambda: session.state == "failed", 30, "the pipeline to fail")
    prep, train, evaluate = session.rows
    assert (prep.status, prep.detail, prep.exit_code) == (Status.FAILED, "exit status 1", 1)
    assert "no input data found" in prep.last_lines
    assert train.status == evaluate.status == Status.NOT_RUN
    assert train.detail == "step 'prep' failed"


def test_run_magic_debugs_a_script_with_its_arguments(ip, tmp_path, capsys):
    script = tmp_path / "score_me.py"
    script.write_text("import sys\nvalue = int(sys.argv[1]) * 2\nprint('value', value)\n")
    ip.run_line_magic("aml_debug_run", "--timeout 60 --write-launch-json score_me.py 21")
    session = current_session("run")
    row = session.rows[0]
    wait_for(lambda: session.message.startswith("wrote"), 30, "the attach config to be written")
    shown = capsys.readouterr().out  # terminal IPython: the facts print as text
    assert f"attach to {row.address}" in shown and '"request": "attach"' in shown
    written = json.loads((tmp_path / ".vscode" / "launch.json").read_text())["configurations"]
    assert written == [row.attach_config()]
    assert f"wrote {written[0]['name']!r} to {tmp_path}/.vscode/launch.json" in shown
    assert evaluate_at_first_stop(row.attach_config(), {str(script): [3]}, "value") == "42"
    wait_for(lambda: session.state == "finished", 30, "the script to end")
    assert "value 42" in row.last_lines


def test_run_magic_takes_a_script_run_config(ip, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "job.py").write_text("import sys\nprint('args', sys.argv[1:])\n")
    assert ip.run_cell(
        "from azureml.core import ScriptRunConfig\n"
        "config = ScriptRunConfig(source_directory='src', script='job.py', "
        "arguments=['--epochs', 3])"
    ).success
    ip.run_line_magic("aml_debug_run", "--timeout 0.5 config")
    session = current_session("run")
    wait_for(lambda: session.state == "finished", 30, "the run to end")
    row = session.rows[0]
    assert row.status == Status.FINISHED
    assert "args ['--epochs', '3']" in row.last_lines
    assert row.local_root == tmp_path / "src"


def test_config_sets_the_defaults(ip, tmp_path):
    (tmp_path / "job.py").write_text("print('hi')\n")
    ip.run_line_magic("config", "AmlDebugMagics.timeout = 600")
    ip.run_line_magic("aml_debug_run", "job.py")
    session = current_session("run")
    wait_for(lambda: session.rows[0].announcement, 30, "the announcement")
    left = session.rows[0].announcement.attach_deadline - session.clock()
    assert session.request.timeout == 600 and 590 < left <= 600


def test_rerunning_stops_the_previous_session_and_stop_closes_the_port(ip, tmp_path):
    (tmp_path / "job.py").write_text("print('hi')\n")
    ip.run_line_magic("aml_debug_run", "job.py")
    first = current_session("run")
    wait_for(lambda: first.rows[0].address, 30, "the first announcement")
    first_port = first.rows[0].announcement.port
    ip.run_line_magic("aml_debug_run", "job.py")
    assert first.state == "stopped" and first.rows[0].status == Status.STOPPED
    assert port_refuses("127.0.0.1", first_port)
    second = current_session("run")
    wait_for(lambda: second.rows[0].address, 30, "the second announcement")
    ip.run_line_magic("aml_debug_run", "--stop")
    assert second.state == "stopped"
    assert port_refuses("127.0.0.1", second.rows[0].announcement.port)
    assert children_of() == []


def test_rerunning_with_the_same_fixed_port_stops_the_old_session_first(ip, tmp_path):
    (tmp_path / "job.py").write_text("print('hi')\n")
    port = free_port()
    ip.run_line_magic("aml_debug_run", f"--port {port} job.py")
    first = current_session("run")
    wait_for(lambda: first.rows[0].address, 30, "the first announcement")
    ip.run_line_magic("aml_debug_run", f"--port {port} job.py")
    second = current_session("run")
    assert first.state == "stopped" and second is not first
    wait_for(lambda: second.rows[0].address, 30, "the second announcement")
    assert second.rows[0].announcement.port == port


def test_stop_needs_no_pipeline(ip, capsys):
    ip.run_line_magic("aml_debug_pipeline", "--stop")
    assert "no %aml_debug_pipeline session is running" in capsys.readouterr().out


def test_a_privileged_port_says_it_needs_privileges():
    """Run as the unprivileged user ``nobody`` (the tests run as root here, who may bind 80),
    with the system's Python 3 (the test environment's lies under root's home)."""
    if Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text().strip() == "0":
        pytest.skip("this machine lets anyone bind every port")
    python, user = sys.executable, None
    if os.geteuid() == 0:
        python, user = "/usr/bin/python3", 65534
        if not os.access(python, os.X_OK):
            pytest.skip("no /usr/bin/python3 to run as nobody")
    code = "from aml_debug_magics.ports import check_port_free\ncheck_port_free(80)"
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, user=user,
                          cwd="/", env={"PYTHONPATH": str(REPO), "PATH": os.environ["PATH"]})
    assert "port 80 needs privileges to bind (ports below 1024 are root's)" in done.stderr


def test_unload_ext_stops_every_session(ip, tmp_path):
    (tmp_path / "job.py").write_text("print('hi')\n")
    ip.run_line_magic("aml_debug_run", "job.py")
    session = current_session("run")
    wait_for(lambda: session.rows[0].address, 30, "the announcement")
    ip.run_line_magic("unload_ext", "aml_debug_magics")
    assert session.state == "stopped"
    assert port_refuses("127.0.0.1", session.rows[0].announcement.port)
    ip.run_line_magic("load_ext", "aml_debug_magics")  # the fixture unloads it again


def test_help_is_real(ip, capsys):
    ip.run_cell("%aml_debug_pipeline?")
    text = capsys.readouterr().out
    assert "%aml_debug_pipeline [--step NAME]" in text
    assert "--timeout TIMEOUT" in text and "dependency order" in text
    ip.run_cell("%aml_debug_run?")
    assert "ScriptRunConfig" in capsys.readouterr().out


@pytest.fixture
def busy_port():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


@pytest.mark.parametrize(
    ("magic", "line", "message"),
    [
        ("aml_debug_pipeline", "nowhere", "no variable named 'nowhere' in this notebook"),
        ("aml_debug_pipeline", "a_dict", "'a_dict' is a dict: give an Azure ML Pipeline"),
        ("aml_debug_pipeline", "", "give the pipeline: %aml_debug_pipeline VARIABLE"),
        ("aml_debug_run", "missing.py", "script not found: missing.py"),
        ("aml_debug_run", "", "give a script"),
        ("aml_debug_run", "--timeout 0 job.py", "--timeout must be more than 0 and at most"),
        ("aml_debug_run", "--timeout -5 job.py", "--timeout must be more than 0 and at most"),
        ("aml_debug_run", "--timeout inf job.py", "at most 86400 seconds (got inf)"),
        ("aml_debug_run", "--timeout 90000 job.py", "at most 86400 seconds (got 90000)"),
        ("aml_debug_run", "--ranks 0,x job.py", "--ranks takes 'all' or rank numbers"),
        ("aml_debug_run", "--allow 10.0.0.x job.py", "--allow takes any, or addresses"),
        ("aml_debug_run", "--ranks=-1 job.py", "--ranks takes 'all' or rank numbers"),
        ("aml_debug_run", "--port {busy} job.py", "port {busy} is in use on 127.0.0.1"),
        ("aml_debug_run", "--port 70000 job.py", "--port must be between 0 and 65535"),
        ("aml_debug_run", "--connect nowhere job.py", "--connect wants HOST:PORT"),
        ("aml_debug_run", "--target elsewhere job.py", "argument --target: invalid choice"),
        ("aml_debug_run", "a_dict", "'a_dict' is a dict: give a script path or a ScriptRunConfig"),
    ],
)
def test_bad_input_is_one_line_and_starts_nothing(ip, tmp_path, busy_port, magic, line, message):
    (tmp_path / "job.py").write_text("print('hi')\n")
    ip.user_ns["a_dict"] = {"steps": []}
    with pytest.raises(UsageError) as caught:
        ip.run_line_magic(magic, line.format(busy=busy_port))
    assert message.format(busy=busy_port) in str(caught.value)
    assert "\n" not in str(caught.value)
    assert current_session(magic.removeprefix("aml_debug_")) is None
    assert children_of() == []


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("steps --step nope", "no step named 'nope'; the steps are: prep, train, evaluate"),
        ("train", "step 'train' reads 'prepared', which no step of the pipeline writes"),
        ("[]", None),
    ],
)
def test_bad_steps_are_one_line(ip, pipeline, line, message):
    if line == "[]":
        ip.user_ns["nothing"] = []
        line, message = "nothing", "'nothing' is an empty list"
    if line == "train":
        ip.run_cell("prepared._producer = None")  # as if prep were never built
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        ip.run_line_magic("aml_debug_pipeline", line)
    assert children_of() == []


def test_a_step_the_local_target_cannot_run_is_named_beside_the_one_asked_for(ip, pipeline):
    assert ip.run_cell(
        "from azureml.pipeline.steps import CommandStep\n"
        "shell = CommandStep(name='shell', command='bash run.sh', source_directory='prep',"
        " compute_target='cpu-cluster')\n"
        "both = [train, shell]"
    ).success
    with pytest.raises(UsageError) as refused:
        ip.run_line_magic("aml_debug_pipeline", "both --step train")
    assert str(refused.value) == (
        "'train' can be debugged, but the pipeline also holds step 'shell', a CommandStep, "
        "which the local target cannot run yet (it runs PythonScriptStep, ParallelRunStep and "
        "HyperDriveStep steps): use --target azureml")
    assert children_of() == []


def test_a_dataset_input_without_a_stand_in_says_which_input_to_add(ip, pipeline):
    assert ip.run_cell(
        "from azureml.data.file_dataset import FileDataset\n"
        "raw = FileDataset._create(None)\n"
        "load = PythonScriptStep(name='load', script_name='prep.py', source_directory='prep',"
        " arguments=['--out', raw.as_named_input('raw').as_mount()])"
    ).success
    with pytest.raises(UsageError, match=r"step 'load' reads the FileDataset 'raw' \(an "
                       r"unregistered dataset\), which needs an Azure ML workspace to download: "
                       r"add --input raw=PATH"):
        ip.run_line_magic("aml_debug_pipeline", "load")


def test_loading_the_extension_imports_nothing_heavy():
    code = (
        "import sys\n"
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "from traitlets.config import Config\n"
        "c = Config(); c.HistoryAccessor.enabled = False\n"
        "ip = InteractiveShell.instance(config=c)\n"
        "ip.run_line_magic('load_ext', 'aml_debug_magics')\n"
        "assert 'aml_debug_pipeline' in ip.magics_manager.magics['line']\n"
        "heavy = ('azureml', 'azure.ai.ml', 'ipywidgets', 'anywidget', 'debugpy')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m.startswith(heavy)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=Path.home()
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_an_interrupt_while_the_magic_runs_leaves_nothing_behind(ip, tmp_path, monkeypatch):
    """Ctrl-C is simulated where it can land: inside the magic, once the step's process exists."""
    from aml_debug_magics.ui.text import TextView

    (tmp_path / "job.py").write_text("print('hi')\n")
    real_refresh = TextView.refresh

    def interrupted(self, row):
        real_refresh(self, row)
        if row is None and self._session.state == "running":
            wait_for(children_of, 30, "the step's process to start")
            raise KeyboardInterrupt

    monkeypatch.setattr(TextView, "refresh", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ip.run_line_magic("aml_debug_run", "--timeout 60 job.py")
    assert current_session("run") is None
    assert children_of() == []


def test_replaced_sessions_leave_no_widgets_fds_or_folders_behind(ip, tmp_path, monkeypatch):
    from ipywidgets.widgets import widget as ipywidget

    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    tempfile.tempdir = None  # read TMPDIR again
    (tmp_path / "job.py").write_text("print('hi')\n")
    ip.run_line_magic("config", "AmlDebugMagics.view = 'widgets'")
    gc.collect()
    before = len(ipywidget._instances)  # other tests' widgets, made before this one
    seen = []
    try:
        for _ in range(6):
            ip.run_line_magic("aml_debug_run", "--timeout 1 job.py")
            assert current_session("run").wait(30) == "finished"
            gc.collect()
            seen.append((len(ipywidget._instances), len(os.listdir("/proc/self/fd"))))
        ip.run_line_magic("aml_debug_run", "--stop")
    finally:
        tempfile.tempdir = None
    gc.collect()
    assert len({widgets for widgets, _ in seen[1:]}) == 1  # one session's worth, not growing
    assert len({fds for _, fds in seen[1:]}) == 1
    assert len(ipywidget._instances) == before
    assert list((tmp_path / "tmp").iterdir()) == []  # a run without data makes no folder
