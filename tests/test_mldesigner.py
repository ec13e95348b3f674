"""Pipeline nodes made from ``@mldesigner.command_component`` functions.

The project under ``projects/mldesigner`` has the shape of azureml-examples' pipelines with
Python function components (a ``components.py`` of decorated functions, and the component
YAML ``mldesigner compile`` writes, whose command is ``mldesigner execute --source components.py
--name ... --inputs a='${{inputs.a}}' ... --outputs ...``), with code of our own. The nodes are
built with azure-ai-ml's own ``load_component`` and ``@dsl.pipeline``, and run by the published
``mldesigner`` package (a pre-release, in the test extra) and its console script. Local cases
attach a real debug-protocol client, which stops in the function body in ``components.py``
and reads its converted inputs. The azureml case submits through the stand-in ``MLClient`` of
``test_azureml_v2`` (Azure's control plane is not reachable from here) and runs the submitted
command through a real ``bash``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import wait_for
from dap_client import evaluate_at_first_stop
from IPython.core.error import UsageError

from aml_debug_magics.records import Status
from aml_debug_magics.session import current_session

pytest.importorskip("azure.ai.ml", reason="azure-ai-ml is the v2 extra (pip install .[v2])")

PROJECT = Path(__file__).parent / "projects" / "mldesigner"
KERNEL_BIN = Path(sys.executable).parent  # where pip put mldesigner's console script
TRAIN_BREAK = 18  # steps = ...: the inputs are converted and the data read

PIPELINE = """
from azure.ai.ml import Input, dsl, load_component

train_model = load_component(source="mldesigner/train_model.yaml")
score_data = load_component(source="mldesigner/score_data.yaml")

@dsl.pipeline(compute="cpu-cluster")
def train_and_score(training_data):
    train = train_model(training_data=training_data, max_epochs=3)
    score = score_data(model_input=train.outputs.model_output)

pipeline_job = train_and_score(training_data=Input(type="uri_folder", path="mldesigner/data"))
"""


@pytest.fixture
def project(ip, tmp_path):
    shutil.copytree(PROJECT, tmp_path / "mldesigner")
    assert ip.run_cell(PIPELINE).success
    return tmp_path / "mldesigner"


@pytest.fixture
def installed(monkeypatch):
    """mldesigner installed in the kernel's environment, that environment activated (its
    console scripts on PATH)."""
    pytest.importorskip("mldesigner", reason="mldesigner is in the test extra")
    monkeypatch.setenv("PATH", os.pathsep.join([str(KERNEL_BIN), os.environ["PATH"]]))


def test_the_function_body_stops_with_its_inputs_converted_as_annotated(ip, project, installed):
    ip.run_line_magic("aml_debug_job", "pipeline_job --node train --timeout 60")
    session = current_session("job")
    row = session.row("train")
    assert row.script_in_root == "components.py"
    wait_for(lambda: row.status == Status.WAITING or session.state in ("finished", "failed"),
             60, "the node to wait")
    assert row.status == Status.WAITING, "\n".join(row.last_lines)
    breakpoints = {str(project / "components.py"): [TRAIN_BREAK]}
    seen = evaluate_at_first_stop(row.attach_config(), breakpoints,
                                  "(max_epochs, learning_rate, os.path.isdir(training_data))")
    assert seen == "(3, 0.02, True)"
    wait_for(lambda: session.state in ("finished", "failed"), 60, "the pipeline to end")
    assert session.state == "finished", "\n".join(session.row("score").last_lines)
    assert "trained 9 steps at 0.02" in "\n".join(row.last_lines)
    assert "scored with ['9', '0.02']" in "\n".join(session.row("score").last_lines)


def test_without_mldesigner_the_node_is_refused_in_one_line(ip, project, monkeypatch):
    monkeypatch.setitem(sys.modules, "mldesigner", None)  # as if it were not installed
    with pytest.raises(UsageError) as refused:
        ip.run_line_magic("aml_debug_job", "pipeline_job --node train --timeout 5")
    assert str(refused.value) == "mldesigner is not installed: pip install mldesigner"
    assert current_session("job") is None


def test_on_azureml_the_node_runs_the_component_command_under_the_bootstrap(
        ip, project, installed, monkeypatch):
    """The submitted command runs the node's own ``mldesigner`` under the bootstrap; with the
    bootstrap's part taken out, the same line run by bash calls the function."""
    from test_azureml_v2 import StandInMLClient

    from aml_debug_magics.targets import follow

    monkeypatch.setattr(follow, "POLL_FAST", 0.05)
    monkeypatch.setattr(follow, "POLL_SLOW", 0.05)
    ip.user_ns["ml_client"] = StandInMLClient()
    ip.run_line_magic("aml_debug_job", "pipeline_job --node train --target azureml "
                      "--workspace ml_client")
    jobs = ip.user_ns["ml_client"].jobs
    wait_for(lambda: jobs.submitted, 30, "the submit")
    command = jobs.submitted[0].commands["train"]
    bootstrap = re.search(r'python ("\$AML_DEBUG_SOURCE_ROOT/aml_debug_bootstrap\.py" .*? -- )'
                          r'"\$\(command -v mldesigner \|\| echo mldesigner\)" execute --source '
                          r"components.py --name train_model", command)
    assert bootstrap, command
    assert jobs.submitted[0].commands["score"].startswith("mldesigner execute")
    out = project / "out"
    line = (command.replace(bootstrap[1], "")
            .replace("${{inputs.training_data}}", str(project / "data"))
            .replace("${{inputs.max_epochs}}", "3").replace("${{inputs.learning_rate}}", "0.5")
            .replace("${{outputs.model_output}}", str(out)))
    path = os.pathsep.join([str(KERNEL_BIN), "/usr/bin"])
    ran = subprocess.run(["bash", "-c", line], cwd=project, capture_output=True, text=True,
                         env={**os.environ, "PATH": path})
    assert "trained 9 steps at 0.5" in ran.stdout, ran
    assert (out / "model.txt").read_text() == "9 0.5\n"
    current_session("job").stop()


FUNCTIONS = '''\
from mldesigner import Input, Output, command_component


@command_component(environment="azureml:AzureML-sklearn-1.5@latest")
def count_rows(rows: Input(type="uri_folder")) -> Output(type="integer", is_control=True):
    import pathlib
    return sum(len(f.read_text().split()) for f in pathlib.Path(rows).glob("*.txt"))


@command_component(environment="azureml:AzureML-sklearn-1.5@latest")
def report(count: int, summary: Output(type="uri_file")):
    with open(summary, "w") as file:
        file.write(f"{count} rows\\n")


@command_component(environment="azureml:AzureML-sklearn-1.5@latest")
def publish(summary: Input(type="uri_file")):
    with open(summary) as file:
        text = file.read().strip()
    print("published:", text, flush=True)
'''

RETURNS_A_VALUE = """
from azure.ai.ml import Input, dsl
from functions import count_rows, publish, report

@dsl.pipeline(compute="cpu-cluster")
def count_and_report(rows):
    counted = count_rows(rows=rows)
    reported = report(count=counted.outputs.output)
    publish(summary=reported.outputs.summary)

value_job = count_and_report(rows=Input(type="uri_folder", path="rows"))
"""


def test_a_returned_value_reaches_the_next_node_and_a_uri_file_output_is_a_file(
    ip, tmp_path, installed, monkeypatch
):
    """Function components as azureml-examples' control-output samples write them: one returns
    an integer (a primitive output, which Azure ML hands the next node as its value), the next
    writes a ``uri_file`` output (the path is the file itself), the last reads that file.
    Run by the published mldesigner; the middle one stopped in the debugger with the value."""
    (tmp_path / "functions.py").write_text(FUNCTIONS)
    (tmp_path / "rows").mkdir()
    (tmp_path / "rows" / "a.txt").write_text("1 2 3\n4 5\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert ip.run_cell(RETURNS_A_VALUE).success
    ip.run_line_magic("aml_debug_job", "value_job --node reported --timeout 60")
    session = current_session("job")
    row = session.row("reported")
    wait_for(lambda: row.status == Status.WAITING or session.state in ("finished", "failed"),
             90, "the node to wait")
    assert row.status == Status.WAITING, "\\n".join(
        line for r in session.rows for line in r.last_lines)
    seen = evaluate_at_first_stop(row.attach_config(), {str(tmp_path / "functions.py"): [14]},
                                  "(count, __import__('os').path.isdir(summary))")
    assert seen == "(5, False)"  # the value itself; a path that is no folder
    assert session.wait(90) == "finished", "\\n".join(
        line for r in session.rows for line in r.last_lines)
    assert any("published: 5 rows" in line for line in session.row("publish").last_lines)
