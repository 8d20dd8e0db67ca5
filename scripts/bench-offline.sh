#!/usr/bin/env bash
# Offline delivery against raw RocksDB, in one run: a broker on a fresh data dir, mesh-bench
# fills the mailboxes of offline recipients and then drains them; then store_bench's raw
# baseline writes the same messages (same size, same sync policy) in RocksDB writes as large as
# the broker's own fsync groups came out, and reads + deletes them. Prints each run and the
# medians with the ratios (goal: >= 0.5 of raw).
# Usage: scripts/bench-offline.sh [RUNS] [PAIRS] [COUNT_PER_PAIR] [SYNC]   (5 16 20000 batch)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
pairs=${2:-16}
count=${3:-20000}
sync=${4:-batch}
case $sync in none) arg=0 ;; batch) arg=1 ;; always) arg=2 ;; *) echo "sync: none|batch|always" >&2; exit 2 ;; esac
dir=$(./scripts/build.sh | tail -1)
results=$(mktemp)
trap 'rm -f "$results"' EXIT

for ((run = 1; run <= runs; run++)); do
  data=$(mktemp -d)
  log="$data/broker.log"
  "$dir/broker/mesh-broker" --data-dir "$data" --listen-peer 127.0.0.1:0 --listen-grpc "" --listen-http "" --send-rate 0 \
    --store-sync "$sync" >"$log" 2>&1 &
  broker=$!
  port=""
  for _ in $(seq 150); do
    port=$(python3 -c 'import json,sys
for line in open(sys.argv[1]):
    e = json.loads(line)
    if e.get("event") == "listening" and e.get("listener") == "peer": print(e["port"])' "$log")
    [[ -n $port ]] && break
    sleep 0.1
  done
  [[ -n $port ]] || { echo "bench-offline: the broker did not start" >&2; cat "$log" >&2; exit 1; }
  bench=$("$dir/bench/mesh-bench" -b "127.0.0.1:$port" --mode offline --pairs "$pairs" \
    --count "$count" --threads 2 --json)
  kill -TERM "$broker"
  wait "$broker" || true
  # The broker's own fsync groups during the fill: durable commits per sync.
  group=$(python3 -c 'import json,sys
for line in open(sys.argv[1]):
    e = json.loads(line)
    if e.get("event") == "store_stats":
        print(max(1, round(e["durable_commits"] / max(1, e["syncs"]))) if e["syncs"] else 64)' "$log")
  raw=$(MESH_RAW_WRITE_SIZE=$group "$dir/bench/store_bench" \
    --benchmark_filter="BM_RawPut/$arg/|BM_RawDrain" --benchmark_format=json 2>/dev/null)
  python3 - "$bench" "$raw" "$group" >>"$results" <<'EOF'
import json, sys
bench, raw, group = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
rates = {b["name"].split("/")[0]: b["items_per_second"] for b in raw["benchmarks"]}
row = {"enqueue": bench["enqueue_msgs_per_s"], "drain": bench["drain_msgs_per_s"],
       "raw_put": rates["BM_RawPut"], "raw_drain": rates["BM_RawDrain"], "group": group}
print(json.dumps(row))
EOF
  tail -n 1 "$results"
  rm -rf "$data"
done

python3 - "$results" "$sync" <<'EOF'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
print(json.dumps({
    "sync": sys.argv[2], "runs": len(rows),
    "enqueue_msgs_per_s": round(med["enqueue"]), "raw_put_msgs_per_s": round(med["raw_put"]),
    "raw_msgs_per_write": med["group"],
    "enqueue_ratio": round(statistics.median(r["enqueue"] / r["raw_put"] for r in rows), 2),
    "drain_msgs_per_s": round(med["drain"]), "raw_drain_msgs_per_s": round(med["raw_drain"]),
    "drain_ratio": round(statistics.median(r["drain"] / r["raw_drain"] for r in rows), 2)}))
EOF
