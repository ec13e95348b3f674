"""The live panel: a row per step (and rank) with status, host:port, countdown and buttons.

Built from stock ipywidgets plus the anywidget copy button. The countdown is computed from the
attach deadline on every tick of the one shared ticker thread. The panel's plain-text stand-in
(for front ends that cannot render widgets) is refreshed whenever a status changes.
"""

from __future__ import annotations

import html
import json
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets
from IPython.display import display

from aml_debug_magics.records import Status
from aml_debug_magics.session import DebugSession, StepRow
from aml_debug_magics.ui.copy_button import CopyButton
from aml_debug_magics.ui.text import format_left, session_text
from aml_debug_magics.ui.ticker import TICKER, Ticker

STATUS_COLOURS = {
    Status.WAITING: "#b26a00",
    Status.POST_MORTEM: "#cf222e",
    Status.ATTACHED: "#1a7f37",
    Status.FINISHED: "#1a7f37",
    Status.FAILED: "#cf222e",
    Status.TIMED_OUT: "#9a6700",
    Status.STOPPED: "#57606a",
    Status.NOT_RUN: "#57606a",
}
COPY_RESULTS = {
    "copied": "Attach config copied: paste it into .vscode/launch.json's configurations",
    "copied (fallback)": "Attach config copied (by the page's fallback route, this page is not "
    "a secure context): paste it into .vscode/launch.json's configurations",
    "failed": "The browser refused the clipboard: select the configuration below and copy it",
}


def _pre(text: str) -> str:
    return (
        '<pre style="user-select:text;margin:2px 0;padding:4px;font-size:12px;'
        f'background:var(--jp-layout-color2,#f6f8fa)">{html.escape(text, quote=False)}</pre>'
    )


def _linked(text: str) -> str:
    """``text`` escaped, with its https links clickable (the run in Azure ML studio)."""
    parts = re.split(r"(https://\S+?)(?=;?(?:\s|$))", text)
    return "".join(
        f'<a href="{html.escape(part)}" target="_blank">{html.escape(part)}</a>'
        if part.startswith("https://")
        else html.escape(part, quote=False)
        for part in parts
    )


class RowWidgets:
    """The widgets of one row; ``update`` copies a StepRow's facts into them."""

    def __init__(self, row: StepRow, panel: PanelView) -> None:
        self.row = row
        self.name = widgets.HTML(f"<b>{html.escape(row.label)}</b>", layout={"width": "120px"})
        self.status = widgets.HTML(layout={"width": "190px"})
        self.address = widgets.HTML(layout={"width": "160px"})
        self.countdown = widgets.Label(layout={"width": "90px"})
        self.attached = widgets.Label(layout={"width": "130px"})
        self.copy = CopyButton()
        self.copied = widgets.HTML()  # what the copy did, beside the button that did it
        self.copy.observe(self.copy_reported, names="clicks")
        self.write = widgets.Button(
            description="Write to .vscode/launch.json", disabled=True, layout={"width": "auto"}
        )
        self.write.on_click(lambda _: panel.session.write_launch_json(self.row))
        self.debug = widgets.Button(description="Debug here", disabled=True,
                                    tooltip="step through the script in this notebook",
                                    layout={"width": "auto"})
        self.debug.on_click(lambda _: panel.session.debug_here(self.row))
        self.frames = widgets.Button(description="Show frames", layout={"display": "none"},
                                     tooltip="the failure's frames and locals, from the log")
        self.frames.on_click(lambda _: panel.session.show_frames(self.row))
        self.debugger = widgets.VBox()  # the debugger view, once opened
        self.panel = panel
        self.show_output = widgets.ToggleButton(
            description="Output", value=False, layout={"width": "90px"}
        )
        self.show_output.observe(lambda _: self.update_lines(), names="value")
        self.config = widgets.HTML()
        self.lines = widgets.HTML(layout={"display": "none"})
        self.detail = widgets.HTML()
        for part, css in (
            (self.status, "aml-debug-status"),
            (self.address, "aml-debug-address"),
            (self.countdown, "aml-debug-countdown"),
            (self.attached, "aml-debug-attached"),
            (self.write, "aml-debug-write"),
            (self.debug, "aml-debug-debug-here"),
            (self.frames, "aml-debug-show-frames"),
            (self.copied, "aml-debug-copied"),
            (self.show_output, "aml-debug-output"),
            (self.config, "aml-debug-config"),
        ):
            part.add_class(css)
        facts = widgets.HBox(
            [self.name, self.status, self.address, self.countdown, self.attached],
            layout={"align_items": "center", "flex_flow": "row wrap"},
        )
        # A step without a debugger has nothing to attach to: only its output is offered.
        actions = [self.copy, self.copied, self.write, self.debug, self.frames,
                   self.show_output] if row.debugged else [
            self.show_output
        ]
        buttons = widgets.HBox(actions, layout={"flex_flow": "row wrap"})
        self.box = widgets.VBox(
            [facts, buttons, self.detail, self.config, self.lines, self.debugger]
        )
        self.box.add_class("aml-debug-row")

    def copy_reported(self, change: dict[str, Any]) -> None:
        result = change["owner"].result
        self.copied.value = f"<small>{html.escape(COPY_RESULTS.get(result, result))}</small>"

    def update(self, now: float) -> None:
        row = self.row
        colour = STATUS_COLOURS.get(row.status, "inherit")
        self.status.value = f'<span style="color:{colour}">{html.escape(str(row.status))}</span>'
        if row.address:
            path = f" <i>{html.escape(row.path)}</i>" if row.path else ""
            self.address.value = f"<code>{html.escape(row.address)}</code>{path}"
        else:
            self.address.value = "" if row.debugged else "<i>no debugger</i>"
        self.attached.value = "debugger attached" if row.attached else ""
        said = [t for t in (row.trial, row.detail, row.reachability) if t]
        self.detail.value = "".join(f"<small>{html.escape(t)}</small><br>" for t in said)
        config = row.attach_config() if row.attachable else None  # never a dead port's
        text = json.dumps(config, indent=4) if config else ""
        self.copy.text = text
        self.write.disabled = config is None  # the copy button greys itself out without text
        session = self.panel.session
        self.debug.disabled = config is None or "connect" not in config or (
            session is not None and session.debugger_of(row) is not None
        )
        self.config.value = _pre(text) if config else ""
        self.frames.layout.display = None if row.snapshot is not None else "none"
        # a live debugger's view is not replaced by the snapshot's
        self.frames.disabled = session is not None and session.debugger_of(row) is not None
        self.tick(now)
        self.update_lines()

    def tick(self, now: float) -> None:
        self.countdown.value = format_left(self.row.seconds_left(now))

    def update_lines(self) -> None:
        if not self.show_output.value:
            self.lines.layout.display = "none"
            return
        self.lines.layout.display = None
        text = "\n".join(self.row.last_lines) or "(no output yet)"
        self.lines.value = _pre(text)


class PanelView:
    """A session's panel in a notebook."""

    def __init__(
        self, *, clock: Callable[[], float] | None = None, ticker: Ticker = TICKER
    ) -> None:
        self._clock = clock
        self._ticker = ticker
        self._lock = threading.RLock()
        self.session: DebugSession | None = None
        self.rows: list[RowWidgets] = []
        self.header = widgets.HTML()
        self.message = widgets.HTML()
        self.message.add_class("aml-debug-message")
        self.stop_button = widgets.Button(description="Stop", button_style="danger")
        self.stop_button.add_class("aml-debug-stop")
        self.stop_button.on_click(lambda _: self.session and self.session.stop())
        self.body = widgets.VBox()
        self.service = widgets.HTML()
        self.service.add_class("aml-debug-service")
        self.send_button = widgets.Button(description="Send test request")
        self.send_button.add_class("aml-debug-send")
        self.send_button.on_click(lambda _: self.session and self.session.send_test_request())
        self.response = widgets.HTML()
        self.response.add_class("aml-debug-response")
        self.service_box = widgets.VBox(
            [self.service, widgets.HBox([self.send_button]), self.response],
            layout={"display": "none"},
        )
        self.widget = widgets.VBox(
            [self.header, self.body, self.service_box,
             widgets.HBox([self.stop_button, self.message])]
        )
        self.widget.add_class("aml-debug-panel")
        self._handle: Any = None
        self._statuses: tuple = ()
        self._disposed = False

    def now(self) -> float:
        clock = self._clock or (self.session.clock if self.session else time.time)
        return clock()

    def show(self, session: DebugSession) -> None:
        self.session = session
        for row in session.rows:
            self._widgets_for(row)
        self.refresh(None)
        self._handle = display(self, display_id=True)
        self._ticker.add(self)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = self.widget._repr_mimebundle_(**kwargs)
        if self.session is not None:
            bundle["text/plain"] = session_text(self.session, self.now())
        return bundle

    def _widgets_for(self, row: StepRow) -> RowWidgets:
        with self._lock:
            for existing in self.rows:
                if existing.row is row:
                    return existing
            made = RowWidgets(row, self)
            made.update(self.now())
            self.rows.append(made)
            order = {id(r): i for i, r in enumerate(self.session.rows)}
            self.rows.sort(key=lambda w: order.get(id(w.row), len(order)))
            self.body.children = [w.box for w in self.rows]
            return made

    def refresh(self, row: StepRow | None) -> None:
        session = self.session
        if session is None or self._disposed:  # a late report from a target's thread
            return
        if row is not None:
            self._widgets_for(row).update(self.now())
        state = html.escape(session.state)
        note = f"<br><small>{_linked(session.note)}</small>" if session.note else ""
        self.header.value = (
            f"<b>{html.escape(session.title)}</b> · {state} · {session.request.target} target"
            + note
        )
        self.message.value = html.escape(session.message)
        if session.service is not None:
            service = session.service
            self.service_box.layout.display = None
            self.service.value = (
                f"scoring URL <code>{html.escape(service.scoring_url)}</code> · health: "
                f"{html.escape(service.health or 'unknown')}"
            )
            self.send_button.disabled = not session.active
            self.response.value = _pre(service.response) if service.response else ""
        self.stop_button.disabled = not session.active
        statuses = (session.state, *((r.status, r.address) for r in session.rows))
        if self._handle is not None and statuses != self._statuses:
            self._statuses = statuses
            self._handle.update(self)  # keeps the plain-text stand-in current

    def show_debugger(self, row: StepRow, debugger: Any) -> None:
        """Put the notebook's debugger view for ``row`` under its row; its Debug here button
        comes back once that debugger detached or its script ended."""
        from IPython import get_ipython

        from aml_debug_magics.debugger.controller import attach_view
        from aml_debug_magics.debugger.kernel import watch_cells
        from aml_debug_magics.ui.debugger_view import DebuggerView

        row_widgets = self._widgets_for(row)
        for old in row_widgets.debugger.children:
            _close_tree(old)
        view = DebuggerView()
        attach_view(debugger, view)
        watch_cells(get_ipython(), debugger)
        row_widgets.debugger.children = [view]

        def offer_again(state: dict[str, Any]) -> None:
            if state["status"] in ("ended", "error"):
                row_widgets.update(self.now())

        debugger.listen(offer_again)

    def show_snapshot(self, row: StepRow, snapshot: Any) -> None:
        """The notebook's debugger view, read-only, on ``row``'s snapshot (Show frames)."""
        self.show_debugger(row, snapshot)

    def tick(self) -> bool:
        now = self.now()
        with self._lock:
            rows = list(self.rows)
        for row_widgets in rows:
            row_widgets.tick(now)
            row_widgets.update_lines()
        return self.session is not None and self.session.active

    def dispose(self) -> None:
        """The session is replaced: the panel becomes its final text, and every widget is
        closed (the kernel would otherwise keep them all, session after session)."""
        self._disposed = True
        self._ticker.remove(self)
        if self._handle is not None and self.session is not None:
            self._handle.update({"text/plain": session_text(self.session, self.now())}, raw=True)
        _close_tree(self.widget)
        self.rows.clear()

    def close(self) -> None:
        """The session ended: the countdowns stop (the panel stays, with the final state)."""
        self._ticker.remove(self)
        now = self.now()
        for row_widgets in list(self.rows):
            row_widgets.update(now)


def _close_tree(widget: Any) -> None:
    """Close ``widget``, its children, and their layout and style widgets."""
    for child in getattr(widget, "children", ()):
        _close_tree(child)
    for part in (getattr(widget, "layout", None), getattr(widget, "style", None)):
        if part is not None:
            part.close()
    widget.close()
