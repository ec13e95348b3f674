"""Failures said in one line: a failed script's own exception from its log, and an error of
ours or of an SDK's.

In: the last lines of a process's output (a server's or a node's log, wrapped in tracebacks of
their own), or an exception. Out: one line for the row or the message, like
``FileNotFoundError: ... (score.py, line 9, in init)``; SAS signatures redacted.
"""

from __future__ import annotations

import re
from pathlib import Path

from aml_debug_magics.redaction import redact

_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+)(?:, in (?P<function>\S+))?')
_EXCEPTION = re.compile(r"^(?:[\w.]+\.)?(?P<name>\w*(?:Error|Exception|Exit|Interrupt))\b:?(.*)$")


def user_error(lines: list[str], script: Path | str) -> str | None:
    """The user's own exception from the server's output: the exception line and the last
    frame in their script (``FileNotFoundError: ... (score.py, line 9, in init)``), or None.

    The server wraps it in tracebacks of its own; the first traceback that passes through the
    user's script is theirs.
    """
    script = Path(script)
    frame = None
    for line in lines:
        found = _FRAME.search(line)
        if found and Path(found["file"]).name == script.name:
            frame = found
        elif frame is not None and (exception := _EXCEPTION.match(line.strip())):
            where = f"{script.name}, line {frame['line']}"
            where += f", in {frame['function']}" if frame["function"] else ""
            return f"{exception.group(0).strip()} ({where})"
    return None


def first_line(error: BaseException) -> str:
    """An exception's first line, redacted (an SDK error may quote a SAS URL), or its type's
    name when it says nothing."""
    text = str(error)
    return redact(text.splitlines()[0]) if text.strip() else type(error).__name__
