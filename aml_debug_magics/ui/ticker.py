"""One background thread that moves every panel's countdown.

A thread, not an asyncio task: a task freezes while another cell runs, a thread keeps updating
widgets (ipykernel 7.1+ sends updates from threads). The thread ends when no panel needs it.
A panel whose tick fails is said in one line on stderr and no longer ticked; the others go on.
"""

from __future__ import annotations

import sys
import threading
from typing import Protocol

from aml_debug_magics.failures import first_line


class Ticking(Protocol):
    def tick(self) -> bool: ...  # False: done, stop calling


class Ticker:
    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._panels: list[Ticking] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()

    def add(self, panel: Ticking) -> None:
        with self._lock:
            if panel not in self._panels:
                self._panels.append(panel)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="aml-debug-ticker", daemon=True
                )
                self._thread.start()

    def remove(self, panel: Ticking) -> None:
        with self._lock:
            if panel in self._panels:
                self._panels.remove(panel)
            if not self._panels:
                self._wake.set()  # let the thread end now, not after its pause

    @property
    def running(self) -> bool:
        return self._thread is not None

    def _loop(self) -> None:
        while True:
            with self._lock:
                panels = list(self._panels)
                if not panels:
                    self._thread = None
                    return
            for panel in panels:
                try:
                    more = panel.tick()
                except Exception as error:  # a broken panel must not stop the others' countdowns
                    print(
                        f"aml_debug_magics: a panel's countdown stopped ({type(error).__name__}: "
                        f"{first_line(error)}); its session runs on, and Stop still works",
                        file=sys.stderr, flush=True,
                    )
                    more = False
                if not more:
                    self.remove(panel)
            self._wake.wait(self.interval)
            self._wake.clear()


TICKER = Ticker()
