"""The azureml target: submit the session's steps, job or run to Azure ML and follow it.

In: the request (its StepSpecs from ``sources/``, and for SDK v2 the user's job) and a workspace
seam (``workspace.SdkWorkspace`` for SDK v1, ``azureml_v2.V2Workspace`` for SDK v2). The
debug-ready copy is made by ``runconfig.py`` (SDK v1) or ``azureml_v2.py`` (SDK v2), submitted,
and handed to ``follow.py``, which reports to the session until the run ends or Stop.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aml_debug_magics.failures import first_line
from aml_debug_magics.node.gate import admits_everyone
from aml_debug_magics.records import Status
from aml_debug_magics.relay.paths import RelayPaths, choose_paths
from aml_debug_magics.targets.follow import RunFollower
from aml_debug_magics.targets.reachability import probe
from aml_debug_magics.targets.runconfig import debug_ready
from aml_debug_magics.targets.statuses import going_on_statuses

if TYPE_CHECKING:
    from aml_debug_magics.records import DebugRequest
    from aml_debug_magics.session import DebugSession
    from aml_debug_magics.targets.workspace import SdkWorkspace

ANYONE_MAY_ATTACH = (
    "anyone who reaches the node's port can attach and run code as the job's identity"
)


class AzureMLTarget:
    """Submits the session's steps (or run) to Azure ML and follows the runs it starts."""

    def __init__(
        self,
        request: DebugRequest,
        workspace: SdkWorkspace,
        *,
        experiment: str = "aml-debug",
        poll_fast: float | None = None,
        poll_slow: float | None = None,
        prober: Callable[[str, int], str] = probe,
        opener: Any = None,
    ) -> None:
        self.request = request
        self.workspace = workspace
        self.experiment = experiment
        self.following = {"poll_fast": poll_fast, "poll_slow": poll_slow, "prober": prober,
                          "opener": opener}
        self.run: Any = None
        self.notes: list[str] = []
        self.paths: RelayPaths | None = None  # --via storage / auto: the relays' blobs and ends
        self._stopping = threading.Event()
        self._follower: threading.Thread | None = None
        self._events: DebugSession | None = None

    def start(self, events: DebugSession) -> None:
        self._events = events
        self._follower = threading.Thread(
            target=self._submit_and_follow, args=(events,), name="aml-debug-azureml", daemon=True
        )
        self._follower.start()

    def stop(self) -> None:
        self._stopping.set()
        if self.run is not None:
            self._cancel()
        if self._follower is not None and self._follower is not threading.current_thread():
            self._follower.join(timeout=15)
        if self.paths is not None:
            self.paths.close()

    def _cancel(self) -> None:
        """Cancel the run; when Azure ML refuses, the panel says so and where to cancel it."""
        try:
            self.run.cancel()
        except Exception as error:
            if self._events is None:
                return
            portal = ""
            with contextlib.suppress(Exception):
                portal = self.run.get_portal_url()
            where = f"cancel it in the studio: {portal}" if portal else "cancel it in the studio"
            self._events.target_note(
                f"could not cancel run {getattr(self.run, 'id', '')} ({first_line(error)}): "
                f"it may still be running; {where}"
            )

    def _submit_and_follow(self, events: DebugSession) -> None:
        specs = self.request.steps
        for spec in specs:
            events.step_status(spec.name, Status.QUEUED, "submitting to Azure ML")
        try:
            going_on = going_on_statuses(self.request.sdk)
            # the relay's blobs, made and signed before; the default listens where it cannot
            self.request, self.paths, variables = choose_paths(
                self.request, lambda: self.workspace.relay_account(), self.notes)
            if self.request.sdk == "v2":
                from aml_debug_magics.targets.azureml_v2 import debug_ready_v2
                from aml_debug_magics.targets.azureml_v2 import is_pipeline as is_pipeline_job

                is_pipeline = is_pipeline_job(self.request.submitted)
                with debug_ready_v2(specs, self.request, self.notes, variables) as what:
                    self.run = self.workspace.submit(self.experiment, what)
            else:
                is_pipeline = hasattr(specs[0].sdk_object, "_script_name")
                with debug_ready(specs, self.request, self.notes, variables) as what:
                    self.run = self.workspace.submit(self.experiment, what)
        except Exception as error:  # the submit failed: say why, in one line, without secrets
            if self.paths is not None:
                self.paths.close()
            message = first_line(error)
            for spec in specs:
                events.step_status(spec.name, Status.FAILED, f"submit failed: {message}")
            events.target_done(failed=True)
            return
        if self._stopping.is_set():
            self._cancel()
            return
        portal = getattr(self.run, "get_portal_url", lambda: "")()
        allow = self.request.allow
        warning = [f"--allow {allow}: {ANYONE_MAY_ATTACH}"] if admits_everyone(allow) else []
        note = "; ".join([*warning, f"run {self.run.id}: {portal}", *filter(None, self.notes)])
        events.target_note(note)
        try:
            RunFollower(
                self.run, specs, events, is_pipeline=is_pipeline, going_on=going_on,
                stopping=self._stopping, paths=self.paths, **self.following,
            ).follow(note)
        finally:
            if self.paths is not None:
                self.paths.close()
