"""The lines a debug node prints to say where to attach, and the parser that reads them back.

One module for both sides, so the format cannot drift: ``bootstrap.py`` writes these lines on the
node, the notebook's log watcher parses them. Standard library only: this file travels into an
Azure ML run's snapshot next to ``bootstrap.py``.

Two dialects are understood:

* ours, one machine-readable line per debugged process::

      AML_DEBUG v1 announce {"addresses": ["10.0.0.4"], "port": 5678, ...}
      AML_DEBUG v1 outcome {"attached": false, "pid": 4242, "rank": 0}
      AML_DEBUG v1 failed {"exception": "ZeroDivisionError", "line": 42, ...}

* the human lines of Microsoft's "Interactive debugging with VS Code" guide, which we also print,
  and which scripts carrying the guide's boilerplate print themselves::

      Timeout for debug connection: 300
      ip_address: 10.0.0.4
      Debugger attached = True
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import asdict, dataclass

PREFIX = "AML_DEBUG"
VERSION = 1
GUIDE_PORT = 5678  # the guide's default; its lines never print a port
_out = sys.stdout  # the node's own output, kept even if the user's script replaces sys.stdout

# a logger may put a prefix before the line (the inference server's "... azmlinfsrv.print - ")
_OURS = re.compile(r"(?:^|\s)AML_DEBUG v(\d+) (announce|outcome|closed|failed) (\{.*\})\s*$")
_GUIDE_TIMEOUT = re.compile(r"(?:^|\s)Timeout for debug connection: (\d+(?:\.\d+)?)\s*$")
_GUIDE_ADDRESS = re.compile(r"(?:^|\s)ip_address: (\S+)\s*$")
_GUIDE_ATTACHED = re.compile(r"(?:^|\s)Debugger attached = (True|False)\s*$")


@dataclass(frozen=True)
class Announcement:
    """Where and until when a debugger can attach to one process.

    ``mode`` is ``listen`` (the node listens, the client connects to ``addresses[0]:port``) or
    ``connect`` (the node connects out to a client listening at ``addresses[0]:port``).
    """

    addresses: tuple[str, ...]
    port: int
    mode: str = "listen"
    attach_deadline: float | None = None
    pid: int | None = None
    rank: int = 0
    local_rank: int = 0
    script: str | None = None
    cwd: str | None = None
    hostname: str | None = None
    just_my_code: bool = True
    # the folder the job's code was placed in (snapshot, code folder), when the node was told
    source_root: str | None = None
    # "listen": attach to addresses[0]:port; "storage": only through the storage relay (the
    # port is debugpy's on the node's loopback); "auto": either
    via: str = "listen"
    # the node's relay's public value (relay_wire.KeyPair): the notebook's end keys the relay
    # with it; only the node writes this line, so no reader of the run can stand in for it
    relay_key: str | None = None
    source: str = "aml_debug"  # or "guide": read from the guide's human lines

    def seconds_left(self, now: float) -> float | None:
        if self.attach_deadline is None:
            return None
        return max(0.0, self.attach_deadline - now)


@dataclass(frozen=True)
class AttachOutcome:
    """Whether a debugger attached before the deadline (printed once the wait is over)."""

    attached: bool
    pid: int | None = None
    rank: int = 0
    source: str = "aml_debug"


@dataclass(frozen=True)
class PortClosed:
    """The debug port closed for good while the script still runs (printed by the gate)."""

    reason: str
    rank: int = 0
    source: str = "aml_debug"


@dataclass(frozen=True)
class Failure:
    """The script raised an exception that ends it, with no debugger attached.

    Where it raised (the innermost frame of the user's code: ``file``, ``line``, ``function``),
    and, when the post-mortem is on, ``attach``: where and until when a debugger can attach to
    stop at the exception (its ``attach_deadline`` ends the post-mortem); None when it is off.
    """

    exception: str  # the exception's type name, like ZeroDivisionError
    message: str
    file: str
    line: int
    function: str
    attach: Announcement | None = None
    pid: int | None = None
    rank: int = 0
    source: str = "aml_debug"
    # a runner in the script caught it (a parallel run()'s mini-batch failed): the process goes
    # on after the post-mortem, instead of exiting
    goes_on: bool = False

    def headline(self, root: str | None = None) -> str:
        """``ZeroDivisionError at steps/train.py:42 in fit``: the file relative to ``root``
        when it is inside it."""
        where = self.file
        if root and where.startswith(root.rstrip("/\\") + "/"):
            where = where[len(root.rstrip("/\\")) + 1:]
        return f"{self.exception} at {where}:{self.line} in {self.function}"

    @property
    def post_mortem_deadline(self) -> float | None:
        return self.attach.attach_deadline if self.attach is not None else None


MESSAGE_KEPT = 500  # characters of the exception's message in the line


def say(message: str) -> None:
    """One human line from the node, flushed at once (the log may be all a user sees)."""
    emit(f"aml-debug: {message}")


def emit(line: str) -> None:
    """One machine-readable line (from the ``format_`` functions below), flushed at once; in
    one write with its newline, so lines from two threads never run together."""
    _out.write(f"{line}\n")
    _out.flush()


def format_port_closed(closed: PortClosed) -> str:
    body = {"reason": closed.reason, "rank": closed.rank}
    return f"{PREFIX} v{VERSION} closed {json.dumps(body, sort_keys=True)}"


def format_failure(failure: Failure) -> str:
    """The machine-readable line for ``failure`` (no newline)."""
    body = {
        "exception": failure.exception, "message": failure.message[:MESSAGE_KEPT],
        "file": failure.file, "line": failure.line, "function": failure.function,
        "pid": failure.pid, "rank": failure.rank,
        "attach": _announcement_body(failure.attach) if failure.attach is not None else None,
    }
    if failure.goes_on:
        body["goes_on"] = True
    return f"{PREFIX} v{VERSION} failed {json.dumps(body, sort_keys=True)}"


def format_announcement(announcement: Announcement) -> str:
    """The machine-readable line for ``announcement`` (no newline)."""
    body = _announcement_body(announcement)
    return f"{PREFIX} v{VERSION} announce {json.dumps(body, sort_keys=True)}"


def _announcement_body(announcement: Announcement) -> dict:
    body = asdict(announcement)
    body["addresses"] = list(announcement.addresses)
    del body["source"]
    if announcement.via == "listen":  # the line stays as readers before the relay knew it
        del body["via"]
    if announcement.relay_key is None:
        del body["relay_key"]
    return body


def format_outcome(outcome: AttachOutcome) -> str:
    body = {"attached": outcome.attached, "pid": outcome.pid, "rank": outcome.rank}
    return f"{PREFIX} v{VERSION} outcome {json.dumps(body, sort_keys=True)}"


TAG_PREFIX = "aml_debug.announce."


def tag_key(rank: int) -> str:
    """The Azure ML run tag the bootstrap sets to its announcement line, one per rank."""
    return f"{TAG_PREFIX}{rank}"


def announcements_in_tags(tags: dict[str, str]) -> list[Announcement]:
    """The announcements a run's tags carry, in rank order."""
    found = [parse_line(value) for key, value in sorted(tags.items()) if key.startswith(TAG_PREFIX)]
    return [a for a in found if isinstance(a, Announcement)]


def guide_lines_before_wait(announcement: Announcement, timeout: float) -> list[str]:
    """The guide's own lines, so people and tools that follow the guide find what they expect."""
    return [
        f"Timeout for debug connection: {timeout:g}",
        f"ip_address: {announcement.addresses[0]}",
    ]


def guide_line_after_wait(attached: bool) -> str:
    return f"Debugger attached = {attached}"


def parse_line(line: str) -> Announcement | AttachOutcome | PortClosed | Failure | None:
    """Parse one of our machine-readable lines; anything else (or a newer version) gives None.

    >>> parse_line('AML_DEBUG v1 outcome {"attached": true, "pid": 7, "rank": 0}')
    AttachOutcome(attached=True, pid=7, rank=0, source='aml_debug')
    """
    match = _OURS.search(line.strip())
    if not match or int(match.group(1)) != VERSION:
        return None
    try:
        body = json.loads(match.group(3))
    except ValueError:
        return None
    if match.group(2) == "closed":
        return PortClosed(reason=str(body.get("reason", "")), rank=int(body.get("rank", 0)))
    if match.group(2) == "outcome":
        return AttachOutcome(
            attached=bool(body.get("attached")), pid=body.get("pid"), rank=body.get("rank", 0)
        )
    if match.group(2) == "failed":
        return _parse_failure(body)
    return _parse_announcement(body)


def _parse_failure(body: dict) -> Failure | None:
    attach = None
    if isinstance(body.get("attach"), dict):
        attach = _parse_announcement(body["attach"])
        if attach is None:
            return None
    try:
        return Failure(
            exception=str(body["exception"]), message=str(body.get("message", "")),
            file=str(body["file"]), line=int(body["line"]), function=str(body["function"]),
            attach=attach, pid=body.get("pid"), rank=int(body.get("rank", 0)),
            goes_on=bool(body.get("goes_on", False)),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _parse_announcement(body: dict) -> Announcement | None:
    try:
        return Announcement(
            addresses=tuple(body["addresses"]),
            port=int(body["port"]),
            mode=body.get("mode", "listen"),
            attach_deadline=body.get("attach_deadline"),
            pid=body.get("pid"),
            rank=int(body.get("rank", 0)),
            local_rank=int(body.get("local_rank", 0)),
            script=body.get("script"),
            cwd=body.get("cwd"),
            hostname=body.get("hostname"),
            just_my_code=bool(body.get("just_my_code", True)),
            source_root=body.get("source_root"),
            via=str(body.get("via", "listen")),
            relay_key=body.get("relay_key"),
        )
    except (KeyError, TypeError, ValueError):
        return None


@dataclass
class LogReader:
    """Reads a process's output line by line and reports announcements and outcomes.

    Our own lines are taken as they come. The guide's lines (``Timeout for debug connection``,
    ``ip_address``, ``Debugger attached``) are combined into an announcement as well, on port
    5678, the guide's default, with the deadline counted from when the timeout line was read.
    When both dialects appear (our bootstrap prints both), ours wins and the guide's are ignored.

    ``clock`` gives the time a guide line is read at; inject one to test without sleeping.
    """

    clock: object = time.time
    _ours_seen: bool = False
    _guide_timeout: float | None = None
    _guide_timeout_read_at: float | None = None

    def feed(self, line: str) -> list[Announcement | AttachOutcome | PortClosed | Failure]:
        """Everything ``line`` tells; usually an empty list."""
        found = parse_line(line)
        if found is not None:
            self._ours_seen = True
            return [found]
        if self._ours_seen:
            return []
        text = line.strip()
        if match := _GUIDE_TIMEOUT.search(text):
            self._guide_timeout = float(match.group(1))
            self._guide_timeout_read_at = self.clock()
            return []
        if match := _GUIDE_ADDRESS.search(text):
            deadline = None
            if self._guide_timeout is not None:
                deadline = self._guide_timeout_read_at + self._guide_timeout
            return [
                Announcement(
                    addresses=(match.group(1),),
                    port=GUIDE_PORT,
                    attach_deadline=deadline,
                    source="guide",
                )
            ]
        if match := _GUIDE_ATTACHED.search(text):
            return [AttachOutcome(attached=match.group(1) == "True", source="guide")]
        return []
