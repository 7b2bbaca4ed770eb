// Grants whose fate is unknown: an acquire whose write failed without a clear answer (a timeout,
// a reset connection) may still land later, and nobody knows its token, so its cluster would be
// leased to no one for the whole lease. This replica remembers the token hashes of such grants
// until they would have expired, and releases each one as soon as it shows up in a table the
// replica sees (its own commits, the store's watch).

import type { Logger } from 'pino';
import { LeaseNotFoundError } from './errors.ts';
import { release, type LeaseTable } from './lease-table.ts';
import type { Clock, WritePath } from './write-path.ts';

export class UnclearGrants {
  /** Token hash -> when the lease would end at the latest. */
  private readonly pending = new Map<string, number>();
  private readonly releasing = new Set<string>();
  private readonly stopListening: () => void;

  constructor(
    private readonly writePath: WritePath,
    private readonly clock: Clock,
    private readonly logger: Logger,
  ) {
    this.stopListening = writePath.onTable((table) => this.look(table));
  }

  /** Remembers a grant that may still land, until `expiresAt`; tries to undo it at once, too. */
  add(tokenHash: string, expiresAt: number): void {
    this.pending.set(tokenHash, expiresAt);
    void this.undo(tokenHash);
  }

  /** How many grants are being watched for. */
  get size(): number {
    return this.pending.size;
  }

  private look(table: LeaseTable): void {
    if (this.pending.size === 0) return;
    const now = this.clock.now();
    for (const [tokenHash, expiresAt] of this.pending) {
      if (now >= expiresAt) this.pending.delete(tokenHash);
    }
    for (const entry of Object.values(table.clusters)) {
      const tokenHash = entry.lease?.tokenHash;
      if (entry.state === 'leased' && tokenHash !== undefined && this.pending.has(tokenHash)) void this.undo(tokenHash);
    }
  }

  private async undo(tokenHash: string): Promise<void> {
    if (this.releasing.has(tokenHash)) return;
    this.releasing.add(tokenHash);
    try {
      const { clusterId } = await this.writePath.submit(release(tokenHash));
      this.pending.delete(tokenHash);
      this.logger.warn({ event: 'lease.undone', cluster: clusterId }, 'released a lease whose acquire had failed: it landed after all');
    } catch (error) {
      // Not there (yet): it is released when it shows up, or forgotten once it would have ended.
      if (!(error instanceof LeaseNotFoundError)) this.logger.debug({ err: error }, 'could not undo an unclear grant yet');
    } finally {
      this.releasing.delete(tokenHash);
    }
  }

  close(): void {
    this.stopListening();
  }
}
