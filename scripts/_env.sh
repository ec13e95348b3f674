# Sourced by start.sh and test.sh: make a virtual environment (VENV, default .venv) with a Python
# the notebook side supports (3.10 to 3.12; PYTHON=/path/to/python picks one) and install the
# project into it with EXTRAS.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${VENV:-.venv}"
supported() {
    "$1" -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 12))' 2>/dev/null
}
if [ ! -x "$VENV/bin/python" ]; then
    for candidate in "${PYTHON:-}" python3.11 python3.10 python3.12 python3; do
        if [ -n "$candidate" ] && command -v "$candidate" >/dev/null && supported "$candidate"; then
            "$candidate" -m venv "$VENV"
            break
        fi
    done
    [ -x "$VENV/bin/python" ] || {
        echo "aml-debug: error: needs Python 3.10, 3.11 or 3.12 (set PYTHON=/path/to/python)" >&2
        exit 2
    }
fi
spec="."
if [ -n "${EXTRAS:-}" ]; then spec=".[$EXTRAS]"; fi
# uv (from PyPI) installs in seconds what pip takes minutes for; pip stays the fallback
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip uv \
    2> >(grep -v "^WARNING: Location" >&2) || true
if ! "$VENV/bin/python" -m uv pip install --quiet --python "$VENV/bin/python" -e "$spec"; then
    echo "aml-debug: uv could not install; trying pip" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$spec"
fi
