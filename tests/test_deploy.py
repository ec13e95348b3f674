"""%aml_debug_deploy: the real Azure ML inference server, a real debugger in its worker."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import children_of, port_refuses, wait_for
from dap_client import DapClient
from IPython.core.error import UsageError

from aml_debug_magics.deploy.local import post_json
from aml_debug_magics.records import Status
from aml_debug_magics.session import current_session

pytest.importorskip("azureml_inference_server_http", reason="the inference server is a dependency")

SCORE = textwrap.dedent(
    """\
    import json
    import os
    import pathlib

    model = None

    def init():
        global model
        weights = pathlib.Path(os.environ["AZUREML_MODEL_DIR"], "weights.json").read_text()
        model = json.loads(weights)

    def run(raw_data):
        data = json.loads(raw_data)["data"]
        prediction = [sum(w * x for w, x in zip(model["w"], row)) for row in data]
        return {"prediction": prediction}
    """
)
INIT_BREAK, RUN_BREAK = 10, 15  # model = json.loads(...); return {...}


@pytest.fixture
def app(tmp_path):
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "score.py").write_text(SCORE)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.json").write_text('{"w": [0.5, 2.0]}')
    return tmp_path


def deploy(ip, options: str = ""):
    ip.run_line_magic(
        "aml_debug_deploy",
        "--entry-script app/score.py --model-dir model --sample-request "
        f"'{{\"data\": [[2, 3]]}}' --timeout 60 {options}",
    )
    return current_session("deploy")


def attach(row, breakpoints):
    config = row.attach_config()
    client = DapClient.connect(config["connect"]["host"], config["connect"]["port"])
    client.attach(config, breakpoints)
    return client


def read_in_run(session, script, line: int, *expressions: str) -> list[str]:
    """As a user does: attach, click Send test request, stop at ``line`` of ``run()``, read
    ``expressions`` there, continue; the request then answers."""
    client = attach(session.rows[0], {str(script): [line]})
    try:
        sender = session.send_test_request()
        frame = client.wait_stopped(60)
        assert frame["line"] == line
        values = [client.evaluate(frame, expression) for expression in expressions]
        client.resume()
        sender.join(60)
    finally:
        client.close()
    return values


def debugger_loaded(pid: int) -> bool:
    """Whether the process has pydevd (debugpy's debugger) loaded: its compiled tracer is
    mapped once it is imported."""
    return "pydevd" in Path(f"/proc/{pid}/maps").read_text()


def test_a_request_stops_in_run_and_gets_its_prediction(ip, app):
    session = deploy(ip)
    row = session.rows[0]
    wait_for(lambda: session.service.health == "healthy", 60, "the server to be healthy")
    wait_for(lambda: row.announcement, 30, "the worker to announce the debugger")
    assert session.service.scoring_url.startswith("http://127.0.0.1:")
    # nobody attached yet: the worker serves without the debugger, which starts on attach
    assert post_json(session.service.scoring_url, '{"data": [[2, 3]]}', timeout=60) == (
        200, '{"prediction": [7.0]}')
    assert not debugger_loaded(row.announcement.pid)
    assert read_in_run(session, app / "app" / "score.py", RUN_BREAK, "data", "model",
                       "prediction") == ["[[2, 3]]", "{'w': [0.5, 2.0]}", "[7.0]"]
    assert debugger_loaded(row.announcement.pid)  # what the check above looks for, once attached
    assert session.service.response == 'HTTP 200: {"prediction": [7.0]}'
    assert row.status == Status.ATTACHED and row.attached  # the row says so, not only Output
    # the first debugger detached: a second one attaches to the same worker and stops again
    assert read_in_run(session, app / "app" / "score.py", RUN_BREAK, "prediction") == ["[7.0]"]
    port = int(session.service.scoring_url.split(":")[2].split("/")[0])
    debug_port = row.announcement.port
    ip.run_line_magic("aml_debug_deploy", "--stop")
    assert port_refuses("127.0.0.1", port) and port_refuses("127.0.0.1", debug_port)
    assert children_of() == []
    assert session.service.health == "stopped" and not row.attachable


def test_wait_in_init_stops_in_init(ip, app):
    session = deploy(ip, "--wait-in-init")
    row = session.rows[0]
    wait_for(lambda: row.status == Status.WAITING, 60, "init to wait for the debugger")
    assert row.seconds_left(session.clock()) > 30
    assert session.service.health == "starting"
    client = attach(row, {str(app / "app" / "score.py"): [INIT_BREAK]})
    try:
        frame = client.wait_stopped(60)
        assert frame["line"] == INIT_BREAK
        assert client.evaluate(frame, "weights") == "'{\"w\": [0.5, 2.0]}'"
        client.resume()
    finally:
        client.close()
    wait_for(lambda: session.service.health == "healthy", 60, "the server after init")
    assert row.attached


def test_a_score_py_that_does_not_import_names_its_own_line(ip, app):
    (app / "app" / "score.py").write_text("import json\n\ndef init(:\n    pass\n")
    session = deploy(ip)
    wait_for(lambda: session.state == "failed", 90, "the server to give up")
    assert session.rows[0].detail.endswith("SyntaxError: invalid syntax (score.py, line 3)")
    assert children_of() == []


def test_init_raising_shows_the_servers_lines_and_leaves_nothing(ip, app):
    (app / "model" / "weights.json").unlink()  # a missing model file
    session = deploy(ip)
    wait_for(lambda: session.state == "failed", 90, "the server to give up")
    row = session.rows[0]
    assert row.status == Status.FAILED and "inference server exited" in row.detail
    assert "FileNotFoundError: [Errno 2] No such file or directory: " in row.detail
    assert row.detail.endswith("weights.json' (score.py, line 9, in init)")
    assert children_of() == []


@pytest.fixture
def busy_port():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("--entry-script nowhere.py", "entry script not found"),
        ("--entry-script app/norun.py", "norun.py defines no run()"),
        ("--entry-script app/score.py --model-dir nothere", "--model-dir nothere: no such folder"),
        ("--entry-script app/score.py --scoring-port {busy}", "port {busy} is in use"),
        ("--entry-script app/score.py --sample-request '{{nope'", "--sample-request is not JSON"),
        ("--entry-script app/score.py --target docker", "--target docker needs --image"),
        ("", "give the scoring script"),
    ],
)
def test_bad_input_is_one_line_and_starts_nothing(ip, app, busy_port, options, message):
    (app / "app" / "norun.py").write_text("def init():\n    pass\n")
    with pytest.raises(UsageError) as caught:
        ip.run_line_magic("aml_debug_deploy", options.format(busy=busy_port))
    assert message.format(busy=busy_port) in str(caught.value) and "\n" not in str(caught.value)
    assert current_session("deploy") is None and children_of() == []


def test_docker_target_without_an_engine_shows_the_commands(ip, app, monkeypatch):
    """No Docker engine here: the target says so and shows what it would run; the commands are
    checked, not executed."""
    from aml_debug_magics.deploy import docker

    if docker.engine_problem() is None:
        pytest.skip("a Docker engine answers here; this test is for machines without one")
    ip.run_line_magic("config", "AmlDebugMagics.view = 'text'")
    ip.run_line_magic("aml_debug_deploy", "--entry-script app/score.py --model-dir model "
                      "--target docker --image myacr.azurecr.io/package:1 --port 5690")
    session = current_session("deploy")
    wait_for(lambda: session.state == "failed", 30, "the target to give up")
    assert session.rows[0].status == Status.NOT_RUN
    run_line = next(line for line in session.note.splitlines() if line.startswith("docker run"))
    assert f"-v {app / 'app'}:/var/azureml-app " in run_line
    assert "/var/azureml-apps" not in run_line
    assert "-p 127.0.0.1:5690:5678" in run_line and ":5001 " in run_line
    assert "-e AML_DEBUG_USER_SCRIPT=/var/azureml-app/score.py" in run_line
    assert f"-v {app / 'model'}:/var/azureml-models/debug:ro" in run_line
    assert run_line.endswith("myacr.azurecr.io/package:1 runsvdir /var/runit")
    assert re.search(r"^docker rm --force aml-debug-score-[0-9a-f]{8}$", session.note, re.M)
    tools = Path(run_line.split("-v ")[2].split(":")[0])  # the node files it mounts
    assert tools.name.startswith("aml_debug_tools_") and tools.is_dir()
    ip.run_line_magic("aml_debug_deploy", "--stop")  # replaced or ended: the folder goes
    assert not tools.exists()


def test_docker_announcements_attach_to_localhost_and_the_app_root(app):
    from aml_debug_magics.deploy.docker import DockerDeployTarget
    from aml_debug_magics.deploy.local import Deployment
    from aml_debug_magics.launch import attach_config
    from aml_debug_magics.node.announce import Announcement
    from aml_debug_magics.records import DebugRequest, StepSpec

    deployment = Deployment(app / "app" / "score.py", app / "app", scoring_port=8000, image="i")
    request = DebugRequest("t", [StepSpec("score", app / "app", "score.py")], port=5690,
                           deployment=deployment)
    target = DockerDeployTarget(request, deployment)
    seen = target.as_seen_from_here(Announcement(("0.0.0.0", "172.17.0.2"), 5678,
                                                 script="/var/azureml-app/score.py"))
    config = attach_config(seen, app / "app")
    assert config["connect"] == {"host": "localhost", "port": 5690}
    assert config["pathMappings"] == [{"localRoot": str(app / "app"),
                                       "remoteRoot": "/var/azureml-app"}]
    shutil.rmtree(target.tools)


def test_packaging_builds_a_debug_environment(app):
    pytest.importorskip("azureml.core")
    from aml_debug_magics.deploy.local import Deployment
    from aml_debug_magics.deploy.package import inference_config
    from aml_debug_magics.records import DebugRequest, StepSpec

    deployment = Deployment(app / "app" / "score.py", app / "app", wait_in_init=True)
    request = DebugRequest("t", [StepSpec("score", app / "app", "score.py")], timeout=120,
                           deployment=deployment)
    with inference_config(request, deployment) as config:
        assert config.entry_script == "aml_debug_entry.py"
        assert (app / "app" / "aml_debug_entry.py").is_file()
        assert config.source_directory == str(app / "app")
        environment = config.environment
    pip = list(environment.python.conda_dependencies.pip_packages)
    assert "debugpy>=1.8.1,<1.9" in pip and "azureml-inference-server-http" in pip
    # the image itself never switches the debugger on: only `docker run -e` does
    assert environment.environment_variables == {"AML_DEBUG_USER_SCRIPT": "score.py"}
    assert sorted(p.name for p in (app / "app").iterdir()) == ["score.py"]


def test_the_entry_script_without_a_listen_address_serves_without_a_debugger(app, tmp_path):
    """As a packaged image runs when deployed: AML_DEBUG_LISTEN is not set, so no debugger
    starts and no port opens; init() and run() are the user's."""
    from aml_debug_magics.targets.environment import NODE_FILES

    code = (
        "import sys, json\n"
        "import entry\n"
        "entry.init()\n"
        "print(json.dumps({'debugpy': 'debugpy' in sys.modules, "
        "'answer': entry.run(json.dumps({'data': [[1, 2]]}))}))\n"
    )
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AML_DEBUG_")}
    environment.update(AML_DEBUG_USER_SCRIPT=str(app / "app" / "score.py"),
                       AZUREML_MODEL_DIR=str(app / "model"), PYTHONPATH=str(NODE_FILES))
    done = subprocess.run([sys.executable, "-c", code], env=environment, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["debugpy"] is False
    assert result["answer"] == {"prediction": [4.5]}


GUIDE_LINES = "import debugpy\ndebugpy.listen(('0.0.0.0', 5678))\ndebugpy.wait_for_client()\n"
GUIDE_SCORE = GUIDE_LINES + SCORE


def test_the_guides_own_score_py_with_its_debugpy_lines_is_served_and_debugged(ip, app):
    """Microsoft's guide puts debugpy.listen(...) and wait_for_client() at the top of score.py;
    under the worker's own debugger both are absorbed instead of killing the worker."""
    (app / "app" / "score.py").write_text(GUIDE_SCORE)
    session = deploy(ip)
    row = session.rows[0]
    wait_for(lambda: session.service.health == "healthy", 60, "the server to be healthy")
    assert any("the script called debugpy.listen()" in line for line in row.last_lines)
    guide_lines = len(GUIDE_LINES.splitlines())
    assert read_in_run(session, app / "app" / "score.py", RUN_BREAK + guide_lines,
                       "prediction") == ["[7.0]"]
    assert session.service.response == 'HTTP 200: {"prediction": [7.0]}'


MODEL_SCORE = textwrap.dedent(
    """\
    import json
    from azureml.core.model import Model

    def init():
        global model
        model = json.loads(open(Model.get_model_path("weights")).read())

    def run(raw_data):
        return {"w": model["w"]}
    """
)


def test_get_model_path_finds_the_model_laid_out_as_azure_ml_does(ip, app):
    """The script calls Model.get_model_path('weights') (the SDK's own, run for real in the
    server's worker): without --model it fails with a hint; with it, azureml-models/weights/1/
    is laid out in the app folder for the session's life."""
    pytest.importorskip("azureml.core")
    (app / "app" / "score.py").write_text(MODEL_SCORE)
    session = deploy(ip)
    wait_for(lambda: session.state == "failed", 120, "the server to give up")
    assert "add --model NAME[:VERSION] with --model-dir" in session.rows[0].detail
    session = deploy(ip, "--model weights:1")
    wait_for(lambda: session.service.health == "healthy", 120, "the server to be healthy")
    laid_out = app / "app" / "azureml-models" / "weights" / "1" / "weights.json"
    assert laid_out.is_symlink() and laid_out.resolve() == app / "model" / "weights.json"
    session.send_test_request().join(60)
    assert session.service.response == 'HTTP 200: {"w": [0.5, 2.0]}'
    ip.run_line_magic("aml_debug_deploy", "--stop")
    assert sorted(p.name for p in (app / "app").iterdir()) == ["score.py"]
    assert (app / "model" / "weights.json").is_file()


CHILD_SCORE = textwrap.dedent(
    """\
    import json
    import subprocess
    import sys

    def init():
        pass

    def run(raw_data):
        child = subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True)
        return {"child": child.stdout.decode().strip()}
    """
)


@pytest.mark.parametrize("follow", [False, True])
def test_processes_score_py_starts_are_debugged_when_asked(ip, app, monkeypatch, follow):
    """By default debugpy answers from the worker (it serves sooner) and a process score.py
    starts runs undebugged; AML_DEBUG_FOLLOW_CHILDREN=1 brings debugpy's adapter back, which
    offers that process to the debugger (``debugpyAttach``, the event VS Code attaches on) and
    holds it until a debugger attaches to it."""
    (app / "app" / "score.py").write_text(CHILD_SCORE)
    if follow:
        monkeypatch.setenv("AML_DEBUG_FOLLOW_CHILDREN", "1")
    session = deploy(ip)
    row = session.rows[0]
    wait_for(lambda: row.announcement, 60, "the worker to announce the debugger")
    client = attach(row, {})
    child = None
    try:
        sender = session.send_test_request()
        if follow:
            offered = client.event("debugpyAttach", 60)
            assert offered["subProcessId"] != row.announcement.pid
            child = DapClient.connect(offered["connect"]["host"], offered["connect"]["port"])
            child.attach(offered, {})
        sender.join(60)
        assert session.service.response == 'HTTP 200: {"child": "42"}'
        if not follow:
            with pytest.raises(AssertionError):
                client.event("debugpyAttach", 0)  # the child has run and ended: none came
    finally:
        for each in (child, client):
            if each is not None:
                each.close()
        ip.run_line_magic("aml_debug_deploy", "--stop")
    assert children_of() == []
