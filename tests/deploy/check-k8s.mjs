// Checks rendered kustomize overlays (k8s/) offline, the mistakes that only show in production:
//   - every object against the Kubernetes OpenAPI schemas: field names strictly (unknown fields
//     rejected, from @kubernetes/client-node's generated models) and types, required fields and
//     enums (kubernetes-models' validators; the prometheus-operator CRDs likewise);
//   - the "restricted" Pod Security Standard on the pod template;
//   - consistency: Services select the brokers and name ports that exist, the StatefulSet's
//     serviceName is the headless Service that --cluster-dns names, the HPA targets the
//     StatefulSet, every MESH_* variable is one mesh-broker accepts (its --help), every metric the
//     HPA, the adapter and the rules use is one a running broker exports (a scrape), the grace
//     period covers the drain, the PrometheusRule equals monitoring/alerts.yml; on eks, the NLB
//     lets the broker see client addresses (preserved, or PROXY v2 that the broker reads).
// With --self-test, it breaks copies of the objects on purpose and fails unless each break is
// reported: the checks cannot pass vacuously.
//
//   node check-k8s.mjs --node-modules DIR --render dev=dev.yaml --render eks=eks.yaml \
//        --help help.txt --metrics metrics.txt --alerts monitoring/alerts.yml \
//        --adapter monitoring/prometheus-adapter-values.yaml [--self-test]
//   node check-k8s.mjs --node-modules DIR --same v2.yaml --and v5.yaml
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { pathToFileURL } from "node:url";

const args = { render: {} };
for (let i = 2; i < process.argv.length; i++) {
  const arg = process.argv[i];
  if (arg === "--self-test") args.selfTest = true;
  else if (arg === "--render") {
    const [name, file] = process.argv[++i].split("=");
    args.render[name] = file;
  } else args[arg.replace(/^--/, "")] = process.argv[++i];
}

// The packages live in the tools dir (tests/deploy/tools.sh), which ES module resolution does
// not search: CommonJS ones through a require rooted there, the ES-only client by its path.
const nodeModules = path.resolve(args["node-modules"] ?? "node_modules");
const require = createRequire(path.join(nodeModules, "noop.js"));
const { parseAllDocuments, parse } = require("yaml");
const k8s = await import(pathToFileURL(path.join(nodeModules, "@kubernetes/client-node/dist/index.js")));

// ---------------------------------------------------------------------------------------------
// Schemas

// Field names and JSON types from the client's generated models (one per OpenAPI definition).
function strictCheck(value, type, path, problems) {
  if (value === null || value === undefined) return;
  const array = /^Array<(.+)>$/.exec(type);
  if (array) {
    if (!Array.isArray(value)) return problems.push(`${path}: expected a list`);
    value.forEach((item, i) => strictCheck(item, array[1], `${path}[${i}]`, problems));
    return;
  }
  const map = /^\{ \[key: string\]: (.+); \}$/.exec(type);
  if (map) {
    if (typeof value !== "object" || Array.isArray(value)) return problems.push(`${path}: expected a map`);
    for (const [key, item] of Object.entries(value)) strictCheck(item, map[1], `${path}.${key}`, problems);
    return;
  }
  switch (type) {
    case "string": case "Date":
      if (typeof value !== "string") problems.push(`${path}: expected a string, got ${JSON.stringify(value)}`);
      return;
    case "number":
      if (typeof value !== "number") problems.push(`${path}: expected a number, got ${JSON.stringify(value)}`);
      return;
    case "boolean":
      if (typeof value !== "boolean") problems.push(`${path}: expected true or false, got ${JSON.stringify(value)}`);
      return;
    case "IntOrString":
      if (typeof value !== "number" && typeof value !== "string") problems.push(`${path}: expected a number or a string`);
      return;
    case "any": case "object":
      return;
  }
  const model = k8s[type];
  if (!model || typeof model.getAttributeTypeMap !== "function") {
    return problems.push(`${path}: no schema for type ${type}`);
  }
  if (typeof value !== "object" || Array.isArray(value)) return problems.push(`${path}: expected an object (${type})`);
  const fields = new Map(model.getAttributeTypeMap().map((a) => [a.baseName, a.type]));
  for (const [key, item] of Object.entries(value)) {
    if (!fields.has(key)) problems.push(`${path}.${key}: unknown field (${type} has no "${key}")`);
    else strictCheck(item, fields.get(key), `${path}.${key}`, problems);
  }
}

// "apps/v1" + "StatefulSet" -> V1StatefulSet; "autoscaling/v2" -> V2...; "policy/v1beta1" -> V1beta1...
function modelName(apiVersion, kind) {
  const version = apiVersion.split("/").pop();
  return version.charAt(0).toUpperCase() + version.slice(1) + kind;
}

// kubernetes-models: "apps/v1" StatefulSet -> kubernetes-models/apps/v1/StatefulSet; the
// prometheus-operator CRDs from @kubernetes-models/prometheus-operator likewise.
function modelsValidator(apiVersion, kind) {
  const name = apiVersion.includes("monitoring.coreos.com")
    ? `@kubernetes-models/prometheus-operator/${apiVersion}/${kind}`
    : `kubernetes-models/${apiVersion}/${kind}`;
  try {
    return require(name)[kind];
  } catch {
    return null;
  }
}

async function checkSchemas(objects, problems) {
  for (const obj of objects) {
    const where = `${obj.kind}/${obj.metadata?.name}`;
    const Model = modelsValidator(obj.apiVersion, obj.kind);
    if (!Model) {
      problems.push(`${where}: no schema for ${obj.apiVersion} ${obj.kind}`);
      continue;
    }
    try {
      new Model(structuredClone(obj)).validate();
    } catch (e) {
      problems.push(`${where}: ${e.message}`);
    }
    if (!obj.apiVersion.includes("monitoring.coreos.com")) {
      strictCheck(obj, modelName(obj.apiVersion, obj.kind), where, problems);
    } else {
      strictCrd(obj, where, problems);
    }
  }
}

// The prometheus-operator CRDs have no client model: their field names come from the type
// declarations @kubernetes-models/prometheus-operator generates from the CRDs' OpenAPI schemas
// (one nested interface per kind), read into a tree of known fields.
function crdFieldTree(kind) {
  const file = path.join(nodeModules, "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1", `${kind}.d.ts`);
  const lines = readFileSync(file, "utf8").split("\n");
  const start = lines.findIndex((l) => l.includes(`export interface I${kind} {`));
  if (start < 0) throw new Error(`no interface I${kind} in ${file}`);
  const root = { fields: new Map(), open: false };
  const stack = [root];
  for (const raw of lines.slice(start + 1)) {
    const line = raw.trim();
    let m;
    if ((m = /^"([^"]+)"\??: (?:Array<)?\{$/.exec(line))) {
      const node = { fields: new Map(), open: false };
      stack.at(-1).fields.set(m[1], node);
      stack.push(node);
    } else if ((m = /^"([^"]+)"\??: .*;$/.exec(line))) {
      stack.at(-1).fields.set(m[1], null);  // a leaf, or a map written on one line
    } else if (/^\[key: string\]/.test(line)) {
      stack.at(-1).open = true;
    } else if (/^\}/.test(line)) {
      stack.pop();
      if (!stack.length) break;
    }
  }
  return root;
}

function strictTree(value, node, where, problems) {
  if (node === null || value === null || typeof value !== "object") return;
  if (Array.isArray(value)) return value.forEach((v, i) => strictTree(v, node, `${where}[${i}]`, problems));
  if (node.open) return;
  for (const [key, item] of Object.entries(value)) {
    if (!node.fields.has(key)) problems.push(`${where}.${key}: unknown field`);
    else strictTree(item, node.fields.get(key), `${where}.${key}`, problems);
  }
}

function strictCrd(obj, where, problems) {
  const tree = crdFieldTree(obj.kind);
  strictTree(obj, tree, where, problems);
  strictCheck(obj.metadata, "V1ObjectMeta", `${where}.metadata`, problems);
}

// ---------------------------------------------------------------------------------------------
// Pod Security Standards, "restricted" (https://kubernetes.io/docs/concepts/security/pod-security-standards/)

const RESTRICTED_VOLUMES = ["configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
  "persistentVolumeClaim", "projected", "secret"];

function checkRestricted(where, pod, problems) {
  const bad = (what) => problems.push(`${where}: restricted profile: ${what}`);
  const podSec = pod.securityContext ?? {};
  if (pod.hostNetwork || pod.hostPID || pod.hostIPC) bad("host namespaces");
  for (const volume of pod.volumes ?? []) {
    const type = Object.keys(volume).find((k) => k !== "name");
    if (!RESTRICTED_VOLUMES.includes(type)) bad(`volume ${volume.name} of type ${type}`);
  }
  const sysctls = podSec.sysctls ?? [];
  if (sysctls.length) bad("sysctls");
  const seccompOk = (ctx) => ["RuntimeDefault", "Localhost"].includes(ctx?.seccompProfile?.type);
  if (podSec.runAsUser === 0) bad("pod runs as UID 0");
  for (const c of [...(pod.initContainers ?? []), ...(pod.containers ?? [])]) {
    const sec = c.securityContext ?? {};
    const name = `container ${c.name}`;
    if (sec.privileged) bad(`${name} is privileged`);
    if (sec.allowPrivilegeEscalation !== false) bad(`${name} does not set allowPrivilegeEscalation: false`);
    if (!(sec.runAsNonRoot === true || (sec.runAsNonRoot === undefined && podSec.runAsNonRoot === true))) bad(`${name} may run as root (runAsNonRoot)`);
    if (sec.runAsUser === 0) bad(`${name} runs as UID 0`);
    if (!seccompOk(sec) && !(sec.seccompProfile === undefined && seccompOk(podSec))) bad(`${name} has no RuntimeDefault/Localhost seccomp profile`);
    const caps = sec.capabilities ?? {};
    if (!(caps.drop ?? []).includes("ALL")) bad(`${name} does not drop ALL capabilities`);
    for (const cap of caps.add ?? []) if (cap !== "NET_BIND_SERVICE") bad(`${name} adds capability ${cap}`);
    for (const p of c.ports ?? []) if (p.hostPort) bad(`${name} uses hostPort ${p.hostPort}`);
    if (sec.procMount && sec.procMount !== "Default") bad(`${name} procMount`);
    if (sec.seLinuxOptions?.type && !["container_t", "container_init_t", "container_kvm_t"].includes(sec.seLinuxOptions.type)) bad(`${name} SELinux type`);
  }
}

// ---------------------------------------------------------------------------------------------
// Consistency

function selects(selector, labels) {
  return Object.entries(selector ?? {}).every(([k, v]) => labels?.[k] === v) && Object.keys(selector ?? {}).length > 0;
}

function helpEnv(helpText) {
  return new Set([...helpText.matchAll(/\(Env:(MESH_[A-Z0-9_]+)\)/g)].map((m) => m[1]));
}

function helpDefault(helpText, flag) {
  const m = new RegExp(`--${flag} [A-Z]+[^=\\s]*=(\\S+)`).exec(helpText);
  return m ? m[1] : undefined;
}

function exportedMetrics(text) {
  const names = new Set();
  for (const line of text.split("\n")) {
    const m = /^# TYPE (\S+) (\S+)/.exec(line);
    if (m) {
      names.add(m[1]);
      if (m[2] === "histogram") ["_bucket", "_sum", "_count"].forEach((s) => names.add(m[1] + s));
      if (m[2] === "summary") ["_sum", "_count"].forEach((s) => names.add(m[1] + s));
    }
  }
  return names;
}

// JSON with object keys sorted: kustomize re-orders keys, which changes no meaning.
function canonical(value) {
  if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`;
  if (value && typeof value === "object") {
    return `{${Object.keys(value).sort().map((k) => `${JSON.stringify(k)}:${canonical(value[k])}`).join(",")}}`;
  }
  return JSON.stringify(value);
}

function metricsIn(promql) {
  return [...promql.matchAll(/\b(mesh_[a-z0-9_]+)/g)].map((m) => m[1]);
}

function checkConsistency(overlay, objects, ctx, problems) {
  const bad = (what) => problems.push(`${overlay}: ${what}`);
  const of = (kind) => objects.filter((o) => o.kind === kind);
  const sts = of("StatefulSet");
  if (sts.length !== 1) return bad(`expected one StatefulSet, found ${sts.length}`);
  const set = sts[0];
  const pod = set.spec.template;
  const podLabels = pod.metadata?.labels ?? {};
  const container = pod.spec.containers[0];
  const ports = new Map((container.ports ?? []).map((p) => [p.name, p.containerPort]));
  const portExists = (p) => (typeof p === "string" ? ports.has(p) : [...ports.values()].includes(p));

  if (!selects(set.spec.selector.matchLabels, podLabels)) bad("the StatefulSet's selector does not match its pod labels");

  // Services.
  const services = of("Service");
  for (const svc of services) {
    if (!selects(svc.spec.selector, podLabels)) bad(`Service ${svc.metadata.name} selects no broker pod`);
    for (const p of svc.spec.ports ?? []) {
      if (!portExists(p.targetPort ?? p.port)) bad(`Service ${svc.metadata.name} port ${p.name} targets ${p.targetPort}, which the container does not expose`);
    }
  }
  const headless = services.find((s) => s.metadata.name === set.spec.serviceName);
  if (!headless) bad(`serviceName ${set.spec.serviceName} is not a Service here`);
  else {
    if (headless.spec.clusterIP !== "None") bad(`Service ${headless.metadata.name} (serviceName) is not headless`);
    if (headless.spec.publishNotReadyAddresses !== true) bad(`Service ${headless.metadata.name} does not publish unready addresses (a starting or draining broker must be found)`);
  }

  // Environment: every MESH_* variable mesh-broker accepts; --cluster-dns names the headless Service.
  const env = {};
  const known = helpEnv(ctx.help);
  for (const from of container.envFrom ?? []) {
    const cm = of("ConfigMap").find((c) => c.metadata.name === from.configMapRef?.name);
    if (!cm) { bad(`envFrom names ConfigMap ${from.configMapRef?.name}, which is not rendered`); continue; }
    Object.assign(env, cm.data);
  }
  for (const e of container.env ?? []) env[e.name] = e.value ?? `<${Object.keys(e.valueFrom ?? {})[0]}>`;
  for (const name of Object.keys(env)) {
    if (name.startsWith("MESH_") && !known.has(name)) bad(`environment variable ${name} is not one mesh-broker accepts (mesh-broker --help)`);
    if (!name.startsWith("MESH_") && !Object.values(env).some((v) => String(v).includes(`$(${name})`))) bad(`environment variable ${name} is neither mesh-broker's nor used by another`);
  }
  for (const arg of [...(container.args ?? []), ...(container.command ?? []).slice(1)]) {
    const flag = /^--([a-z0-9-]+)/.exec(arg)?.[1];
    if (flag && !ctx.help.includes(`--${flag} `) && !ctx.help.includes(`--${flag},`)) bad(`flag --${flag} is not one mesh-broker accepts`);
  }
  const dns = env.MESH_CLUSTER_DNS;
  if (!dns) bad("MESH_CLUSTER_DNS is not set: brokers would not find each other");
  else {
    const [host, port] = dns.split(":");
    if (host !== set.spec.serviceName && !host.startsWith(`${set.spec.serviceName}.`)) bad(`MESH_CLUSTER_DNS host ${host} is not the StatefulSet's serviceName ${set.spec.serviceName}`);
    if (headless && !(headless.spec.ports ?? []).some((p) => String(p.port) === port)) bad(`MESH_CLUSTER_DNS port ${port} is not a port of ${headless.metadata.name}`);
    const listen = env.MESH_LISTEN_CLUSTER?.split(":").pop();
    if (listen && listen !== String(ports.get("cluster"))) bad(`MESH_LISTEN_CLUSTER port ${listen} is not the container's cluster port`);
  }
  for (const [variable, portName] of [["MESH_LISTEN_PEER", "peer"], ["MESH_LISTEN_WS", "ws"], ["MESH_LISTEN_HTTP", "http"], ["MESH_LISTEN_GRPC", "grpc"]]) {
    const port = env[variable]?.split(":").pop() ?? helpDefault(ctx.help, variable.slice(5).toLowerCase().replaceAll("_", "-"))?.split(":").pop();
    if (port !== String(ports.get(portName))) bad(`${variable} listens on ${port}, the container port "${portName}" is ${ports.get(portName)}`);
  }

  // Data on the volume, Secrets mounted group-readable.
  const dataDir = env.MESH_DATA_DIR ?? helpDefault(ctx.help, "data-dir");
  const mounts = new Map((container.volumeMounts ?? []).map((m) => [m.name, m]));
  const claims = (set.spec.volumeClaimTemplates ?? []).map((c) => c.metadata.name);
  const dataMount = [...mounts.values()].find((m) => m.mountPath === dataDir);
  if (!dataMount || !claims.includes(dataMount.name)) bad(`the data dir ${dataDir} is not on a volume claim`);
  if (set.spec.persistentVolumeClaimRetentionPolicy?.whenScaled !== "Retain") bad("volumes are not retained on scale-down");
  if (!pod.spec.securityContext?.fsGroup) bad("no fsGroup: the broker could not read group-readable Secrets");
  for (const v of pod.spec.volumes ?? []) {
    if (v.secret && v.secret.defaultMode !== 0o440) bad(`Secret volume ${v.name} mode is ${v.secret.defaultMode?.toString(8)}, not 0440`);
    if (v.secret && objects.some((o) => o.kind === "Secret" && o.metadata.name === v.secret.secretName)) bad(`Secret ${v.secret.secretName} is committed in the manifests`);
  }
  for (const variable of ["MESH_ADMIN_TOKEN_FILE", "MESH_CLUSTER_SECRET_FILE"]) {
    const file = env[variable];
    const mount = file && [...mounts.values()].find((m) => file.startsWith(m.mountPath + "/"));
    const volume = mount && (pod.spec.volumes ?? []).find((v) => v.name === mount.name);
    if (!volume?.secret) bad(`${variable} (${file}) is not in a mounted Secret`);
  }

  // Drain: the grace period covers --drain-timeout-s plus 30 s.
  const drain = Number(env.MESH_DRAIN_TIMEOUT_S ?? helpDefault(ctx.help, "drain-timeout-s"));
  if (!(pod.spec.terminationGracePeriodSeconds >= drain + 30)) bad(`terminationGracePeriodSeconds ${pod.spec.terminationGracePeriodSeconds} is under --drain-timeout-s ${drain} + 30`);
  if (set.spec.replicas !== undefined && of("HorizontalPodAutoscaler").length) bad("the StatefulSet sets replicas while an HPA owns them: every apply would undo a scale");

  // Probes name ports that exist.
  for (const probe of ["startupProbe", "livenessProbe", "readinessProbe"]) {
    const p = container[probe];
    if (!p) bad(`no ${probe}`);
    else if (p.httpGet && !portExists(p.httpGet.port)) bad(`${probe} uses port ${p.httpGet.port}, which is not exposed`);
  }

  // HPA, PDB, NetworkPolicy, ServiceMonitor.
  for (const hpa of of("HorizontalPodAutoscaler")) {
    const ref = hpa.spec.scaleTargetRef;
    if (ref.kind !== "StatefulSet" || ref.name !== set.metadata.name || ref.apiVersion !== "apps/v1") bad(`HPA ${hpa.metadata.name} targets ${ref.kind}/${ref.name}, not the StatefulSet`);
    for (const m of hpa.spec.metrics ?? []) {
      if (m.type === "Pods" && !ctx.metrics.has(m.pods.metric.name)) bad(`HPA metric ${m.pods.metric.name} is not exported by mesh-broker`);
      if (m.type === "Pods" && !ctx.adapterMetrics.has(m.pods.metric.name)) bad(`HPA metric ${m.pods.metric.name} is not exposed by prometheus-adapter's rules`);
      if (m.type === "Resource" && !container.resources?.requests?.[m.resource.name]) bad(`HPA uses ${m.resource.name} utilisation but the container requests none`);
    }
    const down = hpa.spec.behavior?.scaleDown?.policies ?? [];
    if (!down.length || down.some((p) => !(p.type === "Pods" && p.value === 1))) bad("HPA scale-down is not one pod at a time");
  }
  for (const pdb of of("PodDisruptionBudget")) if (!selects(pdb.spec.selector.matchLabels, podLabels)) bad(`PDB ${pdb.metadata.name} selects no broker`);
  for (const np of of("NetworkPolicy")) {
    if (!selects(np.spec.podSelector.matchLabels, podLabels)) bad(`NetworkPolicy ${np.metadata.name} selects no broker`);
    for (const rule of np.spec.ingress ?? []) for (const p of rule.ports ?? []) if (!portExists(p.port)) bad(`NetworkPolicy allows port ${p.port}, which the broker does not expose`);
    const allowed = (np.spec.ingress ?? []).flatMap((r) => (r.ports ?? []).map((p) => p.port));
    for (const needed of ["peer", "ws", "cluster", "http", "grpc"]) if (!allowed.includes(ports.get(needed)) && !allowed.includes(needed)) bad(`NetworkPolicy lets nothing reach port "${needed}"`);
    const egress = (np.spec.egress ?? []).flatMap((r) => (r.ports ?? []).map((p) => `${p.port}/${p.protocol ?? "TCP"}`));
    for (const needed of [`${ports.get("cluster")}/TCP`, "53/UDP"]) if (!egress.includes(needed)) bad(`NetworkPolicy allows no egress to ${needed}`);
  }
  for (const sm of of("ServiceMonitor")) {
    const svc = services.find((s) => selects(sm.spec.selector.matchLabels, s.metadata.labels));
    if (!svc) { bad(`ServiceMonitor ${sm.metadata.name} selects no Service`); continue; }
    for (const e of sm.spec.endpoints) if (!(svc.spec.ports ?? []).some((p) => p.name === e.port)) bad(`ServiceMonitor port ${e.port} is not a port of ${svc.metadata.name}`);
  }

  // EKS: peers through an NLB, volumes on gp3.
  if (overlay === "eks") {
    const peer = services.find((s) => (s.spec.ports ?? []).some((p) => p.targetPort === "peer"));
    if (peer?.spec.type !== "LoadBalancer" || !peer.metadata.annotations?.["service.beta.kubernetes.io/aws-load-balancer-type"]) bad("the peer Service is not an NLB");
    if (!(peer?.spec.ports ?? []).some((p) => p.targetPort === "ws")) bad("the NLB does not carry the WebSocket port (browsers)");
    if ((set.spec.volumeClaimTemplates ?? []).some((c) => c.spec.storageClassName !== "gp3")) bad("volumes are not gp3");
    // The per-address handshake cap needs the client's address: preserved by the NLB, or carried
    // in a PROXY v2 header that the broker then reads (both sides, or no connection works).
    const notes = peer?.metadata.annotations ?? {};
    const preserved = /(^|,)\s*preserve_client_ip\.enabled=true\s*(,|$)/.test(notes["service.beta.kubernetes.io/aws-load-balancer-target-group-attributes"] ?? "");
    const nlbProxy = notes["service.beta.kubernetes.io/aws-load-balancer-proxy-protocol"] === "*";
    const brokerProxy = String(env.MESH_PROXY_PROTOCOL ?? "false").toLowerCase() === "true";
    if (nlbProxy !== brokerProxy) bad(`the NLB ${nlbProxy ? "sends" : "does not send"} PROXY v2 headers but MESH_PROXY_PROTOCOL is ${env.MESH_PROXY_PROTOCOL ?? "unset"}`);
    if (!preserved && !nlbProxy) bad("the NLB hides client addresses: set preserve_client_ip.enabled=true in aws-load-balancer-target-group-attributes (or PROXY v2 on both sides)");
  }

  // Rules: identical to monitoring/alerts.yml, and every series they use is exported.
  const rules = of("PrometheusRule");
  if (rules.length !== 1) bad(`expected one PrometheusRule, found ${rules.length}`);
  else if (canonical(rules[0].spec.groups) !== canonical(ctx.alerts.groups)) bad("the PrometheusRule differs from monitoring/alerts.yml (run scripts/k8s-rules.sh)");
  for (const group of rules[0]?.spec.groups ?? []) {
    for (const rule of group.rules) {
      for (const metric of metricsIn(rule.expr)) if (!ctx.metrics.has(metric)) bad(`rule ${rule.alert ?? rule.record} uses ${metric}, which mesh-broker does not export`);
    }
  }
}

// ---------------------------------------------------------------------------------------------

async function checkAll(renders, ctx) {
  const problems = [];
  for (const [overlay, objects] of Object.entries(renders)) {
    const before = problems.length;
    await checkSchemas(objects, problems);
    for (const set of objects.filter((o) => o.kind === "StatefulSet")) checkRestricted(`${overlay}: StatefulSet/${set.metadata.name}`, set.spec.template.spec, problems);
    checkConsistency(overlay, objects, ctx, problems);
    for (let i = before; i < problems.length; i++) if (!problems[i].startsWith(overlay)) problems[i] = `${overlay}: ${problems[i]}`;
  }
  return problems;
}

// Each break must be reported by the check named after it.
const BREAKS = [
  ["an unknown field", (o) => { sts(o).spec.template.spec.containers[0].imagePullPolicyy = "Always"; }, "unknown field"],
  ["an unknown field in a CRD", (o) => { find(o, "ServiceMonitor").spec.endpoints[0].intervall = "5s"; }, "intervall: unknown field"],
  ["a wrong type", (o) => { find(o, "HorizontalPodAutoscaler").spec.minReplicas = "three"; }, "minReplicas"],
  ["a privileged container", (o) => { sts(o).spec.template.spec.containers[0].securityContext.allowPrivilegeEscalation = true; }, "restricted profile"],
  ["a Service selecting nothing", (o) => { find(o, "Service").spec.selector = { app: "other" }; }, "selects no broker pod"],
  ["a missing target port", (o) => { find(o, "Service").spec.ports[0].targetPort = "nope"; }, "does not expose"],
  ["the WebSocket port shut", (o) => { const np = find(o, "NetworkPolicy"); for (const r of np.spec.ingress) r.ports = (r.ports ?? []).filter((p) => p.port !== 7780); }, 'port "ws"'],
  ["a wrong --cluster-dns", (o) => { find(o, "ConfigMap").data.MESH_CLUSTER_DNS = "elsewhere:7800"; }, "MESH_CLUSTER_DNS host"],
  ["an unknown variable", (o) => { find(o, "ConfigMap").data.MESH_NO_SUCH_FLAG = "1"; }, "MESH_NO_SUCH_FLAG"],
  ["a short grace period", (o) => { sts(o).spec.template.spec.terminationGracePeriodSeconds = 30; }, "terminationGracePeriodSeconds"],
  ["an HPA on another object", (o) => { find(o, "HorizontalPodAutoscaler").spec.scaleTargetRef.name = "other"; }, "not the StatefulSet"],
  ["an HPA metric nobody exports", (o) => { find(o, "HorizontalPodAutoscaler").spec.metrics.find((m) => m.type === "Pods").pods.metric.name = "mesh_no_such_metric"; }, "mesh_no_such_metric"],
  ["a rule on a missing series", (o) => { find(o, "PrometheusRule").spec.groups[0].rules[0].expr = "mesh_no_such_series > 0"; }, "mesh_no_such_series"],
  ["a world-readable Secret", (o) => { sts(o).spec.template.spec.volumes.find((v) => v.secret).secret.defaultMode = 0o444; }, "not 0440"],
  ["serviceName of a normal Service", (o) => { sts(o).spec.serviceName = "mesh-broker"; }, "not headless"],
];
// Breaks of what only the eks overlay has, run on its rendering.
const peerService = (o) => o.find((x) => x.kind === "Service" && (x.spec.ports ?? []).some((p) => p.targetPort === "peer"));
const EKS_BREAKS = [
  ["an NLB that hides client addresses", (o) => { delete peerService(o).metadata.annotations["service.beta.kubernetes.io/aws-load-balancer-target-group-attributes"]; }, "hides client addresses"],
  ["PROXY v2 from the NLB the broker does not read", (o) => { peerService(o).metadata.annotations["service.beta.kubernetes.io/aws-load-balancer-proxy-protocol"] = "*"; }, "MESH_PROXY_PROTOCOL"],
];
const find = (objects, kind) => objects.find((o) => o.kind === kind);
const sts = (objects) => find(objects, "StatefulSet");

// --same A B: whether two renderings hold the same objects (kustomize v2 against v5).
if (args.same) {
  const load = (f) => parseAllDocuments(readFileSync(f, "utf8")).map((d) => d.toJS()).filter(Boolean)
    .sort((a, b) => `${a.kind}/${a.metadata.name}`.localeCompare(`${b.kind}/${b.metadata.name}`));
  if (canonical(load(args.same)) !== canonical(load(args.and))) {
    console.error(`FAIL: ${args.same} and ${args.and} hold different objects`);
    process.exit(1);
  }
  process.exit(0);
}

const adapterRules = parse(readFileSync(args.adapter, "utf8")).rules?.custom ?? [];
const ctx = {
  help: readFileSync(args.help, "utf8"),
  metrics: exportedMetrics(readFileSync(args.metrics, "utf8")),
  alerts: parse(readFileSync(args.alerts, "utf8")),
  adapterMetrics: new Set(adapterRules.map((r) => r.name?.as ?? metricsIn(r.seriesQuery)[0])),
};
for (const rule of adapterRules) {
  for (const metric of metricsIn(rule.seriesQuery)) if (!ctx.metrics.has(metric)) { console.error(`prometheus-adapter rule uses ${metric}, which mesh-broker does not export`); process.exit(1); }
}
const renders = {};
for (const [name, file] of Object.entries(args.render)) {
  renders[name] = parseAllDocuments(readFileSync(file, "utf8")).map((d) => d.toJS()).filter(Boolean);
  console.log(`${name}: ${renders[name].length} objects: ${renders[name].map((o) => o.kind).join(", ")}`);
}
if (ctx.metrics.size < 10) { console.error("the scrape holds almost no metrics: is the broker's /metrics right?"); process.exit(1); }

const problems = await checkAll(renders, ctx);
for (const p of problems) console.error("FAIL " + p);
if (problems.length) process.exit(1);
console.log(`schemas, restricted profile and consistency: ${Object.keys(renders).join(" and ")} pass`);

if (args.selfTest) {
  // Every break on a copy of one overlay's objects; the number that went unreported.
  const unreported = async (overlay, breaks) => {
    let missed = 0;
    for (const [what, breakIt, expect] of breaks) {
      const copy = structuredClone(renders[overlay]);
      breakIt(copy);
      const found = await checkAll({ [overlay]: copy }, ctx);
      if (!found.some((p) => p.includes(expect))) {
        console.error(`FAIL self-test: ${what} went unreported (expected "${expect}"; got ${JSON.stringify(found)})`);
        missed++;
      }
    }
    return missed;
  };
  const eksBreaks = renders.eks ? EKS_BREAKS : [];
  const missed = (await unreported(Object.keys(renders)[0], BREAKS)) + (await unreported("eks", eksBreaks));
  if (missed) process.exit(1);
  console.log(`self-test: all ${BREAKS.length + eksBreaks.length} deliberate breaks were reported`);
}
