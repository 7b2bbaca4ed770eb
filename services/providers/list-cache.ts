// A cloud provider's cluster list, cached: an acquire normally costs no cloud call, one listing
// runs at a time however many requests need it, and a warm cache keeps the claimer leasing
// while the cloud does not answer (asked again every few seconds, not on every request).

import type { Clock } from '../write-path.ts';
import type { Cluster } from './types.ts';

export class ClusterListCache {
  private entry?: { clusters: Cluster[]; fetchedAt: number; refreshAt: number };
  private inflight?: Promise<Cluster[]>;

  constructor(
    private readonly clock: Clock,
    private readonly cacheSeconds: number,
  ) {}

  /** The list while it is fresh; else `fetch`, shared by every caller until it ends. */
  list(fetch: () => Promise<Cluster[]>): Promise<Cluster[]> {
    if (this.entry && this.clock.now() < this.entry.refreshAt) return Promise.resolve(this.entry.clusters);
    this.inflight ??= fetch().finally(() => {
      this.inflight = undefined;
    });
    return this.inflight;
  }

  /** The last list the cloud gave, if any. */
  get last(): Cluster[] | undefined {
    return this.entry?.clusters;
  }

  /** Keeps a fresh list for `cacheSeconds`; returns it. */
  store(clusters: Cluster[]): Cluster[] {
    const fetchedAt = this.clock.now();
    this.entry = { clusters, fetchedAt, refreshAt: fetchedAt + this.cacheSeconds * 1000 };
    return clusters;
  }

  /**
   * After a failed listing: the last list and its age, the cloud asked again in at most 5 s;
   * undefined when there is no list to fall back on.
   */
  stale(): { clusters: Cluster[]; fetchedAt: number; ageSeconds: number } | undefined {
    if (!this.entry) return undefined;
    const now = this.clock.now();
    this.entry.refreshAt = now + Math.min(5_000, this.cacheSeconds * 1000);
    return { clusters: this.entry.clusters, fetchedAt: this.entry.fetchedAt, ageSeconds: Math.round((now - this.entry.fetchedAt) / 1000) };
  }

  /** The next list() asks the cloud (the list is still there to fall back on). */
  invalidate(): void {
    if (this.entry) this.entry.refreshAt = 0;
  }

  clear(): void {
    this.entry = undefined;
  }
}
