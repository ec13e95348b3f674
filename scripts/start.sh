#!/usr/bin/env bash
# Install everything into .venv and start the product on its local target: JupyterLab on the
# tutorials, bound to 127.0.0.1 (it prints the URL with its token; open it in a browser).
EXTRAS="steps,notebook,v2" source "$(dirname "$0")/_env.sh"
root_flag=()
if [ "$(id -u)" = 0 ]; then root_flag=(--allow-root); fi  # JupyterLab refuses root without it (containers)
exec .venv/bin/jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.root_dir=notebooks --no-browser \
    "${root_flag[@]}" "$@"
