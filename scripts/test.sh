#!/usr/bin/env bash
# Builds the CPU preset and runs every test (unit, oracle, integration; gpu tests where a GPU is).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh --test
cmake --preset cpu >/dev/null
cmake --build --preset cpu
ctest --preset cpu "$@"
