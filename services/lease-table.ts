// The lease table and the pure decisions over it. A decision takes the table, the pool and
// the time, and returns a new table and an answer: no I/O and no clock of its own, so every
// rule here is a plain table test. The write path (write-path.ts) is the only caller that
// persists what they return.

import { NoClusterAvailableError, LeaseNotFoundError } from './errors.ts';
import { isLeasable, type Cluster } from './providers/types.ts';
import { hashToken, tokenHashesEqual } from './tokens.ts';

export type ClusterState = 'free' | 'leased';

export interface Lease {
  /** SHA-256 (hex) of the lease token; the token itself is never stored. */
  tokenHash: string;
  /** Milliseconds since the epoch, like every time in the table. */
  startedAt: number;
  expiresAt: number;
  note?: string;
  holder?: string;
}

export interface ClusterEntry {
  state: ClusterState;
  /** When the cluster last became free; the cluster idle the longest is leased first. */
  idleSince?: number;
  lease?: Lease;
}

/** A lease written by the original Go k8s-claimer: found by cluster name, keyed by its plain token. */
export interface LegacyLease {
  clusterName: string;
  expiresAt: number;
}

export interface LeaseTable {
  /** Keyed by cluster id. A cluster with no entry has never been leased. */
  clusters: Readonly<Record<string, ClusterEntry>>;
  /** Keyed by the original's lease token (its annotation key). */
  legacy: Readonly<Record<string, LegacyLease>>;
}

export const emptyTable: LeaseTable = Object.freeze({ clusters: {}, legacy: {} });

export interface DecisionContext {
  now: number;
  clusters: readonly Cluster[];
}

/** A decision returns the same table object when it changes nothing. */
export interface DecisionOutcome<R> {
  table: LeaseTable;
  result: R;
}

export type Decision<R> = (table: LeaseTable, context: DecisionContext) => DecisionOutcome<R>;

/** A lease that is still running at `now`. */
export function liveLease(entry: ClusterEntry | undefined, now: number): Lease | undefined {
  const lease = entry?.lease;
  return entry?.state === 'leased' && lease && now < lease.expiresAt ? lease : undefined;
}

function liveLegacyLease(table: LeaseTable, clusterName: string, now: number): LegacyLease | undefined {
  // A loop rather than Object.values: this runs for every cluster of every decision of a burst.
  for (const token in table.legacy) {
    const legacy = table.legacy[token];
    if (legacy.clusterName === clusterName && now < legacy.expiresAt) return legacy;
  }
  return undefined;
}

export type EffectiveState = ClusterState;

/** The state a cluster is really in at `now`: an expired lease counts as ended. */
export function effectiveState(table: LeaseTable, cluster: Cluster, now: number): EffectiveState {
  const entry = table.clusters[cluster.id];
  if (liveLease(entry, now) || liveLegacyLease(table, cluster.name, now)) return 'leased';
  return 'free';
}

/** When the cluster became idle: released, expired, or never leased at all (-Infinity). */
export function idleSince(entry: ClusterEntry | undefined): number {
  if (!entry) return Number.NEGATIVE_INFINITY;
  if (entry.state === 'leased' && entry.lease) return entry.lease.expiresAt;
  return entry.idleSince ?? Number.NEGATIVE_INFINITY;
}

/** When the lease that holds a busy cluster ends. */
function busyUntil(table: LeaseTable, cluster: Cluster, now: number): number {
  const ends = [liveLease(table.clusters[cluster.id], now)?.expiresAt, liveLegacyLease(table, cluster.name, now)?.expiresAt];
  return Math.max(...ends.filter((end): end is number => end !== undefined));
}

function withEntry(table: LeaseTable, clusterId: string, entry: ClusterEntry): LeaseTable {
  return { ...table, clusters: { ...table.clusters, [clusterId]: entry } };
}

export interface AcquireRequest {
  tokenHash: string;
  durationSeconds: number;
  note?: string;
  holder?: string;
  /** Which clusters the caller accepts; all when absent. */
  accepts?: (cluster: Cluster) => boolean;
}

export interface AcquireResult {
  cluster: Cluster;
  lease: Lease;
}

/**
 * The leasable free clusters at `context.now`, idle the longest first (ties by id). Derived
 * data, memoised by the identity of the (immutable) table and context: a burst applies
 * hundreds of acquires to one table in a row, and each derives the next list from the last
 * instead of scanning the whole pool again.
 */
const freeListMemo = new WeakMap<DecisionContext, WeakMap<LeaseTable, readonly Cluster[]>>();

function memoFor(context: DecisionContext): WeakMap<LeaseTable, readonly Cluster[]> {
  let byTable = freeListMemo.get(context);
  if (!byTable) {
    byTable = new WeakMap();
    freeListMemo.set(context, byTable);
  }
  return byTable;
}

export function freeClusters(table: LeaseTable, context: DecisionContext): readonly Cluster[] {
  const memo = memoFor(context);
  let free = memo.get(table);
  if (!free) {
    free = context.clusters
      .filter((cluster) => isLeasable(cluster) && effectiveState(table, cluster, context.now) === 'free')
      .map((cluster) => ({ cluster, since: idleSince(table.clusters[cluster.id]) }))
      .sort((a, b) => a.since - b.since || (a.cluster.id < b.cluster.id ? -1 : 1))
      .map(({ cluster }) => cluster);
    memo.set(table, free);
  }
  return free;
}

/**
 * Leases the matching free cluster that has been idle the longest (ties broken by id, so the
 * pick is deterministic). Every free cluster is a candidate: no random draws that miss one.
 */
export function acquire(request: AcquireRequest): Decision<AcquireResult> {
  return (table, context) => {
    const { now, clusters } = context;
    const accepts = request.accepts ?? (() => true);
    const free = freeClusters(table, context);
    const cluster = free.find(accepts);
    if (cluster === undefined) {
      const matching = clusters.filter((candidate) => isLeasable(candidate) && accepts(candidate));
      if (matching.length === 0) {
        throw new NoClusterAvailableError('NoMatchingCluster', 'no cluster in the pool matches the request');
      }
      const soonestEnd = Math.min(...matching.map((candidate) => busyUntil(table, candidate, now)));
      const retryAfter = Math.max(1, Math.ceil((soonestEnd - now) / 1000));
      throw new NoClusterAvailableError('AllLeased', 'every matching cluster is leased', retryAfter);
    }
    const lease: Lease = {
      tokenHash: request.tokenHash,
      startedAt: now,
      expiresAt: now + request.durationSeconds * 1000,
      ...(request.note !== undefined && { note: request.note }),
      ...(request.holder !== undefined && { holder: request.holder }),
    };
    const next = withEntry(table, cluster.id, { state: 'leased', lease });
    memoFor(context).set(next, free.filter((candidate) => candidate !== cluster));
    return { table: next, result: { cluster, lease } };
  };
}

/** Ends the live lease with this token hash at once; the cluster is free for the next request. */
export function release(tokenHash: string): Decision<{ clusterId: string }> {
  return (table, { now, clusters }) => {
    for (const [clusterId, entry] of Object.entries(table.clusters)) {
      const lease = liveLease(entry, now);
      if (lease && tokenHashesEqual(lease.tokenHash, tokenHash)) {
        return { table: withEntry(table, clusterId, { state: 'free', idleSince: now }), result: { clusterId } };
      }
    }
    for (const [legacyToken, legacy] of Object.entries(table.legacy)) {
      if (now < legacy.expiresAt && tokenHashesEqual(hashToken(legacyToken), tokenHash)) {
        const { [legacyToken]: _released, ...rest } = table.legacy;
        const clusterId = clusters.find((cluster) => cluster.name === legacy.clusterName)?.id ?? legacy.clusterName;
        return { table: { ...table, legacy: rest }, result: { clusterId } };
      }
    }
    throw new LeaseNotFoundError();
  };
}
