"""A script that starts a child and exits, or is stopped: nothing of it runs after the step
ends or after Stop, as on Azure ML, where a job's processes end with its main one.

Real subprocesses through the magics (``%aml_debug_run``, ``%aml_debug_pipeline``,
``%aml_debug_job``); the child is a real ``sleep`` or a Python that ignores SIGTERM. The
tests read its state from ``/proc``: a child ended and not reaped (this machine's init may not
reap orphans) is a zombie, which runs nothing.
"""

from __future__ import annotations

import os
import signal
import textwrap
from pathlib import Path

import pytest
from conftest import wait_for

from aml_debug_magics.records import Status
from aml_debug_magics.session import current_session

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")

FORKS_AND_EXITS = textwrap.dedent(
    """\
    import subprocess
    child = subprocess.Popen(["sleep", "600"])
    print("child", child.pid, flush=True)
    """
)
# the child ignores SIGTERM, as a worker with its own handler may: only SIGKILL ends it
FORKS_AND_WAITS = textwrap.dedent(
    """\
    import subprocess, time
    child = subprocess.Popen(["bash", "-c", "trap '' TERM; echo SIGTERM trapped; exec sleep 600"])
    print("child", child.pid, flush=True)
    time.sleep(600)
    """
)


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def printed_child(row) -> int | None:
    """The pid the script printed (``child PID``), once it has."""
    return next((int(line.split()[1]) for line in row.last_lines
                 if line.startswith("child ") and line.split()[1].isdigit()), None)


def child_of(row) -> int:
    child = printed_child(row)
    assert child is not None, f"the script printed no child: {list(row.last_lines)}"
    return child


@pytest.fixture
def project(ip, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "forks.py").write_text(FORKS_AND_EXITS)
    (tmp_path / "src" / "waits.py").write_text(FORKS_AND_WAITS)
    (tmp_path / "src" / "after.py").write_text("print('after', flush=True)\n")
    return tmp_path


def test_a_child_the_script_leaves_running_ends_with_the_step(ip, project):
    ip.run_line_magic("aml_debug_run", "--timeout 1 --post-mortem off src/forks.py")
    session = current_session("run")
    assert session.wait(60) == "finished"
    child = child_of(session.rows[0])
    try:
        assert not running(child)
        session.stop()  # the panel's Stop, after the end: nothing to end, no error
        assert not running(child)
    finally:
        if running(child):
            os.kill(child, signal.SIGKILL)


def test_in_a_pipeline_the_first_steps_child_is_gone_before_the_next_step_runs(ip, project):
    assert ip.run_cell(
        "from azureml.core import RunConfiguration\n"
        "from azureml.pipeline.steps import PythonScriptStep\n"
        "first = PythonScriptStep(name='first', script_name='forks.py', source_directory='src',"
        " runconfig=RunConfiguration())\n"
        "second = PythonScriptStep(name='second', script_name='after.py', "
        "source_directory='src', runconfig=RunConfiguration())\n"
        "second.run_after(first)\n"
        "steps = [first, second]"
    ).success
    ip.run_line_magic("aml_debug_pipeline", "steps --step second --timeout 1")
    session = current_session("pipeline")
    assert session.wait(60) == "finished"
    child = child_of(session.row("first"))
    assert not running(child)
    assert "after" in session.row("second").last_lines


def test_stop_ends_a_child_that_ignores_sigterm(ip, project):
    assert ip.run_cell(
        "from azure.ai.ml import command\n"
        "job = command(code='./src', command='python waits.py', "
        "environment='azureml:AzureML-sklearn-1.5@latest')"
    ).success
    ip.run_line_magic("aml_debug_job", "job --timeout 1")
    session = current_session("job")
    row = session.rows[0]
    # the child's line and the script's come in either order
    wait_for(lambda: "SIGTERM trapped" in row.last_lines and printed_child(row), 60,
             "the child to start")
    child = child_of(row)
    try:
        ip.run_line_magic("aml_debug_job", "--stop")
        assert row.status == Status.STOPPED
        assert not running(child)
    finally:
        if running(child):
            os.kill(child, signal.SIGKILL)
