"""A pipeline component used by two outer nodes (``load_component`` of a pipeline YAML, called
twice): debugging ``outer1.inner`` on Azure ML changes what ``outer1`` runs and nothing of
``outer2``, though the SDK gives both outer nodes the same component object.

Real azure-ai-ml objects (``load_component``, ``@dsl.pipeline``) through the magic; the only
stand-in is Azure ML's control plane (``jobs.create_or_update`` and what the follower reads),
which records what the SDK would send: the job's ``_to_dict()`` at the submit.
"""

from __future__ import annotations

import textwrap
import uuid

import pytest
from conftest import wait_for
from test_azureml_v2 import JobState, StandInJobs

from aml_debug_magics.session import current_session

pytest.importorskip("azure.ai.ml", reason="azure-ai-ml is the v2 extra (pip install .[v2])")

INNER = textwrap.dedent(
    """\
    type: command
    name: inner_step
    inputs:
      part: {type: string, default: a}
    code: ./src
    command: python inner.py --part ${{inputs.part}}
    environment:
      image: mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04
    """
)
STAGE = textwrap.dedent(
    """\
    type: pipeline
    name: stage
    inputs:
      part: {type: string}
    jobs:
      inner:
        type: command
        component: ./inner.yml
        inputs:
          part: ${{parent.inputs.part}}
    """
)
PIPELINE = """
from azure.ai.ml import dsl, load_component

stage = load_component("stage.yml")

@dsl.pipeline(compute="cpu-cluster")
def whole():
    outer1 = stage(part="one")
    outer2 = stage(part="two")

pipeline_job = whole()
ml_client = StandInMLClient()
"""
WRITTEN = "python inner.py --part ${{inputs.part}}"


class SentJobs(StandInJobs):
    """``create_or_update`` as the service sees it: the job's serialized form, with a child
    run for each outer node."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[dict] = []

    def create_or_update(self, job, experiment_name=None) -> JobState:
        self.sent.append(job._to_dict())
        state = JobState(f"job_{uuid.uuid4().hex[:8]}", job.display_name or "job")
        for name in job.jobs:
            child = JobState(f"child_{uuid.uuid4().hex[:8]}", name)
            state.children.append(child)
            self.states[child.name] = child
        self.states[state.name] = state
        return state


class StandInMLClient:
    def __init__(self) -> None:
        self.jobs = SentJobs()


@pytest.fixture
def project(ip, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "inner.py").write_text("print('inner')\n")
    (tmp_path / "inner.yml").write_text(INNER)
    (tmp_path / "stage.yml").write_text(STAGE)
    ip.user_ns["StandInMLClient"] = StandInMLClient
    assert ip.run_cell(PIPELINE).success
    job = ip.user_ns["pipeline_job"]
    assert job.jobs["outer1"].component is job.jobs["outer2"].component  # as the SDK makes it
    return tmp_path


def inner_command(sent: dict, outer: str) -> str:
    return sent["jobs"][outer]["component"]["jobs"]["inner"]["component"]["command"]


def test_debugging_one_outer_nodes_inner_node_leaves_the_others_command(ip, project):
    job = ip.user_ns["pipeline_job"]
    before = job._to_dict()
    ip.run_line_magic("aml_debug_job", "pipeline_job --node outer1.inner --target azureml "
                      "--workspace ml_client --timeout 60")
    jobs = ip.user_ns["ml_client"].jobs
    wait_for(lambda: jobs.sent, 30, "the submit")
    current_session("job").stop()
    [sent] = jobs.sent
    assert inner_command(sent, "outer2") == WRITTEN
    debugged = inner_command(sent, "outer1")
    assert "aml_debug_bootstrap.py" in debugged and debugged.endswith(
        "-- inner.py --part ${{inputs.part}}")
    assert sent["jobs"]["outer1"]["inputs"] == {"part": "one"}
    assert sent["jobs"]["outer2"]["inputs"] == {"part": "two"}
    assert job._to_dict() == before  # the user's job is left as it was


def test_debugging_both_outer_nodes_debugs_both(ip, project):
    ip.run_line_magic("aml_debug_job", "pipeline_job --node outer1.inner --node outer2.inner "
                      "--target azureml --workspace ml_client --timeout 60")
    jobs = ip.user_ns["ml_client"].jobs
    wait_for(lambda: jobs.sent, 30, "the submit")
    current_session("job").stop()
    [sent] = jobs.sent
    assert all("aml_debug_bootstrap.py" in inner_command(sent, outer)
               for outer in ("outer1", "outer2"))
