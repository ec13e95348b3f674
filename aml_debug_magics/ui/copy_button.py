"""The copy button: an anywidget whose front end is ``copy_button.js`` (no build step)."""

from __future__ import annotations

from pathlib import Path

import anywidget
import traitlets


class CopyButton(anywidget.AnyWidget):
    """Copies ``text`` to the clipboard on click; the page reports back in ``result``.

    ``result`` is ``copied``, ``copied (fallback)`` (the textarea route, on a page that is not a
    secure context) or ``failed``; ``clicks`` counts the reports, so the same result twice is
    still news.
    """

    _esm = Path(__file__).with_name("copy_button.js")
    text = traitlets.Unicode("").tag(sync=True)
    label = traitlets.Unicode("Copy attach config").tag(sync=True)
    result = traitlets.Unicode("").tag(sync=True)
    clicks = traitlets.Int(0).tag(sync=True)
