// The runner of a managed pool: one per managed pool on every replica. Each tick it claims the
// pool's manager role; the replica that holds it reads the pool's records and GKE's list, asks
// the planner (managed-pool.ts) what to start, claims each cluster's record for the operation
// (managed-table.ts), makes the GKE call and follows GKE's operation to its end in the
// background, then finishes the record. An operation whose replica died is taken over once its
// claim ran out and followed to its end. Stopping releases the manager role; operations in
// flight are left to the next manager.

import type { ClusterManagerClient, protos } from '@google-cloud/container';
import type { Logger } from 'pino';
import { effectiveState, liveWaiters, type ClusterEntry, type LeaseTable } from './lease-table.ts';
import { effectiveTargets, plan, randomSuffix, retryAfterSeconds, type Action, type ManagedCluster, type ManagedSettings } from './managed-pool.ts';
import { claimPoolManager, finishOperation, nameOperation, releasePoolManager, startOperation, takeOverOperation, adoptCluster, type OperationKind } from './managed-table.ts';
import type { Metrics } from './metrics.ts';
import { createCluster, deleteCluster, findOperations, setNodePoolSize, waitForOperation, type OperationOutcome } from './providers/gke-operations.ts';
import type { Cluster } from './providers/types.ts';
import { ticketLive } from './queue.ts';
import type { WritePath } from './write-path.ts';

/** What the runner needs of the pool's GKE provider. */
export interface ManagedProvider {
  readonly gke: ClusterManagerClient;
  list(): Promise<Cluster[]>;
  invalidate(): void;
}

export interface ManagedRunnerOptions {
  pool: string;
  settings: ManagedSettings;
  projectId: string;
  location: string;
  owner: string;
  /** Between two ticks; default 5 s. */
  intervalMs?: number;
  /** How long the manager role and an operation's claim hold; default 3 ticks. */
  claimMs?: number;
  /** Between two GetOperation polls; default 5 s. */
  pollMs?: number;
  suffix?: () => string;
  timeZone?: string;
  /** The pool's labels (and the pools file's), as its clusters carry them. */
  labels?: Readonly<Record<string, string>>;
}

type GkeCluster = protos.google.container.v1.ICluster;

/** The node pools of the template and their sizes (GKE names a cluster's only pool default-pool). */
export function templateNodePools(settings: ManagedSettings): Array<{ name: string; nodeCount: number }> {
  const template = settings.template as { nodePools?: Array<{ name?: unknown; initialNodeCount?: unknown }>; initialNodeCount?: number };
  if (template.nodePools) return template.nodePools.map((pool, index) => ({ name: String(pool.name ?? `pool-${index}`), nodeCount: Number(pool.initialNodeCount ?? 1) }));
  return [{ name: 'default-pool', nodeCount: template.initialNodeCount ?? 1 }];
}

/** A short cause for /leases: the error's first line, never a stack. */
function shortError(error: unknown): string {
  const text = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
  return text.split('\n')[0].slice(0, 200);
}

export class ManagedRunner {
  private timer?: NodeJS.Timeout;
  private running?: Promise<void>;
  private stopped = false;
  private readonly abort = new AbortController();
  /** Operations this replica follows now, by cluster id. */
  private readonly inFlight = new Map<string, Promise<void>>();
  private readonly intervalMs: number;
  private readonly claimMs: number;
  private lastTick?: number;
  /** How long the pool's recent creates and wakes took. */
  readonly recentDurations: { createMs?: number; wakeMs?: number } = {};

  constructor(
    private readonly writePath: WritePath,
    private readonly provider: ManagedProvider,
    private readonly options: ManagedRunnerOptions,
    private readonly logger: Logger,
    private readonly metrics?: Metrics,
  ) {
    this.intervalMs = options.intervalMs ?? 5_000;
    this.claimMs = options.claimMs ?? 3 * this.intervalMs;
  }

  get pool(): string {
    return this.options.pool;
  }

  start(): void {
    const loop = () => {
      if (this.stopped) return;
      this.running = this.tick()
        .catch((error) => this.logger.warn({ err: error, pool: this.pool }, 'managed pool tick failed; trying again next tick'))
        .finally(() => {
          this.running = undefined;
          if (!this.stopped) {
            this.timer = setTimeout(loop, this.intervalMs);
            this.timer.unref?.();
          }
        });
    };
    loop();
  }

  /** Stops ticking and following; releases the manager role. Operations in flight are left to be taken over. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    this.abort.abort(new Error('the managed pool runner stopped'));
    await this.running;
    await Promise.allSettled([...this.inFlight.values()]);
    await this.writePath.submit(releasePoolManager(this.pool, this.options.owner)).catch(() => undefined);
  }

  private id(name: string): string {
    return `${this.pool}/${this.options.location}/${name}`;
  }

  private nameOf(clusterId: string): string {
    return clusterId.slice(`${this.pool}/${this.options.location}/`.length);
  }

  /** One round: claim the role; as manager, adopt, take over, plan and start. */
  async tick(): Promise<void> {
    const { owner } = this.options;
    const mine = await this.writePath.submit(claimPoolManager(this.pool, owner, this.claimMs));
    if (!mine || this.stopped) return;
    const listed = await this.provider.list();
    let { snapshot, context } = await this.writePath.view();
    const now = context.now;
    this.countNodeHours(snapshot.table, now);
    // Adopt labelled running clusters without a record.
    let adopted = false;
    for (const cluster of listed) {
      const id = `${this.pool}/${cluster.id}`;
      if (cluster.location !== this.options.location || snapshot.table.clusters[id] || this.inFlight.has(id) || cluster.status !== 'RUNNING') continue;
      if (await this.writePath.submit(adoptCluster(id, this.pool))) {
        this.logger.info({ pool: this.pool, cluster: id }, 'adopted a cluster labelled as the pool\'s');
        adopted = true;
      }
    }
    if (adopted) ({ snapshot, context } = await this.writePath.view());
    const table = snapshot.table;
    const records = this.recordsIn(table);
    // Keep our own operations' claims alive; take over those whose replica died.
    for (const [id, entry] of records) {
      const operation = entry.managed?.operation;
      if (!operation) continue;
      if (this.inFlight.has(id)) {
        if (operation.owner === owner && operation.deadline - now < this.claimMs / 2) await this.writePath.submit(takeOverOperation(id, owner, this.claimMs));
        continue;
      }
      if (operation.owner !== owner && operation.deadline > now) continue;
      const taken = await this.writePath.submit(takeOverOperation(id, owner, this.claimMs));
      if (!taken) continue;
      this.logger.info({ pool: this.pool, cluster: id, kind: taken.kind, operation: taken.name }, 'following an operation another replica started');
      this.follow(id, taken.kind, taken.startedAt, () => this.resume(id, taken.kind, taken.name));
    }
    const byId = new Map(listed.map((cluster) => [`${this.pool}/${cluster.id}`, cluster]));
    const clusters = records.map(([id, entry]) => this.plannerCluster(id, entry, table, context.clusters, byId.get(id), now));
    const free = clusters.filter((cluster) => cluster.state === 'free' && !cluster.operation).length;
    const waiting = Math.max(0, this.waitingFor(table, now) - free);
    const actions = plan({ settings: this.options.settings, now, clusters, waiting, recentDurations: this.recentDurations, suffix: this.options.suffix ?? randomSuffix, ...(this.options.timeZone && { timeZone: this.options.timeZone }) });
    for (const action of actions) {
      if (this.stopped) return;
      await this.startAction(action, byId.get(this.id(action.name)));
    }
  }

  /** The records of the pool's clusters in a table. */
  private recordsIn(table: LeaseTable): Array<[string, ClusterEntry]> {
    return Object.entries(table.clusters).filter(([, entry]) => entry.managed?.pool === this.pool);
  }

  /** The pool's clusters as the planner sees them, from a table. */
  clustersIn(table: LeaseTable, poolList: readonly Cluster[], now: number): ManagedCluster[] {
    return this.recordsIn(table).map(([id, entry]) => this.plannerCluster(id, entry, table, poolList, undefined, now));
  }

  /** Per table: the cluster the pool could still make, if it has room under max_size. */
  private readonly prospects = new WeakMap<LeaseTable, Cluster | null>();

  /**
   * The cluster this pool could make next (from its template), while it has room under
   * `max_size`: a request that no listed cluster matches, but such a cluster would, waits for
   * it instead of being told that nothing matches. Never leased: it is in no pool list.
   */
  prospect(table: LeaseTable): Cluster | undefined {
    let known = this.prospects.get(table);
    if (known === undefined) {
      const size = this.recordsIn(table).length;
      const template = this.options.settings.template as { resourceLabels?: Record<string, string>; initialClusterVersion?: string };
      known = size >= this.options.settings.max_size
        ? null
        : {
            id: `${this.pool}/${this.options.location}/~next`,
            pool: this.pool,
            name: this.options.settings.name_prefix,
            location: this.options.location,
            endpoint: '',
            server: '',
            labels: { ...this.options.labels, ...(template.resourceLabels ?? {}) },
            version: template.initialClusterVersion ?? '',
            status: 'RUNNING',
            tag: '',
            gpu: false,
            registryLocation: null,
          };
      this.prospects.set(table, known);
    }
    return known ?? undefined;
  }

  /** For /leases: the targets now, the clusters the pool has, its ceiling. */
  describe(table: LeaseTable | undefined, now: number): { target: { min_ready: number; running_min: number }; size: number; max_size: number } {
    const targets = effectiveTargets(this.options.settings, now, this.options.timeZone);
    const size = table ? this.recordsIn(table).length : 0;
    return { target: { min_ready: targets.minReady, running_min: targets.runningMin }, size, max_size: this.options.settings.max_size };
  }

  /**
   * A request that would not wait found nothing free: when a cluster of this pool is likely
   * ready (a create or wake under way, or one that can start); undefined when the pool can
   * neither grow nor wake one.
   */
  retryAfter(table: LeaseTable, poolList: readonly Cluster[], now: number): number | undefined {
    const clusters = this.clustersIn(table, poolList, now);
    const canGrow = clusters.length < this.options.settings.max_size;
    const coming = clusters.some((cluster) => cluster.state === 'hibernated' || cluster.state === 'provisioning' || cluster.state === 'waking');
    if (!canGrow && !coming) return undefined;
    return retryAfterSeconds({ settings: this.options.settings, now, clusters, waiting: 0, recentDurations: this.recentDurations });
  }

  /** Live tickets this pool could serve. */
  private waitingFor(table: LeaseTable, now: number): number {
    if (liveWaiters(table, now) === 0) return 0;
    let count = 0;
    for (const ticket in table.waiters) {
      const waiter = table.waiters[ticket];
      if (!ticketLive(table, waiter, now)) continue;
      const pools = table.filters[waiter.filter]?.pools;
      if (!pools || pools.includes(this.pool)) count += 1;
    }
    return count;
  }

  private plannerCluster(id: string, entry: ClusterEntry, table: LeaseTable, poolList: readonly Cluster[], listed: Cluster | undefined, now: number): ManagedCluster {
    const managed = entry.managed!;
    const operation = managed.operation;
    const base = {
      name: this.nameOf(id),
      leases: managed.leases,
      ...(entry.idleSince !== undefined && { idleSince: entry.idleSince }),
      ...(managed.failures !== undefined && { failures: managed.failures }),
      ...(managed.retryAt !== undefined && { retryAt: managed.retryAt }),
    };
    const op = operation && { kind: (operation.kind === 'hibernate' || operation.kind === 'wake' ? 'resize' : operation.kind) as 'create' | 'delete' | 'resize', startedAt: operation.startedAt };
    switch (entry.state) {
      case 'provisioning':
        return op ? { ...base, state: 'provisioning', operation: op } : { ...base, state: 'error' };
      case 'deleting':
        // Without an operation: a failed delete, or used up by recycle_after: to delete.
        return op ? { ...base, state: 'deleting', operation: op } : { ...base, state: 'error' };
      case 'hibernated':
        // A hibernation under way is a resize on a free cluster.
        return op ? { ...base, state: 'free', operation: op } : { ...base, state: 'hibernated' };
      case 'waking':
        return { ...base, state: 'waking', ...(op && { operation: op }) };
      default: {
        const cluster = poolList.find((candidate) => candidate.id === id) ?? (listed && { ...listed, id });
        const state = cluster ? effectiveState(table, cluster, now) : entry.state;
        if (state === 'free') return { ...base, state: 'free' };
        if (state === 'leased') return { ...base, state: 'leased' };
        if (state === 'cleaning') return { ...base, state: 'cleaning' };
        return { ...base, state: 'dirty' };
      }
    }
  }

  private async startAction(action: Action, listed: Cluster | undefined): Promise<void> {
    const kind: OperationKind = action.kind;
    const clusterId = this.id(action.name);
    const started = await this.writePath.submit(
      startOperation({ clusterId, pool: this.pool, kind, owner: this.options.owner, ms: this.claimMs, ...(this.options.settings.recycle_after !== undefined && { recycleAfter: this.options.settings.recycle_after }) }),
    );
    if (!started) return;
    this.logger.info({ pool: this.pool, cluster: clusterId, action: action.kind, ...('reason' in action && { reason: action.reason }) }, 'managed pool operation started');
    this.follow(clusterId, kind, this.writePath.now(), () => this.run(clusterId, action, listed));
  }

  /** Runs `work` in the background; finishes the record with its outcome (not when stopping). */
  private follow(clusterId: string, kind: OperationKind, startedAt: number, work: () => Promise<OperationOutcome | { ok: true } | { ok: false; message: string }>): void {
    const done = (async () => {
      let outcome: { ok: boolean; message?: string };
      try {
        outcome = await work();
      } catch (error) {
        if (this.abort.signal.aborted) return;
        outcome = { ok: false, message: shortError(error) };
      }
      if (this.abort.signal.aborted) return;
      const ms = Math.max(0, this.writePath.now() - startedAt);
      if (outcome.ok && kind === 'create') this.recentDurations.createMs = ms;
      if (outcome.ok && kind === 'wake') this.recentDurations.wakeMs = ms;
      this.metrics?.managedOperationSeconds.observe({ pool: this.pool, kind, outcome: outcome.ok ? 'ok' : 'failed' }, ms / 1000);
      if (!outcome.ok) this.logger.warn({ pool: this.pool, cluster: clusterId, kind, error: outcome.message }, 'managed pool operation failed');
      await this.writePath.submit(finishOperation({ clusterId, owner: this.options.owner, ok: outcome.ok, ...(!outcome.ok && { error: (outcome.message || `${kind} failed`).slice(0, 200) }) }));
      this.provider.invalidate();
    })()
      .catch((error) => this.logger.warn({ err: error, pool: this.pool, cluster: clusterId }, 'could not finish a managed pool operation; another tick takes it over'))
      .finally(() => this.inFlight.delete(clusterId));
    this.inFlight.set(clusterId, done);
  }

  private scope() {
    return { projectId: this.options.projectId, location: this.options.location };
  }

  private async wait(clusterId: string, operation: string): Promise<OperationOutcome> {
    await this.writePath.submit(nameOperation(clusterId, this.options.owner, operation));
    return waitForOperation(this.provider.gke, { ...this.scope(), operation }, { ...(this.options.pollMs && { pollMs: this.options.pollMs }), signal: this.abort.signal });
  }

  /** A fresh look at the cluster in GKE (the cached list may be old). */
  private async listedNow(name: string): Promise<Cluster | undefined> {
    this.provider.invalidate();
    return (await this.provider.list()).find((cluster) => cluster.name === name && cluster.location === this.options.location);
  }

  private async run(clusterId: string, action: Action, listed: Cluster | undefined): Promise<OperationOutcome | { ok: true } | { ok: false; message: string }> {
    const client = this.provider.gke;
    const scope = this.scope();
    const name = action.name;
    switch (action.kind) {
      case 'create': {
        const cluster: GkeCluster = { ...(this.options.settings.template as GkeCluster), name };
        return this.wait(clusterId, await createCluster(client, { ...scope, pool: this.pool, cluster }));
      }
      case 'delete': {
        const current = listed ?? (await this.listedNow(name));
        // Not in GKE (a create that never started): nothing to delete.
        if (!current) return { ok: true };
        return this.wait(clusterId, await deleteCluster(client, { ...scope, pool: this.pool, cluster: current }));
      }
      case 'hibernate':
      case 'wake': {
        const current = listed ?? (await this.listedNow(name));
        if (!current) return { ok: false, message: `cluster ${name} is not listed in GKE` };
        for (const pool of templateNodePools(this.options.settings)) {
          const nodeCount = action.kind === 'hibernate' ? 0 : pool.nodeCount;
          const outcome = await this.wait(clusterId, await setNodePoolSize(client, { ...scope, pool: this.pool, cluster: current, nodePool: pool.name, nodeCount }));
          if (!outcome.ok) return outcome;
        }
        return { ok: true };
      }
    }
  }

  /** Follows an operation taken over: by its recorded name, else GKE's running operations, else the cluster's status. */
  private async resume(clusterId: string, kind: OperationKind, operation: string | undefined): Promise<OperationOutcome | { ok: true } | { ok: false; message: string }> {
    const client = this.provider.gke;
    const name = this.nameOf(clusterId);
    const follow = (op: string) => waitForOperation(client, { ...this.scope(), operation: op }, { ...(this.options.pollMs && { pollMs: this.options.pollMs }), signal: this.abort.signal });
    if (operation) return follow(operation);
    const [running] = await findOperations(client, this.scope(), name);
    if (running?.name) {
      await this.writePath.submit(nameOperation(clusterId, this.options.owner, running.name));
      return follow(running.name);
    }
    const current = await this.listedNow(name);
    switch (kind) {
      case 'create':
        return current?.status === 'RUNNING' ? { ok: true } : { ok: false, message: current ? `the create ended ${current.status}` : 'the create never reached GKE' };
      case 'delete':
        return current ? { ok: false, message: 'the cluster is still in GKE' } : { ok: true };
      case 'hibernate':
        // Left as hibernated: at worst it runs idle until woken.
        return { ok: true };
      case 'wake':
        // Hibernated again, so that the planner wakes it anew.
        return { ok: false, message: 'the wake was not found; waking again' };
    }
  }

  /** Node hours of the running (not hibernated) clusters since the last tick. */
  private countNodeHours(table: LeaseTable, now: number): void {
    const last = this.lastTick;
    this.lastTick = now;
    if (!this.metrics || last === undefined || now <= last) return;
    const nodes = templateNodePools(this.options.settings).reduce((sum, pool) => sum + pool.nodeCount, 0);
    let running = 0;
    for (const id in table.clusters) {
      const entry = table.clusters[id];
      if (entry.managed?.pool !== this.pool) continue;
      if (entry.state === 'hibernated' || entry.state === 'provisioning' || entry.state === 'deleting') continue;
      running += 1;
    }
    if (running > 0) this.metrics.nodeHours.inc({ pool: this.pool }, (running * nodes * (now - last)) / 3_600_000);
  }
}
