"""Which way the debugger reaches a node (``--via``), and the notebook's end of the storage relay.

In: the request's ``--via``, the workspace's storage account (``relay_blobs.StorageAccount``),
and the announcements the followed steps make. Before the submit, :meth:`RelayPaths.prepare`
makes and signs each debugged step's blobs and gives the variables its node reads. When a step
announces itself, :meth:`RelayPaths.arrived` decides the path: ``storage`` always relays;
``auto`` probes the node's own address first (``reachability.probe``) and relays only when this
machine cannot reach it, without a new submit. Relaying serves ``127.0.0.1:<port>`` here
(``relay.StorageRelay``); out goes the announcement the row shows (the node's own, or that local
port) and one line saying which path is in use. A missed window, a closed port, the run's end or
Stop end the step's relay and delete its blobs (their tokens expire anyway).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from aml_debug_magics.node.announce import Announcement
from aml_debug_magics.targets.relay_blobs import RelayBlobs, StorageAccount, make_relay_blobs

if TYPE_CHECKING:
    from aml_debug_magics.records import StepSpec
    from aml_debug_magics.relay import StorageRelay

RUN_LIMIT = 24 * 3600.0  # seconds the tokens outlive the attach window when a run sets no limit
LONGEST_TOKEN = 7 * 24 * 3600.0  # a user delegation key lives at most 7 days
VIA_STORAGE = "via storage"
DIRECT = "direct"


class RelayPaths:
    """The relays of one session's steps: their blobs, and a running relay per announced step."""

    def __init__(self, account: Callable[[], StorageAccount], timeout: float) -> None:
        self._account = account
        self._timeout = timeout
        self.blobs: dict[str, RelayBlobs] = {}
        self._running: dict[str, StorageRelay] = {}
        self._lock = threading.Lock()
        self._closed = False

    def prepare(self, specs: list[StepSpec]) -> dict[str, dict[str, str]]:
        """Make and sign each debugged step's blobs; the variables each step's node reads."""
        account = self._account()
        for spec in specs:
            if spec.debug:
                lifetime = min(LONGEST_TOKEN, self._timeout + run_limit(spec))
                self.blobs[spec.name] = make_relay_blobs(account, lifetime, spec.name)
        return {name: blobs.node_environment() for name, blobs in self.blobs.items()}

    def arrived(
        self, step: str, announcement: Announcement, prober: Callable[[str, int], str]
    ) -> tuple[Announcement, str, str]:
        """The announcement the row shows, the path in use (``via storage`` or ``direct``) and
        the line that says why."""
        fell_back = ""
        if announcement.via == "auto":
            host, port = announcement.addresses[0], announcement.port
            verdict = prober(host, port)
            if verdict == "reachable":
                return announcement, DIRECT, f"{host}:{port} is reachable from here: attach to it"
            fell_back = f"{host}:{port} {verdict} from here; "
        port = self._start(step)
        shown = dataclasses.replace(announcement, addresses=("127.0.0.1",), port=port)
        return shown, VIA_STORAGE, (
            f"{fell_back}{VIA_STORAGE}: attach to 127.0.0.1:{port} here; the debugger's bytes "
            "go through the workspace's blob storage, the node opens no port"
        )

    def _start(self, step: str) -> int:
        with self._lock:
            if self._closed:
                raise RuntimeError("the session's relays have ended")
            if step not in self._running:
                from aml_debug_magics.relay import StorageRelay

                relay = StorageRelay(*self.blobs[step].notebook_chains())
                relay.start()
                self._running[step] = relay
            return self._running[step].port

    def end_step(self, step: str) -> None:
        """End the step's relay and delete its blobs (a missed window, a closed port)."""
        with self._lock:
            running = self._running.pop(step, None)
            blobs = self.blobs.pop(step, None)
        if running is not None:
            running.stop()
        if blobs is not None:
            blobs.delete()

    def close(self) -> None:
        """End every relay and delete every blob (the run ended, Stop, the kernel ends)."""
        with self._lock:
            self._closed = True
            steps = {*self._running, *self.blobs}
        for step in steps:
            self.end_step(step)


def run_limit(spec: StepSpec) -> float:
    """How long the step's run may last, where its SDK object says (SDK v1
    ``max_run_duration_seconds``, SDK v2 ``limits.timeout``), else :data:`RUN_LIMIT`."""
    sdk = spec.sdk_object
    runconfig = getattr(sdk, "_runconfig", None) or getattr(sdk, "run_config", None)
    found = (getattr(sdk, "max_run_duration_seconds", None)
             or getattr(runconfig, "max_run_duration_seconds", None)
             or getattr(getattr(sdk, "limits", None), "timeout", None))
    return float(found) if isinstance(found, int | float) and found > 0 else RUN_LIMIT
