// The lease service: what routes call. It turns requests into decisions on the write path and
// does the work outside the table (building the lessee's kubeconfig) after the commit.

import type { Logger } from 'pino';
import { NotReadyError } from './errors.ts';
import { acquire, release, type Lease } from './lease-table.ts';
import type { Cluster, ClusterProvider } from './providers/types.ts';
import { hashToken, newLeaseToken } from './tokens.ts';
import type { WritePath } from './write-path.ts';

export interface AcquireOptions {
  durationSeconds: number;
}

export interface GrantedLease {
  token: string;
  cluster: Cluster;
  lease: Lease;
  kubeconfig: string;
}

export class LeaseService {
  constructor(
    private readonly writePath: WritePath,
    private readonly provider: ClusterProvider,
    private readonly logger: Logger,
  ) {}

  async acquire(options: AcquireOptions, log: Logger = this.logger): Promise<GrantedLease> {
    const token = newLeaseToken();
    const tokenHash = hashToken(token);
    const { cluster, lease } = await this.writePath.submit(
      acquire({ tokenHash, durationSeconds: options.durationSeconds }),
    );
    let kubeconfig: string;
    try {
      kubeconfig = await this.provider.kubeconfigFor(cluster);
    } catch (error) {
      // The lessee never learns the token, so hand the cluster back before failing.
      await this.writePath.submit(release(tokenHash)).catch((releaseError: unknown) => {
        log.error({ err: releaseError, cluster: cluster.id }, 'could not undo a lease after a failed kubeconfig');
      });
      throw error;
    }
    log.info(
      { event: 'lease.granted', cluster: cluster.id, expires_at: new Date(lease.expiresAt).toISOString() },
      'lease granted',
    );
    return { token, cluster, lease, kubeconfig };
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

  async release(token: string, log: Logger = this.logger): Promise<void> {
    const { clusterId } = await this.writePath.submit(release(hashToken(token)));
    log.info({ event: 'lease.released', cluster: clusterId }, 'lease released');
  }
}
