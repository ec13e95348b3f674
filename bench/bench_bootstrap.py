"""Benchmarks of the node-side runtime. Prints figures and ratios against each anchor.

    python bench/bench_bootstrap.py [--python PATH] [--rounds N]

1. Time to attachable: from process start until the debug port answers a debug-protocol
   ``initialize`` request (and, for reference, until a TCP connect succeeds), for the bootstrap
   vs the anchor ``python -m debugpy --listen 127.0.0.1:PORT --wait-for-client script.py``.
   Rounds alternate the two so both see the same machine load. Target ratio <= 1.1.
2. Slowdown of a CPU-bound loop after a missed attach window vs plain python; the anchor is
   debugpy listening with tracing left on (what happens without the bootstrap). Each process
   runs the loop three times and reports its fastest lap in CPU seconds of the whole process
   (steady state, and other processes on this shared machine do not count);
   the figure is the median over rounds. Target <= 5 %.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOOP = """\
import time
def work():
    total = 0
    for i in range(3_000_000):
        total += i * i % 7
    return total
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)
laps = []
for _ in range(3):
    start = time.process_time()
    work(); fib(25)
    laps.append(time.process_time() - start)
print("ELAPSED", min(laps), flush=True)
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def initialize_answered(port: int, start: float, what: str) -> tuple[float, float]:
    """Seconds since ``start`` until a TCP connect to ``port`` succeeds, and until a debug
    adapter answers ``initialize`` there."""
    body = json.dumps({"seq": 1, "type": "request", "command": "initialize",
                       "arguments": {"adapterID": "debugpy", "clientID": "bench"}}).encode()
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            break
        except ConnectionRefusedError:
            if time.perf_counter() - start > 30:
                raise RuntimeError(f"never listened: {what}") from None
            time.sleep(0.002)
    connected = time.perf_counter() - start
    with sock:
        # a real client speaks at once: a silent connect would end a bare debugpy listener
        sock.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        received = b""
        while b'"initialize"' not in received:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError(f"closed before answering: {what}")
            received += chunk
    return connected, time.perf_counter() - start


def time_to_attachable(command: list[str], port: int, env: dict[str, str]) -> tuple[float, float]:
    """Seconds from starting ``command`` until a TCP connect succeeds, and until ``initialize``
    is answered."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        return initialize_answered(port, start, " ".join(command))
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait()


def loop_seconds(command: list[str], env: dict[str, str]) -> float:
    output = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300).stdout
    laps = [line.split()[1] for line in output.splitlines() if line.startswith("ELAPSED")]
    return float(laps[0])


def bench_options(doc: str) -> tuple[str, int, dict[str, str]]:
    """``--python`` and ``--rounds`` from the command line, and the environment to run with."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--rounds", type=int, default=10)
    options = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    return options.python, options.rounds, env


def main() -> None:
    python, rounds, env = bench_options(__doc__)
    version = subprocess.run([python, "-c", "import sys, debugpy; print(sys.version.split()[0],"
                              " debugpy.__version__)"], capture_output=True, text=True,
                             env=env).stdout.split()
    print(f"python {version[0]}, debugpy {version[1]}, {rounds} rounds, "
          f"{os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "loop.py"
        script.write_text(LOOP)
        bare_connect, bare_ready, ours_connect, ours_ready = [], [], [], []
        for _ in range(rounds):
            port = free_port()
            c, r = time_to_attachable([python, "-m", "debugpy", "--listen", f"127.0.0.1:{port}",
                                       "--wait-for-client", str(script)], port, env)
            bare_connect.append(c)
            bare_ready.append(r)
            port = free_port()
            c, r = time_to_attachable([python, "-m", "aml_debug_magics.node.bootstrap", "--listen",
                                       f"127.0.0.1:{port}", "--timeout", "60", "--",
                                       str(script)], port, env)
            ours_connect.append(c)
            ours_ready.append(r)
        bare, ours = statistics.median(bare_ready), statistics.median(ours_ready)
        print("\n1. time to attachable (median; process start -> 'initialize' answered)")
        print(f"   anchor  python -m debugpy --listen --wait-for-client: {bare * 1000:7.1f} ms"
              f"  (TCP accept at {statistics.median(bare_connect) * 1000:.1f} ms)")
        print(f"   bootstrap:                                         {ours * 1000:7.1f} ms"
              f"  (TCP accept at {statistics.median(ours_connect) * 1000:.1f} ms)")
        print(f"   ratio bootstrap / anchor: {ours / bare:.3f}   (target <= 1.1)")

        plain, after_miss, tracing = [], [], []
        for _ in range(rounds):
            plain.append(loop_seconds([python, str(script)], env))
            after_miss.append(loop_seconds([python, "-m", "aml_debug_magics.node.bootstrap",
                                            "--listen", "127.0.0.1:0", "--timeout", "0.2", "--",
                                            str(script)], env))
            tracing.append(loop_seconds([python, "-m", "debugpy", "--listen", "127.0.0.1:0",
                                         str(script)], env))
        plain_s, miss_s, tracing_s = (statistics.median(v) for v in (plain, after_miss, tracing))
        print("\n2. CPU-bound loop + recursion (median of each process's fastest of 3 laps)")
        print(f"   plain python:                          {plain_s:.3f} s")
        print(f"   bootstrap after a missed window:       {miss_s:.3f} s   "
              f"ratio {miss_s / plain_s:.3f}  (target <= 1.05)")
        print(f"   anchor: debugpy listening, tracing on: {tracing_s:.3f} s   "
              f"ratio {tracing_s / plain_s:.3f}")


if __name__ == "__main__":
    main()
