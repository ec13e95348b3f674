#!/usr/bin/env bash
# Install the test dependencies into .venv (Azurite, the blob-store emulator, into .azurite, and
# Debian's Chromium for the browser tests) and run every test (this is what CI runs).
EXTRAS="test" source "$(dirname "$0")/_env.sh"
if [ ! -x .azurite/node_modules/.bin/azurite-blob ]; then
    command -v npm >/dev/null || { echo "aml-debug: error: the tests need npm (Node.js) for Azurite" >&2; exit 2; }
    npm install --prefix .azurite --no-audit --no-fund --silent azurite@3.37 >/dev/null
fi
if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        { apt-get update -qq && apt-get install -y -qq chromium; } >/dev/null \
            || echo "aml-debug: warning: could not install chromium with apt-get: the browser tests will skip" >&2
    else
        echo "aml-debug: warning: /usr/bin/chromium is missing (apt-get install -y chromium): the browser tests will skip" >&2
    fi
fi
.venv/bin/ruff check aml_debug_magics tests bench
exec .venv/bin/python -m pytest "$@"
