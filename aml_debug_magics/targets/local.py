"""The local target: the user's script runs as a real subprocess under the bootstrap.

In: a request's StepSpecs (a script and its arguments, or for SDK v2 a node's whole command
line) and the local paths of their data. Out: status, output lines and announcements, reported
to the session as each step runs. Never inside the kernel: ipykernel's own debugger owns debugpy
there, and ``debugpy.listen`` works once per process. The bootstrap always binds 127.0.0.1 here,
so nothing on a laptop or a compute instance is exposed to its network. An SDK v2 command line
runs as Azure ML runs it, through bash in the code folder, with only its debugged Python
invocation wrapped by the bootstrap. Each step's Python, and ``python``, ``python3`` and ``pip``
in its command, are its own layer over the kernel's environment (``job_env.py``: the packages
its environment declares, and what its command installs); ``--env kernel``: the kernel's.
An SDK v1 step gets its run context as on Azure ML: ``Run.get_context()`` in it answers
``input_datasets`` with the local paths of its inputs, or the dataset objects over them for
datasets consumed directly (``local_run.py``, put in place by the ``local_site/`` folder first
on its ``PYTHONPATH``). Every step gets the variables every Azure ML job sees
(``local_run.job_variables``): its run's id, its MLflow store the session's, and its own MLflow
run there, made before it starts (:class:`_MlflowRuns`).
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aml_debug_magics import reaper
from aml_debug_magics.errors import DebugInputError
from aml_debug_magics.node import parallel_entry
from aml_debug_magics.node.announce import Announcement, AttachOutcome, Failure, LogReader
from aml_debug_magics.node.options import SOURCE_ROOT_VARIABLE, parse_ranks
from aml_debug_magics.records import (
    Argument,
    DataFolder,
    ExternalInput,
    ShellCommand,
    Status,
    StepSpec,
)
from aml_debug_magics.sources import distribution, parallel
from aml_debug_magics.sources.batch import batch_output, is_batch_deployment
from aml_debug_magics.sources.sdk_v1 import is_pipeline_step
from aml_debug_magics.sources.shell_line import substitute
from aml_debug_magics.targets import job_env, local_run
from aml_debug_magics.targets.bootstrap_command import bootstrap_entry, bootstrap_options
from aml_debug_magics.targets.local_ranks import (
    debug_port,
    rank_environments,
    ranks_text,
    with_backend_hint,
)

if TYPE_CHECKING:
    from aml_debug_magics.records import DebugRequest
    from aml_debug_magics.session import DebugSession

LOG_LINES_KEPT = 200
RANK_NICENESS = 10  # the ranks that run on while others wait: their CPU comes second
LOCAL_RUN_SITE = Path(__file__).resolve().parent / "local_site"  # first on a v1 step's path


def _lower_priority(pid: int, niceness: int) -> None:
    """Give the process (a session of its own) ``niceness`` more than ours. Where Linux groups
    each session's CPU time (autogroup), a process's niceness counts only within its session:
    the session's group is niced too."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, pid, os.getpriority(os.PRIO_PROCESS, 0) + niceness)
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/autogroup").write_text(str(niceness))


class LocalProcess:
    """One script under the bootstrap on this machine (``debug=False``: plain python), its
    output read line by line.

    With ``shell_line`` (an SDK v2 node's command), ``script`` and ``args`` are not used: the
    line runs under ``bash -c`` in ``cwd``, its debugged Python invocation wrapped by the
    bootstrap, its placeholders replaced by ``values`` (each quoted for the shell), and
    ``python``, ``python3`` and ``python3.X`` in it starting ``python`` (from a private folder
    put first on PATH, removed when the process ends).

    ``on_line`` receives every output line; ``on_news`` every announcement or attach outcome the
    lines carry. Both are called from the reader thread.
    """

    def __init__(
        self,
        script: str | os.PathLike[str],
        args: Sequence[str] = (),
        *,
        cwd: str | os.PathLike[str] | None = None,
        timeout: float = 300.0,
        on_timeout: str = "continue",
        just_my_code: bool = True,
        connect: str | None = None,
        ranks: str = "0",
        debug: bool = True,
        env: dict[str, str] | None = None,
        python: str = sys.executable,
        node_files: Path | None = None,
        launcher: Sequence[str] = (),
        listen: str = "127.0.0.1:0",
        allow: str = "any",
        reattach_window: float | None = None,
        post_mortem: str | None = None,
        on_line: Callable[[str], None] | None = None,
        on_news: Callable[[Announcement | AttachOutcome], None] | None = None,
        shell_line: ShellCommand | None = None,
        values: Mapping[str, str] | None = None,
        niceness: int = 0,
    ) -> None:
        self.cwd = Path(cwd) if cwd else Path.cwd()
        self.niceness = niceness  # added to the process's, before it starts any child
        # node_files: a folder holding only the shipped files, run as a node without this
        # package runs them (PYTHONPATH left alone)
        bootstrap = [*bootstrap_entry(node_files), *bootstrap_options(
            listen=listen, connect=connect, timeout=timeout, on_timeout=on_timeout, ranks=ranks,
            just_my_code=just_my_code, allow=allow, reattach_window=reattach_window,
            post_mortem=post_mortem,
            source_root=str(self.cwd.resolve()) if shell_line is not None else None,
        ), "--"]
        self.env = {**os.environ, **(env or {})}
        self._interpreters: Path | None = None
        # launcher: what starts python elsewhere (the tests' ip netns exec NODE)
        if shell_line is None:
            self.command = [
                *launcher, python, "-u", *(bootstrap if debug else []), str(script), *args
            ]
        else:
            insertion = ["-u", *bootstrap]
            line = shell_line.wrapped(shlex.join(insertion)) if debug else shell_line.text
            known = values or {}
            self.command = [*launcher, "bash", "-c", substitute(line, lambda p: known[p])]
            self._interpreters = _interpreter_folder(python)
            self.env["PATH"] = os.pathsep.join(
                filter(None, [str(self._interpreters), self.env.get("PATH")])
            )
            self.env["PYTHONUNBUFFERED"] = "1"  # lines as they come, as -u gives a script
        if node_files is None:
            self.env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(Path(__file__).resolve().parents[2]), self.env.get("PYTHONPATH")])
            )
        self.last_lines: collections.deque[str] = collections.deque(maxlen=LOG_LINES_KEPT)
        self.announcement: Announcement | None = None
        self.outcome: AttachOutcome | None = None
        self.failure: Failure | None = None  # the exception that ended the script, if said
        self.announced = threading.Event()
        self._on_line = on_line
        self._on_news = on_news
        self._reader = LogReader()
        self._process: subprocess.Popen[str] | None = None
        self._started_at: int | None = None
        self._pump: threading.Thread | None = None

    def start(self) -> LocalProcess:
        try:
            self._start()
        except OSError:
            self._remove_interpreters()
            raise
        return self

    def _start(self) -> None:
        self._process = subprocess.Popen(
            self.command,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,  # stop() ends the script's children too
        )
        reaper.watch(self._process.pid)  # and so does the kernel's death
        self._started_at = reaper.start_time(self._process.pid)  # tells its group from a reuse
        if self.niceness:  # Popen returns once python is exec'd: long before it starts a child
            _lower_priority(self._process.pid, self.niceness)
        self._pump = threading.Thread(target=self._read, name="aml-debug-local-log", daemon=True)
        self._pump.start()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def returncode(self) -> int | None:
        return self._process.poll() if self._process else None

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for raw in self._process.stdout:
            line = raw.rstrip("\n")
            self.last_lines.append(line)
            if self._on_line:
                self._on_line(line)
            for news in self._reader.feed(line):
                if isinstance(news, Announcement):
                    self.announcement = news
                    self.announced.set()
                elif isinstance(news, AttachOutcome):
                    self.outcome = news
                elif isinstance(news, Failure):
                    self.failure = news
                if self._on_news:
                    self._on_news(news)
        self.announced.set()  # ended without announcing: wake whoever waits
        self._process.stdout.close()

    def wait(self, timeout: float | None = None) -> int:
        assert self._process is not None
        code = self._process.wait(timeout)
        reaper.forget(self._process.pid)
        self.end_leftovers()  # as on Azure ML, where a job's processes end with its main one
        if self._pump:
            self._pump.join(timeout=5)
        self._remove_interpreters()
        return code

    def _remove_interpreters(self) -> None:
        if self._interpreters is not None:
            shutil.rmtree(self._interpreters, ignore_errors=True)
            self._interpreters = None

    def stop(self, grace: float = 5.0) -> None:
        """End the script, its children and its debug adapter, and what it started and left
        running when it exited; safe to call more than once."""
        if self._process is None:
            return
        if self._process.poll() is not None:
            self.end_leftovers(grace)
            self._remove_interpreters()
            return
        try:  # one try: a Ctrl-C right after the SIGTERM still ends in the SIGKILL below
            try:
                os.killpg(self._process.pid, signal.SIGTERM)
            except ProcessLookupError:
                return
            self._process.wait(grace)
        except (subprocess.TimeoutExpired, KeyboardInterrupt) as reason:
            with contextlib.suppress(ProcessLookupError):  # a Ctrl-C must not leave it running
                os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
            if isinstance(reason, KeyboardInterrupt):
                raise
        finally:
            if self._process.poll() is not None:
                reaper.forget(self._process.pid)
                self._remove_interpreters()
        self.end_leftovers(grace)  # a child that outlived the script, or ignored the SIGTERM

    def end_leftovers(self, grace: float = 5.0) -> None:
        """End what is left of the script's process group once it has exited (a child it
        started, ``subprocess.Popen(["sleep", "600"])``): SIGTERM, then SIGKILL after
        ``grace``. An empty group's number may go to another process: that is never signalled
        (its leader's start time differs)."""
        if self._process is None or self._process.poll() is None:
            return
        group = self._process.pid
        for sent in (signal.SIGTERM, signal.SIGKILL):
            if not self._group_running(group):
                return
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, sent)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and self._group_running(group):
                time.sleep(0.05)

    def _group_running(self, group: int) -> bool:
        leader_started = reaper.start_time(group)
        if leader_started is not None and leader_started != self._started_at:
            return False  # the number is another process's now
        return _live_members(group)


def _live_members(group: int) -> bool:
    """Whether a process of ``group`` still runs: a zombie that nobody reaps (an init that does
    not reap, in a container) does not count."""
    try:
        entries = [entry for entry in os.listdir("/proc") if entry.isdigit()]
    except OSError:  # no /proc: the group's members, zombies included
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    for entry in entries:
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group and fields[0] not in (b"Z", b"X"):
            return True
    return False


class LocalPipelineTarget:
    """Runs a session's steps one after another on this machine, in dependency order.

    Each step runs in its source directory with its arguments and its runconfig's environment;
    the steps chosen for debugging run under the bootstrap. What steps pass to each other (a
    ``PipelineData``, an ``OutputFileDatasetConfig``) is a folder under ``data_root``, kept after
    the session so the user can look at it. A failed step stops the steps after it.
    """

    def __init__(self, request: DebugRequest, *, data_root: Path | None = None) -> None:
        self.request = request
        # made only when steps hand data on; kept after the session: the panel tells where
        self.data_root = data_root or (
            Path(tempfile.mkdtemp(prefix="aml_debug_data_"))
            if any(step.writes for step in request.steps) else None
        )
        for step in request.steps:
            distribution.check_local(step.distribution, step.name)
        # what each step's environment adds to the kernel's: a bad file is one line, now
        self._plans = job_env.plans(request.steps, request.env, registered_environments(request))
        self._layers: dict[str, Path | None] = {}  # each step's environment layer, once built
        self._current: list[LocalProcess] = []  # the step's process, or each of its ranks
        self._stopping = threading.Event()
        self._notes: list[str] = []
        self._runner: threading.Thread | None = None
        self.pipeline_run_id = local_run.new_run_id()  # the parent of every pipeline step's run
        self._mlflow = _MlflowRuns(local_run.tracking_store(self.pipeline_run_id),
                                   request.experiment)

    def start(self, events: DebugSession) -> None:
        for said in job_env.notes(self._plans):  # before the data's folder: it ends the note
            self._note(events, said)
        if any(step.writes for step in self.request.steps):
            batch = all(is_batch_deployment(step.sdk_object) for step in self.request.steps)
            what = "the batch deployment's output" if batch else "data passed between steps"
            self._note(events, f"{what}: {self.data_root}")
        kernel = job_env.kernel_packages() if self.request.env == "kernel" else None
        for step in self.request.steps:  # on its row, not in the note: the note names the data
            for said in job_env.said_before_run(step.sdk_object, self._plans.get(step.name),
                                                self.request.env, kernel):
                events.step_output(step.name, f"[aml-debug] {said}")
        self._mlflow.prepare()  # while the environments are prepared
        self._runner = threading.Thread(
            target=self._run_all, args=(events,), name="aml-debug-local-steps", daemon=True
        )
        self._runner.start()

    def _output_said(self, step: StepSpec) -> str:
        """A finished batch deployment's row: where its output file is, and its rows."""
        written = batch_output(step)
        if written is None:
            return ""
        output = self.folder_of(written[0]) / written[1]
        if not output.is_file():
            return f"no output file was written ({output})"
        with output.open("rb") as lines:
            rows = sum(1 for _ in lines)
        return f"output file: {output} ({rows} row{'s' if rows != 1 else ''})"

    def _note(self, events: DebugSession, note: str) -> None:
        self._notes.append(note)
        events.target_note("; ".join(self._notes))

    def stop(self) -> None:
        self._stopping.set()
        _stop_together(list(self._current))
        if self._runner is not None and self._runner is not threading.current_thread():
            self._runner.join(timeout=15)

    def folder_of(self, data: DataFolder) -> Path:
        assert self.data_root is not None  # a step that reads data follows one that writes it
        return self.data_root / data.name

    def _local_value(self, step: StepSpec, argument: Argument) -> str:
        """What the step is given here for an argument: data becomes its local path (a
        ``uri_file`` output the file's own), a primitive output its writer's value."""
        if isinstance(argument, DataFolder):
            if argument.kind == "primitive" and argument not in step.writes:
                value = self._primitive_value(argument)
                if value is not None:
                    return value
            return str(self.folder_of(argument))
        if isinstance(argument, ExternalInput):
            return str(self.request.input_paths[f"{step.name}.{argument.name}"])
        return argument

    def _run_all(self, events: DebugSession) -> None:
        try:
            layers = job_env.build_all(
                self._plans, limit=self.request.cache_limit,
                progress=lambda step, said: events.step_status(step, Status.QUEUED, said),
            )
        except DebugInputError as error:
            for step in self.request.steps:
                events.step_status(step.name, Status.NOT_RUN, str(error))
            events.target_done(failed=True)
            return
        self._layers = layers
        failed_step = None
        for step in self.request.steps:
            if self._stopping.is_set():
                return
            if failed_step is not None:
                events.step_status(step.name, Status.NOT_RUN, f"step {failed_step!r} failed")
                continue
            kernel = self.request.env == "kernel"
            layer = None if kernel else job_env.JobLayer(layers.get(step.name))
            metrics_before = local_run.metrics_logged(self.pipeline_run_id)
            code = None
            try:
                code = self._run_one(step, events, layer)
            finally:
                if layer is not None:
                    layer.remove()
                self._mlflow.end(step.name, None if self._stopping.is_set() else code)
            if self._stopping.is_set():
                return
            if step.distribution is not None:  # each rank's row says how it ended
                failed_step = step.name if code else None
            elif code == 0:
                said = [self._output_said(step),
                        local_run.metrics_note(self.pipeline_run_id, metrics_before)]
                events.step_status(step.name, Status.FINISHED, "; ".join(filter(None, said)),
                                   exit_code=0)
            else:
                failed_step = step.name
                events.step_status(step.name, Status.FAILED,
                                   self._failed_detail(step, self._current, code), exit_code=code)
        events.target_done(failed=failed_step is not None)

    def _failed_detail(
        self, step: StepSpec, processes: Sequence[LocalProcess], code: int
    ) -> str:
        """How a failed step ended; when it could not import a module, which environment of
        the job declared it and why it is not here, or that none did."""
        lines = [line for p in processes for line in p.last_lines]
        lines += [f"{p.failure.exception}: {p.failure.message}"
                  for p in processes if p.failure is not None]
        module = job_env.missing_module(lines)
        if module is None:
            return _exit_detail(code)
        try:
            known = self._plans.get(step.name)
            declared = known.declared if known else job_env.declared_by(step.sdk_object)
        except DebugInputError:  # read before the run with the job's layer; not with the kernel
            declared = None
        hint = job_env.missing_module_hint(module, declared, env=self.request.env,
                                           layer=self._layers.get(step.name))
        return f"{hint}; {_exit_detail(code)}"

    def _run_id(self, step: StepSpec) -> str:
        """The step's run id (its ``AZUREML_RUN_ID``): for a step with a run context, shaped as
        Azure ML shapes it (a pipeline step's a GUID, a script run's ``EXPERIMENT_SECONDS_HEX``),
        which ``Run.get_context().id`` answers too; else the step's name and the session's id."""
        if step.command is None and step.sdk_object is not None:
            pipeline_step = is_pipeline_step(step.sdk_object)
            return local_run.new_run_id(None if pipeline_step else self.request.experiment)
        return f"{step.name}_{self.pipeline_run_id}"

    def _run_context(
        self, step: StepSpec, environment: Mapping[str, str], run_id: str
    ) -> dict[str, str]:
        """What an SDK v1 step needs for ``Run.get_context()`` to answer as on Azure ML."""
        pipeline_step = is_pipeline_step(step.sdk_object)
        described = local_run.describe(
            run_id=run_id,
            experiment=self.request.experiment,
            parent_id=self.pipeline_run_id if pipeline_step else None,
            inputs={
                name: Path(self._local_value(step, data))
                for name, data in step.named_inputs.items()
            },
            datasets={name: data for name, data in step.named_inputs.items()
                      if isinstance(data, ExternalInput)},
            outputs={data.name: self.folder_of(data) for data in step.writes},
        )
        path = environment.get("PYTHONPATH", os.environ.get("PYTHONPATH"))
        return {
            local_run.ENVIRONMENT_VARIABLE: described,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(LOCAL_RUN_SITE), path])),
        }

    def _primitive_value(self, data: DataFolder) -> str | None:
        """The value a node returned for a primitive output: mldesigner writes it into the
        output's ``output`` file (the folder exists here), or into the path given as a file."""
        folder = self.folder_of(data)
        for written in (folder / "output", folder):
            if written.is_file():
                return written.read_text()
        return None

    def _run_one(
        self, step: StepSpec, events: DebugSession, layer: job_env.JobLayer | None = None
    ) -> int:
        for data in step.writes:  # a uri_file output is the file itself: only its folder is made
            made = self.folder_of(data)
            (made.parent if data.kind == "uri_file" else made).mkdir(parents=True, exist_ok=True)
        missing = [data.name for data in step.reads
                   if data.kind == "primitive" and self._primitive_value(data) is None]
        if missing:
            events.step_output(step.name, f"[aml-debug] {', '.join(missing)}: the node that "
                               "writes it left no value (an mldesigner function writes what it "
                               "returns into its output; a command must write the value into "
                               "the file output in that output's folder)")
            return 2
        arguments = [self._local_value(step, a) for a in step.arguments]
        environment = dict(step.environment)
        for data in [*step.reads, *step.writes, *step.external]:
            environment[f"AZUREML_DATAREFERENCE_{data.name}"] = self._local_value(step, data)
        run_id = self._run_id(step)
        if step.command is None and step.sdk_object is not None:
            environment.update(self._run_context(step, environment, run_id))
        environment.update(local_run.job_variables(
            experiment=self.request.experiment, session_run_id=self.pipeline_run_id,
            run_id=run_id, mlflow_run=self._mlflow.run_for(step.name),
        ))
        if self.request.mini_batches is not None:  # read by a parallel step's runner only
            environment[parallel_entry.MINI_BATCHES_VARIABLE] = str(self.request.mini_batches)
        values = None if step.command is None else {
            written: self._local_value(step, value)
            for written, value in step.command.placeholders.items()
        }
        script = step.script
        if parallel.is_parallel_spec(step):  # the runner runs, and calls the entry script
            script = parallel.RUNNER
            # the attach config maps the entry script's folder, not the runner's
            environment[SOURCE_ROOT_VARIABLE] = str(step.source_directory)
            what = parallel_entry.describe(arguments, self.request.mini_batches)
            events.step_output(step.name, f"[aml-debug] {what}")  # before it waits

        def process(
            rank: int, variables: Mapping[str, str], port: int,
            watch: _RankWatch | None = None, niceness: int = 0,
        ) -> LocalProcess:
            def on_news(news: Announcement | AttachOutcome) -> None:
                events.step_news(step.name, news)
                if watch is not None:
                    watch.news(news)

            return LocalProcess(
                script,
                arguments,
                cwd=step.source_directory,
                timeout=self.request.timeout,
                listen=f"127.0.0.1:{port}",
                connect=self.request.connect,
                ranks=self.request.ranks,
                just_my_code=self.request.just_my_code,
                post_mortem=self.request.post_mortem,
                debug=step.debug,
                env={**environment, **(layer.variables(environment) if layer else {}),
                     **variables},
                python=layer.python if layer else sys.executable,
                on_line=lambda line: events.step_output(step.name, line, rank),
                on_news=on_news,
                shell_line=step.command,
                values=values,
                niceness=niceness,
            )

        if step.distribution is not None:
            return self._run_ranks(step, events, process)
        events.step_status(step.name, Status.STARTING if step.debug else Status.RUNNING)
        one = process(0, {}, self.request.port)
        self._current = [one]
        try:
            one.start()
        except OSError as error:
            events.step_output(step.name, f"cannot start {one.command[0]}: {error}")
            return 127
        if self._stopping.is_set():  # stop() came between the check and the start
            one.stop()
        return one.wait()

    def _run_ranks(
        self, step: StepSpec, events: DebugSession,
        process: Callable[[int, Mapping[str, str], int, _RankWatch, int], LocalProcess],
    ) -> int:
        """Every rank of a distributed step as its own process, all started at once: the
        ranks that wait for a debugger first, the others at a lower CPU priority
        (``RANK_NICENESS``), so that on a small machine they do not delay the waiting ranks'
        ports (they would block in their first collective with them anyway); when one fails,
        the others are ended, as Azure ML ends a distributed job whose process failed. Its
        exit code: the first failure's, or 0."""
        layout = step.distribution
        assert layout is not None
        size = layout.world_size
        choice = parse_ranks(self.request.ranks)  # checked before the session started
        chosen = {r for r in range(size) if step.debug and choice.includes(r)}
        watch = _RankWatch(step.name, events, size, chosen)
        environments = rank_environments(layout)
        ranks = [process(r, environments[r], debug_port(self.request.port, layout, r), watch,
                         0 if r in chosen else RANK_NICENESS)
                 for r in range(size)]
        ended: queue.Queue[tuple[int, int]] = queue.Queue()
        self._current = ranks
        started, start_failed, described = 0, False, False
        for r in sorted(range(size), key=lambda r: r not in chosen):
            if r not in chosen and not described:
                self._describe_ranks(step, events, chosen)  # while the waiting ranks start
                described = True
            if self._stopping.is_set():
                break
            events.step_status(step.name, Status.STARTING if r in chosen else Status.RUNNING,
                               watch.running_detail(r), rank=r)
            try:
                ranks[r].start()
            except OSError as error:
                events.step_output(step.name, f"cannot start {ranks[r].command[0]}: {error}", r)
                ended.put((r, 127))
                start_failed = True
                for never in range(size):
                    if never != r and ranks[never].pid is None:
                        events.step_status(step.name, Status.NOT_RUN,
                                           f"rank {r} could not start", rank=never)
                break
            started += 1
            threading.Thread(target=lambda r=r: ended.put((r, ranks[r].wait())),
                             name=f"aml-debug-rank-{r}", daemon=True).start()
        if not described:  # every rank waits, or one could not start
            self._describe_ranks(step, events, chosen)
        if self._stopping.is_set():
            _stop_together(ranks)
        failure: tuple[int, int] | None = None
        for _ in range(started + (1 if start_failed else 0)):
            rank, code = ended.get()
            if self._stopping.is_set():
                continue
            if code != 0 and failure is None:
                failure = (rank, code)
                watch.failed(rank, code)
                detail = self._failed_detail(step, [ranks[rank]], code)
                events.step_status(step.name, Status.FAILED,
                                   with_backend_hint(ranks[rank].last_lines, detail),
                                   exit_code=code, rank=rank)
                threading.Thread(target=_stop_together, args=(ranks,), daemon=True,
                                 name="aml-debug-end-ranks").start()
            elif failure is not None and code != 0:
                events.step_status(step.name, Status.STOPPED, watch.ended_detail(),
                                   exit_code=code, rank=rank)
            else:
                watch.finished(rank)
                events.step_status(step.name, Status.FINISHED, exit_code=code, rank=rank)
        return failure[1] if failure else 0


    def _describe_ranks(self, step: StepSpec, events: DebugSession, chosen: set[int]) -> None:
        """A row per rank, and the panel's line saying what runs here for ``step``."""
        layout = step.distribution
        assert layout is not None
        size = layout.world_size
        events.rank_rows(step.name, [layout.node_of(r) for r in range(size)], chosen)
        emulated = f"{step.name}: {layout.describe()} as {size} local processes"
        if chosen:
            others = sorted(set(range(size)) - chosen)
            emulated += f"; {ranks_text(sorted(chosen))} {_verb(chosen, 'wait')} for a debugger"
            if others:
                emulated += f", {ranks_text(others)} for {'it' if len(chosen) == 1 else 'them'}" \
                            " in a collective"
        self._note(events, emulated)


class _RankWatch:
    """What each rank's row says about the others: the ranks that run on while some wait for
    a debugger block in their first collective with a waiting rank, as they would on Azure ML.
    Only the waits are known here, not where each rank is: the row says so."""

    def __init__(self, step: str, events: DebugSession, size: int, chosen: set[int]) -> None:
        self.step, self.events, self.size = step, events, size
        self.waiting = set(chosen)  # until its debugger attached or its window ended
        self.chosen = chosen
        self.done: set[int] = set()
        self.failure: tuple[int, int] | None = None
        self._lock = threading.Lock()

    def running_detail(self, rank: int) -> str:
        others = sorted(self.waiting - {rank})
        if rank in self.chosen or not others:
            return ""
        one = len(others) == 1
        return (f"a collective with {ranks_text(others)} blocks here until "
                f"{'it is' if one else 'they are'} past {'its' if one else 'their'} wait for a "
                "debugger")

    def ended_detail(self) -> str:
        assert self.failure is not None
        rank, code = self.failure
        return (f"ended: rank {rank} failed ({_exit_detail(code)}), and a distributed job ends "
                "every process when one fails, as on Azure ML")

    def failed(self, rank: int, code: int) -> None:
        with self._lock:
            self.failure = (rank, code)
            self.done.add(rank)

    def finished(self, rank: int) -> None:
        with self._lock:
            self.done.add(rank)
            self.waiting.discard(rank)

    def news(self, news: Announcement | AttachOutcome) -> None:
        """A rank's debugger attached or its window ended: the rows of the ranks that run on
        say who they still wait for."""
        if not isinstance(news, AttachOutcome):
            return
        with self._lock:
            self.waiting.discard(news.rank)
            if self.failure is not None:
                return
            others = [r for r in range(self.size) if r not in self.chosen | self.done]
        for rank in others:
            self.events.step_status(self.step, Status.RUNNING, self.running_detail(rank),
                                    rank=rank)


class _MlflowRuns:
    """Each step's run in the session's MLflow store, made before the step starts: on Azure ML
    a job's ``MLFLOW_RUN_ID`` names its own run, which ``mlflow.start_run()`` (no arguments)
    resumes; an id naming no run would make it fail. Made with the kernel's mlflow where the
    kernel has imported it already: importing it for this would put 2 s to 8 s and 160 MB in
    front of the first step. A run the script left running is ended as its step ended. Where
    the kernel has not imported mlflow, none is made and ``MLFLOW_RUN_ID`` is not set: the
    script's ``mlflow.start_run()`` makes its own run, in the same store and experiment."""

    def __init__(self, store: Path, experiment: str) -> None:
        self.store = store
        self.experiment = experiment
        self._client: Any = None  # mlflow's MlflowClient, once loaded
        self._experiment_id = ""
        self._runs: dict[str, str] = {}  # step -> its run's id
        self._loader: threading.Thread | None = None

    def prepare(self) -> None:
        if "mlflow" not in sys.modules:  # see above: never imported for this
            return
        self._loader = threading.Thread(target=self._load, name="aml-debug-mlflow", daemon=True)
        self._loader.start()

    def _load(self) -> None:
        try:
            from mlflow.tracking import MlflowClient

            with _file_store_allowed():
                client = MlflowClient(tracking_uri=self.store.as_uri())
                found = client.get_experiment_by_name(self.experiment)
                self._experiment_id = (found.experiment_id if found
                                       else client.create_experiment(self.experiment))
            self._client = client
        except Exception:  # an mlflow that cannot write here: the script makes its own run
            self._client = None

    def run_for(self, step: str) -> tuple[str, str] | None:
        """The experiment's id and the step's new run's id, or None (no mlflow here)."""
        if self._loader is not None:
            self._loader.join()
        if self._client is None:
            return None
        try:
            with _file_store_allowed():
                run = self._client.create_run(self._experiment_id, run_name=step)
        except Exception:
            return None
        self._runs[step] = run.info.run_id
        return self._experiment_id, run.info.run_id

    def end(self, step: str, code: int | None) -> None:
        """End the step's run as the step ended (``code`` None: stopped), unless its script
        ended it."""
        run_id = self._runs.pop(step, None)
        if run_id is None or self._client is None:
            return
        status = "KILLED" if code is None else ("FINISHED" if code == 0 else "FAILED")
        with contextlib.suppress(Exception), _file_store_allowed():
            if self._client.get_run(run_id).info.status == "RUNNING":
                self._client.set_terminated(run_id, status)


_FILE_STORE_CALLS = threading.Lock()


@contextlib.contextmanager
def _file_store_allowed() -> Iterator[None]:
    """MLflow 3.7 and later refuse a file store unless ``MLFLOW_ALLOW_FILE_STORE`` is set: set
    for the kernel's own calls into the session's store only, then as it was."""
    with _FILE_STORE_CALLS:  # two sessions at once must not restore it under each other
        before = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)
            else:
                os.environ["MLFLOW_ALLOW_FILE_STORE"] = before


def _verb(ranks: set[int], verb: str) -> str:
    return f"{verb}s" if len(ranks) == 1 else verb


def _stop_together(processes: Sequence[LocalProcess]) -> None:
    """Stop every process at once: each gets its SIGTERM now, not after the others' grace."""
    stoppers = [threading.Thread(target=p.stop, daemon=True) for p in processes]
    for stopper in stoppers:
        stopper.start()
    for stopper in stoppers:
        stopper.join()


def registered_environments(request: DebugRequest) -> job_env.Registered:
    """How a SDK v2 step's environment named on Azure ML is read: through the request's
    workspace (an MLClient's), else the one ``config.json`` names, once one is asked for."""
    from aml_debug_magics.targets.azureml_v2 import environment_reader

    return environment_reader(request.workspace)


def _interpreter_folder(python: str) -> Path:
    """A private folder of ``python``, ``python3`` and ``python3.X`` that start ``python``.

    Small scripts, not links: a link to a virtual environment's python, called by another
    name in another folder, would not find the environment's ``pyvenv.cfg``.
    """
    folder = Path(tempfile.mkdtemp(prefix="aml_debug_python_"))
    own = [f"python3.{sys.version_info.minor}"] if python == sys.executable else []
    for name in ("python", "python3", *own):
        launcher = folder / name
        launcher.write_text(f'#!/bin/sh\nexec {shlex.quote(python)} "$@"\n')
        launcher.chmod(0o700)
    return folder


def _exit_detail(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"
