// Prometheus metrics (prom-client), one registry per app: clusters by state, lease events,
// acquire latency, the wait queue, backend errors and cleanups. Nothing secret is a label:
// labels are states, reasons, backends and outcomes only.

import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { StoreUsage } from './store/types.ts';

export type Backend = 'kubernetes' | 'gke' | 'cluster' | 'file' | 'other';

export class Metrics {
  readonly registry = new Registry();
  private readonly clusters = new Gauge({
    name: 'k8s_claimer_clusters',
    help: 'Clusters by state (free, leased, dirty, cleaning, quarantined, unavailable, unknown) and pool, as of the last scrape',
    labelNames: ['state', 'pool'] as const,
    registers: [this.registry],
    collect: async () => {
      // A store that does not answer must not fail the whole scrape: the other metrics matter most then.
      const counts = await this.countStates?.().catch(() => undefined);
      if (!counts) return;
      this.clusters.reset();
      for (const [pool, byState] of Object.entries(counts)) {
        for (const [state, count] of Object.entries(byState)) this.clusters.set({ state, pool }, count);
      }
    },
  });
  readonly granted = new Counter({ name: 'k8s_claimer_leases_granted_total', help: 'Leases granted, by pool', labelNames: ['pool'] as const, registers: [this.registry] });
  readonly released = new Counter({ name: 'k8s_claimer_leases_released_total', help: 'Leases released by their holders', registers: [this.registry] });
  readonly expired = new Counter({ name: 'k8s_claimer_leases_expired_total', help: 'Leases that ran out (written down by this replica\'s reaper)', registers: [this.registry] });
  readonly extended = new Counter({ name: 'k8s_claimer_leases_extended_total', help: 'Leases extended or shortened', registers: [this.registry] });
  readonly refused = new Counter({
    name: 'k8s_claimer_leases_refused_total',
    help: 'Acquires answered 409, by reason (NoMatchingCluster, AllLeased)',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });
  readonly acquireSeconds = new Histogram({
    name: 'k8s_claimer_acquire_duration_seconds',
    help: 'Time from an acquire request to its answer, by outcome (granted, refused, error) and whether it waited',
    labelNames: ['outcome', 'waited'] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600],
    registers: [this.registry],
  });
  private readonly queueDepth = new Gauge({
    name: 'k8s_claimer_wait_queue_depth',
    help: 'Requests waiting for a cluster on this replica',
    registers: [this.registry],
    collect: () => {
      this.queueDepth.set(this.waitingDepth?.() ?? 0);
    },
  });
  readonly backendErrors = new Counter({
    name: 'k8s_claimer_backend_errors_total',
    help: 'Failures of a backend (kubernetes: the lease store; gke; cluster: a leased cluster\'s API server; file: the file store)',
    labelNames: ['backend'] as const,
    registers: [this.registry],
  });
  readonly cleanupSeconds = new Histogram({
    name: 'k8s_claimer_cleanup_duration_seconds',
    help: 'Time a cleanup (credential revocation, namespace deletion) took, by outcome',
    labelNames: ['outcome'] as const,
    buckets: [0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600],
    registers: [this.registry],
  });
  private readonly storeUsed = new Gauge({
    name: 'k8s_claimer_lease_store_used_bytes',
    help: 'Bytes of annotations on each object of the Kubernetes lease store, as this replica last saw it (the limit counts every annotation)',
    labelNames: ['object'] as const,
    registers: [this.registry],
    collect: () => {
      this.storeUsed.reset();
      for (const usage of this.storeUsage?.() ?? []) this.storeUsed.set({ object: usage.object }, usage.usedBytes);
    },
  });
  private readonly storeLimit = new Gauge({
    name: 'k8s_claimer_lease_store_limit_bytes',
    help: 'What Kubernetes allows for the annotations of each object of the lease store (256 KiB)',
    labelNames: ['object'] as const,
    registers: [this.registry],
    collect: () => {
      this.storeLimit.reset();
      for (const usage of this.storeUsage?.() ?? []) this.storeLimit.set({ object: usage.object }, usage.limitBytes);
    },
  });
  readonly managedOperationSeconds = new Histogram({
    name: 'k8s_claimer_managed_operation_seconds',
    help: 'Time a managed pool\'s GKE operation (create, delete, hibernate, wake) took, by pool, kind and outcome',
    labelNames: ['pool', 'kind', 'outcome'] as const,
    buckets: [1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800],
    registers: [this.registry],
  });
  readonly nodeHours = new Counter({
    name: 'k8s_claimer_node_hours_total',
    help: 'Node hours of a managed pool\'s running (not hibernated) clusters, by pool',
    labelNames: ['pool'] as const,
    registers: [this.registry],
  });
  readonly cleanupFailures = new Counter({ name: 'k8s_claimer_cleanup_failures_total', help: 'Cleanups that failed (they are retried)', registers: [this.registry] });

  /** Set by the wiring: how to count clusters by state, and how many wait on this replica. */
  countStates?: () => Promise<Record<string, Record<string, number>> | undefined>;
  storeUsage?: () => StoreUsage[];
  waitingDepth?: () => number;

  constructor(options: { processMetrics?: boolean } = {}) {
    if (options.processMetrics ?? true) collectDefaultMetrics({ register: this.registry, prefix: 'k8s_claimer_' });
  }

  async text(): Promise<{ body: string; contentType: string }> {
    return { body: await this.registry.metrics(), contentType: this.registry.contentType };
  }
}
