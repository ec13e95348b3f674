"""The notebook's debugger as users open it: ``--debug-here`` on a magic, the row's Debug here
button, and ``%aml_debug_step`` in a shell, on the project in tests/projects/debugger run by the
local target under a real debugpy.

The page side of the view is left out (tests/test_browser_debugger.py drives it in Chromium):
here the widget's messages arrive as ipywidgets hands them to the kernel (``_handle_msg`` with
a ``custom`` method), and what it would show is its ``state`` trait.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from conftest import port_refuses, wait_for

from aml_debug_magics.debugger.commands import TEXT_VALUE_SHOWN
from aml_debug_magics.records import Status
from aml_debug_magics.session import current_session

pytestmark = pytest.mark.every_python(
    "ipykernel 6 (3.10) and 7 (3.11, 3.12) run the notebook's debugger differently"
)

PROJECT = Path(__file__).parent / "projects" / "debugger"


def line_of(script: Path, text: str) -> int:
    lines = script.read_text().splitlines()
    return next(number for number, line in enumerate(lines, 1) if text in line)


@pytest.fixture
def project(tmp_path) -> Path:
    """The project's code folder, copied where the notebook runs."""
    return Path(shutil.copytree(PROJECT / "src", tmp_path / "src"))


def step(ip, capsys, line: str) -> str:
    """Run ``%aml_debug_step LINE`` as typed; what it printed."""
    capsys.readouterr()
    ip.run_line_magic("aml_debug_step", line)
    return capsys.readouterr().out


def test_debug_here_in_a_terminal_is_driven_by_aml_debug_step(ip, project, capsys):
    main = project / "main.py"
    out = project.parent / "model"
    ip.run_line_magic("aml_debug_run", f"--debug-here --timeout 60 {main} --epochs 2 "
                      f"--output-dir {out}")
    session = current_session("run")
    row = session.rows[0]
    wait_for(lambda: "(entry)" in capsys.readouterr().out, 30, "the entry stop to print")
    assert row.status == Status.ATTACHED

    shown = step(ip, capsys, "")  # where
    assert shown.startswith(f"[main.py (main)] stopped at {main}:1 in <module> (entry)")
    assert f"  -> {1:4d} | " in shown

    target = line_of(main, "losses.append(loss)")
    assert step(ip, capsys, f"break main.py:{target}").startswith(
        f"breakpoint set at {main}:{target}")
    shown = step(ip, capsys, "continue")
    assert shown.splitlines()[0] == f"[main.py (main)] stopped at {main}:{target} in main " \
                                    "(breakpoint)"
    assert f"  -> {target:4d} |         losses.append(loss)" in shown
    assert "call stack:\n  * main  " in shown
    stack = shown.split("call stack:\n", 1)[1].splitlines()
    assert [line.split()[-2] for line in stack] == ["main", "<module>"]  # no bootstrap frames

    shown = step(ip, capsys, "vars")
    assert "  loss (float) = 10.0" in shown and "  epoch (int) = 0" in shown
    notes = next(line for line in shown.splitlines() if line.startswith("  notes (str) = "))
    assert notes.endswith("n ...") and len(notes) < 240  # 200 characters of a 1 MB string
    shown = step(ip, capsys, "vars weights")
    assert shown.splitlines() == ["weights (dict):", "  'layers' (list) = [{'bias': 10.0, "
                                  "'shape': [...]}]", "  'name' (str) = 'tiny'",
                                  "  len() (int) = 2"]
    assert step(ip, capsys, "eval loss * 3").strip() == "loss * 3 (float) = 30.0"
    assert step(ip, capsys, "eval nope").strip().startswith(  # 3.12 adds "Did you mean"
        "error: NameError: name 'nope' is not defined")

    shown = step(ip, capsys, "next")
    assert f"stopped at {main}:{target + 1} in main (step)" in shown
    step(ip, capsys, f"break {main}:{target}")  # clears it
    shown = step(ip, capsys, "continue")
    assert shown.startswith("[main.py (main)] ended - the script ended")
    wait_for(lambda: session.state == "finished", 30, "the run to finish")
    assert json.loads((out / "summary.json").read_text())["losses"] == [10.0, 5.0]
    assert port_refuses("127.0.0.1", row.announcement.port)


def test_aml_debug_step_says_what_to_fix_in_one_line(ip, project, capsys):
    from IPython.core.error import UsageError

    from aml_debug_magics.debugger import controller

    controller._latest.clear()  # a fresh kernel: nothing opened yet
    with pytest.raises(UsageError, match="^no debugger is open: click Debug here"):
        ip.run_line_magic("aml_debug_step", "where")
    ip.run_line_magic("aml_debug_run", f"--debug-here --timeout 60 {project / 'main.py'} "
                      f"--output-dir {project.parent / 'out'}")
    wait_for(lambda: "(entry)" in capsys.readouterr().out, 30, "the entry stop")
    for line, message in [
        ("jump 3", "^unknown debugger command 'jump': %aml_debug_step \\[continue"),
        ("break main.py", "^break wants FILE:LINE, like train.py:12 \\(got 'main.py'\\)$"),
        ("break nowhere.py:3", "^no file 'nowhere.py' here or in the call stack"),
        ("vars missing", "^no variable 'missing' in Locals"),
        ("eval", "^eval wants an expression"),
    ]:
        with pytest.raises(UsageError, match=message):
            ip.run_line_magic("aml_debug_step", line)
    assert "detached" in step(ip, capsys, "stop")
    for line in ["next", "continue", "eval 1", "pause", "break main.py:3", "vars"]:
        with pytest.raises(UsageError, match="^the debugger has ended: detached: the script "
                                             "runs on without the debugger$"):
            ip.run_line_magic("aml_debug_step", line)
    session = current_session("run")
    wait_for(lambda: session.state == "finished", 30, "the script to run on and finish")


def run_to_the_stop_in_large_values(ip, project, capsys) -> Path:
    """``%aml_debug_run --debug-here`` on large_values.py, stepped with ``%aml_debug_step`` to
    its line marked "stop here" (a 12 MB and a 50 MB string in its locals); the script."""
    script = project / "large_values.py"
    ip.run_line_magic("aml_debug_run", f"--debug-here --timeout 60 {script}")
    wait_for(lambda: "(entry)" in capsys.readouterr().out, 30, "the entry stop")
    here = line_of(script, "# stop here")
    step(ip, capsys, f"break large_values.py:{here}")
    assert f"stopped at {script}:{here} in main (breakpoint)" in step(ip, capsys, "continue")
    return script


def test_a_breakpoint_past_the_end_says_where_the_debugger_bound_it(ip, project, capsys):
    script = project / "large_values.py"
    ip.run_line_magic("aml_debug_run", f"--debug-here --timeout 60 {script}")
    wait_for(lambda: "(entry)" in capsys.readouterr().out, 30, "the entry stop")
    last = len(script.read_text().splitlines())
    assert step(ip, capsys, "break large_values.py:9999").strip() == (
        f"breakpoint set at {script}:9999: the debugger bound it to line {last} "
        f"(breakpoints in that file: {last})")
    assert step(ip, capsys, "continue").startswith(
        f"[large_values.py (large_values)] stopped at {script}:{last} in <module> (breakpoint)")
    assert step(ip, capsys, f"break large_values.py:{last}").strip() == (  # the one shown
        f"breakpoint cleared at {script}:{last} (breakpoints in that file: none)")
    assert "ended - the script ended" in step(ip, capsys, "continue")


def test_vars_prints_a_12_mb_string_in_parts_saying_how_to_print_the_rest(ip, project, capsys):
    from IPython.core.error import UsageError

    run_to_the_stop_in_large_values(ip, project, capsys)
    assert step(ip, capsys, "vars notes").splitlines() == [
        "notes (str) = '" + "n" * (TEXT_VALUE_SHOWN - 1),
        "(characters 0 to 10,000 of 12,000,002; the next: %aml_debug_step vars notes 10000)"]
    assert step(ip, capsys, "vars notes 10000").splitlines() == [
        "notes (str) = ..." + "n" * TEXT_VALUE_SHOWN,
        "(characters 10,000 to 20,000 of 12,000,002; the next: %aml_debug_step vars notes "
        "20000)"]
    assert step(ip, capsys, "vars notes 11999990").splitlines() == [
        "notes (str) = ..." + "n" * 11 + "'",
        "(characters 11,999,990 to 12,000,002 of 12,000,002)"]
    with pytest.raises(UsageError, match="^the value of notes has 12,000,002 characters"):
        ip.run_line_magic("aml_debug_step", "vars notes 12000002")
    assert step(ip, capsys, "vars count") == "count (int) = 62000000\n"  # short: whole


def test_eval_of_a_statement_prints_no_value(ip, project, capsys):
    run_to_the_stop_in_large_values(ip, project, capsys)
    assert step(ip, capsys, "eval count = 7") == "count = 7\n"
    assert step(ip, capsys, "eval count") == "count (int) = 7\n"


def test_after_the_script_ended_every_command_says_the_debugger_ended(ip, project, capsys):
    from IPython.core.error import UsageError

    run_to_the_stop_in_large_values(ip, project, capsys)
    shown = step(ip, capsys, "continue")
    assert shown.startswith("[large_values.py (large_values)] ended - the script ended")
    for line in ["next", "continue", "eval count", "pause", "break large_values.py:3",
                 "vars notes"]:
        with pytest.raises(UsageError, match="^the debugger has ended: the script ended"):
            ip.run_line_magic("aml_debug_step", line)


def custom(view, action: dict) -> None:
    """A message from the page, as ipywidgets delivers a comm message to the widget."""
    view._handle_msg({"content": {"data": {"method": "custom", "content": action}},
                      "buffers": []})


def test_debug_here_button_opens_the_view_under_its_row(ip, project):
    ip.run_line_magic("config", "AmlDebugMagics.view = 'widgets'")
    main = project / "main.py"
    ip.run_line_magic("aml_debug_run", f"--timeout 60 {main} --output-dir {project.parent}/o")
    session = current_session("run")
    row = session.view.rows[0]
    assert row.debug.description == "Debug here" and row.debug.disabled  # nothing to attach yet
    wait_for(lambda: not row.debug.disabled, 30, "Debug here to be offered")
    row.debug.click()
    assert row.debug.disabled  # one debugger per row
    view = row.debugger.children[0]
    assert view.title == "main.py (main)"
    wait_for(lambda: view.state["status"] == "stopped", 30, "the entry stop in the view")
    assert view.state["source"]["path"] == str(main) and view.state["source"]["line"] == 1

    target = line_of(main, "loss = train_epoch(epoch, weights)")
    custom(view, {"action": "toggle_breakpoint", "path": str(main), "line": target})
    assert view.state["breakpoints"] == {str(main): [target]}
    custom(view, {"action": "continue"})
    wait_for(lambda: view.state["status"] == "stopped"
             and view.state["source"]["line"] == target, 30, "the breakpoint's stop")
    assert [frame["name"] for frame in view.state["frames"]] == ["main", "<module>"]
    assert {frame["path"] for frame in view.state["frames"]} == {str(main)}
    custom(view, {"action": "stepIn"})
    wait_for(lambda: view.state["frames"] and view.state["frames"][0]["name"] == "train_epoch",
             30, "the step into train_epoch")
    custom(view, {"action": "stepOut"})
    wait_for(lambda: view.state["frames"] and view.state["frames"][0]["name"] == "main",
             30, "the step out")

    custom(view, {"action": "stop"})  # closes the debugger: the script runs on
    assert view.state["status"] == "ended"
    wait_for(lambda: session.state == "finished", 30, "the script to finish")
    assert (project.parent / "o" / "summary.json").is_file()


def test_the_view_is_closed_with_the_panel_and_detaches(ip, project):
    ip.run_line_magic("config", "AmlDebugMagics.view = 'widgets'")
    ip.run_line_magic("aml_debug_run", f"--debug-here --timeout 60 {project / 'main.py'} "
                      f"--output-dir {project.parent}/o")
    session = current_session("run")
    row = session.view.rows[0]
    wait_for(lambda: row.debugger.children, 30, "--debug-here to open the view")
    view = row.debugger.children[0]
    wait_for(lambda: view.state["status"] == "stopped", 30, "the entry stop")
    debugger = session.debugger_of(session.rows[0])
    ip.run_line_magic("aml_debug_run", "--stop")
    assert not debugger.active and view.comm is None  # ended, and the widget closed
    assert session.state == "stopped"


def test_debug_here_on_the_deploy_magic_stops_in_run_on_a_test_request(ip, tmp_path):
    pytest.importorskip("azureml_inference_server_http")
    score = tmp_path / "score.py"
    score.write_text("def init():\n    global scale\n    scale = 3\n\n\n"
                     "def run(raw_data):\n    doubled = len(raw_data) * scale\n"
                     "    return {'n': doubled}\n")
    ip.run_line_magic("aml_debug_deploy", "--entry-script score.py --debug-here --timeout 60 "
                      "--sample-request '[1, 2, 3, 4]'")
    session = current_session("deploy")
    wait_for(lambda: session.debuggers, 60, "--debug-here to open the debugger")
    debugger = next(iter(session.debuggers.values()))
    wait_for(lambda: debugger.state()["status"] == "running", 30, "the attach")
    assert debugger.state()["source"] == {"path": str(score), "text": score.read_text(),
                                          "line": 0}  # a gutter to set breakpoints in
    debugger.act({"action": "toggle_breakpoint", "path": str(score), "line": 7})
    assert debugger.state()["breakpoints"][str(score)] == [7]
    wait_for(lambda: session.service.health == "healthy", 90, "the server to answer")
    sender = session.send_test_request()
    state = wait_for(lambda: debugger.state()["status"] == "stopped" and debugger.state(),
                     60, "the stop in run()")
    assert state["frames"][0]["name"] == "run"
    assert debugger.evaluate("scale")[0]["value"] == "3"
    debugger.act({"action": "continue"})
    sender.join(60)
    assert session.service.response == 'HTTP 200: {"n": 36}'  # len('[1, 2, 3, 4]') * 3


def test_a_scoring_script_whose_run_raises_stops_where_it_raised(ip, tmp_path):
    """The inference server turns run()'s exception into an HTTP 500, so it is never uncaught:
    the debugger stops where it left the user's code, as VS Code's user-unhandled filter does."""
    pytest.importorskip("azureml_inference_server_http")
    score = tmp_path / "score.py"
    score.write_text("def init():\n    pass\n\n\ndef run(raw_data):\n    rows = len(raw_data)\n"
                     "    raise ValueError(f'cannot score {rows} bytes')\n")
    ip.run_line_magic("aml_debug_deploy", "--entry-script score.py --debug-here --timeout 60 "
                      "--sample-request '[1, 2]'")
    session = current_session("deploy")
    wait_for(lambda: session.debuggers, 60, "--debug-here to open the debugger")
    debugger = next(iter(session.debuggers.values()))
    wait_for(lambda: debugger.state()["status"] == "running", 30, "the attach")
    wait_for(lambda: session.service.health == "healthy", 90, "the server to answer")
    sender = session.send_test_request()
    state = wait_for(lambda: debugger.state()["status"] == "stopped" and debugger.state(),
                     60, "the stop where run() raised")
    assert state["stopped"]["reason"] == "exception"
    assert state["stopped"]["exception"]["id"] == "ValueError"
    assert state["stopped"]["exception"]["description"] == "cannot score 6 bytes"
    assert (state["source"]["path"], state["source"]["line"]) == (str(score), 7)
    assert [frame["name"] for frame in state["frames"]] == ["run"]  # no server's, no ours
    assert debugger.evaluate("rows")[0]["value"] == "6"
    debugger.act({"action": "continue"})
    sender.join(60)
    assert session.service.response.startswith("HTTP 500")


@pytest.mark.parametrize("python, takes", [
    (sys.executable, int(version("ipykernel").split(".")[0]) >= 7),  # this suite's kernel
    (".venv-3.10/bin/python", False),  # ipykernel 6, as on compute instances' 3.10 kernels
])
def test_whether_the_kernel_takes_widget_messages_while_a_cell_runs(python, takes, tmp_path,
                                                                    monkeypatch):
    """A real kernel of each ipykernel: 7 (this venv) runs comm messages on subshells; 6
    (the Python 3.10 kernels of compute instances) does not."""
    from jupyter_client.manager import start_new_kernel

    executable = Path(__file__).parents[1] / python
    if not executable.exists():
        pytest.skip(f"{python} is not installed here")
    if subprocess.run([str(executable), "-c", "import ipykernel"]).returncode:
        pytest.skip(f"{python} has no ipykernel")
    spec = tmp_path / "kernels" / "probe"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(executable), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "probe", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    manager, client = start_new_kernel(kernel_name="probe")
    try:
        code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parents[1])!r})\n"
                "from aml_debug_magics.debugger.kernel import takes_messages_while_busy\n"
                "print(takes_messages_while_busy(get_ipython()))")
        printed: list[str] = []
        reply = client.execute_interactive(
            code, timeout=60,
            output_hook=lambda m: printed.append(m["content"].get("text", "")))
        assert reply["content"]["status"] == "ok", reply["content"]
        assert "".join(printed).strip() == str(takes)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def test_a_kernel_without_subshells_says_so_while_a_cell_runs(project, start_local):
    """The in-process kernel has no subshells, as ipykernel 6 has none: while one of its
    cells runs, the page's state says the buttons wait, and why; after, it works again."""
    from ipykernel.inprocess.manager import InProcessKernelManager

    from aml_debug_magics.debugger.controller import DebuggerController, attach_view
    from aml_debug_magics.debugger.kernel import watch_cells
    from aml_debug_magics.ui.debugger_view import DebuggerView

    process = start_local(project / "main.py", "--output-dir", str(project.parent / "o"),
                          cwd=project, timeout=60)
    assert process.announced.wait(30)
    debugger = DebuggerController("127.0.0.1", process.announcement.port, {},
                                  entry=project / "main.py")
    debugger.start()
    manager = InProcessKernelManager()
    manager.start_kernel()
    try:
        shell = manager.kernel.shell
        wait_for(lambda: debugger.state()["status"] == "stopped", 30, "the entry stop")
        view = DebuggerView()
        attach_view(debugger, view)
        watch_cells(shell, debugger)
        assert view.state["status"] == "stopped"
        shell.user_ns["view"] = view
        shell.run_cell("during = dict(view.state)")
        during = shell.user_ns["during"]
        assert during["status"] == "unsupported"
        assert during["message"].startswith("a cell is running, and this kernel (ipykernel ")
        assert "use %aml_debug_step in the next cell" in during["message"]
        assert during["frames"] == view.state["frames"]  # still shown, read-only
        assert view.state["status"] == "stopped"  # the cell ended: the buttons work again
    finally:
        debugger.close()
        manager.shutdown_kernel()
    assert process.wait(30) == 0
