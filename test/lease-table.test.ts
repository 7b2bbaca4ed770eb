import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { isDeepStrictEqual } from 'node:util';
import { BadRequestError, ClusterStateError, LeaseNotFoundError, NoClusterAvailableError, NotFoundError } from '../services/errors.ts';
import {
  acquire,
  cleanupBackoffMs,
  cleanupDue,
  describeClusters,
  effectiveState,
  emptyTable,
  extend,
  failCleanup,
  finishCleanup,
  reap,
  needsFreshToken,
  recordTokenExpiry,
  refreshedTokenSeconds,
  release,
  releaseOwnClaims,
  renewCleanup,
  retryCleanup,
  startCleanup,
  type AcquireResult,
  type LeaseTable,
} from '../services/lease-table.ts';
import type { Cluster } from '../services/providers/types.ts';
import { hashToken } from '../services/tokens.ts';
import { versionMatches } from '../services/cluster-filter.ts';

function cluster(name: string, overrides: Partial<Cluster> = {}): Cluster {
  return {
    id: `zone-a/${name}`,
    name,
    location: 'zone-a',
    endpoint: '127.0.0.1',
    server: 'https://127.0.0.1',
    labels: {},
    version: '1.31.0',
    status: 'RUNNING',
    tag: name,
    gpu: false,
    registryLocation: null,
    ...overrides,
  };
}

function clusterOf(result: AcquireResult) {
  assert.ok(result.granted, 'expected a grant');
  return result.cluster;
}

const allLeased = (error: unknown) => error instanceof NoClusterAvailableError && error.reason === 'AllLeased';

const T0 = Date.parse('2026-01-01T00:00:00Z');
const tokenA = hashToken('a');
const tokenB = hashToken('b');

describe('acquire', () => {
  test('leases a free cluster for exactly the requested seconds', () => {
    const { table, result } = acquire({ tokenHash: tokenA, durationSeconds: 30 })(emptyTable, { now: T0, clusters: [cluster('c1')] });
    assert.equal(clusterOf(result).id, 'zone-a/c1');
    assert.deepEqual(table.clusters['zone-a/c1'], { state: 'leased', lease: { id: tokenA.slice(0, 16), tokenHash: tokenA, startedAt: T0, expiresAt: T0 + 30_000 } });
  });

  test('never leases a cluster that is not RUNNING', () => {
    const clusters = [cluster('p', { status: 'PROVISIONING' }), cluster('e', { status: 'ERROR' })];
    assert.throws(
      () => acquire({ tokenHash: tokenA, durationSeconds: 30 })(emptyTable, { now: T0, clusters }),
      (error: unknown) => error instanceof NoClusterAvailableError && error.reason === 'NoMatchingCluster',
    );
  });

  test('finds the last free cluster among many leased ones (no random draws)', () => {
    const clusters = Array.from({ length: 200 }, (_, index) => cluster(`c${index}`));
    let table: LeaseTable = emptyTable;
    for (let index = 0; index < 199; index++) {
      table = acquire({ tokenHash: hashToken(String(index)), durationSeconds: 60 })(table, { now: T0, clusters }).table;
    }
    const { result } = acquire({ tokenHash: tokenA, durationSeconds: 60 })(table, { now: T0, clusters });
    assert.ok(clusterOf(result));
    assert.throws(() => acquire({ tokenHash: tokenB, durationSeconds: 60 })(
      acquire({ tokenHash: tokenA, durationSeconds: 60 })(table, { now: T0, clusters }).table, { now: T0, clusters }), allLeased);
  });

  test('an expired lease counts as free from the very millisecond it ends', () => {
    const clusters = [cluster('c1')];
    const { table } = acquire({ tokenHash: tokenA, durationSeconds: 10 })(emptyTable, { now: T0, clusters });
    assert.equal(effectiveState(table, clusters[0], T0 + 9_999), 'leased');
    assert.equal(effectiveState(table, clusters[0], T0 + 10_000), 'free');
    assert.throws(() => acquire({ tokenHash: tokenB, durationSeconds: 10 })(table, { now: T0 + 9_999, clusters }), allLeased);
    const next = acquire({ tokenHash: tokenB, durationSeconds: 10 })(table, { now: T0 + 10_000, clusters });
    assert.equal(clusterOf(next.result).id, 'zone-a/c1');
  });

  test('AllLeased carries the seconds until the soonest end, rounded up', () => {
    const clusters = [cluster('c1'), cluster('c2')];
    let { table } = acquire({ tokenHash: tokenA, durationSeconds: 100 })(emptyTable, { now: T0, clusters });
    ({ table } = acquire({ tokenHash: tokenB, durationSeconds: 50 })(table, { now: T0, clusters }));
    assert.throws(
      () => acquire({ tokenHash: hashToken('c'), durationSeconds: 10 })(table, { now: T0 + 10_500, clusters }),
      (error: unknown) => error instanceof NoClusterAvailableError && error.reason === 'AllLeased' && error.retryAfterSeconds === 40,
    );
  });

  test('a live lease of the original k8s-claimer blocks its cluster by name', () => {
    const clusters = [cluster('old')];
    const table: LeaseTable = { clusters: {}, legacy: { 'legacy-token': { clusterName: 'old', expiresAt: T0 + 1000 } }, waiters: {}, filters: {}, replicas: {} };
    assert.throws(() => acquire({ tokenHash: tokenA, durationSeconds: 1 })(table, { now: T0, clusters }), allLeased);
    assert.equal(clusterOf(acquire({ tokenHash: tokenA, durationSeconds: 1 })(table, { now: T0 + 1000, clusters }).result).name, 'old');
  });
});

describe('release', () => {
  test('frees the cluster and records when it became idle', () => {
    const clusters = [cluster('c1')];
    const { table } = acquire({ tokenHash: tokenA, durationSeconds: 60 })(emptyTable, { now: T0, clusters });
    const released = release(tokenA)(table, { now: T0 + 5_000, clusters });
    assert.deepEqual(released.table.clusters['zone-a/c1'], { state: 'free', idleSince: T0 + 5_000 });
  });

  test('an unknown, released or expired token is LeaseNotFound and changes nothing', () => {
    const clusters = [cluster('c1')];
    const { table } = acquire({ tokenHash: tokenA, durationSeconds: 60 })(emptyTable, { now: T0, clusters });
    assert.throws(() => release(tokenB)(table, { now: T0, clusters }), LeaseNotFoundError);
    assert.throws(() => release(tokenA)(table, { now: T0 + 60_000, clusters }), LeaseNotFoundError);
    const { table: released } = release(tokenA)(table, { now: T0, clusters });
    assert.throws(() => release(tokenA)(released, { now: T0, clusters }), LeaseNotFoundError);
  });

  test('releases a lease of the original k8s-claimer by its plain token', () => {
    const clusters = [cluster('old')];
    const table: LeaseTable = { clusters: {}, legacy: { 'f00d0000-0000-4000-8000-000000000000': { clusterName: 'old', expiresAt: T0 + 1000 } }, waiters: {}, filters: {}, replicas: {} };
    const released = release(hashToken('f00d0000-0000-4000-8000-000000000000'))(table, { now: T0, clusters });
    assert.deepEqual(released.table.legacy, {});
    assert.equal(released.result.clusterId, 'zone-a/old');
  });
});

describe('the life cycle with cleanup: free -> leased -> dirty -> cleaning -> free', () => {
  const clusters = [cluster('c1')];
  const dirtyContext = (now: number) => ({ now, clusters, endState: 'dirty' as const });

  test('release and expiry leave the cluster dirty, never free, when there is cleanup to do', () => {
    const { table } = acquire({ tokenHash: tokenA, durationSeconds: 10 })(emptyTable, dirtyContext(T0));
    assert.equal(release(tokenA)(table, dirtyContext(T0 + 1)).table.clusters['zone-a/c1'].state, 'dirty');
    assert.equal(effectiveState(table, clusters[0], T0 + 10_000, 'dirty'), 'dirty');
    assert.throws(() => acquire({ tokenHash: tokenB, durationSeconds: 10 })(table, dirtyContext(T0 + 10_000)), allLeased);
  });

  test('one janitor at a time; a lapsed claim is taken over; only the owner finishes', () => {
    const { table: leased } = acquire({ tokenHash: tokenA, durationSeconds: 10 })(emptyTable, dirtyContext(T0));
    const { table: dirty } = release(tokenA)(leased, dirtyContext(T0 + 1));
    const claimed = startCleanup('zone-a/c1', 'replica-a', 60_000)(dirty, dirtyContext(T0 + 2));
    assert.deepEqual(claimed.result, { revoke: [] });
    assert.equal(startCleanup('zone-a/c1', 'replica-b', 60_000)(claimed.table, dirtyContext(T0 + 3)).result, false);
    assert.equal(finishCleanup('zone-a/c1', 'replica-b')(claimed.table, dirtyContext(T0 + 4)).result, false);
    const takenOver = startCleanup('zone-a/c1', 'replica-b', 60_000)(claimed.table, dirtyContext(T0 + 2 + 60_000));
    assert.deepEqual(takenOver.result, { revoke: [] });
    assert.equal(finishCleanup('zone-a/c1', 'replica-a')(takenOver.table, dirtyContext(T0 + 60_010)).result, false);
    const done = finishCleanup('zone-a/c1', 'replica-b')(takenOver.table, dirtyContext(T0 + 60_020));
    assert.deepEqual(done.table.clusters['zone-a/c1'], { state: 'free', idleSince: T0 + 60_020 });
  });

  test('a lease with credentials of its own leaves its id in the dirty record until a janitor frees the cluster', () => {
    const credentials = { user: 'lessee', group: 'system:masters' };
    const { table: leased, result } = acquire({ tokenHash: tokenA, leaseId: 'feedfacecafe', durationSeconds: 10, credentials })(emptyTable, dirtyContext(T0));
    assert.ok(result.granted);
    const { table: dirty } = release(tokenA)(leased, dirtyContext(T0 + 1));
    assert.deepEqual(dirty.clusters['zone-a/c1'].cleanup, { attempts: 0, revoke: ['feedfacecafe'] });
    const expired = reap()(leased, dirtyContext(T0 + 10_000)).table;
    assert.deepEqual(expired.clusters['zone-a/c1'].cleanup?.revoke, ['feedfacecafe']);
    const claimed = startCleanup('zone-a/c1', 'a', 60_000)(dirty, dirtyContext(T0 + 2));
    assert.deepEqual(claimed.result, { revoke: ['feedfacecafe'] });
    const { table: failed } = failCleanup('zone-a/c1', 'a', 'revoking the lease credentials failed')(claimed.table, dirtyContext(T0 + 3));
    assert.deepEqual(failed.clusters['zone-a/c1'].cleanup?.revoke, ['feedfacecafe']);
    const takenOver = startCleanup('zone-a/c1', 'b', 60_000)(failed, dirtyContext(T0 + 60_000));
    assert.deepEqual(takenOver.result, { revoke: ['feedfacecafe'] });
    assert.deepEqual(finishCleanup('zone-a/c1', 'b')(takenOver.table, dirtyContext(T0 + 60_001)).table.clusters['zone-a/c1'], { state: 'free', idleSince: T0 + 60_001 });
  });

  test('without cleanup work configured, a lease that had credentials of its own still ends dirty, never free', () => {
    const freeContext = (now: number) => ({ now, clusters, endState: 'free' as const });
    const credentials = { user: 'lessee', group: 'system:masters' };
    const { table: leased } = acquire({ tokenHash: tokenA, leaseId: 'feedfacecafe', durationSeconds: 10, credentials })(emptyTable, freeContext(T0));
    assert.deepEqual(release(tokenA)(leased, freeContext(T0 + 1)).table.clusters['zone-a/c1'].cleanup, { attempts: 0, revoke: ['feedfacecafe'] });
    // Expired and not yet written down by the reaper: not free for the next request either.
    assert.equal(effectiveState(leased, clusters[0], T0 + 10_000, 'free'), 'dirty');
    assert.throws(() => acquire({ tokenHash: tokenB, durationSeconds: 10 })(leased, freeContext(T0 + 10_000)), allLeased);
    assert.equal(reap()(leased, freeContext(T0 + 10_000)).table.clusters['zone-a/c1'].state, 'dirty');
  });

  test('a restarted replica gives back its own claims, due at once; other replicas\' claims stay', () => {
    const two = [cluster('c1'), cluster('c2')];
    const context = (now: number) => ({ now, clusters: two, endState: 'dirty' as const });
    const dirtyEntry = { state: 'dirty' as const, idleSince: T0, cleanup: { attempts: 2, lastError: 'deleting namespaces failed', revoke: ['feedfacecafe'] } };
    let table: LeaseTable = { clusters: { 'zone-a/c1': dirtyEntry, 'zone-a/c2': { ...dirtyEntry, cleanup: { attempts: 0 } } }, legacy: {}, waiters: {}, filters: {}, replicas: {} };
    table = startCleanup('zone-a/c1', 'claimer-0', 60_000)(table, context(T0 + 1)).table;
    table = startCleanup('zone-a/c2', 'claimer-1', 60_000)(table, context(T0 + 1)).table;
    const { table: released, result } = releaseOwnClaims('claimer-0')(table, context(T0 + 2));
    assert.deepEqual(result, ['zone-a/c1']);
    assert.deepEqual(released.clusters['zone-a/c1'], dirtyEntry);
    assert.equal(released.clusters['zone-a/c2'], table.clusters['zone-a/c2']);
    assert.deepEqual(startCleanup('zone-a/c1', 'claimer-0', 60_000)(released, context(T0 + 2)).result, { revoke: ['feedfacecafe'] });
    const nothing = releaseOwnClaims('claimer-0')(released, context(T0 + 3));
    assert.equal(nothing.table, released, 'nothing to give back changes nothing');
  });

  test('renewCleanup moves the deadline for the owner only; once taken over or freed the claim is lost', () => {
    const credentials = { user: 'lessee', group: 'system:masters' };
    const { table: leased } = acquire({ tokenHash: tokenA, leaseId: 'feedfacecafe', durationSeconds: 10, credentials })(emptyTable, dirtyContext(T0));
    const { table: dirty } = release(tokenA)(leased, dirtyContext(T0));
    const { table: claimed } = startCleanup('zone-a/c1', 'a', 60_000)(dirty, dirtyContext(T0));
    const renewed = renewCleanup('zone-a/c1', 'a', 60_000)(claimed, dirtyContext(T0 + 50_000));
    assert.equal(renewed.result, true);
    assert.deepEqual(renewed.table.clusters['zone-a/c1'].cleanup, { owner: 'a', deadline: T0 + 110_000, attempts: 0, revoke: ['feedfacecafe'] });
    // Not lapsed at the old deadline any more: nobody may take it over then.
    assert.equal(startCleanup('zone-a/c1', 'b', 60_000)(renewed.table, dirtyContext(T0 + 60_000)).result, false);
    // Revocation confirmed: the lease's id leaves the record with the next renewal.
    const confirmed = renewCleanup('zone-a/c1', 'a', 60_000, { revoked: ['feedfacecafe'] })(renewed.table, dirtyContext(T0 + 51_000));
    assert.equal(confirmed.table.clusters['zone-a/c1'].cleanup?.revoke, undefined);
    assert.equal(renewCleanup('zone-a/c1', 'b', 60_000)(renewed.table, dirtyContext(T0 + 51_000)).result, false);
    const takenOver = startCleanup('zone-a/c1', 'b', 60_000)(renewed.table, dirtyContext(T0 + 110_000)).table;
    assert.equal(renewCleanup('zone-a/c1', 'a', 60_000)(takenOver, dirtyContext(T0 + 110_001)).result, false);
    const freed = finishCleanup('zone-a/c1', 'b')(takenOver, dirtyContext(T0 + 110_002)).table;
    const leasedAgain = acquire({ tokenHash: tokenB, durationSeconds: 10 })(freed, dirtyContext(T0 + 110_003)).table;
    const late = renewCleanup('zone-a/c1', 'a', 60_000)(leasedAgain, dirtyContext(T0 + 110_004));
    assert.equal(late.result, false);
    assert.equal(late.table, leasedAgain, 'a lost claim changes nothing');
  });

  test('after maxAttempts failures in a row the cluster is quarantined: never leased, retried rarely, until an operator returns it', () => {
    const limits = { maxAttempts: 3, quarantineRetryMs: 3_600_000, quarantineAfterMs: 0 };
    const { table: leased } = acquire({ tokenHash: tokenA, durationSeconds: 10 })(emptyTable, dirtyContext(T0));
    let table = release(tokenA)(leased, dirtyContext(T0)).table;
    let now = T0;
    const outcomes: unknown[] = [];
    for (let attempt = 1; attempt <= 3; attempt++) {
      table = startCleanup('zone-a/c1', 'a', 60_000)(table, dirtyContext(now)).table;
      const failed = failCleanup('zone-a/c1', 'a', 'deleting namespaces failed: still terminating', limits)(table, dirtyContext(now));
      outcomes.push(failed.result);
      table = failed.table;
      now = table.clusters['zone-a/c1'].cleanup?.retryAt ?? now;
    }
    assert.deepEqual(outcomes, ['dirty', 'dirty', 'quarantined']);
    assert.equal(table.clusters['zone-a/c1'].state, 'quarantined');
    assert.equal(now - T0, 1000 + 2000 + 3_600_000, 'quarantine retries after an hour, not a backoff');
    assert.throws(() => acquire({ tokenHash: tokenB, durationSeconds: 10 })(table, dirtyContext(now)), allLeased);
    assert.equal(describeClusters(table, dirtyContext(now))[0].state, 'quarantined');
    assert.deepEqual(cleanupDue(table, dirtyContext(now - 1)), []);
    assert.deepEqual(cleanupDue(table, dirtyContext(now)).map((due) => due.id), ['zone-a/c1']);
    // A retry that fails again stays quarantined; one that succeeds frees the cluster.
    const retried = startCleanup('zone-a/c1', 'a', 60_000)(table, dirtyContext(now)).table;
    assert.equal(failCleanup('zone-a/c1', 'a', 'again', limits)(retried, dirtyContext(now)).result, 'quarantined');
    assert.equal(finishCleanup('zone-a/c1', 'a')(retried, dirtyContext(now)).table.clusters['zone-a/c1'].state, 'free');

    const returned = retryCleanup('zone-a/c1')(table, dirtyContext(now - 1_000_000));
    assert.deepEqual(returned.table.clusters['zone-a/c1'].cleanup, { attempts: 0, lastError: 'deleting namespaces failed: still terminating' });
    assert.equal(returned.result.view.state, 'dirty');
    assert.deepEqual(cleanupDue(returned.table, dirtyContext(now - 1_000_000)).map((due) => due.id), ['zone-a/c1'], 'due at once');
  });

  test('quarantine waits until the cluster has waited QUARANTINE_AFTER_SECONDS: failures in quick succession stay dirty', () => {
    const limits = { maxAttempts: 2, quarantineRetryMs: 3_600_000, quarantineAfterMs: 600_000 };
    const { table: leased } = acquire({ tokenHash: tokenA, durationSeconds: 10 })(emptyTable, dirtyContext(T0));
    let table = release(tokenA)(leased, dirtyContext(T0)).table;
    const fail = (now: number) => {
      table = startCleanup('zone-a/c1', 'a', 60_000)(table, dirtyContext(now)).table;
      const failed = failCleanup('zone-a/c1', 'a', 'the API server did not answer', limits)(table, dirtyContext(now));
      table = failed.table;
      return failed.result;
    };
    assert.deepEqual([fail(T0 + 1_000), fail(T0 + 5_000), fail(T0 + 20_000)], ['dirty', 'dirty', 'dirty']);
    assert.equal(fail(T0 + 600_000), 'quarantined');
  });

  test('a quarantined cluster whose lease credentials are not yet revoked keeps being retried at the usual backoff', () => {
    const limits = { maxAttempts: 1, quarantineRetryMs: 3_600_000, quarantineAfterMs: 0 };
    const credentials = { user: 'lessee', group: 'system:masters' };
    const { table: leased } = acquire({ tokenHash: tokenA, leaseId: 'feedfacecafe', durationSeconds: 10, credentials })(emptyTable, dirtyContext(T0));
    const claimed = startCleanup('zone-a/c1', 'a', 60_000)(release(tokenA)(leased, dirtyContext(T0)).table, dirtyContext(T0)).table;
    const failed = failCleanup('zone-a/c1', 'a', 'revoking the lease credentials failed', limits)(claimed, dirtyContext(T0));
    assert.equal(failed.result, 'quarantined');
    assert.deepEqual(failed.table.clusters['zone-a/c1'].cleanup, { attempts: 1, lastError: 'revoking the lease credentials failed', retryAt: T0 + 1000, revoke: ['feedfacecafe'] });
    // Once revocation is confirmed, a later failure waits the quarantine's long retry.
    const confirmed = renewCleanup('zone-a/c1', 'a', 60_000, { revoked: ['feedfacecafe'] })(claimed, dirtyContext(T0)).table;
    assert.equal(failCleanup('zone-a/c1', 'a', 'deleting namespaces failed', limits)(confirmed, dirtyContext(T0)).table.clusters['zone-a/c1'].cleanup?.retryAt, T0 + 3_600_000);
  });

  test('retryCleanup: NotFound for a cluster the pool does not have; ClusterStateError unless quarantined or dirty', () => {
    const { table: leased } = acquire({ tokenHash: tokenA, durationSeconds: 10 })(emptyTable, dirtyContext(T0));
    assert.throws(() => retryCleanup('zone-a/nope')(leased, dirtyContext(T0)), NotFoundError);
    assert.throws(() => retryCleanup('zone-a/c1')(emptyTable, dirtyContext(T0)), ClusterStateError, 'never leased: free');
    assert.throws(() => retryCleanup('zone-a/c1')(leased, dirtyContext(T0)), ClusterStateError);
    const cleaning = startCleanup('zone-a/c1', 'a', 60_000)(release(tokenA)(leased, dirtyContext(T0)).table, dirtyContext(T0)).table;
    assert.throws(() => retryCleanup('zone-a/c1')(cleaning, dirtyContext(T0)), ClusterStateError);
    const unknown: LeaseTable = { clusters: { 'zone-a/c1': { state: 'unknown' } }, legacy: {}, waiters: {}, filters: {}, replicas: {} };
    assert.throws(() => retryCleanup('zone-a/c1')(unknown, dirtyContext(T0)), ClusterStateError, 'an unreadable record is never rewritten');
  });

  test('a failed cleanup backs off 1, 2, 4, 8 s, then 15 s at most, and keeps its reason', () => {
    assert.deepEqual([1, 2, 3, 4, 5, 9].map(cleanupBackoffMs), [1000, 2000, 4000, 8000, 15000, 15000]);
    const { table: leased } = acquire({ tokenHash: tokenA, durationSeconds: 10 })(emptyTable, dirtyContext(T0));
    const { table: dirty } = release(tokenA)(leased, dirtyContext(T0));
    const { table: claimed } = startCleanup('zone-a/c1', 'a', 60_000)(dirty, dirtyContext(T0));
    const { table: failed } = failCleanup('zone-a/c1', 'a', 'deleting namespaces failed')(claimed, dirtyContext(T0 + 500));
    assert.deepEqual(failed.clusters['zone-a/c1'].cleanup, { attempts: 1, lastError: 'deleting namespaces failed', retryAt: T0 + 1500 });
    assert.equal(startCleanup('zone-a/c1', 'a', 60_000)(failed, dirtyContext(T0 + 1499)).result, false);
    assert.deepEqual(startCleanup('zone-a/c1', 'a', 60_000)(failed, dirtyContext(T0 + 1500)).result, { revoke: [] });
  });
});

describe('cluster_version matches whole components', () => {
  const cases: Array<[string, string, boolean]> = [
    ['1.31', '1.31.5-gke.100', true],
    ['1.31', '1.31.0', true],
    ['1.31', '1.31', true],
    ['1.31', '1.310.0', false],
    ['1.3', '1.32.1', false],
    ['1.32.1', '1.32.1', true],
    ['1.32.1', '1.32.10', false],
    ['1.31.5', '1.31.5-gke.100', true],
    ['1.31.5-gke.100', '1.31.5-gke.100', true],
    ['v1.31', '1.31.2', true],
    ['1.31', 'v1.31.2+k3s1', true],
    ['1', '1.31.2', true],
    ['1.31', '', false],
  ];
  for (const [wanted, version, expected] of cases) {
    test(`${wanted} ${expected ? 'matches' : 'does not match'} ${version || '(no version)'}`, () => {
      assert.equal(versionMatches(wanted, version), expected);
    });
  }
});

describe('the reaper', () => {
  const HOUR = 3_600_000;
  const forgetful = reap({ forgetDepartedMs: HOUR, maxLeaseMs: 86_400_000, ticketTtlMs: 30_000 });

  test('a free record of a cluster gone from the pool is forgotten after FORGET_DEPARTED_SECONDS, not before', () => {
    const gone = cluster('gone');
    const { table: leased } = acquire({ tokenHash: tokenA, durationSeconds: 10 })(emptyTable, { now: T0, clusters: [gone] });
    const { table: freed } = release(tokenA)(leased, { now: T0 + 1, clusters: [gone] });
    const noticed = forgetful(freed, { now: T0 + 2, clusters: [] });
    assert.equal(noticed.table.clusters['zone-a/gone'].missingSince, T0 + 2);
    assert.deepEqual(noticed.result.forgotten, []);
    const early = forgetful(noticed.table, { now: T0 + 2 + HOUR - 1, clusters: [] });
    assert.equal(early.table, noticed.table);
    const late = forgetful(noticed.table, { now: T0 + 2 + HOUR, clusters: [] });
    assert.deepEqual(late.result.forgotten, ['zone-a/gone']);
    assert.deepEqual(late.table.clusters, {});
  });

  test('a cluster that comes back is no longer missing; leased, dirty and cleaning records are kept', () => {
    const back = cluster('back');
    const { table: leased } = acquire({ tokenHash: tokenA, durationSeconds: 10 })(emptyTable, { now: T0, clusters: [back] });
    const { table: freed } = release(tokenA)(leased, { now: T0 + 1, clusters: [back] });
    const missing = forgetful(freed, { now: T0 + 2, clusters: [] }).table;
    const returned = forgetful(missing, { now: T0 + 3, clusters: [back] }).table;
    assert.deepEqual(returned.clusters['zone-a/back'], { state: 'free', idleSince: T0 + 1 });
    const { table: again } = acquire({ tokenHash: tokenB, durationSeconds: 7200 })(returned, { now: T0 + 4, clusters: [back] });
    const kept = forgetful(again, { now: T0 + 2 * HOUR, clusters: [] });
    assert.equal(kept.table.clusters['zone-a/back'].state, 'leased');
    assert.deepEqual(kept.result.forgotten, []);
    const dirty = forgetful(again, { now: T0 + 3 * HOUR, clusters: [], endState: 'dirty' });
    assert.equal(dirty.table.clusters['zone-a/back'].state, 'dirty');
    assert.equal(forgetful(dirty.table, { now: T0 + 9 * HOUR, clusters: [], endState: 'dirty' }).table.clusters['zone-a/back'].state, 'dirty');
  });

  test('FORGET_DEPARTED_SECONDS=0 keeps every record', () => {
    const { table } = release(tokenA)(acquire({ tokenHash: tokenA, durationSeconds: 10 })(emptyTable, { now: T0, clusters: [cluster('c')] }).table, { now: T0, clusters: [cluster('c')] });
    const keeper = reap({ forgetDepartedMs: 0 });
    const noticed = keeper(table, { now: T0, clusters: [] }).table;
    assert.ok(keeper(noticed, { now: T0 + 1e12, clusters: [] }).table.clusters['zone-a/c']);
  });

  test('records dated in the future by a replica with a wrong clock lapse anyway: leases cut to MAX_LEASE_SECONDS, tickets to their TTL', () => {
    const c = cluster('c');
    const year = 365 * 24 * HOUR;
    const future: LeaseTable = {
      clusters: { 'zone-a/c': { state: 'leased', lease: { id: 'f00d', tokenHash: tokenA, startedAt: T0 + year, expiresAt: T0 + year + HOUR } } },
      legacy: { '5b0c8d2e-9f1a-4c3b-8e7d-6a5f4e3d2c1b': { clusterName: 'old', expiresAt: T0 + year } },
      waiters: { aaaaaaaaaaaaaaaa: { since: T0 + year, replica: 'r'.repeat(16), principal: 'p'.repeat(32), filter: 'f'.repeat(32) } },
      filters: { ['f'.repeat(32)]: {} },
      replicas: { ['r'.repeat(16)]: { expiresAt: T0 + year } },
    };
    const { table, result } = forgetful(future, { now: T0, clusters: [c] });
    assert.deepEqual(result.clamped, ['zone-a/c']);
    assert.deepEqual(table.clusters['zone-a/c'].lease && [table.clusters['zone-a/c'].lease.startedAt, table.clusters['zone-a/c'].lease.expiresAt], [T0, T0 + HOUR]);
    assert.equal(table.legacy['5b0c8d2e-9f1a-4c3b-8e7d-6a5f4e3d2c1b'].expiresAt, T0 + 24 * HOUR);
    assert.deepEqual(table.waiters.aaaaaaaaaaaaaaaa.since, T0);
    assert.deepEqual(table.replicas['r'.repeat(16)], { expiresAt: T0 + 30_000 });
    // A day later every one of them has lapsed.
    const later = forgetful(table, { now: T0 + 24 * HOUR, clusters: [c] });
    assert.equal(later.table.clusters['zone-a/c'].state, 'free');
    assert.deepEqual([later.table.legacy, later.table.waiters, later.table.filters, later.table.replicas], [{}, {}, {}, {}]);
  });

  test('a cleanup claim or retry dated a year ahead is due now, not in a year', () => {
    const c = cluster('c');
    const year = 365 * 24 * HOUR;
    const stuck: LeaseTable = { ...emptyTable, clusters: { 'zone-a/c': { state: 'cleaning', idleSince: T0, cleanup: { owner: 'skewed', deadline: T0 + year, attempts: 0 } } } };
    const reaper = reap({ maxCleanupWaitMs: 2 * HOUR });
    const { table, result } = reaper(stuck, { now: T0, clusters: [c], endState: 'dirty' });
    assert.deepEqual(result.clamped, ['zone-a/c']);
    assert.deepEqual(cleanupDue(table, { now: T0, clusters: [c] }).map((due) => due.id), ['zone-a/c']);
    const later: LeaseTable = { ...emptyTable, clusters: { 'zone-a/c': { state: 'quarantined', idleSince: T0, cleanup: { attempts: 5, retryAt: T0 + year } } } };
    assert.equal(reaper(later, { now: T0, clusters: [c] }).table.clusters['zone-a/c'].cleanup?.retryAt, T0 + 2 * HOUR);
  });

  test('a lease longer than MAX_LEASE_SECONDS from its start is cut; a record within the limits is left as it is', () => {
    const c = cluster('c');
    const long: LeaseTable = { ...emptyTable, clusters: { 'zone-a/c': { state: 'leased', lease: { id: 'beef', tokenHash: tokenA, startedAt: T0, expiresAt: T0 + 30 * 24 * HOUR } } } };
    assert.equal(forgetful(long, { now: T0 + 1, clusters: [c] }).table.clusters['zone-a/c'].lease?.expiresAt, T0 + 24 * HOUR);
    const fine: LeaseTable = { ...emptyTable, clusters: { 'zone-a/c': { state: 'leased', lease: { id: 'beef', tokenHash: tokenA, startedAt: T0, expiresAt: T0 + HOUR } } } };
    assert.equal(forgetful(fine, { now: T0 + 1, clusters: [c] }).table, fine);
  });
});

describe('extend, and the token of a lease with per-lease credentials', () => {
  const credentials = { user: 'lessee', group: 'system:masters' };
  const leasedWithCredentials = (durationSeconds: number) =>
    acquire({ tokenHash: tokenA, durationSeconds, credentials })(emptyTable, { now: T0, clusters: [cluster('c1')] }).table;
  const credentialsIn = (table: LeaseTable) => table.clusters['zone-a/c1']?.lease?.credentials;

  test('beyond MAX_LEASE_SECONDS: 400 with max_time_left, the whole seconds it can still be extended by from now', () => {
    const table = leasedWithCredentials(600);
    const cases: Array<{ atMs: number; asked: number; left: number }> = [
      { atMs: 50_000, asked: 551, left: 550 },
      { atMs: 50_500, asked: 550, left: 549 },
      { atMs: 599_500, asked: 1, left: 0 },
    ];
    for (const { atMs, asked, left } of cases) {
      assert.throws(
        () => extend(tokenA, asked, 600)(table, { now: T0 + atMs, clusters: [cluster('c1')] }),
        (error: unknown) => error instanceof BadRequestError && isDeepStrictEqual(error.details, { fields: ['max_time'], max_time_left: left }),
        `${asked} s at +${atMs} ms`,
      );
    }
    const extended = extend(tokenA, 550, 600)(table, { now: T0 + 50_000, clusters: [cluster('c1')] });
    assert.equal(extended.result.lease.expiresAt, T0 + 600_000);
  });

  test('recordTokenExpiry records an earlier real expiry; a later one, one within the API\'s second, or a lease that is gone changes nothing', () => {
    const table = leasedWithCredentials(7200);
    const context = { now: T0 + 1000, clusters: [cluster('c1')] };
    assert.equal(credentialsIn(table)?.tokenExpiresAt, T0 + 7_200_000, 'the grant records an estimate');
    const capped = recordTokenExpiry(tokenA, T0 + 3_600_000)(table, context).table;
    assert.deepEqual(credentialsIn(capped), { ...credentials, tokenExpiresAt: T0 + 3_600_000 });
    assert.equal(capped.clusters['zone-a/c1']?.lease?.expiresAt, T0 + 7_200_000, 'the lease itself is untouched');
    for (const [what, tokenHash, expiresAt] of [
      ['later', tokenA, T0 + 7_300_000],
      ['within a second', tokenA, T0 + 7_199_200],
      ['another token', tokenB, T0 + 3_600_000],
    ] as const) {
      assert.equal(recordTokenExpiry(tokenHash, expiresAt)(table, context).table, table, what);
    }
    const { table: released } = release(tokenA)(table, context);
    assert.equal(recordTokenExpiry(tokenA, T0 + 3_600_000)(released, context).table, released, 'released');
  });

  test('needsFreshToken - only when the lease would outlive its token (or end within the second before it dies)', () => {
    const token = { ...credentials, tokenExpiresAt: T0 + 600_000 };
    assert.equal(needsFreshToken(token, T0 + 500_000), false);
    assert.equal(needsFreshToken(token, T0 + 599_500), true);
    assert.equal(needsFreshToken(token, T0 + 700_000), true);
  });

  test('refreshedTokenSeconds - three extensions long, never past the lease\'s maximum, at least the API\'s 600 s', () => {
    const lease = { id: 'l', tokenHash: tokenA, startedAt: T0, expiresAt: T0 + 60_000 };
    const cases: Array<{ duration: number; max: number; elapsed: number; seconds: number }> = [
      { duration: 900, max: 86_400, elapsed: 0, seconds: 2700 },
      { duration: 100, max: 86_400, elapsed: 0, seconds: 600 },
      { duration: 900, max: 1000, elapsed: 0, seconds: 1000 },
      { duration: 3000, max: 7200, elapsed: 1000, seconds: 6200 },
      { duration: 500, max: 3600, elapsed: 3000, seconds: 600 },
    ];
    for (const { duration, max, elapsed, seconds } of cases) {
      assert.equal(refreshedTokenSeconds(lease, duration, max, T0 + elapsed * 1000), seconds, JSON.stringify({ duration, max, elapsed }));
    }
  });
});
