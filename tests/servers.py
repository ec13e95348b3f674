"""Start-up of the servers the tests run for real (Azurite, JupyterLab): they print where they
listen, and their output must keep draining after that."""

from __future__ import annotations

import re
import subprocess
import threading
from pathlib import Path


def listening_line(process: subprocess.Popen, pattern: str, what: str,
                   keep: Path | None = None) -> re.Match:
    """Read ``process``'s text stdout until a line matches ``pattern``; then keep the pipe drained,
    writing what follows to ``keep`` when given (a failing test can show the server's side).

    A process that ends before printing such a line is killed and fails with ``what`` named.
    """
    for line in process.stdout:
        if found := re.search(pattern, line):
            threading.Thread(target=_drain, args=(process, keep), daemon=True).start()
            return found
    process.kill()
    raise RuntimeError(f"{what} did not start")


def _drain(process: subprocess.Popen, keep: Path | None) -> None:
    if keep is None:
        process.stdout.read()
        return
    with keep.open("a") as log:
        for line in process.stdout:
            log.write(line)
            log.flush()


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a kept log, for a failure message."""
    if not path.exists():
        return f"(no {path.name})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
