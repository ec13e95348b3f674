"""Bad input, secrets and the panel's words: each mistake is one line, no signature is shown.

The magics are driven as a user types them (``ip.run_line_magic``); the pipelines are built with
the real SDK classes. Where a download would reach Azure storage, the SDK's own call that does
(``FileDataset.download``, ``Datastore.get(...).download``) is replaced, and says so; the node's
gate runs for real, in a network namespace of its own where the test needs the node's address.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import subprocess
import sys
import textwrap
import threading
import types
from pathlib import Path

import pytest
from conftest import REPO, need_python_script_step, wait_for
from IPython.core.error import UsageError
from netns import namespaces, node_network, skip_without_namespaces
from test_azureml import StandInWorkspace, project, start  # noqa: F401  (project: a fixture)

from aml_debug_magics.node.announce import Announcement, AttachOutcome
from aml_debug_magics.node.gate import DebugGate, parse_allow
from aml_debug_magics.records import DebugRequest, ExternalInput, Status, StepSpec
from aml_debug_magics.session import DebugSession, current_session
from aml_debug_magics.sources.inputs import resolve
from aml_debug_magics.targets.environment import allowed_sources
from aml_debug_magics.targets.workspace import SdkWorkspace
from aml_debug_magics.ui.text import TextView

SECRET = "AbC%2Bd3f"
SIGNED = f"https://acct.dfs.core.windows.net/data/raw/?sv=2021-08-06&sig={SECRET}&se=2030"
SIGNED_FORMS = {  # as given, a URL inside a URL, a URL inside JSON
    "plain": SIGNED,
    "url-encoded": f"https%3A%2F%2Facct.blob.core.windows.net%2Fd%3Fsv%3D1%26sig%3D{SECRET}%26se",
    "json-escaped": f"https://acct.blob.core.windows.net/d?sv=1\\u0026sig={SECRET}\\u0026se=1",
}


def no_secret_in(text: str) -> bool:
    return SECRET not in text and "%2Bd3f" not in text and "REDACTED" in text


# -- 1. secrets ------------------------------------------------------------------------------


@pytest.fixture
def signed_pipeline(ip, tmp_path, monkeypatch):
    """A step reading a File dataset made from a signed URL, as a user pastes one."""
    need_python_script_step()
    monkeypatch.setenv("AML_DEBUG_CACHE", str(tmp_path / "cache"))
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "step.py").write_text("import sys\nprint('read', sys.argv[2])\n")
    assert ip.run_cell(textwrap.dedent(f"""\
        from azureml.core import Dataset
        from azureml.pipeline.steps import PythonScriptStep
        files = Dataset.File.from_files(path={SIGNED!r}, validate=False)
        step = PythonScriptStep(name="train", script_name="step.py", source_directory="src",
                                arguments=["--in", files.as_named_input("raw").as_mount()],
                                compute_target="cpu-cluster")
        """)).success
    return tmp_path


def test_a_signed_dataset_url_is_redacted_in_the_refusal(ip, signed_pipeline):
    with pytest.raises(UsageError) as refused:
        ip.run_line_magic("aml_debug_pipeline", "step --timeout 1")
    message = str(refused.value)
    assert "needs an Azure ML workspace to download" in message
    assert no_secret_in(message), message


@pytest.mark.parametrize("form", sorted(SIGNED_FORMS))
def test_a_signed_url_given_to_input_is_redacted_in_the_refusal(ip, signed_pipeline, form):
    given = shlex.quote(f"raw={SIGNED_FORMS[form]}")
    with pytest.raises(UsageError) as refused:
        ip.run_line_magic("aml_debug_pipeline", f"step --timeout 1 --input {given}")
    message = str(refused.value)
    assert "does not exist" in message and "\n" not in message
    assert no_secret_in(message), message


def test_download_lines_and_a_failed_download_never_show_the_signature(
    ip, signed_pipeline, monkeypatch, capsys
):
    """``FileDataset.download`` (the SDK's call that reaches Azure storage) is replaced: it
    writes a part, then fails as the SDK does, quoting the URL it could not read."""
    from azureml.data.file_dataset import FileDataset

    def download(self, target_path=None, overwrite=False, **_):
        Path(target_path, "part-0.txt").write_text("x" * 1000)
        raise RuntimeError(f"AuthenticationFailed reading {SIGNED}")

    monkeypatch.setattr(FileDataset, "download", download)
    ip.user_ns["ws"] = object()
    with pytest.raises(UsageError) as refused:
        ip.run_line_magic("aml_debug_pipeline", "step --workspace ws --timeout 1")
    message = str(refused.value)
    assert "cannot download 'raw'" in message and no_secret_in(message), message
    shown = capsys.readouterr().out
    assert "raw: downloading the FileDataset" in shown and no_secret_in(shown), shown


# -- 2. the SSH tunnel arrives at the gate from the node's own address -----------------------

PROBE = textwrap.dedent(
    """\
    import sys
    sys.path.insert(0, sys.argv[3])
    from dap_client import DapClient
    client = DapClient.connect(sys.argv[1], int(sys.argv[2]))
    try:
        client.request("initialize", timeout=10, clientID="probe", adapterID="debugpy")
        print("answered")
    except Exception as error:
        print("refused", type(error).__name__)
    finally:
        client.close()
    """
)


def test_the_default_allowlist_admits_a_tunnel_through_the_nodes_sshd(tmp_path, start_local):
    """The node is a network namespace (tests/netns.py) running the bootstrap with the
    allowlist ``--allow auto`` sends. ``ssh -L PORT:NODE_IP:PORT`` makes the node's sshd
    connect to the node's own address; a debug-protocol client started on the node and
    connecting to that address arrives at the gate exactly so."""
    skip_without_namespaces()
    script = tmp_path / "long.py"
    script.write_text("import time\nfor _ in range(600):\n    time.sleep(0.1)\n")
    with node_network() as node:
        process = start_local(script, timeout=60, launcher=node.launcher,
                              listen="0.0.0.0:0", allow=allowed_sources("auto"))
        assert process.announced.wait(30), list(process.last_lines)
        assert process.announcement.addresses[0] == node.address
        probed = subprocess.run(
            [*node.launcher, sys.executable, "-c", PROBE, node.address,
             str(process.announcement.port), str(REPO / "tests")],
            capture_output=True, text=True, timeout=60,
        )
        assert probed.stdout.strip() == "answered", (probed.stdout, probed.stderr,
                                                     list(process.last_lines))
        process.stop()
    assert namespaces() == []


# -- 3. allowlist input ----------------------------------------------------------------------


def test_an_allow_network_with_host_bits_set_is_refused_naming_it(ip, tmp_path):
    (tmp_path / "train.py").write_text("print('hi')\n")
    with pytest.raises(UsageError) as refused:
        ip.run_line_magic("aml_debug_run", "--allow 10.0.0.4/8 train.py")
    message = str(refused.value)
    assert "10.0.0.4/8 has host bits set: give the network 10.0.0.0/8 or the address " \
        "10.0.0.4 alone" in message and "\n" not in message
    assert current_session("run") is None


@pytest.mark.parametrize("everyone", ["0.0.0.0/0", "::/0", "10.0.0.0/8,0.0.0.0/0"])
def test_a_network_of_every_address_is_warned_about_as_any_is(project, everyone):  # noqa: F811
    workspace = StandInWorkspace([])
    session, target, printed = start(project, workspace, allow=everyone)
    wait_for(lambda: workspace.submitted, 30, "the submit")
    wait_for(lambda: session.note.startswith(
        f"--allow {everyone}: anyone who reaches the node's port can attach"),
        10, "the warning on the panel")
    session.stop()


def gate_admits(listener: socket.socket, allow: str, source: str) -> bool:
    """Whether the real gate, in front of a stand-in for debugpy's loopback port, hands on a
    debug-protocol connection made from ``source`` to ``listener``."""
    debugpy_side = socket.create_server(("127.0.0.1", 0))
    ours, theirs = socket.socketpair()
    gate = DebugGate(listener, theirs, allow=parse_allow(allow))
    serving = threading.Thread(target=gate.serve, daemon=True)
    serving.start()
    try:
        ours.sendall(b"upstream %d\n" % debugpy_side.getsockname()[1])
        client = socket.create_connection((source, listener.getsockname()[1]), timeout=10)
        client.sendall(b"Content-Length: 2\r\n\r\n{}")
        debugpy_side.settimeout(10)
        client.settimeout(10)
        try:
            handed_on, _ = debugpy_side.accept()
        except TimeoutError:
            with contextlib.suppress(ConnectionResetError):
                assert client.recv(1) == b""  # closed by the gate
            return False
        assert handed_on.recv(100).startswith(b"Content-Length")
        handed_on.close()
        return True
    finally:
        client.close()
        ours.close()  # the script's end: the gate stops
        serving.join(15)
        assert not serving.is_alive()
        debugpy_side.close()


def test_an_ipv4_mapped_source_matches_its_ipv4_entry():
    dual_stack = socket.create_server(("::", 0), family=socket.AF_INET6, dualstack_ipv6=True)
    assert gate_admits(dual_stack, "127.0.0.1", "127.0.0.1")  # arrives as ::ffff:127.0.0.1
    ipv4 = socket.create_server(("127.0.0.1", 0))
    assert gate_admits(ipv4, "::ffff:127.0.0.1", "127.0.0.1")
    ipv4 = socket.create_server(("127.0.0.1", 0))
    assert not gate_admits(ipv4, "::ffff:10.0.0.5", "127.0.0.1")


# -- 4. a long inline --sample-request -------------------------------------------------------


@pytest.mark.parametrize("size", [300, 4000, 5000])
def test_a_long_inline_sample_request_is_taken_as_json(ip, tmp_path, size):
    (tmp_path / "score.py").write_text("def init():\n    pass\n\ndef run(data):\n    return data\n")
    body = json.dumps({"data": "x" * size})
    with pytest.raises(UsageError, match=r"^--target docker needs --image"):
        ip.run_line_magic("aml_debug_deploy", "--entry-script score.py --target docker "
                          f"--sample-request {shlex.quote(body)}")
    with pytest.raises(UsageError, match=r"^--sample-request is not JSON"):
        ip.run_line_magic("aml_debug_deploy", "--entry-script score.py "
                          f"--sample-request {shlex.quote(body[:-1])}")


# -- 5. options after a variable, the words of a row, text after the magic returned ----------


def test_options_after_a_script_run_config_variable_are_options(ip, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text("print('trained')\n")
    assert ip.run_cell("from azureml.core import ScriptRunConfig\n"
                       "src = ScriptRunConfig(source_directory='src', script='train.py')").success
    ip.run_line_magic("aml_debug_run", "src --timeout 5 --port 0")
    session = current_session("run")
    try:
        assert session.request.timeout == 5
        assert [r.step for r in session.rows] == ["train"]
    finally:
        session.stop()
    with pytest.raises(UsageError, match=r"^'src' is a ScriptRunConfig: only options may follow "
                       r"its name \(got 'extra'\)"):
        ip.run_line_magic("aml_debug_run", "src extra --timeout 5")


class QuietTarget:
    def start(self, events) -> None:
        pass

    def stop(self) -> None:
        pass


def test_an_attached_row_reads_right_and_text_stops_when_the_session_ends(tmp_path):
    printed: list[str] = []
    request = DebugRequest("%aml_debug_run job.py", [StepSpec("job", Path(tmp_path), "job.py")])
    session = DebugSession(request, QuietTarget(), TextView(write=printed.append)).start()
    announcement = Announcement(addresses=("127.0.0.1",), port=4000, attach_deadline=2e9)
    session.step_news("job", announcement)
    session.step_news("job", AttachOutcome(attached=True))
    attached = [p for p in printed if p.startswith("[job] attached")]
    assert attached == ["[job] attached to 127.0.0.1:4000"], printed
    for second in range(10):  # progress in a detail, as a follower reports each poll
        session.step_status("job", Status.ATTACHED, f"running (0:{second:02d})")
    assert sum(p.startswith("[job] attached") for p in printed) == 1, printed
    session.step_status("job", Status.RUNNING)
    assert printed[-1].startswith("[job] running")
    session.target_done(failed=False)
    assert printed[-1] == "%aml_debug_run job.py: finished"
    count = len(printed)
    session.step_status("job", Status.FAILED, "late news")
    session.target_note("late note")
    assert len(printed) == count, printed[count:]


# -- 6. the download cache -------------------------------------------------------------------


def workspace_named(name: str) -> types.SimpleNamespace:
    """What the SDK's ``Workspace`` says of itself (subscription, resource group, name)."""
    return types.SimpleNamespace(subscription_id="sub-1", resource_group="rg", name=name)


def test_the_same_datastore_path_in_two_workspaces_is_two_downloads(tmp_path, monkeypatch):
    """``Datastore.get`` (the SDK's call that reaches the workspace) is replaced by one that
    returns each workspace's own datastore; its ``download`` writes what that workspace holds."""
    from azureml.core import Datastore

    class StandInDatastore:
        def __init__(self, workspace) -> None:
            self.workspace = workspace

        def download(self, target_path, prefix=None, overwrite=False, show_progress=True):
            Path(target_path, prefix).mkdir(parents=True)
            Path(target_path, prefix, "part-0.txt").write_text(self.workspace.name)

    monkeypatch.setattr(Datastore, "get", staticmethod(lambda ws, name: StandInDatastore(ws)))
    monkeypatch.setenv("AML_DEBUG_CACHE", str(tmp_path / "cache"))
    data = ExternalInput(name="raw", kind="DataReference", points_to="workspaceblobstore/data")
    spec = StepSpec("train", tmp_path, "train.py", external=[data])
    seen = {}
    for name in ("dev", "prod", "dev"):
        paths = resolve([spec], {}, workspace=SdkWorkspace(workspace_named(name)),
                        progress=lambda line: None)
        seen.setdefault(name, set()).add((paths["train.raw"] / "part-0.txt").read_text())
    assert seen == {"dev": {"dev"}, "prod": {"prod"}}


KERNEL = textwrap.dedent(
    """\
    import sys, time
    from pathlib import Path
    from aml_debug_magics.records import ExternalInput
    from aml_debug_magics.sources.inputs import fetch

    class Workspace:  # the workspace seam: its download blocks until the test says go
        resource_id = "sub-1/rg/dev"

        def download(self, data, folder):
            Path(sys.argv[1], "downloads").open("a").write("one\\n")
            (folder / "part-0.txt").write_text("first half ")
            go = Path(sys.argv[1], "go")
            while not go.exists():
                time.sleep(0.05)
            with (folder / "part-0.txt").open("a") as part:
                part.write("second half")
            return folder

    data = ExternalInput(name="raw", kind="DataReference", points_to="workspaceblobstore/data")
    seen = fetch(data, Workspace(), progress=lambda line: print(line, flush=True))
    print("DONE", (seen / "part-0.txt").read_text(), flush=True)
    """
)


def test_two_kernels_fetching_one_input_at_once_share_one_download(tmp_path):
    env = {**os.environ, "AML_DEBUG_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": str(REPO)}
    kernels: list[subprocess.Popen] = []
    outputs: list[list[str]] = [[], []]

    def start_kernel(number: int) -> None:
        kernel = subprocess.Popen([sys.executable, "-c", KERNEL, str(tmp_path)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        kernels.append(kernel)
        threading.Thread(target=lambda: outputs[number].extend(kernel.stdout),
                         daemon=True).start()

    downloads = tmp_path / "downloads"
    try:
        start_kernel(0)
        wait_for(downloads.exists, 30, "the first kernel's download to begin")
        start_kernel(1)
        wait_for(lambda: any("another kernel is downloading" in line for line in outputs[1])
                 or downloads.read_text().count("one") > 1, 30, "the second kernel to wait")
        (tmp_path / "go").touch()
        for kernel in kernels:
            assert kernel.wait(60) == 0, outputs
    finally:
        (tmp_path / "go").touch()
        for kernel in kernels:
            kernel.kill()
            kernel.wait()
    assert downloads.read_text().count("one") == 1, outputs
    for lines in outputs:
        assert "DONE first half second half\n" in lines, outputs
    assert any("using the copy downloaded before" in line for line in outputs[1]), outputs
    left = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert not [name for name in left if "partial" in name], left
