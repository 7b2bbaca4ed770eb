// The janitor (Boskos' janitor, the original's CLEAR_NAMESPACES done right): when a lease ends
// its cluster is dirty; a replica claims it (dirty -> cleaning, with its name and a deadline,
// through the write path, so one janitor per cluster at a time), revokes the lease's
// credentials, deletes every namespace but the protected ones, waits until they are gone, and
// only then frees the cluster. Failures go back to dirty with a backoff and show in /leases;
// the release itself answered 200 long before. A claim whose deadline passed may be taken over,
// so the work is fenced by it: the claim is short and renewed while working, every destructive
// step renews it first, and no destructive call starts unless the claim outlasts the call's
// timeout. A janitor that lost its claim stops at once: the cluster may be leased again.

import type { V1Namespace } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { ClusterAccess, ignoreMissing, statusOf } from './cluster-access.ts';
import { LEASES_NAMESPACE, type Fence, type LeaseCredentialRevoker } from './credentials.ts';
import {
  cleanupDue,
  defaultCleanupLimits,
  failCleanup,
  finishCleanup,
  ownClaims,
  releaseOwnClaims,
  renewCleanup,
  retryCleanup,
  startCleanup,
  type CleanupLimits,
  type CleanupProgress,
  type ClusterView,
  type LeaseTable,
} from './lease-table.ts';
import type { Cluster } from './providers/types.ts';
import type { WritePath } from './write-path.ts';

/** Never deleted: the system's own namespaces, GKE's, and the claimer's credentials namespace. */
export const BUILT_IN_PROTECTED = ['kube-system', 'kube-public', 'kube-node-lease', 'default', 'gke-*', 'gmp-*', LEASES_NAMESPACE];
export const KEEP_LABEL = 'k8s-claimer.io/keep';

export interface JanitorOptions {
  /**
   * This replica's name in the claims it writes (REPLICA_NAME, the pod name): the same after a
   * restart, so that a restarted replica takes back the claims it left; unique among replicas.
   */
  owner: string;
  cleanup?: 'namespaces' | 'none';
  /** Leases get credentials of their own: every cleanup revokes the lease namespace's. */
  revokeEveryCleanup?: boolean;
  /** Per cluster (its pool's choice), instead of `cleanup` and `revokeEveryCleanup`. */
  policyFor?: (cluster: Cluster) => { cleanup: 'namespaces' | 'none'; revokeEveryCleanup: boolean };
  protectedNamespaces: readonly string[];
  /** How long a claim holds before another replica may take the cluster over; renewed while working. */
  claimMs?: number;
  /** Deadline of one call to a cluster's API server: no destructive call starts closer than this to the claim's end. */
  callTimeoutMs?: number;
  /** How long one attempt waits for deleted namespaces to be gone. */
  namespaceWaitMs?: number;
  /** After waiting this long for namespaces, /leases shows which ones and their finalizers. */
  namespaceNoticeMs?: number;
  /** Failures in a row before quarantine, and how rarely a quarantined cluster is tried again. */
  limits?: CleanupLimits;
  /** How often to look for dirty clusters, besides whenever the table changes. */
  pollMs?: number;
  /** How often to check whether deleted namespaces are gone. */
  namespacePollMs?: number;
  /** Clusters cleaned at once by this replica. */
  concurrency?: number;
}

/** Whether any cluster of the table is between leases (dirty, cleaning, quarantined). */
function hasCleanupWork(table: LeaseTable): boolean {
  for (const clusterId in table.clusters) {
    const state = table.clusters[clusterId].state;
    if (state === 'dirty' || state === 'cleaning' || state === 'quarantined') return true;
  }
  return false;
}

export function isProtected(name: string, patterns: readonly string[]): boolean {
  return patterns.some((pattern) => (pattern.endsWith('*') ? name.startsWith(pattern.slice(0, -1)) : name === pattern));
}

/** What operators may do about cleanup (POST /cleanup). */
export interface CleanupControl {
  /** A quarantined (or dirty) cluster is cleaned again now, its attempts reset. */
  returnToService(clusterId: string, log?: Logger): Promise<{ view: ClusterView; now: number }>;
}

/** Deleted namespaces did not go within one attempt's wait. */
export class NamespacesStuckError extends Error {
  constructor(waitingFor: string, seconds: number) {
    super(`still terminating after ${seconds} s: ${waitingFor}`);
    this.name = 'NamespacesStuckError';
  }
}

const MAX_NOTE_NAMESPACES = 3;
const printable = (text: string, max: number) => {
  const clean = text.replace(/[^\x20-\x7e]/g, '?');
  return clean.length > max ? `${clean.slice(0, max - 1)}…` : clean;
};

/**
 * What keeps namespaces from going, short enough for the table: each one's finalizers
 * (metadata.finalizers, whose controller may never come; spec.finalizers, the namespace
 * controller's) and the reasons of its conditions (content that remains). Counts are left out,
 * so that the text changes only when what the janitor waits for does.
 */
export function describeTerminating(namespaces: readonly V1Namespace[]): string {
  const described = namespaces.slice(0, MAX_NOTE_NAMESPACES).map((namespace) => {
    const parts = [
      namespace.metadata?.finalizers?.length ? `finalizers: ${namespace.metadata.finalizers.join(', ')}` : '',
      namespace.spec?.finalizers?.length ? `spec.finalizers: ${namespace.spec.finalizers.join(', ')}` : '',
      ...(namespace.status?.conditions ?? []).filter((condition) => condition.status === 'True').map((condition) => condition.reason ?? condition.type),
    ].filter(Boolean);
    return printable(`${namespace.metadata?.name ?? '?'}${parts.length ? ` (${parts.join('; ')})` : ''}`, 160);
  });
  const more = namespaces.length - described.length;
  return `${described.join(', ')}${more > 0 ? ` and ${more} more` : ''}`;
}

/** The claim is no longer this janitor's (or the janitor is stopping): the work stops at once. */
export class ClaimLostError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ClaimLostError';
  }
}

/** A janitor's claim on one cluster while it works there, renewed through the write path. */
class HeldClaim implements Fence {
  /** Until when the claim surely holds, on this process's monotonic clock. */
  private heldUntil: number;
  /** Told to the table with the next renewal. */
  private progress: CleanupProgress = {};

  constructor(
    private readonly writePath: WritePath,
    private readonly clusterId: string,
    private readonly owner: string,
    private readonly claimMs: number,
    private readonly callTimeoutMs: number,
    claimedAt: number,
    private readonly stopping: () => boolean,
  ) {
    this.heldUntil = claimedAt + claimMs;
  }

  /** The credentials of these leases are confirmed revoked: the table is told, renewing the claim. */
  async revoked(leaseIds: readonly string[]): Promise<void> {
    this.progress = { ...this.progress, revoked: leaseIds };
    await this.renew();
  }

  /** Shows what the work waits for in /leases (as the cleanup's last_error), renewing the claim. */
  async tell(note: string): Promise<void> {
    this.progress = { ...this.progress, note };
    await this.renew();
  }

  async renew(): Promise<void> {
    if (this.stopping()) throw new ClaimLostError('the janitor is stopping');
    // Measured from before the write: the table's deadline is at least this far off.
    const asked = performance.now();
    const progress = this.progress;
    const held = await this.writePath.submit(renewCleanup(this.clusterId, this.owner, this.claimMs, progress));
    if (!held) throw new ClaimLostError('another janitor took the cluster over');
    if (this.progress === progress) this.progress = {};
    this.heldUntil = asked + this.claimMs;
  }

  step(): Promise<void> {
    return this.renew();
  }

  async call(): Promise<void> {
    if (this.stopping()) throw new ClaimLostError('the janitor is stopping');
    if (this.left() < this.callTimeoutMs) await this.renew();
    if (this.left() < this.callTimeoutMs) throw new Error('the claim would lapse before a call to the cluster could time out');
  }

  /** While waiting (nothing destructive): renewed once half of it is gone. */
  async keep(): Promise<void> {
    if (this.left() < this.claimMs / 2) await this.renew();
  }

  private left(): number {
    return this.heldUntil - performance.now();
  }
}

export interface CleanupReport {
  cluster: string;
  ok: boolean;
  ms: number;
}

export class Janitor implements CleanupControl {
  private readonly owner: string;
  private readonly working = new Set<string>();
  /** Stopped: in-flight work writes nothing more (the store is closing). */
  private stopped = false;
  /** Whether the claims left by this replica's previous run were given back. */
  private reclaimed = false;
  private timer?: ReturnType<typeof setInterval>;
  private stopListening?: () => void;
  private scheduled = false;
  private readonly patterns: string[];
  private readonly listeners = new Set<(report: CleanupReport) => void>();

  constructor(
    private readonly writePath: WritePath,
    private readonly access: ClusterAccess,
    private readonly revoker: LeaseCredentialRevoker,
    private readonly options: JanitorOptions,
    private readonly logger: Logger,
  ) {
    this.patterns = [...BUILT_IN_PROTECTED, ...options.protectedNamespaces];
    this.owner = options.owner;
  }

  start(): void {
    // The poll reads the store: it finds retries that came due and claims that lapsed. Tables
    // this replica learns of anyway (its commits, the watch) are looked at without a read.
    this.timer = setInterval(() => this.schedule(), this.options.pollMs ?? 2_000);
    this.timer.unref?.();
    // Most tables a replica learns of (a lease granted or released) leave nothing to clean.
    this.stopListening = this.writePath.onTable((table) => {
      if (hasCleanupWork(table)) this.schedule(table);
    });
    this.schedule();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.stopListening?.();
  }

  /** Claims this replica left when it last stopped are given back, to be cleaned now (its commit starts a sweep). */
  private async reclaim(): Promise<void> {
    const released = await this.writePath.submit(releaseOwnClaims(this.owner));
    for (const cluster of released) {
      this.logger.info({ event: 'cleanup.reclaimed', cluster, owner: this.owner }, 'took back a cleanup this replica left unfinished when it stopped');
    }
  }

  async returnToService(clusterId: string, log: Logger = this.logger): Promise<{ view: ClusterView; now: number }> {
    // The commit reaches this janitor's table listener: it is cleaned again at once.
    const retried = await this.writePath.submit(retryCleanup(clusterId));
    log.info({ event: 'cleanup.retried', cluster: clusterId }, 'cluster returned to cleanup by an operator');
    return retried;
  }

  /** Told of every cleanup's outcome (metrics). */
  onCleanup(listener: (report: CleanupReport) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private schedule(known?: LeaseTable): void {
    if (this.scheduled) return;
    this.scheduled = true;
    queueMicrotask(() => {
      this.scheduled = false;
      void this.sweep(known);
    });
  }

  private async sweep(known?: LeaseTable): Promise<void> {
    let due: Cluster[];
    try {
      const { table, context } = known
        ? { table: known, context: await this.writePath.context() }
        : await this.writePath.view().then(({ snapshot, context }) => ({ table: snapshot.table, context }));
      due = cleanupDue(table, context);
      // The first table after start-up: nothing of this replica's earlier work runs any more.
      if (!this.reclaimed) {
        if (ownClaims(table, this.owner).some((clusterId) => !this.working.has(clusterId))) await this.reclaim();
        this.reclaimed = true;
      }
    } catch (error) {
      this.logger.warn({ err: error }, 'the janitor could not read the lease table');
      return;
    }
    for (const cluster of due) {
      if (this.working.has(cluster.id) || this.working.size >= (this.options.concurrency ?? 4)) continue;
      this.working.add(cluster.id);
      void this.clean(cluster).finally(() => this.working.delete(cluster.id));
    }
  }

  private get claimMs(): number {
    return this.options.claimMs ?? 60_000;
  }

  private async clean(cluster: Cluster): Promise<void> {
    const claimedAt = performance.now();
    const claimed = await this.writePath.submit(startCleanup(cluster.id, this.owner, this.claimMs)).catch((error: unknown) => {
      this.logger.warn({ err: error, cluster: cluster.id }, 'the janitor could not claim a dirty cluster');
      return false as const;
    });
    if (!claimed) return;
    const claim = new HeldClaim(this.writePath, cluster.id, this.owner, this.claimMs, this.options.callTimeoutMs ?? 10_000, claimedAt, () => this.stopped);
    const started = performance.now();
    let step = 'revoking the lease credentials';
    try {
      // Credentials recorded for the ended lease are revoked whatever the mode is now.
      const policy = this.options.policyFor?.(cluster) ?? { cleanup: this.options.cleanup ?? 'namespaces', revokeEveryCleanup: this.options.revokeEveryCleanup ?? false };
      const revoke = policy.revokeEveryCleanup || claimed.revoke.length > 0;
      const revoked = revoke ? await this.revoker.revoke(cluster, claimed.revoke, claim) : 0;
      // Confirmed: the table stops naming these leases' credentials (later failures need no hurry).
      if (claimed.revoke.length > 0) await claim.revoked(claimed.revoke);
      let deleted: string[] = [];
      if (policy.cleanup === 'namespaces') {
        step = 'deleting namespaces';
        deleted = await this.deleteNamespaces(cluster, claim);
      }
      if (this.stopped) return;
      const finished = await this.writePath.submit(finishCleanup(cluster.id, this.owner));
      const ms = Math.round(performance.now() - started);
      if (!finished) {
        this.logger.warn({ event: 'cleanup.abandoned', cluster: cluster.id, ms }, 'cleanup done, but another janitor had taken the cluster over meanwhile');
        return;
      }
      this.logger.info({ event: 'cluster.cleaned', cluster: cluster.id, credentials_revoked: revoked, namespaces_deleted: deleted, ms }, 'cluster cleaned');
      this.tell({ cluster: cluster.id, ok: true, ms });
    } catch (error) {
      if (this.stopped) return;
      const ms = Math.round(performance.now() - started);
      if (error instanceof ClaimLostError) {
        this.logger.warn({ event: 'cleanup.abandoned', cluster: cluster.id, step, ms }, 'the janitor lost its claim on the cluster and stopped; another replica has it');
        return;
      }
      // The table says what failed in general terms (and which namespaces are stuck); the
      // details stay in this replica's log.
      const status = statusOf(error);
      const detail = error instanceof NamespacesStuckError ? `: ${error.message}` : status ? ` (the cluster's API server answered ${status})` : '';
      const reason = `${step} failed${detail}`;
      this.logger.warn({ err: error, cluster: cluster.id, step, ms }, 'cluster cleanup failed; it is retried');
      this.tell({ cluster: cluster.id, ok: false, ms });
      const outcome = await this.writePath
        .submit(failCleanup(cluster.id, this.owner, reason, this.options.limits ?? defaultCleanupLimits))
        .catch((failError: unknown) => {
          this.logger.warn({ err: failError, cluster: cluster.id }, 'could not record a failed cleanup; the claim lapses by itself');
          return false as const;
        });
      if (outcome === 'quarantined') {
        this.logger.warn({ event: 'cluster.quarantined', cluster: cluster.id, reason }, 'cleanup failed too often: the cluster is quarantined until a rare retry succeeds or an operator returns it (POST /cleanup)');
      }
    }
  }

  private tell(report: CleanupReport): void {
    for (const listener of this.listeners) listener(report);
  }

  /** Deletes every unprotected namespace and waits until all of them are gone. */
  private async deleteNamespaces(cluster: Cluster, claim: HeldClaim): Promise<string[]> {
    const { core } = await this.access.clientsFor(cluster);
    const namespaces = await core.listNamespace();
    const doomed = namespaces.items.filter((namespace) => {
      const name = namespace.metadata?.name ?? '';
      return name !== '' && !isProtected(name, this.patterns) && namespace.metadata?.labels?.[KEEP_LABEL] !== 'true';
    });
    const names = doomed.map((namespace) => namespace.metadata?.name as string);
    // Renewed after the list: what it found belongs to the lease this claim is for.
    await claim.step();
    for (const namespace of doomed) {
      if (namespace.status?.phase === 'Terminating') continue;
      await claim.call();
      await ignoreMissing(core.deleteNamespace({ name: namespace.metadata?.name as string }));
    }
    const waitMs = this.options.namespaceWaitMs ?? 5 * 60_000;
    const waitStarted = performance.now();
    // What /leases was last told: written when the wait first gets noticeable and whenever
    // what it waits for changes, not on every poll.
    let told: string | undefined;
    for (;;) {
      const left = (await core.listNamespace()).items.filter((namespace) => names.includes(namespace.metadata?.name ?? ''));
      if (left.length === 0) return names;
      const waited = performance.now() - waitStarted;
      const waitingFor = describeTerminating(left);
      if (waited >= waitMs) throw new NamespacesStuckError(waitingFor, Math.round(waitMs / 1000));
      if (waited >= (this.options.namespaceNoticeMs ?? 10_000) && waitingFor !== told) {
        this.logger.info({ cluster: cluster.id, terminating: left.map((namespace) => ({ name: namespace.metadata?.name, status: namespace.status })) }, 'waiting for namespaces to terminate');
        await claim.tell(`waiting for namespaces to terminate: ${waitingFor}`);
        told = waitingFor;
      } else {
        await claim.keep();
      }
      await new Promise((resolve) => setTimeout(resolve, this.options.namespacePollMs ?? 1_000));
    }
  }
}
