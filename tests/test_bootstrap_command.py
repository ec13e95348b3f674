"""Every target's bootstrap command line is read back by the node's own parser
(``node/options.py``) into the settings it was built from: the local target's process, an SDK v1
step's arguments on Azure ML, and an SDK v2 node's shell line. Nothing is submitted: the words
are taken from the objects the targets build."""

from __future__ import annotations

import shlex

import pytest

from aml_debug_magics.node.options import (
    RELAY_DOWN_VARIABLE,
    RELAY_UP_VARIABLE,
    parse_options,
    parse_ranks,
)
from aml_debug_magics.records import DebugRequest, ShellCommand, StepSpec
from aml_debug_magics.targets.bootstrap_command import BOOTSTRAP, BOOTSTRAP_MODULE
from aml_debug_magics.targets.environment import azureml_bootstrap_options
from aml_debug_magics.targets.local import LocalProcess


@pytest.fixture
def script(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.py").write_text("print('trained')\n")
    return tmp_path / "train.py"


def after(words: list[str], entry: list[str]) -> list[str]:
    """The words that follow ``entry`` (where the bootstrap starts) in ``words``."""
    for start in range(len(words)):
        if words[start:start + len(entry)] == entry:
            return words[start + len(entry):]
    raise AssertionError(f"{entry} not in {words}")


def test_the_local_process_words_read_back(script):
    process = LocalProcess(script, ["--epochs", "3"], timeout=12.5, on_timeout="exit",
                           ranks="0,2", just_my_code=False, allow="10.0.0.0/8",
                           reattach_window=4, listen="127.0.0.1:0")
    read = parse_options(after(process.command, ["-m", BOOTSTRAP_MODULE]))
    assert (read.mode, read.address.host, read.address.port) == ("listen", "127.0.0.1", 0)
    assert (read.timeout, read.on_timeout, read.ranks) == (12.5, "exit", parse_ranks("0,2"))
    assert (read.just_my_code, read.allow, read.reattach_window) == (False, "10.0.0.0/8", 4)
    assert (read.script, read.script_args) == (str(script), ["--epochs", "3"])


def test_a_local_shell_line_carries_its_folder(script):
    line = ShellCommand("python train.py --epochs 3", (0, 6))
    process = LocalProcess(script, cwd=script.parent, timeout=30, connect="127.0.0.1:5678",
                           shell_line=line)
    process.stop()  # never started: removes its folder of python launchers
    words = shlex.split(process.command[-1])
    read = parse_options(after(words, ["-m", BOOTSTRAP_MODULE]))
    assert (read.mode, read.address.port, read.source_root) == (
        "connect", 5678, str(script.parent.resolve()))
    assert (read.script, read.script_args) == ("train.py", ["--epochs", "3"])


def test_an_azureml_node_reads_the_request(script, monkeypatch):
    monkeypatch.setenv(RELAY_UP_VARIABLE, "https://up")
    monkeypatch.setenv(RELAY_DOWN_VARIABLE, "https://down")
    request = DebugRequest("%aml_debug_run config", [StepSpec("train", script.parent, "train.py")],
                           target="azureml", timeout=90, ranks="all", allow="any", via="auto")
    words = [BOOTSTRAP, *azureml_bootstrap_options(request), "--", "train.py", "--epochs", "3"]
    read = parse_options(after(words, [BOOTSTRAP]))
    assert (read.mode, read.address.host, read.address.port) == ("listen", "0.0.0.0", 5678)
    assert (read.timeout, str(read.ranks), read.allow, read.via) == (90, "all", "any", "auto")
    assert (read.on_timeout, read.just_my_code) == ("continue", True)  # the node's defaults
