"""What identifies a job's run, on the local target: ``AZUREML_RUN_ID`` and ``MLFLOW_RUN_ID``.

On Azure ML every job has ``AZUREML_RUN_ID`` (which ``Run.get_context().id`` answers) and
``MLFLOW_RUN_ID``, the job's own run, which ``mlflow.start_run()`` with no arguments resumes.
Locally the steps run for real under the local target with the real azureml-core and the real
mlflow (the session's file store); nothing is faked. The bootstrap must still tell this machine
from Azure ML: there, and only there, it tags the run with its announcement.
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path
from urllib.parse import urlparse

import pytest
from conftest import need_python_script_step, wait_for

from aml_debug_magics.node.options import on_azure_ml
from aml_debug_magics.session import current_session
from aml_debug_magics.targets import local_run

mlflow = pytest.importorskip("mlflow", reason="the step logs with mlflow")

# a training script in the shape of Azure ML's MLflow samples: start_run() with no arguments
TRAIN = textwrap.dedent(
    """\
    import os
    import threading

    import mlflow
    from azureml.core import Run

    # the bootstrap's announcement tagger, if it started one, has done what it does
    for thread in threading.enumerate():
        if thread.name == "aml-debug-tag":
            thread.join()
    print("run context", os.environ["AZUREML_RUN_ID"], Run.get_context().id, flush=True)
    print("offline", type(Run.get_context()).__name__, flush=True)
    given = os.environ["MLFLOW_RUN_ID"], os.environ["MLFLOW_EXPERIMENT_ID"]  # start_run drops it
    with mlflow.start_run() as active:
        mlflow.log_metric("accuracy", 0.75)
        print("mlflow run", given[0], active.info.run_id, flush=True)
        print("experiment", given[1], active.info.experiment_id, flush=True)
    """
)


@pytest.fixture
def project(ip, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # the test reads the store back
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text(TRAIN)
    return tmp_path


def printed(lines: list[str], head: str) -> list[str]:
    return next(line for line in lines if line.startswith(head + " ")).split()[len(head.split()):]


def the_run(lines: list[str]):
    uri = next(line for line in lines if "--backend-store-uri" in line).split(
        "--backend-store-uri ", 1)[1].rstrip("`")
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    return client, client.get_run(printed(lines, "mlflow run")[0])


def test_a_pipeline_step_has_its_run_id_and_mlflow_resumes_its_own_run(ip, project):
    need_python_script_step()
    assert ip.run_cell(
        "from azureml.pipeline.steps import PythonScriptStep\n"
        "train = PythonScriptStep(name='train', script_name='train.py', source_directory='src',"
        " compute_target='cpu-cluster', allow_reuse=False)"
    ).success
    ip.run_line_magic("aml_debug_pipeline", "train --timeout 1")
    session = current_session("pipeline")
    wait_for(lambda: session.state in ("finished", "failed"), 90, "the step to end")
    row = session.row("train")
    lines = [*row.last_lines, row.detail]
    assert session.state == "finished", lines
    azureml_id, context_id = printed(lines, "run context")
    assert azureml_id == context_id and len(azureml_id) == 36  # a pipeline step's: a GUID
    assert printed(lines, "offline") == ["LocalRun"]
    from_environment, resumed = printed(lines, "mlflow run")
    assert from_environment == resumed
    assert len(set(printed(lines, "experiment"))) == 1
    client, run = the_run(lines)
    assert run.info.run_name == "train" and run.info.status == "FINISHED"
    assert run.data.metrics == {"accuracy": 0.75}
    assert client.get_experiment(run.info.experiment_id).name == "aml-debug"
    # the bootstrap waited for a debugger, and knew it was not on Azure ML: no tag was tried
    assert not any("Attempted to set tags" in line or "could not tag" in line
                   for line in lines), lines


def test_a_command_job_s_run_is_ended_as_it_ended_when_its_script_leaves_it(ip, project):
    """A script that never calls mlflow: its run is in the store, failed as the job failed."""
    pytest.importorskip("azure.ai.ml", reason="azure-ai-ml is the v2 extra")
    (project / "src" / "fail.py").write_text(
        "import os\nprint('ids', os.environ['AZUREML_RUN_ID'], os.environ['MLFLOW_RUN_ID'],"
        " os.environ['MLFLOW_TRACKING_URI'], flush=True)\nraise SystemExit(3)\n")
    assert ip.run_cell(
        "from azure.ai.ml import command\n"
        "job = command(code='./src', command='python fail.py', environment='azureml:x@latest',"
        " name='fails')"
    ).success
    ip.run_line_magic("aml_debug_job", "job --timeout 1 --env kernel")
    session = current_session("job")
    assert session.wait(60) == "failed"
    lines = list(session.rows[0].last_lines)
    azureml_id, mlflow_id, uri = printed(lines, "ids")
    name, session_id = azureml_id.split("_", 1)  # the job's name, the session's id
    assert name == session.rows[0].step and len(session_id) == 36
    store = Path(urlparse(uri).path)
    assert store.name == "mlruns" and store.is_dir()
    run = mlflow.tracking.MlflowClient(tracking_uri=uri).get_run(mlflow_id)
    assert run.info.status == "FAILED"


def test_the_bootstrap_is_on_azure_ml_only_where_the_local_target_did_not_start_it():
    given = local_run.job_variables(experiment="e", session_run_id="s", run_id="train_s")
    assert given["AZUREML_RUN_ID"] == "train_s"
    assert not on_azure_ml(given)
    assert on_azure_ml({"AZUREML_RUN_ID": "train_1700000000_abcd1234"})
    assert not on_azure_ml(dict(os.environ, AZUREML_RUN_ID=""))


def test_where_the_kernel_has_not_imported_mlflow_start_run_makes_its_own_run(
    ip, project, monkeypatch
):
    """The kernel never imports mlflow to make the step's run (seconds before the first step):
    without it imported, MLFLOW_RUN_ID is not set and the script's start_run() makes a run of
    its own in the session's store and experiment."""
    pytest.importorskip("azure.ai.ml", reason="azure-ai-ml is the v2 extra")
    monkeypatch.delitem(sys.modules, "mlflow")
    (project / "src" / "log.py").write_text(
        "import os, mlflow\nprint('given', os.environ.get('MLFLOW_RUN_ID', 'none'), flush=True)\n"
        "with mlflow.start_run() as active:\n    mlflow.log_metric('loss', 0.5)\n"
        "    print('mlflow run', active.info.run_id, flush=True)\n")
    assert ip.run_cell(
        "from azure.ai.ml import command\n"
        "job = command(code='./src', command='python log.py', environment='azureml:x@latest')"
    ).success
    ip.run_line_magic("aml_debug_job", "job --timeout 1 --env kernel")
    session = current_session("job")
    assert session.wait(60) == "finished"
    assert "mlflow" not in sys.modules  # the kernel did not import it
    row = session.rows[0]
    lines = [*row.last_lines, row.detail]
    assert printed(lines, "given") == ["none"]
    client, run = the_run(lines)
    assert run.data.metrics == {"loss": 0.5}
    assert client.get_experiment(run.info.experiment_id).name == "aml-debug"
