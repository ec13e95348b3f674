"""The bootstrap's command line, built here for every target: what ``python`` is given before
the user's script and its arguments.

In: where the bootstrap is (its shipped file beside the node's other files, or this package's
module) and its settings: the local target's, or an Azure ML node's from the request
(``environment.azureml_bootstrap_options``). Out: the words, in the form ``node/options.py``
reads them on the node; the caller puts ``--`` and the script after them.

For example, the local target's words for ``train.py --epochs 3``::

    [sys.executable, "-u", *bootstrap_entry(None), *bootstrap_options(listen="127.0.0.1:0",
     connect=None, timeout=60, ranks="0", just_my_code=True, allow="any"), "--", "train.py",
     "--epochs", "3"]
    # python -u -m aml_debug_magics.node.bootstrap --listen 127.0.0.1:0 --timeout 60 --ranks 0
    #     --just-my-code --allow any -- train.py --epochs 3
"""

from __future__ import annotations

from pathlib import Path

from aml_debug_magics.node.bootstrap import SHIPPED_NAMES

BOOTSTRAP = SHIPPED_NAMES["bootstrap.py"]  # the bootstrap's name where the node's files travel
BOOTSTRAP_MODULE = "aml_debug_magics.node.bootstrap"  # where this package is importable


def bootstrap_entry(node_files: Path | None) -> list[str]:
    """How ``python`` starts the bootstrap: the shipped file in ``node_files`` (a folder of the
    node's files alone, as a node without this package has them), else this package's module."""
    return [str(node_files / BOOTSTRAP)] if node_files else ["-m", BOOTSTRAP_MODULE]


def bootstrap_options(
    *,
    listen: str,
    connect: str | None,
    timeout: float,
    ranks: str,
    just_my_code: bool,
    allow: str,
    on_timeout: str | None = None,
    reattach_window: float | None = None,
    via: str = "listen",
    source_root: str | None = None,
    post_mortem: str | None = None,
) -> list[str]:
    """The bootstrap's options: ``--connect`` where given, else ``--listen``; the node's own
    default is left unsaid for the optional ones (``None``, and ``via="listen"``)."""
    return [
        *(["--connect", connect] if connect else ["--listen", listen]),
        "--timeout", f"{timeout:g}",
        *(["--on-timeout", on_timeout] if on_timeout is not None else []),
        "--ranks", ranks,
        "--just-my-code" if just_my_code else "--no-just-my-code",
        "--allow", allow,
        *(["--reattach-window", f"{reattach_window:g}"] if reattach_window is not None else []),
        *(["--via", via] if via != "listen" else []),
        *(["--source-root", source_root] if source_root is not None else []),
        *(["--post-mortem", post_mortem] if post_mortem is not None else []),
    ]
