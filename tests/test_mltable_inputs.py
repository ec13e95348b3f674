"""An ``mltable`` input of a parallel node, read as Azure ML reads it: by the ``mltable`` package.

The project in ``tests/projects/mltable`` takes the shape of azureml-examples' parallel samples:
an SDK v2 ``parallel_run_function`` node whose ``input_data`` is an ``mltable`` folder (its
``MLTable`` file selects ``./*.csv`` and reads them with ``;`` between values, then drops a
column), its environment a conda file with a pip section declaring ``mltable``. The node runs
for real under the local target: in the job's own layer, built once by uv from the package index
and cached by its content (~/.cache/aml_debug_magics/job-environments), the real mltable package
reads the folder. Without mltable in the job's environment (``--env kernel``, whose kernel has
none), the runner says in one line that the MLTable file was not applied. Like every test not
marked ``every_python``, these run on one Python.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
from conftest import children_of

from aml_debug_magics.session import current_session

pytest.importorskip("azure.ai.ml", reason="azure-ai-ml is the v2 extra (pip install .[v2])")
pytest.importorskip("pandas", reason="a tabular input is handed to run() as a DataFrame")

PROJECT = Path(__file__).parent / "projects" / "mltable"

PIPELINE = """
from azure.ai.ml import Input, Output, dsl
from azure.ai.ml.constants import AssetTypes
from azure.ai.ml.entities import Environment
from azure.ai.ml.parallel import RunFunction, parallel_run_function

score = parallel_run_function(
    name="score_readings",
    inputs=dict(readings=Input(type=AssetTypes.MLTABLE)),
    outputs=dict(scores=Output(type=AssetTypes.URI_FOLDER)),
    input_data="${{inputs.readings}}", instance_count=1, mini_batch_size="1MB",
    error_threshold=-1,
    task=RunFunction(
        code="./Code", entry_script="score_readings.py", append_row_to="${{outputs.scores}}",
        environment=Environment(image="mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04",
                                conda_file="./env/conda.yml")))

@dsl.pipeline(default_compute="cpu-cluster")
def readings_pipeline(readings):
    return {"scores": score(readings=readings).outputs.scores}

pipeline_job = readings_pipeline(readings=Input(type=AssetTypes.MLTABLE, path="./data/readings"))
"""

NOT_APPLIED = ("MLTable: its paths and transformations were not applied, because the job's "
               "environment has no mltable package")


@pytest.fixture
def project(ip, tmp_path):
    shutil.copytree(PROJECT, tmp_path, dirs_exist_ok=True)
    return tmp_path


def scores(session) -> list[str]:
    root = Path(session.note.split("data passed between steps: ", 1)[1].split("; ", 1)[0])
    return (root / "score_readings.scores" / "parallel_run_step.txt").read_text().splitlines()


def test_the_job_s_mltable_reads_the_folder_with_its_own_paths_and_transformations(
    ip, project
):
    assert ip.run_cell(PIPELINE).success
    ip.run_line_magic("aml_debug_job", "pipeline_job --timeout 1")
    session = current_session("job")
    lines = lambda: list(session.row("score_readings").last_lines)  # noqa: E731
    assert session.wait(600) == "finished", lines()  # the first run builds the layer
    assert scores(session) == ["sensor|reading: a|1.5", "sensor|reading: b|2.5",
                               "sensor|reading: c|3.5"]
    assert not any(NOT_APPLIED in line for line in lines()), lines()
    assert children_of() == []


def test_without_mltable_in_the_job_s_environment_one_line_says_what_was_not_applied(
    ip, project
):
    if importlib.util.find_spec("mltable") is not None:
        pytest.skip("the kernel has mltable: --env kernel would read the MLTable with it")
    assert ip.run_cell(PIPELINE).success
    ip.run_line_magic("aml_debug_job", "pipeline_job --timeout 1 --env kernel")
    session = current_session("job")
    lines = lambda: list(session.row("score_readings").last_lines)  # noqa: E731
    assert session.wait(120) == "finished", lines()
    said = [line for line in lines() if NOT_APPLIED in line]
    assert len(said) == 1, lines()
    assert said[0].startswith(f"[aml-debug] {project / 'data' / 'readings' / 'MLTable'}: ")
    # pandas' defaults: "," between values, every .csv and .tsv file under the folder
    whole = "sensor;reading;comment"
    assert scores(session) == [f"{whole}: a;1.5;ok", f"{whole}: b;2.5;odd",
                               f"{whole}: c;3.5;ok", f"{whole}: z;9.5;stale"]
