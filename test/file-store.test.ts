import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { VersionConflictError } from '../services/errors.ts';
import { FileLeaseStore } from '../services/store/file.ts';
import { hashToken } from '../services/tokens.ts';
import { poolOf, startTestApp, tempDir } from './support/harness.ts';

const quiet = { warn() {} };

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
        const child = spawn(process.execPath, ['--import', 'tsx', 'test/support/file-store-writer.ts', path], {
          stdio: ['ignore', 'pipe', 'inherit'],
        });
        let acknowledged = '0';
        let buffered = '';
        child.stdout.on('data', (chunk: Buffer) => {
          buffered += chunk.toString();
          const lines = buffered.split('\n');
          buffered = lines.pop() ?? '';
          if (lines.length) acknowledged = lines[lines.length - 1];
        });
        // Wait until it is writing, then kill it without warning at some point of a write.
        await new Promise<void>((resolve) => child.stdout.once('data', () => resolve()));
        await new Promise((resolve) => setTimeout(resolve, delay));
        child.kill('SIGKILL');
        await new Promise((resolve) => child.once('exit', resolve));

        const store = await FileLeaseStore.open(path, quiet);
        const { version, table } = await store.read();
        assert.ok(Number(version) >= Number(acknowledged), `version ${version} lost acknowledged ${acknowledged}`);
        assert.equal(Object.keys(table.clusters).length, 200);
        await store.close();
      }
      // Temporary files of interrupted writes are cleaned up on start; the dead writer's lock is gone.
      assert.deepEqual(await readdir(folder), ['leases.json']);
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
      assert.deepEqual((await readdir(folder)).sort(), ['leases.json', 'leases.json.lock']);
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
      const store = await FileLeaseStore.open(path, { warn: (fields) => warnings.push(fields) });
      assert.equal(warnings.length, 1);
      const base = await store.read();
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

  test('one process per file: a second open is refused until the first closes; a dead owner\'s lock is taken over', async () => {
    const folder = await tempDir();
    const path = join(folder, 'leases.json');
    try {
      const first = await FileLeaseStore.open(path, quiet);
      await assert.rejects(FileLeaseStore.open(path, quiet), /in use by another claimer/);
      await first.close();
      const second = await FileLeaseStore.open(path, quiet);
      await second.close();
      // A lock left by a process that has exited (pid 2^22 + 1 is above Linux's pid_max).
      await writeFile(`${path}.lock`, `${2 ** 22 + 1}\n`);
      const third = await FileLeaseStore.open(path, quiet);
      await third.close();
      // A live process's lock (this test runner's parent) is respected.
      await writeFile(`${path}.lock`, `${process.ppid}\n`);
      await assert.rejects(FileLeaseStore.open(path, quiet), new RegExp(`process ${process.ppid}`));
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
