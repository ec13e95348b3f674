"""Benchmarks of the notebook side. Prints figures and ratios against each anchor.

    python bench/bench_magics.py [--python PATH] [--rounds N]

1. ``%load_ext aml_debug_magics`` in a running IPython (fresh process each round): median
   milliseconds, and the heavy modules it loaded (target: < 50 ms, none). Anchor: ``import
   azureml.core`` in a fresh process.
2. Time to attachable on the local target: from the ``%aml_debug_run`` call (and the
   ``%aml_debug_job`` call on an SDK v2 command job, where azure-ai-ml is installed) until the
   panel's widget shows ``host:port`` and the port answers a debug-protocol ``initialize``;
   anchor: bare ``python -m debugpy --listen 127.0.0.1:PORT --wait-for-client script.py`` from
   process start to ``initialize`` answered, in the same rounds. Target ratio <= 1.2.
3. A distributed job on the local target (SDK v2, 2 nodes x 2 processes: 4 ranks, rank 0
   waiting): from the ``%aml_debug_job`` call until rank 0 is attachable as in 2; anchor: the
   same command job without its distribution, in the same rounds. Target ratio <= 1.2.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

from bench_bootstrap import REPO, bench_options, free_port, time_to_attachable

HEAVY = ("azureml", "azure.ai.ml", "ipywidgets", "anywidget", "debugpy")

LOAD_EXT = f"""
import sys, time
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config
config = Config(); config.HistoryAccessor.enabled = False
shell = InteractiveShell.instance(config=config)
before = set(sys.modules)
start = time.perf_counter()
shell.run_line_magic("load_ext", "aml_debug_magics")
took = time.perf_counter() - start
heavy = sorted(m for m in set(sys.modules) - before if m.startswith({HEAVY!r}))
print("RESULT", took, ",".join(heavy))
"""

IMPORT_AZUREML = """
import time
start = time.perf_counter()
import azureml.core
print("RESULT", time.perf_counter() - start)
"""

MAGIC = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from bench_bootstrap import initialize_answered
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config
config = Config(); config.HistoryAccessor.enabled = False
shell = InteractiveShell.instance(config=config)
shell.run_line_magic("load_ext", "aml_debug_magics")
shell.run_line_magic("config", "AmlDebugMagics.view = 'widgets'")
from aml_debug_magics.session import current_session
kind = sys.argv[2]
if kind in ("job", "ranks"):  # SDK v2: the user's cell builds a command job (its import is theirs)
    spread = ", instance_count=2, distribution={'type': 'pytorch', " \
        "'process_count_per_instance': 2}" if kind == "ranks" else ""
    shell.run_cell(f"from azure.ai.ml import command\\njob = command(code={sys.argv[3]!r}, "
                   f"command='python job.py', environment='azureml:e@1'{spread})")
    line, kind = "{port} job", "job"
else:
    line = "{port} " + sys.argv[3]
results = []
for port in map(int, sys.argv[4:]):
    start = time.perf_counter()
    shell.run_line_magic(f"aml_debug_{kind}", "--timeout 60 --port " + line.format(port=port))
    row = current_session(kind).view.rows[0]
    while row.address.value != f"<code>127.0.0.1:{port}</code>":
        time.sleep(0.002)
    shown = time.perf_counter() - start
    connected, ready = initialize_answered(port, start, "the magic's step")
    results.append({"shown": shown, "ready": max(shown, ready)})
    shell.run_line_magic(f"aml_debug_{kind}", "--stop")
print("RESULT", json.dumps(results), file=sys.__stdout__)
"""


def run(python: str, code: str, *args: str, env: dict[str, str]) -> str:
    """Run ``code`` in a fresh ``python``; what follows its last ``RESULT`` word."""
    done = subprocess.run([python, "-c", code, *args], capture_output=True, text=True,
                          env=env, timeout=600, cwd=tempfile.gettempdir())
    found = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
    if done.returncode or not found:
        raise RuntimeError(done.stderr[-2000:])
    return found[-1].split(" ", 1)[1]


def main() -> None:
    python, rounds, env = bench_options(__doc__)
    version = subprocess.run([python, "-c", "import sys; print(sys.version.split()[0])"],
                             capture_output=True, text=True).stdout.strip()
    print(f"python {version}, {rounds} rounds, {os.cpu_count()} cores")

    loads, heavy = [], set()
    for _ in range(rounds):
        took, *loaded = run(python, LOAD_EXT, env=env).split(" ")
        loads.append(float(took))
        heavy.update(m for m in ",".join(loaded).split(",") if m)
    anchors = [float(run(python, IMPORT_AZUREML, env=env)) for _ in range(3)]
    load_ms, anchor_ms = statistics.median(loads) * 1000, statistics.median(anchors) * 1000
    print("\n1. %load_ext aml_debug_magics (median, fresh IPython each round)")
    print(f"   load_ext:                {load_ms:7.1f} ms   (target < 50 ms)")
    print(f"   heavy modules loaded:    {', '.join(sorted(heavy)) or 'none'}   (target: none)")
    print(f"   anchor import azureml.core: {anchor_ms:7.1f} ms   ratio {load_ms / anchor_ms:.4f}")

    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "job.py"
        script.write_text("print('done')\n")
        ports = [free_port() for _ in range(rounds)]
        magic = json.loads(run(python, MAGIC, str(REPO / "bench"), "run", str(script),
                               *map(str, ports), env=env))
        try:
            ports = [free_port() for _ in range(rounds)]
            v2 = json.loads(run(python, MAGIC, str(REPO / "bench"), "job", folder,
                                *map(str, ports), env=env))
            ports = [free_port() for _ in range(rounds)]
            ranks = json.loads(run(python, MAGIC, str(REPO / "bench"), "ranks", folder,
                                   *map(str, ports), env=env))
        except RuntimeError as error:  # azure-ai-ml (the v2 extra) is not installed
            v2 = ranks = []
            print(f"(the SDK v2 figure is left out: {str(error).splitlines()[-1]})")
        bare = []
        for _ in range(rounds):
            port = free_port()
            command = [python, "-m", "debugpy", "--listen", f"127.0.0.1:{port}",
                       "--wait-for-client", str(script)]
            bare.append(time_to_attachable(command, port, env)[1])
    shown = statistics.median(r["shown"] for r in magic)
    ready = statistics.median(r["ready"] for r in magic)
    bare_s = statistics.median(bare)
    print("\n2. time to attachable, local target (median)")
    print(f"   anchor python -m debugpy --wait-for-client, 'initialize' answered: "
          f"{bare_s * 1000:7.1f} ms")
    print(f"   %aml_debug_run -> panel shows host:port:                          "
          f"{shown * 1000:7.1f} ms")
    print(f"   %aml_debug_run -> panel shows host:port and 'initialize' answered: "
          f"{ready * 1000:7.1f} ms   ratio {ready / bare_s:.3f}   (target <= 1.2)")
    if v2:
        ready_v2 = statistics.median(r["ready"] for r in v2)
        print(f"   %aml_debug_job (SDK v2 command job) -> the same:                   "
              f"{ready_v2 * 1000:7.1f} ms   ratio {ready_v2 / bare_s:.3f}")
        ready_ranks = statistics.median(r["ready"] for r in ranks)
        print("\n3. a distributed job, local target: 2 nodes x 2 processes (median)")
        print(f"   anchor: the same command job, one process:                        "
              f"{ready_v2 * 1000:7.1f} ms")
        print(f"   %aml_debug_job -> rank 0 shown and 'initialize' answered:          "
              f"{ready_ranks * 1000:7.1f} ms   ratio {ready_ranks / ready_v2:.3f}   "
              "(target <= 1.2)")


if __name__ == "__main__":
    main()
