"""The azureml target (SDK v1): submit debug-ready steps or runs, follow them, find the node.

Nothing in the user's scripts or folders changes. For the submit, each debugged step runs the
bootstrap (its three files are placed in the step's source folder for the snapshot and removed
right after, whatever happens), with a copy of its RunConfiguration that adds debugpy and Docker.
The user's step objects are edited only for the duration of the submit and restored after.
Out, to the session: each run's status in words, and the end of the session once the run
reaches a status its SDK's own waiting loop stops at (read from the installed SDK's lists).
"""

from __future__ import annotations

import contextlib
import copy
import re
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aml_debug_magics.errors import DebugInputError
from aml_debug_magics.failures import first_line, user_error
from aml_debug_magics.logs import RunLogs
from aml_debug_magics.node.announce import Announcement, AttachOutcome
from aml_debug_magics.records import Status
from aml_debug_magics.targets.environment import (
    BOOTSTRAP,
    DEBUGPY_REQUIREMENT,
    bootstrap_options,
    shipped_bootstrap,
)

if TYPE_CHECKING:
    from aml_debug_magics.records import DebugRequest, StepSpec
    from aml_debug_magics.session import DebugSession

GUIDE_FLAGS = {  # the guide's flags and how many values each takes
    "--remote_debug": 0,
    "--remote_debug_connection_timeout": 1,
    "--remote_debug_client_ip": 1,
    "--remote_debug_port": 1,
}
SUCCEEDED = {"Completed", "Finished"}  # a run's and an SDK v1 PipelineRun's "it worked"
STATUS_WORDS = {  # Azure ML's run statuses (SDK v1 RunStatus, SDK v2 JobStatus), as rows say them
    "NotStarted": "not started",
    "Queued": "queued: waiting for the compute's nodes",
    "Preparing": "preparing: building the image and the environment",
    "Provisioning": "provisioning: the compute is being created",
    "Starting": "starting",
    "Running": "running",
    "Finalizing": "finalizing: collecting outputs",
    "CancelRequested": "cancel requested",
    "Completed": "completed",
    "Finished": "finished",
    "Failed": "failed",
    "Canceled": "canceled",
    "NotResponding": "not responding: no heartbeat from the run lately",
    "Unapproved": "waiting for approval",
    "Pausing": "pausing",
    "Paused": "paused",
    "Unknown": "in a state Azure ML calls unknown",
    "PartiallyExecuted": "partly run",
    "Bypassed": "bypassed",
}
BEFORE_START = {"NotStarted": Status.QUEUED, "Queued": Status.QUEUED,
                "Unapproved": Status.QUEUED, "Preparing": Status.STARTING,
                "Provisioning": Status.STARTING, "Starting": Status.STARTING}
NEVER_STARTED = {"", "NotStarted", "Queued"}
PROBE_TIMEOUT = 3.0
POLL_FAST = 1.0  # seconds between two looks while a debugged step has not said where it is
POLL_SLOW = 10.0  # seconds between two looks after that (statuses only change slowly then)
FAILURES_TOLD = 5  # failures in a row before the note says the run is not being followed
RETRY_LONGEST = 30.0


# ---------------------------------------------------------------------------------------------
# Building what is submitted


def debug_runconfig(runconfig: Any) -> tuple[Any, list[str]]:
    """A copy of ``runconfig`` with debugpy and Docker; and notes for the panel.

    Keeps the user's environment and base image (else the SDK's ``DEFAULT_CPU_IMAGE``); uses
    ``DockerConfiguration(use_docker=True)``, not the deprecated ``docker.enabled``.
    """
    from azureml.core import RunConfiguration
    from azureml.core.runconfig import DEFAULT_CPU_IMAGE, DockerConfiguration

    notes = []
    with warnings.catch_warnings():  # the SDK's vendored YAML loader warns on every load
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
        built = copy.deepcopy(runconfig) if runconfig is not None else RunConfiguration()
        environment = built.environment
        if environment.name and not environment.name.endswith("-aml-debug"):
            environment.name = f"{environment.name}-aml-debug"  # never overwrite theirs
            environment.version = None
        python = environment.python
        if python.user_managed_dependencies:
            notes.append("the environment is user-managed: it must have debugpy installed")
        else:
            python.conda_dependencies.add_pip_package(DEBUGPY_REQUIREMENT)
        if not environment.docker.base_image and not environment.docker.base_dockerfile:
            environment.docker.base_image = DEFAULT_CPU_IMAGE
        built.docker = DockerConfiguration(use_docker=True)
    return built, notes


def strip_guide_flags(arguments: list[Any]) -> tuple[list[Any], bool]:
    """``arguments`` without the guide's ``--remote_debug*`` flags (the bootstrap does that job;
    the guide's snippet listens on the client's address and fails with errno 99)."""
    kept, skip, stripped = [], 0, False
    for value in arguments:
        if skip:
            skip -= 1
            continue
        if isinstance(value, str) and value.split("=", 1)[0] in GUIDE_FLAGS:
            stripped = True
            skip = 0 if "=" in value else GUIDE_FLAGS[value]
            continue
        kept.append(value)
    return kept, stripped


def in_words(status: str) -> str:
    """An Azure ML status as the row says it: ``NotResponding`` -> ``not responding: ...``;
    a status this table does not know yet is split into its words."""
    return STATUS_WORDS.get(status) or re.sub(r"(?<=[a-z])(?=[A-Z])", " ", status).lower()


def going_on_statuses(sdk: str) -> frozenset[str]:
    """The statuses the SDK's own waiting loops wait through; every other status ends a run.

    SDK v1: ``Run.wait_for_completion`` waits through ``RunStatus``'s running and
    post-processing lists, ``PipelineRun.wait_for_completion`` through its ``RUNNING_STATES``.
    SDK v2: see ``azureml_v2.going_on_statuses``.
    """
    if sdk == "v2":
        from aml_debug_magics.targets.azureml_v2 import going_on_statuses as v2_going_on

        return v2_going_on()
    from azureml._restclient.constants import RunStatus

    going = {*RunStatus.get_running_statuses(), *RunStatus.get_post_processing_statuses()}
    with contextlib.suppress(ImportError):  # azureml-pipeline-core: PipelineRun's own loop
        from azureml.pipeline.core.run import RUNNING_STATES

        going.update(RUNNING_STATES)
    return frozenset(going)


def row_status(status: str, ended: bool) -> Status:
    """Where an Azure ML status puts a row: an ended run finished (it succeeded), stopped
    (canceled or paused) or failed (anything else that ends it)."""
    if ended:
        if status in SUCCEEDED:
            return Status.FINISHED
        return Status.STOPPED if status in ("Canceled", "Paused") else Status.FAILED
    return BEFORE_START.get(status, Status.RUNNING)


ANYONE_MAY_ATTACH = (
    "--allow any: anyone who reaches the node's port can attach and run code as the job's "
    "identity"
)


@contextlib.contextmanager
def debug_ready(specs: list[StepSpec], request: DebugRequest, notes: list[str]) -> Iterator[None]:
    """The debugged steps' SDK objects made to run the bootstrap, for the submit only."""
    saved: list[tuple[Any, dict[str, Any]]] = []
    try:
        for spec in specs:
            if not spec.debug:
                continue
            sdk = spec.sdk_object
            is_step = hasattr(sdk, "_script_name")
            fields = (
                ("_script_name", "_arguments", "_runconfig", "_allow_reuse")
                if is_step
                else ("script", "arguments", "run_config")
            )
            saved.append((sdk, {f: getattr(sdk, f) for f in fields}))
            script, arguments, runconfig = (getattr(sdk, f) for f in fields[:3])
            arguments, stripped = strip_guide_flags(list(arguments or []))
            if stripped:
                notes.append(f"{spec.name}: the guide's --remote_debug flags were left out")
            built, config_notes = debug_runconfig(runconfig)
            notes.extend(f"{spec.name}: {n}" for n in config_notes)
            values = [BOOTSTRAP, [*bootstrap_options(request), "--", script, *arguments], built]
            for field, value in zip(fields, values, strict=False):
                setattr(sdk, field, value)
            if is_step:
                if saved[-1][1]["_allow_reuse"]:
                    notes.append(f"{spec.name}: reuse is off, so the step runs and can be attached")
                sdk._allow_reuse = False
        with shipped_bootstrap([s.source_directory for s in specs if s.debug]):
            yield
    finally:
        for sdk, fields in saved:
            for field, value in fields.items():
                setattr(sdk, field, value)


# ---------------------------------------------------------------------------------------------
# The workspace seam


class SdkWorkspace:
    """Submits through the real SDK: ``Pipeline(workspace, steps)`` or a ScriptRunConfig, to an
    ``Experiment``. The only object the tests replace (Azure's control plane is not reachable
    from a test machine); what it returns are SDK runs: ``get_children``, ``get_details``,
    ``get_status``, ``get_tags``, ``cancel``, ``get_portal_url``."""

    def __init__(self, workspace: Any) -> None:
        self.workspace = workspace

    def submit(self, experiment: str, what: list[Any] | Any) -> Any:
        from azureml.core import Experiment

        if isinstance(what, list):
            from azureml.pipeline.core import Pipeline

            what = Pipeline(workspace=self.workspace, steps=what)
        return Experiment(self.workspace, experiment).submit(what)

    def package(self, models: list[str], inference_config: Any) -> Any:
        """``Model.package`` for models named ``NAME`` or ``NAME:VERSION``."""
        from azureml.core.model import Model

        found = []
        for model in models:
            name, _, version = model.partition(":")
            number = int(version) if version else None
            found.append(Model(self.workspace, name=name, version=number))
        return Model.package(self.workspace, found, inference_config)


    def download(self, data: Any, folder: Path) -> Path:
        """Download an ``ExternalInput`` into ``folder`` with the SDK's own calls; the path the
        step sees (a DataReference to a file: that file)."""
        if data.kind == "FileDataset":
            data.source.download(target_path=str(folder), overwrite=True)
            return folder
        if data.kind == "TabularDataset":
            data.source.to_csv_files().download(target_path=str(folder), overwrite=True)
            return folder
        from azureml.core import Datastore

        datastore, _, path = data.points_to.partition("/")
        Datastore.get(self.workspace, datastore).download(
            str(folder), prefix=path or None, overwrite=True, show_progress=False
        )
        return folder / path if path else folder


def find_workspace(user_ns: dict[str, Any], variable: str | None) -> SdkWorkspace:
    """The workspace in ``variable``, else ``Workspace.from_config()``; one line if neither."""
    if variable:
        if variable not in user_ns:
            raise DebugInputError(f"no variable named {variable!r} in this notebook")
        return SdkWorkspace(user_ns[variable])
    try:
        from azureml.core import Workspace

        return SdkWorkspace(Workspace.from_config())
    except Exception as error:
        raise DebugInputError(
            "no Azure ML workspace: pass --workspace VARIABLE or put a config.json next to the "
            f"notebook ({first_line(error)})"
        ) from None


# ---------------------------------------------------------------------------------------------
# Probing the announced address from here


def probe(host: str, port: int, timeout: float = PROBE_TIMEOUT) -> str:
    """``reachable``, ``refused`` or ``timed out``: a bare TCP connect, closed at once."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timed out"
    except OSError as error:
        return "timed out" if "unreachable" in str(error).lower() else f"failed ({error})"
    return "reachable"


def reachability(announcement: Announcement, prober: Callable[[str, int], str] = probe) -> str:
    """What the panel says about reaching the announced node from this machine."""
    host, port = announcement.addresses[0], announcement.port
    if announcement.mode == "connect":
        return "the node connects out to your VS Code: keep it listening"
    if announcement.source == "guide":
        return (
            "not probed: this script runs the guide's own debugpy listener, which a bare "
            "connect would end"
        )
    verdict = prober(host, port)
    if verdict == "reachable":
        return f"{host}:{port} is reachable from this machine"
    if verdict == "refused":
        return (
            f"{host}:{port} refused the connection: wrong port, or the script listens on "
            "loopback only"
        )
    return (
        f"{host}:{port} {verdict} from here: the guide requires this machine and the cluster "
        "on the same virtual network. Where the cluster allows SSH, tunnel instead: "
        f"ssh azureuser@PUBLIC_IP -p 50000 -L {port}:{host}:{port} (PUBLIC_IP and the port "
        f"are on the cluster's Nodes tab), then attach to localhost:{port}"
    )


# ---------------------------------------------------------------------------------------------
# The target


class AzureMLTarget:
    """Submits the session's steps (or run) to Azure ML and follows the runs it starts."""

    def __init__(
        self,
        request: DebugRequest,
        workspace: SdkWorkspace,
        *,
        experiment: str = "aml-debug",
        poll_fast: float | None = None,
        poll_slow: float | None = None,
        prober: Callable[[str, int], str] = probe,
        opener: Any = None,
    ) -> None:
        self.request = request
        self.workspace = workspace
        self.experiment = experiment
        self.poll_fast = POLL_FAST if poll_fast is None else poll_fast
        self.poll_slow = POLL_SLOW if poll_slow is None else poll_slow
        self.prober = prober
        self.opener = opener
        self.run: Any = None
        self.notes: list[str] = []
        self.going_on: frozenset[str] = frozenset()
        self._stopping = threading.Event()
        self._follower: threading.Thread | None = None

    def start(self, events: DebugSession) -> None:
        self._follower = threading.Thread(
            target=self._submit_and_follow, args=(events,), name="aml-debug-azureml", daemon=True
        )
        self._follower.start()

    def stop(self) -> None:
        self._stopping.set()
        if self.run is not None:
            with contextlib.suppress(Exception):
                self.run.cancel()
        if self._follower is not None and self._follower is not threading.current_thread():
            self._follower.join(timeout=15)

    def ended(self, status: str | None) -> bool:
        """Whether a run in ``status`` has ended, by its SDK's own lists."""
        return bool(status) and status not in self.going_on

    def _submit_and_follow(self, events: DebugSession) -> None:
        specs = self.request.steps
        for spec in specs:
            events.step_status(spec.name, Status.QUEUED, "submitting to Azure ML")
        try:
            self.going_on = going_on_statuses(self.request.sdk)
            if self.request.sdk == "v2":
                from aml_debug_magics.targets.azureml_v2 import debug_ready_v2
                from aml_debug_magics.targets.azureml_v2 import is_pipeline as is_pipeline_job

                is_pipeline = is_pipeline_job(self.request.submitted)
                with debug_ready_v2(specs, self.request, self.notes) as what:
                    self.run = self.workspace.submit(self.experiment, what)
            else:
                is_pipeline = hasattr(specs[0].sdk_object, "_script_name")
                with debug_ready(specs, self.request, self.notes):
                    what = [s.sdk_object for s in specs] if is_pipeline else specs[0].sdk_object
                    self.run = self.workspace.submit(self.experiment, what)
        except Exception as error:  # the submit failed: say why, in one line, without secrets
            message = first_line(error)
            for spec in specs:
                events.step_status(spec.name, Status.FAILED, f"submit failed: {message}")
            events.target_done(failed=True)
            return
        if self._stopping.is_set():
            with contextlib.suppress(Exception):
                self.run.cancel()
            return
        portal = getattr(self.run, "get_portal_url", lambda: "")()
        warning = [ANYONE_MAY_ATTACH] if self.request.allow == "any" else []
        note = "; ".join([*warning, f"run {self.run.id}: {portal}", *self.notes])
        events.target_note(note)
        self._follow(events, is_pipeline, note)

    def _follow(self, events: DebugSession, is_pipeline: bool, note: str) -> None:
        """Follow until the run ends or Stop. An unexpected error (a transient SDK or HTTP
        failure, a reply that is not what it should be) is shown, redacted, and retried with a
        back-off; after ``FAILURES_TOLD`` in a row the note says the run is not being followed,
        and retrying goes on at the longest back-off: the session stays stoppable."""
        by_name = {s.name: s for s in self.request.steps}
        followers: dict[str, _StepFollower] = {}
        failures = 0
        while not self._stopping.is_set():
            try:
                if self._poll(events, is_pipeline, by_name, followers):
                    return
            except Exception as error:
                failures += 1
                problem = first_line(error)
                if problem != type(error).__name__:
                    problem = f"{type(error).__name__}: {problem}"
                if failures >= FAILURES_TOLD:
                    events.target_note(
                        f"{note}; not following the run: {failures} failures in a row, the last "
                        f"{problem}; retrying every {RETRY_LONGEST:g} s (Stop cancels the run)"
                    )
                else:
                    events.target_note(f"{note}; could not follow the run ({problem}); retrying")
                self._stopping.wait(min(RETRY_LONGEST, 2.0 ** failures * self.poll_fast))
                continue
            if failures:
                failures = 0
                events.target_note(note)
            waiting = any(f.waiting for f in followers.values()) or not followers
            self._stopping.wait(self.poll_fast if waiting else self.poll_slow)

    def _poll(self, events: DebugSession, is_pipeline: bool, by_name: dict, followers: dict
              ) -> bool:
        """One round of following; True once the run and every followed step have ended."""
        if not is_pipeline and not followers:
            followers[self.request.steps[0].name] = _StepFollower(self, self.run, by_name, events)
        if is_pipeline:
            for child in self.run.get_children():
                name = getattr(child, "name", None)
                if name in by_name and name not in followers:
                    followers[name] = _StepFollower(self, child, by_name, events, name)
        for follower in followers.values():
            follower.poll()
        status = self.run.get_status()
        if not self.ended(status):
            return False
        ended = f"the run ended {in_words(status)}"
        for follower in followers.values():  # a step after a failed one stays NotStarted
            if not follower.ended and follower.status in NEVER_STARTED:
                follower.never_ran = True
                events.step_status(follower.name, Status.NOT_RUN, ended)
        if not all(f.ended for f in followers.values()):
            return False
        for spec in self.request.steps:
            if spec.name not in followers:
                events.step_status(spec.name, Status.NOT_RUN, ended)
        events.target_done(failed=status not in SUCCEEDED)
        return True


class _StepFollower:
    """One step run: its status, its logs and tags, and the probe of what it announces."""

    def __init__(self, target, run, by_name, events, name: str | None = None) -> None:
        self.target, self.run, self.events = target, run, events
        self.name = name or next(iter(by_name))
        self.spec = by_name[self.name]
        self.status = ""
        self.started_at = time.time()
        self.announced = False
        self.never_ran = False  # the whole run ended before this step started
        self.logs = RunLogs(
            run,
            lambda line, node: events.step_output(self.name, line),
            self._news,
            **({"opener": target.opener} if target.opener else {}),
        )

    @property
    def ended(self) -> bool:
        return self.target.ended(self.status) or self.never_ran

    @property
    def waiting(self) -> bool:
        return self.spec.debug and not self.announced and not self.ended

    def poll(self) -> None:
        status = self.run.get_status()
        if self.ended:
            return
        self.logs.poll()
        ours = row_status(status, self.target.ended(status))
        if status != self.status:
            self.status = status
            if ours != Status.RUNNING or not self.announced:
                words = in_words(status)
                detail = "" if words == str(ours) else words
                if status == "Failed":  # the script's own exception, from its log
                    lines = list(self.events.row(self.name).last_lines)
                    cause = user_error(lines, self.spec.script_name)
                    detail = f"Failed: {cause}" if cause else "Failed: see its last lines"
                code = {Status.FINISHED: 0, Status.FAILED: 1}.get(ours)
                self.events.step_status(self.name, ours, detail, exit_code=code)
        if self.waiting and ours == Status.RUNNING:
            seconds = int(time.time() - self.started_at)
            problem = f"; {self.logs.problem}" if self.logs.problem else ""
            self.events.step_status(
                self.name, Status.RUNNING,
                f"{in_words(status)} ({seconds // 60}:{seconds % 60:02d}); waiting for its log "
                f"to say where to attach, reading {self.logs.describe()}{problem}",
            )

    def _news(self, news: Announcement | AttachOutcome) -> None:
        self.events.step_news(self.name, news)
        if isinstance(news, Announcement):
            self.announced = True
            threading.Thread(
                target=lambda: self.events.step_reachability(
                    self.name, news.rank, reachability(news, self.target.prober)
                ),
                name="aml-debug-probe",
                daemon=True,
            ).start()
