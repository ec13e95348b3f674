"""Nothing outlives the kernel or an interrupted stop: real processes, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from conftest import (
    REAPER,
    REPO,
    children_of,
    live_adapters,
    live_processes,
    wait_for,
)

from aml_debug_magics.records import Status
from aml_debug_magics.session import current_session

pytestmark = pytest.mark.every_python(
    "kernel restarts and the extension's unload differ between ipykernel 6 and 7"
)

KERNEL = textwrap.dedent(
    """\
    import json, sys, time
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config
    from aml_debug_magics.session import current_session

    config = Config()
    config.HistoryAccessor.enabled = False
    ip = InteractiveShell.instance(config=config)
    ip.run_line_magic("load_ext", "aml_debug_magics")
    ip.run_line_magic("config", "AmlDebugMagics.view = 'text'")
    ip.run_line_magic("aml_debug_run", "--timeout 120 job.py")
    ip.run_line_magic("aml_debug_deploy", "--entry-script score.py --timeout 120")
    run, deploy = current_session("run"), current_session("deploy")
    deadline = time.time() + 90
    while time.time() < deadline and not (run.rows[0].announcement and deploy.rows[0].announcement
                                           and deploy.service.health == "healthy"):
        time.sleep(0.1)
    print("READY", flush=True)
    time.sleep(600)
    """
)
SCORE = "def init():\n    pass\n\ndef run(raw):\n    return {'ok': True}\n"


def test_a_killed_kernel_takes_every_process_it_started_with_it(tmp_path, capsys):
    pytest.importorskip("azureml_inference_server_http", reason="the inference server")
    (tmp_path / "job.py").write_text("print('never reached while waiting')\n")
    (tmp_path / "score.py").write_text(SCORE)
    adapters_before = set(live_adapters())
    kernel = subprocess.Popen(
        [sys.executable, "-c", KERNEL], cwd=tmp_path, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        for line in kernel.stdout:  # the text view's lines, then READY (or the end: a crash)
            if "READY" in line:
                break
        else:
            raise AssertionError(f"the kernel ended before its sessions were up: {kernel.wait()}")
        groups = children_of(kernel.pid)
        started = {p.pid for p in live_processes() if p.group in groups}
        watchdog = [p.pid for p in live_processes()
                    if p.parent == kernel.pid and REAPER in p.read("cmdline")]
        assert len(watchdog) == 1  # the reaper: it must end too
        started |= set(watchdog)
        started |= set(live_adapters()) - adapters_before
        assert len(groups) >= 2 and len(started) >= 5  # bootstrap, gate, adapter, server, worker
        kernel.send_signal(signal.SIGKILL)  # as the OOM killer does
        kernel.wait()
        killed_at = time.monotonic()
        wait_for(lambda: not started & {p.pid for p in live_processes()}, 30,
                 "every child to end")
        print(f"{len(started)} processes ended {time.monotonic() - killed_at:.1f} s after the "
              "kernel's SIGKILL")
    finally:
        if kernel.poll() is None:
            kernel.kill()


def test_ctrl_c_during_a_stop_still_ends_a_script_that_ignores_sigterm(ip, tmp_path):
    (tmp_path / "stubborn.py").write_text(
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: print('SIGTERM ignored', flush=True))\n"
        "print('ignoring SIGTERM', flush=True)\nwhile True:\n    time.sleep(0.1)\n"
    )
    ip.run_line_magic("aml_debug_run", "--timeout 1 stubborn.py")
    session = current_session("run")
    lines = session.rows[0].last_lines
    wait_for(lambda: "ignoring SIGTERM" in lines, 60, "the script to run")
    # the user's Ctrl-C, pressed once the stop's SIGTERM has reached the script and the stop
    # waits for a script that will not end; never after the stop is over
    stop_over = threading.Event()
    pressing = threading.Lock()

    def press_ctrl_c() -> None:
        deadline = time.monotonic() + 60
        while "SIGTERM ignored" not in lines and time.monotonic() < deadline:
            if stop_over.wait(0.01):
                return
        with pressing:
            if "SIGTERM ignored" in lines and not stop_over.is_set():
                os.kill(os.getpid(), signal.SIGINT)

    # a kernel turns SIGINT into KeyboardInterrupt even when this run was started with it
    # ignored (a background job of a non-interactive shell inherits SIG_IGN)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    user = threading.Thread(target=press_ctrl_c, daemon=True)
    user.start()
    try:
        with pytest.raises(KeyboardInterrupt) as interrupted:
            try:
                ip.run_line_magic("aml_debug_run", "--stop")
            finally:
                with pressing:
                    stop_over.set()
    finally:
        user.join(10)
        signal.signal(signal.SIGINT, previous)
    assert "SIGTERM ignored" in lines, f"the stop sent no SIGTERM: {list(lines)}"
    assert any(entry.name == "stop" for entry in interrupted.traceback)  # inside the stop
    wait_for(lambda: children_of() == [], 30, "the script to be gone")
    assert current_session("run") is session  # still known: --stop can be run again
    ip.run_line_magic("aml_debug_run", "--stop")
    assert current_session("run") is None
    assert session.rows[0].status == Status.STOPPED


def test_the_leftover_check_sees_only_this_runs_adapters(tmp_path):
    """A debug session on the same machine that this run did not start (another user, another
    test run) is not this run's to wait for."""
    (tmp_path / "job.py").write_text("print('done')\n")
    foreign_env = {k: v for k, v in os.environ.items() if k != "AML_DEBUG_TEST_RUN"}
    foreign_env["PYTHONPATH"] = str(REPO)
    foreign = subprocess.Popen(
        [sys.executable, "-u", "-m", "aml_debug_magics.node.bootstrap", "--listen",
         "127.0.0.1:0", "--timeout", "60", "--", "job.py"],
        cwd=tmp_path, env=foreign_env, stdout=subprocess.PIPE, text=True,
    )
    try:
        wait_for(lambda: "AML_DEBUG v1 announce" in foreign.stdout.readline(), 30, "announce")
        wait_for(lambda: set(live_adapters(every_run=True)) - set(live_adapters()), 10,
                 "the foreign adapter")
    finally:
        foreign.terminate()
        foreign.wait(10)
