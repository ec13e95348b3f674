"""The bootstrap's command line, read into :class:`Options`, and the limits it accepts.

In: the arguments after ``bootstrap.py`` (``--listen HOST:PORT ... -- train.py --epochs 3``).
Out: an :class:`Options` record, or :class:`UsageError` with one line naming what to fix. The
notebook checks a request with :func:`check_limits` too, before it submits anything. Standard
library only: this file travels into a run's snapshot as ``aml_debug_options.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

try:
    from aml_debug_magics.node import gate
    from aml_debug_magics.node import ranks as node_ranks
except ImportError:  # shipped into a run's snapshot beside this file
    import aml_debug_gate as gate  # type: ignore[no-redef]
    import aml_debug_ranks as node_ranks  # type: ignore[no-redef]

DEFAULT_PORT = 5678
SOURCE_ROOT_VARIABLE = "AML_DEBUG_SOURCE_ROOT"  # set by a command that changes folder first
DEFAULT_TIMEOUT = 300.0
MAX_TIMEOUT = 24 * 3600.0
VIA_CHOICES = ("listen", "storage", "auto")
RELAY_UP_VARIABLE = "AML_DEBUG_RELAY_UP"  # the "up" blob's URL with the node's add-only SAS
RELAY_DOWN_VARIABLE = "AML_DEBUG_RELAY_DOWN"  # the "down" blob's URL with its read-only SAS
LOCAL_VARIABLE = "AML_DEBUG_LOCAL"  # "1" in every step the local target runs; absent on Azure ML
POST_MORTEM_CHAINS = "_PM"  # after either name: the second pair, the relay of a failure's window


class UsageError(Exception):
    """Bad input: reported as one line and exit status 2."""


def on_azure_ml(environ: Mapping[str, str]) -> bool:
    """Whether this process is an Azure ML job's: it has the run's id (``AZUREML_RUN_ID``) and
    the local target, which gives its steps a run id too, did not start it."""
    return bool(environ.get("AZUREML_RUN_ID")) and not environ.get(LOCAL_VARIABLE)


def relay_chain(environ: Mapping[str, str], variable: str) -> str:
    """This process's storage relay chain from ``variable`` (``RELAY_UP_VARIABLE`` or
    ``RELAY_DOWN_VARIABLE``): its own rank's (``AML_DEBUG_RELAY_UP_3``) where the notebook made
    one per waiting rank, else the one of the step's single waiting rank; "" where neither is."""
    rank = node_ranks.detect_rank(dict(environ)).rank
    own = environ.get(f"{variable}_{rank}", "") if rank is not None else ""
    return own.strip() or environ.get(variable, "").strip()


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
    # how the debugger's bytes reach the notebook: the public port (listen), the storage relay
    # (storage: nothing listens on a routable address), or both (auto)
    via: str = "listen"
    # after an uncaught exception with no debugger attached: how long to wait for one at the
    # exception (None: as long as the attach window, --timeout; 0: off)
    post_mortem: float | None = None

    @property
    def post_mortem_window(self) -> float:
        """Seconds a failed script waits for a debugger at its exception; 0 when off."""
        return self.timeout if self.post_mortem is None else self.post_mortem


def parse_post_mortem(text: str) -> float:
    """``--post-mortem``'s value in seconds: a number, or ``off`` (0).

    >>> parse_post_mortem("off"), parse_post_mortem("600")
    (0.0, 600.0)
    """
    if text.strip().lower() == "off":
        return 0.0
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= MAX_TIMEOUT:  # also refuses inf and nan
        raise UsageError(
            f"--post-mortem takes seconds (more than 0, at most {MAX_TIMEOUT:g}) or off "
            f"(got {text!r})"
        )
    return seconds


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
        "--via",
        choices=VIA_CHOICES,
        default="listen",
        help="listen: the debugger attaches to the public port (default); storage: debugpy "
        "listens on loopback only and a relay carries its bytes through two append blobs "
        f"(URLs in ${RELAY_UP_VARIABLE} and ${RELAY_DOWN_VARIABLE}); auto: both",
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
        "--post-mortem",
        metavar="SECONDS|off",
        help="after an uncaught exception with no debugger attached, wait this long for one, "
        "stopped at the exception, before exiting as python would (default: --timeout; off: "
        "exit at once)",
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
    reattach_window: float = gate.DEFAULT_REATTACH_WINDOW, post_mortem: str | None = None,
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
    if post_mortem is not None:
        parse_post_mortem(post_mortem)


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
    check_limits(args.timeout, args.ranks, args.allow, args.reattach_window, args.post_mortem)
    if args.connect:
        mode, address = "connect", parse_address(args.connect, "--connect")
        if address.port == 0:
            raise UsageError("--connect needs the port the debugger listens on, not 0")
        if args.via != "listen":
            raise UsageError(f"--via {args.via} needs debugpy listening: drop --connect")
    else:
        mode = "listen"
        address = parse_address(args.listen or f"0.0.0.0:{DEFAULT_PORT}", "--listen")
    variables = (RELAY_UP_VARIABLE, RELAY_DOWN_VARIABLE)
    missing = " and ".join(f"${name}" for name in variables if not relay_chain(os.environ, name))
    if args.via != "listen" and missing:
        raise UsageError(f"--via {args.via} needs the relay's blob URLs in {missing}")
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
        via=args.via,
        post_mortem=parse_post_mortem(args.post_mortem) if args.post_mortem is not None else None,
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
