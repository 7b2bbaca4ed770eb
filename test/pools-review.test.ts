// Named pools (POOLS_FILE) where they broke under review: credentials and cleanup of one pool
// applied to another's clusters, a key quoted in an error, a slow pool holding up the others, a
// waiter's choice of pools lost, a lease of a pool down at restart answered "not found", two
// pools leasing one cloud cluster twice, a pool named like another provider's alias.

import assert from 'node:assert/strict';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, afterEach, before, describe, test } from 'node:test';
import { stringify } from 'yaml';
import { LeaseService } from '../services/leases.ts';
import { createLogger } from '../services/logger.ts';
import { PoolSet, type Pool } from '../services/providers/pools.ts';
import type { Cluster, ClusterProvider } from '../services/providers/types.ts';
import { grpc, makeCluster, startFakeGke, type FakeGke } from './fakes/gke.ts';
import { ManualClock, poolOf, startTestApp, tempDir, type TestApp } from './support/harness.ts';

const silent = createLogger('silent');

function fakeCluster(id: string): Cluster {
  const [location, name] = id.split('/') as [string, string];
  return { id, name, location, endpoint: '127.9.9.9', server: 'https://127.9.9.9:6443', labels: {}, version: '1.31.0', status: 'RUNNING', tag: id, gpu: false, registryLocation: null };
}

/** A provider whose list is whatever the test says it is now. */
function listedProvider(kind: string, initial: Cluster[]): ClusterProvider & { clusters: Cluster[] } {
  return {
    kind,
    aliases: [kind],
    clusters: initial,
    async list() {
      return this.clusters;
    },
    async kubeconfigFor() {
      return '';
    },
    async adminKubeconfigFor() {
      return '';
    },
  };
}

function pool(name: string, provider: ClusterProvider, aliases: string[], prefixIds = true): Pool {
  return { name, kind: provider.kind, provider, aliases, labels: {}, prefixIds };
}

async function poll<T>(read: () => Promise<T>, done: (value: T) => boolean, ms = 8_000): Promise<T> {
  const deadline = Date.now() + ms;
  let value = await read();
  while (!done(value) && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 50));
    value = await read();
  }
  return value;
}

describe('pools review: credentials and cleanup per pool', () => {
  let folder: string;
  let app: TestApp | undefined;
  before(async () => {
    folder = await tempDir();
  });
  after(async () => {
    await rm(folder, { recursive: true, force: true });
  });
  afterEach(async () => {
    await app?.close();
    app = undefined;
  });

  test('a lease of a `credentials: pool, cleanup: none` pool, on a server whose other pool gives per-lease credentials, records no per-lease credentials and ends free without the janitor reaching into its cluster', async () => {
    // `lab` is like the example pool: its clusters are not to be reached into (pool credentials, no cleanup).
    await writeFile(join(folder, 'lab.yaml'), stringify({ credentials: 'pool', cleanup: 'none', clusters: poolOf(1, 'lab').map((cluster) => ({ ...cluster, server: 'https://127.9.9.9:6443' })) }));
    // `ci` gives per-lease credentials (the default).
    await writeFile(join(folder, 'ci.yaml'), stringify({ cleanup: 'none', clusters: poolOf(1, 'ci').map((cluster) => ({ ...cluster, server: 'https://127.9.9.8:6443' })) }));
    const poolsFile = join(folder, 'pools.yaml');
    await writeFile(poolsFile, stringify({ pools: [{ name: 'lab', provider: 'static', file: 'lab.yaml' }, { name: 'ci', provider: 'static', file: 'ci.yaml' }] }));
    app = await startTestApp({ folder, env: { POOLS_FILE: poolsFile }, janitor: { pollMs: 50 } });
    const granted = await app.request('POST', '/lease', { body: { max_time: 600, pool: 'lab' } });
    assert.equal(granted.status, 200);
    const body = await granted.json();
    assert.equal((await app.request('DELETE', `/lease/${body.token}`)).status, 200);
    const lab = await poll(
      async () => (await (await (app as TestApp).request('GET', '/leases')).json()).clusters.find((cluster: { id: string }) => cluster.id === 'lab/static/lab-1'),
      (cluster) => cluster.state !== 'dirty' && cluster.state !== 'cleaning',
      3_000,
    );
    assert.equal(lab.state, 'free', `a cleanup: none, credentials: pool cluster ended ${lab.state} (${JSON.stringify(lab.cleanup)})`);
    // The lessee got the pool file's credentials: nothing per lease to tell of, or to revoke.
    assert.equal(body.credentials, null, 'a pool-credentials lease is described as holding per-lease credentials');
    assert.doesNotMatch(app.logs.raw(), /cluster cleanup failed/);
  });
});

describe('pools review: secrets in errors', () => {
  test('a GKE key pasted into key_file (instead of its path) is not quoted in the start-up error', async () => {
    const folder = await tempDir();
    try {
      const secret = '-----BEGIN PRIVATE KEY-----MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7SECRET-----END PRIVATE KEY-----';
      const key = JSON.stringify({ type: 'service_account', project_id: 'ci', private_key: secret, client_email: 'claimer@ci.iam.gserviceaccount.com' });
      const poolsFile = join(folder, 'pools.yaml');
      await writeFile(poolsFile, stringify({ pools: [{ name: 'gke-ci', provider: 'gke', project: 'ci', key_file: key }] }));
      await assert.rejects(startTestApp({ folder, env: { POOLS_FILE: poolsFile } }), (error: Error) => {
        assert.doesNotMatch(error.message, /SECRET/, `the start-up error quotes the key: ${error.message.slice(0, 160)}…`);
        return true;
      });
    } finally {
      await rm(folder, { recursive: true, force: true });
    }
  });
});

describe('pools review: the pool set', () => {
  test('the originals map forgets clusters that left their pool (GKE managed pools create and delete clusters all day)', async () => {
    const provider = listedProvider('static', [fakeCluster('lab/c-0')]);
    const set = new PoolSet([pool('lab', provider, ['lab'])], silent, new ManualClock());
    for (let round = 1; round <= 50; round++) {
      provider.clusters = [fakeCluster(`lab/c-${round}`)];
      await set.list();
    }
    const originals = (set as unknown as { originals: Map<string, Cluster> }).originals;
    assert.equal(originals.size, 1, `PoolSet.originals holds ${originals.size} clusters for a pool of one`);
  });

  test('a pool whose listing hangs does not hold up the other pools (acquire, /leases and /readyz all wait on PoolSet.list)', async () => {
    const lab = listedProvider('static', [fakeCluster('static/lab-1')]);
    // An EKS account under throttling: ListClusters, then DescribeCluster per cluster, with no deadline on the whole.
    const stuck: ClusterProvider = { ...listedProvider('eks', []), list: () => new Promise<Cluster[]>(() => undefined) };
    // The deadline is the server's (twice BACKEND_TIMEOUT_SECONDS); shortened here.
    const set = new PoolSet([pool('lab', lab, ['static']), pool('eks-ci', stuck, ['eks', 'aws'])], silent, new ManualClock(), 300);
    let timer: NodeJS.Timeout | undefined;
    const listed = await Promise.race([set.list(), new Promise<'hung'>((resolve) => { timer = setTimeout(() => resolve('hung'), 2_000); })]);
    clearTimeout(timer);
    assert.notEqual(listed, 'hung', 'PoolSet.list() waits for the slowest pool, without a deadline: every pool stops leasing');
    assert.deepEqual((listed as Cluster[]).map((cluster) => cluster.id), ['lab/static/lab-1']);
    const stuckHealth = set.poolHealth().find((health) => health.name === 'eks-ci');
    assert.equal(stuckHealth?.healthy, false);
    assert.match(stuckHealth?.lastError ?? '', /listing failed \(timeout\)/);
  });

  test('a ticket asking for cloud_provider google keeps asking for it when a pool is added (the stored filter says which pools)', () => {
    // One pool: poolsFor answers undefined ("any pool"), and that is what a waiter's ticket stores.
    // A pools file's one pool (the environment's one pool keeps its tickets as they always were).
    const one = new PoolSet([pool('gke', listedProvider('gke', []), ['gke', 'google'])], silent, new ManualClock());
    const service = new LeaseService(undefined as never, one, undefined as never, undefined as never, undefined as never, { maxLeaseSeconds: 3600, groupRoles: {}, defaultGroup: 'g' }, silent, undefined as never);
    assert.deepEqual(service.poolsFor(undefined, 'google'), ['gke'], 'cloud_provider google was dropped from the filter: a replica with one more pool reads the ticket as "any pool"');
  });
});

describe('pools review: a GKE pool next to static pools', () => {
  let gke: FakeGke;
  let folder: string;
  let app: TestApp | undefined;
  const gkeClusters = () => [makeCluster({ project: 'ci', location: 'us-central1-a', name: 'gke-1' }), makeCluster({ project: 'ci', location: 'us-central1-a', name: 'gke-2' })];

  before(async () => {
    gke = await startFakeGke({ clusters: gkeClusters() });
  });
  after(async () => {
    await gke.close();
  });
  afterEach(async () => {
    await app?.close();
    app = undefined;
    gke.reset();
    gke.setClusters(gkeClusters());
    if (folder) await rm(folder, { recursive: true, force: true });
  });

  async function poolsFile(pools: unknown[]): Promise<string> {
    folder = await tempDir();
    await writeFile(join(folder, 'lab.yaml'), stringify({ credentials: 'pool', cleanup: 'none', clusters: poolOf(1, 'lab') }));
    const path = join(folder, 'pools.yaml');
    await writeFile(path, stringify({ pools }));
    return path;
  }

  test('a live lease of a pool that is down when the claimer restarts is still found (GET and PATCH do not answer LeaseNotFound)', async () => {
    const file = await poolsFile([
      { name: 'gke-ci', provider: 'gke', project: 'ci', endpoint: gke.address, credentials: 'pool', cleanup: 'none' },
      { name: 'lab', provider: 'static', file: 'lab.yaml' },
    ]);
    const clock = new ManualClock();
    app = await startTestApp({ folder, clock, env: { POOLS_FILE: file } });
    const granted = await app.request('POST', '/lease', { body: { max_time: 600, pool: 'gke-ci' } });
    assert.equal(granted.status, 200);
    const { token } = await granted.json();
    await app.close();
    // GKE refuses the listing while the claimer restarts (a rotated key, an outage).
    gke.failNext(1_000, grpc.status.PERMISSION_DENIED, 'the key was rotated');
    app = await startTestApp({ folder, clock, env: { POOLS_FILE: file } });
    const got = await app.request('GET', `/lease/${token}`);
    const gotBody = await got.json();
    const extended = await app.request('PATCH', `/lease/${token}`, { body: { max_time: 900 } });
    const extendedBody = await extended.json();
    // GKE back: the very same lease is there, live, all along.
    gke.reset();
    clock.advance(60);
    assert.equal((await app.request('GET', `/lease/${token}`)).status, 200, 'the lease was live all along');
    assert.notEqual(gotBody.reason, 'LeaseNotFound', `GET /lease of a live lease of a pool that did not list: ${got.status} ${JSON.stringify(gotBody)}`);
    assert.notEqual(extendedBody.reason, 'LeaseNotFound', `PATCH /lease: ${extended.status} ${JSON.stringify(extendedBody)}: the CI job takes its cluster as lost`);
  });

  test('two pools that list the same GKE cluster do not lease it twice (one pool for a zone, one for the whole project)', async () => {
    const file = await poolsFile([
      { name: 'gke-zone', provider: 'gke', project: 'ci', location: 'us-central1-a', endpoint: gke.address, credentials: 'pool', cleanup: 'none' },
      { name: 'gke-all', provider: 'gke', project: 'ci', endpoint: gke.address, credentials: 'pool', cleanup: 'none' },
    ]);
    app = await startTestApp({ folder, env: { POOLS_FILE: file } });
    const names: string[] = [];
    for (let i = 0; i < 4; i++) {
      const answer = await app.request('POST', '/lease', { body: { max_time: 600 } });
      if (answer.status === 200) names.push((await answer.json()).cluster_name);
    }
    assert.equal(names.length, new Set(names).size, `two GKE clusters, ${names.length} leases: ${names.sort().join(', ')}`);
  });

  test('a static pool named `google` does not answer the original CLI\'s cloud_provider google, meant for GKE', async () => {
    const file = await poolsFile([
      { name: 'gke-ci', provider: 'gke', project: 'ci', endpoint: gke.address, credentials: 'pool', cleanup: 'none' },
      { name: 'google', provider: 'static', file: 'lab.yaml' },
    ]);
    // Refused at start, saying why and what to do.
    await assert.rejects(startTestApp({ folder, env: { POOLS_FILE: file } }), /pool google: its name is what clients send as cloud_provider for gke pools; name it otherwise, or list "google" in its aliases/);
    // Meant: listed in its aliases, it answers google beside the GKE pool.
    const meant = await poolsFile([
      { name: 'gke-ci', provider: 'gke', project: 'ci', endpoint: gke.address, credentials: 'pool', cleanup: 'none' },
      { name: 'google', provider: 'static', file: 'lab.yaml', aliases: ['google'] },
    ]);
    app = await startTestApp({ folder, env: { POOLS_FILE: meant } });
    const pools: string[] = [];
    for (let i = 0; i < 3; i++) {
      const answer = await app.request('POST', '/lease', { body: { max_time: 600, cloud_provider: 'google' } });
      if (answer.status === 200) pools.push((await answer.json()).pool);
    }
    assert.deepEqual(pools.sort(), ['gke-ci', 'gke-ci', 'google']);
  });
});
