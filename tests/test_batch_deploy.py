"""%aml_debug_deploy on an SDK v2 batch deployment (azure-ai-ml's ``BatchDeployment``, built as
the batch endpoint samples build one: a code folder, a model folder, an environment with a conda
file): its scoring script run here as Azure ML's batch runner runs it, a real debugger stopped
in ``run(mini_batch)``, the output file read back row by row."""

from __future__ import annotations

import textwrap

import pytest
from conftest import children_of, wait_for
from dap_client import evaluate_at_first_stop
from IPython.core.error import UsageError

from aml_debug_magics.records import Status
from aml_debug_magics.session import current_session

pytest.importorskip("azure.ai.ml", reason="azure-ai-ml is the v2 extra")
pytestmark = pytest.mark.filterwarnings("ignore")

DRIVER = textwrap.dedent(
    """\
    import os

    def init():
        global weight
        model_folder = os.path.join(os.environ["AZUREML_MODEL_DIR"], "model")
        weight = float(open(os.path.join(model_folder, "weight.txt")).read())
        with open(os.path.join(os.environ["AZUREML_BI_OUTPUT_PATH"], "weight.txt"), "w") as kept:
            kept.write(str(weight))  # a file of the script's own, beside the runner's

    def run(mini_batch):
        results = []
        for path in mini_batch:
            value = float(open(path).read()) * weight * int(os.environ["SCALE"])
            results.append(f"{os.path.basename(path)},{value}")
        return results
    """
)
RUN_LINE = 11  # results = []

DEPLOYMENT = """
from azure.ai.ml.constants import BatchDeploymentOutputAction
from azure.ai.ml.entities import BatchDeployment, CodeConfiguration, Environment, Model

batch = BatchDeployment(
    name="scorer", endpoint_name="numbers", model=Model(path="./model"),
    code_configuration=CodeConfiguration(code="./code", scoring_script="batch_driver.py"),
    environment=Environment(image="mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04",
                            conda_file={"dependencies": ["python=3.11", "pip"]}),
    compute="cpu-cluster", instance_count=2, max_concurrency_per_instance=2,
    mini_batch_size=2, output_action=BatchDeploymentOutputAction.APPEND_ROW,
    output_file_name="predictions.csv", error_threshold=-1, logging_level="info",
    environment_variables={"SCALE": "10"},
)
"""


@pytest.fixture
def deployment(ip, tmp_path):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "batch_driver.py").write_text(DRIVER)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weight.txt").write_text("0.5")
    (tmp_path / "inputs").mkdir()
    for number in range(5):
        (tmp_path / "inputs" / f"n{number}.txt").write_text(str(number))
    assert ip.run_cell(DEPLOYMENT).success
    return tmp_path


def test_a_batch_deployment_stops_in_run_and_writes_its_output_file(ip, deployment):
    ip.run_line_magic("aml_debug_deploy", "batch --input inputs --timeout 60")
    session = current_session("deploy")
    row = session.rows[0]
    wait_for(lambda: row.status == Status.WAITING, 60, "the scoring script to wait")
    value = evaluate_at_first_stop(row.attach_config(),
                                   {str(deployment / "code" / "batch_driver.py"): [RUN_LINE]},
                                   "(mini_batch, weight)")
    inputs = deployment / "inputs"
    assert value == repr(([str(inputs / "n0.txt"), str(inputs / "n1.txt")], 0.5))
    assert session.wait(60) == "finished"
    output = session._target.data_root / "scorer.output" / "predictions.csv"
    assert str(output.parent.parent) in session.note
    assert row.detail == f"output file: {output} (5 rows)"
    assert (output.parent / "weight.txt").read_text() == "0.5"
    assert output.read_text().splitlines() == [
        "n0.txt,0.0", "n1.txt,5.0", "n2.txt,10.0", "n3.txt,15.0", "n4.txt,20.0"]
    assert children_of() == []


def test_mini_batches_stop_the_run_early(ip, deployment):
    ip.run_line_magic("aml_debug_deploy", "batch --input inputs --timeout 1 --mini-batches 1")
    session = current_session("deploy")
    assert session.wait(60) == "finished"
    output = session._target.data_root / "scorer.output" / "predictions.csv"
    assert output.read_text().splitlines() == ["n0.txt,0.0", "n1.txt,5.0"]


@pytest.mark.parametrize("cell, line, said", [
    ("", "batch --input missing", "--input missing: no such file or folder"),
    ("", "batch", "give the files it scores with --input PATH"),
    ("mlflow = BatchDeployment(name='m', endpoint_name='e', model=Model(path='./model'))",
     "mlflow --input inputs", "no user code to step through"),
    ("", "batch --input inputs --target docker", "runs on the local target only"),
])
def test_what_cannot_run_is_one_line(ip, deployment, cell, line, said):
    assert ip.run_cell(cell).success
    with pytest.raises(UsageError) as refused:
        ip.run_line_magic("aml_debug_deploy", line)
    assert said in str(refused.value) and "\n" not in str(refused.value)
    assert children_of() == []
