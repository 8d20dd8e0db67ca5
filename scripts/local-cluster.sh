#!/usr/bin/env bash
# A mesh of N brokers on loopback, for people and tests.
#
#   scripts/local-cluster.sh start [N] [-- extra mesh-broker flags]   start N brokers (default 3)
#   scripts/local-cluster.sh add                       one more broker, joining the others
#   scripts/local-cluster.sh stop [I]                  SIGTERM (drain) broker I, or all
#   scripts/local-cluster.sh kill I                    SIGKILL broker I (its data stays)
#   scripts/local-cluster.sh restart I                 start broker I again on its data dir
#   scripts/local-cluster.sh status                    members as broker 0 sees them
#
# Broker I listens on loopback: peers BASE+I, cluster BASE+100+I, REST BASE+200+I,
# gRPC BASE+300+I, WebSocket links BASE+400+I (BASE: MESH_CLUSTER_BASE_PORT, default 17700).
# Data, logs and the cluster secret live in MESH_CLUSTER_DIR (default ./local-cluster). The
# binary is MESH_BROKER, else build/broker/mesh-broker (built by scripts/build.sh).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dir=${MESH_CLUSTER_DIR:-$PWD/local-cluster}
base=${MESH_CLUSTER_BASE_PORT:-17700}
broker=${MESH_BROKER:-$root/build/broker/mesh-broker}

die() { echo "local-cluster: $*" >&2; exit 1; }

secret() {
  if [[ ! -f $dir/cluster.secret ]]; then
    mkdir -p "$dir"
    (umask 077 && openssl rand -hex 32 >"$dir/cluster.secret")
  fi
}

count() { find "$dir" -maxdepth 1 -name 'b*' -type d 2>/dev/null | wc -l; }

pid_of() { cat "$dir/b$1/pid" 2>/dev/null || true; }

running() { local pid; pid=$(pid_of "$1"); [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; }

extra_flags() { cat "$dir/flags" 2>/dev/null || true; }

launch() {
  local i=$1
  [[ -x $broker ]] || die "no broker binary at $broker (run scripts/build.sh, or set MESH_BROKER)"
  running "$i" && die "broker $i is already running"
  mkdir -p "$dir/b$i"
  # shellcheck disable=SC2046 # the saved extra flags are words on purpose
  "$broker" --data-dir "$dir/b$i/data" --node-name "b$i" \
    --listen-peer "127.0.0.1:$((base + i))" --listen-cluster "127.0.0.1:$((base + 100 + i))" \
    --listen-http "127.0.0.1:$((base + 200 + i))" --listen-grpc "127.0.0.1:$((base + 300 + i))" \
    --listen-ws "127.0.0.1:$((base + 400 + i))" \
    --cluster-secret-file "$dir/cluster.secret" --cluster-peers "127.0.0.1:$((base + 100))" \
    $(extra_flags) 2>>"$dir/b$i/broker.log" &
  echo $! >"$dir/b$i/pid"
  for _ in $(seq 150); do
    grep -q '"listener":"peer"' "$dir/b$i/broker.log" 2>/dev/null && break
    kill -0 "$(pid_of "$i")" 2>/dev/null || die "broker $i exited: $(tail -3 "$dir/b$i/broker.log")"
    sleep 0.1
  done
  echo "b$i  peers 127.0.0.1:$((base + i))  rest http://127.0.0.1:$((base + 200 + i))  grpc 127.0.0.1:$((base + 300 + i))  log $dir/b$i/broker.log"
}

stop_one() {
  local i=$1 signal=${2:-TERM} pid
  pid=$(pid_of "$i")
  [[ -n $pid ]] || return 0
  if kill -"$signal" "$pid" 2>/dev/null; then
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  fi
  rm -f "$dir/b$i/pid"
  if [[ $signal == TERM && -f $dir/b$i/data/DRAINED ]]; then
    echo "b$i drained: $(cat "$dir/b$i/data/DRAINED")"
  fi
}

command=${1:-}
shift || true
case $command in
  start)
    n=${1:-3}
    shift || true
    [[ ${1:-} == -- ]] && shift
    secret
    echo "$*" >"$dir/flags"
    for ((i = 0; i < n; i++)); do launch "$i"; done
    ;;
  add) secret; launch "$(count)" ;;
  restart) launch "${1:?which broker}" ;;
  kill) stop_one "${1:?which broker}" KILL ;;
  stop)
    if [[ -n ${1:-} ]]; then
      stop_one "$1"
    else
      for ((i = $(count) - 1; i >= 0; i--)); do stop_one "$i"; done
    fi
    ;;
  status)
    token=$(cat "$dir/b0/data/admin.token")
    curl -s -H "authorization: Bearer $token" "http://127.0.0.1:$((base + 200))/api/v1/members"
    echo
    ;;
  *) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
