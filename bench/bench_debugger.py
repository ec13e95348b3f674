"""Benchmarks of the in-notebook debugger view. Prints figures and ratios against each anchor.

    python bench/bench_debugger.py [--python PATH] [--rounds N]

1. The view's bundle (``ui/debugger.js``): bytes, and gzipped (target < 400 kB gzipped; the
   ratio is against that target).
2. Step over in the browser: JupyterLab in Chromium (Playwright), a script under
   ``%aml_debug_run`` opened with **Debug here** and stopped at a breakpoint in a loop; each round
   clicks **Step over** and times, inside the page, from the click to the line mark standing on
   the next line (p50/p95; target p95 < 150 ms). Anchor: the same step over a bare debug-protocol
   client attached to ``python -m debugpy --listen --wait-for-client`` (``next``, then the
   ``stopped`` event, ``stackTrace``, ``scopes`` and the first scope's ``variables``: what a view
   needs to show a stop), in the same rounds. The ratio is the view's p95 over the anchor's.
   The anchor keeps debugpy's defaults, pydevd's socket with Nagle's algorithm (each request
   waits out a 40 ms delayed acknowledgement); the bootstrap (node/debugger.py) turns it off,
   and pydevd's 0.2 s poll in a stopped thread (which the bootstrap's threads made every step
   wait out) down to 20 ms, and the gate acknowledges at once.
3. The page's own share of that: the bundle alone in Chromium on a static page with a stand-in
   model, a stop's state (12 frames, 40 variables, a 400-line source) set, until the next frame
   is painted with the line mark moved (p50/p95).
"""

from __future__ import annotations

import functools
import gzip
import http.server
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench_bootstrap import REPO, bench_options, free_port

sys.path[:0] = [str(REPO), str(REPO / "tests")]

from dap_client import DapClient  # noqa: E402
from test_browser import CHROMIUM, FIRST_START, jupyter_lab, run_all  # noqa: E402

BUNDLE = REPO / "aml_debug_magics" / "ui" / "debugger.js"
LOOP = """\
total = 0
for i in range(10_000_000):
    a = i % 7
    b = a * 3
    total += b
print(total)
"""
FIRST_BODY_LINE = 3
NOTEBOOK = {
    "cells": [
        {"cell_type": "code", "id": f"cell{number}", "metadata": {}, "outputs": [],
         "execution_count": None, "source": source}
        for number, source in enumerate(("%load_ext aml_debug_magics",
                                         "%aml_debug_run --timeout 600 loop.py"))
    ],
    "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                "name": "python3"}},
    "nbformat": 4, "nbformat_minor": 5,
}

# Click "Step over" and resolve with the milliseconds until the mark stands on another line
STEP_OVER = """async (view) => {
    const mark = () => view.querySelector('.aml-dbg-line-top');
    const before = mark().dataset.line;
    const moved = new Promise((resolve) => {
        const observer = new MutationObserver(() => {
            const now = mark();
            if (now && now.dataset.line !== before && view.dataset.status === 'stopped') {
                observer.disconnect();
                resolve(performance.now());
            }
        });
        observer.observe(view, {subtree: true, childList: true, attributes: true});
    });
    const started = performance.now();
    view.querySelector('.aml-dbg-next').click();
    return (await moved) - started;
}"""


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def bundle_sizes() -> tuple[int, int]:
    data = BUNDLE.read_bytes()
    return len(data), len(gzip.compress(data, compresslevel=9))


def view_step_overs(rounds: int, folder: Path) -> list[float]:
    """Milliseconds from the Step over click to the moved line mark, one per round (the kernel
    runs on this interpreter, as JupyterLab does)."""
    from playwright.sync_api import sync_playwright

    (folder / "loop.py").write_text(LOOP)
    (folder / "bench.ipynb").write_text(json.dumps(NOTEBOOK))
    took = []
    with jupyter_lab(folder) as lab, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            run_all(page, f"http://127.0.0.1:{lab['port']}/lab/workspaces/bench/tree/bench.ipynb"
                          f"?token={lab['token']}")
            button = page.get_by_role("button", name="Debug here")
            button.wait_for(timeout=FIRST_START)
            deadline = time.monotonic() + FIRST_START / 1000
            while not button.is_enabled() and time.monotonic() < deadline:
                page.wait_for_timeout(100)
            button.click()
            view = page.locator(".aml-dbg").first
            view.locator(".aml-dbg-line-top").wait_for(timeout=60_000)  # the entry stop
            view.locator(".cm-lineNumbers .cm-gutterElement").filter(
                has_text=str(FIRST_BODY_LINE)).first.click()
            view.locator(".aml-dbg-continue").click()
            view.locator(f'.aml-dbg-line-top[data-line="{FIRST_BODY_LINE}"]').wait_for(
                timeout=60_000)
            view.locator(".cm-lineNumbers .cm-gutterElement").filter(
                has_text=str(FIRST_BODY_LINE)).first.click()  # cleared: steps only from here
            page.wait_for_timeout(500)
            handle = view.element_handle()
            for _ in range(rounds):
                took.append(page.evaluate(STEP_OVER, handle))
            view.locator(".aml-dbg-stop").click()
        finally:
            browser.close()
    return took


def bare_step_overs(python: str, rounds: int, folder: Path, env: dict[str, str]) -> list[float]:
    """The anchor: milliseconds for ``next`` to a stop a view could show, over bare debugpy."""
    script = folder / "loop.py"
    script.write_text(LOOP)
    port = free_port()
    debuggee = subprocess.Popen([python, "-m", "debugpy", "--listen", f"127.0.0.1:{port}",
                                 "--wait-for-client", str(script)], env=env,
                                stdout=subprocess.DEVNULL)
    took = []
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                client = DapClient.connect("127.0.0.1", port)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.attach({"justMyCode": True}, {str(script): [FIRST_BODY_LINE]})
        client.wait_stopped(60)
        client.request("setBreakpoints", source={"path": str(script)}, breakpoints=[])
        for _ in range(rounds):
            started = time.perf_counter()
            client.send("next", threadId=client.stopped_thread)
            frame = client.wait_stopped(30)
            scopes = client.request("scopes", frameId=frame["id"])["scopes"]
            client.request("variables", variablesReference=scopes[0]["variablesReference"])
            took.append((time.perf_counter() - started) * 1000)
        client.close()
    finally:
        debuggee.kill()
        debuggee.wait(10)
    return took


PAGE = """<!doctype html><body><div id="view"></div><script type="module">
import view from "./debugger.js";
const traits = {title: "bench", state: {status: "connecting"}}, listeners = {};
window.model = {
    get: (name) => traits[name],
    set(name, value) {
        traits[name] = value;
        (listeners["change:" + name] || []).forEach((f) => f());
    },
    on: (name, f) => (listeners[name] = listeners[name] || []).push(f),
    off() {},
    send() {},
};
view.render({model: window.model, el: document.getElementById("view")});
</script></body>"""

# Set a stop's state and resolve with the milliseconds until the painted frame after it
SHOW_STOP = """(state) => new Promise((resolve) => {
    const started = performance.now();
    window.model.set("state", state);
    requestAnimationFrame(() => resolve(performance.now() - started));
})"""


def stop_state(line: int) -> dict:
    source = "\n".join(f"value_{n} = {n}" for n in range(1, 401))
    return {
        "status": "stopped", "message": "", "process": "main",
        "processes": [{"id": "main", "name": "train.py"}],
        "stopped": {"reason": "step", "description": "", "thread_id": 1, "exception": None},
        "frames": [{"id": 100 + n, "name": f"frame_{n}", "path": "/w/train.py", "line": line,
                    "local": True} for n in range(12)],
        "frame_id": 100, "source": {"path": "/w/train.py", "text": source, "line": line},
        "scopes": [{"name": "Locals", "variables_reference": 5, "expensive": False,
                    "variables": [{"name": f"v{n}", "value": repr("x" * 150), "type": "str",
                                   "variables_reference": 0, "shortened": False}
                                  for n in range(40)]},
                   {"name": "Globals", "variables_reference": 6, "expensive": False,
                    "variables": []}],
        "breakpoints": {"/w/train.py": [12]}, "exceptions": {"uncaught": True, "raised": False},
    }


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # no line per request in the figures
        pass


def page_renders(rounds: int, folder: Path) -> list[float]:
    """Milliseconds from a new stop's state to the painted frame, the bundle on its own."""
    from playwright.sync_api import sync_playwright

    (folder / "debugger.js").write_bytes(BUNDLE.read_bytes())
    (folder / "index.html").write_text(PAGE)
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{server.server_port}/index.html")
            page.wait_for_selector(".aml-dbg")
            took = [page.evaluate(SHOW_STOP, stop_state(100 + n % 50)) for n in range(rounds + 3)]
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    return took[3:]  # the first stops compile the page's code


def main() -> None:
    python, rounds, env = bench_options(__doc__)
    raw, packed = bundle_sizes()
    print(f"python {sys.version.split()[0]}, {rounds} rounds, {os.cpu_count()} cores")
    print("\n1. the view's bundle, ui/debugger.js")
    print(f"   {raw / 1000:7.1f} kB, gzipped {packed / 1000:7.1f} kB   "
          f"ratio to the 400 kB target {packed / 400_000:.3f}   (target < 1)")

    if not Path(CHROMIUM).exists():
        print("\n2. left out: no Chromium (apt-get install -y chromium)")
        return
    with tempfile.TemporaryDirectory() as view_folder, \
            tempfile.TemporaryDirectory() as bare_folder:
        view = view_step_overs(rounds, Path(view_folder))
        bare = bare_step_overs(python, rounds, Path(bare_folder), env)
    view_p95, bare_p95 = percentile(view, 0.95), percentile(bare, 0.95)
    print("\n2. step over: click -> line mark on the next line (JupyterLab, Chromium)")
    print(f"   view:   p50 {statistics.median(view):6.1f} ms   p95 {view_p95:6.1f} ms   "
          f"(target p95 < 150 ms)")
    print(f"   anchor, bare debug-protocol client: p50 {statistics.median(bare):6.1f} ms   "
          f"p95 {bare_p95:6.1f} ms")
    print(f"   ratio view p95 / anchor p95: {view_p95 / bare_p95:.2f}")
    with tempfile.TemporaryDirectory() as page_folder:
        page = page_renders(rounds, Path(page_folder))
    print("\n3. the page's own share: a stop's state in -> painted with the mark moved")
    print(f"   p50 {statistics.median(page):6.1f} ms   p95 {percentile(page, 0.95):6.1f} ms")


if __name__ == "__main__":
    main()
