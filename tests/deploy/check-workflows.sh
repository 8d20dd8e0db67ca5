#!/usr/bin/env bash
# .github/workflows/, offline:
#   1. check-workflows.mjs: every workflow parses and validates against GitHub's workflow schema
#      (GitHub's own parser, @actions/workflow-parser), every `uses:` is pinned (SHA or exact
#      version), every workflow has `permissions:` (id-token: write only in jobs that log in with
#      OIDC), and every `run:` script passes Debian's shellcheck;
#   2. the same check on deliberately broken workflows (in a temp dir) must fail and name each
#      breakage, so this test cannot pass vacuously.
# Run from anywhere: bash tests/deploy/check-workflows.sh
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
shopt -s inherit_errexit
root=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=tools.sh disable=SC1091
source "$root/tests/deploy/tools.sh"
cd "$root"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

tools_cmds shellcheck=shellcheck
modules=$(tools_npm) || exit $?
check() {
  node "$root/tests/deploy/check-workflows.mjs" --node-modules "$modules" "$@"
}

# 1. The workflows.
echo "== check-workflows.mjs .github/workflows ($(shellcheck --version | sed -n 's/^version: /shellcheck /p'))"
if ! check --dir .github/workflows; then
  echo "check-workflows: FAIL"
  exit 1
fi

# 2. The negative case: one workflow the schema rejects, one that breaks each rule.
echo "== negative case: broken workflows must be reported"
broken=$work/workflows
mkdir -p "$broken"
cat >"$broken/schema.yml" <<'EOF'
name: schema
on: pushh
permissions:
  contents: reed
jobs:
  build:
    runs-on: ubuntu-24.04
    steps:
      - uses: actions/checkout@v4.2.2
        with1: x
EOF
cat >"$broken/rules.yml" <<'EOF'
name: rules
on: push
jobs:
  build:
    runs-on: ubuntu-24.04
    permissions:
      id-token: write
    steps:
      - uses: actions/checkout@v4
      - name: unquoted
        run: |
          cd $TARGET_DIR
          echo "${{ github.sha }}"
  push:
    runs-on: ubuntu-24.04
    permissions:
      contents: read
    steps:
      - uses: aws-actions/configure-aws-credentials@b47578312673ae6fa5b5096b330d9fbac3d116df # v4.2.1
        with:
          role-to-assume: arn:aws:iam::123456789012:role/example
          aws-region: eu-west-1
EOF
status=0
check --dir "$broken" >"$work/broken.out" 2>&1 || status=$?
tools_negative_case "$status" "$work/broken.out" "the broken workflows" \
  "schema.yml:2: workflow schema: Unexpected value 'pushh'" \
  "schema.yml:4: workflow schema: Unexpected value 'reed'" \
  "schema.yml:10: workflow schema: Unexpected value 'with1'" \
  "rules.yml:1: no top-level permissions:" \
  "rules.yml:9: uses: actions/checkout@v4 is not pinned" \
  "rules.yml:12: shellcheck (job build, step \"unquoted\"): warning: Use 'cd ... || exit'" \
  "job build has id-token: write but logs in with no OIDC action" \
  "job push logs in with OIDC but lacks permissions id-token: write" ||
  { echo "check-workflows: FAIL"; exit 1; }

echo "check-workflows: PASS (the workflows match GitHub's schema, pin their actions, grant least privilege and pass shellcheck; the broken ones are caught)"
