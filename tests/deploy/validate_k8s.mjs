#!/usr/bin/env node
// Validates the Kubernetes manifests in deploy/k8s offline (no cluster, no kubectl).
//
//   node tests/deploy/validate_k8s.mjs [DIR]        # DIR defaults to deploy/k8s
//   node tests/deploy/validate_k8s.mjs --self-test  # the checks reject broken manifests
//
// For every document of every file listed in DIR/kustomization.yaml:
//   1. parse it with the `yaml` package (syntax errors and duplicate keys fail);
//   2. find its model by apiVersion + kind: `kubernetes-models` for built-in kinds,
//      `@kubernetes-models/prometheus-operator` for ServiceMonitor and PrometheusRule; an unknown
//      kind fails;
//   3. `new Model(obj).validate()`: the Kubernetes OpenAPI schema (types, required fields, enums);
//   4. unknown fields: the generated validators do not reject properties the schema does not know
//      (a typo such as `readinessProbe.grcp` passes step 3), while `kubectl apply` does (strict field
//      validation). Step 4 runs the same validator on a Proxy of the object and reports every key
//      of a schema-described object that the validator never looked at;
//   5. topserve-specific cross-checks between the objects and the server config in the ConfigMap
//      (ports, probe service names, drain grace vs terminationGracePeriodSeconds, selectors, ...).
// Also checks that kustomization.yaml lists exactly the YAML files of DIR.
//
// Needs node_modules (package.json at the repository root): `npm ci` there, which
// scripts/install-deps.sh runs. Without it this script fails and says so.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

let YAML;
try {
  YAML = await import('yaml');
  await import('kubernetes-models/v1/ConfigMap');
  await import('@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor');
} catch (e) {
  console.error(`FAIL: the npm packages are not installed (${e.code || e.message}).\n` +
    `Run scripts/install-deps.sh (it runs \`npm ci --no-audit --no-fund\` in ${ROOT}), or ` +
    'that npm command yourself.');
  process.exit(1);
}

// apiVersion group -> module prefix of its models.
const CRD_PACKAGES = {
  'monitoring.coreos.com': '@kubernetes-models/prometheus-operator/monitoring.coreos.com',
};

async function modelFor(apiVersion, kind) {
  if (typeof apiVersion !== 'string' || typeof kind !== 'string' || !/^[A-Z][A-Za-z0-9]*$/.test(kind)) {
    return null;
  }
  const slash = apiVersion.indexOf('/');
  const group = slash < 0 ? '' : apiVersion.slice(0, slash);
  const version = slash < 0 ? apiVersion : apiVersion.slice(slash + 1);
  if (!/^v[0-9]+((alpha|beta)[0-9]+)?$/.test(version)) return null;
  let spec;
  if (CRD_PACKAGES[group]) spec = `${CRD_PACKAGES[group]}/${version}/${kind}`;
  else if (group === '') spec = `kubernetes-models/${version}/${kind}`;
  else if (/^[a-z0-9.-]+$/.test(group)) spec = `kubernetes-models/${group}/${version}/${kind}`;
  else return null;
  try {
    const mod = await import(spec);
    return mod[kind] || null;
  } catch {
    return null;
  }
}

// Runs the model's validator on a Proxy of `obj`; returns the paths of keys it never read on
// objects whose other keys it did read (so free-form objects and maps are left alone).
function unknownFields(Model, obj) {
  const reads = new Map();
  const wrap = (value, at) => {
    if (value === null || typeof value !== 'object') return value;
    return new Proxy(value, {
      get(target, key, receiver) {
        const v = Reflect.get(target, key, receiver);
        if (typeof key !== 'string') return v;
        if (!reads.has(at)) reads.set(at, new Set());
        reads.get(at).add(key);
        return wrap(v, `${at}/${key}`);
      },
    });
  };
  try {
    Model.prototype.validate.call(wrap(obj, ''));
  } catch {
    // Type errors are reported by the plain validate() call.
  }
  const unknown = [];
  const walk = (value, at) => {
    if (value === null || typeof value !== 'object') return;
    if (Array.isArray(value)) {
      value.forEach((v, i) => walk(v, `${at}/${i}`));
      return;
    }
    const seen = reads.get(at);
    for (const key of Object.keys(value)) {
      if (seen && !seen.has(key)) unknown.push(`${at}/${key}`);
      else walk(value[key], `${at}/${key}`);
    }
  };
  walk(obj, '');
  return unknown;
}

// Schema validation of one object: a list of error strings (empty = valid).
async function validateObject(obj) {
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) return ['not a mapping'];
  const Model = await modelFor(obj.apiVersion, obj.kind);
  if (!Model) return [`unknown kind: apiVersion ${JSON.stringify(obj.apiVersion)}, kind ${JSON.stringify(obj.kind)}`];
  const errors = [];
  try {
    new Model(obj).validate();
  } catch (e) {
    errors.push(`schema: ${e.message}`);
  }
  for (const p of unknownFields(Model, obj)) errors.push(`unknown field ${p}`);
  if (!obj.metadata || typeof obj.metadata.name !== 'string' || obj.metadata.name === '') {
    errors.push('metadata.name is missing');
  }
  return errors;
}

const KUSTOMIZATION_KEYS = new Set(['apiVersion', 'kind', 'namespace', 'resources', 'labels',
  'commonLabels', 'commonAnnotations', 'images', 'configMapGenerator', 'secretGenerator',
  'generatorOptions', 'patches', 'replicas', 'namePrefix', 'nameSuffix', 'components']);

function checkKustomization(k, dir) {
  const errors = [];
  if (k.apiVersion !== 'kustomize.config.k8s.io/v1beta1' || k.kind !== 'Kustomization') {
    errors.push('kustomization.yaml: apiVersion/kind must be kustomize.config.k8s.io/v1beta1 Kustomization');
  }
  for (const key of Object.keys(k)) {
    if (!KUSTOMIZATION_KEYS.has(key)) errors.push(`kustomization.yaml: unknown field ${key}`);
  }
  const listed = Array.isArray(k.resources) ? k.resources : [];
  if (listed.length === 0) errors.push('kustomization.yaml: no resources');
  for (const r of listed) {
    if (typeof r !== 'string' || !fs.existsSync(path.join(dir, r))) {
      errors.push(`kustomization.yaml: resource ${r} does not exist`);
    }
  }
  const files = fs.readdirSync(dir).filter((f) => /\.ya?ml$/.test(f) && f !== 'kustomization.yaml');
  for (const f of files) {
    if (!listed.includes(f)) errors.push(`kustomization.yaml: ${f} is not listed in resources`);
  }
  return { errors, resources: listed.filter((r) => typeof r === 'string') };
}

const matches = (selector, labels) =>
  selector && Object.keys(selector).length > 0 &&
  Object.entries(selector).every(([k, v]) => labels && labels[k] === v);

const portOf = (address) => Number(String(address).split(':').pop());

// topserve-specific consistency of the whole set of objects.
function crossCheck(objects) {
  const errors = [];
  const byKind = (kind) => objects.filter((o) => o.kind === kind);
  const one = (kind) => {
    const list = byKind(kind);
    if (list.length === 0) errors.push(`no ${kind}`);
    return list;
  };
  const deployments = one('Deployment');
  one('Service');
  one('ConfigMap');
  one('HorizontalPodAutoscaler');
  one('PodDisruptionBudget');
  one('ServiceMonitor');
  one('PrometheusRule');

  for (const d of deployments) {
    const where = `Deployment ${d.metadata.name}`;
    const pod = d.spec.template.spec;
    const podLabels = d.spec.template.metadata?.labels || {};
    if (!matches(d.spec.selector?.matchLabels, podLabels)) errors.push(`${where}: selector does not match the pod labels`);
    const c = pod.containers.find((x) => x.name === 'topserve') || pod.containers[0];

    // The server config the pod mounts.
    const cmName = (pod.volumes || []).map((v) => v.configMap?.name).find(Boolean);
    const cm = byKind('ConfigMap').find((x) => x.metadata.name === cmName);
    let config = null;
    if (!cm) errors.push(`${where}: mounts ConfigMap ${cmName}, which is not in the manifests`);
    else if (typeof cm.data?.['config.yaml'] !== 'string') errors.push(`ConfigMap ${cmName}: no config.yaml key`);
    else {
      try {
        config = YAML.parse(cm.data['config.yaml'], { uniqueKeys: true });
      } catch (e) {
        errors.push(`ConfigMap ${cmName}: config.yaml does not parse: ${e.message}`);
      }
    }
    const mount = (c.volumeMounts || []).find((m) => (pod.volumes || []).some((v) => v.name === m.name && v.configMap));
    const configArg = (c.args || []).indexOf('--config');
    const configPath = configArg >= 0 ? c.args[configArg + 1] : '/etc/topserve/config.yaml';
    if (!mount || path.posix.dirname(configPath) !== mount.mountPath) {
      errors.push(`${where}: the config file ${configPath} is not in the ConfigMap's mount`);
    }

    const ports = Object.fromEntries((c.ports || []).map((p) => [p.name, p.containerPort]));
    if (!ports.grpc) errors.push(`${where}: no container port named grpc`);
    if (!ports.metrics) errors.push(`${where}: no container port named metrics`);
    const modelNames = (config?.models || []).map((m) => m.name);
    if (config) {
      if (portOf(config.server?.listen) !== ports.grpc) {
        errors.push(`${where}: grpc containerPort ${ports.grpc} != config server.listen ${config.server?.listen}`);
      }
      if (config.server?.metrics_port !== ports.metrics) {
        errors.push(`${where}: metrics containerPort ${ports.metrics} != config server.metrics_port ${config.server?.metrics_port}`);
      }
      const grace = config.server?.drain_grace_seconds ?? 30;  // server/config.h default
      if (!(pod.terminationGracePeriodSeconds > grace + 5)) {
        errors.push(`${where}: terminationGracePeriodSeconds ${pod.terminationGracePeriodSeconds} must exceed ` +
          `server.drain_grace_seconds ${grace} by more than 5 s`);
      }
      if (modelNames.length === 0) errors.push(`ConfigMap ${cmName}: no models`);
    }
    const readinessNames = new Set([...modelNames, 'topserve.v1.Inference']);
    const grpcProbe = (probe, name) => {
      if (!probe?.grpc) {
        errors.push(`${where}: ${name} is not a gRPC probe`);
        return null;
      }
      if (probe.grpc.port !== ports.grpc) errors.push(`${where}: ${name} port ${probe.grpc.port} != grpc port ${ports.grpc}`);
      return probe.grpc.service ?? '';
    };
    const live = grpcProbe(c.livenessProbe, 'livenessProbe');
    if (live !== null && live !== '') errors.push(`${where}: livenessProbe must ask for service "" (process alive), not "${live}"`);
    for (const name of ['readinessProbe', 'startupProbe']) {
      const svc = grpcProbe(c[name], name);
      if (svc !== null && !readinessNames.has(svc)) {
        errors.push(`${where}: ${name} asks for service "${svc}", which is neither a configured model ` +
          `(${modelNames.join(', ')}) nor topserve.v1.Inference`);
      }
    }
    for (const r of ['requests', 'limits']) {
      for (const k of ['cpu', 'memory']) {
        if (!c.resources?.[r]?.[k]) errors.push(`${where}: resources.${r}.${k} is not set`);
      }
    }
    const nonRoot = c.securityContext?.runAsNonRoot ?? pod.securityContext?.runAsNonRoot;
    if (nonRoot !== true) errors.push(`${where}: runAsNonRoot is not true`);
    const uid = c.securityContext?.runAsUser ?? pod.securityContext?.runAsUser;
    if (!(uid > 0)) errors.push(`${where}: runAsUser must be a non-zero uid`);
    const omp = (c.env || []).find((e) => e.name === 'OMP_WAIT_POLICY');
    if (omp?.value !== 'passive') errors.push(`${where}: env OMP_WAIT_POLICY=passive is not set`);

    for (const s of byKind('Service')) {
      if (!matches(s.spec.selector, podLabels)) {
        errors.push(`Service ${s.metadata.name}: selector does not match the pods of ${where}`);
        continue;
      }
      for (const p of s.spec.ports) {
        const target = p.targetPort ?? p.port;
        const ok = typeof target === 'string' ? target in ports : Object.values(ports).includes(target);
        if (!ok) errors.push(`Service ${s.metadata.name}: port ${p.name} targets ${target}, not a container port`);
        if (p.name === 'grpc' && p.appProtocol !== 'grpc') errors.push(`Service ${s.metadata.name}: grpc port lacks appProtocol: grpc`);
      }
    }
    for (const p of byKind('PodDisruptionBudget')) {
      if (!matches(p.spec.selector?.matchLabels, podLabels)) errors.push(`PodDisruptionBudget ${p.metadata.name}: selector does not match ${where}`);
    }
    for (const h of byKind('HorizontalPodAutoscaler')) {
      const ref = h.spec.scaleTargetRef;
      if (ref.kind !== 'Deployment' || ref.name !== d.metadata.name) errors.push(`HorizontalPodAutoscaler ${h.metadata.name}: does not target ${where}`);
      if (!(h.spec.metrics || []).some((m) => m.type === 'Resource' && m.resource?.name === 'cpu')) {
        errors.push(`HorizontalPodAutoscaler ${h.metadata.name}: no CPU metric`);
      }
      if (!c.resources?.requests?.cpu) errors.push(`HorizontalPodAutoscaler ${h.metadata.name}: CPU utilisation needs a CPU request`);
    }
  }
  for (const sm of byKind('ServiceMonitor')) {
    const services = byKind('Service').filter((s) => matches(sm.spec.selector?.matchLabels, s.metadata.labels));
    if (services.length !== 1) {
      errors.push(`ServiceMonitor ${sm.metadata.name}: selects ${services.length} Services (want exactly 1, or pods are scraped twice)`);
    }
    for (const ep of sm.spec.endpoints || []) {
      for (const s of services) {
        if (!s.spec.ports.some((p) => p.name === ep.port)) errors.push(`ServiceMonitor ${sm.metadata.name}: Service ${s.metadata.name} has no port ${ep.port}`);
      }
    }
  }
  return errors;
}

function parseDocuments(text, file) {
  const errors = [];
  const objects = [];
  for (const doc of YAML.parseAllDocuments(text, { uniqueKeys: true, prettyErrors: true })) {
    for (const e of [...doc.errors, ...doc.warnings]) errors.push(`${file}: ${e.message}`);
    if (doc.errors.length > 0) continue;
    const obj = doc.toJS();
    if (obj !== null && obj !== undefined) objects.push(obj);
  }
  return { errors, objects };
}

async function validateDir(dir) {
  const errors = [];
  const kfile = path.join(dir, 'kustomization.yaml');
  if (!fs.existsSync(kfile)) return { errors: [`${kfile} is missing`], count: 0 };
  const kparsed = parseDocuments(fs.readFileSync(kfile, 'utf8'), 'kustomization.yaml');
  errors.push(...kparsed.errors);
  const k = checkKustomization(kparsed.objects[0] || {}, dir);
  errors.push(...k.errors);
  const all = [];
  for (const file of k.resources) {
    const full = path.join(dir, file);
    if (!fs.existsSync(full)) continue;
    const { errors: perr, objects } = parseDocuments(fs.readFileSync(full, 'utf8'), file);
    errors.push(...perr);
    if (objects.length === 0) errors.push(`${file}: no documents`);
    for (const obj of objects) {
      const name = `${file}: ${obj?.kind ?? '?'} ${obj?.metadata?.name ?? '?'}`;
      const errs = await validateObject(obj);
      errors.push(...errs.map((e) => `${name}: ${e}`));
      if (errs.length === 0) {
        console.log(`ok   ${name}`);
        all.push(obj);
      }
    }
  }
  if (errors.length === 0) errors.push(...crossCheck(all).map((e) => `cross-check: ${e}`));
  return { errors, count: all.length };
}

// Negative checks: each broken object must be rejected, for the reason given.
async function selfTest() {
  const dir = path.join(ROOT, 'deploy', 'k8s');
  const load = (file) => parseDocuments(fs.readFileSync(path.join(dir, file), 'utf8'), file).objects;
  const deployment = load('deployment.yaml')[0];
  const serviceMonitor = load('servicemonitor.yaml')[0];
  const rule = load('prometheusrule.yaml')[0];
  const clone = (o) => JSON.parse(JSON.stringify(o));
  const container = (d) => d.spec.template.spec.containers[0];

  const cases = [
    ['real Deployment (must pass)', deployment, null],
    ['replicas as a string', ((d) => { d.spec.replicas = 'two'; return d; })(clone(deployment)), /spec\/replicas must be integer/],
    ['containerPort as a string', ((d) => { container(d).ports[0].containerPort = '8500'; return d; })(clone(deployment)),
      /containerPort must be integer/],
    ['probe typo grcp', ((d) => { const p = container(d).readinessProbe; p.grcp = p.grpc; delete p.grpc; return d; })(clone(deployment)),
      /unknown field .*readinessProbe\/grcp/],
    ['misspelled terminationGracePeriod', ((d) => { d.spec.template.spec.terminationGracePeriod = 45; return d; })(clone(deployment)),
      /unknown field \/spec\/template\/spec\/terminationGracePeriod$/],
    ['containers missing', ((d) => { delete d.spec.template.spec.containers; return d; })(clone(deployment)),
      /must have required property '?containers'?/],
    ['ServiceMonitor interval as a number', ((s) => { s.spec.endpoints[0].interval = 15; return s; })(clone(serviceMonitor)),
      /interval must be string/],
    ['ServiceMonitor typo scrapeTimout', ((s) => { s.spec.endpoints[0].scrapeTimout = '5s'; return s; })(clone(serviceMonitor)),
      /unknown field \/spec\/endpoints\/0\/scrapeTimout/],
    ['PrometheusRule typo experssion', ((r) => { r.spec.groups[1].rules[0].experssion = 'up'; return r; })(clone(rule)),
      /unknown field \/spec\/groups\/1\/rules\/0\/experssion/],
    ['PrometheusRule rules not a list', ((r) => { r.spec.groups[0].rules = 'x'; return r; })(clone(rule)), /rules must be array/],
    ['unknown kind', { apiVersion: 'v1', kind: 'Deploymnt', metadata: { name: 'x' } }, /unknown kind/],
    ['unknown CRD group', { apiVersion: 'example.com/v1', kind: 'Widget', metadata: { name: 'x' } }, /unknown kind/],
  ];
  let failed = 0;
  for (const [name, obj, want] of cases) {
    const errs = await validateObject(obj);
    const ok = want === null ? errs.length === 0 : errs.some((e) => want.test(e));
    console.log(`${ok ? 'ok  ' : 'FAIL'} ${name}: ${errs.length ? errs.join('; ') : 'valid'}`);
    if (!ok) failed++;
  }
  // Cross-checks: a drain grace longer than the termination grace period is caught.
  const objects = [];
  for (const f of fs.readdirSync(dir).filter((x) => x.endsWith('.yaml') && x !== 'kustomization.yaml')) objects.push(...load(f));
  const broken = clone(objects);
  const cm = broken.find((o) => o.kind === 'ConfigMap');
  cm.data['config.yaml'] = cm.data['config.yaml'].replace(/drain_grace_seconds: *[0-9.]+/, 'drain_grace_seconds: 60');
  const dep = broken.find((o) => o.kind === 'Deployment');
  container(dep).readinessProbe.grpc.service = 'no-such-model';
  const xerrs = crossCheck(broken);
  for (const [name, re] of [['drain grace > termination grace', /terminationGracePeriodSeconds/],
    ['readiness probe on an unknown model', /readinessProbe asks for service "no-such-model"/]]) {
    const ok = xerrs.some((e) => re.test(e));
    console.log(`${ok ? 'ok  ' : 'FAIL'} cross-check ${name}`);
    if (!ok) failed++;
  }
  const clean = crossCheck(objects);
  console.log(`${clean.length === 0 ? 'ok  ' : 'FAIL'} cross-check of the real manifests: ${clean.join('; ') || 'consistent'}`);
  if (clean.length) failed++;
  return failed;
}

const args = process.argv.slice(2);
if (args[0] === '--self-test') {
  const failed = await selfTest();
  console.log(failed ? `self-test: ${failed} check(s) FAILED` : 'self-test: every broken manifest was rejected');
  process.exit(failed ? 1 : 0);
}
const dir = path.resolve(args[0] || path.join(ROOT, 'deploy', 'k8s'));
const { errors, count } = await validateDir(dir);
for (const e of errors) console.log(`FAIL ${e}`);
if (errors.length) {
  console.log(`${path.relative(ROOT, dir) || dir}: ${errors.length} problem(s)`);
  process.exit(1);
}
console.log(`${path.relative(ROOT, dir)}: ${count} objects valid and consistent`);
