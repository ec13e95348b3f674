"""Run any Python script under debugpy on the machine it lands on, without editing it.

    python -m aml_debug_magics.node.bootstrap [--listen HOST:PORT | --connect HOST:PORT]
        [--timeout SECONDS] [--on-timeout continue|exit] [--ranks 0|all|0,2]
        [--just-my-code | --no-just-my-code] [--source-root DIR] -- SCRIPT [ARGS...]
                                                                   (or -- -m MODULE [ARGS...])

This file runs ON THE NODE: on Azure ML it travels in the run's snapshot as
``aml_debug_bootstrap.py`` beside ``aml_debug_announce.py`` and ``aml_debug_gate.py``, where this
package is not installed, so it imports only the standard library and debugpy.

What it does, in order: binds the debug port, starts debugpy behind it, prints one announcement
line (and the human lines of Microsoft's guide), waits for a debugger until a real deadline, then
runs the script exactly as ``python SCRIPT ARGS`` would. A missed deadline closes the
port and stops tracing, so the script runs at full speed.

The public port belongs to a small gate process (``gate.py``), not to debugpy: a bare TCP
connect and close on a debugpy listener (a port scanner, a health check) makes debugpy's adapter
exit while the script waits forever. The gate passes on only debug-protocol connections.
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import importlib.machinery
import io
import ipaddress
import os
import runpy
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import types
import uuid
from collections.abc import Callable
from dataclasses import dataclass

try:
    from aml_debug_magics.node import announce, gate
except ImportError:  # shipped into a run's snapshot beside this file
    import aml_debug_announce as announce  # type: ignore[no-redef]
    import aml_debug_gate as gate  # type: ignore[no-redef]

SHIPPED_NAMES = {  # file in aml_debug_magics/node/ -> its name in a run's snapshot
    "bootstrap.py": "aml_debug_bootstrap.py",
    "announce.py": "aml_debug_announce.py",
    "gate.py": "aml_debug_gate.py",
}
ENTRY_SHIPPED_NAMES = {"entry.py": "aml_debug_entry.py"}  # a scoring image's entry script too
# beside the shipped files: debugpy unpacked, for an environment that has none of its own
SHIPPED_DEBUGPY = "aml_debug_debugpy"
DEFAULT_PORT = 5678
SOURCE_ROOT_VARIABLE = "AML_DEBUG_SOURCE_ROOT"  # set by a command that changes folder first
DEFAULT_TIMEOUT = 300.0
MAX_TIMEOUT = 24 * 3600.0
EXIT_USAGE = 2
EXIT_NOT_ATTACHED = 3
ATTACH_GRACE = 30.0  # a client in the middle of attaching at the deadline gets this much more
RANK_VARIABLES = ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")
LOCAL_RANK_VARIABLES = ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID")
VIRTUAL_INTERFACE_PREFIXES = ("docker", "br-", "veth", "virbr", "cni", "flannel", "cali", "vxlan")

_out = sys.stdout


def say(message: str) -> None:
    """One human line from the bootstrap, flushed at once (the log may be all a user sees)."""
    print(f"aml-debug: {message}", file=_out, flush=True)


def emit(line: str) -> None:
    print(line, file=_out, flush=True)


class UsageError(Exception):
    """Bad input: reported as one line and exit status 2."""


# ---------------------------------------------------------------------------------------------
# Options


@dataclass(frozen=True)
class Address:
    host: str
    port: int


@dataclass(frozen=True)
class RankChoice:
    """Which ranks wait for a debugger: ``all``, or a set of global rank numbers."""

    ranks: frozenset[int] | None  # None means all

    def includes(self, rank: int | None) -> bool:
        return self.ranks is None or (rank is not None and rank in self.ranks)

    def __str__(self) -> str:
        return "all" if self.ranks is None else ",".join(str(r) for r in sorted(self.ranks))


@dataclass(frozen=True)
class Options:
    mode: str  # "listen" or "connect"
    address: Address
    timeout: float
    on_timeout: str
    ranks: RankChoice
    just_my_code: bool
    script: str  # a file, or with ``module`` a module name (``-m pkg.train``)
    script_args: list[str]
    allow: str = "any"  # who may attach: any, or addresses and networks (checked by the gate)
    reattach_window: float = gate.DEFAULT_REATTACH_WINDOW
    source_root: str = ""  # the folder the job's code was placed in (absolute)
    module: bool = False


def parse_address(text: str, flag: str) -> Address:
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text:
        raise UsageError(f"{flag} takes HOST:PORT, like 0.0.0.0:5678 (got {text!r})")
    try:
        port = int(port_text)
    except ValueError:
        raise UsageError(f"{flag} port must be a number (got {port_text!r} in {text!r})") from None
    if not 0 <= port <= 65535:
        raise UsageError(f"{flag} port must be between 0 and 65535 (got {port})")
    return Address(host.strip("[]"), port)


def parse_ranks(text: str) -> RankChoice:
    if text.strip() == "all":
        return RankChoice(None)
    try:
        ranks = frozenset(int(part) for part in text.split(","))
    except ValueError:
        ranks = frozenset({-1})
    if not ranks or min(ranks) < 0:
        raise UsageError(f"--ranks takes 'all' or rank numbers like 0 or 0,2 (got {text!r})")
    return RankChoice(ranks)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see --help)")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bootstrap.py",
        description="Run a Python script under debugpy: listen (or connect), announce where to "
        "attach, wait until a deadline, then run the script unchanged.",
        epilog="Example: python bootstrap.py --listen 0.0.0.0:5678 --timeout 300 -- train.py "
        "--epochs 3",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help=f"listen for a debugger here (default 0.0.0.0:{DEFAULT_PORT}; port 0 picks a free "
        "one; the port grows by the local rank)",
    )
    where.add_argument(
        "--connect",
        metavar="HOST:PORT",
        help="connect out to a debugger that listens there (no port opens on this machine)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"how long to wait for a debugger (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--on-timeout",
        choices=("continue", "exit"),
        default="continue",
        help="when no debugger came: run the script anyway (default) or exit with status 3",
    )
    parser.add_argument(
        "--ranks",
        default="0",
        help="which ranks wait for a debugger in a distributed run: 0 (default), all, or 0,2",
    )
    # a pair of flags, not argparse.BooleanOptionalAction: that is Python 3.9+, nodes run 3.8
    code = parser.add_mutually_exclusive_group()
    code.add_argument(
        "--just-my-code",
        dest="just_my_code",
        action="store_true",
        default=True,
        help="step only through your own code (written into the announcement for the attach "
        "config; the default)",
    )
    code.add_argument(
        "--no-just-my-code",
        dest="just_my_code",
        action="store_false",
        help="step into libraries too",
    )
    parser.add_argument(
        "--allow",
        default="any",
        metavar="ADDR|CIDR|node[,...]",
        help="only these source addresses may attach, like 10.0.0.4,127.0.0.1 or 10.0.0.0/16; "
        "node admits the node itself (an SSH tunnel through its sshd) (default any); others are "
        "closed before debugpy sees them",
    )
    parser.add_argument(
        "--reattach-window",
        type=float,
        default=gate.DEFAULT_REATTACH_WINDOW,
        metavar="SECONDS",
        help="after the debugger leaves, how long the port takes a new one before it closes "
        f"for good (default {gate.DEFAULT_REATTACH_WINDOW:g}; 0: at once)",
    )
    parser.add_argument(
        "--source-root",
        default=os.environ.get(SOURCE_ROOT_VARIABLE) or None,
        metavar="DIR",
        help="the folder the job's code was placed in, for the attach config's path mapping, "
        f"when the command changed folder before starting python (default ${SOURCE_ROOT_VARIABLE})",
    )
    parser.add_argument(
        "command", nargs=argparse.REMAINDER, help="-- SCRIPT [ARGS...] or -- -m MODULE [ARGS...]"
    )
    return parser


def check_limits(
    timeout: float, ranks: str, allow: str = "any",
    reattach_window: float = gate.DEFAULT_REATTACH_WINDOW,
) -> None:
    """The values the node accepts; the notebook checks a request with this too, so a bad one
    is refused before a submit rather than on the node after provisioning."""
    if not 0 < timeout <= MAX_TIMEOUT:  # also refuses inf and nan
        raise UsageError(
            f"--timeout must be more than 0 and at most {MAX_TIMEOUT:g} seconds (got {timeout:g})"
        )
    parse_ranks(ranks)
    try:
        gate.parse_allow(allow)
    except ValueError as error:
        raise UsageError(
            f"--allow takes any, or addresses and networks like 10.0.0.4,10.1.0.0/16 "
            f"(got {allow!r}: {error})"
        ) from None
    if not 0 <= reattach_window <= MAX_TIMEOUT:
        raise UsageError(
            f"--reattach-window must be 0 to {MAX_TIMEOUT:g} seconds (got {reattach_window:g})"
        )


def parse_options(argv: list[str]) -> Options:
    args = _build_parser().parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise UsageError("no script given: put it after --, like -- train.py --epochs 3")
    module = command[0] == "-m"
    if module:
        command = command[1:]
        if not command:
            raise UsageError("-m needs a module name, like -- -m pkg.train --epochs 3")
        if module_file(command[0]) is None:
            raise UsageError(f"module not found: {command[0]} (working directory {os.getcwd()})")
    script, script_args = command[0], command[1:]
    if not module and not os.path.isfile(script):
        raise UsageError(f"script not found: {script} (working directory {os.getcwd()})")
    check_limits(args.timeout, args.ranks, args.allow, args.reattach_window)
    if args.connect:
        mode, address = "connect", parse_address(args.connect, "--connect")
        if address.port == 0:
            raise UsageError("--connect needs the port the debugger listens on, not 0")
    else:
        mode = "listen"
        address = parse_address(args.listen or f"0.0.0.0:{DEFAULT_PORT}", "--listen")
    return Options(
        mode=mode,
        address=address,
        timeout=args.timeout,
        on_timeout=args.on_timeout,
        ranks=parse_ranks(args.ranks),
        just_my_code=args.just_my_code,
        script=script,
        script_args=script_args,
        allow=args.allow,
        reattach_window=args.reattach_window,
        source_root=os.path.abspath(args.source_root) if args.source_root else "",
        module=module,
    )


def module_file(name: str) -> str | None:
    """The file ``python -m name`` would run, found without importing anything of the user's
    (a package's ``__init__`` must not run before the debugger waits); None if there is none."""
    parts = name.split(".")
    for folder in [os.getcwd(), *sys.path[1:]]:
        base = os.path.join(folder or os.getcwd(), *parts)
        for candidate in (base + ".py", os.path.join(base, "__main__.py")):
            if os.path.isfile(candidate):
                return candidate
    return None


# ---------------------------------------------------------------------------------------------
# Where this process stands: rank and addresses


@dataclass(frozen=True)
class Rank:
    rank: int | None  # None: a worker node that does not say its rank
    local_rank: int


def _first_int(environ: dict[str, str], names: tuple[str, ...]) -> int | None:
    for name in names:
        value = environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return None


def detect_rank(environ: dict[str, str]) -> Rank:
    """This process's rank from the launcher's variables (torch, MPI, Azure Batch)."""
    rank = _first_int(environ, RANK_VARIABLES)
    local_rank = _first_int(environ, LOCAL_RANK_VARIABLES)
    if rank is None:
        is_master = environ.get("AZ_BATCH_IS_CURRENT_NODE_MASTER", "true").lower() != "false"
        rank = (local_rank or 0) if is_master else None
    return Rank(rank, local_rank or 0)


def _interface_ipv4(name: str) -> str | None:
    try:
        import fcntl
    except ImportError:
        return None
    siocgifaddr = 0x8915  # Linux
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            request = struct.pack("256s", name[:15].encode())
            packed = fcntl.ioctl(probe.fileno(), siocgifaddr, request)
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


def _default_route_interfaces() -> set[str]:
    try:
        with open("/proc/net/route") as routes:
            rows = [line.split() for line in routes.readlines()[1:]]
    except OSError:
        return set()
    return {row[0] for row in rows if len(row) > 1 and row[1] == "00000000"}


def node_addresses(bind_host: str) -> list[str]:
    """This machine's IPv4 addresses a debugger could reach, best first; never loopback alone
    unless that is all there is or all that is bound.

    ``gethostbyname(gethostname())`` is only one candidate among others: on many images it gives
    127.0.1.1 or a docker bridge.
    """
    if bind_host not in ("0.0.0.0", "", "::"):
        return [bind_host]
    default_interfaces = _default_route_interfaces()
    scored: dict[str, int] = {}

    def consider(address: str, score: int) -> None:
        try:
            ip = ipaddress.IPv4Address(address)
        except ValueError:
            return
        if ip.is_loopback or ip.is_unspecified:
            return
        if ip.is_link_local:
            score += 10
        scored[address] = min(score, scored.get(address, score))

    try:
        interfaces = [name for _, name in socket.if_nameindex()]
    except OSError:
        interfaces = []
    for name in interfaces:
        address = _interface_ipv4(name)
        if address:
            if name in default_interfaces:
                consider(address, 0)
            elif name.startswith(VIRTUAL_INTERFACE_PREFIXES):
                consider(address, 5)
            else:
                consider(address, 1)
    if not scored:  # the host name's addresses only where no interface could be read: they
        # may belong to another network namespace (a container's host) and be no address here
        try:
            for address in socket.gethostbyname_ex(socket.gethostname())[2]:
                consider(address, 2)
        except OSError:
            pass
    return sorted(scored, key=lambda a: (scored[a], a)) or ["127.0.0.1"]


# ---------------------------------------------------------------------------------------------
# The gate in front of debugpy: a small process of its own


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
        gone): the gate never writes to the control socket, so its end reads as EOF."""

        def watch() -> None:
            try:
                while self._control.recv(1):
                    pass
            except OSError:
                pass
            if not self._closing:
                action()

        _hide_from_debugger(threading.Thread(target=watch, name="aml-debug-gate", daemon=True))\
            .start()

    def close_now(self) -> None:
        """Close the port and every connection, end the adapter, and wait until that is done."""
        self._closing = True
        self.tell("close")
        self.release()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()

    def release(self) -> None:
        """The script is over: the gate lets open sessions finish, then ends the adapter."""
        self._closing = True
        with contextlib.suppress(OSError):
            self._control.shutdown(socket.SHUT_RDWR)  # wakes the watcher, which then ends
        self._control.close()


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


# ---------------------------------------------------------------------------------------------
# debugpy, started and stopped


def _hide_from_debugger(thread: threading.Thread) -> threading.Thread:
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
        # debugpy's own wait, kept: absorb_script_calls replaces the module's for the script
        self._wait_for_client = debugpy.wait_for_client
        self._cancelled = False

    def listen_on_loopback(self) -> tuple[int, str]:
        """Start debugpy on a loopback port; return it and the marker in its adapter's env."""
        marker = uuid.uuid4().hex
        self.debugpy.configure(pythonEnv=dict(os.environ, **{gate.ADAPTER_MARKER: marker}))
        _, port = self.debugpy.listen(("127.0.0.1", 0))
        return port, marker

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
        return True

    def wait_until(self, deadline: float) -> bool:
        """Wait for a debugger's configurationDone until ``deadline``; True if one attached.

        A client caught in the middle of attaching at the deadline gets ``ATTACH_GRACE`` more.
        """

        def on_deadline() -> None:
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

    def absorb_script_calls(self, public: tuple[str, int]) -> None:
        """Make the script's own debugpy calls (the guide's boilerplate) harmless.

        ``listen()`` works once per process and the guide's ``wait_for_client()`` never times
        out; this process already listens, and its wait is over by the time the script runs.
        """

        def listen(*args: object, **kwargs: object) -> tuple[str, int]:
            say("the script called debugpy.listen(); already listening, so the call is skipped")
            return public

        def connect(*args: object, **kwargs: object) -> None:
            say("the script called debugpy.connect(); already set up, so the call is skipped")

        def wait_for_client() -> None:
            say("the script called debugpy.wait_for_client(); the wait is already over")

        wait_for_client.cancel = lambda: None  # type: ignore[attr-defined]
        self.debugpy.listen = listen
        self.debugpy.connect = connect
        self.debugpy.wait_for_client = wait_for_client

    @staticmethod
    def _schedule(delay: float, action) -> None:  # type: ignore[no-untyped-def]
        _hide_from_debugger(threading.Timer(delay, action)).start()

    def report_uncaught(self, error: BaseException) -> None:
        if self.debugpy.is_client_connected():
            self.debugpy.trigger_exception_handler(error, as_uncaught=True)

    def stop_tracing(self) -> None:
        """Stop tracing, so a script nobody debugs runs at full speed (2x to 11x on 3.11)."""
        try:
            import pydevd

            pydevd.stoptrace()
        except Exception as error:  # stopping must never hide the script's own outcome
            say(f"could not stop tracing: {error}")


# ---------------------------------------------------------------------------------------------
# Running the script as plain python would


def _execute_as_main(path: str) -> None:
    """What ``python path`` does: a fresh ``__main__`` that stays (pickling and multiprocessing
    find it), ``__file__`` absolute, ``sys.argv[0]`` as typed. ``runpy.run_path`` would rewrite
    ``sys.argv[0]`` and put the bootstrap back as ``__main__`` afterwards."""
    main = types.ModuleType("__main__")
    main.__file__ = path
    main.__cached__ = None
    main.__loader__ = importlib.machinery.SourceFileLoader("__main__", path)
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    with io.open_code(path) as source:
        code = compile(source.read(), path, "exec", dont_inherit=True)
    exec(code, main.__dict__)


def _script_path(options: Options) -> str:
    if options.module:
        return os.path.abspath(module_file(options.script) or options.script)
    return os.path.abspath(options.script)


def run_script(
    script: str, args: list[str], debugger: Debugger | None = None, *, module: bool = False
) -> int:
    """Run ``script`` as ``__main__`` with ``sys.argv = [script, *args]``; return its exit status.
    With ``module``, run the module named ``script`` as ``python -m script args`` would.

    ``SystemExit`` passes through untouched. An uncaught exception goes to ``sys.excepthook``
    with a traceback that starts in the user's script, as under plain python, and gives 1.
    """
    path = os.path.abspath(module_file(script) or script) if module else os.path.abspath(script)
    sys.argv = [script, *args]
    sys.path[0] = os.getcwd() if module else os.path.dirname(path)
    try:
        if module:  # what python -m runs: __main__ stays, sys.argv[0] becomes the file
            runpy._run_module_as_main(script, alter_argv=True)  # type: ignore[attr-defined]
        else:
            _execute_as_main(path)
    except SystemExit:
        raise
    except BaseException as error:
        if debugger is not None:
            debugger.report_uncaught(error)
        traceback_tail = error.__traceback__
        while traceback_tail is not None and traceback_tail.tb_frame.f_code.co_filename != path:
            traceback_tail = traceback_tail.tb_next
        error.with_traceback(traceback_tail or error.__traceback__)
        sys.excepthook(type(error), error, error.__traceback__)
        if isinstance(error, KeyboardInterrupt):
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        return 1
    return 0


def _tag_run_in_background(line: str, rank: int) -> None:
    """Tag the Azure ML run with the announcement: tags arrive before late log uploads."""
    if not os.environ.get("AZUREML_RUN_ID"):
        return

    def tag() -> None:
        try:
            from azureml.core import Run

            run = Run.get_context(allow_offline=True)
            if hasattr(run, "set_tags") and not type(run).__name__.startswith("_Offline"):
                run.set_tags({announce.tag_key(rank): line})
        except Exception as error:  # the log line is the fallback
            say(f"could not tag the run with the announcement ({error}); the log has it")

    _hide_from_debugger(threading.Thread(target=tag, name="aml-debug-tag")).start()


# ---------------------------------------------------------------------------------------------
# The whole flow


def _announce(announcement: announce.Announcement, timeout: float) -> None:
    line = announce.format_announcement(announcement)
    emit(line)  # first: a reader takes ours and then ignores the guide's lines
    for guide_line in announce.guide_lines_before_wait(announcement, timeout):
        emit(guide_line)
    _tag_run_in_background(line, announcement.rank)


def _finish_wait(
    attached: bool, options: Options, rank: Rank, where: str, gate_died: bool = False
) -> None:
    emit(announce.guide_line_after_wait(attached))
    emit(announce.format_outcome(announce.AttachOutcome(attached, os.getpid(), rank.rank or 0)))
    if not attached:
        what = "runs now" if options.on_timeout == "continue" else "will not run (--on-timeout)"
        why = (
            "the debug port's gate process ended, so no debugger can attach"
            if gate_died else f"no debugger attached within {options.timeout:g} s"
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
    if options.mode == "listen":
        port = options.address.port + rank.local_rank if options.address.port else 0
        gate_handle = GateHandle(
            bind_public_port(Address(options.address.host, port)), allow=options.allow,
            reattach_window=options.reattach_window, rank=rank.rank or 0,
        )
    debugger = Debugger()

    def on_sigterm(signum: int, frame: object) -> None:
        if gate_handle is not None:
            gate_handle.close_now()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, on_sigterm)

    gate_died = threading.Event()

    def gate_gone() -> None:  # nobody can attach any more: stop waiting, and say why
        gate_died.set()
        emit(announce.format_port_closed(announce.PortClosed(
            "the debug port is gone: its gate process ended; the script runs on without a "
            "debugger", rank.rank or 0,
        )))
        debugger.cancel_wait()

    try:
        if gate_handle is not None:
            upstream, adapter_marker = debugger.listen_on_loopback()
            gate_handle.tell(f"upstream {upstream}")
            gate_handle.tell(f"adapter {adapter_marker}")
            addresses, port = node_addresses(options.address.host), gate_handle.port
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
                script=_script_path(options),
                cwd=os.getcwd(),
                hostname=socket.gethostname(),
                just_my_code=options.just_my_code,
                source_root=options.source_root or None,
            ),
            options.timeout,
        )
        if gate_handle is not None:  # after the announcement: a port-gone line must follow it
            gate_handle.when_gone(gate_gone)
        if gate_handle is None:
            say(f"connecting to the debugger at {options.address.host}:{port} until the deadline")
            attached = debugger.connect(options.address, deadline) and debugger.wait_until(deadline)
        else:
            say(f"waiting up to {options.timeout:g} s for a debugger on port {port}")
            attached = debugger.wait_until(deadline)
        _finish_wait(attached, options, rank, "the port" if gate_handle else "the connection",
                     gate_died.is_set())
        if not attached:
            if gate_handle is not None:
                gate_handle.close_now()
            debugger.stop_tracing()
            if options.on_timeout == "exit":
                return EXIT_NOT_ATTACHED
        debugger.absorb_script_calls((addresses[0], port))
        return run_script(options.script, options.script_args, debugger, module=options.module)
    finally:
        if gate_handle is not None:
            gate_handle.release()


_GATES_OF_THIS_PROCESS: list[GateHandle] = []


def debug_in_this_process(
    listen: str, script: str, timeout: float | None, *, just_my_code: bool = True,
    source_root: str | None = None,
) -> Callable[[], bool]:
    """Start debugpy in this process behind the gate and announce it, for code the bootstrap
    does not run itself (a scoring script inside the inference server's worker).

    Returns ``wait``: it waits for a debugger until ``timeout`` runs out and says whether one
    came. The port stays open for the life of the process either way, so a debugger can attach
    later; the gate ends debugpy's adapter when the process ends.
    """
    address = parse_address(listen, "--listen")
    deadline = time.time() + timeout if timeout else None
    gate_handle = GateHandle(bind_public_port(address))
    _GATES_OF_THIS_PROCESS.append(gate_handle)  # its control socket must live as long as we do
    debugger = Debugger()
    upstream, adapter_marker = debugger.listen_on_loopback()
    gate_handle.tell(f"upstream {upstream}")
    gate_handle.tell(f"adapter {adapter_marker}")
    _announce(
        announce.Announcement(
            addresses=tuple(node_addresses(address.host)),
            port=gate_handle.port,
            attach_deadline=round(deadline, 3) if deadline else None,
            pid=os.getpid(),
            script=os.path.abspath(script),
            cwd=os.getcwd(),
            hostname=socket.gethostname(),
            just_my_code=just_my_code,
            source_root=os.path.abspath(source_root) if source_root else None,
        ),
        timeout or 0,
    )

    debugger.absorb_script_calls((address.host, gate_handle.port))  # the guide's score.py

    def tell_when_attached() -> None:  # a debugger may attach at any time while serving
        if debugger.wait_forever():
            emit(announce.format_outcome(announce.AttachOutcome(True, os.getpid(), 0)))

    def wait() -> bool:
        attached = False
        if deadline:
            attached = debugger.wait_until(deadline)
            emit(announce.guide_line_after_wait(attached))
            emit(announce.format_outcome(announce.AttachOutcome(attached, os.getpid(), 0)))
        if not attached:
            _hide_from_debugger(
                threading.Thread(target=tell_when_attached, name="aml-debug-attached", daemon=True)
            ).start()
        return attached

    if not deadline:
        wait()
    return wait


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
