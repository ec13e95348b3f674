"""The azureml target as a system, on the simulated cluster of ``tests/simcluster.py``.

What ``--target azureml`` submits (the snapshot with the shipped bootstrap, the debug-ready
arguments) really runs on a node that is another network host, in a Python holding only
debugpy; its log reaches Azurite late and in chunks; the target finds the announcement there,
and a real debug-protocol client attaches from this machine to the node's own address. The
control plane is the only stand-in: ``SdkWorkspace`` is replaced by the cluster (Azure ML's
control plane cannot run here).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import free_port, need_python_script_step, wait_for
from dap_client import evaluate_at_first_stop
from netns import namespaces, side_client, skip_without_namespaces
from simcluster import SimCluster

from aml_debug_magics.node.announce import Announcement
from aml_debug_magics.records import Status
from aml_debug_magics.session import current_session, stop_all
from aml_debug_magics.targets import follow, reachability, workspace

PREP = textwrap.dedent(
    """\
    import argparse, pathlib
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    args = parser.parse_args()
    pathlib.Path(args.out, "numbers.txt").write_text("3 1 4 1 5")
    print("prepared", args.out, flush=True)
    """
)
TRAIN = textwrap.dedent(
    """\
    import argparse, pathlib
    parser = argparse.ArgumentParser()
    parser.add_argument("--data")
    args = parser.parse_args()
    numbers = [int(n) for n in pathlib.Path(args.data, "numbers.txt").read_text().split()]
    total = sum(numbers)
    print("trained on", numbers, "total", total, flush=True)
    """
)
TRAIN_BREAK = 6  # total = sum(numbers)

PIPELINE = """
from azureml.pipeline.core import PipelineData
from azureml.pipeline.steps import PythonScriptStep

prepared = PipelineData("prepared")
prep = PythonScriptStep(name="prep", script_name="prep.py", source_directory="prep",
                        arguments=["--out", prepared], outputs=[prepared],
                        compute_target="cpu-cluster")
train = PythonScriptStep(name="train", script_name="train.py", source_directory="train",
                         arguments=["--data", prepared], inputs=[prepared],
                         compute_target="cpu-cluster")
steps = [prep, train]
ws = object()  # what --workspace names; the cluster stands in for the control plane
"""


@pytest.fixture
def make_cluster(azurite, tmp_path, monkeypatch):
    skip_without_namespaces()
    made: list[SimCluster] = []

    def make(**options) -> SimCluster:
        cluster = SimCluster(azurite, tmp_path / f"cluster{len(made)}", **options)
        made.append(cluster)
        monkeypatch.setattr(workspace, "SdkWorkspace", lambda user_workspace: cluster)
        return cluster

    # the simulated runs end within seconds, not minutes: look at them every second
    monkeypatch.setattr(follow, "POLL_SLOW", 1.0)

    yield make
    stop_all()  # the sessions end (and delete their relay blobs) while the storage is there
    for cluster in made:
        cluster.close()
    assert namespaces() == []


@pytest.fixture
def project(ip, tmp_path):
    for folder, name, text in (("prep", "prep.py", PREP), ("train", "train.py", TRAIN)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / name).write_text(text)
    return tmp_path


def drop_all_traffic_to(node) -> None:
    """``netem loss 100%`` where the kernel has netem; else a FIFO of length 0, which drops
    every packet just the same (this machine's kernel has no sch_netem)."""
    for qdisc in (["netem", "loss", "100%"], ["pfifo", "limit", "0"]):
        done = subprocess.run(["tc", "qdisc", "add", "dev", node.host_end, "root", *qdisc],
                              capture_output=True)
        if done.returncode == 0:
            return
    raise AssertionError(f"tc could not drop traffic: {done.stderr.decode()}")


def attach_and_read(row, script: Path, line: int, expression: str) -> str:
    """A debugger on this machine attaches with the row's config, stops at ``line`` of the
    user's ``script`` and reads ``expression`` there."""
    return evaluate_at_first_stop(row.attach_config(), {str(script): [line]}, expression)


def debug_train(ip, timeout: float = 120, options: str = ""):
    """``%aml_debug_pipeline`` on PIPELINE's train step on the cluster, as a user types it
    (with ``options`` after it); the session and train's row."""
    assert ip.run_cell(PIPELINE).success
    ip.run_line_magic("aml_debug_pipeline", f"steps --step train --target azureml --workspace ws "
                      f"--timeout {timeout:g} {options}")
    session = current_session("pipeline")
    return session, session.row("train")


@pytest.fixture
def cluster(make_cluster):
    """A one-node cluster for the SDK v1 pipeline (PythonScriptStep)."""
    need_python_script_step()
    return make_cluster()


def test_a_pipeline_step_on_a_node_is_attached_from_here_and_the_run_completes(
    ip, project, cluster
):
    session, train = debug_train(ip)
    wait_for(lambda: train.status == Status.WAITING, 90, "train to announce itself")
    assert train.address.split(":")[0] == cluster.nodes[0].address  # the node's own eth0
    wait_for(lambda: "is reachable from this machine" in train.reachability, 30, "the probe")
    numbers = attach_and_read(train, project / "train" / "train.py", TRAIN_BREAK, "numbers")
    assert numbers == "[3, 1, 4, 1, 5]"  # what the first step wrote, on the node
    assert session.wait(60) == "finished"
    assert [r.status for r in session.rows] == [Status.FINISHED, Status.FINISHED]
    assert any("trained on [3, 1, 4, 1, 5] total 14" in line for line in train.last_lines)
    snapshot = cluster.submitted[0][1]
    assert snapshot._script_name == "train.py"  # the user's step is as it was after submit
    assert sorted(p.name for p in (project / "train").iterdir()) == ["train.py"]


def test_a_script_run_config_runs_on_a_node_and_is_attached(ip, project, make_cluster):
    cluster = make_cluster()
    assert ip.run_cell(
        "from azureml.core import ScriptRunConfig\n"
        "(__import__('pathlib').Path('train') / 'data').mkdir()\n"
        "(__import__('pathlib').Path('train') / 'data' / 'numbers.txt').write_text('2 7')\n"
        "config = ScriptRunConfig(source_directory='train', script='train.py',"
        " arguments=['--data', 'data'], compute_target='cpu-cluster')\n"
        "ws = object()"
    ).success
    ip.run_line_magic("aml_debug_run", "--target azureml --workspace ws --timeout 120 config")
    session = current_session("run")
    row = session.rows[0]
    wait_for(lambda: row.status == Status.WAITING, 90, "the run to announce itself")
    assert row.address.split(":")[0] == cluster.nodes[0].address
    assert attach_and_read(row, project / "train" / "train.py", TRAIN_BREAK, "numbers") == "[2, 7]"
    assert session.wait(60) == "finished"


def test_an_unreachable_node_says_timed_out_with_the_tunnel_and_a_refused_one_says_refused(
    ip, project, cluster
):
    """The node's traffic is dropped (on this machine's end of its link): the probe from here times
    out, and the row gives the virtual-network note and the SSH tunnel. A port where nothing
    listens on the node answers with a reset: the refused wording."""
    node = cluster.nodes[0]
    assert "refused the connection" in reachability.reachability(
        Announcement((node.address,), free_port()))  # nothing listens there on the node
    drop_all_traffic_to(node)
    session, train = debug_train(ip, timeout=60, options="--via listen")  # no storage fallback
    wait_for(lambda: train.reachability, 120, "the probe's verdict")
    assert f"{node.address}:" in train.reachability and "timed out from here" in train.reachability
    assert "same virtual network" in train.reachability
    assert f"ssh azureuser@PUBLIC_IP -p 50000 -L {train.announcement.port}:{node.address}:" in (
        train.reachability)
    session.stop()


STRANGER = """
import socket, sys
body = b'{"seq": 1, "type": "request", "command": "initialize", "arguments": {}}'
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as s:
    s.sendall(b"Content-Length: %d\\r\\n\\r\\n" % len(body) + body)
    try:
        print("ANSWER", repr(s.recv(4096)))
    except OSError as error:
        print("ANSWER", type(error).__name__)
"""


def test_only_this_machine_may_attach_another_host_on_the_network_is_refused(
    ip, project, cluster
):
    with side_client(cluster.nodes[0]) as stranger:
        session, train = debug_train(ip)
        wait_for(lambda: train.status == Status.WAITING, 90, "train to announce itself")
        port = str(train.announcement.port)
        tried = subprocess.run([*stranger.launcher, sys.executable, "-c", STRANGER,
                                stranger.gateway, port], capture_output=True, text=True)
        assert tried.stdout.strip() in ("ANSWER b''", "ANSWER ConnectionResetError"), tried
        wait_for(lambda: any("refused 1 connection(s) from addresses not allowed" in line
                             for line in train.last_lines), 30, "the refusal in the node's log")
        assert attach_and_read(train, project / "train" / "train.py", TRAIN_BREAK, "numbers") == (
            "[3, 1, 4, 1, 5]")  # this machine may
        assert session.wait(60) == "finished"


def node_processes(node) -> list[str]:
    listed = subprocess.run(["ip", "netns", "pids", node.namespace], capture_output=True,
                            text=True)
    return listed.stdout.split()


def test_stop_from_the_panel_cancels_the_run_and_every_node_process_ends(
    ip, project, cluster
):
    ip.run_line_magic("config", "AmlDebugMagics.view = 'widgets'")
    session, train = debug_train(ip)
    wait_for(lambda: train.status == Status.WAITING, 90, "train to wait")
    assert node_processes(cluster.nodes[0])  # the bootstrap, its gate, debugpy's adapter
    session.view.stop_button.click()
    assert cluster.runs[0].status == "Canceled"
    assert train.status == Status.STOPPED
    wait_for(lambda: not node_processes(cluster.nodes[0]), 15, "every node process to end")


def test_a_missed_window_closes_the_nodes_port_and_the_step_completes(ip, project, cluster):
    session, train = debug_train(ip, timeout=3)
    wait_for(lambda: train.announcement, 90, "train to announce itself")
    assert session.wait(90) == "finished"
    assert any("Debugger attached = False" in line for line in train.last_lines)
    assert reachability.probe(cluster.nodes[0].address, train.announcement.port) == "refused"


FAILING_PREP = "import json\n\nsettings = json.load(open('settings.json'))\n"


def test_a_step_that_fails_before_announcing_shows_its_exception_and_last_lines(
    ip, project, cluster
):
    (project / "prep" / "prep.py").write_text(FAILING_PREP)
    session, train = debug_train(ip, timeout=60)
    assert session.wait(120) == "failed"
    prep = session.row("prep")
    assert prep.status == Status.FAILED
    assert prep.detail == ("Failed: FileNotFoundError: [Errno 2] No such file or directory: "
                           "'settings.json' (prep.py, line 3, in <module>)")
    assert any("Traceback (most recent call last):" in line for line in prep.last_lines)
    assert train.status == Status.NOT_RUN


DISTRIBUTED = "import os\nrank = int(os.environ['RANK'])\nprint('rank', rank, 'done', flush=True)\n"
RUN_CONFIG = (
    "from azureml.core import ScriptRunConfig\n"
    "config = ScriptRunConfig(source_directory='dist', script='dist.py',"
    " compute_target='gpu-cluster')\n"
    "ws = object()"
)


@pytest.fixture
def distributed(ip, tmp_path, make_cluster):
    (tmp_path / "dist").mkdir()
    (tmp_path / "dist" / "dist.py").write_text(DISTRIBUTED)
    cluster = make_cluster(nodes=2, processes_per_node=2)
    assert ip.run_cell(RUN_CONFIG).success
    return cluster, tmp_path / "dist"


def test_a_distributed_step_by_default_waits_in_rank_0_only(ip, distributed):
    cluster, local_root = distributed
    ip.run_line_magic("aml_debug_run", "--target azureml --workspace ws --timeout 120 config")
    session = current_session("run")
    first = session.rows[0]
    wait_for(lambda: first.status == Status.WAITING, 90, "rank 0 to wait")
    wait_for(lambda: all(f"rank {r} done" in first.last_lines for r in (1, 2, 3)), 60,
             "the other ranks to run on")
    assert first.status == Status.WAITING and [r.rank for r in session.rows] == [0]
    assert first.address == f"{cluster.nodes[0].address}:5678"
    assert attach_and_read(first, local_root / "dist.py", 3, "rank") == "0"
    assert session.wait(60) == "finished"


def test_a_distributed_step_with_all_ranks_gives_each_its_own_attachable_row(ip, distributed):
    cluster, local_root = distributed
    ip.run_line_magic(
        "aml_debug_run", "--target azureml --workspace ws --timeout 120 --ranks all config"
    )
    session = current_session("run")
    wait_for(lambda: len([r for r in session.rows if r.status == Status.WAITING]) == 4, 90,
             "four ranks to wait")
    by_rank = {row.rank: row for row in session.rows}
    first, second = cluster.nodes[0].address, cluster.nodes[1].address
    assert {rank: row.address for rank, row in by_rank.items()} == {
        0: f"{first}:5678", 1: f"{first}:5679", 2: f"{second}:5678", 3: f"{second}:5679"}
    for rank, row in sorted(by_rank.items()):
        assert attach_and_read(row, local_root / "dist.py", 3, "rank") == str(rank)
    assert session.wait(60) == "finished"


V2_PIPELINE = """
from azure.ai.ml import Input, Output, command, dsl
from azure.ai.ml.entities import Environment

environment = Environment(
    name="training", image="mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04",
    conda_file={"name": "training", "dependencies": ["python=3.10", "pip", {"pip": ["numpy"]}]},
)
prep_step = command(code="./prep", command="python prep.py --out ${{outputs.prepared}}",
                    outputs={"prepared": Output(type="uri_folder")}, environment=environment)
train_step = command(code="./train", command="python train.py --data ${{inputs.data}}",
                     inputs={"data": Input(type="uri_folder")}, environment=environment)

@dsl.pipeline(compute="cpu-cluster")
def training():
    prep = prep_step()
    train = train_step(data=prep.outputs.prepared)

pipeline_job = training()
ml_client = object()  # what --workspace names; the cluster stands in for the control plane
"""


def test_an_sdk_v2_pipeline_node_on_a_node_is_attached_from_here(
    ip, project, make_cluster, monkeypatch
):
    """SDK v2: the pipeline job itself is submitted (``MLClient.jobs.create_or_update`` is the
    seam the cluster replaces), with the debugged node's command wrapped by the bootstrap and
    a derived environment holding debugpy; the user's job is as it was afterwards."""
    pytest.importorskip("azure.ai.ml", reason="azure-ai-ml is the v2 extra")
    from aml_debug_magics.targets import azureml_v2

    cluster = make_cluster()
    monkeypatch.setattr(azureml_v2, "V2Workspace", lambda ml_client: cluster)
    assert ip.run_cell(V2_PIPELINE).success
    ip.run_line_magic("aml_debug_job",
                      "pipeline_job --node train --target azureml --workspace ml_client "
                      "--timeout 120")
    session = current_session("job")
    train = session.row("train")
    wait_for(lambda: train.status == Status.WAITING, 90, "train to announce itself")
    assert train.address.split(":")[0] == cluster.nodes[0].address
    assert attach_and_read(train, project / "train" / "train.py", TRAIN_BREAK, "numbers") == (
        "[3, 1, 4, 1, 5]")
    assert session.wait(60) == "finished"
    command, conda = cluster.seen_nodes[0]["train"]
    assert command.startswith(
        'export AML_DEBUG_SOURCE_ROOT="$PWD" && python '
        '"$AML_DEBUG_SOURCE_ROOT/aml_debug_bootstrap.py" --listen 0.0.0.0:5678 ')
    assert command.endswith(" -- train.py --data ${{inputs.data}}")
    assert conda["dependencies"][2] == {"pip": ["numpy"]}  # the environment as the user gave it
    assert cluster.seen_nodes[0]["prep"][0] == "python prep.py --out ${{outputs.prepared}}"
    job = ip.user_ns["pipeline_job"]
    assert job.jobs["train"].command == "python train.py --data ${{inputs.data}}"
    assert job.jobs["train"].environment.conda_file["dependencies"][2] == {"pip": ["numpy"]}
    assert sorted(p.name for p in (project / "train").iterdir()) == ["train.py"]


# -- SDK v2 jobs in the shapes of Azure's azureml-examples ----------------------------------------


@pytest.fixture
def v2_cluster(ip, make_cluster, monkeypatch):
    """A one-node cluster standing in for ``MLClient`` (the seam ``%aml_debug_job`` submits
    through)."""
    pytest.importorskip("azure.ai.ml", reason="azure-ai-ml is the v2 extra")
    from aml_debug_magics.targets import azureml_v2

    cluster = make_cluster()
    monkeypatch.setattr(azureml_v2, "V2Workspace", lambda ml_client: cluster)
    return cluster


def debug_job(ip, arguments: str):
    ip.run_line_magic("aml_debug_job", f"{arguments} --target azureml --workspace ml_client "
                      "--timeout 120")
    return current_session("job")


ENVIRONMENT = """
from azure.ai.ml import Input, Output, command, dsl
from azure.ai.ml.entities import Environment

environment = Environment(
    name="training", image="mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04",
    conda_file={"name": "training", "dependencies": ["python=3.10", "pip"]},
)
ml_client = object()  # what --workspace names; the cluster stands in for the control plane
"""
# cli/jobs/basics: a command job whose code folder holds the script and a data input
COMMAND_JOB = ENVIRONMENT + """
train_job = command(code="./train", command="python train.py --data ${{inputs.data}}",
                    inputs={"data": Input(type="uri_folder", path="./numbers")},
                    environment=environment, compute="cpu-cluster")
"""


def test_an_sdk_v2_command_job_is_followed_attached_and_ends(ip, project, v2_cluster):
    """A command job (no pipeline: no child runs) is followed as its own run."""
    (project / "numbers").mkdir()
    (project / "numbers" / "numbers.txt").write_text("2 7 1")
    assert ip.run_cell(COMMAND_JOB).success
    session = debug_job(ip, "train_job")
    row = session.row("train_job")
    wait_for(lambda: row.status == Status.WAITING, 90, "the job to announce itself")
    assert row.address.split(":")[0] == v2_cluster.nodes[0].address
    assert attach_and_read(row, project / "train" / "train.py", TRAIN_BREAK, "numbers") == (
        "[2, 7, 1]")
    assert session.wait(60) == "finished"
    assert row.status == Status.FINISHED
    assert any("trained on [2, 7, 1] total 10" in line for line in row.last_lines)


SPLIT = textwrap.dedent(
    """\
    import argparse, pathlib
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows")
    parser.add_argument("--part")
    parser.add_argument("--out")
    args = parser.parse_args()
    rows = pathlib.Path(args.rows, "rows.txt").read_text().split()
    chosen = rows[::2] if args.part == "train" else rows[1::2]
    pathlib.Path(args.out, "numbers.txt").write_text(" ".join(chosen))
    print("split", args.part, chosen, flush=True)
    """
)
SPLIT_BREAK = 9  # pathlib.Path(args.out, ...).write_text(...)
# sdk/python/jobs/pipelines: one component, two nodes made from it, and a node reading both
SHARED_COMPONENT = ENVIRONMENT + """
split = command(code="./split", command="python split.py --rows ${{inputs.rows}} "
                "--part ${{inputs.part}} --out ${{outputs.part_data}}",
                inputs={"rows": Input(type="uri_folder"), "part": "train"},
                outputs={"part_data": Output(type="uri_folder")}, environment=environment)
train_step = command(code="./train", command="python train.py --data ${{inputs.data}}",
                     inputs={"data": Input(type="uri_folder")}, environment=environment)

@dsl.pipeline(compute="cpu-cluster")
def splits(rows: Input):
    train_split = split(rows=rows, part="train")
    test_split = split(rows=rows, part="test")
    train = train_step(data=train_split.outputs.part_data)

pipeline_job = splits(rows=Input(type="uri_folder", path="./rows"))
"""


@pytest.fixture
def shared_component(ip, project):
    (project / "split").mkdir()
    (project / "split" / "split.py").write_text(SPLIT)
    (project / "rows").mkdir()
    (project / "rows" / "rows.txt").write_text("5 6 7 8 9")
    assert ip.run_cell(SHARED_COMPONENT).success
    return project


def outputs_of(cluster, node: str) -> str:
    return (cluster.root / "data" / f"{node}.part_data" / "numbers.txt").read_text()


def test_debugging_one_node_of_a_shared_component_leaves_the_other_to_run_as_written(
    ip, shared_component, v2_cluster
):
    session = debug_job(ip, "pipeline_job --node test_split")
    row = session.row("test_split")
    wait_for(lambda: row.status == Status.WAITING, 90, "test_split to announce itself")
    chosen = attach_and_read(row, shared_component / "split" / "split.py", SPLIT_BREAK, "chosen")
    assert chosen == "['6', '8']"
    assert session.wait(90) == "finished"
    assert [r.status for r in session.rows] == [Status.FINISHED] * 3
    assert outputs_of(v2_cluster, "train_split") == "5 7 9"  # its own arguments, no debugger
    assert outputs_of(v2_cluster, "test_split") == "6 8"
    assert any("trained on [5, 7, 9] total 21" in line for line in session.row("train").last_lines)
    assert v2_cluster.seen_nodes[0]["train_split"][0] == (
        "python split.py --rows ${{inputs.rows}} --part ${{inputs.part}} "
        "--out ${{outputs.part_data}}")


def test_the_same_job_object_runs_twice_and_stays_as_the_user_built_it(
    ip, shared_component, v2_cluster
):
    """Azure ML's ``create_or_update`` rewrites what it is given (code and environments become
    ARM ids): the user's object never reaches it, so running the cell again works."""
    job = ip.user_ns["pipeline_job"]
    before = job._to_dict()
    for attempt in (1, 2):
        session = debug_job(ip, "pipeline_job --node train")
        row = session.row("train")
        wait_for(lambda: row.status == Status.WAITING, 90, f"train to announce itself ({attempt})")  # noqa: B023
        numbers = attach_and_read(row, shared_component / "train" / "train.py", TRAIN_BREAK,
                                  "numbers")
        assert numbers == "[5, 7, 9]"
        assert session.wait(90) == "finished", [(r.step, r.status, r.detail) for r in session.rows]
        assert outputs_of(v2_cluster, "test_split") == "6 8"
        assert job._to_dict() == before
    assert isinstance(v2_cluster.submitted[0].jobs["train"].code, str)
    assert v2_cluster.submitted[0].jobs["train"].code.startswith("azureml:/subscriptions/")


# cli/jobs/basics: the code folder's root is not the script's folder; the command changes to it
CD_COMMAND_JOB = ENVIRONMENT + """
train_job = command(
    code=".", command='cd src && python train.py --data ${{inputs.data}} && ls "$TAG"',
    inputs={"data": Input(type="uri_folder", path="./numbers")},
    environment=environment, environment_variables={"TAG": "nightly"}, compute="cpu-cluster")
"""


def test_a_command_that_changes_folder_keeps_its_shell_meaning_and_is_attached(
    ip, tmp_path, v2_cluster
):
    """``cd src && python train.py ... && ...``: bash runs it in the code folder, the
    variable is expanded, and the breakpoint is set by the script's local path."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text(TRAIN)
    (tmp_path / "src" / "nightly").mkdir()
    (tmp_path / "numbers").mkdir()
    (tmp_path / "numbers" / "numbers.txt").write_text("4 4")
    assert ip.run_cell(CD_COMMAND_JOB).success
    session = debug_job(ip, "train_job")
    row = session.row("train_job")
    wait_for(lambda: row.status == Status.WAITING, 90, "the job to announce itself")
    assert attach_and_read(row, tmp_path / "src" / "train.py", TRAIN_BREAK, "numbers") == (
        "[4, 4]")
    assert session.wait(60) == "finished", row.detail
    assert any("trained on [4, 4] total 8" in line for line in row.last_lines)


TRAIN_FAILS = textwrap.dedent(
    """\
    import argparse, pathlib


    def fit(numbers, batches):
        total = sum(numbers)
        return total / batches


    parser = argparse.ArgumentParser()
    parser.add_argument("--data")
    args = parser.parse_args()
    numbers = [int(n) for n in pathlib.Path(args.data, "numbers.txt").read_text().split()]
    fit(numbers, 0)
    """
)
TRAIN_FAILS_RAISE = 6


def test_a_step_that_fails_after_its_window_waits_at_the_exception_on_its_node(
    ip, project, cluster
):
    """The post-mortem over listen: the node's log says where it failed, the row offers the
    node's port again, and a debugger from here stops at the raise with the node's locals."""
    from dap_client import DapClient

    (project / "train" / "train.py").write_text(TRAIN_FAILS)
    session, train = debug_train(ip, timeout=1, options="--post-mortem 120")
    wait_for(lambda: train.status == Status.POST_MORTEM, 120, "the post-mortem")
    assert ("a debugged step that fails waits up to 120 s at its exception for a debugger, its "
            "node kept on your compute quota meanwhile (--post-mortem off opts out)") in \
        session.note  # what it costs, said at the submit
    assert train.detail == f"ZeroDivisionError at train.py:{TRAIN_FAILS_RAISE} in fit"
    assert train.address.split(":")[0] == cluster.nodes[0].address
    config = train.attach_config()
    client = DapClient.connect(config["connect"]["host"], config["connect"]["port"])
    try:
        client.attach(config, {}, exception_filters=["uncaught"])
        frame = client.wait_stopped(60)
        assert frame["source"]["path"] == str(project / "train" / "train.py")  # mapped back
        assert frame["line"] == TRAIN_FAILS_RAISE
        assert client.locals_of(frame)["numbers"] == "[3, 1, 4, 1, 5]"
    finally:
        client.close()
    assert session.wait(120) == "failed"
    assert train.status == Status.FAILED
    assert train.detail.startswith(f"ZeroDivisionError at train.py:{TRAIN_FAILS_RAISE} in fit")
