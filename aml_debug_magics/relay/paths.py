"""Which way the debugger reaches a node (``--via``), and each relayed step's relay, run here.

In: the request's ``--via``, the workspace's storage account (``blobs.StorageAccount``), and the
announcements the followed steps make. Before the submit, :func:`choose_paths` settles the
``--via`` the nodes take (the default ``auto`` becomes ``listen``, with one line on the panel
saying why, where the relay cannot be made or cannot carry the step) and :meth:`RelayPaths.prepare`
makes and signs the blobs of each rank that waits in a relayed step (one pair of chains per rank)
and gives the variables its node reads: ``AML_DEBUG_RELAY_UP`` / ``_DOWN`` where one rank waits,
``AML_DEBUG_RELAY_UP_<rank>`` / ``_DOWN_<rank>`` for each where several do (the node's relay picks
its own rank's). When a rank announces itself, :meth:`RelayPaths.arrived` decides the path:
``storage`` always relays; ``auto`` probes the node's own address first (with the prober the
follower hands in) and relays only when this machine cannot reach it, without a new submit.
Relaying serves ``127.0.0.1:<port>`` here (``end.StorageRelay``); out goes the announcement the row
shows (the node's own, or that local port) and one line saying which path is in use. A missed
window, a closed port, the run's end or Stop end the step's relay and delete its blobs, with tokens
signed then; what a killed kernel leaves, the session's first ``prepare`` in that workspace sweeps
once its tokens have expired (``blobs.sweep``).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from aml_debug_magics.errors import DebugInputError
from aml_debug_magics.failures import first_line
from aml_debug_magics.node.announce import Announcement
from aml_debug_magics.node.options import POST_MORTEM_CHAINS
from aml_debug_magics.relay.blobs import (
    MISSING_ROLE,
    RelayBlobs,
    RelayUnavailable,
    StorageAccount,
    make_relay_blobs,
    sweep,
)
from aml_debug_magics.sources import distribution
from aml_debug_magics.sources.parallel import is_parallel_node, is_parallel_step

if TYPE_CHECKING:
    from aml_debug_magics.records import DebugRequest, StepSpec
    from aml_debug_magics.relay.end import StorageRelay

RUN_LIMIT = 24 * 3600.0  # seconds the tokens outlive the attach window when a run sets no limit
LONGEST_TOKEN = 7 * 24 * 3600.0  # a user delegation key lives at most 7 days
# the workspaces (blob endpoint, container) this Python process has swept: one listing each
SWEPT: set[tuple[str, str]] = set()
_SWEEPING = threading.Lock()
VIA_STORAGE = "via storage"
DIRECT = "direct"
START = "start"  # the relay of a rank's first window
POST_MORTEM = "post-mortem"  # the relay of its failure's window (a second pair of chains)


def choose_paths(
    request: DebugRequest, account: Callable[[], StorageAccount], notes: list[str]
) -> tuple[DebugRequest, RelayPaths | None, dict[str, dict[str, str]]]:
    """The request as the nodes take it (its ``via`` settled), the relays of its steps, and the
    variables each relayed step's node reads, by step name.

    A typed ``--via storage`` or ``auto`` relays or fails the submit in one line. The default
    (``request.via_default``) never fails it: it listens, and adds to ``notes`` one line
    saying why, for ``--connect`` (no note: the user chose it) and when the
    relay's blobs cannot be made (naming the role that would allow them); a parallel step's
    worker, which the relay does not reach, listens while the other steps keep ``auto``.
    """
    if request.via == "listen":
        return request, None, {}
    listening = dataclasses.replace(request, via="listen")
    relayed = [spec for spec in request.steps if spec.debug]
    if request.via_default:
        if request.connect is not None:
            return listening, None, {}
        parallel = [spec.name for spec in relayed if _is_parallel(spec)]
        if parallel:
            notes.append(f"{', '.join(parallel)}: --via listen, a parallel step's worker is "
                         "reached at its own port (the storage relay does not reach it)")
            relayed = [spec for spec in relayed if not _is_parallel(spec)]
            if not relayed:
                return listening, None, {}
    paths = RelayPaths(account, request.timeout, notes,
                       post_mortem=post_mortem_window(request.post_mortem, request.timeout))
    try:
        return request, paths, paths.prepare(relayed, request.ranks)
    except Exception as error:
        paths.close()
        if not request.via_default:
            raise
        if isinstance(error, RelayUnavailable):
            reason, remedy = error.reason, error.remedy
        else:  # the control plane's own refusal, before any storage account was named
            reason = first_line(error)
            remedy = f"ask for the {MISSING_ROLE} role on the workspace's default storage account"
        notes.append(f"--via listen: the storage relay cannot be made ({reason}); {remedy} to "
                     "have it as the fallback when the node's port cannot be reached")
        return listening, None, {}


def _is_parallel(spec: StepSpec) -> bool:
    return is_parallel_step(spec.sdk_object) or is_parallel_node(spec.sdk_object)


def waiting_ranks(ranks: str, spec: StepSpec) -> list[int]:
    """The ranks of ``spec`` that wait for a debugger under ``--ranks``: the numbers given, or
    for ``all`` every rank the distribution it declares starts. Raises ``RelayUnavailable`` for
    ``all`` where the step declares none (a node may still start several processes: their
    number is not known here)."""
    if ranks != "all":
        return sorted({int(rank) for rank in ranks.split(",")})
    layout, problem = spec.distribution, "it declares no distribution"
    if layout is None:
        sdk = spec.sdk_object
        runconfig = getattr(sdk, "_runconfig", None) or getattr(sdk, "run_config", None)
        try:
            layout = (distribution.read_v1(runconfig, spec.name) if runconfig is not None
                      else distribution.read_v2(sdk, spec.name))
        except DebugInputError as error:
            problem = str(error)
    if layout is None:
        reason = f"how many ranks step {spec.name!r} starts is not known ({problem})"
        remedy = "name the ranks that wait, like --ranks 0,1,"
        raise RelayUnavailable(f"--ranks all with the storage relay: {reason}: {remedy[:-1]}",
                               reason, remedy)
    return list(range(layout.world_size))


class RelayPaths:
    """The relays of one session's steps: their blobs, and a running relay per announced step."""

    def __init__(
        self, account: Callable[[], StorageAccount], timeout: float,
        notes: list[str] | None = None, *, swept: set[tuple[str, str]] = SWEPT,
        post_mortem: float = 0.0,
    ) -> None:
        self._account = account
        self._timeout = timeout
        self._notes = notes if notes is not None else []  # a sweep that failed says so here
        self._swept = swept
        self._post_mortem = post_mortem  # its window's seconds: a second pair per rank, or none
        # by (step, rank, phase): the phase is START or POST_MORTEM (the relay of a failure)
        self.blobs: dict[tuple[str, int, str], RelayBlobs] = {}
        self._running: dict[tuple[str, int, str], StorageRelay] = {}
        self._lock = threading.Lock()
        self._closed = False

    def prepare(self, specs: list[StepSpec], ranks: str = "0") -> dict[str, dict[str, str]]:
        """Make and sign the blobs of each rank that waits (``--ranks``) in each debugged
        step; the variables each step's nodes read. First, once per workspace in this Python
        process, sweep the relay folders whose tokens have expired (a sweep that fails adds one
        line to the notes, never fails the submit)."""
        account = self._account()
        debugged = [spec for spec in specs if spec.debug]
        if debugged:
            self._sweep_once(account)
        variables: dict[str, dict[str, str]] = {}
        for spec in debugged:
            lifetime = min(LONGEST_TOKEN, self._timeout + run_limit(spec) + self._post_mortem)
            waiting = waiting_ranks(ranks, spec)
            variables[spec.name] = {}
            phases = [START, POST_MORTEM] if self._post_mortem > 0 else [START]
            for rank in waiting:
                for phase in phases:
                    name = spec.name if len(waiting) == 1 else f"{spec.name}-rank{rank}"
                    blobs = make_relay_blobs(
                        account, lifetime, name if phase == START else f"{name}-failed")
                    self.blobs[(spec.name, rank, phase)] = blobs
                    made = blobs.node_environment()
                    if phase == POST_MORTEM:  # the node's relay of a failure reads these
                        made = {f"{variable}{POST_MORTEM_CHAINS}": url
                                for variable, url in made.items()}
                    if len(waiting) > 1:  # each rank's relay picks its own
                        made = {f"{variable}_{rank}": url for variable, url in made.items()}
                    variables[spec.name].update(made)
        return variables

    def _sweep_once(self, account: StorageAccount) -> None:
        workspace = (account.blob_endpoint, account.container)
        with _SWEEPING:
            if workspace in self._swept:
                return
            self._swept.add(workspace)
        problem = sweep(account, undated_after=LONGEST_TOKEN)
        if problem:
            self._notes.append(problem)

    def arrived(
        self, step: str, announcement: Announcement, prober: Callable[[str, int], str],
        on_end: Callable[[str], None] | None = None, *, post_mortem: bool = False,
    ) -> tuple[Announcement, str, str]:
        """The announcement the row shows, the path in use (``via storage`` or ``direct``) and
        the line that says why. ``on_end(reason)`` is called once if the relay ends by itself
        (its blobs are deleted then). ``post_mortem``: the announcement of a failure's window,
        relayed through the rank's second pair of chains."""
        fell_back = ""
        if announcement.via == "auto":
            host, port = announcement.addresses[0], announcement.port
            verdict = prober(host, port)
            if verdict == "reachable":
                return announcement, DIRECT, f"{host}:{port} is reachable from this machine"
            fell_back = f"{host}:{port} {verdict} from here; "
        phase = POST_MORTEM if post_mortem else START
        port = self._start(self._key(step, announcement.rank, phase), announcement.relay_key,
                           on_end)
        shown = dataclasses.replace(announcement, addresses=("127.0.0.1",), port=port)
        return shown, VIA_STORAGE, (
            f"{fell_back}{VIA_STORAGE}: attach to 127.0.0.1:{port} here; the debugger's bytes "
            "go through the workspace's blob storage, the node opens no port"
        )

    def _key(self, step: str, rank: int, phase: str = START) -> tuple[str, int, str]:
        """The relay of ``step``'s ``rank`` in ``phase``; where the step has one waiting rank,
        its relay (that rank reads the unnumbered variables, whatever its number)."""
        with self._lock:
            own = [key for key in self.blobs if key[0] == step and key[2] == phase]
        if (step, rank, phase) not in self.blobs and len(own) == 1:
            return own[0]
        return (step, rank, phase)

    def _start(
        self, key: tuple[str, int, str], node_key: str | None,
        on_end: Callable[[str], None] | None,
    ) -> int:
        def ended(reason: str) -> None:
            if on_end is not None:
                on_end(reason)
            threading.Thread(target=self.end_step, args=key[:2],
                             kwargs={"post_mortem": key[2] == POST_MORTEM},
                             name="aml-debug-relay-end", daemon=True).start()

        with self._lock:
            if self._closed:
                raise RuntimeError("the session's relays have ended")
            if key not in self._running:
                from aml_debug_magics.relay.end import StorageRelay

                if key not in self.blobs:
                    if key[2] == POST_MORTEM:
                        raise RuntimeError(f"rank {key[1]} of {key[0]!r} has no relay for a "
                                           "post-mortem: the session was started without one")
                    raise RuntimeError(f"rank {key[1]} of {key[0]!r} has no relay: it was not "
                                       "among the --ranks that wait")
                relay = StorageRelay(*self.blobs[key].notebook_chains(), node_key, ended)
                relay.start()
                self._running[key] = relay
            return self._running[key].port

    def end_step(
        self, step: str, rank: int | None = None, *, post_mortem: bool | None = None
    ) -> str:
        """End the relay of the step's ``rank`` (default: each of the step's), of its first
        window or (``post_mortem``) of its failure's (default: both), and delete its blobs (a
        missed window, a closed port); one line saying which stay, and until when, where some
        could not be deleted, else ""."""
        with self._lock:
            keys = [key for key in {*self._running, *self.blobs} if key[0] == step]
        if rank is not None:
            phases = [START, POST_MORTEM] if post_mortem is None else [
                POST_MORTEM if post_mortem else START]
            keys = [self._key(step, rank, phase) for phase in phases]
        left = []
        for key in sorted(keys):
            with self._lock:
                running = self._running.pop(key, None)
                blobs = self.blobs.pop(key, None)
            if running is not None:
                running.stop()
            if blobs is not None:
                blobs.delete()
                left.append(blobs.left_behind)
        return "; ".join(filter(None, left))

    def close(self) -> str:
        """End every relay and delete every blob (the run ended, Stop, the kernel ends); one
        line saying which stay, where some could not be deleted, else ""."""
        with self._lock:
            self._closed = True
            steps = {key[0] for key in {*self._running, *self.blobs}}
        return "; ".join(filter(None, (self.end_step(step) for step in sorted(steps))))


def post_mortem_window(post_mortem: str | None, timeout: float) -> float:
    """The post-mortem's seconds as ``--post-mortem`` gives them (None: the attach window; 0:
    off), for the tokens of its relay."""
    if post_mortem is None:
        return timeout
    try:
        return max(0.0, float(post_mortem))
    except ValueError:  # "off"
        return 0.0


def run_limit(spec: StepSpec) -> float:
    """How long the step's run may last, where its SDK object says (SDK v1
    ``max_run_duration_seconds``, SDK v2 ``limits.timeout``), else :data:`RUN_LIMIT`."""
    sdk = spec.sdk_object
    runconfig = getattr(sdk, "_runconfig", None) or getattr(sdk, "run_config", None)
    found = (getattr(sdk, "max_run_duration_seconds", None)
             or getattr(runconfig, "max_run_duration_seconds", None)
             or getattr(getattr(sdk, "limits", None), "timeout", None))
    return float(found) if isinstance(found, int | float) and found > 0 else RUN_LIMIT
