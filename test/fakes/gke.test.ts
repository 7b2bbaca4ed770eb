// Self-test for the fake GKE server: talks to it with the real ClusterManagerClient over gRPC.
import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, it } from 'node:test';
import { ClusterManagerClient } from '@google-cloud/container';
import * as topLevelGrpc from '@grpc/grpc-js';
import { type FakeGke, fakeGkeClientOptions, grpc, makeCluster, startFakeGke } from './gke.ts';

const P = 'proj-a';

function seedClusters() {
  return [
    makeCluster({
      project: P,
      location: 'us-central1-a',
      name: 'gpu-1',
      resourceLabels: { pool: 'ci', 'k8s-claimer': 'true' },
      nodePools: [
        { name: 'default-pool', nodeCount: 1 },
        { name: 'gpu', nodeCount: 2, accelerators: [{ acceleratorType: 'nvidia-l4', acceleratorCount: 2 }] },
      ],
    }),
    // same cluster name in a second zone
    makeCluster({ project: P, location: 'us-central1-b', name: 'gpu-1', endpoint: '127.0.0.2' }),
    makeCluster({ project: P, location: 'europe-west4', name: 'regional', status: 'PROVISIONING' }),
    // other project: must never show up for P
    makeCluster({ project: 'proj-b', location: 'us-central1-a', name: 'other' }),
  ];
}

describe('fake GKE ClusterManager', () => {
  let fake: FakeGke;
  let client: ClusterManagerClient;

  before(async () => {
    fake = await startFakeGke({ clusters: seedClusters() });
    client = new ClusterManagerClient(fakeGkeClientOptions(fake));
  });
  after(async () => {
    await client.close();
    await fake.close();
  });
  beforeEach(() => {
    fake.reset();
    fake.setClusters(seedClusters());
  });

  it('uses a single @grpc/grpc-js copy (the one google-gax uses)', () => {
    const top = (topLevelGrpc as unknown as { default?: typeof grpc }).default ?? (topLevelGrpc as unknown as typeof grpc);
    assert.equal(top.credentials, grpc.credentials);
    assert.equal(fake.address, `127.0.0.1:${fake.port}`);
  });

  it('lists clusters of the project across all locations with "-"', async () => {
    const [res] = await client.listClusters({ parent: `projects/${P}/locations/-` });
    const ids = res.clusters!.map((c) => `${c.location}/${c.name}`).sort();
    assert.deepEqual(ids, ['europe-west4/regional', 'us-central1-a/gpu-1', 'us-central1-b/gpu-1']);
    assert.deepEqual(fake.calls.map((c) => [c.method, c.parent]), [['ListClusters', `projects/${P}/locations/-`]]);
    // no credentials are sent to the fake
    assert.equal(fake.calls[0]!.metadata.authorization, undefined);
  });

  it('returns realistic fields, status as enum name and int64 as string', async () => {
    const [res] = await client.listClusters({ parent: `projects/${P}/locations/us-central1-a` });
    assert.equal(res.clusters!.length, 1);
    const c = res.clusters![0]!;
    assert.equal(c.name, 'gpu-1');
    assert.equal(c.location, 'us-central1-a');
    assert.equal(c.zone, 'us-central1-a');
    assert.equal(c.selfLink, `https://container.googleapis.com/v1/projects/${P}/zones/us-central1-a/clusters/gpu-1`);
    assert.match(c.endpoint!, /^\d+\.\d+\.\d+\.\d+$/);
    assert.equal(c.currentMasterVersion, '1.31.5-gke.1000');
    assert.equal(c.status, 'RUNNING'); // enum name string, not a number
    assert.deepEqual(c.resourceLabels, { pool: 'ci', 'k8s-claimer': 'true' });
    assert.match(c.id!, /^[0-9a-f]{64}$/);
    const pem = Buffer.from(c.masterAuth!.clusterCaCertificate!, 'base64').toString();
    assert.match(pem, /^-----BEGIN CERTIFICATE-----\n[\s\S]+\n-----END CERTIFICATE-----\n$/);
    const gpuPool = c.nodePools!.find((p) => p.name === 'gpu')!;
    assert.deepEqual(
      gpuPool.config!.accelerators!.map((a) => [a.acceleratorType, a.acceleratorCount]),
      [['nvidia-l4', '2']], // int64 -> string with the client's default (longs: String)
    );
    assert.deepEqual(c.nodePools!.find((p) => p.name === 'default-pool')!.config!.accelerators, []);
    // unset fields come back as defaults, unset messages as null
    assert.equal(c.description, '');
    assert.equal(c.autopilot, null);
  });

  it('filters by one location; the same name in two zones is two clusters', async () => {
    const [b] = await client.listClusters({ parent: `projects/${P}/locations/us-central1-b` });
    assert.deepEqual(b.clusters!.map((c) => [c.name, c.location, c.endpoint]), [['gpu-1', 'us-central1-b', '127.0.0.2']]);

    const [all] = await client.listClusters({ parent: `projects/${P}/locations/-` });
    const twins = all.clusters!.filter((c) => c.name === 'gpu-1');
    assert.equal(twins.length, 2);
    assert.notEqual(twins[0]!.id, twins[1]!.id);
    assert.notEqual(twins[0]!.selfLink, twins[1]!.selfLink);

    const [none] = await client.listClusters({ parent: `projects/${P}/locations/asia-east1` });
    assert.deepEqual(none.clusters, []);
  });

  it('supports the legacy project_id/zone request fields', async () => {
    const [res] = await client.listClusters({ projectId: 'proj-b', zone: '-' });
    assert.deepEqual(res.clusters!.map((c) => c.name), ['other']);
    assert.equal(fake.calls[0]!.projectId, 'proj-b');
    assert.equal(fake.calls[0]!.zone, '-');
  });

  it('returns a PROVISIONING cluster with its status; clusters are live-mutable', async () => {
    const [res] = await client.listClusters({ parent: `projects/${P}/locations/europe-west4` });
    assert.deepEqual(res.clusters!.map((c) => [c.name, c.status]), [['regional', 'PROVISIONING']]);

    fake.clusters.find((c) => c.name === 'regional')!.status = 'ERROR';
    fake.clusters.push(makeCluster({ project: P, location: 'europe-west4', name: 'new', status: 'RECONCILING' }));
    const [res2] = await client.listClusters({ parent: `projects/${P}/locations/europe-west4` });
    assert.deepEqual(res2.clusters!.map((c) => [c.name, c.status]), [['regional', 'ERROR'], ['new', 'RECONCILING']]);
  });

  it('GetCluster finds a cluster and reports NOT_FOUND for a missing one', async () => {
    const [c] = await client.getCluster({ name: `projects/${P}/locations/us-central1-b/clusters/gpu-1` });
    assert.equal(c.endpoint, '127.0.0.2');

    await assert.rejects(client.getCluster({ name: `projects/${P}/locations/us-central1-c/clusters/gpu-1` }), (err: { code?: number }) => {
      assert.equal(err.code, grpc.status.NOT_FOUND);
      return true;
    });
    assert.deepEqual(fake.calls.map((c) => [c.method, c.name]), [
      ['GetCluster', `projects/${P}/locations/us-central1-b/clusters/gpu-1`],
      ['GetCluster', `projects/${P}/locations/us-central1-c/clusters/gpu-1`],
    ]);
  });

  it('failNext with a non-retried code reaches the client with that code', async () => {
    fake.failNext(1, grpc.status.INTERNAL, 'boom');
    await assert.rejects(client.listClusters({ parent: `projects/${P}/locations/-` }), (err: { code?: number; details?: string }) => {
      assert.equal(err.code, grpc.status.INTERNAL);
      assert.equal(err.details, 'boom');
      return true;
    });
    assert.equal(fake.calls.length, 1);
    // the failure was consumed
    const [res] = await client.listClusters({ parent: `projects/${P}/locations/-` });
    assert.equal(res.clusters!.length, 3);
  });

  it('UNAVAILABLE is retried by default (call succeeds); {retry: null} surfaces it', async () => {
    fake.failNext(1, grpc.status.UNAVAILABLE);
    const [res] = await client.listClusters({ parent: `projects/${P}/locations/-` });
    assert.equal(res.clusters!.length, 3);
    assert.deepEqual(fake.calls.map((c) => c.outcome), [grpc.status.UNAVAILABLE, 'ok']);

    fake.clearCalls();
    fake.failNext(1, grpc.status.UNAVAILABLE);
    await assert.rejects(client.listClusters({ parent: `projects/${P}/locations/-` }, { retry: null }), (err: { code?: number }) => {
      assert.equal(err.code, grpc.status.UNAVAILABLE);
      return true;
    });
    assert.equal(fake.calls.length, 1);
  });

  it('latency delays responses', async () => {
    fake.setLatency(150);
    const t0 = Date.now();
    await client.listClusters({ parent: `projects/${P}/locations/-` });
    assert.ok(Date.now() - t0 >= 140, `took ${Date.now() - t0} ms`);
  });

  it('hang holds responses until unhang, or until the client deadline', async () => {
    fake.hang();
    await assert.rejects(
      client.listClusters({ parent: `projects/${P}/locations/-` }, { timeout: 150, retry: null }),
      (err: { code?: number }) => {
        assert.equal(err.code, grpc.status.DEADLINE_EXCEEDED);
        return true;
      },
    );
    const pending = client.listClusters({ parent: `projects/${P}/locations/-` });
    setTimeout(() => fake.unhang(), 50);
    const [res] = await pending;
    assert.equal(res.clusters!.length, 3);
  });

  it('operations: PENDING until the clock moves, DONE after their duration; regional links and sizes', async () => {
    const ops = await startFakeGke({ now: () => 0, operationDurations: { create: 100 } });
    const opsClient = new ClusterManagerClient(fakeGkeClientOptions(ops));
    try {
      const [started] = await opsClient.createCluster({ parent: `projects/${P}/locations/europe-west4`, cluster: { name: 'reg', initialNodeCount: 2 } });
      assert.deepEqual([started.status, started.operationType, started.location], ['PENDING', 'CREATE_CLUSTER', 'europe-west4']);
      assert.equal(started.targetLink, `https://container.googleapis.com/v1/projects/${P}/locations/europe-west4/clusters/reg`);
      const name = `projects/${P}/locations/europe-west4/operations/${started.name}`;
      assert.equal((await opsClient.getOperation({ name }))[0].status, 'PENDING');
      ops.advance(99);
      assert.equal((await opsClient.getOperation({ name }))[0].status, 'RUNNING');
      ops.advance(1);
      const [done] = await opsClient.getOperation({ name });
      assert.deepEqual([done.status, done.startTime, done.endTime, done.error], ['DONE', '1970-01-01T00:00:00.000Z', '1970-01-01T00:00:00.100Z', null]);
      const [cluster] = await opsClient.getCluster({ name: `projects/${P}/locations/europe-west4/clusters/reg` });
      assert.deepEqual([cluster.status, cluster.currentNodeCount, cluster.nodePools!.map((p) => p.name)], ['RUNNING', 6, ['default-pool']]);

      // ListOperations: by location, '-' for all, a region's zones included; other projects never.
      await opsClient.createCluster({ parent: 'projects/proj-b/locations/europe-west4-a', cluster: { name: 'zonal', initialNodeCount: 1 } });
      const [all] = await opsClient.listOperations({ parent: `projects/${P}/locations/-` });
      assert.deepEqual(all.operations!.map((o) => o.name), [started.name]);
      const [region] = await opsClient.listOperations({ parent: 'projects/proj-b/locations/europe-west4' });
      assert.deepEqual(region.operations!.map((o) => [o.status, o.zone]), [['PENDING', 'europe-west4-a']]);
      await assert.rejects(opsClient.listOperations({ projectId: P, zone: '-' }), (err: { code?: number }) => err.code === grpc.status.INVALID_ARGUMENT);

      // A failed delete leaves the cluster in ERROR.
      ops.failNextOperation({ kind: 'delete', code: grpc.status.INTERNAL, message: 'disk detach failed' });
      const [deleting] = await opsClient.deleteCluster({ name: `projects/${P}/locations/europe-west4/clusters/reg` });
      ops.advance(100);
      const [failed] = await opsClient.getOperation({ name: `projects/${P}/locations/europe-west4/operations/${deleting.name}` });
      assert.deepEqual([failed.status, failed.error?.code, failed.error?.message, failed.statusMessage], ['DONE', grpc.status.INTERNAL, 'disk detach failed', 'disk detach failed']);
      assert.equal(ops.clusters.find((c) => c.name === 'reg')!.status, 'ERROR');
      assert.equal(ops.maxConcurrentOperations, 2);
    } finally {
      await opsClient.close();
      await ops.close();
    }
  });

  it('other methods are UNIMPLEMENTED', async () => {
    await assert.rejects(client.getServerConfig({ name: `projects/${P}/locations/us-central1-a` }), (err: { code?: number }) => {
      assert.equal(err.code, grpc.status.UNIMPLEMENTED);
      return true;
    });
  });
});
