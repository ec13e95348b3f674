"""Time to the first successful scoring response: ``%aml_debug_deploy`` vs the server by hand,
for a scoring script given with ``--entry-script`` (v1) and for an SDK v2 deployment object.

    python bench/bench_deploy.py [--python PATH] [--rounds N]

Each round runs, one after another (so a busy machine weighs on every figure alike):
* anchor: ``azmlinfsrv --entry_script score.py --port P`` started by hand (with
  ``AZUREML_MODEL_DIR`` for the v2 deployment's model), polled with POST /score until it
  answers 200;
* ``%aml_debug_deploy --entry-script score.py`` (debugpy in the server's worker) from the
  magic's call to the first 200, nobody attached, then with a debug-protocol client attached
  as soon as the worker announces (with the debugger);
* the same two for ``%aml_debug_deploy blue``, ``blue`` a ``ManagedOnlineDeployment`` with a
  code folder, a model folder and environment variables;
* the v1 pair again with ``AML_DEBUG_FOLLOW_CHILDREN=1``: debugpy's adapter process, which the
  worker waits for, as every deploy had it before debugpy answered from the worker.
The magics run in one IPython shell, kept between rounds, as in a notebook. A first round, not
counted, leaves the compiled bytecode a pip-installed environment has from its install (an
environment made by ``uv`` has none until a first import writes it; with
``PYTHONDONTWRITEBYTECODE`` set every start compiles the server and debugpy anew, a second or
more on every figure alike); the bench lets Python write it.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench_bootstrap import REPO, bench_options, free_port

SCORE = """\
import json
def init():
    global factor
    factor = 2
def run(raw_data):
    return {"prediction": [x * factor for x in json.loads(raw_data)["data"]]}
"""
ONLINE_SCORE = """\
import json, os
def init():
    global factor
    with open(os.path.join(os.environ["AZUREML_MODEL_DIR"], "model", "factor.json")) as file:
        factor = json.load(file) * int(os.environ["FACTOR_SCALE"])
def run(raw_data):
    return {"prediction": [x * factor for x in json.loads(raw_data)["data"]]}
"""
BODY = b'{"data": [1, 2, 3]}'

SHELL = """
import json, os, sys, time
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/../tests"]
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config
config = Config(); config.HistoryAccessor.enabled = False
shell = InteractiveShell.instance(config=config)
shell.run_line_magic("load_ext", "aml_debug_magics")
shell.run_line_magic("config", "AmlDebugMagics.view = 'text'")
from azure.ai.ml.entities import CodeConfiguration, ManagedOnlineDeployment, Model
shell.user_ns["blue"] = ManagedOnlineDeployment(
    name="blue", endpoint_name="bench", model=Model(path="model"),
    code_configuration=CodeConfiguration(code="onlinescoring", scoring_script="score.py"),
    environment_variables={"FACTOR_SCALE": "1"},
)
from aml_debug_magics.session import current_session
from dap_client import DapClient
from bench_deploy import first_answer
print("READY", file=sys.__stdout__, flush=True)
for line in sys.stdin:
    arguments, attach, follow = json.loads(line)
    os.environ["AML_DEBUG_FOLLOW_CHILDREN"] = "1" if follow else "0"
    start = time.perf_counter()
    shell.run_line_magic("aml_debug_deploy", arguments)
    session = current_session("deploy")
    client = None
    if attach:
        while not session.rows[0].announcement:
            time.sleep(0.005)
        config = session.rows[0].attach_config()
        client = DapClient.connect(config["connect"]["host"], config["connect"]["port"])
        client.attach(config, {})
    took = first_answer(session.service.scoring_url, start)
    if client:
        client.close()
    shell.run_line_magic("aml_debug_deploy", "--stop")
    print("RESULT", took, file=sys.__stdout__, flush=True)
"""


def first_answer(url: str, start: float, limit: float = 120.0) -> float:
    """Seconds from ``start`` until POST ``url`` answers 200."""
    while time.perf_counter() - start < limit:
        request = urllib.request.Request(url, data=BODY, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                if response.status == 200:
                    return time.perf_counter() - start
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.01)
    raise RuntimeError(f"no answer from {url}")


def by_hand(python: str, folder: Path, script: str, env: dict[str, str]) -> float:
    port = free_port()
    start = time.perf_counter()
    server = subprocess.Popen(
        [python, "-m", "azureml_inference_server_http.amlserver", "--entry_script", script,
         "--port", str(port)], cwd=folder, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        return first_answer(f"http://127.0.0.1:{port}/score", start)
    finally:
        os.killpg(server.pid, 15)
        server.wait()


def lay_out(folder: Path) -> Path:
    """score.py for v1; onlinescoring/score.py, model/ and azureml-models/ (what Azure ML, and
    the anchor, hand the server as AZUREML_MODEL_DIR) for v2."""
    (folder / "score.py").write_text(SCORE)
    (folder / "onlinescoring").mkdir()
    (folder / "onlinescoring" / "score.py").write_text(ONLINE_SCORE)
    (folder / "model").mkdir()
    (folder / "model" / "factor.json").write_text("2")
    model_dir = folder / "azureml-models" / "blue" / "1"
    model_dir.mkdir(parents=True)
    (model_dir / "model").symlink_to(folder / "model")
    return model_dir


def main() -> None:
    python, rounds, env = bench_options(__doc__)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    figures: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        model_dir = lay_out(folder)
        env = {**env, "AML_DEBUG_CACHE": str(folder / "cache")}
        errors = (folder / "shell.err").open("w")
        shell = subprocess.Popen(
            [python, "-c", SHELL, str(REPO / "bench")], cwd=folder, env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors,
        )
        assert shell.stdin is not None and shell.stdout is not None

        def magic(arguments: str, attach: bool, follow: bool = False) -> float:
            shell.stdin.write(json.dumps([arguments, attach, follow]) + "\n")
            shell.stdin.flush()
            for line in shell.stdout:
                if line.startswith("RESULT"):
                    return float(line.split()[1])
            raise RuntimeError("the shell ended: " + (folder / "shell.err").read_text()[-3000:])

        for line in shell.stdout:
            if line.startswith("READY"):
                break
        online_env = {**env, "AZUREML_MODEL_DIR": str(model_dir), "FACTOR_SCALE": "1"}
        try:
            for round_ in range(rounds + 1):  # round 0 writes the bytecode: not counted
                for key, took in (
                    ("v1 anchor", lambda: by_hand(python, folder, "score.py", env)),
                    ("v1 plain", lambda: magic("--entry-script score.py", False)),
                    ("v1 attached", lambda: magic("--entry-script score.py", True)),
                    ("v2 anchor", lambda: by_hand(python, folder, "onlinescoring/score.py",
                                                  online_env)),
                    ("v2 plain", lambda: magic("blue", False)),
                    ("v2 attached", lambda: magic("blue", True)),
                    ("adapter plain", lambda: magic("--entry-script score.py", False, True)),
                    ("adapter attached", lambda: magic("--entry-script score.py", True, True)),
                ):
                    seconds = took()
                    if round_:
                        figures.setdefault(key, []).append(seconds)
        finally:
            shell.stdin.close()
            shell.wait(timeout=60)
            errors.close()
    median = {key: statistics.median(values) for key, values in figures.items()}
    least = {key: min(values) for key, values in figures.items()}
    print(f"{rounds} rounds, interleaved; seconds to the first 200 from /score, median (and the "
          "fastest round: on a shared machine, the least disturbed); ratio: the median of each "
          "round's figure over the same round's anchor (and the fastest's over the fastest)")
    for group, anchor, what in (
        ("v1", "v1", "--entry-script score.py"),
        ("v2", "v2", "blue (ManagedOnlineDeployment)"),
        ("adapter", "v1", "--entry-script score.py, debugpy's adapter process "
                          "(AML_DEBUG_FOLLOW_CHILDREN=1)"),
    ):
        hand, fastest = median[f"{anchor} anchor"], least[f"{anchor} anchor"]
        print(f"  {what}")
        if group == anchor:
            print(f"   anchor azmlinfsrv by hand:                 {hand:6.2f} s ({fastest:.2f})")
        for kind, label in (("plain", "nobody attached"), ("attached", "a debugger attached")):
            took, quickest = median[f"{group} {kind}"], least[f"{group} {kind}"]
            paired = statistics.median(
                ours / theirs for ours, theirs in zip(figures[f"{group} {kind}"],
                                                      figures[f"{anchor} anchor"], strict=True)
            )
            print(f"   %aml_debug_deploy, {label + ':':24s} {took:6.2f} s ({quickest:.2f})   "
                  f"ratio {paired:.2f} ({quickest / fastest:.2f})")

if __name__ == "__main__":
    main()
