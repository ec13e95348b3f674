"""IPython magics that put Azure ML pipeline steps, runs and scoring scripts under a debugger.

``%load_ext aml_debug_magics`` registers the magics and imports nothing heavy: the SDKs, the
widgets and debugpy load when a magic first needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

__version__ = "0.1.0"


def load_ipython_extension(ipython: InteractiveShell) -> None:
    from aml_debug_magics.magics import AmlDebugMagics

    ipython.register_magics(AmlDebugMagics(ipython))


def unload_ipython_extension(ipython: InteractiveShell) -> None:
    """Stop every running session: no process left running, no port left open."""
    from aml_debug_magics.session import stop_all

    stop_all()
