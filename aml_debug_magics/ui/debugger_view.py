"""The debugger view: an anywidget whose front end is the built bundle ``debugger.js``.

In: a whole ``state`` snapshot from the kernel side (one per stop, continue or end) and replies
to the front end's requests. Out: the user's actions (buttons, gutter clicks, frame clicks,
variable expansions, evaluations) as custom messages, handed to one ``on_action`` callback. The
view holds no debugger logic; ``aml_debug_magics.debugger.controller`` does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anywidget
import traitlets

log = logging.getLogger(__name__)

ActionHandler = Callable[[dict[str, Any]], "dict[str, Any] | None"]


class DebuggerView(anywidget.AnyWidget):
    """The in-notebook debugger of one row.

    ``state`` (replaced whole, never patched)::

        {"status": "connecting"|"running"|"stopped"|"ended"|"unsupported"|"error",
         "message": str,                       # the status line: why it cannot work, etc.
         "processes": [{"id": str, "name": str}], "process": str,
         "stopped": {"reason", "description", "thread_id",
                     "exception": {"id", "description", "details"} | None} | None,
         "frames": [{"id", "name", "path", "line", "local": bool}], "frame_id": int | None,
         "source": {"path", "text", "line"} | None,
         "scopes": [{"name", "variables_reference", "expensive", "variables": [Variable]}],
         "breakpoints": {path: [line, ...]},
         "exceptions": {"uncaught": bool, "raised": bool}}

    Variable: ``{"name", "value" (at most 200 characters), "type", "variables_reference"
    (0: no children), "shortened": bool}``.

    Front end to kernel (``model.send``): ``{"action": "continue"|"next"|"stepIn"|"stepOut"|
    "pause"|"stop"}``, ``toggle_breakpoint`` (path, line), ``select_frame`` (frame_id),
    ``select_process`` (id), ``variables`` (variables_reference, request_id), ``full_value``
    (variables_reference, name, request_id; ``variables_reference`` 0 with ``frame_id``: the
    expression ``name`` evaluated again, for an evaluation's result), ``evaluate``
    (expression, frame_id, request_id), ``exceptions`` (raised). Kernel to front end
    (``send``): ``{"reply": request_id, "variables": [...]}``, ``{"reply": request_id,
    "value": str, "length": int}`` (the value's first 4,000,000 characters at most, and the
    whole value's length), ``{"reply": request_id, "result": Variable | None, "error": str |
    None}``.

    Beyond the first agreement: ``title`` names the row being debugged ("main.py (main)");
    ``stop`` detaches and lets the script run on, as VS Code's stop does on an attach (the
    panel's own Stop ends the script); closing the widget detaches too. A request the kernel
    side could not answer still gets its reply, with ``"error": str`` beside it. Opened on a
    script that still waits for its debugger, the view first stops before the script's first
    statement (``stopped.reason`` ``"entry"``), so breakpoints can be set before it runs on;
    while nothing is stopped, ``source`` is the row's script with ``line`` 0 (no current line),
    a scoring script too, so its gutter takes breakpoints before the server's worker runs it.
    ``frames`` leave out the bootstrap's own (the files that start the script under the
    debugger). Once the script ended or the debugger detached, every action is refused with
    "the debugger has ended: ..." (the status line keeps saying why). The stepping keys (F5,
    F10, F11, Shift+F11, F6, Shift+F5) work wherever the focus is in the view, the source text
    and the evaluate box included.
    A stop comes as two snapshots: first the stack and the source (``scopes`` empty), so the
    line mark moves at once, then the same with the scopes (debugpy takes about 45 ms for each
    of ``scopes`` and ``variables``). ``message`` is empty while stopped unless something went
    wrong (the page then shows the stop's description); ``variables`` children come as debugpy
    pages them: 100 items, then a ``more`` node whose children are ranges of 1,000.
    """

    _esm = Path(__file__).with_name("debugger.js")
    title = traitlets.Unicode("").tag(sync=True)
    state = traitlets.Dict({"status": "connecting", "message": ""}).tag(sync=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._handler: ActionHandler | None = None
        self._on_close: Callable[[], None] | None = None
        self.on_msg(self._received)

    def on_action(self, handler: ActionHandler, on_close: Callable[[], None]) -> None:
        """Send every front-end message to ``handler``; what it returns (a reply) goes back to
        the page. ``on_close`` runs once when the widget is closed."""
        self._handler = handler
        self._on_close = on_close

    def _received(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if not isinstance(content, dict) or self._handler is None:
            return
        try:
            reply = self._handler(content)
        except Exception as error:  # the page must get its reply whatever went wrong
            log.debug("debugger action %r failed", content, exc_info=True)
            reply = {"reply": content.get("request_id"), "error": str(error)} \
                if content.get("request_id") else None
        if reply is not None:
            self.send(reply)

    def close(self) -> None:
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()
        super().close()


def snapshot_view(snapshot: Any) -> DebuggerView:
    """The view, read-only, on a failure's snapshot (``debugger/snapshot.py``)."""
    from aml_debug_magics.debugger.controller import attach_view

    view = DebuggerView()
    attach_view(snapshot, view)
    return view
