"""Datasets consumed directly, and what every job is given, on the local target.

On Azure ML a dataset handed to a step with ``as_named_input(NAME)`` alone (no ``as_mount()``,
no ``as_download()``) reaches the script as the ``TabularDataset`` / ``FileDataset`` itself, from
``Run.get_context().input_datasets[NAME]``. The projects here are small code of our own in the
shapes of Microsoft's published samples (the datasets tutorial's pipeline and its
train-with-datasets ``ScriptRunConfig``), built with the real SDK classes: each dataset is
defined offline from an ``https://example.invalid`` URL with ``validate=False`` (nothing reads
that URL; ``--input`` gives the local copy). Every script runs for real under the local target,
and the tests assert what it printed.
"""

from __future__ import annotations

import os
import textwrap

import pytest
from conftest import need_python_script_step, wait_for

from aml_debug_magics.session import current_session

TITANIC = "PassengerId;Survived;Name;Fare\n1;0;Braund;7.25\n2;1;Cumings;71.28\n3;1;Heikkinen;7.92\n"

# the datasets tutorial's train script: the dataset object from the run context, read by its
# own settings (a ';' separator, a column typed boolean)
READ_TITANIC = textwrap.dedent(
    """\
    from azureml.core import Run
    from azureml.data import TabularDataset

    run = Run.get_context()
    titanic = run.input_datasets["titanic"]
    print("is tabular", isinstance(titanic, TabularDataset), flush=True)
    df = titanic.to_pandas_dataframe()
    print("shape", df.shape, "columns", list(df.columns), flush=True)
    print("survived", df["Survived"].tolist(), flush=True)
    print("take", titanic.take(2).to_pandas_dataframe().shape, flush=True)
    print("skip", titanic.skip(2).to_pandas_dataframe()["Name"].tolist(), flush=True)
    print("keep", list(titanic.keep_columns(["Name"]).to_pandas_dataframe().columns), flush=True)
    print("drop", list(titanic.drop_columns("Fare").to_pandas_dataframe().columns), flush=True)
    print("outputs", sorted(run.output_datasets), flush=True)
    try:
        titanic.register(workspace=None, name="titanic")
    except NotImplementedError as refused:
        print("register:", refused, flush=True)
    """
)

# a FileDataset consumed directly: the script lists it, downloads it, mounts it
READ_IMAGES = textwrap.dedent(
    """\
    import os, sys
    from azureml.core import Run
    from azureml.data import FileDataset

    run = Run.get_context()
    images = run.input_datasets["images"]
    print("is file", isinstance(images, FileDataset), flush=True)
    print("paths", sorted(images.to_path()), flush=True)
    got = images.download(target_path=sys.argv[1], overwrite=True)
    print("downloaded", sorted(os.path.relpath(p, sys.argv[1]) for p in got), flush=True)
    """
)

PIPELINE = """
from azureml.core import Dataset
from azureml.data.dataset_factory import DataType
from azureml.data import OutputFileDatasetConfig
from azureml.pipeline.steps import PythonScriptStep

titanic_ds = Dataset.Tabular.from_delimited_files(
    path="https://example.invalid/titanic/titanic.csv", separator=";", validate=False,
    infer_column_types=False, set_column_types={{"Survived": DataType.to_bool()}})
images_ds = Dataset.File.from_files(path="https://example.invalid/images/*.png", validate=False)
scored = OutputFileDatasetConfig(name="scored")
train = PythonScriptStep(name="train", script_name="train.py", source_directory="src",
                         arguments=["--out", scored],
                         inputs=[titanic_ds.as_named_input("titanic")],
                         compute_target="cpu-cluster", allow_reuse=False)
files = PythonScriptStep(name="files", script_name="files.py", source_directory="src",
                         arguments=[r"{copy}"], inputs=[images_ds.as_named_input("images")],
                         compute_target="cpu-cluster", allow_reuse=False)
"""


@pytest.fixture
def project(ip, tmp_path):
    need_python_script_step()
    pytest.importorskip("azureml.dataprep", reason="a TabularDataset reads with azureml-dataprep")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text(READ_TITANIC)
    (tmp_path / "src" / "files.py").write_text(READ_IMAGES)
    (tmp_path / "titanic.csv").write_text(TITANIC)
    images = tmp_path / "images"
    (images / "cats").mkdir(parents=True)
    (images / "a.png").write_bytes(b"A")
    (images / "cats" / "b.png").write_bytes(b"B")
    (images / "notes.txt").write_text("not an image")
    return tmp_path


def lines_after_run(session, step: str) -> list[str]:
    wait_for(lambda: session.state in ("finished", "failed"), 60, "the run to end")
    lines = list(session.row(step).last_lines)
    assert session.state == "finished", lines
    return lines


def test_a_tabular_dataset_consumed_directly_is_the_dataset_itself(ip, project):
    assert ip.run_cell(PIPELINE.format(copy=project / "copy")).success
    ip.run_line_magic("aml_debug_pipeline", "train --timeout 1 --input titanic=titanic.csv")
    lines = lines_after_run(current_session("pipeline"), "train")
    assert "is tabular True" in lines
    assert "shape (3, 4) columns ['PassengerId', 'Survived', 'Name', 'Fare']" in lines
    assert "survived [False, True, True]" in lines  # the dataset's own column type
    assert "take (2, 4)" in lines
    assert "skip ['Heikkinen']" in lines
    assert "keep ['Name']" in lines
    assert "drop ['PassengerId', 'Survived', 'Name']" in lines
    assert "outputs ['scored']" in lines
    assert ("register: TabularDataset.register: on the local target of aml_debug_magics the "
            "dataset reads a local copy and has no workspace; debug this step with --target "
            "azureml") in lines


def test_a_file_dataset_consumed_directly_keeps_its_own_pattern(ip, project):
    assert ip.run_cell(PIPELINE.format(copy=project / "copy")).success
    ip.run_line_magic("aml_debug_pipeline", "files --timeout 1 --input images=images")
    lines = lines_after_run(current_session("pipeline"), "files")
    assert "is file True" in lines
    assert "paths ['/a.png']" in lines  # *.png at the top, as the dataset's pattern says
    assert "downloaded ['a.png']" in lines


def test_a_script_run_config_hands_the_dataset_object_to_its_script(ip, project):
    """The train-with-datasets sample's shape: the dataset in the arguments, read back by name
    from the run context."""
    (project / "src" / "train_sr.py").write_text(READ_TITANIC.replace(
        'print("outputs"', 'import sys; print("argument", sys.argv[1:])\nprint("outputs"'))
    assert ip.run_cell(PIPELINE.format(copy=project / "copy") + (
        "from azureml.core import ScriptRunConfig\n"
        "config = ScriptRunConfig(source_directory='src', script='train_sr.py', arguments=["
        "'--input-data', titanic_ds.as_named_input('titanic')])\n"
    )).success
    ip.run_line_magic("aml_debug_run", "--timeout 1 --input titanic=titanic.csv config")
    lines = lines_after_run(current_session("run"), "train_sr")
    assert "is tabular True" in lines
    assert "shape (3, 4) columns ['PassengerId', 'Survived', 'Name', 'Fare']" in lines


# what every job is given: its experiment, an MLflow store, and the SDK's model lookup
JOB = textwrap.dedent(
    """\
    import os
    from azureml.core import Model, Run

    run = Run.get_context()
    print("experiment", os.environ["AZUREML_ARM_PROJECT_NAME"], flush=True)
    print("mlflow", os.environ["MLFLOW_TRACKING_URI"], os.environ["MLFLOW_EXPERIMENT_NAME"],
          flush=True)
    print("model", Model.get_model_path("model.pkl"), flush=True)
    """
)


def test_a_job_sees_its_experiment_an_mlflow_store_and_its_local_models(ip, project):
    """``Model.get_model_path`` asks the run for its workspace, takes the SDK's own
    ``RunEnvironmentException`` as "no workspace" and looks in the working folder, as the SDK
    does outside a submitted run."""
    (project / "src" / "job.py").write_text(JOB)
    (project / "src" / "model.pkl").write_bytes(b"M")
    assert ip.run_cell(
        "from azureml.pipeline.steps import PythonScriptStep\n"
        "job = PythonScriptStep(name='job', script_name='job.py', source_directory='src',"
        " compute_target='cpu-cluster', allow_reuse=False)"
    ).success
    ip.run_line_magic("aml_debug_pipeline", "job --timeout 1")
    lines = lines_after_run(current_session("pipeline"), "job")
    assert "experiment aml-debug" in lines
    store = next(line for line in lines if line.startswith("mlflow ")).split()
    assert store[1].startswith("file://") and str(project) not in store[1]
    assert store[1].endswith("/mlruns") and store[2] == "aml-debug"
    assert "model model.pkl" in lines


def test_a_dataset_in_a_pipeline_parameter_is_the_dataset_itself(ip, project):
    """The samples' ``PipelineParameter`` shape: the dataset is the parameter's default, consumed
    through a ``DatasetConsumptionConfig`` in the step's inputs and arguments."""
    (project / "src" / "train_pp.py").write_text(READ_TITANIC.replace(
        'print("outputs"', 'import sys; print("argument", sys.argv[1:])\nprint("outputs"'))
    assert ip.run_cell(PIPELINE.format(copy=project / "copy") + (
        "from azureml.data.dataset_consumption_config import DatasetConsumptionConfig\n"
        "from azureml.pipeline.core import PipelineParameter\n"
        "titanic_param = PipelineParameter(name='titanic_param', default_value=titanic_ds)\n"
        "titanic_input = DatasetConsumptionConfig('titanic', titanic_param)\n"
        "train_pp = PythonScriptStep(name='train_pp', script_name='train_pp.py',"
        " source_directory='src', arguments=['--input-data', titanic_input],"
        " inputs=[titanic_input], compute_target='cpu-cluster', allow_reuse=False)\n"
    )).success
    ip.run_line_magic("aml_debug_pipeline", "train_pp --timeout 1 --input titanic=titanic.csv")
    lines = lines_after_run(current_session("pipeline"), "train_pp")
    assert "is tabular True" in lines
    assert "shape (3, 4) columns ['PassengerId', 'Survived', 'Name', 'Fare']" in lines


def test_mlflow_logs_into_the_sessions_store_and_the_row_says_so(ip, project):
    """``mlflow.start_run()`` and ``log_metric`` in a step, as on Azure ML, with real mlflow."""
    pytest.importorskip("mlflow", reason="mlflow is in the test extra")
    (project / "src" / "tracked.py").write_text(textwrap.dedent(
        """\
        import mlflow

        with mlflow.start_run():
            mlflow.log_param("lr", 0.1)
            mlflow.log_metric("accuracy", 0.9)
            mlflow.log_metric("loss", 0.2, step=1)
        print("experiment", mlflow.get_experiment_by_name("aml-debug").name, flush=True)
        """
    ))
    assert ip.run_cell(
        "from azureml.pipeline.steps import PythonScriptStep\n"
        "tracked = PythonScriptStep(name='tracked', script_name='tracked.py',"
        " source_directory='src', compute_target='cpu-cluster', allow_reuse=False)"
    ).success
    ip.run_line_magic("aml_debug_pipeline", "tracked --timeout 1")
    session = current_session("pipeline")
    lines = lines_after_run(session, "tracked")
    assert "experiment aml-debug" in lines
    detail = session.row("tracked").detail
    assert detail.startswith("metrics: 2 logged, open with `mlflow ui --backend-store-uri file://")
    store = detail.split("--backend-store-uri ")[1].rstrip("`")
    assert str(project) not in store
    assert not list(project.rglob("mlruns"))  # nothing in the code folder


# -- SDK v2: optional inputs in a command ------------------------------------------------------

OPTIONAL = (
    "from azure.ai.ml import Input, command\n"
    "job = command(code='./src', command='python show.py $[[--lr ${{inputs.lr}}]] "
    "$[[--tag ${{inputs.tag}}]] --epochs ${{inputs.epochs}}', inputs={'lr': 0.5, 'epochs': 2, "
    "'tag': Input(type='string', optional=True)}, environment='azureml:x@latest')\n"
)


def test_an_optional_block_is_kept_when_its_input_is_given_and_dropped_when_not(ip, tmp_path):
    """``$[[ ... ]]`` as Azure ML resolves it before the command runs."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "show.py").write_text("import sys\nprint('argv', sys.argv[1:])\n")
    assert ip.run_cell(OPTIONAL).success
    ip.run_line_magic("aml_debug_job", "job --timeout 1")
    session = current_session("job")
    assert session.wait(60) == "finished", session.rows[0].last_lines
    assert "argv ['--lr', '0.5', '--epochs', '2']" in session.rows[0].last_lines



def test_a_tabular_dataset_downloaded_through_the_workspace_reads_its_csv_copy(
        ip, project, monkeypatch):
    """The workspace is an object of our own and ``FileDataset.download`` (the SDK's call that
    reaches Azure storage, after ``to_csv_files()``) is replaced: no storage account is
    reachable from here. The copy holds the rows as ``to_csv_files()`` writes them (commas),
    and the step reads it so, not with the dataset's own ';'."""
    from azureml.data.file_dataset import FileDataset

    def download(self, target_path=None, overwrite=False, **_):
        written = os.path.join(target_path, "part-00000.csv")
        with open(written, "w") as rows:
            rows.write(TITANIC.replace(";", ","))
        return [written]

    monkeypatch.setattr(FileDataset, "download", download)
    monkeypatch.setenv("AML_DEBUG_CACHE", str(project / "cache"))
    ip.user_ns["ws"] = object()
    assert ip.run_cell(PIPELINE.format(copy=project / "copy")).success
    ip.run_line_magic("aml_debug_pipeline", "train --workspace ws --timeout 1")
    lines = lines_after_run(current_session("pipeline"), "train")
    assert "shape (3, 4) columns ['PassengerId', 'Survived', 'Name', 'Fare']" in lines
    assert "skip ['Heikkinen']" in lines
