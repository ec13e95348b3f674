"""From the magic call to a debugger able to attach, on the simulated Azure ML cluster.

    python bench/bench_cluster.py [--rounds 10]      (as root: it makes network namespaces)

Each round makes a one-node cluster (``tests/simcluster.py``: the node is its own network host
running the node Python that holds only debugpy; logs reach Azurite late, in chunks), runs
``%aml_debug_run --target azureml`` on a ScriptRunConfig in an IPython shell, and times, from
the magic call:

* address: until the row shows the node's address (the announcement found in the log blob);
* attachable: until a debug-protocol ``initialize`` sent from this machine to that address is
  answered.

Anchor (the floor): the same script started by hand under the shipped bootstrap in the node's
namespace, from process start to ``initialize`` answered. What lies between is the submit, the
simulated control plane (0.4 s of Queued/Preparing), the log upload (chunks every 0.3 s), and
the follower's discovery. So that the last can be told apart, each round also times, from the
magic call, when the announcement reached the log blob: no reader of the log can know sooner,
and "attachable" against it is what discovery costs. Medians of ``--rounds``.

Then the post-mortem: each round runs a script that misses its window and raises
(``--timeout 0.5 --post-mortem 60``) and times, from the raise (the script prints the clock
just before it; the node shares this machine's clock), when the ``failed`` line reached the
log blob and when the row showed the failure (*failed, waiting for a debugger at the
exception*).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import azurite as azurite_module  # noqa: E402
from azurite import start_azurite  # noqa: E402
from conftest import ship_node_files  # noqa: E402
from netns import skip_without_namespaces  # noqa: E402
from simcluster import SimCluster  # noqa: E402

from aml_debug_magics.records import Status  # noqa: E402
from aml_debug_magics.session import current_session  # noqa: E402
from aml_debug_magics.targets import workspace  # noqa: E402

SCRIPT = "print('hello from the node', flush=True)\n"
FAILS = ("import time\ntime.sleep(1)  # past the attach window\n"
         "print('raising at', time.time(), flush=True)\n1 / 0\n")
FAILED_AT: list[float] = []  # when a chunk holding the failed line reached a log blob


def answers(host: str, port: int) -> bool:
    body = json.dumps({"seq": 1, "type": "request", "command": "initialize",
                       "arguments": {"adapterID": "debugpy"}}).encode()
    try:
        with socket.create_connection((host, port), timeout=2) as conn:
            conn.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)
            conn.settimeout(5)
            return b"Content-Length" in conn.recv(4096)
    except OSError:
        return False


def until(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(0.02)


ANNOUNCED_AT: list[float] = []  # when a chunk holding the announcement reached a log blob


def appended_and_timed(append):
    def append_and_time(log, text: str) -> None:
        append(log, text)
        if "AML_DEBUG v1 announce" in text:
            ANNOUNCED_AT.append(time.monotonic())
        if "AML_DEBUG v1 failed" in text:
            FAILED_AT.append(time.time())
    return append_and_time


def magic_round(shell, azurite, root: Path) -> tuple[float, float, float]:
    cluster = SimCluster(azurite, root)
    workspace.SdkWorkspace = lambda user_workspace: cluster
    try:
        ANNOUNCED_AT.clear()
        started = time.monotonic()
        shell.run_line_magic("aml_debug_run", "--target azureml --workspace ws --timeout 60 config")
        row = current_session("run").rows[0]
        until(lambda: row.address)
        address = time.monotonic() - started
        host, port = row.address.rsplit(":", 1)
        until(lambda: answers(host, int(port)))
        attachable = time.monotonic() - started
        shell.run_line_magic("aml_debug_run", "--stop")
        return address, attachable, ANNOUNCED_AT[0] - started
    finally:
        cluster.close()


def failure_round(shell, azurite, root: Path) -> tuple[float, float]:
    """Seconds from the raise until the failed line is in the log blob, and until the row says
    the step failed and waits at its exception."""
    cluster = SimCluster(azurite, root)
    workspace.SdkWorkspace = lambda user_workspace: cluster
    try:
        FAILED_AT.clear()
        shell.run_line_magic("aml_debug_run", "--target azureml --workspace ws --timeout 0.5 "
                             "--post-mortem 60 failing")
        row = current_session("run").rows[0]
        until(lambda: row.status == Status.POST_MORTEM)
        shown = time.time()
        raised = float(next(line.split()[-1] for line in row.last_lines
                            if line.startswith("raising at")))
        shell.run_line_magic("aml_debug_run", "--stop")
        return FAILED_AT[0] - raised, shown - raised
    finally:
        cluster.close()


def floor_round(azurite, root: Path) -> float:
    cluster = SimCluster(azurite, root)
    try:
        folder = ship_node_files(root / "by_hand")
        started = time.monotonic()
        process = subprocess.Popen(
            [*cluster.nodes[0].launcher, cluster.python, "-u", "aml_debug_bootstrap.py",
             "--listen", "0.0.0.0:0", "--timeout", "60", "--", "job.py"],
            cwd=folder, stdout=subprocess.PIPE, text=True, start_new_session=True,
        )
        line = next(line for line in process.stdout if line.startswith("AML_DEBUG v1 announce"))
        announced = json.loads(line.split(" ", 3)[3])
        until(lambda: answers(cluster.nodes[0].address, announced["port"]))
        took = time.monotonic() - started
        os.killpg(process.pid, 15)
        process.wait()
        return took
    finally:
        cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    rounds = parser.parse_args().rounds
    try:
        skip_without_namespaces()
    except BaseException as skipped:  # pytest's skip outside pytest
        sys.exit(f"cannot run: {skipped}")
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    azurite_module.AppendLog.append = appended_and_timed(azurite_module.AppendLog.append)

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        (root / "app").mkdir()
        (root / "app" / "job.py").write_text(SCRIPT)
        (root / "app" / "fails.py").write_text(FAILS)
        os.chdir(root)
        process, azurite = start_azurite(root / "azurite")
        config = Config()
        config.HistoryAccessor.enabled = False
        shell = InteractiveShell.instance(config=config)
        shell.run_line_magic("load_ext", "aml_debug_magics")
        shell.run_line_magic("config", "AmlDebugMagics.view = 'text'")
        shell.run_cell("from azureml.core import ScriptRunConfig\n"
                       "config = ScriptRunConfig(source_directory='app', script='job.py',"
                       " compute_target='cpu-cluster')\nws = object()\n"
                       "failing = ScriptRunConfig(source_directory='app', script='fails.py',"
                       " compute_target='cpu-cluster')")
        try:
            floors = []
            for n in range(rounds):
                (root / f"floor{n}" / "by_hand").mkdir(parents=True)
                (root / f"floor{n}" / "by_hand" / "job.py").write_text(SCRIPT)
                floors.append(floor_round(azurite, root / f"floor{n}"))
            sys.stdout = open(os.devnull, "w")  # the text view's lines
            measured = [magic_round(shell, azurite, root / f"round{n}") for n in range(rounds)]
            failures = [failure_round(shell, azurite, root / f"failure{n}")
                        for n in range(rounds)]
            sys.stdout = sys.__stdout__
        finally:
            shell.run_line_magic("unload_ext", "aml_debug_magics")
            process.terminate()
            os.chdir(REPO)  # before the scratch folder goes
    floor = statistics.median(floors)
    address = statistics.median(m[0] for m in measured)
    attachable = statistics.median(m[1] for m in measured)
    in_blob = statistics.median(m[2] for m in measured)
    print(f"rounds: {rounds}; node Python: the oldest with only debugpy")
    print(f"floor (bootstrap by hand in the node, start -> initialize answered): {floor:.2f} s")
    print(f"magic call -> row shows the node's address: {address:.2f} s ({address / floor:.2f}x)")
    print(f"magic call -> attachable from here:         {attachable:.2f} s "
          f"({attachable / floor:.2f}x the floor)")
    print(f"magic call -> announcement in the log blob: {in_blob:.2f} s; attachable "
          f"{attachable - in_blob:.2f} s after it ({attachable / in_blob:.2f}x)")
    failed_in_blob = statistics.median(f[0] for f in failures)
    failed_shown = statistics.median(f[1] for f in failures)
    print(f"post-mortem: raise -> failed line in the log blob: {failed_in_blob:.2f} s; "
          f"raise -> the row shows the failure: {failed_shown:.2f} s "
          f"({failed_shown - failed_in_blob:.2f} s after the blob had it)")


if __name__ == "__main__":
    main()
