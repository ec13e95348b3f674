"""What a debugged run needs in the user's Azure ML environment, shared by the run target
(``azureml.py``, ``azureml_v2.py``) and the scoring-image packaging (``deploy/package.py``):
the debugpy requirement, the node's files placed beside the user's script for the snapshot, and
the bootstrap's options.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from aml_debug_magics.errors import DebugInputError

if TYPE_CHECKING:
    from aml_debug_magics.records import DebugRequest

# resolves on every node Python: 1.8.21 on 3.8 and 3.9 (the last for them), newer on 3.10+
DEBUGPY_REQUIREMENT = "debugpy>=1.8.1,<1.9"
NODE_FILES = Path(__file__).resolve().parents[1] / "node"
BOOTSTRAP = "aml_debug_bootstrap.py"  # the bootstrap's name in a run's snapshot
DEFAULT_PORT = 5678  # the guide's; a node's port is this plus its local rank


@contextlib.contextmanager
def shipped_bootstrap(
    folders: list[Path], extra: dict[str, str] | None = None
) -> Iterator[None]:
    """The bootstrap's files (and ``extra``: a file in ``node/`` -> its shipped name) in each
    folder for the snapshot; removed after, whatever happens.

    A folder that already holds a different file of the same name is refused (never overwrite).
    """
    from aml_debug_magics.node.bootstrap import SHIPPED_NAMES

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
        yield
    finally:
        for target in placed:
            target.unlink(missing_ok=True)


def bootstrap_options(request: DebugRequest) -> list[str]:
    """The bootstrap's options for a node: where to listen (or connect), the window, the
    ranks, and who may attach."""
    where = (
        ["--connect", request.connect]
        if request.connect
        else ["--listen", f"0.0.0.0:{request.port or DEFAULT_PORT}"]
    )
    return [
        *where,
        "--timeout", f"{request.timeout:g}",
        "--ranks", request.ranks,
        "--just-my-code" if request.just_my_code else "--no-just-my-code",
        "--allow", allowed_sources(request.allow),
    ]


def allowed_sources(choice: str) -> str:
    """Who the node's gate lets attach: by default this machine only (its own addresses, and
    loopback, where an SSH tunnel arrives); ``any`` or the user's own list otherwise."""
    if choice != "auto":
        return choice
    from aml_debug_magics.node.bootstrap import node_addresses

    return ",".join(dict.fromkeys([*node_addresses("0.0.0.0"), "127.0.0.1"]))
