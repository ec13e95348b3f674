# Sourced by start.sh and test.sh: make .venv with Python 3.11 or 3.12 and install the project.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
    for candidate in "${PYTHON:-}" python3.11 python3.12 python3; do
        if [ -n "$candidate" ] && command -v "$candidate" >/dev/null \
            && "$candidate" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 12))' 2>/dev/null; then
            "$candidate" -m venv .venv
            break
        fi
    done
    [ -x .venv/bin/python ] || { echo "aml-debug: error: needs Python 3.11 or 3.12 (set PYTHON=/path/to/python)" >&2; exit 2; }
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
spec="."
if [ -n "${EXTRAS:-}" ]; then spec=".[$EXTRAS]"; fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$spec"
