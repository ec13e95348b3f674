"""One trial of a hyperparameter sweep: SDK v1 ``HyperDriveConfig`` and SDK v2 sweeps.

The projects under ``projects/sweep`` take the shapes of azureml-examples' sweep samples (a
``job-sweep.yml`` whose trial reads ``${{search_space.X}}``; the sklearn HyperDrive notebook's
``train_iris.py`` with ``--kernel`` and ``--penalty``), with code of our own. Sweeps are built
with the SDKs' own classes; each local case runs the trial for real and attaches a real
debug-protocol client, which stops in the trial's script and reads what the script was given.
The azureml case submits through the stand-in ``MLClient`` of ``test_azureml_v2`` (Azure's
control plane is not reachable from here) and runs what was submitted through a real ``bash``.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import need_python_script_step, wait_for
from dap_client import evaluate_at_first_stop
from IPython.core.error import UsageError
from test_system import make_cluster  # noqa: F401  (the fixture)

from aml_debug_magics.errors import DebugInputError
from aml_debug_magics.records import Status
from aml_debug_magics.session import current_session
from aml_debug_magics.sources.sweep import IGNORED, choose_point

PROJECTS = Path(__file__).parent / "projects" / "sweep"
MAIN_BREAK = 14  # with open(args.iris_csv ...): the arguments are parsed
TRAIN_IRIS_BREAK = 12  # accuracy = ...


@pytest.fixture
def iris(ip, tmp_path):
    pytest.importorskip("azure.ai.ml", reason="azure-ai-ml is the v2 extra (pip install .[v2])")
    shutil.copytree(PROJECTS / "iris", tmp_path / "iris")
    return tmp_path / "iris"


def lines_of(session, step: str) -> str:
    return "\n".join(session.row(step).last_lines)


def trial_seen(session, step: str, breakpoints: dict[str, list[int]], expression: str) -> str:
    wait_for(lambda: session.row(step).status == Status.WAITING
             or session.state in ("finished", "failed"), 60, "the trial to wait")
    assert session.row(step).status == Status.WAITING, lines_of(session, step)
    seen = evaluate_at_first_stop(session.row(step).attach_config(), breakpoints, expression)
    wait_for(lambda: session.state in ("finished", "failed"), 60, "the trial to end")
    assert session.state == "finished", lines_of(session, step)
    return seen


# -- the point: read from the SDKs' own parameter expressions ---------------------------------


def test_the_first_point_of_each_v1_expression():
    hyperdrive = pytest.importorskip("azureml.train.hyperdrive")
    space = {
        "--kernel": hyperdrive.choice("linear", "rbf"),
        "--penalty": hyperdrive.uniform(0.5, 2.0),
        "--scale": hyperdrive.loguniform(-3, 0),
        "--depth": hyperdrive.quniform(3, 12, 2),
        "--seed": hyperdrive.randint(100),
        "--momentum": hyperdrive.normal(0.9, 0.05),
        "--decay": hyperdrive.lognormal(0, 1),
    }
    point = choose_point(space, None)
    assert point.values == {"--kernel": "linear", "--penalty": 0.5, "--scale": math.exp(-3),
                            "--depth": 4, "--seed": 0, "--momentum": 0.9, "--decay": 1.0}
    assert point.chosen["--kernel"] == "first of choice('linear', 'rbf')"
    assert point.chosen["--penalty"] == "low end of uniform(0.5, 2.0)"
    assert point.chosen["--momentum"] == "mean of normal(0.9, 0.05)"
    assert point.describe().endswith(IGNORED)


def test_the_first_point_of_each_v2_expression_and_a_given_point():
    sweep = pytest.importorskip("azure.ai.ml.sweep")
    space = {"lr": sweep.LogUniform(min_value=-6, max_value=-1),
             "batch": sweep.Choice(values=[16, 32]),
             "dropout": sweep.QUniform(min_value=0.0, max_value=0.5, q=0.25)}
    assert choose_point(space, None).values == {"lr": math.exp(-6), "batch": 16, "dropout": 0.0}
    given = choose_point(space, "lr=0.01,batch=32")
    assert given.values == {"lr": 0.01, "batch": 32, "dropout": 0.0}
    assert isinstance(given.values["batch"], int) and given.chosen["batch"] == "given with --params"


# -- SDK v2: a sweep job, alone ---------------------------------------------------------------

SWEEP_YAML = """
from azure.ai.ml import load_job
sweep_job = load_job("iris/job-sweep.yml")
"""


def test_a_sweep_job_runs_its_first_trial_with_the_debugger_in_the_trial_script(ip, iris):
    assert ip.run_cell(SWEEP_YAML).success
    ip.run_line_magic("aml_debug_job", "sweep_job --timeout 60")
    session = current_session("job")
    step = session.rows[0].step
    assert session.row(step).trial == (
        "one trial: learning_rate=0.01 (low end of uniform(0.01, 0.9)), boosting=gbdt (first "
        f"of choice('gbdt', 'dart')); {IGNORED}"
    )
    breakpoints = {str(iris / "src" / "main.py"): [MAIN_BREAK]}
    seen = trial_seen(session, step, breakpoints, "(args.learning_rate, args.boosting)")
    assert seen == "(0.01, 'gbdt')"
    assert "trained gbdt 0.01 rows 3" in lines_of(session, step)


BUILDER_SWEEP = """
from azure.ai.ml import Input, command
from azure.ai.ml.sweep import Choice, Uniform

job = command(code="./iris/src",
              command="python main.py --iris-csv ${{inputs.iris_csv}} "
                      "--learning-rate ${{inputs.learning_rate}} --boosting ${{inputs.boosting}}",
              inputs={"iris_csv": Input(type="uri_file", path="./iris/data/iris.csv"),
                      "learning_rate": 0.9, "boosting": "gbdt"},
              environment="azureml:AzureML-lightgbm-3.2-ubuntu18.04-py37-cpu@latest",
              compute="cpu-cluster")
job_for_sweep = job(learning_rate=Uniform(min_value=0.01, max_value=0.9),
                    boosting=Choice(values=["gbdt", "dart"]))
sweep_job = job_for_sweep.sweep(compute="cpu-cluster", sampling_algorithm="random",
                                primary_metric="test-multi_logloss", goal="Minimize")
sweep_job.set_limits(max_total_trials=20, max_concurrent_trials=10)
"""


def test_the_point_given_with_params_reaches_the_inputs_the_builder_bound(ip, iris):
    assert ip.run_cell(BUILDER_SWEEP).success
    ip.run_line_magic("aml_debug_job", "sweep_job --timeout 60 --params learning_rate=0.5,"
                      "boosting=dart")
    session = current_session("job")
    step = session.rows[0].step
    assert "learning_rate=0.5 (given with --params)" in session.row(step).trial
    breakpoints = {str(iris / "src" / "main.py"): [MAIN_BREAK]}
    seen = trial_seen(session, step, breakpoints, "(args.learning_rate, args.boosting)")
    assert seen == "(0.5, 'dart')"


@pytest.mark.parametrize(("params", "message"), [
    ("rate=0.5", r"--params rate=0.5: the search space has no 'rate' \(it has learning_rate, "
                 r"boosting\)"),
    ("boosting=goss", r"--params boosting=goss: boosting is choice\('gbdt', 'dart'\): give one "
                      r"of gbdt, dart"),
    ("learning_rate=2", r"learning_rate is uniform\(0.01, 0.9\): give a number from 0.01 to "
                        r"0.9"),
    ("learning_rate", r"--params takes NAME=VALUE pairs"),
])
def test_a_point_the_sampler_could_not_give_is_refused_in_one_line(ip, iris, params, message):
    assert ip.run_cell(BUILDER_SWEEP).success
    with pytest.raises(UsageError, match=message) as refused:
        ip.run_line_magic("aml_debug_job", f"sweep_job --params {params}")
    assert "\n" not in str(refused.value)
    assert current_session("job") is None


def test_params_without_a_sweep_is_refused_in_one_line(ip, iris):
    assert ip.run_cell(BUILDER_SWEEP).success
    with pytest.raises(UsageError, match=r"--params is for a sweep: 'job' is no sweep"):
        ip.run_line_magic("aml_debug_job", "job --params learning_rate=0.5")


def test_on_azureml_the_one_trial_is_submitted_as_a_plain_command_job(ip, iris, monkeypatch):
    """What reaches the stand-in control plane is a command job (no sweep settings), whose
    command, run through bash as Azure ML runs it, hands the trial script the point."""
    from test_azureml_v2 import StandInMLClient

    from aml_debug_magics.targets import follow

    monkeypatch.setattr(follow, "POLL_FAST", 0.05)
    monkeypatch.setattr(follow, "POLL_SLOW", 0.05)
    ip.user_ns["ml_client"] = StandInMLClient()
    assert ip.run_cell(SWEEP_YAML).success
    ip.run_line_magic("aml_debug_job", "sweep_job --target azureml --workspace ml_client "
                      "--params boosting=dart")
    jobs = ip.user_ns["ml_client"].jobs
    wait_for(lambda: jobs.submitted, 30, "the submit")
    submitted = jobs.submitted[0]
    assert type(submitted.job).__name__ == "Command"
    assert "sampling_algorithm" not in submitted.as_given
    assert submitted.as_given["inputs"]["learning_rate"] == 0.01
    assert submitted.as_given["inputs"]["boosting"] == "dart"
    command = submitted.commands["job"]
    assert "${{search_space." not in command
    # the line as Azure ML runs it: placeholders given, the bootstrap standing in for python
    line = (command.replace("${{inputs.learning_rate}}", "0.01")
            .replace("${{inputs.boosting}}", "dart")
            .replace("${{inputs.iris_csv}}", str(iris / "data" / "iris.csv"))
            .replace("${{outputs.model}}", str(iris / "out"))
            .replace('"$AML_DEBUG_SOURCE_ROOT/aml_debug_bootstrap.py"', "-c 'import sys; "
                     "print(sys.argv[1:])'"))
    shown = subprocess.run(["bash", "-c", line], cwd=iris / "src", capture_output=True,
                           text=True, env={"PATH": f"{Path(sys.executable).parent}:/usr/bin"})
    assert "'--learning-rate', '0.01', '--boosting', 'dart'" in shown.stdout, shown
    current_session("job").stop()


PIPELINE_SWEEP = """
from azure.ai.ml import Input, dsl, load_component
from azure.ai.ml.sweep import Choice, Uniform

train = load_component(source="iris/train.yml")
score = load_component(source="iris/score.yml")

@dsl.pipeline(compute="cpu-cluster")
def tune_and_score(iris_csv):
    trial = train(iris_csv=iris_csv, learning_rate=Uniform(min_value=0.01, max_value=0.9),
                  boosting=Choice(values=["gbdt", "dart"]))
    sweep_step = trial.sweep(primary_metric="accuracy", goal="maximize",
                             sampling_algorithm="random")
    sweep_step.set_limits(max_total_trials=4)
    scored = score(model=sweep_step.outputs.model)

pipeline_job = tune_and_score(iris_csv=Input(type="uri_file", path="iris/data/iris.csv"))
"""


def test_a_sweep_node_of_a_pipeline_runs_one_trial_and_hands_its_output_on(ip, iris):
    assert ip.run_cell(PIPELINE_SWEEP).success
    ip.run_line_magic("aml_debug_job", "pipeline_job --node sweep_step --params boosting=dart "
                      "--timeout 60")
    session = current_session("job")
    assert session.row("sweep_step").trial.startswith(
        "one trial: learning_rate=0.01 (low end of uniform(0.01, 0.9)), boosting=dart (given "
        "with --params)")
    breakpoints = {str(iris / "src" / "main.py"): [MAIN_BREAK]}
    seen = trial_seen(session, "sweep_step", breakpoints, "(args.learning_rate, args.boosting)")
    assert seen == "(0.01, 'dart')"
    assert "scoring with dart 0.03" in lines_of(session, "scored")


def test_on_azureml_a_sweep_node_of_a_pipeline_is_refused_in_one_line(ip, iris):
    from test_azureml_v2 import StandInMLClient

    ip.user_ns["ml_client"] = StandInMLClient()
    assert ip.run_cell(PIPELINE_SWEEP).success
    with pytest.raises(UsageError, match=r"node 'sweep_step' is a sweep: on Azure ML a sweep "
                       r"inside a pipeline goes as it is"):
        ip.run_line_magic("aml_debug_job", "pipeline_job --node sweep_step --target azureml "
                          "--workspace ml_client")


# -- SDK v1: a HyperDriveConfig ---------------------------------------------------------------

HYPERDRIVE = """
from azureml.core import ScriptRunConfig
from azureml.train.hyperdrive import (BanditPolicy, HyperDriveConfig, PrimaryMetricGoal,
                                      RandomParameterSampling, choice)

src = ScriptRunConfig(source_directory="sklearn", script="train_iris.py",
                      arguments=["--kernel", "linear", "--penalty", 1.0])
param_sampling = RandomParameterSampling({"--kernel": choice("linear", "rbf", "poly", "sigmoid"),
                                          "--penalty": choice(0.5, 1, 1.5)})
hyperdrive_config = HyperDriveConfig(run_config=src, hyperparameter_sampling=param_sampling,
                                     policy=BanditPolicy(evaluation_interval=1,
                                                         slack_factor=0.1),
                                     primary_metric_name="Accuracy",
                                     primary_metric_goal=PrimaryMetricGoal.MAXIMIZE,
                                     max_total_runs=12, max_concurrent_runs=4)
"""


@pytest.fixture
def sklearn_project(ip, tmp_path):
    pytest.importorskip("azureml.train.hyperdrive")
    shutil.copytree(PROJECTS / "sklearn", tmp_path / "sklearn")
    return tmp_path / "sklearn"


def test_a_hyperdrive_config_runs_one_trial_with_the_point_appended(ip, sklearn_project):
    assert ip.run_cell(HYPERDRIVE).success
    ip.run_line_magic("aml_debug_run", "hyperdrive_config --timeout 60 --params penalty=1.5")
    session = current_session("run")
    row = session.row("train_iris")
    assert row.trial.startswith("one trial: --kernel=linear (first of choice('linear', 'rbf', "
                                "'poly', 'sigmoid')), --penalty=1.5 (given with --params)")
    breakpoints = {str(sklearn_project / "train_iris.py"): [TRAIN_IRIS_BREAK]}
    seen = trial_seen(session, "train_iris", breakpoints, "(args.kernel, args.penalty)")
    assert seen == "('linear', 1.5)"
    assert "fitted linear 1.5 accuracy 0.65" in lines_of(session, "train_iris")


def test_the_submitted_trial_is_the_script_run_with_the_point_appended(ip, sklearn_project):
    """On azureml the trial is the user's ScriptRunConfig, a copy whose arguments end with
    ``--NAME VALUE`` as Azure ML appends them; the user's own is left as it was."""
    from aml_debug_magics.sources.sdk_v1 import read_hyperdrive

    assert ip.run_cell(HYPERDRIVE).success
    config = ip.user_ns["hyperdrive_config"]
    spec = read_hyperdrive(config, "hyperdrive_config", "kernel=rbf",
                           base_directory=sklearn_project.parent, target="azureml",
                           namespace=ip.user_ns)
    assert spec.sdk_object.arguments == ["--kernel", "linear", "--penalty", 1.0,
                                         "--kernel", "rbf", "--penalty", "0.5"]
    assert ip.user_ns["src"].arguments == ["--kernel", "linear", "--penalty", 1.0]


HYPERDRIVE_STEP = HYPERDRIVE + """
from azureml.pipeline.core import PipelineData, TrainingOutput
from azureml.pipeline.steps import HyperDriveStep, PythonScriptStep

metrics = PipelineData("metrics_data", pipeline_output_name="hd_metrics",
                       training_output=TrainingOutput("Metrics"))
tune = HyperDriveStep(name="tune", hyperdrive_config=hyperdrive_config, outputs=[metrics])
register = PythonScriptStep(name="register", source_directory="sklearn",
                            script_name="register.py", arguments=["--metrics", metrics],
                            inputs=[metrics])
steps = [tune, register]
"""


def test_a_hyperdrive_step_of_a_pipeline_runs_one_trial_before_the_steps_after_it(
        ip, sklearn_project):
    need_python_script_step()
    assert ip.run_cell(HYPERDRIVE_STEP).success
    ip.run_line_magic("aml_debug_pipeline", "steps --step tune --params kernel=rbf --timeout 60")
    session = current_session("pipeline")
    assert session.row("tune").trial.endswith(
        "; metrics_data: written by HyperDrive from the best run, left empty here")
    breakpoints = {str(sklearn_project / "train_iris.py"): [TRAIN_IRIS_BREAK]}
    seen = trial_seen(session, "tune", breakpoints, "(args.kernel, args.penalty)")
    assert seen == "('rbf', 0.5)"
    assert "metrics files []" in lines_of(session, "register")


def test_on_azureml_a_hyperdrive_step_alone_is_refused_in_one_line(ip, sklearn_project):
    need_python_script_step()
    from aml_debug_magics.sources.sdk_v1 import read_steps

    assert ip.run_cell(HYPERDRIVE_STEP).success
    steps = ip.user_ns["steps"]
    with pytest.raises(DebugInputError, match=r"step 'tune' is a HyperDriveStep: on Azure ML "
                       r"it runs its sweep as it is"):
        read_steps(steps, {"tune"}, base_directory=sklearn_project.parent, target="azureml")
    specs = read_steps(steps, {"tune", "register"}, base_directory=sklearn_project.parent,
                       target="azureml")
    assert [(spec.name, spec.debug) for spec in specs] == [("tune", False), ("register", True)]


# -- on the simulated cluster (tests/simcluster.py) -------------------------------------------

# the trial script, with only the standard library the node's Python has
NODE_TRIAL = """\
import argparse
parser = argparse.ArgumentParser()
parser.add_argument("--kernel")
parser.add_argument("--penalty", type=float)
args = parser.parse_args()
accuracy = 0.5 + args.penalty / 10
print("fitted", args.kernel, args.penalty, flush=True)
"""
NODE_TRIAL_BREAK = 6


def test_a_hyperdrive_trial_runs_on_a_node_as_a_plain_run_and_is_attached(
        ip, sklearn_project, make_cluster):  # noqa: F811
    cluster = make_cluster()
    (sklearn_project / "node_trial.py").write_text(NODE_TRIAL)
    assert ip.run_cell(HYPERDRIVE.replace('script="train_iris.py"', 'script="node_trial.py"')
                       + "ws = object()").success
    ip.run_line_magic("aml_debug_run", "hyperdrive_config --target azureml --workspace ws "
                      "--timeout 120 --params penalty=1")
    session = current_session("run")
    row = session.rows[0]
    wait_for(lambda: row.status == Status.WAITING, 90, "the trial to announce itself")
    assert row.address.split(":")[0] == cluster.nodes[0].address
    seen = evaluate_at_first_stop(row.attach_config(), {
        str(sklearn_project / "node_trial.py"): [NODE_TRIAL_BREAK]}, "(args.kernel, args.penalty)")
    assert seen == "('linear', 1.0)"
    assert session.wait(60) == "finished"
    submitted = cluster.submitted[0]  # a plain run: the ScriptRunConfig, the point appended
    assert type(submitted).__name__ == "ScriptRunConfig"
    assert submitted.arguments[-4:] == ["--kernel", "linear", "--penalty", "1"]


def test_a_v2_sweep_trial_runs_on_a_node_as_a_command_job_and_is_attached(
        ip, iris, make_cluster, monkeypatch):  # noqa: F811
    from aml_debug_magics.targets import azureml_v2

    cluster = make_cluster()
    monkeypatch.setattr(azureml_v2, "V2Workspace", lambda ml_client: cluster)
    assert ip.run_cell(SWEEP_YAML + "ml_client = object()").success
    ip.run_line_magic("aml_debug_job", "sweep_job --target azureml --workspace ml_client "
                      "--timeout 120 --params learning_rate=0.5")
    session = current_session("job")
    row = session.rows[0]
    wait_for(lambda: row.status == Status.WAITING, 90, "the trial to announce itself")
    assert row.address.split(":")[0] == cluster.nodes[0].address
    seen = evaluate_at_first_stop(row.attach_config(), {
        str(iris / "src" / "main.py"): [MAIN_BREAK]}, "(args.learning_rate, args.boosting)")
    assert seen == "(0.5, 'gbdt')"
    assert session.wait(60) == "finished"
    assert any("trained gbdt 0.5 rows 3" in line for line in row.last_lines)
