// Managed pools end to end: a server with a POOLS_FILE holding one managed GKE pool, its runner
// making, recycling, hibernating, waking and deleting clusters through the real
// @google-cloud/container client against the fake GKE (operations of a few hundred ms).

import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, afterEach, before, describe, test } from 'node:test';
import { stringify } from 'yaml';
import { readPoolsFile, PoolsFileError } from '../services/providers/pools.ts';
import { MANAGED_LABEL } from '../services/providers/gke-operations.ts';
import { makeCluster, startFakeGke, type FakeGke } from './fakes/gke.ts';
import { ManualClock, startTestApp, tempDir, type TestApp } from './support/harness.ts';

const POOL = 'mp';
const ZONE = 'us-central1-a';
const TEMPLATE = { nodePools: [{ name: 'default-pool', initialNodeCount: 2 }] };

/** The write path's clock is the real one: claims and idle times run out as they would. */
class RealClock extends ManualClock {
  override now(): number {
    return Date.now();
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function until<T>(what: string, check: () => T | undefined | false | Promise<T | undefined | false>, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

describe('the pools file: managed', () => {
  test('a managed gke pool is read; location "-" and managed on another provider are refused', async () => {
    const folder = await tempDir();
    const write = async (pools: unknown[]) => {
      const path = join(folder, 'pools.yaml');
      await writeFile(path, stringify({ pools }));
      return path;
    };
    const good = await readPoolsFile(await write([{ name: POOL, provider: 'gke', project: 'ci', location: ZONE, endpoint: '127.0.0.1:1', managed: { template: TEMPLATE, min_ready: 1, max_size: 2 } }]));
    assert.equal(good.pools[0].provider === 'gke' && good.pools[0].managed?.max_size, 2);
    await assert.rejects(readPoolsFile(await write([{ name: POOL, provider: 'gke', project: 'ci', endpoint: '127.0.0.1:1', managed: { template: TEMPLATE, min_ready: 1, max_size: 2 } }])), (error: unknown) => error instanceof PoolsFileError && /one location/.test(error.message));
    await assert.rejects(readPoolsFile(await write([{ name: 'lab', provider: 'static', file: 'x.yaml', managed: { template: TEMPLATE, min_ready: 1, max_size: 2 } }])), PoolsFileError);
    await assert.rejects(readPoolsFile(await write([{ name: POOL, provider: 'gke', project: 'ci', location: ZONE, endpoint: '127.0.0.1:1', managed: { template: TEMPLATE, min_ready: 3, max_size: 2 } }])), /max_size/);
  });
});

describe('a managed pool', () => {
  let gke: FakeGke;
  let folder: string;
  let apps: TestApp[] = [];
  let sampler: NodeJS.Timeout | undefined;
  let most = 0;

  const outsider = () => makeCluster({ project: 'ci', location: ZONE, name: 'hand-made' });
  const ours = () => gke.clusters.filter((cluster) => cluster.resourceLabels?.[MANAGED_LABEL] === POOL);

  before(async () => {
    gke = await startFakeGke({ clusters: [outsider()], operationDurations: { create: 400, delete: 150, resize: 150 } });
  });
  after(async () => {
    await gke.close();
  });
  afterEach(async () => {
    clearInterval(sampler);
    sampler = undefined;
    for (const app of apps) await app.close();
    apps = [];
    gke.reset();
    gke.setClusters([outsider()]);
    most = 0;
  });

  async function server(managed: Record<string, unknown>, options: { folder?: string; claimMs?: number } = {}): Promise<TestApp> {
    folder = options.folder ?? (await tempDir());
    const poolsFile = join(folder, 'pools.yaml');
    await writeFile(
      poolsFile,
      stringify({ pools: [{ name: POOL, provider: 'gke', project: 'ci', location: ZONE, endpoint: gke.address, credentials: 'pool', cleanup: 'none', managed: { template: TEMPLATE, ...managed } }] }),
    );
    const app = await startTestApp({
      folder,
      clock: new RealClock(),
      env: { POOLS_FILE: poolsFile, CLUSTER_CACHE_SECONDS: '1' },
      waiting: { pollMs: 50 },
      managed: { intervalMs: 50, claimMs: options.claimMs ?? 1_000, pollMs: 30 },
    });
    apps.push(app);
    sampler ??= setInterval(() => {
      most = Math.max(most, ours().length);
    }, 5);
    return app;
  }

  async function leases(app: TestApp) {
    return (await app.request('GET', '/leases')).json();
  }

  const freeCount = async (app: TestApp) => (await leases(app)).clusters.filter((cluster: { state: string; status: string }) => cluster.state === 'free' && cluster.status === 'RUNNING').length;

  test('an empty pool (min_ready 0): a waiting request gets a cluster made for it; one that would not wait gets 409 AllLeased with Retry-After, never NoMatchingCluster', async () => {
    const app = await server({ min_ready: 0, max_size: 2, max_concurrent: 2 });
    await sleep(300);
    assert.equal(ours().length, 0, 'min_ready 0 makes nothing by itself');
    const now = await app.request('POST', '/lease', { body: { max_time: 600 } });
    assert.equal(now.status, 409);
    assert.equal((await now.json()).reason, 'AllLeased');
    assert.ok(Number(now.headers.get('retry-after')) >= 1);
    // A filter no cluster the pool could make accepts is still told at once.
    const never = await app.request('POST', '/lease', { body: { max_time: 600, wait: 30, labels: { team: 'nobody' } } });
    assert.equal((await never.json()).reason, 'NoMatchingCluster');
    const waited = await app.request('POST', '/lease', { body: { max_time: 600, wait: 30 } });
    assert.equal(waited.status, 200);
    const body = await waited.json();
    assert.equal(body.pool, POOL);
    assert.equal(ours().length, 1, 'one cluster made for the one waiter');
    assert.ok(ours()[0].name?.startsWith(`${POOL}-`));
    assert.ok(most <= 2);
  });

  test('keeps min_ready ready from empty, and no more; /leases shows target, size and max_size; the unlabelled cluster is never touched', async () => {
    const app = await server({ min_ready: 2, max_size: 4, max_concurrent: 2 });
    await until('two free clusters', async () => (await freeCount(app)) === 2);
    await sleep(600);
    assert.equal(ours().length, 2);
    assert.equal(most, 2);
    const body = await leases(app);
    const pool = body.pools.find((entry: { name: string }) => entry.name === POOL);
    assert.deepEqual([pool.target, pool.size, pool.max_size], [{ min_ready: 2, running_min: 0 }, 2, 4]);
    assert.ok(body.clusters.every((cluster: { id: string }) => !cluster.id.includes('hand-made')), 'the unlabelled cluster is not the pool\'s');
    assert.ok(gke.clusters.some((cluster) => cluster.name === 'hand-made'));
    assert.equal(gke.operations.filter((op) => op.cluster === 'hand-made').length, 0);
    const metrics = await (await app.request('GET', '/metrics')).text();
    assert.match(metrics, /k8s_claimer_managed_operation_seconds_count\{pool="mp",kind="create",outcome="ok"\} 2/);
  });

  test('a burst of waiters grows the pool to max_size and never beyond, max_concurrent holds, each waiter served once; the surplus goes afterwards', async () => {
    const app = await server({ min_ready: 1, max_size: 3, max_concurrent: 2 });
    await until('a free cluster', async () => (await freeCount(app)) === 1);
    const served: string[] = [];
    const holders = Array.from({ length: 5 }, async () => {
      const response = await app.request('POST', '/lease', { body: { max_time: 600, wait: 60, pool: POOL } });
      const body = await response.json();
      assert.equal(response.status, 200, JSON.stringify(body));
      served.push(body.cluster_id);
      // Held for a while, so that the pool must grow for the others.
      await sleep(700);
      assert.equal((await app.request('DELETE', `/lease/${body.token}`)).status, 200);
    });
    await Promise.all(holders);
    assert.equal(served.length, 5);
    assert.ok(most <= 3, `at most max_size clusters at once, saw ${most}`);
    assert.equal(most, 3, 'the burst grew the pool to max_size');
    assert.ok(gke.maxConcurrentOperations <= 2, `max_concurrent 2, saw ${gke.maxConcurrentOperations}`);
    // No cluster leased twice at once: 3 clusters, 5 leases of 700 ms each.
    assert.ok(new Set(served).size <= 3);
    // Without hibernate_after the surplus goes as soon as it is idle.
    await until('the pool back at min_ready', () => ours().length === 1);
    await sleep(300);
    assert.equal(ours().length, 1);
    assert.ok(gke.clusters.some((cluster) => cluster.name === 'hand-made'));
  });

  test('after a burst the surplus is deleted only once idle hibernate_after', async () => {
    const app = await server({ min_ready: 1, max_size: 2, running_min: 1, hibernate_after: 2 });
    await until('a free cluster', async () => (await freeCount(app)) === 1);
    const granted = await Promise.all(
      [0, 1].map(async () => {
        const response = await app.request('POST', '/lease', { body: { max_time: 600, wait: 30, pool: POOL } });
        assert.equal(response.status, 200);
        return response.json();
      }),
    );
    assert.notEqual(granted[0].cluster_id, granted[1].cluster_id);
    assert.equal(ours().length, 2);
    for (const lease of granted) assert.equal((await app.request('DELETE', `/lease/${lease.token}`)).status, 200);
    const released = Date.now();
    await sleep(1_000);
    assert.equal(ours().length, 2, 'not deleted before hibernate_after');
    await until('the surplus deleted', () => ours().length === 1);
    assert.ok(Date.now() - released >= 2_000);
    assert.ok(most <= 2);
  });

  test('a create that fails in GKE is shown on its cluster (last_error, retry_at) and backed off; another is made meanwhile, within max_size', async () => {
    gke.failNextOperation({ kind: 'create', message: 'the zone does not have enough resources (stockout)' });
    const app = await server({ min_ready: 1, max_size: 2, max_concurrent: 2 });
    await until('a free cluster', async () => (await freeCount(app)) === 1);
    const listed = await leases(app);
    const failed = listed.clusters.find((cluster: { managed?: { last_error: string | null } }) => cluster.managed?.last_error);
    assert.ok(failed, JSON.stringify(listed.clusters));
    assert.match(failed.managed.last_error, /stockout/);
    assert.ok(Date.parse(failed.managed.retry_at) > Date.now(), 'backed off');
    assert.equal(failed.state, 'provisioning');
    assert.ok(most <= 2);
    assert.equal(gke.operations.filter((op) => op.kind === 'create').length, 2);
  });

  test('a labelled cluster without a record is adopted and counts toward min_ready', async () => {
    gke.clusters.push(makeCluster({ project: 'ci', location: ZONE, name: 'mp-kept', resourceLabels: { [MANAGED_LABEL]: POOL } }));
    const app = await server({ min_ready: 1, max_size: 2 });
    await until('the adopted cluster free', async () => (await freeCount(app)) === 1);
    await sleep(500);
    assert.equal(gke.operations.filter((op) => op.kind === 'create').length, 0);
    const response = await app.request('POST', '/lease', { body: { max_time: 600, pool: POOL } });
    assert.equal((await response.json()).cluster_id, `${POOL}/${ZONE}/mp-kept`);
  });

  test('recycle_after 1: each lease gets a fresh cluster, the used one is deleted', async () => {
    const app = await server({ min_ready: 1, max_size: 2, recycle_after: 1 });
    const seen: string[] = [];
    for (let round = 0; round < 3; round++) {
      await until('a free cluster', async () => (await freeCount(app)) >= 1);
      const response = await app.request('POST', '/lease', { body: { max_time: 600, pool: POOL } });
      const body = await response.json();
      assert.equal(response.status, 200, JSON.stringify({ round, body, leases: await leases(app), gke: ours().map((c) => [c.name, c.status]) }));
      assert.ok(!seen.includes(body.cluster_id), `a fresh cluster each time: ${body.cluster_id} again`);
      seen.push(body.cluster_id);
      assert.equal((await app.request('DELETE', `/lease/${body.token}`)).status, 200);
    }
    const names = seen.map((id) => id.split('/').at(-1));
    await until('the used clusters deleted', () => ours().every((cluster) => !names.includes(cluster.name ?? '')));
    assert.ok(most <= 2);
    assert.ok(gke.clusters.some((cluster) => cluster.name === 'hand-made'));
  });

  test('hibernates an idle cluster beyond running_min and wakes it for a waiting request', async () => {
    const app = await server({ min_ready: 1, max_size: 1, running_min: 0, hibernate_after: 1 });
    const record = async () => (await leases(app)).clusters.find((cluster: { pool: string }) => cluster.pool === POOL);
    const hibernated = await until('a hibernated cluster', async () => ((await record())?.state === 'hibernated' ? await record() : undefined));
    const name = hibernated.id.split('/').at(-1);
    await until('node pools at zero', () => ours()[0]?.nodePools?.every((pool) => Number(pool.initialNodeCount) === 0));
    // Not leased while hibernated: a request without wait is refused with a Retry-After of a wake.
    const refused = await app.request('POST', '/lease', { body: { max_time: 600, pool: POOL } });
    assert.equal(refused.status, 409);
    assert.ok(Number(refused.headers.get('retry-after')) <= 120, `Retry-After ${refused.headers.get('retry-after')}`);
    const response = await app.request('POST', '/lease', { body: { max_time: 600, wait: 30, pool: POOL } });
    const body = await response.json();
    assert.equal(response.status, 200, JSON.stringify(body));
    assert.equal(body.cluster_id, hibernated.id);
    assert.ok(ours()[0]?.nodePools?.every((pool) => Number(pool.initialNodeCount) === 2), 'woken to the template\'s node counts');
    assert.equal(ours().length, 1);
    assert.ok(gke.operations.some((op) => op.kind === 'resize' && op.cluster === name && op.nodeCount === 2));
  });

  test('the manager stopped in the middle of a create: a second replica takes over and follows it to its end, no duplicate', async () => {
    gke.setOperationDurations({ create: 2_000 });
    try {
      const first = await server({ min_ready: 1, max_size: 3 }, { claimMs: 500 });
      await until('a create under way', () => gke.operations.some((op) => op.kind === 'create'));
      await sleep(200);
      await first.close();
      apps = apps.filter((app) => app !== first);
      assert.equal(ours().length, 1);
      assert.notEqual(ours()[0].status, 'RUNNING');
      const second = await server({ min_ready: 1, max_size: 3 }, { folder, claimMs: 500 });
      await until('the cluster free', async () => (await freeCount(second)) === 1);
      assert.equal(gke.operations.filter((op) => op.kind === 'create').length, 1, 'one create, followed by the second replica');
      assert.equal(ours().length, 1);
      assert.match(second.logs.raw(), /following an operation another replica started/);
    } finally {
      gke.setOperationDurations({ create: 400 });
    }
  });
});
