// The GKE provider through the real @google-cloud/container client, over gRPC, against a fake
// ClusterManager built from the protos the library ships; Google's token endpoint via nock.

import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';
import nock from 'nock';
import { parse } from 'yaml';
import { grpc, makeCluster, startFakeGke, type FakeGke } from './fakes/gke.ts';
import { fakeGoogleTokenEndpoint, testServiceAccount } from './support/google-account.ts';
import { startTestApp, type TestApp } from './support/harness.ts';

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
    nock.cleanAll();
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
    fake.setClusters([makeCluster({ project: PROJECT, location: 'us-east1-b', name: 'c1', endpoint: '34.1.2.3', caCertificate: caPem })]);
    nock.disableNetConnect();
    nock.enableNetConnect('127.0.0.1');
    const tokens = fakeGoogleTokenEndpoint('ya29.lessee-access-token');
    const app = await gkeApp(fake, { GOOGLE_CLOUD_ACCOUNT_FILE_BASE64: Buffer.from(testServiceAccount()).toString('base64') });
    try {
      const granted = await lease(app);
      assert.equal(granted.status, 200);
      assert.equal(granted.body.ip, '34.1.2.3');
      const kubeconfig = parse(Buffer.from(granted.body.kubeconfig, 'base64').toString('utf8'));
      assert.equal(kubeconfig.clusters[0].cluster.server, 'https://34.1.2.3');
      assert.equal(kubeconfig.clusters[0].cluster['certificate-authority-data'], caPem);
      assert.deepEqual(kubeconfig.users[0].user, { token: 'ya29.lessee-access-token' });
      assert.deepEqual(tokens.scopes, ['https://www.googleapis.com/auth/userinfo.email']);
      assert.equal(app.logs.raw().includes('ya29.lessee-access-token'), false);
    } finally {
      await app.close();
      tokens.done();
      nock.enableNetConnect();
    }
  });

  test('a failed token mint answers 500 and hands the cluster back', async () => {
    fake.setClusters([makeCluster({ project: PROJECT, location: 'us-east1-b', name: 'only' })]);
    nock.disableNetConnect();
    nock.enableNetConnect('127.0.0.1');
    nock('https://oauth2.googleapis.com').post('/token').reply(500, { error: 'backend_error' });
    const app = await gkeApp(fake, { GOOGLE_CLOUD_ACCOUNT_FILE: testServiceAccount() });
    try {
      assert.equal((await lease(app)).status, 500);
      fakeGoogleTokenEndpoint('ya29.second-try');
      const retry = await lease(app);
      assert.equal(retry.status, 200);
      assert.equal(retry.body.cluster_name, 'only');
    } finally {
      await app.close();
      nock.cleanAll();
      nock.enableNetConnect();
    }
  });
});
