"""%aml_debug_deploy: the worker's output shows the server and the scoring script, not debugpy's
own start-up warnings (the real inference server, real debugpy in its worker)."""

from __future__ import annotations

import pytest
from conftest import wait_for
from dap_client import DapClient

from aml_debug_magics.session import current_session

pytest.importorskip("azureml_inference_server_http", reason="the inference server is a dependency")

SCORE = """\
def init():
    pass

def run(raw_data):
    return {"echo": raw_data}
"""


def test_the_worker_prints_no_debugger_warning(ip, tmp_path, monkeypatch):
    # pydevd reads it when imported: the worker must set it before, whatever the kernel has
    monkeypatch.delenv("PYDEVD_DISABLE_FILE_VALIDATION", raising=False)
    (tmp_path / "score.py").write_text(SCORE)
    ip.run_line_magic("aml_debug_deploy", "--entry-script score.py --timeout 60")
    session = current_session("deploy")
    row = session.rows[0]
    try:
        wait_for(lambda: session.service.health == "healthy", 60, "the server to be healthy")
        wait_for(lambda: row.announcement, 30, "the worker to announce the debugger")
        wait_for(lambda: any("ready for serving traffic" in line for line in row.last_lines),
                 30, "the worker to say it serves")
        # debugpy starts in the worker when a debugger comes: one does, and is attached
        config = row.attach_config()
        client = DapClient.connect(config["connect"]["host"], config["connect"]["port"])
        try:
            client.attach(config, {})
            wait_for(lambda: row.attached, 30, "the row to say a debugger attached")
        finally:
            client.close()
        assert not [line for line in row.last_lines if "Debugger warning" in line]
    finally:
        ip.run_line_magic("aml_debug_deploy", "--stop")
