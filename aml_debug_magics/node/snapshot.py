"""A snapshot of a failed script's traceback: what a debugger would have shown, kept as text.

In: the exception that ended the script (its traceback's frames still alive). Out: a plain dict
(JSON-ready) with, for each frame from the outermost, the file, line, function, the source
lines around the line and the locals as bounded reprs; secrets redacted by :func:`redact`, the
one set of rules the notebook's screen uses too (``aml_debug_magics/redaction.py`` imports
them). The lines that carry it in a run's log (``AML_DEBUG v1 snapshot {...}``, in parts) are
written and read back here. Standard library only: this file travels into a run's snapshot as
``aml_debug_snapshot.py``.

Cost: one walk of the traceback, each value's ``repr`` cut to ``REPR_KEPT`` characters and
containers to ``DEPTH`` levels and ``ITEMS`` items; whole snapshot capped at ``MAX_BYTES``
(frames from the innermost kept first: the raise matters most).
"""

from __future__ import annotations

import base64
import json
import linecache
import re
import reprlib
import zlib

SNAPSHOT_VERSION = 1
REPR_KEPT = 400  # characters of one value's repr
DEPTH = 3  # levels of nested containers shown
ITEMS = 20  # items of one container shown
CONTEXT = 5  # source lines either side of a frame's line
MAX_BYTES = 1024 * 1024  # the whole snapshot, as JSON
LINE_PART = 60000  # characters of encoded snapshot on one log line

# "sig" not preceded by a letter (a "6" before it is the end of %26 or \u0026), then "=" or
# its encoding, then the value up to the next parameter, plain, URL-encoded or JSON-escaped
SAS_SIGNATURE = re.compile(r"(?i)(?<![a-z_])(sig(?:=|%3D))((?:(?!%26)[^&\s\"'<>\\])+)")
# a storage connection string's or a Service Bus's key, a bearer token
_KEYS = re.compile(r"(?i)((?:AccountKey|SharedAccessKey|SharedAccessSignature)=)([^;\s\"']+)")
_BEARER = re.compile(r"(?i)(\bBearer\s+)([A-Za-z0-9\-._~+/]+=*)")
# a variable whose name says it holds a secret: its whole value is hidden
SECRET_NAME = re.compile(r"(?i)(password|passwd|secret|token|api_?key|access_?key|credential"
                         r"|connection_?string|sas)")
REDACTED = "REDACTED"


def redact(text: str) -> str:
    """``text`` with SAS signatures, account and shared-access keys and bearer tokens replaced.

    >>> redact("DefaultEndpointsProtocol=https;AccountName=a;AccountKey=c2VjcmV0;")
    'DefaultEndpointsProtocol=https;AccountName=a;AccountKey=REDACTED;'
    """
    text = SAS_SIGNATURE.sub(r"\1" + REDACTED, text)
    text = _KEYS.sub(r"\1" + REDACTED, text)
    return _BEARER.sub(r"\1" + REDACTED, text)


class _BoundedRepr(reprlib.Repr):
    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = DEPTH
        self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = ITEMS
        self.maxdict = self.maxdeque = self.maxarray = ITEMS
        self.maxstring = self.maxother = self.maxlong = REPR_KEPT

    def repr_instance(self, obj: object, level: int) -> str:
        try:
            text = repr(obj)
        except Exception as error:  # a broken __repr__ must not lose the snapshot
            return f"<{type(obj).__name__}: repr failed: {type(error).__name__}>"
        return text if len(text) <= REPR_KEPT else text[:REPR_KEPT - 3] + "..."


_REPR = _BoundedRepr()


def value_text(name: str, value: object) -> str:
    """One local's value as the snapshot shows it: bounded and redacted."""
    if SECRET_NAME.search(name):
        return REDACTED
    try:
        text = _REPR.repr(value)
    except Exception as error:
        text = f"<{type(value).__name__}: repr failed: {type(error).__name__}>"
    return redact(text[:REPR_KEPT])


def take(error: BaseException, *, max_bytes: int = MAX_BYTES) -> dict:
    """The snapshot of ``error``'s traceback (frames outermost first, as a traceback prints).

    ``truncated`` says what was left out to stay under ``max_bytes``: outer frames' locals
    first, then outer frames themselves.
    """
    frames = []
    tb = error.__traceback__
    while tb is not None:
        frames.append(_frame(tb.tb_frame, tb.tb_lineno))
        tb = tb.tb_next
    snapshot = {
        "version": SNAPSHOT_VERSION,
        "exception": type(error).__name__,
        "message": redact(str(error))[:REPR_KEPT * 5],
        "frames": frames,
        "truncated": "",
    }
    size = len(json.dumps(snapshot))
    dropped_locals = dropped_frames = 0
    for frame in frames[:-1]:  # the raising frame's locals go last
        if size <= max_bytes:
            break
        size -= len(json.dumps(frame["locals"])) - 2
        frame["locals"] = {}
        dropped_locals += 1
    while size > max_bytes and len(frames) > 1:
        size -= len(json.dumps(frames.pop(0))) + 2
        dropped_frames += 1
    if dropped_locals or dropped_frames:
        snapshot["truncated"] = (
            f"over {max_bytes} bytes: the locals of {dropped_locals} outer frames and "
            f"{dropped_frames} outermost frames were left out"
        )
    return snapshot


def _frame(frame: object, line: int) -> dict:
    code = frame.f_code  # type: ignore[attr-defined]
    first = max(1, line - CONTEXT)
    source = [
        redact(linecache.getline(code.co_filename, number).rstrip("\n"))
        for number in range(first, line + CONTEXT + 1)
    ]
    while source and not source[-1]:
        source.pop()
    local_values = dict(frame.f_locals)  # type: ignore[attr-defined]
    return {
        "file": code.co_filename,
        "line": line,
        "function": code.co_name,
        "source_first_line": first,
        "source": source,
        "locals": {name: value_text(name, value) for name, value in local_values.items()
                   if not (name.startswith("__") and name.endswith("__"))},
    }


def encode_lines(snapshot: dict, rank: int = 0) -> list[str]:
    """The log lines that carry ``snapshot``: compressed, in parts of at most ``LINE_PART``
    characters, each ``AML_DEBUG v1 snapshot {"rank", "part", "parts", "data"}``."""
    packed = base64.b64encode(zlib.compress(json.dumps(snapshot).encode(), 6)).decode()
    parts = [packed[i:i + LINE_PART] for i in range(0, len(packed), LINE_PART)] or [""]
    return [
        "AML_DEBUG v1 snapshot " + json.dumps(
            {"rank": rank, "part": number, "parts": len(parts), "data": data}, sort_keys=True
        )
        for number, data in enumerate(parts)
    ]


_LINE = re.compile(r"(?:^|\s)AML_DEBUG v1 snapshot (\{.*\})\s*$")


class SnapshotReader:
    """Puts a snapshot's parts back together, line by line; ``feed`` returns
    ``(rank, snapshot)`` once the last part came, else None."""

    def __init__(self) -> None:
        self._parts: dict[int, dict[int, str]] = {}

    def feed(self, line: str) -> tuple[int, dict] | None:
        match = _LINE.search(line.strip())
        if not match:
            return None
        try:
            body = json.loads(match.group(1))
            rank, number, count = int(body["rank"]), int(body["part"]), int(body["parts"])
            parts = self._parts.setdefault(rank, {})
            parts[number] = str(body["data"])
            if len(parts) < count:
                return None
            del self._parts[rank]
            packed = "".join(parts[i] for i in range(count))
            return rank, json.loads(zlib.decompress(base64.b64decode(packed)))
        except (KeyError, TypeError, ValueError, zlib.error):
            return None


def where_text(snapshot: dict) -> str:
    """The frames as ``%aml_debug_step where`` prints them: a traceback's lines."""
    lines = ["Traceback (most recent call last):"]
    for frame in snapshot["frames"]:
        lines.append(f'  File "{frame["file"]}", line {frame["line"]}, in {frame["function"]}')
        index = frame["line"] - frame["source_first_line"]
        if 0 <= index < len(frame["source"]):
            lines.append(f"    {frame['source'][index].strip()}")
    lines.append(f"{snapshot['exception']}: {snapshot['message']}" if snapshot["message"]
                 else snapshot["exception"])
    return "\n".join(lines)
