"""Running the user's script (or ``-m`` module) exactly as plain ``python`` would.

In: the script or module name and its arguments. Out: its exit status; ``SystemExit`` passes
through, an uncaught exception is reported to the debugger (when one is attached) and printed
with a traceback that starts in the user's code, then handed to the post-mortem (when nobody
was attached and the bootstrap gave one). Standard library only: this file travels into
a run's snapshot as ``aml_debug_script.py``.
"""

from __future__ import annotations

import builtins
import importlib.machinery
import io
import os
import runpy
import signal
import sys
import types
from collections.abc import Callable
from typing import TYPE_CHECKING

try:
    from aml_debug_magics.node.options import Options, module_file
except ImportError:  # shipped into a run's snapshot beside this file
    from aml_debug_options import Options, module_file  # type: ignore[no-redef]

if TYPE_CHECKING:
    from aml_debug_magics.node import debugger as debugger_module


# set by the bootstrap while it runs a script with a post-mortem: a runner in the script (the
# parallel runner, which catches what run() raises to fail its mini-batch) hands it the first
# exception it catches, and the process goes on once the post-mortem's window is over
caught_failure: Callable[[BaseException], None] | None = None


def _execute_as_main(path: str) -> None:
    """What ``python path`` does: a fresh ``__main__`` that stays (pickling and multiprocessing
    find it), ``__file__`` absolute, ``sys.argv[0]`` as typed. ``runpy.run_path`` would rewrite
    ``sys.argv[0]`` and put the bootstrap back as ``__main__`` afterwards."""
    main = types.ModuleType("__main__")
    main.__file__ = path
    main.__cached__ = None
    main.__loader__ = importlib.machinery.SourceFileLoader("__main__", path)
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    with io.open_code(path) as source:
        code = compile(source.read(), path, "exec", dont_inherit=True)
    exec(code, main.__dict__)


def script_path(options: Options) -> str:
    """The file that runs, absolute: the script, or the file of ``-m``'s module."""
    if options.module:
        return os.path.abspath(module_file(options.script) or options.script)
    return os.path.abspath(options.script)


def run_script(
    script: str,
    args: list[str],
    debugger: debugger_module.Debugger | None = None,
    *,
    module: bool = False,
    post_mortem: Callable[[BaseException], None] | None = None,
) -> int:
    """Run ``script`` as ``__main__`` with ``sys.argv = [script, *args]``; return its exit status.
    With ``module``, run the module named ``script`` as ``python -m script args`` would.

    ``SystemExit`` passes through untouched. An uncaught exception goes to ``sys.excepthook``
    with a traceback that starts in the user's script, as under plain python, and gives 1.
    With no debugger attached at that moment, ``post_mortem`` gets it next (not a
    ``KeyboardInterrupt``: a cancel ends the process at once); its frames are still alive.
    """
    path = os.path.abspath(module_file(script) or script) if module else os.path.abspath(script)
    sys.argv = [script, *args]
    sys.path[0] = os.getcwd() if module else os.path.dirname(path)
    try:
        if module:  # what python -m runs: __main__ stays, sys.argv[0] becomes the file
            runpy._run_module_as_main(script, alter_argv=True)  # type: ignore[attr-defined]
        else:
            _execute_as_main(path)
    except SystemExit:
        raise
    except BaseException as error:
        attached = debugger is not None and debugger.client_connected()
        if debugger is not None:
            debugger.report_uncaught(error)
        traceback_tail = error.__traceback__
        while traceback_tail is not None and traceback_tail.tb_frame.f_code.co_filename != path:
            traceback_tail = traceback_tail.tb_next
        error.with_traceback(traceback_tail or error.__traceback__)
        sys.excepthook(type(error), error, error.__traceback__)
        if post_mortem is not None and not attached and not isinstance(error, KeyboardInterrupt):
            sys.stderr.flush()  # the traceback is in the log before the wait
            post_mortem(error)
        if isinstance(error, KeyboardInterrupt):
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        return 1
    return 0
