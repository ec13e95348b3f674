"""``partition_keys`` on the local target: one mini-batch per value of the keys.

The project in ``tests/projects/partitioned`` takes the shape of azureml-examples' many-models
parallel sample (``partition_data.py`` writes ``STORE/BRAND/partitioned_data.csv``, the keys only
in the path, read back with a ``partition_format``). The SDK v1 step is built for real with
azureml-core and azureml-pipeline-steps: a ``TabularDataset`` defined offline from an
``https://example.invalid`` URL (``validate=False``; ``--input`` gives the local copy) with its
``partition_format``, and a ``ParallelRunConfig(partition_keys=...)``. The step runs for real
under the local target; the test reads what its ``run()`` returned, one line per row.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import children_of, need_python_script_step, wait_for
from dap_client import evaluate_at_first_stop

from aml_debug_magics.records import Status
from aml_debug_magics.session import current_session

PROJECT = Path(__file__).parent / "projects" / "partitioned"
RUN_BREAK = 13  # mini_batches += 1

STEP = """
from azureml.core import Dataset, Environment
from azureml.pipeline.core import PipelineData
from azureml.pipeline.steps import ParallelRunConfig, ParallelRunStep

oj = Dataset.Tabular.from_delimited_files(
    path="https://example.invalid/oj/**/*.csv", validate=False, infer_column_types=False,
    partition_format="/{{Store}}/{{Brand}}/{{file_name}}.csv")
forecasts = PipelineData(name="forecasts")
config = ParallelRunConfig(
    source_directory="Code", entry_script="oj_forecast.py", partition_keys={keys},
    error_threshold=-1, output_action="append_row", environment=Environment("many-models"),
    compute_target="cpu-cluster", node_count=2)
forecast_step = ParallelRunStep(
    name="forecast", parallel_run_config=config, inputs=[oj.as_named_input("oj")],
    output=forecasts, allow_reuse=False)
"""


@pytest.fixture
def project(ip, tmp_path):
    need_python_script_step()
    pytest.importorskip("azureml.dataprep", reason="a TabularDataset reads with azureml-dataprep")
    shutil.copytree(PROJECT, tmp_path, dirs_exist_ok=True)
    return tmp_path


def expected_rows(folder: Path) -> list[list[str]]:
    """Each (Store, Brand)'s rows, the values in the order of their first row (the files in
    path order, as the dataset lists them), read straight from the files."""
    groups: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for table in sorted(folder.glob("*/*/*.csv")):
        store, brand = table.parent.parent.name, table.parent.name
        for line in table.read_text().splitlines()[1:]:
            week, quantity = line.split(",")
            groups.setdefault((store, brand), []).append((week, quantity))
    return [[f"{number} {index} {store} {brand} {week} {quantity}"
             for index, (week, quantity) in enumerate(rows)]
            for number, ((store, brand), rows) in enumerate(groups.items(), start=1)]


def output_of(session) -> Path:
    root = Path(session.note.split("data passed between steps: ", 1)[1].split("; ", 1)[0])
    return root / "forecasts" / "parallel_run_step.txt"


def test_each_mini_batch_holds_the_rows_of_one_value_of_the_keys(ip, project):
    assert ip.run_cell(STEP.format(keys='["Store", "Brand"]')).success
    ip.run_line_magic("aml_debug_pipeline", "forecast_step --input oj=data/oj --timeout 1")
    session = current_session("pipeline")
    wait_for(lambda: session.state in ("finished", "failed"), 90, "the step to end")
    lines = list(session.row("forecast").last_lines)
    assert session.state == "finished", lines
    assert any(line.startswith("[aml-debug] parallel: 4 mini-batch(es), one per value of the "
                               "partition keys Store and Brand") for line in lines), lines
    written = output_of(session).read_text().splitlines()
    expected = expected_rows(project / "data" / "oj")
    assert len(expected) == 4 and [len(rows) for rows in expected] == [2, 3, 1, 3]
    assert written == [row for rows in expected for row in rows]
    assert children_of() == []


def test_a_breakpoint_in_run_sees_the_first_value_s_dataframe(ip, project):
    assert ip.run_cell(STEP.format(keys='["Store"]')).success
    ip.run_line_magic("aml_debug_pipeline", "forecast_step --input oj=data/oj --timeout 60")
    session = current_session("pipeline")
    row = session.row("forecast")
    wait_for(lambda: row.status == Status.WAITING or session.state in ("finished", "failed"),
             90, "the step to wait")
    assert row.status == Status.WAITING, list(row.last_lines)
    breakpoints = {str(project / "Code" / "oj_forecast.py"): [RUN_BREAK]}
    seen = evaluate_at_first_stop(
        row.attach_config(), breakpoints,
        "(type(mini_batch).__name__, list(mini_batch.columns), mini_batch['Store'].tolist(),"
        " mini_batch.index.tolist())")
    assert eval(seen) == ("DataFrame", ["Store", "Brand", "file_name", "week", "quantity"],
                          ["1000"] * 5, [0, 1, 2, 3, 4])
    assert session.wait(60) == "finished", list(row.last_lines)
    assert children_of() == []


def test_keys_that_are_not_the_dataset_s_partition_keys_fail_the_step_in_one_line(ip, project):
    assert ip.run_cell(STEP.format(keys='["Store", "week"]')).success
    ip.run_line_magic("aml_debug_pipeline", "forecast_step --input oj=data/oj --timeout 1")
    session = current_session("pipeline")
    wait_for(lambda: session.state in ("finished", "failed"), 90, "the step to end")
    lines = list(session.row("forecast").last_lines)
    assert session.state == "failed"
    assert ("partition_keys ['Store', 'week']: week not among the partition keys of the input "
            "'oj' (Store, Brand, file_name): Azure ML requires them among its "
            "partition_format's keys") in lines
    assert not any("Traceback" in line for line in lines), lines


FILES_ENTRY = """\
import os

def init():
    pass

def run(mini_batch):
    return [" ".join(os.path.relpath(path, os.environ["OJ_ROOT"]) for path in mini_batch)]
"""


def test_a_file_input_partitioned_by_keys_gets_one_list_of_files_per_value(
    ip, project, monkeypatch
):
    """A FileDataset with a partition_format, consumed directly: each run() gets the files of
    one value of the keys, as the SDK's own reader takes the values from their paths."""
    (project / "Code" / "list_files.py").write_text(FILES_ENTRY)
    monkeypatch.setenv("OJ_ROOT", str(project / "data" / "oj"))
    assert ip.run_cell(
        "from azureml.core import Dataset, Environment\n"
        "from azureml.pipeline.core import PipelineData\n"
        "from azureml.pipeline.steps import ParallelRunConfig, ParallelRunStep\n"
        "oj_files = Dataset.File.from_files('https://example.invalid/oj/**/*.csv', "
        "validate=False, partition_format='/{Store}/{Brand}/{file_name}.csv')\n"
        "listed = PipelineData(name='forecasts')\n"
        "config = ParallelRunConfig(source_directory='Code', entry_script='list_files.py',"
        " partition_keys=['Store'], error_threshold=-1, output_action='append_row',"
        " environment=Environment('e'), compute_target='cpu-cluster', node_count=1)\n"
        "file_step = ParallelRunStep(name='files', parallel_run_config=config,"
        " inputs=[oj_files.as_named_input('oj')], output=listed, allow_reuse=False)\n"
    ).success
    ip.run_line_magic("aml_debug_pipeline", "file_step --input oj=data/oj --timeout 1")
    session = current_session("pipeline")
    wait_for(lambda: session.state in ("finished", "failed"), 90, "the step to end")
    lines = list(session.row("files").last_lines)
    assert session.state == "finished", lines
    assert any(line.startswith("[aml-debug] parallel: 2 mini-batch(es), one per value of the "
                               "partition keys Store") for line in lines), lines
    stores: dict[str, list[str]] = {}
    for found in sorted((project / "data" / "oj").glob("*/*/*.csv")):
        relative = found.relative_to(project / "data" / "oj")
        stores.setdefault(relative.parts[0], []).append(str(relative))
    assert output_of(session).read_text().splitlines() == [
        " ".join(files) for files in stores.values()]
    assert children_of() == []


V2_PIPELINE = """
from azure.ai.ml import Input, Output, dsl
from azure.ai.ml.constants import AssetTypes
from azure.ai.ml.entities import Environment
from azure.ai.ml.parallel import RunFunction, parallel_run_function

forecast = parallel_run_function(
    name="forecast",
    inputs=dict(data=Input(type=AssetTypes.MLTABLE)),
    outputs=dict(forecasts=Output(type=AssetTypes.URI_FOLDER)),
    input_data="${{inputs.data}}", partition_keys=["Store", "Brand"], instance_count=2,
    error_threshold=-1,
    task=RunFunction(
        code="./Code", entry_script="oj_forecast.py", append_row_to="${{outputs.forecasts}}",
        environment=Environment(image="mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04",
                                conda_file="./env/conda.yml")))

@dsl.pipeline(default_compute="cpu-cluster")
def many_models(data):
    return {"forecasts": forecast(data=data).outputs.forecasts}

pipeline_job = many_models(data=Input(type=AssetTypes.MLTABLE, path="./data/oj"))
"""


def test_an_sdk_v2_node_partitions_its_mltable_by_the_keys_its_partition_format_extracts(
    ip, tmp_path
):
    """The sample's own MLTable (``extract_columns_from_partition_format``), read by the
    mltable package its environment declares (the job's layer, built once and cached)."""
    pytest.importorskip("azure.ai.ml", reason="azure-ai-ml is the v2 extra")
    shutil.copytree(PROJECT, tmp_path, dirs_exist_ok=True)
    assert ip.run_cell(V2_PIPELINE).success
    ip.run_line_magic("aml_debug_job", "pipeline_job --timeout 1")
    session = current_session("job")
    row = session.row("forecast")
    assert session.wait(600) == "finished", list(row.last_lines)
    root = Path(session.note.split("data passed between steps: ", 1)[1].split("; ", 1)[0])
    written = (root / "forecast.forecasts" / "parallel_run_step.txt").read_text().splitlines()
    assert written == [line for rows in expected_rows(tmp_path / "data" / "oj") for line in rows]
    assert children_of() == []
