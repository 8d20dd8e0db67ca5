#!/usr/bin/env bash
# Installs the Debian 12 packages mesh-broker needs to build, run and test.
#   scripts/deps.sh          everything (build, tests, benchmarks)
#   scripts/deps.sh build    only what building the binaries needs (the image's build stage)
# Idempotent: apt runs only when a package is missing, so a second run takes a second.
set -euo pipefail

PACKAGES=(
  # toolchain
  cmake ninja-build ccache pkg-config clang
  # libraries
  libsodium-dev libprotobuf-dev protobuf-compiler libabsl-dev libboost-dev libspdlog-dev libcli11-dev
  librocksdb-dev nlohmann-json3-dev libjemalloc-dev
  libgrpc++-dev protobuf-compiler-grpc prometheus-cpp-dev libssl-dev
)
if [[ ${1:-} != build ]]; then
  PACKAGES+=(
    # sanitizers, libFuzzer
    libclang-rt-14-dev git
    # tests and benchmarks
    libgtest-dev libgmock-dev libbenchmark-dev python3 python3-dissononce procps
    python3-grpcio prometheus curl wrk openssl
    # the TypeScript client's tests (web/): a real browser, driven headless
    chromium
  )
  # Node 18 or later and npm for web/: Debian's, unless a Node is already on PATH (one from
  # NodeSource bundles npm, and Debian's npm package would fight it).
  command -v node >/dev/null 2>&1 || PACKAGES+=(nodejs)
  command -v npm >/dev/null 2>&1 || PACKAGES+=(npm)
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}" >&2
  SUDO=""
  [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
