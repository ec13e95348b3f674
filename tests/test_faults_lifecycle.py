"""Faults in deploy, processes and lifecycle: each is said in one line, and nothing is left
running.

There is no Docker engine on this machine. Code that drives Docker is tested up to the commands
it runs, against a stand-in ``docker`` executable put first on PATH (the narrowest seam: the
engine itself). It records its arguments and answers as the engine documents: ``docker run``
without ``--detach`` relays the container's output (kept by the engine, as its log driver does)
and exits with the container's status (137 when ``docker rm --force`` killed it), the container
outlives a killed ``docker run`` client,
``--rm`` removes it when it ends, a name in use is refused with status 125. Its "container" is a
real process in a session of its own, as a container is not in the client's process group.
Azure ML's control plane (``Model.package``, a run's ``cancel``) is a stand-in at the workspace
seam; ``wait_for_creation`` raises the SDK's own ``WebserviceException`` in the SDK's words.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from conftest import REPO, children_of, live_processes, wait_for

from aml_debug_magics.records import DebugRequest, Status, StepSpec
from aml_debug_magics.session import DebugSession
from aml_debug_magics.ui.text import TextView

FAKE_DOCKER = textwrap.dedent(
    """\
    #!{python}
    import json, os, signal, subprocess, sys, time
    from pathlib import Path

    state = Path(os.environ["FAKE_DOCKER_STATE"])
    args = sys.argv[1:]
    with open(state / "calls.jsonl", "a") as calls:
        calls.write(json.dumps(args) + "\\n")
    containers = state / "containers"
    containers.mkdir(exist_ok=True)
    if args[:1] == ["version"]:
        print("27.3.1")
    elif args[:1] == ["rm"]:
        names = [a for a in args[1:] if not a.startswith("-")]
        for name in names:
            record = containers / name
            if not record.exists():
                print(f"Error response from daemon: No such container: {{name}}", file=sys.stderr)
                sys.exit(1)
            try:
                os.killpg(int(record.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
            record.unlink(missing_ok=True)
            print(name)
    elif args[:1] == ["run"]:
        name = args[args.index("--name") + 1]
        record = containers / name
        if record.exists():
            print(f'docker: Error response from daemon: Conflict. The container name "/{{name}}" '
                  'is already in use by container "0123abcd". You have to remove (or rename) '
                  'that container to be able to reuse that name.', file=sys.stderr)
            sys.exit(125)
        code = os.environ.get("FAKE_CONTAINER_EXIT")
        body = (
            "import sys, time\\n"
            "print('runsvdir: services started', flush=True)\\n"
            + (f"print('gunicorn: worker failed to boot', flush=True)\\nsys.exit({{code}})\\n"
               if code else "time.sleep(3600)\\n")
        )
        # the engine keeps the container's output (its log driver); the client relays it
        log = state / f"{{name}}.log"
        with open(log, "w") as output:
            container = subprocess.Popen([sys.executable, "-c", body], stdout=output,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        record.write_text(str(container.pid))
        with open(log) as relayed:
            while True:
                line = relayed.readline()
                if line:
                    print(line, end="", flush=True)
                elif container.poll() is not None:
                    print(relayed.read(), end="", flush=True)
                    break
                else:
                    time.sleep(0.05)
        status = container.wait()
        if record.exists():  # --rm: the engine removes it as it ends
            record.unlink()
        sys.exit(137 if status < 0 else status)
    else:
        print(f"unknown command {{args}}", file=sys.stderr)
        sys.exit(1)
    """
)


@pytest.fixture
def docker_engine(tmp_path, monkeypatch):
    """The stand-in ``docker`` first on PATH; its state folder. Every container it still holds
    is killed afterwards."""
    bin_folder, state = tmp_path / "bin", tmp_path / "docker-state"
    bin_folder.mkdir()
    state.mkdir()
    (state / "containers").mkdir()
    docker = bin_folder / "docker"
    docker.write_text(FAKE_DOCKER.format(python=sys.executable))
    docker.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DOCKER_STATE", str(state))
    yield state
    for record in (state / "containers").iterdir():
        try:
            os.killpg(int(record.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def docker_calls(state: Path) -> list[list[str]]:
    calls = state / "calls.jsonl"
    return [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []


def running_containers(state: Path) -> dict[str, int]:
    """Container name -> the pid of its process, for those whose process still runs."""
    live = {p.pid for p in live_processes()}
    found = {}
    for record in (state / "containers").iterdir():
        try:
            pid = int(record.read_text())
        except ValueError:
            continue
        if pid in live:
            found[record.name] = pid
    return found


@pytest.fixture
def app(tmp_path):
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "score.py").write_text("def init():\n    pass\n\ndef run(raw):\n"
                                               "    return raw\n")
    return tmp_path


def deploy_request(app: Path, target: str, **deployment_options):
    from aml_debug_magics.deploy.local import Deployment

    deployment = Deployment(app / "app" / "score.py", app / "app", scoring_port=8001,
                            image="myacr.azurecr.io/package:1", **deployment_options)
    return DebugRequest(f"%aml_debug_deploy score.py ({target})",
                        [StepSpec("score", app / "app", "score.py")], target=target,
                        port=5690, deployment=deployment, models=["model:1"])


def open_docker(app: Path) -> tuple[DebugSession, object, list[str]]:
    from aml_debug_magics.deploy.docker import DockerDeployTarget

    request = deploy_request(app, "docker")
    target = DockerDeployTarget(request, request.deployment)
    printed: list[str] = []
    session = DebugSession(request, target, TextView(write=printed.append)).start()
    return session, target, printed


# -- the docker target ------------------------------------------------------------------------


def test_the_docker_target_says_when_its_container_ends(app, docker_engine, monkeypatch):
    monkeypatch.setenv("FAKE_CONTAINER_EXIT", "3")
    session, target, printed = open_docker(app)
    try:
        assert session.wait(30) == "failed", printed
        row = session.rows[0]
        assert row.status == Status.FAILED
        assert row.detail == "the container ended (status 3): gunicorn: worker failed to boot"
        assert session.service.health == "down"
        run = next(call for call in docker_calls(docker_engine) if call[0] == "run")
        assert "--detach" not in run  # followed to its end: its status is the container's
        assert not any("Traceback" in line for line in printed)
    finally:
        session.stop()
        session.dispose()


def test_two_docker_sessions_run_side_by_side_and_stop_leaves_no_container(app, docker_engine):
    first, first_target, _ = open_docker(app)
    second, second_target, printed = open_docker(app)
    try:
        wait_for(lambda: len(running_containers(docker_engine)) == 2, 30, "two containers")
        assert first_target.container != second_target.container
        assert second.state == "running" and second.rows[0].status != Status.FAILED, printed
    finally:
        for session in (first, second):
            session.stop()
            session.dispose()
    assert running_containers(docker_engine) == {}
    removed = [call for call in docker_calls(docker_engine) if call[:2] == ["rm", "--force"]]
    assert sorted(call[2] for call in removed) == sorted(
        [first_target.container, second_target.container])
    assert children_of() == []


KERNEL_WITH_A_CONTAINER = textwrap.dedent(
    """\
    import sys, time
    from pathlib import Path
    from aml_debug_magics.deploy.docker import DockerDeployTarget
    from aml_debug_magics.deploy.local import Deployment
    from aml_debug_magics.records import DebugRequest, StepSpec
    from aml_debug_magics.session import DebugSession
    from aml_debug_magics.ui.text import TextView

    app = Path(sys.argv[1])
    deployment = Deployment(app / "score.py", app, scoring_port=8001, image="myacr.azurecr.io/p:1")
    request = DebugRequest("t", [StepSpec("score", app, "score.py")], target="docker",
                           port=5690, deployment=deployment)
    target = DockerDeployTarget(request, deployment)
    DebugSession(request, target, TextView()).start()
    print("CONTAINER", target.container, target.tools, flush=True)
    time.sleep(600)
    """
)


def test_a_killed_kernel_removes_its_container(app, docker_engine):
    kernel = subprocess.Popen(
        [sys.executable, "-c", KERNEL_WITH_A_CONTAINER, str(app / "app")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    line = ""
    try:
        line = next((line for line in kernel.stdout if line.startswith("CONTAINER")), "")
        assert line, f"the kernel ended before its container started: {kernel.wait()}"
        name, tools = line.split()[1:3]
        wait_for(lambda: name in running_containers(docker_engine), 30, "the container")
        kernel.send_signal(signal.SIGKILL)  # as the OOM killer does
        kernel.wait()
        wait_for(lambda: name not in running_containers(docker_engine), 30,
                 "the watchdog to remove the container")
        assert ["rm", "--force", name] in docker_calls(docker_engine)
    finally:
        if kernel.poll() is None:
            kernel.kill()
            kernel.wait()
        if line:  # the node files the killed kernel had copied for the container
            shutil.rmtree(tools, ignore_errors=True)


# -- packaging with Azure ML ------------------------------------------------------------------


class StandInPackage:
    """A ``ModelPackage`` as the SDK returns it: ``wait_for_creation`` raises the SDK's own
    ``WebserviceException`` on a non-successful terminal state, in the SDK's words; ``pull``
    brings the image here (held until the test lets it finish)."""

    def __init__(self, *, build_error: str | None = None) -> None:
        self.build_error = build_error
        self.location = "myacr.azurecr.io/package@sha256:0123"
        self.pulling = threading.Event()
        self.pulled = threading.Event()
        self.finish_pull = threading.Event()

    def wait_for_creation(self, show_output: bool = False) -> None:
        from azureml.exceptions import WebserviceException

        if self.build_error is not None:
            raise WebserviceException(
                "Package creation reached non-successful terminal state.\nState: Failed\n"
                f"Error:\nStatusCode: 400\nMessage: {self.build_error}\n"
            )

    def pull(self) -> None:
        self.pulling.set()
        self.finish_pull.wait(60)
        self.pulled.set()


class StandInPackagingWorkspace:
    """The workspace seam's ``package``: Azure ML's control plane, which no test reaches."""

    def __init__(self, package: StandInPackage) -> None:
        self.made = package

    def package(self, models: list[str], inference_config) -> StandInPackage:
        return self.made


def open_package(app: Path, package: StandInPackage) -> tuple[DebugSession, object, list[str]]:
    pytest.importorskip("azureml.core")
    from aml_debug_magics.deploy.package import PackageDeployTarget

    request = deploy_request(app, "azureml")
    target = PackageDeployTarget(request, request.deployment, StandInPackagingWorkspace(package))
    printed: list[str] = []
    session = DebugSession(request, target, TextView(write=printed.append)).start()
    return session, target, printed


def test_a_failed_image_build_is_one_line_and_ends_the_row(app, docker_engine, capsys):
    package = StandInPackage(build_error="Docker build failed: pip could not resolve debugpy")
    session, target, printed = open_package(app, package)
    try:
        assert session.wait(30) == "failed", printed
        row = session.rows[0]
        assert row.status == Status.FAILED
        assert "\n" not in row.detail
        assert row.detail.startswith("packaging failed: ")
        assert "State: Failed" in row.detail
        assert "Docker build failed: pip could not resolve debugpy" in row.detail
        assert "Traceback" not in capsys.readouterr().err
        assert docker_calls(docker_engine) == []
    finally:
        session.stop()
        session.dispose()


def test_stop_during_the_image_pull_starts_no_container(app, docker_engine):
    package = StandInPackage()
    session, target, printed = open_package(app, package)
    try:
        assert package.pulling.wait(30), printed
        session.stop()
        package.finish_pull.set()
        assert package.pulled.wait(30)
        wait_for(lambda: not any(t.name == "aml-debug-package" for t in threading.enumerate()),
                 30, "the packaging thread to end")
        assert not any(call[0] == "run" for call in docker_calls(docker_engine))
        assert running_containers(docker_engine) == {}
        assert session.rows[0].status == Status.STOPPED
    finally:
        package.finish_pull.set()
        session.stop()
        session.dispose()


# -- a failed cancel, a failing countdown -----------------------------------------------------


class RunThatWillNotCancel:
    """An SDK run whose ``cancel()`` raises, as it does when the workspace's token has expired
    or the network is down."""

    id = "job_42"

    def get_status(self) -> str:
        return "Running"

    def get_details(self) -> dict:
        return {"runId": self.id, "status": "Running", "logFiles": {}}

    def get_tags(self) -> dict:
        return {}

    def get_children(self) -> list:
        return []

    def get_portal_url(self) -> str:
        return f"https://ml.azure.com/runs/{self.id}"

    def cancel(self) -> None:
        raise RuntimeError("AuthenticationException: the access token expired\nat line 2")


class StandInSubmitWorkspace:
    """The workspace seam's ``submit``: Azure ML's control plane, which no test reaches."""

    def __init__(self) -> None:
        self.run = RunThatWillNotCancel()

    def submit(self, experiment: str, what) -> RunThatWillNotCancel:
        return self.run


def test_a_failed_cancel_is_said_on_the_panel(tmp_path, monkeypatch):
    pytest.importorskip("azureml.core")
    from azureml.core import ScriptRunConfig

    from aml_debug_magics.sources.sdk_v1 import read_script_run
    from aml_debug_magics.targets.azureml import AzureMLTarget

    monkeypatch.chdir(tmp_path)
    (tmp_path / "job.py").write_text("print('hi')\n")
    config = ScriptRunConfig(source_directory=".", script="job.py")
    spec = read_script_run(config, "config", base_directory=tmp_path, target="azureml")
    request = DebugRequest("%aml_debug_run config", [spec], target="azureml")
    target = AzureMLTarget(request, StandInSubmitWorkspace(), poll_fast=0.05, poll_slow=0.05,
                           prober=lambda host, port: "reachable")
    printed: list[str] = []
    session = DebugSession(request, target, TextView(write=printed.append)).start()
    wait_for(lambda: session.note.startswith("run job_42"), 30, "the run to be followed")
    session.stop()
    assert "could not cancel run job_42" in session.note
    assert "the access token expired" in session.note and "at line 2" not in session.note
    assert "https://ml.azure.com/runs/job_42" in session.note
    assert any("could not cancel run job_42" in line for line in printed)


def test_a_countdown_that_fails_says_so_in_one_line(capsys):
    from aml_debug_magics.ui.ticker import Ticker

    class BrokenPanel:
        def tick(self) -> bool:
            raise ValueError("the row's deadline is not a number")

    ticker = Ticker(interval=0.01)
    ticker.add(BrokenPanel())
    wait_for(lambda: not ticker.running, 10, "the ticker to let go of the broken panel")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "countdown" in err and "ValueError: the row's deadline is not a number" in err


# -- python -m aml_debug_magics ---------------------------------------------------------------


def in_a_terminal() -> None:
    """A command typed in a terminal gets Ctrl-C's SIGINT with its default action, also when the
    tests run as a background job of a non-interactive shell (which starts them with SIGINT
    ignored, and Python then never turns it into KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_python_m_with_no_arguments_prints_usage_and_where_to_attach():
    demo = subprocess.Popen(
        [sys.executable, "-m", "aml_debug_magics"], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
        # a demo that does not end dumps its threads on SIGABRT, for the failure's message
        env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONFAULTHANDLER": "1"},
        preexec_fn=in_a_terminal,
    )
    seen: list[str] = []
    try:
        for line in demo.stdout:
            seen.append(line)
            if line.startswith("Attach a debugger to 127.0.0.1:"):
                break
        text = "".join(seen)
        assert "Traceback" not in text, text
        assert "usage: python -m aml_debug_magics" in text
        assert "Attach a debugger to 127.0.0.1:" in text
        demo.send_signal(signal.SIGINT)  # the user's Ctrl-C
        try:
            code = demo.wait(30)
        except subprocess.TimeoutExpired:
            demo.send_signal(signal.SIGABRT)
            raise AssertionError(
                "the demo did not end on Ctrl-C; its threads:\n" + demo.stdout.read()
            ) from None
        assert code == 130
        assert "Traceback" not in demo.stdout.read()
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert children_of() == []


# -- launch.json names ------------------------------------------------------------------------


class NothingRuns:
    def start(self, events) -> None: ...

    def stop(self) -> None: ...


def test_two_rows_running_the_same_script_get_their_own_launch_json_entries(tmp_path):
    from aml_debug_magics.node.announce import Announcement

    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    steps = [StepSpec("first", tmp_path / "first", "train.py"),
             StepSpec("second", tmp_path / "second", "train.py")]
    launch_json = tmp_path / ".vscode" / "launch.json"
    request = DebugRequest("%aml_debug_pipeline p", steps, launch_json=launch_json)
    session = DebugSession(request, NothingRuns(), TextView(write=lambda line: None)).start()

    def announce(port: int) -> None:
        for step in steps:
            session.step_news(step.name, Announcement(
                ("127.0.0.1",), port, script=str(step.script), cwd=str(step.source_directory)))
            port += 1

    def names() -> list[str]:
        return [c["name"] for c in json.loads(launch_json.read_text())["configurations"]]

    announce(40001)
    session.write_launch_json()
    first = names()
    assert len(first) == 2 and len(set(first)) == 2
    announce(40011)  # the same steps, run again: their entries are replaced, not added
    session.write_launch_json()
    assert names() == first
    session.stop()


# -- the watchdog -----------------------------------------------------------------------------


KERNEL_WITH_A_FORKING_SCRIPT = textwrap.dedent(
    """\
    import sys, time
    from aml_debug_magics.targets.local import LocalProcess

    process = LocalProcess(sys.argv[1], debug=False,
                           on_line=lambda line: print(line, flush=True)).start()
    process.wait()  # the script itself has ended, and what it left running with it
    print("SCRIPT ENDED", flush=True)
    time.sleep(600)
    """
)
FORKING_SCRIPT = textwrap.dedent(
    """\
    import os, time
    child = os.fork()
    if child == 0:  # a data loader's worker, left behind: it keeps the output pipe open
        time.sleep(3600)
        os._exit(0)
    print("CHILD", child, flush=True)
    """
)


def test_the_forked_child_of_a_script_that_ended_ends_with_it(tmp_path):
    """A data loader's worker the script forked and left running: once the script has ended,
    ``LocalProcess.wait`` ends what is left of its process group (on Azure ML a job's
    processes end with its main one), so a kernel killed afterwards leaves nothing either."""
    (tmp_path / "forks.py").write_text(FORKING_SCRIPT)
    kernel = subprocess.Popen(
        [sys.executable, "-c", KERNEL_WITH_A_FORKING_SCRIPT, str(tmp_path / "forks.py")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    child = 0
    try:
        for line in kernel.stdout:
            if line.startswith("CHILD"):
                child = int(line.split()[1])
            if line.startswith("SCRIPT ENDED"):
                break
        assert child, f"the script did not fork: {kernel.poll()}"
        assert child not in {p.pid for p in live_processes()}  # ended when wait() returned
        kernel.send_signal(signal.SIGKILL)
        kernel.wait()
        assert child not in {p.pid for p in live_processes()}
    finally:
        if kernel.poll() is None:
            kernel.kill()
            kernel.wait()
        if child and child in {p.pid for p in live_processes()}:
            os.kill(child, signal.SIGKILL)


def start_time(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[19])


def test_the_watchdog_never_ends_a_process_that_took_a_recorded_pid(tmp_path):
    """The watchdog is told of a group whose leader has since ended and whose number now
    belongs to an unrelated process (a new session leader, started later): the kernel dies,
    and the unrelated process must live on."""
    from aml_debug_magics import reaper

    unrelated = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                                 start_new_session=True)
    try:
        watchdog = subprocess.Popen([sys.executable, "-I", "-S", reaper.__file__],
                                    stdin=subprocess.PIPE, start_new_session=True)
        recorded_start = start_time(unrelated.pid) - 100  # the group the kernel started, earlier
        watchdog.stdin.write(f"+{unrelated.pid} {recorded_start}\n".encode())
        watchdog.stdin.close()  # the kernel dies
        assert watchdog.wait(30) == 0
        assert unrelated.poll() is None
    finally:
        unrelated.kill()
        unrelated.wait()
