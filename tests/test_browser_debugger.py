"""The in-notebook debugger view: its checked-in bundle, and the view as users drive it.

The bundle ``ui/debugger.js`` is built from ``ui/debugger_src`` and checked in, so ``pip install``
needs no Node.js. Its first line records the sha256 of the sources it was built from: the first
test recomputes it (no Node.js needed), the second rebuilds the bundle with the pinned esbuild
where ``npm ci`` has been run in ``ui/debugger_src`` and compares it byte for byte.

The browser tests start JupyterLab on 127.0.0.1 (a free port, a token, a throwaway folder holding
tutorial 6) and drive it in Debian's Chromium with Playwright, in JupyterLab and in Notebook 7, as
a user with no VS Code would: run the tutorial, click **Debug here** on the script's row, set a
breakpoint in the gutter at the stop before the first line, continue (F5, the focus left in the
view by that click), see the stop and the line mark, open a nested variable, evaluate an expression
(and a failing one, one whose value is shortened, then shown in full, and a 50 MB one, shown in
part with its length), step over with the button, then with VS Code's keys wherever the focus is in
the view: F10 after a click in the source text (as a user reading it), F11, Shift+F11 from the
evaluate box after clearing the breakpoint in the gutter, F5 to the end; read the script's output
file; then on the scoring script's gunicorn worker through **Send test request**, with score.py
shown (no current line) until the worker stops in it. Nothing is faked: the script and the
inference server run under real debugpy, and each test ends its kernel (and with it what the kernel
started). The view's screenshot is kept in the test's folder (and written to $AML_DEBUG_SCREENSHOT
when set, for docs/debugger.png).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO, wait_for
from test_browser import CHROMIUM, FIRST_START, jupyter_lab, notebook

pytestmark = pytest.mark.every_python(
    "JupyterLab, Notebook 7 and ipykernel differ by Python (ipykernel 6 on 3.10)"
)

UI = REPO / "aml_debug_magics" / "ui"
SOURCES = UI / "debugger_src"
BUNDLE = UI / "debugger.js"
TUTORIAL = "6_debug_in_the_notebook.ipynb"
HEADER = re.compile(r"^// .* built by ui/debugger_src/build\.sh; sources: (?P<names>[^;]+); "
                    r"sha256=(?P<digest>[0-9a-f]{64})$")


def bundle_header() -> re.Match:
    first = BUNDLE.read_text().split("\n", 1)[0]
    header = HEADER.match(first)
    assert header, f"debugger.js does not open with build.sh's header: {first[:120]!r}"
    return header


def test_bundle_records_the_sources_it_was_built_from():
    header = bundle_header()
    names = header["names"].split()
    shipped = {path.name for path in SOURCES.iterdir()
               if path.suffix in (".js", ".css", ".json", ".sh")}
    assert shipped == set(names), "build.sh's SOURCES must list every source file"
    digest = hashlib.sha256(b"".join((SOURCES / name).read_bytes() for name in names))
    assert digest.hexdigest() == header["digest"], (
        "ui/debugger.js is older than its sources: run `npm ci && sh build.sh` in "
        "aml_debug_magics/ui/debugger_src and check the new bundle in")


def test_bundle_matches_a_fresh_build(tmp_path):
    if not (SOURCES / "node_modules" / ".bin" / "esbuild").exists():
        pytest.skip("run `npm ci` in aml_debug_magics/ui/debugger_src to rebuild the bundle here")
    subprocess.run(["sh", str(SOURCES / "build.sh"), str(tmp_path)], check=True, timeout=120)
    assert (tmp_path / "debugger.js").read_bytes() == BUNDLE.read_bytes()


def test_bundle_is_an_es_module_for_anywidget_with_no_network_imports():
    text = BUNDLE.read_text()
    assert re.search(r"export\s*\{\s*\w+ as default\s*\}", text), "anywidget needs a default export"
    statements = re.findall(r"""(?:^|[;}\n])\s*import\s*[\w{*"']|\bimport\(""", text)
    assert not statements, "the bundle must import nothing: compute instances may be offline"
    assert "https://" not in re.sub(r"https://(codemirror\.net|github\.com)/\S*", "", text)


# -- in the browser ---------------------------------------------------------------------------

STEP = 60_000  # ms: one debugger round trip, kernel to debuggee and back, on a busy machine

browser_only = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="apt-get install -y chromium")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    pytest.importorskip("playwright", reason="playwright is a test dependency")
    root = tmp_path_factory.mktemp("lab_debugger")
    for name in ("lab", "nb7"):
        shutil.copy(REPO / "notebooks" / TUTORIAL, root / f"{name}_{TUTORIAL}")
    with jupyter_lab(root) as started:
        yield started


@pytest.fixture(scope="module")
def browser(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


def line_of(path: Path, marker: str) -> int:
    """The 1-based number of the line of ``path`` that holds ``marker``."""
    lines = path.read_text().splitlines()
    return next(number for number, text in enumerate(lines, 1) if marker in text)


def toggle_breakpoint(view, number: int) -> None:
    """A click in the gutter on line ``number``, as a user sets or clears a breakpoint
    (CodeMirror renders only the lines near the viewport: the line is scrolled to first)."""
    view.locator(".cm-content").evaluate(
        "(content, number) => content.querySelectorAll('.cm-line')[number - 1]"
        ".scrollIntoView({block: 'center'})", number)
    view.locator(".cm-lineNumbers .cm-gutterElement").filter(
        has_text=re.compile(rf"^{number}$")).click()


def stopped_at(view, number: int, frame: str | None = None) -> None:
    """Wait for the line mark on ``number`` in the executing frame (named ``frame``, if given),
    with the view stopped."""
    view.locator(f'.aml-dbg-line-top[data-line="{number}"]').wait_for(timeout=STEP)
    if frame is not None:
        view.locator(".aml-dbg-frame.aml-dbg-selected .aml-dbg-frame-name").filter(
            has_text=re.compile(f"^{re.escape(frame)}$")).wait_for(timeout=STEP)
    assert view.get_attribute("data-status") == "stopped"


def click_source_text(view, number: int) -> None:
    """A click on the text of line ``number`` (not the gutter), as a user reading the source."""
    view.locator(".cm-content .cm-line").nth(number - 1).click()


def variable(view, path: str):
    """The variables tree's node at ``path`` (scope and names, "/" between)."""
    return view.locator(f'.aml-dbg-var[data-path="{path}"]').first


def value_of(node) -> str:
    return node.locator(":scope > .aml-dbg-var-row .aml-dbg-var-value").inner_text()


def panel_of(page, magic: str):
    """The panel of the session ``magic`` started (its header names the magic)."""
    return page.locator(".aml-debug-panel").filter(
        has=page.locator(".widget-html", has_text=magic)).first


def shut_down_kernels(lab) -> None:
    """End every kernel of the server, as closing JupyterLab's tabs with "shut down" does: what
    a kernel started (scripts, servers, debug adapters) ends with it."""
    api = f"http://127.0.0.1:{lab['port']}/api/kernels"
    headers = {"Authorization": f"token {lab['token']}"}
    with urllib.request.urlopen(urllib.request.Request(api, headers=headers)) as answer:
        kernels = json.load(answer)
    for kernel in kernels:
        urllib.request.urlopen(urllib.request.Request(
            f"{api}/{kernel['id']}", headers=headers, method="DELETE")).close()


def open_debug_here(page, panel):
    """Click **Debug here** on the panel's row once it can be attached to, and return the view
    that opens (the page's next one)."""
    button = panel.get_by_role("button", name="Debug here")
    button.wait_for(state="attached", timeout=FIRST_START)
    button.evaluate("element => element.scrollIntoView({block: 'center'})")
    wait_for(button.is_enabled, FIRST_START / 1000, "Debug here to be offered")
    opened = page.locator(".aml-dbg").count()
    button.click()
    view = page.locator(".aml-dbg").nth(opened)
    view.wait_for(timeout=STEP)
    view.evaluate("element => element.scrollIntoView({block: 'start'})")
    return view


def written_json(path: Path):
    """The JSON in ``path`` once it is whole; None before."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def debug_the_script(page, view, folder: Path, screenshot: Path) -> None:
    """In the view of the tutorial's train.py, from its stop before the first line to its end."""
    script = folder / "tutorial_debugger" / "train.py"
    output = folder / "tutorial_debugger" / "weights.json"
    output.unlink(missing_ok=True)  # another notebook's run wrote it
    view.locator(".cm-content", has_text="def train(").wait_for(timeout=STEP)
    stopped_at(view, line_of(script, "import argparse"))  # paused before the first line

    update = line_of(script, "# a good line for a breakpoint")
    toggle_breakpoint(view, update)
    view.locator(".aml-dbg-breakpoint").nth(1).wait_for(timeout=STEP)  # nth 0: the gutter's spacer
    page.keyboard.press("F5")  # the gutter's click left the focus in the view
    stopped_at(view, update)
    assert view.locator(".aml-dbg-frame.aml-dbg-selected .aml-dbg-frame-name").inner_text() \
        == "train"

    variable(view, "Locals/settings").locator(".aml-dbg-var-row").first.click()
    variable(view, "Locals/settings/'layers'").locator(".aml-dbg-var-row").first.click()
    second = variable(view, "Locals/settings/'layers'/1")
    second.wait_for(timeout=STEP)
    assert value_of(second) == "32"

    expression = view.locator(".aml-dbg-expression")
    expression.fill("no_such_name")
    expression.press("Enter")
    view.locator(".aml-dbg-result .aml-dbg-error", has_text="no_such_name").wait_for(
        timeout=STEP)
    expression.fill("sum(settings['layers']) * 2")
    expression.press("Enter")
    view.locator(".aml-dbg-result .aml-dbg-var-value").filter(
        has_text=re.compile(r"^112$")).wait_for(timeout=STEP)

    view.screenshot(path=str(screenshot))
    if os.environ.get("AML_DEBUG_SCREENSHOT"):
        shutil.copy(screenshot, os.environ["AML_DEBUG_SCREENSHOT"])
    expression.fill("'ab' * 150 + 'end'")  # 305 characters: shortened, its full value on demand
    expression.press("Enter")
    view.locator(".aml-dbg-result .aml-dbg-full-value").click()
    view.locator(".aml-dbg-result .aml-dbg-var-full").filter(
        has_text=re.compile(r"^'(ab){150}end'$")).wait_for(timeout=STEP)
    expression.fill("'x' * 50_000_000")  # its full value: the first characters, and its length
    expression.press("Enter")
    view.locator(".aml-dbg-result .aml-dbg-full-value").click()
    view.locator(".aml-dbg-result .aml-dbg-note").filter(
        has_text="(the first 4,000,000 of 50,000,002 characters)").wait_for(timeout=STEP)

    view.locator(".aml-dbg-next").click()
    stopped_at(view, update + 1)
    assert value_of(variable(view, "Locals/step")) == "8.0"  # 0.5 * (16 - 0.0)
    click_source_text(view, update + 1)  # reading the source: the keys still step
    page.keyboard.press("F10")  # VS Code's keys: step over, into, out; continue
    stopped_at(view, update + 2)
    page.keyboard.press("F11")  # abs() is no Python function: on to the loop's next turn
    stopped_at(view, update - 1)

    toggle_breakpoint(view, update)  # cleared: stepping out of train() runs its loop to the end
    expression.click()
    page.keyboard.press("Shift+F11")
    stopped_at(view, line_of(script, "weights = train("), "<module>")
    page.keyboard.press("F5")
    # the file exists before the script has written it whole
    wait_for(lambda: written_json(output), STEP / 1000, "the script's output file")
    assert written_json(output)["layers"] == [16, 32, 8]
    wait_for(lambda: view.get_attribute("data-status") == "ended", STEP / 1000,
             "the view to say the script ended")


def debug_the_worker(page, view, panel, folder: Path) -> None:
    """In the view of the tutorial's inference server: a breakpoint in score.py's run(), hit in
    the gunicorn worker by the panel's test request."""
    score = folder / "tutorial_debugger" / "score.py"
    view.locator(".cm-content", has_text="def run(").wait_for(timeout=STEP)
    back = line_of(score, "return {")
    toggle_breakpoint(view, back)
    panel.locator(".aml-debug-send").click()
    stopped_at(view, back)
    assert view.locator(".aml-dbg-frame.aml-dbg-selected .aml-dbg-frame-name").inner_text() \
        == "run"
    # the worker's own debugpy is the one announced (or the server hands the worker off)
    names = view.locator(".aml-dbg-processes option").all_inner_texts()
    assert any("pid" in name for name in names), names
    assert value_of(variable(view, "Locals/prediction")) == "[4.5, 9.5]"
    view.locator(".aml-dbg-continue").click()
    panel.locator(".aml-debug-response", has_text="9.5").wait_for(timeout=STEP)


UIS = pytest.mark.parametrize("ui, path", [
    ("jupyterlab", f"lab/workspaces/debugger/tree/lab_{TUTORIAL}"),
    ("notebook7", f"notebooks/nb7_{TUTORIAL}"),
])


@browser_only
@UIS
def test_debugger_view_on_a_script(lab, browser, tmp_path, ui, path):
    try:
        with notebook(browser, lab, "127.0.0.1", path) as page:
            view = open_debug_here(page, panel_of(page, "%aml_debug_run"))
            debug_the_script(page, view, lab["root"], tmp_path / f"debugger-{ui}.png")
    finally:
        shut_down_kernels(lab)


@browser_only
@UIS
def test_debugger_view_on_a_gunicorn_worker(lab, browser, ui, path):
    try:
        with notebook(browser, lab, "127.0.0.1", path) as page:
            panel = panel_of(page, "%aml_debug_deploy")
            view = open_debug_here(page, panel)
            debug_the_worker(page, view, panel, lab["root"])
    finally:
        shut_down_kernels(lab)  # the inference server runs until its kernel ends
