"""A local step that cannot import a module says which of the job's environments declared it
(and why it is not here), or that none did; with ``--env kernel`` the panel names each pin the
kernel has at another major version.

Real azure-ai-ml and azureml-core environment objects, real subprocesses through the magics;
nothing is installed from an index (the packages named are conda-only, excluded by a marker, or
not declared at all), so no network is needed.
"""

from __future__ import annotations

import importlib.metadata
import textwrap

import pytest

from aml_debug_magics.records import Status
from aml_debug_magics.session import current_session
from aml_debug_magics.targets import job_env

pytest.importorskip("azure.ai.ml", reason="azure-ai-ml is the v2 extra (pip install .[v2])")

CONDA = textwrap.dedent(
    """\
    name: train-env
    channels: [conda-forge]
    dependencies:
      - python=3.11
      - pip
      - aml-debug-conda-only=1.0
      - pip:
        - "aml-debug-windows-only==1.0; sys_platform == 'win32'"
        - pandas==1.5.3
    """
)
JOB_CELL = (
    "from azure.ai.ml import command\n"
    "from azure.ai.ml.entities import Environment\n"
    "env = Environment(name='train-env', image='mcr.microsoft.com/azureml/base', "
    "conda_file='conda.yaml')\n"
    "job = command(code='./src', command='python train.py', environment=env)"
)


@pytest.fixture
def project(ip, tmp_path, monkeypatch):
    monkeypatch.setenv("AML_DEBUG_CACHE", str(tmp_path / "cache"))
    (tmp_path / "src").mkdir()
    (tmp_path / "conda.yaml").write_text(CONDA)
    return tmp_path


def failed_row(ip, project, script: str, line: str, step: str | None = None):
    (project / "src" / "train.py").write_text(script)
    ip.run_line_magic("aml_debug_job", line)
    session = current_session("job")
    assert session.wait(120) == "failed", [list(r.last_lines) for r in session.rows]
    row = next(r for r in session.rows if step is None or r.step == step)
    assert row.status == Status.FAILED and "\n" not in row.detail
    return session, row


def test_with_env_kernel_a_declared_module_says_env_job_installs_it(ip, project):
    """Nothing installs with --env kernel: the pip package need not exist on an index."""
    (project / "conda.yaml").write_text(CONDA.replace("pandas==1.5.3", "aml-debug-pip-only==1.0"))
    assert ip.run_cell(JOB_CELL).success
    _, row = failed_row(ip, project, "import aml_debug_pip_only\n",
                        "job --timeout 1 --post-mortem off --env kernel")
    assert ("aml_debug_pip_only is declared by the job's environment 'train-env' (conda.yaml), "
            "but --env kernel runs the job with the kernel's packages, which lack it: --env job "
            "installs it") in row.detail


def test_with_env_kernel_a_conda_package_says_why_the_layer_would_not_have_it_either(
    ip, project,
):
    assert ip.run_cell(JOB_CELL).success
    _, row = failed_row(ip, project, "import aml_debug_conda_only\n",
                        "job --timeout 1 --post-mortem off --env kernel")
    assert ("aml_debug_conda_only is declared by the job's environment 'train-env' (conda.yaml) "
            "but did not install: aml-debug-conda-only=1.0 is a conda package") in row.detail


def test_a_conda_only_package_says_why_it_is_not_in_the_jobs_layer(ip, project):
    (project / "conda.yaml").write_text(CONDA.replace("        - pandas==1.5.3\n", ""))
    assert ip.run_cell(JOB_CELL).success
    _, row = failed_row(ip, project, "import aml_debug_conda_only\n",
                        "job --timeout 1 --post-mortem off")
    assert row.detail.startswith("ModuleNotFoundError at "), row.detail
    assert ("aml_debug_conda_only is declared by the job's environment 'train-env' "
            "(conda.yaml) but did not install: aml-debug-conda-only=1.0 is a conda package, "
            "and conda packages are not installed here") in row.detail
    assert row.detail.endswith("; exit status 1")


def test_a_package_its_marker_leaves_out_is_named(ip, project):
    (project / "conda.yaml").write_text(CONDA.replace("        - pandas==1.5.3\n", ""))
    assert ip.run_cell(JOB_CELL).success
    _, row = failed_row(ip, project, "import aml_debug_windows_only\n",
                        "job --timeout 1 --post-mortem off")
    assert ("aml_debug_windows_only is declared by the job's environment 'train-env' "
            "(conda.yaml) but did not install: its marker excludes this machine") in row.detail


def test_an_undeclared_module_of_an_undebugged_node_names_where_to_add_it(ip, project):
    """The node that fails runs without the bootstrap: its traceback alone says the module."""
    (project / "conda.yaml").write_text(CONDA.replace("        - pandas==1.5.3\n", ""))
    (project / "src" / "other.py").write_text("print('never')\n")
    assert ip.run_cell(
        JOB_CELL.replace("job = ", "first = ") + "\n"
        "second = command(code='./src', command='python other.py', environment=env)\n"
        "from azure.ai.ml import dsl\n"
        "@dsl.pipeline(compute='cpu')\n"
        "def both():\n"
        "    prep = first()\n"
        "    train = second()  # noqa: F841\n"
        "job = both()"
    ).success
    session, row = failed_row(ip, project, "import aml_debug_absent_module\n",
                              "job --node train --timeout 1", step="prep")
    assert not row.debugged
    assert ("no environment of this job declares aml_debug_absent_module: add it to conda.yaml"
            in row.detail), row.detail
    assert next(r for r in session.rows if r.step == "train").status == Status.NOT_RUN


def test_an_sdk_v1_run_without_an_environment_says_none_declares_it(ip, project):
    (project / "src" / "train.py").write_text("import aml_debug_absent_module\n")
    assert ip.run_cell(
        "from azureml.core import ScriptRunConfig\n"
        "config = ScriptRunConfig(source_directory='src', script='train.py')"
    ).success
    ip.run_line_magic("aml_debug_run", "config --timeout 1 --post-mortem off --env kernel")
    session = current_session("run")
    assert session.wait(60) == "failed"
    assert ("no environment of this job declares aml_debug_absent_module, and the kernel lacks "
            "it: add it to the job's environment 'default-environment', or pip install it in "
            "the kernel") in session.rows[0].detail  # azureml-core's environment of a run


def test_with_env_kernel_a_pin_of_another_major_version_is_said_before_the_run(ip, project):
    kernel_pandas = importlib.metadata.version("pandas")
    assert not kernel_pandas.startswith("1.")
    (project / "src" / "train.py").write_text("print('ran', flush=True)\n")
    assert ip.run_cell(JOB_CELL).success
    ip.run_line_magic("aml_debug_job", "job --timeout 1 --env kernel")
    session = current_session("job")
    assert session.wait(60) == "finished"
    said = list(session.rows[0].last_lines)
    assert said[0] == (f"[aml-debug] the job's environment 'train-env' pins pandas 1.5.3; this "
                       f"kernel has {kernel_pandas}: --env job installs the pin")
    assert "ran" in said and "pins pandas" not in session.note


def test_a_pin_of_the_kernels_major_version_says_nothing(ip, project):
    kernel_pandas = importlib.metadata.version("pandas")
    major = kernel_pandas.split(".")[0]
    (project / "conda.yaml").write_text(CONDA.replace("pandas==1.5.3", f"pandas=={major}.0.0"))
    assert ip.run_cell(JOB_CELL).success
    assert job_env.said_before_run(ip.user_ns["job"], None, "kernel") == []
    (project / "conda.yaml").write_text(CONDA)
    assert ip.run_cell(JOB_CELL).success
    job = ip.user_ns["job"]
    layer_plan = job_env.plan(job_env.declared_by(job))
    assert job_env.said_before_run(job, layer_plan, "job") == []  # the pin installs
    assert len(job_env.said_before_run(job, None, "kernel")) == 1


def test_a_distribution_is_matched_to_its_module_by_its_files(tmp_path):
    """A layer's distribution whose module has another name (no top_level.txt: read from its
    RECORD, as importlib.metadata does)."""
    site = tmp_path / "layer" / "site-packages"
    info = site / "fancy_dist-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fancy-dist\nVersion: 1.0\n")
    (info / "RECORD").write_text("odd_name/__init__.py,,\nfancy_dist-1.0.dist-info/RECORD,,\n")
    (site / "odd_name").mkdir()
    (site / "odd_name" / "__init__.py").write_text("")
    declared = job_env.Declared("environment 'e'", ("fancy-dist==1.0",), file="conda.yaml")
    said = job_env.missing_module_hint("odd_name", declared, env="job", layer=tmp_path / "layer")
    assert said.startswith("odd_name is declared by the job's environment 'e' (conda.yaml) "
                           "(fancy-dist==1.0) and installed in the job's layer")
    said = job_env.missing_module_hint("odd_name", declared, env="job")
    assert said.startswith("no environment of this job declares odd_name: add it to conda.yaml")


# -- environments registered on Azure ML -------------------------------------------------------

ENV_ARM = ("/subscriptions/0/resourceGroups/rg/providers/Microsoft.MachineLearningServices/"
           "workspaces/ws/environments/{name}/versions/{version}")


class RegisteredEnvironments:
    """Azure ML's control plane for ``ml_client.environments.get``: the REST body the service
    returns for an environment registered from a conda file, read by the SDK's own
    ``Environment._from_rest_object``; what it does not hold is ``ResourceNotFoundError``, as a
    curated environment (which lives in the azureml registry) is to a workspace."""

    def __init__(self, registered: dict[tuple[str, str], str]) -> None:
        self.registered = registered
        self.asked: list[tuple[str, str | None, str | None]] = []

    def get(self, name: str, version: str | None = None, label: str | None = None):
        from azure.ai.ml._restclient.arm_ml_service.models import (
            EnvironmentVersion,
            EnvironmentVersionProperties,
        )
        from azure.ai.ml.entities import Environment
        from azure.core.exceptions import ResourceNotFoundError

        self.asked.append((name, version, label))
        if label == "latest":
            version = max((v for n, v in self.registered if n == name), default=None, key=int)
        if (name, version) not in self.registered:
            raise ResourceNotFoundError(f"Environment {name}:{version or label} not found\n"
                                        "Code: UserError")
        rest = EnvironmentVersion(properties=EnvironmentVersionProperties(
            image="mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04",
            conda_file=self.registered[(name, version)],
        ))
        rest.id = ENV_ARM.format(name=name, version=version)
        return Environment._from_rest_object(rest)


def run_locally(tmp_path, job, environments: RegisteredEnvironments):
    from aml_debug_magics.records import DebugRequest
    from aml_debug_magics.session import DebugSession
    from aml_debug_magics.sources import sdk_v2
    from aml_debug_magics.targets.azureml_v2 import V2Workspace
    from aml_debug_magics.targets.local import LocalPipelineTarget
    from aml_debug_magics.ui.text import TextView

    specs = sdk_v2.read_job(job, "job", base_directory=tmp_path)
    client = type("StandInMLClient", (), {"environments": environments})()
    request = DebugRequest("%aml_debug_job job", specs, timeout=1, post_mortem="off",
                           workspace=V2Workspace(client))
    session = DebugSession(request, LocalPipelineTarget(request),
                           TextView(write=lambda line: None)).start()
    session.wait(120)
    return session


def test_a_registered_environment_is_read_through_the_workspace(project):
    from azure.ai.ml import command

    (project / "src" / "train.py").write_text("import aml_debug_conda_only\n")
    environments = RegisteredEnvironments({
        ("train-env", "2"): "dependencies:\n  - python=3.11\n",
        ("train-env", "3"): CONDA.replace("        - pandas==1.5.3\n", ""),
    })
    job = command(code=str(project / "src"), command="python train.py",
                  environment="azureml:train-env@latest")
    session = run_locally(project, job, environments)
    assert environments.asked == [("train-env", None, "latest")]
    assert ("environment 'azureml:train-env@latest': not installed here (conda-only or "
            "GPU-only): aml-debug-conda-only=1.0") in session.note
    assert not any("unknown" in line for line in session.rows[0].last_lines)
    row = session.rows[0]
    assert row.status == Status.FAILED
    assert ("aml_debug_conda_only is declared by the job's environment "
            "'azureml:train-env@latest' but did not install: aml-debug-conda-only=1.0 is a "
            "conda package") in row.detail


def test_a_curated_environment_the_workspace_cannot_read_is_one_line_and_the_run_goes_on(
    project,
):
    from azure.ai.ml import command

    (project / "src" / "train.py").write_text("print('ran', flush=True)\n")
    environments = RegisteredEnvironments({})
    job = command(code=str(project / "src"), command="python train.py",
                  environment="azureml:AzureML-sklearn-1.5:7")
    session = run_locally(project, job, environments)
    assert session.state == "finished"
    said = list(session.rows[0].last_lines)
    assert said[0] == (
        "[aml-debug] environment 'azureml:AzureML-sklearn-1.5:7': its packages are unknown here "
        "(the workspace cannot read it (a curated environment?): Environment "
        "AzureML-sklearn-1.5:7 not found); the run goes on in the kernel's packages")
    assert "ran" in said


def test_without_a_workspace_an_environment_named_on_azure_ml_is_one_line(ip, project):
    (project / "src" / "train.py").write_text("print('ran', flush=True)\n")
    assert ip.run_cell(
        "from azure.ai.ml import command\n"
        "job = command(code='./src', command='python train.py', "
        "environment='azureml:train-env:3')"
    ).success
    ip.run_line_magic("aml_debug_job", "job --timeout 1")
    session = current_session("job")
    assert session.wait(60) == "finished"
    assert ("[aml-debug] environment 'azureml:train-env:3': its packages are unknown here (no "
            "workspace to read it through: no config.json here or above); the run goes on in "
            "the kernel's packages") in session.rows[0].last_lines


def test_a_curated_sdk_v1_environment_says_its_packages_are_unknown(ip, project):
    """``Environment.get(ws, 'AzureML-...')`` of a curated image: user-managed dependencies,
    as azureml-core builds it from the service's answer (here from its own dict form)."""
    (project / "src" / "train.py").write_text("print('ran', flush=True)\n")
    assert ip.run_cell(
        "from azureml.core import Environment, ScriptRunConfig\n"
        "env = Environment('AzureML-ACPT-pytorch-1.13-py38-cuda11.7-gpu')\n"
        "env.docker.base_image = 'mcr.microsoft.com/azureml/curated/acpt-pytorch-1.13:1'\n"
        "env.python.user_managed_dependencies = True\n"
        "config = ScriptRunConfig(source_directory='src', script='train.py', environment=env)"
    ).success
    ip.run_line_magic("aml_debug_run", "config --timeout 1")
    session = current_session("run")
    assert session.wait(60) == "finished"
    assert ("[aml-debug] environment 'AzureML-ACPT-pytorch-1.13-py38-cuda11.7-gpu': its packages "
            "are unknown here (a curated environment: its image brings its packages); the run "
            "goes on in the kernel's packages") in session.rows[0].last_lines


def test_the_magic_reads_a_registered_environment_through_its_workspace_variable(ip, project):
    """``%aml_debug_job ... --workspace ml_client`` on the local target: the environment is read
    through that MLClient (the control plane stands in, as above)."""
    (project / "src" / "train.py").write_text("print('ran', flush=True)\n")
    environments = RegisteredEnvironments({("train-env", "1"): "dependencies:\n  - python=3.11\n"})
    ip.user_ns["ml_client"] = type("StandInMLClient", (), {"environments": environments})()
    assert ip.run_cell(
        "from azure.ai.ml import command\n"
        f"job = command(code={str(project / 'src')!r}, command='python train.py', "
        "environment='azureml:train-env:1')").success
    ip.run_line_magic("aml_debug_job", "job --workspace ml_client --timeout 1 --post-mortem off")
    session = current_session("job")
    assert session.wait(120) == "finished"
    assert environments.asked == [("train-env", "1", None)]
