// The lease service: what routes call. It turns requests into decisions on the write path and
// does the work outside the table (building the lessee's kubeconfig) after the commit.

import type { Logger } from 'pino';
import { createHash } from 'node:crypto';
import type { ClusterFilter } from './cluster-filter.ts';
import type { CredentialIssuer } from './credentials.ts';
import { AppError, BadRequestError, ClientGoneError, IdempotencyConflictError, LeaseNotFoundError, NoClusterAvailableError, NotReadyError } from './errors.ts';
import type { Facts, HandOffFacts } from './facts.ts';
import type { Metrics } from './metrics.ts';
import {
  acquire,
  clusterOfLease,
  describeClusters,
  describeLease as describeInTable,
  holdsLiveLease,
  extend,
  liveWaiters,
  needsFreshToken,
  recordTokenExpiry,
  refreshedTokenSeconds,
  release,
  tokenDiesEarlier,
  tokenLifetimeSeconds,
  type ClusterView,
  type DecisionContext,
  type LeaseTable,
  type Idempotency,
  type Lease,
} from './lease-table.ts';
import type { PoolHealth, PoolSet } from './providers/pools.ts';
import type { Cluster } from './providers/types.ts';
import type { StoreUsage } from './store/types.ts';
import { hashToken, newLeaseToken } from './tokens.ts';
import type { UnclearGrants } from './unclear-grants.ts';
import type { Granted, Waiting } from './waiting.ts';
import type { WritePath } from './write-path.ts';
import type { ManagedRunner } from './managed-runner.ts';

export interface AcquireOptions {
  durationSeconds: number;
  filter?: ClusterFilter;
  note?: string;
  holder?: string;
  /** Seconds to wait for a matching cluster to become free; 0 answers at once. */
  waitSeconds?: number;
  /** Aborts when the client goes away. */
  signal?: AbortSignal;
  /** kube-control's auth request: the user the credentials are for, and the group (-> ClusterRole). */
  auth?: { user?: string; group?: string };
  /** The Idempotency-Key header and a digest of the request body: a retry gets its lease back. */
  idempotency?: { key: string; fingerprint: string };
}

export interface GrantedLease {
  token: string;
  cluster: Cluster;
  lease: Lease;
  kubeconfig: string;
  facts: HandOffFacts;
}

export const DEFAULT_USER = 'lessee';

/** A lease as GET /lease/{token} and PATCH show it. */
export type LeaseDetails = ClusterView & { now: number; facts: HandOffFacts; kubeconfig?: string };

export interface PoolView {
  now: number;
  clusters: ClusterView[];
  waiting: number;
}

export class LeaseService {
  constructor(
    private readonly writePath: WritePath,
    private readonly provider: PoolSet,
    private readonly issuer: CredentialIssuer,
    private readonly facts: Facts,
    private readonly waiting: Waiting,
    private readonly options: { maxLeaseSeconds: number; groupRoles: Record<string, string>; defaultGroup: string },
    private readonly logger: Logger,
    private readonly unclear: UnclearGrants,
    private readonly metrics?: Metrics,
  ) {}

  /** Idempotency keys (as stored) of acquires in progress on this replica. */
  private readonly inFlight = new Set<string>();

  /**
   * The pools a request may lease from, by `pool` and `cloud_provider` together; undefined when
   * neither is given, or when the server's one pool is the environment's (so that its tickets
   * read as they always did). With a pools file the choice is kept even when it is every pool
   * now: a waiter's ticket still means it after a pool is added.
   */
  poolsFor(pool: string | undefined, cloudProvider: string | undefined): string[] | undefined {
    const every = this.provider.pools.map((known) => known.name);
    let names = every;
    if (pool) {
      if (!this.provider.pool(pool)) throw new BadRequestError(`pool: not a pool of this claimer; it has ${every.join(', ')} (or "" for any)`, ['pool']);
      names = [pool];
    }
    if (cloudProvider) {
      const answering = this.provider.poolsAnswering(cloudProvider);
      if (answering.length === 0) {
        throw new BadRequestError(`cloud_provider: not a provider this claimer serves; it accepts ${this.provider.aliases.join(', ')} (or "" for any)`, ['cloud_provider']);
      }
      names = names.filter((name) => answering.includes(name));
      if (names.length === 0) throw new BadRequestError(`pool: pool ${pool} does not answer to cloud_provider ${cloudProvider}`, ['pool', 'cloud_provider']);
    }
    const environmentPool = this.provider.pools.length === 1 && !this.provider.pools[0].prefixIds;
    return !pool && !cloudProvider ? undefined : environmentPool ? undefined : names;
  }

  /** The managed pools' runners, by pool name (set by the wiring). */
  managedPools: ReadonlyMap<string, ManagedRunner> = new Map();

  /** What /leases says of a managed pool: its targets now, its size and ceiling. */
  managedFacts(pool: string): ReturnType<ManagedRunner['describe']> | undefined {
    return this.managedPools.get(pool)?.describe(this.writePath.latestTable(), this.writePath.now());
  }

  /**
   * The Retry-After of a 409 AllLeased: sooner when a managed pool the request may use is
   * making or waking a cluster (or can).
   */
  private async managedRetryAfter(seconds: number | undefined, filter: ClusterFilter | undefined): Promise<number | undefined> {
    if (this.managedPools.size === 0) return seconds;
    const view = await this.writePath.cachedView();
    if (!view) return seconds;
    let best = seconds;
    for (const [name, runner] of this.managedPools) {
      if (filter?.pools && !filter.pools.includes(name)) continue;
      const soon = runner.retryAfter(view.table, view.context.clusters, view.context.now);
      if (soon !== undefined && (best === undefined || soon < best)) best = soon;
    }
    return best;
  }

  /** Each pool's health: how its last listing went. */
  poolHealth(): PoolHealth[] {
    return this.provider.poolHealth();
  }

  /** Whether a group of an auth request maps to a ClusterRole. */
  knowsGroup(group: string): boolean {
    return Object.hasOwn(this.options.groupRoles, group);
  }

  async acquire(options: AcquireOptions, log: Logger = this.logger): Promise<GrantedLease> {
    // The key is the client's, per principal: two CI systems may well pick the same key.
    const idempotency = options.idempotency && {
      key: createHash('sha256').update(`idempotency:${options.holder ?? ''}:${options.idempotency.key}`).digest('hex').slice(0, 32),
      fingerprint: options.idempotency.fingerprint,
    };
    if (idempotency && this.inFlight.has(idempotency.key)) throw new IdempotencyConflictError();
    if (idempotency) this.inFlight.add(idempotency.key);
    const stopTimer = this.metrics?.acquireSeconds.startTimer({ waited: options.waitSeconds ? 'yes' : 'no' });
    try {
      const granted = await this.acquireNow(options, idempotency, log);
      this.metrics?.granted.inc({ pool: granted.cluster.pool ?? '' });
      stopTimer?.({ outcome: 'granted' });
      return granted;
    } catch (error) {
      if (error instanceof NoClusterAvailableError) this.metrics?.refused.inc({ reason: error.reason });
      stopTimer?.({ outcome: error instanceof NoClusterAvailableError ? 'refused' : 'error' });
      throw error;
    } finally {
      if (idempotency) this.inFlight.delete(idempotency.key);
    }
  }

  private async acquireNow(options: AcquireOptions, idempotency: Idempotency | undefined, log: Logger): Promise<GrantedLease> {
    const token = newLeaseToken();
    const tokenHash = hashToken(token);
    const request = {
      tokenHash,
      // 48 random bits, from the UUID generator's own buffered randomness (cheaper than a read of its own).
      leaseId: crypto.randomUUID().replaceAll('-', '').slice(0, 12),
      durationSeconds: options.durationSeconds,
      ...(this.issuer.anyPerLease && {
        credentials: { user: options.auth?.user ?? options.holder ?? DEFAULT_USER, group: options.auth?.group ?? this.options.defaultGroup },
        perLease: (cluster: Cluster) => this.issuer.perLease(cluster),
      }),
      ...(options.filter && { filter: options.filter }),
      ...(options.note !== undefined && { note: options.note }),
      ...(options.holder !== undefined && { holder: options.holder }),
      ...(idempotency && { idempotency }),
    };
    let granted: Granted;
    try {
      if (options.waitSeconds) {
        granted = await this.waiting.acquire(request, options.waitSeconds, options.signal, options.holder);
      } else {
        let outcome;
        try {
          outcome = await this.writePath.submit(acquire(request));
        } catch (error) {
          if (error instanceof NoClusterAvailableError && error.reason === 'AllLeased' && this.managedPools.size > 0) {
            throw new NoClusterAvailableError('AllLeased', error.message, await this.managedRetryAfter(error.retryAfterSeconds, options.filter));
          }
          throw error;
        }
        // Without a ticket a decision never queues; this only narrows the type.
        if (!outcome.granted) throw new NoClusterAvailableError('AllLeased', 'every matching cluster is leased', outcome.retryAfterSeconds);
        granted = outcome;
      }
    } catch (error) {
      // A store failure may hide a write that lands later: undo it then, or its cluster would
      // stay leased to a token nobody knows. Refusals changed nothing.
      if (!(error instanceof AppError)) this.unclear.add(tokenHash, this.writePath.now() + options.durationSeconds * 1000);
      throw error;
    }
    const { cluster, lease } = granted;
    let kubeconfig: string;
    let facts: HandOffFacts;
    try {
      if (options.signal?.aborted) throw new ClientGoneError('the client went away before its lease was handed over');
      // Effects outside the table come after the commit; if they fail, the lease is undone.
      let issued;
      [issued, facts] = await Promise.all([
        this.issuer.issue(cluster, lease, tokenLifetimeSeconds(options.durationSeconds)),
        this.facts.for(cluster),
      ]);
      kubeconfig = issued.kubeconfig;
      // An API server that caps token lifetimes gives less than was asked: the table must know,
      // or an extension past the real expiry would not mint a fresh token.
      if (lease.credentials && issued.tokenExpiresAt !== undefined && tokenDiesEarlier(lease.credentials, issued.tokenExpiresAt)) {
        await this.writePath.submit(recordTokenExpiry(tokenHash, issued.tokenExpiresAt));
      }
      // The lessee is told when its token really dies (the table keeps the slightly earlier estimate).
      if (lease.credentials && issued.tokenExpiresAt !== undefined) {
        granted = { ...granted, lease: { ...lease, credentials: { ...lease.credentials, tokenExpiresAt: issued.tokenExpiresAt } } };
      }
      if (options.signal?.aborted) throw new ClientGoneError('the client went away before its lease was handed over');
      // Minting takes round trips: the lease may have ended meanwhile, and its cluster been
      // cleaned and leased again. Then the credentials just made must go, and nobody gets them.
      if (this.issuer.perLease(cluster)) await this.stillLive(tokenHash, cluster, lease.id);
    } catch (error) {
      // The lessee never learns the token, so hand the cluster back before failing.
      await this.writePath.submit(release(tokenHash)).catch((releaseError: unknown) => {
        if (!(releaseError instanceof LeaseNotFoundError)) log.error({ err: releaseError, cluster: cluster.id }, 'could not undo a lease that was not handed over');
      });
      throw error;
    }
    log.info(
      { event: 'lease.granted', cluster: cluster.id, note: lease.note, holder: lease.holder, expires_at: new Date(lease.expiresAt).toISOString() },
      'lease granted',
    );
    return { token, cluster, lease: granted.lease, kubeconfig, facts };
  }

  /**
   * The lease of a token. A live lease whose cluster is in no list yet, while a pool has never
   * listed (down since this replica started), is not "not found": the pool is not ready (503).
   */
  private describeLease(table: LeaseTable, tokenHash: string, context: DecisionContext): ClusterView {
    try {
      return describeInTable(table, tokenHash, context);
    } catch (error) {
      const waiting = this.provider.neverListed();
      if (error instanceof LeaseNotFoundError && waiting.length > 0 && holdsLiveLease(table, tokenHash, context.now)) {
        throw new NotReadyError(`pool ${waiting.join(', ')} has not listed its clusters yet`);
      }
      throw error;
    }
  }

  /** Throws (after revoking them) when the lease whose credentials were just made has ended. */
  private async stillLive(tokenHash: string, cluster: Cluster, leaseId: string): Promise<void> {
    const { snapshot, context } = await this.viewOfLease(tokenHash, cluster.id);
    try {
      this.describeLease(snapshot.table, tokenHash, context);
    } catch (error) {
      await this.issuer.revokeLease(cluster, leaseId);
      throw error;
    }
  }

  async release(token: string, log: Logger = this.logger): Promise<void> {
    const { clusterId, note } = await this.writePath.submit(release(hashToken(token)));
    this.metrics?.released.inc();
    log.info({ event: 'lease.released', cluster: clusterId, note }, 'lease released');
  }

  /**
   * The lease now ends `durationSeconds` from now. When its token would die first, a fresh one
   * is minted before the extension is written (an extension that then fails leaves only an
   * extra token, which the janitor revokes with the rest), and returned in a new kubeconfig.
   */
  async extend(token: string, durationSeconds: number, log: Logger = this.logger): Promise<LeaseDetails> {
    const tokenHash = hashToken(token);
    const { maxLeaseSeconds } = this.options;
    const { snapshot, context } = await this.viewOfLease(tokenHash);
    const current = this.describeLease(snapshot.table, tokenHash, context);
    // Decided on the view first: an extension that is refused (beyond the maximum) mints nothing.
    extend(tokenHash, durationSeconds, maxLeaseSeconds)(snapshot.table, context);
    let refreshed: { kubeconfig: string; tokenExpiresAt?: number } | undefined;
    const credentials = current.lease?.credentials;
    if (this.issuer.perLease(current.cluster) && current.lease && credentials && needsFreshToken(credentials, context.now + durationSeconds * 1000)) {
      refreshed = await this.issuer.issue(current.cluster, current.lease, refreshedTokenSeconds(current.lease, durationSeconds, maxLeaseSeconds, context.now));
    }
    let extended;
    try {
      extended = await this.writePath.submit(extend(tokenHash, durationSeconds, maxLeaseSeconds, refreshed?.tokenExpiresAt));
    } catch (error) {
      // The lease ended while its fresh token was minted: that token's account must not stay.
      if (refreshed && current.lease && error instanceof LeaseNotFoundError) await this.issuer.revokeLease(current.cluster, current.lease.id);
      throw error;
    }
    const { clusterId, lease } = extended;
    this.metrics?.extended.inc();
    log.info(
      { event: 'lease.extended', cluster: clusterId, note: lease.note, expires_at: new Date(lease.expiresAt).toISOString(), new_token: Boolean(refreshed) },
      'lease extended',
    );
    const details = await this.get(token);
    return refreshed ? { ...details, kubeconfig: refreshed.kubeconfig } : details;
  }

  /**
   * A fresh view for one lease: when this replica knows its cluster, only the object that holds
   * its record is read (a table split over many objects); should the lease not be there, all.
   */
  private async viewOfLease(tokenHash: string, clusterId = this.writePath.clusterOfLease(tokenHash)) {
    if (clusterId !== undefined) {
      const scoped = await this.writePath.view([clusterId]);
      if (clusterOfLease(scoped.snapshot.table, tokenHash, scoped.context.now) === clusterId) return scoped;
    }
    return this.writePath.view();
  }

  async get(token: string): Promise<LeaseDetails> {
    const tokenHash = hashToken(token);
    const { snapshot, context } = await this.viewOfLease(tokenHash);
    const view = this.describeLease(snapshot.table, tokenHash, context);
    return { ...view, now: context.now, facts: await this.facts.for(view.cluster) };
  }

  async list(): Promise<PoolView> {
    const { snapshot, context } = await this.writePath.view();
    return { now: context.now, clusters: describeClusters(snapshot.table, context), waiting: liveWaiters(snapshot.table, context.now) };
  }

  /** Clusters of the pool by state, for the metrics: from the table this replica knows, never a store read. */
  /** Clusters by pool and state, every state of every pool counted (0 included). */
  async countStates(): Promise<Record<string, Record<string, number>> | undefined> {
    const known = await this.writePath.cachedView();
    if (!known) return undefined;
    const counts: Record<string, Record<string, number>> = {};
    const zero = () => ({ free: 0, leased: 0, dirty: 0, cleaning: 0, quarantined: 0, unavailable: 0, unknown: 0 });
    for (const pool of this.provider.pools) counts[pool.name] = zero();
    for (const view of describeClusters(known.table, known.context)) {
      const pool = view.cluster.pool ?? '';
      counts[pool] ??= zero();
      counts[pool][view.state] = (counts[pool][view.state] ?? 0) + 1;
    }
    return counts;
  }

  /** How full each object of the lease store is, as last seen. */
  storeUsage(): StoreUsage[] {
    return this.writePath.storeUsage();
  }

  /** Ready when the lease store (its watch, or a read) and the cluster pool answer. */
  async checkReady(log: Logger = this.logger): Promise<void> {
    try {
      await this.writePath.checkReady();
    } catch (error) {
      log.warn({ err: error }, 'not ready: the lease store or the cluster pool does not answer');
      throw new NotReadyError('the lease store or the cluster pool does not answer');
    }
  }
}
