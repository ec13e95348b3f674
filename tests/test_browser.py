"""The panel as users see it: JupyterLab and Notebook 7 in Debian's Chromium, via Playwright.

JupyterLab starts on 127.0.0.1 with a free port and a token in a throwaway folder holding
tutorial 1; the test runs all cells, then uses the panel as a user would: reads host:port and
connects a debugger, watches the countdown move while the kernel is idle, copies the attach
config and reads the clipboard, writes launch.json, stops. The panel's screenshot is kept in
the test's folder (and written to $AML_DEBUG_SCREENSHOT when set).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import REPO, need_python_script_step, port_refuses, wait_for
from dap_client import DapClient
from servers import listening_line, tail

CHROMIUM = "/usr/bin/chromium"
TUTORIAL = "1_debug_a_pipeline_step_locally.ipynb"
FIRST_START = 180_000  # ms: the first JupyterLab start and kernel on a shared 2-core machine

pytestmark = [
    pytest.mark.every_python("JupyterLab, Notebook 7, ipykernel and ipywidgets differ by Python "
                             "(ipykernel 6 on 3.10)"),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="apt-get install -y chromium"),
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    pytest.importorskip("playwright", reason="playwright is a test dependency")
    need_python_script_step()
    root = tmp_path_factory.mktemp("lab")
    for name in ("lab", "nb7", "plain"):
        shutil.copy(REPO / "notebooks" / TUTORIAL, root / f"{name}_{TUTORIAL}")
    with jupyter_lab(root) as started:
        yield started


@contextmanager
def jupyter_lab(root: Path):
    """JupyterLab (and Notebook 7) serving ``root`` on 127.0.0.1, a free port, with a token:
    yields {"port", "token", "root", "log"}; stopped on exit."""
    settings = root / ".settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)  # no news pop-up over the page
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    token = secrets.token_hex(16)
    env = {**os.environ, "AML_DEBUG_TUTORIAL_TIMEOUT": "600",
           "JUPYTER_RUNTIME_DIR": str(root / ".runtime")}
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--allow-root", "--no-browser",
         "--ServerApp.ip=127.0.0.1", "--ServerApp.port=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={root}", "--ServerApp.allow_remote_access=True",
         f"--LabApp.user_settings_dir={root / '.settings'}",
         f"--LabApp.workspaces_dir={root / '.workspaces'}",
         "--LabApp.expose_app_in_browser=True",
         "--JupyterNotebookApp.expose_app_in_browser=True"],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    log = root / "server.log"
    found = listening_line(server, r"http://127\.0\.0\.1:(\d+)/", "JupyterLab", keep=log)
    port = int(found.group(1))
    try:
        yield {"port": port, "token": token, "root": root, "log": log}
    finally:
        os.killpg(server.pid, 15)
        server.wait(30)


@pytest.fixture(scope="module")
def browser(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--host-resolver-rules=MAP notsecure.test 127.0.0.1"],
        )
        yield launched
        launched.close()


KERNEL_STATE = """() => {
    const widget = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const kernel = widget && widget.sessionContext && widget.sessionContext.session
        && widget.sessionContext.session.kernel;
    return {status: kernel ? kernel.status : null,
            connection: kernel ? kernel.connectionStatus : null};
}"""


def run_all(page, url: str) -> None:
    page.goto(url, timeout=FIRST_START)
    page.wait_for_function(f"() => ({KERNEL_STATE})().status === 'idle'", timeout=FIRST_START)
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")


def train_row(page):
    """The panel's row for the train step, scrolled into view once its address is shown.

    The notebook renders cells far from the viewport lazily, so the row is brought on screen the
    way a user scrolls to it before it can count as visible.
    """
    row = page.locator(".aml-debug-row", has_text="train")
    address = row.locator(".aml-debug-address code")
    address.wait_for(state="attached", timeout=FIRST_START)
    address.evaluate("element => element.scrollIntoView({block: 'center'})")
    address.wait_for(timeout=30_000)
    return row


def seconds_left(row) -> int:
    text = row.locator(".aml-debug-countdown").inner_text().strip()
    minutes, seconds = re.fullmatch(r"(\d+):(\d\d) left", text).groups()
    return int(minutes) * 60 + int(seconds)


def check_panel(page, lab, screenshot: Path) -> None:
    row = train_row(page)
    host, port = row.locator(".aml-debug-address code").inner_text().split(":")
    client = DapClient.connect(host, int(port))  # a debugger can connect and is answered
    try:
        answer = client.request("initialize", clientID="vscode", adapterID="debugpy")
        assert answer["supportsConfigurationDoneRequest"] is True
    finally:
        client.close()

    first = seconds_left(row)
    started = time.monotonic()
    time.sleep(4)  # the interval being measured
    second = seconds_left(row)
    elapsed = time.monotonic() - started
    assert elapsed - 2.5 <= first - second <= elapsed + 2.5, (first, second, elapsed)

    row.locator(".aml-debug-copy").click()
    row.locator(".aml-debug-copied").filter(has_text="copied").wait_for(timeout=30_000)
    message = page.locator(".aml-debug-message")
    copied = json.loads(page.evaluate("navigator.clipboard.readText()"))
    assert copied["type"] == "debugpy" and copied["request"] == "attach"
    assert copied["connect"]["port"] == int(port)
    # the artifact: the panel as the user sees it just after copying (README's docs/panel.png)
    page.locator(".aml-debug-panel").screenshot(path=str(screenshot))
    if os.environ.get("AML_DEBUG_SCREENSHOT"):
        shutil.copy(screenshot, os.environ["AML_DEBUG_SCREENSHOT"])

    row.locator(".aml-debug-write").click()
    message.filter(has_text="wrote").wait_for(timeout=30_000)
    written = json.loads((lab["root"] / ".vscode" / "launch.json").read_text())
    assert int(port) in [c["connect"]["port"] for c in written["configurations"]]

    stop(page, row)
    wait_for(lambda: port_refuses(host, int(port)), 30, "the port to close")


def stop(page, row) -> None:
    page.locator(".aml-debug-stop").click()
    row.locator(".aml-debug-status", has_text="stopped").wait_for(timeout=60_000)


@contextmanager
def notebook(browser, lab, host: str, path: str):
    """A fresh browser context on the notebook at ``path``, with all its cells run. A wait that
    runs out says where the kernel was and ends with the JupyterLab server's last lines."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    context = browser.new_context(permissions=["clipboard-read", "clipboard-write"],
                                  viewport={"width": 1400, "height": 1000})
    try:
        page = context.new_page()
        run_all(page, f"http://{host}:{lab['port']}/{path}?token={lab['token']}")
        yield page
    except PlaywrightTimeout as error:
        try:
            kernel = page.evaluate(KERNEL_STATE)
        except Exception as unreadable:  # a page that no longer answers
            kernel = f"unreadable: {unreadable}"
        raise AssertionError(f"{str(error).splitlines()[0]}\nkernel: {kernel}\n"
                             f"JupyterLab's last lines:\n{tail(lab['log'])}") from error
    finally:
        context.close()


@pytest.mark.parametrize("ui, path", [
    ("jupyterlab", f"lab/workspaces/panel/tree/lab_{TUTORIAL}"),
    ("notebook7", f"notebooks/nb7_{TUTORIAL}"),
])
def test_panel_as_users_see_it(lab, browser, tmp_path, ui, path):
    with notebook(browser, lab, "127.0.0.1", path) as page:
        check_panel(page, lab, tmp_path / f"panel-{ui}.png")


def test_copy_falls_back_where_the_page_is_not_a_secure_context(lab, browser):
    path = f"lab/workspaces/plain/tree/plain_{TUTORIAL}"
    with notebook(browser, lab, "notsecure.test", path) as page:
        assert page.evaluate("window.isSecureContext") is False
        row = train_row(page)
        port = int(row.locator(".aml-debug-address code").inner_text().split(":")[1])
        row.locator(".aml-debug-copy").click()
        row.locator(".aml-debug-copied").filter(has_text="fallback route").wait_for(
            timeout=30_000)
        reader = page.context.new_page()  # the clipboard is read back on a secure page
        reader.goto(f"http://127.0.0.1:{lab['port']}/api?token={lab['token']}")
        copied = json.loads(reader.evaluate("navigator.clipboard.readText()"))
        assert copied["connect"]["port"] == port
        stop(page, row)
