#!/usr/bin/env bash
# Install the test dependencies into .venv and run every test (this is what CI runs).
EXTRAS="test" source "$(dirname "$0")/_env.sh"
.venv/bin/ruff check aml_debug_magics tests bench
exec .venv/bin/python -m pytest "$@"
