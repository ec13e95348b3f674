"""``python -m aml_debug_magics``: run the demo training script under the debugger on this machine.

It prints where to attach and the VS Code configuration to paste into ``.vscode/launch.json``,
then waits for a debugger until the deadline and runs the script either way.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from aml_debug_magics.launch import attach_config
from aml_debug_magics.node.announce import Announcement, AttachOutcome
from aml_debug_magics.targets.local import LocalProcess

DEMO = Path(__file__).parent / "examples" / "demo_train.py"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aml_debug_magics",
        description="Run a script (the bundled demo by default) under the debugger on this "
        "machine and print the VS Code attach configuration.",
    )
    parser.add_argument("script", nargs="?", default=str(DEMO), help="default: the demo script")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait (120)")
    parser.add_argument("--port", type=int, default=0, help="debug port (0: any free port)")
    options = parser.parse_args(argv)
    if options.script == str(DEMO):
        usage = parser.format_usage().rstrip()
        print(f"{usage}\n(no script given: running the bundled demo)", flush=True)
    script = Path(options.script).resolve()
    if not script.is_file():
        print(f"aml-debug: error: script not found: {options.script}", file=sys.stderr)
        return 2

    def show(news: Announcement | AttachOutcome) -> None:
        if isinstance(news, Announcement):
            config = attach_config(news, script.parent)
            print(f"\nAttach a debugger to {news.addresses[0]}:{news.port} within "
                  f"{options.timeout:g} s. VS Code configuration:\n")
            print(json.dumps(config, indent=4) + "\n", flush=True)

    process = LocalProcess(
        script, timeout=options.timeout, listen=f"127.0.0.1:{options.port}", cwd=script.parent,
        on_line=lambda line: print(line, flush=True), on_news=show,
    )
    try:  # a Ctrl-C as soon as the announcement shows may come while start() still returns
        process.start()
        return process.wait()
    except KeyboardInterrupt:
        return 130
    finally:
        process.stop()


if __name__ == "__main__":
    sys.exit(main())
