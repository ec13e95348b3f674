"""A local job's own environment: a layer over the kernel's, as Azure ML gives a job its image.

In: a step's SDK object (SDK v1 ``Environment`` / ``CondaDependencies`` in its run
configuration, SDK v2 ``Environment(conda_file=...)`` or a YAML environment's ``conda_file`` on
its node). Out: a :class:`JobLayer` for each process the step starts: a private folder whose
``bin/`` (first on the command's PATH) holds ``python``, ``python3``, ``python3.X``, ``pip`` and
``pip3``, all starting the kernel's base interpreter as a virtual environment of its own. Its
site-packages sees, in this order: what the command installs (``pip install`` writes there, and
pip never uninstalls what lies outside it), the packages the environment declares and the kernel
lacks (an *environment layer*, built once with uv and cached by the environment's content and the
kernel's packages under ``cache_root()/job-environments``), then the kernel's site-packages with
their ``.pth`` files (so the user's editable packages are seen as they are now). Nothing is ever
written to the kernel's environment or to any other Python. The job layer is removed when its
process ends; environment layers stay until ``%aml_debug_cache clear`` or the cache limit.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aml_debug_magics.errors import DebugInputError
from aml_debug_magics.sources.inputs import cache_root

LAYERS = "job-environments"  # under cache_root()
COMPLETE = ".complete"  # in a finished environment layer: what it holds, as JSON
DEFAULT_CACHE_LIMIT = 5 * 1024**3
# Azure ML's own runtime, which its image brings; a job does not need it here
AZUREML_RUNTIME = {"azureml-defaults", "azureml-inference-server-http"}
# what conda puts in every environment: the layer's interpreter and pip are the kernel's
CONDA_BASICS = {"python", "pip", "setuptools", "wheel"}
GPU_ONLY = re.compile(r"^(nvidia-.*|cupy-cuda.*|.*-cu\d+|tensorrt.*|cudatoolkit.*|cudnn.*)$")
INDEX_OPTIONS = ("--index-url", "--extra-index-url", "--find-links", "-i", "-f")
# reads an environment registered on Azure ML: (name, version, label) -> azure-ai-ml Environment
Registered = Callable[[str, "str | None", "str | None"], Any]


@dataclass(frozen=True)
class Declared:
    """What a job's environment asks for, as written: ``source`` names the environment for
    the panel (``environment 'train-env'``)."""

    source: str
    pip: tuple[str, ...] = ()
    conda: tuple[str, ...] = ()
    file: str = ""  # the conda file's name, when it was read from one: ``conda.yaml``
    unknown: str = ""  # why its packages cannot be known here (a curated image's, say)


@dataclass
class Plan:
    """What a layer must add to the kernel's packages, and what it cannot."""

    declared: Declared
    needed: list[str] = field(default_factory=list)  # pip requirements the kernel lacks
    index_options: list[str] = field(default_factory=list)
    not_here: list[str] = field(default_factory=list)  # conda-only or GPU-only, skipped
    other_versions: list[str] = field(default_factory=list)  # "pandas 1.5.3 (the kernel: 2.2.0)"

    def notes(self) -> list[str]:
        said = []
        if self.not_here:
            said.append(f"{self.declared.source}: not installed here (conda-only or GPU-only): "
                        f"{', '.join(self.not_here)}; the run goes on without them")
        if self.other_versions:
            said.append(f"{self.declared.source} pins another version than the kernel's: "
                        f"{', '.join(self.other_versions)}")
        return said


# -- what the job's environment declares ---------------------------------------------------


def declared_by(sdk_object: Any, registered: Registered | None = None) -> Declared | None:
    """The environment of a step's SDK object (v1 step or ScriptRunConfig, v2 node), or None
    when it has none of its own. One named on Azure ML (``azureml:NAME:VERSION``,
    ``azureml:NAME@latest``) is read through ``registered`` (a workspace's
    ``environments.get``); where it cannot be (no workspace, a curated or registry one, an
    image alone) its ``unknown`` says why, and the kernel's packages are what it gets."""
    environment = _v1_environment(sdk_object)
    if environment is not None:
        return _from_v1(environment)
    # a command node's, its component's, a parallel node's task's, a sweep's trial's
    holders = [sdk_object, *(getattr(sdk_object, name, None)
                             for name in ("component", "task", "trial"))]
    environment = next((found for found in (getattr(h, "environment", None) for h in holders)
                        if _is_v2_environment(found)), None)
    if environment is None:
        return None
    if isinstance(environment, str):
        return _from_azure_ml(environment, registered)
    return _from_v2(environment)


def _from_azure_ml(reference: str, registered: Registered | None) -> Declared:
    """An environment named on Azure ML, read through the workspace where it can be."""
    source = f"environment {reference!r}"
    name, version, label = _named(reference)
    if not name:
        return Declared(source, unknown="an environment of a registry, read only on Azure ML")
    if registered is None:
        return Declared(source, unknown="no workspace to read it through")
    try:
        environment = registered(name, version, label)
    except DebugInputError as error:
        return Declared(source, unknown=str(error))
    except Exception as error:  # the service's answer, whatever its kind: one line
        curated = " (a curated environment?)" if name.startswith("AzureML-") else ""
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return Declared(source, unknown=f"the workspace cannot read it{curated}: {reason[:200]}")
    declared = _from_v2(environment)
    if declared is None:
        return Declared(source, unknown="its image brings its packages, which only Azure ML "
                                        "reads")
    return replace(declared, source=source)


def _named(reference: str) -> tuple[str, str | None, str | None]:
    """``azureml:NAME:VERSION``, ``azureml:NAME@LABEL`` or an ARM id's ``.../environments/NAME/
    versions/VERSION`` -> (name, version, label); no name for a registry's."""
    bare = reference.removeprefix("azureml:")
    if bare.startswith("//registries/") or "/registries/" in bare:
        return "", None, None
    arm = re.search(r"/environments/([^/]+)(?:/versions/([^/]+))?", bare)
    if arm:
        return arm.group(1), arm.group(2), None if arm.group(2) else "latest"
    name, at, label = bare.partition("@")
    if at:
        return name, None, label
    name, _, version = name.partition(":")
    return name, version or None, None if version else "latest"


def _is_v2_environment(value: Any) -> bool:
    """An azure-ai-ml ``Environment`` or its name (a node's attributes it lacks can answer
    with an empty ``_AttrDict``: not that)."""
    return isinstance(value, str) or type(value).__name__ == "Environment" and \
        type(value).__module__.startswith("azure.ai.ml")


def _v1_environment(sdk_object: Any) -> Any:
    """An azureml-core ``Environment`` in a step's, a ScriptRunConfig's or a ParallelRunStep's
    run configuration (an SDK v2 node's ``run_config`` answers any attribute: not that)."""
    for holder in ("_runconfig", "run_config", "_parallel_run_config"):
        environment = getattr(getattr(sdk_object, holder, None), "environment", None)
        if type(environment).__module__.startswith("azureml.core"):
            return environment
    return None


def _from_v1(environment: Any) -> Declared | None:
    python = environment.python
    if getattr(python, "user_managed_dependencies", False):
        name = getattr(environment, "name", None) or ""
        if name.startswith("AzureML-"):  # a curated image: say its packages are not known here
            return Declared(f"environment {name!r}",
                            unknown="a curated environment: its image brings its packages")
        return None  # the image brings everything: nothing declared to add here
    conda = getattr(python, "conda_dependencies", None)
    if conda is None:
        return None
    source = f"environment {getattr(environment, 'name', None) or 'of the run'!r}"
    return Declared(source, tuple(conda.pip_packages), tuple(conda.conda_packages))


def _from_v2(environment: Any) -> Declared | None:
    content = getattr(environment, "conda_file", None)
    source = f"environment {getattr(environment, 'name', None) or 'of the job'!r}"
    if content is None:
        return None
    path = getattr(environment, "_conda_file_path", None) or (
        content if isinstance(content, (str, os.PathLike)) else None)
    if isinstance(content, (str, os.PathLike)):
        content = conda_file(Path(content))
    declared = from_conda(content, source)
    return replace(declared, file=Path(path).name) if path else declared


def conda_file(path: Path) -> dict[str, Any]:
    """A conda environment file's content; one line when it cannot be read."""
    import yaml

    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        reason = str(error).splitlines()[0]
        raise DebugInputError(f"cannot read the conda file {path}: {reason}") from None
    if not isinstance(content, dict):
        raise DebugInputError(f"the conda file {path} is not a conda environment (no mapping)")
    return content


def from_conda(content: Mapping[str, Any], source: str) -> Declared:
    """The pip and conda packages of a conda environment's ``dependencies``."""
    pip: list[str] = []
    conda: list[str] = []
    for entry in content.get("dependencies") or []:
        if isinstance(entry, Mapping):
            pip.extend(str(line) for line in entry.get("pip") or [])
        elif entry is not None:
            conda.append(str(entry))
    return Declared(source, tuple(pip), tuple(conda))


# -- what the kernel lacks ----------------------------------------------------------------


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def kernel_packages() -> dict[str, str]:
    """The kernel's installed distributions: normalized name -> version, read from the
    ``NAME-VERSION.dist-info`` folders' names (a hundred times faster than their metadata);
    the metadata only where a name does not say it (an old ``.egg-info``)."""
    found: dict[str, str] = {}
    for folder in kernel_site_dirs():
        for entry in sorted(os.listdir(folder)):
            stem, dot, kind = entry.rpartition(".")
            if kind not in ("dist-info", "egg-info") or not dot:
                continue
            name, dash, version = stem.partition("-")
            if kind == "egg-info":
                version = version.split("-py")[0]
            if not dash or not version:
                dist = importlib.metadata.PathDistribution(Path(folder, entry))
                name, version = dist.metadata["Name"] or "", dist.version
            if name:
                found.setdefault(normalized(name), version)
    return found


def kernel_site_dirs() -> list[str]:
    """Where the kernel's packages are, in its own order."""
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
        dirs.append(site.getusersitepackages())
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


def plan(declared: Declared, kernel: Mapping[str, str] | None = None) -> Plan:
    """Which of the declared packages the kernel lacks or has at another version."""
    from packaging.markers import default_environment
    from packaging.requirements import InvalidRequirement, Requirement

    kernel = kernel_packages() if kernel is None else kernel
    result = Plan(declared)
    options = iter(declared.pip)
    for line in options:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            option, _, value = line.partition(" ")
            if option in INDEX_OPTIONS:
                result.index_options += [option, value.strip()]
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            raise DebugInputError(
                f"{declared.source}: cannot read the pip requirement {line!r}"
            ) from None
        name = normalized(requirement.name)
        if requirement.marker and not requirement.marker.evaluate(default_environment()):
            continue
        if name in AZUREML_RUNTIME:
            continue
        if GPU_ONLY.match(name) or "+cu" in str(requirement.specifier):
            result.not_here.append(line)
            continue
        have = kernel.get(name)
        if have is not None and not requirement.url and (
            not requirement.specifier or requirement.specifier.contains(have, prereleases=True)
        ):
            continue
        if have is not None:
            result.other_versions.append(f"{requirement} (the kernel: {have})")
        result.needed.append(line)
    for package in declared.conda:
        wanted = _conda_name(package)
        if wanted in CONDA_BASICS or wanted in kernel:
            continue
        result.not_here.append(package)
    return result


def _conda_name(package: str) -> str:
    """``conda-forge::lightgbm=3.3`` -> ``lightgbm``."""
    return normalized(re.split(r"[=<>!\s]", package.split("::")[-1].strip(), maxsplit=1)[0])


def plans(
    steps: Iterable[Any], env: str, registered: Registered | None = None
) -> dict[str, Plan]:
    """Each step's plan by its name (none with ``--env kernel``, or for a step whose
    environment declares nothing); read before anything runs, so a bad file is one line.
    ``registered`` reads the environments named on Azure ML, each once."""
    if env == "kernel":
        return {}
    found = {}
    kernel = kernel_packages()
    read = _once(registered) if registered is not None else None
    for step in steps:
        declared = declared_by(step.sdk_object, read)
        if "pip" not in kernel:  # a kernel made by uv: the job's `pip` must still work
            declared = declared or Declared("the job's environment")
            declared = replace(declared, pip=(*declared.pip, "pip"))
        if declared is not None:
            found[step.name] = plan(declared, kernel)
    return found


def _once(registered: Registered) -> Registered:
    """``registered`` asked once for each environment: its answer, or its error, kept."""
    answers: dict[tuple[str, str | None, str | None], tuple[Any, BaseException | None]] = {}

    def read(name: str, version: str | None, label: str | None) -> Any:
        key = (name, version, label)
        if key not in answers:
            try:
                answers[key] = (registered(name, version, label), None)
            except Exception as error:
                answers[key] = (None, error)
        answer, error = answers[key]
        if error is not None:
            raise error
        return answer

    return read


def said_before_run(
    sdk_object: Any, step_plan: Plan | None, env: str, kernel: Mapping[str, str] | None = None,
) -> list[str]:
    """What a step's row says before it runs: with the job's layer, that its environment's
    packages are unknown here (a curated image's, or one no workspace can read); with
    ``--env kernel``, each package its environment pins (``pandas==1.5.3``) that the kernel
    has at another major version (with the job's layer the pin installs: nothing to say)."""
    if env != "kernel":
        unknown = step_plan.declared.unknown if step_plan is not None else ""
        return [f"{step_plan.declared.source}: its packages are unknown here ({unknown}); the "
                "run goes on in the kernel's packages"] if step_plan and unknown else []
    try:
        declared = declared_by(sdk_object)
    except DebugInputError:  # the kernel's packages run it: its file is not needed
        return []
    return _other_majors(declared, kernel_packages() if kernel is None else kernel) \
        if declared is not None else []


def _other_majors(declared: Declared, kernel: Mapping[str, str]) -> list[str]:
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.version import InvalidVersion, Version

    said = []
    for line in declared.pip:
        try:
            requirement = Requirement(line.strip())
            pinned = next(s.version for s in requirement.specifier
                          if s.operator in ("==", "===") and "*" not in s.version)
            have = kernel[normalized(requirement.name)]
            if Version(pinned).major == Version(have).major:
                continue
        except (InvalidRequirement, InvalidVersion, StopIteration, KeyError):
            continue
        said.append(f"the job's {declared.source} pins {requirement.name} {pinned}; this "
                    f"kernel has {have}: --env job installs the pin")
    return said


def notes(step_plans: Mapping[str, Plan]) -> list[str]:
    """What the panel says about the steps' environments, each thing once."""
    return list(dict.fromkeys(line for p in step_plans.values() for line in p.notes()))


def build_all(
    step_plans: Mapping[str, Plan], *, progress: Callable[[str, str], None],
    limit: int = DEFAULT_CACHE_LIMIT,
) -> dict[str, Path | None]:
    """Every step's environment layer, before the first step starts (the run never starts
    half-prepared). ``progress(step, text)`` for the step's row."""
    return {
        name: environment_layer(
            layout, progress=lambda text, name=name: progress(name, text), limit=limit
        )
        for name, layout in step_plans.items()
    }


# -- what a failed step could not import ------------------------------------------------------

MISSING_MODULE = re.compile(r"\bModuleNotFoundError: No module named '([^']+)'")
# distributions imported by another name, for those not installed here to read it from
IMPORT_NAMES = {
    "scikit-learn": "sklearn", "scikit-image": "skimage", "pillow": "PIL", "pyyaml": "yaml",
    "opencv-python": "cv2", "opencv-python-headless": "cv2", "opencv-contrib-python": "cv2",
    "beautifulsoup4": "bs4", "python-dateutil": "dateutil", "pyjwt": "jwt",
    "python-dotenv": "dotenv", "attrs": "attr", "pycryptodome": "Crypto",
    "protobuf": "google", "faiss-cpu": "faiss", "faiss-gpu": "faiss",
}


def missing_module(lines: Iterable[str]) -> str | None:
    """The module a failed step could not import: the last
    ``ModuleNotFoundError: No module named 'X'`` of its output, or None."""
    found = None
    for line in lines:
        match = MISSING_MODULE.search(line)
        if match:
            found = match.group(1)
    return found


def missing_module_hint(
    module: str, declared: Declared | None, *, env: str, layer: Path | None = None
) -> str:
    """What a failed step's row says about ``module`` it could not import: which of the job's
    environments declared it and why it is not here, or that none did. ``layer``: the step's
    environment layer, whose distributions say which modules they hold. For
    ``Declared("environment 'train'", conda=("lightgbm",), file="conda.yaml")``:
    ``lightgbm is declared by the job's environment 'train' (conda.yaml) but did not install:
    lightgbm is a conda package, ...``.
    """
    top = module.split(".")[0]
    if declared is not None and declared.unknown:
        return (f"{module} may come with the job's {declared.source}, whose packages are "
                f"unknown here ({declared.unknown}): pip install it in the kernel")
    entry = _declaring(top, declared, layer) if declared is not None else None
    if declared is None or entry is None:
        return _undeclared(module, declared, env)
    where = f"the job's {declared.source}" + (f" ({declared.file})" if declared.file else "")
    kind, text = entry
    if kind == "marker":
        why = f"its marker excludes this machine ({text})"
    elif kind == "conda":
        why = (f"{text} is a conda package, and conda packages are not installed here: add it "
               "to the pip: section, or pip install it in the kernel")
    elif GPU_ONLY.match(_name_of(text)) or "+cu" in text:
        why = f"{text} is GPU-only, which is not installed here: it runs on Azure ML's GPU image"
    elif env == "kernel":
        return (f"{module} is declared by {where}, but --env kernel runs the job with the "
                f"kernel's packages, which lack it: --env job installs it")
    else:  # in the layer, or the kernel's: the step's Python is another one
        return (f"{module} is declared by {where} ({text}) and installed in the job's layer, "
                "but the step's Python did not see it: does its command start another Python "
                "than python or python3?")
    return f"{module} is declared by {where} but did not install: {why}"


def _declaring(top: str, declared: Declared, layer: Path | None) -> tuple[str, str] | None:
    """The entry of ``declared`` whose distribution holds the module ``top``: (``pip``,
    ``conda`` or ``marker`` (its marker left it out), the entry as written)."""
    from packaging.markers import default_environment
    from packaging.requirements import InvalidRequirement, Requirement

    holds = _modules_of_distributions(layer)
    for line in declared.pip:
        line = line.strip()
        if not line or line.startswith(("#", "-")):
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        if _holds(normalized(requirement.name), top, holds):
            excluded = requirement.marker and not requirement.marker.evaluate(
                default_environment())
            return ("marker" if excluded else "pip", line)
    for package in declared.conda:
        if _holds(_conda_name(package), top, holds):
            return ("conda", package)
    return None


def _holds(distribution: str, top: str, holds: Mapping[str, set[str]]) -> bool:
    """Whether ``distribution`` (normalized) is imported as ``top``: by its files where it is
    installed, else by its name (``cupy-cuda12x`` -> ``cupy``, ``python-dateutil`` ->
    ``dateutil``)."""
    if top in holds.get(distribution, ()) or IMPORT_NAMES.get(distribution) == top:
        return True
    bare = re.sub(r"-(cuda|cu)\d+x?$", "", distribution)
    bare = re.sub(r"^(python|py)-", "", bare)
    return top.lower() in {distribution.replace("-", "_"), bare.replace("-", "_")}


def _modules_of_distributions(layer: Path | None) -> dict[str, set[str]]:
    """Normalized distribution name -> its top-level modules, for the layer's and the
    kernel's distributions, as ``importlib.metadata.packages_distributions()`` reads them."""
    paths = [*([str(layer / "site-packages")] if layer else []), *kernel_site_dirs()]
    found: dict[str, set[str]] = {}
    for dist in importlib.metadata.distributions(path=paths):
        name = normalized(dist.metadata["Name"] or "")
        tops = set((dist.read_text("top_level.txt") or "").split())
        if not tops:  # inferred from its files, as packages_distributions() does
            tops = {file.parts[0].split(".")[0] for file in dist.files or ()
                    if len(file.parts) > 1 or file.suffix == ".py"}
        found.setdefault(name, set()).update(tops)
    return found


def _undeclared(module: str, declared: Declared | None, env: str) -> str:
    """No environment of the job declares ``module``: where to add it."""
    if declared is not None and declared.file:
        where = declared.file
    elif declared is not None:
        where = f"the job's {declared.source}"
    else:
        where = "the job's Environment (its conda file or pip requirements)"
    if env == "kernel":
        return (f"no environment of this job declares {module}, and the kernel lacks it: "
                f"add it to {where}, or pip install it in the kernel")
    with contextlib.suppress(ImportError, ValueError):
        if importlib.util.find_spec(module.split(".")[0]) is not None:
            return (f"no environment of this job declares {module}: add it to {where}, or "
                    "--env kernel to use the kernel's packages")
    return f"no environment of this job declares {module}: add it to {where}"


# -- the environment layer: built once, cached ------------------------------------------------


def layers_folder() -> Path:
    return cache_root() / LAYERS


def layer_key(needed: Iterable[str], index_options: Iterable[str]) -> str:
    """The environment's content and the kernel's packages: a change to either builds anew."""
    listing = sorted(
        name for d in kernel_site_dirs() for name in os.listdir(d) if name.endswith(".dist-info")
    )
    material = json.dumps([
        sys.version, os.path.realpath(sys._base_executable), sorted(needed),
        list(index_options), listing,
    ])
    return hashlib.sha256(material.encode()).hexdigest()[:20]


def environment_layer(
    layout: Plan, *, progress: Callable[[str], None] = lambda said: None,
    limit: int = DEFAULT_CACHE_LIMIT,
) -> Path | None:
    """The folder of packages the job's environment adds (None: it adds nothing), built with
    uv on first use. ``progress`` hears what the panel should show while it builds.

    Raises ``DebugInputError`` (one line naming the package, or the index) when it cannot be
    built; nothing half-built is left.
    """
    if not layout.needed:
        return None
    folder = layers_folder() / layer_key(layout.needed, layout.index_options)
    if (folder / COMPLETE).is_file():
        os.utime(folder / COMPLETE)  # the cache limit removes the least recently used first
        return folder
    count = len(layout.needed)
    progress(f"preparing the job's environment: {count} package{'s' if count != 1 else ''}")
    layers_folder().mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=".building-", dir=layers_folder()))
    try:
        _build(layout, building)
        (building / COMPLETE).write_text(json.dumps({
            "source": layout.declared.source, "packages": layout.needed,
        }))
        if (folder / COMPLETE).is_file():  # another session built the same meanwhile: use it
            return folder
        shutil.rmtree(folder, ignore_errors=True)  # what a build cut short left
        building.rename(folder)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    keep_within(limit, keep=folder)
    return folder


def _uv(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        from uv import find_uv_bin
    except ImportError:
        return subprocess.CompletedProcess(["uv"], 1, "", "No module named uv")
    return subprocess.run(
        [find_uv_bin(), *args], capture_output=True, text=True, stdin=subprocess.DEVNULL,
    )


def _build(layout: Plan, folder: Path) -> None:
    """Resolve the needed packages over the kernel's (its versions preferred), then install
    only what the kernel lacks or has at another version into ``folder``."""
    kernel = kernel_packages()
    wanted = folder / "requirements.in"
    wanted.write_text("\n".join(layout.needed) + "\n")
    declared_names = {_name_of(line) for line in layout.needed}
    constraints = folder / "kernel.txt"
    constraints.write_text("".join(
        f"{name}=={version}\n" for name, version in sorted(kernel.items())
        if name not in declared_names and "+" not in version
    ))
    python = os.path.realpath(sys._base_executable)
    common = ["--python", python, "--quiet", *layout.index_options]
    resolved = _uv("pip", "compile", str(wanted), "-c", str(constraints), "--no-header",
                   "--no-annotate", *common)
    if resolved.returncode != 0:  # the job wants what the kernel's versions exclude
        resolved = _uv("pip", "compile", str(wanted), "--no-header", "--no-annotate", *common)
    if resolved.returncode != 0:
        raise DebugInputError(_uv_failure(layout, resolved))
    pins = [line.strip() for line in resolved.stdout.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]
    fresh = [pin for pin in pins if kernel.get(_name_of(pin)) != _version_of(pin)]
    if not fresh:
        return
    (folder / "requirements.txt").write_text("\n".join(fresh) + "\n")
    installed = _uv("pip", "install", "--target", str(folder / "site-packages"), "--no-deps",
                    "-r", str(folder / "requirements.txt"), *common)
    if installed.returncode != 0:
        raise DebugInputError(_uv_failure(layout, installed))


def _name_of(line: str) -> str:
    return normalized(re.split(r"[\s=<>!~;\[@(]", line.strip(), maxsplit=1)[0])


def _version_of(pin: str) -> str:
    return pin.split("==", 1)[1].split(";")[0].strip() if "==" in pin else ""


def _uv_failure(layout: Plan, run: subprocess.CompletedProcess[str]) -> str:
    if "No module named uv" in run.stderr:
        return ("the job's environment is built with uv, which the kernel's environment lacks: "
                "pip install uv, or run with --env kernel")
    said = [line.strip() for line in (run.stderr + run.stdout).splitlines() if line.strip()]
    errors = [re.sub(r"^(error:|×)\s*", "", line) for line in said
              if line.startswith(("error:", "×"))]
    causes = [line.removeprefix("cause:").strip() for line in said if line.startswith("cause:")]
    # uv's first error says what failed, its last cause why
    reason = ": ".join([*errors[:1], *causes[-1:]]) or (said[-1] if said else
                                                        f"uv exited with {run.returncode}")
    return (f"cannot prepare the job's environment ({layout.declared.source}: "
            f"{', '.join(layout.needed)}): {reason[:300]}")


# -- the cache --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CachedLayer:
    folder: Path
    source: str
    packages: list[str]
    size: int
    last_used: float


def cached_layers() -> list[CachedLayer]:
    """Every finished environment layer, least recently used first."""
    found = []
    folder = layers_folder()
    for layer in folder.iterdir() if folder.is_dir() else []:
        marker = layer / COMPLETE
        if not marker.is_file():
            continue
        try:
            content = json.loads(marker.read_text())
        except (OSError, ValueError):
            content = {}
        found.append(CachedLayer(
            layer, str(content.get("source", "")), list(content.get("packages", [])),
            _size(layer), marker.stat().st_mtime,
        ))
    return sorted(found, key=lambda layer: layer.last_used)


def _size(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                total += os.stat(path).st_size
    return total


def keep_within(limit: int, keep: Path | None = None) -> list[Path]:
    """Remove the least recently used layers until the cache holds at most ``limit`` bytes;
    ``keep`` (the layer just used) stays. Returns what was removed."""
    layers = cached_layers()
    total = sum(layer.size for layer in layers)
    removed = []
    for layer in layers:
        if total <= limit:
            break
        if layer.folder == keep:
            continue
        shutil.rmtree(layer.folder, ignore_errors=True)
        total -= layer.size
        removed.append(layer.folder)
    return removed


def clear() -> int:
    """Remove every environment layer (and any left half-built); returns the bytes freed."""
    folder = layers_folder()
    if not folder.is_dir():
        return 0
    freed = _size(folder)
    shutil.rmtree(folder, ignore_errors=True)
    return freed


def cache_listing(limit: int) -> str:
    """What ``%aml_debug_cache`` prints: each layer, its size and what it holds."""
    layers = cached_layers()
    total = sum(layer.size for layer in layers)
    lines = [f"job environments in {layers_folder()}: {len(layers)}, {_megabytes(total)} "
             f"of {_megabytes(limit)} (AmlDebugMagics.cache_limit)"]
    for layer in reversed(layers):
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(layer.last_used))
        lines.append(f"  {layer.folder.name}  {_megabytes(layer.size):>9}  used {used}  "
                     f"{layer.source}: {', '.join(layer.packages)}")
    return "\n".join(lines)


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


# -- the job layer: one per process ---------------------------------------------------------


class JobLayer:
    """A private virtual environment of the kernel's base interpreter for one job's process:
    see the module's docstring. ``variables`` is what the process's environment needs."""

    def __init__(self, environment_layer: Path | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="aml_debug_job_env_"))
        base = Path(sys._base_executable)
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        bin_folder = self.root / "bin"
        bin_folder.mkdir()
        for name in ("python", "python3", version):
            (bin_folder / name).symlink_to(os.path.realpath(base))
        for name in ("pip", "pip3", f"pip{sys.version_info.major}.{sys.version_info.minor}"):
            script = bin_folder / name
            script.write_text(f'#!/bin/sh\nexec "{bin_folder / "python"}" -m pip "$@"\n')
            script.chmod(0o700)
        (self.root / "pyvenv.cfg").write_text(
            f"home = {os.path.dirname(os.path.realpath(base))}\n"
            "include-system-site-packages = false\n"
            f"version = {sys.version_info.major}.{sys.version_info.minor}."
            f"{sys.version_info.micro}\n"
        )
        purelib = Path(sysconfig.get_path(
            "purelib", vars={"base": str(self.root), "platbase": str(self.root)}
        ))
        purelib.mkdir(parents=True)
        beneath = [str(environment_layer / "site-packages")] if environment_layer else []
        beneath += kernel_site_dirs()
        # a .pth line starting with "import" runs: addsitedir also reads their own .pth files
        (purelib / "zz_aml_debug_beneath.pth").write_text("".join(
            f"import site; site.addsitedir({d!r})\n" for d in beneath
        ))
        self.python = str(bin_folder / "python")
        self.bin = bin_folder

    def variables(self, environment: Mapping[str, str]) -> dict[str, str]:
        path = environment.get("PATH", os.environ.get("PATH", ""))
        return {
            "PATH": os.pathsep.join(filter(None, [str(self.bin), path])),
            "VIRTUAL_ENV": str(self.root),
        }

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
