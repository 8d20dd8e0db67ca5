# shellcheck shell=bash
# Tooling for the deploy checks (CTest label `deploy`), sourced by tests/deploy/*.sh:
#
#   tools_apt PKG...              installs the Debian packages among PKG that are missing
#   tools_cmds CMD=PKG...         installs PKG for every CMD that is not on PATH
#   tools_npm                     installs tests/deploy/package.json + package-lock.json with
#                                 `npm ci` into the tools dir when missing or when the lock
#                                 changed, and prints the node_modules path on stdout; returns
#                                 $TOOLS_SKIP (77) when the registry cannot be reached
#   tools_negative_case STATUS FILE WHAT MSG...
#                                 a check run on WHAT, broken on purpose, exited STATUS with output
#                                 FILE: it must have failed and reported every MSG (else 1)
#   tools_debian_binary PKG PATH  prints the absolute path of file PATH (e.g. usr/bin/kubectl)
#                                 of Debian package PKG: the installed one when PKG is
#                                 installed, else one unpacked (not installed) in the tools dir,
#                                 so two versions of a tool can coexist
#
# The tools dir is ${MESH_TOOLS_DIR:-<repo>/build/deploy-tools} (build/ is ignored by git).
# Progress goes to stderr, so `nm=$(tools_npm)` captures only the path.

TOOLS_SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOOLS_REPO=$(cd "$TOOLS_SRC_DIR/../.." && pwd)
TOOLS_DIR=${MESH_TOOLS_DIR:-$TOOLS_REPO/build/deploy-tools}
# tools_npm's status (and the checks' exit code, CTest's SKIP_RETURN_CODE) when the npm
# registry cannot be reached.
TOOLS_SKIP=77

tools_log() {
  echo "tools: $*" >&2
}

# Installs the given Debian packages that dpkg does not know as installed (like scripts/deps.sh:
# apt-get update, then install without recommends; through sudo when not root). nodejs and npm
# count as present when `node` and `npm` are on PATH: a Node from elsewhere (NodeSource, nvm)
# bundles npm, and Debian's npm package would fight it.
tools_apt() {
  local p missing=()
  for p in "$@"; do
    case $p in
      nodejs) command -v node >/dev/null 2>&1 && continue ;;
      npm) command -v npm >/dev/null 2>&1 && continue ;;
    esac
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  tools_log "installing ${missing[*]} (apt)"
  local sudo=()
  [[ $(id -u) -eq 0 ]] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq >&2 || return
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || return
}

# tools_cmds node=nodejs npm=npm: installs a package only when its command is missing,
# so a node that came from elsewhere (another repository, nvm) is used as it is.
tools_cmds() {
  local spec pkgs=()
  for spec in "$@"; do
    command -v "${spec%%=*}" >/dev/null 2>&1 || pkgs+=("${spec#*=}")
  done
  ((${#pkgs[@]})) || return 0
  tools_apt "${pkgs[@]}"
}

# Node 18 (Debian 12's nodejs) or later.
tools_check_node() {
  local major
  major=$(node -p 'process.versions.node.split(".")[0]') || return
  if ((major < 18)); then
    tools_log "node $(node --version) is too old: the deploy checks need Node 18 or later"
    return 1
  fi
}

# Installs the npm packages of tests/deploy/package-lock.json into $TOOLS_DIR and prints
# its node_modules path. Reinstalls only when node_modules is missing or the lock's hash changed.
# Two checks may run at once (ctest -j): a lock file serialises the install.
tools_npm() {
  # Every step ends in `|| return`: callers use $(tools_npm), where errexit does not apply.
  tools_cmds node=nodejs npm=npm flock=util-linux || return
  tools_apt ca-certificates || return
  tools_check_node || return
  mkdir -p "$TOOLS_DIR" || return
  local want
  want=$(cat "$TOOLS_SRC_DIR/package.json" "$TOOLS_SRC_DIR/package-lock.json" | sha256sum | cut -d' ' -f1) || return
  (
    flock 9 || exit
    if [[ -d $TOOLS_DIR/node_modules && -f $TOOLS_DIR/.lock-sha256 &&
      $(cat "$TOOLS_DIR/.lock-sha256") == "$want" ]]; then
      exit 0
    fi
    tools_log "npm ci into $TOOLS_DIR (node $(node --version), npm $(npm --version))"
    rm -rf "$TOOLS_DIR/node_modules" "$TOOLS_DIR/.lock-sha256" || exit
    cp "$TOOLS_SRC_DIR/package.json" "$TOOLS_SRC_DIR/package-lock.json" "$TOOLS_DIR/" || exit
    if ! (cd "$TOOLS_DIR" && npm ci --no-audit --no-fund --loglevel=error) >"$TOOLS_DIR/npm.log" 2>&1; then
      cat "$TOOLS_DIR/npm.log" >&2
      # No way to the registry (offline, or a TLS-intercepting proxy whose CA this machine
      # lacks): the checkers cannot be fetched, which says nothing about the artefacts.
      if grep -qE 'code (E[A-Z]*CONN|ENOTFOUND|EAI_AGAIN|ETIMEDOUT|ENETUNREACH|SELF_SIGNED_CERT|UNABLE_TO_(GET|VERIFY)|CERT_|DEPTH_ZERO)' "$TOOLS_DIR/npm.log"; then
        tools_log "SKIP: the npm registry cannot be reached from here, so the checkers cannot be installed"
        exit "$TOOLS_SKIP"
      fi
      exit 1
    fi
    echo "$want" >"$TOOLS_DIR/.lock-sha256"
  ) 9>"$TOOLS_DIR/.install.lock" || return
  tools_log "node_modules: $TOOLS_DIR/node_modules"
  echo "$TOOLS_DIR/node_modules"
}

tools_debian_binary() {
  local pkg=$1 rel=${2#/}
  if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    [[ -e /$rel ]] || { tools_log "$pkg is installed but has no /$rel"; return 1; }
    echo "/$rel"
    return 0
  fi
  local dir=$TOOLS_DIR/debs/$pkg
  if [[ ! -e $dir/root/$rel ]]; then
    tools_log "unpacking $pkg into $dir"
    rm -rf "$dir" && mkdir -p "$dir/root" || return
    if ! (cd "$dir" && apt-get download -qq "$pkg" >&2 2>/dev/null); then
      local sudo=()
      [[ $(id -u) -eq 0 ]] || sudo=(sudo)
      "${sudo[@]}" apt-get update -qq >&2 || return
      (cd "$dir" && apt-get download -qq "$pkg" >&2) || return
    fi
    dpkg-deb -x "$dir"/*.deb "$dir/root" || return
    [[ -e $dir/root/$rel ]] || { tools_log "$pkg has no $rel"; return 1; }
  fi
  echo "$dir/root/$rel"
}

tools_negative_case() {
  local status=$1 out=$2 what=$3 message unreported=0
  shift 3
  if ((status == 0)); then
    cat "$out"
    echo "FAIL: $what passed the check"
    return 1
  fi
  for message in "$@"; do
    if grep -qF -- "$message" "$out"; then
      echo "   reported: $message"
    else
      echo "   NOT reported: $message"
      unreported=1
    fi
  done
  if ((unreported)); then
    echo "--- checker output on $what:"
    cat "$out"
    echo "FAIL: $what was not fully reported"
    return 1
  fi
}
