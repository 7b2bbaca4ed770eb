// Scenario (f) of `npm run bench`: what many waiters cost. A replica's own write path and
// waiting queue over the in-memory store (so that the figures are the queue's, not a store's
// I/O): N waiters queue for a pool whose clusters are all leased, then clusters are released
// one at a time. Reported: the CPU the replica spends per table change, the time to work out
// the queue of one table alone, and whether the waiters were served in arrival order.

import { createLogger } from '../services/logger.ts';
import { acquire, freeClusters, release, type AcquireRequest } from '../services/lease-table.ts';
import { isLeasable, type Cluster } from '../services/providers/types.ts';
import { computeQueue } from '../services/queue.ts';
import { MemoryLeaseStore } from '../services/store/memory.ts';
import { hashToken } from '../services/tokens.ts';
import { Waiting } from '../services/waiting.ts';
import { WritePath, systemClock } from '../services/write-path.ts';

function cluster(index: number): Cluster {
  const name = `pool-${index + 1}`;
  return {
    id: `static/${name}`,
    name,
    location: 'static',
    endpoint: '127.0.0.1',
    server: 'https://127.0.0.1:6443',
    labels: { size: index % 2 ? 'large' : 'small' },
    version: '1.31.0',
    status: 'RUNNING',
    tag: name,
    gpu: false,
    registryLocation: null,
  };
}

export interface WaiterFigures {
  waiters: number;
  clusters: number;
  /** CPU of the replica (user + system) per table change while releases serve waiters. */
  cpuPerTableChangeMs: number;
  tableChanges: number;
  /** Working out the queue of one table with every waiter in it, alone. */
  queueMedianMs: number;
  /** Time from a release to its waiter's grant. */
  serveP50Ms: number;
  serveP95Ms: number;
  /** Decisions the write path applied per release served (the release, the grant, heartbeats). */
  decisionsPerRelease: number;
  servedInOrder: boolean;
  served: number;
}

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)] ?? Number.NaN;
const percentile = (values: number[], p: number) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? Number.NaN;
};

export async function waiterFigures(waiterCount: number, clusterCount: number, releases: number): Promise<WaiterFigures> {
  const clusters = Array.from({ length: clusterCount }, (_, index) => cluster(index));
  const store = new MemoryLeaseStore();
  const writePath = new WritePath(store, async () => clusters, systemClock);
  const waiting = new Waiting(writePath, createLogger('silent'), {
    replicaName: 'bench',
    ticketTtlMs: 60_000,
    pollMs: 60_000,
    caps: { perPrincipal: waiterCount, total: waiterCount },
  });
  let tableChanges = 0;
  writePath.onTable(() => {
    tableChanges += 1;
  });
  // Every cluster is leased; the leases are released one by one below.
  const held: string[] = [];
  for (let index = 0; index < clusterCount; index++) {
    const tokenHash = hashToken(`held-${index}`);
    await writePath.submit(acquire({ tokenHash, durationSeconds: 3600 }));
    held.push(tokenHash);
  }
  const order: number[] = [];
  const grantedAt: number[] = [];
  const gone = new AbortController();
  const pending = Array.from({ length: waiterCount }, (_, index) => {
    // Half of them want a size, half any cluster: the queue has more than one filter to follow.
    const request: Omit<AcquireRequest, 'wait'> = { tokenHash: hashToken(`waiter-${index}`), durationSeconds: 3600, ...(index % 2 && { filter: { labels: { size: 'large' } } }) };
    return waiting.acquire(request, 3600, gone.signal).then(
      (granted) => {
        order.push(index);
        grantedAt.push(performance.now());
        return granted;
      },
      () => undefined,
    );
  });
  while ((await writePath.view()).snapshot.table.waiters && Object.keys((await writePath.view()).snapshot.table.waiters).length < waiterCount) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }

  // The queue of a full table, worked out from scratch (no memo), alone.
  const { snapshot, context } = await writePath.view();
  const free = freeClusters(snapshot.table, context);
  const leasable = clusters.filter(isLeasable);
  const timings: number[] = [];
  for (let run = 0; run < 50; run++) {
    const started = performance.now();
    computeQueue(snapshot.table, context.now, clusters, free, leasable);
    timings.push(performance.now() - started);
  }

  const serveTimes: number[] = [];
  const decisionsBefore = writePath.decisionsApplied;
  const changesBefore = tableChanges;
  const cpuBefore = process.cpuUsage();
  for (let round = 0; round < releases; round++) {
    const servedBefore = order.length;
    const started = performance.now();
    await writePath.submit(release(held[round % held.length] as string));
    while (order.length === servedBefore) await new Promise((resolve) => setImmediate(resolve));
    serveTimes.push((grantedAt.at(-1) as number) - started);
    // The waiter that got it hands it back for the next round: the pool stays full.
    held[round % held.length] = hashToken(`waiter-${order.at(-1)}`);
  }
  const cpu = process.cpuUsage(cpuBefore);
  const changes = tableChanges - changesBefore;
  const decisions = writePath.decisionsApplied - decisionsBefore;
  gone.abort();
  await Promise.all(pending);
  waiting.close();
  // Served in arrival order within each filter (a "large" waiter may not take a "small" cluster).
  const byFilter = [order.filter((index) => index % 2 === 0), order.filter((index) => index % 2 === 1)];
  const servedInOrder = byFilter.every((indexes) => indexes.every((value, position) => position === 0 || value > (indexes[position - 1] as number)));
  return {
    waiters: waiterCount,
    clusters: clusterCount,
    cpuPerTableChangeMs: (cpu.user + cpu.system) / 1000 / Math.max(1, changes),
    tableChanges: changes,
    queueMedianMs: median(timings),
    serveP50Ms: percentile(serveTimes, 50),
    serveP95Ms: percentile(serveTimes, 95),
    decisionsPerRelease: decisions / releases,
    servedInOrder,
    served: order.length,
  };
}
