// The Kubernetes lease store through the real @kubernetes/client-node, over HTTP, against a
// fake kube-apiserver with resourceVersion compare-and-swap.

import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { after, afterEach, before, beforeEach, describe, test } from 'node:test';
import { annotationKeyFor } from '../services/store/kubernetes.ts';
import type { FakeKubeApiserver } from './fakes/kube-apiserver.ts';
import { poolOf, startTestApp, tempDir, type ManualClock, type TestApp } from './support/harness.ts';
import { LEASE_NAMESPACE, LEASE_SERVICE, leaseAnnotations, seedLeaseService, startKube, writeKubeconfig } from './support/kube.ts';

const ORIGINAL_TOKEN = '5b0c8d2e-9f1a-4c3b-8e7d-6a5f4e3d2c1b';

describe('Kubernetes lease store', () => {
  let fake: FakeKubeApiserver;
  let folder: string;
  let kubeconfig: string;
  const apps: TestApp[] = [];

  before(async () => {
    fake = await startKube();
    folder = await tempDir();
    kubeconfig = await writeKubeconfig(folder, fake.url);
  });
  after(async () => {
    await fake.close();
    await rm(folder, { recursive: true, force: true });
  });
  beforeEach(() => seedLeaseService(fake));
  afterEach(async () => {
    while (apps.length) await apps.pop()?.close();
    fake.deleteObject('services', LEASE_NAMESPACE, LEASE_SERVICE);
    fake.resetCounts();
  });

  async function replica(clusters = poolOf(3), clock?: ManualClock, env: Record<string, string> = {}): Promise<TestApp> {
    const app = await startTestApp({ clusters, clock, env: { LEASE_STORE: 'kubernetes', KUBECONFIG: kubeconfig, ...env } });
    apps.push(app);
    return app;
  }

  async function lease(app: TestApp, maxTime = 600) {
    const response = await app.request('POST', '/lease', { body: { max_time: maxTime } });
    return { status: response.status, body: await response.json() };
  }

  test('unauthenticated reads cost the apiserver nothing: /metrics and /readyz answer from the watch-fed table', async () => {
    const app = await replica();
    assert.equal((await lease(app)).status, 200);
    const deadline = Date.now() + 5_000;
    while (!app.services.writePath.watchLive() && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
    fake.resetCounts();
    for (let round = 0; round < 200; round++) {
      assert.equal((await app.request('GET', '/readyz', { auth: null })).status, 200);
      const metrics = await (await app.request('GET', '/metrics', { auth: null })).text();
      if (round === 0) assert.match(metrics, /k8s_claimer_clusters\{state="leased",pool="static"\} 1/);
    }
    assert.equal(fake.countRequests((request) => !request.isWatch), 0);
    // Another replica's lease reaches the metrics through the watch, still without a read.
    const other = await replica();
    assert.equal((await lease(other)).status, 200);
    const seen = Date.now() + 5_000;
    let text = '';
    while (!/k8s_claimer_clusters\{state="leased",pool="static"\} 2/.test(text) && Date.now() < seen) {
      await new Promise((resolve) => setTimeout(resolve, 20));
      text = await (await app.request('GET', '/metrics', { auth: null })).text();
    }
    assert.match(text, /k8s_claimer_clusters\{state="leased",pool="static"\} 2/);
  });

  test('/readyz without a live watch reads the Service, once for all probes of a moment', async () => {
    const app = await replica();
    const hung = fake.hang((request) => request.isWatch);
    fake.closeWatches();
    try {
      const deadline = Date.now() + 5_000;
      while (app.services.writePath.watchLive() && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
      // The replica's own start-up reads (its janitor's first look) are done by now.
      await new Promise((resolve) => setTimeout(resolve, 300));
      fake.resetCounts();
      const answers = await Promise.all(Array.from({ length: 50 }, () => app.request('GET', '/readyz', { auth: null })));
      assert.deepEqual([...new Set(answers.map((answer) => answer.status))], [200]);
      assert.equal(fake.countRequests((request) => !request.isWatch), 1);
    } finally {
      hung.release();
    }
  });

  test('a lease is a merge patch carrying the resourceVersion; the token is stored only as a hash', async () => {
    const app = await replica();
    const granted = await lease(app);
    assert.equal(granted.status, 200);
    const patches = fake.requests.filter((request) => request.method === 'PATCH');
    assert.equal(patches.length, 1);
    assert.equal(patches[0].contentType, 'application/merge-patch+json');
    assert.ok(JSON.parse(patches[0].body).metadata.resourceVersion);
    const annotations = leaseAnnotations(fake);
    const records = Object.entries(annotations).filter(([key]) => key.startsWith('lease.k8s-claimer.io/'));
    assert.equal(records.length, 1);
    const record = JSON.parse(records[0][1]);
    assert.equal(record.cluster, 'static/pool-1');
    assert.equal(record.state, 'leased');
    assert.match(record.lease.token_sha256, /^[0-9a-f]{64}$/);
    assert.equal(JSON.stringify(annotations).includes(granted.body.token), false);
  });

  test('a conflict on the first write: re-read, decide again, succeed', async () => {
    const app = await replica();
    await lease(app);
    fake.resetCounts();
    // Another replica leases pool-2, the cluster we are about to take, just before our write lands.
    fake.conflictNextWrite({
      mutate(service) {
        const record = { cluster: 'static/pool-2', state: 'leased', lease: { token_sha256: 'a'.repeat(64), started_at: new Date(app.clock.now()).toISOString(), expires_at: new Date(app.clock.now() + 600_000).toISOString() } };
        service.metadata!.annotations = { ...service.metadata!.annotations, [annotationKeyFor('static/pool-2')]: JSON.stringify(record) };
      },
    });
    const second = await lease(app);
    assert.equal(second.status, 200);
    assert.equal(second.body.cluster_name, 'pool-3');
    assert.equal(fake.countRequests({ method: 'PATCH' }), 2);
    // The fresh table comes from a re-read, or from the watch when its event was first.
    assert.ok(fake.countRequests({ method: 'GET', resource: 'services', name: LEASE_SERVICE }) <= 1);
  });

  test('two replicas on one apiserver race for the last cluster: exactly one wins, no 500', async () => {
    const clusters = poolOf(1);
    const first = await replica(clusters);
    const second = await replica(clusters, first.clock);
    for (let round = 0; round < 10; round++) {
      const results = await Promise.all([lease(first), lease(second)]);
      const statuses = results.map((result) => result.status).sort();
      assert.deepEqual(statuses, [200, 409], `round ${round}`);
      const winner = results.find((result) => result.status === 200)!;
      const owner = results[0].status === 200 ? first : second;
      assert.equal((await owner.request('DELETE', `/lease/${winner.body.token}`)).status, 200);
    }
  });

  test('the watch keeps a replica fresh: after another replica wrote, its next lease is one write, no read', async () => {
    const clusters = poolOf(3);
    const first = await replica(clusters);
    const second = await replica(clusters, first.clock);
    assert.equal((await lease(first)).body.cluster_name, 'pool-1');
    assert.equal((await lease(second)).body.cluster_name, 'pool-2');
    // `first` cached the table of its own write; the watch must bring it `second`'s write.
    await new Promise((resolve) => setTimeout(resolve, 300));
    fake.resetCounts();
    assert.equal((await lease(first)).body.cluster_name, 'pool-3');
    assert.equal(fake.countRequests({ method: 'PATCH' }), 1);
    assert.equal(fake.countRequests({ method: 'GET', resource: 'services', name: LEASE_SERVICE }), 0);
  });

  test('a release through one replica frees the cluster for the other, whose cache is stale', async () => {
    const clusters = poolOf(1);
    const first = await replica(clusters);
    const second = await replica(clusters, first.clock);
    const held = await lease(first);
    assert.equal((await lease(second)).status, 409);
    // Released through `second`; `first` still caches the table in which the cluster is leased.
    assert.equal((await second.request('DELETE', `/lease/${held.body.token}`)).status, 200);
    assert.equal((await lease(first)).status, 200);
  });

  test('annotations the claimer does not own are never touched, even when added concurrently', async () => {
    seedLeaseService(fake, { 'example.com/owner': 'team-a', 'kubectl.kubernetes.io/last-applied-configuration': '{"x":1}' });
    const app = await replica();
    const granted = await lease(app);
    fake.conflictNextWrite({
      mutate(service) {
        service.metadata!.annotations = { ...service.metadata!.annotations, 'example.com/added-meanwhile': 'yes' };
      },
    });
    assert.equal((await app.request('DELETE', `/lease/${granted.body.token}`)).status, 200);
    const annotations = leaseAnnotations(fake);
    assert.equal(annotations['example.com/owner'], 'team-a');
    assert.equal(annotations['kubectl.kubernetes.io/last-applied-configuration'], '{"x":1}');
    assert.equal(annotations['example.com/added-meanwhile'], 'yes');
  });

  test('a record that does not parse is left in place with a warning, and its cluster is never leased', async () => {
    // A live lease as another version might write it: readable JSON, one field of a type this one rejects.
    const key = annotationKeyFor('static/pool-1');
    const foreign = JSON.stringify({ cluster: 'static/pool-1', state: 'leased', lease: { token_sha256: 'b'.repeat(64), started_at: '2026-01-01T00:00:00Z', expires_at: '2099-01-01T00:00:00Z', note: 42 } });
    seedLeaseService(fake, { [key]: foreign, 'lease.k8s-claimer.io/c-000000000000000000000000': '{not json' });
    const app = await replica(poolOf(2));
    assert.equal((await lease(app)).body.cluster_name, 'pool-2');
    assert.equal((await lease(app)).status, 409);
    const annotations = leaseAnnotations(fake);
    assert.equal(annotations[key], foreign);
    assert.equal(annotations['lease.k8s-claimer.io/c-000000000000000000000000'], '{not json');
    assert.ok(app.logs.lines.some((line) => line.level === 'warn' && line.annotation === key && line.cluster === 'static/pool-1'));
    const listed = await app.request('GET', '/leases');
    assert.equal((await listed.json()).clusters.find((cluster: { name: string }) => cluster.name === 'pool-1').state, 'unknown');
  });

  test('a write whose answer is lost after it landed is recognised, not answered 500 and lost', async () => {
    const app = await replica(poolOf(1));
    fake.dropAnswerNext(1, (request) => request.method === 'PATCH');
    const granted = await lease(app);
    assert.equal(granted.status, 200);
    // The token it got is the one stored: it can be released, and the cluster comes back.
    assert.equal((await app.request('DELETE', `/lease/${granted.body.token}`)).status, 200);
    assert.equal((await lease(app)).status, 200);
  });

  test('a write that failed before landing (reset) is decided again and succeeds', async () => {
    const app = await replica(poolOf(1));
    fake.resetNext(1, (request) => request.method === 'PATCH');
    const granted = await lease(app);
    assert.equal(granted.status, 200);
    assert.equal(fake.countRequests({ method: 'PATCH' }), 2);
  });

  test('the apiserver throttling (429) or failing for a moment (503) is retried, not a 500', async () => {
    const app = await replica(poolOf(2));
    fake.failNext(1, 429, { match: (request) => request.method === 'PATCH', retryAfterSeconds: 1 });
    assert.equal((await lease(app)).status, 200);
    fake.failNext(2, 503, { match: (request) => request.method === 'PATCH' });
    assert.equal((await lease(app)).status, 200);
  });

  test('the apiserver failing for good is a 500 after a few tries', async () => {
    const app = await replica(poolOf(1));
    const fault = fake.failNext(10, 500, { match: (request) => request.method === 'PATCH' });
    assert.equal((await lease(app)).status, 500);
    assert.equal(fake.countRequests({ method: 'PATCH' }), 4);
    fault.cancel();
  });

  test("a record of the original k8s-claimer is honoured: its cluster stays leased and its token releases it", async () => {
    const app = await replica();
    const expires = new Date(app.clock.now() + 3_600_000).toISOString();
    seedLeaseService(fake, { [ORIGINAL_TOKEN]: JSON.stringify({ cluster_name: 'pool-1', lease_expiration_time: expires }) });
    const names = [(await lease(app)).body.cluster_name, (await lease(app)).body.cluster_name];
    assert.deepEqual(names, ['pool-2', 'pool-3']);
    assert.equal((await lease(app)).status, 409);
    assert.equal((await app.request('DELETE', `/lease/${ORIGINAL_TOKEN}`)).status, 200);
    assert.equal(leaseAnnotations(fake)[ORIGINAL_TOKEN], undefined);
    assert.equal((await lease(app)).body.cluster_name, 'pool-1');
  });

  test('a missing Service: 500, a clear log line, nothing changed', async () => {
    fake.deleteObject('services', LEASE_NAMESPACE, LEASE_SERVICE);
    const app = await replica();
    const response = await lease(app);
    assert.equal(response.status, 500);
    assert.equal(response.body.error, 'internal error');
    assert.match(app.logs.raw(), /lease Service k8s-claimer\/k8s-claimer does not exist/);
    assert.equal(fake.countRequests({ method: 'PATCH' }), 0);
  });

  test('annotations that would pass 256 KiB: 503 with Retry-After, a clear log line, nothing written', async () => {
    seedLeaseService(fake, { 'example.com/huge': 'x'.repeat(256 * 1024 - 100) });
    const app = await replica();
    const before = fake.getObject('services', LEASE_NAMESPACE, LEASE_SERVICE)?.metadata?.resourceVersion;
    const response = await app.request('POST', '/lease', { body: { max_time: 600 } });
    assert.equal(response.status, 503);
    assert.equal(response.headers.get('retry-after'), '30');
    assert.equal((await response.json()).reason, 'StoreFull');
    assert.match(app.logs.raw(), /256 KiB annotation limit/);
    assert.equal(fake.getObject('services', LEASE_NAMESPACE, LEASE_SERVICE)?.metadata?.resourceVersion, before);
    assert.equal(fake.countRequests({ method: 'PATCH' }), 0);
  });

  test('a batch in which one decision would not fit: only that one is refused (503), the others of the batch land', async () => {
    const app = await replica(poolOf(3));
    const held = await lease(app);
    assert.equal(held.status, 200);
    // Fill the Service to just under the limit: room for a release, not for another lease.
    const used = Object.entries(leaseAnnotations(fake)).reduce((sum, [key, value]) => sum + Buffer.byteLength(key) + Buffer.byteLength(value), 0);
    const service = fake.getObject('services', LEASE_NAMESPACE, LEASE_SERVICE);
    assert.ok(service);
    service.metadata.annotations = { ...service.metadata.annotations, 'example.com/huge': 'x'.repeat(256 * 1024 - used - 60) };
    fake.putObject('services', service);
    await app.services.writePath.view();
    const [released, refused] = await Promise.all([
      app.request('DELETE', `/lease/${held.body.token}`),
      app.request('POST', '/lease', { body: { max_time: 600, note: 'n'.repeat(200) } }),
    ]);
    assert.equal(released.status, 200);
    assert.equal(refused.status, 503);
    const records = Object.values(leaseAnnotations(fake)).filter((value) => value.includes('"cluster"')).map((value) => JSON.parse(value));
    assert.deepEqual(records.map((record) => record.state), ['free']);
  });

  test('waiters cannot fill the table: tickets carry a digest of the filter, the caps answer 429, everyone else still leases', async () => {
    const app = await replica(poolOf(2), undefined, { WAIT_MAX_TOTAL: '40', WAIT_MAX_PER_PRINCIPAL: '30' });
    const held = await lease(app);
    assert.equal(held.status, 200);
    const gone = new AbortController();
    const pattern = (index: number) => `^(pool-1|${'\\.'.repeat(500)}x${index})$`;
    // One client: 60 waiters, each with its own 1 KiB pattern that accepts only the leased cluster.
    const waiting = Array.from({ length: 60 }, (_, index) =>
      app.request('POST', '/lease', { body: { max_time: 60, wait: 600, cluster_regex: pattern(index) }, signal: gone.signal }).catch(() => undefined),
    );
    const deadline = Date.now() + 5_000;
    const tickets = () => Object.keys(leaseAnnotations(fake)).filter((key) => key.startsWith('lease.k8s-claimer.io/w-'));
    let settled: Array<Response | undefined> = [];
    while (Date.now() < deadline) {
      settled = await Promise.all(waiting.map((pending) => Promise.race([pending, new Promise<undefined>((resolve) => setTimeout(resolve, 5))])));
      if (settled.filter(Boolean).length + tickets().length >= 60) break;
    }
    const refusedAnswers = settled.filter((answer): answer is Response => answer !== undefined);
    assert.ok(refusedAnswers.length > 0, 'every waiter was queued: the caps did not apply');
    for (const answer of refusedAnswers) {
      assert.equal(answer.status, 429);
      assert.equal(answer.headers.get('retry-after'), '10');
    }
    assert.ok(tickets().length <= 30, `${tickets().length} tickets: the per-principal cap did not hold`);
    for (const key of tickets()) {
      const value = leaseAnnotations(fake)[key];
      assert.ok(value.length < 300, `a ticket of ${value.length} bytes`);
      assert.doesNotMatch(value, /\\\\\./);
    }
    // The filters are kept once each, within their budget: the Service keeps room for lease records.
    const filterBytes = Object.entries(leaseAnnotations(fake)).filter(([key]) => key.startsWith('lease.k8s-claimer.io/f-')).reduce((sum, [, value]) => sum + value.length, 0);
    assert.ok(filterBytes <= 32 * 1024, `${filterBytes} bytes of filters`);
    // Someone else, without waiting, gets the free cluster at once.
    const other = await lease(app);
    assert.equal(other.status, 200);
    gone.abort();
    await Promise.all(waiting);
  });

  test('an acquire whose write lands long after it failed is released when it shows up: no orphan lease for its whole max_time', async () => {
    const app = await replica(poolOf(1), undefined, { BACKEND_TIMEOUT_SECONDS: '1' });
    assert.equal((await app.request('GET', '/leases')).status, 200);
    // Every write is held by the apiserver: the claimer times out and answers 500, while the
    // first write is still queued there, to be applied later.
    const held = fake.hang((request) => request.method === 'PATCH', { applyAbandoned: true });
    const failed = await app.request('POST', '/lease', { body: { max_time: 3600 } });
    assert.equal(failed.status, 500);
    await new Promise((resolve) => setTimeout(resolve, 6_000));
    assert.equal(Object.values(leaseAnnotations(fake)).filter((value) => value.includes('"leased"')).length, 0);
    held.release();
    // The held write lands now; the claimer sees it through its watch and gives the cluster back.
    const deadline = Date.now() + 5_000;
    const leased = () => Object.values(leaseAnnotations(fake)).filter((value) => value.includes('"state":"leased"')).length;
    while (Date.now() < deadline && !(app.logs.lines.some((line) => line.event === 'lease.undone') && leased() === 0)) {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    assert.ok(app.logs.lines.some((line) => line.event === 'lease.undone'), 'the late lease was never undone');
    assert.equal(leased(), 0);
    assert.equal((await lease(app)).status, 200);
  });

  test('the apiserver refusing the annotations (422) is a 500, never a retry loop', async () => {
    const app = await replica();
    fake.failNext(1, 422, { match: (request) => request.method === 'PATCH' });
    assert.equal((await lease(app)).status, 500);
    assert.equal(fake.countRequests({ method: 'PATCH' }), 1);
  });
});
