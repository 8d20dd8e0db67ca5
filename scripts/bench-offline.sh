#!/usr/bin/env bash
# Offline delivery against raw RocksDB, in one run: a broker on a fresh data dir, mesh-bench
# fills the mailboxes of offline recipients and then drains them; then store_bench's raw
# baseline writes the same messages (same size, same sync policy) in RocksDB writes as large as
# the broker's own fsync groups came out, and reads + deletes them; then NATS JetStream (Debian's
# nats-server -js, a file stream of one replica) takes the same number of 256 B messages,
# published asynchronously with acks and drained by a pull consumer with acks (bench/jetstream,
# built here from Debian's Go client). Prints each run and the medians with the ratios (goal:
# >= 0.5 of raw). JETSTREAM=0 leaves JetStream out.
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

# JetStream: Debian's server and Go client, the client built once into the build tree.
jetstream=${JETSTREAM:-1}
js_bench=$(realpath -m "$dir/bench-tools/jetstream-bench")
if [[ $jetstream == 1 ]]; then
  missing=()
  for p in nats-server golang-go golang-github-nats-io-go-nats-dev; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    sudo=(); [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  if [[ ! -x $js_bench || bench/jetstream/main.go -nt $js_bench ]]; then
    gopath=$(mktemp -d)
    mkdir -p "$gopath/src/jetstream-bench" "$(dirname "$js_bench")"
    cp bench/jetstream/main.go "$gopath/src/jetstream-bench/"
    (cd "$gopath/src/jetstream-bench" && GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" \
      GOCACHE="$gopath/cache" go build -o "$js_bench" .)
    rm -rf "$gopath"
  fi
fi

for ((run = 1; run <= runs; run++)); do
  data=$(mktemp -d)
  log="$data/broker.log"
  "$dir/broker/mesh-broker" --data-dir "$data" --listen-peer 127.0.0.1:0 --listen-grpc "" --listen-http "" --listen-ws "" --send-rate 0 \
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
  js='{}'
  if [[ $jetstream == 1 ]]; then
    store=$(mktemp -d)
    nats-server -js -sd "$store" -a 127.0.0.1 -p -1 >"$store/nats.log" 2>&1 &
    nats=$!
    js_port=""
    for _ in $(seq 100); do
      js_port=$(sed -n 's/.*Listening for client connections on 127.0.0.1:\([0-9]*\).*/\1/p' "$store/nats.log")
      [[ -n $js_port ]] && break
      sleep 0.05
    done
    js=$("$js_bench" -url "nats://127.0.0.1:$js_port" -count $((pairs * count)) -size 256)
    kill "$nats"
    wait "$nats" || true
    rm -rf "$store"
  fi
  python3 - "$bench" "$raw" "$group" "$js" >>"$results" <<'EOF'
import json, sys
bench, raw, group = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
js = json.loads(sys.argv[4])
rates = {b["name"].split("/")[0]: b["items_per_second"] for b in raw["benchmarks"]}
row = {"enqueue": bench["enqueue_msgs_per_s"], "drain": bench["drain_msgs_per_s"],
       "raw_put": rates["BM_RawPut"], "raw_drain": rates["BM_RawDrain"], "group": group}
if js:
    row["js_publish"], row["js_drain"] = js["publish_msgs_per_s"], js["drain_msgs_per_s"]
print(json.dumps(row))
EOF
  tail -n 1 "$results"
  rm -rf "$data"
done

python3 - "$results" "$sync" <<'EOF'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
summary = {
    "sync": sys.argv[2], "runs": len(rows),
    "enqueue_msgs_per_s": round(med["enqueue"]), "raw_put_msgs_per_s": round(med["raw_put"]),
    "raw_msgs_per_write": med["group"],
    "enqueue_ratio": round(statistics.median(r["enqueue"] / r["raw_put"] for r in rows), 2),
    "drain_msgs_per_s": round(med["drain"]), "raw_drain_msgs_per_s": round(med["raw_drain"]),
    "drain_ratio": round(statistics.median(r["drain"] / r["raw_drain"] for r in rows), 2)}
if "js_publish" in rows[0]:
    summary.update({
        "jetstream_publish_msgs_per_s": round(med["js_publish"]),
        "jetstream_drain_msgs_per_s": round(med["js_drain"]),
        "enqueue_vs_jetstream": round(statistics.median(r["enqueue"] / r["js_publish"] for r in rows), 2),
        "drain_vs_jetstream": round(statistics.median(r["drain"] / r["js_drain"] for r in rows), 2)})
print(json.dumps(summary))
EOF
