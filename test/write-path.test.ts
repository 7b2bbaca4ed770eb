import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ContentionError, NoClusterAvailableError, TransientStoreError } from '../services/errors.ts';
import { acquire, release, type AcquireResult, type LeaseTable } from '../services/lease-table.ts';
import type { Cluster } from '../services/providers/types.ts';
import { MemoryLeaseStore } from '../services/store/memory.ts';
import type { CommitResult, CommitStep, Snapshot } from '../services/store/types.ts';
import { hashToken } from '../services/tokens.ts';
import { WritePath } from '../services/write-path.ts';

const clusters: Cluster[] = ['c1', 'c2', 'c3'].map((name) => ({
  id: `z/${name}`, name, location: 'z', endpoint: 'h', server: 'https://h', labels: {}, version: '', status: 'RUNNING', tag: name, gpu: false, registryLocation: null,
}));
function clusterOf(result: AcquireResult) {
  assert.ok(result.granted, 'expected a grant');
  return result.cluster;
}

const clock = { now: () => Date.parse('2026-01-01T00:00:00Z') };
const noPause = { sleep: async () => {} };

/** A store shared with "another replica" that writes behind our back a given number of times. */
class RacingStore extends MemoryLeaseStore {
  reads = 0;
  constructor(private rivalWrites: number, private readonly rival?: (table: LeaseTable) => LeaseTable) {
    super();
  }
  override async read(): Promise<Snapshot> {
    this.reads += 1;
    return super.read();
  }
  override async write(next: LeaseTable, base: Snapshot): Promise<Snapshot> {
    if (this.rivalWrites > 0) {
      this.rivalWrites -= 1;
      const current = await super.read();
      await super.write(this.rival ? this.rival(current.table) : current.table, current);
    }
    return super.write(next, base);
  }
}

describe('write path', () => {
  test('a conflict on the first write re-reads and decides again on the fresh table', async () => {
    // The rival leases c1 between our read and our write.
    const store = new RacingStore(1, (table) => acquire({ tokenHash: hashToken('rival'), durationSeconds: 60 })(table, { now: clock.now(), clusters }).table);
    const path = new WritePath(store, async () => clusters, clock, noPause);
    const result = await path.submit(acquire({ tokenHash: hashToken('me'), durationSeconds: 60 }));
    assert.equal(clusterOf(result).id, 'z/c2');
    assert.equal(store.reads, 2);
    const { table } = await store.read();
    assert.equal(table.clusters['z/c1'].lease?.tokenHash, hashToken('rival'));
    assert.equal(table.clusters['z/c2'].lease?.tokenHash, hashToken('me'));
  });

  test('group commit: decisions queued during a write share the next single write, each with its own answer', async () => {
    const store = new RacingStore(0);
    const path = new WritePath(store, async () => clusters, clock, noPause);
    const answers = await Promise.allSettled(
      ['a', 'b', 'c', 'd', 'e'].map((token) => path.submit(acquire({ tokenHash: hashToken(token), durationSeconds: 60 }))),
    );
    assert.deepEqual(answers.map((answer) => answer.status), ['fulfilled', 'fulfilled', 'fulfilled', 'rejected', 'rejected']);
    const granted = answers.flatMap((answer) => (answer.status === 'fulfilled' ? [clusterOf(answer.value).id] : []));
    assert.deepEqual(granted, ['z/c1', 'z/c2', 'z/c3']);
    assert.ok((answers[3] as PromiseRejectedResult).reason instanceof NoClusterAvailableError);
    // One write for the first decision, one for the four queued behind it.
    assert.equal(store.writes, 2);
  });

  test('steady state: one write and no read per acquire when working alone', async () => {
    const store = new RacingStore(0);
    const path = new WritePath(store, async () => clusters, clock, noPause);
    await path.submit(acquire({ tokenHash: hashToken('a'), durationSeconds: 60 }));
    const readsAfterFirst = store.reads;
    await path.submit(release(hashToken('a')));
    await path.submit(acquire({ tokenHash: hashToken('b'), durationSeconds: 60 }));
    assert.equal(store.reads, readsAfterFirst);
    assert.equal(store.writes, 3);
  });

  test('a "no cluster" answer is never given from a cached table: it re-reads first', async () => {
    const store = new RacingStore(0);
    const path = new WritePath(store, async () => clusters, clock, noPause);
    for (const token of ['a', 'b', 'c']) await path.submit(acquire({ tokenHash: hashToken(token), durationSeconds: 60 }));
    // Another replica releases c2 through the same store; our cache does not know.
    const current = await store.read();
    await store.write(release(hashToken('b'))(current.table, { now: clock.now(), clusters }).table, current);
    const result = await path.submit(acquire({ tokenHash: hashToken('d'), durationSeconds: 60 }));
    assert.equal(clusterOf(result).id, 'z/c2');
  });

  test('batching off: every decision reads, decides and writes on its own, and still never double-leases', async () => {
    const store = new RacingStore(0);
    const path = new WritePath(store, async () => clusters, clock, { ...noPause, batch: false });
    const answers = await Promise.allSettled(
      ['a', 'b', 'c', 'd'].map((token) => path.submit(acquire({ tokenHash: hashToken(token), durationSeconds: 60 }))),
    );
    const granted = answers.flatMap((answer) => (answer.status === 'fulfilled' ? [clusterOf(answer.value).id] : []));
    assert.equal(granted.length, 3);
    assert.equal(new Set(granted).size, 3);
  });

  test('endless conflicts end in ContentionError (503), never a wrong answer', async () => {
    const store = new RacingStore(1000);
    const path = new WritePath(store, async () => clusters, clock, { ...noPause, maxAttempts: 5 });
    await assert.rejects(path.submit(acquire({ tokenHash: hashToken('a'), durationSeconds: 60 })), ContentionError);
  });

  test('a decision whose writes keep failing gets the error alone: one decided again after conflicts in the same rounds is still granted', async () => {
    // A store split over objects: the object of one decision's records keeps failing, another's
    // keeps losing to a rival for a while.
    class SplitStore extends MemoryLeaseStore {
      conflictsLeft = 6;
      async commit(base: Snapshot, steps: readonly CommitStep[]): Promise<CommitResult> {
        const outcomes = [];
        for (const step of steps) {
          const touches = (token: string) => step.changes.some((change) => (change.value as { lease?: { tokenHash: string } } | undefined)?.lease?.tokenHash === hashToken(token));
          if (touches('broken')) outcomes.push({ kind: 'failed' as const, error: new TransientStoreError('that object is unreachable'), mayHaveLanded: false });
          else if (this.conflictsLeft > 0) {
            this.conflictsLeft -= 1;
            outcomes.push({ kind: 'conflict' as const });
          } else {
            const current = await this.read();
            const next = structuredClone(current.table);
            for (const change of step.changes) {
              const section = next[change.section] as Record<string, unknown>;
              if (change.value === undefined) delete section[change.key];
              else section[change.key] = change.value;
            }
            await this.write(next, current);
            outcomes.push({ kind: 'written' as const });
          }
        }
        return { outcomes, snapshot: await this.read() };
      }
    }
    const store = new SplitStore();
    const path = new WritePath(store, async () => clusters, clock, { ...noPause, transientPauseMs: 0, transientAttempts: 4, maxAttempts: 10 });
    const [broken, fine] = await Promise.allSettled([
      path.submit(acquire({ tokenHash: hashToken('broken'), durationSeconds: 60 })),
      path.submit(acquire({ tokenHash: hashToken('fine'), durationSeconds: 60 })),
    ]);
    assert.equal(broken.status, 'rejected');
    assert.ok(broken.status === 'rejected' && broken.reason instanceof TransientStoreError);
    assert.equal(fine.status, 'fulfilled', 'a decision that only met conflicts got another\'s error');
    assert.ok(fine.status === 'fulfilled' && fine.value.granted);
  });

  test('a store failure reaches every decision of the batch', async () => {
    const store = new MemoryLeaseStore();
    store.write = async () => {
      throw new Error('apiserver down');
    };
    const path = new WritePath(store, async () => clusters, clock, noPause);
    const answers = await Promise.allSettled(
      ['a', 'b', 'c'].map((token) => path.submit(acquire({ tokenHash: hashToken(token), durationSeconds: 60 }))),
    );
    assert.deepEqual(
      answers.map((answer) => (answer.status === 'rejected' ? String(answer.reason) : 'granted')),
      ['Error: apiserver down', 'Error: apiserver down', 'Error: apiserver down'],
    );
  });
});

describe('writes whose answer is lost', () => {
  /** Applies a write, then fails as if the connection dropped; the next read fails too. */
  class LossyStore extends MemoryLeaseStore {
    losses = 1;
    failedReads = 0;
    override async read(): Promise<Snapshot> {
      if (this.failedReads > 0) {
        this.failedReads -= 1;
        throw new TransientStoreError('read failed');
      }
      return super.read();
    }
    override async write(next: LeaseTable, base: Snapshot): Promise<Snapshot> {
      const written = await super.write(next, base);
      if (this.losses > 0) {
        this.losses -= 1;
        this.failedReads = 1;
        throw new TransientStoreError('socket hang up after the write');
      }
      return written;
    }
  }

  test('a write that landed though its answer was lost is recognised later: one lease, the same answer', async () => {
    const store = new LossyStore();
    const path = new WritePath(store, async () => clusters, clock, { ...noPause, transientPauseMs: 0 });
    const result = await path.submit(acquire({ tokenHash: hashToken('me'), durationSeconds: 60 }));
    assert.equal(clusterOf(result).id, 'z/c1');
    const { table } = await store.read();
    const mine = Object.values(table.clusters).filter((entry) => entry.lease?.tokenHash === hashToken('me'));
    assert.equal(mine.length, 1, 'the same request leased two clusters');
    assert.equal(store.writes, 1);
  });
});
