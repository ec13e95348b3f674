#!/usr/bin/env bash
# Install the test dependencies into .venv (and Azurite, the blob-store emulator, into .azurite)
# and run every test (this is what CI runs).
EXTRAS="test" source "$(dirname "$0")/_env.sh"
if [ ! -x .azurite/node_modules/.bin/azurite-blob ]; then
    command -v npm >/dev/null || { echo "aml-debug: error: the tests need npm (Node.js) for Azurite" >&2; exit 2; }
    npm install --prefix .azurite --no-audit --no-fund --silent azurite@3.37 >/dev/null
fi
.venv/bin/ruff check aml_debug_magics tests bench
exec .venv/bin/python -m pytest "$@"
