#!/bin/sh
# Builds ../debugger.js, styles included, (or into the folder given as $1) from these sources
# with the esbuild pinned in package-lock.json. First `npm ci` in this folder.
# The bundle (CodeMirror 6 and Lezer inside, MIT licence) opens with a line recording the sha256
# of the sources it was built from.
set -eu
cd "$(dirname "$0")"
OUT="${1:-..}"
SOURCES="build.sh package.json package-lock.json index.js source_view.js variables_tree.js view.css"
# shellcheck disable=SC2086
DIGEST=$(cat $SOURCES | sha256sum | cut -d' ' -f1)
HEADER="// aml_debug_magics debugger view (bundles CodeMirror 6, MIT licence), built by ui/debugger_src/build.sh; sources: $SOURCES; sha256=$DIGEST"
node_modules/.bin/esbuild index.js --bundle --format=esm --minify --target=es2020 \
    --legal-comments=none --log-level=warning --loader:.css=text \
    "--banner:js=$HEADER" --outfile="$OUT/debugger.js"
