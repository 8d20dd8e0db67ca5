#!/usr/bin/env bash
# Installs what is missing, builds everything and runs every test: unit, integration and the
# fuzz smoke. MESH_SANITIZE=address (or thread) selects a sanitizer build in its own tree.
# Extra arguments go to ctest (e.g. -L unit, -R Noise).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
dir=$(scripts/build.sh | tail -n 1)
ctest --test-dir "$dir" --output-on-failure --timeout 300 -j2 "$@"
