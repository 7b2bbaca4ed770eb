// The lease table and the pure decisions over it. A decision takes the table, the pool and
// the time, and returns a new table and an answer: no I/O and no clock of its own, so every
// rule here is a plain table test. The write path (write-path.ts) is the only caller that
// persists what they return.

import { isDeepStrictEqual } from 'node:util';
import { matches, type ClusterFilter } from './cluster-filter.ts';
import { BadRequestError, ClusterStateError, LeaseNotFoundError, NoClusterAvailableError, NotFoundError } from './errors.ts';
import { isLeasable, type Cluster } from './providers/types.ts';
import { hashToken, tokenHashesEqual } from './tokens.ts';

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
export type ClusterState = 'free' | 'leased' | 'dirty' | 'cleaning' | 'quarantined' | 'unknown';

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
}

export interface ClusterEntry {
  state: ClusterState;
  /** When the cluster last became idle; the cluster idle the longest is leased first. */
  idleSince?: number;
  lease?: Lease;
  cleanup?: Cleanup;
}

/** A lease written by the original Go k8s-claimer: found by cluster name, keyed by its plain token. */
export interface LegacyLease {
  clusterName: string;
  expiresAt: number;
}

/**
 * A request waiting for a cluster, on some replica. Stored in the shared table so that every
 * replica serves waiters first come, first served: a cluster a waiter can use goes to the
 * oldest such waiter, never to a newer request. The replica renews `expiresAt` while its
 * client waits, so the ticket of a replica that died lapses within seconds.
 */
export interface Waiter {
  since: number;
  expiresAt: number;
  filter: ClusterFilter;
}

export interface LeaseTable {
  /** Keyed by cluster id. A cluster with no entry has never been leased. */
  clusters: Readonly<Record<string, ClusterEntry>>;
  /** Keyed by the original's lease token (its annotation key). */
  legacy: Readonly<Record<string, LegacyLease>>;
  /** Keyed by ticket id. */
  waiters: Readonly<Record<string, Waiter>>;
}

export const emptyTable: LeaseTable = Object.freeze({ clusters: {}, legacy: {}, waiters: {} });

export interface DecisionContext {
  now: number;
  clusters: readonly Cluster[];
  /** What a lease's end leaves: `dirty` when cleanup or revocation has work to do. Default `free`. */
  endState?: 'free' | 'dirty';
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
  return entry?.state ?? 'free';
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
  return { ...table, clusters: { ...table.clusters, [clusterId]: entry } };
}

function withoutWaiter(table: LeaseTable, ticket: string): LeaseTable {
  if (!(ticket in table.waiters)) return table;
  const { [ticket]: _gone, ...waiters } = table.waiters;
  return { ...table, waiters };
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
      .filter((cluster) => isLeasable(cluster) && effectiveState(table, cluster, context.now, context.endState) === 'free')
      .map((cluster) => ({ cluster, since: idleSince(table.clusters[cluster.id]) }))
      .sort((a, b) => a.since - b.since || (a.cluster.id < b.cluster.id ? -1 : 1))
      .map(({ cluster }) => cluster);
    memo.set(table, free);
  }
  return free;
}

/** Live waiters that came before `ticket` (all of them for a request that has none), oldest first. */
function waitersBefore(table: LeaseTable, now: number, ticket?: string): Array<[string, Waiter]> {
  const own = ticket ? table.waiters[ticket] : undefined;
  const older = (id: string, waiter: Waiter) =>
    !own || waiter.since < own.since || (waiter.since === own.since && id < (ticket as string));
  return Object.entries(table.waiters)
    .filter(([id, waiter]) => id !== ticket && now < waiter.expiresAt && older(id, waiter))
    .sort(([idA, a], [idB, b]) => a.since - b.since || (idA < idB ? -1 : 1));
}

/** The free clusters left once every older waiter has taken the first free cluster it accepts. */
function freeForMe(table: LeaseTable, context: DecisionContext, ticket?: string): readonly Cluster[] {
  const free = freeClusters(table, context);
  const ahead = Object.keys(table.waiters).length === 0 ? [] : waitersBefore(table, context.now, ticket);
  if (ahead.length === 0) return free;
  const left = [...free];
  for (const [, waiter] of ahead) {
    const taken = left.findIndex((cluster) => matches(waiter.filter, cluster));
    if (taken >= 0) left.splice(taken, 1);
  }
  return left;
}

export interface AcquireRequest {
  tokenHash: string;
  /** The lease's public id; made up by the caller so that it can name things after it. */
  leaseId?: string;
  durationSeconds: number;
  /** Per-lease credentials to record: their token lives at least the TokenRequest minimum. */
  credentials?: { user: string; group: string };
  note?: string;
  holder?: string;
  filter?: ClusterFilter;
  /**
   * A request that may wait: when nothing is free it is queued under this ticket (or stays
   * queued) instead of failing, until `final`, its last try, which fails as usual.
   */
  wait?: { ticket: string; ttlMs: number; final?: boolean };
}

export type AcquireResult =
  | { granted: true; cluster: Cluster; lease: Lease }
  | { granted: false; retryAfterSeconds: number };

/**
 * Leases the matching free cluster that has been idle the longest (ties broken by id, so the
 * pick is deterministic). Every free cluster is a candidate: no random draws that miss one.
 * Older waiters come first: a newer request never takes the cluster an older waiter can use.
 */
export function acquire(request: AcquireRequest): Decision<AcquireResult> {
  return (table, context) => {
    const { now, clusters } = context;
    // Decided again after a write whose answer was lost? If it landed, this is its lease.
    const already = findLive(table, request.tokenHash, now);
    const landed = already && clusters.find((cluster) => cluster.id === already.clusterId);
    if (already && landed) return { table, result: { granted: true, cluster: landed, lease: already.lease } };
    const filter = request.filter ?? {};
    const ticket = request.wait?.ticket;
    const cluster = freeForMe(table, context, ticket).find((candidate) => matches(filter, candidate));
    if (cluster !== undefined) {
      const lease: Lease = {
        id: request.leaseId ?? request.tokenHash.slice(0, 16),
        tokenHash: request.tokenHash,
        startedAt: now,
        expiresAt: now + request.durationSeconds * 1000,
        ...(request.note !== undefined && { note: request.note }),
        ...(request.holder !== undefined && { holder: request.holder }),
        ...(request.credentials && {
          credentials: { ...request.credentials, tokenExpiresAt: now + tokenLifetimeSeconds(request.durationSeconds) * 1000 },
        }),
      };
      const base = ticket ? withoutWaiter(table, ticket) : table;
      const next = withEntry(base, cluster.id, { state: 'leased', lease });
      if (base === table) memoFor(context).set(next, freeClusters(table, context).filter((candidate) => candidate !== cluster));
      return { table: next, result: { granted: true, cluster, lease } };
    }
    const matching = clusters.filter((candidate) => isLeasable(candidate) && matches(filter, candidate));
    if (matching.length === 0) {
      throw new NoClusterAvailableError('NoMatchingCluster', 'no cluster in the pool matches the request');
    }
    const busy = matching.filter((candidate) => effectiveState(table, candidate, now, context.endState) === 'leased');
    // Busy clusters end at their expiry; free ones that older waiters take, and clusters being
    // cleaned, are a matter of seconds.
    const soonestEnd = busy.length < matching.length ? now : Math.min(...busy.map((candidate) => busyUntil(table, candidate, now)));
    const retryAfterSeconds = Math.max(1, Math.ceil((soonestEnd - now) / 1000));
    if (!request.wait || request.wait.final) {
      throw new NoClusterAvailableError('AllLeased', 'every matching cluster is leased', retryAfterSeconds);
    }
    const existing = table.waiters[request.wait.ticket];
    // Renew only when half the ticket's time is gone: wake-ups then cost no write.
    if (existing && existing.expiresAt - now > request.wait.ttlMs / 2) return { table, result: { granted: false, retryAfterSeconds } };
    const waiter: Waiter = { since: existing?.since ?? queueTime(table, now), expiresAt: now + request.wait.ttlMs, filter };
    return {
      table: { ...table, waiters: { ...table.waiters, [request.wait.ticket]: waiter } },
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

/** Keeps the tickets of this replica's waiters alive while their clients wait. */
export function renewWaiters(tickets: readonly string[], ttlMs: number): Decision<void> {
  return (table, { now }) => {
    const renewed = tickets.filter((ticket) => ticket in table.waiters);
    if (renewed.length === 0) return { table, result: undefined };
    const waiters = { ...table.waiters };
    for (const ticket of renewed) waiters[ticket] = { ...waiters[ticket], expiresAt: now + ttlMs };
    return { table: { ...table, waiters }, result: undefined };
  };
}

/** Where a live lease with this token hash is, if anywhere. Constant time per record. */
function findLive(table: LeaseTable, tokenHash: string, now: number): { clusterId: string; lease: Lease } | undefined {
  let found: { clusterId: string; lease: Lease } | undefined;
  for (const [clusterId, entry] of Object.entries(table.clusters)) {
    const lease = liveLease(entry, now);
    // No early exit: the time taken does not tell which record matched.
    if (lease && tokenHashesEqual(lease.tokenHash, tokenHash)) found = { clusterId, lease };
  }
  return found;
}

function findLiveLegacy(table: LeaseTable, tokenHash: string, now: number): string | undefined {
  let found: string | undefined;
  for (const [legacyToken, legacy] of Object.entries(table.legacy)) {
    if (now < legacy.expiresAt && tokenHashesEqual(hashToken(legacyToken), tokenHash)) found = legacyToken;
  }
  return found;
}

/** The TokenRequest API's minimum is 10 minutes: a shorter lease's token outlives it (and is revoked). */
export function tokenLifetimeSeconds(leaseSeconds: number): number {
  return Math.max(600, leaseSeconds);
}

/** Ends the live lease with this token hash at once: free for the next request, or dirty until cleaned. */
export function release(tokenHash: string): Decision<{ clusterId: string; note?: string }> {
  return (table, { now, clusters, endState }) => {
    const live = findLive(table, tokenHash, now);
    if (live) {
      return {
        table: withEntry(table, live.clusterId, ended(now, endState, live.lease)),
        result: { clusterId: live.clusterId, ...(live.lease.note !== undefined && { note: live.lease.note }) },
      };
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
 * than `maxLeaseSeconds` after it began.
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
      const left = Math.floor((limit - now) / 1000);
      throw new BadRequestError(
        `max_time: a lease may last at most ${maxLeaseSeconds} seconds from its start; this one can be extended by at most ${left} seconds from now`,
        ['max_time'],
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

/**
 * Writes down what time alone has decided: expired leases end (their cluster idle since the
 * expiry), expired records of the original claimer and lapsed waiter tickets go.
 */
export function reap(): Decision<EndedLease[]> {
  return (table, { now, endState }) => {
    const endedLeases: EndedLease[] = [];
    let clustersChanged: Record<string, ClusterEntry> | undefined;
    for (const [clusterId, entry] of Object.entries(table.clusters)) {
      const lease = entry.lease;
      if (entry.state === 'leased' && lease && now >= lease.expiresAt) {
        clustersChanged ??= { ...table.clusters };
        clustersChanged[clusterId] = ended(lease.expiresAt, endState, lease);
        endedLeases.push({
          clusterId,
          expiredAt: lease.expiresAt,
          ...(lease.note !== undefined && { note: lease.note }),
          ...(lease.holder !== undefined && { holder: lease.holder }),
        });
      }
    }
    const legacyLeft = Object.entries(table.legacy).filter(([, legacy]) => now < legacy.expiresAt);
    const waitersLeft = Object.entries(table.waiters).filter(([, waiter]) => now < waiter.expiresAt);
    const legacyChanged = legacyLeft.length !== Object.keys(table.legacy).length;
    const waitersChanged = waitersLeft.length !== Object.keys(table.waiters).length;
    if (!clustersChanged && !legacyChanged && !waitersChanged) return { table, result: endedLeases };
    return {
      table: {
        clusters: clustersChanged ?? table.clusters,
        legacy: legacyChanged ? Object.fromEntries(legacyLeft) : table.legacy,
        waiters: waitersChanged ? Object.fromEntries(waitersLeft) : table.waiters,
      },
      result: endedLeases,
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
}

export const defaultCleanupLimits: CleanupLimits = { maxAttempts: 5, quarantineRetryMs: 3_600_000 };

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
    const state = attempts >= limits.maxAttempts ? 'quarantined' : 'dirty';
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
    };
  });
}

export function liveWaiters(table: LeaseTable, now: number): number {
  return Object.values(table.waiters).filter((waiter) => now < waiter.expiresAt).length;
}

/** The live lease with this token, for GET /lease/{token}. */
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
  const sections = ['clusters', 'legacy', 'waiters'] as const;
  return sections.every((section) => {
    const before: Readonly<Record<string, unknown>> = base[section];
    const after: Readonly<Record<string, unknown>> = next[section];
    const now: Readonly<Record<string, unknown>> = fresh[section];
    const keys = new Set([...Object.keys(before), ...Object.keys(after)]);
    return [...keys].every((key) => before[key] === after[key] || isDeepStrictEqual(now[key], after[key]));
  });
}
