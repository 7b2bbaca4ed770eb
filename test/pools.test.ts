// Named pools (POOLS_FILE): one server leasing from a GKE pool (the real @google-cloud/container
// client against the fake GKE over gRPC) and two static pools, chosen per request by `pool` and
// `cloud_provider`; one pool down leaves the others leasing; the pools file's errors name the
// pool and the field.

import assert from 'node:assert/strict';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, afterEach, before, describe, test } from 'node:test';
import { stringify } from 'yaml';
import { loadConfig } from '../services/config.ts';
import { PoolsFileError, readPoolsFile } from '../services/providers/pools.ts';
import { grpc, makeCluster, startFakeGke, type FakeGke } from './fakes/gke.ts';
import { poolOf, startTestApp, tempDir, type TestApp } from './support/harness.ts';

async function writePoolsFile(folder: string, document: unknown, name = 'pools.yaml'): Promise<string> {
  const path = join(folder, name);
  await writeFile(path, stringify(document));
  return path;
}

describe('the pools file', () => {
  let folder: string;
  before(async () => {
    folder = await tempDir();
  });
  after(async () => {
    await rm(folder, { recursive: true, force: true });
  });

  const cases: Array<{ what: string; pools: unknown; error: RegExp }> = [
    { what: 'an EKS pool without regions', pools: [{ name: 'lab', provider: 'static', file: 'lab.yaml' }, { name: 'eks-ci', provider: 'eks', regions: [] }], error: /pools\[1\] \(eks-ci\)\.regions: must name at least one region/ },
    { what: 'a provider nobody serves', pools: [{ name: 'x', provider: 'openstack' }], error: /pools\[0\] \(x\)\.provider: must be gke, eks, aks, static or kubeconfig/ },
    { what: 'a field the provider does not take', pools: [{ name: 'g', provider: 'gke', project: 'p', regions: ['us-east-1'] }], error: /pools\[0\] \(g\)\.regions/ },
    { what: 'a name that is not a name', pools: [{ name: 'Lab Pool', provider: 'static', file: 'lab.yaml' }], error: /pools\[0\]\.name: must be 1 to 40 lower-case/ },
    { what: 'an AKS subscription that is not a UUID', pools: [{ name: 'aks-ci', provider: 'aks', subscription: 'mine' }], error: /pools\[0\] \(aks-ci\)\.subscription: must be a subscription id/ },
    { what: 'an endpoint that is plain http off loopback', pools: [{ name: 'eks-ci', provider: 'eks', regions: ['us-east-1'], endpoint: 'http://eks.example.com' }], error: /\(eks-ci\)\.endpoint: must be an https URL/ },
    { what: 'two pools of one name', pools: [{ name: 'lab', provider: 'static', file: 'a.yaml' }, { name: 'lab', provider: 'static', file: 'b.yaml' }], error: /names pool lab twice/ },
    { what: "an EKS pool handing out the claimer's identity", pools: [{ name: 'eks-ci', provider: 'eks', regions: ['us-east-1'], credentials: 'pool' }], error: /pool eks-ci: credentials: pool would hand lessees the claimer's own AWS identity/ },
    { what: "an AKS pool handing out the claimer's identity", pools: [{ name: 'aks-ci', provider: 'aks', subscription: '00000000-0000-0000-0000-000000000000', credentials: 'pool' }], error: /own Azure identity/ },
    { what: 'no pools at all', pools: [], error: /pools: must list at least one pool/ },
  ];
  for (const { what, pools, error } of cases) {
    test(`refused, naming the pool and the field: ${what}`, async () => {
      const path = await writePoolsFile(folder, { pools });
      await assert.rejects(readPoolsFile(path), (thrown: unknown) => thrown instanceof PoolsFileError && error.test(thrown.message));
    });
  }

  test('file references are relative to the pools file; defaults filled in', async () => {
    await mkdir(join(folder, 'sub'), { recursive: true });
    const path = await writePoolsFile(join(folder, 'sub'), { pools: [{ name: 'lab', provider: 'static', file: 'lab.yaml' }, { name: 'g', provider: 'gke', project: 'p', endpoint: '127.0.0.1:1' }] });
    const { pools } = await readPoolsFile(path);
    assert.deepEqual(pools[0], { name: 'lab', provider: 'static', file: join(folder, 'sub', 'lab.yaml'), labels: {} });
    assert.equal(pools[1].provider === 'gke' && pools[1].location, '-');
  });

  test('POOLS_FILE with a variable that names a pool too is refused at start, naming both', () => {
    assert.throws(() => loadConfig({ AUTH_TOKEN: 't', POOLS_FILE: 'pools.yaml', STATIC_POOL_FILE: 'pool.yaml' }, { staticPoolFile: 'pool.yaml' }), /POOLS_FILE.*STATIC_POOL_FILE/);
    assert.throws(() => loadConfig({ AUTH_TOKEN: 't', POOLS_FILE: 'pools.yaml', GOOGLE_CLOUD_PROJECT_ID: 'p', GKE_EMULATOR_HOST: '127.0.0.1:1' }, { staticPoolFile: 'pool.yaml' }), /POOLS_FILE.*GOOGLE_CLOUD_PROJECT_ID/);
  });
});

describe('a server with several pools', () => {
  let gke: FakeGke;
  let folder: string;
  let app: TestApp;
  const gkeClusters = () => [
    makeCluster({ project: 'ci', location: 'us-central1-a', name: 'gke-1' }),
    makeCluster({ project: 'ci', location: 'us-central1-a', name: 'gke-2' }),
    makeCluster({ project: 'ci', location: 'europe-west1-b', name: 'gke-3', status: 'PROVISIONING' }),
  ];

  before(async () => {
    gke = await startFakeGke({ clusters: gkeClusters() });
    folder = await tempDir();
    // The static pools' clusters do not exist: their own credentials, no cleanup.
    const settings = { credentials: 'pool', cleanup: 'none' };
    await writeFile(join(folder, 'lab.yaml'), stringify({ ...settings, clusters: poolOf(3, 'lab').map((cluster) => ({ ...cluster, labels: { rack: 'a' } })) }));
    await writeFile(join(folder, 'spare.yaml'), stringify({ ...settings, clusters: poolOf(2, 'spare') }));
  });
  after(async () => {
    await gke.close();
    await rm(folder, { recursive: true, force: true });
  });
  afterEach(async () => {
    await app?.close();
    gke.reset();
    gke.setClusters(gkeClusters());
  });

  async function server(): Promise<TestApp> {
    const poolsFile = await writePoolsFile(folder, {
      pools: [
        // The fake GKE clusters' endpoints do not exist: GKE's own token, no cleanup.
        { name: 'gke-ci', provider: 'gke', project: 'ci', endpoint: gke.address, credentials: 'pool', cleanup: 'none', labels: { cloud: 'gcp' } },
        { name: 'lab', provider: 'static', file: 'lab.yaml', aliases: ['onprem', 'static'] },
        { name: 'spare', provider: 'static', file: 'spare.yaml' },
      ],
      labels: { team: 'ci' },
    });
    app = await startTestApp({ env: { POOLS_FILE: poolsFile, CLUSTER_CACHE_SECONDS: '30' } });
    return app;
  }

  async function lease(body: Record<string, unknown>) {
    const response = await app.request('POST', '/lease', { body: { max_time: 600, ...body } });
    return { status: response.status, body: await response.json() };
  }

  test('each pool by `pool`, and by `cloud_provider` (google, onprem, static); ids and answers name the pool', async () => {
    await server();
    const fromGke = await lease({ cloud_provider: 'google' });
    assert.equal(fromGke.status, 200);
    assert.equal(fromGke.body.pool, 'gke-ci');
    assert.match(fromGke.body.cluster_id, /^gke-ci\/us-central1-a\/gke-[12]$/);
    const fromLab = await lease({ pool: 'lab' });
    assert.equal(fromLab.body.pool, 'lab');
    assert.match(fromLab.body.cluster_id, /^lab\/static\/lab-\d$/);
    assert.equal((await lease({ cloud_provider: 'onprem' })).body.pool, 'lab');
    // Both static pools answer to `static`; the pool's own name is an alias too.
    const statics = [await lease({ cloud_provider: 'static' }), await lease({ cloud_provider: 'static' }), await lease({ cloud_provider: 'spare' })];
    assert.deepEqual(new Set(statics.map((answer) => answer.body.pool)), new Set(['lab', 'spare']));
    // Filters combine with the pool: the labels of the pool and of the file are the cluster's.
    const labelled = await lease({ labels: { cloud: 'gcp', team: 'ci' } });
    assert.equal(labelled.body.pool, 'gke-ci');
    const listed = await (await app.request('GET', '/leases')).json();
    assert.deepEqual([...new Set(listed.clusters.map((cluster: { pool: string }) => cluster.pool))].sort(), ['gke-ci', 'lab', 'spare']);
    assert.deepEqual(listed.clusters.find((cluster: { id: string }) => cluster.id === 'lab/static/lab-1').labels, { team: 'ci', rack: 'a' });
    assert.deepEqual(
      listed.pools.map((pool: { name: string; provider: string; healthy: boolean; clusters: number }) => [pool.name, pool.provider, pool.healthy, pool.clusters]),
      [['gke-ci', 'gke', true, 3], ['lab', 'static', true, 3], ['spare', 'static', true, 2]],
    );
    const metrics = await (await app.request('GET', '/metrics', { auth: null })).text();
    assert.match(metrics, /k8s_claimer_clusters\{state="leased",pool="gke-ci"\} 2/);
    assert.match(metrics, /k8s_claimer_leases_granted_total\{pool="lab"\} [23]/);
  });

  test('a pool or provider this server has not, or a pool that does not answer to the provider: 400 naming what it accepts, nothing leased', async () => {
    await server();
    const unknownPool = await lease({ pool: 'nope' });
    assert.equal(unknownPool.status, 400);
    assert.match(unknownPool.body.error, /pool: not a pool of this claimer; it has gke-ci, lab, spare/);
    const unknownProvider = await lease({ cloud_provider: 'azure' });
    assert.equal(unknownProvider.status, 400);
    assert.match(unknownProvider.body.error, /it accepts gke-ci, gke, google, lab, static, onprem, spare/);
    const mismatch = await lease({ pool: 'lab', cloud_provider: 'google' });
    assert.equal(mismatch.status, 400);
    assert.deepEqual(mismatch.body.fields, ['pool', 'cloud_provider']);
    const listed = await (await app.request('GET', '/leases')).json();
    assert.equal(listed.clusters.filter((cluster: { state: string }) => cluster.state === 'leased').length, 0);
  });

  test('every cluster of every pool leased once under a burst; the rest 409', async () => {
    await server();
    const answers = await Promise.all(Array.from({ length: 14 }, () => lease({})));
    const granted = answers.filter((answer) => answer.status === 200);
    // 2 running GKE clusters (the third is provisioning), 3 + 2 static ones.
    assert.equal(granted.length, 7);
    assert.equal(new Set(granted.map((answer) => answer.body.cluster_id)).size, 7, 'a cluster was leased twice');
    assert.ok(answers.filter((answer) => answer.status !== 200).every((answer) => answer.status === 409));
  });

  test('one pool down is one pool down: GKE failing from the start, the static pools lease, /leases says why, /readyz stays ready; GKE back, it leases', async () => {
    // Not retried by the client: the failure shows at once, as a permission problem would.
    gke.failNext(1_000, grpc.status.PERMISSION_DENIED, 'the service account may not list clusters');
    await server();
    const answer = await lease({});
    assert.equal(answer.status, 200);
    assert.notEqual(answer.body.pool, 'gke-ci');
    assert.equal((await lease({ pool: 'gke-ci' })).status, 409);
    const listed = await (await app.request('GET', '/leases')).json();
    const down = listed.pools.find((pool: { name: string }) => pool.name === 'gke-ci');
    assert.equal(down.healthy, false);
    assert.match(down.last_error, /listing failed \(7\)/);
    assert.doesNotMatch(JSON.stringify(listed), /service account may not/);
    assert.equal((await app.request('GET', '/readyz', { auth: null })).status, 200);
    assert.match(app.logs.raw(), /"pool":"gke-ci".*a pool did not list and was never listed; the other pools lease on/);
    gke.reset();
    const back = await lease({ pool: 'gke-ci' });
    assert.equal(back.status, 200);
    const healed = await (await app.request('GET', '/leases')).json();
    assert.equal(healed.pools.find((pool: { name: string }) => pool.name === 'gke-ci').healthy, true);
  });
});
