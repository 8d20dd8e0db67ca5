# In-cluster objects terraform owns: the gp3 StorageClass the brokers' volumes use
# (k8s/overlays/eks names it), the namespace mesh, and what the deploy role may do in it.

resource "kubernetes_storage_class_v1" "gp3" {
  metadata {
    name = local.gp3_storage_class
    annotations = {
      "storageclass.kubernetes.io/is-default-class" = "true"
    }
  }

  storage_provisioner    = "ebs.csi.aws.com"
  reclaim_policy         = var.gp3_reclaim_policy
  volume_binding_mode    = "WaitForFirstConsumer"
  allow_volume_expansion = true

  parameters = {
    type      = "gp3"
    fsType    = "ext4"
    encrypted = "true"
  }

  # The EBS CSI driver must exist before a volume can be provisioned.
  depends_on = [module.eks]
}

# The namespace exists before the first deploy so that the deploy role can be bound in it.
# k8s/base/namespace.yaml owns its labels (Pod Security Admission); terraform leaves them alone.
resource "kubernetes_namespace_v1" "mesh" {
  metadata {
    name = local.app_namespace
  }

  lifecycle {
    ignore_changes = [metadata[0].labels, metadata[0].annotations]
  }

  depends_on = [module.eks]
}

# mesh-deployers (the GitHub Actions role's access entry) is admin of namespace mesh only...
resource "kubernetes_role_binding_v1" "mesh_deployers" {
  metadata {
    name      = "mesh-deployers-admin"
    namespace = kubernetes_namespace_v1.mesh.metadata[0].name
  }

  role_ref {
    api_group = "rbac.authorization.k8s.io"
    kind      = "ClusterRole"
    name      = "admin"
  }

  subject {
    api_group = "rbac.authorization.k8s.io"
    kind      = "Group"
    name      = local.deployers_group
  }
}

# ...and may read and patch that one Namespace object, which `kubectl apply -k` applies too.
resource "kubernetes_cluster_role_v1" "mesh_namespace_apply" {
  metadata {
    name = "mesh-namespace-apply"
  }

  rule {
    api_groups     = [""]
    resources      = ["namespaces"]
    resource_names = [local.app_namespace]
    verbs          = ["get", "patch"]
  }

  depends_on = [module.eks]
}

resource "kubernetes_cluster_role_binding_v1" "mesh_namespace_apply" {
  metadata {
    name = "mesh-deployers-namespace-apply"
  }

  role_ref {
    api_group = "rbac.authorization.k8s.io"
    kind      = "ClusterRole"
    name      = kubernetes_cluster_role_v1.mesh_namespace_apply.metadata[0].name
  }

  subject {
    api_group = "rbac.authorization.k8s.io"
    kind      = "Group"
    name      = local.deployers_group
  }
}
