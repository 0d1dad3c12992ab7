// Offline checks of deploy/k8s (see deploy/README.md):
//  1. renders the kustomize base and overlays (a small renderer for the subset
//     used there: resources, namespace, strategic-merge patches; anything else
//     is an error), and, when `kubectl` is on PATH, checks that real kustomize
//     (`kubectl kustomize`) renders the same objects;
//  2. validates every rendered object and deploy/k8s/jobs/* against the
//     Kubernetes API schemas (kubernetes-models, JSON schema per kind);
//  3. checks that every arg of an internvl container is a flag its binary
//     accepts (`--helpfull`, or `internvl CMD --help`), that every probe port is
//     the port the container's --listen serves and declares, that Service
//     targetPorts name declared ports, that HPA Pods metrics are metrics the
//     services export, and that serving pods run with HF_HUB_OFFLINE=1.
// usage: node check.mjs REPO_ROOT BUILD_DIR
import fs from 'node:fs';
import path from 'node:path';
import {execFileSync} from 'node:child_process';
import {createRequire} from 'node:module';
import YAML from 'yaml';

const require = createRequire(import.meta.url);
const [repo, buildDir] = process.argv.slice(2);
if (!repo || !buildDir) {
  console.error('usage: node check.mjs REPO_ROOT BUILD_DIR');
  process.exit(2);
}
const k8sDir = path.join(repo, 'deploy/k8s');
const errors = [];
const fail = (where, msg) => errors.push(`${where}: ${msg}`);

// ---------------------------------------------------------------- rendering
const readDocs = (file) =>
  YAML.parseAllDocuments(fs.readFileSync(file, 'utf8')).map((d) => {
    if (d.errors.length) throw new Error(`${file}: ${d.errors[0].message}`);
    return d.toJS();
  }).filter((o) => o != null);

const isObj = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
// Strategic merge for the lists this repo patches: lists of objects with a
// `name` merge by name (containers, env, ports, volumes, volumeMounts); other
// lists are replaced.
function merge(base, patch) {
  if (isObj(base) && isObj(patch)) {
    const out = {...base};
    for (const [k, v] of Object.entries(patch)) {
      if (k.startsWith('$')) throw new Error(`unsupported patch directive ${k}`);
      if (v === null) delete out[k];  // strategic merge: null deletes the key
      else out[k] = k in base ? merge(base[k], v) : v;
    }
    return out;
  }
  if (Array.isArray(base) && Array.isArray(patch) &&
      [...base, ...patch].every((e) => isObj(e) && typeof e.name === 'string')) {
    // Elements new to the list come first, in the patch's order (as
    // kustomize's strategic merge places them).
    const out = base.map((e) => ({...e}));
    const added = [];
    for (const p of patch) {
      const i = out.findIndex((e) => e.name === p.name);
      if (i >= 0) out[i] = merge(out[i], p); else added.push(p);
    }
    return [...added, ...out];
  }
  return patch;
}

const CLUSTER_SCOPED = new Set(['Namespace', 'PersistentVolume', 'ClusterRole', 'ClusterRoleBinding', 'StorageClass']);
function render(dir) {
  const kfile = path.join(dir, 'kustomization.yaml');
  const [k] = readDocs(kfile);
  const known = new Set(['apiVersion', 'kind', 'namespace', 'resources', 'patches']);
  for (const key of Object.keys(k)) {
    if (!known.has(key)) throw new Error(`${kfile}: field ${key} is not supported by tests/deploy/check.mjs`);
  }
  let objs = [];
  for (const r of k.resources ?? []) {
    const p = path.join(dir, r);
    objs.push(...(fs.statSync(p).isDirectory() ? render(p) : readDocs(p)));
  }
  for (const patch of k.patches ?? []) {
    if (!patch.path || Object.keys(patch).length !== 1) throw new Error(`${kfile}: only patches[].path is supported`);
    for (const p of readDocs(path.join(dir, patch.path))) {
      const i = objs.findIndex((o) => o.kind === p.kind && o.metadata?.name === p.metadata?.name);
      if (i < 0) throw new Error(`${kfile}: patch ${patch.path} matches no ${p.kind}/${p.metadata?.name}`);
      objs[i] = merge(objs[i], p);
    }
  }
  if (k.namespace) {
    objs = objs.map((o) => CLUSTER_SCOPED.has(o.kind) ? o : {...o, metadata: {...o.metadata, namespace: k.namespace}});
  }
  return objs;
}

const key = (o) => `${o.kind}/${o.metadata?.namespace ?? ''}/${o.metadata?.name ?? o.metadata?.generateName}`;
const canon = (v) => Array.isArray(v) ? v.map(canon)
  : isObj(v) ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, canon(v[k])])) : v;

let kubectl = null;
try { execFileSync('kubectl', ['version', '--client'], {stdio: 'ignore'}); kubectl = 'kubectl'; } catch {}

const targets = {};
for (const t of ['base', 'overlays/cpu', 'overlays/gpu']) {
  const dir = path.join(k8sDir, t);
  try {
    targets[t] = render(dir);
  } catch (e) {
    fail(t, e.message);
    continue;
  }
  if (kubectl) {
    try {
      const out = execFileSync(kubectl, ['kustomize', dir], {encoding: 'utf8'});
      const real = new Map(YAML.parseAllDocuments(out).map((d) => d.toJS()).filter(Boolean).map((o) => [key(o), JSON.stringify(canon(o))]));
      const mine = new Map(targets[t].map((o) => [key(o), JSON.stringify(canon(o))]));
      for (const [k2, v] of mine) {
        if (!real.has(k2)) fail(t, `${k2} rendered here but not by kubectl kustomize`);
        else if (real.get(k2) !== v) fail(t, `${k2} differs from kubectl kustomize:\n  ours: ${v}\n  real: ${real.get(k2)}`);
      }
      for (const k2 of real.keys()) if (!mine.has(k2)) fail(t, `${k2} rendered by kubectl kustomize only`);
    } catch (e) {
      fail(t, `kubectl kustomize failed: ${e.message}`);
    }
  }
}
if (!kubectl) console.log('note: kubectl not on PATH; rendering checked by the built-in renderer only');

const jobs = fs.readdirSync(path.join(k8sDir, 'jobs')).filter((f) => /\.ya?ml$/.test(f))
  .flatMap((f) => readDocs(path.join(k8sDir, 'jobs', f)));

// ---------------------------------------------------------------- schemas
function validate(where, o) {
  const [group, version] = o.apiVersion.includes('/') ? o.apiVersion.split('/') : [null, o.apiVersion];
  const mod = group ? `kubernetes-models/${group}/${version}/${o.kind}` : `kubernetes-models/${version}/${o.kind}`;
  let Cls;
  try {
    const m = require(mod);
    Cls = m[o.kind] ?? m.default;
  } catch (e) {
    return fail(where, `no schema for ${o.apiVersion} ${o.kind}`);
  }
  try {
    new Cls(o).validate();
  } catch (e) {
    fail(where, `${key(o)} fails the ${o.apiVersion} ${o.kind} schema: ${e.message}`);
  }
}
const all = [...Object.entries(targets).flatMap(([t, objs]) => objs.map((o) => [t, o])), ...jobs.map((o) => ['jobs', o])];
for (const [t, o] of all) validate(t, o);

// ---------------------------------------------------------------- binaries
const allow = JSON.parse(fs.readFileSync(new URL('./flag-allowlist.json', import.meta.url))).entries;
const BIN = {
  'internvl': 'cli/internvl',
  'internvl-gateway': 'gateway/internvl-gateway',
  'internvl-preprocess': 'services/preprocess/internvl-preprocess',
  'internvl-vision-encoder': 'services/vision_encoder/internvl-vision-encoder',
  'internvl-llm-decoder': 'services/llm_decoder/internvl-llm-decoder',
  'internvl-trainer': 'services/trainer/internvl-trainer',
};
const helpCache = new Map();
function help(bin, sub) {
  const k = `${bin} ${sub ?? ''}`;
  if (!helpCache.has(k)) {
    const file = path.join(buildDir, BIN[bin]);
    const args = sub ? [sub, '--help'] : ['--helpfull'];
    let text;
    try {
      text = execFileSync(file, args, {encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe']});
    } catch (e) {
      text = `${e.stdout ?? ''}${e.stderr ?? ''}`;  // absl exits 1 after --helpfull
    }
    if (!text.trim()) throw new Error(`${file} ${args.join(' ')} printed nothing`);
    const flags = new Map();
    const re = /^\s+--([A-Za-z][\w-]*)(?:[^\n]*\n\s+default: "?([^";\n]*)|)/gm;
    for (const m of text.matchAll(/^\s+--([A-Za-z][\w-]*)/gm)) flags.set(m[1], null);
    for (const m of text.matchAll(/--(\w+) \([^]*?default: "([^"]*)"/g)) if (flags.has(m[1]) && flags.get(m[1]) === null) flags.set(m[1], m[2]);
    helpCache.set(k, flags);
  }
  return helpCache.get(k);
}

function podSpec(o) {
  if (o.kind === 'Deployment' || o.kind === 'Job' || o.kind === 'StatefulSet') return o.spec.template.spec;
  return null;
}

const servingPorts = new Map();  // `${t}/${app}` -> Set of container port names
for (const [t, o] of all) {
  const spec = podSpec(o);
  if (!spec) continue;
  const name = o.metadata.name ?? o.metadata.generateName;
  for (const c of [...(spec.initContainers ?? []), ...spec.containers]) {
    const where = `${t} ${o.kind}/${name} container ${c.name}`;
    const app = o.spec.template.metadata?.labels?.['app.kubernetes.io/name'];
    const names = servingPorts.get(`${t}/${app}`) ?? new Set();
    for (const p of c.ports ?? []) names.add(p.name);
    servingPorts.set(`${t}/${app}`, names);
    if (!String(c.image).startsWith('internvl')) continue;
    const allowed = allow.find((a) => a.kind === o.kind && a.name === name && a.container === c.name);
    if (allowed) {
      console.log(`allow-list: ${where} not flag-checked (${allowed.reason})`);
      continue;
    }
    const cmd = c.command ?? [];
    const bin = path.basename(cmd[0] ?? '');
    if (!(bin in BIN) || !String(cmd[0]).startsWith('/usr/local/bin/')) { fail(where, `command ${cmd[0]} is not an internvl binary in /usr/local/bin`); continue; }
    const rest = [...cmd.slice(1), ...(c.args ?? [])];
    let sub = null;
    if (bin === 'internvl') sub = rest.shift();
    let flags;
    try { flags = help(bin, sub); } catch (e) { fail(where, e.message); continue; }
    if (flags.size === 0) { fail(where, `${bin} ${sub ?? ''}: no flags found in its help (unknown command?)`); continue; }
    const given = new Map();
    for (const a of rest) {
      const m = /^--([A-Za-z][\w-]*)(?:=(.*))?$/.exec(a);
      if (!m) { fail(where, `arg "${a}" is not --flag=value`); continue; }
      if (!flags.has(m[1])) fail(where, `${bin}${sub ? ' ' + sub : ''} has no flag --${m[1]}`);
      if (m[2] === undefined && bin !== 'internvl') fail(where, `--${m[1]} needs =value`);
      given.set(m[1], m[2]);
      for (const v of (m[2] ?? '').matchAll(/\$\((\w+)\)/g)) {
        const envNames = new Set((c.env ?? []).map((e) => e.name));
        const fromCm = (c.envFrom ?? []).some((e) => e.configMapRef?.name === 'internvl-config');
        const cm = all.find(([t2, x]) => (t2 === t || (t === 'jobs' && t2 === 'base')) && x.kind === 'ConfigMap' && x.metadata.name === 'internvl-config');
        if (!envNames.has(v[1]) && !(fromCm && cm && v[1] in cm[1].data)) fail(where, `$(${v[1]}) is not set in the container's environment`);
      }
    }
    // Probes: gRPC probes on the port --listen serves, declared in ports; a
    // TLS server (kubelet's gRPC probes are plaintext) is probed with GET
    // /healthz on its metrics port instead.
    const listen = given.get('listen') ?? flags.get('listen');
    const listenPort = listen ? Number(listen.split(':').pop()) : null;
    const tls = given.has('tls_cert_file');
    for (const pr of ['startupProbe', 'readinessProbe', 'livenessProbe']) {
      const probe = c[pr];
      if (!probe) continue;
      if (tls) {
        const h = probe.httpGet;
        if (!h || h.path !== '/healthz' || String(h.port) !== given.get('metrics_port') || probe.grpc)
          fail(where, `${pr}: a TLS server is probed with httpGet /healthz on its metrics port`);
        continue;
      }
      if (!probe.grpc) { fail(where, `${pr} is not a native gRPC probe`); continue; }
      if (listenPort == null) fail(where, `${pr}: ${bin} has no --listen`);
      else if (probe.grpc.port !== listenPort) fail(where, `${pr} port ${probe.grpc.port} != --listen port ${listenPort}`);
      if (!(c.ports ?? []).some((p) => p.containerPort === probe.grpc.port)) fail(where, `${pr} port ${probe.grpc.port} not in ports`);
    }
    if (listenPort != null && !c.startupProbe) fail(where, 'server without a startupProbe');
    const mp = given.get('metrics_port');
    if (mp && !(c.ports ?? []).some((p) => p.name === 'metrics' && String(p.containerPort) === mp)) fail(where, `metrics port ${mp} not declared as port "metrics"`);
    // Serving containers load the model from the cache only.
    if (given.has('model') && listenPort != null) {
      if (!(c.env ?? []).some((e) => e.name === 'HF_HUB_OFFLINE' && e.value === '1')) fail(where, 'serves a --model without HF_HUB_OFFLINE=1');
      if (!(spec.initContainers ?? []).some((i) => (i.command ?? []).join(' ').endsWith('internvl download'))) fail(where, 'no `internvl download` initContainer');
    }
  }
}

// Services: targetPorts name ports of the pods they select.
for (const [t, o] of all) {
  if (o.kind !== 'Service') continue;
  const names = servingPorts.get(`${t}/${o.spec.selector?.['app.kubernetes.io/name']}`);
  if (!names) { fail(t, `Service/${o.metadata.name} selects no pod template`); continue; }
  for (const p of o.spec.ports) {
    if (typeof p.targetPort === 'string' && !names.has(p.targetPort)) fail(t, `Service/${o.metadata.name} targetPort ${p.targetPort} is not a container port`);
  }
}

// HPA Pods metrics must be metrics the binaries export (registered by name in
// the service sources).
const sources = [];
const walk = (d) => {
  for (const e of fs.readdirSync(d, {withFileTypes: true})) {
    const p = path.join(d, e.name);
    if (e.isDirectory()) walk(p);
    else if (/\.(cc|h)$/.test(e.name) && !/_test\.cc$/.test(e.name)) sources.push(fs.readFileSync(p, 'utf8'));
  }
};
for (const d of ['services', 'gateway', 'core']) if (fs.existsSync(path.join(repo, d))) walk(path.join(repo, d));
for (const [t, o] of all) {
  if (o.kind !== 'HorizontalPodAutoscaler') continue;
  const kinds = new Set(o.spec.metrics.map((m) => m.type));
  if (!kinds.has('Resource') || !kinds.has('Pods')) fail(t, `HPA/${o.metadata.name} must scale on CPU and on a Pods metric`);
  for (const m of o.spec.metrics.filter((m) => m.type === 'Pods')) {
    const n = m.pods.metric.name;
    if (!sources.some((s) => new RegExp(`Get(Gauge|Counter|Histogram)\\(\\s*"${n}"`).test(s))) fail(t, `HPA/${o.metadata.name}: metric ${n} is not exported by any service`);
  }
}

// Redis is a bounded LRU cache.
for (const [t, o] of all) {
  if (o.kind === 'Deployment' && o.metadata.name === 'redis') {
    const args = o.spec.template.spec.containers[0].args.join(' ');
    if (!/--maxmemory \S+/.test(args) || !/--maxmemory-policy allkeys-lru/.test(args)) fail(t, 'redis needs --maxmemory and --maxmemory-policy allkeys-lru');
  }
}

for (const [t, objs] of Object.entries(targets)) console.log(`${t}: ${objs.length} objects`);
console.log(`jobs: ${jobs.length} objects; ${all.length} objects validated`);
if (errors.length) {
  for (const e of errors) console.error(`FAIL ${e}`);
  process.exit(1);
}
console.log('deploy check: OK');
