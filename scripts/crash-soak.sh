#!/usr/bin/env bash
# The crash test, longer: SIGKILL the broker under load many times (default 50) and check that
# every acknowledged message is delivered, once. Usage: scripts/crash-soak.sh [KILLS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
kills=${1:-50}
rounds=${2:-3}
dir=$(./scripts/build.sh | tail -1)
for ((i = 1; i <= rounds; i++)); do
  echo "crash-soak: round $i of $rounds, $kills kills" >&2
  MESH_CRASH_KILLS=$kills "$dir/tests/crash_test" --gtest_brief=1 2>/dev/null | grep -v '^{'
done
