"""Benchmarks of the post-mortem. Prints figures and ratios against each anchor.

    python bench/bench_postmortem.py [--python PATH] [--rounds N]

1. Overhead before the failure: a CPU-bound loop under the bootstrap (attach window missed,
   post-mortem on) vs plain ``python script.py``; each process reports its fastest of three
   laps in CPU seconds; the figure is the median ratio over rounds. Target <= 1.05.
2. The snapshot of a 50-frame traceback with 1,000 locals in each frame: time to take and
   encode it into log lines, and its size (JSON, and as encoded lines). Target < 1 s.
3. From the raise to the ``failed`` line (debugpy started anew behind a new gate), and from a
   debug-protocol attach to the stop at the exception.
4. On the local target through the magic (``%aml_debug_run --timeout 0.5 --post-mortem 60``):
   from the raise (the script prints the clock just before it) until the row shows the failure.
   The simulated cluster's figure is ``bench_cluster.py``'s last line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from dap_client import DapClient  # noqa: E402

from aml_debug_magics.launch import attach_config  # noqa: E402
from aml_debug_magics.node import snapshot  # noqa: E402
from aml_debug_magics.node.announce import AttachOutcome, Failure, LogReader  # noqa: E402

LOOP = """\
import time
def work():
    total = 0
    for i in range(3_000_000):
        total += i * i % 7
    return total
laps = []
for _ in range(3):
    start = time.process_time()
    work()
    laps.append(time.process_time() - start)
print("ELAPSED", min(laps), flush=True)
"""
FAILS = "import sys\ndef fit(divisor):\n    return 1 / divisor\nsys.stdin.readline()\nfit(0)\n"


def bootstrap(python: str, timeout: str, post_mortem: str) -> list[str]:
    return [python, "-u", "-m", "aml_debug_magics.node.bootstrap", "--listen", "127.0.0.1:0",
            "--timeout", timeout, "--post-mortem", post_mortem, "--"]


def lap(command: list[str], cwd: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return float(next(line for line in out.stdout.splitlines() if line.startswith("ELAPSED"))
                 .split()[1])


def overhead(python: str, rounds: int, folder: str) -> None:
    script = Path(folder, "loop.py")
    script.write_text(LOOP)
    ratios = []
    for _ in range(rounds):
        plain = lap([python, str(script)], folder)
        ours = lap([*bootstrap(python, "0.1", "300"), str(script)], folder)
        ratios.append(ours / plain)
    print(f"1. overhead before the failure: {statistics.median(ratios):.3f}x plain python "
          f"(median of {rounds}; target <= 1.05)")


def deep_failure(depth: int, names: int) -> BaseException:
    """An exception raised ``depth`` frames deep, each frame with ``names`` locals."""
    source = "def level(n, names):\n" + "".join(
        f"    v{i} = {i}\n" for i in range(names)) + \
        "    if n == 0:\n        raise RuntimeError('bottom')\n    level(n - 1, names)\n"
    scope: dict = {}
    exec(compile(source, "<bench>", "exec"), scope)
    try:
        scope["level"](depth - 1, names)
    except RuntimeError as error:
        return error
    raise AssertionError("no failure")


def snapshot_figures() -> None:
    error = deep_failure(50, 1000)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        lines = snapshot.encode_lines(snapshot.take(error))
        times.append(time.perf_counter() - start)
    taken = snapshot.take(error)
    print(f"2. snapshot of 50 frames x 1,000 locals: {min(times) * 1000:.0f} ms (best of 5; "
          f"target < 1 s), {len(json.dumps(taken)) / 1024:.0f} KiB as JSON, "
          f"{sum(map(len, lines)) / 1024:.0f} KiB in {len(lines)} log line(s)"
          f"{'; ' + taken['truncated'] if taken['truncated'] else ''}")


def failure_to_stop(python: str, folder: str) -> None:
    script = Path(folder, "fails.py")
    script.write_text(FAILS)
    process = subprocess.Popen(
        [*bootstrap(python, "0.1", "120"), str(script)], cwd=folder,
        env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    reader = LogReader()

    def next_news(kind: type):  # type: ignore[no-untyped-def]
        for line in process.stdout:  # type: ignore[union-attr]
            for news in reader.feed(line.rstrip("\n")):
                if isinstance(news, kind):
                    return news
        raise AssertionError(f"no {kind.__name__}")

    try:
        next_news(AttachOutcome)
        raised = time.perf_counter()
        process.stdin.write("go\n")  # type: ignore[union-attr]
        process.stdin.flush()  # type: ignore[union-attr]
        failure = next_news(Failure)
        announced = time.perf_counter()
        config = attach_config(failure.attach, Path(folder))
        client = DapClient.connect(config["connect"]["host"], config["connect"]["port"])
        attach_start = time.perf_counter()
        client.attach(config, {}, exception_filters=["uncaught"])
        client.event("stopped", timeout=60)
        stopped = time.perf_counter()
        client.close()
        process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
    print(f"3. raise to the failed line: {(announced - raised) * 1000:.0f} ms; attach to the "
          f"stop at the exception: {(stopped - attach_start) * 1000:.0f} ms")


def failure_to_row(rounds: int, folder: str) -> None:
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    from aml_debug_magics.records import Status
    from aml_debug_magics.session import current_session

    Path(folder, "fails_late.py").write_text(
        "import time\ntime.sleep(1)  # past the attach window\n"
        "print('raising at', time.time(), flush=True)\n1 / 0\n")
    config = Config()
    config.HistoryAccessor.enabled = False
    shell = InteractiveShell.instance(config=config)
    shell.run_line_magic("load_ext", "aml_debug_magics")
    shell.run_line_magic("config", "AmlDebugMagics.view = 'text'")
    here = os.getcwd()
    os.chdir(folder)
    shown = []
    try:
        sys.stdout = open(os.devnull, "w")  # the text view's lines
        for _ in range(rounds):
            shell.run_line_magic("aml_debug_run", "--timeout 0.5 --post-mortem 60 fails_late.py")
            row = current_session("run").rows[0]
            deadline = time.monotonic() + 120
            while row.status != Status.POST_MORTEM and time.monotonic() < deadline:
                time.sleep(0.002)
            seen = time.time()
            raised = float(next(line.split()[-1] for line in row.last_lines
                                if line.startswith("raising at")))
            shown.append(seen - raised)
            shell.run_line_magic("aml_debug_run", "--stop")
    finally:
        sys.stdout = sys.__stdout__
        shell.run_line_magic("unload_ext", "aml_debug_magics")
        os.chdir(here)
    print(f"4. local target: raise -> the row shows the failure: "
          f"{statistics.median(shown) * 1000:.0f} ms (median of {rounds})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        overhead(args.python, args.rounds, folder)
        snapshot_figures()
        failure_to_stop(args.python, folder)
        failure_to_row(args.rounds, folder)


if __name__ == "__main__":
    main()
