// What a managed pool writes in the lease table, as decisions like every other (pure, on the
// table and the time, written by the one write path with compare-and-swap):
//
//   - the pool's manager: one replica at a time makes the pool's provisioning decisions, holding
//     the record `~manager/<pool>` (state `manager`) until its deadline; another replica takes
//     over once it has passed;
//   - each operation on a cluster (create, delete, hibernate, wake) is claimed in the cluster's
//     record before it starts and finished there when it ends, so that no cluster is leased
//     while it changes, none is operated on twice, and an operation whose replica died is found
//     in the table (with GKE's operation name) and followed by the next manager.
//
// A cluster being created has a record before GKE knows it; a deleted one's record goes once
// GKE says it is gone.

import type { ClusterEntry, Decision, LeaseTable, ManagedRecord } from './lease-table.ts';
import { withRecords } from './table-changes.ts';

export type OperationKind = NonNullable<ManagedRecord['operation']>['kind'];

/** The record that names a pool's manager. */
export function managerRecordId(pool: string): string {
  return `~manager/${pool}`;
}

function withEntry(table: LeaseTable, clusterId: string, entry: ClusterEntry | undefined): LeaseTable {
  return { ...table, clusters: withRecords(table.clusters, { [clusterId]: entry }) };
}

/** Who manages the pool now, if anyone. */
export function poolManager(table: LeaseTable, pool: string, now: number): string | undefined {
  const entry = table.clusters[managerRecordId(pool)];
  if (entry?.state !== 'manager' || (entry.cleanup?.deadline ?? 0) <= now) return undefined;
  return entry.cleanup?.owner;
}

/** Claims (or renews) the pool's manager role for `ms`; false while another replica holds it. */
export function claimPoolManager(pool: string, owner: string, ms: number): Decision<boolean> {
  return (table, { now }) => {
    const holder = poolManager(table, pool, now);
    if (holder !== undefined && holder !== owner) return { table, result: false };
    return { table: withEntry(table, managerRecordId(pool), { state: 'manager', cleanup: { owner, deadline: now + ms, attempts: 0 } }), result: true };
  };
}

/** Gives the manager role back (a replica that stops), if this replica holds it. */
export function releasePoolManager(pool: string, owner: string): Decision<boolean> {
  return (table, { now }) => {
    if (poolManager(table, pool, now) !== owner) return { table, result: false };
    return { table: withEntry(table, managerRecordId(pool), undefined), result: true };
  };
}

/** The states an operation may start from, and the state the cluster is in meanwhile. */
const STARTS: Record<OperationKind, { from: ReadonlyArray<ClusterEntry['state'] | 'none'>; during: ClusterEntry['state'] }> = {
  create: { from: ['none'], during: 'provisioning' },
  // A cluster whose create failed (provisioning, no operation) or whose delete failed is deleted again.
  delete: { from: ['free', 'hibernated', 'provisioning', 'deleting'], during: 'deleting' },
  hibernate: { from: ['free'], during: 'hibernated' },
  wake: { from: ['hibernated'], during: 'waking' },
};

export interface StartOperation {
  clusterId: string;
  pool: string;
  kind: OperationKind;
  owner: string;
  /** Of a create: the pool's `recycle_after`, kept in the record (a lease's end past it retires the cluster). */
  recycleAfter?: number;
  /** How long the claim holds before another manager may take the operation over. */
  ms: number;
}

/**
 * Claims a cluster for an operation; false when it is not in a state that allows it (leased
 * meanwhile, another operation under way, a create of a name already taken).
 */
export function startOperation({ clusterId, pool, kind, owner, ms, recycleAfter }: StartOperation): Decision<boolean> {
  return (table, { now }) => {
    const entry = table.clusters[clusterId];
    const from = entry?.state ?? 'none';
    if (!STARTS[kind].from.includes(from) || entry?.managed?.operation) return { table, result: false };
    if (entry && entry.managed?.pool !== pool) return { table, result: false };
    // A free record with a live lease cannot be (the write path's acquire makes it leased), but a
    // lease that ran out leaves `leased`: only states without a lease get here.
    const kept = entry?.managed?.recycleAfter ?? recycleAfter;
    const managed: ManagedRecord = {
      pool,
      leases: entry?.managed?.leases ?? 0,
      ...(kept !== undefined && { recycleAfter: kept }),
      ...(entry?.managed?.failures !== undefined && { failures: entry.managed.failures }),
      operation: { kind, owner, startedAt: now, deadline: now + ms },
    };
    const next: ClusterEntry = { state: STARTS[kind].during, ...(entry?.idleSince !== undefined && { idleSince: entry.idleSince }), managed };
    return { table: withEntry(table, clusterId, next), result: true };
  };
}

/** Records GKE's name of the operation, so that a replica that takes over can follow it. */
export function nameOperation(clusterId: string, owner: string, name: string): Decision<boolean> {
  return (table) => {
    const entry = table.clusters[clusterId];
    const operation = entry?.managed?.operation;
    if (!entry?.managed || !operation || operation.owner !== owner) return { table, result: false };
    return { table: withEntry(table, clusterId, { ...entry, managed: { ...entry.managed, operation: { ...operation, name } } }), result: true };
  };
}

/**
 * Takes over an operation whose claim ran out (its replica died or stopped): the new owner
 * follows it to its end. False when the claim still holds or there is no operation.
 */
export function takeOverOperation(clusterId: string, owner: string, ms: number): Decision<ManagedRecord['operation'] | false> {
  return (table, { now }) => {
    const entry = table.clusters[clusterId];
    const operation = entry?.managed?.operation;
    if (!entry?.managed || !operation || (operation.owner !== owner && operation.deadline > now)) return { table, result: false };
    const taken = { ...operation, owner, deadline: now + ms };
    return { table: withEntry(table, clusterId, { ...entry, managed: { ...entry.managed, operation: taken } }), result: taken };
  };
}

/** Backoff after failed operations in a row: 30 s, doubling, at most 30 minutes. */
export function failureBackoffMs(failures: number): number {
  return Math.min(30 * 60_000, 30_000 * 2 ** Math.max(0, failures - 1));
}

export interface FinishOperation {
  clusterId: string;
  owner: string;
  ok: boolean;
  /** A short cause, fit for /leases (never a credential). */
  error?: string;
}

/** Ends the operation this replica owns: the cluster's next state, or its record gone. */
export function finishOperation({ clusterId, owner, ok, error }: FinishOperation): Decision<boolean> {
  return (table, { now }) => {
    const entry = table.clusters[clusterId];
    const operation = entry?.managed?.operation;
    if (!entry?.managed || !operation || operation.owner !== owner) return { table, result: false };
    const { pool, leases, recycleAfter } = entry.managed;
    const base = { pool, leases, ...(recycleAfter !== undefined && { recycleAfter }) };
    if (ok) {
      const done: Record<OperationKind, ClusterEntry | undefined> = {
        create: { state: 'free', idleSince: now, managed: { ...base, leases: 0 } },
        delete: undefined,
        hibernate: { state: 'hibernated', idleSince: entry.idleSince ?? now, managed: base },
        wake: { state: 'free', idleSince: now, managed: base },
      };
      return { table: withEntry(table, clusterId, done[operation.kind]), result: true };
    }
    const failures = (entry.managed.failures ?? 0) + 1;
    const failed: ManagedRecord = { ...base, failures, lastError: error ?? `${operation.kind} failed`, retryAt: now + failureBackoffMs(failures) };
    // A failed create or delete leaves a cluster to delete (again); a failed hibernate leaves it
    // running and free; a failed wake leaves it hibernated.
    const after: Record<OperationKind, ClusterEntry['state']> = { create: 'provisioning', delete: 'deleting', hibernate: 'free', wake: 'hibernated' };
    return { table: withEntry(table, clusterId, { state: after[operation.kind], idleSince: entry.idleSince ?? now, managed: failed }), result: true };
  };
}

/**
 * A cluster of the pool that GKE lists with the pool's label but the table does not know (its
 * record lost, or made by hand with the label): taken in as free, so that it is leased, and
 * counted against `max_size`.
 */
export function adoptCluster(clusterId: string, pool: string): Decision<boolean> {
  return (table, { now }) => {
    if (table.clusters[clusterId]) return { table, result: false };
    return { table: withEntry(table, clusterId, { state: 'free', idleSince: now, managed: { pool, leases: 0 } }), result: true };
  };
}
