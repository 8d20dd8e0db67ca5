#!/usr/bin/env bash
# Mailboxes at rest (DESIGN §4, issue 17): a broker on a fresh data dir; MAILBOXES (1,000,000)
# offline recipients get one SIZE (256) byte message each (mesh-bench --mode fill). Prints the
# broker's RSS above its idle baseline once it settled (and per mailbox) and how long one
# GET /metrics takes, then kills it (kill -9) and restarts it on that data dir, stops it and
# restarts it again, and prints the times from exec to /readyz answering 200.
# Medians of RUNS (3).
#
#   scripts/bench-rest.sh                             this build (build/, scripts/build.sh)
#   MESH_BUILD=/path/to/other/build scripts/bench-rest.sh   another build, for a before/after
#   scripts/bench-rest.sh expiry   EXPIRING (1,000,000) messages in MAILBOXES (10,000) mailboxes
#                                  expire (TTL 20 s, a sweep every 5 s) while 16 pairs exchange
#                                  256 B online at RATE (5,000) msgs/s for 40 s: their p99, and
#                                  the same run with nothing expiring
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build=${MESH_BUILD:-$root/build}
runs=${RUNS:-3} mailboxes=${MAILBOXES:-1000000} size=${SIZE:-256}
port=${MESH_BENCH_PORT:-37700} http=$((${MESH_BENCH_PORT:-37700} + 200))
work=$(mktemp -d)
broker_pid=""
cleanup() {
  [[ -n $broker_pid ]] && kill -INT "$broker_pid" 2>/dev/null && wait "$broker_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
now() { date +%s.%N; }
calc() { awk "BEGIN {print $*}"; }
rss() { awk '/^VmRSS:/ {print $2 * 1024}' "/proc/$1/status"; }
ready() { [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$http/readyz") == 200 ]]; }

start() {
  "$build/broker/mesh-broker" --data-dir "$work/data" --listen-peer "127.0.0.1:$port" \
    --listen-http "127.0.0.1:$http" --listen-grpc "" --listen-ws "" --threads 1 --send-rate 0 \
    --sender-max-messages 100000000 "${extra[@]}" >>"$work/broker.log" 2>&1 &
  broker_pid=$!
  until ready; do
    kill -0 "$broker_pid" 2>/dev/null || { tail "$work/broker.log" >&2; exit 1; }
    sleep 0.01
  done
}

stop() { kill -INT "$broker_pid"; wait "$broker_pid" || true; broker_pid=""; }

expiry() {
  local expiring=${EXPIRING:-1000000} boxes=${MAILBOXES:-10000} rate=${RATE:-5000}
  local calm=() busy=() online=(--pairs 16 --rate "$rate" --duration 40 --warmup 1 --window 64
    --threads 1 --json)
  extra=(--expiry-sweep-interval-s 5 --mailbox-max-messages 1000000)
  for ((r = 0; r < runs; r++)); do
    rm -rf "$work/data" "$work/broker.log"
    start
    calm+=("$("$build/bench/mesh-bench" -b "127.0.0.1:$port" "${online[@]}" |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["latency_us"]["p99"])')")
    "$build/bench/mesh-bench" -b "127.0.0.1:$port" --mode fill --pairs 16 \
      --count $((expiring / 16)) --recipients "$boxes" --ttl 20 --threads 1 --json >/dev/null
    busy+=("$("$build/bench/mesh-bench" -b "127.0.0.1:$port" "${online[@]}" |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["latency_us"]["p99"])')")
    local expired
    expired=$(curl -s "http://127.0.0.1:$http/metrics" | awk '$1 == "mesh_messages_expired_total" {print $2}')
    stop
    printf 'run %d: online p99 at %d msgs/s: %.0f us with nothing expiring, %.0f us while %s of %d messages expired\n' \
      "$r" "$rate" "${calm[-1]}" "${busy[-1]}" "$expired" "$expiring"
  done
  printf 'expiry of %d messages in %d mailboxes, medians of %d: online p99 %.0f us (%.0f us with nothing expiring)\n' \
    "$expiring" "$boxes" "$runs" "$(printf '%s\n' "${busy[@]}" | median)" \
    "$(printf '%s\n' "${calm[@]}" | median)"
}

extra=()
if [[ ${1:-rest} == expiry ]]; then
  expiry
  exit 0
fi

per=() ready_s=() crash_s=() scrape_ms=()
restart() {  # sets $took: seconds from exec to /readyz answering 200
  local t0
  t0=$(now)
  start
  took=$(calc "$(now) - $t0")
}
for ((r = 0; r < runs; r++)); do
  rm -rf "$work/data" "$work/broker.log"
  start
  sleep 1
  base=$(rss "$broker_pid")
  "$build/bench/mesh-bench" -b "127.0.0.1:$port" --mode fill --pairs 16 \
    --count $((mailboxes / 16)) --size "$size" --recipients "$mailboxes" --threads 1 --json \
    >/dev/null
  sleep "${SETTLE:-15}"  # at rest: memtables flushed, freed pages returned (jemalloc decays in 10 s)
  held=$(rss "$broker_pid")
  scrape=$(curl -s -o /dev/null -w '%{time_total}' "http://127.0.0.1:$http/metrics")
  # A crash: the restart replays what the WAL still holds (bounded), then a clean stop (which
  # flushes) and a restart that replays nothing.
  kill -KILL "$broker_pid"
  wait "$broker_pid" 2>/dev/null || true
  restart
  crash_s+=("$took")
  stop
  restart
  ready_s+=("$took")
  # What the restart found (its store_recovered line): every fill must reach that many.
  recovered=$(grep '"store_recovered"' "$work/broker.log" | tail -1 |
    python3 -c 'import json,sys; print(json.loads(sys.stdin.read())["mailboxes"])')
  stop
  ((recovered == mailboxes)) || { echo "the fill reached $recovered mailboxes of $mailboxes" >&2; exit 1; }
  per+=("$(calc "($held - $base) / $mailboxes")")
  scrape_ms+=("$(calc "$scrape * 1000")")
  printf 'run %d: %d mailboxes x %d B: RSS %.1f -> %.1f MiB (+%.0f B per mailbox); GET /metrics %.1f ms; restart to ready %.2f s after a stop, %.2f s after kill -9\n' \
    "$r" "$mailboxes" "$size" "$(calc "$base / 1048576")" "$(calc "$held / 1048576")" \
    "${per[-1]}" "${scrape_ms[-1]}" "${ready_s[-1]}" "${crash_s[-1]}"
done
printf 'mailboxes at rest, medians of %d: +%.0f B of RSS per mailbox, GET /metrics %.1f ms, restart to ready %.2f s after a stop, %.2f s after kill -9\n' \
  "$runs" "$(printf '%s\n' "${per[@]}" | median)" "$(printf '%s\n' "${scrape_ms[@]}" | median)" \
  "$(printf '%s\n' "${ready_s[@]}" | median)" "$(printf '%s\n' "${crash_s[@]}" | median)"
