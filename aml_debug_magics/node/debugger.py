"""debugpy's lifecycle in the script's process: started on loopback, waited for until a deadline,
stopped; and the gate process that owns the public port in front of it.

In: the address to bind and the deadline. Out: whether a debugger attached. debugpy itself
offers no deadline on its wait and no way to stop listening; this file adds both (a timer that
cancels the wait, the gate that ends the adapter). Standard library and debugpy only: this file
travels into a run's snapshot as ``aml_debug_debugger.py``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import types
import uuid
from collections.abc import Callable, Iterator
from typing import Any

try:
    from aml_debug_magics.node import gate, relay
    from aml_debug_magics.node.announce import say
    from aml_debug_magics.node.options import Address, UsageError
except ImportError:  # shipped into a run's snapshot beside this file
    import aml_debug_gate as gate  # type: ignore[no-redef]
    import aml_debug_relay as relay  # type: ignore[no-redef]
    from aml_debug_announce import say  # type: ignore[no-redef]
    from aml_debug_options import Address, UsageError  # type: ignore[no-redef]

# beside the shipped files: debugpy unpacked, for an environment that has none of its own
SHIPPED_DEBUGPY = "aml_debug_debugpy"
ATTACH_GRACE = 30.0  # a client in the middle of attaching at the deadline gets this much more


def hide_from_debugger(thread: threading.Thread) -> threading.Thread:
    # pydevd skips threads marked as its own; a traced helper thread stalls the attach
    thread.is_pydev_daemon_thread = True  # type: ignore[attr-defined]
    thread.daemon = True
    return thread


def import_debugpy() -> types.ModuleType:
    """The environment's own debugpy, else the copy shipped beside this file (put last on
    ``sys.path``, so it never hides the environment's packages); ImportError if neither."""
    try:
        import debugpy
    except ImportError:
        shipped = os.path.join(os.path.dirname(os.path.abspath(__file__)), SHIPPED_DEBUGPY)
        if not os.path.isdir(shipped):
            raise
        sys.path.append(shipped)
        import debugpy
    return debugpy


STOPPED_POLL = 0.02  # s: pydevd's own poll while a GUI loop runs (TIMEOUT_FAST)


def send_without_delay() -> None:
    """Answer a debugger at once. pydevd writes each message's header and body apart: with
    Nagle's algorithm the body waited for the adapter's delayed acknowledgement of the header
    (40 ms on Linux), so every request (a call stack, a variable) took 44 ms instead of 1.
    And a stopped thread that runs a step itself then sleeps out pydevd's 0.2 s poll
    (``TIMEOUT_SLOW``) before it moves whenever other threads live in the process, as the
    bootstrap's do: every step took 200 ms more. (bench/bench_debugger.py measures both.)"""
    try:
        import pydevd
    except ImportError:
        return
    with contextlib.suppress(AttributeError, TypeError):  # another pydevd keeps its own ways
        pydevd.TIMEOUT_SLOW = min(pydevd.TIMEOUT_SLOW, STOPPED_POLL)
    with contextlib.suppress(AttributeError, OSError):
        writer = pydevd.get_global_debugger().writer
        writer.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _stop_as_uncaught(
    py_db: Any, uncaught: tuple[type[BaseException], BaseException, types.TracebackType | None]
) -> None:
    """What debugpy 1.8.22's ``trigger_exception_handler(as_uncaught=True)`` does, for debugpy
    1.8.21 (the last on Python 3.8 and 3.9, and the copy shipped in a snapshot): pydevd's own
    check of the client's uncaught-exception filters, then its stop on the innermost frame of
    the user's code in the traceback."""
    thread = threading.current_thread()
    thread_info = py_db.set_additional_thread_info(thread)
    thread_info.is_tracing += 1  # as pydevd's own stops: its work while stopped is not traced
    try:  # pydevd keeps the plain function on its debugger: it takes the debugger first
        py_db.stop_on_unhandled_exception(py_db, thread, thread_info, uncaught)
    finally:
        thread_info.is_tracing -= 1


class Debugger:
    """debugpy in this process, with the cleanup debugpy itself does not offer."""

    def __init__(self) -> None:
        os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
        import_debugpy()  # the environment's, else the copy shipped beside this file
        import debugpy
        import debugpy.server.api

        if not os.environ.get("DEBUGPY_LOG_DIR"):
            # with logging off, debugpy still reads every installed package's metadata to
            # describe the environment to no log at all: 0.2 s with azureml installed
            debugpy.server.api.ensure_logging.ensured = True
        self.debugpy = debugpy
        # debugpy's own calls, kept: absorb_script_calls replaces the module's for the script
        own = getattr(debugpy, OWN_CALLS, {})
        self._wait_for_client = own.get("wait_for_client", debugpy.wait_for_client)
        self._listen = own.get("listen", debugpy.listen)
        self._cancelled = False
        self._wait_number = 0  # a deadline timer of an earlier wait must not end a later one

    def listen_on_loopback(
        self, *, in_process: bool = False, this_thread_only: bool = False
    ) -> tuple[int, str | None]:
        """Start debugpy on a loopback port; return it and the marker in its adapter's env
        (None when this process answers debuggers itself).

        ``in_process``: debugpy answers from this process instead of from an adapter process
        it spawns and waits for (0.3 s to 0.5 s of a Python start on the path to the first
        answer of a scoring worker); the price is that processes this one starts are not
        followed. Needs debugpy 1.8.22, the first to say which port it took; an older one
        gets the adapter. ``this_thread_only``: debugpy traces only the calling thread, until
        another calls ``debugpy.debug_this_thread()`` (a helper thread that starts it beside
        a server's imports, which tracing would slow).
        """
        if in_process and self._answers_in_process():
            with self._tracing_only_this_thread(this_thread_only):
                _, port = self._listen(("127.0.0.1", 0), in_process_debug_adapter=True)
            send_without_delay()
            return port, None
        marker = uuid.uuid4().hex
        self.debugpy.configure(pythonEnv=dict(os.environ, **{gate.ADAPTER_MARKER: marker}))
        _, port = self._listen(("127.0.0.1", 0))
        send_without_delay()
        return port, marker

    def listen_anew(self) -> tuple[int, str]:
        """Start debugpy again, on a new loopback port, after its first session ended (the
        attach window was missed and tracing stopped, or the gate ended its adapter): for the
        post-mortem, which needs a debugger only once the script has failed.

        pydevd's ``stoptrace`` disposes of its debugger so that a new one can start; debugpy
        refuses a second ``listen()`` only by a flag, which this resets.
        """
        import debugpy.server.api

        self.stop_tracing()
        debugpy.server.api.listen.called = False
        # the last wait's cancel stays on debugpy's waiter until the next wait begins; a cancel
        # before that must raise, as it does before a first wait, so that it is tried again
        vars(debugpy.server.api.wait_for_client).pop("cancel", None)
        self.begin_wait()
        port, marker = self.listen_on_loopback()
        return port, marker or ""

    @staticmethod
    @contextlib.contextmanager
    def children_not_followed() -> Iterator[None]:
        """Start processes (the gate, debugpy's adapter) as they are, not under pydevd: once
        pydevd has run, its patch of ``subprocess`` stays (``stoptrace`` keeps it) and would
        make each a debuggee of the session that ended."""
        try:
            import debugpy.server  # noqa: F401  (puts debugpy's vendored pydevd on sys.path)
            from _pydev_bundle import pydev_monkey

            skip = pydev_monkey.skip_subprocess_arg_patch()
        except (ImportError, AttributeError):
            skip = contextlib.nullcontext()
        with skip:
            yield

    def client_connected(self) -> bool:
        """Whether a debugger is attached now (False once tracing was stopped)."""
        try:
            return bool(self.debugpy.is_client_connected())
        except Exception:  # no debugger left in pydevd: nobody is attached
            return False

    def _answers_in_process(self) -> bool:
        try:
            version = tuple(int(part) for part in self.debugpy.__version__.split(".")[:3])
        except (AttributeError, ValueError):  # a build from source: "1.8.22+5.gabc"
            return False
        return version >= (1, 8, 22)

    def connect(self, address: Address, deadline: float) -> bool:
        """Connect out, retrying a refused connection until the deadline (debugpy tries once)."""
        import debugpy.server  # noqa: F401  (puts debugpy's vendored pydevd on sys.path)
        import pydevd

        original = pydevd.start_client

        def start_client_until_deadline(host: str, port: int):  # type: ignore[no-untyped-def]
            while True:
                try:
                    return original(host, port)
                except OSError:
                    if time.time() + 0.5 >= deadline:
                        raise
                    time.sleep(0.5)

        pydevd.start_client = start_client_until_deadline
        try:
            self.debugpy.connect((address.host, address.port))
        except OSError:
            return False
        finally:
            pydevd.start_client = original
        send_without_delay()
        return True

    def begin_wait(self) -> None:
        """A wait to come after an earlier one ended: that one's cancel and deadline are not
        its own."""
        self._cancelled = False
        self._wait_number += 1

    def wait_until(self, deadline: float) -> bool:
        """Wait for a debugger's configurationDone until ``deadline``; True if one attached.

        A client caught in the middle of attaching at the deadline gets ``ATTACH_GRACE`` more.
        """
        number = self._wait_number

        def on_deadline() -> None:
            if number != self._wait_number:  # a later wait began: this deadline is not its own
                return
            mid_attach = self.debugpy.is_client_connected()
            if mid_attach and time.time() < deadline + ATTACH_GRACE:
                self._schedule(0.5, on_deadline)
                return
            self._cancelled = True
            try:
                self._wait_for_client.cancel()
            except RuntimeError:  # the wait has not begun yet
                self._schedule(0.05, on_deadline)

        self._schedule(max(0.0, deadline - time.time()), on_deadline)
        self._wait_for_client()
        return not self._cancelled

    def wait_forever(self) -> bool:
        """Wait for a debugger without a deadline; True if one is connected at the end."""
        self._wait_for_client()
        return self.debugpy.is_client_connected()

    def cancel_wait(self) -> None:
        """End a wait for a debugger now, as if its deadline had passed; a wait that has not
        begun yet ends as soon as it begins."""
        self._cancelled = True
        try:
            self._wait_for_client.cancel()
        except RuntimeError:  # debugpy drops a cancel that comes before its wait: cancel it again
            self._schedule(0.05, self.cancel_wait)

    @staticmethod
    @contextlib.contextmanager
    def _tracing_only_this_thread(only: bool) -> Iterator[None]:
        if not only:
            yield
            return
        import debugpy.server.api as server

        settrace = server._settrace
        server._settrace = lambda *args, **kwargs: settrace(
            *args, **{**kwargs, "trace_only_current_thread": True}
        )
        try:
            yield
        finally:
            server._settrace = settrace

    def absorb_script_calls(self, public: tuple[str, int]) -> None:
        absorb_script_calls(self.debugpy, public)

    @staticmethod
    def _schedule(delay: float, action) -> None:  # type: ignore[no-untyped-def]
        hide_from_debugger(threading.Timer(delay, action)).start()

    def report_uncaught(self, error: BaseException) -> None:
        """Show the script's uncaught exception to the debugger as debugpy shows one that ends a
        program: a client that breaks on uncaught exceptions (VS Code's default) stops at the
        raising line, in the script's own frames; nothing happens without one.

        This thread is not traced any more, from before the stop on: after the script, what runs
        on it is the traceback and the exit with status 1, whose ``SystemExit`` would stop the
        user a second time, in our frames (the script's ``atexit`` functions run untraced too).
        """
        import pydevd

        py_db = pydevd.get_global_debugger()
        if py_db is None:
            return
        # before the stop too: on Python 3.12+ a stop made outside pydevd's monitoring callbacks,
        # if traced, deadlocks on pydevd's own lock (debugpy 1.8.22 suspends tracing the same way)
        py_db.disable_tracing()
        if self.debugpy.is_client_connected():
            uncaught = (type(error), error, error.__traceback__)
            if hasattr(self.debugpy, "trigger_exception_handler"):  # debugpy 1.8.22 and later
                self.debugpy.trigger_exception_handler(uncaught, as_uncaught=True)
            else:
                _stop_as_uncaught(py_db, uncaught)

    def stop_tracing(self) -> None:
        """Stop tracing, so a script nobody debugs runs at full speed (2x to 11x on 3.11)."""
        try:
            import pydevd

            pydevd.stoptrace()
        except Exception as error:  # stopping must never hide the script's own outcome
            say(f"could not stop tracing: {error}")


OWN_CALLS = "_aml_debug_own_calls"  # on the debugpy module: its calls absorb_script_calls replaced


def absorb_script_calls(debugpy: types.ModuleType, public: tuple[str, int]) -> None:
    """Make the script's own debugpy calls (the guide's boilerplate) harmless; debugpy's own
    are kept on the module under ``OWN_CALLS``, for a :class:`Debugger` made later.

    ``listen()`` works once per process and the guide's ``wait_for_client()`` never times
    out; this process already listens (or debugpy listens once a debugger comes), and its wait
    is over by the time the script runs.
    """

    def listen(*args: object, **kwargs: object) -> tuple[str, int]:
        say("the script called debugpy.listen(); already listening, so the call is skipped")
        return public

    def connect(*args: object, **kwargs: object) -> None:
        say("the script called debugpy.connect(); already set up, so the call is skipped")

    def wait_for_client() -> None:
        say("the script called debugpy.wait_for_client(); the wait is already over")

    wait_for_client.cancel = lambda: None  # type: ignore[attr-defined]
    if not hasattr(debugpy, OWN_CALLS):
        setattr(debugpy, OWN_CALLS, {"listen": debugpy.listen, "connect": debugpy.connect,
                                     "wait_for_client": debugpy.wait_for_client})
    debugpy.listen = listen
    debugpy.connect = connect
    debugpy.wait_for_client = wait_for_client


class GateHandle:
    """The script's side of the gate process (``gate.py``): starts it, tells it what it needs."""

    def __init__(
        self,
        listener: socket.socket,
        *,
        allow: str = "any",
        reattach_window: float = gate.DEFAULT_REATTACH_WINDOW,
        rank: int = 0,
    ) -> None:
        self.port = listener.getsockname()[1]
        ours, theirs = socket.socketpair()
        self._control = ours
        self._closing = False
        self._watcher: threading.Thread | None = None
        fds = (listener.fileno(), theirs.fileno())
        options = ["--allow", allow, "--reattach-window", f"{reattach_window:g}"]
        options += ["--rank", str(rank)]
        # -I -S: the gate needs only the standard library, and starts in a third of the time
        self._process = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(gate.__file__), *map(str, fds), *options],
            pass_fds=fds,
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        listener.close()

    def tell(self, line: str) -> None:
        try:
            self._control.sendall(line.encode() + b"\n")
        except OSError:
            pass

    def when_gone(self, action: Callable[[], None]) -> None:
        """Call ``action`` if the gate process ends before we tell it to (then the port is
        gone): its end of the control socket reads as EOF."""
        self._watch(gone=action)

    def when_wanted(self, action: Callable[[], None]) -> None:
        """Call ``action`` (on a thread of its own) once a debugger waits for debugpy, which
        then is to listen and be told with ``upstream``."""
        self._watch(wanted=action)

    def _watch(self, *, gone: Callable[[], None] | None = None,
               wanted: Callable[[], None] | None = None) -> None:
        def watch() -> None:
            try:
                while chunk := self._control.recv(64):  # "wanted\n", at most once
                    if wanted is not None and b"wanted" in chunk:
                        wanted()
            except OSError:
                pass
            if gone is not None and not self._closing:
                gone()

        self._watcher = hide_from_debugger(threading.Thread(target=watch, name="aml-debug-gate"))
        self._watcher.start()

    def close_now(self, wait: float = 5.0) -> None:
        """Close the port and every connection, end the adapter, and wait until that is done
        (at most ``wait`` seconds for each part, then the gate is killed)."""
        self._closing = True
        self.tell("close")
        self.release(wait)
        try:
            self._process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            self._process.kill()

    def release(self, wait: float = 5.0) -> None:
        """The script is over: the gate lets open sessions finish, then ends the adapter."""
        self._closing = True
        with contextlib.suppress(OSError):
            self._control.shutdown(socket.SHUT_RDWR)  # wakes the watcher, which then ends
        self._control.close()
        watcher = self._watcher
        # a SIGTERM may come while the watcher is being started: one not running yet is not joined
        if (watcher is not None and watcher.ident is not None
                and watcher is not threading.current_thread()):
            # over before the interpreter's own end: a thread that ends during it makes debugpy
            # 1.8.21 on Python 3.13 print "Exception ignored in ... _DeleteDummyThreadOnDel"
            watcher.join(timeout=wait)


def bind_public_port(address: Address) -> socket.socket:
    """Bind the debug port now, so a port in use is a clear error before anything starts."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    if os.name == "posix":  # rebind a port the last step just closed (TIME_WAIT); never shares
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((address.host, address.port))
        listener.listen(16)
    except OSError as error:
        listener.close()
        if error.errno in (98, 48, 10048):  # EADDRINUSE on Linux, macOS, Windows
            raise UsageError(
                f"port {address.port} on {address.host} is in use: choose another with "
                "--listen HOST:PORT (port 0 picks a free one)"
            ) from None
        where = f"{address.host}:{address.port}"
        raise UsageError(f"cannot listen on {where}: {error.strerror}") from None
    return listener


class RelayHandle:
    """The script's side of the storage relay process (``relay.py``), started before debugpy
    (which would follow it as the debuggee's child) with the gate's loopback address.

    The relay reads its blob URLs from the environment it inherits; it ends once its standard
    input closes (:meth:`release`, or this process ending) and its connections are done.
    """

    def __init__(self, gate_address: Address, *, post_mortem: bool = False) -> None:
        keys = relay.relay_wire.KeyPair()
        self.public_key = keys.encoded  # the announcement carries it: only this node writes that
        self._process = subprocess.Popen(
            [sys.executable, "-u", os.path.abspath(relay.__file__),
             "--host", gate_address.host, "--port", str(gate_address.port),
             *(["--post-mortem"] if post_mortem else [])],
            stdin=subprocess.PIPE,
        )
        with contextlib.suppress(OSError):  # a relay that died at once is told by when_gone
            self._process.stdin.write(f"{keys.secret:x}\n".encode())  # type: ignore[union-attr]
            self._process.stdin.flush()  # type: ignore[union-attr]
        self._released = False

    def when_gone(self, action: Callable[[], None]) -> None:
        """Call ``action`` if the relay ends before it is released (storage refused it, or it
        was killed): then no debugger can reach this process through storage."""

        def watch() -> None:
            self._process.wait()
            if not self._released:
                action()

        hide_from_debugger(threading.Thread(target=watch, name="aml-debug-relay")).start()

    def release(self) -> None:
        """Nothing more will attach: the relay ends once its open sessions are done."""
        self._released = True
        with contextlib.suppress(OSError):
            self._process.stdin.close()  # type: ignore[union-attr]

    def close_now(self, wait: float = 5.0) -> None:
        """End the relay at once (the process is being stopped); killed after ``wait`` s."""
        self.release()
        self._process.terminate()
        try:
            self._process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            self._process.kill()
