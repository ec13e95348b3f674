"""``%aml_debug_job --target azureml``: SDK v2 jobs built with the real azure-ai-ml classes,
submitted through a stand-in for Azure ML's control plane.

The stand-in is an ``MLClient`` with the ``jobs`` operations the target calls
(``create_or_update``, ``get``, ``list``, ``begin_cancel``, run history's ``get_run_details``);
it tells a pipeline from a command job by the SDK's classes and does to the job it is given what
``create_or_update`` does (code and environment become ARM ids). Logs are append blobs in
Azurite read through real SAS URLs. What reaches the stand-in is checked as Azure ML would run
it: the submitted command goes through a real ``bash``.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import wait_for

from aml_debug_magics.node.announce import Announcement, format_announcement
from aml_debug_magics.records import DebugRequest, ShellCommand, Status, StepSpec
from aml_debug_magics.session import DebugSession, current_session
from aml_debug_magics.targets import follow, statuses
from aml_debug_magics.targets.azureml import AzureMLTarget
from aml_debug_magics.ui.text import TextView

pytest.importorskip("azure.ai.ml", reason="azure-ai-ml is the v2 extra (pip install .[v2])")

ARM = "azureml:/subscriptions/0/resourceGroups/rg/providers/Microsoft.MachineLearningServices"


@dataclass
class JobState:
    """A job as ``jobs.get`` returns it."""

    name: str
    display_name: str
    status: str = "NotStarted"
    tags: dict[str, str] = field(default_factory=dict)
    studio_url: str = ""
    log_files: dict[str, str] = field(default_factory=dict)
    children: list[JobState] = field(default_factory=list)


@dataclass
class Submitted:
    """What one ``create_or_update`` was given, as it was at that moment."""

    job: Any
    as_given: dict[str, Any]
    commands: dict[str, str]
    components: dict[str, int]  # node -> id of its component
    folders: dict[str, list[str]]  # node -> the files its code folder held
    state: JobState


class StandInJobs:
    def __init__(self) -> None:
        self.submitted: list[Submitted] = []
        self.states: dict[str, JobState] = {}
        self._runs_operations = SimpleNamespace(get_run_details=self._details)

    def create_or_update(self, job: Any, experiment_name: str | None = None) -> JobState:
        from azure.ai.ml.entities import Command, PipelineJob

        is_pipeline = isinstance(job, PipelineJob)
        assert is_pipeline or isinstance(job, Command), type(job)
        nodes = dict(job.jobs) if is_pipeline else {"job": job}
        folders = {}
        for name, node in nodes.items():
            folder = Path(node.component.base_path) / node.code
            folders[name] = sorted(p.name for p in folder.iterdir())
        record = Submitted(
            job=job, as_given=job._to_dict(),
            commands={name: node.command for name, node in nodes.items()},
            components={name: id(node.component) for name, node in nodes.items()},
            folders=folders,
            state=JobState(f"job_{uuid.uuid4().hex[:8]}", job.display_name or "job",
                           studio_url="https://ml.azure.com/runs/x"),
        )
        for name, node in nodes.items():  # what the SDK leaves in the object it was given
            node.code = f"{ARM}/workspaces/ws/codes/{uuid.uuid4()}/versions/1"
            if node.environment is not None and not isinstance(node.environment, str):
                node.environment = f"{ARM}/workspaces/ws/environments/Anon/versions/1"
            if is_pipeline:
                child = JobState(f"child_{uuid.uuid4().hex[:8]}", name)
                record.state.children.append(child)
                self.states[child.name] = child
        self.states[record.state.name] = record.state
        self.submitted.append(record)
        return record.state

    def get(self, name: str) -> JobState:
        return self.states[name]

    def list(self, parent_job_name: str) -> list[JobState]:
        return list(self.states[parent_job_name].children)

    def begin_cancel(self, name: str) -> None:
        for state in [self.states[name], *self.states[name].children]:
            state.status = "Canceled"

    def _details(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(log_files=dict(self.states[name].log_files))


class StandInMLClient:
    def __init__(self) -> None:
        self.jobs = StandInJobs()


TRAIN = "print('training')\n"
COMMAND_JOB = """
from azure.ai.ml import Input, command
from azure.ai.ml.entities import Environment

environment = Environment(
    name="training", image="mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04",
    conda_file={"name": "training", "dependencies": ["python=3.10", "pip", {"pip": ["numpy"]}]},
)
train_job = command(code="./src", command="python train.py --data ${{inputs.data}} --lr 0.1",
                    inputs={"data": Input(type="uri_folder", path="./data")},
                    environment=environment, compute="cpu-cluster")
ml_client = StandInMLClient()
"""
# sdk/python/jobs/pipelines's shape: one component, two nodes made from it
SHARED_COMPONENT = """
from azure.ai.ml import Input, Output, command, dsl
from azure.ai.ml.entities import Environment

environment = Environment(
    name="training", image="mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04",
    conda_file={"name": "training", "dependencies": ["python=3.10", "pip"]},
)
split = command(code="./split", command="python split.py --rows ${{inputs.rows}} "
                "--part ${{inputs.part}} --out ${{outputs.part_data}}",
                inputs={"rows": Input(type="uri_folder"), "part": "train"},
                outputs={"part_data": Output(type="uri_folder")}, environment=environment)

@dsl.pipeline(compute="cpu-cluster")
def splits(rows: Input):
    train_split = split(rows=rows, part="train")
    test_split = split(rows=rows, part="test")

pipeline_job = splits(rows=Input(type="uri_folder", path="./data"))
ml_client = StandInMLClient()
"""


@pytest.fixture
def fast_following(monkeypatch):
    monkeypatch.setattr(follow, "POLL_FAST", 0.05)
    monkeypatch.setattr(follow, "POLL_SLOW", 0.05)


@pytest.fixture
def project(ip, tmp_path, fast_following):
    for folder, script in (("src", "train.py"), ("split", "split.py"), ("data", "rows.txt")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / script).write_text(TRAIN)
    ip.user_ns["StandInMLClient"] = StandInMLClient
    return tmp_path


def announced(state: JobState, azurite, port: int = 5678) -> None:
    log = azurite.append_blob(f"{state.name}/user_logs/std_log.txt")
    log.append(format_announcement(Announcement(("10.0.0.4",), port, cwd="/mnt/wd")) + "\n")
    state.log_files = {"user_logs/std_log.txt": log.url()}


def test_a_command_job_is_followed_as_the_run_it_is(ip, project, azurite):
    """A command job is no pipeline (azure-ai-ml's nodes answer ``jobs`` too): its own run is
    followed, the row shows where to attach, and the job's end ends the row and the session."""
    assert ip.run_cell(COMMAND_JOB).success
    ip.run_line_magic("aml_debug_job", "train_job --target azureml --workspace ml_client")
    session = current_session("job")
    jobs = ip.user_ns["ml_client"].jobs
    wait_for(lambda: jobs.submitted, 30, "the submit")
    state = jobs.submitted[0].state
    state.status = "Running"
    announced(state, azurite)
    row = session.row("train_job")
    wait_for(lambda: row.status == Status.WAITING, 30, "the job's announcement on the row")
    assert row.address == "10.0.0.4:5678"
    state.status = "Completed"
    assert session.wait(30) == "finished"
    assert row.status == Status.FINISHED


def test_debugging_one_node_leaves_the_nodes_sharing_its_component_as_they_are(ip, project):
    assert ip.run_cell(SHARED_COMPONENT).success
    ip.run_line_magic("aml_debug_job",
                      "pipeline_job --node test_split --target azureml --workspace ml_client")
    jobs = ip.user_ns["ml_client"].jobs
    wait_for(lambda: jobs.submitted, 30, "the submit")
    sent = jobs.submitted[0]
    written = ("python split.py --rows ${{inputs.rows}} --part ${{inputs.part}} "
               "--out ${{outputs.part_data}}")
    assert sent.commands["train_split"] == written
    assert sent.commands["test_split"].endswith(
        '-- split.py --rows ${{inputs.rows}} --part ${{inputs.part}} --out ${{outputs.part_data}}')
    assert sent.components["train_split"] != sent.components["test_split"]
    assert "aml_debug_bootstrap.py" in sent.folders["test_split"]
    current_session("job").stop()


def without_allow(given: object) -> object:
    """A submitted job dict with each command's ``--allow`` list (this machine's addresses at
    the submit) left out."""
    if isinstance(given, dict):
        return {key: without_allow(value) for key, value in given.items()}
    if isinstance(given, list):
        return [without_allow(value) for value in given]
    return re.sub(r"--allow \S+", "--allow ADDRESSES", given) if isinstance(given, str) else given


def first_difference(first: object, second: object, where: str = "") -> str:
    """Where two submitted job dicts first differ, and the two values there."""
    if isinstance(first, dict) and isinstance(second, dict):
        for key in sorted(set(first) | set(second), key=str):
            if first.get(key) != second.get(key):
                return first_difference(first.get(key), second.get(key), f"{where}.{key}")
    return f"{where}: {first!r} != {second!r}"


def test_the_users_job_is_never_changed_so_the_cell_runs_again(ip, project):
    assert ip.run_cell(SHARED_COMPONENT).success
    job = ip.user_ns["pipeline_job"]
    before = job._to_dict()
    jobs = ip.user_ns["ml_client"].jobs
    for attempt in (1, 2):
        ip.run_line_magic("aml_debug_job",
                          "pipeline_job --node train_split --target azureml --workspace ml_client")
        wait_for(lambda: len(jobs.submitted) == attempt, 30, f"submit {attempt}")  # noqa: B023
        assert job._to_dict() == before
        sent = jobs.submitted[-1].as_given["jobs"]["train_split"]["component"]
        assert sent["code"] == str(project / "split")  # a folder to upload, not an ARM id
    # --allow lists this machine's addresses, which other tests' network namespaces change
    first, second = (without_allow(s.as_given) for s in jobs.submitted)
    assert first == second, first_difference(first, second)
    # the shipped files leave the code folder once the upload is over (right after the submit)
    wait_for(lambda: sorted(p.name for p in (project / "split").iterdir()) == ["split.py"], 30,
             "the shipped files to leave the code folder after the upload")
    current_session("job").stop()


def shell_request(tmp_path: Path, text: str, interpreter: tuple[int, int]) -> DebugRequest:
    """A command job whose node runs ``text``, read as the reader reads it (its ShellCommand)."""
    from azure.ai.ml import command
    from azure.ai.ml.entities import Environment

    environment = Environment(name="e", image="python:3.10", conda_file={"dependencies": ["pip"]})
    job = command(code=str(tmp_path / "src"), command=text, inputs={"lr": 0.1},
                  environment=environment)
    spec = StepSpec("train_job", tmp_path / "src", "train.py", sdk_object=job,
                    command=ShellCommand(text, interpreter))
    return DebugRequest("%aml_debug_job train_job", [spec], target="azureml", sdk="v2",
                        submitted=job, allow="any")


def submitted_command(tmp_path: Path, text: str, interpreter: tuple[int, int]) -> str:
    client = StandInMLClient()
    request = shell_request(tmp_path, text, interpreter)
    target = AzureMLTarget(request, azureml_target_workspace(client), poll_fast=0.05,
                           poll_slow=0.05)
    session = DebugSession(request, target, TextView(write=lambda line: None)).start()
    wait_for(lambda: client.jobs.submitted, 30, "the submit")
    session.stop()
    return client.jobs.submitted[0].commands["job"]


def azureml_target_workspace(client: StandInMLClient) -> Any:
    from aml_debug_magics.targets.azureml_v2 import V2Workspace

    return V2Workspace(client)


@pytest.mark.parametrize(("text", "word"), [
    ("cd src && python train.py --lr ${{inputs.lr}}", "python"),
    ('export MODE=fast && python3 -m trainer.main --mode "$MODE" --lr ${{inputs.lr}}', "python3"),
    ("echo start\npython train.py --lr ${{inputs.lr}} && echo done", "python"),
])
def test_the_command_keeps_its_shell_meaning_and_only_python_is_wrapped(
    tmp_path, fast_following, text, word
):
    """Azure ML runs the line through bash in the code folder: ``cd``, ``&&``, ``$VAR`` and
    the other lines stay; the debugged invocation gets the bootstrap, from the code folder
    named by a variable set before any ``cd``."""
    (tmp_path / "src").mkdir()
    start = text.index(word + " ")
    command = submitted_command(tmp_path, text, (start, start + len(word)))
    prefix = 'export AML_DEBUG_SOURCE_ROOT="$PWD" && '
    assert command.startswith(prefix)
    rest = command[len(prefix):]
    bootstrap_at = rest.index(' "$AML_DEBUG_SOURCE_ROOT/aml_debug_bootstrap.py" ')
    assert rest[:bootstrap_at] == text[:start + len(word)]
    assert rest.endswith(" --" + text[start + len(word):])
    options = shlex.split(rest[bootstrap_at:rest.rindex(" --" + text[start + len(word):])])
    assert options[1:] == ["--listen", "0.0.0.0:5678", "--timeout", "300", "--ranks", "0",
                           "--just-my-code", "--allow", "any"]
    # what bash makes of it in the code folder: an interpreter that prints what it is given
    (tmp_path / "src" / "src").mkdir()
    (tmp_path / "bin").mkdir()
    for name in ("python", "python3"):
        (tmp_path / "bin" / name).write_text("#!/bin/sh\nprintf '<%s>' \"$@\"\n")
        (tmp_path / "bin" / name).chmod(0o755)
    ran = subprocess.run(["bash", "-c", command.replace("${{inputs.lr}}", "0.1")],
                         cwd=tmp_path / "src", capture_output=True, text=True,
                         env={"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"})
    given = re.findall("<([^>]*)>", ran.stdout)
    assert given[0] == f"{tmp_path / 'src'}/aml_debug_bootstrap.py", ran
    assert given[given.index("--") + 1:] == shlex.split(
        text[start + len(word):].split("&&")[0].replace("${{inputs.lr}}", "0.1")
        .replace('"$MODE"', "fast"))


def test_a_node_with_no_python_to_debug_is_refused_in_one_line(tmp_path, fast_following):
    (tmp_path / "src").mkdir()
    client = StandInMLClient()
    request = shell_request(tmp_path, "ls -la", (0, 0))
    request.steps[0].command = ShellCommand("ls -la", None)
    target = AzureMLTarget(request, azureml_target_workspace(client), poll_fast=0.05)
    session = DebugSession(request, target, TextView(write=lambda line: None)).start()
    assert session.wait(30) == "failed"
    assert session.rows[0].detail == (
        "submit failed: node 'train_job' runs `ls -la`: nothing in it runs Python to debug")
    assert client.jobs.submitted == []


# -- statuses ---------------------------------------------------------------------------------

def sdk_v2_statuses() -> tuple[set[str], set[str]]:
    """Every job status azure-ai-ml names (its run-history lists and the REST enum), and the
    terminal ones."""
    from azure.ai.ml.operations._run_history_constants import RunHistoryConstants

    named = set(RunHistoryConstants.ALL_STATUSES)
    try:
        from azure.ai.ml._restclient.arm_ml_service.models import JobStatus
    except ImportError:  # another REST client version
        from azure.ai.ml._restclient.v2023_04_01_preview.models import JobStatus
    named.update(status.value for status in JobStatus)
    return named, set(RunHistoryConstants.TERMINAL_STATUSES)


def test_the_sdk_lists_are_the_ones_the_rows_are_tested_against():
    named, terminal = sdk_v2_statuses()
    assert {"Paused", "Unknown", "NotResponding", "CancelRequested", "Finalizing"} <= named
    assert terminal == {"Completed", "Failed", "Canceled", "NotResponding", "Paused"}


V2_STATUSES = sorted(sdk_v2_statuses()[0])


@pytest.mark.parametrize("status", V2_STATUSES)
def test_every_job_status_is_said_in_words_and_every_terminal_one_ends_the_session(
    ip, project, azurite, status
):
    """``jobs.stream`` waits only through the in-progress and post-processing statuses: every
    other one (the terminal list, ``Unknown``) ends the job, and the session with it."""
    named, terminal = sdk_v2_statuses()
    assert ip.run_cell(COMMAND_JOB).success
    ip.run_line_magic("aml_debug_job", "train_job --target azureml --workspace ml_client")
    session = current_session("job")
    jobs = ip.user_ns["ml_client"].jobs
    wait_for(lambda: jobs.submitted, 30, "the submit")
    state = jobs.submitted[0].state
    state.status = status
    row = session.row("train_job")
    words = statuses.in_words(status)
    wait_for(lambda: words in row.detail or words == str(row.status), 30,
             f"{status} in words on the row")
    if re.search("[a-z][A-Z]", status):
        assert status not in row.detail
    ends = status in terminal or status == "Unknown"
    if ends:
        assert session.wait(30) == ("finished" if status == "Completed" else "failed")
        assert row.status in (Status.FINISHED, Status.FAILED, Status.STOPPED)
    else:
        assert session.wait(0.5) == "running"
        session.stop()


def test_a_project_file_is_what_the_row_points_at(ip, project):
    """The code folder's files are the user's own after the submit: the shipped ones are gone."""
    assert ip.run_cell(COMMAND_JOB).success
    ip.run_line_magic("aml_debug_job", "train_job --target azureml --workspace ml_client")
    jobs = ip.user_ns["ml_client"].jobs
    wait_for(lambda: jobs.submitted, 30, "the submit")
    assert {"aml_debug_bootstrap.py", "train.py"} <= set(jobs.submitted[0].folders["job"])
    wait_for(lambda: sorted(p.name for p in (project / "src").iterdir()) == ["train.py"], 10,
             "the shipped files to go")
    current_session("job").stop()

