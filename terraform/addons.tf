# Cluster add-ons installed with Helm: the AWS Load Balancer Controller (the NLB in front of the
# brokers' peer port, k8s/overlays/eks/service-nlb.yaml), kube-prometheus-stack (Prometheus,
# Alertmanager, Grafana and the operator that reads k8s/base's ServiceMonitor and
# PrometheusRule) and prometheus-adapter (mesh_peers_connected per pod for the HPA).

resource "helm_release" "aws_load_balancer_controller" {
  name       = "aws-load-balancer-controller"
  repository = "https://aws.github.io/eks-charts"
  chart      = "aws-load-balancer-controller"
  version    = "1.13.4"
  namespace  = "kube-system"

  values = [yamlencode({
    clusterName = module.eks.cluster_name
    region      = var.region
    vpcId       = module.vpc.vpc_id
    serviceAccount = {
      create = true
      name   = local.lb_controller_sa
      annotations = {
        "eks.amazonaws.com/role-arn" = module.lb_controller_irsa.iam_role_arn
      }
    }
  })]

  # Its pods need the node group, which the module's outputs above do not wait for.
  depends_on = [module.eks]
}

resource "random_password" "grafana_admin" {
  length  = 32
  special = false
}

resource "kubernetes_namespace_v1" "monitoring" {
  metadata {
    name = local.monitoring_ns
  }

  depends_on = [module.eks]
}

resource "helm_release" "kube_prometheus_stack" {
  # The release name fixes the Prometheus Service name that
  # monitoring/prometheus-adapter-values.yaml points at: kube-prometheus-stack-prometheus.monitoring.svc
  name       = "kube-prometheus-stack"
  repository = "https://prometheus-community.github.io/helm-charts"
  chart      = "kube-prometheus-stack"
  version    = "69.4.1"
  namespace  = kubernetes_namespace_v1.monitoring.metadata[0].name
  timeout    = 900

  values = [yamlencode({
    global = {
      rbac = {
        # Lets the namespace `admin` role (the deploy role in mesh) manage ServiceMonitors and
        # PrometheusRules.
        createAggregateClusterRoles = true
      }
    }
    prometheus = {
      prometheusSpec = {
        retention = var.prometheus_retention
        # Pick up ServiceMonitors and PrometheusRules from every namespace (k8s/base's included),
        # whatever their labels.
        serviceMonitorSelectorNilUsesHelmValues = false
        podMonitorSelectorNilUsesHelmValues     = false
        ruleSelectorNilUsesHelmValues           = false
        storageSpec = {
          volumeClaimTemplate = {
            spec = {
              storageClassName = kubernetes_storage_class_v1.gp3.metadata[0].name
              accessModes      = ["ReadWriteOnce"]
              resources = {
                requests = {
                  storage = "${var.prometheus_storage_gib}Gi"
                }
              }
            }
          }
        }
      }
    }
  })]

  set_sensitive {
    name  = "grafana.adminPassword"
    value = random_password.grafana_admin.result
  }

  depends_on = [helm_release.aws_load_balancer_controller]
}

# Values from monitoring/prometheus-adapter-values.yaml (the custom metrics rules the HPA uses).
resource "helm_release" "prometheus_adapter" {
  name       = "prometheus-adapter"
  repository = "https://prometheus-community.github.io/helm-charts"
  chart      = "prometheus-adapter"
  version    = "4.11.0"
  namespace  = kubernetes_namespace_v1.monitoring.metadata[0].name

  values = [file("${path.module}/../monitoring/prometheus-adapter-values.yaml")]

  depends_on = [helm_release.kube_prometheus_stack]
}
