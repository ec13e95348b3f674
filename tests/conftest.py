"""Shared helpers: start the bootstrap for real, and check nothing is left running."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from azurite import azurite  # noqa: F401  (a fixture for every test module)

from aml_debug_magics.node.gate import ADAPTER_MARKER
from aml_debug_magics.targets.local import LocalProcess

REPO = Path(__file__).resolve().parents[1]


# every process this test run starts inherits it (debug adapters too, though they daemonize):
# what the checks below look for is this run's own, whatever else runs on the machine
TEST_RUN = os.environ.setdefault("AML_DEBUG_TEST_RUN", uuid.uuid4().hex)


def live_adapters() -> list[int]:
    """Pids of debug adapters started by this test run's bootstraps that are still running."""
    needle, ours = f"{ADAPTER_MARKER}=".encode(), f"AML_DEBUG_TEST_RUN={TEST_RUN}".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as environ:
                variables = environ.read().split(b"\0")
            if ours not in variables or not any(v.startswith(needle) for v in variables):
                continue
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    continue
        except OSError:
            continue
        found.append(int(pid))
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
    leaving out the Azurite fixture's and the reaper."""
    parent = str(pid or os.getpid())
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == parent and fields[0] not in ("Z", "X"):
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read()
            # Azurite lives for the whole run; the reaper is the kernel's own watchdog and
            # ends with it (test_lifecycle.py proves that)
            if b"azurite" in command or b"aml_debug_magics/reaper.py" in command:
                continue
            found.append(int(entry))
    return found


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
