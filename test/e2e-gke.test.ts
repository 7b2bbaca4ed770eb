// The production configuration end to end: two real server processes in GKE mode (fake GKE
// through GKE_EMULATOR_HOST) sharing one fake kube-apiserver (through KUBECONFIG).

import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { after, before, test } from 'node:test';
import { makeCluster, startFakeGke, type FakeGke } from './fakes/gke.ts';
import type { FakeKubeApiserver } from './fakes/kube-apiserver.ts';
import { tempDir } from './support/harness.ts';
import { leaseAnnotations, seedLeaseService, startKube, writeKubeconfig } from './support/kube.ts';
import { startServerProcess, type ServerProcess } from './support/server-process.ts';

const TOKEN = 'gke-e2e-token';
let gke: FakeGke;
let kube: FakeKubeApiserver;
let folder: string;
const servers: ServerProcess[] = [];

before(async () => {
  gke = await startFakeGke({
    clusters: Array.from({ length: 6 }, (_, index) =>
      makeCluster({ project: 'e2e', location: index % 2 ? 'us-central1-a' : 'europe-west1-b', name: `pool-${Math.floor(index / 2)}` }),
    ),
  });
  kube = await startKube();
  seedLeaseService(kube, { 'example.com/keep-me': 'yes' });
  folder = await tempDir();
  const kubeconfig = await writeKubeconfig(folder, kube.url);
  // The fake GKE clusters' endpoints do not exist: no per-lease credentials, no cleanup here.
  const env = { AUTH_TOKEN: TOKEN, GOOGLE_CLOUD_PROJECT_ID: 'e2e', GKE_EMULATOR_HOST: gke.address, KUBECONFIG: kubeconfig, LEASE_CREDENTIALS: 'google-token', CLEANUP: 'none' };
  servers.push(
    ...(await Promise.all([
      startServerProcess(process.execPath, ['--import', 'tsx', 'main.ts'], env),
      startServerProcess(process.execPath, ['--import', 'tsx', 'main.ts'], env),
    ])),
  );
});

after(async () => {
  await Promise.all(servers.map((server) => server.stop()));
  await gke.close();
  await kube.close();
  await rm(folder, { recursive: true, force: true });
});

async function call(server: ServerProcess, method: string, path: string, body?: unknown) {
  const response = await fetch(`${server.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${TOKEN}` },
    ...(body !== undefined && { body: JSON.stringify(body) }),
  });
  return { status: response.status, body: await response.json() };
}

test('two replicas in GKE mode: the whole seed API, never a double lease, foreign annotations kept', async () => {
  const attempts = await Promise.all(
    Array.from({ length: 16 }, (_, index) => call(servers[index % 2], 'POST', '/lease', { max_time: 120 })),
  );
  const granted = attempts.filter((attempt) => attempt.status === 200);
  assert.equal(granted.length, 6);
  assert.equal(attempts.filter((attempt) => attempt.status === 409).length, 10);
  assert.equal(new Set(granted.map((attempt) => attempt.body.cluster_id)).size, 6);

  // Released through the other replica than the one that granted it.
  const [first] = granted;
  assert.equal((await call(servers[1], 'DELETE', `/lease/${first.body.token}`)).status, 200);
  assert.equal((await call(servers[0], 'DELETE', `/lease/${first.body.token}`)).status, 409);
  const again = await call(servers[0], 'POST', '/lease', { max_time: 60 });
  assert.equal(again.status, 200);
  assert.equal(again.body.cluster_id, first.body.cluster_id);

  assert.equal(leaseAnnotations(kube)['example.com/keep-me'], 'yes');
  for (const server of servers) assert.equal(server.output().includes(TOKEN), false);
});
