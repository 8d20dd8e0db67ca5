# Every input has a description and, where a value can be wrong, a validation.
# Defaults give a three-AZ production cluster; override them in a *.tfvars file
# (see terraform.tfvars.example).

variable "region" {
  description = "AWS region for the VPC, the EKS cluster and the ECR repository, e.g. eu-west-1."
  type        = string
  default     = "eu-west-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must be an AWS region name such as eu-west-1 or us-east-2."
  }
}

variable "cluster_name" {
  description = "Name of the EKS cluster; also prefixes the VPC and the IAM roles."
  type        = string
  default     = "mesh"

  validation {
    condition     = can(regex("^[a-zA-Z][a-zA-Z0-9-]{0,37}$", var.cluster_name))
    error_message = "cluster_name must start with a letter and hold at most 38 letters, digits and hyphens (IAM role names are built from it)."
  }
}

variable "kubernetes_version" {
  description = "Kubernetes minor version of the EKS control plane and its managed node group, e.g. 1.32."
  type        = string
  default     = "1.32"

  validation {
    condition     = can(regex("^1\\.[0-9]{2}$", var.kubernetes_version))
    error_message = "kubernetes_version must be a minor version such as 1.32."
  }
}

variable "vpc_cidr" {
  description = "IPv4 CIDR of the VPC, a /16 to /18. Each AZ gets a private subnet of 1/16 of it (nodes and pods: a /20 of a /16) and a public one of 1/256 (load balancers, NAT: a /24 of a /16)."
  type        = string
  default     = "10.42.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && tonumber(split("/", var.vpc_cidr)[1]) >= 16 && tonumber(split("/", var.vpc_cidr)[1]) <= 18
    error_message = "vpc_cidr must be an IPv4 CIDR with a prefix length between /16 and /18."
  }
}

variable "single_nat_gateway" {
  description = "One NAT gateway for the whole VPC (cheaper, but egress from every AZ depends on one AZ) instead of one per AZ."
  type        = bool
  default     = false
}

variable "api_public_access_cidrs" {
  description = "CIDRs allowed to reach the public EKS API endpoint (requests are still authenticated by IAM). Narrow this to operator and CI ranges where possible."
  type        = list(string)
  default     = ["0.0.0.0/0"]

  validation {
    condition     = length(var.api_public_access_cidrs) > 0 && alltrue([for c in var.api_public_access_cidrs : can(cidrhost(c, 0))])
    error_message = "api_public_access_cidrs must be a non-empty list of IPv4 CIDRs."
  }
}

# ---------------------------------------------------------------------------------------------
# The managed node group. The broker image uses AES-NI (AES-256-GCM needs AES-NI + PCLMUL on
# libsodium), so nodes are x86-64 by default; Graviton (arm64) instance types are refused here.
# ---------------------------------------------------------------------------------------------

variable "node_instance_types" {
  description = "EC2 instance types of the managed node group, in order of preference (x86-64 only: the broker's AES-256-GCM suite needs AES-NI)."
  type        = list(string)
  default     = ["m6i.large", "m5.large"]

  validation {
    condition = length(var.node_instance_types) > 0 && alltrue([
      for t in var.node_instance_types :
      can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", t)) && !can(regex("^[a-z]+[0-9]+[a-z]*g[a-z]*\\.", t))
    ])
    error_message = "node_instance_types must be a non-empty list of x86-64 instance types such as m6i.large; Graviton types (m7g, c6gn, t4g, ...) are arm64."
  }
}

variable "node_ami_type" {
  description = "AMI type of the managed node group (an x86-64 type)."
  type        = string
  default     = "AL2023_x86_64_STANDARD"

  validation {
    condition     = contains(["AL2023_x86_64_STANDARD", "AL2_x86_64", "BOTTLEROCKET_x86_64"], var.node_ami_type)
    error_message = "node_ami_type must be one of AL2023_x86_64_STANDARD, AL2_x86_64, BOTTLEROCKET_x86_64."
  }
}

variable "node_capacity_type" {
  description = "ON_DEMAND or SPOT. Brokers drain on SIGTERM, but a spot reclaim gives only two minutes: keep ON_DEMAND for production."
  type        = string
  default     = "ON_DEMAND"

  validation {
    condition     = contains(["ON_DEMAND", "SPOT"], var.node_capacity_type)
    error_message = "node_capacity_type must be ON_DEMAND or SPOT."
  }
}

variable "node_min_size" {
  description = "Minimum number of nodes in the managed node group (at least one per AZ: three)."
  type        = number
  default     = 3

  validation {
    condition     = var.node_min_size >= 1 && floor(var.node_min_size) == var.node_min_size
    error_message = "node_min_size must be a whole number of at least 1."
  }
}

variable "node_desired_size" {
  description = "Number of nodes the group starts with (between node_min_size and node_max_size). Later changes are ignored by EKS once the group exists unless set explicitly."
  type        = number
  default     = 3

  validation {
    condition     = floor(var.node_desired_size) == var.node_desired_size && var.node_desired_size >= var.node_min_size && var.node_desired_size <= var.node_max_size
    error_message = "node_desired_size must be a whole number between node_min_size and node_max_size."
  }
}

variable "node_max_size" {
  description = "Maximum number of nodes in the managed node group."
  type        = number
  default     = 9

  validation {
    condition     = floor(var.node_max_size) == var.node_max_size && var.node_max_size >= var.node_min_size && var.node_max_size <= 100
    error_message = "node_max_size must be a whole number between node_min_size and 100."
  }
}

variable "node_disk_size_gib" {
  description = "Root volume (gp3) of each node in GiB: images and logs only; broker data lives on its own gp3 PersistentVolume."
  type        = number
  default     = 50

  validation {
    condition     = var.node_disk_size_gib >= 20 && var.node_disk_size_gib <= 1000
    error_message = "node_disk_size_gib must be between 20 and 1000."
  }
}

variable "addon_versions" {
  description = "Pinned EKS add-on versions by add-on name (coredns, kube-proxy, vpc-cni, aws-ebs-csi-driver), e.g. { vpc-cni = \"v1.19.5-eksbuild.1\" }. An add-on not listed gets the most recent version for kubernetes_version."
  type        = map(string)
  default     = {}

  validation {
    condition = alltrue([
      for name, version in var.addon_versions :
      contains(["coredns", "kube-proxy", "vpc-cni", "aws-ebs-csi-driver"], name) && can(regex("^v[0-9]+\\.[0-9]+\\.[0-9]+-eksbuild\\.[0-9]+$", version))
    ])
    error_message = "addon_versions keys must be coredns, kube-proxy, vpc-cni or aws-ebs-csi-driver, and values versions such as v1.19.5-eksbuild.1."
  }
}

# ---------------------------------------------------------------------------------------------
# Storage, registry, monitoring
# ---------------------------------------------------------------------------------------------

variable "gp3_reclaim_policy" {
  description = "reclaimPolicy of the gp3 StorageClass. Retain keeps a broker's EBS volume when its PVC is deleted: a volume may be deleted only once the broker's DRAINED file says it is empty (docs/CLUSTER.md)."
  type        = string
  default     = "Retain"

  validation {
    condition     = contains(["Retain", "Delete"], var.gp3_reclaim_policy)
    error_message = "gp3_reclaim_policy must be Retain or Delete."
  }
}

variable "ecr_keep_images" {
  description = "How many images (release tags excepted) the ECR lifecycle policy keeps; older ones expire. Untagged images expire after 14 days."
  type        = number
  default     = 200

  validation {
    condition     = var.ecr_keep_images >= 10 && var.ecr_keep_images <= 10000
    error_message = "ecr_keep_images must be between 10 and 10000."
  }
}

variable "prometheus_retention" {
  description = "How long Prometheus (kube-prometheus-stack) keeps samples, in Prometheus duration syntax, e.g. 15d."
  type        = string
  default     = "15d"

  validation {
    condition     = can(regex("^[0-9]+(h|d|w|y)$", var.prometheus_retention))
    error_message = "prometheus_retention must be a duration such as 12h, 15d, 4w or 1y."
  }
}

variable "prometheus_storage_gib" {
  description = "Size of Prometheus' gp3 volume in GiB."
  type        = number
  default     = 50

  validation {
    condition     = var.prometheus_storage_gib >= 10 && var.prometheus_storage_gib <= 16000
    error_message = "prometheus_storage_gib must be between 10 and 16000."
  }
}

# ---------------------------------------------------------------------------------------------
# GitHub Actions (OIDC)
# ---------------------------------------------------------------------------------------------

variable "github_repository" {
  description = "The GitHub repository (owner/name) whose workflows may assume the CI roles through OIDC."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9-]*/[A-Za-z0-9._-]+$", var.github_repository))
    error_message = "github_repository must look like owner/name."
  }
}

variable "github_deploy_environment" {
  description = "Name of the GitHub environment (with required reviewers) the deploy workflow runs in; only that environment may deploy."
  type        = string
  default     = "production"

  validation {
    condition     = can(regex("^[A-Za-z0-9._-]{1,255}$", var.github_deploy_environment))
    error_message = "github_deploy_environment must be 1 to 255 letters, digits, dots, underscores or hyphens."
  }
}

variable "github_oidc_provider_arn" {
  description = "ARN of an existing IAM OIDC provider for token.actions.githubusercontent.com (an account holds only one). Empty: this configuration creates it."
  type        = string
  default     = ""

  validation {
    condition     = var.github_oidc_provider_arn == "" || can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:oidc-provider/token\\.actions\\.githubusercontent\\.com$", var.github_oidc_provider_arn))
    error_message = "github_oidc_provider_arn must be empty or the ARN of the token.actions.githubusercontent.com OIDC provider."
  }
}

variable "tags" {
  description = "Extra tags for every AWS resource (Project and ManagedBy are always set)."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k, v in var.tags : length(k) >= 1 && length(k) <= 128 && length(v) <= 256 && !startswith(lower(k), "aws:")])
    error_message = "tags keys must be 1 to 128 characters and not start with aws:, values at most 256 characters."
  }
}
