"""The storage relay's cost: one DAP round trip and one step through append blobs, against a direct
TCP attach and against the floor (two append blobs with a bare echo), all in one run on Azurite.

    python bench/bench_relay.py [--rounds 60] [--steps 20] [--idle 60]

Azurite is started here (from the test set-up's install); the relay's blobs are made and signed
as the notebook makes them (tests/relay_chains.py). Every figure below is measured in this run:

1. ``threads`` request -> response, p50/p95: direct (the bootstrap's gate on 127.0.0.1), through
   the relay (``--via storage``: node relay process + ``StorageRelay``), and the floor: an echo
   thread polling blob A every 5 ms through the Azure Storage SDK and appending what it reads to
   blob B, while the client appends to A and polls B every 5 ms. Goal: relay p95 <= 1.5 x floor.
2. A step-over's time, ``next`` sent -> ``stopped`` event, direct and through the relay.
3. Storage requests per minute: idle (both ends polling, nothing flowing, after 10 s of
   settling; goal <= 120) and while stepping (the notebook's end measured over the stepping
   phase, the node's end over its whole life, read from its last log line).
4. An estimate for Azure from per-request latency L (model: one hop costs the append, then on
   average half a poll period (a read plus 5 ms), then the read that sees it; a round trip is
   two hops on top of the direct time), checked here against Azurite's own measured append and
   read times. Azure publishes no per-request figure for standard blobs: Microsoft's "Latency in
   Blob storage" article takes 50 ms as its example; premium block blobs are sold as
   single-digit ms; the estimate is given for L = 10, 20 and 50 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from azurite import start_azurite  # noqa: E402
from dap_client import DapClient  # noqa: E402
from relay_chains import make_chains  # noqa: E402

from aml_debug_magics.node import relay_wire  # noqa: E402
from aml_debug_magics.node.announce import Announcement, LogReader  # noqa: E402
from aml_debug_magics.relay.end import StorageRelay  # noqa: E402

SCRIPT = """\
import time
total = 0
for i in range(400000):
    total += i
    time.sleep(0)
"""
LOOP_LINE = 4
POLL = 0.005


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def p50_p95(values: list[float]) -> str:
    p50, p95 = percentile(values, 0.5) * 1000, percentile(values, 0.95) * 1000
    return f"p50 {p50:7.1f} ms   p95 {p95:7.1f} ms"


class Debuggee:
    """The bootstrap running SCRIPT on this machine; its output read as it comes."""

    def __init__(self, folder: Path, options: list[str], env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self.announcement: Announcement | None = None
        self.announced = threading.Event()
        self.process = subprocess.Popen(
            [sys.executable, "-u", "-m", "aml_debug_magics.node.bootstrap", *options,
             "--timeout", "120", "--", str(folder / "loop.py")],
            cwd=folder, env={**os.environ, **env, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        reader = LogReader()
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            for news in reader.feed(line):
                if isinstance(news, Announcement):
                    self.announcement = news
                    self.announced.set()


def wait_for_line(debuggee: Debuggee, text: str, timeout: float) -> str:
    """The first output line holding ``text`` (the node's relay prints its last line after the
    script ends, once its sessions are done)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = next((line for line in debuggee.lines if text in line), None)
        if found:
            return found
        time.sleep(0.1)
    return f"(no line with {text!r} within {timeout:g} s)"


def measure_session(folder: Path, port_of, rounds: int, steps: int, relay=None):
    """Attach, stop in the loop, then time ``threads`` round trips and step-overs."""
    client = DapClient.connect("127.0.0.1", port_of(), timeout=30)
    client.attach({"request": "attach"}, {str(folder / "loop.py"): [LOOP_LINE]})
    client.wait_stopped(60)
    client.request("setBreakpoints", source={"path": str(folder / "loop.py")}, breakpoints=[])
    round_trips, step_times = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        client.request("threads")
        round_trips.append(time.perf_counter() - started)
    requests_before, stepping_started = (relay.requests if relay else 0), time.perf_counter()
    for _ in range(steps):
        started = time.perf_counter()
        client.send("next", threadId=client.stopped_thread)
        client.event("stopped", timeout=30)
        step_times.append(time.perf_counter() - started)
    stepping = time.perf_counter() - stepping_started
    per_minute = ((relay.requests - requests_before) / stepping * 60) if relay else 0.0
    client.resume()
    client.close()
    return round_trips, step_times, per_minute


def floor_echo(endpoint: str, rounds: int) -> list[float]:
    """Two append blobs and a bare echo, both sides polling every 5 ms through the SDK."""
    from azure.core.exceptions import HttpResponseError
    from azure.storage.blob import BlobClient

    chains = make_chains(endpoint, length=1)

    def client(url: str) -> BlobClient:
        return BlobClient.from_blob_url(url)

    a_write, a_read = client(chains.notebook_down), client(chains.node_down)
    b_write, b_read = client(chains.node_up), client(chains.notebook_up)
    stop = threading.Event()

    def read_new(blob: BlobClient, offset: int) -> bytes:
        try:
            return blob.download_blob(offset=offset).readall()
        except HttpResponseError:  # 416: nothing past offset yet
            return b""

    def echo() -> None:
        offset = 0
        while not stop.is_set():
            data = read_new(a_read, offset)
            if data:
                offset += len(data)
                b_write.append_block(data)
            else:
                time.sleep(POLL)

    threading.Thread(target=echo, daemon=True).start()
    times, offset = [], 0
    message = b'Content-Length: 40\r\n\r\n{"seq": 1, "type": "request", "command": "threads"}'
    try:
        for _ in range(rounds):
            started = time.perf_counter()
            a_write.append_block(message)
            while True:
                data = read_new(b_read, offset)
                if data:
                    offset += len(data)
                    break
                time.sleep(POLL)
            times.append(time.perf_counter() - started)
    finally:
        stop.set()
    return times


def request_latency(endpoint: str, count: int = 40) -> tuple[float, float]:
    """Azurite's own per-request time here (median append, median empty read)."""
    chains = make_chains(endpoint, length=1)
    writer, reader = relay_wire.AppendBlob(chains.node_up), relay_wire.AppendBlob(
        chains.notebook_up)
    appends, reads = [], []
    for _ in range(count):
        started = time.perf_counter()
        writer.append(b"x" * 64)
        appends.append(time.perf_counter() - started)
        started = time.perf_counter()
        reader.read_from(writer.position)
        reads.append(time.perf_counter() - started)
    return statistics.median(appends), statistics.median(reads)


def idle_requests(endpoint: str, seconds: float) -> tuple[int, int]:
    """Both ends running with nothing to carry: the requests each makes in ``seconds``, counted
    after 10 s of settling. The node's end is relay.py's own ``Tunnel``, run in a thread here so
    its count can be read mid-run (the process only prints its total at the end)."""
    chains = make_chains(endpoint)
    keys = relay_wire.KeyPair()
    node = relay_wire.Tunnel(chains.node_up, chains.node_down, keys=keys,
                             on_open=lambda channel: None, silence=relay_wire.SILENCE_LIMIT)
    stop = threading.Event()
    threading.Thread(target=node.run_until, args=(stop.is_set,), daemon=True).start()
    notebook = StorageRelay(chains.notebook_up, chains.notebook_down, keys.encoded)
    notebook.start()
    time.sleep(10)  # settling: the polls back off to their idle pace
    node_before, notebook_before = node.requests, notebook.requests
    time.sleep(seconds)  # the idle window being measured
    counts = node.requests - node_before, notebook.requests - notebook_before
    stop.set()
    node.wake()
    node.close()
    notebook.stop()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--idle", type=float, default=60.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        (folder / "loop.py").write_text(SCRIPT)
        azurite, storage = start_azurite(folder / "azurite")
        try:
            endpoint = storage.endpoint
            append_l, read_l = request_latency(endpoint)
            floor = floor_echo(endpoint, args.rounds)

            direct = Debuggee(folder, ["--listen", "127.0.0.1:0"], {})
            assert direct.announced.wait(60), direct.lines
            direct_rt, direct_steps, _ = measure_session(
                folder, lambda: direct.announcement.port, args.rounds, args.steps)
            direct.process.wait(60)

            chains = make_chains(endpoint)
            relayed = Debuggee(folder, ["--via", "storage"], {
                "AML_DEBUG_RELAY_UP": chains.node_up, "AML_DEBUG_RELAY_DOWN": chains.node_down})
            assert relayed.announced.wait(60), relayed.lines
            relay = StorageRelay(chains.notebook_up, chains.notebook_down,
                                 relayed.announcement.relay_key)
            port = relay.start()
            relay_rt, relay_steps, stepping_rate = measure_session(
                folder, lambda: port, args.rounds, args.steps, relay)
            relayed.process.wait(60)
            relay.stop()
            node_line = wait_for_line(relayed, "relay: ended", 40)

            node_idle, notebook_idle = idle_requests(endpoint, args.idle)
        finally:
            azurite.terminate()
            azurite.wait(10)

    print(f"Azurite here: append {append_l * 1000:.1f} ms, empty read {read_l * 1000:.1f} ms "
          "(medians)")
    print("1. threads round trip")
    print(f"   direct TCP (gate on loopback):  {p50_p95(direct_rt)}")
    print(f"   relay (--via storage):          {p50_p95(relay_rt)}")
    print(f"   floor (2 blobs + bare echo):    {p50_p95(floor)}")
    ratio = percentile(relay_rt, 0.95) / percentile(floor, 0.95)
    print(f"   ratio relay p95 / floor p95: {ratio:.2f}   (goal <= 1.5)")
    print("2. step-over, next -> stopped")
    print(f"   direct TCP:                     {p50_p95(direct_steps)}")
    print(f"   relay:                          {p50_p95(relay_steps)}")
    idle_rate = (node_idle + notebook_idle) / args.idle * 60
    print("3. storage requests per minute")
    print(f"   idle, both ends:   {idle_rate:6.0f}   (node {node_idle}, notebook {notebook_idle} "
          f"in {args.idle:g} s; goal <= 120)")
    print(f"   stepping, notebook end: {stepping_rate:6.0f}   node end, whole life: {node_line}")
    direct_p50 = percentile(direct_rt, 0.5)
    model_here = direct_p50 + 2 * (append_l + read_l + (read_l + POLL) / 2)
    print("4. estimate: relay round trip ~ direct + 2 x (append + read + (read + 5 ms) / 2)")
    print(f"   with Azurite's times here: {model_here * 1000:.0f} ms "
          f"(measured relay p50 {percentile(relay_rt, 0.5) * 1000:.0f} ms)")
    for label, latency in (("same-region node and notebook, L = 10 ms", 0.010),
                           ("L = 20 ms", 0.020),
                           ("Microsoft's latency article's example, L = 50 ms", 0.050)):
        storage_part = 2 * (2 * latency + (latency + POLL) / 2)
        print(f"   Azure, {label}: storage adds ~{storage_part * 1000:.0f} ms to each DAP "
              "round trip")

if __name__ == "__main__":
    main()
