// Failing backends: 3 replicas on one fake kube-apiserver and one fake GKE, with random 500s,
// 409 storms, slow answers, dropped answers and connection resets injected while at least 1,000
// acquires, releases and extends run. Afterwards: no cluster was ever leased twice at once,
// every lease granted is in the store until released, every release is gone, no unhandled
// rejection, every replica healthy. And a hung apiserver or GKE cannot hold a request forever.

import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { after, before, describe, test } from 'node:test';
import { grpc, makeCluster, startFakeGke, type FakeGke } from './fakes/gke.ts';
import type { FakeKubeApiserver } from './fakes/kube-apiserver.ts';
import { startTestApp, tempDir, type TestApp } from './support/harness.ts';
import { LEASE_NAMESPACE, LEASE_SERVICE, leaseAnnotations, seedLeaseService, startKube, writeKubeconfig } from './support/kube.ts';
import { hashToken } from '../services/tokens.ts';

const CLUSTERS = 12;
const OPERATIONS = Number(process.env.FAULT_OPS ?? 1_200);

let kube: FakeKubeApiserver;
let gke: FakeGke;
let folder: string;
let replicas: TestApp[] = [];
const unhandled: unknown[] = [];
const onUnhandled = (reason: unknown) => unhandled.push(reason);

before(async () => {
  process.on('unhandledRejection', onUnhandled);
  kube = await startKube();
  seedLeaseService(kube, { 'example.com/owner': 'platform-team' });
  gke = await startFakeGke({
    clusters: Array.from({ length: CLUSTERS }, (_, index) => makeCluster({ project: 'faults', location: index % 2 ? 'us-east1-b' : 'europe-west1-c', name: `pool-${Math.floor(index / 2)}` })),
  });
  folder = await tempDir();
  const env = {
    GOOGLE_CLOUD_PROJECT_ID: 'faults',
    GKE_EMULATOR_HOST: gke.address,
    LEASE_STORE: 'kubernetes',
    KUBECONFIG: await writeKubeconfig(folder, kube.url),
    // The fake GKE clusters' endpoints do not exist: no per-lease credentials, no cleanup.
    LEASE_CREDENTIALS: 'google-token',
    CLEANUP: 'none',
    CLUSTER_CACHE_SECONDS: '1',
    BACKEND_TIMEOUT_SECONDS: '1',
  };
  replicas = [];
  for (let index = 0; index < 3; index++) replicas.push(await startTestApp({ env, ...(replicas[0] && { clock: replicas[0].clock }) }));
});

after(async () => {
  process.off('unhandledRejection', onUnhandled);
  for (const replica of replicas) await replica.close();
  await gke.close();
  await kube.close();
  await rm(folder, { recursive: true, force: true });
});

interface Held {
  token: string;
  /** A release or extend of it got an unclear answer (5xx): it may or may not still hold. */
  uncertain: boolean;
  /** A worker is releasing or extending it right now: the others leave it alone. */
  busy: boolean;
}

const pick = <T>(items: readonly T[]): T => items[Math.floor(Math.random() * items.length)];

describe('fault injection', () => {
  test(`${OPERATIONS} operations on 3 replicas under random backend faults: no double lease, nothing lost`, async () => {
    const held = new Map<string, Held>();
    const released = new Set<string>();
    const statuses = new Map<number, number>();
    const faults: Record<string, number> = {};
    const violations: string[] = [];
    const note = (status: number) => statuses.set(status, (statuses.get(status) ?? 0) + 1);

    const inject = (name: string) => (faults[name] = (faults[name] ?? 0) + 1);

    // Faults hit requests at random: each backend request has a chance to fail in some way,
    // and every so often a storm of conflicts or a slow spell comes on top.
    const chance = (name: string, probability: number) => (request: { method: string; isWatch?: boolean }) => {
      if (request.isWatch || Math.random() >= probability) return false;
      inject(name);
      return true;
    };
    const isWrite = (request: { method: string }) => request.method !== 'GET';
    const armed = process.env.NO_CHAOS
      ? []
      : [
          kube.failNext(1e9, 500, { match: (request) => isWrite(request) && chance('apiserver 500', 0.06)(request) }),
          kube.failNext(1e9, 429, { match: (request) => isWrite(request) && chance('apiserver 429', 0.03)(request), retryAfterSeconds: 1 }),
          kube.failNext(1e9, 503, { match: (request) => !isWrite(request) && chance('apiserver 503 on read', 0.03)(request) }),
          kube.resetNext(1e9, chance('connection reset', 0.03)),
          kube.dropAnswerNext(1e9, (request) => isWrite(request) && chance('answer lost after the write', 0.03)(request)),
          kube.conflictNextWrite({ count: 1e9, match: chance('conflict (another writer)', 0.08) }),
        ];
    let running = armed.length > 0;
    const chaos = (async () => {
      while (running) {
        const roll = Math.random();
        if (roll < 0.25) (inject('409 storm'), kube.conflictNextWrite({ count: 3 + Math.floor(Math.random() * 5) }));
        else if (roll < 0.5) (inject('slow apiserver'), kube.setLatency(Math.floor(Math.random() * 30)));
        else if (roll < 0.75) (inject('GKE error'), gke.failNext(1, pick([grpc.status.INTERNAL, grpc.status.UNAVAILABLE, grpc.status.PERMISSION_DENIED])));
        else (inject('slow GKE'), gke.setLatency(Math.floor(Math.random() * 60)));
        await new Promise((resolve) => setTimeout(resolve, 150));
      }
    })();

    let done = 0;
    const worker = async () => {
      while (done < OPERATIONS) {
        done += 1;
        const replica = pick(replicas);
        const mine = [...held.entries()].filter(([, lease]) => !lease.busy);
        const roll = Math.random();
        if (roll < 0.5 || mine.length === 0) {
          const response = await replica.request('POST', '/lease', { body: { max_time: 3600 } });
          note(response.status);
          if (response.status === 200) {
            const body = await response.json();
            const previous = held.get(body.cluster_id);
            // A previous lease still being released may have been released already: not a double lease.
            if (previous && !previous.uncertain && !previous.busy) violations.push(`${body.cluster_id} leased twice`);
            held.set(body.cluster_id, { token: body.token, uncertain: false, busy: false });
          } else await response.body?.cancel();
        } else if (roll < 0.8) {
          const [clusterId, lease] = pick(mine);
          lease.busy = true;
          const response = await replica.request('DELETE', `/lease/${lease.token}`);
          note(response.status);
          await response.body?.cancel();
          // Still busy until the model knows the answer: nobody may pick a lease being released.
          lease.busy = false;
          if (response.status === 200) {
            // Only if the cluster was not leased again before this answer came back.
            if (held.get(clusterId) === lease) held.delete(clusterId);
            released.add(lease.token);
          } else if (response.status === 409 && !lease.uncertain) violations.push(`release of a live lease on ${clusterId} answered 409`);
          else if (response.status >= 500) lease.uncertain = true;
        } else {
          const [clusterId, lease] = pick(mine);
          lease.busy = true;
          const response = await replica.request('PATCH', `/lease/${lease.token}`, { body: { max_time: 3600 } });
          note(response.status);
          await response.body?.cancel();
          lease.busy = false;
          if (response.status === 409 && !lease.uncertain) violations.push(`extend of a live lease on ${clusterId} answered 409`);
        }
      }
    };
    await Promise.all(Array.from({ length: 12 }, worker));
    running = false;
    await chaos;
    for (const fault of armed) fault.cancel();
    kube.setLatency(0);
    gke.setLatency(0);
    // Let the last unclear writes settle: a client that got a 5xx has no claim either way.
    await new Promise((resolve) => setTimeout(resolve, 200));

    // The store agrees with what the clients were told.
    const records = Object.entries(leaseAnnotations(kube))
      .filter(([key]) => key.startsWith('lease.k8s-claimer.io/c-'))
      .map(([, value]) => JSON.parse(value));
    const leasedNow = new Map(records.filter((record) => record.state === 'leased').map((record) => [record.lease.token_sha256, record.cluster]));
    for (const [clusterId, lease] of held) {
      if (!lease.uncertain) assert.equal(leasedNow.get(hashToken(lease.token)), clusterId, `the lease on ${clusterId} is not in the store`);
    }
    for (const token of released) assert.equal(leasedNow.has(hashToken(token)), false, 'a released lease is still in the store');
    assert.deepEqual(violations, []);
    assert.deepEqual(unhandled, []);
    assert.equal(leaseAnnotations(kube)['example.com/owner'], 'platform-team');
    for (const replica of replicas) {
      assert.equal((await replica.request('GET', '/healthz', { auth: null })).status, 200);
      assert.equal((await replica.request('GET', '/readyz', { auth: null })).status, 200);
    }
    const granted = statuses.get(200) ?? 0;
    assert.ok(granted > OPERATIONS / 4, `only ${granted} answers were 200 (${JSON.stringify(Object.fromEntries(statuses))}): the claimer did not keep working under faults`);
    // For SECURITY.md's figures.
    process.stdout.write(`# fault run: ${done} operations, statuses ${JSON.stringify(Object.fromEntries(statuses))}, faults ${JSON.stringify(faults)}\n`);
  });

  test('a hung apiserver cannot hold a request forever: the deadline answers it', async () => {
    const hung = kube.hang((request) => request.resource === 'services' && request.name === LEASE_SERVICE && !request.isWatch);
    try {
      // A fresh read is needed: a refusal is never decided on a cached table.
      const started = Date.now();
      const response = await replicas[0].request('GET', '/leases');
      assert.ok(response.status >= 500);
      assert.equal((await response.json()).error, 'internal error');
      assert.ok(Date.now() - started < 20_000);
    } finally {
      hung.release();
    }
    assert.equal(kube.getObject('services', LEASE_NAMESPACE, LEASE_SERVICE)?.metadata?.name, LEASE_SERVICE);
  });

  test('a hung GKE cannot hold a request forever either; a warm cache keeps leasing', async () => {
    gke.hang();
    try {
      await new Promise((resolve) => setTimeout(resolve, 1_100));
      const started = Date.now();
      const response = await replicas[1].request('GET', '/leases');
      assert.equal(response.status, 200, 'the cached cluster list answers');
      await response.body?.cancel();
      assert.ok(Date.now() - started < 20_000);
    } finally {
      gke.unhang();
    }
  });
});
