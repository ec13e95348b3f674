"""A simulated Azure ML cluster, built from real parts, where what ``--target azureml`` submits
really runs.

Only the control plane is a stand-in: :class:`SimWorkspace` takes the place of ``SdkWorkspace``
(the one seam the azureml target talks through), with the same ``submit`` and the SDK's run
methods (``get_status``, ``get_details`` with ``logFiles``, ``get_tags``, ``get_children``,
``cancel``, ``get_portal_url``). Everything behind it is real:

- **Snapshot.** ``submit`` copies each step's source folder at that moment (the bootstrap's
  shipped files are in it only then), as Azure ML snapshots it.
- **Nodes.** Each node is its own network host: a network namespace with its own ``eth0`` and a
  link-local address (``tests/netns.py``), made when the cluster is made, so this machine has
  its address on their network before a magic computes who may attach. A step's processes run
  there with ``ip netns exec``, in the oldest Python the machine has holding only debugpy
  (``tests/node_pythons.py``; or the ``python`` given, e.g. an environment without debugpy),
  with the variables Azure ML sets (``AZUREML_RUN_ID``; for a
  distributed step ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``NODE_RANK``, ``MASTER_ADDR``,
  ``AZ_BATCH_IS_CURRENT_NODE_MASTER``).
- **Parallel steps.** A ``ParallelRunStep`` runs ``sim_parallel_runner.py`` (the stand-in
  for Azure ML's unpublished runner) with the step's arguments; a dataset input named NAME is
  read from ``datasets[NAME]``.
- **Order and data.** Steps run in dependency order (a step after the producers of the
  ``PipelineData`` it reads); a ``PipelineData`` is a folder both steps see.
- **SDK v2 jobs.** Told apart by the SDK's classes: a ``PipelineJob`` runs its command nodes
  as child runs, a command job is a run of its own. A node runs as Azure ML runs it: its
  ``command`` under ``bash -c``, in the snapshot of its code folder, ``python`` being the
  node's Python, each ``${{inputs.X}}`` / ``${{outputs.Y}}`` replaced by a path or a literal's
  text (read from ``node.inputs[X]._data``: a ``NodeOutput`` is its producer's folder, a
  ``PipelineInput`` the pipeline's value, an unbound input the component's default). As
  ``create_or_update`` does, the job object it was given is rewritten after: code and
  environments become ARM ids.
- **Statuses.** NotStarted, Queued, Preparing, Running, then Completed, Failed or Canceled.
- **Storage.** The workspace's default datastore is the test's Azurite, reached from the nodes
  at this machine's end of the first node's link (a byte forwarder to Azurite's loopback port,
  as a node reaches its workspace's storage account); ``relay_account`` signs with Azurite's
  published development key, as a user who may list the datastore's secrets.
- **Logs.** Each process's output goes, in chunks and late, to an append blob in the test's
  Azurite at Azure ML's layout (``user_logs/std_log.txt``, ``std_log_process_N.txt`` per process,
  with ``layout="nodes"`` ``std_log_node_N_process_M.txt`` (process M of node N) as the current
  runtime writes on several nodes, or ``azureml-logs/70_driver_log.txt``); a log is listed in
  ``logFiles``, with a real SAS URL, only once something was written to it.

Needs root and ``ip``; without them the cluster skips the test with the reason. Every
namespace and process it made is gone when :meth:`SimCluster.close` returns (the fixture calls
it, also when the test fails).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from netns import Node, node_network
from node_pythons import NODE_VERSIONS, find_python, node_python

PARALLEL_RUNNER = Path(__file__).resolve().parent / "sim_parallel_runner.py"
FLUSH_EVERY = 0.3  # seconds between two appends of a process's output to its log blob
STAGE_PAUSE = 0.2  # seconds a run spends in each status before Running
WORKSPACE_ID = ("azureml:/subscriptions/0/resourceGroups/rg/providers/"
                "Microsoft.MachineLearningServices/workspaces/ws")

_ids = itertools.count(1)


class SimRun:
    """A run as the SDK returns it; the cluster moves its status and writes its logs."""

    def __init__(self, name: str, cluster: SimCluster) -> None:
        self.id = f"{name}_{os.getpid()}_{next(_ids)}"
        self.name = name
        self.status = "NotStarted"
        self.children: list[SimRun] = []
        self.tags: dict[str, str] = {}
        self.log_files: dict[str, str] = {}  # listed name -> blob name, once written
        self.cancelled = threading.Event()
        self._cluster = cluster

    def get_status(self) -> str:
        return self.status

    def get_details(self) -> dict[str, Any]:
        urls = {listed: self._cluster.azurite.sas_url(blob)
                for listed, blob in dict(self.log_files).items()}
        return {"runId": self.id, "status": self.status, "logFiles": urls}

    def get_tags(self) -> dict[str, str]:
        return dict(self.tags)

    def get_children(self) -> list[SimRun]:
        return list(self.children)

    def get_portal_url(self) -> str:
        return f"https://ml.azure.com/runs/{self.id}"

    def cancel(self) -> None:
        for run in [self, *self.children]:
            run.cancelled.set()
            if run.status not in ("Completed", "Failed"):
                run.status = "Canceled"
        self._cluster.kill_all()


class SimCluster:
    """The simulated compute: ``nodes`` network namespaces; ``submit`` runs what it is given."""

    def __init__(self, azurite: Any, root: Path, *, nodes: int = 1,
                 processes_per_node: int = 1, layout: str = "current",
                 python: str | None = None, datasets: dict[str, Path] | None = None) -> None:
        self.azurite = azurite
        self.datasets = datasets or {}  # what a dataset input of that name is "mounted" from
        self.root = root
        self.processes_per_node = processes_per_node
        self.layout = layout
        version = next((v for v in NODE_VERSIONS if find_python(v)), None)
        self.python = python or node_python(version or "3.8")  # skips when there is none
        self._stack = ExitStack()
        self.nodes: list[Node] = [self._stack.enter_context(node_network()) for _ in range(nodes)]
        self._processes: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()
        self.submitted: list[Any] = []
        self.seen_nodes: list[dict[str, tuple[str, Any]]] = []
        # each submit's environments, by step or node name, as they arrived (v1: the
        # RunConfiguration's Environment object; v2: node.environment, a name or an Environment)
        self.seen_environments: list[dict[str, Any]] = []
        # each submit's environment variables, by step or node name, as they arrived
        self.seen_variables: list[dict[str, dict[str, str]]] = []
        self.runs: list[SimRun] = []
        self.parallel_layouts: list[tuple[str, int, int]] = []  # node, instances, workers
        self._storage_route: StorageRoute | None = None

    # -- the seam: what SdkWorkspace offers ---------------------------------------------------

    def submit(self, experiment: str, what: Any) -> SimRun:
        """SDK v1: a list of steps or a ScriptRunConfig; SDK v2: a PipelineJob or a command
        job (what ``MLClient.jobs.create_or_update`` takes)."""
        self.submitted.append(what)
        if type(what).__module__.startswith("azure.ai.ml"):  # SDK v2
            from azure.ai.ml.entities import PipelineJob

            is_pipeline = isinstance(what, PipelineJob)
            nodes = dict(what.jobs) if is_pipeline else {what.name or "job": what}
            self.seen_nodes.append({  # as they were at the submit
                name: (node.command, copy.deepcopy(getattr(node.environment, "conda_file", None)))
                for name, node in nodes.items()})
            self.seen_environments.append(
                {name: copy.deepcopy(node.environment) for name, node in nodes.items()})
            self.seen_variables.append(
                {name: dict(node.environment_variables or {}) for name, node in nodes.items()})
            jobs = self._v2_jobs(what, nodes)
        else:
            steps = what if isinstance(what, list) else [what]
            self.seen_environments.append({
                getattr(step, "name", None) or Path(step.script).stem: getattr(
                    getattr(step, "_runconfig", None) or getattr(step, "run_config", None),
                    "environment", None)
                for step in steps})
            jobs = [self._snapshot(step) for step in _in_dependency_order(steps)]
            self.seen_variables.append({job["name"]: job["environment"] for job in jobs})
            is_pipeline = isinstance(what, list)
        parent = SimRun("pipeline" if is_pipeline else "run", self)
        if is_pipeline:
            for job in jobs:
                job["run"] = SimRun(job["name"], self)
                parent.children.append(job["run"])
        else:
            jobs[0]["run"] = parent
        parent.status = "Running" if is_pipeline else "NotStarted"
        self.runs.append(parent)
        threading.Thread(target=self._run_all, args=(parent, jobs), daemon=True).start()
        return parent

    def relay_account(self) -> Any:
        """The default datastore's account (Azurite), at an address the nodes reach too."""
        from azurite import ACCOUNT, KEY

        from aml_debug_magics.relay.blobs import StorageAccount

        if self._storage_route is None:
            port = int(self.azurite.endpoint.rsplit(":", 1)[1].split("/", 1)[0])
            self._storage_route = StorageRoute(self.nodes[0].gateway, port)
        host, port = self._storage_route.address
        return StorageAccount(ACCOUNT, "azureml", f"http://{host}:{port}/{ACCOUNT}",
                              account_key=KEY)

    # -- what Azure ML does with it ------------------------------------------------------------

    def _snapshot(self, step: Any) -> dict[str, Any]:
        is_step = hasattr(step, "_script_name")
        folder = Path(getattr(step, "_source_directory" if is_step else "source_directory") or ".")
        snapshot = self.root / "snapshots" / f"{next(_ids)}_{folder.name or 'root'}"
        shutil.copytree(folder.resolve(), snapshot)
        arguments = getattr(step, "_arguments" if is_step else "arguments", None) or []
        script = step._script_name if is_step else step.script
        environment = _environment_of(step)
        if hasattr(step, "_parallel_run_config"):  # Azure ML's runner imports the entry script
            script = str(PARALLEL_RUNNER)
            environment.update({f"AZUREML_DATAREFERENCE_{name}": str(path)
                                for name, path in self.datasets.items()})
        return {
            "name": getattr(step, "name", None) or Path(step.script).stem,
            "snapshot": snapshot,
            "argv": [self.python, "-u", script, *(self._argument(a) for a in arguments)],
            "environment": environment,
        }

    def _v2_jobs(self, job: Any, nodes: dict[str, Any]) -> list[dict[str, Any]]:
        """Each command node as Azure ML's runtime runs it: its code folder uploaded (the
        snapshot), its ``command`` under ``bash -c`` in that folder, with ``${{inputs.X}}`` and
        ``${{outputs.Y}}`` replaced, word for word, by the data's paths and the literals'
        text; outputs, and node-to-node bindings, are folders the nodes share. Then, as
        ``create_or_update`` does, the job given is rewritten: code and environments become
        the ARM ids of what was uploaded and registered."""
        from azure.ai.ml import Input
        from azure.ai.ml.entities import Command, Parallel, PipelineJob
        from azure.ai.ml.entities._job.pipeline._io import NodeOutput, PipelineInput

        given = ({name: value._data for name, value in job.inputs.items()}
                 if isinstance(job, PipelineJob) else {})
        bound = re.compile(r"\$\{\{\s*parent\.(?:jobs\.(\w+)\.outputs|inputs)\.(\w+)\s*\}\}")

        def value_of(data: Any, base: Path) -> str:
            if isinstance(data, NodeOutput):
                return self._folder(f"{data._owner.name}.{data._port_name}")
            if isinstance(data, PipelineInput):
                return value_of(given[data._port_name], Path(job._base_path))
            if isinstance(data, Input):
                return str((base / data.path).resolve())
            if isinstance(data, str) and bound.fullmatch(data):  # a YAML pipeline's binding
                producer, port = bound.fullmatch(data).groups()
                return (self._folder(f"{producer}.{port}") if producer
                        else value_of(given[port], Path(job._base_path)))
            return str(data)

        def placeholders(name: str, node: Any, base: Path) -> dict[str, str]:
            found = {f"outputs.{port}": self._folder(f"{name}.{port}") for port in node.outputs}
            for port, value in node.inputs.items():
                data = value._data
                if data is None:  # not bound: the component's default
                    data = node.component.inputs[port].default
                found[f"inputs.{port}"] = value_of(data, base)
            return found

        def after(name: str) -> set[str]:
            return {value._data._owner.name for value in nodes[name].inputs.values()
                    if isinstance(value._data, NodeOutput)}

        ordered: list[str] = []
        while len(ordered) < len(nodes):
            ordered.append(next(n for n in nodes if n not in ordered and after(n) <= set(ordered)))
        jobs = []
        for name in ordered:
            node = nodes[name]
            base = Path(node.component.base_path or job._base_path)
            if isinstance(node, Parallel):
                jobs.append(self._v2_parallel(name, node, base, placeholders(name, node, base)))
                continue
            assert isinstance(node, Command), f"the simulated cluster runs command nodes: {name}"
            snapshot = self.root / "snapshots" / f"{next(_ids)}_{name}"
            shutil.copytree((base / node.code).resolve(), snapshot)
            line = _replaced(node.command, placeholders(name, node, base))
            jobs.append({"name": name, "snapshot": snapshot, "argv": ["bash", "-c", line],
                         "environment": {"PATH": f"{self._interpreters()}:{os.environ['PATH']}",
                                         **dict(node.environment_variables or {})}})
        for node in nodes.values():  # what create_or_update leaves in the object it was given
            node.code = f"{WORKSPACE_ID}/codes/{uuid.uuid4()}/versions/1"
            if node.environment is not None and not isinstance(node.environment, str):
                node.environment = (f"{WORKSPACE_ID}/environments/CliV2AnonymousEnvironment/"
                                    f"versions/{uuid.uuid4().hex}")
        return jobs

    def _v2_parallel(self, name: str, node: Any, base: Path, values: dict[str, str]
                     ) -> dict[str, Any]:
        """A parallel node as Azure ML's runner takes it: its task's code folder uploaded, the
        runner stand-in given its entry script, mini-batch size, worker count, the input
        ``input_data`` names and ``append_row_to``'s folder; its instance count and worker
        count are kept in ``parallel_layouts``."""
        snapshot = self.root / "snapshots" / f"{next(_ids)}_{name}"
        shutil.copytree((base / node.task.code).resolve(), snapshot)
        port = re.fullmatch(r"\$\{\{\s*inputs\.(\w+)\s*\}\}", node.input_data)[1]
        workers = node.max_concurrency_per_instance or 1
        argv = [self.python, "-u", str(PARALLEL_RUNNER), "--scoring_module_name",
                node.task.entry_script, "--mini_batch_size", str(node.mini_batch_size),
                "--process_count_per_node", str(workers), "--input_fds_0", port,
                *shlex.split(_replaced(node.task.program_arguments or "", values))]
        if node.task.append_row_to:
            argv += ["--output", _replaced(node.task.append_row_to, values)]
        self.parallel_layouts.append(
            (name, getattr(node.resources, "instance_count", None) or 1, workers))
        return {"name": name, "snapshot": snapshot, "argv": argv,
                "environment": {f"AZUREML_DATAREFERENCE_{port}": values[f"inputs.{port}"],
                                **dict(node.environment_variables or {})}}

    def _interpreters(self) -> Path:
        """A folder whose ``python`` and ``python3`` are the node's Python, first on PATH as an
        environment's are."""
        folder = self.root / "bin"
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("python", "python3"):  # a script: a symlink would lose the venv
            (folder / name).write_text(f'#!/bin/sh\nexec {shlex.quote(str(self.python))} "$@"\n')
            (folder / name).chmod(0o755)
        return folder

    def _folder(self, name: str) -> str:
        folder = self.root / "data" / name
        folder.mkdir(parents=True, exist_ok=True)
        return str(folder)

    def _argument(self, value: Any) -> str:
        names = {cls.__name__ for cls in type(value).__mro__}
        if "PipelineData" in names:
            return self._folder(value._name)
        return str(value)

    def _run_all(self, parent: SimRun, jobs: list[dict[str, Any]]) -> None:
        failed = False
        for job in jobs:
            run = job["run"]
            if parent.cancelled.is_set() or failed:
                run.status = "Canceled" if parent.cancelled.is_set() else "NotStarted"
                continue
            for stage in ("Queued", "Preparing"):
                run.status = stage
                time.sleep(STAGE_PAUSE)
            run.status = "Running"
            codes = self._run_step(run, job)
            if run.cancelled.is_set() or parent.cancelled.is_set():
                run.status = "Canceled"
                continue
            failed = any(code != 0 for code in codes)
            run.status = "Failed" if failed else "Completed"
        if parent.children:
            parent.status = (
                "Canceled" if parent.cancelled.is_set() else "Failed" if failed else "Completed"
            )

    def _run_step(self, run: SimRun, job: dict[str, Any]) -> list[int]:
        distributed = len(self.nodes) * self.processes_per_node > 1
        world = len(self.nodes) * self.processes_per_node
        pumps = []
        for node_rank, node in enumerate(self.nodes if distributed else self.nodes[:1]):
            for local_rank in range(self.processes_per_node if distributed else 1):
                rank = node_rank * self.processes_per_node + local_rank
                environment = {
                    "PATH": os.environ["PATH"], "AZUREML_RUN_ID": run.id,
                    "PYTHONUNBUFFERED": "1", **job["environment"],
                }
                if distributed:
                    environment.update(
                        RANK=str(rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world),
                        NODE_RANK=str(node_rank), MASTER_ADDR=self.nodes[0].address,
                        AZ_BATCH_IS_CURRENT_NODE_MASTER="true" if node_rank == 0 else "false",
                    )
                process = subprocess.Popen(
                    [*node.launcher, *job["argv"]],
                    cwd=job["snapshot"], env=environment, stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                )
                with self._lock:
                    self._processes.append(process)
                log = self._log_name(rank if distributed else None, node_rank, local_rank)
                pump = threading.Thread(target=self._pump, args=(process, run, log), daemon=True)
                pump.start()
                pumps.append((process, pump))
        codes = []
        for process, pump in pumps:
            codes.append(process.wait())
            pump.join(10)
        return codes

    def _log_name(self, rank: int | None, node_rank: int = 0, local_rank: int = 0) -> str:
        if self.layout == "nodes" and rank is not None:  # the current runtime, multi-node
            return f"user_logs/std_log_node_{node_rank}_process_{local_rank}.txt"
        if self.layout == "older":
            return "azureml-logs/70_driver_log.txt" if rank is None else (
                f"azureml-logs/70_driver_log_{rank}.txt")
        return "user_logs/std_log.txt" if rank is None else (
            f"user_logs/std_log_process_{rank}.txt")

    def _pump(self, process: subprocess.Popen[bytes], run: SimRun, listed: str) -> None:
        """The process's output to its append blob, in chunks: listed once it has written."""
        assert process.stdout is not None
        blob, pending, last = None, b"", time.monotonic()
        os.set_blocking(process.stdout.fileno(), False)
        while True:
            chunk = process.stdout.read()  # None: nothing just now; b"": the end
            ended = chunk == b""
            pending += chunk or b""
            if pending and (ended or time.monotonic() - last >= FLUSH_EVERY):
                if blob is None:
                    blob = self.azurite.append_blob(f"runs/{run.id}/{listed}")
                    run.log_files[listed] = blob.name
                blob.append(pending.decode(errors="replace"))
                pending, last = b"", time.monotonic()
            if ended:
                return
            time.sleep(0.05)

    # -- cleaning up ---------------------------------------------------------------------------

    def kill_all(self) -> None:
        with self._lock:
            processes = list(self._processes)
        for process in processes:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def close(self) -> None:
        for run in self.runs:
            for child in [run, *run.children]:
                child.cancelled.set()
        self.kill_all()
        if self._storage_route is not None:
            self._storage_route.close()
        self._stack.close()


def _replaced(line: str, values: dict[str, str]) -> str:
    """``line`` with each ``${{inputs.X}}`` / ``${{outputs.Y}}`` replaced by its value, as
    written: Azure ML puts the text in, unquoted, before the shell reads the line."""
    return re.sub(r"\$\{\{\s*((?:inputs|outputs)\.\w+)\s*\}\}", lambda found: values[found[1]],
                  line)


def _in_dependency_order(steps: list[Any]) -> list[Any]:
    """Producers of what a step reads (its PipelineData inputs) come before it."""
    def producers(step: Any) -> list[Any]:
        found = []
        for item in getattr(step, "_inputs", None) or []:
            producer = getattr(getattr(item, "_bind_object", item), "_producer", None)
            if producer is not None and producer is not step:
                found.append(producer)
        return found

    ordered: list[Any] = []
    while len(ordered) < len(steps):
        ready = [s for s in steps if s not in ordered and all(
            p in ordered or p not in steps for p in producers(s))]
        if not ready:
            raise AssertionError("the submitted steps wait on each other")
        ordered.append(ready[0])
    return ordered


def _environment_of(step: Any) -> dict[str, str]:
    runconfig = getattr(step, "_runconfig", None) or getattr(step, "run_config", None)
    environment = getattr(runconfig, "environment", None)
    found = dict(getattr(environment, "environment_variables", None) or {})
    found.update(getattr(runconfig, "environment_variables", None) or {})
    return {str(k): str(v) for k, v in found.items()}


class StorageRoute:
    """Bytes forwarded from ``host:<a free port>`` to Azurite on this machine's loopback, both
    ways, one thread pair per connection; ``close`` ends them all."""

    def __init__(self, host: str, azurite_port: int) -> None:
        self._azurite_port = azurite_port
        self._server = socket.create_server((host, 0))
        self.address: tuple[str, int] = self._server.getsockname()[:2]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="sim-storage-route", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
                upstream = socket.create_connection(("127.0.0.1", self._azurite_port))
            except OSError:
                return
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump_bytes, args=(source, sink), daemon=True).start()

    def close(self) -> None:
        # shut down before closing: a thread blocked in accept() or recv() on Linux wakes only
        # then, and the far end sees the connection end instead of waiting out its timeout
        with self._lock:
            sockets = [self._server, *self._sockets]
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def _pump_bytes(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        pass
