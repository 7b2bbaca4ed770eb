// The reaper: every few seconds, writes down what time alone has decided (expired leases,
// lapsed tickets, records of clusters long gone from the pool, records dated in the future), so
// whatever is bound to a lease's end happens even when nobody is acquiring. Safe with several
// replicas: it goes through the write path, so each expiry is committed (and logged) exactly once.

import type { Logger } from 'pino';
import { reap, type ReapOptions, type Reaped } from './lease-table.ts';
import type { Metrics } from './metrics.ts';
import type { WritePath } from './write-path.ts';

export function startReaper(writePath: WritePath, logger: Logger, intervalMs: number, options: ReapOptions, metrics?: Metrics): () => void {
  let running = false;
  const decision = reap(options);
  /**
   * One decision per object of a table split over several (and one for the rest), so that each
   * writes one object and what it reports is exactly what landed.
   */
  const decisions = async () => {
    const groups = writePath.groupByObject((await writePath.cachedView())?.table);
    if (!groups || groups.length <= 1) return [decision];
    return [...groups.map((only) => reap({ ...options, only, others: false })), reap({ ...options, only: [] })];
  };
  const sweep = async () => {
    if (running) return;
    running = true;
    try {
      // A sweep that finds nothing on a cached table is fine: another replica reaps what it missed.
      const results = await Promise.all((await decisions()).map((one) => writePath.submit(one, { staleOk: true })));
      const { ended, forgotten, clamped }: Reaped = {
        ended: results.flatMap((result) => result.ended),
        forgotten: results.flatMap((result) => result.forgotten),
        clamped: results.flatMap((result) => result.clamped),
      };
      for (const lease of ended) {
        metrics?.expired.inc();
        logger.info(
          { event: 'lease.expired', cluster: lease.clusterId, note: lease.note, holder: lease.holder, expired_at: new Date(lease.expiredAt).toISOString() },
          'lease expired',
        );
      }
      if (forgotten.length > 0) logger.info({ event: 'cluster.forgotten', clusters: forgotten }, 'removed the free records of clusters gone from the pool');
      if (clamped.length > 0) {
        logger.warn({ event: 'record.clamped', clusters: clamped }, 'records were dated in the future (a replica\'s clock is wrong?): brought back to now');
      }
    } catch (error) {
      logger.warn({ err: error }, 'the reaper could not sweep expired leases; it tries again');
    } finally {
      running = false;
    }
  };
  const timer = setInterval(() => void sweep(), intervalMs);
  timer.unref?.();
  return () => clearInterval(timer);
}
