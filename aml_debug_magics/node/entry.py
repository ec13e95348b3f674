"""The entry script the inference server loads in place of the user's ``score.py``.

``score.py`` is not edited. This file starts debugpy inside the server's worker process (behind
the gate, on ``AML_DEBUG_LISTEN``, and only when that is set at run time), loads ``score.py``
as the server would, and hands it over as its ``driver_module``: the server then calls
score.py's own ``run()`` (decorators intact), and ``init()`` through here, which first waits
for a debugger when ``AML_DEBUG_WAIT_IN_INIT=1``. Standard library and debugpy only: it is
shipped into images as ``aml_debug_entry.py``.
"""

import importlib.util
import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
try:
    from aml_debug_magics.node import bootstrap
except ImportError:  # shipped next to aml_debug_bootstrap.py
    sys.path.insert(0, _here)
    import aml_debug_bootstrap as bootstrap  # type: ignore[no-redef]

_script = os.path.join(_here, os.environ["AML_DEBUG_USER_SCRIPT"])  # relative: to this file
_listen = os.environ.get("AML_DEBUG_LISTEN")  # given at run time only, never baked in an image
_wait_in_init = _listen is not None and os.environ.get("AML_DEBUG_WAIT_IN_INIT") == "1"
if _listen:
    _wait_for_debugger = bootstrap.debug_in_this_process(
        _listen,
        _script,
        float(os.environ.get("AML_DEBUG_TIMEOUT", "300")) if _wait_in_init else None,
        just_my_code=os.environ.get("AML_DEBUG_JUST_MY_CODE", "1") == "1",
        # the folder the scoring code sits in, for the path mapping: the app root in an image
        source_root=os.environ.get(bootstrap.SOURCE_ROOT_VARIABLE)
        or os.environ.get("AML_APP_ROOT") or _here,
    )
sys.path.insert(0, os.path.dirname(_script))
_spec = importlib.util.spec_from_file_location("score", _script)
driver_module = importlib.util.module_from_spec(_spec)
sys.modules["score"] = driver_module
_spec.loader.exec_module(driver_module)
run = driver_module.run


def init():
    if _wait_in_init:
        _wait_for_debugger()
    return driver_module.init()
