"""What a parallel step does with failed mini-batches, as Azure ML's runner does it: a mini-batch
whose ``run()`` raises is tried again up to ``run_max_try`` tries (SDK v1
``ParallelRunConfig(run_max_try=...)``, SDK v2 ``retry_settings.max_retries``); one whose last
try failed counts against ``allowed_failed_count`` (SDK v2 ``mini_batch_error_threshold``) and
``allowed_failed_percent``, and past either the job fails. The semantics are the SDK's own
documentation of those parameters (azureml-pipeline-steps ``ParallelRunConfig``'s docstring).

The runner runs for real on tests/projects/parallel's digits (5 files, mini-batches of 2: three
mini-batches); the steps are built with the real azureml-pipeline-steps and azure-ai-ml classes
and run through the magics on the local target.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import need_python_script_step

from aml_debug_magics.records import Status
from aml_debug_magics.session import current_session
from aml_debug_magics.sources.parallel import RUNNER

PROJECT = Path(__file__).parent / "projects" / "parallel"

# run() raises on its first try of every mini-batch, and always on a file holding "three"
FLAKY = '''
import os

tried = set()


def run(mini_batch):
    key = tuple(mini_batch)
    first = key not in tried
    tried.add(key)
    for path in mini_batch:
        if open(path).read().strip() == "three":
            raise ValueError(path + " is not a number")
    if first and os.environ.get("FLAKY") == "1":
        raise RuntimeError("the first try fails")
    return [os.path.basename(path) for path in mini_batch]
'''


@pytest.fixture
def project(tmp_path) -> Path:
    copied = Path(shutil.copytree(PROJECT, tmp_path / "project"))
    (copied / "Code" / "flaky.py").write_text(FLAKY)
    return copied


def run_runner(project: Path, *options: str, flaky: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-u", str(RUNNER), "--entry-script", "flaky.py", "--input",
         str(project / "data" / "digits"), "--mini-batch-size", "2", "--output",
         str(project / "out"), *options],
        cwd=project / "Code", capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "FLAKY": "1" if flaky else "0"},
    )


def rows_written(project: Path) -> list[str]:
    written = project / "out" / "parallel_run_step.txt"
    return written.read_text().splitlines() if written.exists() else []


def test_a_mini_batch_that_fails_is_tried_again_up_to_run_max_try(project):
    again = run_runner(project, "--run-max-try", "2", flaky=True)
    assert again.returncode == 0, again.stdout + again.stderr
    assert rows_written(project) == [f"digit_{n}.txt" for n in range(1, 6)]
    assert ("[aml-debug] mini-batch 1 failed (try 1 of 2, run_max_try): it is tried again, as "
            "Azure ML's runner tries it again") in again.stdout
    assert "3 mini-batch(es), 5 item(s) succeeded, 0 failed" in again.stdout

    (project / "out" / "parallel_run_step.txt").unlink()
    once = run_runner(project, "--run-max-try", "1", flaky=True)
    assert once.returncode == 0  # error_threshold -1: failures are ignored
    assert rows_written(project) == []
    assert "tried again" not in once.stdout
    assert "3 mini-batch(es), 0 item(s) succeeded, 5 failed" in once.stdout


def test_failed_mini_batches_past_allowed_failed_count_stop_the_job(project):
    (project / "data" / "digits" / "digit_3.txt").write_text("three")
    stopped = run_runner(project, "--run-max-try", "3", "--allowed-failed-count", "0")
    assert stopped.returncode == 1
    assert stopped.stderr.count("\nValueError: ") == 3  # three tries of mini-batch 2
    assert ("[aml-debug] 1 mini-batch(es) failed, more than allowed 0: the job stops, as Azure "
            "ML stops it") in stopped.stdout
    assert rows_written(project) == ["digit_1.txt", "digit_2.txt"]  # mini-batch 3 never ran

    (project / "out" / "parallel_run_step.txt").unlink()
    allowed = run_runner(project, "--run-max-try", "1", "--allowed-failed-count", "1")
    assert allowed.returncode == 0, allowed.stdout
    assert rows_written(project) == ["digit_1.txt", "digit_2.txt", "digit_5.txt"]


@pytest.mark.parametrize(("percent", "code"), [("30", 1), ("40", 0)])
def test_more_failed_mini_batches_than_allowed_failed_percent_fail_the_job(
    project, percent, code
):
    (project / "data" / "digits" / "digit_3.txt").write_text("three")  # 1 of 3 mini-batches
    ran = run_runner(project, "--run-max-try", "1", "--allowed-failed-percent", percent)
    assert ran.returncode == code
    assert rows_written(project) == ["digit_1.txt", "digit_2.txt", "digit_5.txt"]  # all ran
    said = (f"[aml-debug] 1 of 3 mini-batch(es) failed, more than allowed_failed_percent "
            f"{percent}: the job fails, as on Azure ML")
    assert (said in ran.stdout) == (code == 1)


V1_STEP = """
from azureml.core import Dataset, Environment
from azureml.pipeline.core import PipelineData
from azureml.pipeline.steps import ParallelRunConfig, ParallelRunStep

digits = Dataset.File.from_files(path="https://example.invalid/digits/", validate=False)
config = ParallelRunConfig(
    source_directory="Code", entry_script="flaky.py", mini_batch_size="2", error_threshold=-1,
    output_action="append_row", environment=Environment("batch"), compute_target="cpu-cluster",
    node_count=1, run_max_try={tries}, allowed_failed_count=0)
step = ParallelRunStep(name="flaky", parallel_run_config=config,
                       inputs=[digits.as_named_input("digits")],
                       output=PipelineData(name="out"), allow_reuse=False)
"""

V2_JOB = """
from azure.ai.ml import Input, Output
from azure.ai.ml.parallel import RunFunction, parallel_run_function

flaky = parallel_run_function(
    name="flaky", inputs=dict(data=Input(type="uri_folder")),
    outputs=dict(out=Output(type="uri_folder")), input_data="${{inputs.data}}",
    mini_batch_size="2", error_threshold=-1, mini_batch_error_threshold=0,
    retry_settings=dict(max_retries=1),
    task=RunFunction(code="./Code", entry_script="flaky.py", append_row_to="${{outputs.out}}",
                     environment="azureml:AzureML-sklearn-1.5@latest"))
job = flaky(data=Input(type="uri_folder", path="./data/digits"))
"""


@pytest.mark.parametrize(("tries", "state"), [(1, "failed"), (2, "finished")])
def test_an_sdk_v1_parallel_step_retries_and_counts_as_its_config_says(
    ip, tmp_path, monkeypatch, tries, state
):
    need_python_script_step()
    shutil.copytree(PROJECT, tmp_path, dirs_exist_ok=True)
    (tmp_path / "Code" / "flaky.py").write_text(FLAKY)
    monkeypatch.setenv("FLAKY", "1")
    assert ip.run_cell(V1_STEP.format(tries=tries)).success
    ip.run_line_magic("aml_debug_pipeline", "step --input digits=data/digits --timeout 1")
    session = current_session("pipeline")
    assert session.wait(90) == state, list(session.row("flaky").last_lines)
    if state == "failed":
        assert session.row("flaky").status == Status.FAILED
        assert any("1 mini-batch(es) failed, more than allowed 0" in line
                   for line in session.row("flaky").last_lines)


def test_an_sdk_v2_mini_batch_error_threshold_stops_the_node(ip, tmp_path):
    shutil.copytree(PROJECT, tmp_path, dirs_exist_ok=True)
    (tmp_path / "Code" / "flaky.py").write_text(FLAKY)
    (tmp_path / "data" / "digits" / "digit_3.txt").write_text("three")
    assert ip.run_cell(V2_JOB).success
    ip.run_line_magic("aml_debug_job", "job --timeout 1")
    session = current_session("job")
    assert session.wait(90) == "failed"
    lines = list(session.rows[0].last_lines)
    assert sum(line.lstrip().startswith("ValueError: ") for line in lines) == 1  # one try
    assert any("1 mini-batch(es) failed, more than allowed 0" in line for line in lines)
