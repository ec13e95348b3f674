"""Control-plane calls per second while a run is followed, for 1, 10 and 50 steps.

    python bench/bench_polling.py [--before 10] [--settle 30] [--steady 30] [--steps 1,10,50]

A pipeline of N running steps, the first one debugged, is followed by the product's
``RunFollower`` on the real clock with its default intervals, behind the counting stand-ins of
``tests/test_polling.py`` (SDK v1 runs; SDK v2 through ``V2Run`` when azure-ai-ml is installed).
Their logs are append blobs in Azurite read through real SAS URLs. Printed, per SDK and step
count: calls per second before the first announcement (over ``--before`` seconds), and at steady
state (over ``--steady`` seconds, from ``--settle`` seconds after the announcement was seen: the
other steps' logs are listed by then), with the calls by method.
Budget: 2 calls per second per session. Anchor: one call per step per method per second, which
is what asking every step for its status, details and tags at each 1 s poll costs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from azurite import start_azurite  # noqa: E402
from test_polling import (  # noqa: E402
    BUDGET,
    ControlPlane,
    SdkV1Run,
    StandInJobs,
    announced,
    announcement_line,
    follow_session,
    pipeline_of,
)


def until(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(0.02)


def rate(plane: ControlPlane, seconds: float) -> tuple[float, dict[str, int]]:
    calls, before = plane.total(), dict(plane.calls)
    time.sleep(seconds)
    spent = {name: count - before.get(name, 0) for name, count in plane.calls.items()}
    return (plane.total() - calls) / seconds, {k: v for k, v in spent.items() if v}


def one_round(sdk: str, steps: int, azurite, folder: Path, before: float, settle: float,
              steady: float):
    plane = ControlPlane()
    parent, train_log = pipeline_of(steps, azurite)
    if sdk == "v2":
        from aml_debug_magics.targets.azureml_v2 import V2Run

        records = {record.id: record for record in [parent, *parent.children]}
        run = V2Run(SimpleNamespace(jobs=StandInJobs(plane, records)), StandInJobs._job(parent))
    else:
        run = SdkV1Run(parent, plane)
    session = follow_session(run, [child.name for child in parent.children], folder)
    try:
        waiting = rate(plane, before)
        train_log.append(announcement_line() + "\n")
        until(lambda: announced(session))
        time.sleep(settle)
        return waiting, rate(plane, steady)
    finally:
        session.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=float, default=10.0)
    parser.add_argument("--settle", type=float, default=30.0)
    parser.add_argument("--steady", type=float, default=30.0)
    parser.add_argument("--steps", default="1,10,50")
    options = parser.parse_args()
    sdks = ["v1"]
    try:
        import azure.ai.ml  # noqa: F401

        sdks.append("v2")
    except ImportError:
        print("azure-ai-ml is not installed: SDK v1 only")
    with tempfile.TemporaryDirectory() as scratch:
        process, azurite = start_azurite(Path(scratch) / "azurite")
        try:
            print(f"budget: {BUDGET:g} calls/s per session; default intervals, real clock")
            for sdk in sdks:
                for steps in (int(n) for n in options.steps.split(",")):
                    (waiting, by_method), (steady, steady_methods) = one_round(
                        sdk, steps, azurite, Path(scratch), options.before, options.settle,
                        options.steady)
                    anchor = 3 * steps + 1
                    print(f"SDK {sdk}, {steps:>2} steps: before the announcement {waiting:5.2f} "
                          f"calls/s ({waiting / anchor:.2f}x the anchor {anchor}/s) {by_method}; "
                          f"steady {steady:5.2f} calls/s {steady_methods}")
        finally:
            process.terminate()
            process.wait()


if __name__ == "__main__":
    main()
