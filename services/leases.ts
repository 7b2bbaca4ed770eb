// The lease service: what routes call. It turns requests into decisions on the write path and
// does the work outside the table (building the lessee's kubeconfig) after the commit.

import type { Logger } from 'pino';
import type { ClusterFilter } from './cluster-filter.ts';
import { ClientGoneError, NoClusterAvailableError, NotReadyError } from './errors.ts';
import {
  acquire,
  describeClusters,
  describeLease,
  extend,
  liveWaiters,
  release,
  type ClusterView,
  type Lease,
} from './lease-table.ts';
import type { Cluster, ClusterProvider } from './providers/types.ts';
import { hashToken, newLeaseToken } from './tokens.ts';
import type { Granted, Waiting } from './waiting.ts';
import type { WritePath } from './write-path.ts';

export interface AcquireOptions {
  durationSeconds: number;
  filter?: ClusterFilter;
  note?: string;
  holder?: string;
  /** Seconds to wait for a matching cluster to become free; 0 answers at once. */
  waitSeconds?: number;
  /** Aborts when the client goes away. */
  signal?: AbortSignal;
}

export interface GrantedLease {
  token: string;
  cluster: Cluster;
  lease: Lease;
  kubeconfig: string;
}

export interface PoolView {
  now: number;
  clusters: ClusterView[];
  waiting: number;
}

export class LeaseService {
  constructor(
    private readonly writePath: WritePath,
    private readonly provider: ClusterProvider,
    private readonly waiting: Waiting,
    private readonly maxLeaseSeconds: number,
    private readonly logger: Logger,
  ) {}

  /** Whether `cloud_provider` names the configured provider. */
  servesProvider(name: string): boolean {
    return this.provider.aliases.includes(name.toLowerCase());
  }

  async acquire(options: AcquireOptions, log: Logger = this.logger): Promise<GrantedLease> {
    const token = newLeaseToken();
    const tokenHash = hashToken(token);
    const request = {
      tokenHash,
      durationSeconds: options.durationSeconds,
      ...(options.filter && { filter: options.filter }),
      ...(options.note !== undefined && { note: options.note }),
      ...(options.holder !== undefined && { holder: options.holder }),
    };
    let granted: Granted;
    if (options.waitSeconds) {
      granted = await this.waiting.acquire(request, options.waitSeconds, options.signal);
    } else {
      const outcome = await this.writePath.submit(acquire(request));
      // Without a ticket a decision never queues; this only narrows the type.
      if (!outcome.granted) throw new NoClusterAvailableError('AllLeased', 'every matching cluster is leased', outcome.retryAfterSeconds);
      granted = outcome;
    }
    const { cluster, lease } = granted;
    let kubeconfig: string;
    try {
      if (options.signal?.aborted) throw new ClientGoneError('the client went away before its lease was handed over');
      kubeconfig = await this.provider.kubeconfigFor(cluster);
    } catch (error) {
      // The lessee never learns the token, so hand the cluster back before failing.
      await this.writePath.submit(release(tokenHash)).catch((releaseError: unknown) => {
        log.error({ err: releaseError, cluster: cluster.id }, 'could not undo a lease that was not handed over');
      });
      throw error;
    }
    log.info(
      { event: 'lease.granted', cluster: cluster.id, note: lease.note, holder: lease.holder, expires_at: new Date(lease.expiresAt).toISOString() },
      'lease granted',
    );
    return { token, cluster, lease, kubeconfig };
  }

  async release(token: string, log: Logger = this.logger): Promise<void> {
    const { clusterId, note } = await this.writePath.submit(release(hashToken(token)));
    log.info({ event: 'lease.released', cluster: clusterId, note }, 'lease released');
  }

  async extend(token: string, durationSeconds: number, log: Logger = this.logger): Promise<ClusterView & { now: number }> {
    const { clusterId, lease } = await this.writePath.submit(extend(hashToken(token), durationSeconds, this.maxLeaseSeconds));
    log.info({ event: 'lease.extended', cluster: clusterId, note: lease.note, expires_at: new Date(lease.expiresAt).toISOString() }, 'lease extended');
    return this.get(token);
  }

  async get(token: string): Promise<ClusterView & { now: number }> {
    const { snapshot, context } = await this.writePath.view();
    return { ...describeLease(snapshot.table, hashToken(token), context), now: context.now };
  }

  async list(): Promise<PoolView> {
    const { snapshot, context } = await this.writePath.view();
    return { now: context.now, clusters: describeClusters(snapshot.table, context), waiting: liveWaiters(snapshot.table, context.now) };
  }

  /** Ready when both the lease store and the cluster pool answer. */
  async checkReady(log: Logger = this.logger): Promise<void> {
    try {
      await this.writePath.view();
    } catch (error) {
      log.warn({ err: error }, 'not ready: the lease store or the cluster pool does not answer');
      throw new NotReadyError('the lease store or the cluster pool does not answer');
    }
  }
}
