#!/usr/bin/env bash
# The Kubernetes manifests, offline: both overlays render with kustomize v2.0.3 (Debian 12's
# kubernetes-client) and, where this machine has it, kubectl's own kustomize (v5), to the same
# objects; then check-k8s.mjs validates them against the Kubernetes schemas and the "restricted"
# profile, and checks them against what mesh-broker accepts (--help) and exports (a scrape of a
# running broker), with a self-test that breaks them on purpose.
#   tests/deploy/check-k8s.sh MESH_BROKER
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
broker=$(realpath "$1")
# shellcheck source=tests/deploy/tools.sh
source "$root/tests/deploy/tools.sh"
work=$(mktemp -d)
trap 'pkill -INT -f "$work/data" 2>/dev/null || true; rm -rf "$work"' EXIT

tools_apt python3 curl nodejs npm
modules=$(tools_npm) || exit $?
kubectl_v2=$(tools_debian_binary kubernetes-client usr/bin/kubectl)
renderers=("$kubectl_v2")
if command -v kubectl >/dev/null && ! [[ $(readlink -f "$(command -v kubectl)") -ef $kubectl_v2 ]] &&
  kubectl version --client 2>/dev/null | grep -q 'Kustomize Version: v[3-9]'; then
  renderers+=("$(command -v kubectl)")
fi

# Render each overlay with each kustomize; all renderings of an overlay must be the same objects.
renders=()
for overlay in dev eks; do
  for i in "${!renderers[@]}"; do
    "${renderers[i]}" kustomize "$root/k8s/overlays/$overlay" >"$work/$overlay-$i.yaml" 2>"$work/err" ||
      { cat "$work/err"; echo "FAIL: ${renderers[i]} kustomize k8s/overlays/$overlay"; exit 1; }
    echo "rendered k8s/overlays/$overlay with $("${renderers[i]}" version --client 2>/dev/null | grep -o 'Kustomize Version: v[0-9.]*\|GitVersion:"v[0-9.]*"' | head -1)"
  done
  for i in "${!renderers[@]}"; do
    ((i == 0)) && continue
    node "$root/tests/deploy/check-k8s.mjs" --node-modules "$modules" \
      --same "$work/$overlay-0.yaml" --and "$work/$overlay-$i.yaml"
    echo "k8s/overlays/$overlay: kustomize v2.0.3 and v5 render the same objects"
  done
  renders+=(--render "$overlay=$work/$overlay-0.yaml")
done

# What the broker accepts and exports: its --help, and a scrape of a running one.
"$broker" --help >"$work/help.txt"
"$broker" --data-dir "$work/data" --listen-peer 127.0.0.1:0 --listen-grpc "" \
  --listen-http 127.0.0.1:0 --listen-cluster 127.0.0.1:0 2>"$work/broker.log" &
port=""
for _ in $(seq 150); do
  port=$(python3 -c 'import json,sys
for line in open(sys.argv[1]):
    e = json.loads(line)
    if e.get("event") == "listening" and e.get("listener") == "http": print(e["port"])' "$work/broker.log" 2>/dev/null || true)
  [[ -n $port ]] && break
  sleep 0.1
done
[[ -n $port ]] || { cat "$work/broker.log"; echo "FAIL: the broker did not listen"; exit 1; }
# The HTTP listener is up before the store is (/healthz says "starting", the rest answers 503):
# wait for readiness before reading /metrics.
for _ in $(seq 150); do
  curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
  sleep 0.1
done
curl -sSf "http://127.0.0.1:$port/metrics" >"$work/metrics.txt"
kill -INT %1
wait %1 || true

node "$root/tests/deploy/check-k8s.mjs" --node-modules "$modules" "${renders[@]}" \
  --help "$work/help.txt" --metrics "$work/metrics.txt" --alerts "$root/monitoring/alerts.yml" \
  --adapter "$root/monitoring/prometheus-adapter-values.yaml" --self-test
"$root/scripts/k8s-rules.sh" --check
echo "deploy.k8s: PASS"
