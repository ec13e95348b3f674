"""Reads settings.json beside the script when there is one, else uses the defaults."""

import json
from pathlib import Path

DEFAULTS = {"learning_rate": 0.1}


def load_settings():
    try:
        return json.loads(Path(__file__).with_name("settings.json").read_text())
    except FileNotFoundError:
        return dict(DEFAULTS)


if __name__ == "__main__":
    print("settings", load_settings(), flush=True)
