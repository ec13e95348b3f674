"""Breakpoints bind in a script that sits in a subfolder of its source folder, on every target.

The attach config's ``pathMappings`` pairs the user's source folder with the folder the node
placed it in (the snapshot's root, the code folder, the scoring app's root), whatever the
script's depth. Each end-to-end case sets the breakpoint by the LOCAL file's path and asserts
the stop is in that file: a wrong mapping still "verifies" a breakpoint, only a stop proves it.
"""

from __future__ import annotations

import textwrap
from pathlib import Path, PurePosixPath

import pytest
from conftest import children_of, need_python_script_step, run_bootstrap, wait_for
from dap_client import evaluate_at_first_stop
from test_deploy import read_in_run
from test_system import make_cluster  # noqa: F401  (the simulated cluster's fixture)

from aml_debug_magics.launch import attach_config, path_mapping
from aml_debug_magics.node.announce import Announcement, format_announcement, parse_line
from aml_debug_magics.records import Status
from aml_debug_magics.session import current_session

TRAIN = textwrap.dedent(
    """\
    import sys
    from helpers import scale

    numbers = [int(n) for n in sys.argv[1:]]
    total = scale(sum(numbers))
    print("total", total, flush=True)
    """
)
TRAIN_BREAK = 5  # total = ...
HELPERS = "def scale(value):\n    return value * 2\n"


@pytest.fixture
def source(tmp_path):
    """``src/steps/train.py`` importing ``src/steps/helpers.py``: the script one level down."""
    steps = tmp_path / "src" / "steps"
    steps.mkdir(parents=True)
    (steps / "train.py").write_text(TRAIN)
    (steps / "helpers.py").write_text(HELPERS)
    return tmp_path / "src"


def debug_subfolder_run(ip, arguments: str, options: str):
    """``%aml_debug_run`` on ``ScriptRunConfig(source_directory='src',
    script='steps/train.py', arguments=ARGUMENTS)`` as a user types it; the session and its row,
    once the script waits for a debugger."""
    assert ip.run_cell(
        "from azureml.core import ScriptRunConfig\n"
        "config = ScriptRunConfig(source_directory='src', script='steps/train.py', "
        f"arguments={arguments})\n"
        "ws = object()  # what --workspace names; the cluster stands in for the control plane"
    ).success
    ip.run_line_magic("aml_debug_run", f"{options} config")
    session = current_session("run")
    row = session.rows[0]
    wait_for(lambda: row.status == Status.WAITING, 90, "the script to wait for a debugger")
    return session, row


# -- the mapping itself ---------------------------------------------------------------------


def test_the_snapshot_root_pairs_with_the_source_folder_at_any_depth():
    node = Announcement(("10.0.0.4",), 5678, script="/mnt/azureml/wd/steps/deep/train.py")
    assert path_mapping(node, Path("/home/me/src"), "steps/deep/train.py") == (
        Path("/home/me/src"), "/mnt/azureml/wd")
    config = attach_config(node, "/home/me/src", script_in_root="steps/deep/train.py")
    assert config["pathMappings"] == [{"localRoot": "/home/me/src",
                                       "remoteRoot": "/mnt/azureml/wd"}]


def test_a_source_root_the_node_was_told_wins_after_a_change_of_folder():
    """``cd src && python train.py``: the node runs from <code>/src, the code folder is above."""
    node = Announcement(("10.0.0.4",), 5678, script="/mnt/code/src/train.py",
                        cwd="/mnt/code/src", source_root="/mnt/code")
    assert path_mapping(node, Path("/home/me/job"), "train.py") == (Path("/home/me/job"),
                                                                     "/mnt/code")
    assert parse_line(format_announcement(node)) == node  # the root travels in the line


def test_without_what_the_row_knows_the_scripts_own_folders_pair():
    node = Announcement(("10.0.0.4",), 5678, script="/mnt/wd/train.py")
    assert path_mapping(node, Path("/home/me/src")) == (Path("/home/me/src"), "/mnt/wd")
    moved = Announcement(("10.0.0.4",), 5678, script="/elsewhere/train.py",
                         source_root="/mnt/code")  # not inside the root it was told
    assert path_mapping(moved, Path("/home/me/src"), "steps/train.py") == (
        Path("/home/me/src/steps"), "/elsewhere")
    windows = Announcement(("10.0.0.4",), 5678, script="C:\\work\\steps\\train.py")
    assert path_mapping(windows, Path("/home/me/src"), "steps/train.py") == (
        Path("/home/me/src"), "C:\\work")
    assert path_mapping(Announcement(("h",), 1, cwd="/only/cwd"), Path("/x")) == (
        Path("/x"), "/only/cwd")


# -- the local target ------------------------------------------------------------------------


def test_a_script_run_config_with_a_subfolder_script_stops_at_the_local_breakpoint(ip, source):
    session, row = debug_subfolder_run(ip, "[3, 4]", "--timeout 60")
    assert row.attach_config()["pathMappings"][0]["localRoot"] == str(source)
    local = source / "steps" / "train.py"
    assert evaluate_at_first_stop(row.attach_config(), {str(local): [TRAIN_BREAK]},
                                  "numbers") == "[3, 4]"
    assert session.wait(60) == "finished"
    assert "total 14" in row.last_lines
    assert children_of() == []


def test_a_pipeline_step_with_a_subfolder_script_stops_at_the_local_breakpoint(ip, source):
    need_python_script_step()
    assert ip.run_cell(
        "from azureml.pipeline.steps import PythonScriptStep\n"
        "train = PythonScriptStep(name='train', source_directory='src', "
        "script_name='steps/train.py', arguments=['5', '6'], compute_target='cpu-cluster')"
    ).success
    ip.run_line_magic("aml_debug_pipeline", "train --timeout 60")
    session = current_session("pipeline")
    row = session.row("train")
    wait_for(lambda: row.status == Status.WAITING, 60, "the step to wait for a debugger")
    local = source / "steps" / "train.py"
    assert evaluate_at_first_stop(row.attach_config(), {str(local): [TRAIN_BREAK]},
                                  "numbers") == "[5, 6]"
    assert session.wait(60) == "finished"
    assert "total 22" in row.last_lines


def test_python_m_runs_a_module_from_the_working_folder_under_the_debugger(tmp_path):
    """``-- -m pkg.train`` is what ``python -m pkg.train`` does: the module found from the
    working folder, ``sys.argv[0]`` its file, exit status intact; the announcement names the
    module's file (nothing of the package runs before the wait)."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("print('package imported', flush=True)\n")
    (package / "train.py").write_text(
        "import sys\nprint('argv', sys.argv[1:], sys.argv[0].endswith('train.py'))\n"
        "sys.exit(5)\n")
    done = run_bootstrap("--listen", "127.0.0.1:0", "--timeout", "0.5", "--", "-m",
                         "pkg.train", "--lr", "0.1", cwd=tmp_path)
    assert done.returncode == 5, done.stderr
    lines = done.stdout.splitlines()
    [announcement] = [a for a in map(parse_line, lines) if isinstance(a, Announcement)]
    assert announcement.script == str(package / "train.py")
    assert lines.index("package imported") > lines.index(format_announcement(announcement))
    assert "argv ['--lr', '0.1'] True" in lines
    missing = run_bootstrap("--timeout", "1", "--", "-m", "pkg.nothing", cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip() == (f"aml-debug: error: module not found: pkg.nothing "
                                      f"(working directory {tmp_path})")


# -- the scoring script ----------------------------------------------------------------------


def test_a_scoring_script_in_a_subfolder_stops_in_run(ip, tmp_path):
    from test_deploy import RUN_BREAK, SCORE

    (tmp_path / "app" / "score").mkdir(parents=True)
    (tmp_path / "app" / "score" / "score.py").write_text(SCORE)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.json").write_text('{"w": [1.0, 1.0]}')
    ip.run_line_magic("aml_debug_deploy", "--entry-script score/score.py --source-dir app "
                      "--model-dir model --sample-request '{\"data\": [[2, 3]]}' --timeout 60")
    session = current_session("deploy")
    row = session.rows[0]
    wait_for(lambda: session.service.health == "healthy", 60, "the server to be healthy")
    wait_for(lambda: row.announcement, 30, "the worker to announce the debugger")
    assert row.attach_config()["pathMappings"][0]["localRoot"] == str(tmp_path / "app")
    local = tmp_path / "app" / "score" / "score.py"
    assert read_in_run(session, local, RUN_BREAK, "prediction") == ["[5.0]"]
    ip.run_line_magic("aml_debug_deploy", "--stop")
    assert children_of() == []


# -- on a node of the simulated cluster -----------------------------------------------------


def test_on_a_node_a_subfolder_script_stops_at_the_local_breakpoint(ip, source, make_cluster):  # noqa: F811
    """The snapshot is a copy in another folder on another network host: the stop in the local
    file proves the mapping from the source folder to the snapshot's root."""
    cluster = make_cluster()
    session, row = debug_subfolder_run(
        ip, "['1', '2'], compute_target='cpu-cluster'",
        "--target azureml --workspace ws --timeout 120")
    remote_root = row.attach_config()["pathMappings"][0]["remoteRoot"]
    assert PurePosixPath(remote_root).parent == cluster.root / "snapshots"
    local = source / "steps" / "train.py"
    assert evaluate_at_first_stop(row.attach_config(), {str(local): [TRAIN_BREAK]},
                                  "numbers") == "[1, 2]"
    assert session.wait(60) == "finished"
