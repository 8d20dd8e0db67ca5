#!/usr/bin/env bash
# Installs what is missing, builds, and starts mesh-broker on its embedded defaults
# (peer links on 7700, data in ./mesh-data). Extra arguments go to mesh-broker.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
dir=$(scripts/build.sh --target mesh-broker mesh-cli | tail -n 1)
exec "$dir/broker/mesh-broker" "$@"
