#!/usr/bin/env bash
# Install everything into .venv and start the product on its local target: the demo training
# script runs under the debugger on this machine and prints where (and how) to attach.
EXTRAS="steps" source "$(dirname "$0")/_env.sh"
exec .venv/bin/python -m aml_debug_magics "$@"
