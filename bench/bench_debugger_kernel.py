"""The kernel side of the in-notebook debugger: a step over, to the new state snapshot.

    python bench/bench_debugger_kernel.py [--rounds N]

A loop script runs under ``python -m debugpy --listen --wait-for-client`` (the bootstrap's
gate would add its own hop, which is not the debugger's); the notebook's debugger
(``DebuggerController``) attaches and stops in the loop. Each round sends ``next`` as the
view's Step over button does and times until the next stop's snapshots reach a listener (what
the widget sends to the page): the first, with the new line (the page moves its line mark),
and the second, with the scopes too: p50/p95, and the snapshot's size in bytes. Anchor: the same
step with a bare debug-protocol client (tests/dap_client.py) attached the same way, doing
what a view needs to show a stop: ``next``, the ``stopped`` event, ``stackTrace``, ``scopes``,
the first scope's ``variables``.
The ratios are each p95 over the anchor's; the page's part is bench_debugger.py's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

LOOP = """\
total = 0
for step in range(1_000_000):
    total += step
    total -= step // 2
"""
ADD_LINE, SUBTRACT_LINE = 3, 4


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(0.95 * (len(ordered) - 1))]


def bare_debuggee(script: Path) -> tuple[subprocess.Popen, int]:
    """``python -m debugpy --listen 127.0.0.1:PORT --wait-for-client script``, and its port."""
    from conftest import free_port

    port = free_port()
    return subprocess.Popen([sys.executable, "-m", "debugpy", "--listen", f"127.0.0.1:{port}",
                             "--wait-for-client", str(script)]), port


def until_connected(connect):
    """``connect()`` again while the port refuses (a bare probe would end debugpy's adapter)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return connect()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def controller_rounds(script: Path, rounds: int) -> tuple[list[float], list[float], int]:
    from aml_debug_magics.debugger.controller import DebuggerController

    process, port = bare_debuggee(script)
    try:
        stops: list[tuple[float, dict]] = []
        arrived = threading.Condition()

        def listener(state: dict) -> None:
            if state["status"] == "stopped":
                with arrived:
                    stops.append((time.perf_counter(), state))
                    arrived.notify_all()

        deadline = time.monotonic() + 30
        while True:  # the port refuses until debugpy listens; a bare probe would end it
            debugger = DebuggerController("127.0.0.1", port, {}, entry=script)
            debugger.listen(listener)
            debugger.start().join(30)
            if debugger.status != "error" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        with arrived:
            arrived.wait_for(lambda: stops, 30)
        debugger.toggle_breakpoint(str(script), ADD_LINE)
        debugger.step("continue")
        with arrived:
            arrived.wait_for(lambda: stops[-1][1]["source"]["line"] == ADD_LINE, 30)
        debugger.toggle_breakpoint(str(script), ADD_LINE)
        marks, whole, size = [], [], 0
        for _ in range(rounds):
            seen = len(stops)
            start = time.perf_counter()
            debugger.act({"action": "next"})
            with arrived:
                arrived.wait_for(lambda seen=seen: any(
                    state["scopes"] for _, state in stops[seen:]), 30)
            marks.append(stops[seen][0] - start)
            when, state = next((w, s) for w, s in stops[seen:] if s["scopes"])
            whole.append(when - start)
            size = max(size, len(json.dumps(state)))
        debugger.close()
        return marks, whole, size
    finally:
        process.kill()
        process.wait()


def anchor_rounds(script: Path, rounds: int) -> list[float]:
    from dap_client import DapClient

    bare, port = bare_debuggee(script)
    try:
        client = until_connected(lambda: DapClient.connect("127.0.0.1", port))
        config = {"connect": {"host": "127.0.0.1", "port": port}, "justMyCode": True}
        client.attach(config, {str(script): [ADD_LINE]})
        client.wait_stopped()
        client.request("setBreakpoints", source={"path": str(script)}, breakpoints=[])
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            client.request("next", threadId=client.stopped_thread)
            frame = client.wait_stopped()
            scopes = client.request("scopes", frameId=frame["id"])["scopes"]
            client.request("variables", variablesReference=scopes[0]["variablesReference"])
            times.append(time.perf_counter() - start)
        client.close()
        return times
    finally:
        bare.kill()
        bare.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "loop.py"
        script.write_text(LOOP)
        marks, whole, size = controller_rounds(script, options.rounds)
        anchor = anchor_rounds(script, options.rounds)
    anchor_p95 = percentiles(anchor)[1]
    for what, samples in (("snapshot with the new line (line mark)", marks),
                          ("snapshot with the scopes too", whole),
                          ("stop shown by a bare DAP client (anchor)", anchor)):
        p50, p95 = percentiles(samples)
        print(f"step over -> {what}: p50 {p50 * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms "
              f"over {len(samples)} steps; ratio p95 / anchor p95 {p95 / anchor_p95:.2f}")
    print(f"largest snapshot: {size} bytes")


if __name__ == "__main__":
    main()
