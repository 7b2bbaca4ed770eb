// Checks k8s/: every manifest parses and fits the Kubernetes schemas, the kustomization builds,
// the Role grants exactly what services/store/ calls, on the lease Service and the shard
// ConfigMaps the configuration names, and the Deployment,
// Service and PodDisruptionBudget fit together and with the Dockerfile.

import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import { execFile, spawnSync } from 'node:child_process';
import { cp, mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import * as clientNode from '@kubernetes/client-node';
import { Deployment, type IDeployment } from 'kubernetes-models/apps/v1';
import { PodDisruptionBudget, type IPodDisruptionBudget } from 'kubernetes-models/policy/v1';
import { Role, RoleBinding, type IRole, type IRoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1';
import {
  ConfigMap,
  Namespace,
  PersistentVolumeClaim,
  Secret,
  Service,
  ServiceAccount,
  type IConfigMap,
  type IContainer,
  type IPodSpec,
  type ISecret,
  type IService,
} from 'kubernetes-models/v1';
import { parseAllDocuments } from 'yaml';
import { loadConfig, type Config } from '../services/config.ts';
import { shardName } from '../services/store/shards.ts';
import { tempDir } from './support/harness.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const K8S_DIR = join(ROOT, 'k8s');
const KUSTOMIZATION = 'kustomization.yaml';
const SECRET_EXAMPLE = 'secret.example.yaml';
const STORE_SOURCES = join(ROOT, 'services', 'store');
const APP_LABEL = { 'app.kubernetes.io/name': 'k8s-claimer' };

interface Manifest {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  [field: string]: unknown;
}

/** A manifest and where it came from, for messages that point at the file. */
interface Loaded {
  file: string;
  object: Manifest;
}

interface KindInfo {
  /** kubernetes-models' class: its validate() checks types, formats and required fields. */
  model: new (data: never) => { validate(): void };
  /** @kubernetes/client-node's model of the same kind: its attribute map names every field. */
  clientType: string;
  namespaced: boolean;
}

/** The kinds k8s/ may hold; anything else fails the test until it is added here. */
const KINDS: Record<string, KindInfo> = {
  'v1/Namespace': { model: Namespace, clientType: 'V1Namespace', namespaced: false },
  'v1/ServiceAccount': { model: ServiceAccount, clientType: 'V1ServiceAccount', namespaced: true },
  'v1/ConfigMap': { model: ConfigMap, clientType: 'V1ConfigMap', namespaced: true },
  'v1/Secret': { model: Secret, clientType: 'V1Secret', namespaced: true },
  // Only in the file-store overlay k8s/README.md shows.
  'v1/PersistentVolumeClaim': { model: PersistentVolumeClaim, clientType: 'V1PersistentVolumeClaim', namespaced: true },
  'v1/Service': { model: Service, clientType: 'V1Service', namespaced: true },
  'apps/v1/Deployment': { model: Deployment, clientType: 'V1Deployment', namespaced: true },
  'policy/v1/PodDisruptionBudget': { model: PodDisruptionBudget, clientType: 'V1PodDisruptionBudget', namespaced: true },
  'rbac.authorization.k8s.io/v1/Role': { model: Role, clientType: 'V1Role', namespaced: true },
  'rbac.authorization.k8s.io/v1/RoleBinding': { model: RoleBinding, clientType: 'V1RoleBinding', namespaced: true },
};

function kindOf(object: Manifest): KindInfo {
  const info = KINDS[`${object.apiVersion}/${object.kind}`];
  assert.ok(info, `${object.apiVersion} ${object.kind} is not a kind this test knows; add it to KINDS`);
  return info;
}

// ---------------------------------------------------------------------------------------------
// Loading and building

async function yamlFilesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries
    .filter((entry) => entry.isFile() && /\.ya?ml$/.test(entry.name))
    .map((entry) => relative(dir, join(entry.parentPath, entry.name)))
    .sort();
}

/** Every document of a file; YAML 1.1 like kubectl's parser (so `yes` is a boolean there too). */
async function loadFile(file: string): Promise<Manifest[]> {
  const text = await readFile(join(K8S_DIR, file), 'utf8');
  const objects: Manifest[] = [];
  for (const document of parseAllDocuments(text, { version: '1.1' })) {
    assert.deepEqual(document.errors.map(String), [], `${file} does not parse`);
    assert.deepEqual(document.warnings.map(String), [], `${file} parses with warnings`);
    const value: unknown = document.toJS();
    if (value === null || value === undefined) continue;
    assert.ok(typeof value === 'object' && !Array.isArray(value), `${file}: a document is not a mapping`);
    const object = value as Manifest;
    assert.equal(typeof object.apiVersion, 'string', `${file}: apiVersion missing`);
    assert.equal(typeof object.kind, 'string', `${file}: kind missing`);
    assert.equal(typeof object.metadata?.name, 'string', `${file}: metadata.name missing`);
    objects.push(object);
  }
  return objects;
}

/** The kustomize fields the builder below implements; any other field fails the build. */
const IMPLEMENTED_KUSTOMIZE_FIELDS = new Set(['apiVersion', 'kind', 'namespace', 'resources', 'images']);

interface ImageOverride {
  name: string;
  newName?: string;
  newTag?: string;
}

interface Kustomization {
  namespace: string;
  resources: string[];
  images: ImageOverride[];
}

async function readKustomization(): Promise<Kustomization> {
  const text = await readFile(join(K8S_DIR, KUSTOMIZATION), 'utf8');
  const document = parseAllDocuments(text, { version: '1.1' });
  assert.ok(Array.isArray(document) && document.length === 1, `${KUSTOMIZATION} must be one YAML document`);
  const [only] = document;
  assert.deepEqual(only.errors.map(String), [], `${KUSTOMIZATION} does not parse`);
  const value = only.toJS() as Record<string, unknown>;
  const unimplemented = Object.keys(value).filter((field) => !IMPLEMENTED_KUSTOMIZE_FIELDS.has(field));
  assert.deepEqual(unimplemented, [], `${KUSTOMIZATION} uses fields this test's builder does not implement: implement them here`);
  assert.equal(value.apiVersion, 'kustomize.config.k8s.io/v1beta1');
  assert.equal(value.kind, 'Kustomization');
  assert.equal(typeof value.namespace, 'string', 'the kustomization sets the namespace');
  assert.ok(Array.isArray(value.resources) && value.resources.every((entry) => typeof entry === 'string'));
  const images = (value.images ?? []) as ImageOverride[];
  for (const image of images) {
    const unimplemented = Object.keys(image).filter((field) => !['name', 'newName', 'newTag'].includes(field));
    assert.deepEqual(unimplemented, [], `images entry ${image.name}: fields this test's builder does not implement`);
  }
  return { namespace: value.namespace as string, resources: value.resources as string[], images };
}

/** `registry:5000/team/app:v1` → `registry:5000/team/app`: what kustomize's `images:` match on. */
function imageName(reference: string): string {
  const withoutDigest = reference.split('@')[0];
  const colon = withoutDigest.lastIndexOf(':');
  return colon > withoutDigest.lastIndexOf('/') ? withoutDigest.slice(0, colon) : withoutDigest;
}

/** `images:` as kustomize applies it: a container whose image has the entry's name gets its new name and tag. */
function overrideImage(reference: string, images: ImageOverride[]): string {
  const name = imageName(reference);
  const override = images.find((image) => image.name === name);
  if (!override) return reference;
  const tag = override.newTag ?? reference.split('@')[0].slice(name.length + 1);
  return tag ? `${override.newName ?? name}:${tag}` : (override.newName ?? name);
}

/** What `kubectl apply -k k8s/` sends, for the features kustomization.yaml uses. */
async function build(kustomization: Kustomization): Promise<Loaded[]> {
  const built: Loaded[] = [];
  for (const file of kustomization.resources) {
    // Directories, remote bases and globs are kustomize features this builder lacks.
    assert.match(file, /^[\w.-]+\.ya?ml$/, `resource ${file}: only plain files in k8s/ are implemented`);
    for (const object of await loadFile(file)) {
      const copy = structuredClone(object);
      // The namespace transform: namespaced objects move; cluster-scoped ones stay as they are.
      if (kindOf(copy).namespaced) copy.metadata.namespace = kustomization.namespace;
      // The images transform, on the one kind here that has containers.
      if (copy.kind === 'Deployment') {
        for (const container of (copy as IDeployment & Manifest).spec?.template.spec?.containers ?? []) {
          if (container.image) container.image = overrideImage(container.image, kustomization.images);
        }
      }
      built.push({ file, object: copy });
    }
  }
  return built;
}

// ---------------------------------------------------------------------------------------------
// The real kustomize, where kubectl is installed

const HAS_KUBECTL = spawnSync('kubectl', ['version', '--client'], { stdio: 'ignore' }).status === 0;
const WITHOUT_KUBECTL = 'kubectl is missing: building with the real kustomize (`kubectl kustomize`) needs it';

/** `kubectl kustomize DIR`: what `kubectl apply -k DIR` would send. */
async function kustomize(dir: string): Promise<Manifest[]> {
  const output = await new Promise<string>((resolve, reject) => {
    execFile('kubectl', ['kustomize', dir], { maxBuffer: 16 * 2 ** 20 }, (error, stdout, stderr) => {
      if (error) reject(new Error(`kubectl kustomize ${dir} failed: ${stderr || error.message}`));
      else resolve(stdout);
    });
  });
  const objects = parseAllDocuments(output, { version: '1.1' }).map((document) => document.toJS() as Manifest);
  // kustomize folds a generated Secret's base64 over lines; the apiserver's decoder skips the
  // line breaks, the schema's "byte" format does not.
  for (const object of objects) {
    const data = (object as { data?: Record<string, string> }).data;
    if (object.kind === 'Secret' && data) for (const key of Object.keys(data)) data[key] = data[key].replace(/\n/g, '');
  }
  return objects;
}

/** The ConfigMap the pods read their settings from (the others are shards of the lease table). */
function settingsOf(objects: Manifest[], container: IContainer): IConfigMap & Manifest {
  assert.equal(container.envFrom?.length, 1, 'the settings come from one ConfigMap');
  const named = container.envFrom?.[0].configMapRef?.name;
  const settings = objects.find((object) => object.kind === 'ConfigMap' && object.metadata.name === named);
  assert.ok(settings, `the ConfigMap ${named} the pods read is in the build`);
  return settings as IConfigMap & Manifest;
}

/** The shard ConfigMaps a configuration counts (the Service is the first cluster shard). */
function shardNamesOf(config: Config): string[] {
  return [
    ...Array.from({ length: config.shards.clusters - 1 }, (_, index) => shardName(config.serviceName, 'clusters', index + 1)),
    ...Array.from({ length: config.shards.tickets }, (_, index) => shardName(config.serviceName, 'tickets', index + 1)),
  ];
}

function builtKind<T extends Manifest>(objects: Manifest[], kind: string): T {
  return only<T>(objects.map((object) => ({ file: 'kubectl kustomize', object })), kind);
}

/**
 * The checks every build must pass to deploy: it fits the schemas, sits in one namespace, and
 * the server's configuration in its pod (ConfigMap, literal env, downward API, the Secret's
 * keys) names the lease Service that the Role covers and the RoleBinding grants.
 */
async function checkDeployable(name: string, objects: Manifest[]) {
  const namespace = builtKind(objects, 'Namespace').metadata.name;
  for (const object of objects) {
    validateAgainstSchemas(name, object);
    if (kindOf(object).namespaced) assert.equal(object.metadata.namespace, namespace, `${name}: ${object.kind} ${object.metadata.name}`);
  }
  const deployment = builtKind<IDeployment & Manifest>(objects, 'Deployment');
  const pod = deployment.spec?.template.spec;
  assert.equal(pod?.containers.length, 1, `${name}: one container`);
  const [container] = pod?.containers ?? [];
  const configMap = settingsOf(objects, container);
  assert.equal(configMap.data?.NAMESPACE, undefined, `${name}: no namespace hard-coded in the ConfigMap`);
  const podNamespace = container.env?.find((variable) => variable.name === 'POD_NAMESPACE');
  assert.deepEqual(podNamespace?.valueFrom, { fieldRef: { fieldPath: 'metadata.namespace' } }, `${name}: POD_NAMESPACE comes from the downward API`);

  const accountKey = Buffer.from(JSON.stringify({ client_email: 'claimer@example.iam.gserviceaccount.com', private_key: 'test' })).toString('base64');
  const secret: Record<string, string> = { AUTH_TOKEN: 'token', GOOGLE_CLOUD_ACCOUNT_FILE_BASE64: accountKey };
  const fields: Record<string, string | undefined> = { 'metadata.name': `${deployment.metadata.name}-0`, 'metadata.namespace': deployment.metadata.namespace };
  const environment: Record<string, string | undefined> = { ...configMap.data };
  for (const variable of container.env ?? []) {
    const from = variable.valueFrom;
    environment[variable.name] = from?.fieldRef ? fields[from.fieldRef.fieldPath] : from?.secretKeyRef ? secret[from.secretKeyRef.key] : variable.value;
  }
  const config = loadConfig(environment, { staticPoolFile: 'pool/example.yaml' });

  const service = builtKind<IService & Manifest>(objects, 'Service');
  assert.deepEqual([config.namespace, config.serviceName], [service.metadata.namespace, service.metadata.name], `${name}: the claimer looks for the lease Service where it is`);
  const role = builtKind<IRole & Manifest>(objects, 'Role');
  assert.equal(role.metadata.namespace, config.namespace, `${name}: the Role covers the lease Service's namespace`);
  assert.deepEqual(role.rules?.[0].resourceNames, [config.serviceName]);
  // The shard objects the configuration counts: each in the build, each named in the Role.
  const shards = shardNamesOf(config);
  assert.deepEqual(role.rules?.[1]?.resourceNames ?? [], shards, `${name}: the Role names the shard ConfigMaps LEASE_SHARDS and LEASE_TICKET_SHARDS count`);
  const built = new Set(objects.filter((object) => object.kind === 'ConfigMap').map((object) => object.metadata.name));
  assert.deepEqual(shards.filter((shard) => !built.has(shard)), [], `${name}: shard ConfigMaps the configuration counts but the build lacks`);
  const binding = builtKind<IRoleBinding & Manifest>(objects, 'RoleBinding');
  const account = builtKind(objects, 'ServiceAccount');
  assert.equal(binding.metadata.namespace, config.namespace);
  assert.deepEqual(binding.roleRef, { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: role.metadata.name });
  assert.deepEqual(binding.subjects, [{ kind: 'ServiceAccount', name: account.metadata.name, namespace }], `${name}: the binding names the pods' account in its namespace`);
  assert.equal(pod?.serviceAccountName, account.metadata.name);
  return { objects, config, container };
}

// ---------------------------------------------------------------------------------------------
// Schema checks

interface Attribute {
  baseName: string;
  type: string;
}

const clientModels = clientNode as unknown as Record<string, { getAttributeTypeMap?: () => Attribute[] } | undefined>;

/**
 * Fields the Kubernetes API does not know, as `kubectl apply` (strict field validation by
 * default) would refuse them. kubernetes-models' schemas allow unknown fields, so a typo such
 * as `replica:` would pass validate(); client-node's models list every field of every type.
 */
function unknownFields(value: unknown, type: string, path: string): string[] {
  if (value === null || value === undefined) return [];
  const array = /^Array<(.+)>$/.exec(type);
  if (array) {
    if (!Array.isArray(value)) return [];
    return value.flatMap((item, index) => unknownFields(item, array[1], `${path}[${index}]`));
  }
  const map = /^\{ \[key: string\]: (.+); \}$/.exec(type);
  if (map) {
    if (typeof value !== 'object') return [];
    return Object.entries(value).flatMap(([key, item]) => unknownFields(item, map[1], `${path}.${key}`));
  }
  const attributes = clientModels[type]?.getAttributeTypeMap?.();
  // Scalars, IntOrString, `any`: nothing below them to check.
  if (!attributes || typeof value !== 'object' || Array.isArray(value)) return [];
  const problems: string[] = [];
  for (const [key, item] of Object.entries(value)) {
    const attribute = attributes.find((candidate) => candidate.baseName === key);
    if (!attribute) problems.push(`${path}.${key}`);
    else problems.push(...unknownFields(item, attribute.type, `${path}.${key}`));
  }
  return problems;
}

function validateAgainstSchemas(file: string, object: Manifest): void {
  const info = kindOf(object);
  assert.doesNotThrow(() => new info.model(structuredClone(object) as never).validate(), `${file}: ${object.kind} does not fit the schema`);
  assert.ok(clientModels[info.clientType]?.getAttributeTypeMap, `client-node has no model ${info.clientType}`);
  assert.deepEqual(unknownFields(object, info.clientType, object.kind), [], `${file}: fields Kubernetes does not know`);
}

// ---------------------------------------------------------------------------------------------
// What the code calls

const VERB_OF_METHOD: Record<string, string> = {
  read: 'get',
  patch: 'patch',
  replace: 'update',
  create: 'create',
  delete: 'delete',
  deleteCollection: 'deletecollection',
  list: 'list',
};

/** `Service` → `services`, `ServiceStatus` → `services/status`. */
function resourceOf(kind: string): string {
  const status = /^(.+)Status$/.exec(kind);
  const plural = (name: string) => (name.endsWith('s') ? name.toLowerCase() : `${name.toLowerCase()}s`);
  return status ? `${plural(status[1])}/status` : plural(kind);
}

/** `resource verb` pairs the store's source calls in its own cluster, found by reading it. */
function permissionsUsedBy(source: string): { permissions: Set<string>; problems: string[] } {
  const permissions = new Set<string>();
  const problems: string[] = [];
  for (const [, apiClass] of source.matchAll(/makeApiClient\(\s*(\w+)\s*\)/g)) {
    // Every client-node call is mapped to a resource of the core ("") group below.
    if (apiClass !== 'CoreV1Api') problems.push(`makeApiClient(${apiClass}): map its calls to their API group in this test`);
  }
  for (const [, method, kind] of source.matchAll(/\.(read|patch|replace|create|deleteCollection|delete|list)Namespaced([A-Z]\w*)\s*\(/g)) {
    permissions.add(`${resourceOf(kind)} ${VERB_OF_METHOD[method]}`);
  }
  // Watched resources: the paths the code builds, each a literal naming its resource.
  for (const [, resource] of source.matchAll(/`\/api\/v1\/namespaces\/\$\{[^}]+\}\/([a-z]+)`/g)) permissions.add(`${resource} watch`);
  const watchCalls = [...source.matchAll(/\.watch\(\s*[^,]+,\s*\{([^}]*)\}/g)];
  for (const [call, query] of watchCalls) {
    // resourceNames only authorizes a watch that names its object with this field selector.
    if (!/fieldSelector:\s*`metadata\.name=\$\{/.test(query)) problems.push(`a watch without a metadata.name field selector: ${call.slice(0, 80)}`);
  }
  const watchCount = source.match(/\.watch\(\s*[`a-z]/g)?.length ?? 0;
  if (source.includes('new Watch(') && watchCount !== watchCalls.length) problems.push('a Watch whose query this test cannot read');
  return { permissions, problems };
}

// ---------------------------------------------------------------------------------------------
// Small helpers

function only<T extends Manifest>(built: Loaded[], kind: string): T {
  const matches = built.filter((loaded) => loaded.object.kind === kind);
  assert.equal(matches.length, 1, `exactly one ${kind} in the build`);
  return matches[0].object as T;
}

function selects(selector: Record<string, string> | undefined, labels: Record<string, string> | undefined): boolean {
  if (!selector || Object.keys(selector).length === 0) return false;
  return Object.entries(selector).every(([key, value]) => labels?.[key] === value);
}

const QUANTITY_UNITS: Record<string, number> = { '': 1, m: 1e-3, k: 1e3, M: 1e6, G: 1e9, Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30 };

function quantity(value: string | number | undefined): number {
  assert.ok(value !== undefined, 'a quantity is missing');
  const match = /^(\d+(?:\.\d+)?)(m|k|M|G|Ki|Mi|Gi)?$/.exec(String(value));
  assert.ok(match, `quantity ${value}: a form this test does not parse`);
  return Number(match[1]) * QUANTITY_UNITS[match[2] ?? ''];
}

function containerPortNumber(container: IContainer, port: string | number | undefined): number | undefined {
  if (typeof port === 'number') return port;
  return container.ports?.find((candidate) => candidate.name === port)?.containerPort;
}

// ---------------------------------------------------------------------------------------------

interface Fixture {
  files: string[];
  kustomization: Kustomization;
  built: Loaded[];
  deployment: IDeployment;
  pod: IPodSpec;
  container: IContainer;
  service: IService;
  configMap: IConfigMap;
  dockerfile: string;
}

let loading: Promise<Fixture> | undefined;

/** Loaded once, on first use: a broken kustomization fails each test with its own message. */
function fixture(): Promise<Fixture> {
  loading ??= (async () => {
    const files = await yamlFilesUnder(K8S_DIR);
    const kustomization = await readKustomization();
    const built = await build(kustomization);
    const deployment = only<IDeployment & Manifest>(built, 'Deployment');
    const pod = deployment.spec?.template.spec;
    assert.ok(pod, 'the Deployment has a pod template');
    assert.equal(pod.containers.length, 1, 'one container');
    return {
      files,
      kustomization,
      built,
      deployment,
      pod,
      container: pod.containers[0],
      service: only<IService & Manifest>(built, 'Service'),
      configMap: settingsOf(built.map((loaded) => loaded.object), pod.containers[0]),
      dockerfile: await readFile(join(ROOT, 'Dockerfile'), 'utf8'),
    };
  })();
  return loading;
}

describe('k8s/ manifests', () => {
  test('every YAML file under k8s/ parses and fits the Kubernetes schemas, with no unknown fields', async () => {
    const files = await yamlFilesUnder(K8S_DIR);
    assert.ok(files.includes(KUSTOMIZATION) && files.includes(SECRET_EXAMPLE));
    for (const file of files) {
      if (file === KUSTOMIZATION) continue;
      const objects = await loadFile(file);
      assert.ok(objects.length > 0, `${file} holds no object`);
      for (const object of objects) validateAgainstSchemas(file, object);
    }
  });

  test('the schema check itself catches a misspelt field and a wrong type', () => {
    const sample = (spec: Record<string, unknown>, container: Record<string, unknown>) => ({
      apiVersion: 'apps/v1',
      kind: 'Deployment',
      metadata: { name: 'sample' },
      spec: { selector: { matchLabels: APP_LABEL }, template: { spec: { containers: [{ name: 'c', image: 'i', ...container }] } }, ...spec },
    });
    assert.deepEqual(unknownFields(sample({ replica: 2 }, {}), 'V1Deployment', 'Deployment'), ['Deployment.spec.replica']);
    assert.deepEqual(unknownFields(sample({}, { securityContext: { readOnlyRootFS: true } }), 'V1Deployment', 'Deployment'), [
      'Deployment.spec.template.spec.containers[0].securityContext.readOnlyRootFS',
    ]);
    assert.doesNotThrow(() => new Deployment(sample({ replicas: 2 }, {}) as never).validate());
    assert.throws(() => new Deployment(sample({}, { securityContext: { runAsUser: 'node' } }) as never).validate());
  });

  test('the kustomization lists every manifest but the Secret example, and builds into one namespace', async () => {
    const { files, kustomization, built } = await fixture();
    const expected = files.filter((file) => file !== KUSTOMIZATION && file !== SECRET_EXAMPLE);
    assert.deepEqual([...kustomization.resources].sort(), expected, 'every manifest is applied, and only the example Secret is left out');
    assert.ok(!kustomization.resources.includes(SECRET_EXAMPLE), 'the Secret example must never be applied');
    assert.ok(!built.some((loaded) => loaded.object.kind === 'Secret'), 'no Secret in the build: the real one is created by hand');

    const namespace = only(built, 'Namespace');
    // The Namespace object is the namespace everything moves to (so kustomize need not rename it).
    assert.equal(namespace.metadata.name, kustomization.namespace);
    for (const { file, object } of built) {
      if (kindOf(object).namespaced) assert.equal(object.metadata.namespace, kustomization.namespace, file);
      for (const [key, value] of Object.entries(APP_LABEL)) assert.equal(object.metadata.labels?.[key], value, `${file}: ${object.kind} carries ${key}`);
    }
    const names = built.map(({ object }) => `${object.kind}/${object.metadata.name}`);
    assert.equal(new Set(names).size, names.length, 'no two objects with the same kind and name');
  });

  test('the ConfigMap is a configuration main.ts accepts, pointing at the lease Service', async () => {
    const { deployment, service, configMap } = await fixture();
    const data = configMap.data ?? {};
    // Pinned here, it would stay behind when an overlay moves the claimer to another namespace.
    assert.equal(data.NAMESPACE, undefined, 'the namespace comes from the pod (POD_NAMESPACE), not the ConfigMap');
    assert.equal(data.SERVICE_NAME, service.metadata?.name);
    assert.ok(data.GOOGLE_CLOUD_PROJECT_ID, 'GOOGLE_CLOUD_PROJECT_ID (a placeholder to replace)');
    assert.equal(data.GOOGLE_CLOUD_ZONE, '-');
    assert.ok(data.LOG_LEVEL);
    // A misspelt key would be ignored silently by the server: each must be a variable it reads.
    const configSource = await readFile(join(ROOT, 'services', 'config.ts'), 'utf8');
    for (const key of Object.keys(data)) assert.match(configSource, new RegExp(`\\b${key}:`), `${key} is not a variable services/config.ts reads`);

    const accountKey = Buffer.from(JSON.stringify({ client_email: 'claimer@example.iam.gserviceaccount.com', private_key: 'test' })).toString('base64');
    const config = loadConfig(
      // POD_NAMESPACE as the downward API gives it: the namespace the pod runs in.
      { ...data, AUTH_TOKEN: 'token', GOOGLE_CLOUD_ACCOUNT_FILE_BASE64: accountKey, POD_NAMESPACE: deployment.metadata?.namespace },
      { staticPoolFile: 'pool/example.yaml' },
    );
    assert.equal(config.mode, 'gke');
    assert.equal(config.leaseStore, 'kubernetes', 'replicas share the lease table on the Service');
    assert.equal(config.namespace, service.metadata?.namespace);
    assert.equal(config.serviceName, service.metadata?.name);
  });

  test('the Role grants exactly what services/store/ calls, on the lease Service and its shard ConfigMaps only', async () => {
    const { built, configMap, container } = await fixture();
    const role = only<IRole & Manifest>(built, 'Role');
    const config = loadConfig({ ...configMap.data, AUTH_TOKEN: 'token', GOOGLE_CLOUD_ACCOUNT_FILE_BASE64: Buffer.from('{"client_email":"a@b.c","private_key":"k"}').toString('base64') }, { staticPoolFile: 'pool/example.yaml' });
    assert.equal(container.envFrom?.[0].configMapRef?.name, configMap.metadata?.name);
    assert.equal(role.rules?.length, 2, 'one rule for the Service, one for the shard ConfigMaps');
    const [serviceRule, shardRule] = role.rules ?? [];
    for (const rule of [serviceRule, shardRule]) {
      assert.deepEqual(rule.apiGroups, ['']);
      assert.deepEqual([...rule.verbs].sort(), ['get', 'patch', 'watch']);
      assert.equal(rule.nonResourceURLs, undefined);
    }
    assert.deepEqual(serviceRule.resources, ['services']);
    assert.deepEqual(serviceRule.resourceNames, [config.serviceName]);
    assert.deepEqual(shardRule.resources, ['configmaps']);
    assert.deepEqual(shardRule.resourceNames, shardNamesOf(config));
    assert.ok(config.shards.clusters > 1 && config.shards.tickets > 0, 'the install has shards to grow into');
    // The shard ConfigMaps start empty: the claimer writes them, apply never does.
    const shards = built.filter((loaded) => loaded.object.kind === 'ConfigMap' && loaded.object.metadata.name !== configMap.metadata?.name);
    assert.deepEqual(shards.map((loaded) => loaded.object.metadata.name).sort(), [...shardNamesOf(config)].sort());
    for (const { object } of shards) {
      assert.equal((object as IConfigMap).data, undefined);
      assert.deepEqual(Object.keys(object.metadata.annotations ?? {}), []);
    }

    const sources = (await readdir(STORE_SOURCES)).filter((file) => file.endsWith('.ts'));
    const { permissions, problems } = permissionsUsedBy((await Promise.all(sources.map((file) => readFile(join(STORE_SOURCES, file), 'utf8')))).join('\n'));
    assert.deepEqual(problems, []);
    const granted = new Set(role.rules?.flatMap((rule) => rule.resources?.flatMap((resource) => rule.verbs.map((verb) => `${resource} ${verb}`)) ?? []));
    const missing = [...permissions].filter((permission) => !granted.has(permission));
    const unused = [...granted].filter((permission) => !permissions.has(permission));
    assert.deepEqual(missing, [], 'the code makes calls the Role does not allow: grant them in k8s/role.yaml');
    assert.deepEqual(unused, [], 'the Role allows more than the code uses: remove it from k8s/role.yaml');
  });

  test('the code scan maps client-node calls to RBAC verbs', () => {
    const sample = [
      'api.readNamespacedService({}); api.replaceNamespacedService({}); api.listNamespacedService({});',
      'api.createNamespacedService({}); api.deleteNamespacedService({}); api.patchNamespacedServiceStatus({});',
      'api.readNamespacedServiceAccount({}); new Watch(kc); w.watch(`/api/v1/namespaces/${ns}/services`, { labelSelector: "a=b" }, f, g);',
    ].join('\n');
    const { permissions, problems } = permissionsUsedBy(sample);
    assert.deepEqual(
      [...permissions].sort(),
      ['serviceaccounts get', 'services create', 'services delete', 'services get', 'services list', 'services update', 'services watch', 'services/status patch'],
    );
    assert.equal(problems.length, 1);
    assert.match(problems[0], /^a watch without a metadata.name field selector: .*labelSelector/);
  });

  test('the RoleBinding gives the Role to the ServiceAccount the pods run as', async () => {
    const { kustomization, built, pod } = await fixture();
    const binding = only<IRoleBinding & Manifest>(built, 'RoleBinding');
    const role = only(built, 'Role');
    const account = only(built, 'ServiceAccount');
    assert.deepEqual(binding.roleRef, { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: role.metadata.name });
    assert.deepEqual(binding.subjects, [{ kind: 'ServiceAccount', name: account.metadata.name, namespace: kustomization.namespace }]);
    assert.equal(pod.serviceAccountName, account.metadata.name);
    assert.notEqual(pod.automountServiceAccountToken, false, 'the in-cluster client needs the token');
  });

  test('the Deployment runs two locked-down replicas', async () => {
    const { deployment, pod, container, dockerfile } = await fixture();
    assert.equal(deployment.spec?.replicas, 2);
    assert.ok(selects(deployment.spec?.selector.matchLabels, deployment.spec?.template.metadata?.labels), 'the selector matches the pod template');
    assert.equal(deployment.spec?.selector.matchExpressions, undefined, 'matchLabels only (what this test checks)');

    const podSecurity = pod.securityContext ?? {};
    const containerSecurity = container.securityContext ?? {};
    assert.equal(podSecurity.runAsNonRoot, true);
    assert.equal(containerSecurity.runAsNonRoot ?? podSecurity.runAsNonRoot, true);
    const uid = containerSecurity.runAsUser ?? podSecurity.runAsUser;
    assert.ok(uid !== undefined && uid > 0, 'runs as a non-zero uid');
    assert.equal(containerSecurity.readOnlyRootFilesystem, true);
    assert.equal(containerSecurity.allowPrivilegeEscalation, false);
    assert.deepEqual(containerSecurity.capabilities?.drop, ['ALL']);
    assert.equal(containerSecurity.capabilities?.add, undefined);
    assert.equal(containerSecurity.privileged ?? false, false);
    assert.equal((containerSecurity.seccompProfile ?? podSecurity.seccompProfile)?.type, 'RuntimeDefault');
    assert.equal(pod.hostNetwork ?? false, false);

    // The image's user: the same uid, so that files and runAsNonRoot agree with the image.
    const user = /^USER\s+(\d+)/m.exec(dockerfile);
    assert.ok(user, 'the Dockerfile sets a numeric USER');
    assert.equal(Number(user[1]), uid);
  });

  test('the container has requests and limits, and a writable /tmp only', async () => {
    const { pod, container } = await fixture();
    const { requests, limits } = container.resources ?? {};
    for (const resource of ['cpu', 'memory']) {
      const request = quantity(requests?.[resource]);
      const limit = quantity(limits?.[resource]);
      assert.ok(request > 0 && request <= limit, `${resource}: request ${requests?.[resource]} within limit ${limits?.[resource]}`);
    }
    // GKE mode idles around 260 MB: a smaller request would let the node overcommit it.
    assert.ok(quantity(requests?.memory) >= 260 * 2 ** 20, 'memory request covers the idle GKE-mode footprint');

    assert.deepEqual(container.volumeMounts?.map((mount) => mount.mountPath), ['/tmp']);
    const volumeName = container.volumeMounts?.[0].name;
    const volume = pod.volumes?.find((candidate) => candidate.name === volumeName);
    assert.ok(volume?.emptyDir, '/tmp is an emptyDir');
  });

  test('the probes ask /healthz and /readyz on the port the server binds', async () => {
    const { container, dockerfile } = await fixture();
    const bindPort = Number(/^ENV\s.*\bBIND_PORT=(\d+)/m.exec(dockerfile)?.[1]);
    assert.equal(bindPort, 8080, 'the Dockerfile sets BIND_PORT');
    assert.match(dockerfile, new RegExp(`^EXPOSE\\s+${bindPort}\\b`, 'm'));
    assert.equal(container.ports?.length, 1);
    assert.equal(container.ports?.[0].containerPort, bindPort);

    assert.equal(container.livenessProbe?.httpGet?.path, '/healthz');
    assert.equal(containerPortNumber(container, container.livenessProbe?.httpGet?.port), bindPort);
    assert.equal(container.readinessProbe?.httpGet?.path, '/readyz');
    assert.equal(containerPortNumber(container, container.readinessProbe?.httpGet?.port), bindPort);
    if (container.startupProbe) assert.equal(container.startupProbe.httpGet?.path, '/healthz', 'startup waits for the socket, not for GKE');
  });

  test('the environment comes from the ConfigMap, the Secret and the pod\'s own name and namespace', async () => {
    const { container, configMap } = await fixture();
    assert.deepEqual(container.envFrom, [{ configMapRef: { name: configMap.metadata?.name } }]);
    const fromPod = (container.env ?? []).filter((variable) => variable.valueFrom?.fieldRef);
    assert.deepEqual(fromPod.map((variable) => [variable.name, variable.valueFrom?.fieldRef?.fieldPath]), [
      ['POD_NAME', 'metadata.name'],
      ['POD_NAMESPACE', 'metadata.namespace'],
    ]);
    const fromSecret = Object.fromEntries(
      (container.env ?? []).filter((variable) => !variable.valueFrom?.fieldRef).map((variable) => [variable.name, variable.valueFrom?.secretKeyRef]),
    );
    assert.deepEqual(Object.keys(fromSecret).sort(), ['AUTH_TOKEN', 'GOOGLE_CLOUD_ACCOUNT_FILE_BASE64']);
    for (const [name, reference] of Object.entries(fromSecret)) {
      assert.deepEqual(reference, { name: 'k8s-claimer', key: name }, `${name} comes from the Secret k8s-claimer`);
    }
    for (const variable of container.env ?? []) assert.equal(variable.value, undefined, `${variable.name} holds no literal value`);
  });

  test('the Secret example has what the Deployment reads, under the same name', async () => {
    const { kustomization, container } = await fixture();
    const [secret, ...rest] = await loadFile(SECRET_EXAMPLE);
    assert.equal(rest.length, 0);
    const example = secret as ISecret & Manifest;
    assert.equal(example.kind, 'Secret');
    assert.equal(example.metadata.namespace, kustomization.namespace);
    const keys = Object.keys({ ...example.data, ...example.stringData }).sort();
    const referenced = (container.env ?? []).flatMap((variable) => {
      const reference = variable.valueFrom?.secretKeyRef;
      return reference && reference.name === example.metadata.name ? [reference.key] : [];
    });
    assert.deepEqual(keys, referenced.sort());
    const text = await readFile(join(K8S_DIR, SECRET_EXAMPLE), 'utf8');
    assert.match(text, /kubectl -n k8s-claimer create secret generic k8s-claimer/, 'the example says how to create the real Secret');
  });

  test('shutdown, spreading and disruption: grace period, anti-affinity, PodDisruptionBudget', async () => {
    const { built, deployment, pod } = await fixture();
    assert.ok((pod.terminationGracePeriodSeconds ?? 30) >= 60, 'time for requests in flight, including waiters');
    const preferred = pod.affinity?.podAntiAffinity?.preferredDuringSchedulingIgnoredDuringExecution ?? [];
    assert.ok(
      preferred.some(
        (term) =>
          term.podAffinityTerm.topologyKey === 'kubernetes.io/hostname' &&
          selects(term.podAffinityTerm.labelSelector?.matchLabels, deployment.spec?.template.metadata?.labels),
      ),
      'the replicas prefer different nodes',
    );

    const budget = only<IPodDisruptionBudget & Manifest>(built, 'PodDisruptionBudget');
    assert.equal(budget.spec?.minAvailable, 1);
    assert.ok(selects(budget.spec?.selector?.matchLabels, deployment.spec?.template.metadata?.labels), 'the budget covers the pods');
    assert.ok((deployment.spec?.replicas ?? 1) > 1, 'a budget of 1 leaves room to evict one replica');
  });

  test('the Service exposes the pods on port 80 and holds no lease annotations of its own', async () => {
    const { deployment, container, service } = await fixture();
    assert.equal(service.metadata?.name, 'k8s-claimer');
    assert.equal(service.spec?.type, 'ClusterIP');
    assert.ok(selects(service.spec?.selector, deployment.spec?.template.metadata?.labels), 'the Service selects the pods');
    assert.equal(service.spec?.ports?.length, 1);
    const [port] = service.spec?.ports ?? [];
    assert.equal(port.port, 80);
    assert.equal(containerPortNumber(container, port.targetPort), 8080);
    // kubectl apply would remove such annotations again on the next apply, wiping lease records.
    const annotations = Object.keys(service.metadata?.annotations ?? {});
    assert.deepEqual(annotations.filter((key) => key.startsWith('lease.k8s-claimer.io/')), []);
  });

  test('the Deployment names its image for the kustomization\'s `images:` entry', async () => {
    const { kustomization, container } = await fixture();
    const [raw] = await loadFile('deployment.yaml');
    const rawImage = (raw as IDeployment & Manifest).spec?.template.spec?.containers[0].image ?? '';
    // `kustomize edit set image k8s-claimer=REGISTRY/k8s-claimer:TAG` rewrites the entry of that name.
    assert.equal(imageName(rawImage), 'k8s-claimer');
    assert.equal(kustomization.images.length, 1, 'one images entry');
    const [entry] = kustomization.images;
    assert.equal(entry.name, imageName(rawImage), 'the entry matches the container\'s image');
    assert.ok(entry.newTag, 'the entry sets the tag');
    assert.equal(entry.newName, undefined, 'a newName would rename the image: an overlay\'s `images: - name: k8s-claimer` would no longer match');
    assert.equal(container.image, `${entry.name}:${entry.newTag}`);
  });

  test('the server\'s namespace: NAMESPACE, else the pod\'s own (POD_NAMESPACE), else k8s-claimer', () => {
    const cases: [string, Record<string, string>, string][] = [
      ['neither', {}, 'k8s-claimer'],
      ['the pod\'s', { POD_NAMESPACE: 'ci-tools' }, 'ci-tools'],
      ['NAMESPACE wins', { NAMESPACE: 'leases', POD_NAMESPACE: 'ci-tools' }, 'leases'],
      ['an empty NAMESPACE is unset', { NAMESPACE: '', POD_NAMESPACE: 'ci-tools' }, 'ci-tools'],
    ];
    for (const [name, env, namespace] of cases) {
      assert.equal(loadConfig(env, { staticPoolFile: 'pool/example.yaml' }).namespace, namespace, name);
    }
    assert.throws(() => loadConfig({ POD_NAMESPACE: 'Not_A_Namespace' }, { staticPoolFile: 'pool/example.yaml' }), /POD_NAMESPACE must be a Kubernetes namespace name/);
  });
});

describe('k8s/ built by the real kustomize', { skip: HAS_KUBECTL ? false : WITHOUT_KUBECTL }, () => {
  const OVERLAY_NAMESPACE = 'ci-tools';
  const OVERLAY_IMAGE = { name: 'k8s-claimer', newName: 'registry.internal.example/platform/k8s-claimer', newTag: '2026.1.3' };

  test('`kubectl kustomize k8s/` builds what this test\'s builder makes', async () => {
    const { built } = await fixture();
    const key = (object: Manifest) => `${object.kind}/${object.metadata.namespace ?? ''}/${object.metadata.name}`;
    const real = await kustomize(K8S_DIR);
    assert.deepEqual(real.map(key).sort(), built.map(({ object }) => key(object)).sort());
    for (const object of real) {
      const ours = built.find((loaded) => key(loaded.object) === key(object));
      assert.deepEqual(object, ours?.object, `${key(object)} differs between kustomize and this test's builder`);
    }
  });

  test('an overlay with another namespace and image moves everything, and the claimer finds its lease Service where its Role allows', async () => {
    const overlay = await tempDir();
    try {
      await writeFile(
        join(overlay, 'kustomization.yaml'),
        [
          'apiVersion: kustomize.config.k8s.io/v1beta1',
          'kind: Kustomization',
          `namespace: ${OVERLAY_NAMESPACE}`,
          `resources: [${JSON.stringify(relative(overlay, K8S_DIR))}]`,
          'images:',
          `  - {name: ${OVERLAY_IMAGE.name}, newName: ${OVERLAY_IMAGE.newName}, newTag: "${OVERLAY_IMAGE.newTag}"}`,
          '',
        ].join('\n'),
      );
      const { objects, config, container } = await checkDeployable('the overlay', await kustomize(overlay));
      assert.equal(config.namespace, OVERLAY_NAMESPACE);
      assert.equal(builtKind(objects, 'Namespace').metadata.name, OVERLAY_NAMESPACE, 'the Namespace object is the new one');
      assert.equal(container.image, `${OVERLAY_IMAGE.newName}:${OVERLAY_IMAGE.newTag}`);
    } finally {
      await rm(overlay, { recursive: true, force: true });
    }
  });

  test('the overlays k8s/README.md shows build and deploy, the file store one with a persistent volume where the store writes', async () => {
    const folder = await tempDir();
    try {
      // Beside a copy of k8s/, as `resources: [../k8s]` in the user's repository expects.
      await cp(K8S_DIR, join(folder, 'k8s'), { recursive: true });
      const readme = await readFile(join(K8S_DIR, 'README.md'), 'utf8');
      const overlays = new Set<string>();
      for (const [, overlay, file, text] of readme.matchAll(/```yaml\n# ([\w-]+)\/([\w.-]+\.yaml)\n([\s\S]*?)```/g)) {
        await mkdir(join(folder, overlay), { recursive: true });
        await writeFile(join(folder, overlay, file), text);
        if (file === KUSTOMIZATION) overlays.add(overlay);
      }
      assert.deepEqual([...overlays].sort(), ['file-store', 'overlay', 'pools'], 'the overlays k8s/README.md shows');

      const workdir = /^WORKDIR\s+(\S+)/m.exec(await readFile(join(ROOT, 'Dockerfile'), 'utf8'))?.[1];
      assert.ok(workdir, 'the Dockerfile sets WORKDIR');
      for (const overlay of overlays) {
        const { objects, config, container } = await checkDeployable(overlay, await kustomize(join(folder, overlay)));
        assert.equal(imageName(container.image ?? ''), 'registry.example.com/team/k8s-claimer', `${overlay}: the image is set`);
        if (config.poolsFile) {
          // The pools file is in a Secret mounted where POOLS_FILE points, with the files it names.
          const mount = container.volumeMounts?.find((candidate) => config.poolsFile?.startsWith(`${candidate.mountPath}/`));
          assert.ok(mount?.readOnly, `${overlay}: the pools file is mounted read-only`);
          const secretName = builtKind<IDeployment & Manifest>(objects, 'Deployment').spec?.template.spec?.volumes?.find((volume) => volume.name === mount.name)?.secret?.secretName;
          const secret = objects.find((object) => object.kind === 'Secret' && object.metadata.name === secretName) as (Manifest & { data?: Record<string, string> }) | undefined;
          assert.ok(secret, `${overlay}: the Secret the volume names is in the build`);
          const files = Object.fromEntries(Object.entries(secret.data ?? {}).map(([key, value]) => [key, Buffer.from(value, 'base64').toString('utf8')]));
          const pools = join(folder, `${overlay}-mounted`);
          await mkdir(pools, { recursive: true });
          for (const [key, text] of Object.entries(files)) await writeFile(join(pools, key), text);
          const { readPoolsFile } = await import('../services/providers/pools.ts');
          const read = await readPoolsFile(join(pools, config.poolsFile.slice(mount.mountPath.length + 1)));
          for (const pool of read.pools) {
            if (pool.provider === 'static' || pool.provider === 'kubeconfig') assert.ok(relative(pools, pool.file) in files, `${overlay}: ${pool.name}'s file is in the Secret`);
          }
        }
        if (config.leaseStore !== 'file') continue;
        const deployment = builtKind<IDeployment & Manifest>(objects, 'Deployment');
        const pod = deployment.spec?.template.spec;
        assert.equal(deployment.spec?.replicas, 1, `${overlay}: the file store serves one replica`);
        assert.equal(deployment.spec?.strategy?.type, 'Recreate', `${overlay}: never two pods on the store at once`);
        assert.ok(!objects.some((object) => object.kind === 'PodDisruptionBudget'), `${overlay}: no budget that blocks drains`);
        const storeFolder = dirname(resolve(workdir, config.leaseStoreFile));
        const mount = container.volumeMounts?.find((candidate) => candidate.mountPath === storeFolder);
        assert.ok(mount && !mount.readOnly, `${overlay}: a writable volume at ${storeFolder}`);
        const claimName = pod?.volumes?.find((volume) => volume.name === mount.name)?.persistentVolumeClaim?.claimName;
        assert.ok(claimName, `${overlay}: the volume is a PersistentVolumeClaim`);
        assert.equal(builtKind(objects, 'PersistentVolumeClaim').metadata.name, claimName);
        assert.equal(pod?.securityContext?.fsGroup, pod?.securityContext?.runAsUser, `${overlay}: the volume is writable by the claimer's user`);
      }
    } finally {
      await rm(folder, { recursive: true, force: true });
    }
  });
});
