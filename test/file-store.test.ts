import assert from 'node:assert/strict';
import { mkdir, readFile, readdir, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { VersionConflictError } from '../services/errors.ts';
import type { Decision, LeaseTable } from '../services/lease-table.ts';
import { FileLeaseStore } from '../services/store/file.ts';
import { hashToken } from '../services/tokens.ts';
import { WritePath } from '../services/write-path.ts';
import { ManualClock, poolOf, startTestApp, tempDir, type TestApp } from './support/harness.ts';
import { pidNamespacesWork, startLineProcess, type LineProcess } from './support/line-process.ts';

const quiet = { warn() {}, error() {} };

describe('file lease store', () => {
  test('leases survive a restart of the server', async () => {
    const folder = await tempDir();
    try {
      const first = await startTestApp({ folder, clusters: poolOf(2) });
      const response = await first.request('POST', '/lease', { body: { max_time: 600 } });
      const lease = await response.json();
      await first.close();

      const second = await startTestApp({ folder, clusters: poolOf(2), clock: first.clock });
      const next = await (await second.request('POST', '/lease', { body: { max_time: 600 } })).json();
      assert.notEqual(next.cluster_name, lease.cluster_name);
      assert.equal((await second.request('POST', '/lease', { body: { max_time: 600 } })).status, 409);
      assert.equal((await second.request('DELETE', `/lease/${lease.token}`)).status, 200);
      await second.close();
    } finally {
      await rm(folder, { recursive: true, force: true });
    }
  });

  test('compare-and-swap: a write against an old version is refused and changes nothing', async () => {
    const folder = await tempDir();
    try {
      const store = await FileLeaseStore.open(join(folder, 'leases.json'), quiet);
      const base = await store.read();
      const entry = { state: 'leased' as const, lease: { id: 'aaaaaaaaaaaa', tokenHash: hashToken('a'), startedAt: 1, expiresAt: 2 } };
      await store.write({ clusters: { 'static/a': entry }, legacy: {}, waiters: {}, filters: {}, replicas: {} }, base);
      await assert.rejects(store.write({ clusters: {}, legacy: {}, waiters: {}, filters: {}, replicas: {} }, base), VersionConflictError);
      await store.close();
      const reopened = await FileLeaseStore.open(join(folder, 'leases.json'), quiet);
      assert.deepEqual((await reopened.read()).table.clusters, { 'static/a': entry });
      await reopened.close();
    } finally {
      await rm(folder, { recursive: true, force: true });
    }
  });

  test('a torn write (process killed mid-write) loses nothing that was acknowledged', async () => {
    const folder = await tempDir();
    const path = join(folder, 'leases.json');
    try {
      for (const delay of [40, 90, 150, 230, 310, 420]) {
        const writer = startLineProcess('test/support/file-store-process.ts', [path]);
        writer.send('open');
        assert.equal((await writer.next()).event, 'opened');
        writer.send('write-forever');
        // Wait until it is writing, then kill it without warning at some point of a write.
        const first = await writer.next();
        assert.equal(first.event, 'written');
        await new Promise((resolve) => setTimeout(resolve, delay));
        writer.child.kill('SIGKILL');
        await writer.stop();
        const acknowledged = String(writer.received().at(-1)?.version ?? first.version);

        // Its lock stays behind, fresh for a while: a short staleness takes it over at once.
        await new Promise((resolve) => setTimeout(resolve, 50));
        const store = await FileLeaseStore.open(path, quiet, { lock: { staleMs: 20 } });
        const { version, table } = await store.read();
        assert.ok(Number(version) >= Number(acknowledged), `version ${version} lost acknowledged ${acknowledged}`);
        assert.equal(Object.keys(table.clusters).length, 200);
        await store.close();
      }
      // Temporary files of interrupted writes are cleaned up on start; the dead writers' locks
      // are gone; what is left is the table and its last commit markers.
      const left = await readdir(folder);
      assert.ok(left.includes('leases.json'));
      assert.deepEqual(left.filter((name) => name !== 'leases.json' && !/^leases\.json\.v[0-9]+$/.test(name)), []);
    } finally {
      await rm(folder, { recursive: true, force: true });
    }
  });

  test('a leftover partial temporary file is ignored on start', async () => {
    const folder = await tempDir();
    const path = join(folder, 'leases.json');
    try {
      const store = await FileLeaseStore.open(path, quiet);
      const entry = { state: 'free' as const, idleSince: 5 };
      await store.write({ clusters: { 'static/a': entry }, legacy: {}, waiters: {}, filters: {}, replicas: {} }, await store.read());
      await writeFile(`${path}.0f1e2d3c.tmp`, '{"format": "k8s-claimer/lease-table/v1", "vers');
      await store.close();
      const reopened = await FileLeaseStore.open(path, quiet);
      assert.deepEqual((await reopened.read()).table.clusters, { 'static/a': entry });
      assert.deepEqual((await readdir(folder)).sort(), ['leases.json', 'leases.json.lock.1', 'leases.json.v1']);
      await reopened.close();
    } finally {
      await rm(folder, { recursive: true, force: true });
    }
  });

  test('a record that does not parse blocks its cluster, with a warning, and stays in the file untouched', async () => {
    const folder = await tempDir();
    const path = join(folder, 'leases.json');
    try {
      const broken = { cluster: 'static/b', state: 'exploded' };
      await writeFile(path, JSON.stringify({ format: 'k8s-claimer/lease-table/v1', version: 4, clusters: [broken], legacy: {} }));
      const warnings: unknown[] = [];
      const store = await FileLeaseStore.open(path, { warn: (fields) => warnings.push(fields), error() {} });
      assert.equal(warnings.length, 1);
      // Reads parse the file again only when it changed.
      await store.read();
      const base = await store.read();
      assert.equal(warnings.length, 1);
      const clusters = base.table.clusters;
      // It may hold a live lease written by another version: never leased, never rewritten.
      assert.deepEqual({ ...clusters }, { 'static/b': { state: 'unknown' } });
      await store.write({ clusters: { ...clusters, 'static/a': { state: 'free', idleSince: 1 } }, legacy: {}, waiters: {}, filters: {}, replicas: {} }, base);
      await store.close();
      const saved = JSON.parse(await readFile(path, 'utf8'));
      assert.deepEqual(saved.clusters.find((record: { cluster: string }) => record.cluster === 'static/b'), broken);
    } finally {
      await rm(folder, { recursive: true, force: true });
    }
  });

  test('one claimer per file: a second open is refused, naming the lock, until the first closes', async () => {
    const folder = await tempDir();
    const path = join(folder, 'leases.json');
    try {
      const first = await FileLeaseStore.open(path, quiet);
      await assert.rejects(
        FileLeaseStore.open(path, quiet),
        new RegExp(`${path} is in use by another claimer \\(lock ${path}\\.lock\\.1, .*run one claimer per file, or the Kubernetes store`),
      );
      await first.close();
      const second = await FileLeaseStore.open(path, quiet);
      await second.close();
    } finally {
      await rm(folder, { recursive: true, force: true });
    }
  });

  test('a file that is not a lease table stops start-up with a message naming it', async () => {
    const folder = await tempDir();
    const path = join(folder, 'leases.json');
    try {
      await writeFile(path, 'garbage{');
      await assert.rejects(FileLeaseStore.open(path, quiet), new RegExp(`${path}.*not valid JSON`));
      // A failed open leaves no lock behind.
      await assert.rejects(FileLeaseStore.open(path, quiet), /not valid JSON/);
      await writeFile(path, '{"some": "other file"}');
      await assert.rejects(FileLeaseStore.open(path, quiet), /not a k8s-claimer lease table/);
    } finally {
      await rm(folder, { recursive: true, force: true });
    }
  });
});

const HOUR_MS = 3_600_000;
const STORE_PROCESS = 'test/support/file-store-process.ts';

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * A folder with the lease file, and a second path to the same folder: claimers in two
 * containers reach one volume through their own mounts, not through one path string.
 */
async function sharedVolume(): Promise<{ root: string; path: string; samePath: string }> {
  const root = await tempDir();
  await mkdir(join(root, 'volume'));
  await symlink(join(root, 'volume'), join(root, 'mounted-again'));
  return { root, path: join(root, 'volume', 'leases.json'), samePath: join(root, 'mounted-again', 'leases.json') };
}

function withCluster(table: LeaseTable, clusterId: string): LeaseTable {
  return { ...table, clusters: { ...table.clusters, [clusterId]: { state: 'free', idleSince: 1 } } };
}

/** A decision that adds one cluster entry: what each writer adds must still be there at the end. */
function addCluster(clusterId: string): Decision<string> {
  return (table) => ({ table: withCluster(table, clusterId), result: clusterId });
}

async function opened(claimer: LineProcess, options?: unknown): Promise<{ event: string; pid?: unknown; message?: unknown }> {
  claimer.send('open', options);
  return claimer.next();
}

describe('file lease store lock, across processes', () => {
  test('two claimers in separate PID namespaces (both pid 1) on one file: the second refuses to start', { skip: !pidNamespacesWork && 'unshare cannot make PID namespaces here (needs root or user namespaces)' }, async () => {
    const folder = await tempDir();
    const path = join(folder, 'leases.json');
    const first = startLineProcess(STORE_PROCESS, [path], { ownPidNamespace: true });
    const second = startLineProcess(STORE_PROCESS, [path], { ownPidNamespace: true });
    try {
      assert.deepEqual(await opened(first), { event: 'opened', pid: 1 });
      const refused = await opened(second);
      assert.equal(refused.event, 'refused', 'the second claimer took the file over');
      assert.match(String(refused.message), new RegExp(`in use by another claimer \\(lock ${path}\\.lock`));
      assert.match(String(refused.message), /run one claimer per file, or the Kubernetes store/);
      // Released by the first, the file is the second's.
      first.send('close');
      assert.equal((await first.next()).event, 'closed');
      assert.deepEqual(await opened(second), { event: 'opened', pid: 1 });
    } finally {
      await Promise.all([first.stop(), second.stop()]);
      await rm(folder, { recursive: true, force: true });
    }
  });

  test('two processes racing to take over a stale lock: exactly one wins, 20 times out of 20', async () => {
    const folder = await tempDir();
    const path = join(folder, 'leases.json');
    const racers = [startLineProcess(STORE_PROCESS, [path]), startLineProcess(STORE_PROCESS, [path])];
    try {
      // A claimer that dies holding the file leaves its lock behind; keep a copy of it.
      const dead = startLineProcess(STORE_PROCESS, [path]);
      assert.equal((await opened(dead)).event, 'opened');
      dead.child.kill('SIGKILL');
      await dead.stop();
      const isLock = (name: string) => name.startsWith('leases.json.lock');
      const leftBehind = await Promise.all(
        (await readdir(folder)).filter(isLock).map(async (name) => ({ name, content: await readFile(join(folder, name)) })),
      );
      assert.ok(leftBehind.length > 0);
      const longAgo = new Date(Date.now() - HOUR_MS);
      const wins: number[] = [];
      for (let trial = 0; trial < 20; trial++) {
        for (const name of (await readdir(folder)).filter(isLock)) await rm(join(folder, name));
        for (const { name, content } of leftBehind) {
          await writeFile(join(folder, name), content);
          await utimes(join(folder, name), longAgo, longAgo);
        }
        const answers = await Promise.all(racers.map((racer) => opened(racer)));
        const winners = racers.filter((_, index) => answers[index].event === 'opened');
        wins.push(winners.length);
        for (const racer of winners) {
          racer.send('close');
          await racer.next();
        }
      }
      assert.deepEqual(wins, Array(20).fill(1));
    } finally {
      await Promise.all(racers.map((racer) => racer.stop()));
      await rm(folder, { recursive: true, force: true });
    }
  });

  test('releasing a lock that was taken over never deletes the lock of the claimer that holds it now', async () => {
    const folder = await tempDir();
    const path = join(folder, 'leases.json');
    // In a PID namespace of its own where that is possible, as a claimer in another container.
    const taker = startLineProcess(STORE_PROCESS, [path], { ownPidNamespace: pidNamespacesWork });
    try {
      // This claimer stops renewing its lock (as a process paused for a long while would).
      const paused = await FileLeaseStore.open(path, quiet, { lock: { heartbeatMs: HOUR_MS } });
      await sleep(200);
      assert.equal((await opened(taker, { lock: { staleMs: 100 } })).event, 'opened');
      await paused.close();
      // The taker's lock is intact: a third claimer is still refused.
      await assert.rejects(FileLeaseStore.open(path, quiet), /in use by another claimer/);
      taker.send('close');
      assert.equal((await taker.next()).event, 'closed');
      const third = await FileLeaseStore.open(path, quiet);
      await third.close();
    } finally {
      await taker.stop();
      await rm(folder, { recursive: true, force: true });
    }
  });

  test('a claimer whose lock was taken over notices at its next heartbeat, logs it, and stops reading and writing', async () => {
    const { root, path, samePath } = await sharedVolume();
    try {
      const errors: string[] = [];
      const first = await FileLeaseStore.open(path, { warn() {}, error: (_fields, message) => errors.push(message) }, { lock: { heartbeatMs: 1_000 } });
      const base = await first.read();
      await sleep(300);
      const second = await FileLeaseStore.open(samePath, quiet, { lock: { staleMs: 100 } });
      for (let waited = 0; errors.length === 0 && waited < 5_000; waited += 50) await sleep(50);
      assert.deepEqual(errors, ['lost the lease store lock: no more reads or writes of the file']);
      await assert.rejects(first.write(withCluster(base.table, 'static/a'), base), { name: 'FileLockLostError', message: /taken over by another claimer/ });
      await assert.rejects(first.read(), { name: 'FileLockLostError' });
      // The claimer that holds the file now writes as usual.
      await second.write(withCluster(base.table, 'static/b'), await second.read());
      await first.close();
      await second.close();
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});

describe('file lease store compare-and-swap against the disk', () => {
  test('two writers that both hold the store: the stale one gets a conflict, not an overwrite, and nothing is lost', async () => {
    const { root, path, samePath } = await sharedVolume();
    try {
      const clock = new ManualClock();
      const stale = await FileLeaseStore.open(path, quiet, { lock: { heartbeatMs: HOUR_MS } });
      const staleWrites = new WritePath(stale, async () => [], clock);
      await staleWrites.submit(addCluster('static/a'));
      const staleBase = await stale.read();
      await sleep(200);
      // The stale writer's lock is taken over before its heartbeat could notice.
      const fresh = await FileLeaseStore.open(samePath, quiet, { lock: { staleMs: 100 } });
      const freshBase = await fresh.read();
      assert.deepEqual(Object.keys(freshBase.table.clusters), ['static/a']);
      await fresh.write(withCluster(freshBase.table, 'static/b'), freshBase);

      // Its write from what it read before is refused, and a read then gives the disk's table.
      await assert.rejects(stale.write(withCluster(staleBase.table, 'static/c'), staleBase), VersionConflictError);
      assert.deepEqual(Object.keys((await stale.read()).table.clusters).sort(), ['static/a', 'static/b']);
      // Its write path, starting from its cached table, re-reads on the conflict and decides again.
      await staleWrites.submit(addCluster('static/c'));
      const final = await fresh.read();
      assert.deepEqual(Object.keys(final.table.clusters).sort(), ['static/a', 'static/b', 'static/c']);
      const onDisk = JSON.parse(await readFile(path, 'utf8'));
      assert.equal(String(onDisk.version), final.version);
      assert.deepEqual(onDisk.clusters.map((record: { cluster: string }) => record.cluster).sort(), ['static/a', 'static/b', 'static/c']);
      await stale.close();
      await fresh.close();
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });

  test('a commit marker newer than the file (its writer died before the rename) is the table', async () => {
    const folder = await tempDir();
    const path = join(folder, 'leases.json');
    try {
      const store = await FileLeaseStore.open(path, quiet);
      await store.write(withCluster((await store.read()).table, 'static/a'), await store.read());
      await store.close();
      const committed = JSON.parse(await readFile(path, 'utf8'));
      const newer = { ...committed, version: committed.version + 1, clusters: [...committed.clusters, { cluster: 'static/b', state: 'free' }] };
      await writeFile(`${path}.v${newer.version}`, JSON.stringify(newer));
      const reopened = await FileLeaseStore.open(path, quiet);
      const snapshot = await reopened.read();
      assert.equal(snapshot.version, String(newer.version));
      assert.deepEqual(Object.keys(snapshot.table.clusters).sort(), ['static/a', 'static/b']);
      // The next write builds on it, and the file catches up.
      await reopened.write(withCluster(snapshot.table, 'static/c'), snapshot);
      await reopened.close();
      const saved = JSON.parse(await readFile(path, 'utf8'));
      assert.equal(saved.version, newer.version + 1);
      assert.equal(saved.clusters.length, 3);
    } finally {
      await rm(folder, { recursive: true, force: true });
    }
  });
});

describe('two claimers on one file after a takeover', () => {
  test('many acquires and releases on both: no cluster is ever leased to two tokens', async () => {
    const { root, path, samePath } = await sharedVolume();
    const apps: TestApp[] = [];
    try {
      const clusters = poolOf(6);
      const clock = new ManualClock();
      // The first stops renewing its lock; the second takes the file over while the first,
      // not knowing yet, keeps serving.
      apps.push(await startTestApp({ folder: await tempDir(), clusters, clock, env: { LEASE_STORE_FILE: path }, fileStore: { lock: { heartbeatMs: HOUR_MS } } }));
      assert.equal((await apps[0].request('GET', '/leases')).status, 200);
      await sleep(200);
      apps.push(await startTestApp({ folder: await tempDir(), clusters, clock, env: { LEASE_STORE_FILE: samePath }, fileStore: { lock: { staleMs: 100 } } }));
      for (let round = 0; round < 5; round++) {
        const answers = await Promise.all(
          Array.from({ length: 16 }, (_, index) => apps[index % 2].request('POST', '/lease', { body: { max_time: 600 } })),
        );
        assert.deepEqual([...new Set(answers.map((answer) => answer.status))].sort(), [200, 409]);
        const granted: Array<{ token: string; cluster_name: string }> = await Promise.all(
          answers.filter((answer) => answer.status === 200).map((answer) => answer.json()),
        );
        const leasedTo = new Map<string, string[]>();
        for (const lease of granted) leasedTo.set(lease.cluster_name, [...(leasedTo.get(lease.cluster_name) ?? []), lease.token]);
        const twice = [...leasedTo].filter(([, tokens]) => tokens.length > 1).map(([cluster]) => cluster);
        assert.deepEqual(twice, [], `round ${round}: leased to two tokens`);
        assert.equal(granted.length, clusters.length);
        // The file holds exactly the granted leases.
        const onDisk = JSON.parse(await readFile(path, 'utf8'));
        const leasedOnDisk = onDisk.clusters.filter((record: { state: string }) => record.state === 'leased');
        assert.deepEqual(
          leasedOnDisk.map((record: { lease: { token_sha256: string } }) => record.lease.token_sha256).sort(),
          granted.map((lease) => hashToken(lease.token)).sort(),
        );
        // Released through either claimer, whichever granted it: each sees the other's writes.
        for (const [index, lease] of granted.entries()) {
          assert.equal((await apps[index % 2].request('DELETE', `/lease/${lease.token}`)).status, 200);
        }
      }
    } finally {
      for (const app of apps) {
        await app.close();
        await rm(app.folder, { recursive: true, force: true });
      }
      await rm(root, { recursive: true, force: true });
    }
  });
});
