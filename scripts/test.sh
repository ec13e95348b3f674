#!/usr/bin/env bash
# Install the test dependencies (Azurite, the blob-store emulator, into .azurite; Debian's
# Chromium for the browser tests) and run the tests, two at a time (pytest-xdist), on each
# notebook-side Python: every test on 3.11 (.venv); on 3.10 (.venv-3.10) and 3.12 (.venv-3.12)
# the tests marked every_python, whose mark says what differs by version (ipykernel 6 vs 7, the
# kernel the tutorials run in, what importing loads). AML_DEBUG_FULL=1 runs every test on every
# Python (3.12 without what needs PythonScriptStep, which does not install there);
# AML_DEBUG_PYTHONS="3.11" runs fewer Pythons. A missing interpreter is a loud skip. Arguments go
# to pytest. This is what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .azurite/node_modules/.bin/azurite-blob ]; then
    command -v npm >/dev/null || { echo "aml-debug: error: the tests need npm (Node.js) for Azurite" >&2; exit 2; }
    npm install --prefix .azurite --no-audit --no-fund --silent azurite@3.37 >/dev/null
fi
# the in-notebook debugger's pinned bundler, so a test can rebuild ui/debugger.js and compare
if [ ! -x aml_debug_magics/ui/debugger_src/node_modules/.bin/esbuild ]; then
    npm ci --prefix aml_debug_magics/ui/debugger_src --no-audit --no-fund --silent >/dev/null \
        || echo "aml-debug: warning: npm ci failed in aml_debug_magics/ui/debugger_src: the bundle check will skip" >&2
fi
if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        { apt-get update -qq && apt-get install -y -qq chromium; } >/dev/null \
            || echo "aml-debug: warning: could not install chromium with apt-get: the browser tests will skip" >&2
    else
        echo "aml-debug: warning: /usr/bin/chromium is missing (apt-get install -y chromium): the browser tests will skip" >&2
    fi
fi

echo "aml-debug: Azurite, the bundler and Chromium ready after $SECONDS s" >&2

find_python() {  # the newest pyenv build of $1 (like 3.10), else python$1 on PATH
    local root build
    for root in "$(pyenv root 2>/dev/null || true)" "${PYENV_ROOT:-}" "$HOME/.pyenv"; do
        [ -n "$root" ] || continue
        build="$(ls -d "$root"/versions/"$1".* 2>/dev/null | grep -E "/$1\.[0-9]+$" | sort -V | tail -1)"
        if [ -n "$build" ] && [ -x "$build/bin/python" ]; then echo "$build/bin/python"; return; fi
    done
    command -v "python$1" || true
}

missing=() failed=() ready=()
# every environment first: a test on 3.11 starts a 3.10 kernel from .venv-3.10
for version in ${AML_DEBUG_PYTHONS:-3.11 3.10 3.12}; do
    venv=".venv-$version"
    if [ "$version" = 3.11 ]; then venv=".venv"; fi
    python="$(find_python "$version")"
    if [ ! -x "$venv/bin/python" ] && [ -z "$python" ]; then
        echo "aml-debug: SKIPPED: Python $version is not on this machine (pyenv install $version): its tests did not run" >&2
        missing+=("$version")
        continue
    fi
    echo "aml-debug: installing into $venv (Python $version)" >&2
    began=$SECONDS
    # compiled as pip leaves an install (uv does not by default): with PYTHONDONTWRITEBYTECODE
    # set, every kernel, server and script the tests start would compile what it imports anew
    (PYTHON="$python" VENV="$venv" EXTRAS="test,v2" UV_COMPILE_BYTECODE=1 source scripts/_env.sh)
    echo "aml-debug: $venv ready in $((SECONDS - began)) s" >&2
    ready+=("$version")
done
for version in "${ready[@]}"; do
    venv=".venv-$version"
    if [ "$version" = 3.11 ]; then venv=".venv"; fi
    echo "aml-debug: === the tests on Python $version ($venv) ===" >&2
    if [ "$version" = 3.11 ]; then "$venv/bin/ruff" check aml_debug_magics tests bench; fi
    selection=()
    if [ "$version" != 3.11 ] && [ -z "${AML_DEBUG_FULL:-}" ]; then
        selection=(-m every_python)
        echo "aml-debug: Python $version: the every_python tests (AML_DEBUG_FULL=1 runs all)" >&2
    fi
    began=$SECONDS
    "$venv/bin/python" -m pytest -p no:cacheprovider -n "${AML_DEBUG_WORKERS:-2}" \
        "${selection[@]}" "$@" || failed+=("$version")
    echo "aml-debug: Python $version: $((SECONDS - began)) s in the tests" >&2
done
echo "aml-debug: $SECONDS s in all" >&2
if [ ${#missing[@]} -gt 0 ]; then
    echo "aml-debug: SKIPPED: no tests ran on Python ${missing[*]} (not on this machine)" >&2
fi
if [ ${#failed[@]} -gt 0 ]; then
    echo "aml-debug: FAILED on Python ${failed[*]}" >&2
    exit 1
fi
