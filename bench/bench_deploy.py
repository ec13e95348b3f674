"""Time to the first successful scoring response: ``%aml_debug_deploy`` vs the server by hand.

    python bench/bench_deploy.py [--python PATH] [--rounds N]

Same score.py, same run, rounds alternating:
* anchor: ``azmlinfsrv --entry_script score.py --port P`` started by hand, polled with POST
  /score until it answers 200;
* ``%aml_debug_deploy`` (debugpy in the server's worker) from the magic's call to the first 200,
  nobody attached;
* the same with a debug-protocol client attached before the first request (with the debugger).
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
BODY = b'{"data": [1, 2, 3]}'

MAGIC = """
import json, socket, sys, time
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/../tests"]
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config
config = Config(); config.HistoryAccessor.enabled = False
shell = InteractiveShell.instance(config=config)
shell.run_line_magic("load_ext", "aml_debug_magics")
shell.run_line_magic("config", "AmlDebugMagics.view = 'text'")
from aml_debug_magics.session import current_session
from dap_client import DapClient
from bench_deploy import first_answer
results = []
for attach in (False, True) * int(sys.argv[2]):
    start = time.perf_counter()
    shell.run_line_magic("aml_debug_deploy", "--entry-script score.py")
    session = current_session("deploy")
    client = None
    if attach:
        while not session.rows[0].announcement:
            time.sleep(0.005)
        config = session.rows[0].attach_config()
        client = DapClient.connect(config["connect"]["host"], config["connect"]["port"])
        client.attach(config, {})
    took = first_answer(session.service.scoring_url, start)
    results.append({"attached": attach, "seconds": took})
    if client:
        client.close()
    shell.run_line_magic("aml_debug_deploy", "--stop")
print("RESULT", json.dumps(results), file=sys.__stdout__)
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


def by_hand(python: str, folder: Path, env: dict[str, str]) -> float:
    port = free_port()
    start = time.perf_counter()
    server = subprocess.Popen(
        [python, "-m", "azureml_inference_server_http.amlserver", "--entry_script", "score.py",
         "--port", str(port)], cwd=folder, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        return first_answer(f"http://127.0.0.1:{port}/score", start)
    finally:
        os.killpg(server.pid, 15)
        server.wait()


def main() -> None:
    python, rounds, env = bench_options(__doc__)
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "score.py").write_text(SCORE)
        anchor = [by_hand(python, Path(folder), env) for _ in range(rounds)]
        done = subprocess.run([python, "-c", MAGIC, str(REPO / "bench"), str(rounds)],
                              capture_output=True, text=True, env=env, cwd=folder, timeout=1800)
        found = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
        if not found:
            raise RuntimeError(done.stderr[-3000:])
        magic = json.loads(found[-1].split(" ", 1)[1])
    plain = statistics.median(r["seconds"] for r in magic if not r["attached"])
    attached = statistics.median(r["seconds"] for r in magic if r["attached"])
    hand = statistics.median(anchor)
    print(f"{rounds} rounds; median seconds to the first 200 from /score")
    print(f"   anchor azmlinfsrv by hand:                 {hand:6.2f} s")
    print(f"   %aml_debug_deploy, nobody attached:        {plain:6.2f} s   "
          f"ratio {plain / hand:.2f}")
    print(f"   %aml_debug_deploy, a debugger attached:    {attached:6.2f} s   "
          f"ratio {attached / hand:.2f}")


if __name__ == "__main__":
    main()
