"""The tutorials run top to bottom on a fresh kernel, on the local targets, as in CI.

A short attach window (AML_DEBUG_TUTORIAL_TIMEOUT) lets them carry on when nobody attaches; a
cell error fails the test. Committed notebooks carry no outputs.
"""

from __future__ import annotations

import os
import shutil

import pytest
from conftest import REPO, children_of, need_python_script_step

pytestmark = pytest.mark.every_python(
    "the tutorials run in a kernel of this Python (compute instances ship 3.10 kernels)"
)

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.stem)
def test_tutorial_runs_top_to_bottom(notebook, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    if "pipeline" in notebook.read_text() and (
        "PythonScriptStep" in notebook.read_text() or "ParallelRunStep" in notebook.read_text()
    ):
        need_python_script_step()
    if "azure.ai.ml" in notebook.read_text():
        pytest.importorskip("azure.ai.ml", reason="azure-ai-ml is the v2 extra")
    shutil.copy(notebook, tmp_path)
    monkeypatch.setenv("AML_DEBUG_TUTORIAL_TIMEOUT", "3")
    monkeypatch.delenv("AML_DEBUG_WORKSPACE_CONFIG", raising=False)
    document = nbformat.read(tmp_path / notebook.name, as_version=4)
    tutorial_cells = len(document.cells)
    for prefix, kind in (("1_", "pipeline"), ("4_", "job")):  # then: how did it end?
        if notebook.stem.startswith(prefix):
            document.cells.append(nbformat.v4.new_code_cell(
                "from aml_debug_magics.session import current_session\n"
                f"finished = current_session('{kind}').wait(120)\n"
                f"train = current_session('{kind}').row('train')\n"
                "print('CHECK', finished, train.announcement is not None, train.last_lines[-1])"
            ))
    if notebook.stem.startswith("2_"):  # after Run All the server still waits: click Send
        document.cells.append(nbformat.v4.new_code_cell(
            "from aml_debug_magics.session import current_session\n"
            "session = current_session('deploy')\n"
            "print('STILL', session.active, session.service.health)\n"
            "session.send_test_request().join(120)\n"
            "print(session.service.response)"
        ))
    if notebook.stem.startswith("6_"):  # nobody clicked Debug here: the script ran on
        document.cells.append(nbformat.v4.new_code_cell(
            "from aml_debug_magics.session import current_session\n"
            "print('RAN', current_session('run').wait(120), weights_file.read_text())\n"
            "current_session('deploy').send_test_request().join(120)\n"
            "print(current_session('deploy').service.response)"
        ))
    from jupyter_client.manager import KernelManager

    # the kernel's channels over unix sockets: a TCP port picked free here can be taken by
    # another test process before the kernel binds it ("Address already in use")
    kernel = KernelManager(kernel_name="python3", transport="ipc", ip=str(tmp_path / "kernel"))
    client = nbclient.NotebookClient(
        document, km=kernel, timeout=600, kernel_name="python3",
        resources={"metadata": {"path": tmp_path}},
    )
    try:
        client.execute()  # raises CellExecutionError on the first failing cell
    finally:
        if kernel.has_kernel:  # a kernel manager handed in is not shut down by nbclient
            kernel.shutdown_kernel()
    outputs = [output for cell in document.cells if cell.cell_type == "code"
               for output in cell.get("outputs", [])]
    texts = [output.get("text", "") + str(output.get("data", {}).get("text/plain", ""))
             for output in outputs]
    # a stream output is a raw chunk of what the cell wrote (one print may come as several on a
    # busy machine): chunks join as they are; other outputs stand on their own lines
    joined = "".join(text if output.get("output_type") == "stream" else f"\n{text}\n"
                     for output, text in zip(outputs, texts, strict=True))
    if notebook.stem.startswith(("1_", "4_")):
        assert len(document.cells) == tutorial_cells + 1
    if notebook.stem.startswith("1_"):
        assert "CHECK finished True trained weight 4.441" in joined
    if notebook.stem.startswith("4_"):  # the same numbers, sorted by prep first
        assert "CHECK finished True trained weight 5.484" in joined
    if notebook.stem.startswith("2_"):
        assert "STILL True healthy" in joined  # Run All left the server up for the attach
        assert 'HTTP 200: {"prediction": [4.5, 9.5]}' in joined
    if notebook.stem.startswith("6_"):
        assert 'RAN finished {"layers": [16, 32, 8], "weights": [14.0, 28.0, 7.0]}' in joined
        assert 'HTTP 200: {"prediction": [4.5, 9.5]}' in joined
    if notebook.stem.startswith("5_"):  # the v2 deployment, with its environment variables
        assert 'HTTP 200: {"predictions": [14.5, 14.0]}' in joined
        # the parallel step: 2 of its 3 mini-batches (--mini-batches 2), init() read --limit
        assert "finished\ndata passed between steps: " in joined
        assert ("sensor_1.txt 12.5 ok\nsensor_2.txt 48.0 alert\n"
                "sensor_3.txt 7.25 ok\nsensor_4.txt 51.5 alert\n\n") in joined
        assert "sensor_5.txt" not in joined
    if notebook.stem.startswith("8_"):  # every rank gathered every shard; the runner's file
        assert joined.count(", total 55") == 4
        assert "finished\noutput file: " in joined
        assert ("reading_0.txt,0.0\nreading_1.txt,1.25\nreading_2.txt,2.5\n"
                "reading_3.txt,3.75\nreading_4.txt,5.0\n") in joined
    if notebook.stem.startswith("3_"):
        assert "No workspace configured" in joined
        assert not any(text.strip().isdigit() for text in texts)  # no stray write_text count
    assert children_of() == []


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.stem)
def test_committed_notebooks_carry_no_outputs(notebook):
    nbformat = pytest.importorskip("nbformat")
    document = nbformat.read(notebook, as_version=4)
    for cell in document.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, notebook.name


def test_the_tutorials_are_numbered_in_order():
    assert [n.stem.split("_")[0] for n in NOTEBOOKS] == [
        str(number) for number in range(1, len(NOTEBOOKS) + 1)]
    assert os.path.isdir(REPO / "notebooks")
