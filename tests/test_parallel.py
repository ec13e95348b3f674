"""Parallel entry scripts (SDK v1 ``ParallelRunStep``) debugged as users type the magic.

The entry scripts in ``tests/projects/parallel/Code`` take the shape of the published
parallel-run samples (a file-dataset one whose ``init()`` reads its arguments with argparse,
a tabular one that gets DataFrames); the steps are built for real with azureml-pipeline-steps.
On the local target nothing is faked: the runner runs the entry script under the bootstrap and
a real debug-protocol client attaches. On the azureml target only Azure's control plane is a
stand-in (the simulated cluster of ``tests/simcluster.py``), and Azure ML's parallel runner,
which is not published, by ``tests/sim_parallel_runner.py``: it imports the entry script the
step names in a worker process and calls ``init()`` / ``run()`` / ``shutdown()``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import children_of, need_python_script_step, wait_for
from dap_client import evaluate_at_first_stop
from IPython.core.error import UsageError
from test_bootstrap_attach import dap_answers
from test_system import make_cluster  # noqa: F401  (the simulated cluster's fixture)

from aml_debug_magics.records import Status
from aml_debug_magics.session import current_session

PROJECT = Path(__file__).parent / "projects" / "parallel"
DIGITS_BREAK = 20  # label = ...: digit and threshold are known
IRIS_BREAK = 11  # scored["species"] = ...

FILE_STEP = """
from azureml.core import Dataset, Environment
from azureml.pipeline.core import PipelineData
from azureml.pipeline.steps import ParallelRunConfig, ParallelRunStep

digits = Dataset.File.from_files(path="https://example.invalid/digits/", validate=False)
output_dir = PipelineData(name="inferences")
parallel_run_config = ParallelRunConfig(
    source_directory="Code", entry_script="digit_identification.py", mini_batch_size="2",
    error_threshold={threshold}, output_action="append_row",
    append_row_file_name="digit_results.txt", environment=Environment("batch"),
    compute_target="cpu-cluster", {layout})
batch_step = ParallelRunStep(
    name="digit-identification", parallel_run_config=parallel_run_config,
    inputs=[digits.as_named_input("digits")], output=output_dir,
    arguments=["--threshold", "7"], allow_reuse=False)
"""

TWO_BY_TWO = "node_count=2, process_count_per_node=2"

TABULAR_STEP = """
from azureml.core import Dataset, Environment
from azureml.pipeline.steps import ParallelRunConfig, ParallelRunStep

iris = Dataset.Tabular.from_delimited_files(
    path="https://example.invalid/iris.csv", validate=False, infer_column_types=False)
parallel_run_config = ParallelRunConfig(
    source_directory="Code", entry_script="iris_score.py", mini_batch_size="200",
    error_threshold=-1, output_action="summary_only", environment=Environment("batch"),
    compute_target="cpu-cluster", node_count=1)
iris_step = ParallelRunStep(
    name="iris-score", parallel_run_config=parallel_run_config,
    inputs=[iris.as_named_input("iris")], allow_reuse=False)
"""


V2_PIPELINE = """
from azure.ai.ml import Input, Output, dsl
from azure.ai.ml.constants import AssetTypes
from azure.ai.ml.parallel import RunFunction, parallel_run_function

batch_score = parallel_run_function(
    name="batch_score",
    inputs=dict(job_data_path=Input(type=AssetTypes.URI_FOLDER), threshold=Input(type="integer")),
    outputs=dict(job_output_path=Output(type=AssetTypes.URI_FOLDER)),
    input_data="${{inputs.job_data_path}}", instance_count=2, max_concurrency_per_instance=2,
    mini_batch_size="2", error_threshold=10, logging_level="DEBUG",
    task=RunFunction(
        code="./Code", entry_script="digit_identification.py",
        program_arguments="--threshold ${{inputs.threshold}}",
        append_row_to="${{outputs.job_output_path}}",
        environment="azureml:AzureML-sklearn-1.0-ubuntu20.04-py38-cpu@latest"))

@dsl.pipeline(default_compute="cpu-cluster")
def digits_pipeline(digits):
    scored = batch_score(job_data_path=digits, threshold=7)
    return {"scores": scored.outputs.job_output_path}

pipeline_job = digits_pipeline(digits=Input(type=AssetTypes.URI_FOLDER, path="./data/digits"))
"""


@pytest.fixture
def project(ip, tmp_path):
    need_python_script_step()
    shutil.copytree(PROJECT, tmp_path, dirs_exist_ok=True)
    return tmp_path


def lines_of(session, step: str) -> list[str]:
    return list(session.row(step).last_lines)


def data_root(session) -> Path:
    return Path(session.note.split("data passed between steps: ", 1)[1].split("; ", 1)[0])


def test_a_breakpoint_in_run_stops_on_the_first_mini_batch_with_init_arguments_read(
    ip, project
):
    """``init()`` sees the step's arguments through argparse, ``run()`` gets the first two
    files, and every mini-batch's results are appended to the output file the config names."""
    assert ip.run_cell(FILE_STEP.format(threshold=10, layout=TWO_BY_TWO)).success
    ip.run_line_magic("aml_debug_pipeline",
                      "batch_step --input digits=data/digits --timeout 60")
    session = current_session("pipeline")
    step = "digit-identification"
    wait_for(lambda: session.row(step).status == Status.WAITING
             or session.state in ("finished", "failed"), 60, "the step to wait")
    assert session.row(step).status == Status.WAITING, lines_of(session, step)
    assert any(line.startswith("[aml-debug] parallel: 3 mini-batch(es) of 2 files")
               for line in lines_of(session, step))
    breakpoints = {str(project / "Code" / "digit_identification.py"): [DIGITS_BREAK]}
    seen = evaluate_at_first_stop(session.row(step).attach_config(), breakpoints,
                                  "([p.rsplit('/', 1)[1] for p in mini_batch], threshold)")
    assert eval(seen) == (["digit_1.txt", "digit_2.txt"], 7)
    wait_for(lambda: session.state in ("finished", "failed"), 60, "the step to end")
    assert session.state == "finished", lines_of(session, step)
    results = (data_root(session) / "inferences" / "digit_results.txt").read_text().splitlines()
    assert results == ["digit_1.txt: small", "digit_2.txt: small", "digit_3.txt: small",
                       "digit_4.txt: big", "digit_5.txt: big"]
    assert children_of() == []


def test_mini_batches_limits_how_many_run(ip, project):
    assert ip.run_cell(FILE_STEP.format(threshold=10, layout=TWO_BY_TWO)).success
    ip.run_line_magic("aml_debug_pipeline",
                      "batch_step --input digits=data/digits --timeout 1 --mini-batches 1")
    session = current_session("pipeline")
    wait_for(lambda: session.state in ("finished", "failed"), 60, "the step to end")
    step = "digit-identification"
    assert session.state == "finished", lines_of(session, step)
    results = (data_root(session) / "inferences" / "digit_results.txt").read_text().splitlines()
    assert results == ["digit_1.txt: small", "digit_2.txt: small"]
    assert "[aml-debug] stopping after 1 mini-batch(es) (--mini-batches)" in lines_of(
        session, step)


def test_failed_items_past_the_error_threshold_stop_the_step(ip, project):
    """A file ``run()`` cannot read fails its mini-batch: with error_threshold 1 the two items
    of that mini-batch are one too many; with -1 every failure is ignored."""
    (project / "data" / "digits" / "digit_3.txt").write_text("three")
    assert ip.run_cell(FILE_STEP.format(threshold=1, layout=TWO_BY_TWO)).success
    ip.run_line_magic("aml_debug_pipeline", "batch_step --input digits=data/digits --timeout 1")
    session = current_session("pipeline")
    wait_for(lambda: session.state in ("finished", "failed"), 60, "the step to end")
    step = "digit-identification"
    assert session.state == "failed"
    assert session.row(step).status == Status.FAILED
    assert any("2 item(s) failed, more than error_threshold 1" in line
               for line in lines_of(session, step))

    assert ip.run_cell(FILE_STEP.format(threshold=-1, layout=TWO_BY_TWO)).success
    ip.run_line_magic("aml_debug_pipeline", "batch_step --input digits=data/digits --timeout 1")
    session = current_session("pipeline")
    wait_for(lambda: session.state in ("finished", "failed"), 60, "the step to end")
    assert session.state == "finished", lines_of(session, step)
    assert ("[aml-debug] parallel run done: 3 mini-batch(es), 3 item(s) succeeded, 2 failed"
            in lines_of(session, step))


def test_the_first_failed_mini_batch_waits_for_a_debugger_then_the_runner_goes_on(
    ip, project, capsys
):
    """run() raises on two mini-batches after the attach window was missed: the first failure
    waits at its exception (the row's post-mortem), a debugger stops at the raise in run() with
    the mini-batch; after it lets go the mini-batch fails as the runner fails it and the runner
    goes on; the second failure does not wait (once per worker)."""
    from dap_client import DapClient

    (project / "data" / "digits" / "digit_1.txt").write_text("one")
    (project / "data" / "digits" / "digit_5.txt").write_text("five")
    assert ip.run_cell(FILE_STEP.format(threshold=-1, layout=TWO_BY_TWO)).success
    ip.run_line_magic("aml_debug_pipeline", "batch_step --input digits=data/digits --timeout 0.5 "
                      "--post-mortem 120")
    session = current_session("pipeline")
    step = "digit-identification"
    row = session.row(step)
    wait_for(lambda: row.status == Status.POST_MORTEM or session.state in ("finished", "failed"),
             90, "the first failure's post-mortem")
    assert row.status == Status.POST_MORTEM, lines_of(session, step)
    assert row.detail == "ValueError at digit_identification.py:19 in run"
    config = row.attach_config()
    client = DapClient.connect(config["connect"]["host"], config["connect"]["port"])
    try:
        client.attach(config, {}, exception_filters=["uncaught"])
        frame = client.wait_stopped(60)
        assert (frame["source"]["path"], frame["line"]) == (
            str(project / "Code" / "digit_identification.py"), 19)
        assert client.evaluate(frame, "[os.path.basename(p) for p in mini_batch]") == (
            "['digit_1.txt', 'digit_2.txt']")
    finally:
        client.close()
    assert session.wait(90) == "finished", lines_of(session, step)
    lines = lines_of(session, step)
    assert ("[aml-debug] parallel run done: 3 mini-batch(es), 2 item(s) succeeded, 3 failed"
            in lines), "\n".join(lines[-15:])
    waits = [line for line in capsys.readouterr().out.splitlines()
             if line.startswith(f"[{step}] failed, waiting for a debugger at the exception")]
    assert len(waits) == 1, waits  # the second failure, and the retries, did not wait
    assert children_of() == []


HELPER_ENTRY = """\
import os

if "AZUREML_RUN_ID" in os.environ:  # on Azure ML: the runner's helper (the samples' test)
    from azureml_user.parallel_run import EntryScript


def init():
    EntryScript().logger.info("init in %s", EntryScript().agent_name)


def run(mini_batch):
    helper = EntryScript()
    names = [os.path.basename(path) for path in mini_batch]
    with open(os.path.join(helper.output_dir, "seen.txt"), "a") as seen:
        seen.write(" ".join(names) + "\\n")
    helper.logger.info("ran %d files", len(mini_batch))
    return names
"""


def test_an_entry_script_gets_the_runners_helper_as_on_azure_ml(ip, project):
    """The published samples import ``azureml_user.parallel_run.EntryScript`` where
    AZUREML_RUN_ID is set (as it is here, as on Azure ML): its logger's lines reach the row, and
    a file written into its output_dir lands in the step's output folder, beside append_row's."""
    (project / "Code" / "digit_identification.py").write_text(HELPER_ENTRY)
    assert ip.run_cell(FILE_STEP.format(threshold=-1, layout=TWO_BY_TWO)).success
    ip.run_line_magic("aml_debug_pipeline", "batch_step --input digits=data/digits --timeout 1")
    session = current_session("pipeline")
    step = "digit-identification"
    assert session.wait(90) == "finished", lines_of(session, step)
    lines = lines_of(session, step)
    assert any(line.endswith("|ParallelRunStep|init()|INFO|init in process000") for line in lines)
    assert sum(line.endswith("|run()|INFO|ran 2 files") for line in lines) == 2
    output = data_root(session) / "inferences"
    assert (output / "seen.txt").read_text().splitlines() == [
        "digit_1.txt digit_2.txt", "digit_3.txt digit_4.txt", "digit_5.txt"]
    assert (output / "digit_results.txt").read_text().split() == [
        f"digit_{n}.txt" for n in range(1, 6)]
    assert sorted(p.name for p in (project / "Code").iterdir()) == [
        "digit_identification.py", "iris_score.py"]


def test_mini_batches_is_refused_where_it_cannot_apply(ip, project):
    assert ip.run_cell(FILE_STEP.format(threshold=10, layout=TWO_BY_TWO)).success
    with pytest.raises(UsageError) as refused:
        ip.run_line_magic("aml_debug_pipeline", "batch_step --mini-batches 0")
    assert str(refused.value) == "--mini-batches 0: give 1 or more"
    with pytest.raises(UsageError) as refused:
        ip.run_line_magic("aml_debug_pipeline",
                          "batch_step --mini-batches 2 --target azureml --workspace ws")
    assert str(refused.value).startswith("--mini-batches is for the local target")
    assert ip.run_cell(
        "from azureml.pipeline.steps import PythonScriptStep\n"
        "plain = PythonScriptStep(name='plain', script_name='iris_score.py', "
        "source_directory='Code', compute_target='cpu-cluster')"
    ).success
    with pytest.raises(UsageError) as refused:
        ip.run_line_magic("aml_debug_pipeline", "plain --mini-batches 2")
    assert str(refused.value) == "--mini-batches is for parallel steps, and none is being run"
    assert children_of() == []


def test_a_tabular_step_gets_dataframes_of_about_the_mini_batch_size(ip, project):
    """200 bytes of a 730-byte, 40-row CSV: mini-batches of 10 rows, a DataFrame each."""
    pytest.importorskip("pandas", reason="a tabular input is handed to run() as a DataFrame")
    assert ip.run_cell(TABULAR_STEP).success
    ip.run_line_magic("aml_debug_pipeline", "iris_step --input iris=data/iris.csv --timeout 60")
    session = current_session("pipeline")
    step = "iris-score"
    wait_for(lambda: session.row(step).status == Status.WAITING
             or session.state in ("finished", "failed"), 60, "the step to wait")
    breakpoints = {str(project / "Code" / "iris_score.py"): [IRIS_BREAK]}
    seen = evaluate_at_first_stop(session.row(step).attach_config(), breakpoints,
                                  "(type(input_df).__name__, len(input_df))")
    assert eval(seen) == ("DataFrame", 10)
    wait_for(lambda: session.state in ("finished", "failed"), 60, "the step to end")
    assert session.state == "finished", lines_of(session, step)
    assert "iris scoring done" in lines_of(session, step)


@pytest.mark.parametrize("layout", [TWO_BY_TWO, "node_count=1"])
def test_on_the_cluster_the_debug_copy_runs_one_worker_and_stops_in_its_run(
    ip, project, make_cluster, layout  # noqa: F811  (the fixture imported above)
):
    """The step asks for 2 nodes x 2 processes, or one worker per core (no
    process_count_per_node); the debug copy runs one worker, which the shipped shim makes wait
    in ``init()`` and whose ``run()`` a debugger here stops in."""
    cluster = make_cluster(datasets={"digits": project / "data" / "digits"})
    assert ip.run_cell(FILE_STEP.format(threshold=10, layout=layout) + "ws = object()\n").success
    ip.run_line_magic("aml_debug_pipeline",
                      "batch_step --target azureml --workspace ws --timeout 90")
    session = current_session("pipeline")
    row = session.row("digit-identification")
    wait_for(lambda: row.status == Status.WAITING or session.state in ("finished", "failed"),
             90, "the worker to announce itself")
    assert row.status == Status.WAITING, list(row.last_lines)
    assert row.address.split(":")[0] == cluster.nodes[0].address
    assert "digit-identification: the debug copy runs on 1 node with 1 worker process" in (
        session.note)
    breakpoints = {str(project / "Code" / "digit_identification.py"): [DIGITS_BREAK]}
    seen = evaluate_at_first_stop(row.attach_config(), breakpoints,
                                  "([p.rsplit('/', 1)[1] for p in mini_batch], threshold)")
    assert eval(seen) == (["digit_1.txt", "digit_2.txt"], 7)
    assert session.wait(60) == "finished", list(row.last_lines)
    workers = [line for line in row.last_lines if line.startswith("sim runner: worker")]
    assert len(workers) == 1 and workers[0].startswith("sim runner: worker 0 of 1"), workers
    results = (cluster.root / "data" / "inferences" / "digit_results.txt").read_text()
    assert results.splitlines() == ["digit_1.txt: small", "digit_2.txt: small",
                                    "digit_3.txt: small", "digit_4.txt: big", "digit_5.txt: big"]
    step = ip.user_ns["batch_step"]  # the user's step is as it was
    assert step._script_name == "digit_identification.py"
    assert step._process_count_per_node == (2 if layout == TWO_BY_TWO else None)
    assert sorted(p.name for p in (project / "Code").iterdir()) == [
        "digit_identification.py", "iris_score.py"]


def test_on_the_cluster_the_workers_first_failed_run_waits_at_its_exception_then_goes_on(
    ip, project, make_cluster  # noqa: F811
):
    """Under Azure ML's runner (the stand-in) a run() that raises fails its mini-batch and the
    runner goes on: the worker's first failure reaches the row with its snapshot and waits on
    the worker's port; a debugger from here stops at the raise with the mini-batch; after it
    lets go, the runner goes on and the step ends as the runner ends it."""
    from dap_client import DapClient

    (project / "data" / "digits" / "digit_2.txt").write_text("two")
    make_cluster(datasets={"digits": project / "data" / "digits"})
    assert ip.run_cell(FILE_STEP.format(threshold=-1, layout=TWO_BY_TWO) + "ws = object()\n"
                       ).success
    ip.run_line_magic("aml_debug_pipeline",
                      "batch_step --target azureml --workspace ws --timeout 1 --post-mortem 90")
    session = current_session("pipeline")
    row = session.row("digit-identification")
    wait_for(lambda: row.status == Status.POST_MORTEM or session.state in ("finished", "failed"),
             120, "the failure's post-mortem")
    assert row.status == Status.POST_MORTEM, list(row.last_lines)
    assert row.failure.goes_on and row.detail == "ValueError at digit_identification.py:19 in run"
    wait_for(lambda: row.snapshot is not None, 60, "the snapshot")
    assert row.snapshot["frames"][-1]["function"] == "run"
    config = row.attach_config()
    client = DapClient.connect(config["connect"]["host"], config["connect"]["port"])
    try:
        client.attach(config, {}, exception_filters=["uncaught"])
        frame = client.wait_stopped(60)
        assert (frame["source"]["path"], frame["line"]) == (
            str(project / "Code" / "digit_identification.py"), 19)
        assert client.evaluate(frame, "[p.rsplit('/', 1)[1] for p in mini_batch]") == (
            "['digit_1.txt', 'digit_2.txt']")
        client.resume()
    finally:
        client.close()
    assert session.wait(90) == "finished", list(row.last_lines)


def test_an_sdk_v2_parallel_node_runs_its_mini_batches_under_the_debugger(ip, tmp_path):
    """``parallel_run_function``'s node in a ``@dsl.pipeline``: its ``uri_folder`` input in
    mini-batches of 2 files, ``program_arguments`` with their placeholders filled in for
    ``init()``'s argparse, ``append_row_to`` an output folder."""
    shutil.copytree(PROJECT, tmp_path, dirs_exist_ok=True)
    assert ip.run_cell(V2_PIPELINE).success
    ip.run_line_magic("aml_debug_job", "pipeline_job --timeout 60")
    session = current_session("job")
    row = session.row("batch_score")
    wait_for(lambda: row.status == Status.WAITING or session.state in ("finished", "failed"),
             60, "the node to wait")
    assert row.status == Status.WAITING, list(row.last_lines)
    assert any(line.startswith("[aml-debug] parallel: 3 mini-batch(es) of 2 files")
               for line in row.last_lines)
    breakpoints = {str(tmp_path / "Code" / "digit_identification.py"): [DIGITS_BREAK]}
    seen = evaluate_at_first_stop(row.attach_config(), breakpoints,
                                  "([p.rsplit('/', 1)[1] for p in mini_batch], threshold)")
    assert eval(seen) == (["digit_1.txt", "digit_2.txt"], 7)
    assert session.wait(60) == "finished", list(row.last_lines)
    output = data_root(session) / "batch_score.job_output_path" / "parallel_run_step.txt"
    assert output.read_text().splitlines() == [
        "digit_1.txt: small", "digit_2.txt: small", "digit_3.txt: small", "digit_4.txt: big",
        "digit_5.txt: big"]


@pytest.mark.parametrize("sdk", ["v1", "v2"])
def test_a_parallel_row_is_named_after_its_entry_script_and_maps_its_folder(ip, tmp_path, sdk):
    """The runner runs, but the row, its attach config and a breakpoint set through that
    config are the entry script's (before: ``Attach: parallel_entry.py (...)``, mapping the
    runner's own folder)."""
    shutil.copytree(PROJECT, tmp_path, dirs_exist_ok=True)
    code = str((tmp_path / "Code").resolve())
    if sdk == "v1":
        need_python_script_step()
        assert ip.run_cell(FILE_STEP.format(threshold=10, layout=TWO_BY_TWO)).success
        ip.run_line_magic("aml_debug_pipeline",
                          "batch_step --input digits=data/digits --timeout 60")
        session, step = current_session("pipeline"), "digit-identification"
    else:
        assert ip.run_cell(V2_PIPELINE).success
        ip.run_line_magic("aml_debug_job", "pipeline_job --timeout 60")
        session, step = current_session("job"), "batch_score"
    row = session.row(step)
    wait_for(lambda: row.status == Status.WAITING or session.state in ("finished", "failed"),
             60, "the step to wait")
    assert row.status == Status.WAITING, list(row.last_lines)
    config = row.attach_config()
    assert config["name"] == f"Attach: digit_identification.py ({step}) rank 0"
    assert config["pathMappings"] == [{"localRoot": code, "remoteRoot": code}]
    breakpoints = {f"{code}/digit_identification.py": [DIGITS_BREAK]}
    seen = evaluate_at_first_stop(config, breakpoints, "threshold")
    assert seen == "7"
    assert session.wait(60) == "finished", list(row.last_lines)


@pytest.mark.parametrize("target", ["local", "azureml"])
def test_debug_here_first_pauses_in_the_entry_scripts_init(ip, project, capsys, request,
                                                           target):
    """``--debug-here`` on a waiting parallel step: the notebook's debugger attaches for real
    and its first stop is the entry stop, on ``init()``'s first line that runs (the ``global``
    above it runs nothing), with none of the runner's frames shown (before: it paused in the
    runner, ``parallel_entry.py``, on this machine, and in the module's first line on the
    simulated cluster, where the shipped shim loads it)."""
    script = project / "Code" / "digit_identification.py"
    lines = script.read_text().splitlines()
    first = next(n for n, line in enumerate(lines, 1) if "parser = argparse" in line)
    where = "--input digits=data/digits"
    if target == "azureml":
        make = request.getfixturevalue("make_cluster")
        make(datasets={"digits": project / "data" / "digits"})
        where = "--target azureml --workspace ws"
    assert ip.run_cell(FILE_STEP.format(threshold=10, layout=TWO_BY_TWO) + "ws = object()\n"
                       ).success
    ip.run_line_magic("aml_debug_pipeline", f"batch_step {where} --timeout 90 --debug-here")
    session = current_session("pipeline")
    wait_for(lambda: "(entry)" in capsys.readouterr().out, 90, "the entry stop to print")

    capsys.readouterr()
    ip.run_line_magic("aml_debug_step", "")  # where
    shown = capsys.readouterr().out
    assert shown.startswith(f"[digit_identification.py (digit-identification)] stopped at "
                            f"{script}:{first} in init (entry)"), shown
    stack = shown.split("call stack:\n", 1)[1].splitlines()
    assert stack[0].split()[-2] == "init", stack  # below: the cluster's runner, not ours
    assert not any("parallel_entry.py" in line or "bootstrap.py" in line for line in stack)

    ip.run_line_magic("aml_debug_step", f"break digit_identification.py:{DIGITS_BREAK}")
    capsys.readouterr()
    ip.run_line_magic("aml_debug_step", "continue")
    shown = capsys.readouterr().out
    assert shown.splitlines()[0] == (f"[digit_identification.py (digit-identification)] "
                                     f"stopped at {script}:{DIGITS_BREAK} in run (breakpoint)")
    ip.run_line_magic("aml_debug_step", f"break digit_identification.py:{DIGITS_BREAK}")
    ip.run_line_magic("aml_debug_step", "continue")
    assert session.wait(60) == "finished", lines_of(session, "digit-identification")
    assert children_of() == []


def test_on_the_cluster_an_sdk_v2_parallel_node_runs_one_worker_and_stops_in_its_run(
    ip, tmp_path, make_cluster, monkeypatch  # noqa: F811  (the fixture imported above)
):
    """SDK v2: the pipeline job's copy is submitted (``MLClient.jobs.create_or_update`` is the
    seam the cluster replaces) with the parallel node on 1 instance x 1 worker and the shim as
    its entry script; the user's job is as it was afterwards."""
    from aml_debug_magics.targets import azureml_v2

    shutil.copytree(PROJECT, tmp_path, dirs_exist_ok=True)
    cluster = make_cluster()
    monkeypatch.setattr(azureml_v2, "V2Workspace", lambda ml_client: cluster)
    assert ip.run_cell(V2_PIPELINE + "ml_client = object()\n").success
    ip.run_line_magic("aml_debug_job",
                      "pipeline_job --target azureml --workspace ml_client --timeout 90")
    session = current_session("job")
    row = session.row("batch_score")
    wait_for(lambda: row.status == Status.WAITING or session.state in ("finished", "failed"),
             90, "the worker to announce itself")
    assert row.status == Status.WAITING, list(row.last_lines)
    assert row.address.split(":")[0] == cluster.nodes[0].address
    assert "batch_score: the debug copy runs on 1 instance with 1 worker process" in session.note
    breakpoints = {str(tmp_path / "Code" / "digit_identification.py"): [DIGITS_BREAK]}
    seen = evaluate_at_first_stop(row.attach_config(), breakpoints,
                                  "([p.rsplit('/', 1)[1] for p in mini_batch], threshold)")
    assert eval(seen) == (["digit_1.txt", "digit_2.txt"], 7)
    assert session.wait(60) == "finished", list(row.last_lines)
    assert cluster.parallel_layouts == [("batch_score", 1, 1)]
    workers = [line for line in row.last_lines if line.startswith("sim runner: worker")]
    assert workers == [workers[0]] and workers[0].startswith("sim runner: worker 0 of 1")
    node = ip.user_ns["pipeline_job"].jobs["batch_score"]
    assert node.task.entry_script == "digit_identification.py"
    assert (node.resources.instance_count, node.max_concurrency_per_instance) == (2, 2)
    assert sorted(p.name for p in (tmp_path / "Code").iterdir()) == [
        "digit_identification.py", "iris_score.py"]


@pytest.mark.parametrize(("options", "refusal"), [
    ("--connect 127.0.0.1:5678",
     "--connect: 'digit-identification' is a parallel step, whose worker on Azure ML listens "
     "for the debugger: drop --connect and attach to the port the panel shows"),
    ("--via storage",
     "--via storage: 'digit-identification' is a parallel step, whose worker on Azure ML only "
     "listens for the debugger: use --via listen"),
    ("--via auto",
     "--via auto: 'digit-identification' is a parallel step, whose worker on Azure ML only "
     "listens for the debugger: use --via listen"),
])
def test_on_the_cluster_a_parallel_step_refuses_what_its_worker_cannot_do_before_a_submit(
    ip, project, make_cluster, options, refusal  # noqa: F811  (the fixture imported above)
):
    """The shipped shim's worker listens; it neither connects out nor relays through storage.
    The magic says so in one line and submits nothing to the simulated cluster (before, the
    row said "submit failed" after a call to the control plane, or the step listened although
    storage was asked for)."""
    cluster = make_cluster(datasets={"digits": project / "data" / "digits"})
    assert ip.run_cell(FILE_STEP.format(threshold=10, layout=TWO_BY_TWO) + "ws = object()\n"
                       ).success
    with pytest.raises(UsageError) as refused:
        ip.run_line_magic("aml_debug_pipeline",
                          f"batch_step --target azureml --workspace ws --timeout 30 {options}")
    assert str(refused.value) == refusal
    assert cluster.submitted == [] and current_session("pipeline") is None
    assert children_of() == []


def test_on_the_cluster_an_sdk_v2_parallel_node_refuses_connect_before_a_submit(
    ip, tmp_path, make_cluster, monkeypatch  # noqa: F811  (the fixture imported above)
):
    """As for SDK v1: ``MLClient.jobs.create_or_update`` (the seam the cluster replaces) is
    never called."""
    from aml_debug_magics.targets import azureml_v2

    shutil.copytree(PROJECT, tmp_path, dirs_exist_ok=True)
    cluster = make_cluster()
    monkeypatch.setattr(azureml_v2, "V2Workspace", lambda ml_client: cluster)
    assert ip.run_cell(V2_PIPELINE + "ml_client = object()\n").success
    with pytest.raises(UsageError) as refused:
        ip.run_line_magic("aml_debug_job", "pipeline_job --target azureml --workspace ml_client "
                          "--connect 127.0.0.1:5678")
    assert str(refused.value) == (
        "--connect: 'batch_score' is a parallel step, whose worker on Azure ML listens for the "
        "debugger: drop --connect and attach to the port the panel shows")
    assert cluster.submitted == [] and current_session("job") is None
    assert children_of() == []


def test_on_the_cluster_the_workers_port_admits_only_what_allow_names(
    ip, project, make_cluster  # noqa: F811  (the fixture imported above)
):
    """``--allow`` reaches the worker's gate as it reaches any step's: a network this machine
    is not on is refused before debugpy sees the connection, in one line of the node's log
    (the tests above attach through the default, this machine)."""
    make_cluster(datasets={"digits": project / "data" / "digits"})
    assert ip.run_cell(FILE_STEP.format(threshold=10, layout=TWO_BY_TWO) + "ws = object()\n"
                       ).success
    ip.run_line_magic("aml_debug_pipeline", "batch_step --target azureml --workspace ws "
                      "--timeout 90 --allow 10.99.99.0/24")
    session = current_session("pipeline")
    row = session.row("digit-identification")
    wait_for(lambda: row.status == Status.WAITING or session.state in ("finished", "failed"),
             90, "the worker to announce itself")
    assert row.status == Status.WAITING, list(row.last_lines)
    config = row.attach_config()
    assert not dap_answers(config["connect"]["host"], config["connect"]["port"])
    wait_for(lambda: any("refused 1 connection(s) from addresses not allowed" in line
                         for line in row.last_lines), 30, "the refusal in the node's log")
    session.stop()
    assert session.state == "stopped"
