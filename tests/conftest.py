"""Shared helpers: start the bootstrap for real, and check nothing is left running."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from azurite import azurite  # noqa: F401  (a fixture for every test module)

from aml_debug_magics.node.gate import ADAPTER_MARKER
from aml_debug_magics.targets.local import LocalProcess

REPO = Path(__file__).resolve().parents[1]


# every process this test run starts inherits it (debug adapters too, though they daemonize):
# what the checks below look for is this run's own, whatever else runs on the machine
TEST_RUN = os.environ.setdefault("AML_DEBUG_TEST_RUN", uuid.uuid4().hex)
if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker process checks only what it started
    TEST_RUN = os.environ["AML_DEBUG_TEST_RUN"] = f"{TEST_RUN}-{os.environ['PYTEST_XDIST_WORKER']}"
REAPER = b"aml_debug_magics/reaper.py"  # in the kernel's watchdog's command line


@dataclass(frozen=True)
class Process:
    pid: int
    parent: int
    group: int

    def read(self, name: str) -> bytes:
        """``/proc/PID/NAME`` (cmdline, environ), or nothing once the process is gone."""
        try:
            with open(f"/proc/{self.pid}/{name}", "rb") as found:
                return found.read()
        except OSError:
            return b""


def live_processes() -> list[Process]:
    """Every process on the machine that is running (zombies left out)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                state, parent, group = stat.read().rsplit(")", 1)[1].split()[:3]
        except OSError:
            continue
        if state not in ("Z", "X"):
            found.append(Process(int(entry), int(parent), int(group)))
    return found


def live_adapters(every_run: bool = False) -> list[int]:
    """Pids of debug adapters started by this test run's bootstraps that are still running
    (``every_run``: anybody's)."""
    needle, ours = f"{ADAPTER_MARKER}=".encode(), f"AML_DEBUG_TEST_RUN={TEST_RUN}".encode()
    found = []
    for process in live_processes():
        variables = process.read("environ").split(b"\0")
        if any(v.startswith(needle) for v in variables) and (every_run or ours in variables):
            found.append(process.pid)
    return found


def need_python_script_step():
    """Skip where PythonScriptStep is missing: azureml-pipeline-steps installs on 3.10 and 3.11
    only (it needs azureml-train-automl-client, which stops before 3.12)."""
    return pytest.importorskip(
        "azureml.pipeline.steps", reason="PythonScriptStep (azureml-pipeline-steps) installs on "
        "Python 3.10 and 3.11 only",
    )


def ship_node_files(folder: Path) -> Path:
    """The node's files under their shipped names in ``folder``, as a run's snapshot holds them."""
    from aml_debug_magics.node.bootstrap import SHIPPED_NAMES
    from aml_debug_magics.targets.environment import NODE_FILES

    for source, shipped in SHIPPED_NAMES.items():
        shutil.copy(NODE_FILES / source, folder / shipped)
    return folder


def wait_for(condition, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def port_refuses(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def start_local(tmp_path):
    """Start scripts under the bootstrap as the local target does; stop them all afterwards."""
    started: list[LocalProcess] = []

    def start(script: Path, *args: str, **options) -> LocalProcess:
        process = LocalProcess(script, args, cwd=options.pop("cwd", script.parent), **options)
        started.append(process.start())
        return process

    yield start
    for process in started:
        process.stop()


def pytest_collection_modifyitems(config, items):
    """An ``every_python`` mark says why its tests run on every notebook-side Python."""
    for item in items:
        for mark in item.iter_markers("every_python"):
            if not (mark.args and str(mark.args[0]).strip()):
                raise pytest.UsageError(f"{item.nodeid}: every_python needs its reason: what "
                                        "differs by Python version")


@pytest.fixture(autouse=True)
def no_colour_forced_on_later_tests():
    """An in-process kernel (ipykernel's ``init_environment``) sets ``FORCE_COLOR`` for its
    children; a later test's Python 3.13 would then colour the tracebacks it compares as text."""
    before = {name: os.environ.get(name) for name in ("FORCE_COLOR", "CLICOLOR_FORCE")}
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(autouse=True)
def no_adapter_left_behind():
    before = set(live_adapters())
    yield
    wait_for(lambda: not (set(live_adapters()) - before), 10, "debug adapters to end")


def run_bootstrap(*args: str, cwd: Path | None = None, env=None, timeout: float = 60):
    """Run ``python -m aml_debug_magics.node.bootstrap ARGS`` to the end; return the
    CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "aml_debug_magics.node.bootstrap", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )


def children_of(pid: int | None = None) -> list[int]:
    """Live (not zombie) processes whose parent is ``pid`` (default: this test process),
    leaving out the Azurite fixture's and the reaper: Azurite lives for the whole run; the
    reaper is the kernel's own watchdog and ends with it (test_lifecycle.py proves that)."""
    parent = pid or os.getpid()
    return [
        process.pid for process in live_processes()
        if process.parent == parent and not any(
            name in process.read("cmdline") for name in (b"azurite", REAPER)
        )
    ]


@pytest.fixture
def ip(tmp_path, monkeypatch):
    """A fresh IPython shell in an empty folder, with the extension loaded, as a user has it."""
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    monkeypatch.chdir(tmp_path)
    config = Config()
    config.HistoryAccessor.enabled = False  # avoids "too many open files" across tests
    InteractiveShell.clear_instance()
    shell = InteractiveShell.instance(config=config)
    shell.run_line_magic("load_ext", "aml_debug_magics")
    yield shell
    shell.run_line_magic("unload_ext", "aml_debug_magics")
    InteractiveShell.clear_instance()
