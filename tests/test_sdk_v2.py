"""%aml_debug_job: Azure ML SDK v2 jobs built with the real azure-ai-ml classes (``command``,
``Input``, ``Output``, ``@dsl.pipeline``), run on the local target with a real debugger."""

from __future__ import annotations

import os
import textwrap

import pytest
from conftest import children_of, wait_for
from dap_client import evaluate_at_first_stop
from IPython.core.error import UsageError

from aml_debug_magics.records import Status
from aml_debug_magics.session import current_session

pytest.importorskip("azure.ai.ml", reason="azure-ai-ml is the v2 extra (pip install .[v2])")

PREP = textwrap.dedent(
    """\
    import argparse, pathlib
    parser = argparse.ArgumentParser()
    parser.add_argument("--raw")
    parser.add_argument("--out")
    args = parser.parse_args()
    numbers = pathlib.Path(args.raw, "numbers.txt").read_text().split()
    pathlib.Path(args.out, "clean.txt").write_text(" ".join(sorted(numbers)))
    print("prepared", len(numbers), flush=True)
    """
)
TRAIN = textwrap.dedent(
    """\
    import argparse, os, pathlib
    parser = argparse.ArgumentParser()
    parser.add_argument("--data")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--model")
    args = parser.parse_args()
    numbers = [int(n) for n in pathlib.Path(args.data, "clean.txt").read_text().split()]
    weight = sum(numbers) * args.lr
    pathlib.Path(args.model, "weight.txt").write_text(str(weight))
    print("trained", weight, os.environ["COLOUR"], flush=True)
    """
)
TRAIN_BREAK = 8  # weight = ...

PIPELINE_CELL = """
from azure.ai.ml import Input, Output, command, dsl

prep_step = command(
    code="./src", command="python prep.py --raw ${{inputs.raw}} --out ${{outputs.clean}}",
    inputs={"raw": Input(type="uri_folder")}, outputs={"clean": Output(type="uri_folder")},
    environment="azureml:AzureML-sklearn-1.5@latest",
)
train_step = command(
    code="./src",
    command="python train.py --data ${{inputs.data}} --lr ${{inputs.lr}} "
            "--model ${{outputs.model}}",
    inputs={"data": Input(type="uri_folder"), "lr": 0.1},
    outputs={"model": Output(type="uri_folder")},
    environment="azureml:AzureML-sklearn-1.5@latest", environment_variables={"COLOUR": "teal"},
)

@dsl.pipeline(compute="cpu-cluster")
def training(raw_data: Input, learning_rate: float = 0.5):
    prep = prep_step(raw=raw_data)
    train = train_step(data=prep.outputs.clean, lr=learning_rate)
    return {"model": train.outputs.model}

pipeline_job = training(raw_data=Input(type="uri_folder", path="./raw"))
"""


@pytest.fixture
def project(ip, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "prep.py").write_text(PREP)
    (tmp_path / "src" / "train.py").write_text(TRAIN)
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "numbers.txt").write_text("3 1 2")
    assert ip.run_cell(PIPELINE_CELL).success
    return tmp_path


def test_a_pipeline_node_stops_at_a_breakpoint_with_the_data_handed_on(ip, project):
    ip.run_line_magic("aml_debug_job", "pipeline_job --node train --timeout 60")
    session = current_session("job")
    train = session.row("train")
    wait_for(lambda: train.status == Status.WAITING, 60, "train to wait for a debugger")
    assert session.row("prep").status == Status.FINISHED
    breakpoints = {str(project / "src" / "train.py"): [TRAIN_BREAK]}
    assert evaluate_at_first_stop(train.attach_config(), breakpoints,
                                  "(numbers, args.lr)") == "([1, 2, 3], 0.5)"
    assert session.wait(60) == "finished"
    assert "trained 3.0 teal" in train.last_lines  # the pipeline's learning_rate, the env
    assert children_of() == []


def test_a_command_job_alone_runs_with_its_literal_inputs(ip, project):
    assert ip.run_cell(
        "job = command(code='./src', command='python prep.py --raw ${{inputs.raw}} --out "
        "${{outputs.clean}}', inputs={'raw': Input(type='uri_folder', path='./raw')}, "
        "outputs={'clean': Output(type='uri_folder')}, environment='azureml:x@latest')"
    ).success
    ip.run_line_magic("aml_debug_job", "job --timeout 1")
    session = current_session("job")
    assert session.wait(60) == "finished"
    assert "prepared 3" in session.rows[0].last_lines


def test_an_input_from_the_cloud_takes_a_local_stand_in(ip, project):
    assert ip.run_cell(
        "cloud_job = training(raw_data=Input(type='uri_folder', "
        "path='azureml://datastores/workspaceblobstore/paths/raw/'))"
    ).success
    with pytest.raises(UsageError, match=r"reads the uri_folder input 'raw_data' \(azureml://"
                       r"datastores/workspaceblobstore/paths/raw/\), which is not on this "
                       r"machine: add --input raw_data=PATH"):
        ip.run_line_magic("aml_debug_job", "cloud_job --node train")
    ip.run_line_magic("aml_debug_job", "cloud_job --node train --timeout 1 --input raw_data=raw")
    assert current_session("job").wait(60) == "finished"


@pytest.mark.parametrize(
    ("cell", "line", "message"),
    [
        ("", "pipeline_job --node nope", "no node named 'nope'; the nodes are: prep, train"),
        ("", "nothing_here", "no variable named 'nothing_here'"),
        ("x = 3", "x", "'x' is a int: give a command(...) job or a PipelineJob"),
        ("shell_job = command(code='./src', command='bash run.sh', environment='azureml:e@1')",
         "shell_job", "starts Python (python SCRIPT or python -m MODULE) to debug: "),
        ("shell_job = command(code='./src', command='bash  run.sh', environment='azureml:e@1')",
         "shell_job", "runs `bash run.sh`"),
        ("", "pipeline_job --call train=2", "--call train=2: node 'train' starts Python 1 "
         "time(s): 1 `python train.py"),
        ("", "pipeline_job --call train", "--call takes NODE=N, like train=2"),
        ("", "pipeline_job --node prep --call train=1", "--call train=...: node 'train' is not "
         "debugged (add --node train)"),
        ("far = command(code='./elsewhere', command='python x.py', environment='azureml:e@1')",
         "far", "its code folder"),
        ("", "pipeline_job --target azureml --workspace nowhere", "no variable named 'nowhere'"),
    ],
)
def test_what_cannot_run_is_one_line(ip, project, cell, line, message):
    ip.user_ns["ml_client"] = object()  # stands in for an MLClient: nothing is submitted here
    assert ip.run_cell(cell).success
    with pytest.raises(UsageError) as refused:
        ip.run_line_magic("aml_debug_job", line)
    assert message in str(refused.value) and "\n" not in str(refused.value)
    assert children_of() == []


@pytest.mark.skipif(not os.environ.get("AML_DEBUG_V2_WORKSPACE"),
                    reason="set AML_DEBUG_V2_WORKSPACE to a workspace config.json to run against "
                           "a real Azure ML workspace with the SDK v2")
def test_live_against_a_real_workspace(ip, tmp_path):
    """A real submit through MLClient (no stand-in): the node announces itself in run history's
    log and the job ends."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "job.py").write_text("import sys\nprint('live', sys.argv[1:])\n")
    assert ip.run_cell(
        "from azure.ai.ml import MLClient, command\n"
        "from azure.ai.ml.entities import Environment\n"
        "from azure.identity import DefaultAzureCredential\n"
        "ml_client = MLClient.from_config(DefaultAzureCredential(), "
        f"path={os.environ['AML_DEBUG_V2_WORKSPACE']!r})\n"
        "environment = Environment(image='mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04',"
        " conda_file={'dependencies': ['python=3.10', 'pip', {'pip': []}]})\n"
        "job = command(code='./src', command='python job.py x', environment=environment, "
        f"compute={os.environ.get('AML_DEBUG_COMPUTE', 'cpu-cluster')!r})"
    ).success
    ip.run_line_magic("aml_debug_job", "job --target azureml --workspace ml_client --timeout 60")
    session = current_session("job")
    wait_for(lambda: session.rows[0].announcement, 1800, "the node to announce itself")
    assert session.wait(1800) == "finished"
