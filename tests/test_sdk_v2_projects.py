"""%aml_debug_job on SDK v2 projects laid out as Azure's azureml-examples lay them out: command job
YAMLs beside a ``src`` folder (``cli/jobs/basics``), components in their own folders with
``code:`` relative to their YAML and pipelines that point at them (``cli/jobs/pipelines-with-
components``), and a ``@dsl.pipeline`` reusing one loaded component (``sdk/python/jobs/pipelines``).

Every project under ``projects/`` is copied, loaded with azure-ai-ml's own loaders from a notebook
folder of its own (so nothing is found by accident in the working folder), run on the local
target, and attached to for real: the breakpoint is set by the local file's path.
"""

from __future__ import annotations

import os
import pathlib
import shutil

import pytest
from conftest import children_of, wait_for
from dap_client import evaluate_at_first_stop
from IPython.core.error import UsageError

from aml_debug_magics.records import Status
from aml_debug_magics.session import current_session

pytest.importorskip("azure.ai.ml", reason="azure-ai-ml is the v2 extra (pip install .[v2])")

PROJECTS = pathlib.Path(__file__).parent / "projects"
CD_TRAIN_BREAK = 8  # weight = args.lr * 4, in basics/src/train.py and basics/src/pkg/train.py
SHOW_BREAK = 6  # home = args.home
AFTER_BREAK = 3  # greeting = sys.argv[1]
PREP_BREAK = 10  # scaled = ...
TRAIN_BREAK = 10  # weight = sum(numbers) * args.lr, in components/train/src/steps/train.py


@pytest.fixture
def project(ip, tmp_path, monkeypatch):
    """The projects, copied; the notebook runs in a folder of its own beside them."""
    root = tmp_path / "project"
    shutil.copytree(PROJECTS, root)
    (root / "notebooks").mkdir()
    monkeypatch.chdir(root / "notebooks")
    assert ip.run_cell("from azure.ai.ml import Input, dsl, load_component, load_job").success
    return root


def data_root(session) -> pathlib.Path:
    """Where the local target put the data the nodes handed on (the panel's note says)."""
    return pathlib.Path(session.note.split(": ", 1)[1])


def debug_to_the_end(ip, line: str, node: str, breakpoint: tuple[pathlib.Path, int],
                     expression: str) -> str:
    """Run the magic, attach to ``node`` with its row's own config, stop at the breakpoint,
    read ``expression`` there; the run then finishes."""
    ip.run_line_magic("aml_debug_job", line)
    session = current_session("job")
    row = session.row(node)
    wait_for(lambda: row.status == Status.WAITING or session.state != "running"
             and session.state != "starting", 90, f"{node} to wait for a debugger")
    assert row.status == Status.WAITING, (session.state, [r.last_lines for r in session.rows])
    script, line_number = breakpoint
    value = evaluate_at_first_stop(row.attach_config(), {str(script): [line_number]}, expression)
    assert session.wait(60) == "finished", [list(r.last_lines) for r in session.rows]
    return value


# -- cli/jobs/basics: one command job, its command as a shell runs it -------------------------


def test_a_command_that_changes_folder_first_is_debugged_in_its_script(ip, project):
    ip.run_cell("job = load_job('../basics/job_cd.yml')")
    value = debug_to_the_end(ip, "job --timeout 60", "job",
                             (project / "basics" / "src" / "train.py", CD_TRAIN_BREAK),
                             "(args.lr, pathlib.Path.cwd().name)")
    assert value == "(0.25, 'src')"
    session = current_session("job")
    assert "trained 1.0 in src" in session.row("job").last_lines
    assert (data_root(session) / "job.model" / "weight.txt").read_text() == "1.0"
    assert children_of() == []


def test_a_module_run_with_python_m_is_debugged(ip, project):
    ip.run_cell("job = load_job('../basics/job_module.yml')")
    value = debug_to_the_end(ip, "job --timeout 60", "job",
                             (project / "basics" / "src" / "pkg" / "train.py", CD_TRAIN_BREAK),
                             "(args.lr, __name__)")
    assert value == "(0.75, '__main__')"
    assert (data_root(current_session("job")) / "job.model" / "weight.txt").read_text() == "3.0"


def test_of_two_python_commands_the_first_waits_and_the_line_says_how_to_pick(
    ip, project, capsys
):
    ip.run_cell("job = load_job('../basics/job_two.yml')")
    value = debug_to_the_end(ip, "job --timeout 60", "job",
                             (project / "basics" / "src" / "show.py", SHOW_BREAK), "args.home")
    assert value == repr(os.environ["HOME"])  # $HOME was the shell's, as on Azure ML
    printed = capsys.readouterr().out
    assert "node 'job' starts Python 2 times: the debugger waits in `python show.py --home " \
           "$HOME`; to pick another: --call job=2 `python after.py" in printed
    assert "after says hello there" in current_session("job").row("job").last_lines


def test_call_picks_the_second_python_command(ip, project):
    ip.run_cell("job = load_job('../basics/job_two.yml')")
    value = debug_to_the_end(ip, "job --call job=2 --timeout 60", "job",
                             (project / "basics" / "src" / "after.py", AFTER_BREAK),
                             "sys.argv[1:]")
    assert value == "['hello there']"
    assert f"home is {os.environ['HOME']}" in current_session("job").row("job").last_lines


# -- cli/jobs/pipelines-with-components: YAML pipelines of YAML components ---------------------


def test_a_yaml_pipeline_reads_code_defaults_and_bindings_as_azure_ml_does(ip, project):
    """Each component's ``code: ./src`` from its own folder, not the notebook's; the pipeline's
    ``path: ../data`` from the pipeline's; ``scale`` from its ``default:``; the bindings
    ``${{parent.inputs.raw_data}}``, ``${{parent.jobs.prep.outputs.clean}}`` and
    ``${{parent.inputs.learning_rate}}`` (strings after load_job) resolved."""
    ip.run_cell("pipeline_job = load_job('../pipelines/prep_train.yml')")
    value = debug_to_the_end(
        ip, "pipeline_job --node train --timeout 60", "train",
        (project / "components" / "train" / "src" / "steps" / "train.py", TRAIN_BREAK),
        "(numbers, args.lr)",
    )
    assert value == "([10, 8], 0.5)"
    data = data_root(current_session("job"))
    assert (data / "prep.clean" / "numbers.txt").read_text() == "10 8"
    assert (data / "train.model" / "weight.txt").read_text() == "9.0"


def test_a_yaml_pipeline_runs_its_shell_node_and_debugs_the_node_after(ip, project):
    """``code:`` from each component's folder, ``scale`` from its ``default:``, the bindings
    ``${{parent.jobs.prep.outputs.clean}}`` and ``${{parent.inputs.learning_rate}}`` (strings
    after load_job), and ``bash make_data.sh`` run as written before them."""
    ip.run_cell("pipeline_job = load_job('../pipelines/pipeline.yml')")
    value = debug_to_the_end(
        ip, "pipeline_job --node train --timeout 60", "train",
        (project / "components" / "train" / "src" / "steps" / "train.py", TRAIN_BREAK),
        "(numbers, args.lr)",
    )
    assert value == "([6, 2, 4], 0.5)"
    session = current_session("job")
    data = data_root(session)
    assert (data / "make_data.raw" / "numbers.txt").read_text() == "3 1 2\n"
    assert (data / "prep.clean" / "numbers.txt").read_text() == "6 2 4"
    assert (data / "train.model" / "weight.txt").read_text() == "6.0"
    assert session.row("prep").status == Status.FINISHED and not session.row("prep").debugged
    assert list((project / "components").rglob("__pycache__")) == []  # nothing of theirs changed


def test_the_default_debugs_every_python_node_and_runs_the_shell_one(ip, project):
    ip.run_cell("pipeline_job = load_job('../pipelines/pipeline.yml')")
    ip.run_line_magic("aml_debug_job", "pipeline_job --timeout 1")
    session = current_session("job")
    assert [r.debugged for r in session.rows] == [False, True, True]
    assert session.wait(90) == "finished"


def test_a_node_of_a_nested_pipeline_is_named_outer_inner_and_debugged(ip, project):
    ip.run_cell("nested_job = load_job('../pipelines/nested.yml')")
    value = debug_to_the_end(
        ip, "nested_job --node prepare.prep --timeout 60", "prepare.prep",
        (project / "components" / "prep" / "src" / "prep.py", PREP_BREAK),
        "(numbers, args.scale)",
    )
    assert value == "([3, 1, 2], 3)"
    data = data_root(current_session("job"))
    assert (data / "prepare.make_data.raw" / "numbers.txt").read_text() == "3 1 2\n"
    assert (data / "train.model" / "weight.txt").read_text() == str(18 * 0.1)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("pipeline_job --node make_data", "node 'make_data' runs `bash make_data.sh "
         "${{outputs.raw}}`: nothing in it starts Python (python SCRIPT or python -m MODULE)"),
        ("nested_job --node prepare", "node 'prepare' is a pipeline: name one of its nodes, "
         "like --node prepare.make_data"),
        ("nested_job --node prep", "no node named 'prep'; the nodes are: prepare.make_data, "
         "prepare.prep, train"),
    ],
)
def test_what_cannot_be_debugged_in_a_yaml_pipeline_is_one_line(ip, project, line, message):
    ip.run_cell("pipeline_job = load_job('../pipelines/pipeline.yml')\n"
                "nested_job = load_job('../pipelines/nested.yml')")
    with pytest.raises(UsageError) as refused:
        ip.run_line_magic("aml_debug_job", line)
    assert message in str(refused.value) and "\n" not in str(refused.value)
    assert children_of() == []


# -- sdk/python/jobs/pipelines: one loaded component used twice in a @dsl.pipeline -------------

TWICE = """
prep = load_component(source="../components/prep/prep.yml")
train = load_component(source="../components/train/train.yml")

@dsl.pipeline(compute="cpu-cluster")
def twice(learning_rate: float = 0.25):
    first = prep(raw=Input(type="uri_folder",
                           path="azureml://datastores/workspaceblobstore/paths/a/"))
    second = prep(raw=Input(type="uri_folder",
                            path="azureml://datastores/workspaceblobstore/paths/b/"), scale=10)
    fit = train(data=second.outputs.clean, lr=learning_rate)

twice_job = twice()
"""


def test_a_component_used_twice_takes_a_local_copy_per_node(ip, project):
    for name, numbers in (("a", "3 1 2"), ("b", "7 8")):
        (project / "notebooks" / name).mkdir()
        (project / "notebooks" / name / "numbers.txt").write_text(numbers)
    assert ip.run_cell(TWICE).success
    with pytest.raises(UsageError) as refused:
        ip.run_line_magic("aml_debug_job", "twice_job --input raw=a")
    assert str(refused.value) == (
        "--input raw: steps 'first' and 'second' read different inputs named 'raw' "
        "(azureml://datastores/workspaceblobstore/paths/a/ and azureml://datastores/"
        "workspaceblobstore/paths/b/): give each its own, --input first.raw=PATH "
        "--input second.raw=PATH"
    )
    value = debug_to_the_end(
        ip, "twice_job --node second --input first.raw=a --input second.raw=b --timeout 60",
        "second", (project / "components" / "prep" / "src" / "prep.py", PREP_BREAK),
        "(numbers, args.scale)",
    )
    assert value == "([7, 8], 10)"
    data = data_root(current_session("job"))
    assert (data / "first.clean" / "numbers.txt").read_text() == "6 2 4"
    assert (data / "fit.model" / "weight.txt").read_text() == "37.5"
