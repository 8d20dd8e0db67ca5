#!/usr/bin/env bash
# Configures and builds one build tree; sourced settings are shared by run.sh and test.sh.
#   MESH_SANITIZE= (none) | address (ASan+UBSan; 1 means address) | thread (TSan)
# Prints the build directory on the last line of stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${MESH_SANITIZE:-}" in
  "" | 0) sanitize=""; dir=build ;;
  1 | address) sanitize=address; dir=build-asan ;;
  thread) sanitize=thread; dir=build-tsan ;;
  *) echo "MESH_SANITIZE must be empty, address (or 1) or thread" >&2; exit 2 ;;
esac

# ccache across build trees and clones.
# The compiler is identified by its content, not its mtime, so the image build (same Debian
# clang, another install) hits the same cache.
export CCACHE_BASEDIR="$PWD" CCACHE_NOHASHDIR=1 CCACHE_COMPILERCHECK=content
if [[ ! -f $dir/build.ninja ]]; then
  cmake -S . -B "$dir" -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DMESH_SANITIZE="$sanitize" >&2
fi
cmake --build "$dir" "$@" >&2
echo "$dir"
