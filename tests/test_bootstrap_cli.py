"""The bootstrap as a command: bad input, exit codes and tracebacks, ranks, running standalone."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import debugpy
import pytest
from conftest import live_adapters, run_bootstrap, ship_node_files

from aml_debug_magics.node import options, ranks
from aml_debug_magics.node.announce import LogReader


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "job.py"
    path.write_text("import sys\nprint('args', sys.argv[1:])\n")
    return path


@pytest.fixture
def busy_port():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        yield holder.getsockname()[1]


BAD_INPUT = {
    "missing script": (["--", "nowhere.py"], "script not found: nowhere.py"),
    "no script": ([], "no script given"),
    "port out of range": (["--listen", "127.0.0.1:70000", "--", "{script}"], "between 0 and 65535"),
    "port not a number": (["--listen", "127.0.0.1:http", "--", "{script}"], "must be a number"),
    "malformed listen": (["--listen", "5678", "--", "{script}"], "--listen takes HOST:PORT"),
    "negative timeout": (["--timeout", "-5", "--", "{script}"], "--timeout must be more than 0"),
    "absurd timeout": (["--timeout", "1e9", "--", "{script}"], "at most 86400"),
    "unknown ranks": (["--ranks", "first", "--", "{script}"], "--ranks takes 'all'"),
    "negative rank": (["--ranks", "-1", "--", "{script}"], "--ranks takes 'all'"),
    "port in use": (["--listen", "127.0.0.1:{busy}", "--", "{script}"], "is in use"),
    "connect to port 0": (["--connect", "127.0.0.1:0", "--", "{script}"], "not 0"),
    "both modes": (
        ["--listen", "127.0.0.1:0", "--connect", "127.0.0.1:9", "--", "{script}"],
        "not allowed with argument",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUT, ids=list(BAD_INPUT))
def test_bad_input_is_one_clear_line_and_status_2(case, script, busy_port):
    args, expected = BAD_INPUT[case]
    args = [a.format(script=script, busy=busy_port) for a in args]
    before = live_adapters()
    result = run_bootstrap(*args, cwd=script.parent)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("aml-debug: error: ")
    assert expected in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert "args" not in result.stdout  # the script did not run
    assert live_adapters() == before


def test_help_names_every_option():
    result = run_bootstrap("--help")
    assert result.returncode == 0
    for option in ("--listen", "--connect", "--timeout", "--on-timeout", "--ranks",
                   "--just-my-code", "--no-just-my-code"):
        assert option in result.stdout


FAILING = textwrap.dedent(
    """\
    import sys

    def train(rate):
        raise ValueError(f"bad learning rate {rate}")

    print("starting", sys.argv, __name__, flush=True)
    train(sys.argv[1])
    """
)


def test_an_uncaught_exception_looks_as_under_plain_python(tmp_path):
    path = tmp_path / "failing.py"
    path.write_text(FAILING)
    plain = subprocess.run([sys.executable, str(path), "0.1"], capture_output=True, text=True,
                           cwd=tmp_path)
    ours = run_bootstrap("--listen", "127.0.0.1:0", "--timeout", "0.5", "--", str(path), "0.1",
                         cwd=tmp_path)
    assert plain.returncode == ours.returncode == 1
    assert ours.stderr == plain.stderr  # same traceback, no bootstrap frames
    assert f"starting ['{path}', '0.1'] __main__" in ours.stdout


@pytest.mark.parametrize("code", ["sys.exit(3)", "sys.exit('failed: no data')", "pass"])
def test_exit_status_and_message_pass_through(tmp_path, code):
    path = tmp_path / "exits.py"
    path.write_text(f"import sys\n{code}\n")
    plain = subprocess.run([sys.executable, str(path)], capture_output=True, text=True)
    ours = run_bootstrap("--listen", "127.0.0.1:0", "--timeout", "0.5", "--", str(path))
    assert ours.returncode == plain.returncode
    assert ours.stderr == plain.stderr


def test_relative_script_sees_its_own_folder_and_the_callers_working_directory(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "helper.py").write_text("VALUE = 'imported from the script folder'\n")
    (tmp_path / "src" / "main.py").write_text(
        "import os, sys, helper\nprint(helper.VALUE, os.getcwd(), sys.argv[0])\n"
    )
    result = run_bootstrap("--listen", "127.0.0.1:0", "--timeout", "0.5", "--", "src/main.py",
                           cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"imported from the script folder {tmp_path} src/main.py" in result.stdout


def test_a_rank_that_is_not_chosen_runs_untouched_without_a_port(script):
    env = {**os.environ, "RANK": "1", "LOCAL_RANK": "1"}
    result = run_bootstrap("--listen", "127.0.0.1:0", "--", str(script), "x", env=env)
    assert result.returncode == 0
    assert "rank 1 runs without the debugger (--ranks 0)" in result.stdout
    assert "args ['x']" in result.stdout
    assert "AML_DEBUG v1 announce" not in result.stdout


def test_a_chosen_rank_listens_on_base_port_plus_local_rank(script, tmp_path):
    with socket.socket() as probe:  # find two free neighbouring ports for base and base + 1
        probe.bind(("127.0.0.1", 0))
        base = probe.getsockname()[1] - 1
    env = {**os.environ, "OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_LOCAL_RANK": "1"}
    result = run_bootstrap("--listen", f"127.0.0.1:{base}", "--ranks", "1,3", "--timeout", "0.5",
                           "--", str(script), env=env)
    if result.returncode == 2 and "is in use" in result.stderr:
        pytest.skip("the neighbouring port was taken meanwhile")
    reader = LogReader()
    announced = [n for line in result.stdout.splitlines() for n in reader.feed(line)][0]
    assert (announced.port, announced.rank, announced.local_rank) == (base + 1, 3, 1)


@pytest.mark.parametrize(
    "environ, expected",
    [
        ({}, ranks.Rank(0, 0)),
        ({"RANK": "4", "LOCAL_RANK": "0"}, ranks.Rank(4, 0)),
        ({"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_LOCAL_RANK": "1"}, ranks.Rank(5, 1)),
        ({"AZ_BATCH_IS_CURRENT_NODE_MASTER": "true"}, ranks.Rank(0, 0)),
        ({"AZ_BATCH_IS_CURRENT_NODE_MASTER": "false"}, ranks.Rank(None, 0)),
    ],
)
def test_rank_detection(environ, expected):
    assert ranks.detect_rank(environ) == expected


def test_rank_choice():
    assert options.parse_ranks("all").includes(None)
    assert options.parse_ranks("0,2").includes(2)
    assert not options.parse_ranks("0,2").includes(1)
    assert not options.parse_ranks("0").includes(None)


def test_node_addresses_are_this_machines_own_and_not_loopback():
    addresses = ranks.node_addresses("0.0.0.0")
    assert addresses
    for address in addresses:
        with socket.socket() as probe:
            probe.bind((address, 0))  # only an address of this machine can be bound
    if addresses != ["127.0.0.1"]:
        assert not any(a.startswith("127.") for a in addresses)
    assert ranks.node_addresses("10.1.2.3") == ["10.1.2.3"]


def test_runs_as_a_standalone_file_with_only_debugpy_importable(tmp_path, script):
    """As on an Azure ML node: the two files beside the script, our package not installed."""
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    ship_node_files(snapshot)
    shutil.copy(script, snapshot / "job.py")
    only_debugpy = tmp_path / "site"
    only_debugpy.mkdir()
    (only_debugpy / "debugpy").symlink_to(Path(debugpy.__file__).parent)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(only_debugpy)}
    check = subprocess.run([sys.executable, "-S", "-c", "import aml_debug_magics"], env=env,
                           cwd=tmp_path, capture_output=True)
    assert check.returncode != 0  # the package really is out of reach
    result = subprocess.run(
        [sys.executable, "-S", "aml_debug_bootstrap.py", "--listen", "127.0.0.1:0",
         "--timeout", "1", "--", "job.py", "7"],
        env=env, cwd=snapshot, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "AML_DEBUG v1 announce" in result.stdout
    assert "Debugger attached = False" in result.stdout
    assert "args ['7']" in result.stdout


def test_node_addresses_rank_the_default_route_first_and_bridges_last(monkeypatch):
    """A typical Azure ML node: eth0 on the VNet, a docker bridge, and a hostname that resolves
    to 127.0.1.1. The interface table is stood in for; the ranking is what is tested."""
    interfaces = {"lo": "127.0.0.1", "docker0": "172.17.0.1", "eth0": "10.0.0.4",
                  "eth1": "10.1.0.4"}
    monkeypatch.setattr(ranks.socket, "if_nameindex",
                        lambda: list(enumerate(interfaces, start=1)))
    monkeypatch.setattr(ranks, "_interface_ipv4", interfaces.get)
    monkeypatch.setattr(ranks, "_default_route_interfaces", lambda: {"eth0"})
    monkeypatch.setattr(ranks.socket, "gethostbyname_ex",
                        lambda name: (name, [], ["127.0.1.1", "10.1.0.4"]))
    assert ranks.node_addresses("0.0.0.0") == ["10.0.0.4", "10.1.0.4", "172.17.0.1"]
