output "cluster_name" {
  description = "Name of the EKS cluster (the GitHub variable EKS_CLUSTER_NAME)."
  value       = module.eks.cluster_name
}

output "region" {
  description = "AWS region of the cluster and the registry (the GitHub variable AWS_REGION)."
  value       = var.region
}

output "update_kubeconfig_command" {
  description = "Command that writes a kubeconfig entry for the cluster."
  value       = "aws eks update-kubeconfig --region ${var.region} --name ${module.eks.cluster_name}"
}

output "ecr_repository_url" {
  description = "URL of the mesh-broker ECR repository (images are <url>:<commit SHA> and <url>:<release tag>)."
  value       = aws_ecr_repository.mesh_broker.repository_url
}

output "github_actions_role_arn" {
  description = "IAM role GitHub Actions assume through OIDC to push images to ECR and deploy (the GitHub variable AWS_ROLE_ARN)."
  value       = aws_iam_role.github_actions.arn
}

output "github_terraform_plan_role_arn" {
  description = "Read-only IAM role terraform.yml assumes through OIDC for terraform plan (the GitHub variable AWS_TERRAFORM_ROLE_ARN)."
  value       = aws_iam_role.github_terraform_plan.arn
}

output "github_repository_variables" {
  description = "The GitHub Actions repository variables the workflows read, with their values (set them with `gh variable set NAME --body VALUE`)."
  value = {
    AWS_REGION             = var.region
    AWS_ROLE_ARN           = aws_iam_role.github_actions.arn
    AWS_TERRAFORM_ROLE_ARN = aws_iam_role.github_terraform_plan.arn
    EKS_CLUSTER_NAME       = module.eks.cluster_name
  }
}

output "vpc_id" {
  description = "ID of the VPC."
  value       = module.vpc.vpc_id
}

output "gp3_storage_class" {
  description = "Name of the gp3 StorageClass (k8s/overlays/eks uses it for the brokers' volumes)."
  value       = kubernetes_storage_class_v1.gp3.metadata[0].name
}

output "grafana_admin_password_command" {
  description = "Command that prints Grafana's admin password."
  value       = "kubectl -n ${local.monitoring_ns} get secret kube-prometheus-stack-grafana -o jsonpath='{.data.admin-password}' | base64 -d"
}
