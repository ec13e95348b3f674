"""An mldesigner ``@command_component`` node's command, made a Python invocation to debug.

In: an SDK v2 node's command as ``@mldesigner.command_component`` writes it (``mldesigner
execute --source components.py --name train_model --inputs a='${{inputs.a}}' --outputs
out='${{outputs.out}}'``) and the target it runs on. Out: the same command with the
``mldesigner`` console script run by ``python`` (so the debugged interpreter is the one that
runs the user's function: its body stops at breakpoints in ``components.py``), and the source
file the row points at. The console script is what ``mldesigner`` is on the node: mldesigner
itself imports the source file, converts each input as the function's annotations say and calls
the function, as on Azure ML. On Azure ML the script is found on the node's PATH
(``"$(command -v mldesigner)"``); on this machine, next to the kernel's interpreter or on PATH,
and one line says so when mldesigner is not installed.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import sys
from pathlib import Path

from aml_debug_magics.errors import DebugInputError
from aml_debug_magics.sources.shell_line import read_line

NOT_INSTALLED = "mldesigner is not installed: pip install mldesigner"
_ON_THE_NODE = '"$(command -v mldesigner || echo mldesigner)"'


def is_mldesigner_command(text: str) -> bool:
    """Whether the line runs ``mldesigner execute`` (and no Python of its own)."""
    words = text.split()
    return len(words) > 1 and words[0] == "mldesigner" and words[1] == "execute" and not (
        read_line(text).calls
    )


def source_of(text: str) -> str:
    """The ``--source`` file of an ``mldesigner execute`` line, as written."""
    words = shlex.split(text)
    for index, word in enumerate(words):
        if word == "--source" and index + 1 < len(words):
            return words[index + 1]
        if word.startswith("--source="):
            return word.partition("=")[2]
    raise DebugInputError(f"`{text}` names no --source file for mldesigner execute")


def as_python(text: str, target: str) -> str:
    """``text`` with its leading ``mldesigner`` word run as a script by ``python``."""
    script = _ON_THE_NODE if target != "local" else shlex.quote(str(local_console_script()))
    start = len(text) - len(text.lstrip())
    return f"{text[:start]}python {script}{text[start + len('mldesigner'):]}"


def local_console_script() -> Path:
    """The ``mldesigner`` console script of the interpreter the local target runs; one line
    when mldesigner is not installed for it."""
    if importlib.util.find_spec("mldesigner") is None:
        raise DebugInputError(NOT_INSTALLED)
    beside = Path(sys.executable).parent
    found = shutil.which("mldesigner", path=os.pathsep.join([str(beside),
                                                             os.environ.get("PATH", "")]))
    if found is None:
        raise DebugInputError(f"mldesigner is installed but its `mldesigner` command is "
                              f"neither in {beside} nor on PATH: pip install --force-reinstall "
                              "mldesigner")
    return Path(found)
