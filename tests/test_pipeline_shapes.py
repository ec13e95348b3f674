"""The pipeline shapes Microsoft's SDK v1 samples build, and the data they read, locally.

Each pipeline is built with the real SDK classes (``PythonScriptStep``, ``PipelineData`` and its
``as_dataset()`` forms, ``OutputFileDatasetConfig``, ``DataReference``, ``Dataset.File`` /
``Dataset.Tabular``, ``PipelineParameter`` holding a ``DataPath``) and, as the samples do, only
the last step is given: the magic must pull in the rest as ``Pipeline(ws, [last])`` would. Every
step runs for real under the magic, one of them under the debugger; each step appends its name to
the data it hands on, so the last step's output proves the order and the hand-over.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from conftest import need_python_script_step, wait_for
from dap_client import evaluate_at_first_stop
from IPython.core.error import UsageError

from aml_debug_magics.records import Status
from aml_debug_magics.session import current_session

need_python_script_step()

# One script for every step: reads the chain from --in (a folder or a file), adds its name,
# writes it to --out; --also reads a second input; ORDER (a file) records who ran when.
STEP = textwrap.dedent(
    """\
    import argparse, os, pathlib
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("--in", dest="source")
    parser.add_argument("--out")
    parser.add_argument("--also")
    args = parser.parse_args()

    def read(where):
        where = pathlib.Path(where)
        if where.is_dir():
            where = next(p for p in sorted(where.rglob("*")) if p.is_file())
        return where.read_text().strip()

    chain = read(args.source).split(">") if args.source else []
    if args.also:
        chain.append("(" + read(args.also) + ")")
    chain.append(args.name)
    if args.out:
        pathlib.Path(args.out).mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.out, "chain.txt").write_text(">".join(chain))
    with open(os.environ["ORDER"], "a") as order:
        order.write(args.name + "\\n")
    print("chain", ">".join(chain), flush=True)
    """
)
BREAK_LINE = 19  # if args.out: (the chain is complete)

HEADER = """
from azureml.core import Dataset, RunConfiguration
from azureml.data import OutputFileDatasetConfig
from azureml.data.azure_storage_datastore import AzureBlobDatastore
from azureml.data.data_reference import DataReference
from azureml.data.datapath import DataPath, DataPathComputeBinding
from azureml.pipeline.core import PipelineData, PipelineParameter
from azureml.pipeline.steps import PythonScriptStep

settings = RunConfiguration()
settings.environment_variables = {"ORDER": ORDER}

def step(name, arguments, **more):  # as the samples build them
    return PythonScriptStep(name=name, script_name="step.py", source_directory="src",
                            arguments=[name, *arguments], runconfig=settings,
                            compute_target="cpu-cluster", allow_reuse=False, **more)
"""

SHAPES = {
    "run_after": """
a = step("a", ["--out", "a_out"])
b = step("b", ["--in", "a_out", "--out", "b_out"])
c = step("c", ["--in", "b_out"])
b.run_after(a)
c.run_after(b)
""",
    "pipeline_data_two_levels": """
d1, d2 = PipelineData("d1"), PipelineData("d2")
a = step("a", ["--out", d1], outputs=[d1])
b = step("b", ["--in", d1, "--out", d2], inputs=[d1], outputs=[d2])
c = step("c", ["--in", d2], inputs=[d2])
""",
    "output_file_dataset_config": """
o1, o2 = OutputFileDatasetConfig(name="o1"), OutputFileDatasetConfig(name="o2")
a = step("a", ["--out", o1])
b = step("b", ["--in", o1.as_input(), "--out", o2])
c = step("c", ["--in", o2.as_input(name="prepared").as_mount()])
""",
    "pipeline_data_as_dataset": """
p1, p2 = PipelineData("p1").as_dataset(), PipelineData("p2").as_dataset()
a = step("a", ["--out", p1], outputs=[p1])
mounted = p1.as_mount()
b = step("b", ["--in", mounted, "--out", p2], inputs=[mounted], outputs=[p2])
parsed = p2.parse_parquet_files()
c = step("c", ["--in", parsed], inputs=[parsed])
""",
}


@pytest.fixture
def sample(ip, tmp_path):
    """The step script in ``src``, the SDK imports and an ORDER file, in the user's namespace."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "step.py").write_text(STEP)
    order = tmp_path / "order.txt"
    ip.user_ns["ORDER"] = str(order)
    assert ip.run_cell(HEADER).success
    return tmp_path


def run_to_the_end(ip, line: str):
    ip.run_line_magic("aml_debug_pipeline", line)
    session = current_session("pipeline")
    wait_for(lambda: session.state in ("finished", "failed"), 90, "the pipeline to end")
    return session


def chain_of(session, step: str) -> str:
    return next(line for line in session.row(step).last_lines if line.startswith("chain "))


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_the_last_step_alone_brings_in_the_whole_pipeline(ip, sample, shape):
    assert ip.run_cell(SHAPES[shape] + "last = [c]").success
    session = run_to_the_end(ip, "last --step b --timeout 1")
    assert session.state == "finished", [(r.step, list(r.last_lines)) for r in session.rows]
    assert [r.step for r in session.rows] == ["a", "b", "c"]
    assert session.row("b").debugged and session.row("b").announcement is not None
    assert (sample / "order.txt").read_text().split() == ["a", "b", "c"]
    if shape != "run_after":  # run_after hands on nothing; the order file is the proof
        assert chain_of(session, "c") == "chain a>b>c"


def test_a_debugger_stops_in_a_step_two_levels_down_and_reads_its_data(ip, sample):
    assert ip.run_cell(SHAPES["pipeline_data_two_levels"] + "last = [c]").success
    ip.run_line_magic("aml_debug_pipeline", "last --step c --timeout 60")
    session = current_session("pipeline")
    wait_for(lambda: session.row("c").status == Status.WAITING, 60, "c to wait")
    breakpoints = {str(sample / "src" / "step.py"): [BREAK_LINE]}
    chain = evaluate_at_first_stop(session.row("c").attach_config(), breakpoints, "chain")
    assert chain == "['a', 'b', 'c']"
    wait_for(lambda: session.state == "finished", 60, "the pipeline to finish")


# -- data from outside the pipeline -----------------------------------------------------------

INPUTS = """
store = AzureBlobDatastore(None, "workspaceblobstore", "data", "account")
raw = DataReference(store, data_reference_name="raw_data", path_on_datastore="samples/raw")
files = Dataset.File.from_files(path="https://example.invalid/files/", validate=False)
table = Dataset.Tabular.from_delimited_files(
    path="https://example.invalid/t.csv", validate=False, infer_column_types=False)
path_param = PipelineParameter(name="input_path",
                               default_value=DataPath(store, "samples/by_parameter"))
bound = (path_param, DataPathComputeBinding(mode="mount"))
a = step("a", ["--in", raw, "--out", "a_out"], inputs=[raw])
b = step("b", ["--in", files.as_named_input("raw_files").as_mount(), "--out", "b_out"])
c = step("c", ["--in", table.as_named_input("table"), "--also", bound], inputs=[bound])
abc = [a, b, c]
"""


@pytest.fixture
def stand_ins(sample):
    for name, text in (("raw", "R"), ("files", "F"), ("by_parameter", "P")):
        (sample / name).mkdir()
        (sample / name / "part-0.txt").write_text(text)
    (sample / "t.csv").write_text("T")
    return sample


def test_each_input_kind_takes_a_local_stand_in(ip, stand_ins):
    assert ip.run_cell(INPUTS).success
    session = run_to_the_end(
        ip, "abc --step c --timeout 1 --input raw_data=raw --input raw_files=files/part-0.txt"
        " --input table=t.csv --input input_path=by_parameter",
    )
    assert session.state == "finished", [list(r.last_lines) for r in session.rows]
    assert chain_of(session, "a") == "chain R>a"  # DataReference (mount): the folder
    assert chain_of(session, "b") == "chain F>b"  # File dataset as a mount: a folder holding it
    assert chain_of(session, "c") == "chain T>(P)>c"  # Tabular direct: the file; DataPath param


def test_an_input_without_a_stand_in_or_workspace_says_what_to_add(ip, stand_ins, monkeypatch):
    monkeypatch.setenv("AML_DEBUG_CACHE", str(stand_ins / "cache"))
    assert ip.run_cell(INPUTS).success
    with pytest.raises(UsageError) as refused:
        ip.run_line_magic("aml_debug_pipeline", "abc --input raw_data=raw --input table=t.csv"
                          " --input input_path=by_parameter")
    message = str(refused.value)
    assert "step 'b' reads the FileDataset 'raw_files' (https://example.invalid/files/)" in message
    assert "--input raw_files=PATH" in message
    assert "_PipelineIO" not in message and "\n" not in message
    with pytest.raises(UsageError, match=r"--input rows: no step reads an input of that name; "
                       r"the inputs are: input_path, raw_data, raw_files, table"):
        ip.run_line_magic("aml_debug_pipeline", "abc --input rows=raw")
    with pytest.raises(UsageError, match=r"--input raw_data: .*nowhere does not exist"):
        ip.run_line_magic("aml_debug_pipeline", "abc --input raw_data=nowhere")


def test_with_a_workspace_an_input_is_downloaded_once_and_reused(ip, stand_ins, monkeypatch,
                                                                 capsys):
    """The workspace is an object of our own and ``FileDataset.download`` (the SDK's call that
    reaches Azure storage) is replaced: no storage account is reachable from here. Everything
    between the magic and that call is the real code."""
    from azureml.data.file_dataset import FileDataset

    downloads = []

    def download(self, target_path=None, overwrite=False, **_):
        downloads.append(target_path)
        Path(target_path, "part-0.txt").write_text("D")
        return [str(Path(target_path, "part-0.txt"))]

    monkeypatch.setattr(FileDataset, "download", download)
    monkeypatch.setenv("AML_DEBUG_CACHE", str(stand_ins / "cache"))
    ip.user_ns["ws"] = object()
    assert ip.run_cell(INPUTS).success
    line = ("abc --workspace ws --step c --timeout 1 --input raw_data=raw --input table=t.csv"
            " --input input_path=by_parameter")
    session = run_to_the_end(ip, line)
    assert chain_of(session, "b") == "chain D>b"
    assert len(downloads) == 1 and downloads[0].startswith(str(stand_ins / "cache" / "raw_files-"))
    shown = capsys.readouterr().out
    assert "raw_files: downloading the FileDataset (https://example.invalid/files/)" in shown
    assert "raw_files: downloaded 1 files" in shown
    session = run_to_the_end(ip, line)
    assert chain_of(session, "b") == "chain D>b" and len(downloads) == 1
    assert "raw_files: using the copy downloaded before" in capsys.readouterr().out


def test_a_script_run_config_reads_a_dataset_stand_in(ip, stand_ins):
    assert ip.run_cell(
        INPUTS + "from azureml.core import ScriptRunConfig\n"
        "config = ScriptRunConfig(source_directory='src', script='step.py', run_config=settings,"
        " arguments=['solo', '--in', files.as_named_input('raw_files').as_download()])"
    ).success
    ip.run_line_magic("aml_debug_run", "--timeout 1 --input raw_files=files config")
    session = current_session("run")
    wait_for(lambda: session.state in ("finished", "failed"), 60, "the run to end")
    assert chain_of(session, "step") == "chain F>solo"
    assert session.state == "finished"
