"""An SDK v2 online deployment (``ManagedOnlineDeployment``, ``KubernetesOnlineDeployment``), read
into what ``%aml_debug_deploy`` serves.

In: the user's deployment object (azure.ai.ml.entities): ``code_configuration`` (a code folder and
its ``scoring_script``), ``model`` (a local path, a ``Model(path=...)``, or a registered model
``azureml:NAME:VERSION``), ``environment`` (its image and conda file), ``environment_variables``.
Out: a :class:`~aml_debug_magics.deploy.local.Deployment`, served by the same targets as
``--entry-script``, and the lines that say what was left to Azure ML.

``AZUREML_MODEL_DIR`` is laid out as on Azure ML: ``azureml-models/NAME/VERSION/`` holding the
model under its own name (a folder ``model/`` stays ``model/``, where the samples' ``score.py``
opens ``AZUREML_MODEL_DIR/model/...``); a local model is linked there, never copied. A registered
model is downloaded once, through the MLClient (``ml_client.models.download``), into the same cache
as the local target's data, and reused by the next session. No azure.ai.ml import: the object is
read by its attributes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aml_debug_magics.deploy.local import OnlineDeployment
from aml_debug_magics.errors import DebugInputError
from aml_debug_magics.records import ExternalInput
from aml_debug_magics.sources.inputs import cache_root, fetch

if TYPE_CHECKING:
    from aml_debug_magics.deploy.local import Deployment

DEPLOYMENT_CLASSES = ("ManagedOnlineDeployment", "KubernetesOnlineDeployment")
REGISTERED = "azureml:"


def is_online_deployment(value: Any) -> bool:
    """An azure.ai.ml online deployment, told by its class (azure.ai.ml is never imported)."""
    return any(cls.__name__ in DEPLOYMENT_CLASSES for cls in type(value).__mro__)


def read_online_deployment(
    deployment: Any,
    variable: str,
    *,
    base: Path,
    ml_client: Callable[[], Any],
    progress: Callable[[str], None] = print,
) -> tuple[Path, Path, Path | None, dict[str, str], OnlineDeployment]:
    """The scoring script, its code folder, ``AZUREML_MODEL_DIR``, the deployment's environment
    variables and what else it says. ``ml_client()`` is asked for only to download a registered
    model. One line naming what to fix when something cannot be served here."""
    kind = next(c.__name__ for c in type(deployment).__mro__ if c.__name__ in DEPLOYMENT_CLASSES)
    own_base = Path(getattr(deployment, "base_path", None) or base)
    code = getattr(deployment, "code_configuration", None)
    if code is None or not getattr(code, "scoring_script", None):
        raise DebugInputError(
            f"{variable} has no code_configuration with a scoring_script: only a deployment "
            "with a score.py (init() and run()) can be debugged (an MLflow model's has none)"
        )
    folder = getattr(code, "code", None)
    if not isinstance(folder, str | Path) or str(folder).startswith(REGISTERED):
        raise DebugInputError(
            f"{variable}.code_configuration.code is {folder!r}, registered in the workspace: "
            "give the local folder of the code (CodeConfiguration(code='onlinescoring/', ...))"
        )
    source_dir = (own_base / folder).resolve()
    if not source_dir.is_dir():
        raise DebugInputError(f"{variable}.code_configuration.code: no such folder ({source_dir})")
    script = (source_dir / code.scoring_script).resolve()
    model = getattr(deployment, "model", None)
    name, version, model_path = _model_identity(model, own_base, variable)
    if model_path is not None:
        model_dir = _laid_out(model_path, name, version)
    elif name is not None:
        model_dir = _downloaded(name, version, ml_client, progress)
    else:
        model_dir = None
    variables = {str(k): str(v) for k, v in (getattr(deployment, "environment_variables", None)
                                             or {}).items()}
    environment = getattr(deployment, "environment", None)
    online = OnlineDeployment(
        kind=kind, name=getattr(deployment, "name", None), model_name=name, model_version=version,
        model_path=model_path,
        image=None if isinstance(environment, str) else getattr(environment, "image", None),
        conda_file=None if isinstance(environment, str) else _conda(environment),
    )
    return script, source_dir, model_dir, variables, online


def environment_note(deployment: Any, variable: str, target: str) -> str | None:
    """What the local target leaves out of the deployment's environment, in one line."""
    environment = getattr(deployment, "environment", None)
    if environment is None or target != "local":
        return None
    if isinstance(environment, str):
        what = f"the registered environment {environment}"
    else:
        parts = [f"image {environment.image}" if getattr(environment, "image", None) else "",
                 "its conda file" if getattr(environment, "conda_file", None) else ""]
        what = "the environment's " + " and ".join(p for p in parts if p) if any(parts) else ""
    if not what:
        return None
    return (f"{variable}: serving with this kernel's Python and its inference server, not "
            f"{what} (--target docker runs the image)")


def _model_identity(
    model: Any, base: Path, variable: str
) -> tuple[str | None, str | None, Path | None]:
    """(name, version, local path): a local path wins; else a registered model's name and
    version; all None without a model."""
    if model is None:
        return None, None, None
    if isinstance(model, str | Path):
        text = str(model)
        if text.startswith(REGISTERED):
            return _registered(text, variable)
        return _local_model(base / text, "model", "1", variable)
    path = getattr(model, "path", None)
    name, version = getattr(model, "name", None), getattr(model, "version", None)
    if path and not str(path).startswith(REGISTERED) and "://" not in str(path):
        return _local_model(base / str(path), name or "model", str(version or "1"), variable)
    if name:
        if not version:
            raise DebugInputError(f"{variable}.model {name}: give its version (Model(name=..., "
                                  "version=...)), to download the one Azure ML would serve")
        return name, str(version), None
    if path:
        return _registered(str(path), variable)
    raise DebugInputError(f"{variable}.model has neither a path nor a name and version")


def _registered(text: str, variable: str) -> tuple[str, str, None]:
    parts = text[len(REGISTERED):].split(":")
    if len(parts) != 2 or not all(parts) or "/" in text:
        raise DebugInputError(
            f"{variable}.model {text}: give it as azureml:NAME:VERSION, or a local path"
        )
    return parts[0], parts[1], None


def _local_model(
    path: Path, name: str, version: str, variable: str
) -> tuple[str, str, Path]:
    path = path.resolve()
    if not path.exists():
        raise DebugInputError(f"{variable}.model: no such file or folder ({path})")
    return name, version, path


def _laid_out(model_path: Path, name: str, version: str) -> Path:
    """``azureml-models/NAME/VERSION/`` in the cache, holding a link to the model under its own
    name; the folder ``AZUREML_MODEL_DIR`` points to."""
    digest = hashlib.sha256(str(model_path).encode()).hexdigest()[:16]
    folder = cache_root() / "models" / digest / "azureml-models" / name / version
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / model_path.name
    if link.is_symlink() and link.resolve() != model_path:
        link.unlink()
    if not link.is_symlink():
        link.symlink_to(model_path, target_is_directory=model_path.is_dir())
    return folder


class _ModelDownload:
    """``fetch``'s workspace for a registered model: ``ml_client.models.download``, which writes
    ``download_path/NAME/`` holding the model under its own name."""

    def __init__(self, ml_client: Any) -> None:
        self.ml_client = ml_client
        self.resource_id = "/".join(
            str(getattr(ml_client, part, "") or "")
            for part in ("subscription_id", "resource_group_name", "workspace_name")
        )

    def download(self, data: ExternalInput, folder: Path) -> Path:
        name, version = data.source
        self.ml_client.models.download(name=name, version=version, download_path=str(folder))
        return folder / name


def _downloaded(
    name: str, version: str, ml_client: Callable[[], Any], progress: Callable[[str], None]
) -> Path:
    client = ml_client()
    model = ExternalInput(name=name, kind="model", points_to=f"azureml:{name}:{version}",
                          mode="download", source=(name, version))
    model_dir = fetch(model, _ModelDownload(getattr(client, "ml_client", client)),
                      progress=progress)
    return model_dir


def _conda(environment: Any) -> dict | None:
    conda = getattr(environment, "conda_file", None)
    return conda if isinstance(conda, dict) else None


def make_online_deployment(
    deployment: Any,
    variable: str,
    *,
    scoring_port: int,
    wait_in_init: bool,
    sample_request: str | None,
    image: str | None,
    target: str,
    base: Path,
    ml_client: Callable[[], Any],
    progress: Callable[[str], None] = print,
) -> Deployment:
    """``%aml_debug_deploy VARIABLE``: the deployment object checked and read, as
    ``make_deployment`` checks ``--entry-script``; one line naming what to fix."""
    import dataclasses

    from aml_debug_magics.deploy import make_deployment

    if target == "azureml":
        raise DebugInputError(
            f"{variable} is an SDK v2 deployment: debug it with --target local or docker (on "
            "Azure ML it is served by ml_client.online_deployments.begin_create_or_update)"
        )
    script, source_dir, model_dir, variables, online = read_online_deployment(
        deployment, variable, base=base, ml_client=ml_client, progress=progress
    )
    checked = make_deployment(
        entry_script=str(script), source_dir=str(source_dir),
        model_dir=str(model_dir) if model_dir else None, scoring_port=scoring_port,
        wait_in_init=wait_in_init, sample_request=sample_request,
        image=image or online.image, target=target, models=[], base=base,
    )
    note = environment_note(deployment, variable, target)
    if note:
        progress(note)
    return dataclasses.replace(checked, environment_variables=variables, online=online)
