#!/usr/bin/env bash
# terraform/, offline (no cloud account, no provider downloads):
#   1. `terraform fmt -check -recursive` where terraform is installed (a fresh Debian 12 has none:
#      then it says so and goes on);
#   2. check-terraform.mjs: every .tf file parses with HashiCorp's HCL parser, every reference
#      resolves, registry module outputs are the ones listed in terraform/module-outputs.json,
#      modules and providers are pinned, variables are described and validated, and the outputs
#      the workflows and docs use exist;
#   3. the same check on a deliberately broken copy (in a temp dir) must fail and name each
#      breakage, so this test cannot pass vacuously.
# Run from anywhere: bash tests/deploy/check-terraform.sh
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
shopt -s inherit_errexit
root=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=tools.sh disable=SC1091
source "$root/tests/deploy/tools.sh"
cd "$root"

required_outputs=cluster_name,region,update_kubeconfig_command,ecr_repository_url,github_actions_role_arn
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# 1. Formatting.
if command -v terraform >/dev/null 2>&1; then
  tf=(terraform)
  # A TF_CLI_CONFIG_FILE naming a missing file only makes terraform warn: leave it out.
  if [[ -n ${TF_CLI_CONFIG_FILE:-} && ! -e $TF_CLI_CONFIG_FILE ]]; then tf=(env -u TF_CLI_CONFIG_FILE terraform); fi
  echo "== terraform fmt -check -recursive terraform ($("${tf[@]}" version | head -n 1))"
  if ! "${tf[@]}" fmt -check -recursive -diff terraform; then
    echo "check-terraform: FAIL (terraform fmt: run 'terraform fmt -recursive terraform')"
    exit 1
  fi
else
  echo "== terraform fmt: SKIPPED (terraform is not installed here; Debian 12 does not package it)"
fi

# 2. Parse and references.
modules=$(tools_npm) || exit $?
check() {
  node "$root/tests/deploy/check-terraform.mjs" --node-modules "$modules" "$@"
}
echo "== check-terraform.mjs terraform/"
if ! check --dir terraform --require-outputs "$required_outputs"; then
  echo "check-terraform: FAIL"
  exit 1
fi

# 3. The negative case: a copy of terraform/ with one breakage of each kind.
echo "== negative case: a broken copy of terraform/ must be reported"
broken=$work/terraform
mkdir -p "$broken"
tar -C terraform --exclude=.terraform -cf - . | tar -C "$broken" -xf -
cat >>"$broken/main.tf" <<'EOF'

resource "aws_ssm_parameter" "broken" {
  name  = "/mesh/${var.no_such_variable}"
  type  = "String"
  value = join(",", module.vpc.no_such_output)
  tags  = { a = local.no_such_local, b = aws_iam_role.no_such_role.arn }
}

module "unpinned" {
  source = "terraform-aws-modules/security-group/aws"
}

variable "undocumented" {
  type = string
}

resource "tls_private_key" "unpinned_provider" {
  algorithm = "ED25519"
  rsa_bits  = var.undocumented == "" ? 2048 : 4096
}
EOF
sed -i 's/^output "region" {/output "region_renamed" {/' "$broken/outputs.tf"
printf 'resource "aws_s3_bucket" "syntax" {\n  bucket = \n}\n' >"$broken/syntax-error.tf"
printf 'node_instance_type = "m6i.large"\n' >"$broken/typo.auto.tfvars"
status=0
check --dir "$broken" --require-outputs "$required_outputs" >"$work/broken.out" 2>&1 || status=$?
# syntax-error.tf does not parse, so the rest is checked without it.
tools_negative_case "$status" "$work/broken.out" "the broken copy" \
  "syntax-error.tf: HCL parse error" \
  'no variable "no_such_variable"' \
  'module vpc has no output "no_such_output" (not listed for terraform-aws-modules/vpc/aws@5.21.0' \
  'no local "no_such_local"' \
  'no resource "aws_iam_role.no_such_role"' \
  "module unpinned (terraform-aws-modules/security-group/aws) has no exact version" \
  "variable undocumented has no description" \
  "variable undocumented (string) has no validation block" \
  "provider tls (used by resource tls_private_key.unpinned_provider) is not in required_providers" \
  "required output region is missing" \
  "typo.auto.tfvars: sets node_instance_type, which is not a variable of" ||
  { echo "check-terraform: FAIL"; exit 1; }

echo "check-terraform: PASS (terraform/ parses, references resolve, versions pinned; the broken copy is caught)"
