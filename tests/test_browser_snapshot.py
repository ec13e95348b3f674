"""Show frames in the browser: the notebook debugger's view on a failure's snapshot, read-only.

JupyterLab on 127.0.0.1 (a free port, a token, a throwaway folder holding tutorial 7), driven
in Debian's Chromium with Playwright as a user would: run the tutorial (its second run fails
and waits at the exception), click **Show frames** on the row, and read the view: the frames of
the traceback, the failing line marked, the locals, the exception above the source, the line
saying it is a snapshot, and no stepping buttons, breakpoints or evaluate box; a click on
another frame shows its line and locals. Nothing is faked: the script fails under the real
bootstrap, whose snapshot lines the row read from its output.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import REPO
from test_browser import CHROMIUM, FIRST_START, jupyter_lab, notebook
from test_browser_debugger import (
    STEP,
    panel_of,
    shut_down_kernels,
    toggle_breakpoint,
    value_of,
    variable,
)

from aml_debug_magics.debugger.snapshot import READ_ONLY

pytestmark = [
    pytest.mark.every_python("JupyterLab and ipykernel differ by Python (ipykernel 6 on 3.10)"),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="apt-get install -y chromium"),
]

TUTORIAL = "7_debug_a_failed_step.ipynb"
FIT_LINE, MAIN_LINE = 3, 12  # the raise in fit(), and main()'s call of it


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    pytest.importorskip("playwright", reason="playwright is a test dependency")
    root = tmp_path_factory.mktemp("lab_snapshot")
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


@pytest.mark.parametrize("ui, path", [
    ("jupyterlab", f"lab/workspaces/snapshot/tree/lab_{TUTORIAL}"),
    ("notebook7", f"notebooks/nb7_{TUTORIAL}"),
])
def test_show_frames_opens_the_snapshot_read_only(lab, browser, tmp_path, ui, path):
    """The screenshot is kept in the test's folder (and JupyterLab's written to
    $AML_DEBUG_SNAPSHOT_SCREENSHOT when set, for docs/snapshot.png)."""
    try:
        with notebook(browser, lab, "127.0.0.1", path) as page:
            panel = panel_of(page, "%aml_debug_run")
            panel.locator(".aml-debug-status",
                          has_text="failed, waiting for a debugger at the exception").wait_for(
                timeout=FIRST_START)
            button = panel.get_by_role("button", name="Show frames")
            button.evaluate("element => element.scrollIntoView({block: 'center'})")
            button.click()
            view = panel.locator(".aml-dbg").first
            view.wait_for(timeout=STEP)
            view.evaluate("element => element.scrollIntoView({block: 'start'})")

            view.locator(f'.aml-dbg-line-top[data-line="{FIT_LINE}"]').wait_for(timeout=STEP)
            assert view.get_attribute("data-status") == "stopped"
            assert "aml-dbg-read-only" in view.get_attribute("class")
            assert view.locator(".aml-dbg-status").inner_text() == READ_ONLY
            assert view.locator(".aml-dbg-exception-title").inner_text() == \
                "ZeroDivisionError: division by zero"
            assert view.locator(".aml-dbg-frame-name").all_inner_texts() == \
                ["fit", "main", "<module>"]
            for hidden in (".aml-dbg-continue", ".aml-dbg-next", ".aml-dbg-stop",
                           ".aml-dbg-raised", ".aml-dbg-evaluate"):
                assert view.locator(hidden).is_hidden(), hidden
            assert value_of(variable(view, "Locals of fit/batch")) == "[]"
            view.screenshot(path=str(tmp_path / f"snapshot-{ui}.png"))
            if ui == "jupyterlab" and os.environ.get("AML_DEBUG_SNAPSHOT_SCREENSHOT"):
                shutil.copy(tmp_path / f"snapshot-{ui}.png",
                            os.environ["AML_DEBUG_SNAPSHOT_SCREENSHOT"])

            toggle_breakpoint(view, 2)  # read-only: the gutter sends nothing
            view.locator(".aml-dbg-frame", has_text="main").click()
            view.locator(f'.aml-dbg-line-caller[data-line="{MAIN_LINE}"]').wait_for(timeout=STEP)
            assert view.locator(".aml-dbg-frame.aml-dbg-selected .aml-dbg-frame-name") \
                .inner_text() == "main"
            assert value_of(variable(view, "Locals of main/api_token")) == "REDACTED"
            assert value_of(variable(view, "Locals of main/batches")) == \
                "[[1, 2, 3], [4, 5], []]"
            assert view.locator(".aml-dbg-breakpoint").count() <= 1  # the gutter's spacer
            assert re.search(r"mean = total / len\(batch\)",
                             view.locator(".cm-content").inner_text())
    finally:
        shut_down_kernels(lab)
