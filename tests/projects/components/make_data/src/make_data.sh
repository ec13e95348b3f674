#!/bin/bash
set -e
printf '3 1 2\n' > "$1/numbers.txt"
echo "made numbers in $1"
