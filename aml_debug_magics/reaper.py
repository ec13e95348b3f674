"""Nothing outlives the kernel: what it started ends when it dies, however it dies.

One small watchdog process per kernel, started with the first debuggee, holds the read end of a
pipe whose write end only the kernel has. The kernel tells it each process group it starts
(``+PGID``) and each one that ended (``-PGID``). When the kernel dies (the OOM killer, a forced
restart, SIGKILL) the pipe closes and the watchdog ends every group still listed: SIGTERM, then
SIGKILL after ``GRACE`` seconds. A group holds the bootstrap, the user's script and its
children, the gate and the inference server's workers; the gate ends debugpy's adapter.

    python -I -S reaper.py      (started by ``watch()``, never by hand)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

GRACE = 2.0

_lock = threading.Lock()
_watchdog: subprocess.Popen[bytes] | None = None


def watch(pgid: int) -> None:
    """End process group ``pgid`` if the kernel dies before it does."""
    _tell(f"+{pgid}")


def forget(pgid: int) -> None:
    """Group ``pgid`` has ended (or was ended): no longer the watchdog's business."""
    _tell(f"-{pgid}")


def _tell(line: str) -> None:
    global _watchdog
    with _lock:
        if _watchdog is None or _watchdog.poll() is not None:
            _watchdog = subprocess.Popen(
                [sys.executable, "-I", "-S", os.path.abspath(__file__)],
                stdin=subprocess.PIPE,
                start_new_session=True,  # a Ctrl-C in the terminal is not for it
            )
        try:
            assert _watchdog.stdin is not None
            _watchdog.stdin.write(line.encode() + b"\n")
            _watchdog.stdin.flush()
        except OSError:
            pass


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except OSError:
        return False
    return True


def _serve() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    groups: set[int] = set()
    for raw in sys.stdin.buffer:  # until the kernel's end of the pipe closes
        line = raw.strip()
        if line[:1] == b"+":
            groups.add(int(line[1:]))
        elif line[:1] == b"-":
            groups.discard(int(line[1:]))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pgid in list(groups):
            try:
                os.killpg(pgid, sig)
            except OSError:
                groups.discard(pgid)
        until = time.monotonic() + GRACE
        while groups and time.monotonic() < until:
            groups = {g for g in groups if _alive(g)}
            time.sleep(0.05)


if __name__ == "__main__":
    _serve()
