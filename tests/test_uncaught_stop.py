"""End to end: a debugger that breaks on uncaught exceptions (VS Code's default filters: raised
off, uncaught on) stops where the user's script raised, once, and never in the bootstrap's frames.

Real parts: the bootstrap run by each kind of node Python (debugpy 1.8.21 as Python 3.8 has it,
1.8.22 on 3.13 and in this project's 3.11 environment, and the 1.8.21 copy a snapshot ships into
an environment without debugpy, on 3.13); a real debug-protocol client attached through the
gate; the exit status and standard error of the real process.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ship_node_files
from dap_client import DapClient, DapError
from node_pythons import find_python, node_python

from aml_debug_magics.errors import DebugInputError
from aml_debug_magics.launch import attach_config
from aml_debug_magics.node.announce import Announcement, LogReader
from aml_debug_magics.node.debugger import SHIPPED_DEBUGPY
from aml_debug_magics.targets.local import LocalProcess

RAISES = textwrap.dedent(
    """\
    def train(rate):
        if rate > 1:
            raise ValueError(f"rate {rate} is too high")
        return rate


    print("training", flush=True)
    train(2.0)
    """
)
RAISE_LINE = 3
EXITS = "import sys\n\nprint('training', flush=True)\nsys.exit({status})\n"
EXIT_LINE = 4
OURS = ("aml_debug_", "aml_debug_magics")  # the shipped files' names, and the package's folder

NODES = ["3.8-node", "3.13-node", "3.11-venv", "3.13-shipped-copy"]


def node_for(node: str, folder: Path) -> tuple[str, Path | None]:
    """The Python that runs the bootstrap, and the folder of the shipped files it runs from
    (None: this project's package, run as ``-m``); ``folder`` holds the script."""
    if node == "3.11-venv":
        return sys.executable, None
    ship_node_files(folder)
    if node.endswith("-node"):
        return node_python(node.split("-")[0]), folder
    base = find_python("3.13")
    if base is None:
        pytest.skip("Python 3.13 is not on this machine (pyenv install 3.13)")
    from aml_debug_magics.targets.environment import shipped_debugpy

    try:
        shutil.copytree(shipped_debugpy(), folder / SHIPPED_DEBUGPY)
    except DebugInputError as error:
        pytest.skip(str(error))
    bare = folder.parent / "bare"
    subprocess.run([base, "-m", "venv", "--without-pip", str(bare)], check=True)
    return str(bare / "bin" / "python"), folder


class BootstrapProcess:
    """The bootstrap running ``script``, its standard output and error kept apart."""

    def __init__(self, python: str, script: Path, node_files: Path | None) -> None:
        spec = LocalProcess(script, (), cwd=script.parent, timeout=60, python=python,
                            node_files=node_files)
        self.process = subprocess.Popen(
            # an in-process kernel earlier in this test process sets FORCE_COLOR for its
            # children; Python 3.13 would then colour the traceback compared here as text
            spec.command, cwd=spec.cwd, env={**spec.env, "PYTHON_COLORS": "0"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.output: list[str] = []
        reader = LogReader()
        for line in self.process.stdout:  # type: ignore[union-attr]
            self.output.append(line)
            found = [news for news in reader.feed(line.rstrip("\n"))
                     if isinstance(news, Announcement)]
            if found:
                self.announcement = found[0]
                return
        self.stop()
        raise AssertionError(f"no announcement: {''.join(self.output)}")

    def finish(self) -> tuple[int, str]:
        """Its exit status and standard error, once it has ended."""
        out, err = self.process.communicate(timeout=60)
        self.output += out.splitlines(keepends=True)
        return self.process.returncode, err

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


def stops_until_the_end(run: BootstrapProcess, script: Path) -> list[dict]:
    """Attach as VS Code does with its default exception filters, then continue every stop
    until the session ends; each stop as the user sees it: its exception and its frames."""
    config = attach_config(run.announcement, script.parent)
    client = DapClient.connect(config["connect"]["host"], config["connect"]["port"])
    stops = []
    try:
        client.attach(config, {}, exception_filters=["uncaught"])
        while True:
            try:
                stopped = client.event("stopped", timeout=60)
            except DapError as ended:
                assert "closed" in str(ended), ended  # the session ended, not a stop that hangs
                break
            thread = stopped["threadId"]
            frames = client.request("stackTrace", threadId=thread)["stackFrames"]
            stops.append({
                "reason": stopped["reason"],
                "exception": client.request("exceptionInfo", threadId=thread),
                "frames": [(frame["source"]["path"], frame["line"]) for frame in frames],
                "locals": client.locals_of(frames[0]),
            })
            client.request("continue", threadId=thread)
    finally:
        client.close()
    assert "terminated" in [event["event"] for event in client.events]
    return stops


def where(stops: list[dict]) -> list[tuple[str, int]]:
    return [(Path(stop["frames"][0][0]).name, stop["frames"][0][1]) for stop in stops]


@pytest.mark.parametrize("node", NODES)
def test_an_uncaught_exception_stops_once_at_the_users_raise(node, tmp_path):
    (tmp_path / "node").mkdir()
    script = tmp_path / "node" / "train.py"
    script.write_text(RAISES)
    python, node_files = node_for(node, script.parent)
    run = BootstrapProcess(python, script, node_files)
    try:
        stops = stops_until_the_end(run, script)
        status, stderr = run.finish()
    finally:
        run.stop()
    assert where(stops) == [("train.py", RAISE_LINE)], stops  # one stop, none in our frames
    stop = stops[0]
    assert stop["reason"] == "exception"
    assert stop["frames"][0] == (str(script), RAISE_LINE)
    assert stop["exception"]["exceptionId"].startswith("ValueError")
    assert stop["exception"]["description"] == "rate 2.0 is too high"
    assert stop["locals"]["rate"] == "2.0"  # the raising frame itself
    assert status == 1
    traceback = stderr.strip().splitlines()
    assert traceback[0] == "Traceback (most recent call last):", stderr
    assert traceback[-1] == "ValueError: rate 2.0 is too high", stderr
    assert f'File "{script}", line {RAISE_LINE}, in train' in stderr
    assert not any(name in stderr for name in OURS), stderr  # it starts in the user's code
    assert "training\n" in run.output


@pytest.mark.parametrize("node", NODES)
@pytest.mark.parametrize("status", [0, 3])
def test_the_scripts_own_exit_stops_as_under_plain_debugpy(node, status, tmp_path):
    """``sys.exit(0)`` never stops; ``sys.exit(3)`` stops once, on the user's line, as under
    ``python -m debugpy`` (debugpy breaks on every status but 0 and None); neither in ours."""
    (tmp_path / "node").mkdir()
    script = tmp_path / "node" / "train.py"
    script.write_text(EXITS.format(status=status))
    python, node_files = node_for(node, script.parent)
    run = BootstrapProcess(python, script, node_files)
    try:
        stops = stops_until_the_end(run, script)
        exit_status, stderr = run.finish()
    finally:
        run.stop()
    assert where(stops) == ([] if status == 0 else [("train.py", EXIT_LINE)]), stops
    assert exit_status == status
    assert "Traceback" not in stderr, stderr
