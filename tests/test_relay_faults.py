"""The storage relay under attack and faults: only the node's bytes reach the debugger, every
failure is said in one line, and no debuggee is left paused.

Storage is Azurite (tests/azurite.py), checking every token; the node is the bootstrap from
its shipped files on the node Pythons (3.8 and 3.13), on this machine, relaying through the
blobs only (``--via storage``: its debugpy listens on loopback behind the gate). The attacker
holds what every reader of the run's definition holds: the node's tokens (add-only on "up",
read-only on "down"). Nothing is faked.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import types

import pytest
from conftest import ship_node_files, wait_for
from dap_client import DapClient
from node_pythons import node_python
from relay_chains import make_chains
from test_relay import TRAIN, TRAIN_LOOP_LINE, NodeRun, storage  # noqa: F401

from aml_debug_magics.node import relay_wire
from aml_debug_magics.relay.end import ReverseRequestScreen

HERE = types.SimpleNamespace(launcher=[])  # the node's processes run on this machine


def message(body: dict) -> bytes:
    data = json.dumps(body).encode()
    return b"Content-Length: %d\r\n\r\n" % len(data) + data


OUTPUT = message({"seq": 900, "type": "event", "event": "output",
                  "body": {"category": "console", "output": "attacker text\n"}})
RUN_IN_TERMINAL = message({"seq": 901, "type": "request", "command": "runInTerminal",
                           "arguments": {"kind": "integrated", "cwd": "/",
                                         "args": ["touch", "/tmp/owned"]}})


def attacker_appends(chain: str, data: bytes) -> None:
    """Append ``data`` to the first blob of ``chain`` with the node's add-only token, as anyone
    who can read the run's environment variables can."""
    from azure.storage.blob import BlobClient

    BlobClient.from_blob_url(chain.split()[0]).append_block(data)


class Attached:
    """A node paused at a breakpoint in train.py, a debugger attached through the relay."""

    def __init__(self, tmp_path, endpoint: str, version: str, env: dict[str, str] | None = None,
                 notebook_endpoint: str | None = None) -> None:
        folder = tmp_path / "job"
        folder.mkdir()
        (folder / "train.py").write_text(TRAIN)
        ship_node_files(folder)
        self.folder = folder
        self.chains = make_chains(endpoint)
        self.ended: list[str] = []
        self.run = NodeRun(HERE, node_python(version), folder, self.chains, "--timeout", "120",
                           script_args=("--no-child",), env=env)
        self.relay = self.run.relay(on_end=self.ended.append)
        if notebook_endpoint:  # the notebook reaches storage another way (a proxy)
            self.relay._up = self.relay._up.replace(endpoint, notebook_endpoint)
            self.relay._down = self.relay._down.replace(endpoint, notebook_endpoint)
        self.port = self.relay.start()
        self.client = DapClient.connect("127.0.0.1", self.port, timeout=30)
        self.client.attach({"request": "attach"},
                           {str(folder / "train.py"): [TRAIN_LOOP_LINE]})
        frame = self.client.wait_stopped(60)
        assert frame["line"] == TRAIN_LOOP_LINE

    def runs_on(self, timeout: float = 60) -> list[str]:
        """The node detached the debugger: the script ran to its end, exit status 0."""
        assert self.run.process.wait(timeout) == 0, list(self.run.lines)
        assert "epoch 1 loss 2.5" in self.run.lines, list(self.run.lines)
        return list(self.run.lines)

    def relay_said(self, *ends: str) -> str:
        """The node's relay's last line, once it is printed (the relay may end after the
        script): it must begin with one of ``ends``."""
        return wait_for(lambda: next((line for line in self.run.lines if any(
            line.startswith(f"aml-debug: relay: {end}") for end in ends)), None), 30,
            f"the node's relay to say it {' or '.join(ends)}: {list(self.run.lines)}")

    def close(self) -> None:
        self.relay.stop()
        self.client.close()
        self.run.process.kill()
        self.run.process.wait(10)


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except OSError:
        return True
    return False


@pytest.mark.parametrize("version", ["3.8", "3.13"])
@pytest.mark.parametrize("forged", ["unsealed", "sealed with a guessed key"])
def test_a_frame_appended_with_the_nodes_token_never_reaches_the_debugger(
    version, forged, tmp_path, storage, monkeypatch  # noqa: F811
):
    """The attack: a DATA frame on channel 1 carrying an ``output`` event and a
    ``runInTerminal`` request, appended to "up" with the node's token. The frame fails its
    check: nothing of it reaches the client, the relay ends saying the stream was tampered
    with, the port refuses a re-attach, and the node is told (CLOSE, BYE): its debugger
    detaches and the paused script runs to its end. (An unsealed frame lacks the tag the
    reader waits for: with the paused node appending nothing after it, it ends as a frame that
    never completes, after ``PARTIAL_LIMIT``, shortened here.)"""
    monkeypatch.setattr(relay_wire, "PARTIAL_LIMIT", 2.0)
    session = Attached(tmp_path, storage, version)
    try:
        payload = OUTPUT + RUN_IN_TERMINAL
        if forged == "unsealed":  # the frame as the wire was before it was sealed
            frame = relay_wire._HEADER.pack(relay_wire.DATA, 1, len(payload)) + payload
        else:
            frame = relay_wire.FrameSeal(os.urandom(32)).seal(relay_wire.DATA, 1, payload)
        attacker_appends(session.chains.node_up, frame)
        wait_for(lambda: session.ended, 30, "the relay to end")
        assert len(session.ended) == 1 and "tampered with" in session.ended[0]
        seen = session.client.wait_closed(30)
        assert not any("attacker" in json.dumps(m) or m.get("command") == "runInTerminal"
                       for m in seen), seen
        assert refused(session.port)
        session.runs_on()
        session.relay_said("ended", "stopped")  # told by the notebook, or its own next append
    finally:
        session.close()


def test_garbage_on_up_ends_the_relay_and_the_script_runs_on(tmp_path, storage):  # noqa: F811
    session = Attached(tmp_path, storage, "3.13")
    try:
        attacker_appends(session.chains.node_up, b"\xff" * 64)
        wait_for(lambda: session.ended, 30, "the relay to end")
        assert "tampered with (not a frame" in session.ended[0]
        session.client.wait_closed(30)
        session.runs_on()
    finally:
        session.close()


def test_a_frame_that_never_completes_ends_the_relay(tmp_path, storage, monkeypatch):  # noqa: F811
    """A header promising more than ever comes (the relay appends whole frames, so this is
    someone else's): after ``PARTIAL_LIMIT`` the relay ends and says so."""
    monkeypatch.setattr(relay_wire, "PARTIAL_LIMIT", 2.0)
    session = Attached(tmp_path, storage, "3.13")
    try:
        attacker_appends(session.chains.node_up,
                         relay_wire._HEADER.pack(relay_wire.DATA, 1, 5000) + b"x" * 10)
        wait_for(lambda: session.ended, 30, "the relay to end")
        assert "never completed" in session.ended[0]
        session.runs_on()
    finally:
        session.close()


@pytest.mark.parametrize("deleted", ["up", "down"])
def test_a_deleted_relay_blob_ends_the_relay_on_both_ends(
    deleted, tmp_path, storage  # noqa: F811
):
    """"up" deleted: the notebook's next read is a 404 and the row's line says so; "down"
    deleted: the node's is, and it detaches. Either way the script runs on."""
    from azure.storage.blob import BlobClient
    from relay_chains import signed_url

    session = Attached(tmp_path, storage, "3.13")
    try:
        chain = session.chains.notebook_up if deleted == "up" else session.chains.notebook_down
        base = relay_wire.redacted(chain.split()[0])
        name = base.split("/azureml/", 1)[1]
        BlobClient.from_blob_url(signed_url(storage, name, delete=True)).delete_blob()
        session.runs_on()
        if deleted == "up":
            wait_for(lambda: session.ended, 30, "the relay to end")
            assert "was deleted (404)" in session.ended[0]
        else:
            assert "was deleted (404)" in session.relay_said("stopped")
        session.client.wait_closed(30)
    finally:
        session.close()


def test_stop_lets_the_node_read_its_bye_before_the_blobs_go(tmp_path, storage):  # noqa: F811
    """Stop while the script is paused at a breakpoint: the node reads CLOSE and BYE before
    "down" is deleted, detaches, and the script runs on at once (not at its window's end)."""
    from azure.storage.blob import BlobClient
    from relay_chains import signed_url

    session = Attached(tmp_path, storage, "3.13")
    try:
        session.relay.stop()
        session.runs_on(timeout=30)
        assert "the notebook ended it" in session.relay_said("ended")
        assert session.ended == []  # stopped by the notebook: not an end by itself
        for url in session.chains.notebook_down.split():
            name = relay_wire.redacted(url).split("/azureml/", 1)[1]
            assert not BlobClient.from_blob_url(signed_url(storage, name, read=True)).exists()
    finally:
        session.close()


class Proxy:
    """A TCP forwarder to storage for the notebook alone; :meth:`cut` makes storage unreachable
    from the notebook (connections refused and broken) while the node still reaches it."""

    def __init__(self, target: str) -> None:
        host, port = target.split("//", 1)[1].split("/", 1)[0].split(":")
        self._target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            self._open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        self._listener.close()
        for connection in self._open:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            connection.close()


def test_storage_lost_by_the_notebook_ends_its_relay_and_the_silent_node_detaches(
    tmp_path, storage, monkeypatch  # noqa: F811
):
    """The notebook loses storage for good (as when the kernel dies, or its network): its end
    gives up after ``GIVE_UP_AFTER`` (2 s here) and says so; it cannot tell the node, which
    hears nothing for its silence limit (5 s here, 90 s by default, against a heartbeat every
    second here, 20 s by default), detaches the debugger and lets the paused script run on."""
    monkeypatch.setattr(relay_wire, "GIVE_UP_AFTER", 2.0)
    monkeypatch.setattr(relay_wire, "HEARTBEAT", 1.0)  # under the node's silence limit
    endpoint = storage
    proxy = Proxy(endpoint)
    proxied = endpoint.replace(endpoint.split("//", 1)[1].split("/", 1)[0],
                               f"127.0.0.1:{proxy.port}")
    session = Attached(tmp_path, storage, "3.8", env={"AML_DEBUG_RELAY_SILENCE": "5"},
                       notebook_endpoint=proxied)
    try:
        proxy.cut()
        wait_for(lambda: session.ended, 60, "the notebook's end to give up")
        assert "no answer from storage" in session.ended[0]
        session.client.wait_closed(30)
        session.runs_on(timeout=90)
        assert session.relay_said("stopped") == (
            "aml-debug: relay: stopped: nothing from the notebook for 5 s: the debugger is "
            "detached and the script runs on")
    finally:
        session.close()


@pytest.mark.parametrize("version", ["3.8", "3.13"])
def test_the_nodes_relay_exits_with_one_line_when_storage_refuses_it(
    version, tmp_path, storage  # noqa: F811
):
    """Its token on "down" is refused (403): status 1, its start line and one line saying why;
    no interpreter abort from a thread still reading standard input."""
    folder = ship_node_files(tmp_path)
    chains = make_chains(storage)
    env = {"PATH": "/usr/bin:/bin", "AML_DEBUG_RELAY_UP": chains.node_up,
           "AML_DEBUG_RELAY_DOWN": chains.node_down.replace("sig=", "sig=AAAA")}
    process = subprocess.Popen(
        [node_python(version), "-u", "aml_debug_relay.py", "--port", "9"], cwd=folder, env=env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    process.stdin.write(f"{relay_wire.KeyPair().secret:x}\n")
    process.stdin.flush()  # and kept open, as the bootstrap keeps it
    assert process.wait(60) == 1
    lines = process.stdout.read().splitlines()
    process.stdin.close()
    assert len(lines) == 2 and lines[0].startswith("aml-debug: relay: up "), lines
    assert lines[1].startswith("aml-debug: relay: stopped: storage refused to read "), lines
    assert "sig=" not in "".join(lines)


def test_reverse_requests_an_attach_session_cannot_need_are_answered_here_never_passed():
    """Defence in depth behind the seals: ``runInTerminal`` never reaches this machine's
    debugger, nor a ``startDebugging`` / ``debugpyAttach`` pointing anywhere but this relay's
    own port; debugpy's own child sessions and every other message pass whole, however the
    bytes were split."""
    port = 50123
    child = {"name": "Subprocess 7", "subProcessId": 7,
             "connect": {"host": "127.0.0.1", "port": port}}
    elsewhere = {**child, "connect": {"host": "10.9.9.9", "port": 4444}}
    stopped = message({"seq": 1, "type": "event", "event": "stopped", "body": {"threadId": 1}})
    ours = message({"seq": 2, "type": "request", "command": "startDebugging",
                    "arguments": {"request": "attach", "configuration": child}})
    theirs = message({"seq": 3, "type": "request", "command": "startDebugging",
                      "arguments": {"request": "attach", "configuration": elsewhere}})
    attach_event = message({"seq": 4, "type": "event", "event": "debugpyAttach",
                            "body": {**child, "request": "attach"}})
    attach_elsewhere = message({"seq": 5, "type": "event", "event": "debugpyAttach",
                                "body": {**elsewhere, "request": "attach"}})
    stream = stopped + RUN_IN_TERMINAL + ours + theirs + attach_event + attach_elsewhere
    screen, passed, answered = ReverseRequestScreen(port), b"", b""
    for start in range(0, len(stream), 5):
        to_client, to_node = screen.feed(stream[start : start + 5])
        passed, answered = passed + to_client, answered + to_node
    assert passed == stopped + ours + attach_event
    replies = [json.loads(part) for part in answered.split(b"Content-Length: ")[1:]
               for part in [part.split(b"\r\n\r\n", 1)[1]]]
    assert [(r["type"], r["request_seq"], r["success"], r["command"]) for r in replies] == [
        ("response", 901, False, "runInTerminal"), ("response", 3, False, "startDebugging")]
