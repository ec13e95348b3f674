"""The notebook's debugger against real debugpy: scripts of tests/projects/debugger run under
the bootstrap as the local target runs them, and the debugger attaches to their port.

Nothing is faked: each test reads what the view would show (the ``state`` snapshot) and the
answers the view's messages get (``act``), from a real debuggee.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import port_refuses, wait_for

from aml_debug_magics.debugger.controller import (
    FULL_VALUE_LIMIT,
    NODE_FOLDER,
    VALUE_SHOWN,
    DebuggerController,
)
from aml_debug_magics.debugger.dap import DapClient, DapClosed

SRC = Path(__file__).parent / "projects" / "debugger" / "src"


def line_of(script: Path, text: str) -> int:
    """The number of the first line of ``script`` that holds ``text``."""
    lines = script.read_text().splitlines()
    return next(number for number, line in enumerate(lines, 1) if text in line)


@pytest.fixture
def debug(start_local, tmp_path):
    """Start a script of the project under the bootstrap and open the debugger on it;
    detach and stop everything afterwards."""
    opened: list[DebuggerController] = []

    def start(script: str, *args: str, entry: bool = True, attach: dict | None = None):
        process = start_local(SRC / script, *args, cwd=SRC, timeout=60)
        assert process.announced.wait(30), list(process.last_lines)
        controller = DebuggerController(
            "127.0.0.1", process.announcement.port, {"justMyCode": True, **(attach or {})},
            title=script, entry=SRC / script if entry else None,
        )
        opened.append(controller)
        controller.start()
        return process, controller

    yield start
    for controller in opened:
        controller.close()


def stopped(controller: DebuggerController, timeout: float = 30) -> dict:
    return wait_for(lambda: controller.state()["status"] == "stopped" and controller.state(),
                    timeout, "the debuggee to stop")


def run_to(controller: DebuggerController, script: Path, text: str) -> dict:
    """From a stop, set a breakpoint at the line holding ``text`` and continue to it."""
    line = line_of(script, text)
    controller.act({"action": "toggle_breakpoint", "path": str(script), "line": line})
    assert line in controller.state()["breakpoints"][str(script)]
    controller.act({"action": "continue"})
    state = stopped(controller)
    assert (state["frames"][0]["path"], state["frames"][0]["line"]) == (str(script), line)
    return state


def variable(variables: list[dict], name: str) -> dict:
    return next(v for v in variables if v["name"] == name)


def test_entry_stop_breakpoint_variables_evaluate_step_and_the_script_finishes(debug, tmp_path):
    out = tmp_path / "model"
    process, controller = debug("main.py", "--epochs", "2", "--output-dir", str(out))
    entry = stopped(controller)
    assert entry["stopped"]["reason"] == "entry"
    assert entry["source"]["path"] == str(SRC / "main.py") and entry["source"]["line"] == 1
    assert "def train_epoch" in entry["source"]["text"]
    assert entry["breakpoints"] == {}  # the entry breakpoint is gone once it served

    state = run_to(controller, SRC / "main.py", "losses.append(loss)")
    assert state["breakpoints"] == {str(SRC / "main.py"): [line_of(SRC / "main.py",
                                                                   "losses.append(loss)")]}
    assert [f["name"] for f in state["frames"][:2]] == ["main", "<module>"]
    assert all(f["local"] for f in state["frames"][:2])
    assert state["source"]["line"] == state["frames"][0]["line"]
    locals_ = state["scopes"][0]
    assert locals_["name"] == "Locals" and state["scopes"][1]["variables"] == []
    assert variable(locals_["variables"], "loss")["value"] == "10.0"

    weights = variable(locals_["variables"], "weights")
    layers = variable(controller.act({"action": "variables", "request_id": "1",
                                      "variables_reference": weights["variables_reference"]})
                      ["variables"], "'layers'")
    first = variable(controller.variables(layers["variables_reference"]), "0")
    assert variable(controller.variables(first["variables_reference"]), "'bias'")["value"] == "10.0"

    reply = controller.act({"action": "evaluate", "expression": "loss * 2 + epoch",
                            "frame_id": None, "request_id": "2"})
    assert reply == {"reply": "2", "error": None, "result": {
        "name": "loss * 2 + epoch", "value": "20.0", "type": "float",
        "variables_reference": 0, "shortened": False}}
    failed = controller.act({"action": "evaluate", "expression": "undefined_name",
                             "frame_id": None, "request_id": "3"})
    assert failed["result"] is None
    assert failed["error"].startswith("NameError: name 'undefined_name' is not defined")

    controller.act({"action": "select_frame", "frame_id": state["frames"][1]["id"]})
    outer = controller.state()
    assert outer["source"]["line"] == line_of(SRC / "main.py", "main(parse_args())")
    assert variable(outer["scopes"][0]["variables"], "os")["type"] == "module"

    controller.act({"action": "next"})
    moved = stopped(controller)
    assert moved["source"]["line"] == state["source"]["line"] + 1
    assert moved["stopped"]["reason"] == "step"

    controller.act({"action": "toggle_breakpoint", "path": str(SRC / "main.py"),
                    "line": state["source"]["line"]})
    assert controller.state()["breakpoints"] == {}
    controller.act({"action": "continue"})
    ended = wait_for(lambda: controller.state()["status"] == "ended" and controller.state(),
                     30, "the script to end")
    assert ended["message"].startswith("the script ended")
    assert process.wait(30) == 0
    assert json.loads((out / "summary.json").read_text())["losses"] == [10.0, 5.0]
    assert port_refuses("127.0.0.1", process.announcement.port)


def test_a_10000_element_list_comes_in_pages(debug, tmp_path):
    _, controller = debug("main.py", "--epochs", "1", "--output-dir", str(tmp_path))
    stopped(controller)
    state = run_to(controller, SRC / "main.py", "losses = []")
    history = variable(state["scopes"][0]["variables"], "history")
    assert history["value"].startswith("[0, 1, 2, 3") and history["type"] == "list"
    assert len(history["value"]) <= VALUE_SHOWN and history["shortened"]

    reply = controller.act({"action": "variables", "request_id": "p1",
                            "variables_reference": history["variables_reference"]})
    page = reply["variables"]
    assert len(json.dumps(reply)) < 30_000  # a page, not 10,000 entries
    assert variable(page, "len()")["value"] == "10000"
    items = [v for v in page if v["name"].isdigit()]
    assert [int(v["name"]) for v in items] == list(range(len(items)))  # named 0000, 0001...
    assert [v["value"] for v in items] == [str(n) for n in range(len(items))]
    assert 0 < len(items) < 10000
    more = variable(page, "more")
    ranges = controller.variables(more["variables_reference"])  # the rest, 1,000 at a time
    assert [v["name"] for v in ranges][-2:] == ["[8100:9100]", "[9100:10000]"]
    last = controller.variables(ranges[-1]["variables_reference"])
    values = [v["value"] for v in last if v["name"].isdigit()]
    assert values == [str(n) for n in range(9100, 10000)]


def test_a_1_mb_string_is_shortened_and_its_full_value_comes_on_demand(debug, tmp_path):
    _, controller = debug("main.py", "--epochs", "1", "--output-dir", str(tmp_path))
    stopped(controller)
    state = run_to(controller, SRC / "main.py", "losses = []")
    assert len(json.dumps(state)) < 50_000  # the snapshot carries 200 characters of it
    locals_ = state["scopes"][0]
    notes = variable(locals_["variables"], "notes")
    assert notes["value"] == "'" + "n" * (VALUE_SHOWN - 1) and notes["shortened"]
    reply = controller.act({"action": "full_value", "request_id": "f",
                            "variables_reference": locals_["variables_reference"],
                            "name": "notes"})
    assert reply == {"reply": "f", "value": "'" + "n" * 1_000_000 + "'", "length": 1_000_002}

    result, error = controller.evaluate("notes + 'x'")
    assert error is None and result["shortened"] and len(result["value"]) == VALUE_SHOWN
    reply = controller.act({"action": "full_value", "request_id": "e", "variables_reference": 0,
                            "name": "notes + 'x'", "frame_id": state["frame_id"]})
    assert reply == {"reply": "e", "value": "'" + "n" * 1_000_000 + "x'", "length": 1_000_003}
    reply = controller.act({"action": "full_value", "request_id": "g", "variables_reference": 0,
                            "name": "nope", "frame_id": state["frame_id"]})
    # Python 3.12 adds "Did you mean" to a NameError
    assert reply["error"].startswith("NameError: name 'nope' is not defined")


def test_a_50_mb_value_comes_as_a_bounded_slice_and_the_debugger_answers_on(debug):
    """debugpy answering with a 50 MB value stalls every request after it: the page gets the
    value's first characters, cut in the debuggee, and its whole length."""
    script = SRC / "large_values.py"
    process, controller = debug("large_values.py")
    stopped(controller)
    state = run_to(controller, script, "# stop here")
    locals_ = state["scopes"][0]
    log = variable(locals_["variables"], "log")
    assert log["shortened"] and len(log["value"]) == VALUE_SHOWN
    reply = controller.act({"action": "full_value", "request_id": "v", "name": "log",
                            "variables_reference": locals_["variables_reference"]})
    assert reply == {"reply": "v", "value": "'" + "x" * (FULL_VALUE_LIMIT - 1),
                     "length": 50_000_002}

    result, error = controller.evaluate("log + 'y'")  # an evaluation's 50 MB result
    assert error is None and result["shortened"] and len(result["value"]) == VALUE_SHOWN
    reply = controller.act({"action": "full_value", "request_id": "e", "name": "log + 'y'",
                            "variables_reference": 0, "frame_id": state["frame_id"]})
    assert reply == {"reply": "e", "value": "'" + "x" * (FULL_VALUE_LIMIT - 1),
                     "length": 50_000_003}

    asked = time.monotonic()
    assert controller.evaluate("count")[0]["value"] == "62000000"
    assert time.monotonic() - asked < 10  # answered, not waited out (30 s)
    controller.act({"action": "continue"})
    assert process.wait(30) == 0


def test_a_breakpoint_where_nothing_runs_is_shown_where_debugpy_bound_it(debug, tmp_path):
    script = SRC / "main.py"
    _, controller = debug("main.py", "--epochs", "1", "--output-dir", str(tmp_path))
    stopped(controller)
    last = len(script.read_text().splitlines())
    assert controller.toggle_breakpoint(str(script), 9999) == {9999: last}
    assert controller.state()["breakpoints"] == {str(script): [last]}
    assert controller.toggle_breakpoint(str(script), last) == {}  # a click on the moved dot
    assert controller.state()["breakpoints"] == {}


@pytest.mark.parametrize("installed", [False, True])
def test_an_uncaught_exception_stops_once_with_the_exception_shown(debug, installed):
    """``installed``: the bootstrap's files count as library code, as debugpy counts them in a
    package installed into site-packages (this one is installed in development mode, so its
    own ``rules`` setting says so). debugpy then stops on the exception as user-unhandled where
    it leaves the script, and the bootstrap reports it as uncaught after: one stop shows."""
    rules = [{"path": str(NODE_FOLDER / "*"), "include": False}] if installed else []
    process, controller = debug("score_batch.py", "--rows", "2", entry=False,
                                attach={"rules": rules})
    state = stopped(controller)
    assert state["stopped"]["reason"] == "exception"
    exception = state["stopped"]["exception"]
    assert exception["id"] == "KeyError" and "feature" in exception["description"]
    assert "score_batch.py" in exception["details"]
    assert state["frames"][0]["name"] == "score"
    assert state["source"]["line"] == line_of(SRC / "score_batch.py", 'row["feature"] * 2')
    assert variable(state["scopes"][0]["variables"], "row")["value"] == "{'other': 1}"
    controller.act({"action": "continue"})
    assert process.wait(30) == 1
    assert "scored 2" in process.last_lines
    wait_for(lambda: controller.state()["status"] == "ended", 30, "the view to see the end")


@pytest.mark.parametrize("raised", [True, False])
def test_raised_exceptions_stop_only_with_the_toggle_on(debug, raised):
    process, controller = debug("load_settings.py")
    assert stopped(controller)["exceptions"] == {"uncaught": True, "raised": False}
    controller.act({"action": "exceptions", "raised": raised})
    assert controller.state()["exceptions"] == {"uncaught": True, "raised": raised}
    controller.act({"action": "continue"})
    if raised:
        state = stopped(controller)
        assert state["stopped"]["exception"]["id"] == "FileNotFoundError"
        assert state["frames"][0]["name"] == "load_settings"
        controller.act({"action": "continue"})
    assert process.wait(30) == 0
    assert "settings {'learning_rate': 0.1}" in process.last_lines


def test_a_debuggee_that_exits_while_stopped_ends_the_view(debug, tmp_path):
    process, controller = debug("main.py", "--epochs", "1", "--output-dir", str(tmp_path))
    stopped(controller)
    run_to(controller, SRC / "main.py", "losses.append(loss)")
    process.stop()  # the panel's Stop, or the node going away
    ended = wait_for(lambda: controller.state()["status"] == "ended" and controller.state(),
                     30, "the view to see the end")
    assert ended["frames"] == [] and ended["stopped"] is None and ended["processes"] == []
    reply = controller.act({"action": "variables", "request_id": "late",
                            "variables_reference": 5})
    assert reply["reply"] == "late"  # an answer, not a hang
    assert reply["error"] == f"the debugger has ended: {ended['message']}"
    assert controller.act({"action": "next"}) is None
    assert controller.state() == ended  # the status line still says why


def test_a_child_process_is_handed_off_as_its_own_entry(debug):
    process, controller = debug("launch_workers.py")
    stopped(controller)
    worker = SRC / "worker.py"
    controller.act({"action": "toggle_breakpoint", "path": str(worker),
                    "line": line_of(worker, "return total")})
    controller.act({"action": "continue"})
    state = stopped(controller)
    assert state["process"] != "main"
    assert [p["id"] for p in state["processes"]] == ["main", state["process"]]
    child = next(p for p in state["processes"] if p["id"] == state["process"])
    assert child["name"].startswith("worker.py (pid ")
    assert state["frames"][0]["path"] == str(worker)
    assert controller.evaluate("total")[0]["value"] == "45"

    controller.act({"action": "select_process", "id": "main"})
    assert controller.state()["status"] == "running"  # the launcher waits in subprocess.run
    controller.act({"action": "select_process", "id": state["process"]})
    assert controller.state()["status"] == "stopped"
    controller.act({"action": "continue"})
    assert process.wait(30) == 0
    assert "worker 0 result 45" in process.last_lines and "workers done" in process.last_lines


def test_closing_the_view_detaches_and_the_script_runs_on(debug, tmp_path):
    out = tmp_path / "out"
    process, controller = debug("main.py", "--epochs", "2", "--output-dir", str(out))
    stopped(controller)
    run_to(controller, SRC / "main.py", "losses.append(loss)")
    controller.act({"action": "stop"})
    assert controller.state()["status"] == "ended"
    assert controller.state()["message"] == "detached: the script runs on without the debugger"
    reply = controller.act({"action": "evaluate", "expression": "loss", "frame_id": None,
                            "request_id": "after"})
    assert reply["error"] == "the debugger has ended: detached: the script runs on without " \
                             "the debugger"
    assert process.wait(30) == 0
    assert (out / "summary.json").is_file()


def test_a_port_nobody_listens_on_says_so(tmp_path):
    from conftest import free_port

    port = free_port()
    controller = DebuggerController("127.0.0.1", port, {}, title="gone")
    controller.start().join(30)
    state = controller.state()
    assert state["status"] == "error"
    assert state["message"].startswith(f"could not attach to 127.0.0.1:{port}: cannot connect")
    with pytest.raises(DapClosed):
        DapClient("127.0.0.1", port, {}, on_event=lambda *_: None).start({})


def test_a_stop_shows_its_line_before_its_variables(debug, tmp_path):
    """Two snapshots per stop: the page moves its line mark without waiting for debugpy's
    scopes and variables (tens of milliseconds each)."""
    _, controller = debug("main.py", "--epochs", "2", "--output-dir", str(tmp_path))
    stopped(controller)
    state = run_to(controller, SRC / "main.py", "losses.append(loss)")
    published: list[dict] = []
    controller.listen(published.append)
    published.clear()
    controller.act({"action": "next"})
    wait_for(lambda: any(s["scopes"] for s in published), 30, "the stop's variables")
    assert [s["status"] for s in published] == ["running", "stopped", "stopped"]
    early, whole = published[1:]
    assert early["source"]["line"] == state["source"]["line"] + 1 and early["scopes"] == []
    assert {**whole, "scopes": []} == early
    assert variable(whole["scopes"][0]["variables"], "loss")["value"] == "10.0"
