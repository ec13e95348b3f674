"""How a session shows itself: a live widget panel in notebooks, plain text elsewhere."""

from __future__ import annotations

import sys
from collections.abc import Callable

from aml_debug_magics.session import View


def widgets_render_here() -> bool:
    """True in a Jupyter kernel (JupyterLab, Notebook 7, VS Code); False in terminal IPython."""
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    return type(shell).__name__ == "ZMQInteractiveShell"


def make_view(kind: str = "auto", *, clock: Callable[[], float] | None = None) -> View:
    """``widgets``, ``text``, or ``auto``: widgets where a notebook front end can render them."""
    if kind == "widgets" or (kind == "auto" and widgets_render_here()):
        from aml_debug_magics.ui.panel import PanelView

        return PanelView(clock=clock)
    from aml_debug_magics.ui.text import TextView

    return TextView(clock=clock)
