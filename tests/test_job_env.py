"""The local target gives each job a layer of its own environment over the kernel's.

Real azure-ai-ml and azureml-core environment objects, real uv, real small pure-Python packages
from the package index (``six``, ``tabulate``, ``toolz`` at old versions the kernel does not
have), real subprocesses through the magics. Nothing is faked: the tests list the kernel's and
the machine's other Pythons' distributions before and after, and compare.
"""

from __future__ import annotations

import importlib.metadata
import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aml_debug_magics.errors import DebugInputError
from aml_debug_magics.records import Status
from aml_debug_magics.session import current_session
from aml_debug_magics.targets import job_env

pytest.importorskip("azure.ai.ml", reason="azure-ai-ml is the v2 extra (pip install .[v2])")

SHOW = textwrap.dedent(
    """\
    import importlib.metadata, sys
    for name in ("six", "tabulate", "toolz"):
        try:
            print(name, importlib.metadata.version(name), flush=True)
        except importlib.metadata.PackageNotFoundError:
            print(name, "missing", flush=True)
    import debugpy, aml_debug_magics
    print("prefix", sys.prefix, flush=True)
    """
)
CONDA = textwrap.dedent(
    """\
    name: train-env
    channels: [conda-forge]
    dependencies:
      - python=3.11
      - pip
      - cudatoolkit=11.3
      - pip:
        - tabulate==0.8.10
        - toolz==0.12.0
    """
)
OTHER_PYTHONS = [p for p in ("/usr/bin/python3", "/root/.pyenv/versions/3.11.7/bin/python3.11")
                 if Path(p).exists()]


def distributions(python: str) -> str:
    """Every distribution a Python sees, with where it lies: what must not change."""
    return subprocess.run(
        [python, "-I", "-c", "import importlib.metadata as m, json; print(json.dumps(sorted("
         "(d.metadata['Name'] or '', d.version, str(d._path)) for d in m.distributions())))"],
        capture_output=True, text=True, check=True,
    ).stdout


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AML_DEBUG_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def project(ip, tmp_path, cache):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "show.py").write_text(SHOW)
    (tmp_path / "conda.yml").write_text(CONDA)
    return tmp_path


def lines_of(session) -> list[str]:
    return list(session.rows[0].last_lines)


def test_a_command_that_pip_installs_sees_what_it_installed_and_nothing_else_changes(
    ip, project, capsys
):
    assert importlib.metadata.version("six") != "1.15.0"
    before = {python: distributions(python) for python in [sys.executable, *OTHER_PYTHONS]}
    assert ip.run_cell(
        "from azure.ai.ml import command\n"
        "from azure.ai.ml.entities import Environment\n"
        "env = Environment(name='train-env', image='mcr.microsoft.com/azureml/base', "
        "conda_file='conda.yml')\n"
        "job = command(code='./src', command='pip install -q six==1.15.0 && python3 show.py "
        "&& python -m pip show six && pip3 show six', environment=env)"
    ).success
    ip.run_line_magic("aml_debug_job", "job --timeout 1")
    session = current_session("job")
    assert session.wait(180) == "finished", lines_of(session)
    said = lines_of(session)
    assert "six 1.15.0" in said  # what the command installed
    assert {"tabulate 0.8.10", "toolz 0.12.0"} <= set(said)  # what the conda file declares
    prefix = next(line.split(" ", 1)[1] for line in said if line.startswith("prefix "))
    locations = [line for line in said if line.startswith("Location: ")]
    assert len(locations) == 2 and all(prefix in line for line in locations)  # either pip
    assert "cudatoolkit=11.3" in session.note and "not installed here" in session.note
    assert "preparing the job's environment: 2 packages" in capsys.readouterr().out
    after = {python: distributions(python) for python in [sys.executable, *OTHER_PYTHONS]}
    assert after == before
    assert not Path(prefix).exists()  # the job's own layer goes with its process


def test_the_same_environment_runs_again_without_building(ip, project):
    assert ip.run_cell(
        "from azure.ai.ml import command, load_environment\n"
        "from azure.ai.ml.entities import Environment\n"
        "env = Environment(name='train-env', image='mcr.microsoft.com/azureml/base', "
        "conda_file='conda.yml')\n"
        "job = command(code='./src', command='python show.py', environment=env)"
    ).success
    ip.run_line_magic("aml_debug_job", "job --timeout 1")
    assert current_session("job").wait(180) == "finished"
    [layer] = job_env.cached_layers()
    built = (layer.folder / "site-packages").stat().st_mtime_ns
    ip.run_line_magic("aml_debug_job", "job --timeout 1")
    session = current_session("job")
    assert session.wait(180) == "finished"
    assert "tabulate 0.8.10" in lines_of(session)
    [again] = job_env.cached_layers()
    assert again.folder == layer.folder
    assert (again.folder / "site-packages").stat().st_mtime_ns == built
    assert again.last_used >= layer.last_used


def test_an_sdk_v1_environment_with_pip_packages(ip, project):
    assert ip.run_cell(
        "from azureml.core import Environment, ScriptRunConfig\n"
        "from azureml.core.conda_dependencies import CondaDependencies\n"
        "env = Environment('tabulate-env')\n"
        "env.python.conda_dependencies = CondaDependencies.create(pip_packages=["
        "'tabulate==0.8.10', 'azureml-defaults'])\n"
        "config = ScriptRunConfig(source_directory='src', script='show.py', environment=env)"
    ).success
    ip.run_line_magic("aml_debug_run", "config --timeout 1")
    session = current_session("run")
    assert session.wait(180) == "finished", lines_of(session)
    assert "tabulate 0.8.10" in lines_of(session)
    kernel_tabulate = importlib.metadata.version("tabulate")
    assert kernel_tabulate != "0.8.10"  # the kernel keeps its own
    assert (f"environment 'tabulate-env' pins another version than the kernel's: "
            f"tabulate==0.8.10 (the kernel: {kernel_tabulate})") in session.note
    [layer] = job_env.cached_layers()
    assert layer.packages == ["tabulate==0.8.10"]  # azureml-defaults: Azure ML's runtime


def test_env_kernel_runs_in_the_kernels_environment(ip, project):
    assert ip.run_cell(
        "from azureml.core import Environment, ScriptRunConfig\n"
        "from azureml.core.conda_dependencies import CondaDependencies\n"
        "env = Environment('tabulate-env')\n"
        "env.python.conda_dependencies = CondaDependencies.create(pip_packages=["
        "'tabulate==0.8.10'])\n"
        "config = ScriptRunConfig(source_directory='src', script='show.py', environment=env)"
    ).success
    ip.run_line_magic("aml_debug_run", "config --timeout 1 --env kernel")
    session = current_session("run")
    assert session.wait(60) == "finished"
    assert f"tabulate {importlib.metadata.version('tabulate')}" in lines_of(session)
    assert f"prefix {sys.prefix}" in lines_of(session)
    assert job_env.cached_layers() == []


def test_a_package_that_does_not_exist_is_one_line_and_nothing_runs(ip, project):
    assert ip.run_cell(
        "from azureml.core import Environment, ScriptRunConfig\n"
        "from azureml.core.conda_dependencies import CondaDependencies\n"
        "env = Environment('typo-env')\n"
        "env.python.conda_dependencies = CondaDependencies.create(pip_packages=["
        "'aml-debug-no-such-package-qq==1.0'])\n"
        "config = ScriptRunConfig(source_directory='src', script='show.py', environment=env)"
    ).success
    ip.run_line_magic("aml_debug_run", "config --timeout 1")
    session = current_session("run")
    assert session.wait(120) == "failed"
    row = session.rows[0]
    assert row.status == Status.NOT_RUN
    assert "aml-debug-no-such-package-qq" in row.detail and "\n" not in row.detail
    assert lines_of(session) == []  # the script never started
    assert not any(job_env.layers_folder().iterdir())  # nothing half-built is kept


def test_a_conda_file_that_does_not_parse_is_one_line(project):
    """azure-ai-ml reads a conda file given by path when the Environment is made; one still
    held as a path (an environment read another way) is read here, with one line if broken."""
    (project / "broken.yml").write_text("dependencies: [pip, {pip: [six\n")
    with pytest.raises(DebugInputError, match=r"^cannot read the conda file .*broken.yml: "):
        job_env.conda_file(project / "broken.yml")
    (project / "list.yml").write_text("- pip\n")
    with pytest.raises(DebugInputError, match=r"list.yml is not a conda environment"):
        job_env.conda_file(project / "list.yml")


def test_the_cache_is_listed_cleared_and_kept_within_its_limit(ip, project, capsys):
    layout = job_env.plan(job_env.Declared("environment 'a'", ("toolz==0.12.0",)))
    first = job_env.environment_layer(layout)
    assert first is not None and (first / "site-packages" / "toolz").is_dir()
    ip.run_line_magic("aml_debug_cache", "")
    listing = capsys.readouterr().out
    assert first.name in listing and "environment 'a': toolz==0.12.0" in listing
    second = job_env.environment_layer(
        job_env.plan(job_env.Declared("environment 'b'", ("tabulate==0.8.10",))),
        limit=job_env.cached_layers()[0].size + 1,  # room for one: the older goes
    )
    assert [layer.folder for layer in job_env.cached_layers()] == [second]
    ip.run_line_magic("aml_debug_cache", "clear")
    assert "freed" in capsys.readouterr().out
    assert job_env.cached_layers() == []


def test_a_layer_pip_never_writes_beneath_it(tmp_path, cache):
    """The job layer's pip, asked for an old version the kernel has at another, installs into
    the job layer only (pip leaves what lies outside its environment alone); the kernel's
    editable packages are seen beneath it."""
    layer = job_env.JobLayer()
    try:
        kernel_six = importlib.metadata.version("six")
        subprocess.run([layer.python, "-m", "pip", "install", "-q", "six==1.15.0"], check=True,
                       capture_output=True)
        seen = subprocess.run(
            [layer.python, "-c", "import six, json, sys; print(json.dumps([six.__version__, "
             "six.__file__]))"], capture_output=True, text=True, check=True).stdout
        version, where = json.loads(seen)
        assert version == "1.15.0" and where.startswith(str(layer.root))
        assert importlib.metadata.version("six") == kernel_six
        own = subprocess.run(  # the kernel's editable install of this project, seen as it is
            [layer.python, "-c", "import aml_debug_magics; print(aml_debug_magics.__file__)"],
            capture_output=True, text=True, check=True, env={"PATH": "/usr/bin"}, cwd=tmp_path,
        ).stdout.strip()
        assert own == str(Path(job_env.__file__).parents[1] / "__init__.py")
    finally:
        layer.remove()


def test_no_network_to_the_index_is_one_line_and_nothing_runs(ip, project, monkeypatch):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens there once closed
    monkeypatch.setenv("UV_INDEX_URL", f"http://127.0.0.1:{port}/simple")
    monkeypatch.setenv("UV_HTTP_RETRIES", "0")
    assert ip.run_cell(
        "from azure.ai.ml import command\n"
        "from azure.ai.ml.entities import Environment\n"
        "env = Environment(name='offline', image='x', conda_file={'dependencies': "
        "[{'pip': ['toolz==0.11.1']}]})\n"
        "job = command(code='./src', command='python show.py', environment=env)"
    ).success
    ip.run_line_magic("aml_debug_job", "job --timeout 1")
    session = current_session("job")
    assert session.wait(60) == "failed"
    detail = session.rows[0].detail
    assert detail.startswith("cannot prepare the job's environment (environment 'offline': "
                             "toolz==0.11.1): Failed to fetch: "), detail
    assert "Connection refused" in detail and "\n" not in detail
    assert lines_of(session) == []
