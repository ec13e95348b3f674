"""The local target: the user's script runs as a real subprocess under the bootstrap.

Never inside the kernel: ipykernel's own debugger owns debugpy there, and ``debugpy.listen``
works once per process. The bootstrap always binds 127.0.0.1 here, so nothing on a laptop or a
compute instance is exposed to its network.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from aml_debug_magics.announce import Announcement, AttachOutcome, LogReader

LOG_LINES_KEPT = 200


class LocalProcess:
    """One script under the bootstrap on this machine, its output read line by line.

    ``on_line`` receives every output line; ``on_news`` every announcement or attach outcome the
    lines carry. Both are called from the reader thread.
    """

    def __init__(
        self,
        script: str | os.PathLike[str],
        args: Sequence[str] = (),
        *,
        cwd: str | os.PathLike[str] | None = None,
        timeout: float = 300.0,
        port: int = 0,
        on_timeout: str = "continue",
        just_my_code: bool = True,
        env: dict[str, str] | None = None,
        python: str = sys.executable,
        on_line: Callable[[str], None] | None = None,
        on_news: Callable[[Announcement | AttachOutcome], None] | None = None,
    ) -> None:
        self.command = [
            python,
            "-u",
            "-m",
            "aml_debug_magics.bootstrap",
            "--listen",
            f"127.0.0.1:{port}",
            "--timeout",
            f"{timeout:g}",
            "--on-timeout",
            on_timeout,
            "--just-my-code" if just_my_code else "--no-just-my-code",
            "--",
            str(script),
            *args,
        ]
        self.cwd = Path(cwd) if cwd else Path.cwd()
        self.env = {**os.environ, **(env or {})}
        self.env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(Path(__file__).resolve().parents[2]), self.env.get("PYTHONPATH")])
        )
        self.last_lines: collections.deque[str] = collections.deque(maxlen=LOG_LINES_KEPT)
        self.announcement: Announcement | None = None
        self.outcome: AttachOutcome | None = None
        self.announced = threading.Event()
        self._on_line = on_line
        self._on_news = on_news
        self._reader = LogReader()
        self._process: subprocess.Popen[str] | None = None
        self._pump: threading.Thread | None = None

    def start(self) -> LocalProcess:
        self._process = subprocess.Popen(
            self.command,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,  # stop() ends the script's children too
        )
        self._pump = threading.Thread(target=self._read, name="aml-debug-local-log", daemon=True)
        self._pump.start()
        return self

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def returncode(self) -> int | None:
        return self._process.poll() if self._process else None

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for raw in self._process.stdout:
            line = raw.rstrip("\n")
            self.last_lines.append(line)
            if self._on_line:
                self._on_line(line)
            for news in self._reader.feed(line):
                if isinstance(news, Announcement):
                    self.announcement = news
                    self.announced.set()
                else:
                    self.outcome = news
                if self._on_news:
                    self._on_news(news)
        self.announced.set()  # ended without announcing: wake whoever waits

    def wait(self, timeout: float | None = None) -> int:
        assert self._process is not None
        code = self._process.wait(timeout)
        if self._pump:
            self._pump.join(timeout=5)
        return code

    def stop(self, grace: float = 5.0) -> None:
        """End the script, its children and its debug adapter; safe to call more than once."""
        if self._process is None or self._process.poll() is not None:
            return
        try:
            os.killpg(self._process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self._process.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
