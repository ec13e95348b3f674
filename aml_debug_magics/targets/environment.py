"""What a debugged run needs in the user's Azure ML environment, shared by the run target
(``azureml.py``) and the scoring-image packaging (``deploy/package.py``): the debugpy
requirement, and the node's files placed beside the user's script for the snapshot.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from aml_debug_magics.errors import DebugInputError

# resolves on every node Python: 1.8.21 on 3.8 and 3.9 (the last for them), newer on 3.10+
DEBUGPY_REQUIREMENT = "debugpy>=1.8.1,<1.9"
NODE_FILES = Path(__file__).resolve().parents[1] / "node"
BOOTSTRAP = "aml_debug_bootstrap.py"  # the bootstrap's name in a run's snapshot


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
