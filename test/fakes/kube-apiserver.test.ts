/**
 * Self-test of the fake apiserver, driven through the real @kubernetes/client-node
 * over HTTP so that the wire format (paths, content types, Status bodies) is what the
 * library actually sends and parses.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import {
  ApiException,
  CoreV1Api,
  KubeConfig,
  PatchStrategy,
  RbacAuthorizationV1Api,
  Watch,
  setHeaderOptions,
  type V1Service,
} from '@kubernetes/client-node';
import {
  applyJsonPatch,
  matchRequest,
  mergePatch,
  startFakeKubeApiserver,
  type FakeKubeApiserverOptions,
  type KubeObject,
  type KubeStatus,
} from './kube-apiserver.ts';
import { TEST_TLS_CERT, TEST_TLS_KEY } from './tls-fixture.ts';

const NS = 'default';

async function setup(t: TestContext, options: FakeKubeApiserverOptions = {}, token = 't') {
  const fake = await startFakeKubeApiserver(options);
  t.after(() => fake.close());
  const kc = new KubeConfig();
  kc.loadFromOptions(fake.kubeConfigOptions(token));
  return { fake, kc, core: kc.makeApiClient(CoreV1Api), rbac: kc.makeApiClient(RbacAuthorizationV1Api) };
}

/** Awaits a rejected client call and returns the parsed Status body. */
async function apiError(call: Promise<unknown>, expectedCode: number): Promise<KubeStatus> {
  try {
    await call;
  } catch (err) {
    assert.ok(err instanceof ApiException, `expected ApiException, got ${String(err)}`);
    assert.equal(err.code, expectedCode, `unexpected status, body: ${String(err.body)}`);
    return (typeof err.body === 'string' && err.body ? JSON.parse(err.body) : {}) as KubeStatus;
  }
  assert.fail(`expected HTTP ${expectedCode}, but the call succeeded`);
}

function service(name: string, extra: Partial<V1Service> = {}): V1Service {
  return { metadata: { name, labels: { app: name } }, spec: { ports: [{ port: 80 }] }, ...extra };
}

const mergePatchOptions = () => setHeaderOptions('Content-Type', PatchStrategy.MergePatch);
const jsonPatchOptions = () => setHeaderOptions('Content-Type', PatchStrategy.JsonPatch);

async function waitFor(condition: () => boolean, what: string, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

test('service create/read/replace with optimistic concurrency', async (t) => {
  const { fake, core } = await setup(t);

  const created = await core.createNamespacedService({ namespace: NS, body: service('web') });
  assert.ok(created.metadata?.uid);
  assert.ok(created.metadata?.creationTimestamp instanceof Date);
  assert.match(created.spec?.clusterIP ?? '', /^10\.96\./);
  const rv1 = created.metadata?.resourceVersion ?? '';

  const dup = await apiError(core.createNamespacedService({ namespace: NS, body: service('web') }), 409);
  assert.equal(dup.reason, 'AlreadyExists');
  assert.equal(dup.message, 'services "web" already exists');

  const read = await core.readNamespacedService({ name: 'web', namespace: NS });
  assert.equal(read.metadata?.resourceVersion, rv1);

  // Replace with the current version succeeds and bumps the version.
  read.metadata = { ...read.metadata, labels: { app: 'web', tier: 'front' } };
  const replaced = await core.replaceNamespacedService({ name: 'web', namespace: NS, body: read });
  const rv2 = replaced.metadata?.resourceVersion ?? '';
  assert.ok(Number(rv2) > Number(rv1));
  assert.equal(replaced.metadata?.uid, created.metadata?.uid);
  assert.equal(replaced.spec?.clusterIP, created.spec?.clusterIP);

  // Replacing again from the stale copy (rv1) conflicts.
  const stale = { ...read, metadata: { ...read.metadata, resourceVersion: rv1 } };
  const conflict = await apiError(core.replaceNamespacedService({ name: 'web', namespace: NS, body: stale }), 409);
  assert.deepEqual(conflict, {
    kind: 'Status',
    apiVersion: 'v1',
    metadata: {},
    status: 'Failure',
    message: 'Operation cannot be fulfilled on services "web": the object has been modified; please apply your changes to the latest version and try again',
    reason: 'Conflict',
    details: { name: 'web', kind: 'services' },
    code: 409,
  });

  // A no-op replace doesn't produce a new resourceVersion (real apiserver behaviour).
  const noop = await core.replaceNamespacedService({ name: 'web', namespace: NS, body: replaced });
  assert.equal(noop.metadata?.resourceVersion, rv2);

  const list = await core.listNamespacedService({ namespace: NS });
  assert.equal(list.items.length, 1);
  assert.equal(list.metadata?.resourceVersion, fake.resourceVersion);

  await core.deleteNamespacedService({ name: 'web', namespace: NS });
  const missing = await apiError(core.readNamespacedService({ name: 'web', namespace: NS }), 404);
  assert.deepEqual(missing, {
    kind: 'Status',
    apiVersion: 'v1',
    metadata: {},
    status: 'Failure',
    message: 'services "web" not found',
    reason: 'NotFound',
    details: { name: 'web', kind: 'services' },
    code: 404,
  });
});

test('merge patch: null deletes, resourceVersion acts as a precondition', async (t) => {
  const { fake, core } = await setup(t);
  const created = await core.createNamespacedService({
    namespace: NS,
    body: service('web', { metadata: { name: 'web', annotations: { keep: '1', drop: '2' } } }),
  });
  const rv = created.metadata?.resourceVersion ?? '';

  const patched = await core.patchNamespacedService(
    { name: 'web', namespace: NS, body: { metadata: { resourceVersion: rv, annotations: { drop: null, added: 'x' } } } },
    mergePatchOptions(),
  );
  assert.deepEqual(patched.metadata?.annotations, { keep: '1', added: 'x' });
  assert.equal(fake.requests.at(-1)?.contentType, 'application/merge-patch+json');

  // Same precondition again: the object moved on, so this must conflict and change nothing.
  const conflict = await apiError(
    core.patchNamespacedService({ name: 'web', namespace: NS, body: { metadata: { resourceVersion: rv, annotations: { late: 'y' } } } }, mergePatchOptions()),
    409,
  );
  assert.equal(conflict.reason, 'Conflict');
  assert.equal(fake.getObject('services', NS, 'web')?.metadata.annotations?.late, undefined);

  // Without a resourceVersion the patch is unconditional. Strategic merge is accepted too.
  const unconditional = await core.patchNamespacedService(
    { name: 'web', namespace: NS, body: { metadata: { labels: { smp: 'yes' } } } },
    setHeaderOptions('Content-Type', PatchStrategy.StrategicMergePatch),
  );
  assert.equal(unconditional.metadata?.labels?.smp, 'yes');
});

test('json patch: add/replace/remove, failed test op is 422', async (t) => {
  const { core } = await setup(t);
  const created = await core.createNamespacedService({ namespace: NS, body: service('web') });
  const rv = created.metadata?.resourceVersion ?? '';

  const patched = await core.patchNamespacedService(
    {
      name: 'web',
      namespace: NS,
      body: [
        { op: 'test', path: '/metadata/resourceVersion', value: rv },
        { op: 'add', path: '/metadata/annotations', value: { 'a/b': '1' } },
        { op: 'replace', path: '/spec/ports/0/port', value: 8080 },
        { op: 'remove', path: '/metadata/labels/app' },
      ],
    },
    jsonPatchOptions(),
  );
  assert.deepEqual(patched.metadata?.annotations, { 'a/b': '1' });
  assert.equal(patched.spec?.ports?.[0]?.port, 8080);
  assert.deepEqual(patched.metadata?.labels ?? {}, {});

  const invalid = await apiError(
    core.patchNamespacedService(
      { name: 'web', namespace: NS, body: [{ op: 'test', path: '/metadata/resourceVersion', value: rv }, { op: 'remove', path: '/spec' }] },
      jsonPatchOptions(),
    ),
    422,
  );
  assert.equal(invalid.reason, 'Invalid');
  assert.equal(invalid.message, 'the server rejected our request due to an error in our request');

  // Removing a key that doesn't exist doesn't apply either.
  await apiError(core.patchNamespacedService({ name: 'web', namespace: NS, body: [{ op: 'remove', path: '/metadata/nope' }] }, jsonPatchOptions()), 422);
});

test('annotation size limit is enforced on create and patch', async (t) => {
  const { fake, core } = await setup(t);
  const tooBig = { big: 'x'.repeat(262144) }; // key adds 3 bytes → over the limit
  const onCreate = await apiError(
    core.createNamespacedService({ namespace: NS, body: service('web', { metadata: { name: 'web', annotations: tooBig } }) }),
    422,
  );
  assert.equal(onCreate.reason, 'Invalid');
  assert.equal(onCreate.message, 'Service "web" is invalid: metadata.annotations: Too long: must have at most 262144 bytes');
  assert.equal(onCreate.details?.causes?.[0]?.field, 'metadata.annotations');

  // Exactly at the limit is fine.
  await core.createNamespacedService({ namespace: NS, body: service('web', { metadata: { name: 'web', annotations: { big: 'x'.repeat(262144 - 3) } } }) });
  const onPatch = await apiError(
    core.patchNamespacedService({ name: 'web', namespace: NS, body: { metadata: { annotations: { more: 'y' } } } }, mergePatchOptions()),
    422,
  );
  assert.match(onPatch.message ?? '', /metadata\.annotations: Too long: must have at most 262144 bytes/);
  assert.equal(fake.getObject('services', NS, 'web')?.metadata.annotations?.more, undefined);
});

test('name validation mirrors the apiserver', async (t) => {
  const { core } = await setup(t);
  const status = await apiError(core.createNamespacedService({ namespace: NS, body: service('Web_1') }), 422);
  assert.match(status.message ?? '', /^Service "Web_1" is invalid: metadata\.name: Invalid value: "Web_1": a DNS-1035 label/);
});

test('fault injection: failNext, resetNext, latency, request log', async (t) => {
  const { fake, core } = await setup(t);
  await core.createNamespacedService({ namespace: NS, body: service('web') });
  fake.resetCounts();

  const handle = fake.failNext(2, 500, { match: matchRequest({ method: 'PATCH', resource: 'services' }) });
  for (let i = 0; i < 2; i++) {
    const status = await apiError(
      core.patchNamespacedService({ name: 'web', namespace: NS, body: { metadata: { labels: { x: String(i) } } } }, mergePatchOptions()),
      500,
    );
    assert.equal(status.reason, 'InternalError');
  }
  assert.equal(handle.remaining, 0);
  assert.equal(fake.getObject('services', NS, 'web')?.metadata.labels?.x, undefined, 'failed requests must not be applied');
  // Reads were not matched and the third patch goes through.
  await core.readNamespacedService({ name: 'web', namespace: NS });
  await core.patchNamespacedService({ name: 'web', namespace: NS, body: { metadata: { labels: { x: 'ok' } } } }, mergePatchOptions());
  assert.equal(fake.getObject('services', NS, 'web')?.metadata.labels?.x, 'ok');
  assert.equal(fake.writeCount, 3);
  assert.equal(fake.countRequests({ method: 'GET' }), 1);
  assert.deepEqual(fake.requests.map((r) => r.status), [500, 500, 200, 200]);

  fake.failNext(1, 429, { retryAfterSeconds: 2 });
  const throttled = await apiError(core.readNamespacedService({ name: 'web', namespace: NS }), 429);
  assert.equal(throttled.details?.retryAfterSeconds, 2);

  fake.resetNext(1);
  await assert.rejects(core.readNamespacedService({ name: 'web', namespace: NS }), (err: Error) => !(err instanceof ApiException));

  fake.setLatency(50);
  const started = Date.now();
  await core.readNamespacedService({ name: 'web', namespace: NS });
  assert.ok(Date.now() - started >= 45);
});

test('hang holds requests until released', async (t) => {
  const { fake, core } = await setup(t);
  await core.createNamespacedService({ namespace: NS, body: service('web') });
  const hang = fake.hang(matchRequest({ method: 'GET', name: 'web' }));
  let settled = false;
  const pending = core.readNamespacedService({ name: 'web', namespace: NS }).finally(() => {
    settled = true;
  });
  await waitFor(() => hang.held === 1, 'request to be held');
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(settled, false);
  hang.release();
  assert.equal((await pending).metadata?.name, 'web');
});

test('close() drops hung requests and ends open watches promptly', async (t) => {
  const { fake, kc, core } = await setup(t);
  let watchEnded = false;
  await new Watch(kc).watch('/api/v1/services', {}, () => undefined, () => {
    watchEnded = true;
  });
  fake.hang();
  const hung = core.listServiceForAllNamespaces({});
  await waitFor(() => fake.requests.length === 2, 'hung request to arrive');
  const started = Date.now();
  await fake.close();
  assert.ok(Date.now() - started < 500);
  await assert.rejects(hung);
  await waitFor(() => watchEnded, 'watch to end');
});

test('generateName, pagination and dryRun', async (t) => {
  const { fake, core } = await setup(t);
  for (let i = 0; i < 3; i++) await core.createNamespacedService({ namespace: NS, body: { metadata: { generateName: 'svc-' } } });
  const page1 = await core.listNamespacedService({ namespace: NS, limit: 2 });
  assert.equal(page1.items.length, 2);
  assert.equal(page1.metadata?.remainingItemCount, 1);
  const page2 = await core.listNamespacedService({ namespace: NS, limit: 2, _continue: page1.metadata?._continue });
  assert.equal(page2.items.length, 1);
  assert.equal(page2.metadata?._continue, undefined);
  const names = [...page1.items, ...page2.items].map((i) => i.metadata?.name ?? '');
  assert.ok(names.every((n) => /^svc-[a-z0-9]{5}$/.test(n)));
  assert.equal(new Set(names).size, 3);

  await core.createNamespacedService({ namespace: NS, body: service('dry'), dryRun: 'All' });
  assert.equal(fake.getObject('services', NS, 'dry'), undefined);
});

test('conflictNextWrite simulates a concurrent writer', async (t) => {
  const { fake, core } = await setup(t);
  const created = await core.createNamespacedService({ namespace: NS, body: service('web') });
  fake.conflictNextWrite({ mutate: (obj) => void (obj.metadata.labels = { ...obj.metadata.labels, other: 'writer' }) });

  const status = await apiError(
    core.patchNamespacedService({ name: 'web', namespace: NS, body: { metadata: { labels: { mine: '1' } } } }, mergePatchOptions()),
    409,
  );
  assert.equal(status.reason, 'Conflict');
  const stored = fake.getObject('service', NS, 'web');
  assert.notEqual(stored?.metadata.resourceVersion, created.metadata?.resourceVersion);
  assert.equal(stored?.metadata.labels?.other, 'writer');
  assert.equal(stored?.metadata.labels?.mine, undefined);

  // The retry (re-read, re-apply) succeeds.
  const fresh = await core.readNamespacedService({ name: 'web', namespace: NS });
  fresh.metadata = { ...fresh.metadata, labels: { ...fresh.metadata?.labels, mine: '1' } };
  const replaced = await core.replaceNamespacedService({ name: 'web', namespace: NS, body: fresh });
  assert.deepEqual(replaced.metadata?.labels, { app: 'web', other: 'writer', mine: '1' });
});

test('TokenRequest issues tokens that die with their ServiceAccount; bearer auth', async (t) => {
  const { fake, core } = await setup(t, { requireToken: (token, self) => token === 'admin' || self.isTokenValid(token) }, 'admin');
  await core.createNamespace({ body: { metadata: { name: 'ci' } } });
  await core.createNamespacedServiceAccount({ namespace: 'ci', body: { metadata: { name: 'runner' } } });

  const missing = await apiError(core.createNamespacedServiceAccountToken({ name: 'nobody', namespace: 'ci', body: { spec: { audiences: [] } } }), 404);
  assert.equal(missing.message, 'serviceaccounts "nobody" not found');

  const tr = await core.createNamespacedServiceAccountToken({
    name: 'runner',
    namespace: 'ci',
    body: { spec: { audiences: ['claimer'], expirationSeconds: 900 } },
  });
  const token = tr.status?.token ?? '';
  assert.ok(token.length > 20);
  assert.ok(tr.status?.expirationTimestamp instanceof Date);
  assert.ok(Math.abs(tr.status.expirationTimestamp.getTime() - Date.now() - 900_000) < 5000);
  assert.equal(fake.tokens.length, 1);
  assert.deepEqual(fake.findToken(token)?.audiences, ['claimer']);

  // The token works against the fake itself.
  const asRunner = new KubeConfig();
  asRunner.loadFromOptions(fake.kubeConfigOptions(token));
  const runnerCore = asRunner.makeApiClient(CoreV1Api);
  await runnerCore.listNamespacedService({ namespace: 'ci' });
  await apiError(core.createNamespacedServiceAccountToken({ name: 'runner', namespace: 'ci', body: { spec: { audiences: [], expirationSeconds: 60 } } }), 422);

  await core.deleteNamespacedServiceAccount({ name: 'runner', namespace: 'ci' });
  assert.equal(fake.isTokenValid(token), false);
  await apiError(runnerCore.listNamespacedService({ namespace: 'ci' }), 401);

  // Re-creating an SA with the same name doesn't resurrect old tokens (different uid).
  await core.createNamespacedServiceAccount({ namespace: 'ci', body: { metadata: { name: 'runner' } } });
  assert.equal(fake.isTokenValid(token), false);
});

test('maxTokenExpirationSeconds caps the life a TokenRequest is granted; the 600 s minimum still applies to what is asked', async (t) => {
  const { fake, core } = await setup(t, { maxTokenExpirationSeconds: 1, requireToken: (token, self) => token === 'admin' || self.isTokenValid(token) }, 'admin');
  await core.createNamespace({ body: { metadata: { name: 'ci' } } });
  await core.createNamespacedServiceAccount({ namespace: 'ci', body: { metadata: { name: 'runner' } } });
  await apiError(core.createNamespacedServiceAccountToken({ name: 'runner', namespace: 'ci', body: { spec: { audiences: [], expirationSeconds: 60 } } }), 422);

  const tr = await core.createNamespacedServiceAccountToken({ name: 'runner', namespace: 'ci', body: { spec: { audiences: [], expirationSeconds: 3600 } } });
  assert.equal(tr.spec?.expirationSeconds, 1);
  const token = tr.status?.token ?? '';
  const issued = fake.findToken(token);
  assert.equal((issued?.expirationTimestamp.getTime() ?? 0) - (issued?.issuedAt.getTime() ?? 0), 1000);
  // The status reports the expiry to the second, never later than the token really dies.
  assert.ok((tr.status?.expirationTimestamp?.getTime() ?? Infinity) <= (issued?.expirationTimestamp.getTime() ?? 0));
  assert.equal(fake.isTokenValid(token), true);
  await new Promise((resolve) => setTimeout(resolve, (issued?.expirationTimestamp.getTime() ?? 0) - Date.now() + 50));
  assert.equal(fake.isTokenValid(token), false);
});

test('namespace deletion with delay: Terminating, then gone with its contents', async (t) => {
  const { fake, core } = await setup(t, { namespaceDeletionDelayMs: 150 });
  const ns = await core.createNamespace({ body: { metadata: { name: 'lease-1' } } });
  assert.equal(ns.status?.phase, 'Active');
  await core.createNamespacedService({ namespace: 'lease-1', body: service('web') });

  const deleted = await core.deleteNamespace({ name: 'lease-1' });
  assert.equal((deleted as { status?: { phase?: string } }).status?.phase, 'Terminating');
  const terminating = await core.readNamespace({ name: 'lease-1' });
  assert.equal(terminating.status?.phase, 'Terminating');
  assert.ok(terminating.metadata?.deletionTimestamp);

  const forbidden = await apiError(core.createNamespacedService({ namespace: 'lease-1', body: service('late') }), 403);
  assert.equal(forbidden.message, 'services "late" is forbidden: unable to create new content in namespace lease-1 because it is being terminated');
  // Re-creating the namespace while it terminates is a conflict, as on a real cluster.
  await apiError(core.createNamespace({ body: { metadata: { name: 'lease-1' } } }), 409);

  await waitFor(() => fake.getObject('namespaces', undefined, 'lease-1') === undefined, 'namespace removal');
  await apiError(core.readNamespace({ name: 'lease-1' }), 404);
  assert.equal(fake.getObject('services', 'lease-1', 'web'), undefined);
  await core.createNamespace({ body: { metadata: { name: 'lease-1' } } });
});

test('namespace finalizers: a finalizer nobody removes keeps the namespace Terminating; removing it ends the deletion', async (t) => {
  const { fake, core } = await setup(t);
  await core.createNamespace({ body: { metadata: { name: 'stuck', finalizers: ['example.com/cleanup'] } } });
  await core.createNamespacedService({ namespace: 'stuck', body: service('web') });
  await core.createNamespace({ body: { metadata: { name: 'custom' }, spec: { finalizers: ['example.com/spec'] } } });
  assert.deepEqual((await core.readNamespace({ name: 'custom' })).spec?.finalizers, ['example.com/spec', 'kubernetes']);

  await core.deleteNamespace({ name: 'stuck' });
  await core.deleteNamespace({ name: 'custom' });
  const stuck = await core.readNamespace({ name: 'stuck' });
  // The namespace controller did its part (contents gone, its own finalizer removed) and waits.
  assert.equal(stuck.status?.phase, 'Terminating');
  assert.deepEqual(stuck.spec?.finalizers, []);
  assert.deepEqual(stuck.metadata?.finalizers, ['example.com/cleanup']);
  assert.equal(stuck.status?.conditions?.[0]?.type, 'NamespaceFinalizersRemaining');
  assert.equal(fake.getObject('services', 'stuck', 'web'), undefined);
  assert.deepEqual((await core.readNamespace({ name: 'custom' })).spec?.finalizers, ['example.com/spec']);

  await core.patchNamespace({ name: 'stuck', body: { metadata: { finalizers: null } } }, mergePatchOptions());
  await apiError(core.readNamespace({ name: 'stuck' }), 404);
  assert.ok(fake.getObject('namespaces', undefined, 'custom'), 'a spec finalizer is removed only through /finalize');
});

test('the ServiceAccount controller (opt-in): every namespace has a default account, made again with a new uid when deleted', async (t) => {
  const { fake, core } = await setup(t, { serviceAccountController: true });
  await core.createNamespace({ body: { metadata: { name: 'ci' } } });
  const first = await core.readNamespacedServiceAccount({ namespace: 'ci', name: 'default' });
  const token = fake.issueToken('ci', 'default').token;
  assert.equal(fake.isTokenValid(token), true);
  await core.deleteNamespacedServiceAccount({ namespace: 'ci', name: 'default' });
  const second = await core.readNamespacedServiceAccount({ namespace: 'ci', name: 'default' });
  assert.notEqual(second.metadata?.uid, first.metadata?.uid);
  assert.equal(fake.isTokenValid(token), false, 'a token of the old account dies with it');
  await core.deleteNamespace({ name: 'ci' });
  assert.equal(fake.getObject('serviceaccounts', 'ci', 'default'), undefined, 'nothing is made again in a namespace that goes');
});

test('cluster-scoped RBAC kinds and label selectors', async (t) => {
  const { rbac, core } = await setup(t);
  const binding = (name: string, lease: string) => ({
    metadata: { name, labels: { lease } },
    roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'cluster-admin' },
    subjects: [{ kind: 'ServiceAccount', name: 'runner', namespace: 'ci' }],
  });
  await rbac.createClusterRoleBinding({ body: binding('a', 'one') });
  await rbac.createClusterRoleBinding({ body: binding('b', 'two') });
  const selected = await rbac.listClusterRoleBinding({ labelSelector: 'lease=two' });
  assert.deepEqual(selected.items.map((i) => i.metadata?.name), ['b']);
  const setBased = await rbac.listClusterRoleBinding({ labelSelector: 'lease in (one,two),lease!=one' });
  assert.deepEqual(setBased.items.map((i) => i.metadata?.name), ['b']);

  await rbac.deleteClusterRoleBinding({ name: 'a' });
  const missing = await apiError(rbac.readClusterRoleBinding({ name: 'a' }), 404);
  assert.equal(missing.message, 'clusterrolebindings.rbac.authorization.k8s.io "a" not found');
  assert.deepEqual(missing.details, { name: 'a', group: 'rbac.authorization.k8s.io', kind: 'clusterrolebindings' });

  await core.createNamespacedService({ namespace: 'x', body: service('s1') });
  await core.createNamespacedService({ namespace: 'y', body: service('s2') });
  const all = await core.listServiceForAllNamespaces({});
  assert.deepEqual(all.items.map((i) => `${i.metadata?.namespace}/${i.metadata?.name}`), ['x/s1', 'y/s2']);
});

test('direct state helpers', async (t) => {
  const { fake, core } = await setup(t);
  const seeded = fake.putObject('Service', { metadata: { name: 'seeded', namespace: NS }, spec: { clusterIP: 'None' } });
  assert.ok(seeded.metadata.uid);
  const read = await core.readNamespacedService({ name: 'seeded', namespace: NS });
  assert.equal(read.metadata?.resourceVersion, seeded.metadata.resourceVersion);
  const again = fake.putObject('services', { ...seeded, spec: { clusterIP: '10.0.0.1' } });
  assert.ok(Number(again.metadata.resourceVersion) > Number(seeded.metadata.resourceVersion));
  assert.equal(fake.deleteObject('services', NS, 'seeded'), true);
  assert.equal(fake.deleteObject('services', NS, 'seeded'), false);
  await apiError(core.readNamespacedService({ name: 'seeded', namespace: NS }), 404);
});

test('watch streams ADDED/MODIFIED/DELETED and resumes from a resourceVersion', async (t) => {
  const { fake, kc, core } = await setup(t);
  const created = await core.createNamespacedService({ namespace: NS, body: service('web') });
  await core.createNamespacedService({ namespace: NS, body: service('other') });

  const events: { type: string; name?: string; rv?: string }[] = [];
  const controller = await new Watch(kc).watch(
    `/api/v1/namespaces/${NS}/services`,
    { fieldSelector: 'metadata.name=web', resourceVersion: created.metadata?.resourceVersion },
    (type, obj: KubeObject) => events.push({ type, name: obj.metadata.name, rv: obj.metadata.resourceVersion }),
    () => undefined,
  );
  t.after(() => controller.abort());
  await waitFor(() => fake.activeWatchCount === 1, 'watch registration');

  await core.patchNamespacedService({ name: 'web', namespace: NS, body: { metadata: { labels: { v: '2' } } } }, mergePatchOptions());
  await core.patchNamespacedService({ name: 'other', namespace: NS, body: { metadata: { labels: { v: '2' } } } }, mergePatchOptions());
  await core.deleteNamespacedService({ name: 'web', namespace: NS });
  await waitFor(() => events.length === 2, 'two events');
  assert.deepEqual(events.map((e) => `${e.type}:${e.name}`), ['MODIFIED:web', 'DELETED:web']);
  assert.equal(events[1].rv, fake.resourceVersion);

  // Without a resourceVersion, a watch starts with the current state as ADDED events.
  const initial: string[] = [];
  const c2 = await new Watch(kc).watch(`/api/v1/namespaces/${NS}/services`, {}, (type, obj: KubeObject) => initial.push(`${type}:${obj.metadata.name}`), () => undefined);
  t.after(() => c2.abort());
  await waitFor(() => initial.length === 1, 'initial ADDED');
  assert.deepEqual(initial, ['ADDED:other']);

  // After compaction, resuming from an old version yields 410 Expired.
  fake.compactWatchHistory();
  const errors: { type: string; code?: number }[] = [];
  let done = false;
  await new Watch(kc).watch(
    `/api/v1/namespaces/${NS}/services`,
    { resourceVersion: created.metadata?.resourceVersion },
    (type, obj: KubeStatus) => errors.push({ type, code: obj.code }),
    () => {
      done = true;
    },
  );
  await waitFor(() => done, 'expired watch to end');
  assert.deepEqual(errors, [{ type: 'ERROR', code: 410 }]);
});

test('serves HTTPS with a provided certificate; /version and /healthz', async (t) => {
  const { fake, core } = await setup(t, { tls: { cert: TEST_TLS_CERT, key: TEST_TLS_KEY } });
  assert.match(fake.url, /^https:\/\/127\.0\.0\.1:\d+$/);
  await core.createNamespacedService({ namespace: NS, body: service('web') });
  assert.equal((await core.readNamespacedService({ name: 'web', namespace: NS })).metadata?.name, 'web');

  const plain = await startFakeKubeApiserver({ gitVersion: 'v1.29.3' });
  t.after(() => plain.close());
  const version = (await (await fetch(`${plain.url}/version`)).json()) as { gitVersion: string; minor: string };
  assert.equal(version.gitVersion, 'v1.29.3');
  assert.equal(version.minor, '29');
  assert.equal(await (await fetch(`${plain.url}/healthz`)).text(), 'ok');
});

test('patch helpers follow RFC 7386 / RFC 6902', () => {
  assert.deepEqual(mergePatch({ a: { b: 1, c: 2 }, l: [1, 2] }, { a: { b: null, d: 3 }, l: [3] }), { a: { c: 2, d: 3 }, l: [3] });
  assert.deepEqual(
    applyJsonPatch({ a: [1, 2], b: { 'x/y': 1, 't~': 2 } }, [
      { op: 'add', path: '/a/-', value: 3 },
      { op: 'add', path: '/a/0', value: 0 },
      { op: 'move', from: '/b/x~1y', path: '/c' },
      { op: 'copy', from: '/b/t~0', path: '/d' },
      { op: 'test', path: '/a', value: [0, 1, 2, 3] },
    ]),
    { a: [0, 1, 2, 3], b: { 't~': 2 }, c: 1, d: 2 },
  );
  assert.throws(() => applyJsonPatch({ a: 1 }, [{ op: 'test', path: '/a', value: 2 }]), /test failed/);
});
