"""Whether the page can reach the kernel while a cell runs, and telling a debugger when not.

In: the IPython shell (its kernel, if any). Out: ``blocked`` reasons set on a
:class:`~aml_debug_magics.debugger.controller.DebuggerController` while a cell runs on a kernel
that cannot take widget messages meanwhile, cleared when the cell ends. ipykernel 7 runs comm
messages on subshells (JupyterLab 4.4 and later send them there by default); ipykernel 6 (the
Python 3.10 kernels of compute instances) queues them behind the running cell, so the view's
buttons would seem frozen.
"""

from __future__ import annotations

from typing import Any

from aml_debug_magics.debugger.controller import DebuggerController

BLOCKED = ("a cell is running, and this kernel (ipykernel {version}, no subshells) takes the "
           "debugger's buttons only once it ends; wait for it, or use %aml_debug_step in the "
           "next cell")


def takes_messages_while_busy(shell: Any) -> bool:
    """True where widget messages reach the kernel while a cell runs: ipykernel 7 subshells."""
    kernel = getattr(shell, "kernel", None)
    return getattr(kernel, "shell_channel_thread", None) is not None


def watch_cells(shell: Any, controller: DebuggerController) -> None:
    """On a kernel without subshells, mark ``controller`` blocked while any cell runs (and
    stop watching once the debugger ended)."""
    if shell is None or takes_messages_while_busy(shell) or getattr(shell, "kernel", None) is None:
        return
    import ipykernel

    reason = BLOCKED.format(version=ipykernel.__version__)

    def cell_started(*_: Any) -> None:
        controller.set_blocked(reason if controller.active else "")

    def cell_ended(*_: Any) -> None:
        controller.set_blocked("")
        if not controller.active:
            shell.events.unregister("pre_run_cell", cell_started)
            shell.events.unregister("post_run_cell", cell_ended)

    shell.events.register("pre_run_cell", cell_started)
    shell.events.register("post_run_cell", cell_ended)
