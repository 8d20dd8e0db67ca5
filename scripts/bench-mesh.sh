#!/usr/bin/env bash
# The mesh's figures (docs/BENCHMARKS.md), medians of RUNS runs (default 5; 3 for drain):
#
#   scripts/bench-mesh.sh online     1:1 256 B msgs/s with every pair crossing brokers against
#                                    every pair on one broker (same run, alternating), and p99
#                                    across brokers at half the crossing rate
#   scripts/bench-mesh.sh drain      a broker holding MESSAGES (1,000,000) in MAILBOXES (10,000)
#                                    drains to a member that just joined: handoff msgs/s against
#                                    the offline enqueue rate measured filling it, and time to exit
#   scripts/bench-mesh.sh presence   PEERS (10,000) connect to one broker: time until the other
#                                    routes to all of them
#   scripts/bench-mesh.sh reconnect  LISTENERS (50) mesh-cli peers with both brokers in their list;
#                                    the broker holding some drains (SIGTERM): time until every
#                                    peer is connected again (goal: within 2 s)
#   scripts/bench-mesh.sh churn      KEYS (200,000) keys connect to one broker once each, in waves
#                                    of 10,000, and leave: each broker's RSS before, just after, and
#                                    SETTLE_S (30) s after the presence grace (GRACE_MS, 10,000)
#   scripts/bench-mesh.sh idle       a 2-broker mesh holding MAILBOXES (100,000) offline mailboxes
#                                    (one 8 B message each), at rest: each broker's CPU over
#                                    IDLE_S (60) seconds, % of one core
#
# Brokers run on loopback through scripts/local-cluster.sh with one I/O thread each; the load
# generator gets one too. Binaries come from build/ (scripts/build.sh).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build=${MESH_BUILD:-$root/build}
work=$(mktemp -d)
export MESH_CLUSTER_DIR=$work/cluster MESH_BROKER=$build/broker/mesh-broker
export MESH_CLUSTER_BASE_PORT=${MESH_CLUSTER_BASE_PORT:-27700}
base=$MESH_CLUSTER_BASE_PORT
cluster=$root/scripts/local-cluster.sh
bench=$build/bench/mesh-bench
flags=(--threads 1 --send-rate 0 --sender-max-messages 100000000 --mailbox-max-messages 1000000)

cleanup() {
  "$cluster" stop >/dev/null 2>&1 || true
  pkill -INT -f "$work/cluster" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
metric() { curl -s "http://127.0.0.1:$((base + 200 + $1))/metrics" | awk -v m="$2" '$1 == m {print $2}'; }
now() { date +%s.%N; }
calc() { awk "BEGIN {print $*}"; }
fresh() { "$cluster" stop >/dev/null 2>&1 || true; rm -rf "$MESH_CLUSTER_DIR"; }

online() {
  local runs=${RUNS:-5} brokers="127.0.0.1:$base,127.0.0.1:$((base + 1))"
  fresh
  "$cluster" start 2 -- "${flags[@]}" >/dev/null
  sleep 2
  local same=() cross=() ratio=()
  for ((r = 0; r < runs; r++)); do
    local s c
    s=$("$bench" --brokers "$brokers" --placement same --pairs 16 --count 20000 --threads 1 --json | field "d['msgs_per_s']")
    c=$("$bench" --brokers "$brokers" --placement cross --pairs 16 --count 20000 --threads 1 --json | field "d['msgs_per_s']")
    same+=("$s"); cross+=("$c"); ratio+=("$(calc "$c / $s")")
    printf 'run %d: same %.0f msgs/s, cross %.0f msgs/s, ratio %.2f\n' "$r" "$s" "$c" "${ratio[-1]}"
  done
  local cross_median half p99=()
  cross_median=$(printf '%s\n' "${cross[@]}" | median)
  printf 'online, medians of %d: same %.0f msgs/s, cross %.0f msgs/s, ratio %.2f (goal >= 0.6)\n' \
    "$runs" "$(printf '%s\n' "${same[@]}" | median)" "$cross_median" \
    "$(printf '%s\n' "${ratio[@]}" | median)"
  half=$(calc "int($cross_median / 2)")
  for ((r = 0; r < runs; r++)); do
    p99+=("$("$bench" --brokers "$brokers" --placement cross --pairs 16 --rate "$half" --duration 5 \
      --warmup 1 --window 64 --threads 1 --json | field "d['latency_us']['p99']")")
    printf 'run %d: p99 %.0f us at %d msgs/s across brokers\n' "$r" "${p99[-1]}" "$half"
  done
  printf 'p99 across brokers at %d msgs/s, median of %d: %.0f us (goal < 3 ms)\n' "$half" "$runs" \
    "$(printf '%s\n' "${p99[@]}" | median)"
}

drain() {
  local runs=${RUNS:-3} messages=${MESSAGES:-1000000} mailboxes=${MAILBOXES:-10000}
  local enqueue=() handoff=() ratio=() exit_s=()
  for ((r = 0; r < runs; r++)); do
    fresh
    "$cluster" start 1 -- "${flags[@]}" >/dev/null
    local e
    e=$("$bench" -b "127.0.0.1:$base" --mode fill --pairs 16 --count $((messages / 16)) \
      --recipients "$mailboxes" --threads 1 --json | field "d['enqueue_msgs_per_s']")
    local t0 t1 t2 pid
    pid=$(cat "$MESH_CLUSTER_DIR/b0/pid")
    t0=$(now)
    "$cluster" add >/dev/null
    until grep -q member_joined "$MESH_CLUSTER_DIR/b0/broker.log"; do sleep 0.01; done
    t1=$(now)
    kill -TERM "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.01; done
    t2=$(now)
    local left held h
    left=$(python3 -c "import json; print(json.load(open('$MESH_CLUSTER_DIR/b0/data/DRAINED'))['messages_left'])")
    held=$(metric 1 mesh_messages_queue_size)
    h=$(calc "$held / ($t2 - $t0)")
    enqueue+=("$e"); handoff+=("$h"); ratio+=("$(calc "$h / $e")")
    exit_s+=("$(calc "$t2 - $t1")")
    printf 'run %d: enqueue %.0f msgs/s; %d messages moved in %.1f s from the join (%.0f msgs/s), SIGTERM to exit %.1f s, left %d\n' \
      "$r" "$e" "$held" "$(calc "$t2 - $t0")" "$h" "${exit_s[-1]}" "$left"
    "$cluster" stop >/dev/null
  done
  printf 'drain of %d messages in %d mailboxes, medians of %d: handoff %.0f msgs/s, enqueue %.0f msgs/s, ratio %.2f (goal >= 0.5), SIGTERM to exit %.1f s\n' \
    "$messages" "$mailboxes" "$runs" "$(printf '%s\n' "${handoff[@]}" | median)" \
    "$(printf '%s\n' "${enqueue[@]}" | median)" "$(printf '%s\n' "${ratio[@]}" | median)" \
    "$(printf '%s\n' "${exit_s[@]}" | median)"
}

presence() {
  local runs=${RUNS:-5} peers=${PEERS:-10000} lag=() total=()
  ulimit -n "$(ulimit -Hn)"
  for ((r = 0; r < runs; r++)); do
    fresh
    "$cluster" start 2 -- "${flags[@]}" --max-pending-handshakes-per-ip 1024 \
      --new-links-per-ip-rate 0 >/dev/null
    until [[ $(metric 1 'mesh_cluster_members{state="live"}') == 2 ]]; do sleep 0.05; done
    local t0 ta="" tb=""
    t0=$(now)
    "$build/bench/idle_links" --broker-pid "$(cat "$MESH_CLUSTER_DIR/b0/pid")" \
      --address "127.0.0.1:$base" --links "$peers" --concurrency 256 --settle-ms 4000 \
      >/dev/null 2>&1 &
    local opener=$!
    while [[ -z $tb ]]; do
      [[ -z $ta && $(metric 0 mesh_peers_connected) -ge $peers ]] && ta=$(now)
      [[ $(metric 1 mesh_presence_peers) -ge $peers ]] && tb=$(now)
      sleep 0.005
    done
    [[ -z $ta ]] && ta=$tb
    wait "$opener" || true
    lag+=("$(calc "($tb - $ta) * 1000")")
    total+=("$(calc "$tb - $t0")")
    printf 'run %d: %d peers connected to b0 in %.2f s; b1 routed to all %.0f ms after the last\n' \
      "$r" "$peers" "$(calc "$ta - $t0")" "${lag[-1]}"
  done
  printf 'presence of %d peers, medians of %d: the other broker routes to all %.0f ms after the last connected (%.2f s from the first)\n' \
    "$peers" "$runs" "$(printf '%s\n' "${lag[@]}" | median)" \
    "$(printf '%s\n' "${total[@]}" | median)"
}

reconnect() {
  local runs=${RUNS:-5} n=${LISTENERS:-50} took=() cli=$build/client/mesh-cli
  local brokers="127.0.0.1:$base,127.0.0.1:$((base + 1))"
  for ((r = 0; r < runs; r++)); do
    fresh
    "$cluster" start 2 -- "${flags[@]}" >/dev/null
    local pids=() moved
    for ((i = 0; i < n; i++)); do
      "$cli" keygen --out "$work/peer-$r-$i.key" >/dev/null
      "$cli" listen --key "$work/peer-$r-$i.key" --broker "$brokers" >/dev/null 2>&1 &
      pids+=($!)
    done
    until [[ $(calc "$(metric 0 mesh_peers_connected) + $(metric 1 mesh_peers_connected)") == "$n" ]]; do
      sleep 0.05
    done
    moved=$(metric 0 mesh_peers_connected)
    local t0 t1
    t0=$(now)
    kill -TERM "$(cat "$MESH_CLUSTER_DIR/b0/pid")"
    until [[ $(metric 1 mesh_peers_connected) == "$n" ]]; do sleep 0.01; done
    t1=$(now)
    took+=("$(calc "($t1 - $t0) * 1000")")
    printf 'run %d: %d of %d peers were on the drained broker; all connected again %.0f ms after SIGTERM\n' \
      "$r" "$moved" "$n" "${took[-1]}"
    kill "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  done
  printf 'reconnect after GoAway, median of %d: every peer connected again %.0f ms after SIGTERM (goal < 2000 ms)\n' \
    "$runs" "$(printf '%s\n' "${took[@]}" | median)"
}

churn() {
  local runs=${RUNS:-1} keys=${KEYS:-200000} grace=${GRACE_MS:-10000} wave=10000
  local settle=${SETTLE_S:-30}  # after the grace: the allocator returns freed pages over seconds
  rss_of() { awk '/^VmRSS:/ {print $2 / 1024}' "/proc/$(cat "$MESH_CLUSTER_DIR/b$1/pid")/status"; }
  ulimit -n "$(ulimit -Hn)"
  for ((r = 0; r < runs; r++)); do
    fresh
    "$cluster" start 2 -- "${flags[@]}" --max-pending-handshakes-per-ip 1024 \
      --new-links-per-ip-rate 0 --presence-grace-ms "$grace" \
      --presence-max-skew-ms $((grace / 2)) >/dev/null
    until [[ $(metric 1 'mesh_cluster_members{state="live"}') == 2 ]]; do sleep 0.05; done
    sleep 1
    local before0 before1 after0 after1 end0 end1
    before0=$(rss_of 0); before1=$(rss_of 1)
    for ((done_keys = 0; done_keys < keys; done_keys += wave)); do
      "$build/bench/idle_links" --broker-pid "$(cat "$MESH_CLUSTER_DIR/b0/pid")" \
        --address "127.0.0.1:$base" --links "$wave" --concurrency 256 \
        --settle-ms 200 >/dev/null 2>&1
    done
    after0=$(rss_of 0); after1=$(rss_of 1)
    local entries
    entries=$(metric 1 mesh_presence_entries)
    until [[ $(metric 0 mesh_presence_entries) == 0 && $(metric 1 mesh_presence_entries) == 0 ]]; do
      sleep 0.5
    done
    sleep "$settle"
    end0=$(rss_of 0); end1=$(rss_of 1)
    printf 'run %d: %d keys connected once and left; RSS MiB b0 %.1f -> %.1f -> %.1f, b1 %.1f -> %.1f -> %.1f (b1 held %s presence entries before the grace)\n' \
      "$r" "$keys" "$before0" "$after0" "$end0" "$before1" "$after1" "$end1" "$entries"
  done
}

idle() {
  local runs=${RUNS:-3} mailboxes=${MAILBOXES:-100000} seconds=${IDLE_S:-60} b0=() b1=()
  for ((r = 0; r < runs; r++)); do
    fresh
    "$cluster" start 2 -- "${flags[@]}" >/dev/null
    until [[ $(metric 1 'mesh_cluster_members{state="live"}') == 2 ]]; do sleep 0.05; done
    "$bench" -b "127.0.0.1:$base" --mode fill --pairs 16 --count $((mailboxes / 16)) --size 8 \
      --recipients "$mailboxes" --threads 1 --json >/dev/null
    # At rest once what is homed at b1 has left b0's outbox.
    until [[ $(metric 0 mesh_outbox_messages) == 0 ]]; do sleep 0.1; done
    sleep 2
    local c0 c1 d0 d1
    c0=$(metric 0 process_cpu_seconds_total); c1=$(metric 1 process_cpu_seconds_total)
    sleep "$seconds"
    d0=$(metric 0 process_cpu_seconds_total); d1=$(metric 1 process_cpu_seconds_total)
    b0+=("$(calc "($d0 - $c0) * 100 / $seconds")"); b1+=("$(calc "($d1 - $c1) * 100 / $seconds")")
    printf 'run %d: %d mailboxes (b0 holds %s messages, b1 %s); idle CPU over %d s: b0 %.2f %%, b1 %.2f %%\n' \
      "$r" "$mailboxes" "$(metric 0 mesh_messages_queue_size)" "$(metric 1 mesh_messages_queue_size)" \
      "$seconds" "${b0[-1]}" "${b1[-1]}"
  done
  printf 'idle mesh of 2 brokers holding %d offline mailboxes, medians of %d: CPU b0 %.2f %%, b1 %.2f %% of one core\n' \
    "$mailboxes" "$runs" "$(printf '%s\n' "${b0[@]}" | median)" "$(printf '%s\n' "${b1[@]}" | median)"
}

case ${1:-all} in
  online) online ;;
  idle) idle ;;
  churn) churn ;;
  drain) drain ;;
  presence) presence ;;
  reconnect) reconnect ;;
  all) online; drain; presence; reconnect ;;
  *) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
