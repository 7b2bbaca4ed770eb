// Many CI jobs at once: three replicas share one fake kube-apiserver, 60 concurrent acquires
// on a 40-cluster pool. Group commit must grant exactly 40 distinct clusters and refuse 20.

import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { after, before, test } from 'node:test';
import type { FakeKubeApiserver } from './fakes/kube-apiserver.ts';
import { poolOf, startTestApp, tempDir, ManualClock, type TestApp } from './support/harness.ts';
import { leaseAnnotations, seedLeaseService, startKube, writeKubeconfig } from './support/kube.ts';
import { hashToken } from '../services/tokens.ts';

let kube: FakeKubeApiserver;
let folder: string;
const replicas: TestApp[] = [];

before(async () => {
  kube = await startKube();
  kube.setLatency(2);
  seedLeaseService(kube);
  folder = await tempDir();
  const kubeconfig = await writeKubeconfig(folder, kube.url);
  const clock = new ManualClock();
  for (let index = 0; index < 3; index++) {
    replicas.push(await startTestApp({ clusters: poolOf(40), clock, env: { LEASE_STORE: 'kubernetes', KUBECONFIG: kubeconfig } }));
  }
});

after(async () => {
  for (const replica of replicas) await replica.close();
  await kube.close();
  await rm(folder, { recursive: true, force: true });
});

test('3 replicas x 60 concurrent acquires on 40 clusters: 40 granted, 20 refused, no 500, records agree', async () => {
  const responses = await Promise.all(
    Array.from({ length: 60 }, (_, index) =>
      replicas[index % 3].request('POST', '/lease', { body: { max_time: 600 } }).then(async (response) => ({
        status: response.status,
        body: await response.json(),
      })),
    ),
  );
  const granted = responses.filter((response) => response.status === 200);
  assert.equal(granted.length, 40);
  assert.equal(responses.filter((response) => response.status === 409).length, 20);
  assert.equal(responses.filter((response) => response.status >= 500).length, 0);
  assert.equal(new Set(granted.map((response) => response.body.cluster_id)).size, 40);

  // The Service holds exactly the granted leases, each under its own token's hash.
  const records = Object.entries(leaseAnnotations(kube))
    .filter(([key]) => key.startsWith('lease.k8s-claimer.io/'))
    .map(([, value]) => JSON.parse(value));
  const stored = new Map(records.filter((record) => record.state === 'leased').map((record) => [record.cluster, record.lease.token_sha256]));
  assert.equal(stored.size, 40);
  for (const response of granted) assert.equal(stored.get(response.body.cluster_id), hashToken(response.body.token));
});
