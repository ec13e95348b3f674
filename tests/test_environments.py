"""Any environment debugs as it is: the snapshot carries debugpy, the environment is not rebuilt.

Real parts: the shipped bootstrap files run by the oldest node Python in a bare virtual
environment (no debugpy, no pip) with a real debug-protocol client attaching; pip fetching the
real universal wheel from PyPI (or failing against a closed local port, or taking a wrong wheel
from a local folder); the real SDK v1 ``RunConfiguration``, ``Environment``,
``DockerConfiguration``, ``PythonScriptStep`` and ``Pipeline`` classes; the real azure-ai-ml
``command`` job. Azure's control plane is the only stand-in, said where it is used.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import need_python_script_step, ship_node_files, wait_for
from dap_client import DapClient
from node_pythons import NODE_VERSIONS, find_python

from aml_debug_magics.errors import DebugInputError
from aml_debug_magics.launch import attach_config
from aml_debug_magics.node.announce import PortClosed, parse_line
from aml_debug_magics.node.debugger import SHIPPED_DEBUGPY
from aml_debug_magics.records import DebugRequest
from aml_debug_magics.targets.environment import (
    DEBUGPY_WHEEL,
    SHIPPED_DEBUGPY_VERSION,
    folder_size,
    shipped_bootstrap,
    shipped_debugpy,
    shipped_debugpy_note,
)

SCRIPT = ("import sys\nanswer = 6 * 7\nprint('answer', answer, sys.argv[1:], flush=True)\n"
          "sys.exit(7)\n")
BREAK_LINE = 3


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> str:
    """The oldest node Python the machine has, in a virtual environment with nothing installed
    (not even pip): an environment without debugpy."""
    version = next((v for v in NODE_VERSIONS if find_python(v)), None)
    if version is None:
        pytest.skip("no node Python (3.8 to 3.13) on this machine")
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([find_python(version), "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    probe = subprocess.run([python, "-c", "import debugpy"], capture_output=True)
    assert probe.returncode != 0  # nothing to import: the point of this environment
    return python


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed when the block ends: connections are refused


def test_without_debugpy_the_node_says_so_in_one_line_and_the_script_runs(bare_python, tmp_path):
    ship_node_files(tmp_path)
    (tmp_path / "job.py").write_text(SCRIPT)
    finished = subprocess.run(
        [bare_python, "aml_debug_bootstrap.py", "--listen", "127.0.0.1:0", "--timeout", "30",
         "--", "job.py", "x"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert finished.returncode == 7  # the script's own exit status
    assert "Traceback" not in finished.stderr, finished.stderr
    lines = finished.stdout.splitlines()
    said = [line for line in lines if line.startswith("aml-debug: ")]
    assert len(said) == 1 and "debugpy cannot be imported here" in said[0]
    panel = [found for found in map(parse_line, lines) if found is not None]
    assert len(panel) == 1 and isinstance(panel[0], PortClosed)
    assert "the script runs without a debugger" in panel[0].reason
    assert "answer 42 ['x']" in lines


def test_without_debugpy_the_shipped_copy_is_imported_and_a_debugger_attaches(
    bare_python, tmp_path, start_local
):
    """The folder ``shipped_bootstrap`` places is all the node has of debugpy; a real client
    stops at a breakpoint, and debugpy was imported from the snapshot."""
    node, laptop = tmp_path / "node", tmp_path / "laptop"
    node.mkdir()
    laptop.mkdir()
    (node / "job.py").write_text(SCRIPT)
    (laptop / "job.py").write_text(SCRIPT)
    with shipped_bootstrap([node], with_debugpy=True):
        snapshot = tmp_path / "snapshot"  # what the submit uploads: the folder at that moment
        shutil.copytree(node, snapshot)
    assert sorted(p.name for p in node.iterdir()) == ["job.py"]  # taken away again
    assert (snapshot / SHIPPED_DEBUGPY / "debugpy" / "__init__.py").is_file()
    process = start_local(snapshot / "job.py", "x", timeout=60, python=bare_python,
                          node_files=snapshot)
    assert process.announced.wait(60), list(process.last_lines)
    config = attach_config(process.announcement, laptop)
    client = DapClient.connect(config["connect"]["host"], config["connect"]["port"])
    try:
        client.attach(config, {str(laptop / "job.py"): [BREAK_LINE]})
        frame = client.wait_stopped(60)
        assert (frame["line"], frame["source"]["path"]) == (BREAK_LINE, str(laptop / "job.py"))
        assert client.locals_of(frame)["answer"] == "42"
        where = client.evaluate(frame, "__import__('debugpy').__file__")
        assert str(snapshot / SHIPPED_DEBUGPY) in where
        client.resume()
    finally:
        client.close()
    assert process.wait(30) == 7


def test_the_wheel_is_fetched_once_checked_and_trimmed_for_linux_nodes(monkeypatch):
    folder = shipped_debugpy()
    assert (folder / "debugpy" / "__init__.py").is_file()
    assert not [p for p in folder.rglob("*") if p.suffix in (".dll", ".exe", ".pdb", ".dylib")]
    assert any(folder.rglob("attach_linux_amd64.so"))  # what a Linux node can load stays
    size = folder_size(folder)
    assert 10e6 < size < 14e6, size
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{closed_port()}/simple")
    assert shipped_debugpy() == folder  # from the cache: no index asked
    assert f"debugpy {SHIPPED_DEBUGPY_VERSION} (+{size / 1e6:.1f} MB)" in shipped_debugpy_note()


def test_a_wheel_that_cannot_be_fetched_is_one_line_naming_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("AML_DEBUG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{closed_port()}/simple")
    with pytest.raises(DebugInputError) as refused:
        shipped_debugpy()
    message = str(refused.value)
    assert message.startswith(f"cannot fetch debugpy {SHIPPED_DEBUGPY_VERSION} for the nodes")
    assert "PIP_INDEX_URL" in message and str(tmp_path / "cache") in message
    assert "\n" not in message
    assert list((tmp_path / "cache").iterdir()) == []  # nothing half-fetched left behind


def test_a_wheel_that_is_not_the_published_one_is_refused(monkeypatch, tmp_path):
    """pip takes the wheel from a local folder (``--find-links``) that holds a forged one."""
    forged = tmp_path / "links"
    forged.mkdir()
    with zipfile.ZipFile(forged / DEBUGPY_WHEEL, "w") as wheel:
        wheel.writestr("debugpy/__init__.py", "raise SystemExit('forged')\n")
        wheel.writestr(f"debugpy-{SHIPPED_DEBUGPY_VERSION}.dist-info/METADATA",
                       "Metadata-Version: 2.1\nName: debugpy\n"
                       f"Version: {SHIPPED_DEBUGPY_VERSION}\n")
        wheel.writestr(f"debugpy-{SHIPPED_DEBUGPY_VERSION}.dist-info/WHEEL",
                       "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py2.py3-none-any\n")
        wheel.writestr(f"debugpy-{SHIPPED_DEBUGPY_VERSION}.dist-info/RECORD", "")
    monkeypatch.setenv("AML_DEBUG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(forged))
    with pytest.raises(DebugInputError, match="is not the one published on PyPI"):
        shipped_debugpy()
    assert list((tmp_path / "cache").iterdir()) == []


# ---------------------------------------------------------------------------------------------
# SDK v1: the RunConfiguration's environment and Docker settings


def _environments():
    from azureml.core import Environment

    curated = Environment("AzureML-sklearn-1.5")
    curated.version = "10"
    registered = Environment("team-training")
    registered.version = "3"
    registered.python.conda_dependencies.add_pip_package("scikit-learn")
    user_managed = Environment("own-python")
    user_managed.python.user_managed_dependencies = True
    image_only = Environment("image-only")
    image_only.docker.base_image = "myregistry.azurecr.io/train:1"
    image_only.python.user_managed_dependencies = True
    built = Environment.from_dockerfile("from-context", "FROM python:3.10\n")
    return {"curated": curated, "registered": registered, "user-managed": user_managed,
            "image-only": image_only, "build context": built}


@pytest.mark.parametrize("kind", ["curated", "registered", "user-managed", "image-only",
                                  "build context"])
def test_the_debug_runconfig_keeps_the_environment_and_every_docker_setting(kind):
    from azureml.core import Environment, RunConfiguration
    from azureml.core.runconfig import DockerConfiguration

    from aml_debug_magics.targets.runconfig import debug_runconfig

    environment = _environments()[kind]
    settings = RunConfiguration()
    settings.environment = environment
    settings.docker = DockerConfiguration(use_docker=True, shm_size="16g",
                                          arguments=["--ipc=host"])
    before = json.dumps(Environment._serialize_to_dict(environment), sort_keys=True)
    built = debug_runconfig(settings)
    assert built.environment is environment  # the very object: Azure ML reuses its image
    assert json.dumps(Environment._serialize_to_dict(environment), sort_keys=True) == before
    assert (built.docker.use_docker, built.docker.shm_size, built.docker.arguments) == (
        True, "16g", ["--ipc=host"])
    assert built is not settings and settings.docker.shm_size == "16g"


# ---------------------------------------------------------------------------------------------
# SDK v2: a registered or curated environment


def test_a_v2_node_on_a_registered_environment_is_submitted_with_it(tmp_path):
    pytest.importorskip("azure.ai.ml", reason="azure-ai-ml is the v2 extra (pip install .[v2])")
    from azure.ai.ml import command

    from aml_debug_magics.sources.sdk_v2 import read_job
    from aml_debug_magics.targets.azureml_v2 import debug_ready_v2

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text(SCRIPT)
    job = command(code=str(tmp_path / "src"), command="python train.py",
                  environment="azureml:AzureML-sklearn-1.5@latest", compute="cpu")
    specs = read_job(job, "job", None, base_directory=tmp_path, target="azureml", calls=[],
                     notes=[])
    request = DebugRequest("%aml_debug_job job", specs, target="azureml", sdk="v2",
                           submitted=job)
    notes: list[str] = []
    with debug_ready_v2(specs, request, notes) as submitted:
        assert submitted.environment == "azureml:AzureML-sklearn-1.5@latest"
        assert "aml_debug_bootstrap.py" in submitted.command
        assert (tmp_path / "src" / SHIPPED_DEBUGPY / "debugpy" / "__init__.py").is_file()
    assert sorted(p.name for p in (tmp_path / "src").iterdir()) == ["train.py"]
    assert job.environment == "azureml:AzureML-sklearn-1.5@latest"
    assert any("MB" in note and "debugpy" in note for note in notes)


# ---------------------------------------------------------------------------------------------
# SDK v1: the user's Pipeline is what is submitted, on its workspace


class _Discovery(BaseHTTPRequestHandler):
    """Azure ML's service discovery: every service at this server (nothing else is asked)."""

    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        base = f"http://127.0.0.1:{self.server.server_port}"
        body = json.dumps({name: base for name in (
            "api", "catalog", "experimentation", "gallery", "history", "hyperdrive",
            "labeling", "modelmanagement", "pipelines", "studio")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def offline_workspace(monkeypatch):
    """A real ``Workspace`` made without a service check, with an authentication that holds no
    credentials and Azure ML's service discovery answered on 127.0.0.1: what ``Pipeline(...)``
    needs to build its graph. Azure's control plane stands in here and nowhere else."""
    from azureml.core import Workspace
    from azureml.core.authentication import AbstractAuthentication

    class NoCredentials(AbstractAuthentication):
        def _get_arm_token(self) -> str:
            return "none"

        def _get_graph_token(self) -> str:
            return "none"

        def _get_all_subscription_ids(self):
            return [], None

        def get_authentication_header(self) -> dict[str, str]:
            return {"Authorization": "Bearer none"}

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Discovery)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AZUREML_DISCOVERY_SERVICE_ENDPOINT",
                       f"http://127.0.0.1:{server.server_port}/discovery")
    yield lambda name: Workspace("0", "rg", name, auth=NoCredentials(), _location="westeurope",
                                 _disable_service_check=True, _workspace_id=f"{name}-id")
    server.shutdown()
    server.server_close()


def test_the_users_pipeline_is_submitted_with_its_settings_on_its_workspace(
    offline_workspace, tmp_path, monkeypatch
):
    """``Pipeline(...)`` is built for real; its workflow provider (the pipeline service's
    client, a ``Pipeline`` parameter) and ``Experiment`` (the submit) are the control plane's
    stand-ins: the test reads the graph Azure ML would be sent."""
    steps_module = need_python_script_step()
    import azureml.core
    from azureml.pipeline.core import Pipeline

    from aml_debug_magics.sources.sdk_v1 import is_pipeline, pick_steps, read_steps, steps_of
    from aml_debug_magics.targets.runconfig import debug_ready
    from aml_debug_magics.targets.workspace import SdkWorkspace, pipeline_workspace

    class PipelineService:  # the pipeline service's client: nothing is created before submit
        class _service_caller:  # noqa: N801 (the SDK's attribute name)
            _service_endpoint = "http://127.0.0.1:1"

        graph_provider = module_provider = datasource_provider = None

    class Datastore:
        name = "team_store"

    sent: list[tuple] = []

    class Experiment:
        def __init__(self, workspace, name: str) -> None:
            self.workspace, self.name = workspace, name

        def submit(self, config):
            nodes = {node.name: node._params["Script"].value for node in config.graph.nodes}
            sent.append((self.workspace, self.name, config, nodes))
            return "run"

    monkeypatch.setattr(azureml.core, "Experiment", Experiment)
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "train.py").write_text(SCRIPT)
    train = steps_module.PythonScriptStep(
        name="train", script_name="train.py", source_directory=str(tmp_path / "train"),
        compute_target=("cpu", "AmlCompute"), arguments=["--epochs", 3])
    theirs = offline_workspace("their-workspace")
    pipeline = Pipeline(theirs, [train], description="nightly training",
                        default_datastore=Datastore(), default_source_directory=str(tmp_path),
                        _workflow_provider=PipelineService())
    assert is_pipeline(pipeline)
    found = steps_of(pipeline, "pipeline")
    specs = read_steps(found, pick_steps(found, None), base_directory=tmp_path, target="azureml")
    request = DebugRequest("%aml_debug_pipeline pipeline", specs, target="azureml",
                           submitted=pipeline)
    with debug_ready(specs, request, []) as what:
        SdkWorkspace(offline_workspace("config-json-workspace")).submit("debug", what)
    workspace, experiment, submitted, nodes = sent[0]
    assert workspace is theirs and experiment == "debug"
    assert nodes == {"train": "aml_debug_bootstrap.py"}
    assert submitted._name == "nightly training"
    assert submitted._graph_builder._default_datastore.name == "team_store"
    assert submitted._graph_context._default_source_directory == str(tmp_path)
    assert submitted._graph_context._workflow_provider is pipeline._graph_context._workflow_provider
    # the user's Pipeline is as it was: its graph still runs train.py
    assert {node.name: node._params["Script"].value for node in pipeline.graph.nodes} == {
        "train": "train.py"}
    assert train._script_name == "train.py"
    assert pipeline_workspace(pipeline).workspace is theirs
    wait_for(lambda: not (tmp_path / "train" / SHIPPED_DEBUGPY).exists(), 5, "the cleanup")


# ---------------------------------------------------------------------------------------------
# On the simulated cluster (tests/simcluster.py): what arrives, and a node without debugpy


@pytest.fixture
def sim_cluster(azurite, tmp_path, monkeypatch, bare_python):
    """One simulated node whose Python has no debugpy; the cluster replaces only the control
    plane (``SdkWorkspace`` and ``V2Workspace``)."""
    from netns import namespaces, skip_without_namespaces
    from simcluster import SimCluster

    from aml_debug_magics.session import stop_all
    from aml_debug_magics.targets import azureml_v2, follow, workspace

    skip_without_namespaces()
    cluster = SimCluster(azurite, tmp_path / "cluster", python=bare_python)
    monkeypatch.setattr(workspace, "SdkWorkspace", lambda user_workspace: cluster)
    monkeypatch.setattr(azureml_v2, "V2Workspace", lambda ml_client: cluster)
    monkeypatch.setattr(follow, "POLL_SLOW", 1.0)
    yield cluster
    stop_all()  # the sessions end (and delete their relay blobs) while the storage is there
    cluster.close()
    assert namespaces() == []


def test_on_the_cluster_a_v1_run_keeps_its_environment_and_imports_the_shipped_debugpy(
    ip, tmp_path, monkeypatch, sim_cluster
):
    """A ScriptRunConfig on a user-managed environment without debugpy: the environment that
    arrives is the user's object, and a debugger on this machine stops in the node, whose
    debugpy came from the snapshot."""
    from dap_client import evaluate_at_first_stop

    from aml_debug_magics.session import current_session

    monkeypatch.chdir(tmp_path)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "job.py").write_text(SCRIPT)
    assert ip.run_cell(
        "from azureml.core import Environment, RunConfiguration, ScriptRunConfig\n"
        "own = Environment('own-python')\n"
        "own.python.user_managed_dependencies = True\n"
        "settings = RunConfiguration()\n"
        "settings.environment = own\n"
        "config = ScriptRunConfig(source_directory='src', script='job.py', arguments=['x'],"
        " run_config=settings, compute_target='cpu-cluster')\n"
        "ws = object()"
    ).success
    ip.run_line_magic("aml_debug_run", "--target azureml --workspace ws --timeout 120 config")
    session = current_session("run")
    row = session.rows[0]
    wait_for(lambda: row.address, 90, "the node to announce itself")
    [arrived] = sim_cluster.seen_environments[0].values()
    assert arrived is ip.user_ns["own"]
    where = evaluate_at_first_stop(row.attach_config(), {str(tmp_path / "src" / "job.py"): [
        BREAK_LINE]}, "__import__('debugpy').__file__")
    assert f"/{SHIPPED_DEBUGPY}/debugpy/" in where
    assert session.wait(60) == "failed"  # the script's exit status 7, as Azure ML reports it
    assert "answer 42 ['x']" in "\n".join(row.last_lines)
    assert "MB), used only where its environment has no debugpy" in session.note
    assert sorted(p.name for p in (tmp_path / "src").iterdir()) == ["job.py"]


def test_on_the_cluster_a_v2_job_on_a_curated_environment_is_submitted_with_it(
    ip, tmp_path, monkeypatch, sim_cluster
):
    pytest.importorskip("azure.ai.ml", reason="azure-ai-ml is the v2 extra (pip install .[v2])")
    from aml_debug_magics.session import current_session

    monkeypatch.chdir(tmp_path)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "job.py").write_text(SCRIPT)
    assert ip.run_cell(
        "from azure.ai.ml import command\n"
        "job = command(code='./src', command='python job.py x', compute='cpu-cluster',"
        " environment='azureml:AzureML-sklearn-1.5@latest')\n"
        "ml_client = object()"
    ).success
    ip.run_line_magic("aml_debug_job", "job --target azureml --workspace ml_client --timeout 1")
    session = current_session("job")
    assert session.wait(90) == "failed"  # exit status 7, after the window closed
    environments = list(sim_cluster.seen_environments[0].values())
    assert environments == ["azureml:AzureML-sklearn-1.5@latest"]
    assert "answer 42 ['x']" in "\n".join(session.rows[0].last_lines)
