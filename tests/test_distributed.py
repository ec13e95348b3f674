"""Distributed jobs on the local target: every rank a process with the environment Azure ML's
launcher gives it, built from the real SDK objects (azure-ai-ml's ``command(distribution=...)``,
azureml-core's ``ScriptRunConfig(distributed_job_config=...)``), real debugpy attached to ranks.

torch is not installed (its wheels are gigabytes): the PyTorch-shaped script rendezvous over
``MASTER_ADDR:MASTER_PORT`` as ``init_process_group``'s store does (rank 0 listens, the others
connect) and all-gathers the ranks over TCP, the way a DDP script's first collective would.
"""

from __future__ import annotations

import json
import os
import textwrap

import pytest
from conftest import children_of, wait_for
from dap_client import DapClient, evaluate_at_first_stop
from IPython.core.error import UsageError

from aml_debug_magics.records import Distribution, Status
from aml_debug_magics.session import current_session
from aml_debug_magics.targets.local_ranks import rank_environments

# a DDP script's shape with the standard library: env:// rendezvous, then one all-gather
ALL_GATHER = textwrap.dedent(
    """\
    import json, os, socket, sys, time
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    where = (os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]))
    if os.environ.get("FAIL_RANK") == str(rank):
        sys.exit(3)
    if os.environ.get("RAISE_RANK") == str(rank):
        shard = world // (rank - rank)  # the rank's own bug, before its first collective
    print(f"rank {rank} of {world} on node {os.environ['NODE_RANK']} joins {where[1]}", flush=True)
    if rank == 0:
        server = socket.create_server(where)
        peers = [server.accept()[0] for _ in range(world - 1)]
        ranks = [0] + [int(p.makefile().readline()) for p in peers]
        for peer in peers:
            peer.sendall((json.dumps(sorted(ranks)) + "\\n").encode())
        gathered = sorted(ranks)
    else:
        while True:  # the store's client: retry until rank 0 listens
            try:
                peer = socket.create_connection(where)
                break
            except ConnectionRefusedError:
                time.sleep(0.05)
        peer.sendall(f"{rank}\\n".encode())
        gathered = json.loads(peer.makefile().readline())
    local = (rank, int(os.environ["LOCAL_RANK"]), int(os.environ["LOCAL_WORLD_SIZE"]))
    print(f"rank {rank} gathered {gathered}", flush=True)
    """
)
GATHERED_LINE = 26  # print(...gathered), right after the all-gather
RAISE_LINE = 7

MPI_READER = textwrap.dedent(
    """\
    import os
    names = ["SIZE", "RANK", "LOCAL_RANK", "LOCAL_SIZE", "NODE_RANK"]
    print("mpi", *(os.environ["OMPI_COMM_WORLD_" + n] for n in names), flush=True)
    """
)

TF_READER = textwrap.dedent(
    """\
    import json, os, socket
    config = json.loads(os.environ["TF_CONFIG"])
    task = config["task"]
    host, port = config["cluster"][task["type"]][task["index"]].split(":")
    socket.create_server((host, int(port))).close()  # the port picked for this task is free
    print("tf", task["type"], task["index"], len(config["cluster"]["worker"]), flush=True)
    """
)

# what torch.distributed raises for backend="nccl" on a machine without GPUs (torch's own text)
ASKS_FOR_NCCL = textwrap.dedent(
    """\
    import os
    if os.environ["RANK"] == "1":
        raise RuntimeError("ProcessGroupNCCL is only supported with GPUs, no GPUs found!")
    """
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def src(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "train.py").write_text(ALL_GATHER)
    (folder / "mpi.py").write_text(MPI_READER)
    (folder / "tf.py").write_text(TF_READER)
    (folder / "nccl.py").write_text(ASKS_FOR_NCCL)
    return folder


def v2_job(ip, distribution: str, *, instances: int = 1, script: str = "train.py",
           variables: dict[str, str] | None = None) -> None:
    pytest.importorskip("azure.ai.ml", reason="azure-ai-ml is the v2 extra")
    assert ip.run_cell(
        "from azure.ai.ml import command, MpiDistribution, PyTorchDistribution, "
        "TensorFlowDistribution\n"
        f"job = command(code='./src', command='python {script}', environment='azureml:x@latest',"
        f" instance_count={instances}, distribution={distribution},"
        f" environment_variables={variables or {}!r})"
    ).success


def rows_of(session, count: int):
    """The session's rows by rank, once the target made one per rank."""
    wait_for(lambda: len(session.rows) == count, 30, f"{count} rows")
    return {row.rank: row for row in session.rows}


def test_eight_pytorch_ranks_wait_for_rank_0_and_gather_once_it_is_attached(ip, src):
    v2_job(ip, "{'type': 'pytorch', 'process_count_per_instance': 4}", instances=2)
    ip.run_line_magic("aml_debug_job", "job --timeout 120")
    session = current_session("job")
    rows = rows_of(session, 8)
    assert sorted(rows) == list(range(8))
    assert [rows[r].node for r in range(8)] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert rows[5].label == "job (node 1, rank 5)"
    wait_for(lambda: rows[0].status == Status.WAITING, 60, "rank 0 to wait for a debugger")
    assert session.note.endswith("job: 2 nodes x 4 processes (PyTorch) as 8 local processes; "
                                 "rank 0 waits for a debugger, ranks 1-7 for it in a collective")
    for rank in range(1, 8):  # each on its own row, blocked in the rendezvous with rank 0
        wait_for(lambda rank=rank: any("joins" in line for line in rows[rank].last_lines), 30,
                 f"rank {rank} to say it joins")
        assert rows[rank].status == Status.RUNNING
        assert "rank 0" in rows[rank].detail
        assert not rows[rank].debugged
    value = evaluate_at_first_stop(rows[0].attach_config(),
                                   {str(src / "train.py"): [GATHERED_LINE]},
                                   "(gathered, os.environ['NODE_RANK'], local)")
    assert value == "([0, 1, 2, 3, 4, 5, 6, 7], '0', (0, 0, 4))"
    assert session.wait(60) == "finished"
    assert all(rows[r].status == Status.FINISHED for r in range(8))
    assert "rank 6 gathered [0, 1, 2, 3, 4, 5, 6, 7]" in rows[6].last_lines
    assert children_of() == []


def test_ranks_all_stops_rank_0_and_rank_1_at_once(ip, src):
    v2_job(ip, "PyTorchDistribution(process_count_per_instance=1)", instances=2)
    ip.run_line_magic("aml_debug_job", "job --timeout 120 --ranks all")
    session = current_session("job")
    rows = rows_of(session, 2)
    for rank in (0, 1):
        wait_for(lambda rank=rank: rows[rank].status == Status.WAITING, 60,
                 f"rank {rank} to wait for a debugger")
    assert rows[0].address != rows[1].address
    breakpoints = {str(src / "train.py"): [GATHERED_LINE]}
    clients = [DapClient.connect(rows[r].announcement.addresses[0], rows[r].announcement.port)
               for r in (0, 1)]
    try:
        for rank, client in enumerate(clients):
            client.attach(rows[rank].attach_config(), breakpoints)
        frames = [client.wait_stopped(60) for client in clients]  # both held at once
        seen = [client.evaluate(frame, "(rank, gathered)")
                for client, frame in zip(clients, frames, strict=True)]
        assert seen == ["(0, [0, 1])", "(1, [0, 1])"]
        for client in clients:
            client.resume()
    finally:
        for client in clients:
            client.close()
    assert session.wait(60) == "finished"
    assert children_of() == []


def test_a_failed_rank_ends_the_others_and_stop_ends_every_rank(ip, src):
    v2_job(ip, "PyTorchDistribution(process_count_per_instance=2)", instances=2,
           variables={"FAIL_RANK": "2"})
    ip.run_line_magic("aml_debug_job", "job --timeout 120")
    session = current_session("job")
    assert session.wait(60) == "failed"
    rows = rows_of(session, 4)
    assert rows[2].status == Status.FAILED and rows[2].detail == "exit status 3"
    for rank in (0, 1, 3):  # rank 0 was waiting for its debugger, 1 and 3 for rank 0
        assert rows[rank].status == Status.STOPPED
        assert rows[rank].detail.startswith("ended: rank 2 failed (exit status 3)")
    assert children_of() == []

    v2_job(ip, "PyTorchDistribution(process_count_per_instance=2)", instances=2)
    ip.run_line_magic("aml_debug_job", "job --timeout 120")
    session = current_session("job")
    rows = rows_of(session, 4)
    wait_for(lambda: rows[0].status == Status.WAITING, 60, "rank 0 to wait for a debugger")
    wait_for(lambda: all(rows[r].last_lines for r in (1, 2, 3)), 30, "every rank to start")
    ip.run_line_magic("aml_debug_job", "--stop")
    assert all(rows[r].status == Status.STOPPED for r in range(4))
    assert children_of() == []


def test_a_failing_rank_gets_its_own_post_mortem_while_the_others_wait_for_it(ip, src):
    """Rank 1 (the one debugged) missed its window and then raised: its row waits at the
    exception with its own window while the others run on (blocked in the collective, as on
    Azure ML); a debugger stops at the raise in rank 1's frames; after it detaches rank 1
    exits 1 and the others are ended, as Azure ML ends a job whose process failed."""
    v2_job(ip, "PyTorchDistribution(process_count_per_instance=3)",
           variables={"RAISE_RANK": "1"})
    ip.run_line_magic("aml_debug_job", "job --timeout 0.5 --ranks 1 --post-mortem 120")
    session = current_session("job")
    rows = rows_of(session, 3)
    wait_for(lambda: rows[1].status == Status.POST_MORTEM, 60, "rank 1's post-mortem")
    assert rows[1].detail == f"ZeroDivisionError at train.py:{RAISE_LINE} in <module>"
    assert rows[0].status == rows[2].status == Status.RUNNING  # they wait for rank 1
    config = rows[1].attach_config()
    client = DapClient.connect(config["connect"]["host"], config["connect"]["port"])
    try:
        client.attach(config, {}, exception_filters=["uncaught"])
        frame = client.wait_stopped(60)
        assert (frame["source"]["path"], frame["line"]) == (str(src / "train.py"), RAISE_LINE)
        assert client.evaluate(frame, "(rank, world)") == "(1, 3)"
        assert rows[0].status == rows[2].status == Status.RUNNING
    finally:
        client.close()
    assert session.wait(60) == "failed"
    assert (rows[1].status, rows[1].exit_code) == (Status.FAILED, 1)
    for rank in (0, 2):
        assert rows[rank].status == Status.STOPPED
        assert rows[rank].detail.startswith("ended: rank 1 failed (exit status 1)")
    assert children_of() == []


def test_a_rank_that_asks_for_nccl_without_gpus_says_what_to_use_here(ip, src):
    v2_job(ip, "PyTorchDistribution(process_count_per_instance=2)", script="nccl.py")
    ip.run_line_magic("aml_debug_job", "job --timeout 0.5 --post-mortem off")
    session = current_session("job")
    assert session.wait(60) == "failed"
    failed = rows_of(session, 2)[1]
    assert failed.status == Status.FAILED and "\n" not in failed.detail
    assert failed.detail.startswith('NCCL needs GPUs and this machine has none: use '
                                    'backend="gloo" locally'), failed.detail
    assert children_of() == []


def test_sdk_v1_pytorch_configuration_runs_its_ranks(ip, src, tmp_path):
    pytest.importorskip("azureml.core", reason="azureml-core is the v1 extra")
    assert ip.run_cell(
        "from azureml.core import ScriptRunConfig\n"
        "from azureml.core.runconfig import PyTorchConfiguration\n"
        "config = ScriptRunConfig(source_directory='src', script='train.py', "
        "distributed_job_config=PyTorchConfiguration(process_count=4, node_count=2))"
    ).success
    ip.run_line_magic("aml_debug_run", "config --timeout 120 --ranks 3")
    session = current_session("run")
    rows = rows_of(session, 4)
    wait_for(lambda: rows[3].status == Status.WAITING, 60, "rank 3 to wait for a debugger")
    assert rows[3].announcement.rank == 3 and rows[3].node == 1
    assert session.note.endswith("rank 3 waits for a debugger, ranks 0-2 for it in a collective")
    value = evaluate_at_first_stop(rows[3].attach_config(),
                                   {str(src / "train.py"): [GATHERED_LINE]}, "local")
    assert value == "(3, 1, 2)"
    assert session.wait(60) == "finished"
    assert children_of() == []


def test_mpi_ranks_read_open_mpis_variables(ip, src):
    v2_job(ip, "MpiDistribution(process_count_per_instance=2)", instances=2, script="mpi.py")
    ip.run_line_magic("aml_debug_job", "job --timeout 1")
    session = current_session("job")
    assert session.wait(60) == "finished"
    rows = rows_of(session, 4)
    assert [rows[r].last_lines[-1] for r in range(4)] == [
        "mpi 4 0 0 2 0", "mpi 4 1 1 2 0", "mpi 4 2 0 2 1", "mpi 4 3 1 2 1"]


def test_tensorflow_workers_get_tf_config_and_their_rank(ip, src):
    v2_job(ip, "TensorFlowDistribution(worker_count=3)", instances=3, script="tf.py")
    ip.run_line_magic("aml_debug_job", "job --timeout 1 --ranks 2")
    session = current_session("job")
    assert session.wait(60) == "finished"
    rows = rows_of(session, 3)
    assert [rows[r].last_lines[-1] for r in range(3)] == [
        "tf worker 0 3", "tf worker 1 3", "tf worker 2 3"]
    assert rows[2].announcement is not None and rows[2].announcement.rank == 2
    assert rows[0].announcement is None  # TF_CONFIG's task index is its rank: 0 did not wait


def test_yaml_distribution_reads_as_the_sdk_object(ip, tmp_path, src):
    pytest.importorskip("azure.ai.ml", reason="azure-ai-ml is the v2 extra")
    (tmp_path / "job.yml").write_text(textwrap.dedent(
        """\
        $schema: https://azuremlschemas.azureedge.net/latest/commandJob.schema.json
        command: python mpi.py
        code: src
        environment: azureml:x@latest
        resources:
          instance_count: 3
        distribution:
          type: mpi
          process_count_per_instance: 1
        """))
    assert ip.run_cell("from azure.ai.ml import load_job\njob = load_job('job.yml')").success
    ip.run_line_magic("aml_debug_job", "job --timeout 1")
    session = current_session("job")
    assert session.wait(60) == "finished"
    assert [row.last_lines[-1] for row in session.rows] == [
        "mpi 3 0 0 1 0", "mpi 3 1 0 1 1", "mpi 3 2 0 1 2"]


def test_too_many_ranks_for_this_machine_is_one_line(ip, src):
    v2_job(ip, "PyTorchDistribution(process_count_per_instance=8)", instances=4)
    with pytest.raises(UsageError, match=r"asks for 4 nodes x 8 processes \(PyTorch\): the "
                                         r"local target starts at most 16"):
        ip.run_line_magic("aml_debug_job", "job")
    assert children_of() == []


def test_each_framework_gets_its_documented_variables():
    pytorch = rank_environments(Distribution("pytorch", 2, 2))
    assert {k: v for k, v in pytorch[3].items() if k != "MASTER_PORT"} == {
        "MASTER_ADDR": "127.0.0.1", "WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1",
        "NODE_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert len({e["MASTER_PORT"] for e in pytorch}) == 1
    tensorflow = rank_environments(Distribution("tensorflow", 1, 1, workers=2,
                                                parameter_servers=1))
    configs = [json.loads(e["TF_CONFIG"]) for e in tensorflow]
    assert [c["task"] for c in configs] == [
        {"type": "worker", "index": 0}, {"type": "worker", "index": 1},
        {"type": "ps", "index": 0}]
    addresses = [*configs[0]["cluster"]["worker"], *configs[0]["cluster"]["ps"]]
    assert len(set(addresses)) == 3
    from aml_debug_magics.node.ranks import detect_rank
    assert [detect_rank({"TF_CONFIG": e["TF_CONFIG"]}).rank for e in tensorflow] == [0, 1, 2]
    assert os.environ.get("TF_CONFIG") is None


def test_a_python_script_step_with_a_distributed_runconfig_runs_its_ranks(ip, src):
    pytest.importorskip("azureml.core", reason="azureml-core is the v1 extra")
    from conftest import need_python_script_step

    need_python_script_step()
    assert ip.run_cell(
        "from azureml.core import ScriptRunConfig\n"
        "from azureml.core.runconfig import MpiConfiguration\n"
        "from azureml.pipeline.steps import PythonScriptStep\n"
        "distributed = ScriptRunConfig(source_directory='src', script='mpi.py', "
        "distributed_job_config=MpiConfiguration(process_count_per_node=1, node_count=2))\n"
        "step = PythonScriptStep(name='shards', script_name='mpi.py', source_directory='src', "
        "runconfig=distributed.run_config)"
    ).success
    ip.run_line_magic("aml_debug_pipeline", "step --timeout 1")
    session = current_session("pipeline")
    assert session.wait(60) == "finished"
    assert [row.label for row in session.rows] == ["shards (node 0, rank 0)",
                                                   "shards (node 1, rank 1)"]
    assert [row.last_lines[-1] for row in session.rows] == ["mpi 2 0 0 1 0", "mpi 2 1 0 1 1"]
