# Terraform and provider versions. Providers are pinned exactly; `terraform init` records their
# checksums in .terraform.lock.hcl (commit it once it exists). Cross-variable validation
# (variables.tf) needs Terraform 1.9 or later.
terraform {
  required_version = ">= 1.9.0, < 2.0.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "5.100.0"
    }
    helm = {
      source  = "hashicorp/helm"
      version = "2.17.0"
    }
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = "2.36.0"
    }
    random = {
      source  = "hashicorp/random"
      version = "3.7.2"
    }
  }
}
