# mesh-broker on Amazon EKS: the VPC (three AZs), the cluster and its managed node group, and the
# names shared with k8s/ and .github/workflows/.

locals {
  # Names shared with k8s/ (namespace, StatefulSet) and the workflows (ECR repository).
  app_name           = "mesh-broker"
  app_namespace      = "mesh"
  monitoring_ns      = "monitoring"
  deployers_group    = "mesh-deployers"
  gp3_storage_class  = "gp3"
  lb_controller_sa   = "aws-load-balancer-controller"
  ebs_csi_controller = "ebs-csi-controller-sa"

  azs = slice(data.aws_availability_zones.available.names, 0, 3)

  tags = merge(var.tags, {
    Project   = local.app_name
    ManagedBy = "terraform"
  })
}

data "aws_availability_zones" "available" {
  state = "available"

  filter {
    name   = "opt-in-status"
    values = ["opt-in-not-required"]
  }
}

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

# ---------------------------------------------------------------------------------------------
# VPC: private subnets for nodes and pods (a /20 per AZ of the default /16: VPC CNI pods take VPC
# addresses), public subnets for the NLB and the NAT gateways (a /24 per AZ). The subnet tags let
# the AWS Load Balancer Controller find them.
# ---------------------------------------------------------------------------------------------
module "vpc" {
  source  = "terraform-aws-modules/vpc/aws"
  version = "5.21.0"

  name = "${var.cluster_name}-vpc"
  cidr = var.vpc_cidr
  azs  = local.azs

  private_subnets = [for i, az in local.azs : cidrsubnet(var.vpc_cidr, 4, i)]
  public_subnets  = [for i, az in local.azs : cidrsubnet(var.vpc_cidr, 8, 48 + i)]

  enable_nat_gateway     = true
  single_nat_gateway     = var.single_nat_gateway
  one_nat_gateway_per_az = !var.single_nat_gateway
  enable_dns_hostnames   = true
  enable_dns_support     = true

  public_subnet_tags = {
    "kubernetes.io/role/elb" = "1"
  }
  private_subnet_tags = {
    "kubernetes.io/role/internal-elb" = "1"
  }
}

# ---------------------------------------------------------------------------------------------
# EKS: API authentication mode (access entries, no aws-auth ConfigMap), IRSA, the VPC CNI with
# network policy enforcement (k8s/base/networkpolicy.yaml relies on it), the EBS CSI driver with
# its own IRSA role, and one managed node group spread over the three private subnets.
# ---------------------------------------------------------------------------------------------
module "eks" {
  source  = "terraform-aws-modules/eks/aws"
  version = "20.37.1"

  cluster_name    = var.cluster_name
  cluster_version = var.kubernetes_version

  vpc_id     = module.vpc.vpc_id
  subnet_ids = module.vpc.private_subnets

  cluster_endpoint_public_access       = true
  cluster_endpoint_private_access      = true
  cluster_endpoint_public_access_cidrs = var.api_public_access_cidrs

  authentication_mode                      = "API"
  enable_cluster_creator_admin_permissions = true
  enable_irsa                              = true

  cluster_addons = {
    coredns = {
      addon_version = lookup(var.addon_versions, "coredns", null)
      most_recent   = !contains(keys(var.addon_versions), "coredns")
    }
    kube-proxy = {
      addon_version = lookup(var.addon_versions, "kube-proxy", null)
      most_recent   = !contains(keys(var.addon_versions), "kube-proxy")
    }
    vpc-cni = {
      addon_version  = lookup(var.addon_versions, "vpc-cni", null)
      most_recent    = !contains(keys(var.addon_versions), "vpc-cni")
      before_compute = true
      # NetworkPolicy enforcement by the VPC CNI's network policy agent.
      configuration_values = jsonencode({
        enableNetworkPolicy = "true"
      })
    }
    aws-ebs-csi-driver = {
      addon_version            = lookup(var.addon_versions, "aws-ebs-csi-driver", null)
      most_recent              = !contains(keys(var.addon_versions), "aws-ebs-csi-driver")
      service_account_role_arn = module.ebs_csi_irsa.iam_role_arn
    }
  }

  eks_managed_node_groups = {
    brokers = {
      ami_type       = var.node_ami_type
      instance_types = var.node_instance_types
      capacity_type  = var.node_capacity_type

      min_size     = var.node_min_size
      max_size     = var.node_max_size
      desired_size = var.node_desired_size

      block_device_mappings = {
        xvda = {
          device_name = "/dev/xvda"
          ebs = {
            volume_size           = var.node_disk_size_gib
            volume_type           = "gp3"
            encrypted             = true
            delete_on_termination = true
          }
        }
      }
    }
  }

  access_entries = {
    # The role the image and deploy workflows assume: Kubernetes group mesh-deployers, which
    # kubernetes.tf binds to `admin` in the mesh namespace only.
    github_actions = {
      principal_arn     = aws_iam_role.github_actions.arn
      kubernetes_groups = [local.deployers_group]
    }
    # The role terraform.yml plans with: read-only view of the whole cluster (Secrets included,
    # since Helm keeps its release state in Secrets).
    github_terraform_plan = {
      principal_arn = aws_iam_role.github_terraform_plan.arn
      policy_associations = {
        admin_view = {
          policy_arn = "arn:${data.aws_partition.current.partition}:eks::aws:cluster-access-policy/AmazonEKSAdminViewPolicy"
          access_scope = {
            type = "cluster"
          }
        }
      }
    }
  }
}

# IRSA role of the EBS CSI controller (kube-system/ebs-csi-controller-sa).
module "ebs_csi_irsa" {
  source  = "terraform-aws-modules/iam/aws//modules/iam-role-for-service-accounts-eks"
  version = "5.60.0"

  role_name             = "${var.cluster_name}-ebs-csi"
  attach_ebs_csi_policy = true

  oidc_providers = {
    main = {
      provider_arn               = module.eks.oidc_provider_arn
      namespace_service_accounts = ["kube-system:${local.ebs_csi_controller}"]
    }
  }
}

# IRSA role of the AWS Load Balancer Controller (kube-system/aws-load-balancer-controller).
module "lb_controller_irsa" {
  source  = "terraform-aws-modules/iam/aws//modules/iam-role-for-service-accounts-eks"
  version = "5.60.0"

  role_name                              = "${var.cluster_name}-lb-controller"
  attach_load_balancer_controller_policy = true

  oidc_providers = {
    main = {
      provider_arn               = module.eks.oidc_provider_arn
      namespace_service_accounts = ["kube-system:${local.lb_controller_sa}"]
    }
  }
}
