"""SDK v1 steps and runs made debug-ready for the submit: the bootstrap runs the user's script.

In: the StepSpecs of ``sources/sdk_v1.py`` (their ``PythonScriptStep`` or ``ScriptRunConfig``)
and the request. For the submit only, each debugged step runs the bootstrap (its three files
are placed in the step's source folder for the snapshot and removed right after, whatever
happens) with the guide's ``--remote_debug`` flags left out and a copy of its RunConfiguration
that adds debugpy and Docker; the user's step objects are restored after. Nothing in the user's
scripts or folders changes.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from aml_debug_magics.targets.environment import (
    BOOTSTRAP,
    DEBUGPY_REQUIREMENT,
    bootstrap_options,
    shipped_bootstrap,
)

if TYPE_CHECKING:
    from aml_debug_magics.records import DebugRequest, StepSpec

GUIDE_FLAGS = {  # the guide's flags and how many values each takes
    "--remote_debug": 0,
    "--remote_debug_connection_timeout": 1,
    "--remote_debug_client_ip": 1,
    "--remote_debug_port": 1,
}

def debug_runconfig(runconfig: Any) -> tuple[Any, list[str]]:
    """A copy of ``runconfig`` with debugpy and Docker; and notes for the panel.

    Keeps the user's environment and base image (else the SDK's ``DEFAULT_CPU_IMAGE``); uses
    ``DockerConfiguration(use_docker=True)``, not the deprecated ``docker.enabled``.
    """
    from azureml.core import RunConfiguration
    from azureml.core.runconfig import DEFAULT_CPU_IMAGE, DockerConfiguration

    notes = []
    with warnings.catch_warnings():  # the SDK's vendored YAML loader warns on every load
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
        built = copy.deepcopy(runconfig) if runconfig is not None else RunConfiguration()
        environment = built.environment
        if environment.name and not environment.name.endswith("-aml-debug"):
            environment.name = f"{environment.name}-aml-debug"  # never overwrite theirs
            environment.version = None
        python = environment.python
        if python.user_managed_dependencies:
            notes.append("the environment is user-managed: it must have debugpy installed")
        else:
            python.conda_dependencies.add_pip_package(DEBUGPY_REQUIREMENT)
        if not environment.docker.base_image and not environment.docker.base_dockerfile:
            environment.docker.base_image = DEFAULT_CPU_IMAGE
        built.docker = DockerConfiguration(use_docker=True)
    return built, notes


def strip_guide_flags(arguments: list[Any]) -> tuple[list[Any], bool]:
    """``arguments`` without the guide's ``--remote_debug*`` flags (the bootstrap does that job;
    the guide's snippet listens on the client's address and fails with errno 99)."""
    kept, skip, stripped = [], 0, False
    for value in arguments:
        if skip:
            skip -= 1
            continue
        if isinstance(value, str) and value.split("=", 1)[0] in GUIDE_FLAGS:
            stripped = True
            skip = 0 if "=" in value else GUIDE_FLAGS[value]
            continue
        kept.append(value)
    return kept, stripped


@contextlib.contextmanager
def debug_ready(specs: list[StepSpec], request: DebugRequest, notes: list[str]) -> Iterator[None]:
    """The debugged steps' SDK objects made to run the bootstrap, for the submit only."""
    saved: list[tuple[Any, dict[str, Any]]] = []
    try:
        for spec in specs:
            if not spec.debug:
                continue
            sdk = spec.sdk_object
            is_step = hasattr(sdk, "_script_name")
            fields = (
                ("_script_name", "_arguments", "_runconfig", "_allow_reuse")
                if is_step
                else ("script", "arguments", "run_config")
            )
            saved.append((sdk, {f: getattr(sdk, f) for f in fields}))
            script, arguments, runconfig = (getattr(sdk, f) for f in fields[:3])
            arguments, stripped = strip_guide_flags(list(arguments or []))
            if stripped:
                notes.append(f"{spec.name}: the guide's --remote_debug flags were left out")
            built, config_notes = debug_runconfig(runconfig)
            notes.extend(f"{spec.name}: {n}" for n in config_notes)
            values = [BOOTSTRAP, [*bootstrap_options(request), "--", script, *arguments], built]
            for field, value in zip(fields, values, strict=False):
                setattr(sdk, field, value)
            if is_step:
                if saved[-1][1]["_allow_reuse"]:
                    notes.append(f"{spec.name}: reuse is off, so the step runs and can be attached")
                sdk._allow_reuse = False
        with shipped_bootstrap([s.source_directory for s in specs if s.debug]):
            yield
    finally:
        for sdk, fields in saved:
            for field, value in fields.items():
                setattr(sdk, field, value)
