"""The storage relay (``--via storage``): a debugger attaches to the notebook's 127.0.0.1 port and
its bytes travel through two chains of append blobs to a node that reaches nothing but storage.

Storage is Azurite (tests/azurite.py), which checks SAS signatures and permissions; the SAS
tokens are signed here with Azurite's published key over http (``spr=https,http``), as the
notebook signs them for a real account. Nothing of Azure is faked. The node is a network
namespace (tests/netns.py) whose only route leads to this machine, where Azurite listens on the
node's gateway address; the notebook's relay port is on this machine's loopback and the node's
debugpy on the node's own loopback, so the blobs are the only path between them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path

import pytest
from azurite import azurite_blob_command, start_azurite
from conftest import run_bootstrap, ship_node_files, wait_for
from dap_client import DapClient
from netns import namespaces, node_network, skip_without_namespaces
from node_pythons import node_python
from relay_chains import Chains, make_chains, signed_url

from aml_debug_magics.node import relay_wire
from aml_debug_magics.node.announce import Announcement, LogReader, PortClosed, parse_line
from aml_debug_magics.node.ranks import node_addresses
from aml_debug_magics.relay.end import StorageRelay


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    """Azurite on this machine's loopback: for the tests that need no separate node."""
    if azurite_blob_command() is None:
        pytest.skip("azurite-blob is not installed: run `bash scripts/test.sh`, which installs it")
    pytest.importorskip("azure.storage.blob", reason="azure-storage-blob is a test dependency")
    process, started = start_azurite(tmp_path_factory.mktemp("relay-azurite"))
    try:
        yield started.endpoint
    finally:
        process.terminate()
        process.wait(10)


# ---------------------------------------------------------------------------------------------
# The wire


KEY = b"k" * 32


def sealed(*frames: tuple[int, int, bytes], key: bytes = KEY) -> bytes:
    """``frames`` (kind, channel, payload) as one end seals them, numbered from the first."""
    seal = relay_wire.FrameSeal(key)
    return b"".join(seal.seal(*frame) for frame in frames)


def test_frames_rejoin_from_any_split_and_each_is_checked():
    stream = sealed((relay_wire.OPEN, 1, b""),
                    (relay_wire.DATA, 1, b"Content-Length: 2\r\n\r\n{}"),
                    *((relay_wire.DATA, 2, piece)
                      for piece in relay_wire.pieces(b"x" * (relay_wire.MAX_PAYLOAD + 5))),
                    (relay_wire.CLOSE, 1, b""))
    reader, frames, check = relay_wire.FrameReader(), [], relay_wire.FrameSeal(KEY)
    for start in range(0, len(stream), 7):
        frames += reader.feed(stream[start : start + 7])
    for frame in frames:
        check.check(frame)
    assert [(f.kind, f.channel, len(f.payload)) for f in frames] == [
        (relay_wire.OPEN, 1, 0), (relay_wire.DATA, 1, 23),
        (relay_wire.DATA, 2, relay_wire.MAX_PAYLOAD), (relay_wire.DATA, 2, 5),
        (relay_wire.CLOSE, 1, 0),
    ]
    with pytest.raises(relay_wire.StreamTampered):
        relay_wire.FrameReader().feed(b"\x09" + b"\x00" * 8)


def test_a_frame_sealed_with_another_key_changed_or_replayed_is_refused():
    """The tag covers the frame's number, header and payload: a forged, altered, replayed or
    reordered frame fails its check."""
    stream = sealed((relay_wire.DATA, 1, b"one"), (relay_wire.DATA, 1, b"two"))
    first, second = relay_wire.FrameReader().feed(stream)
    forged = relay_wire.FrameReader().feed(sealed((relay_wire.DATA, 1, b"one"), key=b"x" * 32))
    altered = relay_wire.Frame(first.kind, first.channel, b"ONE", first.tag)
    for frames in ([forged[0]], [altered], [first, first], [second, first]):
        check = relay_wire.FrameSeal(KEY)
        with pytest.raises(relay_wire.StreamTampered, match="tampered"):
            for frame in frames:
                check.check(frame)
    check = relay_wire.FrameSeal(KEY)
    check.check(first)
    check.check(second)  # in order, as sealed: accepted


def test_the_nodes_tokens_append_up_and_read_down_but_cannot_write_down_or_read_up(storage):
    chains = make_chains(storage, length=1)
    up, down = relay_wire.AppendBlob(chains.node_up), relay_wire.AppendBlob(chains.node_down)
    up.append(b"from the node")
    assert relay_wire.AppendBlob(chains.notebook_up).read_from(0) == b"from the node"
    written = relay_wire.AppendBlob(chains.notebook_down)
    written.append(b"to the node")
    assert down.read_from(0) == b"to the node"
    assert down.read_from(len(b"to the node")) == b""  # 416: nothing new
    with pytest.raises(relay_wire.BlobDenied) as refused:
        down.append(b"a forged request")  # only the notebook drives the debugger
    assert "sig=" not in str(refused.value) and "down" in str(refused.value)
    with pytest.raises(relay_wire.BlobDenied):
        up.read_from(0)
    with pytest.raises(relay_wire.BlobDenied):
        up.delete()
    with pytest.raises(relay_wire.BlobDenied):
        relay_wire.AppendBlob(chains.node_down).delete()
    forged = relay_wire.AppendBlob(chains.node_up.replace("sig=", "sig=A"))
    with pytest.raises(relay_wire.BlobDenied):
        forged.append(b"x")


def test_bytes_someone_else_appended_are_reported_never_written_over(storage):
    """Anyone holding the node's add-only token can append to "up"; the relay's own next append
    is refused by its position condition and says so, rather than interleaving."""
    chains = make_chains(storage, length=1)
    ours, theirs = relay_wire.AppendBlob(chains.node_up), relay_wire.AppendBlob(chains.node_up)
    ours.append(b"first")
    theirs.position = 5
    theirs.append(b"xxx")
    with pytest.raises(relay_wire.StreamTampered):
        ours.append(b"second")
    assert relay_wire.AppendBlob(chains.notebook_up).read_from(0) == b"firstxxx"


def test_ten_thousand_small_messages_rotate_through_the_chain(storage):
    """10,000 messages, eight to an append (the writer batches what queues during an append),
    with a blob taking 500 appends here (50,000 on Azure, where the relay moves on after
    40,000): the writer moves on to ``up.1`` and ``up.2`` and the reader follows without losing
    or reordering a byte. A chain whose last blob is full says so."""
    chains = make_chains(storage, length=3)
    writer = relay_wire.StreamWriter(chains.node_up, appends_per_blob=500)
    reader = relay_wire.StreamReader(chains.notebook_up)
    received: list[bytes] = []
    writer.seal, reader.seal = relay_wire.FrameSeal(KEY), relay_wire.FrameSeal(KEY)
    for first in range(0, 10_000, 8):
        writer.write([(relay_wire.DATA, 1, b"%d" % number) for number in range(first, first + 8)])
        if first % 1000 == 992:
            received += [frame.payload for frame in reader.poll()]
    received += [frame.payload for frame in reader.poll()]
    assert received == [b"%d" % number for number in range(10_000)]
    assert writer.blobs_used == 3

    short = make_chains(storage, length=2)
    writer = relay_wire.StreamWriter(short.node_up, appends_per_blob=3,
                                     seal=relay_wire.FrameSeal(KEY))
    with pytest.raises(relay_wire.ChainExhausted, match="chain's last blob"):
        for _ in range(5):
            writer.write([(relay_wire.DATA, 1, b"more")])


def test_stop_closes_the_port_and_deletes_the_down_blobs(storage):
    """Before anyone attached (the accept still waiting) and with a debugger attached: the port
    refuses at once after stop(), no thread is left, and the "down" blobs are gone (the "up" ones
    are the notebook's to delete with its key)."""
    from azure.storage.blob import BlobClient

    for attach in (False, True):
        chains = make_chains(storage)
        relay = StorageRelay(chains.notebook_up, chains.notebook_down,
                             relay_wire.KeyPair().encoded)
        port = relay.start()
        attached = socket.create_connection(("127.0.0.1", port), timeout=10) if attach else None
        relay.stop()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=10)
        if attached is not None:
            try:  # the debugger's connection is closed too
                assert attached.recv(1) == b""
            except ConnectionResetError:
                pass
            attached.close()
        assert not any(thread.name.startswith("relay-") for thread in threading.enumerate())
        for url in chains.notebook_down.split():
            assert not BlobClient.from_blob_url(_with_read(url)).exists()
        assert all(BlobClient.from_blob_url(url).exists() for url in chains.notebook_up.split())


def _with_read(url: str) -> str:
    base = relay_wire.redacted(url)
    return signed_url(base.split("/azureml/")[0], base.split("/azureml/", 1)[1], read=True)


# ---------------------------------------------------------------------------------------------
# A node that reaches only storage


TRAIN = """\
import subprocess
import sys
from pathlib import Path

def train(epochs):
    loss = 10.0
    for epoch in range(epochs):
        loss = loss / 2
        print("epoch", epoch, "loss", loss, flush=True)
    return loss

loss = train(2)
if "--no-child" not in sys.argv:
    child = Path(__file__).with_name("child.py")
    code = subprocess.run([sys.executable, str(child), str(loss)]).returncode
    print("child exit", code, flush=True)
"""
TRAIN_LOOP_LINE, TRAIN_PRINT_LINE = 8, 9
CHILD = """\
import sys
value = float(sys.argv[1]) * 4
print("child value", value, flush=True)
"""
CHILD_PRINT_LINE = 3


class NodeRun:
    """The bootstrap on the node (shipped files, a node Python), its output read as it comes."""

    def __init__(self, node, python: str, folder: Path, chains: Chains, *options: str,
                 script_args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> None:
        self.lines: deque[str] = deque(maxlen=400)
        self.announcement: Announcement | None = None
        self.chains = chains
        env = {"PATH": "/usr/bin:/bin", "AML_DEBUG_RELAY_UP": chains.node_up,
               "AML_DEBUG_RELAY_DOWN": chains.node_down, **(env or {})}
        self.process = subprocess.Popen(
            [*node.launcher, python, "-u", "aml_debug_bootstrap.py", "--via", "storage",
             *options, "--", "train.py", *script_args],
            cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def relay(self, **options) -> StorageRelay:
        """The notebook's end, keyed with the node's announced public value."""
        try:
            wait_for(lambda: self.announcement, 60, "the announcement")
        except BaseException:
            self.process.kill()
            raise
        return StorageRelay(self.chains.notebook_up, self.chains.notebook_down,
                            self.announcement.relay_key, **options)

    def _read(self) -> None:
        reader = LogReader()
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            for news in reader.feed(line):
                if isinstance(news, Announcement):
                    self.announcement = news


@pytest.fixture
def storage_only_node(tmp_path):
    """A node (network namespace) and Azurite listening on the node's gateway: the only thing
    the node can reach. Yields (node, storage endpoint)."""
    skip_without_namespaces()
    if azurite_blob_command() is None:
        pytest.skip("azurite-blob is not installed: run `bash scripts/test.sh`, which installs it")
    pytest.importorskip("azure.storage.blob", reason="azure-storage-blob is a test dependency")
    with node_network() as node:
        process, started = start_azurite(tmp_path / "azurite", host=node.gateway)
        try:
            yield node, started.endpoint
        finally:
            process.terminate()
            process.wait(10)
    assert namespaces() == []


def project(tmp_path: Path) -> Path:
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "train.py").write_text(TRAIN)
    (folder / "child.py").write_text(CHILD)
    return ship_node_files(folder)


@pytest.mark.parametrize("version", ["3.8", "3.13"])
def test_a_debugger_attaches_through_storage_steps_and_follows_a_child(
    version, tmp_path, storage_only_node
):
    node, endpoint = storage_only_node
    python = node_python(version)
    folder = project(tmp_path)
    chains = make_chains(endpoint)
    run = NodeRun(node, python, folder, chains, "--timeout", "60")
    relay = run.relay()
    try:
        assert (run.announcement.via, run.announcement.addresses) == ("storage", ("127.0.0.1",))
        port = relay.start()
        config = {"request": "attach", "connect": {"host": "127.0.0.1", "port": port},
                  "justMyCode": True}
        client = DapClient.connect("127.0.0.1", port, timeout=30)
        client.attach(config, {str(folder / "train.py"): [TRAIN_LOOP_LINE]})
        frame = client.wait_stopped(60)
        assert (frame["source"]["path"], frame["line"]) == (str(folder / "train.py"),
                                                            TRAIN_LOOP_LINE)
        assert client.locals_of(frame)["loss"] == "10.0"
        client.request("next", threadId=client.stopped_thread)
        frame = client.wait_stopped(60)
        assert frame["line"] == TRAIN_PRINT_LINE
        assert client.locals_of(frame)["loss"] == "5.0"
        client.request("setBreakpoints", source={"path": str(folder / "train.py")},
                       breakpoints=[])
        client.resume()

        child_config = client.event("debugpyAttach", 60)
        # the adapter repeats the parent's "connect": VS Code opens the child's session on the
        # same notebook port, a second channel
        assert child_config["connect"] == {"host": "127.0.0.1", "port": port}
        child = DapClient.connect("127.0.0.1", port, timeout=30)
        child.attach(child_config, {str(folder / "child.py"): [CHILD_PRINT_LINE]})
        child_frame = child.wait_stopped(60)
        assert child.evaluate(child_frame, "value") == "10.0"
        child.resume()
        assert run.process.wait(60) == 0
        assert "child exit 0" in run.lines
        child.close()
        client.close()
    finally:
        relay.stop()
        run.process.kill()
    assert not any("sig=" in line for line in run.lines), "a signature reached the node's log"
    assert any(line.startswith("aml-debug: relay: up") for line in run.lines)
    wait_for(lambda: not subprocess.run(["ip", "netns", "pids", node.namespace],
                                        capture_output=True, text=True).stdout.strip(),
             30, "every process on the node to end (the relay included)")


def test_a_storage_outage_of_five_seconds_is_survived(tmp_path, storage_only_node):
    """While the debuggee is stopped, the node loses storage for 5 s (its packets dropped and
    its route refused: its requests fail and are retried); a step asked for meanwhile is carried
    once storage is back, and the run ends."""
    node, endpoint = storage_only_node
    folder = project(tmp_path)
    chains = make_chains(endpoint)
    run = NodeRun(node, node_python("3.13"), folder, chains, "--timeout", "60",
                  script_args=("--no-child",))
    relay = run.relay()
    try:
        port = relay.start()
        client = DapClient.connect("127.0.0.1", port, timeout=30)
        client.attach({"request": "attach"},
                      {str(folder / "train.py"): [TRAIN_LOOP_LINE]})
        client.wait_stopped(60)
        with dropped_link(node):
            stepping = client.send("next", threadId=client.stopped_thread)
            with pytest.raises(AssertionError):  # nothing gets through while the link is down
                client.event("stopped", timeout=4)
        client.response(stepping, timeout=60)
        frame = client.wait_stopped(60)
        assert (frame["line"], client.locals_of(frame)["loss"]) == (TRAIN_PRINT_LINE, "5.0")
        client.request("setBreakpoints", source={"path": str(folder / "train.py")},
                       breakpoints=[])
        client.resume()
        wait_for(lambda: run.process.poll() is not None, 60, f"the run to end: {list(run.lines)}")
        assert run.process.returncode == 0
        client.close()
    finally:
        relay.stop()
        run.process.kill()
    assert relay.error is None


@contextmanager
def dropped_link(node):
    """The node cut off from storage, both ways, for the block's duration (at least 5 s):
    every packet on the link dropped (``netem loss 100%``, or where the kernel has no netem, as
    here, a FIFO of length 0) and the node's route to storage refused, so what the node sends
    fails at once (its open connections break and it must reconnect) rather than only
    stalling."""
    links = [([], node.host_end), (node.launcher, "eth0")]  # this machine's end, the node's
    for launcher, link in links:
        for qdisc in (["netem", "loss", "100%"], ["pfifo", "limit", "0"]):
            done = subprocess.run([*launcher, "tc", "qdisc", "add", "dev", link, "root", *qdisc],
                                  capture_output=True, text=True)
            if done.returncode == 0:
                break
        else:
            raise AssertionError(f"tc could not drop traffic on {link}: {done.stderr}")
    refused = [*node.launcher, "ip", "route", "add", "prohibit", f"{node.gateway}/32"]
    subprocess.run(refused, check=True, capture_output=True)
    started = time.monotonic()
    try:
        yield
        time.sleep(max(0.0, 5.0 - (time.monotonic() - started)))  # the outage lasts 5 s
    finally:
        subprocess.run([*node.launcher, "ip", "route", "del", "prohibit", f"{node.gateway}/32"],
                       capture_output=True)
        for launcher, link in links:
            subprocess.run([*launcher, "tc", "qdisc", "del", "dev", link, "root"],
                           capture_output=True)


# ---------------------------------------------------------------------------------------------
# The bootstrap's --via option on this machine


SHORT = "print('the script ran')\n"


def test_via_storage_without_the_blob_urls_is_one_line(tmp_path):
    (tmp_path / "job.py").write_text(SHORT)
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("AML_DEBUG_RELAY_")}
    result = run_bootstrap("--via", "storage", "--", "job.py", cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert result.stderr == ("aml-debug: error: --via storage needs the relay's blob URLs in "
                             "$AML_DEBUG_RELAY_UP and $AML_DEBUG_RELAY_DOWN\n")
    result = run_bootstrap("--via", "auto", "--connect", "10.0.0.5:5678", "--", "job.py",
                           cwd=tmp_path, env=env)
    assert result.stderr.strip().splitlines() == [
        "aml-debug: error: --via auto needs debugpy listening: drop --connect"]


def test_a_missed_window_ends_the_relay_and_the_script_runs_on(tmp_path, storage):
    """Nobody attaches: the relay ends (its last line is printed before the output closes, so
    the run's end waits for it), and the script runs without the debugger."""
    (tmp_path / "job.py").write_text(SHORT)
    chains = make_chains(storage)
    env = {**os.environ, "AML_DEBUG_RELAY_UP": chains.node_up,
           "AML_DEBUG_RELAY_DOWN": chains.node_down}
    started = time.monotonic()
    result = run_bootstrap("--via", "storage", "--timeout", "1", "--", "job.py", cwd=tmp_path,
                           env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "Debugger attached = False" in lines and "the script ran" in lines
    assert any(line.startswith("aml-debug: relay: ended") for line in lines), lines
    assert time.monotonic() - started < 30
    assert "sig=" not in result.stdout + result.stderr


def test_a_relay_storage_refuses_says_so_and_the_script_runs_on_at_once(tmp_path, storage):
    """The node's token on "down" is wrong (expired, or signed by a rotated key): its relay
    stops on the 403, the bootstrap says the only path is gone instead of waiting out a 600 s
    window, and the script runs; no line shows a signature."""
    (tmp_path / "job.py").write_text(SHORT)
    chains = make_chains(storage)
    env = {**os.environ, "AML_DEBUG_RELAY_UP": chains.node_up,
           "AML_DEBUG_RELAY_DOWN": chains.node_down.replace("sig=", "sig=AAAA")}
    result = run_bootstrap("--via", "storage", "--timeout", "600", "--", "job.py",
                           cwd=tmp_path, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    closed = [news for news in map(parse_line, lines) if isinstance(news, PortClosed)]
    assert closed and "the storage relay ended" in closed[0].reason, lines
    assert any("relay: stopped: storage refused to read down" in line for line in lines), lines
    assert "Debugger attached = False" in lines and "the script ran" in lines
    assert "sig=" not in result.stdout + result.stderr


def test_auto_offers_the_nodes_own_address_and_the_relay(tmp_path, storage):
    """``--via auto``: the gate listens on the node's address as with listen, and a debugger
    attaches through the relay all the same."""
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "train.py").write_text(TRAIN)
    chains = make_chains(storage)
    env = {**os.environ, "AML_DEBUG_RELAY_UP": chains.node_up,
           "AML_DEBUG_RELAY_DOWN": chains.node_down}
    process = subprocess.Popen(
        [sys.executable, "-u", "-m", "aml_debug_magics.node.bootstrap", "--via", "auto",
         "--listen", "0.0.0.0:0", "--allow", "10.99.99.0/24", "--timeout", "60", "--",
         "train.py", "--no-child"],
        cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    reader, found, relay = LogReader(), [], None
    try:
        for line in process.stdout:
            found += [n for n in reader.feed(line) if isinstance(n, Announcement)]
            if found:
                break
        announcement = found[0]
        relay = StorageRelay(chains.notebook_up, chains.notebook_down, announcement.relay_key)
        assert announcement.via == "auto" and announcement.port != 0
        assert announcement.addresses == tuple(node_addresses("0.0.0.0"))
        client = DapClient.connect("127.0.0.1", relay.start(), timeout=30)
        client.attach({"request": "attach"}, {str(folder / "train.py"): [TRAIN_LOOP_LINE]})
        frame = client.wait_stopped(60)
        assert client.locals_of(frame)["loss"] == "10.0"
        client.request("setBreakpoints", source={"path": str(folder / "train.py")},
                       breakpoints=[])
        client.resume()
        assert process.wait(60) == 0
        client.close()
    finally:
        if relay is not None:
            relay.stop()
        process.kill()
        process.communicate()
