// The GKE provider through the real @google-cloud/container client, over gRPC, against a fake
// ClusterManager built from the protos the library ships; Google's token endpoint is a local
// stand-in named by the service-account key's token_uri.

import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';
import { parse } from 'yaml';
import { grpc, makeCluster, startFakeGke, type FakeGke } from './fakes/gke.ts';
import { fakeGoogleTokenEndpoint } from './support/google-account.ts';
import { rm } from 'node:fs/promises';
import { startTestApp, tempDir, type TestApp } from './support/harness.ts';
import { leaseAnnotations, seedLeaseService, startKube, writeKubeconfig } from './support/kube.ts';

const PROJECT = 'ci-project';

async function gkeApp(fake: FakeGke, env: Record<string, string> = {}): Promise<TestApp> {
  return startTestApp({
    // These clusters' endpoints do not exist: lessees get the Google token, nothing is cleaned.
    env: { GOOGLE_CLOUD_PROJECT_ID: PROJECT, GKE_EMULATOR_HOST: fake.address, LEASE_STORE: 'file', LEASE_CREDENTIALS: 'google-token', CLEANUP: 'none', ...env },
  });
}

async function lease(app: TestApp, maxTime = 60) {
  const response = await app.request('POST', '/lease', { body: { max_time: maxTime } });
  return { status: response.status, body: await response.json() };
}

describe('GKE provider', () => {
  let fake: FakeGke;
  before(async () => {
    fake = await startFakeGke();
  });
  after(() => fake.close());
  afterEach(() => {
    fake.reset();
  });

  test('only RUNNING clusters are leased; PROVISIONING, ERROR and other projects never', async () => {
    fake.setClusters([
      makeCluster({ project: PROJECT, location: 'us-central1-a', name: 'booting', status: 'PROVISIONING' }),
      makeCluster({ project: PROJECT, location: 'us-central1-a', name: 'broken', status: 'ERROR' }),
      makeCluster({ project: PROJECT, location: 'us-central1-a', name: 'ready' }),
      makeCluster({ project: 'someone-else', location: 'us-central1-a', name: 'theirs' }),
    ]);
    const app = await gkeApp(fake);
    try {
      const first = await lease(app);
      assert.equal(first.status, 200);
      assert.equal(first.body.cluster_name, 'ready');
      const second = await lease(app);
      assert.equal(second.status, 409);
      assert.equal(second.body.reason, 'AllLeased');
      assert.equal(fake.calls[0].parent, `projects/${PROJECT}/locations/-`);
    } finally {
      await app.close();
    }
  });

  test('the same name in two zones is two clusters', async () => {
    fake.setClusters([
      makeCluster({ project: PROJECT, location: 'us-central1-a', name: 'e2e' }),
      makeCluster({ project: PROJECT, location: 'europe-west1-b', name: 'e2e' }),
    ]);
    const app = await gkeApp(fake);
    try {
      const first = await lease(app);
      const second = await lease(app);
      assert.equal(first.status, 200);
      assert.equal(second.status, 200);
      assert.deepEqual([first.body.cluster_id, second.body.cluster_id].sort(), ['europe-west1-b/e2e', 'us-central1-a/e2e']);
      assert.notEqual(first.body.ip, second.body.ip);
      // Releasing one leaves the other leased.
      assert.equal((await app.request('DELETE', `/lease/${first.body.token}`)).status, 200);
      const third = await lease(app);
      assert.equal(third.body.cluster_id, first.body.cluster_id);
    } finally {
      await app.close();
    }
  });

  test('GOOGLE_CLOUD_ZONE narrows the listing to one location', async () => {
    fake.setClusters([
      makeCluster({ project: PROJECT, location: 'us-central1-a', name: 'a' }),
      makeCluster({ project: PROJECT, location: 'europe-west1-b', name: 'b' }),
    ]);
    const app = await gkeApp(fake, { GOOGLE_CLOUD_ZONE: 'europe-west1-b' });
    try {
      assert.equal((await lease(app)).body.cluster_id, 'europe-west1-b/b');
      assert.equal((await lease(app)).status, 409);
      assert.equal(fake.calls[0].parent, `projects/${PROJECT}/locations/europe-west1-b`);
    } finally {
      await app.close();
    }
  });

  test('the cluster list is cached: acquires cost no GKE call until the cache is 30 s old', async () => {
    fake.setClusters([1, 2, 3].map((index) => makeCluster({ project: PROJECT, location: 'us-east1-b', name: `c${index}` })));
    const app = await gkeApp(fake);
    try {
      await lease(app);
      await lease(app);
      assert.equal(fake.calls.length, 1);
      app.clock.advance(29);
      await lease(app);
      assert.equal(fake.calls.length, 1);
      app.clock.advance(2);
      await lease(app);
      assert.equal(fake.calls.length, 2);
    } finally {
      await app.close();
    }
  });

  test('GKE fails with a warm cache: leasing goes on from it, with a warning', async () => {
    fake.setClusters([1, 2].map((index) => makeCluster({ project: PROJECT, location: 'us-east1-b', name: `c${index}` })));
    const app = await gkeApp(fake);
    try {
      assert.equal((await lease(app)).status, 200);
      app.clock.advance(31);
      fake.failNext(1, grpc.status.INTERNAL, 'backend exploded');
      const second = await lease(app);
      assert.equal(second.status, 200);
      assert.equal(second.body.cluster_name, 'c2');
      assert.ok(app.logs.lines.some((line) => line.level === 'warn' && line.backend === 'gke'));
      assert.equal(fake.calls.at(-1)?.outcome, grpc.status.INTERNAL);
    } finally {
      await app.close();
    }
  });

  test('GKE fails with no cache: 500 with a generic body, the cause in the log', async () => {
    fake.setClusters([makeCluster({ project: PROJECT, location: 'us-east1-b', name: 'c1' })]);
    const app = await gkeApp(fake);
    try {
      fake.failNext(1, grpc.status.PERMISSION_DENIED, 'caller lacks container.clusters.list');
      const response = await lease(app);
      assert.equal(response.status, 500);
      assert.equal(response.body.error, 'internal error');
      assert.doesNotMatch(JSON.stringify(response.body), /container\.clusters\.list/);
      assert.match(app.logs.raw(), /container\.clusters\.list/);
      // Nothing was leased: the next try, with GKE back, gets the cluster.
      assert.equal((await lease(app)).status, 200);
    } finally {
      await app.close();
    }
  });

  test('a zonal outage (missingZones) keeps that zone\'s clusters from the last list: live leases stay, nothing new is leased there', async () => {
    fake.setClusters([
      makeCluster({ project: PROJECT, location: 'us-central1-a', name: 'east' }),
      makeCluster({ project: PROJECT, location: 'europe-west1-b', name: 'west' }),
    ]);
    const app = await gkeApp(fake, { CLUSTER_CACHE_SECONDS: '0' });
    try {
      const held = await lease(app, 600);
      assert.equal(held.status, 200);
      const zone = held.body.location;
      fake.setMissingZones([zone]);
      const shown = await app.request('GET', `/lease/${held.body.token}`);
      assert.equal(shown.status, 200);
      const listed = await (await app.request('GET', '/leases')).json();
      assert.deepEqual(
        listed.clusters.map((cluster: { location: string; state: string; status: string }) => [cluster.location, cluster.state, cluster.status]).sort(),
        [[zone, 'leased', 'UNREACHABLE'], [zone === 'us-central1-a' ? 'europe-west1-b' : 'us-central1-a', 'free', 'RUNNING']].sort(),
      );
      // The other zone's cluster is leased; then nothing, not the unreachable one once released.
      assert.equal((await lease(app)).status, 200);
      assert.equal((await app.request('DELETE', `/lease/${held.body.token}`)).status, 200);
      assert.equal((await lease(app)).status, 409);
      fake.setMissingZones([]);
      assert.equal((await lease(app)).status, 200);
    } finally {
      fake.setMissingZones([]);
      await app.close();
    }
  });

  test('gpu comes from node pools with accelerators; "gpu": true leases only those; cluster_tag is GKE\'s id', async () => {
    fake.setClusters([
      makeCluster({ project: PROJECT, location: 'us-east1-b', name: 'cpu-only' }),
      makeCluster({
        project: PROJECT,
        location: 'us-east1-b',
        name: 'with-gpus',
        id: 'abc123def456',
        nodePools: [{ name: 'default-pool' }, { name: 'gpus', accelerators: [{ acceleratorType: 'nvidia-l4', acceleratorCount: 2 }] }],
      }),
    ]);
    const app = await gkeApp(fake, { REGISTRY_LOCATION: 'us-docker.pkg.dev/ci-project/images' });
    try {
      const granted = await lease(app);
      assert.equal(granted.body.cluster_name, 'cpu-only');
      assert.equal(granted.body.gpu, false);
      const gpu = await app.request('POST', '/lease', { body: { max_time: 60, gpu: true } });
      const body = await gpu.json();
      assert.equal(body.cluster_name, 'with-gpus');
      assert.deepEqual([body.gpu, body.cluster_tag, body.registry_location], [true, 'abc123def456', 'us-docker.pkg.dev/ci-project/images']);
    } finally {
      await app.close();
    }
  });

  test('kubeconfig: https endpoint, the cluster CA, and a userinfo.email-only token of the service account', async () => {
    const caPem = Buffer.from('-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n').toString('base64');
    fake.setClusters([makeCluster({ project: PROJECT, location: 'us-east1-b', name: 'c1', endpoint: '127.0.3.4', caCertificate: caPem })]);
    const tokens = await fakeGoogleTokenEndpoint('ya29.lessee-access-token');
    const app = await gkeApp(fake, { GOOGLE_CLOUD_ACCOUNT_FILE_BASE64: Buffer.from(tokens.key).toString('base64') });
    try {
      const granted = await lease(app);
      assert.equal(granted.status, 200);
      assert.equal(granted.body.ip, '127.0.3.4');
      const kubeconfig = parse(Buffer.from(granted.body.kubeconfig, 'base64').toString('utf8'));
      assert.equal(kubeconfig.clusters[0].cluster.server, 'https://127.0.3.4');
      assert.equal(kubeconfig.clusters[0].cluster['certificate-authority-data'], caPem);
      assert.deepEqual(kubeconfig.users[0].user, { token: 'ya29.lessee-access-token' });
      assert.deepEqual(tokens.scopes, ['https://www.googleapis.com/auth/userinfo.email']);
      assert.equal(app.logs.raw().includes('ya29.lessee-access-token'), false);
    } finally {
      await app.close();
      await tokens.close();
    }
  });

  test('a failed token mint answers 500 and hands the cluster back', async () => {
    fake.setClusters([makeCluster({ project: PROJECT, location: 'us-east1-b', name: 'only' })]);
    const tokens = await fakeGoogleTokenEndpoint('ya29.second-try');
    tokens.answer = { status: 500 };
    const app = await gkeApp(fake, { GOOGLE_CLOUD_ACCOUNT_FILE: tokens.key });
    try {
      assert.equal((await lease(app)).status, 500);
      tokens.answer = { accessToken: 'ya29.second-try' };
      const retry = await lease(app);
      assert.equal(retry.status, 200);
      assert.equal(retry.body.cluster_name, 'only');
    } finally {
      await app.close();
      await tokens.close();
    }
  });
});

describe('a churning GKE pool with the Kubernetes store', () => {
  test('free records of clusters gone from the pool are removed after FORGET_DEPARTED_SECONDS; leased ones stay; the used bytes show', async () => {
    const fake = await startFakeGke({ clusters: Array.from({ length: 6 }, (_, index) => makeCluster({ project: PROJECT, location: 'us-central1-a', name: `old-${index}` })) });
    const kube = await startKube();
    seedLeaseService(kube, { 'example.com/owner': 'platform' });
    const folder = await tempDir();
    const app = await gkeApp(fake, {
      LEASE_STORE: 'kubernetes',
      KUBECONFIG: await writeKubeconfig(folder, kube.url),
      CLUSTER_CACHE_SECONDS: '0',
      REAP_INTERVAL_SECONDS: '1',
      FORGET_DEPARTED_SECONDS: '3600',
    });
    const records = () => Object.keys(leaseAnnotations(kube)).filter((key) => key.startsWith('lease.k8s-claimer.io/c-')).length;
    const usedBytes = async () => {
      const text = await (await app.request('GET', '/metrics', { auth: null })).text();
      return Number(/k8s_claimer_lease_store_used_bytes\{object="k8s-claimer"\} (\d+)/.exec(text)?.[1]);
    };
    const until = async (check: () => boolean | Promise<boolean>) => {
      const deadline = Date.now() + 5_000;
      while (!(await check()) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
      assert.ok(await check(), 'the reaper did not get there in time');
    };
    try {
      const leases = await Promise.all(Array.from({ length: 6 }, () => lease(app, 7200)));
      for (const held of leases.slice(1)) assert.equal((await app.request('DELETE', `/lease/${held.body.token}`)).status, 200);
      assert.equal(records(), 6);
      const before = await usedBytes();
      assert.ok(before > 0 && /k8s_claimer_lease_store_limit_bytes\{object="k8s-claimer"\} 262144/.test(await (await app.request('GET', '/metrics', { auth: null })).text()));
      // The pool turns over: every old cluster is deleted, new ones are made.
      fake.setClusters(Array.from({ length: 2 }, (_, index) => makeCluster({ project: PROJECT, location: 'us-central1-a', name: `new-${index}` })));
      await until(() => Object.values(leaseAnnotations(kube)).filter((value) => value.includes('missing_since')).length === 5);
      app.clock.advance(3_599);
      await new Promise((resolve) => setTimeout(resolve, 1_500));
      assert.equal(records(), 6);
      app.clock.advance(2);
      await until(() => records() === 1);
      assert.equal(JSON.parse(Object.entries(leaseAnnotations(kube)).find(([key]) => key.startsWith('lease.k8s-claimer.io/c-'))?.[1] ?? '{}').state, 'leased');
      await until(async () => (await usedBytes()) < before);
      assert.equal(leaseAnnotations(kube)['example.com/owner'], 'platform');
      assert.equal((await app.request('DELETE', `/lease/${leases[0].body.token}`)).status, 200);
    } finally {
      await app.close();
      await kube.close();
      await fake.close();
      await rm(folder, { recursive: true, force: true });
    }
  });
});
