"""Discovery of the node's announcement in a growing log blob: our watcher vs the SDK's way.

    python bench/bench_logs.py [--trials 20] [--scale 5] [--sizes 1,50]

Both read the same append blobs in Azurite (started here, from the test set-up's install)
through SAS URLs over HTTP:

* ours: ``aml_debug_magics.logs.RunLogs``, polling every second while nothing is announced,
  reading only new bytes (HTTP Range);
* anchor: the SDK's own streaming loop (``Run._stream_run_output``): it sleeps
  ``Run._wait_before_polling(elapsed)`` (2 s growing to ~60 s after three minutes) and downloads
  the whole file with ``_commands._get_content_from_uri`` at every poll. Both functions are the
  SDK's own, imported from azureml-core.

1. Discovery latency, announcement appended -> parsed: trials with announcements spread evenly
   from 0 s to 5 min into a run. The time scale is compressed by ``--scale`` (every sleep, poll
   interval and write time is divided by it; latencies are reported multiplied back, so the
   HTTP time of each read counts ``scale`` times against us). Target p95 <= 2.5 s.
2. Bytes read until discovery, for logs of 1 MB and 50 MB written before the announcement
   (over one minute of run time): target <= 1.1x the log's size.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from azureml._execution import _commands  # noqa: E402  (the SDK's own download)
from azureml._restclient.utils import create_session_with_retry  # noqa: E402
from azureml.core import Run  # noqa: E402  (the SDK's own back-off)
from azurite import start_azurite  # noqa: E402

from aml_debug_magics.logs import RunLogs  # noqa: E402
from aml_debug_magics.node.announce import Announcement, LogReader, format_announcement  # noqa: E402

LOG_NAME = "user_logs/std_log.txt"
FILLER = "epoch 12 batch 345 loss 0.123456 accuracy 0.9876 lr 0.001 -- a training log line\n"
ANNOUNCEMENT = format_announcement(
    Announcement(addresses=("10.0.0.4",), port=5678, attach_deadline=1.8e9, script="/wd/train.py")
)


class BlobRun:
    """A run whose only log is one blob: the shape RunLogs reads (get_details, get_tags)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def get_details(self) -> dict:
        return {"status": "Running", "logFiles": {LOG_NAME: self.url}}

    def get_tags(self) -> dict:
        return {}


def ours(url: str, scale: float, stop: threading.Event) -> tuple[float, int]:
    found: list[float] = []
    logs = RunLogs(BlobRun(url), lambda line, node: None,
                   lambda news: found.append(time.perf_counter()))
    while not found and not stop.is_set():
        logs.poll()
        if not found:
            stop.wait(1.0 / scale)
    return (found[0] if found else float("nan")), logs.bytes_read


def sdk_way(url: str, scale: float, stop: threading.Event) -> tuple[float, int]:
    session = create_session_with_retry()
    start, read = time.perf_counter(), 0
    while not stop.is_set():
        elapsed = (time.perf_counter() - start) * scale
        stop.wait(Run._wait_before_polling(elapsed) / scale)
        content = _commands._get_content_from_uri(url, session, timeout=60)
        read += len(content.encode())
        reader = LogReader()
        if any(reader.feed(line) for line in content.splitlines()):
            return time.perf_counter(), read
    return float("nan"), read


def writer(log, announce_at: float, filler_bytes: int, scale: float, started: float) -> float:
    """Append filler evenly until ``announce_at`` (run seconds), then the announcement."""
    chunks = max(1, int(announce_at))  # a write per run second
    per_chunk = FILLER * max(1, filler_bytes // chunks // len(FILLER))
    for n in range(chunks):
        time.sleep(max(0.0, started + n / scale - time.perf_counter()))
        if filler_bytes:
            log.append(per_chunk)
    time.sleep(max(0.0, started + announce_at / scale - time.perf_counter()))
    log.append(ANNOUNCEMENT + "\n")
    return time.perf_counter()


def trial(azurite, name: str, announce_at: float, filler: int, scale: float) -> dict:
    log = azurite.append_blob(name)
    url = log.url()
    stop = threading.Event()
    results: dict[str, tuple[float, int]] = {}
    started = time.perf_counter()
    threads = [
        threading.Thread(target=lambda: results.__setitem__("ours", ours(url, scale, stop))),
        threading.Thread(target=lambda: results.__setitem__("sdk", sdk_way(url, scale, stop))),
    ]
    for thread in threads:
        thread.start()
    appended = writer(log, announce_at, filler, scale, started)
    for thread in threads:
        thread.join(timeout=900 / scale)
    stop.set()
    return {
        "ours_latency": (results["ours"][0] - appended) * scale,
        "sdk_latency": (results["sdk"][0] - appended) * scale,
        "ours_bytes": results["ours"][1],
        "sdk_bytes": results["sdk"][1],
        "size": log.size,
    }


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--scale", type=float, default=5.0)
    parser.add_argument("--sizes", default="1,50", help="log sizes in MB for the bytes figure")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as location:
        process, azurite = start_azurite(Path(location))
        try:
            times = [300.0 * i / max(1, options.trials - 1) for i in range(options.trials)]
            results: list[dict] = [{}] * len(times)

            def run_one(i: int) -> None:
                results[i] = trial(azurite, f"latency/{i}/{LOG_NAME}", times[i], 20_000,
                                   options.scale)

            threads = [threading.Thread(target=run_one, args=(i,)) for i in range(len(times))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            print(f"{options.trials} trials, announcements 0-300 s into the run, time scale "
                  f"1/{options.scale:g}")
            for who, label in (("ours", "ours (Range reads, 1 s poll)"),
                               ("sdk", "anchor: SDK streaming loop")):
                latencies = [r[f"{who}_latency"] for r in results]
                print(f"1. {label:32s} discovery latency p50 {statistics.median(latencies):6.2f}"
                      f" s  p95 {percentile(latencies, 0.95):6.2f} s"
                      + ("   (target p95 <= 2.5 s)" if who == "ours" else ""))
            for megabytes in (float(m) for m in options.sizes.split(",")):
                big = trial(azurite, f"bytes/{megabytes:g}/{LOG_NAME}", 60.0,
                            int(megabytes * 1024 * 1024), options.scale)
                print(f"2. {megabytes:g} MB log: bytes read until discovery / log size: ours "
                      f"{big['ours_bytes'] / big['size']:.3f}   SDK "
                      f"{big['sdk_bytes'] / big['size']:.3f}   (target <= 1.1)")
        finally:
            process.terminate()
            process.wait(10)


if __name__ == "__main__":
    main()
