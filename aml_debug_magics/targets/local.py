"""The local target: the user's script runs as a real subprocess under the bootstrap.

In: a request's StepSpecs (a script and its arguments, or for SDK v2 a node's whole command
line) and the local paths of their data. Out: status, output lines and announcements, reported
to the session as each step runs. Never inside the kernel: ipykernel's own debugger owns debugpy
there, and ``debugpy.listen`` works once per process. The bootstrap always binds 127.0.0.1 here,
so nothing on a laptop or a compute instance is exposed to its network. An SDK v2 command line
runs as Azure ML runs it, through bash in the code folder, with only its debugged Python
invocation wrapped by the bootstrap and ``python``/``python3`` meaning the kernel's interpreter.
An SDK v1 step gets its run context as on Azure ML: ``Run.get_context()`` in it answers
``input_datasets`` with the local paths of its inputs (``local_run.py``, put in place by the
``local_site/`` folder first on its ``PYTHONPATH``).
"""

from __future__ import annotations

import collections
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from aml_debug_magics import reaper
from aml_debug_magics.node import parallel_entry
from aml_debug_magics.node.announce import Announcement, AttachOutcome, LogReader
from aml_debug_magics.node.options import SOURCE_ROOT_VARIABLE
from aml_debug_magics.records import (
    Argument,
    DataFolder,
    ExternalInput,
    ShellCommand,
    Status,
    StepSpec,
)
from aml_debug_magics.sources import parallel
from aml_debug_magics.sources.sdk_v1 import is_pipeline_step
from aml_debug_magics.sources.shell_line import substitute
from aml_debug_magics.targets import local_run
from aml_debug_magics.targets.bootstrap_command import bootstrap_entry, bootstrap_options

if TYPE_CHECKING:
    from aml_debug_magics.records import DebugRequest
    from aml_debug_magics.session import DebugSession

LOG_LINES_KEPT = 200
LOCAL_RUN_SITE = Path(__file__).resolve().parent / "local_site"  # first on a v1 step's path


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
        on_line: Callable[[str], None] | None = None,
        on_news: Callable[[Announcement | AttachOutcome], None] | None = None,
        shell_line: ShellCommand | None = None,
        values: Mapping[str, str] | None = None,
    ) -> None:
        self.cwd = Path(cwd) if cwd else Path.cwd()
        # node_files: a folder holding only the shipped files, run as a node without this
        # package runs them (PYTHONPATH left alone)
        bootstrap = [*bootstrap_entry(node_files), *bootstrap_options(
            listen=listen, connect=connect, timeout=timeout, on_timeout=on_timeout, ranks=ranks,
            just_my_code=just_my_code, allow=allow, reattach_window=reattach_window,
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
        self.announced = threading.Event()
        self._on_line = on_line
        self._on_news = on_news
        self._reader = LogReader()
        self._process: subprocess.Popen[str] | None = None
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
                if self._on_news:
                    self._on_news(news)
        self.announced.set()  # ended without announcing: wake whoever waits
        self._process.stdout.close()

    def wait(self, timeout: float | None = None) -> int:
        assert self._process is not None
        code = self._process.wait(timeout)
        reaper.forget(self._process.pid)
        if self._pump:
            self._pump.join(timeout=5)
        self._remove_interpreters()
        return code

    def _remove_interpreters(self) -> None:
        if self._interpreters is not None:
            shutil.rmtree(self._interpreters, ignore_errors=True)
            self._interpreters = None

    def stop(self, grace: float = 5.0) -> None:
        """End the script, its children and its debug adapter; safe to call more than once."""
        if self._process is None or self._process.poll() is not None:
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
        self._current: LocalProcess | None = None
        self._stopping = threading.Event()
        self._runner: threading.Thread | None = None
        self.pipeline_run_id = local_run.new_run_id()  # the parent of every pipeline step's run

    def start(self, events: DebugSession) -> None:
        if any(step.writes for step in self.request.steps):
            events.target_note(f"data passed between steps: {self.data_root}")
        self._runner = threading.Thread(
            target=self._run_all, args=(events,), name="aml-debug-local-steps", daemon=True
        )
        self._runner.start()

    def stop(self) -> None:
        self._stopping.set()
        current = self._current
        if current is not None:
            current.stop()
        if self._runner is not None and self._runner is not threading.current_thread():
            self._runner.join(timeout=15)

    def folder_of(self, data: DataFolder) -> Path:
        assert self.data_root is not None  # a step that reads data follows one that writes it
        return self.data_root / data.name

    def _local_value(self, step: StepSpec, argument: Argument) -> str:
        """What the step is given here for an argument: data becomes its local path."""
        if isinstance(argument, DataFolder):
            return str(self.folder_of(argument))
        if isinstance(argument, ExternalInput):
            return str(self.request.input_paths[f"{step.name}.{argument.name}"])
        return argument

    def _run_all(self, events: DebugSession) -> None:
        failed_step = None
        for step in self.request.steps:
            if self._stopping.is_set():
                return
            if failed_step is not None:
                events.step_status(step.name, Status.NOT_RUN, f"step {failed_step!r} failed")
                continue
            code = self._run_one(step, events)
            if self._stopping.is_set():
                return
            if code == 0:
                events.step_status(step.name, Status.FINISHED, exit_code=0)
            else:
                failed_step = step.name
                events.step_status(step.name, Status.FAILED, _exit_detail(code), exit_code=code)
        events.target_done(failed=failed_step is not None)

    def _run_context(self, step: StepSpec, environment: Mapping[str, str]) -> dict[str, str]:
        """What an SDK v1 step needs for ``Run.get_context()`` to answer as on Azure ML."""
        pipeline_step = is_pipeline_step(step.sdk_object)
        described = local_run.describe(
            run_id=local_run.new_run_id(None if pipeline_step else self.request.experiment),
            experiment=self.request.experiment,
            parent_id=self.pipeline_run_id if pipeline_step else None,
            inputs={
                name: Path(self._local_value(step, data))
                for name, data in step.named_inputs.items()
            },
        )
        path = environment.get("PYTHONPATH", os.environ.get("PYTHONPATH"))
        return {
            local_run.ENVIRONMENT_VARIABLE: described,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(LOCAL_RUN_SITE), path])),
        }

    def _run_one(self, step: StepSpec, events: DebugSession) -> int:
        for data in step.writes:
            self.folder_of(data).mkdir(parents=True, exist_ok=True)
        arguments = [self._local_value(step, a) for a in step.arguments]
        environment = dict(step.environment)
        for data in [*step.reads, *step.writes, *step.external]:
            environment[f"AZUREML_DATAREFERENCE_{data.name}"] = self._local_value(step, data)
        if step.command is None and step.sdk_object is not None:
            environment.update(self._run_context(step, environment))
        if self.request.mini_batches is not None:  # read by a parallel step's runner only
            environment[parallel_entry.MINI_BATCHES_VARIABLE] = str(self.request.mini_batches)
        values = None if step.command is None else {
            written: self._local_value(step, value)
            for written, value in step.command.placeholders.items()
        }
        events.step_status(step.name, Status.STARTING if step.debug else Status.RUNNING)
        script = step.script
        if parallel.is_parallel_spec(step):  # the runner runs, and calls the entry script
            script = parallel.RUNNER
            # the attach config maps the entry script's folder, not the runner's
            environment[SOURCE_ROOT_VARIABLE] = str(step.source_directory)
            what = parallel_entry.describe(arguments, self.request.mini_batches)
            events.step_output(step.name, f"[aml-debug] {what}")  # before it waits
        process = LocalProcess(
            script,
            arguments,
            cwd=step.source_directory,
            timeout=self.request.timeout,
            listen=f"127.0.0.1:{self.request.port}",
            connect=self.request.connect,
            ranks=self.request.ranks,
            just_my_code=self.request.just_my_code,
            debug=step.debug,
            env=environment,
            on_line=lambda line: events.step_output(step.name, line),
            on_news=lambda news: events.step_news(step.name, news),
            shell_line=step.command,
            values=values,
        )
        self._current = process
        try:
            process.start()
        except OSError as error:
            events.step_output(step.name, f"cannot start {process.command[0]}: {error}")
            return 127
        if self._stopping.is_set():  # stop() came between the check and the start
            process.stop()
        return process.wait()


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
