// The lease table past one object's 256 KiB: the Service and its shard ConfigMaps, through the
// real @kubernetes/client-node against the fake kube-apiserver (which refuses an object whose
// annotations pass 256 KiB, as the real one does).

import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { after, afterEach, before, beforeEach, describe, test } from 'node:test';
import { acquire } from '../services/lease-table.ts';
import { createLogger } from '../services/logger.ts';
import { StaticProvider } from '../services/providers/static.ts';
import { KubernetesLeaseStore, kubeConfigFrom } from '../services/store/kubernetes.ts';
import { annotationKeyFor, annotationsSize, homeOf, shardName } from '../services/store/shards.ts';
import { tableChanges } from '../services/table-changes.ts';
import { hashToken } from '../services/tokens.ts';
import { matchRequest, type FakeKubeApiserver } from './fakes/kube-apiserver.ts';
import { poolOf, startTestApp, tempDir, writePool, ManualClock, type TestApp } from './support/harness.ts';
import { LEASE_NAMESPACE, LEASE_SERVICE, clusterRecords, leaseAnnotations, leaseObjects, seedLeaseService, seedShards, startKube, writeKubeconfig } from './support/kube.ts';

const LAYOUT = 'lease.k8s-claimer.io/layout';
const EPOCH = 'lease.k8s-claimer.io/epoch';

describe('sharded lease table', () => {
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
  beforeEach(() => {
    seedLeaseService(fake);
    seedShards(fake, { shards: 16, tickets: 2 });
  });
  afterEach(async () => {
    while (apps.length) await apps.pop()?.close();
    fake.deleteObject('services', LEASE_NAMESPACE, LEASE_SERVICE);
    for (const object of fake.listObjects('configmaps', LEASE_NAMESPACE)) fake.deleteObject('configmaps', LEASE_NAMESPACE, object.metadata.name as string);
    fake.resetCounts();
  });

  async function replica(clusters: ReturnType<typeof poolOf>, env: Record<string, string> = {}, clock?: ManualClock): Promise<TestApp> {
    const app = await startTestApp({ clusters, clock, keeperIntervalMs: 50, env: { LEASE_STORE: 'kubernetes', KUBECONFIG: kubeconfig, ...env } });
    apps.push(app);
    return app;
  }

  async function until(what: string, check: () => boolean, ms = 10_000): Promise<void> {
    const deadline = Date.now() + ms;
    while (!check()) {
      if (Date.now() > deadline) assert.fail(`timed out waiting until ${what}`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }

  const layout = () => {
    const text = leaseAnnotations(fake)[LAYOUT];
    return text ? JSON.parse(text) : undefined;
  };

  async function lease(app: TestApp, body: Record<string, unknown> = {}) {
    const response = await app.request('POST', '/lease', { body: { max_time: 600, ...body } });
    return { status: response.status, body: await response.json() };
  }

  test('a small pool looks exactly as before: records in the Service, no layout, no ConfigMap touched', async () => {
    const app = await replica(poolOf(20), { LEASE_SHARDS: '16' });
    for (let index = 0; index < 5; index++) assert.equal((await lease(app)).status, 200);
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.equal(layout(), undefined);
    assert.equal(fake.countRequests({ resource: 'configmaps' }), 0);
    assert.equal(clusterRecords(fake).filter(({ object }) => object === LEASE_SERVICE).length, 5);
  });

  test('a pool past one object: the table grows into shard ConfigMaps, each record in the shard its id hashes to, one write per acquire', async () => {
    const app = await replica(poolOf(1500), { LEASE_SHARDS: '16' });
    await until('the layout is in place', () => layout()?.shards > 1 && layout()?.from === undefined);
    const shards = layout().shards;
    assert.ok(shards >= 6 && shards <= 16, `${shards} shards`);
    fake.resetCounts();
    // Named clusters, so that the records fall where their ids hash (one replica alone would
    // fill its preferred shard first).
    for (let index = 0; index < 60; index++) assert.equal((await lease(app, { cluster_regex: `^pool-${index * 25 + 1}$` })).status, 200);
    // Steady state: one compare-and-swap per acquire, on the one object that holds its record.
    assert.equal(fake.countRequests({ method: 'PATCH' }), 60);
    const records = clusterRecords(fake);
    assert.equal(records.length, 60);
    for (const { object, record } of records) assert.equal(object, shardName(LEASE_SERVICE, 'clusters', homeOf(record.cluster, shards)));
    assert.ok(new Set(records.map(({ object }) => object)).size > 3, 'records spread over the shards');
  });

  test('upgrade: records a single Service held keep their leases while the table grows under load; no cluster is granted twice', async () => {
    const pool = poolOf(900);
    const old = await replica(pool);
    const tokens = new Map<string, string>();
    const note = 'n'.repeat(256);
    for (let index = 0; index < 300; index++) {
      const granted = await lease(old, { note });
      assert.equal(granted.status, 200);
      tokens.set(granted.body.token, granted.body.cluster_id);
    }
    assert.equal(layout(), undefined);
    assert.equal(clusterRecords(fake).length, 300);
    // A rolling update: the new configuration starts beside the old replica, which then stops;
    // jobs keep asking all along.
    const grown = [await replica(pool, { LEASE_SHARDS: '16' }), await replica(pool, { LEASE_SHARDS: '16' })];
    const asking = Promise.all(Array.from({ length: 200 }, (_, index) => lease([old, ...grown][index % 3], { note })));
    const third = await replica(pool, { LEASE_SHARDS: '16' });
    const during = await asking;
    for (const answer of during) {
      assert.equal(answer.status, 200, JSON.stringify(answer.body));
      tokens.set(answer.body.token, answer.body.cluster_id);
    }
    await old.close();
    apps.splice(apps.indexOf(old), 1);
    const serving = [...grown, third];
    await until('the records are all in their shards', () => layout()?.shards > 1 && layout()?.from === undefined, 20_000);
    const shards = layout().shards;
    const records = clusterRecords(fake);
    assert.equal(new Set(records.map(({ record }) => record.cluster)).size, records.length, 'a cluster has two records');
    assert.equal(records.length, 500);
    for (const { object, record } of records) assert.equal(object, shardName(LEASE_SERVICE, 'clusters', homeOf(record.cluster, shards)));
    assert.equal(new Set(tokens.values()).size, 500, 'a cluster was granted twice');
    // Every lease answers to its token on every replica, and releases.
    let index = 0;
    for (const [token, clusterId] of tokens) {
      const app = serving[index++ % 3];
      const response = await app.request('GET', `/lease/${token}`);
      assert.equal(response.status, 200);
      assert.equal((await response.json()).id, clusterId);
    }
    for (const token of [...tokens.keys()].slice(0, 50)) assert.equal((await third.request('DELETE', `/lease/${token}`)).status, 200);
    const stored = new Map(clusterRecords(fake).filter(({ record }) => record.state === 'leased').map(({ record }) => [record.cluster, record.lease?.token_sha256]));
    assert.equal(stored.size, 450);
    for (const [token, clusterId] of [...tokens].slice(50)) assert.equal(stored.get(clusterId), hashToken(token));
  });

  test('a writer that still has the old layout is fenced: its write to an old shard is refused, and it decides again where the record now lives', async () => {
    const logger = createLogger('silent');
    const options = { namespace: LEASE_NAMESPACE, serviceName: LEASE_SERVICE, logger };
    const provider = await StaticProvider.load(await writePool(folder, poolOf(400)));
    const clusters = await provider.list();
    // Two shards, as a deployment grown once before has.
    const keeperOf = (maxShards: number, poolSize: number) => KubernetesLeaseStore.fromKubeConfig(kubeConfigFrom(kubeconfig), { ...options, maxShards, poolSize: async () => poolSize, keeperIntervalMs: 20 });
    const two = keeperOf(2, 2_000);
    const stopTwo = two.maintain();
    await until('two shards', () => layout()?.shards === 2 && layout()?.from === undefined);
    stopTwo();
    // The stale writer reads the table now, and decides on it later.
    const stale = keeperOf(2, 0);
    const base = await stale.read();
    const target = clusters.find((cluster) => homeOf(cluster.id, 2) === 1 && homeOf(cluster.id, 4) >= 2);
    assert.ok(target, 'a cluster of shard 1 that moves on growing to 4');
    // Another replica grows the table to 4 shards. Shard 1 holds no record, so only the fence changes it.
    const four = keeperOf(4, 2_000);
    const stopFour = four.maintain();
    await until('four shards', () => layout()?.shards === 4 && layout()?.from === undefined);
    stopFour();
    const decide = (snapshot: typeof base) => {
      const context = { now: Date.now(), clusters: clusters.filter((cluster) => cluster.id === target.id), endState: 'free' as const };
      const outcome = acquire({ tokenHash: hashToken('stale-writer'), durationSeconds: 600 })(snapshot.table, context);
      return [{ changes: tableChanges(snapshot.table, outcome.table), table: outcome.table }];
    };
    const refused = await stale.commit(base, decide(base));
    assert.equal(refused.outcomes[0].kind, 'conflict');
    assert.equal(clusterRecords(fake).length, 0, 'the stale write landed');
    // Decided again on what it reads now: the record goes where the new layout puts it.
    const fresh = await stale.read();
    const landed = await stale.commit(fresh, decide(fresh));
    assert.equal(landed.outcomes[0].kind, 'written');
    assert.deepEqual(clusterRecords(fake).map(({ object }) => object), [shardName(LEASE_SERVICE, 'clusters', homeOf(target.id, 4))]);
  });

  test('the reaper writes each shard on its own: a conflict on one shard loses no expiry from the log, and only the objects holding them are written', async () => {
    const clock = new ManualClock();
    const app = await replica(poolOf(1500), { LEASE_SHARDS: '16', REAP_INTERVAL_SECONDS: '1' }, clock);
    await until('the layout is in place', () => layout()?.shards > 1 && layout()?.from === undefined);
    for (let index = 0; index < 60; index++) assert.equal((await lease(app, { max_time: 60, cluster_regex: `^pool-${index * 25 + 1}$` })).status, 200);
    const holding = new Set(clusterRecords(fake).map(({ object }) => object));
    assert.ok(holding.size > 3);
    fake.resetCounts();
    // Another writer gets to one shard first, just as the reaper writes it.
    fake.conflictNextWrite({ resource: 'configmaps' });
    clock.advance(61);
    await until('every lease has ended', () => clusterRecords(fake).every(({ record }) => record.state !== 'leased'));
    await new Promise((resolve) => setTimeout(resolve, 1_200));
    const expired = app.logs.lines.filter((line) => line.event === 'lease.expired').map((line) => line.cluster);
    assert.equal(expired.length, 60);
    assert.equal(new Set(expired).size, 60);
    const written = new Set(fake.requests.filter((request) => request.method === 'PATCH').map((request) => request.name));
    assert.deepEqual([...written].filter((name) => !holding.has(name as string)), []);
  });

  test('tickets live in their own shards, beside their filter and heartbeat; waiters on three replicas are served in arrival order', async () => {
    const clock = new ManualClock();
    const pool = poolOf(4);
    const env = { LEASE_TICKET_SHARDS: '2' };
    const replicas = [await replica(pool, env, clock), await replica(pool, env, clock), await replica(pool, env, clock)];
    await until('the ticket shards are in the layout', () => layout()?.tickets === 2);
    const held = [];
    for (let index = 0; index < 4; index++) held.push((await lease(replicas[0])).body.token);
    const tickets = () => leaseObjects(fake).flatMap(({ name, annotations }) => Object.keys(annotations).filter((key) => key.includes('/w-')).map((key) => ({ name, key })));
    const order: number[] = [];
    const waiting: Array<Promise<unknown>> = [];
    for (let index = 0; index < 12; index++) {
      const app = replicas[index % 3];
      waiting.push(
        app.request('POST', '/lease', { body: { max_time: 600, wait: 300 } }).then(async (response) => {
          assert.equal(response.status, 200);
          order.push(index);
          return response.json();
        }),
      );
      // Each waiter joins after the one before it is in the queue.
      await until(`waiter ${index} queued`, () => tickets().length === index + 1);
    }
    const where = tickets();
    assert.ok(where.every(({ name }) => name.startsWith(`${LEASE_SERVICE}-tickets-`)), 'tickets are in the ticket shards');
    assert.equal(new Set(where.map(({ name }) => name)).size, 2, 'both ticket shards hold tickets');
    for (const { name, annotations } of leaseObjects(fake).filter(({ name }) => name.includes('-tickets-'))) {
      // Whole on its own: each ticket's filter and heartbeat are in the same object.
      for (const [key, value] of Object.entries(annotations).filter(([key]) => key.includes('/w-'))) {
        const ticket = JSON.parse(value);
        assert.ok(`lease.k8s-claimer.io/f-${ticket.filter}` in annotations, `${name}: ${key} without its filter`);
        assert.ok(`lease.k8s-claimer.io/r-${ticket.replica}` in annotations, `${name}: ${key} without its heartbeat`);
      }
    }
    // Release one cluster at a time: the oldest waiter gets it, whichever replica it waits on.
    const granted: string[] = [];
    for (let round = 0; round < 12; round++) {
      const token = held.shift() as string;
      assert.equal((await replicas[(round + 1) % 3].request('DELETE', `/lease/${token}`)).status, 200);
      await until(`waiter ${round} served`, () => order.length === round + 1);
      const body = (await waiting[order[round]]) as { token: string };
      held.push(body.token);
      granted.push(body.token);
    }
    assert.deepEqual(order, Array.from({ length: 12 }, (_, index) => index));
    await until('the served tickets are gone', () => tickets().length === 0);
  });

  test('a full shard: 503 with the object named in the log; /readyz and the metrics show every object\'s fullness', async () => {
    // Somebody else's annotation leaves the Service no room for one more record.
    seedLeaseService(fake, { 'example.com/huge': 'x'.repeat(256 * 1024 - 300) });
    const app = await replica(poolOf(3));
    const refused = await lease(app, { note: 'n'.repeat(256) });
    assert.equal(refused.status, 503);
    assert.equal(refused.body.reason, 'StoreFull');
    assert.match(app.logs.raw(), /"object":"Service k8s-claimer\/k8s-claimer".*256 KiB annotation limit/);
    const ready = await (await app.request('GET', '/readyz', { auth: null })).json();
    assert.equal(ready.status, 'ready');
    assert.deepEqual(ready.store.map((object: { object: string }) => object.object), [LEASE_SERVICE]);
    assert.ok(ready.store[0].used_percent > 99);
    const metrics = await (await app.request('GET', '/metrics', { auth: null })).text();
    assert.match(metrics, /k8s_claimer_lease_store_used_bytes\{object="k8s-claimer"\} \d{6}/);
  });

  test('/readyz and the metrics list every shard of a grown table', async () => {
    const app = await replica(poolOf(1500), { LEASE_SHARDS: '16', LEASE_TICKET_SHARDS: '2' });
    await until('the layout is in place', () => layout()?.shards > 1 && layout()?.from === undefined);
    assert.equal((await lease(app)).status, 200);
    const ready = await (await app.request('GET', '/readyz', { auth: null })).json();
    const objects = ready.store.map((object: { object: string }) => object.object);
    assert.equal(objects.length, layout().shards + 2);
    assert.ok(objects.includes(`${LEASE_SERVICE}-shard-1`) && objects.includes(`${LEASE_SERVICE}-tickets-2`));
    const metrics = await (await app.request('GET', '/metrics', { auth: null })).text();
    for (const object of objects) assert.match(metrics, new RegExp(`k8s_claimer_lease_store_used_bytes\\{object="${object}"\\}`));
  });

  /**
   * A table caught in the middle of a move from 2 shards to 4: a lease of a cluster whose record
   * moves from shard 1, still in shard 1, every old shard fenced, nothing moved yet.
   */
  async function midMove() {
    const logger = createLogger('silent');
    const options = { namespace: LEASE_NAMESPACE, serviceName: LEASE_SERVICE, logger };
    const clusters = await (await StaticProvider.load(await writePool(folder, poolOf(400)))).list();
    const storeOf = (maxShards: number) => KubernetesLeaseStore.fromKubeConfig(kubeConfigFrom(kubeconfig), { ...options, maxShards, poolSize: async () => 2_000, keeperIntervalMs: 20 });
    const two = storeOf(2);
    const stopTwo = two.maintain();
    await until('two shards', () => layout()?.shards === 2 && layout()?.from === undefined);
    stopTwo();
    const target = clusters.find((cluster) => homeOf(cluster.id, 2) === 1 && homeOf(cluster.id, 4) >= 2);
    assert.ok(target);
    const base = await two.read();
    const context = { now: Date.now(), clusters: [target], endState: 'free' as const };
    const outcome = acquire({ tokenHash: hashToken('moving-lease'), durationSeconds: 600 })(base.table, context);
    assert.equal((await two.commit(base, [{ changes: tableChanges(base.table, outcome.table), table: outcome.table }])).outcomes[0].kind, 'written');
    const epoch = layout().epoch + 1;
    const annotations = (name: string) => fake.getObject(name === LEASE_SERVICE ? 'services' : 'configmaps', LEASE_NAMESPACE, name)?.metadata.annotations ?? {};
    const edit = (name: string, change: (annotations: Record<string, string>) => void) => {
      const object = structuredClone(fake.getObject(name === LEASE_SERVICE ? 'services' : 'configmaps', LEASE_NAMESPACE, name));
      assert.ok(object);
      object.metadata.annotations = { ...(object.metadata.annotations ?? {}) };
      change(object.metadata.annotations);
      delete object.metadata.resourceVersion;
      fake.putObject(name === LEASE_SERVICE ? 'services' : 'configmaps', object);
    };
    edit(LEASE_SERVICE, (a) => Object.assign(a, { [LAYOUT]: JSON.stringify({ epoch, shards: 4, tickets: 0, from: 2 }), [EPOCH]: String(epoch) }));
    const oldShard = shardName(LEASE_SERVICE, 'clusters', 1);
    const newShard = shardName(LEASE_SERVICE, 'clusters', homeOf(target.id, 4));
    edit(oldShard, (a) => Object.assign(a, { [EPOCH]: String(epoch) }));
    const key = annotationKeyFor(target.id);
    assert.ok(annotations(oldShard)[key], 'the record is in shard 1');
    /** What the keeper does for this record: a copy into its new shard, then its removal from the old. */
    const move = () => {
      const value = annotations(oldShard)[key];
      edit(newShard, (a) => Object.assign(a, { [key]: value }));
      edit(oldShard, (a) => delete a[key]);
    };
    return { target, oldShard, move, reader: storeOf(4) };
  }

  test('a read while records move finds every record: the old shards are read before the new ones', async () => {
    const { target, oldShard, move, reader } = await midMove();
    // The read of the old shard is slow; the record moves while it is on its way.
    const slow = fake.hang(matchRequest({ method: 'GET', resource: 'configmaps', name: oldShard }));
    const reading = reader.read();
    await until('the old shard is being read', () => slow.held > 0);
    await new Promise((resolve) => setTimeout(resolve, 50));
    move();
    slow.release();
    const snapshot = await reading;
    assert.equal(snapshot.table.clusters[target.id]?.state, 'leased', 'the read lost a live lease');
  });

  test('a read of one record while it moves reads its old shard, then its new one', async () => {
    const { target, move, reader } = await midMove();
    assert.equal((await reader.read()).table.clusters[target.id]?.state, 'leased');
    // The record moves after this replica last looked (no watch runs here to tell it).
    move();
    const snapshot = await reader.readFor([target.id]);
    assert.equal(snapshot.table.clusters[target.id]?.state, 'leased', 'the read lost a live lease');
  });

  test('records never fill the Service past the room its layout needs: a Service full of records still grows', async () => {
    // One record's size, with the longest note.
    const probe = await replica(poolOf(1));
    assert.equal((await lease(probe, { note: 'n'.repeat(256) })).status, 200);
    const record = annotationsSize(leaseAnnotations(fake));
    await probe.close();
    apps.pop();
    // Somebody else's annotation leaves room for one such record and 50 bytes: too few for a layout.
    seedLeaseService(fake, { 'example.com/huge': 'x'.repeat(256 * 1024 - record - 50 - 'example.com/huge'.length) });
    const pool = poolOf(40);
    const app = await replica(pool, { LEASE_SHARDS: '4' });
    const clusters = await (await StaticProvider.load(await writePool(folder, pool))).list();
    const stays = clusters.find((cluster) => homeOf(cluster.id, 2) === 0 && homeOf(cluster.id, 3) === 0 && homeOf(cluster.id, 4) === 0)?.name;
    await lease(app, { note: 'n'.repeat(256), cluster_regex: `^${stays}$` });
    await until('the table grows', () => layout()?.shards > 1);
    const elsewhere = clusters.find((cluster) => homeOf(cluster.id, layout().shards) !== 0)?.name;
    assert.equal((await lease(app, { note: 'n'.repeat(256), cluster_regex: `^${elsewhere}$` })).status, 200);
  });
});
