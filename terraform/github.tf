# GitHub Actions reach AWS through OIDC: no long-lived keys anywhere. Two roles:
#
# - github_actions: assumed by image.yml (push to ECR, from main and release tags) and by
#   deploy.yml (the `production` environment): ECR push to mesh-broker only, eks:DescribeCluster
#   on this cluster only, and in Kubernetes the group mesh-deployers (admin of namespace mesh).
# - github_terraform_plan: assumed by terraform.yml (pull requests and main) for `terraform plan`:
#   AWS ReadOnlyAccess and a read-only view of the cluster. It cannot apply.

locals {
  github_oidc_host         = "token.actions.githubusercontent.com"
  github_oidc_provider_arn = var.github_oidc_provider_arn != "" ? var.github_oidc_provider_arn : aws_iam_openid_connect_provider.github[0].arn
  github_repo_subject      = "repo:${var.github_repository}"
}

resource "aws_iam_openid_connect_provider" "github" {
  count = var.github_oidc_provider_arn == "" ? 1 : 0

  url            = "https://${local.github_oidc_host}"
  client_id_list = ["sts.amazonaws.com"]
  # AWS validates GitHub's certificate against its own trust store; these are GitHub's published
  # intermediate thumbprints, kept because the API still takes a list.
  thumbprint_list = [
    "6938fd4d98bab03faadb97b34396831e3780aea1",
    "1c58a3a8518e8759bf075b76b750d4f2df264fcd",
  ]
}

# --- the push-and-deploy role ------------------------------------------------------------------

data "aws_iam_policy_document" "github_actions_trust" {
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = [local.github_oidc_provider_arn]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.github_oidc_host}:aud"
      values   = ["sts.amazonaws.com"]
    }

    # main (image builds), release tags (image builds), the approved environment (deploys).
    condition {
      test     = "StringLike"
      variable = "${local.github_oidc_host}:sub"
      values = [
        "${local.github_repo_subject}:ref:refs/heads/main",
        "${local.github_repo_subject}:ref:refs/tags/v*",
        "${local.github_repo_subject}:environment:${var.github_deploy_environment}",
      ]
    }
  }
}

resource "aws_iam_role" "github_actions" {
  name                 = "${var.cluster_name}-github-actions"
  description          = "Assumed by GitHub Actions of ${var.github_repository} through OIDC: push mesh-broker images to ECR, deploy to ${var.cluster_name}"
  assume_role_policy   = data.aws_iam_policy_document.github_actions_trust.json
  max_session_duration = 3600
}

data "aws_iam_policy_document" "github_actions" {
  # GetAuthorizationToken has no resource-level permissions.
  statement {
    sid       = "EcrLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }

  statement {
    sid = "EcrPushPullMeshBroker"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:BatchGetImage",
      "ecr:CompleteLayerUpload",
      "ecr:DescribeImages",
      "ecr:DescribeRepositories",
      "ecr:GetDownloadUrlForLayer",
      "ecr:InitiateLayerUpload",
      "ecr:PutImage",
      "ecr:UploadLayerPart",
    ]
    resources = [aws_ecr_repository.mesh_broker.arn]
  }

  statement {
    sid       = "EksKubeconfig"
    actions   = ["eks:DescribeCluster"]
    resources = ["arn:${data.aws_partition.current.partition}:eks:${var.region}:${data.aws_caller_identity.current.account_id}:cluster/${var.cluster_name}"]
  }
}

resource "aws_iam_role_policy" "github_actions" {
  name   = "push-and-deploy"
  role   = aws_iam_role.github_actions.id
  policy = data.aws_iam_policy_document.github_actions.json
}

# --- the plan role -----------------------------------------------------------------------------

data "aws_iam_policy_document" "github_terraform_plan_trust" {
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = [local.github_oidc_provider_arn]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.github_oidc_host}:aud"
      values   = ["sts.amazonaws.com"]
    }

    condition {
      test     = "StringLike"
      variable = "${local.github_oidc_host}:sub"
      values = [
        "${local.github_repo_subject}:pull_request",
        "${local.github_repo_subject}:ref:refs/heads/main",
      ]
    }
  }
}

resource "aws_iam_role" "github_terraform_plan" {
  name                 = "${var.cluster_name}-github-terraform-plan"
  description          = "Assumed by terraform.yml of ${var.github_repository} through OIDC: terraform plan (read-only)"
  assume_role_policy   = data.aws_iam_policy_document.github_terraform_plan_trust.json
  max_session_duration = 3600
}

resource "aws_iam_role_policy_attachment" "github_terraform_plan_read_only" {
  role       = aws_iam_role.github_terraform_plan.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/ReadOnlyAccess"
}
