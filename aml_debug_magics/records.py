"""The plain records that travel between the pieces: what a reader of the user's objects makes
(``StepSpec`` and its data), what a magic asks for (``DebugRequest``), and the statuses a target
reports. Standard library only and nothing of ours, so every piece can import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class DataFolder:
    """A piece of data passed between steps (a PipelineData or an OutputFileDatasetConfig; an
    SDK v2 node's output). ``kind`` is what the writing node declared: a folder (``uri_folder``,
    and every SDK v1 kind), ``uri_file`` (the path is the file itself) or ``primitive`` (an
    integer, number, string or boolean output: the writer gets a folder, and mldesigner writes
    the value into its ``output`` file; a reader gets the value)."""

    name: str
    kind: str = "uri_folder"


@dataclass(frozen=True)
class ExternalInput:
    """Data from outside the pipeline: a DataReference, a File or Tabular dataset, or a
    PipelineParameter holding a DataPath. On the local target it becomes a local path: the
    user's stand-in (``--input NAME=PATH``) or a download through the workspace.
    """

    name: str  # what the user calls it, and what --input NAME matches
    kind: str  # "DataReference", "FileDataset", "TabularDataset", "DataPath parameter"
    points_to: str  # the datastore path, dataset name or URL, as the user would recognise it
    mode: str = "mount"  # mount, download or direct, as the step asked
    source: Any = field(default=None, compare=False, hash=False)  # the SDK object, to download
    downloadable: bool = True  # through an SDK v1 workspace; an SDK v2 input needs --input


Argument = str | DataFolder | ExternalInput


@dataclass(frozen=True)
class ShellCommand:
    """An SDK v2 node's ``command`` as Azure ML runs it: through a shell, in the code folder.

    ``text`` is the command as written (``cd src && python train.py --out ${{outputs.model}}``).
    ``interpreter`` is the span in ``text`` of the interpreter word (``python``, ``python3``) and
    its own options (``-u``, ``-X dev``) of the one Python invocation that runs under the
    debugger, or None when nothing in the line is debugged (the line then runs as written). A
    target wraps that invocation only, by putting the bootstrap and its options right after that
    span, before the script or ``-m``; the rest of the line is left as it is. ``placeholders``
    maps each ``${{...}}`` as written in ``text`` to what it stands for, for a target that runs
    the line itself (the local target quotes each value for the shell).
    """

    text: str
    interpreter: tuple[int, int] | None = None
    placeholders: dict[str, Argument] = field(default_factory=dict, compare=False, hash=False)

    def wrapped(self, insertion: str) -> str:
        """``text`` with ``insertion`` (already shell-quoted) after the debugged interpreter word.

        >>> ShellCommand("cd src && python train.py", (10, 16)).wrapped("boot.py --")
        'cd src && python boot.py -- train.py'
        """
        if self.interpreter is None:
            return self.text
        end = self.interpreter[1]
        return f"{self.text[:end]} {insertion}{self.text[end:]}"


@dataclass(frozen=True)
class Distribution:
    """How Azure ML starts a distributed step: ``framework`` (pytorch, mpi or tensorflow) on
    ``nodes`` nodes, ``processes_per_node`` processes on each; for TensorFlow one process per
    task instead, ``workers`` workers then ``parameter_servers`` parameter servers, spread
    evenly over the nodes. A process's rank is its place in that order."""

    framework: str
    nodes: int
    processes_per_node: int
    workers: int = 0  # tensorflow only
    parameter_servers: int = 0  # tensorflow only

    @property
    def world_size(self) -> int:
        if self.framework == "tensorflow":
            return self.workers + self.parameter_servers
        return self.nodes * self.processes_per_node

    @property
    def per_node(self) -> int:
        """The most processes one node runs."""
        return -(-self.world_size // self.nodes)

    def node_of(self, rank: int) -> int:
        return rank // self.per_node

    def local_rank(self, rank: int) -> int:
        return rank % self.per_node

    def describe(self) -> str:
        """What runs, as the panel says it: ``2 nodes x 2 processes (PyTorch)``."""
        name = {"pytorch": "PyTorch", "mpi": "MPI", "tensorflow": "TensorFlow"}[self.framework]
        nodes = f"{self.nodes} node{'s' if self.nodes != 1 else ''}"
        if self.framework == "tensorflow":
            servers = f" + {self.parameter_servers} parameter servers" \
                if self.parameter_servers else ""
            return f"{nodes}, {self.workers} workers{servers} ({name})"
        each = f"{self.processes_per_node} process{'es' if self.processes_per_node != 1 else ''}"
        return f"{nodes} x {each} ({name})"


@dataclass
class StepSpec:
    """One script to run: where, with which arguments and environment, and whether to debug it."""

    name: str
    source_directory: Path
    script_name: str
    arguments: list[Argument] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    reads: list[DataFolder] = field(default_factory=list)
    writes: list[DataFolder] = field(default_factory=list)
    external: list[ExternalInput] = field(default_factory=list)
    debug: bool = True
    sdk_object: Any = None  # the user's step or ScriptRunConfig, for targets that submit it
    command: ShellCommand | None = None  # SDK v2: the line the node runs, through a shell
    # SDK v1: what Run.get_context().input_datasets answers in the step, by input name
    named_inputs: dict[str, DataFolder | ExternalInput] = field(default_factory=dict)
    trial: str = ""  # one trial of a sweep: its point and how it was chosen, for the panel
    distribution: Distribution | None = None  # several processes, as Azure ML starts them

    @property
    def script(self) -> Path:
        return self.source_directory / self.script_name


class Status(str, Enum):
    QUEUED = "queued"
    STARTING = "starting"
    WAITING = "waiting for debugger"
    POST_MORTEM = "failed, waiting for a debugger at the exception"
    ATTACHED = "attached"
    RUNNING = "running"
    TIMED_OUT = "timed out and continued"
    FINISHED = "finished"
    FAILED = "failed"
    STOPPED = "stopped"
    NOT_RUN = "not run"

    def __str__(self) -> str:  # what enum.StrEnum gives on 3.11+; the notebook runs 3.10 too
        return self.value


ENDED = frozenset({Status.FINISHED, Status.FAILED, Status.STOPPED, Status.NOT_RUN})


@dataclass
class ServiceInfo:
    """A served scoring script (``%aml_debug_deploy``): where to score it and how it answers."""

    scoring_url: str = ""
    health: str = ""
    response: str = ""  # the last test request's status and body, or why it failed


@dataclass
class DebugRequest:
    """What a magic asks for, checked and typed."""

    title: str
    steps: list[StepSpec]
    target: str = "local"
    timeout: float = 300.0
    port: int = 0
    connect: str | None = None
    ranks: str = "0"
    just_my_code: bool = True
    launch_json: Path = Path(".vscode/launch.json")
    write_launch_json: bool = False
    allow: str = "auto"  # who the node lets attach: auto (this machine), any, or a list
    via: str = "listen"  # how the debugger's bytes travel: listen (the node's port), storage, auto
    via_default: bool = False  # no --via typed: listen wherever the relay cannot be made
    sdk: str = "v1"  # which Azure ML SDK built the steps: v1, or v2 (azure-ai-ml)
    submitted: Any = None  # SDK v2: the job to submit as a whole (a PipelineJob, a command job)
    workspace: Any = None  # for the azureml target: where to submit (an SdkWorkspace)
    experiment: str = "aml-debug"
    deployment: Any = None  # for %aml_debug_deploy: a deploy.local.Deployment
    models: list[str] = field(default_factory=list)  # for packaging: NAME or NAME:VERSION
    input_paths: dict[str, Path] = field(default_factory=dict)  # local target: external data
    mini_batches: int | None = None  # local target: parallel steps stop after this many
    env: str = "job"  # local target: job (a layer of the job's environment) or kernel
    cache_limit: int = 5 * 1024**3  # local target: bytes the job environments may hold
    debug_here: bool = False  # open the notebook's debugger on each debugged row it can attach
    # after a failure with nobody attached: seconds to wait at the exception, or "off" (None:
    # as long as the attach window)
    post_mortem: str | None = None
