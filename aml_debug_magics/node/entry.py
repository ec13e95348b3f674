"""The entry script the inference server loads in place of the user's ``score.py``.

``score.py`` is not edited. This file starts debugpy inside the server's worker process (behind
the gate, on ``AML_DEBUG_LISTEN``, and only when that is set at run time: ``worker_debugger.py``,
which may have started it already when the worker was forked), loads ``score.py``
as the server would, and hands it over as its ``driver_module``: the server then calls
score.py's own ``run()`` (decorators intact) through one call that tells its failures
(``worker_debugger.run_with_failures_told``), and ``init()`` through here, which first waits
for a debugger when ``AML_DEBUG_WAIT_IN_INIT=1``. Standard library and debugpy only: it is
shipped into images as ``aml_debug_entry.py``.
"""

import importlib.util
import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
try:
    from aml_debug_magics.node import worker_debugger
except ImportError:  # shipped next to aml_debug_bootstrap.py
    sys.path.insert(0, _here)
    import aml_debug_worker_debugger as worker_debugger  # type: ignore[no-redef]

_script = worker_debugger.user_script()
_wait_for_debugger = worker_debugger.debugger_of_this_worker()  # None: no AML_DEBUG_LISTEN
_wait_in_init = _wait_for_debugger is not None and os.environ.get("AML_DEBUG_WAIT_IN_INIT") == "1"
sys.path.insert(0, os.path.dirname(_script))
_spec = importlib.util.spec_from_file_location("score", _script)
driver_module = importlib.util.module_from_spec(_spec)
sys.modules["score"] = driver_module
_spec.loader.exec_module(driver_module)
driver_module.run = worker_debugger.run_with_failures_told(driver_module.run)
run = driver_module.run


def init():
    if _wait_in_init:
        _wait_for_debugger()
    worker_debugger.trace_this_thread()  # a debugger that came since the worker started
    return driver_module.init()
