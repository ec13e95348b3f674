"""What a debugged run carries to Azure ML beside the user's script, shared by the run targets
(``azureml.py``, ``azureml_v2.py``) and the scoring-image packaging (``deploy/package.py``): the
node's files, a copy of debugpy, and the bootstrap's options.

In: the source folders a submit snapshots, and the request. Out: those folders holding, only
while the snapshot is taken, the bootstrap's files and (for a run) ``aml_debug_debugpy/``, the
universal debugpy wheel unpacked, which the bootstrap imports only where the user's environment
has no debugpy of its own; so the environment is submitted as it is and Azure ML reuses the
image it already built. The wheel is fetched once with pip (the user's index, proxy and mirror
settings apply) into ``~/.cache/aml_debug_magics/`` (``AML_DEBUG_CACHE``) and checked by its
sha256 whatever served it.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from aml_debug_magics.errors import DebugInputError
from aml_debug_magics.failures import first_line
from aml_debug_magics.sources.inputs import cache_root
from aml_debug_magics.targets.bootstrap_command import bootstrap_options

if TYPE_CHECKING:
    from aml_debug_magics.records import DebugRequest

# what a scoring image's environment installs: 1.8.21 on 3.8 and 3.9 (the last for them)
DEBUGPY_REQUIREMENT = "debugpy>=1.8.1,<1.9"
# what a run's snapshot carries: the last release that still runs on Python 3.8 and 3.9
SHIPPED_DEBUGPY_VERSION = "1.8.21"
DEBUGPY_WHEEL = f"debugpy-{SHIPPED_DEBUGPY_VERSION}-py2.py3-none-any.whl"
DEBUGPY_WHEEL_SHA256 = "b1e37d333663c8851516a47364ef473da127f9caebe4417e6df6f5825a7e9a92"
# only Windows and macOS load these (attach to a running process, and its debug symbols):
# 16 of the wheel's 28 MB, never used on a Linux node that listens or connects
NOT_FOR_LINUX_NODES = (".dll", ".exe", ".pdb", ".dylib")
SHIPPED_MARKER = "aml_debug_shipped.txt"  # in the shipped folder: which wheel it came from
NODE_FILES = Path(__file__).resolve().parents[1] / "node"
DEFAULT_PORT = 5678  # the guide's; a node's port is this plus its local rank


def shipped_debugpy() -> Path:
    """The folder a run's snapshot carries as ``aml_debug_debugpy/``: the universal debugpy
    wheel, unpacked once into the cache (files only Windows and macOS load left out).

    Raises ``DebugInputError`` (one line: what to do) when the wheel cannot be fetched.
    """
    folder = cache_root() / f"debugpy-{SHIPPED_DEBUGPY_VERSION}-for-nodes"
    marker = folder / SHIPPED_MARKER
    if marker.is_file() and marker.read_text() == DEBUGPY_WHEEL_SHA256:
        return folder
    wheel = _debugpy_wheel()
    unpacking = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=cache_root()))
    try:
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.infolist():
                if not member.filename.endswith(NOT_FOR_LINUX_NODES):
                    archive.extract(member, unpacking)
        (unpacking / SHIPPED_MARKER).write_text(DEBUGPY_WHEEL_SHA256)
        shutil.rmtree(folder, ignore_errors=True)
        unpacking.rename(folder)
    finally:
        shutil.rmtree(unpacking, ignore_errors=True)
    return folder


def _debugpy_wheel() -> Path:
    """The wheel in the cache, fetched with pip when it is missing or not the expected one."""
    cache_root().mkdir(parents=True, exist_ok=True)
    wheel = cache_root() / DEBUGPY_WHEEL
    if wheel.is_file() and _sha256(wheel) == DEBUGPY_WHEEL_SHA256:
        return wheel
    wheel.unlink(missing_ok=True)
    what_to_do = (f"connect this machine to PyPI (or set PIP_INDEX_URL to a mirror), or put "
                  f"{DEBUGPY_WHEEL} into {cache_root()}")
    with tempfile.TemporaryDirectory(prefix=".fetching-", dir=cache_root()) as fetching:
        fetched = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--platform", "any", "--implementation", "py", "--python-version", "3.8",
             "--disable-pip-version-check", "--retries", "1", "--timeout", "20",
             "--dest", fetching, f"debugpy=={SHIPPED_DEBUGPY_VERSION}"],
            capture_output=True, text=True, stdin=subprocess.DEVNULL,
        )
        found = Path(fetching) / DEBUGPY_WHEEL
        if fetched.returncode != 0 or not found.is_file():
            said = [line for line in (fetched.stderr + fetched.stdout).splitlines() if line.strip()]
            why = first_line(said[-1]) if said else f"pip exited with {fetched.returncode}"
            raise DebugInputError(
                f"cannot fetch debugpy {SHIPPED_DEBUGPY_VERSION} for the nodes ({why}): "
                f"{what_to_do}"
            )
        if _sha256(found) != DEBUGPY_WHEEL_SHA256:
            raise DebugInputError(
                f"the {DEBUGPY_WHEEL} pip fetched is not the one published on PyPI (sha256 "
                f"differs): check the index pip uses, or put the right wheel into {cache_root()}"
            )
        found.replace(wheel)
    return wheel


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as content:
        for block in iter(lambda: content.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def shipped_debugpy_note() -> str:
    """What the snapshot gains, for the panel."""
    megabytes = folder_size(shipped_debugpy()) / 1e6
    return (f"each debugged step's snapshot carries debugpy {SHIPPED_DEBUGPY_VERSION} "
            f"(+{megabytes:.1f} MB), used only where its environment has no debugpy: the "
            "environment is submitted as it is")


def post_mortem_note(post_mortem: str | None, timeout: float) -> str:
    """What the post-mortem costs on Azure ML, for the panel ("" when it is off)."""
    if post_mortem == "off":
        return ""
    window = timeout if post_mortem is None else float(post_mortem)
    return (f"a debugged step that fails waits up to {window:g} s at its exception for a "
            "debugger, its node kept on your compute quota meanwhile (--post-mortem off opts "
            "out)")


@contextlib.contextmanager
def shipped_bootstrap(
    folders: list[Path], extra: dict[str, str] | None = None, *, with_debugpy: bool = False
) -> Iterator[None]:
    """The bootstrap's files (and ``extra``: a file in ``node/`` -> its shipped name; and with
    ``with_debugpy`` the folder of :func:`shipped_debugpy`) in each folder for the snapshot;
    removed after, whatever happens.

    A folder that already holds a different file (or debugpy folder) of the same name is
    refused (never overwrite); one that holds the same is left in place.
    """
    from aml_debug_magics.node.bootstrap import SHIPPED_NAMES
    from aml_debug_magics.node.debugger import SHIPPED_DEBUGPY

    debugpy_folder = shipped_debugpy() if with_debugpy else None
    placed: list[Path] = []
    try:
        for folder in dict.fromkeys(folders):
            for source_name, shipped_name in {**SHIPPED_NAMES, **(extra or {})}.items():
                source, target = NODE_FILES / source_name, folder / shipped_name
                content = source.read_bytes()
                if target.exists():
                    if target.read_bytes() != content:
                        raise DebugInputError(
                            f"{target} exists and is not this version's {shipped_name}: "
                            "rename or remove it"
                        )
                    continue
                target.write_bytes(content)
                placed.append(target)
            if debugpy_folder is not None:
                target = folder / SHIPPED_DEBUGPY
                if target.exists():
                    marker = target / SHIPPED_MARKER
                    if not (marker.is_file() and marker.read_text() == DEBUGPY_WHEEL_SHA256):
                        raise DebugInputError(
                            f"{target} exists and is not the debugpy this version ships: "
                            "rename or remove it"
                        )
                    continue
                placed.append(target)
                shutil.copytree(debugpy_folder, target)
        yield
    finally:
        for target in placed:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)


def azureml_bootstrap_options(request: DebugRequest) -> list[str]:
    """The bootstrap's options on an Azure ML node: listen on every address of the node (or
    connect), the window, the ranks, who may attach, and the way the debugger comes."""
    return bootstrap_options(
        listen=f"0.0.0.0:{request.port or DEFAULT_PORT}", connect=request.connect,
        timeout=request.timeout, ranks=request.ranks, just_my_code=request.just_my_code,
        allow=allowed_sources(request.allow), via=request.via, post_mortem=request.post_mortem,
    )


def parallel_worker_environment(request: DebugRequest, entry_script: str) -> dict[str, str]:
    """What the shipped parallel shim reads in the runner's worker (``node/parallel_entry.py``):
    where to listen, the user's entry script, the window, and who may attach, as for any step."""
    return {
        "AML_DEBUG_LISTEN": f"0.0.0.0:{request.port or DEFAULT_PORT}",
        "AML_DEBUG_USER_SCRIPT": entry_script,
        "AML_DEBUG_TIMEOUT": f"{request.timeout:g}",
        "AML_DEBUG_JUST_MY_CODE": "1" if request.just_my_code else "0",
        "AML_DEBUG_ALLOW": allowed_sources(request.allow),
        "AML_DEBUG_POST_MORTEM": request.post_mortem or "",  # "": the attach window
    }


def allowed_sources(choice: str) -> str:
    """Who the node's gate lets attach: by default this machine only (its own addresses) and
    the node itself (loopback, and its own addresses: an SSH tunnel through the node's sshd
    arrives from there); ``any`` or the user's own list otherwise."""
    if choice != "auto":
        return choice
    from aml_debug_magics.node.gate import THIS_NODE
    from aml_debug_magics.node.ranks import node_addresses

    return ",".join(dict.fromkeys([*node_addresses("0.0.0.0"), "127.0.0.1", THIS_NODE]))
