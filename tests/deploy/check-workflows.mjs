// Offline checks of GitHub Actions workflows (tests/deploy/check-workflows.sh runs it on
// .github/workflows/):
//   - each file parses and validates against GitHub's workflow schema with GitHub's own parser
//     (@actions/workflow-parser: unknown keys, wrong values, bad ${{ }} expressions, unknown
//     `needs`, ...); any error it reports fails the check;
//   - every `uses:` is pinned: a full commit SHA (with a "# vX.Y.Z" comment, else a warning) or an
//     exact version tag; local actions (./...) and docker:// images with a digest or exact tag;
//   - the workflow has a top-level `permissions:` (least privilege: not write-all, no id-token:
//     write at the top); a job with id-token: write uses an OIDC login action, and a job that
//     uses one has id-token: write;
//   - every `run:` script (bash or sh) passes shellcheck: each is written to a temp file with a
//     shebang, its ${{ ... }} expressions replaced by a placeholder variable.
//
//   node check-workflows.mjs --node-modules DIR --dir WORKFLOWS_DIR [--shellcheck PATH]
// Exit status 1 when anything is wrong; every problem is printed as "ERROR file:line: message".

import { register } from "node:module";
import { pathToFileURL } from "node:url";
import { spawnSync } from "node:child_process";
import { createRequire } from "node:module";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, "")] = process.argv[i + 1];
const nodeModules = path.resolve(args["node-modules"] ?? "node_modules");
const dir = path.resolve(args.dir ?? ".github/workflows");
const shellcheck = args.shellcheck ?? "shellcheck";

// @actions/workflow-parser imports its JSON schema without an import attribute, which Node
// refuses; this loader hook serves those JSON files as modules (Node 18.19+ and 20+ alike).
const hooks = `
export async function load(url, context, nextLoad) {
  if (url.startsWith("file:") && url.endsWith(".json") && url.includes("/node_modules/@actions/")) {
    const { readFile } = await import("node:fs/promises");
    const source = await readFile(new URL(url), "utf8");
    return { format: "module", source: "export default " + source + ";", shortCircuit: true };
  }
  return nextLoad(url, context);
}`;
register("data:text/javascript," + encodeURIComponent(hooks));
const parser = await import(pathToFileURL(path.join(nodeModules, "@actions/workflow-parser/dist/index.js")).href);
const YAML = createRequire(path.join(nodeModules, "noop.js"))("yaml");

const errors = [];
const warnings = [];
const rel = (f) => path.relative(process.cwd(), f) || f;
const error = (file, line, msg) => errors.push(`ERROR ${rel(file)}${line ? `:${line}` : ""}: ${msg}`);
const warn = (file, line, msg) => warnings.push(`WARN  ${rel(file)}${line ? `:${line}` : ""}: ${msg}`);

const OIDC_ACTIONS = ["aws-actions/configure-aws-credentials", "google-github-actions/auth", "azure/login"];
const SHA = /^[0-9a-f]{40}$/;
const EXACT = /^v?\d+\.\d+\.\d+$/;

// ---- GitHub's parser -------------------------------------------------------------------------

async function schemaCheck(file, content) {
  const result = parser.parseWorkflow({ name: rel(file), content }, new parser.NoOperationTraceWriter());
  const seen = new Set();
  const report = (msg) => {
    // "<name> (Line: 4, Col: 13): Unexpected value 'reed'" -> file:4: Unexpected value 'reed' (col 13)
    const m = /^.*?\(Line: (\d+), Col: (\d+)\): ([\s\S]*)$/.exec(msg);
    if (m) error(file, Number(m[1]), `workflow schema: ${m[3]} (column ${m[2]})`);
    else error(file, null, `workflow schema: ${msg}`);
  };
  for (const e of result.context.errors.getErrors()) {
    seen.add(e.message);
    report(e.message);
  }
  if (result.value && seen.size === 0) {
    const template = await parser.convertWorkflowTemplate(result.context, result.value);
    for (const e of template.errors ?? []) {
      const msg = e.Message ?? e.message ?? String(e);
      if (!seen.has(msg)) report(msg);
    }
  }
}

// ---- policy checks on the YAML tree ----------------------------------------------------------

function checkUses(file, line, rawLine, uses) {
  if (uses.startsWith("./")) return;
  if (uses.startsWith("docker://")) {
    if (!/@sha256:[0-9a-f]{64}$/.test(uses) && !/:v?\d+\.\d+\.\d+[^:/@]*$/.test(uses)) {
      error(file, line, `uses: ${uses} is not pinned (an image digest @sha256:... or an exact version tag)`);
    }
    return;
  }
  const at = uses.lastIndexOf("@");
  if (at < 0) return error(file, line, `uses: ${uses} has no @ref`);
  const ref = uses.slice(at + 1);
  if (SHA.test(ref)) {
    if (!/#\s*v?\d+\.\d+\.\d+/.test(rawLine)) warn(file, line, `uses: ${uses} is pinned by SHA but says no version (add "# vX.Y.Z")`);
    return;
  }
  if (!EXACT.test(ref)) error(file, line, `uses: ${uses} is not pinned (a full commit SHA, or at least an exact version tag like v1.2.3)`);
}

function permissionsOf(node) {
  if (node === undefined) return undefined;
  if (typeof node === "string") return node;
  return node ?? {};
}

function shellOf(step, job, workflow) {
  return step.shell ?? job.defaults?.run?.shell ?? workflow.defaults?.run?.shell ?? "bash";
}

function runShellcheck(file, workflow, jobId, job, step, stepNode, lineCounter, tmp, stats) {
  const shell = shellOf(step, job, workflow);
  const kind = /^bash\b/.test(shell) ? "bash" : /^sh\b/.test(shell) ? "sh" : null;
  if (!kind) return;
  const runNode = stepNode.get("run", true);
  const script = String(step.run);
  const isBlock = runNode.type === "BLOCK_LITERAL" || runNode.type === "BLOCK_FOLDED";
  const firstLine = lineCounter.linePos(runNode.range[0]).line + (isBlock ? 1 : 0);
  // Variables the workflow's env: blocks set are assigned for shellcheck's sake.
  const envNames = new Set([
    ...Object.keys(workflow.env ?? {}), ...Object.keys(job.env ?? {}), ...Object.keys(step.env ?? {}),
  ]);
  const header = [
    kind === "bash" ? "#!/usr/bin/env bash" : "#!/bin/sh",
    "# shellcheck disable=SC2034 # assignments standing in for the workflow's env: and expressions",
    "GHA_EXPR=placeholder",
    ...[...envNames].filter((n) => /^[A-Za-z_][A-Za-z0-9_]*$/.test(n)).map((n) => `${n}=placeholder`),
  ];
  const body = script.replace(/\$\{\{[\s\S]*?\}\}/g, "${GHA_EXPR}");
  const tmpFile = path.join(tmp, `${stats.scripts++}-${jobId}.${kind}`);
  fs.writeFileSync(tmpFile, [...header, body].join("\n") + "\n");
  const r = spawnSync(shellcheck, ["-f", "gcc", "-s", kind, tmpFile], { encoding: "utf8" });
  if (r.error) throw new Error(`cannot run ${shellcheck}: ${r.error.message}`);
  if (r.status === 0) return;
  const name = step.name ?? step.id ?? "(unnamed step)";
  let reported = false;
  for (const out of r.stdout.split("\n").filter(Boolean)) {
    const m = /^[^:]+:(\d+):(\d+): (\w+): (.*)$/.exec(out);
    if (!m) continue;
    reported = true;
    const scriptLine = Number(m[1]) - header.length;
    const line = scriptLine >= 1 ? firstLine + scriptLine - 1 : firstLine;
    error(file, line, `shellcheck (job ${jobId}, step "${name}"): ${m[3]}: ${m[4]}`);
  }
  if (!reported) error(file, firstLine, `shellcheck failed on job ${jobId}, step "${name}": ${(r.stderr || r.stdout).trim()}`);
}

function policyCheck(file, content, tmp, stats) {
  const lineCounter = new YAML.LineCounter();
  const doc = YAML.parseDocument(content, { lineCounter });
  if (doc.errors.length) {
    for (const e of doc.errors) error(file, e.linePos?.[0]?.line, `YAML: ${e.message.split("\n")[0]}`);
    return;
  }
  const workflow = doc.toJS() ?? {};
  const lines = content.split("\n");
  const lineOf = (node) => (node?.range ? lineCounter.linePos(node.range[0]).line : null);

  const top = permissionsOf(workflow.permissions);
  if (top === undefined) {
    error(file, 1, "no top-level permissions: (least privilege: e.g. permissions: { contents: read })");
  } else if (top === "write-all" || top === "read-all") {
    error(file, lineOf(doc.get("permissions", true)), `permissions: ${top} is too broad; name each scope`);
  } else if (typeof top === "object" && top["id-token"] === "write") {
    error(file, lineOf(doc.get("permissions", true)), "id-token: write at the top level: grant it only to the jobs that log in with OIDC");
  }

  const jobs = doc.get("jobs", true);
  for (const pair of jobs?.items ?? []) {
    const jobId = String(pair.key.value ?? pair.key);
    const jobNode = pair.value;
    const job = workflow.jobs[jobId] ?? {};
    const jobPerms = permissionsOf(job.permissions);
    if (jobPerms === "write-all") error(file, lineOf(jobNode.get?.("permissions", true)), `job ${jobId}: permissions: write-all is too broad`);
    const effective = jobPerms ?? top;
    const idToken = typeof effective === "object" && effective?.["id-token"] === "write";

    if (typeof job.uses === "string") checkUses(file, lineOf(jobNode.get("uses", true)), lines[lineOf(jobNode.get("uses", true)) - 1] ?? "", job.uses);

    let oidcLogin = false;
    const steps = jobNode.get?.("steps", true);
    for (const stepNode of steps?.items ?? []) {
      const step = stepNode.toJSON();
      if (typeof step.uses === "string") {
        stats.uses++;
        const line = lineOf(stepNode.get("uses", true));
        checkUses(file, line, lines[line - 1] ?? "", step.uses);
        if (OIDC_ACTIONS.some((a) => step.uses.startsWith(`${a}@`))) oidcLogin = true;
      }
      if (typeof step.run === "string") {
        runShellcheck(file, workflow, jobId, job, step, stepNode, lineCounter, tmp, stats);
      }
    }
    if (idToken && !oidcLogin) error(file, lineOf(jobNode), `job ${jobId} has id-token: write but logs in with no OIDC action`);
    if (oidcLogin && !idToken) error(file, lineOf(jobNode), `job ${jobId} logs in with OIDC but lacks permissions id-token: write`);
    stats.jobs++;
  }
}

// ---- main ------------------------------------------------------------------------------------

const files = fs.existsSync(dir)
  ? fs.readdirSync(dir).filter((f) => /\.ya?ml$/.test(f)).sort().map((f) => path.join(dir, f))
  : [];
if (files.length === 0) error(dir, null, "no workflow files");
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "check-workflows-"));
const stats = { jobs: 0, uses: 0, scripts: 0 };
try {
  for (const file of files) {
    const content = fs.readFileSync(file, "utf8");
    await schemaCheck(file, content);
    policyCheck(file, content, tmp, stats);
  }
} finally {
  fs.rmSync(tmp, { recursive: true, force: true });
}
console.log(`${files.length} workflows under ${rel(dir)}: ${stats.jobs} jobs, ${stats.uses} uses: pins, ${stats.scripts} run: scripts through shellcheck`);
for (const w of warnings) console.log(w);
for (const e of errors) console.log(e);
if (errors.length) {
  console.log(`check-workflows: FAIL (${errors.length} problems)`);
  process.exit(1);
}
console.log("check-workflows: OK");
