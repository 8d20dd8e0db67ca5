#!/usr/bin/env bash
# Issue 18's figures in one run, on one broker (16 pairs need --send-rate 0):
#   1. mesh-bench online, 16 pairs, over WebSocket vs TCP (ratio)
#   2. one pair with the TypeScript client in Node vs mesh-bench (C++) over WebSocket
# RUNS rounds (default 5) alternate the clients; prints each round and the medians.
#   RUNS=5 scripts/bench-web.sh          (MESH_BUILD: the build dir, default build/)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${MESH_BUILD:-build}
runs=${RUNS:-5}
bash tests/web/web.sh build "$build/web" >/dev/null 2>&1
dir=$(mktemp -d)
trap 'kill "$broker" 2>/dev/null; wait "$broker" 2>/dev/null; rm -rf "$dir"' EXIT
"$build/broker/mesh-broker" --data-dir "$dir/data" --listen-peer 127.0.0.1:0 --listen-ws 127.0.0.1:0 \
  --listen-grpc "" --listen-http "" --send-rate 0 2>"$dir/log" &
broker=$!
port() { grep -o "\"listener\":\"$1\"[^}]*\"port\":[0-9]*" "$dir/log" | grep -o '[0-9]*$'; }
for _ in $(seq 100); do [[ -n $(port ws) ]] && break; sleep 0.1; done
tcp=127.0.0.1:$(port peer)
ws=ws://127.0.0.1:$(port ws)/v1/link
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
bench() { "$build/bench/mesh-bench" --json --count 20000 "$@"; }
printf '%-5s %10s %10s %6s | %10s %8s %10s %8s\n' round tcp16 ws16 ratio "ts msgs/s" "ts p99" "c++ msgs/s" "c++ p99"
for round in $(seq "$runs"); do
  t=$(bench -b "$tcp" --pairs 16 | field 'int(d["msgs_per_s"])')
  w=$(bench -b "$ws" --pairs 16 | field 'int(d["msgs_per_s"])')
  ts=$(node "$build/web/dist/bench/bench.js" --broker "$ws" --count 20000 | field "d['msgs_per_s'], d['latency_us']['p99']")
  cc=$(bench -b "$ws" --pairs 1 | field "int(d['msgs_per_s']), int(d['latency_us']['p99'])")
  # shellcheck disable=SC2086
  printf '%-5s %10s %10s %6s | %10s %8s %10s %8s\n' "$round" "$t" "$w" \
    "$(python3 -c "print(round($w/$t, 2))")" $ts $cc | tee -a "$dir/rounds"
done
python3 - "$dir/rounds" <<'PY'
import statistics, sys
rows = [line.replace("|", " ").split() for line in open(sys.argv[1])]
col = lambda i: statistics.median(float(r[i]) for r in rows)
print(f"median: tcp16 {col(1):.0f} ws16 {col(2):.0f} ratio {col(3):.2f} | "
      f"ts {col(4):.0f} msgs/s p99 {col(5)/1000:.1f} ms | c++ {col(6):.0f} msgs/s p99 {col(7)/1000:.1f} ms")
PY
