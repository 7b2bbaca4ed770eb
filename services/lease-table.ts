// The lease table and the pure decisions over it. A decision takes the table, the pool and
// the time, and returns a new table and an answer: no I/O and no clock of its own, so every
// rule here is a plain table test. The write path (write-path.ts) is the only caller that
// persists what they return.

import { isDeepStrictEqual } from 'node:util';
import { canonicalFilter, filterDigest, matches, type ClusterFilter } from './cluster-filter.ts';
import {
  BadRequestError,
  ClusterStateError,
  IdempotencyKeyReusedError,
  LeaseNotFoundError,
  NoClusterAvailableError,
  NotFoundError,
  TooManyWaitersError,
} from './errors.ts';
import { isLeasable, type Cluster } from './providers/types.ts';
import { afterGrant, afterNewcomer, computeQueue, rememberOrder, ticketLive, ticketOrder, type Queue } from './queue.ts';
import { LRUCache } from 'lru-cache';
import { derivedFrom, withRecords } from './table-changes.ts';
import { hashToken } from './tokens.ts';

/**
 * The life cycle: free -> leased -> dirty -> cleaning -> free. A lease's end (release or
 * expiry) leaves the cluster `dirty` when there is work to do before the next lease (revoking
 * the lease's credentials, deleting namespaces); a janitor claims it (`cleaning`), does the
 * work, and frees it. `quarantined`: cleanup failed too many times in a row (a namespace that
 * never finishes terminating); never leased, retried rarely, returned to service by an
 * operator (POST /cleanup). `unknown`: the store holds a record for the cluster that this
 * version cannot read (a newer version's state, a hand edit); such a cluster is never leased
 * and its record never rewritten.
 */
export type ClusterState = 'free' | 'leased' | 'dirty' | 'cleaning' | 'quarantined' | 'unknown' | ManagedState;

/**
 * Clusters of a managed pool (made by the claimer) also pass through `provisioning` (being
 * created, or a create that failed and waits to be deleted), `hibernated` (node pools at zero),
 * `waking` (node pools scaling back) and `deleting`; none of them is leased. `manager` is not a
 * cluster: the record that says which replica manages a pool, until when.
 */
export type ManagedState = 'provisioning' | 'hibernated' | 'waking' | 'deleting' | 'manager';

/** What a managed pool keeps in the record of a cluster it made. */
export interface ManagedRecord {
  pool: string;
  /** Leases so far: after the pool's `recycle_after`, the cluster is replaced. */
  leases: number;
  /** The pool's `recycle_after` when the cluster was made: a lease's end past it leaves the cluster to delete. */
  recycleAfter?: number;
  /** The create, delete, hibernate or wake under way, by the replica that started it. */
  operation?: { kind: 'create' | 'delete' | 'hibernate' | 'wake'; owner: string; startedAt: number; deadline: number; name?: string };
  /** Failed operations in a row, why the last failed, and when to try again. */
  failures?: number;
  lastError?: string;
  retryAt?: number;
}

/** What the lessee's per-lease credentials are (the token itself is never stored). */
export interface LeaseCredentials {
  user: string;
  group: string;
  /** When the minted token stops working; an extension past it mints a fresh one. */
  tokenExpiresAt: number;
}

/** A janitor's work on a cluster between leases. */
export interface Cleanup {
  /** The replica doing it, and until when its claim holds (after that another may take over). */
  owner?: string;
  deadline?: number;
  attempts: number;
  /** Why the last attempt failed (a short, generic text; details are in that replica's log). */
  lastError?: string;
  /** Not before this time: failures back off. */
  retryAt?: number;
  /**
   * Ids of ended leases whose per-lease credentials are not yet confirmed revoked (their
   * names follow from the ids). Kept until revocation is confirmed, whatever the mode is now.
   */
  revoke?: readonly string[];
}

export interface Lease {
  /** A public id of the lease (names its credentials in the cluster); not a secret. */
  id: string;
  /** SHA-256 (hex) of the lease token; the token itself is never stored. */
  tokenHash: string;
  /** Milliseconds since the epoch, like every time in the table. */
  startedAt: number;
  expiresAt: number;
  note?: string;
  holder?: string;
  credentials?: LeaseCredentials;
  /** The request's Idempotency-Key (a digest with its principal) and a digest of its body. */
  idempotency?: Idempotency;
}

export interface Idempotency {
  key: string;
  fingerprint: string;
}

export interface ClusterEntry {
  state: ClusterState;
  /** When the cluster last became idle; the cluster idle the longest is leased first. */
  idleSince?: number;
  /** Since when the cluster has been missing from the pool (a free record is forgotten after a while). */
  missingSince?: number;
  lease?: Lease;
  cleanup?: Cleanup;
  /** Of a cluster a managed pool made (it is carried through every state change). */
  managed?: ManagedRecord;
}

/** A lease written by the original Go k8s-claimer: found by cluster name, keyed by its plain token. */
export interface LegacyLease {
  clusterName: string;
  expiresAt: number;
}

/**
 * A request waiting for a cluster, on some replica. Stored in the shared table so that every
 * replica serves waiters first come, first served: a cluster a waiter can use goes to the
 * oldest such waiter, never to a newer request. A ticket is small and of bounded size: it
 * names its filter by digest (the filter is stored once in `filters`), its principal by digest
 * (for the caps), and the replica whose heartbeat keeps it alive, so that the tickets of a
 * replica that died lapse together within seconds, and renewing costs one write per replica.
 */
export interface Waiter {
  since: number;
  /** Digest of the replica that holds the ticket (see `replicas`). */
  replica: string;
  /** Digest of who asked (the OIDC subject; the shared token's callers are one principal). */
  principal: string;
  /** Digest of the filter (a key of `filters`). */
  filter: string;
}

/** A replica that holds tickets says it is alive until `expiresAt`, and renews it while its clients wait. */
export interface ReplicaHeartbeat {
  expiresAt: number;
}

export interface LeaseTable {
  /** Keyed by cluster id. A cluster with no entry has never been leased. */
  clusters: Readonly<Record<string, ClusterEntry>>;
  /** Keyed by the original's lease token (its annotation key). */
  legacy: Readonly<Record<string, LegacyLease>>;
  /** Keyed by ticket id. */
  waiters: Readonly<Record<string, Waiter>>;
  /** The filters of waiting requests, keyed by digest: once for every ticket that shares one. */
  filters: Readonly<Record<string, ClusterFilter>>;
  /** Heartbeats of the replicas that hold tickets, keyed by replica digest. */
  replicas: Readonly<Record<string, ReplicaHeartbeat>>;
}

export const emptyTable: LeaseTable = Object.freeze({ clusters: {}, legacy: {}, waiters: {}, filters: {}, replicas: {} });

export interface DecisionContext {
  now: number;
  clusters: readonly Cluster[];
  /** What a lease's end leaves: `dirty` when cleanup or revocation has work to do. Default `free`. */
  endState?: 'free' | 'dirty';
  /**
   * False when no earlier write of this very decision can have landed (the write path knows:
   * none of its answers was lost), so the table cannot hold its outcome yet and need not be
   * searched for it. Unset: it may have.
   */
  mayHaveLanded?: boolean;
  /**
   * This replica's order among clusters equally idle, lowest first, for a request when nobody
   * waits (a table split over objects: each replica prefers other objects, so that replicas
   * leasing at once write different ones). Which of two equally idle clusters a request gets is
   * all it changes: never whether it gets one, nor who is served first.
   */
  prefer?: (clusterId: string) => number;
  /**
   * Clusters that managed pools could still make (never leased, in no pool list): a request
   * that only such a cluster would match waits for it instead of being told nothing matches.
   */
  prospects?: (table: LeaseTable) => readonly Cluster[];
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
export function effectiveState(table: LeaseTable, cluster: Cluster, now: number, endState: 'free' | 'dirty' = 'free'): EffectiveState {
  const entry = table.clusters[cluster.id];
  if (liveLease(entry, now) || liveLegacyLease(table, cluster.name, now)) return 'leased';
  if (entry?.state === 'leased') return entry.lease?.credentials ? 'dirty' : endState;
  // A managed pool's cluster the table does not know yet (or any more: deleted, listed late) is not leased.
  return entry?.state ?? (cluster.managed ? 'provisioning' : 'free');
}

/**
 * The entry a lease's end leaves behind. A lease with credentials of its own names them for
 * revocation and leaves the cluster dirty whatever the configuration says now (it may have
 * been switched to pool credentials since the lease began).
 */
function ended(at: number, endState: 'free' | 'dirty' = 'free', lease?: Lease): ClusterEntry {
  if (endState !== 'dirty' && !lease?.credentials) return { state: 'free', idleSince: at };
  return { state: 'dirty', idleSince: at, cleanup: { attempts: 0, ...(lease?.credentials && { revoke: [lease.id] }) } };
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
  const before = table.clusters[clusterId];
  // A managed cluster's record goes with it through leases and cleanups, counting its leases.
  if (before?.managed && !entry.managed) {
    const leases = before.managed.leases + (entry.state === 'leased' && before.state !== 'leased' ? 1 : 0);
    const { recycleAfter } = before.managed;
    // Used up: a lease's end leaves it to be deleted (and replaced), never leased again or cleaned.
    const usedUp = recycleAfter !== undefined && leases >= recycleAfter && (entry.state === 'free' || entry.state === 'dirty');
    entry = usedUp ? { state: 'deleting', ...(entry.idleSince !== undefined && { idleSince: entry.idleSince }), managed: { ...before.managed, leases } } : { ...entry, managed: { ...before.managed, leases } };
  }
  return { ...table, clusters: withRecords(table.clusters, { [clusterId]: entry }) };
}

function withoutWaiter(table: LeaseTable, ticket: string): LeaseTable {
  if (!(ticket in table.waiters)) return table;
  return { ...table, waiters: withRecords(table.waiters, { [ticket]: undefined }) };
}

/**
 * What is derived from a table (its free list, its waiting queue) stays true for a while: until
 * the pool list changes, or the next moment at which time alone changes the table's meaning (a
 * lease runs out, a replica's heartbeat lapses). Derived data is memoised per (immutable) table
 * for that window, so that the many decisions of a burst, and every replica's look at the same
 * table, share one computation; a decision that knows what it changed derives the next table's
 * data from the last instead of scanning the pool again.
 */
interface Derived<T> {
  clusters: readonly Cluster[];
  endState: 'free' | 'dirty';
  from: number;
  until: number;
  value: T;
}

/** The next moment after `now` at which time alone changes what the table means. */
const changeMemo = new WeakMap<LeaseTable, { now: number; next: number }>();

function nextTimeChange(table: LeaseTable, now: number): number {
  const known = changeMemo.get(table);
  if (known && known.now <= now && now < known.next) return known.next;
  let next = Number.POSITIVE_INFINITY;
  for (const clusterId in table.clusters) {
    const expiresAt = table.clusters[clusterId].lease?.expiresAt;
    if (expiresAt !== undefined && expiresAt > now && expiresAt < next) next = expiresAt;
  }
  for (const token in table.legacy) {
    const { expiresAt } = table.legacy[token];
    if (expiresAt > now && expiresAt < next) next = expiresAt;
  }
  for (const replica in table.replicas) {
    const { expiresAt } = table.replicas[replica];
    if (expiresAt > now && expiresAt < next) next = expiresAt;
  }
  changeMemo.set(table, { now, next });
  return next;
}

/**
 * Tables a store assembled from the one before and a few changed cluster records (a table split
 * over objects: one object changed), with the rest of the table the same.
 */
const lineage = new WeakMap<LeaseTable, { parent: LeaseTable; changed: readonly string[] }>();

/** Records that `table` is `parent` with only these clusters' records changed. */
export function succeeds(table: LeaseTable, parent: LeaseTable, changedClusters: readonly string[]): void {
  lineage.set(table, { parent, changed: changedClusters });
}

/** Past this many changed records, working a value out afresh is as cheap as carrying it over. */
const MAX_CARRIED_CHANGES = 256;

function derived<T>(
  memo: WeakMap<LeaseTable, Derived<T>>,
  table: LeaseTable,
  context: DecisionContext,
  compute: () => T,
  carry?: (parentValue: T, changed: readonly string[]) => T,
): T {
  const endState = context.endState ?? 'free';
  const valid = (known: Derived<T> | undefined): known is Derived<T> =>
    known !== undefined && known.clusters === context.clusters && known.endState === endState && known.from <= context.now && context.now < known.until;
  const known = memo.get(table);
  if (valid(known)) return known.value;
  const origin = carry && lineage.get(table);
  const parent = origin && memo.get(origin.parent);
  if (origin && carry && valid(parent) && origin.changed.length <= MAX_CARRIED_CHANGES) {
    // Still true of the parent until its window ends or a changed record's lease does.
    let until = parent.until;
    for (const clusterId of origin.changed) {
      const expiresAt = table.clusters[clusterId]?.lease?.expiresAt;
      if (expiresAt !== undefined && expiresAt > context.now) until = Math.min(until, expiresAt);
    }
    const value = carry(parent.value, origin.changed);
    changeMemo.set(table, { now: context.now, next: until });
    memo.set(table, { clusters: context.clusters, endState, from: context.now, until, value });
    return value;
  }
  const value = compute();
  memo.set(table, { clusters: context.clusters, endState, from: context.now, until: nextTimeChange(table, context.now), value });
  return value;
}

/**
 * Records what `table` derives, worked out from `parent`'s. Its window ends no later than the
 * parent's, nor than `expiresAt` (the lease the change made): no pass over the table.
 */
function remember<T>(memo: WeakMap<LeaseTable, Derived<T>>, table: LeaseTable, context: DecisionContext, value: T, parent: LeaseTable, expiresAt = Number.POSITIVE_INFINITY): void {
  const known = memo.get(parent);
  const parentUntil = known && known.from <= context.now && context.now < known.until ? known.until : nextTimeChange(parent, context.now);
  const until = Math.min(parentUntil, expiresAt);
  changeMemo.set(table, { now: context.now, next: until });
  memo.set(table, { clusters: context.clusters, endState: context.endState ?? 'free', from: context.now, until, value });
}

const freeListMemo = new WeakMap<LeaseTable, Derived<readonly Cluster[]>>();

/** The leasable free clusters at `context.now`, idle the longest first (ties by id). */
export function freeClusters(table: LeaseTable, context: DecisionContext): readonly Cluster[] {
  return derived(
    freeListMemo,
    table,
    context,
    () =>
      context.clusters
        .filter((cluster) => isLeasable(cluster) && effectiveState(table, cluster, context.now, context.endState) === 'free')
        .map((cluster) => ({ cluster, since: idleSince(table.clusters[cluster.id]) }))
        .sort((a, b) => a.since - b.since || (a.cluster.id < b.cluster.id ? -1 : 1))
        .map(({ cluster }) => cluster),
    (parentFree, changed) => carriedFree(parentFree, changed, table, context),
  );
}

/** A parent's free list with the changed clusters taken out and, where free now, put back in their place. */
function carriedFree(parentFree: readonly Cluster[], changed: readonly string[], table: LeaseTable, context: DecisionContext, rank?: (clusterId: string) => number): readonly Cluster[] {
  const changedSet = new Set(changed);
  let free = parentFree.some((cluster) => changedSet.has(cluster.id)) ? parentFree.filter((cluster) => !changedSet.has(cluster.id)) : parentFree;
  for (const clusterId of changed) {
    const cluster = clusterById(context.clusters, clusterId);
    if (cluster && isLeasable(cluster) && effectiveState(table, cluster, context.now, context.endState) === 'free') free = withFreed(free, cluster, table, rank);
  }
  return free;
}

/** `list` without `item` (usually its first: the cluster idle the longest), copied without a callback per element. */
function without<T>(list: readonly T[], item: T): readonly T[] {
  const index = list.indexOf(item);
  if (index < 0) return list;
  if (index === 0) return list.slice(1);
  return [...list.slice(0, index), ...list.slice(index + 1)];
}

/** The pool's clusters by id, per pool list. */
const byIdMemo = new WeakMap<readonly Cluster[], ReadonlyMap<string, Cluster>>();

export function clusterById(clusters: readonly Cluster[], id: string): Cluster | undefined {
  let index = byIdMemo.get(clusters);
  if (!index) {
    index = new Map(clusters.map((cluster) => [cluster.id, cluster]));
    byIdMemo.set(clusters, index);
  }
  return index.get(id);
}

/**
 * The free list once `cluster` became free at `now`: it has been idle the shortest, so it goes
 * last (among clusters freed in the same millisecond, by id), without a pass over the pool.
 */
function withFreed(free: readonly Cluster[], cluster: Cluster, table: LeaseTable, rank?: (clusterId: string) => number): readonly Cluster[] {
  const since = idleSince(table.clusters[cluster.id]);
  const clusterRank = rank?.(cluster.id) ?? 0;
  /** Whether `other` comes before `cluster`: idle longer, or as long and first by rank, then id. */
  const before = (other: Cluster) => {
    const otherSince = idleSince(table.clusters[other.id]);
    if (otherSince !== since) return otherSince < since;
    const otherRank = rank?.(other.id) ?? 0;
    return otherRank < clusterRank || (otherRank === clusterRank && other.id < cluster.id);
  };
  // Usually the newest to become free: at the end, found at once; else by halving.
  let low = 0;
  let high = free.length;
  if (high > 0 && before(free[high - 1] as Cluster)) low = high;
  while (low < high) {
    const middle = (low + high) >>> 1;
    if (before(free[middle] as Cluster)) low = middle + 1;
    else high = middle;
  }
  return [...free.slice(0, low), cluster, ...free.slice(low)];
}

/** Free lists in a replica's order of preference, with the preference they follow. */
const preferredMemo = new WeakMap<LeaseTable, Derived<{ prefer: (clusterId: string) => number; list: readonly Cluster[] }>>();

/** The free clusters in this replica's order of preference: idle the longest first, then `context.prefer`, then id. */
function preferredFree(table: LeaseTable, context: DecisionContext): readonly Cluster[] {
  const prefer = context.prefer;
  if (!prefer) return freeClusters(table, context);
  const known = derived(
    preferredMemo,
    table,
    context,
    () => ({
      prefer,
      list: freeClusters(table, context)
        .map((cluster) => ({ cluster, since: idleSince(table.clusters[cluster.id]), rank: prefer(cluster.id) }))
        .sort((a, b) => a.since - b.since || a.rank - b.rank || (a.cluster.id < b.cluster.id ? -1 : 1))
        .map(({ cluster }) => cluster),
    }),
    (parent, changed) => (parent.prefer === prefer ? { prefer, list: carriedFree(parent.list, changed, table, context, prefer) } : parent),
  );
  if (known.prefer === prefer) return known.list;
  // The preference changed (this replica moved on to other shards): worked out anew.
  preferredMemo.delete(table);
  return preferredFree(table, context);
}

/** The leasable clusters of the pool, per pool list. */
const leasableMemo = new WeakMap<readonly Cluster[], readonly Cluster[]>();

function leasableClusters(clusters: readonly Cluster[]): readonly Cluster[] {
  let leasable = leasableMemo.get(clusters);
  if (!leasable) {
    leasable = clusters.filter(isLeasable);
    leasableMemo.set(clusters, leasable);
  }
  return leasable;
}

const queueMemo = new WeakMap<LeaseTable, Derived<Queue>>();

/** The waiting queue of a table (see queue.ts). */
export function queueOf(table: LeaseTable, context: DecisionContext): Queue {
  // Nobody waits (the usual case): every free cluster is for whoever asks.
  for (const _ticket in table.waiters) {
    return queueWithWaiters(table, context);
  }
  return { order: [], assigned: new Map(), leftover: freeClusters(table, context), hopeless: new Set(), byPrincipal: new Map() };
}

function queueWithWaiters(table: LeaseTable, context: DecisionContext): Queue {
  return derived(queueMemo, table, context, () => {
    const prospects = context.prospects?.(table) ?? [];
    // A waiter whose filter only a cluster still to be made accepts is not hopeless: it waits for it.
    const possible = prospects.length > 0 ? [...leasableClusters(context.clusters), ...prospects] : leasableClusters(context.clusters);
    return computeQueue(table, context.now, context.clusters, freeClusters(table, context), possible);
  });
}

/** Live tickets at `now`. */
export function liveWaiters(table: LeaseTable, now: number): number {
  let live = 0;
  for (const ticket in table.waiters) if (ticketLive(table, table.waiters[ticket], now)) live += 1;
  return live;
}

/** How many bytes the stored filters take, roughly as the stores write them. */
function filtersBytes(filters: LeaseTable['filters']): number {
  let bytes = 0;
  for (const digest in filters) bytes += digest.length + canonicalFilter(filters[digest]).length + 48;
  return bytes;
}

/** Filters of waiting requests may take at most this much of the table, together. */
export const MAX_FILTER_BYTES = 32 * 1024;

/** The heartbeat of `replica` lasts at least half of `ttlMs` from now (renewed only then: wake-ups cost no write). */
function withHeartbeat(table: LeaseTable, replica: string, now: number, ttlMs: number): LeaseTable {
  const beat = table.replicas[replica];
  if (beat && beat.expiresAt - now > ttlMs / 2) return table;
  return { ...table, replicas: withRecords(table.replicas, { [replica]: { expiresAt: now + ttlMs } }) };
}

export interface AcquireRequest {
  tokenHash: string;
  /** The lease's public id; made up by the caller so that it can name things after it. */
  leaseId?: string;
  durationSeconds: number;
  /** Per-lease credentials to record: their token lives at least the TokenRequest minimum. */
  credentials?: { user: string; group: string };
  /** Whether the chosen cluster's pool gives per-lease credentials (unset: every pool does). */
  perLease?: (cluster: Cluster) => boolean;
  note?: string;
  holder?: string;
  /** The request's Idempotency-Key and body digest: a retry gets the same lease back. */
  idempotency?: Idempotency;
  filter?: ClusterFilter;
  /**
   * A request that may wait: when nothing is free it is queued under this ticket (or stays
   * queued) instead of failing, until `final`, its last try, which fails as usual.
   */
  wait?: WaitRequest;
}

export interface WaitRequest {
  ticket: string;
  /** Digest of the replica that holds the ticket, and how long its heartbeat lasts. */
  replica: string;
  ttlMs: number;
  /** Digest of who asks, for the per-principal cap. */
  principal: string;
  final?: boolean;
  /** Live tickets allowed per principal and in all. */
  caps: { perPrincipal: number; total: number };
}

export type AcquireResult =
  /** `replayed`: a retry with the Idempotency-Key of a live lease, which now answers to the new token. */
  | { granted: true; cluster: Cluster; lease: Lease; replayed?: boolean }
  | { granted: false; retryAfterSeconds: number };

/** The live lease a retry with this Idempotency-Key means, if any. */
function findByIdempotencyKey(table: LeaseTable, key: string, now: number): { clusterId: string; lease: Lease } | undefined {
  for (const [clusterId, entry] of Object.entries(table.clusters)) {
    const lease = liveLease(entry, now);
    if (lease?.idempotency?.key === key) return { clusterId, lease };
  }
  return undefined;
}

/**
 * Leases the matching free cluster that has been idle the longest (ties broken by id, so the
 * pick is deterministic). Every free cluster is a candidate: no random draws that miss one.
 * Older waiters come first: a newer request never takes the cluster an older waiter can use.
 */
export function acquire(request: AcquireRequest): Decision<AcquireResult> {
  return (table, context) => {
    const { now, clusters } = context;
    // Decided again after a write whose answer was lost? If it landed, this is its lease.
    const already = context.mayHaveLanded === false ? undefined : findLive(table, request.tokenHash, now);
    const landed = already && clusterById(clusters, already.clusterId);
    if (already && landed) return { table, result: { granted: true, cluster: landed, lease: already.lease } };
    const idempotency = request.idempotency;
    const earlier = idempotency && findByIdempotencyKey(table, idempotency.key, now);
    if (idempotency && earlier) {
      // A retry of a request whose answer was lost: the same lease, now under this request's
      // token (the lost one dies with the answer nobody got). Another body is another request.
      if (earlier.lease.idempotency?.fingerprint !== idempotency.fingerprint) throw new IdempotencyKeyReusedError();
      const cluster = clusterById(clusters, earlier.clusterId);
      if (cluster) {
        const lease: Lease = { ...earlier.lease, tokenHash: request.tokenHash };
        return { table: withEntry(table, earlier.clusterId, { state: 'leased', lease }), result: { granted: true, cluster, lease, replayed: true } };
      }
    }
    const filter = request.filter ?? {};
    const ticket = request.wait?.ticket;
    const queue = queueOf(table, context);
    const queued = ticket !== undefined && table.waiters[ticket] !== undefined && ticketLive(table, table.waiters[ticket], now) ? table.waiters[ticket] : undefined;
    // A waiter gets exactly the cluster the queue gives it; anyone else only what no waiter gets.
    // With nobody waiting, every free cluster is left over: which of those equally idle is this replica's choice.
    const leftover = !queued && queue.order.length === 0 && context.prefer ? preferredFree(table, context) : queue.leftover;
    const cluster = queued ? queue.assigned.get(ticket as string) : leftover.find((candidate) => matches(filter, candidate));
    if (cluster !== undefined) {
      const lease: Lease = {
        id: request.leaseId ?? request.tokenHash.slice(0, 16),
        tokenHash: request.tokenHash,
        startedAt: now,
        expiresAt: now + request.durationSeconds * 1000,
        ...(request.note !== undefined && { note: request.note }),
        ...(request.holder !== undefined && { holder: request.holder }),
        ...(request.credentials && (request.perLease?.(cluster) ?? true) && {
          credentials: { ...request.credentials, tokenExpiresAt: now + tokenLifetimeSeconds(request.durationSeconds) * 1000 },
        }),
        ...(idempotency && { idempotency }),
      };
      const base = ticket ? withoutWaiter(table, ticket) : table;
      const next = withEntry(base, cluster.id, { state: 'leased', lease });
      leaseHints.set(request.tokenHash, cluster.id);
      // What the next decision of a burst needs follows from this one's: no pass over the pool.
      remember(freeListMemo, next, context, without(freeClusters(table, context), cluster), table, lease.expiresAt);
      if (leftover !== queue.leftover && context.prefer) remember(preferredMemo, next, context, { prefer: context.prefer, list: without(leftover, cluster) }, table, lease.expiresAt);
      if (queued && base !== table) {
        rememberOrder(base.waiters, ticketOrder(table.waiters).filter(([id]) => id !== ticket));
        remember(queueMemo, next, context, afterGrant(queue, ticket as string, queued.principal), table, lease.expiresAt);
      } else if (!queued && base === table && queue.order.length > 0) {
        remember(queueMemo, next, context, afterNewcomer(queue, cluster), table, lease.expiresAt);
      }
      return { table: next, result: { granted: true, cluster, lease } };
    }
    const matching = clusters.filter((candidate) => isLeasable(candidate) && matches(filter, candidate));
    const toBeMade = matching.length === 0 && (context.prospects?.(table) ?? []).some((prospect) => matches(filter, prospect));
    if (matching.length === 0 && !toBeMade) {
      throw new NoClusterAvailableError('NoMatchingCluster', 'no cluster in the pool matches the request');
    }
    const busy = matching.filter((candidate) => effectiveState(table, candidate, now, context.endState) === 'leased');
    // Busy clusters end at their expiry; free ones that older waiters take, and clusters being
    // cleaned, are a matter of seconds; a cluster still to be made, a minute or so (the managed
    // pool's own estimate may be sooner).
    const soonestEnd = toBeMade ? now + 60_000 : busy.length < matching.length ? now : Math.min(...busy.map((candidate) => busyUntil(table, candidate, now)));
    const retryAfterSeconds = Math.max(1, Math.ceil((soonestEnd - now) / 1000));
    const wait = request.wait;
    if (!wait || wait.final) {
      throw new NoClusterAvailableError('AllLeased', 'every matching cluster is leased', retryAfterSeconds);
    }
    if (queued) return { table: withHeartbeat(table, wait.replica, now, wait.ttlMs), result: { granted: false, retryAfterSeconds } };
    // A new ticket: within the caps, so that waiters never crowd out the lease records.
    if (queue.order.length >= wait.caps.total) {
      throw new TooManyWaitersError(`${wait.caps.total} requests are waiting already (WAIT_MAX_TOTAL)`);
    }
    if ((queue.byPrincipal.get(wait.principal) ?? 0) >= wait.caps.perPrincipal) {
      throw new TooManyWaitersError(`you have ${wait.caps.perPrincipal} requests waiting already (WAIT_MAX_PER_PRINCIPAL)`);
    }
    const digest = filterDigest(filter);
    let filters = table.filters;
    if (!(digest in filters)) {
      filters = { ...filters, [digest]: filter };
      if (filtersBytes(filters) > MAX_FILTER_BYTES) throw new TooManyWaitersError('too many different filters are waiting already');
    }
    const waiter: Waiter = { since: queueTime(table, now), replica: wait.replica, principal: wait.principal, filter: digest };
    const waiters = withRecords(table.waiters, { [wait.ticket]: waiter });
    // The newest ticket comes last: the order follows without sorting.
    rememberOrder(waiters, [...ticketOrder(table.waiters), [wait.ticket, waiter]]);
    return {
      table: withHeartbeat({ ...table, waiters, filters }, wait.replica, now, wait.ttlMs),
      result: { granted: false, retryAfterSeconds },
    };
  };
}

/**
 * When a new waiter joins: now, but strictly after every waiter already queued, so that the
 * order of commits is the order of service even within one millisecond (or a stopped clock).
 */
function queueTime(table: LeaseTable, now: number): number {
  let latest = Number.NEGATIVE_INFINITY;
  for (const ticket in table.waiters) latest = Math.max(latest, table.waiters[ticket].since);
  return Math.max(now, latest + 1);
}

/** A waiter leaves the queue: it got tired, or its client went away. */
export function dropWaiter(ticket: string): Decision<void> {
  return (table) => ({ table: withoutWaiter(table, ticket), result: undefined });
}

/** Tickets that should be gone (their removal did not land where they live) go. */
export function dropWaiters(tickets: readonly string[]): Decision<void> {
  return (table) => {
    const present = tickets.filter((ticket) => ticket in table.waiters);
    if (present.length === 0) return { table, result: undefined };
    return { table: { ...table, waiters: withRecords(table.waiters, Object.fromEntries(present.map((ticket) => [ticket, undefined]))) }, result: undefined };
  };
}

/**
 * A replica's heartbeat: its tickets stay alive. Tickets it holds that none of its waiters has
 * any more (a drop that failed) go.
 */
export function heartbeat(replica: string, ttlMs: number, tickets: ReadonlySet<string>): Decision<void> {
  return (table, { now }) => {
    const stray = Object.keys(table.waiters).filter((ticket) => table.waiters[ticket].replica === replica && !tickets.has(ticket));
    let next = table;
    if (stray.length > 0) next = { ...table, waiters: withRecords(table.waiters, Object.fromEntries(stray.map((ticket) => [ticket, undefined]))) };
    if (tickets.size === 0) return { table: next, result: undefined };
    return { table: withHeartbeat(next, replica, now, ttlMs), result: undefined };
  };
}

/** At start-up: the tickets of this replica's earlier life, and its heartbeat, go at once. */
export function forgetReplica(replica: string): Decision<number> {
  return (table) => {
    const mine = Object.keys(table.waiters).filter((ticket) => table.waiters[ticket].replica === replica);
    if (mine.length === 0 && !(replica in table.replicas)) return { table, result: 0 };
    const waiters = withRecords(table.waiters, Object.fromEntries(mine.map((ticket) => [ticket, undefined])));
    const replicas = withRecords(table.replicas, { [replica]: undefined });
    return { table: { ...table, waiters, replicas }, result: mine.length };
  };
}

/**
 * Where a live lease with this token hash is, if anywhere. Plain comparison is safe here: what
 * is compared is the SHA-256 of the token the caller sent, so how long a comparison takes tells
 * at most how many leading digits of a hash match, which helps find no token.
 */
/** The cluster whose live lease has this token hash, if any. */
export function clusterOfLease(table: LeaseTable, tokenHash: string, now: number): string | undefined {
  return findLive(table, tokenHash, now)?.clusterId;
}

function findLive(table: LeaseTable, tokenHash: string, now: number): { clusterId: string; lease: Lease } | undefined {
  // Where the token was last seen is checked first; the table itself always decides.
  const hinted = leaseHints.get(tokenHash);
  if (hinted !== undefined) {
    const lease = liveLease(table.clusters[hinted], now);
    if (lease?.tokenHash === tokenHash) return { clusterId: hinted, lease };
  }
  for (const clusterId in table.clusters) {
    const lease = liveLease(table.clusters[clusterId], now);
    if (lease?.tokenHash === tokenHash) {
      leaseHints.set(tokenHash, clusterId);
      return { clusterId, lease };
    }
  }
  return undefined;
}

/**
 * Which cluster each recent token hash leased: a hint that spares releases and extensions a
 * pass over the table (whoever asks, the table's record is what counts). Bounded, oldest first out.
 */
const leaseHints = new LRUCache<string, string>({ max: 100_000 });

function findLiveLegacy(table: LeaseTable, tokenHash: string, now: number): string | undefined {
  for (const legacyToken in table.legacy) {
    if (now < table.legacy[legacyToken].expiresAt && hashToken(legacyToken) === tokenHash) return legacyToken;
  }
  return undefined;
}

/** The TokenRequest API's minimum is 10 minutes: a shorter lease's token outlives it (and is revoked). */
export function tokenLifetimeSeconds(leaseSeconds: number): number {
  return Math.max(600, leaseSeconds);
}

/**
 * How long a token minted for an extension of `durationSeconds` lives: three such extensions, so
 * that a heartbeat which extends by its duration every third of it mints a token every few
 * beats rather than at each; never past the longest the lease may last; at least the API's 600 s.
 */
export function refreshedTokenSeconds(lease: Lease, durationSeconds: number, maxLeaseSeconds: number, now: number): number {
  const untilLimit = Math.floor((lease.startedAt + maxLeaseSeconds * 1000 - now) / 1000);
  return Math.max(600, Math.min(3 * durationSeconds, untilLimit));
}

/** The TokenRequest API reports expiries to the second: closer than that, two expiries are one. */
const TOKEN_EXPIRY_PRECISION_MS = 1000;

/** Whether a lease that now ends at `expiresAt` would outlive its token (then it needs a fresh one). */
export function needsFreshToken(credentials: LeaseCredentials, expiresAt: number): boolean {
  return expiresAt > credentials.tokenExpiresAt - TOKEN_EXPIRY_PRECISION_MS;
}

/**
 * Whether a token the API says dies at `tokenExpiresAt` dies before what the table recorded: an
 * API server that caps token lifetimes (--service-account-max-token-expiration) gives less than
 * was asked for.
 */
export function tokenDiesEarlier(credentials: LeaseCredentials, tokenExpiresAt: number): boolean {
  return tokenExpiresAt < credentials.tokenExpiresAt - TOKEN_EXPIRY_PRECISION_MS;
}

/**
 * Records when the live lease's token really dies, when that is earlier than recorded, so that
 * an extension past it mints a fresh one. No-op when the lease is gone or has no credentials.
 */
export function recordTokenExpiry(tokenHash: string, tokenExpiresAt: number): Decision<void> {
  return (table, { now }) => {
    const live = findLive(table, tokenHash, now);
    const credentials = live?.lease.credentials;
    if (!live || !credentials || !tokenDiesEarlier(credentials, tokenExpiresAt)) return { table, result: undefined };
    const lease = { ...live.lease, credentials: { ...credentials, tokenExpiresAt } };
    return { table: withEntry(table, live.clusterId, { state: 'leased', lease }), result: undefined };
  };
}

/** Ends the live lease with this token hash at once: free for the next request, or dirty until cleaned. */
export function release(tokenHash: string): Decision<{ clusterId: string; note?: string }> {
  return (table, { now, clusters, endState, prefer }) => {
    const live = findLive(table, tokenHash, now);
    if (live) {
      const entry = ended(now, endState, live.lease);
      const next = withEntry(table, live.clusterId, entry);
      // A cluster freed at once joins the free list's end: the next acquire needs no pass over the pool.
      const cluster = clusterById(clusters, live.clusterId);
      if (entry.state === 'free' && cluster && isLeasable(cluster) && effectiveState(next, cluster, now, endState) === 'free') {
        const context = { now, clusters, endState, ...(prefer && { prefer }) };
        remember(freeListMemo, next, context, withFreed(freeClusters(table, context), cluster, next), table);
        if (prefer && preferredMemo.has(table)) remember(preferredMemo, next, context, { prefer, list: withFreed(preferredFree(table, context), cluster, next, prefer) }, table);
      }
      return { table: next, result: { clusterId: live.clusterId, ...(live.lease.note !== undefined && { note: live.lease.note }) } };
    }
    const legacyToken = findLiveLegacy(table, tokenHash, now);
    if (legacyToken !== undefined) {
      const { [legacyToken]: released, ...rest } = table.legacy;
      const clusterId = clusters.find((cluster) => cluster.name === released.clusterName)?.id ?? released.clusterName;
      return { table: { ...table, legacy: rest }, result: { clusterId } };
    }
    throw new LeaseNotFoundError();
  };
}

/**
 * The lease now ends `durationSeconds` from now (sooner or later than before), but never more
 * than `maxLeaseSeconds` after it began: beyond that, 400 with `max_time_left`, the whole
 * seconds it can still be extended by from now.
 */
export function extend(
  tokenHash: string,
  durationSeconds: number,
  maxLeaseSeconds: number,
  /** A fresh token was minted for the extension: when it stops working. */
  tokenExpiresAt?: number,
): Decision<{ clusterId: string; lease: Lease }> {
  return (table, { now }) => {
    const live = findLive(table, tokenHash, now);
    if (!live) throw new LeaseNotFoundError();
    const expiresAt = now + durationSeconds * 1000;
    const limit = live.lease.startedAt + maxLeaseSeconds * 1000;
    if (expiresAt > limit) {
      const left = Math.max(0, Math.floor((limit - now) / 1000));
      throw new BadRequestError(
        `max_time: a lease may last at most ${maxLeaseSeconds} seconds from its start; this one can be extended by at most ${left} seconds from now`,
        ['max_time'],
        { max_time_left: left },
      );
    }
    const credentials = live.lease.credentials && tokenExpiresAt !== undefined ? { ...live.lease.credentials, tokenExpiresAt } : live.lease.credentials;
    const lease = { ...live.lease, expiresAt, ...(credentials && { credentials }) };
    return { table: withEntry(table, live.clusterId, { state: 'leased', lease }), result: { clusterId: live.clusterId, lease } };
  };
}

export interface EndedLease {
  clusterId: string;
  expiredAt: number;
  note?: string;
  holder?: string;
}

export interface ReapOptions {
  /** Free records of clusters missing from the pool this long are removed; 0 keeps them. */
  forgetDepartedMs?: number;
  /** The longest lease (MAX_LEASE_SECONDS): a record that claims to last longer is cut to it. */
  maxLeaseMs?: number;
  /** The longest a waiter's ticket lives without renewal. */
  ticketTtlMs?: number;
  /** The furthest ahead a cleanup claim's deadline or a retry may be (the quarantine's retry). */
  maxCleanupWaitMs?: number;
  /** Only these clusters' records (a table split over objects reaps each object's on its own); default all. */
  only?: readonly string[];
  /** Whether the original claimer's records, tickets, heartbeats and filters are reaped too (default). */
  others?: boolean;
}

export interface Reaped {
  ended: EndedLease[];
  /** Records of clusters that left the pool, removed. */
  forgotten: string[];
  /** Records dated in the future (a replica with a wrong clock wrote them), brought back to now. */
  clamped: string[];
}

/** How far ahead of this replica's clock a record may be before it counts as dated in the future. */
export const CLOCK_SKEW_MS = 60_000;
const DEFAULT_TICKET_TTL_MS = 30_000;

/**
 * A record as it would be had its writer's clock been right: nothing starts in the future and
 * nothing lasts longer than the limits allow, so that no record outlives its purpose because
 * a replica's clock ran ahead. Returns the same object when nothing needs changing.
 */
function clampEntry(entry: ClusterEntry, now: number, maxLeaseMs: number, maxCleanupWaitMs: number): ClusterEntry {
  const future = now + CLOCK_SKEW_MS;
  let clamped = entry;
  const cleanup = entry.cleanup;
  if (cleanup && ((cleanup.deadline ?? 0) > now + maxCleanupWaitMs || (cleanup.retryAt ?? 0) > now + maxCleanupWaitMs)) {
    // A claim or a retry dated past any the janitor makes: due now rather than in a year.
    clamped = { ...clamped, cleanup: { ...cleanup, ...(cleanup.deadline !== undefined && { deadline: Math.min(cleanup.deadline, now) }), ...(cleanup.retryAt !== undefined && { retryAt: Math.min(cleanup.retryAt, now + maxCleanupWaitMs) }) } };
  }
  if (entry.idleSince !== undefined && entry.idleSince > future) clamped = { ...clamped, idleSince: now };
  if (entry.missingSince !== undefined && entry.missingSince > future) clamped = { ...clamped, missingSince: now };
  const lease = entry.lease;
  if (lease) {
    // A lease begun in the future keeps its length but begins now; none outlasts the limit.
    const startedAt = lease.startedAt > future ? now : lease.startedAt;
    const length = Math.min(lease.expiresAt - lease.startedAt, maxLeaseMs);
    const expiresAt = Math.min(startedAt + length, now + maxLeaseMs);
    if (startedAt !== lease.startedAt || expiresAt !== lease.expiresAt) clamped = { ...clamped, lease: { ...lease, startedAt, expiresAt } };
  }
  return clamped;
}

/**
 * Writes down what time alone has decided: expired leases end (their cluster idle since the
 * expiry), expired records of the original claimer and lapsed waiter tickets go, free records
 * of clusters long gone from the pool are forgotten, and records dated in the future are
 * brought back to now.
 */
export function reap(options: ReapOptions = {}): Decision<Reaped> {
  const forgetMs = options.forgetDepartedMs ?? 0;
  const maxLeaseMs = options.maxLeaseMs ?? Number.POSITIVE_INFINITY;
  const ticketTtlMs = options.ticketTtlMs ?? DEFAULT_TICKET_TTL_MS;
  const maxCleanupWaitMs = options.maxCleanupWaitMs ?? Number.POSITIVE_INFINITY;
  return (table, { now, endState, clusters }) => {
    const result: Reaped = { ended: [], forgotten: [], clamped: [] };
    let clustersChanged: Record<string, ClusterEntry> | undefined;
    const changedIds: string[] = [];
    for (const clusterId of options.only ?? Object.keys(table.clusters)) {
      const original = table.clusters[clusterId];
      // A record this version cannot read is never rewritten.
      if (original === undefined || original.state === 'unknown') continue;
      let entry = clampEntry(original, now, maxLeaseMs, maxCleanupWaitMs);
      if (entry !== original) result.clamped.push(clusterId);
      const lease = entry.lease;
      if (entry.state === 'leased' && lease && now >= lease.expiresAt) {
        entry = ended(lease.expiresAt, endState, lease);
        result.ended.push({
          clusterId,
          expiredAt: lease.expiresAt,
          ...(lease.note !== undefined && { note: lease.note }),
          ...(lease.holder !== undefined && { holder: lease.holder }),
        });
      }
      let forget = false;
      if (clusterById(clusters, clusterId) !== undefined) {
        if (entry.missingSince !== undefined) {
          const { missingSince: _back, ...rest } = entry;
          entry = rest;
        }
      } else if (entry.state === 'free') {
        // Only free records go: a lease, a cleanup or a claim on a missing cluster is kept until it ends.
        if (entry.missingSince === undefined) entry = { ...entry, missingSince: now };
        else if (forgetMs > 0 && now - entry.missingSince >= forgetMs) forget = true;
      }
      if (forget) {
        clustersChanged ??= { ...table.clusters };
        delete clustersChanged[clusterId];
        changedIds.push(clusterId);
        result.forgotten.push(clusterId);
      } else if (entry !== original) {
        clustersChanged ??= { ...table.clusters };
        clustersChanged[clusterId] = entry;
        changedIds.push(clusterId);
      }
    }
    if (options.others === false) {
      if (!clustersChanged) return { table, result };
      return { table: { ...table, clusters: derivedFrom(clustersChanged, table.clusters, changedIds) }, result };
    }
    let legacyChanged = false;
    const legacyLeft: Record<string, LegacyLease> = {};
    for (const [token, legacy] of Object.entries(table.legacy)) {
      if (now >= legacy.expiresAt) {
        legacyChanged = true;
        continue;
      }
      const expiresAt = Math.min(legacy.expiresAt, now + maxLeaseMs);
      if (expiresAt !== legacy.expiresAt) legacyChanged = true;
      legacyLeft[token] = expiresAt === legacy.expiresAt ? legacy : { ...legacy, expiresAt };
    }
    // Heartbeats that lapsed go, with their tickets; none lasts longer than a ticket may.
    let replicasChanged = false;
    const replicasLeft: Record<string, ReplicaHeartbeat> = {};
    for (const [replica, beat] of Object.entries(table.replicas)) {
      if (now >= beat.expiresAt) {
        replicasChanged = true;
        continue;
      }
      const expiresAt = Math.min(beat.expiresAt, now + ticketTtlMs);
      if (expiresAt !== beat.expiresAt) replicasChanged = true;
      replicasLeft[replica] = expiresAt === beat.expiresAt ? beat : { expiresAt };
    }
    let waitersChanged = false;
    const waitersLeft: Record<string, Waiter> = {};
    const referenced = new Set<string>();
    for (const [ticket, waiter] of Object.entries(table.waiters)) {
      if (!(waiter.replica in replicasLeft)) {
        waitersChanged = true;
        continue;
      }
      referenced.add(waiter.filter);
      const since = waiter.since > now + CLOCK_SKEW_MS ? now : waiter.since;
      if (since !== waiter.since) waitersChanged = true;
      waitersLeft[ticket] = since === waiter.since ? waiter : { ...waiter, since };
    }
    // A filter no ticket names any more is not kept.
    const filtersLeft = Object.fromEntries(Object.entries(table.filters).filter(([digest]) => referenced.has(digest)));
    const filtersChanged = Object.keys(filtersLeft).length !== Object.keys(table.filters).length;
    if (!clustersChanged && !legacyChanged && !waitersChanged && !replicasChanged && !filtersChanged) return { table, result };
    return {
      table: {
        clusters: clustersChanged ? derivedFrom(clustersChanged, table.clusters, changedIds) : table.clusters,
        legacy: legacyChanged ? legacyLeft : table.legacy,
        waiters: waitersChanged ? waitersLeft : table.waiters,
        filters: filtersChanged ? filtersLeft : table.filters,
        replicas: replicasChanged ? replicasLeft : table.replicas,
      },
      result,
    };
  };
}

// ---- the janitor: dirty -> cleaning -> free --------------------------------------------

/** A failed cleanup waits this long before the next try: 1 s, 2 s, 4 s, ... at most 15 s. */
export function cleanupBackoffMs(attempts: number): number {
  return Math.min(15_000, 1000 * 2 ** Math.max(0, attempts - 1));
}

/** When cleanup gives up for a while: after this many failed attempts in a row, quarantine, retried this rarely. */
export interface CleanupLimits {
  maxAttempts: number;
  quarantineRetryMs: number;
  /**
   * Quarantine also needs the cluster to have waited for cleanup this long since its lease
   * ended: attempts that fail at once (its API server away for a few seconds, during an
   * upgrade) must not put it out of service for an hour.
   */
  quarantineAfterMs: number;
}

export const defaultCleanupLimits: CleanupLimits = { maxAttempts: 5, quarantineRetryMs: 3_600_000, quarantineAfterMs: 600_000 };

/**
 * Clusters a janitor may take now: dirty or quarantined and due, or cleaning under a claim
 * that lapsed. An expired lease the reaper has not written down yet waits for it (so its end
 * is logged).
 */
export function cleanupDue(table: LeaseTable, { now, clusters }: DecisionContext): Cluster[] {
  return clusters.filter((cluster) => {
    const entry = table.clusters[cluster.id];
    if (entry?.state === 'dirty' || entry?.state === 'quarantined') return (entry.cleanup?.retryAt ?? 0) <= now;
    return entry?.state === 'cleaning' && (entry.cleanup?.deadline ?? 0) <= now;
  });
}

/** What a janitor that claimed a cluster must do besides the configured cleanup. */
export interface CleanupClaim {
  /** Leases whose credentials must be revoked (and confirmed gone) before the cluster is free. */
  revoke: readonly string[];
}

/** A janitor claims a cluster to clean it; false when it is not due (another replica has it). */
export function startCleanup(clusterId: string, owner: string, claimMs: number): Decision<CleanupClaim | false> {
  return (table, context) => {
    const cluster = context.clusters.find((candidate) => candidate.id === clusterId);
    if (!cluster || !cleanupDue(table, { ...context, clusters: [cluster] }).length) return { table, result: false };
    const entry = table.clusters[clusterId];
    const attempts = entry?.cleanup?.attempts ?? 0;
    const revoke = entry?.cleanup?.revoke ?? [];
    const cleaning: ClusterEntry = {
      state: 'cleaning',
      idleSince: entry?.state === 'leased' && entry.lease ? entry.lease.expiresAt : entry?.idleSince ?? context.now,
      cleanup: {
        owner,
        deadline: context.now + claimMs,
        attempts,
        ...(entry?.cleanup?.lastError && { lastError: entry.cleanup.lastError }),
        ...(revoke.length > 0 && { revoke }),
      },
    };
    return { table: withEntry(table, clusterId, cleaning), result: { revoke } };
  };
}

function heldBy(entry: ClusterEntry | undefined, owner: string): boolean {
  return entry?.state === 'cleaning' && entry.cleanup?.owner === owner;
}

/** What a janitor tells the table while it works: credentials now confirmed revoked, what it waits for. */
export interface CleanupProgress {
  revoked?: readonly string[];
  /** Shown in /leases as the cleanup's last_error meanwhile (e.g. namespaces stuck terminating). */
  note?: string;
}

/**
 * A janitor at work keeps its claim: the deadline moves to `claimMs` from now. False when the
 * claim is no longer this janitor's (taken over, and maybe cleaned and leased again): it must
 * stop at once, touching nothing more in the cluster.
 */
export function renewCleanup(clusterId: string, owner: string, claimMs: number, progress: CleanupProgress = {}): Decision<boolean> {
  return (table, { now }) => {
    const entry = table.clusters[clusterId];
    if (!heldBy(entry, owner)) return { table, result: false };
    const { revoke, ...cleanup } = entry.cleanup ?? { attempts: 0 };
    const left = (revoke ?? []).filter((leaseId) => !progress.revoked?.includes(leaseId));
    const renewed: ClusterEntry = {
      ...entry,
      cleanup: {
        ...cleanup,
        deadline: now + claimMs,
        ...(progress.note !== undefined && { lastError: progress.note }),
        ...(left.length > 0 && { revoke: left }),
      },
    };
    return { table: withEntry(table, clusterId, renewed), result: true };
  };
}

/** The cluster is clean: free for the next lease. False when another janitor took it over. */
export function finishCleanup(clusterId: string, owner: string): Decision<boolean> {
  return (table, { now }) => {
    if (!heldBy(table.clusters[clusterId], owner)) return { table, result: false };
    return { table: withEntry(table, clusterId, { state: 'free', idleSince: now }), result: true };
  };
}

/** The clusters this owner's claims hold. */
export function ownClaims(table: LeaseTable, owner: string): string[] {
  return Object.keys(table.clusters).filter((clusterId) => heldBy(table.clusters[clusterId], owner));
}

/**
 * A replica starting up gives back the claims it left when it stopped (its name survives
 * restarts): dirty again and due now, with their attempts, reasons and credentials to revoke.
 * Nothing of that work is running any more, so nobody need wait for those claims to lapse.
 */
export function releaseOwnClaims(owner: string): Decision<string[]> {
  return (table) => {
    const released = ownClaims(table, owner);
    if (released.length === 0) return { table, result: released };
    const clusters = { ...table.clusters };
    derivedFrom(clusters, table.clusters, released);
    for (const clusterId of released) {
      const { idleSince: since, cleanup } = clusters[clusterId];
      clusters[clusterId] = {
        state: 'dirty',
        ...(since !== undefined && { idleSince: since }),
        cleanup: {
          attempts: cleanup?.attempts ?? 0,
          ...(cleanup?.lastError !== undefined && { lastError: cleanup.lastError }),
          ...(cleanup?.revoke?.length && { revoke: cleanup.revoke }),
        },
      };
    }
    return { table: { ...table, clusters }, result: released };
  };
}

/**
 * The cleanup failed: dirty again, retried after a backoff; the reason shows in /leases. After
 * `limits.maxAttempts` failures in a row the cluster is quarantined instead: never leased,
 * retried only every `limits.quarantineRetryMs`, until a retry succeeds or an operator
 * returns it to service — except while credentials of an ended lease are not yet confirmed
 * revoked: those keep being retried at the usual backoff. The answer says which state it is
 * in now (false: the claim was not this janitor's).
 */
export function failCleanup(
  clusterId: string,
  owner: string,
  reason: string,
  limits: CleanupLimits = defaultCleanupLimits,
): Decision<'dirty' | 'quarantined' | false> {
  return (table, { now }) => {
    const entry = table.clusters[clusterId];
    if (!heldBy(entry, owner)) return { table, result: false };
    const attempts = (entry.cleanup?.attempts ?? 0) + 1;
    const waitingSince = entry.idleSince ?? now;
    const state = attempts >= limits.maxAttempts && now - waitingSince >= limits.quarantineAfterMs ? 'quarantined' : 'dirty';
    const rarely = state === 'quarantined' && !entry.cleanup?.revoke?.length;
    const failed: ClusterEntry = {
      state,
      ...(entry.idleSince !== undefined && { idleSince: entry.idleSince }),
      cleanup: {
        attempts,
        lastError: reason,
        retryAt: now + (rarely ? limits.quarantineRetryMs : cleanupBackoffMs(attempts)),
        ...(entry.cleanup?.revoke?.length && { revoke: entry.cleanup.revoke }),
      },
    };
    return { table: withEntry(table, clusterId, failed), result: state };
  };
}

/**
 * An operator returns a cluster to service (POST /cleanup): a quarantined (or dirty) cluster
 * is dirty again, due now, with its attempts reset; what it must still revoke stays.
 * NotFoundError when the pool has no such cluster; ClusterStateError in any other state.
 */
export function retryCleanup(clusterId: string): Decision<{ view: ClusterView; now: number }> {
  return (table, context) => {
    const cluster = context.clusters.find((candidate) => candidate.id === clusterId);
    if (!cluster) throw new NotFoundError('no cluster of the pool has this id', { reason: 'NoSuchCluster' });
    const entry = table.clusters[clusterId];
    if (entry?.state !== 'quarantined' && entry?.state !== 'dirty') {
      const state = effectiveState(table, cluster, context.now, context.endState);
      throw new ClusterStateError(`the cluster is ${state}: only a quarantined or dirty cluster can be cleaned again`);
    }
    const dirty: ClusterEntry = {
      state: 'dirty',
      ...(entry.idleSince !== undefined && { idleSince: entry.idleSince }),
      cleanup: {
        attempts: 0,
        ...(entry.cleanup?.lastError !== undefined && { lastError: entry.cleanup.lastError }),
        ...(entry.cleanup?.revoke?.length && { revoke: entry.cleanup.revoke }),
      },
    };
    const next = withEntry(table, clusterId, dirty);
    return { table: next, result: { view: describeClusters(next, { ...context, clusters: [cluster] })[0], now: context.now } };
  };
}

// ---- views: answers that change nothing -------------------------------------------------

export interface ClusterView {
  cluster: Cluster;
  state: EffectiveState | 'unavailable';
  idleSince?: number;
  lease?: Lease;
  cleanup?: Cleanup;
  /** A lease of the original k8s-claimer holds it. */
  legacy?: LegacyLease;
  /** Of a cluster a managed pool made: its leases, the operation under way, its last failure. */
  managed?: ManagedRecord;
}

export function describeClusters(table: LeaseTable, { now, clusters, endState }: DecisionContext): ClusterView[] {
  return clusters.map((cluster) => {
    const entry = table.clusters[cluster.id];
    const lease = liveLease(entry, now);
    const legacy = liveLegacyLease(table, cluster.name, now);
    const since = idleSince(entry);
    const effective = effectiveState(table, cluster, now, endState);
    const state = effective === 'free' && !isLeasable(cluster) ? 'unavailable' : effective;
    return {
      cluster,
      state,
      ...(state === 'free' && Number.isFinite(since) && { idleSince: since }),
      ...((state === 'dirty' || state === 'cleaning' || state === 'quarantined') && entry?.cleanup && { cleanup: entry.cleanup }),
      ...(lease && { lease }),
      ...(legacy && !lease && { legacy }),
      ...(entry?.managed && { managed: entry.managed }),
    };
  });
}


/** The live lease with this token, for GET /lease/{token}. */
/** Whether the table holds a live lease of this token, whether or not its cluster is in the pool list. */
export function holdsLiveLease(table: LeaseTable, tokenHash: string, now: number): boolean {
  return findLive(table, tokenHash, now) !== undefined || findLiveLegacy(table, tokenHash, now) !== undefined;
}

export function describeLease(table: LeaseTable, tokenHash: string, context: DecisionContext): ClusterView {
  const live = findLive(table, tokenHash, context.now);
  if (live) {
    const cluster = context.clusters.find((candidate) => candidate.id === live.clusterId);
    if (cluster) return { cluster, state: 'leased', lease: live.lease };
  }
  const legacyToken = findLiveLegacy(table, tokenHash, context.now);
  if (legacyToken !== undefined) {
    const legacy = table.legacy[legacyToken];
    const cluster = context.clusters.find((candidate) => candidate.name === legacy.clusterName);
    if (cluster) return { cluster, state: 'leased', legacy };
  }
  throw new LeaseNotFoundError();
}

/**
 * Whether `fresh` holds every change that turns `base` into `next`: how the write path tells
 * that a write whose answer was lost did land. Records carry unique token hashes and times,
 * so nobody else writes the same values.
 */
export function holdsChanges(base: LeaseTable, next: LeaseTable, fresh: LeaseTable): boolean {
  const sections = ['clusters', 'legacy', 'waiters', 'filters', 'replicas'] as const;
  return sections.every((section) => {
    const before: Readonly<Record<string, unknown>> = base[section];
    const after: Readonly<Record<string, unknown>> = next[section];
    const now: Readonly<Record<string, unknown>> = fresh[section];
    const keys = new Set([...Object.keys(before), ...Object.keys(after)]);
    return [...keys].every((key) => before[key] === after[key] || isDeepStrictEqual(now[key], after[key]));
  });
}
