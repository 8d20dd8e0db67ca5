#!/usr/bin/env bash
# Holds this working tree's broker against an older commit's, in one sitting:
#   scripts/bench-compare.sh REF       (REF: a commit, tag or HEAD~5; RUNS rounds, default 3)
# Builds REF's mesh-broker and mesh-bench beside the working tree (build-compare/src, a git
# worktree, with REF's scripts/build.sh; ccache keeps it cheap), then alternates the two builds
# round by round:
#   online16   mesh-bench 1:1 256 B, 16 pairs, one broker (msgs/s)
#   online1    the same, one pair
#   p99@5k     16 pairs paced at 5,000 msgs/s: delivery p99 (us; lower is better)
#   enqueue    offline: 16 pairs fill mailboxes (msgs/s), then
#   drain      the recipients take them (msgs/s)
#   cross16    16 pairs, every pair crossing two brokers of a mesh (each build's own
#              scripts/local-cluster.sh; left out for a REF without one)
#   link256    this build's link_bench: 256 B frames/s over one link, no broker: the ceiling the
#              online figures are held against, measured in the same rounds
# and prints each figure's medians and the ratio this/REF (for p99, REF/this: above 1 is better).
# Each build's broker runs with one I/O thread (--threads 1), as the load generator does.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
ref=${1:?usage: scripts/bench-compare.sh REF}
runs=${RUNS:-3}
this_build=${MESH_BUILD:-$root/build}
compare=$root/build-compare
ref_src=$compare/src
ref_build=$ref_src/build

# --- REF's binaries ---
sha=$(git -C "$root" rev-parse --verify "$ref^{commit}")
if [[ ! -d $ref_src ]]; then
  git -C "$root" worktree add --detach "$ref_src" "$sha" >/dev/null
else
  git -C "$ref_src" checkout -q --detach "$sha"
fi
echo "compare: building $ref ($(git -C "$root" rev-parse --short "$sha")) in $ref_build" >&2
# REF's own build script: its ccache settings share the cache across clones, so only what
# differs from this tree is compiled.
(cd "$ref_src" && nice scripts/build.sh --target mesh-broker mesh-bench) >"$compare/build.log" 2>&1 ||
  { tail -20 "$compare/build.log"; exit 1; }
"$root/scripts/build.sh" >/dev/null 2>&1

work=$(mktemp -d)
broker_pid=
cleanup() {
  [[ -n $broker_pid ]] && kill "$broker_pid" 2>/dev/null && wait "$broker_pid" 2>/dev/null
  for src in "$root" "$ref_src"; do
    [[ -x $src/scripts/local-cluster.sh ]] &&
      MESH_CLUSTER_DIR=$work/cluster "$src/scripts/local-cluster.sh" stop >/dev/null 2>&1
  done
  rm -rf "$work"
  return 0
}
trap cleanup EXIT

field() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

# Flags both builds may not know are passed only when the broker's --help lists them.
broker_flags() {
  local help flags=(--send-rate 0 --threads 1)
  help=$("$1" --help 2>&1)
  for flag in --listen-grpc --listen-http --listen-ws; do
    grep -q -- "$flag" <<<"$help" && flags+=("$flag" "")
  done
  grep -q -- "--sender-max-messages" <<<"$help" && flags+=(--sender-max-messages 100000000)
  printf '%s\n' "${flags[@]}"
}

# One round of one build: prints "figure value" lines.
round() {
  local build=$1 src=$2 dir=$work/round port
  rm -rf "$dir" && mkdir -p "$dir"
  mapfile -t flags < <(broker_flags "$build/broker/mesh-broker")
  "$build/broker/mesh-broker" --data-dir "$dir/data" --listen-peer 127.0.0.1:0 "${flags[@]}" \
    2>"$dir/log" &
  broker_pid=$!
  for _ in $(seq 150); do
    port=$(grep -o '"port":[0-9]*' "$dir/log" 2>/dev/null | head -1 | grep -o '[0-9]*$' || true)
    [[ -n $port ]] && break
    sleep 0.1
  done
  local bench=("$build/bench/mesh-bench" -b "127.0.0.1:$port" --threads 1 --json)
  echo "online16 $("${bench[@]}" --pairs 16 --count 20000 | field "d['msgs_per_s']")"
  echo "online1 $("${bench[@]}" --pairs 1 --count 20000 | field "d['msgs_per_s']")"
  echo "p99@5k $("${bench[@]}" --pairs 16 --rate 5000 --duration 4 --warmup 1 | field "d['latency_us']['p99']")"
  local offline
  offline=$("${bench[@]}" --mode offline --pairs 16 --count 5000)
  echo "enqueue $(field "d['enqueue_msgs_per_s']" <<<"$offline")"
  echo "drain $(field "d['drain_msgs_per_s']" <<<"$offline")"
  kill "$broker_pid" && wait "$broker_pid" 2>/dev/null || true
  broker_pid=
  if [[ -x $src/scripts/local-cluster.sh ]]; then
    local base=27900 cluster=$src/scripts/local-cluster.sh
    export MESH_CLUSTER_DIR=$work/cluster MESH_CLUSTER_BASE_PORT=$base
    export MESH_BROKER=$build/broker/mesh-broker
    rm -rf "$work/cluster"
    # local-cluster sets the listeners itself; the rest of the flags carry over.
    local cluster_flags=() i
    for ((i = 0; i < ${#flags[@]}; i++)); do
      if [[ ${flags[i]} == --listen-* ]]; then ((i += 1)); else cluster_flags+=("${flags[i]}"); fi
    done
    if "$cluster" start 2 -- "${cluster_flags[@]}" >/dev/null 2>&1; then
      sleep 2
      echo "cross16 $("$build/bench/mesh-bench" --brokers "127.0.0.1:$base,127.0.0.1:$((base + 1))" \
        --placement cross --pairs 16 --count 20000 --threads 1 --json | field "d['msgs_per_s']")"
    fi
    "$cluster" stop >/dev/null 2>&1 || true
  fi
}

ceiling() {
  "$this_build/bench/link_bench" --benchmark_filter='BM_LinkThroughput/256/' \
    --benchmark_format=json 2>/dev/null | field "d['benchmarks'][0]['items_per_second']"
}

for ((r = 1; r <= runs; r++)); do
  round "$ref_build" "$ref_src" | sed "s/^/ref /" | tee -a "$work/results"
  round "$this_build" "$root" | sed "s/^/this /" | tee -a "$work/results"
  echo "this link256 $(ceiling)" | tee -a "$work/results"
done

python3 - "$work/results" "$ref" <<'PY'
import statistics, sys
values = {}
for line in open(sys.argv[1]):
    build, figure, value = line.split()
    values.setdefault(figure, {}).setdefault(build, []).append(float(value))
print(f"\n{'figure':<10} {'ref ' + sys.argv[2]:>16} {'this':>12} {'ratio':>7}")
for figure, by in values.items():
    ref, this = statistics.median(by.get("ref", [0])), statistics.median(by.get("this", [0]))
    if not ref:  # measured on this build only: the ceiling, or a mesh REF cannot start
        what = "the one-link ceiling" if figure == "link256" else "this build only"
        print(f"{figure:<10} {'-':>16} {this:>12.0f} {'-':>7}  ({what})")
        continue
    lower_better = figure.startswith("p99")
    ratio = (ref / this if lower_better else this / ref) if ref and this else float("nan")
    print(f"{figure:<10} {ref:>16.0f} {this:>12.0f} {ratio:>7.2f}{'  (lower is better)' if lower_better else ''}")
PY
