"""Start-up of the servers the tests run for real (Azurite, JupyterLab): they print where they
listen, and their output must keep draining after that."""

from __future__ import annotations

import re
import subprocess
import threading


def listening_line(process: subprocess.Popen, pattern: str, what: str) -> re.Match:
    """Read ``process``'s text stdout until a line matches ``pattern``; then keep the pipe drained.

    A process that ends before printing such a line is killed and fails with ``what`` named.
    """
    for line in process.stdout:
        if found := re.search(pattern, line):
            threading.Thread(target=process.stdout.read, daemon=True).start()
            return found
    process.kill()
    raise RuntimeError(f"{what} did not start")
