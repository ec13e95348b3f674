"""The panel's widgets as a session advances: no browser, an injected clock, no sleeping.

The test plays the target's part (it calls the session's report methods as a target's thread
would): that is the seam between targets and the view, so nothing behind the panel is faked.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from conftest import wait_for

from aml_debug_magics.node.announce import Announcement, AttachOutcome, PortClosed
from aml_debug_magics.records import DebugRequest, Status, StepSpec
from aml_debug_magics.session import DebugSession
from aml_debug_magics.ui.panel import PanelView
from aml_debug_magics.ui.text import TextView
from aml_debug_magics.ui.ticker import Ticker

pytestmark = pytest.mark.every_python(
    "ipywidgets and IPython.display as this Python's environment has them"
)

START = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


class ReportingTarget:
    """Counts start and stop; the test reports events itself."""

    def __init__(self) -> None:
        self.stopped = 0

    def start(self, events) -> None:
        self.events = events

    def stop(self) -> None:
        self.stopped += 1


@pytest.fixture
def made(tmp_path):
    clock = Clock()
    steps = [
        StepSpec("prep", tmp_path, "prep.py", debug=False),
        StepSpec("train", tmp_path, "train.py"),
    ]
    request = DebugRequest(
        "%aml_debug_pipeline p", steps, timeout=300, launch_json=tmp_path / ".vscode/launch.json"
    )
    target = ReportingTarget()
    ticker = Ticker(interval=3600)
    view = PanelView(ticker=ticker)
    session = DebugSession(request, target, view, clock=clock).start()
    yield session, view, target, clock, ticker, tmp_path
    session.stop()
    wait_for(lambda: not ticker.running, 5, "the ticker thread to end")


def announce(session, clock, port=41234, rank=0):
    session.step_news(
        "train",
        Announcement(
            addresses=("127.0.0.1",), port=port, attach_deadline=clock.now + 300, rank=rank,
            script=str(session.rows[1].local_root / "train.py"), cwd="/x", hostname="box",
        ),
    )


def test_rows_follow_the_session(made):
    session, view, target, clock, ticker, tmp_path = made
    prep, train = view.rows
    assert "queued" in train.status.value and train.address.value == ""
    assert prep.address.value == "<i>no debugger</i>"
    session.step_status("prep", Status.RUNNING)
    session.step_status("prep", Status.FINISHED, exit_code=0)
    session.step_status("train", Status.STARTING)
    assert "finished" in prep.status.value and "starting" in train.status.value
    assert train.write.disabled and train.copy.text == ""

    announce(session, clock)
    assert "waiting for debugger" in train.status.value
    assert train.address.value == "<code>127.0.0.1:41234</code>"
    assert train.countdown.value == "5:00 left"
    config = json.loads(train.copy.text)
    assert config["connect"] == {"host": "127.0.0.1", "port": 41234}
    assert config["pathMappings"][0]["localRoot"] == str(tmp_path)
    assert '"request": "attach"' in train.config.value  # selectable text too
    assert not train.write.disabled

    clock.now += 61.2
    assert view.tick() is True
    assert train.countdown.value == "3:59 left"
    clock.now += 500
    view.tick()
    assert train.countdown.value == "0:00 left"

    session.step_news("train", AttachOutcome(attached=True))
    assert "attached" in train.status.value and train.attached.value == "debugger attached"
    assert train.countdown.value == ""
    session.step_status("train", Status.FINISHED, exit_code=0)
    session.target_done(failed=False)
    assert "finished" in view.header.value
    assert view.stop_button.disabled
    assert view.tick() is False  # the ticker lets go of an ended session


def test_a_missed_window_and_a_failure_show_why(made):
    session, view, target, clock, ticker, _ = made
    announce(session, clock)
    session.step_news("train", AttachOutcome(attached=False))
    train = view.rows[1]
    assert "timed out and continued" in train.status.value
    assert "no debugger attached in time" in train.detail.value
    for line in ("epoch 1", "Traceback (most recent call last):", "ValueError: bad <shape>"):
        session.step_output("train", line)
    session.step_status("train", Status.FAILED, "exit status 1", exit_code=1)
    assert "failed" in train.status.value and "exit status 1" in train.detail.value
    assert train.lines.layout.display == "none"
    train.show_output.value = True  # the click that shows the last lines
    assert train.lines.layout.display is None
    assert "ValueError: bad &lt;shape&gt;" in train.lines.value


def test_ranks_get_their_own_rows(made):
    session, view, target, clock, ticker, _ = made
    announce(session, clock, port=5678, rank=0)
    announce(session, clock, port=5679, rank=1)
    assert [w.row.label for w in view.rows] == ["prep", "train", "train (rank 1)"]
    assert view.rows[2].address.value == "<code>127.0.0.1:5679</code>"


def test_each_rank_s_lines_go_to_its_own_row(made):
    session, view, target, clock, ticker, _ = made
    announce(session, clock, port=5678, rank=0)
    announce(session, clock, port=5679, rank=1)
    session.step_output("train", "epoch 1 on rank 1", rank=1)
    session.step_output("train", "epoch 1 on rank 0", rank=0)
    session.step_output("train", "rank 3 has no row of its own", rank=3)
    assert list(session.row("train", 1).last_lines) == ["epoch 1 on rank 1"]
    assert list(session.row("train", 0).last_lines) == [
        "epoch 1 on rank 0", "rank 3 has no row of its own"]


def test_write_button_merges_into_launch_json_with_a_backup(made):
    session, view, target, clock, ticker, tmp_path = made
    launch = tmp_path / ".vscode" / "launch.json"
    launch.parent.mkdir()
    launch.write_text('{\n    // mine\n    "version": "0.2.0",\n    "configurations": []\n}\n')
    announce(session, clock)
    view.rows[1].write.click()
    text = launch.read_text()
    assert "// mine" in text and '"port": 41234' in text
    backups = list(launch.parent.glob("launch.json.*.bak"))
    assert len(backups) == 1 and "// mine" in backups[0].read_text()
    assert str(launch) in view.message.value and backups[0].name in view.message.value


def test_copy_result_is_reported(made):
    session, view, target, clock, ticker, _ = made
    announce(session, clock)
    copy = view.rows[1].copy
    copied = view.rows[1].copied  # beside the Copy button of that row, not beside Stop
    copy.result, copy.clicks = "failed", 1  # what the page's script sends back
    assert "select the configuration below" in copied.value
    copy.result, copy.clicks = "copied", 2
    assert "Attach config copied" in copied.value and "copied" not in view.message.value


def test_stop_button_stops_the_target(made):
    session, view, target, clock, ticker, _ = made
    announce(session, clock)
    view.stop_button.click()
    assert target.stopped == 1
    assert [r.status for r in session.rows] == [Status.STOPPED, Status.STOPPED]
    assert "stopped" in view.rows[1].status.value and view.rows[1].countdown.value == ""
    assert session.state == "stopped" and view.stop_button.disabled


def test_plain_text_stand_in_carries_the_facts(made):
    session, view, target, clock, ticker, _ = made
    announce(session, clock)
    text = view._repr_mimebundle_()["text/plain"]
    assert "[train] waiting for debugger attach to 127.0.0.1:41234" in text
    assert "(5:00 left)" in text and '"type": "debugpy"' in text


def test_one_ticker_thread_serves_every_panel_and_ends_with_them(tmp_path):
    ticks = {"a": 0, "b": 0}
    done = threading.Event()

    class Panel:
        def __init__(self, name: str, lives: int) -> None:
            self.name, self.lives = name, lives

        def tick(self) -> bool:
            ticks[self.name] += 1
            self.lives -= 1
            if ticks["a"] + ticks["b"] == 5:
                done.set()
            return self.lives > 0

    def ticker_threads() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "aml-debug-ticker"}

    before = ticker_threads()
    ticker = Ticker(interval=0.01)
    ticker.add(Panel("a", 2))
    ticker.add(Panel("b", 3))
    tickers = list(ticker_threads() - before)
    assert len(tickers) == 1
    assert done.wait(10)
    tickers[0].join(10)
    assert not tickers[0].is_alive() and not ticker.running
    assert ticks == {"a": 2, "b": 3}


def test_text_view_prints_changes_once_and_no_countdown(tmp_path):
    printed: list[str] = []
    clock = Clock()
    request = DebugRequest("%aml_debug_run job.py", [StepSpec("job", Path(tmp_path), "job.py")])
    session = DebugSession(request, ReportingTarget(), TextView(write=printed.append), clock=clock)
    session.start()
    session.step_status("job", Status.STARTING)
    session.step_status("job", Status.STARTING)
    session.step_output("job", "hello")
    announce_job = Announcement(addresses=("127.0.0.1",), port=4000, attach_deadline=START + 90)
    session.step_news("job", announce_job)
    clock.now += 30
    session.step_output("job", "more output")
    session.step_news("job", announce_job)
    assert printed[0] == "%aml_debug_run job.py: debugging job on the local target"
    assert sum("[job] starting" in p for p in printed) == 1
    waiting = [p for p in printed if "[job] waiting for debugger" in p]
    assert len(waiting) == 1 and "(1:30 left)" in waiting[0]
    assert sum("VS Code attach configuration" in p for p in printed) == 1


def test_the_run_link_is_clickable(made):
    session, view, *_ = made
    session.target_note("run r1: https://ml.azure.com/runs/r1?wsid=a&tid=b; reuse is off")
    assert '<a href="https://ml.azure.com/runs/r1?wsid=a&amp;tid=b" target="_blank">' in (
        view.header.value
    )


SECRET = "AbC%2Bd3f"
SIGNED_FORMS = [
    f"https://acct.blob.core.windows.net/azureml/user_logs/std_log.txt?sv=2021&sig={SECRET}&se=1",
    f"https%3A%2F%2Facct.blob.core.windows.net%2Fx%3Fsv%3D1%26sig%3D{SECRET}%26se%3D1",
    f'{{"url": "https://acct.blob.core.windows.net/x?sv=1\\u0026sig={SECRET}\\u0026se=1"}}',
    f"Authorization failed for ?SIG={SECRET}",
]


def widget_texts(widget) -> list[str]:
    """Every text a widget tree shows (values and descriptions, rendered or not)."""
    found = [str(getattr(widget, name, "")) for name in ("value", "description", "placeholder")]
    for child in getattr(widget, "children", ()):
        found += widget_texts(child)
    return found


def test_no_form_of_a_sas_signature_reaches_any_view(made):
    """Every way a target hands text to the session: output lines, status details, notes,
    reachability, port closures, service facts; shown by the panel and the text view."""
    session, view, target, clock, ticker, tmp_path = made
    printed: list[str] = []
    text_view = TextView(write=printed.append)
    text_view.show(session)
    announce(session, clock)
    for form in SIGNED_FORMS:
        session.step_output("train", form)
        session.step_status("train", Status.RUNNING, f"reading {form}")
        session.target_note(f"run 1: {form}")
        session.step_reachability("train", 0, f"refused ({form})")
        session.step_news("train", PortClosed(f"closed: {form}"))
        for row in session.rows:
            text_view.refresh(row)
        text_view.refresh(None)
    for row_view in view.rows:
        row_view.show_output.value = True
    shown = "\n".join(widget_texts(view.widget) + printed)
    assert SECRET not in shown and "%2Bd3f" not in shown
    assert shown.count("REDACTED") >= len(SIGNED_FORMS)
    assert "sig%3DREDACTED%26se" in shown and "\\u0026sig=REDACTED\\u0026se" in shown
