"""A scoring script's ``run()`` raising under %aml_debug_deploy: the real inference server
catches it and answers 500, so it is never uncaught. With a debugger attached (real debugpy),
the worker stops where ``run()`` raised; without one, the row names the failure and keeps the
snapshots of the last three, and the server serves on."""

from __future__ import annotations

import ast
import json
import os
import queue
import signal
import subprocess
import textwrap
import threading
from pathlib import Path

import pytest
from conftest import free_port, wait_for
from dap_client import DapClient

from aml_debug_magics.deploy.failures import KEPT
from aml_debug_magics.deploy.local import PACKAGE, post_json
from aml_debug_magics.node.announce import Announcement, Failure, LogReader
from aml_debug_magics.records import ENDED, Status
from aml_debug_magics.session import current_session
from aml_debug_magics.targets.environment import NODE_FILES

pytest.importorskip("azureml_inference_server_http", reason="the inference server is a dependency")

SCORE = textwrap.dedent(
    """\
    import json

    def init():
        pass

    def run(raw_data):
        rows = json.loads(raw_data)["data"]
        if any(value < 0 for row in rows for value in row):
            raise ValueError(f"negative input in {len(rows)} rows")
        return {"sums": [sum(row) for row in rows]}
    """
)
RAISE_LINE = 9


@pytest.fixture
def score(tmp_path):
    (tmp_path / "app").mkdir()
    path = tmp_path / "app" / "score.py"
    path.write_text(SCORE)
    return path


def serve(ip):
    ip.run_line_magic("aml_debug_deploy", "--entry-script app/score.py --timeout 60 "
                     "--sample-request '{\"data\": [[1, -2]]}'")
    session = current_session("deploy")
    wait_for(lambda: session.service.health == "healthy", 90, "the server to be healthy")
    wait_for(lambda: session.rows[0].announcement, 30, "the worker to announce the debugger")
    return session


def score_request(session, *rows: list[int]) -> tuple[int, str]:
    return post_json(session.service.scoring_url, json.dumps({"data": list(rows)}), timeout=60)


def test_without_a_debugger_the_row_names_the_failure_and_the_server_serves_on(ip, score):
    session = serve(ip)
    row = session.rows[0]
    status = row.status
    for rows in range(1, KEPT + 2):  # one failure more than are kept
        answer = score_request(session, *[[rows, -1]] * rows)
        assert answer[0] == 500
        wait_for(lambda rows=rows: row.failure is not None and row.detail.startswith("serving;")
                 and row.failure.message == f"negative input in {rows} rows", 30,
                 "the failure on the row")
    assert row.failure_headline == f"ValueError at score.py:{RAISE_LINE} in run"
    assert row.failure.attach is None  # no post-mortem in a server that serves on
    assert row.status == status and row.status not in ENDED and row.status != Status.POST_MORTEM
    assert row.detail == ("serving; the last request failed: "
                          f"ValueError at score.py:{RAISE_LINE} in run (HTTP 500)")
    assert score_request(session, [1, 2]) == (200, '{"sums": [3]}')  # still serving
    # the last three, newest first, each with run()'s frame and the request it was given
    kept = session._target.failures.newest_first
    assert [f.failure.message for f in kept] == [
        f"negative input in {n} rows" for n in range(KEPT + 1, 1, -1)]
    newest = kept[0].snapshot
    assert [frame["function"] for frame in newest["frames"]] == ["run"]  # none of ours
    assert newest["frames"][0]["line"] == RAISE_LINE
    assert newest["frames"][0]["locals"]["rows"] == repr([[KEPT + 1, -1]] * (KEPT + 1))
    assert json.loads(ast.literal_eval(newest["frames"][0]["locals"]["raw_data"])) == {
        "data": [[KEPT + 1, -1]] * (KEPT + 1)}


@pytest.mark.parametrize("filters, paused_in", [
    (["uncaught"], None),  # VS Code's default: shown as uncaught, run()'s frames from the trace
    (["uncaught", "userUnhandled"], "run"),  # User Uncaught Exceptions, as the notebook's debugger
])
def test_an_attached_debugger_stops_once_where_run_raised(ip, score, filters, paused_in):
    session = serve(ip)
    row = session.rows[0]
    config = row.attach_config()
    client = DapClient.connect(config["connect"]["host"], config["connect"]["port"])
    try:
        client.attach(config, {}, exception_filters=filters)
        wait_for(lambda: row.attached, 30, "the row to say a debugger attached")
        sender = session.send_test_request()
        stopped = client.event("stopped", 60)
        assert (stopped["reason"], stopped["description"]) == (
            "exception", "negative input in 1 rows")
        if paused_in:  # debugpy's own stop: where run() left the user's code, not in ours
            assert stopped["text"].endswith(f"execution is paused at: {paused_in})")
        client.stopped_thread = stopped["threadId"]
        frame = client.request("stackTrace", threadId=stopped["threadId"])["stackFrames"][0]
        assert (frame["source"]["path"], frame["line"]) == (str(score), RAISE_LINE)
        assert frame["name"].removesuffix(" (Current frame)") == "run"
        assert client.locals_of(frame)["rows"] == "[[1, -2]]"
        assert client.evaluate(frame, "raw_data") == repr('{"data": [[1, -2]]}')
        client.resume()  # a second stop would hold the request: the answer proves there is none
        sender.join(60)
        assert session.service.response.startswith("HTTP 500")
    finally:
        client.close()
    assert row.failure is None  # the debugger showed it: no failed line
    assert score_request(session, [1, 2]) == (200, '{"sums": [3]}')


PYTHON_3_12 = Path(__file__).resolve().parents[1] / ".venv-3.12" / "bin" / "python"


@pytest.mark.skipif(not PYTHON_3_12.is_file(), reason="no .venv-3.12 with the inference server")
def test_on_python_3_12_the_worker_tells_and_stops_as_on_3_11(score):
    """Python 3.12 and later trace through sys.monitoring, with its own exception events: the
    server (started as the local target starts it) with no debugger, then with one."""
    scoring = free_port()
    environment = {
        **os.environ, "PYTHONPATH": str(PACKAGE.parents[1]), "AML_DEBUG_LISTEN": "127.0.0.1:0",
        "AML_DEBUG_USER_SCRIPT": str(score), "AML_DEBUG_TIMEOUT": "60",
        "AML_DEBUG_WAIT_IN_INIT": "0", "AML_DEBUG_JUST_MY_CODE": "1",
        "AML_APP_ROOT": str(score.parent), "AML_DEBUG_SOURCE_ROOT": str(score.parent),
    }
    server = subprocess.Popen(
        [str(PYTHON_3_12), str(PACKAGE / "serve.py"), "--entry_script",
         str(NODE_FILES / "entry.py"), "--port", str(scoring), "--worker_count", "1"],
        cwd=score.parent, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )
    news: queue.Queue = queue.Queue()

    def read() -> None:
        reader = LogReader()
        for line in server.stdout:
            for found in reader.feed(line):
                news.put(found)
            if "ready for serving traffic" in line:
                news.put("ready")

    threading.Thread(target=read, daemon=True).start()
    url = f"http://127.0.0.1:{scoring}/score"
    try:
        announcement = news.get(timeout=60)
        assert isinstance(announcement, Announcement)
        assert news.get(timeout=60) == "ready"
        assert post_json(url, json.dumps({"data": [[1, -2]]}), timeout=60)[0] == 500
        failure = news.get(timeout=30)
        assert isinstance(failure, Failure) and failure.attach is None
        assert (failure.file, failure.line, failure.function) == (str(score), RAISE_LINE, "run")

        client = DapClient.connect("127.0.0.1", announcement.port)
        client.attach({"justMyCode": True}, {}, exception_filters=["uncaught"])
        answers: list = []
        sender = threading.Thread(target=lambda: answers.append(
            post_json(url, json.dumps({"data": [[3, -4]]}), timeout=60)))
        sender.start()
        frame = client.wait_stopped(60)
        assert (frame["source"]["path"], frame["line"]) == (str(score), RAISE_LINE)
        assert client.locals_of(frame)["rows"] == "[[3, -4]]"
        client.resume()
        sender.join(60)
        assert answers[0][0] == 500
        client.close()
        assert post_json(url, json.dumps({"data": [[1, 2]]}), timeout=60) == (200, '{"sums": [3]}')
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
