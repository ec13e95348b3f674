"""Run any Python script under debugpy on the machine it lands on, without editing it.

    python -m aml_debug_magics.node.bootstrap [--listen HOST:PORT | --connect HOST:PORT]
        [--via listen|storage|auto] [--timeout SECONDS] [--on-timeout continue|exit]
        [--ranks 0|all|0,2] [--just-my-code | --no-just-my-code] [--source-root DIR]
        [--post-mortem SECONDS|off]
        -- SCRIPT [ARGS...]                                 (or -- -m MODULE [ARGS...])

This file runs ON THE NODE: on Azure ML it travels in the run's snapshot as
``aml_debug_bootstrap.py`` beside the other node files under their shipped names
(:data:`SHIPPED_NAMES`), where this package is not installed, so it imports only the standard
library and debugpy.

What flows through it, in order: the options (``options.py``) and this process's rank
(``ranks.py``) come in; it binds the debug port, starts debugpy behind it (``debugger.py``),
prints one announcement line (and the human lines of Microsoft's guide), waits for a debugger
until a real deadline, then runs the script exactly as ``python SCRIPT ARGS`` would
(``script.py``). A missed deadline closes the port and stops tracing, so the script runs at full
speed.

An uncaught exception with nobody attached opens the same kind of window again, the post-mortem
(:func:`_post_mortem`): a ``failed`` line names the exception and where, debugpy starts anew
behind a new gate, and a debugger that attaches stops at the exception with the script's frames
alive; its detach, or the window's end, lets the process exit as python would have.

The port belongs to a small gate process (``gate.py``), not to debugpy: a bare TCP connect and
close on a debugpy listener (a port scanner, a health check) makes debugpy's adapter exit while
the script waits forever. The gate passes on only debug-protocol connections. With
``--via storage`` the gate listens on loopback only and a relay process (``relay.py``) carries
the debugger's bytes through two append blobs; ``--via auto`` offers both.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import sys
import sysconfig
import threading
import time
from collections.abc import Callable

try:
    from aml_debug_magics.node import announce, snapshot
    from aml_debug_magics.node import script as script_module
    from aml_debug_magics.node.announce import emit, say
    from aml_debug_magics.node.debugger import (
        Debugger,
        GateHandle,
        RelayHandle,
        absorb_script_calls,
        bind_public_port,
        hide_from_debugger,
        import_debugpy,
    )
    from aml_debug_magics.node.options import (
        POST_MORTEM_CHAINS,
        RELAY_UP_VARIABLE,
        SOURCE_ROOT_VARIABLE,
        Address,
        Options,
        UsageError,
        on_azure_ml,
        parse_address,
        parse_options,
        relay_chain,
    )
    from aml_debug_magics.node.ranks import Rank, detect_rank, node_addresses
    from aml_debug_magics.node.script import run_script, script_path
except ImportError:  # shipped into a run's snapshot beside this file
    import aml_debug_announce as announce  # type: ignore[no-redef]
    import aml_debug_script as script_module  # type: ignore[no-redef]
    import aml_debug_snapshot as snapshot  # type: ignore[no-redef]
    from aml_debug_announce import emit, say  # type: ignore[no-redef]
    from aml_debug_debugger import (  # type: ignore[no-redef]
        Debugger,
        GateHandle,
        RelayHandle,
        absorb_script_calls,
        bind_public_port,
        hide_from_debugger,
        import_debugpy,
    )
    from aml_debug_options import (  # type: ignore[no-redef]
        POST_MORTEM_CHAINS,
        RELAY_UP_VARIABLE,
        SOURCE_ROOT_VARIABLE,
        Address,
        Options,
        UsageError,
        on_azure_ml,
        parse_address,
        parse_options,
        relay_chain,
    )
    from aml_debug_ranks import Rank, detect_rank, node_addresses  # type: ignore[no-redef]
    from aml_debug_script import run_script, script_path  # type: ignore[no-redef]

__all__ = [
    "ENTRY_SHIPPED_NAMES", "SHIPPED_NAMES", "SOURCE_ROOT_VARIABLE", "debug_and_run",
    "debug_in_this_process", "failure_of", "main", "post_mortem_in_this_process",
    "trace_this_thread",
]

SHIPPED_NAMES = {  # file in aml_debug_magics/node/ -> its name in a run's snapshot
    "bootstrap.py": "aml_debug_bootstrap.py",
    "options.py": "aml_debug_options.py",
    "ranks.py": "aml_debug_ranks.py",
    "debugger.py": "aml_debug_debugger.py",
    "script.py": "aml_debug_script.py",
    "announce.py": "aml_debug_announce.py",
    "gate.py": "aml_debug_gate.py",
    "relay.py": "aml_debug_relay.py",
    "relay_wire.py": "aml_debug_relay_wire.py",
    "snapshot.py": "aml_debug_snapshot.py",
}
ENTRY_SHIPPED_NAMES = {  # a scoring image's entry script too
    "entry.py": "aml_debug_entry.py", "worker_debugger.py": "aml_debug_worker_debugger.py",
}
EXIT_USAGE = 2
EXIT_NOT_ATTACHED = 3
CANCEL_WAIT = 1.0  # seconds for each helper process to end on SIGTERM
def _tag_run_in_background(line: str, rank: int) -> None:
    """Tag the Azure ML run with the announcement: tags arrive before late log uploads."""
    if not on_azure_ml(os.environ):
        return

    def tag() -> None:
        try:
            from azureml.core import Run

            run = Run.get_context(allow_offline=True)
            if hasattr(run, "set_tags") and not type(run).__name__.startswith("_Offline"):
                run.set_tags({announce.tag_key(rank): line})
        except Exception as error:  # the log line is the fallback
            say(f"could not tag the run with the announcement ({error}); the log has it")

    hide_from_debugger(threading.Thread(target=tag, name="aml-debug-tag")).start()


# ---------------------------------------------------------------------------------------------
# The whole flow


def _announce(announcement: announce.Announcement, timeout: float) -> None:
    line = announce.format_announcement(announcement)
    emit(line)  # first: a reader takes ours and then ignores the guide's lines
    for guide_line in announce.guide_lines_before_wait(announcement, timeout):
        emit(guide_line)
    _tag_run_in_background(line, announcement.rank)


def _finish_wait(
    attached: bool, options: Options, rank: Rank, where: str, gone: str = ""
) -> None:
    """The lines after the wait; ``gone``: why no debugger could attach any more, if that is
    what ended the wait."""
    emit(announce.guide_line_after_wait(attached))
    emit(announce.format_outcome(announce.AttachOutcome(attached, os.getpid(), rank.rank or 0)))
    if not attached:
        what = "runs now" if options.on_timeout == "continue" else "will not run (--on-timeout)"
        why = f"{gone}, so no debugger can attach" if gone else (
            f"no debugger attached within {options.timeout:g} s"
        )
        say(f"{why}; {where} is closed and the script {what} without the debugger")


def run_without_debugger(options: Options, rank: Rank, error: ImportError) -> int:
    """No debugpy to start: say so (a line for people, and one for the panel), then run the
    script as plain python would."""
    reason = (
        f"debugpy cannot be imported here ({error}) and no copy of it came with the "
        "snapshot: the script runs without a debugger (add debugpy to the environment)"
    )
    say(reason)
    emit(announce.format_port_closed(announce.PortClosed(reason, rank.rank or 0)))
    return run_script(options.script, options.script_args, module=options.module)


def debug_and_run(options: Options, rank: Rank) -> int:
    try:
        import_debugpy()
    except ImportError as error:
        return run_without_debugger(options, rank, error)
    deadline = time.time() + options.timeout
    gate_handle: GateHandle | None = None
    relay_handle: RelayHandle | None = None
    if options.mode == "listen":
        gate_address = _gate_address(options, rank)
        gate_handle = GateHandle(
            bind_public_port(gate_address), allow=_gate_allow(options),
            reattach_window=options.reattach_window, rank=rank.rank or 0,
        )
    if gate_handle is not None and options.via != "listen":
        # before debugpy starts: it would follow a process started later as the debuggee's child
        relay_handle = RelayHandle(Address(_loopback(gate_address.host), gate_handle.port))
    debugger = Debugger()
    post_mortem_gates: list[GateHandle] = []
    post_mortem_relays: list[RelayHandle] = []

    def on_sigterm(signum: int, frame: object) -> None:  # a cancel: end at once, no post-mortem
        # short waits: whoever sent SIGTERM kills after its own grace (Stop: 5 s in all)
        try:
            for gate in [gate_handle, *post_mortem_gates]:
                if gate is not None:
                    gate.close_now(wait=CANCEL_WAIT)
            for relayed in [relay_handle, *post_mortem_relays]:
                if relayed is not None:
                    relayed.close_now(wait=CANCEL_WAIT)
        finally:  # whatever the signal interrupted, the process dies of it
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, on_sigterm)

    gone: list[str] = []  # why no debugger can attach any more, once that happens

    def path_closed(reason: str, line: str) -> None:  # stop waiting, and say why
        gone.append(reason)
        emit(announce.format_port_closed(announce.PortClosed(
            f"{line}; the script runs on without a debugger", rank.rank or 0,
        )))
        debugger.cancel_wait()

    def gate_gone() -> None:
        path_closed("the debug port's gate process ended",
                    "the debug port is gone: its gate process ended")

    def relay_gone() -> None:
        path_closed("the storage relay ended (its line above says why)",
                    "the storage relay ended, so the debugger's only path is gone")

    try:
        if gate_handle is not None:
            upstream, adapter_marker = debugger.listen_on_loopback()
            gate_handle.tell(f"upstream {upstream}")
            gate_handle.tell(f"adapter {adapter_marker}")
            addresses, port = node_addresses(options.address.host), gate_handle.port
            if options.via == "storage":
                addresses = ["127.0.0.1"]
        else:
            addresses, port = [options.address.host], options.address.port
        _announce(
            announce.Announcement(
                addresses=tuple(addresses),
                port=port,
                mode=options.mode,
                attach_deadline=round(deadline, 3),
                pid=os.getpid(),
                rank=rank.rank or 0,
                local_rank=rank.local_rank,
                script=script_path(options),
                cwd=os.getcwd(),
                hostname=socket.gethostname(),
                just_my_code=options.just_my_code,
                source_root=options.source_root or None,
                via=options.via,
                relay_key=relay_handle.public_key if relay_handle is not None else None,
            ),
            options.timeout,
        )
        if gate_handle is not None:  # after the announcement: a port-gone line must follow it
            gate_handle.when_gone(gate_gone)
        if relay_handle is not None and options.via == "storage":
            relay_handle.when_gone(relay_gone)
        if gate_handle is None:
            say(f"connecting to the debugger at {options.address.host}:{port} until the deadline")
            attached = debugger.connect(options.address, deadline) and debugger.wait_until(deadline)
        else:
            say(f"waiting up to {options.timeout:g} s for a debugger on port {port}")
            attached = debugger.wait_until(deadline)
        _finish_wait(attached, options, rank, "the port" if gate_handle else "the connection",
                     gone[0] if gone else "")
        if not attached:
            if gate_handle is not None:
                gate_handle.close_now()
            if relay_handle is not None:
                relay_handle.release()
            debugger.stop_tracing()
            if options.on_timeout == "exit":
                return EXIT_NOT_ATTACHED
        debugger.absorb_script_calls((addresses[0], port))

        def post_mortem(error: BaseException) -> None:
            if gate_handle is not None:  # the start's window is over: its port goes now
                gate_handle.close_now()
            if relay_handle is not None:
                relay_handle.release()
            _post_mortem(error, options, rank, debugger, post_mortem_gates, post_mortem_relays)

        def caught_failure(error: BaseException) -> None:  # the parallel runner caught it
            if debugger.client_connected() or post_mortem_gates:  # attached, or waited once
                return
            if gate_handle is not None:
                gate_handle.close_now()
            if relay_handle is not None:
                relay_handle.release()
            _post_mortem(error, options, rank, debugger, post_mortem_gates, post_mortem_relays,
                         goes_on=True)

        script_module.caught_failure = caught_failure
        return run_script(options.script, options.script_args, debugger, module=options.module,
                          post_mortem=post_mortem)
    finally:
        for gate in [gate_handle, *post_mortem_gates]:
            if gate is not None:
                gate.release()
        for relayed in [relay_handle, *post_mortem_relays]:
            if relayed is not None:
                relayed.release()


def _where_it_failed(error: BaseException) -> tuple[str, int, str]:
    """The file, line and function of the innermost frame of the user's code in ``error``'s
    traceback (not the standard library's, not an installed package's), else the innermost."""
    libraries = {os.path.normcase(os.path.abspath(path)) for path in sysconfig.get_paths().values()}
    frames = []
    tb = error.__traceback__
    while tb is not None:
        frames.append((tb.tb_frame.f_code.co_filename, tb.tb_lineno, tb.tb_frame.f_code.co_name))
        tb = tb.tb_next
    if not frames:
        return "<unknown>", 0, "<module>"
    for file, line, function in reversed(frames):
        path = os.path.normcase(os.path.abspath(file))
        if not any(path.startswith(folder + os.sep) for folder in libraries):
            return file, line, function
    return frames[-1]


def _write_snapshot(error: BaseException, rank: Rank) -> None:
    """The traceback's frames and locals into the log (``snapshot.py``), for when nobody comes."""
    try:
        for line in snapshot.encode_lines(snapshot.take(error), rank.rank or 0):
            emit(line)
    except Exception as failed:  # the snapshot must never hide the script's own failure
        say(f"could not write the snapshot of the failure: {type(failed).__name__}: {failed}")


def _post_mortem(
    error: BaseException, options: Options, rank: Rank, debugger: Debugger,
    gates: list[GateHandle], relays: list[RelayHandle], *, goes_on: bool = False,
) -> None:
    """The script failed with nobody attached: say so in a ``failed`` line, and for
    ``--post-mortem`` seconds let a debugger attach and stop at the exception.

    debugpy starts anew (tracing stopped at the first window's end: nothing of this ran before
    the failure) behind a new gate on the same address, and with ``--via storage`` or ``auto``
    a relay of its own over the second pair of chains the notebook made for a failure; the
    exception's frames stay alive meanwhile, since ``error`` holds its traceback.

    ``goes_on``: a runner in the script caught ``error`` (a parallel ``run()``): the process
    goes on after the window instead of exiting, and the ``failed`` line says so.
    """
    then = "the runner goes on" if goes_on else "the process exits"
    file, line, function = _where_it_failed(error)
    _write_snapshot(error, rank)
    window = options.post_mortem_window
    failure = announce.Failure(
        exception=type(error).__name__, message=str(error), file=file, line=line,
        function=function, pid=os.getpid(), rank=rank.rank or 0, goes_on=goes_on,
    )
    why_not = ""
    if window <= 0:
        why_not = "--post-mortem off"
    elif options.mode != "listen":
        why_not = "a post-mortem needs the node to listen (--connect was given)"
    relayed = options.via != "listen" and bool(
        relay_chain(os.environ, RELAY_UP_VARIABLE + POST_MORTEM_CHAINS))
    if options.via == "storage" and not relayed and not why_not:
        why_not = ("the notebook made no storage relay for a failure: the session had "
                   "--post-mortem off")
    if why_not:
        emit(announce.format_failure(failure))
        say(f"{failure.headline()}; no post-mortem ({why_not}): {then} now")
        return
    deadline = time.time() + window
    relay_handle: RelayHandle | None = None
    with debugger.children_not_followed():
        gate_address = _gate_address(options, rank)
        try:
            gate = GateHandle(
                bind_public_port(gate_address), allow=_gate_allow(options),
                reattach_window=options.reattach_window, rank=rank.rank or 0,
            )
        except UsageError as refused:  # the port was taken meanwhile
            emit(announce.format_failure(failure))
            say(f"{failure.headline()}; no post-mortem ({refused}): {then} now")
            return
        gates.append(gate)
        if relayed:  # before debugpy starts, which would follow it as the debuggee's child
            relay_handle = RelayHandle(Address(_loopback(gate_address.host), gate.port),
                                       post_mortem=True)
            relays.append(relay_handle)
        upstream, adapter_marker = debugger.listen_anew()
    gate.tell(f"upstream {upstream}")
    gate.tell(f"adapter {adapter_marker}")
    attach = announce.Announcement(
        addresses=tuple(node_addresses(options.address.host)), port=gate.port,
        mode=options.mode, attach_deadline=round(deadline, 3), pid=os.getpid(),
        rank=rank.rank or 0, local_rank=rank.local_rank, script=script_path(options),
        cwd=os.getcwd(), hostname=socket.gethostname(), just_my_code=options.just_my_code,
        source_root=options.source_root or None,
        via=options.via if relay_handle is not None else "listen",
        relay_key=relay_handle.public_key if relay_handle is not None else None,
    )
    emit(announce.format_failure(dataclasses.replace(failure, attach=attach)))
    if relay_handle is not None and options.via == "storage":  # the debugger's only path

        def relay_gone() -> None:
            say("the storage relay ended, so the debugger's only path to the exception is gone")
            debugger.cancel_wait()

        relay_handle.when_gone(relay_gone)
    say(f"{failure.headline()}: waiting up to {window:g} s for a debugger at the exception "
        f"on port {gate.port} (--post-mortem)")
    attached = debugger.wait_until(deadline)
    emit(announce.format_outcome(announce.AttachOutcome(attached, os.getpid(), rank.rank or 0)))
    how = "without the debugger" if goes_on else "as python would"
    if attached:
        debugger.report_uncaught(error)  # the stop; it returns when the debugger lets go
        say(f"the debugger let go of the exception: {then} {how}")
    else:
        say(f"no debugger attached within {window:g} s of the failure: {then} {how}")
    # the gate is released with the others as the process ends: the debugger's session ends
    # as at any script's end (its continue answered, then terminated), not cut


def _gate_address(options: Options, rank: Rank) -> Address:
    """Where the gate listens: the public address, or with ``--via storage`` loopback only."""
    if options.via == "storage":
        return Address("127.0.0.1", 0)
    port = options.address.port + rank.local_rank if options.address.port else 0
    return Address(options.address.host, port)


def _gate_allow(options: Options) -> str:
    """Who the gate admits: the relay connects from loopback, so ``auto`` admits that too."""
    if options.via == "storage":
        return "127.0.0.1"
    if options.via == "auto" and options.allow != "any":
        return f"{options.allow},127.0.0.1"
    return options.allow


def _loopback(host: str) -> str:
    """The address the relay reaches the gate at on this machine."""
    if host in ("0.0.0.0", "", "::"):
        return "127.0.0.1"
    return host


_GATES_OF_THIS_PROCESS: list[GateHandle] = []


def debug_in_this_process(
    listen: str, script: str, timeout: float | None, *, just_my_code: bool = True,
    source_root: str | None = None, follow_children: bool = True, allow: str = "any",
    this_thread_only: bool = False, on_demand: bool = False,
) -> Callable[[], bool]:
    """Start debugpy in this process behind the gate and announce it, for code the bootstrap
    does not run itself (a scoring script inside the inference server's worker).

    Returns ``wait``: it waits for a debugger until ``timeout`` runs out and says whether one
    came. The port stays open for the life of the process either way, so a debugger can attach
    later; the gate ends debugpy's adapter when the process ends, and admits the sources
    ``allow`` names (``--allow``'s form). Without ``follow_children``
    debugpy answers from this process, which then starts sooner (``listen_on_loopback``, as
    ``this_thread_only``). ``on_demand`` (with neither a ``timeout`` nor ``follow_children``):
    the port is announced at once, and debugpy is imported and listens only once a debugger
    comes to the gate, so a process nobody debugs never pays for it; the threads that run the
    user's code call :func:`trace_this_thread` to be traced from then on.
    """
    address = parse_address(listen, "--listen")
    deadline = time.time() + timeout if timeout else None
    on_demand = on_demand and not deadline and not follow_children
    this_thread_only = this_thread_only or on_demand  # started on the gate's watcher thread
    gate_handle = GateHandle(bind_public_port(address), allow=allow)
    _GATES_OF_THIS_PROCESS.append(gate_handle)  # its control socket must live as long as we do
    public = (address.host, gate_handle.port)

    def start_debugger() -> Debugger:
        debugger = Debugger()
        upstream, adapter_marker = debugger.listen_on_loopback(
            in_process=not follow_children, this_thread_only=this_thread_only)
        gate_handle.tell(f"upstream {upstream}")
        if adapter_marker:
            gate_handle.tell(f"adapter {adapter_marker}")
        _IN_THIS_PROCESS["debugger"] = debugger
        return debugger

    def tell_when_attached(debugger: Debugger) -> None:  # one may attach at any time while serving
        def tell() -> None:
            if debugger.wait_forever():
                emit(announce.format_outcome(announce.AttachOutcome(True, os.getpid(), 0)))

        hide_from_debugger(threading.Thread(target=tell, name="aml-debug-attached")).start()

    def start_when_wanted() -> None:
        try:
            tell_when_attached(start_debugger())
        except Exception as error:  # on the gate's watcher thread: one line, the script goes on
            say(f"could not start the debugger: {type(error).__name__}: {error}")

    if on_demand:  # the script's own debugpy calls are absorbed before debugpy is started
        absorb_script_calls(import_debugpy(), public)
        gate_handle.when_wanted(start_when_wanted)
    else:
        debugger = start_debugger()
    announcement = announce.Announcement(
        addresses=tuple(node_addresses(address.host)),
        port=gate_handle.port,
        attach_deadline=round(deadline, 3) if deadline else None,
        pid=os.getpid(),
        script=os.path.abspath(script),
        cwd=os.getcwd(),
        hostname=socket.gethostname(),
        just_my_code=just_my_code,
        source_root=os.path.abspath(source_root) if source_root else None,
    )
    _announce(announcement, timeout or 0)
    _IN_THIS_PROCESS["announcement"] = announcement
    if on_demand:
        return lambda: False

    debugger.absorb_script_calls(public)  # the guide's score.py

    def wait() -> bool:
        attached = False
        if deadline:
            attached = debugger.wait_until(deadline)
            emit(announce.guide_line_after_wait(attached))
            emit(announce.format_outcome(announce.AttachOutcome(attached, os.getpid(), 0)))
        if not attached:
            tell_when_attached(debugger)
        return attached

    if not deadline:
        wait()
    return wait


def trace_this_thread() -> None:
    """Put the calling thread under the debugger once :func:`debug_in_this_process` started
    it on demand; nothing before that, nor on a thread already traced. Never raises: it runs
    on the way into the user's ``init()`` and ``run()``, whose outcome it must not change."""
    if "debugger" not in _IN_THIS_PROCESS or getattr(_TRACED, "done", False):
        return
    _TRACED.done = True
    try:
        import debugpy

        debugpy.debug_this_thread()
    except Exception as error:
        say(f"could not put this thread under the debugger: {type(error).__name__}: {error}")


_TRACED = threading.local()  # whether trace_this_thread put this thread under the debugger


_IN_THIS_PROCESS: dict = {}  # debug_in_this_process's debugger and announcement


def failure_of(error: BaseException, *, goes_on: bool = False) -> announce.Failure:
    """``error`` as the ``failed`` line tells it (no window offered yet), its snapshot written
    into the log first: for code that catches the exception itself (a scoring worker, a
    parallel runner)."""
    file, line, function = _where_it_failed(error)
    for part in snapshot.encode_lines(snapshot.take(error), 0):
        emit(part)
    return announce.Failure(
        exception=type(error).__name__, message=str(error), file=file, line=line,
        function=function, pid=os.getpid(), goes_on=goes_on,
    )


def post_mortem_in_this_process(error: BaseException, window: float) -> None:
    """A runner in this process (started with :func:`debug_in_this_process`) caught ``error``:
    a parallel ``run()`` under Azure ML's runner. Its snapshot and the ``failed`` line (the
    runner goes on), offering the same port for ``window`` seconds; a debugger that attaches
    then is stopped at the exception. With a debugger attached already, or no window: the
    lines only."""
    debugger = _IN_THIS_PROCESS.get("debugger")
    announcement = _IN_THIS_PROCESS.get("announcement")
    failure = failure_of(error, goes_on=True)
    if debugger is None or announcement is None or window <= 0 or debugger.client_connected():
        emit(announce.format_failure(failure))
        return
    deadline = time.time() + window
    attach = dataclasses.replace(announcement, attach_deadline=round(deadline, 3))
    emit(announce.format_failure(dataclasses.replace(failure, attach=attach)))
    say(f"{failure.headline()}: waiting up to {window:g} s for a debugger at the exception "
        f"on port {announcement.port} (--post-mortem); then the runner goes on")
    debugger.begin_wait()
    attached = debugger.wait_until(deadline)
    emit(announce.format_outcome(announce.AttachOutcome(attached, os.getpid(), 0)))
    if attached:
        debugger.report_uncaught(error)  # the stop; it returns when the debugger lets go
        say("the debugger let go of the exception: the runner goes on without the debugger")
    else:
        say(f"no debugger attached within {window:g} s of the failure: the runner goes on")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        options = parse_options(argv)
        rank = detect_rank(dict(os.environ))
        if not options.ranks.includes(rank.rank):
            say(f"rank {rank.rank} runs without the debugger (--ranks {options.ranks})")
            return run_script(options.script, options.script_args, module=options.module)
        return debug_and_run(options, rank)
    except UsageError as error:
        print(f"aml-debug: error: {error}", file=sys.stderr, flush=True)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
