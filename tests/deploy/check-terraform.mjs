// Offline checks of a Terraform configuration (tests/deploy/check-terraform.sh runs it on
// terraform/): every .tf file parses with HashiCorp's HCL parser (@cdktf/hcl2json, the Go parser
// compiled to WebAssembly), and then, in each directory of .tf files:
//   - every var.X, local.X, module.X, data.T.N and T.N reference resolves to a declaration, and
//     count.*, each.* and dynamic-block iterators appear only where they exist;
//   - every output of a registry module that is read (module.vpc.private_subnets) is listed for
//     that module's source@version in module-outputs.json (registry outputs cannot be resolved
//     offline); a local module's outputs are read from its own .tf files;
//   - every registry module has an exact `version`, every git module an exact ?ref=;
//   - every provider used (resource and data types, provider blocks) is in required_providers
//     with a source and an exact version, and required_version is set;
//   - every variable has a description and a validation (bool variables excepted), is used, and
//     cross-variable validations come with required_version >= 1.9; every output has a
//     description; every local is used;
//   - the outputs given with --require-outputs exist;
//   - files read with file("${path.module}/...") exist (a warning: they may be someone else's).
// *.tf.example files are parsed for syntax only; *.tfvars and *.tfvars.example files must parse
// and set only declared variables.
//
//   node check-terraform.mjs --node-modules DIR --dir TERRAFORM_DIR
//        [--module-outputs FILE] [--require-outputs a,b,c]
// Exit status 1 when anything is wrong; every problem is printed as "ERROR file: message".

import { createRequire } from "node:module";
import fs from "node:fs";
import path from "node:path";

const args = parseArgs(process.argv.slice(2));
const nodeModules = path.resolve(args["node-modules"] ?? "node_modules");
const tfDir = path.resolve(args.dir ?? "terraform");
const moduleOutputsFile = path.resolve(args["module-outputs"] ?? path.join(tfDir, "module-outputs.json"));
const requiredOutputs = (args["require-outputs"] ?? "").split(",").filter(Boolean);

const require = createRequire(path.join(nodeModules, "noop.js"));
const hcl = require("@cdktf/hcl2json");

const errors = [];
const warnings = [];
const rel = (f) => path.relative(process.cwd(), f) || f;
const error = (file, msg) => errors.push(`ERROR ${rel(file)}: ${msg}`);
const warn = (file, msg) => warnings.push(`WARN  ${rel(file)}: ${msg}`);

const EXACT_VERSION = /^\s*=?\s*v?\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?\s*$/;
const REGISTRY_SOURCE = /^([a-z0-9.-]+\.[a-z]+\/)?[A-Za-z0-9_-]+\/[A-Za-z0-9_-]+\/[A-Za-z0-9_-]+(\/\/[^?]+)?$/;
const BUILTIN_PROVIDERS = new Set(["terraform"]);

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    if (!argv[i].startsWith("--")) throw new Error(`unexpected argument ${argv[i]}`);
    out[argv[i].slice(2)] = argv[i + 1];
    i++;
  }
  return out;
}

function listFiles(dir) {
  const out = [];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    if (entry.name === ".terraform" || entry.name === "node_modules") continue;
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) out.push(...listFiles(full));
    else out.push(full);
  }
  return out.sort();
}

// ---- parsing ---------------------------------------------------------------------------------

async function parseFile(file) {
  try {
    return await hcl.parse(path.basename(file), fs.readFileSync(file, "utf8"));
  } catch (e) {
    error(file, `HCL parse error: ${String(e.message ?? e).replace(/\s+/g, " ")}`);
    return null;
  }
}

// One directory of .tf files = one module: its declarations, each with the file it came from.
function collect(parsed) {
  const m = {
    variables: new Map(), locals: new Map(), modules: new Map(), resources: new Map(),
    data: new Map(), outputs: new Map(), providers: [], terraform: [], moved: [],
  };
  const declare = (map, key, file, body, what) => {
    if (map.has(key)) error(file, `${what} ${key} is declared twice (also in ${rel(map.get(key).file)})`);
    map.set(key, { file, body });
  };
  for (const { file, json } of parsed) {
    for (const [name, bodies] of Object.entries(json.variable ?? {})) declare(m.variables, name, file, bodies[0], "variable");
    for (const block of json.locals ?? []) {
      for (const [name, value] of Object.entries(block)) declare(m.locals, name, file, value, "local");
    }
    for (const [name, bodies] of Object.entries(json.module ?? {})) declare(m.modules, name, file, bodies[0], "module");
    for (const [type, byName] of Object.entries(json.resource ?? {})) {
      for (const [name, bodies] of Object.entries(byName)) declare(m.resources, `${type}.${name}`, file, bodies[0], "resource");
    }
    for (const [type, byName] of Object.entries(json.data ?? {})) {
      for (const [name, bodies] of Object.entries(byName)) declare(m.data, `${type}.${name}`, file, bodies[0], "data source");
    }
    for (const [name, bodies] of Object.entries(json.output ?? {})) declare(m.outputs, name, file, bodies[0], "output");
    for (const [name, bodies] of Object.entries(json.provider ?? {})) {
      for (const body of bodies) m.providers.push({ name, alias: body.alias, file, body });
    }
    for (const body of json.terraform ?? []) m.terraform.push({ file, body });
    for (const kind of ["moved", "import", "removed", "check"]) {
      for (const body of json[kind] ?? []) m.moved.push({ file, body, kind });
    }
  }
  return m;
}

// ---- references ------------------------------------------------------------------------------

const refCache = new Map();
async function referencesIn(file, text) {
  if (!text.includes("${") && !text.includes("%{")) return [];
  if (!refCache.has(text)) {
    let refs;
    try {
      refs = (await hcl.getReferencesInExpression(path.basename(file), text)).map((r) => r.value);
    } catch (e) {
      error(file, `cannot parse expression ${JSON.stringify(text.slice(0, 80))}: ${e.message ?? e}`);
      refs = [];
    }
    refCache.set(text, refs);
  }
  return refCache.get(text);
}

// Walks a block body, calling visit(reference, ctx) for every reference in it.
async function walk(node, file, ctx, visit) {
  if (typeof node === "string") {
    for (const ref of await referencesIn(file, node)) visit(ref, ctx, node);
    const fileCalls = node.matchAll(/\bfile\(\s*"\$\{path\.module\}\/([^"]+)"\s*\)/g);
    for (const [, p] of fileCalls) ctx.files.push({ file, target: p });
    return;
  }
  if (Array.isArray(node)) {
    for (const item of node) await walk(item, file, ctx, visit);
    return;
  }
  if (!node || typeof node !== "object") return;
  for (const [key, value] of Object.entries(node)) {
    if (ctx.top && key === "lifecycle") {
      for (const lc of [].concat(value)) {
        const { ignore_changes: _ignored, ...rest } = lc;
        await walk(rest, file, { ...ctx, top: false }, visit);
      }
      continue;
    }
    if (ctx.top && key === "provider" && typeof value === "string") {
      ctx.providerRefs.push({ file, ref: value });
      continue;
    }
    if (key === "dynamic" && value && typeof value === "object" && !Array.isArray(value)) {
      for (const [label, bodies] of Object.entries(value)) {
        for (const body of [].concat(bodies)) {
          const { for_each: forEach, iterator, content, ...rest } = body;
          const inner = { ...ctx, top: false };
          await walk(forEach, file, inner, visit);
          await walk(rest, file, inner, visit);
          const name = typeof iterator === "string" && !iterator.includes("${") ? iterator : label;
          await walk(content, file, { ...inner, iterators: new Set([...ctx.iterators, name]) }, visit);
        }
      }
      continue;
    }
    await walk(value, file, { ...ctx, top: false }, visit);
  }
}

// ---- module outputs --------------------------------------------------------------------------

function loadModuleOutputs() {
  if (!fs.existsSync(moduleOutputsFile)) return null;
  try {
    const json = JSON.parse(fs.readFileSync(moduleOutputsFile, "utf8"));
    const map = new Map();
    for (const [key, value] of Object.entries(json)) {
      if (key.startsWith("$") || key.startsWith("_")) continue;
      if (!Array.isArray(value) || !value.every((v) => typeof v === "string")) {
        error(moduleOutputsFile, `${key} must map to a list of output names`);
        continue;
      }
      map.set(key, new Set(value));
    }
    return map;
  } catch (e) {
    error(moduleOutputsFile, `not valid JSON: ${e.message}`);
    return new Map();
  }
}

async function localModuleOutputs(dir) {
  const outputs = new Set();
  if (!fs.existsSync(dir)) return null;
  for (const f of fs.readdirSync(dir).filter((n) => n.endsWith(".tf"))) {
    const json = await parseFile(path.join(dir, f));
    for (const name of Object.keys(json?.output ?? {})) outputs.add(name);
  }
  return outputs;
}

// ---- the checks of one module ----------------------------------------------------------------

async function checkModule(dir, parsed, moduleOutputs, usedModuleKeys, isRoot) {
  const m = collect(parsed);
  const used = { var: new Map(), local: new Map() };
  const stats = { refs: 0 };
  const fileReads = [];
  const providerRefs = [];

  const modInfo = new Map();
  for (const [name, { file, body }] of m.modules) {
    const source = typeof body.source === "string" ? body.source : "";
    const info = { file, source, version: body.version, kind: "other", outputs: null, iterated: "count" in body || "for_each" in body };
    if (source.startsWith("./") || source.startsWith("../")) {
      info.kind = "local";
      info.outputs = await localModuleOutputs(path.resolve(dir, source));
      if (!info.outputs) error(file, `module ${name}: local source ${source} does not exist`);
      if (body.version !== undefined) error(file, `module ${name}: a local module takes no version`);
    } else if (REGISTRY_SOURCE.test(source)) {
      info.kind = "registry";
      if (typeof body.version !== "string" || !EXACT_VERSION.test(body.version)) {
        error(file, `module ${name} (${source}) has no exact version (got ${JSON.stringify(body.version ?? null)}): pin it, e.g. version = "1.2.3"`);
      } else {
        info.key = `${source}@${body.version.trim().replace(/^=\s*/, "")}`;
        usedModuleKeys.add(info.key);
        if (!moduleOutputs) error(moduleOutputsFile, `missing: module ${name} (${info.key}) is a registry module whose outputs must be listed there`);
        else if (!moduleOutputs.has(info.key)) error(file, `module ${name}: ${info.key} is not listed in ${rel(moduleOutputsFile)}`);
        else info.outputs = moduleOutputs.get(info.key);
      }
    } else if (/^(git::|github\.com\/|git@|hg::|s3::|gcs::|https?:)/.test(source)) {
      info.kind = "remote";
      const ref = /[?&]ref=([^&]+)/.exec(source)?.[1];
      if (!ref || !(/^[0-9a-f]{40}$/.test(ref) || EXACT_VERSION.test(ref))) {
        error(file, `module ${name}: ${source} is not pinned to a commit SHA or an exact tag (?ref=)`);
      }
    } else {
      error(file, `module ${name}: unrecognised source ${JSON.stringify(source)}`);
    }
    modInfo.set(name, info);
  }

  const visit = (ref, ctx, text) => {
    stats.refs++;
    const seg = ref.split(".");
    const where = `${ctx.where}: ${ref}`;
    const root = seg[0];
    if (ctx.iterators.has(root)) return;
    switch (root) {
      case "var":
        if (!m.variables.has(seg[1])) return error(ctx.file, `${where}: no variable "${seg[1]}"`);
        used.var.set(seg[1], (used.var.get(seg[1]) ?? 0) + (ctx.self === `var.${seg[1]}` ? 0 : 1));
        if (ctx.validationOf && seg[1] !== ctx.validationOf) ctx.crossVariable.push({ file: ctx.file, from: ctx.validationOf, to: seg[1] });
        return;
      case "local":
        if (!m.locals.has(seg[1])) return error(ctx.file, `${where}: no local "${seg[1]}"`);
        used.local.set(seg[1], (used.local.get(seg[1]) ?? 0) + (ctx.self === `local.${seg[1]}` ? 0 : 1));
        return;
      case "module": {
        const info = modInfo.get(seg[1]);
        if (!info) return error(ctx.file, `${where}: no module "${seg[1]}"`);
        const output = info.iterated && /^\d+$/.test(seg[2] ?? "") ? seg[3] : seg[2];
        if (output === undefined) return;
        if (info.outputs && !info.outputs.has(output)) {
          const listed = info.kind === "registry" ? ` (not listed for ${info.key} in ${rel(moduleOutputsFile)})` : "";
          return error(ctx.file, `${where}: module ${seg[1]} has no output "${output}"${listed}`);
        }
        return;
      }
      case "data":
        if (seg.length < 3 || !m.data.has(`${seg[1]}.${seg[2]}`)) return error(ctx.file, `${where}: no data source "data.${seg[1]}.${seg[2]}"`);
        return;
      case "path":
        if (!["module", "root", "cwd"].includes(seg[1])) error(ctx.file, `${where}: path.${seg[1]} does not exist`);
        return;
      case "terraform":
        if (seg[1] !== "workspace") error(ctx.file, `${where}: terraform.${seg[1]} does not exist`);
        return;
      case "count":
        if (!ctx.hasCount) error(ctx.file, `${where} is outside a block with count`);
        return;
      case "each":
        if (!ctx.hasForEach) error(ctx.file, `${where} is outside a block with for_each`);
        return;
      case "self":
        return;
      default:
        if (root.includes("_") && seg.length >= 2) {
          if (!m.resources.has(`${root}.${seg[1]}`)) error(ctx.file, `${where}: no resource "${root}.${seg[1]}"`);
          return;
        }
        error(ctx.file, `${where}: unknown reference (in ${JSON.stringify(text.slice(0, 60))})`);
    }
  };

  const crossVariable = [];
  const baseCtx = (file, where, body, extra = {}) => ({
    file, where, top: true, iterators: new Set(), files: fileReads, providerRefs, crossVariable,
    hasCount: body && "count" in body, hasForEach: body && "for_each" in body, ...extra,
  });

  for (const [name, { file, body }] of m.variables) {
    if (typeof body.description !== "string" || body.description.trim() === "") error(file, `variable ${name} has no description`);
    const type = typeof body.type === "string" ? body.type.replace(/^\$\{|\}$/g, "").trim() : "any";
    const validations = [].concat(body.validation ?? []);
    if (validations.length === 0 && type !== "bool") {
      error(file, `variable ${name} (${type}) has no validation block: say which values are acceptable`);
    }
    for (const v of validations) {
      if (typeof v.error_message !== "string" || v.error_message.trim() === "") error(file, `variable ${name}: a validation has no error_message`);
      await walk(v.condition ?? "", file, baseCtx(file, `variable ${name} validation`, null, { self: `var.${name}`, validationOf: name }), visit);
    }
  }
  for (const [name, { file, body }] of m.locals) {
    await walk(body, file, baseCtx(file, `local ${name}`, null, { self: `local.${name}` }), visit);
  }
  for (const [name, { file, body }] of m.modules) {
    const { source: _s, version: _v, providers, ...rest } = body;
    for (const value of Object.values(providers?.[0] ?? providers ?? {})) providerRefs.push({ file, ref: value });
    await walk(rest, file, baseCtx(file, `module ${name}`, body), visit);
  }
  for (const [key, { file, body }] of m.resources) {
    await walk(body, file, baseCtx(file, `resource ${key}`, body), visit);
  }
  for (const [key, { file, body }] of m.data) {
    await walk(body, file, baseCtx(file, `data ${key}`, body), visit);
  }
  for (const [name, { file, body }] of m.outputs) {
    if (typeof body.description !== "string" || body.description.trim() === "") error(file, `output ${name} has no description`);
    await walk(body, file, baseCtx(file, `output ${name}`, body), visit);
  }
  for (const p of m.providers) {
    const { alias: _a, ...rest } = p.body;
    await walk(rest, p.file, baseCtx(p.file, `provider ${p.name}`, null), visit);
  }
  for (const mv of m.moved) {
    if (mv.kind === "check") await walk(mv.body, mv.file, baseCtx(mv.file, "check", null), visit);
  }

  // Unused declarations.
  for (const [name, { file }] of m.variables) if (!used.var.get(name)) error(file, `variable ${name} is declared but never used`);
  for (const [name, { file }] of m.locals) if (!used.local.get(name)) error(file, `local ${name} is declared but never used`);

  // Providers: required_providers pins every provider in use.
  const required = new Map();
  let requiredVersion = null;
  for (const { file, body } of m.terraform) {
    if (typeof body.required_version === "string") requiredVersion = { file, value: body.required_version };
    for (const block of [].concat(body.required_providers ?? [])) {
      for (const [name, spec] of Object.entries(block)) required.set(name, { file, spec });
    }
  }
  const usedProviders = new Map();
  const noteProvider = (name, file, why) => {
    if (!BUILTIN_PROVIDERS.has(name) && !usedProviders.has(name)) usedProviders.set(name, { file, why });
  };
  for (const [key, { file }] of m.resources) noteProvider(key.split("_")[0], file, `resource ${key}`);
  for (const [key, { file }] of m.data) noteProvider(key.split("_")[0], file, `data ${key}`);
  for (const p of m.providers) noteProvider(p.name, p.file, `provider block ${p.name}`);
  const aliases = new Set(m.providers.filter((p) => p.alias).map((p) => `${p.name}.${p.alias}`));
  for (const { file, ref } of providerRefs) {
    const name = String(ref).replace(/^\$\{|\}$/g, "");
    if (name.includes(".") && !aliases.has(name)) error(file, `provider ${name} is referenced but no provider block has that alias`);
    noteProvider(name.split(".")[0], file, `provider reference ${name}`);
  }
  for (const [name, { file, why }] of usedProviders) {
    const req = required.get(name);
    if (!req) {
      error(file, `provider ${name} (used by ${why}) is not in required_providers`);
      continue;
    }
    const spec = req.spec;
    if (typeof spec !== "object" || typeof spec.source !== "string") error(req.file, `required_providers.${name} has no source`);
    if (typeof spec !== "object" || typeof spec.version !== "string" || !EXACT_VERSION.test(spec.version)) {
      error(req.file, `required_providers.${name} is not pinned to an exact version (got ${JSON.stringify(spec?.version ?? spec ?? null)})`);
    }
  }
  if (isRoot && !requiredVersion) error(path.join(dir, "versions.tf"), "terraform.required_version is not set");
  if (crossVariable.length && requiredVersion) {
    const lower = /(?:>=|~>|=)?\s*(\d+)\.(\d+)/.exec(requiredVersion.value);
    if (!lower || Number(lower[1]) < 1 || (Number(lower[1]) === 1 && Number(lower[2]) < 9)) {
      const c = crossVariable[0];
      error(requiredVersion.file, `variable ${c.from}'s validation reads var.${c.to}: that needs required_version >= 1.9 (got "${requiredVersion.value}")`);
    }
  }

  for (const name of isRoot ? requiredOutputs : []) {
    if (!m.outputs.has(name)) error(path.join(dir, "outputs.tf"), `required output ${name} is missing`);
  }

  for (const { file, target } of fileReads) {
    const full = path.resolve(dir, target);
    if (!fs.existsSync(full)) warn(file, `file("\${path.module}/${target}") reads ${rel(full)}, which does not exist (yet)`);
  }

  return {
    refs: stats.refs, variables: m.variables.size, locals: m.locals.size, modules: m.modules.size,
    resources: m.resources.size, data: m.data.size, outputs: m.outputs.size, providers: usedProviders.size,
  };
}

// ---- main ------------------------------------------------------------------------------------

const files = listFiles(tfDir);
const tfFiles = files.filter((f) => f.endsWith(".tf"));
const exampleFiles = files.filter((f) => /\.(tf|tfvars)\.example$/.test(f));
const tfvarsFiles = files.filter((f) => /\.tfvars(\.example)?$/.test(f));
if (tfFiles.length === 0) error(tfDir, "no .tf files");

const byDir = new Map();
for (const f of tfFiles) {
  const json = await parseFile(f);
  if (!json) continue;
  const d = path.dirname(f);
  if (!byDir.has(d)) byDir.set(d, []);
  byDir.get(d).push({ file: f, json });
}
const tfvars = new Map();
const otherFiles = new Set([...exampleFiles, ...tfvarsFiles]);
for (const f of otherFiles) {
  const json = await parseFile(f);
  if (json && tfvarsFiles.includes(f)) tfvars.set(f, json);
}
console.log(`parsed ${tfFiles.length} .tf and ${otherFiles.size} other files (examples, tfvars) under ${rel(tfDir)} with the HCL parser`);
// Every value a *.tfvars file (or its example) sets is a variable of the module beside it.
for (const [f, json] of tfvars) {
  const declared = new Set();
  for (const { json: tf } of byDir.get(path.dirname(f)) ?? []) for (const name of Object.keys(tf.variable ?? {})) declared.add(name);
  for (const name of Object.keys(json)) if (!declared.has(name)) error(f, `sets ${name}, which is not a variable of ${rel(path.dirname(f))}`);
}

const moduleOutputs = loadModuleOutputs();
const usedModuleKeys = new Set();
for (const [dir, parsed] of byDir) {
  const s = await checkModule(dir, parsed, moduleOutputs, usedModuleKeys, dir === tfDir);
  console.log(`${rel(dir)}: ${s.refs} references checked; ${s.variables} variables, ${s.locals} locals, ` +
    `${s.modules} modules, ${s.resources} resources, ${s.data} data sources, ${s.outputs} outputs, ${s.providers} providers`);
}
for (const key of moduleOutputs?.keys() ?? []) {
  if (!usedModuleKeys.has(key)) warn(moduleOutputsFile, `${key} is listed but no module uses that source@version`);
}

for (const w of warnings) console.log(w);
for (const e of errors) console.log(e);
if (errors.length) {
  console.log(`check-terraform: FAIL (${errors.length} problems)`);
  process.exit(1);
}
console.log("check-terraform: OK");
process.exit(0);
