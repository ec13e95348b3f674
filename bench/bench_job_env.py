"""Benchmarks of the local target's job environments. Prints figures and ratios.

    python bench/bench_job_env.py [--rounds N]

1. Time to attachable of a local step, from start until it announces where to attach: in a
   job layer over the kernel (its environment adds nothing) vs in the kernel's environment
   (``--env kernel``, what the local target did before). Rounds alternate. Target <= 1.05.
2. What a cached environment layer adds: finding it, making the job's layer over it, removing
   it, and the extra start-up of a Python that sees it (``python -c pass`` in the layer vs the
   kernel's). Target <= 0.3 s.
3. A first build (``tabulate==0.8.10 toolz==0.12.0 six==1.15.0``: two the kernel lacks, one it
   has at another version) vs ``uv pip install`` of the same packages by hand into a fresh
   virtual environment. Both use uv's warm package cache. Target ratio <= 1.3.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from aml_debug_magics.targets import job_env  # noqa: E402
from aml_debug_magics.targets.local import LocalProcess  # noqa: E402

PACKAGES = ("tabulate==0.8.10", "toolz==0.12.0", "six==1.15.0")


def attachable(script: Path, layer: job_env.JobLayer | None) -> float:
    """Seconds from start until the bootstrap announces its port."""
    env = layer.variables(os.environ) if layer else {}
    process = LocalProcess(script, timeout=0.5, env=env,
                           python=layer.python if layer else sys.executable)
    start = time.perf_counter()
    process.start()
    process.announced.wait(60)
    took = time.perf_counter() - start
    process.stop()
    process.wait()
    return took


def startup(python: str) -> float:
    start = time.perf_counter()
    subprocess.run([python, "-c", "pass"], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    rounds = parser.parse_args().rounds
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["AML_DEBUG_CACHE"] = str(Path(scratch, "cache"))
        script = Path(scratch, "script.py")
        script.write_text("print('done')\n")

        kernel_times, layer_times = [], []
        for _ in range(rounds):
            kernel_times.append(attachable(script, None))
            layer = job_env.JobLayer()
            try:
                layer_times.append(attachable(script, layer))
            finally:
                layer.remove()
        kernel, layered = statistics.median(kernel_times), statistics.median(layer_times)
        print(f"1. time to attachable: kernel {kernel:.3f} s, job layer {layered:.3f} s, "
              f"ratio {layered / kernel:.3f} (target <= 1.05)")

        layout = job_env.plan(job_env.Declared("environment 'bench'", PACKAGES))
        job_env.environment_layer(layout)  # built once; then every round finds it
        costs = []
        for _ in range(rounds):
            start = time.perf_counter()
            found = job_env.environment_layer(
                job_env.plan(job_env.Declared("environment 'bench'", PACKAGES)))
            layer = job_env.JobLayer(found)
            made = time.perf_counter() - start
            try:
                extra = startup(layer.python) - startup(sys.executable)
            finally:
                start = time.perf_counter()
                layer.remove()
                made += time.perf_counter() - start
            costs.append(made + max(extra, 0.0))
        print(f"2. a cached layer adds {statistics.median(costs):.3f} s (target <= 0.3)")

        builds, by_hand = [], []
        for turn in range(rounds):
            job_env.clear()
            start = time.perf_counter()
            job_env.environment_layer(
                job_env.plan(job_env.Declared("environment 'bench'", PACKAGES)))
            builds.append(time.perf_counter() - start)
            venv = Path(scratch, f"by-hand-{turn}")
            subprocess.run([sys.executable, "-m", "uv", "venv", "-q", "--python",
                            os.path.realpath(sys._base_executable), str(venv)], check=True)
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "uv", "pip", "install", "-q", "--python",
                            str(venv / "bin" / "python"), *PACKAGES], check=True)
            by_hand.append(time.perf_counter() - start)
        build, hand = statistics.median(builds), statistics.median(by_hand)
        print(f"3. first build {build:.3f} s, uv pip install by hand {hand:.3f} s, "
              f"ratio {build / hand:.2f} (target <= 1.3)")


if __name__ == "__main__":
    main()
