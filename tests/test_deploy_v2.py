"""%aml_debug_deploy DEPLOYMENT: an SDK v2 online deployment served by the real Azure ML inference
server here, a real debugger in its worker.

The deployments are azure.ai.ml objects built as the managed online endpoint samples build them,
over tests/projects/online/model-1 (``onlinescoring/score.py``, ``model/``,
``environment/conda.yaml``, ``sample-request.json``). Azure's control plane is faked in one place
only: the MLClient that downloads a registered model (``models.download``), which writes what the
SDK writes (``download_path/NAME/`` holding the model folder under its own name).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import children_of, port_refuses, wait_for
from dap_client import DapClient
from IPython.core.error import UsageError

from aml_debug_magics.records import Status
from aml_debug_magics.session import current_session

pytest.importorskip("azureml_inference_server_http", reason="the inference server is a dependency")
entities = pytest.importorskip("azure.ai.ml.entities", reason="SDK v2 deployments need azure-ai-ml")

PROJECT = Path(__file__).parent / "projects" / "online" / "model-1"
SCORE = PROJECT / "onlinescoring" / "score.py"
RUN_LOGS = next(n for n, line in enumerate(SCORE.read_text().splitlines(), 1)
                if 'logging.info("scored' in line)
IMAGE = "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04:latest"


@pytest.fixture
def project(ip, tmp_path, monkeypatch):
    """The sample's folders in the notebook's folder, and a download cache of the test's own."""
    monkeypatch.setenv("AML_DEBUG_CACHE", str(tmp_path / "cache"))
    shutil.copytree(PROJECT, tmp_path / "model-1")
    return tmp_path / "model-1"


def environment(**settings):
    return entities.Environment(conda_file="model-1/environment/conda.yaml", image=IMAGE,
                                **settings)


def code():
    return entities.CodeConfiguration(code="model-1/onlinescoring", scoring_script="score.py")


def blue(**settings):
    defaults = dict(name="blue", endpoint_name="regression", model=entities.Model(
        path="model-1/model"), code_configuration=code(), environment=environment(),
        environment_variables={"PREDICTION_SCALE": "2"}, instance_type="Standard_DS3_v2",
        instance_count=1)
    return entities.ManagedOnlineDeployment(**{**defaults, **settings})


def attach(row, breakpoints):
    config = row.attach_config()
    client = DapClient.connect(config["connect"]["host"], config["connect"]["port"])
    client.attach(config, breakpoints)
    return client


def test_a_managed_deployment_stops_in_run_with_its_model_and_variables(ip, project, capsys):
    """The sample's score.py opens AZUREML_MODEL_DIR/model/...: the model folder keeps its own
    name under azureml-models/NAME/VERSION; the deployment's environment_variables reach run()."""
    ip.user_ns["blue_deployment"] = blue()
    ip.run_line_magic("aml_debug_deploy",
                      "blue_deployment --sample-request model-1/sample-request.json")
    assert "serving with this kernel's Python and its inference server, not the environment's " \
           f"image {IMAGE} and its conda file" in capsys.readouterr().out
    session = current_session("deploy")
    row = session.rows[0]
    wait_for(lambda: session.service.health == "healthy", 90, "the server to be healthy")
    wait_for(lambda: row.announcement, 30, "the worker to announce the debugger")
    client = attach(row, {str(project / "onlinescoring" / "score.py"): [RUN_LOGS]})
    try:
        sender = session.send_test_request()
        frame = client.wait_stopped(60)
        assert frame["line"] == RUN_LOGS
        assert client.evaluate(frame, "predictions") == "[25.0, 16.0]"
        assert client.evaluate(frame, "scale") == "2.0"
        model_dir = client.evaluate(frame, "os.environ['AZUREML_MODEL_DIR']").strip("'")
        client.resume()
        sender.join(60)
    finally:
        client.close()
    assert session.service.response == "HTTP 200: [25.0, 16.0]"
    assert Path(model_dir).parts[-3:] == ("azureml-models", blue().model.name, "1")
    assert (Path(model_dir) / "model").resolve() == project / "model"
    scoring_port = int(session.service.scoring_url.split(":")[2].split("/")[0])
    ip.run_line_magic("aml_debug_deploy", "--stop")
    assert port_refuses("127.0.0.1", scoring_port)
    assert port_refuses("127.0.0.1", row.announcement.port)
    assert children_of() == []
    assert (project / "model" / "sklearn_regression_model.pkl").is_file()  # linked, not moved


class FakeModels:
    """``MLClient.models`` as far as a download goes: what ``models.download`` writes."""

    def __init__(self, registered: Path) -> None:
        self.registered, self.downloads = registered, []

    def download(self, name: str, version: str, download_path: str = ".") -> None:
        self.downloads.append((name, version))
        shutil.copytree(self.registered, Path(download_path) / name / self.registered.name)


class FakeMLClient:
    """The workspace seam: an MLClient whose only reachable call is ``models.download``."""

    subscription_id, resource_group_name, workspace_name = "sub", "rg", "ws"

    def __init__(self, registered: Path) -> None:
        self.models = FakeModels(registered)


def test_a_registered_model_is_downloaded_once_through_the_ml_client(ip, project):
    """A KubernetesOnlineDeployment of model azureml:sklearn-regression:3: downloaded into the
    cache through the MLClient on the first session, reused by the next one."""
    ml_client = FakeMLClient(project / "model")
    ip.user_ns["ml_client"] = ml_client
    ip.user_ns["k8s"] = entities.KubernetesOnlineDeployment(
        name="k8s", endpoint_name="regression", model="azureml:sklearn-regression:3",
        code_configuration=code(), environment=environment(),
    )
    ip.run_line_magic("aml_debug_deploy", "k8s --workspace ml_client --sample-request "
                      "model-1/sample-request.json")
    session = current_session("deploy")
    wait_for(lambda: session.service.health == "healthy", 90, "the server to be healthy")
    session.send_test_request().join(60)
    assert session.service.response == "HTTP 200: [12.5, 8.0]"
    ip.run_line_magic("aml_debug_deploy", "k8s --workspace ml_client")
    assert ml_client.models.downloads == [("sklearn-regression", "3")]
    model_dir = current_session("deploy").request.deployment.model_dir
    assert (model_dir / "model" / "sklearn_regression_model.pkl").is_file()
    ip.run_line_magic("aml_debug_deploy", "--stop")
    assert children_of() == []


@pytest.mark.parametrize(
    ("variable", "options", "message"),
    [
        ("text", "", "text is a str, not a ManagedOnlineDeployment"),
        ("nowhere", "", "no variable named 'nowhere'"),
        ("blue_deployment", "--entry-script x.py", "blue_deployment says where its code and "
         "model are: drop --entry-script"),
        ("blue_deployment", "--target azureml", "blue_deployment is an SDK v2 deployment: debug "
         "it with --target local or docker"),
        ("no_code", "", "no_code has no code_configuration with a scoring_script"),
        ("registered_code", "", "registered_code.code_configuration.code is 'azureml:code:1'"),
        ("bad_model", "", "bad_model.model azureml:only-a-name: give it as azureml:NAME:VERSION"),
        ("missing_model", "", "missing_model.model: no such file or folder"),
        ("no_script", "", "entry script not found"),
    ],
)
def test_bad_deployments_are_one_line_and_start_nothing(ip, project, variable, options, message):
    ip.user_ns.update(
        text="blue",
        blue_deployment=blue(),
        no_code=blue(code_configuration=None),
        registered_code=blue(code_configuration=entities.CodeConfiguration(
            code="azureml:code:1", scoring_script="score.py")),
        bad_model=blue(model="azureml:only-a-name"),
        missing_model=blue(model="model-1/nothing"),
        no_script=blue(code_configuration=entities.CodeConfiguration(
            code="model-1/onlinescoring", scoring_script="missing.py")),
    )
    with pytest.raises(UsageError) as caught:
        ip.run_line_magic("aml_debug_deploy", f"{variable} {options}")
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert current_session("deploy") is None and children_of() == []


def test_docker_target_builds_the_environments_image_and_uses_the_servers_debug_switch(
    ip, project
):
    """No Docker engine here: the target shows the commands it would run (build, probe, run with
    AZUREML_DEBUG_PORT, or with the entry script when the probe says no); checked, not run."""
    from aml_debug_magics.deploy import docker

    if docker.engine_problem() is None:
        pytest.skip("a Docker engine answers here; this test is for machines without one")
    ip.run_line_magic("config", "AmlDebugMagics.view = 'text'")
    ip.user_ns["blue_deployment"] = blue()
    ip.run_line_magic("aml_debug_deploy", "blue_deployment --target docker --port 5690 "
                      "--scoring-port 8123")
    session = current_session("deploy")
    wait_for(lambda: session.state == "failed", 30, "the target to give up")
    assert session.rows[0].status == Status.NOT_RUN
    lines = session.note.splitlines()
    build = next(line for line in lines if line.startswith("docker build"))
    context = Path(build.split()[-1])
    dockerfile = (context / "Dockerfile").read_text()
    assert dockerfile.startswith(f"FROM {IMAGE}\n")
    assert "conda env update -n base -f /tmp/aml-debug-conda.yaml" in dockerfile
    assert "pip install --no-cache-dir 'debugpy>=1.8.1,<1.9'" in dockerfile
    assert "azureml-inference-server-http" in (context / "conda.yaml").read_text()
    tag = build.split()[3]
    probe = next(line for line in lines if line.startswith("docker run --rm --entrypoint"))
    assert tag in probe and "AZUREML_DEBUG_PORT" in probe
    with_switch = lines[lines.index("# when it prints server-debug-switch True:") + 1]
    assert "--network host" in with_switch and "-e AZUREML_DEBUG_PORT=5690" in with_switch
    assert f"-v {project / 'onlinescoring'}:/var/azureml-app " in with_switch
    model_dir = f"/var/azureml-app/azureml-models/{blue().model.name}/1"
    assert f"-v {project / 'model'}:{model_dir}/model:ro" in with_switch
    assert f"-e AZUREML_MODEL_DIR={model_dir}" in with_switch
    assert "-e PREDICTION_SCALE=2" in with_switch
    assert with_switch.split(" -c ")[1].endswith(
        "--entry_script /var/azureml-app/score.py --port 8123")
    assert "aml_debug_entry.py" not in with_switch
    with_entry = lines[lines.index("# else:") + 1]
    assert "-e AZUREML_ENTRY_SCRIPT=/var/aml-debug/aml_debug_entry.py" in with_entry
    assert "-p 127.0.0.1:5690:5678" in with_entry and f" {tag} runsvdir /var/runit" in with_entry
    assert "-e PREDICTION_SCALE=2" in with_entry
    ip.run_line_magic("aml_debug_deploy", "--stop")
    assert not context.exists()


def test_the_probe_finds_the_debug_switch_of_the_installed_server():
    """The probe's answer for the server installed here (azureml-inference-server-http 1.5.1,
    whose server/config.py reads AZUREML_DEBUG_PORT and server/entry.py connects to it)."""
    from aml_debug_magics.deploy.docker_v2 import PROBE, has_debug_switch

    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert has_debug_switch(done.stdout)
    assert not has_debug_switch("server-debug-switch False\n")


def test_the_switch_announces_where_vs_code_listens(project):
    """With the server's switch the worker connects out: the panel's config is a listen one, on
    127.0.0.1 and the debug port, mapped to the app root."""
    from aml_debug_magics.deploy.docker_v2 import OnlineDeploymentDockerTarget
    from aml_debug_magics.deploy.sdk_v2 import make_online_deployment
    from aml_debug_magics.launch import attach_config
    from aml_debug_magics.records import DebugRequest, StepSpec

    deployment = make_online_deployment(
        blue(), "blue", scoring_port=8000, wait_in_init=False, sample_request=None, image=None,
        target="docker", base=project.parent, ml_client=lambda: None, progress=lambda _: None,
    )
    request = DebugRequest("t", [StepSpec("score", deployment.source_dir, "score.py")],
                           port=5690, target="docker", deployment=deployment)
    target = OnlineDeploymentDockerTarget(request, deployment)
    config = attach_config(target.listen_here(), deployment.source_dir)
    assert config["listen"] == {"host": "127.0.0.1", "port": 5690}
    assert config["pathMappings"] == [{"localRoot": str(project / "onlinescoring"),
                                       "remoteRoot": "/var/azureml-app"}]
    target.dispose()


@pytest.mark.parametrize("version", ["3.8", "3.13"])
def test_the_shipped_entry_files_debug_run_on_node_pythons(project, tmp_path, version):
    """As in an image: aml_debug_entry.py and aml_debug_worker_debugger.py beside the bootstrap's
    files, debugpy alone installed, AML_DEBUG_LISTEN given; a debugger attached to the announced
    port stops in the sample's run()."""
    from node_pythons import node_python

    from aml_debug_magics.deploy.docker import ship_entry
    from aml_debug_magics.launch import attach_config
    from aml_debug_magics.node.announce import LogReader

    python = node_python(version)
    (tmp_path / "tools").mkdir()
    tools = ship_entry(tmp_path / "tools")
    model_dir = tmp_path / "azureml-models" / "regression" / "1"
    model_dir.mkdir(parents=True)
    (model_dir / "model").symlink_to(project / "model")
    score = project / "onlinescoring" / "score.py"
    code = ("import aml_debug_entry as entry, sys\n"
            "entry.init()\n"
            "print('ANSWER', entry.run(sys.stdin.readline()), flush=True)\n")
    environment = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tools),
                   "AML_DEBUG_USER_SCRIPT": str(score), "AML_DEBUG_LISTEN": "127.0.0.1:0",
                   "AZUREML_MODEL_DIR": str(model_dir), "PREDICTION_SCALE": "2"}
    worker = subprocess.Popen([python, "-c", code], env=environment, cwd=tmp_path, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    try:
        reader, lines = LogReader(), []
        announcement = None
        for line in worker.stdout:
            lines.append(line)
            announcement = next(iter(reader.feed(line.rstrip("\n"))), None)
            if announcement is not None:
                break
        assert announcement is not None, "".join(lines)
        config = attach_config(announcement, project / "onlinescoring")
        client = DapClient.connect(config["connect"]["host"], config["connect"]["port"])
        try:
            client.attach(config, {str(score): [RUN_LOGS]})
            worker.stdin.write((PROJECT / "sample-request.json").read_text())
            worker.stdin.flush()
            frame = client.wait_stopped(60)
            assert frame["line"] == RUN_LOGS
            assert client.evaluate(frame, "predictions") == "[25.0, 16.0]"
            client.resume()
        finally:
            client.close()
        assert any(line.startswith("ANSWER [25.0, 16.0]") for line in worker.stdout)
    finally:
        worker.kill()
        worker.wait()
