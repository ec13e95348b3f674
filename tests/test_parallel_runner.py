"""The parallel runner (``node/parallel_entry.py``) run as the local target runs it: a real
subprocess on the entry scripts of tests/projects/parallel, with what ``run()`` returns varied.

What Azure ML's runner does with ``run()``'s return value is documented ("The run() method
should return a pandas DataFrame or an array/list. Each returned output element indicates one
successful run of an input element", learn.microsoft.com, how-to-batch-scoring-script) and
shown by its error in a job's log (microsoft/MLOpsPython#328): "The run() method in the entry
script should return a list or a pandas DataFrame. The length of returned result is considered
as succeeded number of items. ... The actual type of output is NoneType." That mini-batch
failed. So None, like any type but a list or a DataFrame (a tuple too), fails its mini-batch.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from node_pythons import find_python

from aml_debug_magics.sources.parallel import RUNNER

PROJECT = Path(__file__).parent / "projects" / "parallel"
RULE = "return a list or a pandas DataFrame (one item per successful input)"

ENTRY_SCRIPT = '''"""digit_identification.py's shape, its run() returning {returns}."""

import os


def init():
    global suffix
    suffix = ": seen"


def run(mini_batch):
    names = [os.path.basename(path) + suffix for path in mini_batch]
    return {returns}
'''


@pytest.fixture
def project(tmp_path) -> Path:
    return Path(shutil.copytree(PROJECT, tmp_path / "project"))


def run_runner(project: Path, returns: str, *options: str,
               python: str = sys.executable) -> subprocess.CompletedProcess[str]:
    """The runner over data/digits (5 files) in mini-batches of 2, its entry script's ``run()``
    returning ``returns``, appending rows to ``out/parallel_run_step.txt``."""
    (project / "Code" / "returns.py").write_text(ENTRY_SCRIPT.format(returns=returns))
    return subprocess.run(
        [python, "-u", str(RUNNER), "--entry-script", "returns.py", "--input",
         str(project / "data" / "digits"), "--mini-batch-size", "2", "--output",
         str(project / "out"), *options],
        cwd=project / "Code", capture_output=True, text=True, timeout=60,
    )


def rows_written(project: Path) -> list[str]:
    written = project / "out" / "parallel_run_step.txt"
    return written.read_text().splitlines() if written.exists() else []


@pytest.mark.parametrize(("returns", "type_name"), [
    ("len(names)", "int"),
    ("None", "NoneType"),
    ("'\\n'.join(names)", "str"),
    ("dict.fromkeys(names, 'ok')", "dict"),
    ("(name for name in names)", "generator"),
    ("tuple(names)", "tuple"),
])
def test_a_run_that_returns_neither_a_list_nor_a_dataframe_fails_its_mini_batch(
    project, returns, type_name
):
    """Each of the 3 mini-batches fails with one line naming the type; nothing is written
    (before: int and generator raised TypeError in the runner, a str or a dict wrote one
    character or key per line as successes, None failed without a word)."""
    done = run_runner(project, returns, "--error-threshold", "-1")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines.count(f"[aml-debug] run() returned {type_name}: {RULE}") == 3, lines
    assert lines[-1] == ("[aml-debug] parallel run done: 3 mini-batch(es), 0 item(s) "
                         "succeeded, 5 failed")
    assert "Traceback" not in done.stderr, done.stderr
    assert rows_written(project) == []


def test_a_wrong_return_counts_against_the_error_threshold(project):
    """The first mini-batch's 2 items are one more than error_threshold 1: the job stops."""
    done = run_runner(project, "len(names)", "--error-threshold", "1")
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.splitlines()[-2:] == [
        f"[aml-debug] run() returned int: {RULE}",
        "[aml-debug] 2 item(s) failed, more than error_threshold 1: the job stops, as Azure ML "
        "stops it",
    ]
    assert done.stderr == ""


def test_a_list_is_one_success_per_element_and_one_row_per_element(project):
    done = run_runner(project, "names", "--error-threshold", "0")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == ("[aml-debug] parallel run done: 3 mini-batch(es), "
                                            "5 item(s) succeeded, 0 failed")
    assert rows_written(project) == [f"digit_{n}.txt: seen" for n in range(1, 6)]


def test_a_dataframe_is_one_success_per_row(project):
    pytest.importorskip("pandas", reason="the DataFrame run() returns")
    """A DataFrame of one row per mini-batch: the other file of each pair failed; its rows
    are written space-separated, without a header."""
    done = run_runner(project, "__import__('pandas').DataFrame({'file': names[:1], 'n': 1})"
                      ".replace(suffix, '', regex=True)", "--error-threshold", "-1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == ("[aml-debug] parallel run done: 3 mini-batch(es), "
                                            "3 item(s) succeeded, 2 failed")
    assert rows_written(project) == ["digit_1.txt 1", "digit_3.txt 1", "digit_5.txt 1"]


@pytest.mark.parametrize("version", ["3.8", "3.13"])
def test_the_runner_refuses_a_wrong_return_on_the_oldest_and_newest_node_python(
    project, version
):
    python = find_python(version)
    if python is None:
        pytest.skip(f"Python {version} is not on this machine (pyenv install {version})")
    done = run_runner(project, "(name for name in names)", "--error-threshold", "-1",
                      python=python)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines().count(f"[aml-debug] run() returned generator: {RULE}") == 3
