"""Interpreters a node may run, each with nothing but debugpy, as an Azure ML environment has it.

The machine's Pythons come from pyenv (``pyenv root``/versions/3.X.*) or ``python3.X`` on PATH.
For each, a virtual environment under ``.node-pythons/3.X`` gets only the node requirement
(``DEBUGPY_REQUIREMENT``, which resolves to debugpy 1.8.21 on 3.8/3.9 and the newest 1.8 on
3.10+); it is made once and reused. A missing interpreter is a skip that names it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aml_debug_magics.targets.environment import DEBUGPY_REQUIREMENT

NODE_VERSIONS = ("3.8", "3.9", "3.10", "3.11", "3.12", "3.13")
VENVS = Path(__file__).resolve().parents[1] / ".node-pythons"


def find_python(version: str) -> str | None:
    """The newest pyenv build of ``version`` (like ``3.8``), else ``python3.8`` on PATH."""
    roots = [os.environ.get("PYENV_ROOT"), str(Path.home() / ".pyenv")]
    if shutil.which("pyenv"):
        found = subprocess.run(["pyenv", "root"], capture_output=True, text=True)
        roots.insert(0, found.stdout.strip())
    for root in filter(None, roots):
        builds = sorted(
            Path(root, "versions").glob(f"{version}.*"),
            key=lambda p: [int(x) if x.isdigit() else 0 for x in p.name.split(".")],
        )
        for build in reversed(builds):
            python = build / "bin" / "python"
            if build.name.count(".") == 2 and python.is_file():
                return str(python)
    return shutil.which(f"python{version}")


def node_python(version: str) -> str:
    """A Python ``version`` with only debugpy installed; skips the test where there is none."""
    base = find_python(version)
    if base is None:
        pytest.skip(f"Python {version} is not on this machine (pyenv install {version})")
    venv = VENVS / version
    python = venv / "bin" / "python"
    if (venv / "ready").is_file():
        return str(python)
    VENVS.mkdir(exist_ok=True)
    with open(VENVS / f"{version}.lock", "w") as lock:  # test processes running side by side
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (venv / "ready").is_file():
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([base, "-m", "venv", str(venv)], check=True, capture_output=True)
            subprocess.run(
                [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                 DEBUGPY_REQUIREMENT],
                check=True, capture_output=True,
            )
            (venv / "ready").write_text(DEBUGPY_REQUIREMENT)
    return str(python)


def installed(python: str) -> set[str]:
    """Distribution names installed in ``python``'s environment."""
    listing = subprocess.run(
        [python, "-I", "-c", "import importlib.metadata as m; "
         "print('\\n'.join(d.metadata['Name'].lower() for d in m.distributions()))"],
        capture_output=True, text=True, check=True,
    )
    return set(listing.stdout.split())


if __name__ == "__main__":  # prepare them all ahead: python tests/node_pythons.py
    for version in NODE_VERSIONS:
        try:
            print(version, node_python(version))
        except pytest.skip.Exception as reason:
            print(version, "skipped:", reason, file=sys.stderr)
