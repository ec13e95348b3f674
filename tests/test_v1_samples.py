"""SDK v1 projects in the shapes of Microsoft's published samples, on the local target.

The samples (Azure/MachineLearningNotebooks: ``work-with-data/datasets-tutorial``, the
``ml-frameworks`` train scripts) hand a step its data as ``dataset.as_named_input("raw")
.as_mount()`` (or ``.as_download()``) and the script reads it back with
``Run.get_context().input_datasets["raw"]``; the hyperparameter-tuning samples build a
``HyperDriveStep`` from a ``ScriptRunConfig``. Each project here is small code of our own in
those shapes, built with the real SDK classes. A ``FileDataset`` / ``TabularDataset`` needs a
workspace to be built for real: here each is built offline from an ``https://example.invalid``
URL with ``validate=False``, the narrowest stand-in the SDK accepts (nothing reads that URL:
every input gets a local copy through ``--input``). Every step runs for real, and each
end-to-end case attaches a real debug-protocol client with the row's attach config, stops at a
breakpoint set by the local file's path and reads a variable.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from conftest import need_python_script_step, wait_for
from dap_client import evaluate_at_first_stop
from IPython.core.error import UsageError

from aml_debug_magics.records import Status
from aml_debug_magics.session import current_session


@pytest.fixture
def sdk_steps():
    """Datasets and steps: what azureml-pipeline-steps (3.10 and 3.11 only) brings with it."""
    need_python_script_step()

# prep.py: the datasets tutorial's shape: the input comes from the run context, not argv
PREP = textwrap.dedent(
    """\
    import argparse, os, pathlib
    from azureml.core import Run

    run = Run.get_context()
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    args = parser.parse_args()
    raw = run.input_datasets["raw"]
    text = pathlib.Path(raw, "part-0.txt").read_text()
    run.log("rows", len(text))
    run.parent.tag("prepared", "yes")
    os.makedirs(args.out, exist_ok=True)
    pathlib.Path(args.out, "prepared.txt").write_text(text + ">prep")
    print("prep read", raw, "run", run.id, "parent", run.parent.id, flush=True)
    """
)

# train.py: the ml-frameworks train scripts' shape: a dataset input and the previous step's
# output, both by name from the run context
TRAIN = textwrap.dedent(
    """\
    import pathlib
    from azureml.core import Run

    run = Run.get_context()
    prepared = run.input_datasets["prepared"]
    labels = run.input_datasets["labels"]
    chain = pathlib.Path(prepared, "prepared.txt").read_text()
    chain += "+" + labels.to_pandas_dataframe()["label"][0]
    run.log_row("chain", text=chain)
    print("train chain", chain, "experiment", run.experiment.name, flush=True)
    """
)
TRAIN_BREAK = 7  # chain = ...: prepared and labels are known

PIPELINE = """
from azureml.core import Dataset, RunConfiguration
from azureml.data import OutputFileDatasetConfig
from azureml.pipeline.steps import PythonScriptStep

raw_files = Dataset.File.from_files(path="https://example.invalid/raw/", validate=False)
labels = Dataset.Tabular.from_delimited_files(
    path="https://example.invalid/labels.csv", validate=False, infer_column_types=False)
prepared = OutputFileDatasetConfig(name="prepared_data")
prep = PythonScriptStep(name="prep", script_name="prep.py", source_directory="src",
                        arguments=["--out", prepared],
                        inputs=[raw_files.as_named_input("raw").as_mount()],
                        compute_target="cpu-cluster", allow_reuse=False)
train = PythonScriptStep(name="train", script_name="train.py", source_directory="src",
                         inputs=[prepared.as_input(name="prepared"),
                                 labels.as_named_input("labels")],
                         compute_target="cpu-cluster", allow_reuse=False)
steps = [train]
"""


@pytest.fixture
def project(ip, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "prep.py").write_text(PREP)
    (tmp_path / "src" / "train.py").write_text(TRAIN)
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "part-0.txt").write_text("R")
    (tmp_path / "labels.csv").write_text("label\nL\n")
    return tmp_path


def lines_of(session, step: str) -> list[str]:
    return list(session.row(step).last_lines)


def test_a_pipeline_reads_its_named_inputs_from_the_run_context(ip, project, sdk_steps):
    """A mounted File dataset, a previous step's OutputFileDatasetConfig and a Tabular dataset,
    each read by name from ``Run.get_context().input_datasets``; ``prep`` runs without the
    debugger, ``train`` under it."""
    assert ip.run_cell(PIPELINE).success
    ip.run_line_magic(
        "aml_debug_pipeline", "steps --step train --timeout 60 --input raw=raw --input "
        "labels=labels.csv",
    )
    session = current_session("pipeline")
    wait_for(lambda: session.row("train").status == Status.WAITING
             or session.state in ("finished", "failed"), 60, "train to wait")
    assert session.row("train").status == Status.WAITING, lines_of(session, "prep")
    breakpoints = {str(project / "src" / "train.py"): [TRAIN_BREAK]}
    seen = evaluate_at_first_stop(
        session.row("train").attach_config(), breakpoints, "(prepared, type(labels).__name__)"
    )
    prepared, labels = eval(seen)  # a path, and the dataset consumed directly: the dataset
    assert Path(prepared, "prepared.txt").read_text() == "R>prep"
    assert labels == "TabularDataset"
    wait_for(lambda: session.state in ("finished", "failed"), 60, "the pipeline to end")
    assert session.state == "finished", lines_of(session, "train")
    prep_lines = lines_of(session, "prep")
    assert any(line.startswith(f"prep read {project / 'raw'} run ") for line in prep_lines)
    assert "Attempted to log scalar metric rows:" in prep_lines  # as the offline run prints
    assert "Attempted to add tag prepared with value yes" in prep_lines
    assert "train chain R>prep+L experiment aml-debug" in lines_of(session, "train")


def test_the_steps_of_one_pipeline_share_a_parent_run(ip, project, sdk_steps):
    assert ip.run_cell(PIPELINE).success
    (project / "src" / "train.py").write_text(
        "from azureml.core import Run\n"
        "run = Run.get_context()\n"
        "print('train run', run.id, 'parent', run.parent.id, flush=True)\n"
    )
    ip.run_line_magic("aml_debug_pipeline", "steps --step prep --timeout 1 --input raw=raw "
                      "--input labels=labels.csv")
    session = current_session("pipeline")
    wait_for(lambda: session.state in ("finished", "failed"), 60, "the pipeline to end")
    assert session.state == "finished", [lines_of(session, s) for s in ("prep", "train")]
    prep = next(ln for ln in lines_of(session, "prep") if ln.startswith("prep read")).split()
    train = next(ln for ln in lines_of(session, "train") if ln.startswith("train run")).split()
    assert prep[-1] == train[-1]  # one pipeline run
    assert prep[-3] != train[-3] and not train[-3].startswith("OfflineRun")


# -- a ScriptRunConfig, downloaded input ------------------------------------------------------

# the train-with-datasets sample's shape: the folder comes as an argument and from the context
DOWNLOADED = textwrap.dedent(
    """\
    import argparse, os
    from azureml.core import Run

    parser = argparse.ArgumentParser()
    parser.add_argument("--data-folder", dest="data_folder")
    parser.add_argument("--regularization", type=float, default=0.5)
    args = parser.parse_args()
    run = Run.get_context()
    data_folder = run.input_datasets["mnist"]
    files = sorted(os.listdir(data_folder))
    print("same folder", data_folder == args.data_folder, "files", files, flush=True)
    print("parent", run.parent, flush=True)
    """
)
DOWNLOADED_BREAK = 11


def test_a_script_run_config_reads_a_downloaded_input_from_the_run_context(ip, project, sdk_steps):
    (project / "src" / "train_mnist.py").write_text(DOWNLOADED)
    assert ip.run_cell(
        "from azureml.core import Dataset, ScriptRunConfig\n"
        "mnist = Dataset.File.from_files(path='https://example.invalid/mnist/', validate=False)\n"
        "config = ScriptRunConfig(source_directory='src', script='train_mnist.py', arguments=["
        "'--data-folder', mnist.as_named_input('mnist').as_download(), '--regularization', 0.5])"
    ).success
    ip.run_line_magic("aml_debug_run", "--timeout 60 --input mnist=raw config")
    session = current_session("run")
    wait_for(lambda: session.row("train_mnist").status == Status.WAITING
             or session.state in ("finished", "failed"), 60, "the run to wait")
    breakpoints = {str(project / "src" / "train_mnist.py"): [DOWNLOADED_BREAK]}
    seen = evaluate_at_first_stop(
        session.row("train_mnist").attach_config(), breakpoints, "data_folder"
    )
    assert seen == repr(str(project / "raw"))
    wait_for(lambda: session.state in ("finished", "failed"), 60, "the run to end")
    assert session.state == "finished", lines_of(session, "train_mnist")
    assert "same folder True files ['part-0.txt']" in lines_of(session, "train_mnist")
    assert "parent None" in lines_of(session, "train_mnist")  # a script run has no parent


def test_a_step_that_does_not_use_azureml_imports_none_of_it(ip, project, sdk_steps):
    (project / "src" / "plain.py").write_text(
        "import sys\n"
        "print('loaded', sorted(m for m in sys.modules if m.split('.')[0] in "
        "('azureml', 'aml_debug_magics')), flush=True)\n"
    )
    assert ip.run_cell(
        "from azureml.pipeline.steps import PythonScriptStep\n"
        "plain = PythonScriptStep(name='plain', script_name='plain.py', source_directory='src',"
        " compute_target='cpu-cluster')"
    ).success
    ip.run_line_magic("aml_debug_pipeline", "plain --step plain --timeout 1")
    session = current_session("pipeline")
    wait_for(lambda: session.state in ("finished", "failed"), 60, "the step to end")
    loaded = next(ln for ln in lines_of(session, "plain") if ln.startswith("loaded "))
    # the bootstrap (debugger) is ours; nothing of azureml, nothing of the run context
    assert "azureml" not in loaded and "local_run" not in loaded, loaded


def test_a_sitecustomize_of_the_users_still_runs(ip, project, monkeypatch):
    own = project / "site"
    own.mkdir()
    (own / "sitecustomize.py").write_text("import os\nos.environ['USER_SITE_RAN'] = 'yes'\n")
    monkeypatch.setenv("PYTHONPATH", str(own))
    (project / "src" / "site_check.py").write_text(
        "import os\nfrom azureml.core import Run\n"
        "print('site', os.environ.get('USER_SITE_RAN'), 'has inputs',"
        " hasattr(Run.get_context(), 'input_datasets'), flush=True)\n"
    )
    assert ip.run_cell(
        "from azureml.core import ScriptRunConfig\n"
        "config = ScriptRunConfig(source_directory='src', script='site_check.py')"
    ).success
    ip.run_line_magic("aml_debug_run", "--timeout 1 config")
    session = current_session("run")
    wait_for(lambda: session.state in ("finished", "failed"), 60, "the run to end")
    assert "site yes has inputs True" in lines_of(session, "site_check")


# -- a ScriptRunConfig a HyperDriveStep was built from ----------------------------------------

# the hyperparameter-tuning samples' train script: the data folder as an argument
TUNED = textwrap.dedent(
    """\
    import argparse, os
    from azureml.core import Run

    parser = argparse.ArgumentParser()
    parser.add_argument("--data-folder", dest="data_folder")
    parser.add_argument("--learning-rate", type=float, default=0.01)
    args = parser.parse_args()
    run = Run.get_context()
    files = sorted(os.listdir(args.data_folder))
    run.log("learning_rate", args.learning_rate)
    print("tuned files", files, "inputs", sorted(run.input_datasets), flush=True)
    """
)
TUNED_BREAK = 10

HYPERDRIVE = """
from azureml.core import Dataset, ScriptRunConfig
from azureml.pipeline.steps import HyperDriveStep
from azureml.train.hyperdrive import (HyperDriveConfig, PrimaryMetricGoal,
                                      RandomParameterSampling, choice)

images = Dataset.File.from_files(path="https://example.invalid/images/", validate=False)
config = ScriptRunConfig(source_directory="src", script="tuned.py",
                         arguments=["--data-folder", images.{consumption}, "--learning-rate", 0.01])
tuning = HyperDriveConfig(run_config=config,
                          hyperparameter_sampling=RandomParameterSampling(
                              {{"--learning-rate": choice(0.01, 0.1)}}),
                          primary_metric_name="accuracy",
                          primary_metric_goal=PrimaryMetricGoal.MAXIMIZE, max_total_runs=2)
tune = HyperDriveStep(name="tune", hyperdrive_config=tuning)
"""


@pytest.fixture
def tuned(project, sdk_steps):
    (project / "src" / "tuned.py").write_text(TUNED)
    return project


def test_the_hyperdrive_step_took_the_dataset_out_of_the_config(ip, tuned):
    """What the SDK does, checked here so the next test is about the right thing:
    ``HyperDriveStep`` rewrites the ScriptRunConfig's own arguments list."""
    assert ip.run_cell(HYPERDRIVE.format(consumption='as_named_input("images").as_mount()')).success
    assert ip.user_ns["config"].arguments[1] == "DatasetConsumptionConfig:images"


def test_a_script_run_config_a_hyperdrive_step_was_built_from_debugs_with_its_input(ip, tuned):
    assert ip.run_cell(HYPERDRIVE.format(consumption='as_named_input("images").as_mount()')).success
    ip.run_line_magic("aml_debug_run", "--timeout 60 --input images=raw config")
    session = current_session("run")
    wait_for(lambda: session.row("tuned").status == Status.WAITING
             or session.state in ("finished", "failed"), 60, "the run to wait")
    assert session.row("tuned").status == Status.WAITING, lines_of(session, "tuned")
    breakpoints = {str(tuned / "src" / "tuned.py"): [TUNED_BREAK]}
    seen = evaluate_at_first_stop(session.row("tuned").attach_config(), breakpoints, "files")
    assert seen == "['part-0.txt']"
    wait_for(lambda: session.state in ("finished", "failed"), 60, "the run to end")
    assert session.state == "finished", lines_of(session, "tuned")
    assert "tuned files ['part-0.txt'] inputs ['images']" in lines_of(session, "tuned")


def test_an_unnamed_input_a_hyperdrive_step_took_says_which_input_to_give(ip, tuned,
                                                                          monkeypatch):
    monkeypatch.setenv("AML_DEBUG_CACHE", str(tuned / "cache"))
    assert ip.run_cell(HYPERDRIVE.format(consumption="as_mount()")).success
    taken = ip.user_ns["config"].arguments[1].partition(":")[2]  # input__<8 hex>, the SDK's
    with pytest.raises(UsageError) as refused:
        ip.run_line_magic("aml_debug_run", "--timeout 1 config")
    message = str(refused.value)
    assert f"reads the FileDataset {taken!r} (https://example.invalid/images/)" in message
    assert f"--input {taken}=PATH" in message and "\n" not in message
    ip.run_line_magic("aml_debug_run", f"--timeout 1 --input {taken}=raw config")
    session = current_session("run")
    wait_for(lambda: session.state in ("finished", "failed"), 60, "the run to end")
    assert f"tuned files ['part-0.txt'] inputs [{taken!r}]" in lines_of(session, "tuned")


def test_without_the_hyperdrive_step_at_hand_the_input_is_still_given_by_name(ip, tuned):
    """The step was built inside a function and is gone: only the name is left in the
    arguments, and ``--input`` with that name serves."""
    assert ip.run_cell(HYPERDRIVE.format(consumption='as_named_input("images").as_mount()')
                       + "del tune, tuning").success
    with pytest.raises(UsageError, match=r"step 'tuned' reads the dataset 'images' .* add "
                       r"--input images=PATH with a local copy"):
        ip.run_line_magic("aml_debug_run", "--timeout 1 config")
    ip.run_line_magic("aml_debug_run", "--timeout 1 --input images=raw config")
    session = current_session("run")
    wait_for(lambda: session.state in ("finished", "failed"), 60, "the run to end")
    assert session.state == "finished", lines_of(session, "tuned")
    assert "tuned files ['part-0.txt'] inputs ['images']" in lines_of(session, "tuned")


def test_the_run_context_is_left_alone_without_the_local_target(tmp_path):
    """Outside a local step (no variable from the target), ``Run.get_context()`` is azureml's
    own offline run, even with the run context's folder on the path."""
    import subprocess
    import sys

    from aml_debug_magics.targets.local import LOCAL_RUN_SITE

    env = {k: v for k, v in os.environ.items() if not k.startswith("AML_DEBUG_LOCAL")}
    env["PYTHONPATH"] = str(LOCAL_RUN_SITE)
    shown = subprocess.run(
        [sys.executable, "-c", "from azureml.core import Run; print(type(Run.get_context()))"],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert "azureml.core.run._OfflineRun" in shown.stdout, shown.stderr


def test_a_script_run_config_whose_data_section_names_a_dataset_takes_it_by_name(ip, project):
    """The shape of a run configuration written by hand (``run_config.data`` holding a
    ``Data`` for a registered dataset's id, the argument naming it): only the id is known
    offline, so its local copy is given by name."""
    (project / "src" / "listed.py").write_text(
        "import sys\nfrom azureml.core import Run\n"
        "print('listed', sys.argv[2] == Run.get_context().input_datasets['mnist'], flush=True)\n"
    )
    assert ip.run_cell(
        "from azureml.core import ScriptRunConfig\n"
        "from azureml.core.runconfig import Data, DataLocation, Dataset as RunDataset\n"
        "config = ScriptRunConfig(source_directory='src', script='listed.py',"
        " arguments=['--data-folder', 'DatasetConsumptionConfig:mnist'])\n"
        "config.run_config.data = {'mnist': Data(data_location=DataLocation("
        "dataset=RunDataset(dataset_id='0d1e2f')), mechanism='mount',"
        " environment_variable_name='mnist', overwrite=False)}"
    ).success
    with pytest.raises(UsageError, match=r"reads the dataset 'mnist' \(dataset 0d1e2f\), which "
                       r"is not on this machine: add --input mnist=PATH"):
        ip.run_line_magic("aml_debug_run", "--timeout 1 config")
    ip.run_line_magic("aml_debug_run", "--timeout 1 --input mnist=raw config")
    session = current_session("run")
    wait_for(lambda: session.state in ("finished", "failed"), 60, "the run to end")
    assert "listed True" in lines_of(session, "listed"), lines_of(session, "listed")
