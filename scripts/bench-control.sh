#!/usr/bin/env bash
# The control plane's figures, against one fresh broker: REST GET /api/v1/stats with wrk (64
# connections), gRPC GetStats calls/s (bench/control_bench), the broker's CPU time per /metrics
# scrape, and mesh-bench's online throughput with a real Prometheus scraping every second
# against without, in alternating rounds (the ratio of the medians; goal >= 0.97).
# Usage: scripts/bench-control.sh [ROUNDS]   (5)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
dir=$(./scripts/build.sh | tail -1)
ninja -C "$dir" control_bench >/dev/null
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

"$dir/broker/mesh-broker" --data-dir "$work/data" --listen-peer 127.0.0.1:0 \
  --listen-grpc 127.0.0.1:0 --listen-http 127.0.0.1:0 --listen-ws "" --send-rate 0 \
  2>"$work/broker.log" &
broker=$!
pids+=("$broker")
# Ports from the listening lines of the log.
port_of() {
  python3 -c 'import json,sys
for line in open(sys.argv[1]):
    e = json.loads(line)
    if e.get("event") == "listening" and e.get("listener") == sys.argv[2]: print(e["port"])' \
    "$work/broker.log" "$1"
}
for _ in $(seq 150); do
  [[ -n $(port_of http) && -n $(port_of grpc) && -n $(port_of peer) ]] && break
  sleep 0.1
done
http=$(port_of http); grpc=$(port_of grpc); peer=$(port_of peer)
token=$(cat "$work/data/admin.token")

echo "== wrk: GET /api/v1/stats, 64 connections, 10 s" >&2
wrk -t2 -c64 -d10s --latency -H "Authorization: Bearer $token" \
  "http://127.0.0.1:$http/api/v1/stats" | tee "$work/wrk.txt" >&2

echo "== gRPC GetStats, 2 threads, 5 s" >&2
"$dir/bench/control_bench" --target "127.0.0.1:$grpc" --token-file "$work/data/admin.token" \
  --threads 2 --duration 5 --json | tee "$work/grpc.json" >&2

echo "== CPU time of one /metrics scrape (200 scrapes)" >&2
cpu() { awk '{print $14 + $15}' "/proc/$broker/stat"; }
before=$(cpu)
for _ in $(seq 200); do curl -s "http://127.0.0.1:$http/metrics" >/dev/null; done
after=$(cpu)
scrape_ms=$(python3 -c "print(round(($after - $before) * 1000 / $(getconf CLK_TCK) / 200, 3))")
bytes=$(curl -s "http://127.0.0.1:$http/metrics" | wc -c)
echo "scrape: $scrape_ms ms of broker CPU, $bytes bytes" >&2

echo "== mesh-bench online with and without Prometheus scraping every 1 s, $rounds rounds" >&2
cat >"$work/prometheus.yml" <<EOF
global: {scrape_interval: 1s, scrape_timeout: 1s}
scrape_configs:
  - job_name: mesh-broker
    static_configs: [{targets: ["127.0.0.1:$http"]}]
EOF
prom_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
bench() {
  "$dir/bench/mesh-bench" -b "127.0.0.1:$peer" --pairs 16 --count 20000 --threads 2 --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["msgs_per_s"])'
}
with=(); without=()
for ((i = 1; i <= rounds; i++)); do
  without+=("$(bench)")
  prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
    --web.listen-address="127.0.0.1:$prom_port" --log.level=warn 2>>"$work/prometheus.log" &
  prom=$!
  pids+=("$prom")
  for _ in $(seq 150); do
    curl -s "http://127.0.0.1:$prom_port/api/v1/query?query=up" | grep -q '"1"' && break
    sleep 0.1
  done
  with+=("$(bench)")
  kill "$prom"; wait "$prom" 2>/dev/null || true
  echo "round $i: without ${without[-1]}, with ${with[-1]}" >&2
done

python3 - "$work/wrk.txt" "$work/grpc.json" "$scrape_ms" "$bytes" "${with[*]}" "${without[*]}" <<'EOF'
import json, re, statistics, sys
wrk = open(sys.argv[1]).read()
grpc = json.load(open(sys.argv[2]))
with_scrape = [float(x) for x in sys.argv[5].split()]
without = [float(x) for x in sys.argv[6].split()]
p99 = re.search(r"99%\s+(\S+)", wrk).group(1)
print(json.dumps({
    "rest_stats_requests_per_s": float(re.search(r"Requests/sec:\s+(\S+)", wrk).group(1)),
    "rest_stats_p99": p99,
    "grpc_getstats_calls_per_s": round(grpc["calls_per_s"]),
    "grpc_getstats_p99_us": round(grpc["latency_us"]["p99"]),
    "scrape_cpu_ms": float(sys.argv[3]), "scrape_bytes": int(sys.argv[4]),
    "online_msgs_per_s_with_scrape": round(statistics.median(with_scrape)),
    "online_msgs_per_s_without": round(statistics.median(without)),
    "scrape_ratio": round(statistics.median(with_scrape) / statistics.median(without), 3)}))
EOF
