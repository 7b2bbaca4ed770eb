// Per-lease credentials, hand-off facts and cleanup, against a fake cluster over HTTPS (the fake
// kube-apiserver with a test CA), reached through the kubeconfigs the claimer builds.

import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { after, afterEach, before, beforeEach, describe, test } from 'node:test';
import { CoreV1Api, KubeConfig, PatchStrategy, RbacAuthorizationV1Api, setHeaderOptions, type RbacV1Subject } from '@kubernetes/client-node';
import { parse } from 'yaml';
import { matchRequest, startFakeKubeApiserver, type FakeKubeApiserver, type FakeKubeApiserverOptions, type KubeObject } from './fakes/kube-apiserver.ts';
import { TEST_TLS_CERT, TEST_TLS_KEY } from './fakes/tls-fixture.ts';
import { ManualClock, poolOf, startTestApp, tempDir, type PoolCluster, type TestApp } from './support/harness.ts';
import { seedLeaseService, startKube, writeKubeconfig } from './support/kube.ts';

const POOL_TOKEN = 'pool-admin-token';
const CA = Buffer.from(TEST_TLS_CERT).toString('base64');
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

let cluster: FakeKubeApiserver;
let folder: string;
const apps: TestApp[] = [];

function seedCluster(fake: FakeKubeApiserver): void {
  for (const name of ['kube-system', 'kube-public', 'kube-node-lease', 'default', 'gke-managed-system', 'ci-tools', 'team-cache']) {
    fake.putObject('namespaces', { apiVersion: 'v1', kind: 'Namespace', metadata: { name, ...(name === 'team-cache' && { labels: { 'k8s-claimer.io/keep': 'true' } }) } });
  }
  fake.putObject('services', {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: { name: 'kube-dns', namespace: 'kube-system' },
    spec: { clusterIP: '10.96.0.10', ports: [{ name: 'dns', port: 53, protocol: 'UDP' }, { name: 'dns-tcp', port: 53, protocol: 'TCP' }] },
  });
}

const labCluster = (): PoolCluster => ({
  name: 'lab-1',
  server: cluster.url,
  certificate_authority_data: CA,
  token: POOL_TOKEN,
  gpu: true,
  cluster_tag: 'lab-7',
  registry_location: 'registry.lab:5000',
});

async function claimer(env: Record<string, string> = {}, clusters: PoolCluster[] = [labCluster()], clock?: ManualClock): Promise<TestApp> {
  const app = await startTestApp({
    clusters,
    clock,
    poolSettings: {},
    env: { PROTECTED_NAMESPACES: 'ci-*', ...env },
    janitor: { pollMs: 50, namespacePollMs: 20 },
  });
  apps.push(app);
  return app;
}

async function call(app: TestApp, method: string, path: string, body?: unknown) {
  const response = await app.request(method, path, { body });
  return { status: response.status, body: await response.json() };
}

/** What the lessee does with the kubeconfig it got: talk to the cluster with the real client. */
function lesseeApi(kubeconfigBase64: string): CoreV1Api {
  const kubeConfig = new KubeConfig();
  kubeConfig.loadFromString(Buffer.from(kubeconfigBase64, 'base64').toString('utf8'));
  return kubeConfig.makeApiClient(CoreV1Api);
}

function lesseeRbac(kubeconfigBase64: string): RbacAuthorizationV1Api {
  const kubeConfig = new KubeConfig();
  kubeConfig.loadFromString(Buffer.from(kubeconfigBase64, 'base64').toString('utf8'));
  return kubeConfig.makeApiClient(RbacAuthorizationV1Api);
}

const mergePatch = () => setHeaderOptions('Content-Type', PatchStrategy.MergePatch);

/** Bindings that still give something to an account of the lease namespace, or to its group. */
function bindingsToLeaseNamespace(fake: FakeKubeApiserver): string[] {
  const grants = (subject: RbacV1Subject) =>
    (subject.kind === 'ServiceAccount' && subject.namespace === 'k8s-claimer-leases') ||
    (subject.kind === 'Group' && subject.name === 'system:serviceaccounts:k8s-claimer-leases');
  return [...fake.listObjects('clusterrolebindings'), ...fake.listObjects('rolebindings')]
    .filter((binding: KubeObject & { subjects?: RbacV1Subject[] }) => (binding.subjects ?? []).some(grants))
    .map((binding) => `${binding.metadata.namespace ?? ''}/${binding.metadata.name}`);
}

/** Swaps the fake cluster for one with other options (afterEach closes it). */
async function restartCluster(options: FakeKubeApiserverOptions): Promise<void> {
  await cluster.close();
  cluster = await startFakeKubeApiserver({
    tls: { cert: TEST_TLS_CERT, key: TEST_TLS_KEY },
    requireToken: (token, fake) => token === POOL_TOKEN || fake.isTokenValid(token),
    ...options,
  });
  seedCluster(cluster);
}

function tokenOf(kubeconfigBase64: string): string {
  return parse(Buffer.from(kubeconfigBase64, 'base64').toString('utf8')).users[0].user.token;
}

async function until(condition: () => Promise<boolean> | boolean, what: string, ms = 5_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

const stateOf = async (app: TestApp) => (await call(app, 'GET', '/leases')).body.clusters[0];

before(async () => {
  folder = await tempDir();
});
after(async () => {
  await rm(folder, { recursive: true, force: true });
});
async function startCluster(options: FakeKubeApiserverOptions = {}): Promise<FakeKubeApiserver> {
  const fake = await startFakeKubeApiserver({
    tls: { cert: TEST_TLS_CERT, key: TEST_TLS_KEY },
    requireToken: (token, self) => token === POOL_TOKEN || self.isTokenValid(token),
    ...options,
  });
  seedCluster(fake);
  return fake;
}

beforeEach(async () => {
  cluster = await startCluster();
});
afterEach(async () => {
  while (apps.length) await apps.pop()?.close();
  await cluster.close();
});

describe('per-lease credentials', () => {
  test('the kubeconfig carries a token minted for this lease, which works against the cluster over TLS', async () => {
    const app = await claimer();
    const lease = await call(app, 'POST', '/lease', { max_time: 900 });
    assert.equal(lease.status, 200);
    const token = tokenOf(lease.body.kubeconfig);
    assert.notEqual(token, POOL_TOKEN);
    const issued = cluster.tokens.find((candidate) => candidate.token === token);
    assert.ok(issued, 'the token came from the TokenRequest API');
    assert.equal(issued.namespace, 'k8s-claimer-leases');
    // expirationSeconds = the lease's remaining time (900 s, above the API's 600 s minimum).
    assert.equal(Math.round((issued.expirationTimestamp.getTime() - issued.issuedAt.getTime()) / 1000), 900);
    const binding = cluster.listObjects('clusterrolebindings').find((object) => object.metadata?.labels?.['app.kubernetes.io/managed-by'] === 'k8s-claimer');
    assert.deepEqual((binding as { roleRef?: unknown }).roleRef, { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'cluster-admin' });
    const namespaces = await lesseeApi(lease.body.kubeconfig).listNamespace();
    assert.ok(namespaces.items.some((namespace) => namespace.metadata?.name === 'kube-system'));
    assert.deepEqual({ user: lease.body.credentials.user, group: lease.body.credentials.group }, { user: 'lessee', group: 'system:masters' });
    // The API reports the expiry to the second.
    assert.ok(Math.abs(Date.parse(lease.body.credentials.expires_at) - issued.expirationTimestamp.getTime()) < 1000);
    assert.equal(app.logs.raw().includes(token), false, 'the minted token reached the log');
  });

  test('a short lease still gets the API minimum of 600 s; the token dies when the lease ends anyway', async () => {
    const app = await claimer();
    const lease = await call(app, 'POST', '/lease', { max_time: 60 });
    const issued = cluster.tokens.find((candidate) => candidate.token === tokenOf(lease.body.kubeconfig));
    assert.equal(Math.round(((issued?.expirationTimestamp.getTime() ?? 0) - (issued?.issuedAt.getTime() ?? 0)) / 1000), 600);
  });

  test("auth {user, group}: the group's ClusterRole is bound; an unmapped group is 400 and nothing is created", async () => {
    const app = await claimer({ LEASE_GROUP_ROLES: 'system:masters=cluster-admin,developers=edit' });
    const refused = await call(app, 'POST', '/lease', { max_time: 900, auth: { user: 'ci-bot', group: 'auditors' } });
    assert.equal(refused.status, 400);
    assert.deepEqual(refused.body.fields, ['auth.group']);
    assert.equal(cluster.listObjects('serviceaccounts', 'k8s-claimer-leases').length, 0);
    const lease = await call(app, 'POST', '/lease', { max_time: 900, auth: { user: 'ci-bot', group: 'developers' } });
    assert.equal(lease.status, 200);
    assert.deepEqual({ user: lease.body.credentials.user, group: lease.body.credentials.group }, { user: 'ci-bot', group: 'developers' });
    const binding = cluster.listObjects('clusterrolebindings')[0] as { roleRef?: { name?: string } };
    assert.equal(binding.roleRef?.name, 'edit');
  });

  test('release: the ServiceAccount and its binding are deleted, so the token stops working; the release itself is 200 at once', async () => {
    const app = await claimer();
    const lease = await call(app, 'POST', '/lease', { max_time: 900 });
    const token = tokenOf(lease.body.kubeconfig);
    assert.equal((await call(app, 'DELETE', `/lease/${lease.body.token}`)).status, 200);
    await until(async () => (await stateOf(app)).state === 'free', 'the cluster to be cleaned');
    assert.equal(cluster.listObjects('serviceaccounts', 'k8s-claimer-leases').length, 0);
    assert.equal(cluster.listObjects('clusterrolebindings').length, 0);
    assert.equal(cluster.isTokenValid(token), false);
    await assert.rejects(lesseeApi(lease.body.kubeconfig).listNamespace(), (error: { code?: number }) => error.code === 401);
  });

  test('a lessee that strips the claimer\'s labels and makes accounts and bindings of its own keeps none of them', async () => {
    // As on a real cluster, the lease namespace has a `default` account, made again when deleted.
    await restartCluster({ serviceAccountController: true });
    const app = await claimer();
    const lease = await call(app, 'POST', '/lease', { max_time: 900 });
    const token = tokenOf(lease.body.kubeconfig);
    const core = lesseeApi(lease.body.kubeconfig);
    const rbac = lesseeRbac(lease.body.kubeconfig);
    const namespace = 'k8s-claimer-leases';
    const [own] = (await core.listNamespacedServiceAccount({ namespace, labelSelector: 'app.kubernetes.io/managed-by=k8s-claimer' })).items;
    const [binding] = (await rbac.listClusterRoleBinding({ labelSelector: 'app.kubernetes.io/managed-by=k8s-claimer' })).items;
    const unlabelled = { metadata: { labels: null } };
    await core.patchNamespacedServiceAccount({ name: own.metadata?.name as string, namespace, body: unlabelled }, mergePatch());
    await rbac.patchClusterRoleBinding({ name: binding.metadata?.name as string, body: unlabelled }, mergePatch());
    // An account of its own, a token of the namespace's default account, a binding in a
    // protected namespace (never deleted) and one to the whole namespace's group.
    await core.createNamespacedServiceAccount({ namespace, body: { metadata: { name: 'helper' } } });
    const mint = async (name: string) =>
      (await core.createNamespacedServiceAccountToken({ name, namespace, body: { spec: { audiences: [], expirationSeconds: 86_400 } } })).status?.token as string;
    const tokens = [token, await mint('helper'), await mint('default')];
    await rbac.createNamespacedRoleBinding({
      namespace: 'ci-tools',
      body: {
        metadata: { name: 'stays-around' },
        roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'admin' },
        subjects: [{ kind: 'ServiceAccount', name: 'helper', namespace }],
      },
    });
    await rbac.createClusterRoleBinding({
      body: {
        metadata: { name: 'every-lease-account' },
        roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'cluster-admin' },
        subjects: [{ kind: 'Group', apiGroup: 'rbac.authorization.k8s.io', name: `system:serviceaccounts:${namespace}` }],
      },
    });
    const defaultUid = cluster.getObject('serviceaccounts', namespace, 'default')?.metadata.uid;
    assert.ok(tokens.every((minted) => cluster.isTokenValid(minted)));

    assert.equal((await call(app, 'DELETE', `/lease/${lease.body.token}`)).status, 200);
    await until(async () => (await stateOf(app)).state === 'free', 'the cluster to be cleaned');
    assert.deepEqual(tokens.map((minted) => cluster.isTokenValid(minted)), [false, false, false]);
    assert.deepEqual(bindingsToLeaseNamespace(cluster), []);
    const accounts = cluster.listObjects('serviceaccounts', namespace);
    assert.deepEqual(accounts.map((account) => account.metadata.name), ['default']);
    assert.notEqual(accounts[0].metadata.uid, defaultUid, 'the default account was made again');
    await assert.rejects(core.listNamespace(), (error: { code?: number }) => error.code === 401);
  });

  test('expiry found by the reaper revokes the credentials too, and is logged once', async () => {
    const app = await claimer({ REAP_INTERVAL_SECONDS: '1' });
    const lease = await call(app, 'POST', '/lease', { max_time: 30 });
    const token = tokenOf(lease.body.kubeconfig);
    app.clock.advance(30);
    await until(() => !cluster.isTokenValid(token), 'the token to be revoked');
    await until(async () => (await stateOf(app)).state === 'free', 'the cluster to be cleaned');
    assert.equal(app.logs.lines.filter((line) => line.event === 'lease.expired').length, 1);
  });

  /**
   * A claimer with per-lease credentials and no cleanup leases the cluster (and does what
   * `meanwhile` says); then it stops, and one with the same store and clock starts with pool
   * credentials and no cleanup.
   */
  async function switchToPool(meanwhile: (first: TestApp, leaseToken: string) => Promise<void> = async () => undefined) {
    const shared = await tempDir();
    after(() => rm(shared, { recursive: true, force: true }));
    const start = (env: Record<string, string>, clock?: TestApp['clock']) =>
      startTestApp({ clusters: [labCluster()], folder: shared, poolSettings: {}, env, janitor: { pollMs: 50 }, ...(clock && { clock }) });
    const first = await start({ CLEANUP: 'none' });
    apps.push(first);
    const lease = await call(first, 'POST', '/lease', { max_time: 900 });
    await meanwhile(first, lease.body.token);
    await first.close();
    apps.splice(apps.indexOf(first), 1);
    const second = await start({ LEASE_CREDENTIALS: 'pool', CLEANUP: 'none' }, first.clock);
    apps.push(second);
    return { second, leaseToken: lease.body.token as string, token: tokenOf(lease.body.kubeconfig) };
  }

  test('dirty clusters left by an earlier configuration are revoked, then freed, after a switch to pool credentials and no cleanup', async () => {
    const { second, token } = await switchToPool(async (first, leaseToken) => {
      // The cluster's API server is away: the revocation fails and the cluster stays dirty.
      const away = cluster.failNext(100, 500, { match: (request) => request.method !== 'GET' || request.resource === 'clusterrolebindings' });
      await call(first, 'DELETE', `/lease/${leaseToken}`);
      await until(async () => (await stateOf(first)).cleanup?.attempts === 1, 'a failed cleanup');
      away.cancel();
    });
    second.clock.advance(2);
    await until(async () => (await stateOf(second)).state === 'free', 'the dirty cluster to be freed');
    assert.equal(cluster.isTokenValid(token), false, 'the per-lease token outlived its lease');
    assert.deepEqual(cluster.listObjects('serviceaccounts', 'k8s-claimer-leases'), []);
  });

  test('a lease with per-lease credentials that ends after a switch to pool credentials is revoked before its cluster is free', async () => {
    const { second, token, leaseToken } = await switchToPool();
    assert.equal((await call(second, 'DELETE', `/lease/${leaseToken}`)).status, 200);
    await until(async () => (await stateOf(second)).state === 'free', 'the cluster to be freed');
    assert.equal(cluster.isTokenValid(token), false, 'the per-lease token outlived its lease');
  });

  test('a failed revocation is retried until it succeeds, and shows in /leases meanwhile', async () => {
    const app = await claimer();
    const lease = await call(app, 'POST', '/lease', { max_time: 900 });
    const token = tokenOf(lease.body.kubeconfig);
    cluster.failNext(1, 500, { match: (request) => request.method === 'DELETE' && request.resource === 'clusterrolebindings' });
    assert.equal((await call(app, 'DELETE', `/lease/${lease.body.token}`)).status, 200);
    await until(async () => (await stateOf(app)).cleanup?.attempts === 1, 'the failure to be recorded');
    const failed = await stateOf(app);
    assert.match(failed.cleanup.last_error, /revoking the lease credentials failed \(the cluster's API server answered 500\)/);
    assert.ok(failed.state === 'dirty' || failed.state === 'cleaning');
    assert.equal((await call(app, 'POST', '/lease', { max_time: 60 })).status, 409, 'never leased while dirty');
    // The retry waits out its backoff on the claimer's clock.
    app.clock.advance(2);
    await until(async () => (await stateOf(app)).state === 'free', 'the retry to succeed');
    assert.equal(cluster.isTokenValid(token), false);
  });

  test('PATCH past the token\'s life mints a fresh token and returns it; a shorter extension does not', async () => {
    const app = await claimer();
    const lease = await call(app, 'POST', '/lease', { max_time: 300 });
    const first = tokenOf(lease.body.kubeconfig);
    const within = await call(app, 'PATCH', `/lease/${lease.body.token}`, { max_time: 500 });
    assert.equal(within.status, 200);
    assert.equal(within.body.kubeconfig, undefined);
    const beyond = await call(app, 'PATCH', `/lease/${lease.body.token}`, { max_time: 3000 });
    assert.equal(beyond.status, 200);
    const second = tokenOf(beyond.body.kubeconfig);
    assert.notEqual(second, first);
    const issued = cluster.tokens.find((candidate) => candidate.token === second);
    assert.ok(Math.abs(Date.parse(beyond.body.credentials.expires_at) - (issued?.expirationTimestamp.getTime() ?? 0)) < 1000);
    assert.equal((await lesseeApi(beyond.body.kubeconfig).listNamespace()).items.length > 0, true);
  });

  test('an API server that caps token lifetimes: the grant records the real expiry, so a PATCH past it mints a fresh token', async () => {
    await cluster.close();
    // Like --service-account-max-token-expiration=1h: a lease of 2 h gets a token of 1 h.
    cluster = await startCluster({ maxTokenExpirationSeconds: 3600 });
    // The claimer's clock agrees with the fake's, which dates the tokens.
    const app = await claimer({}, [labCluster()], new ManualClock(Date.now()));
    const lease = await call(app, 'POST', '/lease', { max_time: 7200 });
    const issued = cluster.findToken(tokenOf(lease.body.kubeconfig));
    assert.equal(Math.round(((issued?.expirationTimestamp.getTime() ?? 0) - (issued?.issuedAt.getTime() ?? 0)) / 1000), 3600);
    const shown = await call(app, 'GET', `/lease/${lease.body.token}`);
    assert.ok(Math.abs(Date.parse(shown.body.credentials.expires_at) - (issued?.expirationTimestamp.getTime() ?? 0)) < 1000, shown.body.credentials.expires_at);
    const extended = await call(app, 'PATCH', `/lease/${lease.body.token}`, { max_time: 5000 });
    assert.equal(extended.status, 200);
    assert.ok(extended.body.kubeconfig, 'a fresh kubeconfig, since the first token dies in 1 h');
    assert.notEqual(tokenOf(extended.body.kubeconfig), issued?.token);
  });

  test('a fresh token lives three extensions long (never past the lease\'s maximum), so a heartbeat does not mint at every beat', async () => {
    const environments: Record<string, string>[] = [{}, { MAX_LEASE_SECONDS: '1000' }];
    const lifetimes: number[] = [];
    for (const env of environments) {
      // The claimer's clock agrees with the fake's, which dates the tokens.
      const app = await claimer(env, [labCluster()], new ManualClock(Date.now()));
      const lease = await call(app, 'POST', '/lease', { max_time: 300 });
      const extended = await call(app, 'PATCH', `/lease/${lease.body.token}`, { max_time: 900 });
      const issued = cluster.findToken(tokenOf(extended.body.kubeconfig));
      lifetimes.push(Math.round(((issued?.expirationTimestamp.getTime() ?? 0) - (issued?.issuedAt.getTime() ?? 0)) / 1000));
      if (env.MAX_LEASE_SECONDS === undefined) {
        // The next beats (every 300 s, to 900 s from then) stay within that token's life.
        for (let beat = 1; beat <= 5; beat++) {
          app.clock.advance(300);
          assert.equal((await call(app, 'PATCH', `/lease/${lease.body.token}`, { max_time: 900 })).body.kubeconfig, undefined, `beat ${beat}`);
        }
      }
      await app.close();
      apps.splice(apps.indexOf(app), 1);
    }
    assert.deepEqual(lifetimes, [2700, 1000]);
  });

  test('PATCH beyond MAX_LEASE_SECONDS is 400 with max_time_left and mints no token', async () => {
    const app = await claimer({ MAX_LEASE_SECONDS: '1000' });
    const lease = await call(app, 'POST', '/lease', { max_time: 300 });
    app.clock.advance(100);
    const refused = await call(app, 'PATCH', `/lease/${lease.body.token}`, { max_time: 901 });
    assert.equal(refused.status, 400);
    assert.deepEqual({ fields: refused.body.fields, max_time_left: refused.body.max_time_left }, { fields: ['max_time'], max_time_left: 900 });
    assert.equal(cluster.tokens.length, 1, 'only the token of the grant');
  });

  test('a lease that ends while its credentials are minted hands out nothing and leaves no account behind', async () => {
    const app = await claimer({ CLEANUP: 'none', REAP_INTERVAL_SECONDS: '1' });
    const held = cluster.hang(matchRequest({ method: 'POST', resource: 'serviceaccounts' }));
    const pending = app.request('POST', '/lease', { body: { max_time: 2 } });
    await until(() => held.held > 0, 'the account creation to be under way');
    app.clock.advance(3);
    // Reaper and janitor end the lease and free the cluster while the account is being made.
    await until(async () => (await stateOf(app)).state === 'free', 'the lease to end and be cleaned');
    held.release();
    const answer = await pending;
    assert.ok(answer.status >= 400, `answered ${answer.status}`);
    assert.equal((await answer.json()).kubeconfig, undefined);
    assert.deepEqual(cluster.listObjects('serviceaccounts', 'k8s-claimer-leases'), []);
    assert.deepEqual(cluster.listObjects('clusterrolebindings'), []);
    assert.ok(cluster.tokens.every((issued) => !cluster.isTokenValid(issued.token)));
  });

  test('a client that goes away while its credentials are minted is given nothing', async () => {
    const app = await claimer({ CLEANUP: 'none' });
    const held = cluster.hang(matchRequest({ method: 'POST', resource: 'serviceaccounts' }));
    const controller = new AbortController();
    const pending = app.request('POST', '/lease', { body: { max_time: 600 }, signal: controller.signal });
    await until(() => held.held > 0, 'the account creation to be under way');
    controller.abort();
    held.release();
    assert.equal((await pending).status, 499);
    await until(async () => (await stateOf(app)).state === 'free', 'the lease to be undone and cleaned');
    assert.deepEqual(cluster.listObjects('serviceaccounts', 'k8s-claimer-leases'), []);
  });

  test('LEASE_CREDENTIALS=google-token (pool) hands out the pool\'s own credentials and creates nothing', async () => {
    const app = await claimer({ LEASE_CREDENTIALS: 'google-token', CLEANUP: 'none' });
    const lease = await call(app, 'POST', '/lease', { max_time: 60 });
    assert.equal(tokenOf(lease.body.kubeconfig), POOL_TOKEN);
    assert.equal(lease.body.credentials, null);
    assert.equal(cluster.listObjects('serviceaccounts').length, 0);
    assert.equal((await call(app, 'DELETE', `/lease/${lease.body.token}`)).status, 200);
    assert.equal((await stateOf(app)).state, 'free');
  });
});

describe('hand-off facts', () => {
  test('dns from the cluster, cluster_tag, registry_location and gpu from the pool, in POST and GET', async () => {
    const app = await claimer({ CLUSTER_DOMAIN: 'ci.internal' });
    const lease = await call(app, 'POST', '/lease', { max_time: 900 });
    const facts = { dns: { domain: 'ci.internal', service_ip: '10.96.0.10', port: 53 }, cluster_tag: 'lab-7', registry_location: 'registry.lab:5000', gpu: true };
    assert.deepEqual({ dns: lease.body.dns, cluster_tag: lease.body.cluster_tag, registry_location: lease.body.registry_location, gpu: lease.body.gpu }, facts);
    const shown = await call(app, 'GET', `/lease/${lease.body.token}`);
    assert.deepEqual({ dns: shown.body.dns, cluster_tag: shown.body.cluster_tag, registry_location: shown.body.registry_location, gpu: shown.body.gpu }, facts);
    assert.equal(shown.body.credentials.group, 'system:masters');
  });

  test('CoreDNS instead of kube-dns; no DNS Service at all gives dns: null, not a failure', async () => {
    cluster.deleteObject('services', 'kube-system', 'kube-dns');
    cluster.putObject('services', { apiVersion: 'v1', kind: 'Service', metadata: { name: 'coredns', namespace: 'kube-system' }, spec: { clusterIP: '10.0.0.10', ports: [{ port: 53 }] } });
    const app = await claimer();
    assert.deepEqual((await call(app, 'POST', '/lease', { max_time: 900 })).body.dns, { domain: 'cluster.local', service_ip: '10.0.0.10', port: 53 });
    cluster.deleteObject('services', 'kube-system', 'coredns');
    const bare = await claimer({ LEASE_CREDENTIALS: 'pool', CLEANUP: 'none' }, [{ ...labCluster(), name: 'lab-2' }]);
    const lease = await call(bare, 'POST', '/lease', { max_time: 60 });
    assert.equal(lease.status, 200);
    assert.equal(lease.body.dns, null);
  });

  test('"gpu": true leases only clusters with GPUs', async () => {
    const app = await startTestApp({ clusters: [...poolOf(2), { name: 'gpu-1', gpu: true }] });
    apps.push(app);
    const lease = await call(app, 'POST', '/lease', { max_time: 60, gpu: true });
    assert.equal(lease.body.cluster_name, 'gpu-1');
    assert.equal(lease.body.gpu, true);
    const none = await call(app, 'POST', '/lease', { max_time: 60, gpu: true });
    assert.equal(none.status, 409);
    assert.equal(none.body.reason, 'AllLeased');
    assert.equal((await call(app, 'POST', '/lease', { max_time: 60 })).body.gpu, false);
  });
});

describe('cleanup before reuse', () => {
  test('namespaces made during the lease are deleted, protected ones kept, and the cluster is leasable only after', async () => {
    cluster.setNamespaceDeletionDelay(300);
    const app = await claimer();
    const lease = await call(app, 'POST', '/lease', { max_time: 900 });
    const lessee = lesseeApi(lease.body.kubeconfig);
    for (const name of ['e2e-run-1', 'e2e-run-2']) await lessee.createNamespace({ body: { metadata: { name } } });
    assert.equal((await call(app, 'DELETE', `/lease/${lease.body.token}`)).status, 200);
    await until(async () => (await stateOf(app)).state === 'cleaning', 'the janitor to claim the cluster');
    assert.equal((await call(app, 'POST', '/lease', { max_time: 60 })).status, 409);
    await until(async () => (await stateOf(app)).state === 'free', 'the namespaces to be gone');
    const left = cluster.listObjects('namespaces').map((namespace) => namespace.metadata?.name).sort();
    assert.deepEqual(left, ['ci-tools', 'default', 'gke-managed-system', 'k8s-claimer-leases', 'kube-node-lease', 'kube-public', 'kube-system', 'team-cache']);
    assert.equal((await call(app, 'POST', '/lease', { max_time: 60 })).status, 200);
    assert.ok(app.logs.lines.some((line) => line.event === 'cluster.cleaned' && (line.namespaces_deleted as string[]).length === 2));
  });

  test('CLEANUP=none with per-lease credentials: only the credentials are revoked', async () => {
    const app = await claimer({ CLEANUP: 'none' });
    const lease = await call(app, 'POST', '/lease', { max_time: 900 });
    await lesseeApi(lease.body.kubeconfig).createNamespace({ body: { metadata: { name: 'stays' } } });
    await call(app, 'DELETE', `/lease/${lease.body.token}`);
    await until(async () => (await stateOf(app)).state === 'free', 'the credentials to be revoked');
    assert.ok(cluster.getObject('namespaces', undefined, 'stays'));
    assert.equal(cluster.listObjects('serviceaccounts', 'k8s-claimer-leases').length, 0);
  });

  test('a replica that restarts in the middle of a cleanup takes its own claim back at once instead of waiting for it to lapse', async () => {
    const shared = await tempDir();
    after(() => rm(shared, { recursive: true, force: true }));
    const clock = new ManualClock();
    const start = () =>
      startTestApp({
        clusters: [labCluster()],
        folder: shared,
        poolSettings: {},
        env: { PROTECTED_NAMESPACES: 'ci-*', REPLICA_NAME: 'claimer-0' },
        janitor: { pollMs: 50, namespacePollMs: 20 },
        clock,
      });
    const crashed = await start();
    apps.push(crashed);
    const lease = await call(crashed, 'POST', '/lease', { max_time: 900 });
    await lesseeApi(lease.body.kubeconfig).createNamespace({ body: { metadata: { name: 'e2e-run' } } });
    // The replica dies while its janitor deletes the namespace: the claim stays in the table.
    const held = cluster.hang(matchRequest({ method: 'DELETE', resource: 'namespaces' }));
    await call(crashed, 'DELETE', `/lease/${lease.body.token}`);
    await until(() => held.held > 0, 'the janitor to be deleting namespaces');
    held.stop();
    assert.equal((await stateOf(crashed)).state, 'cleaning');
    await crashed.close();
    apps.splice(apps.indexOf(crashed), 1);
    // Restarted under the same name (the pod's), with no time passing on the claimer's clock.
    const restarted = await start();
    apps.push(restarted);
    await until(async () => (await stateOf(restarted)).state === 'free', 'the restarted replica to clean the cluster');
    assert.equal(cluster.getObject('namespaces', undefined, 'e2e-run'), undefined);
    assert.ok(restarted.logs.lines.some((line) => line.event === 'cleanup.reclaimed'));
  });

  test('a janitor whose claim was taken over meanwhile deletes nothing of the next lease', async () => {
    const home = await startKube();
    seedLeaseService(home);
    after(() => home.close());
    const clock = new ManualClock();
    const replica = async () => {
      const app = await startTestApp({
        clusters: [labCluster()],
        poolSettings: {},
        env: { PROTECTED_NAMESPACES: 'ci-*', LEASE_STORE: 'kubernetes', KUBECONFIG: await writeKubeconfig(folder, home.url, 'fenced-kubeconfig') },
        janitor: { pollMs: 50, namespacePollMs: 20, claimMs: 60_000 },
        clock,
      });
      apps.push(app);
      return app;
    };
    const first = await replica();
    const lease = await call(first, 'POST', '/lease', { max_time: 900 });
    await lesseeApi(lease.body.kubeconfig).createNamespace({ body: { metadata: { name: 'first-run' } } });
    // The first janitor stalls on its way to the namespace deletes (a slow API server)...
    const listing = cluster.hang((request) => request.method === 'GET' && request.resource === 'namespaces' && request.name === undefined);
    await call(first, 'DELETE', `/lease/${lease.body.token}`);
    await until(() => listing.held > 0, 'the first janitor to list the namespaces');
    listing.stop();
    // ... long enough for its claim to lapse: a second replica takes over, cleans, and the
    // cluster is leased again, with a namespace of the new lease.
    clock.advance(61);
    const second = await replica();
    await until(async () => (await stateOf(second)).state === 'free', 'the second janitor to clean the cluster');
    assert.equal(cluster.getObject('namespaces', undefined, 'first-run'), undefined);
    const next = await call(second, 'POST', '/lease', { max_time: 900 });
    assert.equal(next.status, 200);
    await lesseeApi(next.body.kubeconfig).createNamespace({ body: { metadata: { name: 'second-run' } } });
    const nextToken = tokenOf(next.body.kubeconfig);

    listing.release();
    const deletedSecond = () => cluster.countRequests({ method: 'DELETE', resource: 'namespaces', name: 'second-run' }) > 0;
    const abandoned = () => first.logs.lines.some((line) => line.event === 'cleanup.abandoned');
    await until(() => deletedSecond() || abandoned(), 'the first janitor to go on');
    assert.equal(deletedSecond(), false, 'the stale janitor deleted a namespace of the next lease');
    await sleep(100);
    assert.ok(cluster.getObject('namespaces', undefined, 'second-run'));
    assert.equal(cluster.isTokenValid(nextToken), true, "the next lease's credentials were revoked");
    assert.equal((await stateOf(second)).state, 'leased');
  });

  test('a janitor never starts a delete that its claim might not outlast', async () => {
    // A claim shorter than one call's timeout: no delete can be started safely.
    const app = await startTestApp({
      clusters: [labCluster()],
      poolSettings: {},
      env: { PROTECTED_NAMESPACES: 'ci-*' },
      janitor: { pollMs: 50, namespacePollMs: 20, claimMs: 5_000, callTimeoutMs: 10_000 },
    });
    apps.push(app);
    const lease = await call(app, 'POST', '/lease', { max_time: 900 });
    cluster.resetCounts();
    await call(app, 'DELETE', `/lease/${lease.body.token}`);
    await until(async () => (await stateOf(app)).cleanup?.attempts === 1, 'the attempt to fail');
    assert.equal(cluster.countRequests({ method: 'DELETE' }), 0);
    assert.match((await stateOf(app)).cleanup.last_error, /^revoking the lease credentials failed/);
    assert.equal(cluster.isTokenValid(tokenOf(lease.body.kubeconfig)), true);
  });

  test('a namespace that never finishes terminating shows in /leases, and after CLEANUP_MAX_ATTEMPTS its cluster is quarantined until POST /cleanup', async () => {
    const app = await startTestApp({
      clusters: [labCluster()],
      poolSettings: {},
      env: { PROTECTED_NAMESPACES: 'ci-*', CLEANUP_MAX_ATTEMPTS: '2', QUARANTINE_RETRY_SECONDS: '3600', QUARANTINE_AFTER_SECONDS: '0' },
      janitor: { pollMs: 50, namespacePollMs: 20, namespaceNoticeMs: 100, namespaceWaitMs: 1_500 },
    });
    apps.push(app);
    const lease = await call(app, 'POST', '/lease', { max_time: 900 });
    // A finalizer whose controller never comes (uninstalled with the lessee's operator).
    await lesseeApi(lease.body.kubeconfig).createNamespace({ body: { metadata: { name: 'stuck-run', finalizers: ['example.com/teardown'] } } });
    await call(app, 'DELETE', `/lease/${lease.body.token}`);
    await until(async () => /stuck-run/.test((await stateOf(app)).cleanup?.last_error ?? ''), 'the stuck namespace to show in /leases');
    const waiting = await stateOf(app);
    assert.equal(waiting.state, 'cleaning');
    assert.equal(waiting.cleanup.attempts, 0);
    assert.equal(waiting.cleanup.last_error, 'waiting for namespaces to terminate: stuck-run (finalizers: example.com/teardown; SomeFinalizersRemain)');

    // The wait is bounded: the attempt fails, naming what is stuck, and is retried after its backoff.
    await until(async () => (await stateOf(app)).cleanup?.attempts === 1, 'the first attempt to give up');
    assert.match((await stateOf(app)).cleanup.last_error, /^deleting namespaces failed: still terminating after 2 s: stuck-run \(finalizers: example\.com\/teardown/);
    app.clock.advance(2);
    await until(async () => (await stateOf(app)).state === 'quarantined', 'the cluster to be quarantined');
    const quarantined = await stateOf(app);
    assert.equal(quarantined.cleanup.attempts, 2);
    assert.equal(quarantined.cleanup.retry_at, new Date(app.clock.now() + 3_600_000).toISOString());
    const metrics = await (await app.request('GET', '/metrics', { auth: null })).text();
    assert.match(metrics, /^k8s_claimer_clusters\{state="quarantined",pool="static"\} 1$/m);
    assert.equal((await call(app, 'POST', '/lease', { max_time: 60 })).status, 409, 'never leased while quarantined');
    // Retried rarely: not after the usual backoff.
    app.clock.advance(60);
    await sleep(200);
    assert.equal((await stateOf(app)).cleanup.attempts, 2);

    // The operator finds the stuck finalizer, removes it, and returns the cluster to service.
    const admin = new KubeConfig();
    admin.loadFromOptions(cluster.kubeConfigOptions(POOL_TOKEN));
    await admin.makeApiClient(CoreV1Api).patchNamespace({ name: 'stuck-run', body: { metadata: { finalizers: null } } }, mergePatch());
    assert.equal(cluster.getObject('namespaces', undefined, 'stuck-run'), undefined);
    const returned = await call(app, 'POST', '/cleanup', { cluster: 'static/lab-1' });
    assert.equal(returned.status, 200);
    assert.equal(returned.body.state, 'dirty');
    assert.equal(returned.body.cleanup.attempts, 0);
    await until(async () => (await stateOf(app)).state === 'free', 'the cluster to be cleaned and free');
    assert.equal((await call(app, 'POST', '/lease', { max_time: 60 })).status, 200);
  });

  test('POST /cleanup - 400 for a bad body, 404 for a cluster the pool does not have, 409 unless quarantined or dirty, 401 without auth', async () => {
    const app = await claimer({ LEASE_CREDENTIALS: 'pool', CLEANUP: 'none' });
    const cases: Array<[unknown, number]> = [
      [{}, 400],
      [{ cluster: 7 }, 400],
      [{ cluster: '' }, 400],
      ['[]', 400],
      [{ cluster: 'static/nope' }, 404],
      [{ cluster: 'static/lab-1' }, 409],
    ];
    for (const [body, status] of cases) assert.equal((await call(app, 'POST', '/cleanup', body)).status, status, JSON.stringify(body));
    assert.equal((await call(app, 'POST', '/cleanup', { cluster: 'static/lab-1' })).body.reason, 'WrongClusterState');
    await call(app, 'POST', '/lease', { max_time: 60 });
    assert.equal((await call(app, 'POST', '/cleanup', { cluster: 'static/lab-1' })).status, 409, 'a leased cluster is not cleaned');
    assert.equal((await app.request('POST', '/cleanup', { body: { cluster: 'static/lab-1' }, auth: null })).status, 401);
    assert.equal((await app.request('GET', '/cleanup')).status, 405);
  });

  test('two replicas: one janitor per cluster, the cleanup runs once', async () => {
    // The replicas share their lease table through the Kubernetes store of the claimer's own cluster.
    const home = await startKube();
    const kubeconfig = await writeKubeconfig(folder, home.url, 'home-kubeconfig');
    seedLeaseService(home);
    after(() => home.close());
    const env = { LEASE_STORE: 'kubernetes', KUBECONFIG: kubeconfig };
    const first = await claimer(env);
    const second = await claimer(env);
    const lease = await call(first, 'POST', '/lease', { max_time: 900 });
    await lesseeApi(lease.body.kubeconfig).createNamespace({ body: { metadata: { name: 'e2e-run' } } });
    await call(second, 'DELETE', `/lease/${lease.body.token}`);
    await until(async () => (await stateOf(first)).state === 'free', 'the cluster to be cleaned');
    await sleep(200);
    const cleaned = [...first.logs.lines, ...second.logs.lines].filter((line) => line.event === 'cluster.cleaned');
    assert.equal(cleaned.length, 1);
    assert.equal(cluster.countRequests({ method: 'DELETE', resource: 'namespaces' }), 1);
  });
});
