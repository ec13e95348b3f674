"""End to end: a script that fails with nobody attached waits at its exception (the post-mortem);
a debugger that attaches then stops at the raise with the script's own frames and locals, and
its detach lets the process exit as python would have.

Real parts: the bootstrap run by each kind of node Python (debugpy 1.8.21 on Python 3.8, 1.8.22
on 3.13 and in this project's 3.11 environment), its real gate, a real debug-protocol client, the
real process's exit status and standard error. The attach window is missed on purpose (a short
``--timeout``): tracing stopped long before the failure, so the post-mortem starts debugpy anew.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ship_node_files, wait_for
from dap_client import DapClient
from node_pythons import node_python

from aml_debug_magics.launch import attach_config
from aml_debug_magics.node import announce
from aml_debug_magics.node.announce import AttachOutcome, Failure, LogReader
from aml_debug_magics.records import Status
from aml_debug_magics.session import current_session
from aml_debug_magics.targets.bootstrap_command import bootstrap_entry, bootstrap_options

FAILS = textwrap.dedent(
    """\
    import sys


    def fit(data, divisor):
        total = sum(data)
        return total / divisor


    def main():
        learning_rate = 0.5
        batch = [1, 2, 3]
        print("training", flush=True)
        sys.stdin.readline()  # the test says when: the attach window is long gone by then
        fit(batch, 0)


    main()
    """
)
RAISE_LINE = 6
NODES = ["3.8-node", "3.13-node", "3.11-venv"]


class FailingRun:
    """The bootstrap running ``script`` with a short attach window and ``post_mortem``."""

    def __init__(self, node: str, script: Path, post_mortem: str | None = "120") -> None:
        node_files = None
        python = sys.executable
        if node != "3.11-venv":
            python, node_files = node_python(node.split("-")[0]), ship_node_files(script.parent)
        env = dict(os.environ)
        if node_files is None:
            env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
        command = [
            python, "-u", *bootstrap_entry(node_files), *bootstrap_options(
                listen="127.0.0.1:0", connect=None, timeout=0.2, ranks="0", just_my_code=True,
                allow="any", post_mortem=post_mortem,
            ), "--", str(script),
        ]
        self.process = subprocess.Popen(
            command, cwd=script.parent, env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.output: list[str] = []
        self.reader = LogReader()

    def next_news(self, kind: type) -> object:
        """Read the output until a line of ``kind`` (an announce dataclass) comes."""
        for line in self.process.stdout:  # type: ignore[union-attr]
            self.output.append(line)
            for news in self.reader.feed(line.rstrip("\n")):
                if isinstance(news, kind):
                    return news
        raise AssertionError(f"no {kind.__name__} line: {''.join(self.output)}")

    def fail_now(self) -> Failure:
        """Let the script fail once its attach window is over; the ``failed`` line."""
        outcome = self.next_news(AttachOutcome)
        assert outcome.attached is False  # type: ignore[attr-defined]
        self.process.stdin.write("go\n")  # type: ignore[union-attr]
        self.process.stdin.flush()  # type: ignore[union-attr]
        return self.next_news(Failure)  # type: ignore[return-value]

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        out, err = self.process.communicate(timeout=timeout)
        self.output += out.splitlines(keepends=True)
        return self.process.returncode, err

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


@pytest.fixture
def script(tmp_path):
    (tmp_path / "node").mkdir()
    path = tmp_path / "node" / "train.py"
    path.write_text(FAILS)
    return path


def assert_exits_as_python_would(status: int, stderr: str, script: Path) -> None:
    assert status == 1
    lines = stderr.strip().splitlines()
    assert lines[0] == "Traceback (most recent call last):", stderr
    assert lines[-1] == "ZeroDivisionError: division by zero", stderr
    assert f'File "{script}", line {RAISE_LINE}, in fit' in stderr
    assert "aml_debug" not in stderr, stderr  # it starts in the user's code


@pytest.mark.parametrize("node", NODES)
def test_a_debugger_attached_after_the_failure_stops_at_the_raise(node, script):
    run = FailingRun(node, script)
    try:
        failure = run.fail_now()
        headline = failure.headline(str(script.parent))
        assert headline == f"ZeroDivisionError at train.py:{RAISE_LINE} in fit"
        assert failure.attach is not None
        assert failure.post_mortem_deadline is not None
        config = attach_config(failure.attach, script.parent)
        client = DapClient.connect(config["connect"]["host"], config["connect"]["port"])
        try:
            client.attach(config, {}, exception_filters=["uncaught"])
            stopped = client.event("stopped", timeout=60)
            assert stopped["reason"] == "exception"
            thread = stopped["threadId"]
            info = client.request("exceptionInfo", threadId=thread)
            assert info["exceptionId"].startswith("ZeroDivisionError")
            frames = client.request("stackTrace", threadId=thread)["stackFrames"]
            assert (frames[0]["source"]["path"], frames[0]["line"]) == (str(script), RAISE_LINE)
            assert client.locals_of(frames[0])["divisor"] == "0"  # the raising frame's own
            assert client.locals_of(frames[0])["total"] == "6"
            caller = frames[1]
            assert caller["name"] == "main"
            assert client.evaluate(caller, "learning_rate * len(batch)") == "1.5"
        finally:
            client.close()  # the detach: the process goes on to exit
        status, stderr = run.finish()
    finally:
        run.stop()
    assert_exits_as_python_would(status, stderr, script)
    assert "training\n" in run.output


@pytest.mark.parametrize("node", ["3.8-node", "3.13-node"])
def test_nobody_attaching_exits_at_the_windows_end(node, script):
    run = FailingRun(node, script, post_mortem="0.5")
    try:
        failure = run.fail_now()
        assert failure.attach is not None
        outcome = run.next_news(AttachOutcome)
        assert outcome.attached is False  # type: ignore[attr-defined]
        status, stderr = run.finish()
    finally:
        run.stop()
    assert_exits_as_python_would(status, stderr, script)


def test_post_mortem_off_names_the_failure_and_exits_at_once(script):
    run = FailingRun("3.11-venv", script, post_mortem="off")
    try:
        failure = run.fail_now()
        status, stderr = run.finish()
    finally:
        run.stop()
    assert failure.attach is None and failure.function == "fit" and failure.line == RAISE_LINE
    assert_exits_as_python_would(status, stderr, script)
    assert not any("outcome" in line for line in run.output[run.output.index(
        next(line for line in run.output if " failed " in line)):])


def test_sigterm_during_the_post_mortem_ends_the_process_at_once(script):
    run = FailingRun("3.11-venv", script, post_mortem="600")
    try:
        run.fail_now()
        run.process.send_signal(signal.SIGTERM)
        status, _ = run.finish(timeout=30)
    finally:
        run.stop()
    assert status == -signal.SIGTERM


@pytest.mark.parametrize("status", [0, 3])
def test_the_scripts_own_exit_is_no_failure(status, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(f"import sys\nsys.stdin.readline()\nsys.exit({status})\n")
    run = FailingRun("3.11-venv", script, post_mortem="600")
    try:
        run.next_news(AttachOutcome)
        run.process.stdin.write("go\n")  # type: ignore[union-attr]
        run.process.stdin.flush()  # type: ignore[union-attr]
        exit_status, stderr = run.finish(timeout=30)
    finally:
        run.stop()
    assert exit_status == status
    assert not any(" failed " in line for line in run.output)
    assert "Traceback" not in stderr


def test_an_exception_in_another_thread_is_reported_and_the_main_flow_decides(tmp_path):
    """A thread's uncaught exception is printed as Python prints it (its traceback on standard
    error); it is no failure of the script: no post-mortem wait, and the exit status is the
    main flow's."""
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent("""\
        import sys, threading
        def load():
            rows = [1, 2]
            return rows[5]
        sys.stdin.readline()
        loader = threading.Thread(target=load, name="loader")
        loader.start()
        loader.join()
        print("main goes on", flush=True)
        sys.exit(4)
        """))
    run = FailingRun("3.11-venv", script, post_mortem="600")
    try:
        run.next_news(AttachOutcome)
        run.process.stdin.write("go\n")  # type: ignore[union-attr]
        run.process.stdin.flush()  # type: ignore[union-attr]
        exit_status, stderr = run.finish(timeout=60)
    finally:
        run.stop()
    assert exit_status == 4
    assert "main goes on\n" in run.output
    assert "Exception in thread loader:" in stderr
    assert stderr.strip().splitlines()[-1] == "IndexError: list index out of range"
    assert not any(" failed " in line for line in run.output)


@pytest.mark.parametrize("value", ["-1", "soon", "0", "inf"])
def test_a_bad_post_mortem_value_is_one_line(value, script):
    result = subprocess.run(
        [sys.executable, "-m", "aml_debug_magics.node.bootstrap", "--post-mortem", value,
         "--", str(script)],
        capture_output=True, text=True, cwd=script.parent,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "--post-mortem takes seconds" in result.stderr


def test_the_failed_line_round_trips():
    attach = announce.Announcement(addresses=("10.0.0.4",), port=5678, attach_deadline=99.5)
    failure = Failure("KeyError", "'x'", "/mnt/code/steps/train.py", 42, "fit", attach, 7, 1)
    line = announce.format_failure(failure)
    assert line.startswith("AML_DEBUG v1 failed {")
    assert announce.parse_line(line) == failure
    assert failure.headline("/mnt/code") == "KeyError at steps/train.py:42 in fit"
    assert failure.post_mortem_deadline == 99.5
    assert announce.parse_line(line.replace(" v1 ", " v2 ")) is None


def test_a_failure_without_a_post_mortem_has_no_attach():
    line = announce.format_failure(Failure("ValueError", "bad", "/a.py", 1, "<module>"))
    parsed = announce.parse_line(line)
    assert isinstance(parsed, Failure) and parsed.attach is None


WAITS_THEN_FAILS = textwrap.dedent(
    """\
    import os
    import time


    def fit(data, divisor):
        total = sum(data)
        return total / divisor


    def main():
        learning_rate = 0.5
        batch = [1, 2, 3]
        while not os.path.exists("go"):  # the test says when: the window is gone by then
            time.sleep(0.02)
        fit(batch, 0)


    main()
    """
)
WAITING_RAISE_LINE = 7


def test_the_row_waits_at_the_exception_and_the_debugger_stops_there(ip, tmp_path, capsys):
    """The local target through the magic, as a user types it: the row turns to the failure
    with its own countdown, names the exception and line, offers the attach config; a real
    debug-protocol client stops at the raise; after its detach the row ends failed."""
    script = tmp_path / "train.py"
    script.write_text(WAITS_THEN_FAILS)
    ip.run_line_magic("aml_debug_run", "--timeout 0.3 --post-mortem 120 train.py")
    session = current_session("run")
    row = session.rows[0]
    wait_for(lambda: row.status == Status.TIMED_OUT, 60, "the attach window to pass")
    first_port = row.announcement.port
    (tmp_path / "go").write_text("")
    wait_for(lambda: row.status == Status.POST_MORTEM, 60, "the post-mortem")
    assert row.detail == f"ZeroDivisionError at train.py:{WAITING_RAISE_LINE} in fit"
    assert row.attachable and row.announcement.port != first_port
    assert 100 < row.seconds_left(session.clock()) <= 120
    shown = capsys.readouterr().out
    assert f"failed, waiting for a debugger at the exception attach to {row.address}" in shown
    config = row.attach_config()
    client = DapClient.connect(config["connect"]["host"], config["connect"]["port"])
    try:
        client.attach(config, {}, exception_filters=["uncaught"])
        frame = client.wait_stopped(60)
        assert (frame["source"]["path"], frame["line"]) == (str(script), WAITING_RAISE_LINE)
        assert client.locals_of(frame)["divisor"] == "0"
        wait_for(lambda: row.status == Status.ATTACHED, 30, "the row to say attached")
        caller = client.request("stackTrace", threadId=client.stopped_thread)["stackFrames"][1]
        assert client.evaluate(caller, "learning_rate * len(batch)") == "1.5"
    finally:
        client.close()
    wait_for(lambda: session.state == "failed", 60, "the script to exit")
    assert (row.status, row.exit_code) == (Status.FAILED, 1)
    assert row.detail == f"ZeroDivisionError at train.py:{WAITING_RAISE_LINE} in fit; exit status 1"
    assert "ZeroDivisionError: division by zero" in row.last_lines


def test_the_magic_refuses_a_bad_post_mortem_in_one_line(ip, tmp_path):
    from IPython.core.error import UsageError

    (tmp_path / "train.py").write_text("print('hi')\n")
    for value in ("-1", "soon"):
        with pytest.raises(UsageError, match=r"--post-mortem takes seconds .* or off"):
            ip.run_line_magic("aml_debug_run", f"--post-mortem {value} train.py")


def test_the_setting_gives_the_default(ip, tmp_path):
    (tmp_path / "train.py").write_text("print('hi')\n")
    ip.run_line_magic("config", "AmlDebugMagics.post_mortem = 'off'")
    ip.run_line_magic("aml_debug_run", "--timeout 0.3 train.py")
    session = current_session("run")
    assert session.request.post_mortem == "off"
    wait_for(lambda: session.state == "finished", 60, "the script to end")


SECRETS_THEN_FAILS = textwrap.dedent(
    """\
    import sys


    def load(url, rows):
        storage = "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0a2V5;"
        db_password = "hunter2"
        nested = {"a": [1, [2, [3, [4, [5]]]]], "url": url}
        raise KeyError("missing column " + url)


    sys.stdin.readline()
    load("https://acct.blob.core.windows.net/c/x.csv?sv=2021&sig=AbC%2Bd&se=x", list(range(5000)))
    """
)


@pytest.mark.parametrize("node", ["3.8-node", "3.13-node"])
def test_the_snapshot_in_the_log_has_every_frame_with_secrets_redacted(node, tmp_path):
    from aml_debug_magics.node.snapshot import SnapshotReader, where_text

    (tmp_path / "node").mkdir()
    script = tmp_path / "node" / "load.py"
    script.write_text(SECRETS_THEN_FAILS)
    run = FailingRun(node, script, post_mortem="off")
    try:
        run.fail_now()
        status, stderr = run.finish()
    finally:
        run.stop()
    assert status == 1
    reader = SnapshotReader()
    found = [got for line in run.output if (got := reader.feed(line.rstrip("\n")))]
    assert len(found) == 1
    rank, snapshot = found[0]
    assert rank == 0 and snapshot["exception"] == "KeyError"
    assert [frame["function"] for frame in snapshot["frames"]] == ["<module>", "load"]
    raising = snapshot["frames"][-1]
    assert (raising["file"], raising["line"]) == (str(script), 8)
    assert raising["source"][8 - raising["source_first_line"]].strip().startswith("raise KeyError")
    assert raising["locals"]["db_password"] == "REDACTED"
    assert "c2VjcmV0a2V5" not in json.dumps(snapshot) and "AbC%2Bd" not in json.dumps(snapshot)
    assert "AccountKey=REDACTED" in raising["locals"]["storage"]
    assert "[...]" in raising["locals"]["nested"]  # nested containers cut to a depth
    assert len(raising["locals"]["rows"]) < 200  # 5,000 items cut to a few
    # where, as text, matches the traceback python printed (its File lines, in order)
    printed = [line.strip() for line in stderr.splitlines() if line.strip().startswith("File")]
    shown = [line.strip() for line in where_text(snapshot).splitlines() if "File" in line]
    assert shown == printed


def test_a_snapshot_over_the_cap_keeps_the_raising_frame_and_says_what_went():
    from aml_debug_magics.node import snapshot

    def deep(level: int) -> None:
        payload = {f"v{i}": "x" * 300 for i in range(100)}  # noqa: F841  (a local to keep)
        if level == 0:
            raise RuntimeError("bottom")
        deep(level - 1)

    try:
        deep(60)
    except RuntimeError as error:
        taken = snapshot.take(error, max_bytes=20_000)
    assert len(json.dumps(taken)) <= 20_000
    assert taken["frames"][-1]["locals"]["level"] == "0"
    assert "left out" in taken["truncated"]


def test_debug_here_after_the_failure_shows_the_stop_at_the_exception(ip, tmp_path, capsys):
    """The row's Debug here (what its button calls), on the post-mortem's window: the notebook
    debugger, driven by ``%aml_debug_step`` in a terminal, stops at the raise."""
    script = tmp_path / "train.py"
    script.write_text(WAITS_THEN_FAILS)
    ip.run_line_magic("aml_debug_run", "--timeout 0.3 --post-mortem 120 train.py")
    session = current_session("run")
    row = session.rows[0]
    wait_for(lambda: row.status == Status.TIMED_OUT, 60, "the attach window to pass")
    (tmp_path / "go").write_text("")
    wait_for(lambda: row.status == Status.POST_MORTEM, 60, "the post-mortem")
    session.debug_here(row)
    wait_for(lambda: session.debugger_of(row) is not None
             and session.debugger_of(row).state()["status"] == "stopped", 60, "the stop")

    def step(line: str) -> str:
        capsys.readouterr()
        ip.run_line_magic("aml_debug_step", line)
        return capsys.readouterr().out

    assert f"stopped at {script}:{WAITING_RAISE_LINE} in fit" in step("")
    assert "  divisor (int) = 0" in step("vars")
    assert step("eval total").strip() == "total (int) = 6"
    step("continue")
    wait_for(lambda: session.state == "failed", 60, "the script to exit")
    assert (row.status, row.exit_code) == (Status.FAILED, 1)
