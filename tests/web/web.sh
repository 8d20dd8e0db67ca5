#!/usr/bin/env bash
# The TypeScript client's tests (CTest label `web`), built in the build tree so the source tree
# stays clean:
#   web.sh build DIR        copies web/ to DIR, `npm ci` there when the lock changed, then
#                           protoc-gen-es, tsc and esbuild (npm run build)
#   web.sh test DIR FILE... node --test on the compiled test files (dist/test/*.test.js)
# The tests start the real broker and mesh-cli (MESH_BROKER_BIN, MESH_CLI_BIN) and, for the
# browser test, Debian's chromium (scripts/deps.sh installs it).
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=../deploy/tools.sh disable=SC1091
source "$root/tests/deploy/tools.sh"

command=$1
dir=$2
shift 2
export MESH_PROTO_DIR=$root/proto
export MESH_NOISE_VECTORS_DIR=$root/tests/data/noise-vectors

case $command in
  build)
    tools_cmds node=nodejs npm=npm
    tools_apt ca-certificates protobuf-compiler
    tools_check_node
    mkdir -p "$dir"
    rm -rf "$dir/src" "$dir/test" "$dir/chat" "$dir/dist"
    tar -C "$root/web" --exclude=./node_modules --exclude=./dist --exclude=./src/gen -cf - . | tar -C "$dir" -xf -
    want=$(cat "$root/web/package.json" "$root/web/package-lock.json" | sha256sum | cut -d' ' -f1)
    if [[ ! -d $dir/node_modules || ! -f $dir/.lock-sha256 || $(cat "$dir/.lock-sha256") != "$want" ]]; then
      echo "web: npm ci in $dir (node $(node --version), npm $(npm --version))"
      rm -rf "$dir/node_modules" "$dir/.lock-sha256"
      (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
      echo "$want" >"$dir/.lock-sha256"
    fi
    (cd "$dir" && npm run --silent build)
    ;;
  test)
    cd "$dir"
    exec node --test "$@"
    ;;
  *)
    echo "usage: web.sh build|test DIR [FILE...]" >&2
    exit 2
    ;;
esac
