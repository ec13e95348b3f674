"""debugpy in the inference server's worker, started from what ``entry.py`` is given at run time.

In: ``AML_DEBUG_LISTEN`` (no debugger without it: a deployed image never opens a port),
``AML_DEBUG_USER_SCRIPT`` (relative to this file's folder, or absolute), ``AML_DEBUG_TIMEOUT``,
``AML_DEBUG_WAIT_IN_INIT``, ``AML_DEBUG_JUST_MY_CODE``, ``AML_DEBUG_FOLLOW_CHILDREN`` and the
source root. Out: :func:`debugger_of_this_worker`, the ``wait`` of
``bootstrap.debug_in_this_process`` (None without a listen address), which ``entry.py`` calls
before the scoring script's ``init()``; :func:`run_with_failures_told`, the scoring script's
``run()`` as the server calls it, whose failures are told (a stop in a debugger, or the
``failed`` and snapshot lines in the server's output) before the server answers them with a 500.

debugpy answers debuggers from the worker itself (with debugpy 1.8.22 or later), without the
adapter process it would otherwise spawn and wait for, unless ``AML_DEBUG_FOLLOW_CHILDREN=1``
asks for processes the scoring script starts to be debugged too. The port is bound and announced
where the worker is forked (:func:`start_in_each_worker`, called by ``deploy/serve.py`` in the
server's main process), while the worker still imports the server. debugpy itself is imported
and listens only once a debugger comes to the port (the gate holds it meanwhile), so a worker
nobody debugs serves at the server's own speed; with ``AML_DEBUG_WAIT_IN_INIT=1`` it starts at
once, beside the server's imports. Either way the start runs on a thread of its own and traces
only that thread; the thread that calls ``init()`` or ``run()`` puts itself and every other
thread under the debugger when it finds debugpy started (:func:`trace_this_thread`, one check
per call). Standard library and debugpy only: it is shipped into images as
``aml_debug_worker_debugger.py``, where it starts when ``entry.py`` asks.
"""

import functools
import os
import sys
import threading

_here = os.path.dirname(os.path.abspath(__file__))
try:
    from aml_debug_magics.node import bootstrap
except ImportError:  # shipped next to aml_debug_bootstrap.py
    sys.path.insert(0, _here)
    import aml_debug_bootstrap as bootstrap  # type: ignore[no-redef]

FOLLOW_CHILDREN = "AML_DEBUG_FOLLOW_CHILDREN"  # "1": debug what score.py starts, slower start
_starter = None  # the thread that starts it in a forked worker, if one was forked
_outcome = []  # [wait] or [the error the start raised], once started
_telling = threading.Lock()  # one failure's lines at a time, in one piece in the output


def user_script() -> str:
    return os.path.join(_here, os.environ["AML_DEBUG_USER_SCRIPT"])


def _start(beside_the_worker: bool = False) -> None:
    listen = os.environ["AML_DEBUG_LISTEN"]
    wait_in_init = os.environ.get("AML_DEBUG_WAIT_IN_INIT") == "1"
    try:
        wait = bootstrap.debug_in_this_process(
            listen,
            user_script(),
            float(os.environ.get("AML_DEBUG_TIMEOUT", "300")) if wait_in_init else None,
            just_my_code=os.environ.get("AML_DEBUG_JUST_MY_CODE", "1") == "1",
            # the folder the scoring code sits in, for the path mapping: the app root in an image
            source_root=os.environ.get(bootstrap.SOURCE_ROOT_VARIABLE)
            or os.environ.get("AML_APP_ROOT") or _here,
            # debugpy answers from the worker, which then serves sooner, unless processes the
            # scoring script starts are to be debugged too
            follow_children=os.environ.get(FOLLOW_CHILDREN) == "1",
            # beside the worker's imports, which tracing would slow
            this_thread_only=beside_the_worker,
            # without a wait in init(), debugpy starts once a debugger comes to the port
            on_demand=True,
        )
        _outcome.append(wait)
    except BaseException as error:  # raised again in the worker's main thread
        _outcome.append(error)


def start_in_each_worker() -> None:
    """In the server's main process: start the debugger in every worker it forks, as soon as
    it is forked (not in processes a worker forks in turn)."""
    if not os.environ.get("AML_DEBUG_LISTEN"):
        return
    server = os.getpid()

    def in_the_worker() -> None:
        global _starter
        if os.getppid() == server and _starter is None:
            _starter = threading.Thread(target=_start, args=(True,), name="aml-debug-start",
                                        daemon=True)
            _starter.start()

    os.register_at_fork(after_in_child=in_the_worker)


def debugger_of_this_worker():  # type: ignore[no-untyped-def]
    """The wait for a debugger (call it before ``init()`` to hold it there), once debugpy
    listens; None when ``AML_DEBUG_LISTEN`` is not set."""
    if not os.environ.get("AML_DEBUG_LISTEN"):
        return None
    if _starter is None:
        _start()
    else:
        _starter.join()
    outcome = _outcome[0]
    if isinstance(outcome, BaseException):
        raise outcome
    trace_this_thread()  # started beside, or on demand already: now this thread and all others
    return outcome


def trace_this_thread() -> None:
    """Put the calling thread (the one about to run ``init()`` or ``run()``) under the debugger,
    if debugpy was started beside it or on demand since; a check and nothing more otherwise."""
    if os.environ.get("AML_DEBUG_LISTEN"):
        bootstrap.trace_this_thread()


# The call between the server and run(), compiled under a name debugpy leaves out of every stack
# (as it does Python's frozen modules): to debugpy an exception leaving run() leaves the user's
# code there, which is where its user-unhandled filter stops, in run(). Its only closure is
# run, as the schema decorators' reader (inference_schema) expects of a decorator.
_TOLD_CALL = """\
def told(run):
    def run_told(*args, **kwargs):
        trace()
        try:
            return run(*args, **kwargs)
        except Exception as error:
            tell(error)
            raise
    return run_told
"""
_TOLD_CALL_NAME = "<frozen aml_debug_magics: run() and its failures>"


def run_with_failures_told(run):  # type: ignore[no-untyped-def]
    """``run`` as the server is to call it: the same function to the server (its signature and
    its schema decorators are read through it), and an exception it raises is told before it
    goes on to the server, which answers the request with a 500.

    Told how: a debugger attached with debugpy's "User Uncaught Exceptions" (or "Raised
    Exceptions") on has stopped at the raise already; one with only "Uncaught Exceptions" on
    (VS Code's default) is stopped now, on ``run()``'s frames, as at an uncaught exception
    (debugpy 1.8.22 and later); with no debugger attached the ``failed`` line (no post-mortem:
    the server serves on) and the snapshot of the frames go into the server's output. ``run``
    itself without ``AML_DEBUG_LISTEN``: a deployed image tells nothing.

    The cost before a failure is one call more per request.
    """
    if not os.environ.get("AML_DEBUG_LISTEN"):
        return run
    namespace = {"tell": _tell, "trace": bootstrap.trace_this_thread}
    exec(compile(_TOLD_CALL, _TOLD_CALL_NAME, "exec"), namespace)
    return functools.wraps(run)(namespace["told"](run))


def _tell(error: BaseException) -> None:
    """Stop a debugger at ``error``, or write its lines when none is attached; never raises."""
    outer = error.__traceback__
    inner = outer.tb_next if outer is not None and outer.tb_next is not None else outer
    debugpy = sys.modules.get("debugpy")
    try:  # without pydevd debugpy never started (on demand): nobody is attached
        if "pydevd" in sys.modules and debugpy is not None and debugpy.is_client_connected():
            _stop_at(debugpy, (type(error), error, inner))
            return
        with _telling:
            error.__traceback__ = inner  # from run()'s own frame: the call's is left out
            try:
                _write_failure(error)
            finally:
                error.__traceback__ = outer
    except Exception as failed:  # telling must never change what the server answers
        bootstrap.say(f"could not tell run()'s failure: {type(failed).__name__}: {failed}")


def _stop_at(debugpy, excinfo) -> None:  # type: ignore[no-untyped-def]
    import pydevd

    py_db = pydevd.get_global_debugger()
    if py_db is None or py_db.break_on_user_uncaught_exceptions or py_db.break_on_caught_exceptions:
        return  # stopped at the raise already (or nothing to stop)
    if hasattr(debugpy, "trigger_exception_handler"):  # debugpy 1.8.22 and later
        debugpy.trigger_exception_handler(excinfo, as_uncaught=True)


def _write_failure(error: BaseException) -> None:
    bootstrap.announce.emit(bootstrap.announce.format_failure(bootstrap.failure_of(error)))

