"""Nothing outlives the kernel: what it started ends when it dies, however it dies.

One small watchdog process per kernel, started with the first debuggee, holds the read end of a
pipe whose write end only the kernel has. In: each process group the kernel starts, as its
number and its leader's start time (``+PGID START``; ``-PGID`` once the leader has ended), and
each Docker container it runs (``+docker NAME`` / ``-docker NAME``). Out, when the kernel dies
(the OOM killer, a forced restart, SIGKILL) and the pipe closes: every group still listed gets
SIGTERM, then SIGKILL after ``GRACE`` seconds, and every container ``docker rm --force``.

A group is followed until it is empty, not until its leader ends: a script's forked child (a
data loader's worker) stays in its group and is ended with it. A group is the kernel's only
while it has members: once empty, its number may go to an unrelated process, so the watchdog
looks every ``LOOK_EVERY`` seconds and drops the empty ones, and never signals a group whose
leader is a process other than the one recorded (its start time, field 22 of
``/proc/PID/stat``, differs).

    python -I -S reaper.py      (started by ``watch()``, never by hand)
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time

GRACE = 2.0
LOOK_EVERY = 2.0  # how often empty groups are dropped while the kernel lives
DOCKER_REMOVE_TIMEOUT = 60.0

_lock = threading.Lock()
_watchdog: subprocess.Popen[bytes] | None = None


def watch(pgid: int) -> None:
    """End process group ``pgid`` (just started by this process) if the kernel dies first."""
    started = start_time(pgid)
    _tell(f"+{pgid}" + ("" if started is None else f" {started}"))


def forget(pgid: int) -> None:
    """The leader of group ``pgid`` has ended; what remains of the group is still ended if
    the kernel dies."""
    _tell(f"-{pgid}")


def watch_container(name: str) -> None:
    """``docker rm --force NAME`` if the kernel dies first (said before the container starts)."""
    _tell(f"+docker {name}")


def forget_container(name: str) -> None:
    """Container ``name`` is gone (ended with ``--rm``, or removed)."""
    _tell(f"-docker {name}")


def start_time(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot; None without ``/proc``."""
    stat = _stat(pid)
    return None if stat is None else int(stat[19])


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state first), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as found:
            return found.read().rsplit(b")", 1)[1].decode().split()
    except (OSError, IndexError):
        return None


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


# -- the watchdog's side ------------------------------------------------------------------------


def _has_members(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _still_ours(pgid: int, started: int | None) -> bool:
    """Whether group ``pgid`` is still the one the kernel started: it has members, and its
    leader, while there is one, is the recorded process (a reused number has another start)."""
    if not _has_members(pgid):
        return False
    stat = _stat(pgid)
    if stat is None or started is None or stat[0] in ("Z", "X"):
        return True  # the leader ended; its group has kept members since: nobody reused it
    return int(stat[19]) == started


def _prune(groups: dict[int, int | None]) -> None:
    for pgid, started in list(groups.items()):
        if not _still_ours(pgid, started):
            del groups[pgid]


def _read_orders(groups: dict[int, int | None], containers: set[str]) -> None:
    """Follow the kernel's lines until its end of the pipe closes."""
    pending = b""
    while True:
        ready, _, _ = select.select([0], [], [], LOOK_EVERY)
        if not ready:
            _prune(groups)
            continue
        chunk = os.read(0, 65536)
        if not chunk:
            return
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            words = raw.decode(errors="replace").split()
            if not words or words[0][:1] not in "+-":
                continue
            sign, first = words[0][0], words[0][1:]
            if first == "docker" and len(words) == 2:
                (containers.add if sign == "+" else containers.discard)(words[1])
            elif first.isdigit() and sign == "+":
                groups[int(first)] = int(words[1]) if len(words) > 1 else None
            elif first.isdigit():  # the leader ended: followed on while the group has members
                _prune(groups)


def _end_groups(groups: dict[int, int | None]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        _prune(groups)
        for pgid in list(groups):
            try:
                os.killpg(pgid, sig)
            except OSError:
                groups.pop(pgid, None)
        until = time.monotonic() + GRACE
        while groups and time.monotonic() < until:
            _prune(groups)
            time.sleep(0.05)


def _remove_containers(containers: set[str]) -> None:
    if not containers:
        return
    try:
        subprocess.run(
            ["docker", "rm", "--force", *sorted(containers)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            timeout=DOCKER_REMOVE_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired):
        pass


def _serve() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    groups: dict[int, int | None] = {}
    containers: set[str] = set()
    _read_orders(groups, containers)
    # the groups first: a `docker run` client ended can no longer create its container
    _end_groups(groups)
    _remove_containers(containers)


if __name__ == "__main__":
    _serve()
