// The managed pool's records in the lease table: one manager at a time, operations claimed in the
// cluster's record (so that none is leased while it changes, nor operated on twice), taken over
// once their claim ran out, finished into the next state; a record written and read back by the
// stores' codec.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { NoClusterAvailableError } from '../services/errors.ts';
import { acquire, emptyTable, release, type LeaseTable } from '../services/lease-table.ts';
import { adoptCluster, claimPoolManager, finishOperation, managerRecordId, nameOperation, poolManager, releasePoolManager, startOperation, takeOverOperation } from '../services/managed-table.ts';
import type { Cluster } from '../services/providers/types.ts';
import { decodeEntry, encodeEntry } from '../services/store/codec.ts';
import { hashToken } from '../services/tokens.ts';

const ID = 'gke-fresh/us-central1-a/ci-abc123';
const cluster: Cluster = { id: ID, pool: 'gke-fresh', name: 'ci-abc123', location: 'us-central1-a', endpoint: '127.0.0.9', server: 'https://127.0.0.9', labels: {}, version: '1.31.5', status: 'RUNNING', tag: 'x', gpu: false, registryLocation: null };
const at = (now: number) => ({ now, clusters: [cluster], endState: 'free' as const });

function apply<T>(table: LeaseTable, decision: (table: LeaseTable, context: ReturnType<typeof at>) => { table: LeaseTable; result: T }, now = 1_000) {
  return decision(table, at(now));
}

describe('managed pool records', () => {
  test('one manager at a time: another replica is refused until the claim runs out, then takes over', () => {
    let { table, result } = apply(emptyTable, claimPoolManager('gke-fresh', 'replica-a', 30_000));
    assert.equal(result, true);
    assert.equal(apply(table, claimPoolManager('gke-fresh', 'replica-b', 30_000), 20_000).result, false);
    assert.equal(apply(table, claimPoolManager('gke-fresh', 'replica-a', 30_000), 20_000).result, true, 'the holder renews');
    ({ table, result } = apply(table, claimPoolManager('gke-fresh', 'replica-b', 30_000), 31_001));
    assert.equal(result, true);
    assert.equal(poolManager(table, 'gke-fresh', 31_002), 'replica-b');
    assert.equal(apply(table, releasePoolManager('gke-fresh', 'replica-a'), 31_002).result, false, 'only the holder gives it back');
    assert.equal(apply(table, releasePoolManager('gke-fresh', 'replica-b'), 31_002).table.clusters[managerRecordId('gke-fresh')], undefined);
  });

  test('create: provisioning (never leased) until it is done, then free; a second create of the name is refused', () => {
    let { table } = apply(emptyTable, startOperation({ clusterId: ID, pool: 'gke-fresh', kind: 'create', owner: 'a', ms: 60_000 }));
    assert.equal(table.clusters[ID].state, 'provisioning');
    assert.equal(apply(table, startOperation({ clusterId: ID, pool: 'gke-fresh', kind: 'create', owner: 'b', ms: 60_000 })).result, false);
    assert.throws(() => apply(table, acquire({ tokenHash: hashToken('t'), durationSeconds: 60 })), NoClusterAvailableError, 'a provisioning cluster was leased');
    ({ table } = apply(table, nameOperation(ID, 'a', 'operation-1')));
    assert.equal(table.clusters[ID].managed?.operation?.name, 'operation-1');
    ({ table } = apply(table, finishOperation({ clusterId: ID, owner: 'a', ok: true }), 5_000));
    assert.deepEqual(table.clusters[ID], { state: 'free', idleSince: 5_000, managed: { pool: 'gke-fresh', leases: 0 } });
  });

  test('leases are counted through a lease and its end; a leased cluster is never claimed for an operation', () => {
    let { table } = apply(emptyTable, adoptCluster(ID, 'gke-fresh'));
    ({ table } = apply(table, acquire({ tokenHash: hashToken('t1'), durationSeconds: 60 }), 2_000));
    assert.equal(table.clusters[ID].state, 'leased');
    assert.equal(table.clusters[ID].managed?.leases, 1);
    for (const kind of ['delete', 'hibernate'] as const) {
      assert.equal(apply(table, startOperation({ clusterId: ID, pool: 'gke-fresh', kind, owner: 'a', ms: 60_000 }), 3_000).result, false, `${kind} of a leased cluster`);
    }
    ({ table } = apply(table, release(hashToken('t1')), 3_000));
    assert.equal(table.clusters[ID].state, 'free');
    assert.equal(table.clusters[ID].managed?.leases, 1, 'the count survives the lease\'s end');
    ({ table } = apply(table, acquire({ tokenHash: hashToken('t2'), durationSeconds: 60 }), 4_000));
    assert.equal(table.clusters[ID].managed?.leases, 2);
  });

  test('hibernate and wake: not leased meanwhile; a wake that fails leaves it hibernated with a backoff', () => {
    let { table } = apply(emptyTable, adoptCluster(ID, 'gke-fresh'));
    ({ table } = apply(table, startOperation({ clusterId: ID, pool: 'gke-fresh', kind: 'hibernate', owner: 'a', ms: 60_000 })));
    assert.throws(() => apply(table, acquire({ tokenHash: hashToken('t'), durationSeconds: 60 })), NoClusterAvailableError, 'a hibernating cluster was leased');
    ({ table } = apply(table, finishOperation({ clusterId: ID, owner: 'a', ok: true }), 2_000));
    assert.equal(table.clusters[ID].state, 'hibernated');
    ({ table } = apply(table, startOperation({ clusterId: ID, pool: 'gke-fresh', kind: 'wake', owner: 'a', ms: 60_000 }), 3_000));
    assert.equal(table.clusters[ID].state, 'waking');
    ({ table } = apply(table, finishOperation({ clusterId: ID, owner: 'a', ok: false, error: 'RESOURCE_EXHAUSTED' }), 4_000));
    assert.equal(table.clusters[ID].state, 'hibernated');
    assert.deepEqual([table.clusters[ID].managed?.failures, table.clusters[ID].managed?.retryAt, table.clusters[ID].managed?.lastError], [1, 34_000, 'RESOURCE_EXHAUSTED']);
  });

  test('an operation whose claim ran out is taken over by another replica, which finishes it; before that, it is refused', () => {
    let { table } = apply(emptyTable, adoptCluster(ID, 'gke-fresh'));
    ({ table } = apply(table, startOperation({ clusterId: ID, pool: 'gke-fresh', kind: 'delete', owner: 'a', ms: 60_000 })));
    ({ table } = apply(table, nameOperation(ID, 'a', 'operation-7')));
    assert.equal(apply(table, takeOverOperation(ID, 'b', 60_000), 30_000).result, false);
    assert.equal(apply(table, finishOperation({ clusterId: ID, owner: 'b', ok: true }), 30_000).result, false, 'finished by a replica that does not own it');
    const taken = apply(table, takeOverOperation(ID, 'b', 60_000), 61_001);
    assert.ok(taken.result && taken.result.name === 'operation-7' && taken.result.owner === 'b');
    ({ table } = apply(taken.table, finishOperation({ clusterId: ID, owner: 'b', ok: true }), 62_000));
    assert.equal(table.clusters[ID], undefined, 'a deleted cluster keeps no record');
  });

  test('the codec writes and reads every managed state and the operation', () => {
    let { table } = apply(emptyTable, startOperation({ clusterId: ID, pool: 'gke-fresh', kind: 'create', owner: 'a', ms: 60_000 }));
    ({ table } = apply(table, nameOperation(ID, 'a', 'operation-1')));
    const entries = [table.clusters[ID], apply(table, finishOperation({ clusterId: ID, owner: 'a', ok: false, error: 'stockout' }), 9_000).table.clusters[ID], apply(emptyTable, claimPoolManager('p', 'a', 1_000)).table.clusters[managerRecordId('p')]];
    for (const entry of entries) {
      const decoded = decodeEntry(JSON.parse(JSON.stringify(encodeEntry(ID, entry))));
      assert.ok(decoded.ok, decoded.ok ? '' : decoded.problem);
      assert.deepEqual(decoded.value.entry, entry);
    }
  });

  test('recycle_after: the lease that uses the cluster up leaves it to be deleted, never free for another lease', () => {
    let { table } = apply(emptyTable, startOperation({ clusterId: ID, pool: 'gke-fresh', kind: 'create', owner: 'a', ms: 60_000, recycleAfter: 1 }));
    ({ table } = apply(table, finishOperation({ clusterId: ID, owner: 'a', ok: true }), 2_000));
    ({ table } = apply(table, acquire({ tokenHash: hashToken('t'), durationSeconds: 60 }), 3_000));
    ({ table } = apply(table, release(hashToken('t')), 4_000));
    assert.equal(table.clusters[ID].state, 'deleting');
    assert.throws(() => apply(table, acquire({ tokenHash: hashToken('u'), durationSeconds: 60 }), 5_000), NoClusterAvailableError);
    assert.equal(apply(table, startOperation({ clusterId: ID, pool: 'gke-fresh', kind: 'delete', owner: 'a', ms: 60_000 }), 5_000).result, true);
  });
});
