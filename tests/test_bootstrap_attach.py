"""End to end: a real debug-protocol client attaches to a real script under the bootstrap."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from conftest import REPO, children_of, port_refuses, ship_node_files, wait_for
from dap_client import DapClient
from netns import namespaces, node_network, skip_without_namespaces
from node_pythons import NODE_VERSIONS, find_python, installed, node_python

from aml_debug_magics.launch import attach_config
from aml_debug_magics.node.announce import PortClosed, parse_line

TRAIN = textwrap.dedent(
    """\
    import sys

    learning_rate = float(sys.argv[1])
    steps = []
    for step in range(3):
        loss = 10.0 / (step + 1) * learning_rate
        steps.append(loss)
    print("final loss", steps[-1], flush=True)
    sys.exit(7)
    """
)
BREAK_LINE = 7  # steps.append(loss)


@pytest.fixture
def remote_and_local(tmp_path):
    """The script as the node runs it, and a copy in another folder as the user's editor has it,
    so a stop proves the attach config's pathMappings (a wrong mapping still 'verifies')."""
    remote, local = tmp_path / "node", tmp_path / "laptop"
    remote.mkdir()
    local.mkdir()
    (remote / "train.py").write_text(TRAIN)
    shutil.copy(remote / "train.py", local / "train.py")
    return remote / "train.py", local / "train.py"


def attach_and_inspect(process, local_script) -> dict[str, str]:
    assert process.announced.wait(30), list(process.last_lines)
    config = attach_config(process.announcement, local_script.parent)
    client = DapClient.connect(config["connect"]["host"], config["connect"]["port"])
    try:
        client.attach(config, {str(local_script): [BREAK_LINE]})
        frame = client.wait_stopped()
        assert frame["line"] == BREAK_LINE
        assert frame["source"]["path"] == str(local_script)
        seen = client.locals_of(frame)
        seen["argv"] = client.evaluate(frame, "sys.argv[1:]")
        client.resume()
        second = client.wait_stopped()
        seen["second_step"] = client.locals_of(second)["step"]
        client.request("setBreakpoints", source={"path": str(local_script)}, breakpoints=[])
        client.resume()
        client.event("terminated", timeout=30)
    finally:
        client.close()
    return seen


def test_attach_stops_at_breakpoint_reads_variables_and_script_finishes(
    remote_and_local, start_local
):
    remote_script, local_script = remote_and_local
    process = start_local(remote_script, "0.5", timeout=60)
    seen = attach_and_inspect(process, local_script)
    assert seen["step"] == "0"
    assert seen["loss"] == "5.0"
    assert seen["argv"] == "['0.5']"
    assert seen["second_step"] == "1"
    assert process.wait(30) == 7
    assert "final loss 1.6666666666666667" in process.last_lines
    assert "Debugger attached = True" in process.last_lines
    assert port_refuses("127.0.0.1", process.announcement.port)


def test_bare_connects_before_the_attach_do_not_break_it(remote_and_local, start_local):
    remote_script, local_script = remote_and_local
    process = start_local(remote_script, "1.0", timeout=60)
    assert process.announced.wait(30)
    port = process.announcement.port
    for _ in range(5):  # a port scanner, nc -z, a health check
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as http_probe:
        http_probe.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert http_probe.recv(100) == b""  # closed by the gate, never seen by debugpy
    seen = attach_and_inspect(process, local_script)
    assert seen["loss"] == "10.0"
    assert process.wait(30) == 7
    assert any("did not speak the debug protocol" in line for line in process.last_lines)


def test_missed_deadline_runs_the_script_closes_the_port_and_ends_the_adapter(
    remote_and_local, start_local
):
    remote_script, _ = remote_and_local
    process = start_local(remote_script, "2", timeout=1.5)
    assert process.wait(60) == 7
    lines = list(process.last_lines)
    assert "Debugger attached = False" in lines
    assert "final loss 6.666666666666667" in lines
    assert lines.index("Debugger attached = False") < lines.index("final loss 6.666666666666667")
    assert port_refuses("127.0.0.1", process.announcement.port)
    assert process.outcome is not None and process.outcome.attached is False


def test_on_timeout_exit_does_not_run_the_script(remote_and_local, start_local):
    remote_script, _ = remote_and_local
    process = start_local(remote_script, "2", timeout=1, on_timeout="exit")
    assert process.wait(60) == 3
    assert not any(line.startswith("final loss") for line in process.last_lines)


def test_a_client_that_sends_garbage_after_the_header_cannot_orphan_the_adapter(
    remote_and_local, start_local
):
    """debugpy's adapter, fed a bad message, keeps its session (and port) open for good; the
    bootstrap ends it at the deadline anyway (the autouse fixture checks no adapter is left)."""
    remote_script, _ = remote_and_local
    process = start_local(remote_script, "1", timeout=2)
    assert process.announced.wait(30)
    junk = socket.create_connection(("127.0.0.1", process.announcement.port), timeout=5)
    junk.sendall(b"Content-Length: 9\r\n\r\nnot json!")
    try:
        assert process.wait(60) == 7
    finally:
        junk.close()
    assert port_refuses("127.0.0.1", process.announcement.port)


def test_sigterm_while_waiting_leaves_nothing_running(remote_and_local, start_local):
    """The bootstrap's SIGTERM handler ends its gate and adapter and dies of the signal, within
    Stop's grace (a signal that came while the gate's watcher thread was being started once
    made the handler raise: the process then exited 1, or was killed at the end of the grace)."""
    remote_script, _ = remote_and_local
    process = start_local(remote_script, "1", timeout=120)
    assert process.announced.wait(30)
    process.stop()
    assert process.returncode == -15
    assert port_refuses("127.0.0.1", process.announcement.port)


def _stdio_adapter():
    """debugpy's adapter over stdio, as VS Code runs it for a 'listen' attach configuration."""
    adapter = subprocess.Popen(
        [sys.executable, "-m", "debugpy.adapter"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    return adapter, DapClient(adapter.stdout, adapter.stdin)


@pytest.mark.parametrize("client_first", [True, False], ids=["client-listens-first", "late"])
def test_connect_mode_reaches_a_listening_client(remote_and_local, tmp_path, client_first):
    from conftest import free_port

    from aml_debug_magics.node.announce import LogReader

    remote_script, local_script = remote_and_local
    port = free_port()
    adapter, client = _stdio_adapter()
    bootstrap = None
    try:
        def start_bootstrap():
            return subprocess.Popen(
                [sys.executable, "-u", "-m", "aml_debug_magics.node.bootstrap", "--connect",
                 f"127.0.0.1:{port}", "--timeout", "60", "--", str(remote_script), "3"],
                stdout=subprocess.PIPE, text=True,
            )

        early_output: list[str] = []
        if not client_first:
            bootstrap = start_bootstrap()
            while "connecting to the debugger" not in (early_output or [""])[-1]:
                early_output.append(bootstrap.stdout.readline())
                assert early_output[-1], "the bootstrap ended before connecting"
            time.sleep(1)  # let it meet a refused port at least once before the client listens
        client.request("initialize", clientID="vscode", adapterID="debugpy", pathFormat="path",
                       linesStartAt1=True, columnsStartAt1=True)
        reader = LogReader()
        config = {"name": "listen", "type": "debugpy", "request": "attach",
                  "listen": {"host": "127.0.0.1", "port": port},
                  "pathMappings": [{"localRoot": str(local_script.parent),
                                    "remoteRoot": str(remote_script.parent)}]}
        attach_seq = client.send("attach", **config)
        if client_first:
            bootstrap = start_bootstrap()
        client.event("initialized", timeout=60)
        client.request("setBreakpoints", source={"path": str(local_script)},
                       breakpoints=[{"line": BREAK_LINE}])
        client.request("configurationDone")
        client.response(attach_seq)
        frame = client.wait_stopped()
        assert frame["source"]["path"] == str(local_script)
        assert client.locals_of(frame)["learning_rate"] == "3.0"
        client.request("setBreakpoints", source={"path": str(local_script)}, breakpoints=[])
        client.resume()
        output = "".join(early_output) + bootstrap.communicate(timeout=60)[0]
        assert bootstrap.returncode == 7
        news = [n for line in output.splitlines() for n in reader.feed(line)]
        assert news[0].mode == "connect" and news[0].port == port
        assert "Debugger attached = True" in output
        assert "final loss 10.0" in output
    finally:
        client.close()
        for process in (bootstrap, adapter):
            if process and process.poll() is None:
                process.kill()
                process.wait()


GUIDE_SCRIPT = textwrap.dedent(
    """\
    import argparse
    import debugpy

    parser = argparse.ArgumentParser()
    parser.add_argument("--remote_debug", action="store_true")
    parser.add_argument("--remote_debug_connection_timeout", type=int, default=300)
    parser.add_argument("--remote_debug_client_ip")
    parser.add_argument("--remote_debug_port", type=int, default=5678)
    args = parser.parse_args()
    if args.remote_debug:
        print(f"Timeout for debug connection: {args.remote_debug_connection_timeout}")
        print(f"ip_address: {args.remote_debug_client_ip}")
        debugpy.listen(address=(args.remote_debug_client_ip, args.remote_debug_port))
        debugpy.wait_for_client()
        print(f"Debugger attached = {debugpy.is_client_connected()}")
    answer = 6 * 7
    print("answer", answer)
    """
)


def test_a_script_with_the_guides_boilerplate_runs_and_attaches(tmp_path, start_local):
    script = tmp_path / "guide_train.py"
    script.write_text(GUIDE_SCRIPT)
    process = start_local(
        script, "--remote_debug", "--remote_debug_client_ip", "10.9.9.9", timeout=60
    )
    assert process.announced.wait(30)
    announced = process.announcement
    config = attach_config(announced, tmp_path)
    client = DapClient.connect("127.0.0.1", announced.port)
    try:
        client.attach(config, {str(script): [17]})
        frame = client.wait_stopped()
        assert frame["line"] == 17
        assert client.locals_of(frame)["answer"] == "42"
        client.resume()
    finally:
        client.close()
    assert process.wait(30) == 0
    assert "answer 42" in process.last_lines
    assert process.announcement == announced  # the guide's own lines did not override ours
    assert any("debugpy.listen(); already listening" in line for line in process.last_lines)


def test_many_probes_in_parallel_with_the_attach(remote_and_local, start_local):
    remote_script, local_script = remote_and_local
    process = start_local(remote_script, "1.0", timeout=60)
    assert process.announced.wait(30)
    stop = threading.Event()

    def probe():
        while not stop.is_set():
            try:
                socket.create_connection(("127.0.0.1", process.announcement.port), 2).close()
            except OSError:
                return

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    try:
        seen = attach_and_inspect(process, local_script)
    finally:
        stop.set()
        prober.join(5)
    assert seen["step"] == "0"
    assert process.wait(30) == 7


@pytest.mark.parametrize("version", NODE_VERSIONS)
def test_the_shipped_files_alone_run_and_attach_on_each_node_python(
    version, remote_and_local, start_local
):
    """The three shipped files copied alone into the script's folder (no package on the path),
    run by a Python holding only debugpy, as on an Azure ML node; a real client stops in them."""
    python = node_python(version)
    assert installed(python) - {"pip", "setuptools", "wheel"} == {"debugpy"}
    remote_script, local_script = remote_and_local
    ship_node_files(remote_script.parent)
    process = start_local(
        remote_script, "0.5", timeout=60, python=python, node_files=remote_script.parent
    )
    assert "aml_debug_magics" not in " ".join(process.command[:3])
    seen = attach_and_inspect(process, local_script)
    assert (seen["step"], seen["loss"], seen["argv"]) == ("0", "5.0", "['0.5']")
    assert process.wait(30) == 7
    assert "final loss 1.6666666666666667" in process.last_lines
    version_line = subprocess.run(
        [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert version_line == version


def test_a_node_with_its_own_network_announces_its_eth0_and_is_attached_from_here(
    remote_and_local, start_local
):
    """The node is a network namespace with its own eth0 (tests/netns.py); the bootstrap runs
    there from the shipped files on the oldest node Python the machine has; the test client
    attaches from this machine over the veth pair to the announced address."""
    skip_without_namespaces()
    version = next((v for v in NODE_VERSIONS if find_python(v)), None)
    if version is None:
        pytest.skip("no node Python found")
    python = node_python(version)
    remote_script, local_script = remote_and_local
    ship_node_files(remote_script.parent)
    with node_network() as node:
        process = start_local(
            remote_script, "0.5", timeout=60, python=python, node_files=remote_script.parent,
            launcher=node.launcher, listen="0.0.0.0:0",
        )
        assert process.announced.wait(30), list(process.last_lines)
        assert process.announcement.addresses[0] == node.address
        wait_for(lambda: f"ip_address: {node.address}" in process.last_lines, 10, "guide line")
        seen = attach_and_inspect(process, local_script)
        assert (seen["step"], seen["loss"]) == ("0", "5.0")
        assert process.wait(30) == 7
    assert namespaces() == []


LONG_SCRIPT = "import time\nfor _ in range(600):\n    time.sleep(0.1)\n"


def dap_answers(host: str, port: int) -> bool:
    """Whether a debug-protocol ``initialize`` on ``host:port`` gets an answer."""
    try:
        client = DapClient.connect(host, port)
    except OSError:
        return False
    try:
        client.request("initialize", timeout=10, clientID="probe", adapterID="debugpy")
        return True
    except Exception:
        return False
    finally:
        client.close()


def test_after_the_debugger_leaves_the_port_takes_another_only_within_the_window(
    tmp_path, start_local
):
    script = tmp_path / "long.py"
    script.write_text(LONG_SCRIPT)
    process = start_local(script, timeout=60, reattach_window=2)
    assert process.announced.wait(30), list(process.last_lines)
    config = attach_config(process.announcement, tmp_path)
    host, port = config["connect"]["host"], config["connect"]["port"]
    first = DapClient.connect(host, port)
    first.attach(config, {})
    first.close()
    assert dap_answers(host, port)  # within the window: a second debugger may attach
    closed = wait_for(
        lambda: next((n for n in map(parse_line, process.last_lines) if isinstance(n, PortClosed)),
                     None), 15, "the port to close after the window",
    )
    assert "nobody re-attached within 2 s" in closed.reason
    assert port_refuses(host, port)
    assert process.returncode is None  # the script runs on


def test_sources_not_allowed_are_closed_before_debugpy_sees_them(tmp_path, start_local):
    script = tmp_path / "long.py"
    script.write_text(LONG_SCRIPT)
    refused = start_local(script, timeout=60, allow="10.99.99.0/24")
    allowed = start_local(script, timeout=60, allow="10.99.99.0/24,127.0.0.1")
    for process in (refused, allowed):
        assert process.announced.wait(30), list(process.last_lines)
    for _ in range(3):
        assert not dap_answers("127.0.0.1", refused.announcement.port)
    wait_for(lambda: any("refused 1 connection(s) from addresses not allowed" in line
                         for line in refused.last_lines), 10, "one line for the refusals")
    assert sum("refused" in line for line in refused.last_lines) == 1  # not one per probe
    assert dap_answers("127.0.0.1", allowed.announcement.port)


def test_when_the_gate_dies_the_row_says_the_port_is_gone_and_the_script_runs_on(
    remote_and_local, start_local
):
    remote_script, _ = remote_and_local
    process = start_local(remote_script, "0.5", timeout=600)
    assert process.announced.wait(60), list(process.last_lines)
    gate = wait_for(lambda: next((pid for pid in children_of(process.pid)
                                  if b"gate.py" in open(f"/proc/{pid}/cmdline", "rb").read()),
                                 None), 30, "the gate process")
    os.kill(gate, signal.SIGKILL)
    try:
        closed = wait_for(lambda: next(
            (n for n in map(parse_line, process.last_lines) if isinstance(n, PortClosed)), None
        ), 60, "the port-gone line")
    except AssertionError:
        raise AssertionError(f"no port-gone line in {list(process.last_lines)}") from None
    assert "the debug port is gone: its gate process ended" in closed.reason
    try:
        exit_code = process.wait(120)  # far less than its 600 s to attach
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"the script still waits for a debugger after its gate died: {list(process.last_lines)}"
        ) from None
    assert exit_code == 7
    assert "final loss 1.6666666666666667" in process.last_lines
    news = [type(n).__name__ for n in map(parse_line, process.last_lines) if n is not None]
    assert news.index("Announcement") < news.index("PortClosed")  # never attachable again
    said = "\n".join(process.last_lines)
    assert "the debug port's gate process ended, so no debugger can attach" in said
    assert "no debugger attached within" not in said  # it did not wait out its 600 s


def test_a_wait_cancelled_before_it_begins_still_ends():
    """The gate can die, and cancel the wait, before debugpy's wait has begun (a busy machine
    between the announcement and the wait); debugpy drops such a cancel, the bootstrap must not."""
    cancel_first = textwrap.dedent(
        """\
        import time
        from aml_debug_magics.node.debugger import Debugger

        debugger = Debugger()
        debugger.listen_on_loopback()
        debugger.cancel_wait()  # what the gate's end does
        print("attached:", debugger.wait_until(time.time() + 600), flush=True)
        """
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", cancel_first], env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True, text=True, timeout=120,
        )
    except subprocess.TimeoutExpired as error:
        raise AssertionError(f"the wait ignored its cancel: {error.stdout!r}") from None
    assert done.stdout == "attached: False\n", done.stderr
