// The one write path: every change to the lease table goes through here. Decisions that arrive
// while a write is in flight are queued and applied together in the next single
// compare-and-swap (group commit); each still gets its own answer. A conflict re-reads the
// table and replays the same decisions, so no answer is ever based on a stale table.

import { ContentionError, VersionConflictError } from './errors.ts';
import type { Decision, DecisionContext } from './lease-table.ts';
import type { Cluster } from './providers/types.ts';
import type { LeaseStore, Snapshot } from './store/types.ts';

export interface Clock {
  /** Milliseconds since the epoch. */
  now(): number;
}

export const systemClock: Clock = { now: () => Date.now() };

export interface WritePathOptions {
  /** Group commit (default). Off: each decision reads, decides and writes on its own. */
  batch?: boolean;
  /** Compare-and-swap attempts before a caller gets a 503; conflicts normally clear in a few. */
  maxAttempts?: number;
  /** Upper bound of the random pause between attempts, in ms, before backoff doubles it. */
  jitterMs?: number;
  random?: () => number;
  sleep?: (ms: number) => Promise<void>;
}

interface Pending {
  decision: Decision<unknown>;
  resolve(value: unknown): void;
  reject(error: unknown): void;
}

export class WritePath {
  private readonly queue: Pending[] = [];
  private flushing = false;
  /** The last table this replica saw, used as the base of the next write without a read. */
  private cached?: Snapshot;
  private readonly batch: boolean;
  private readonly maxAttempts: number;
  private readonly jitterMs: number;
  private readonly random: () => number;
  private readonly sleep: (ms: number) => Promise<void>;

  constructor(
    private readonly store: LeaseStore,
    private readonly listClusters: () => Promise<Cluster[]>,
    private readonly clock: Clock,
    options: WritePathOptions = {},
  ) {
    this.batch = options.batch ?? true;
    this.maxAttempts = options.maxAttempts ?? 30;
    this.jitterMs = options.jitterMs ?? 5;
    this.random = options.random ?? Math.random;
    this.sleep = options.sleep ?? ((ms) => new Promise((resolve) => setTimeout(resolve, ms)));
  }

  /** Applies one decision through the write path and returns its answer (or throws its error). */
  submit<R>(decision: Decision<R>): Promise<R> {
    return new Promise<R>((resolve, reject) => {
      const pending: Pending = { decision, resolve: resolve as (value: unknown) => void, reject };
      if (!this.batch) {
        void this.commit([pending], false);
        return;
      }
      this.queue.push(pending);
      if (!this.flushing) void this.flush();
    });
  }

  /** A fresh read of the table and the pool, for answers that change nothing. */
  async view(): Promise<{ snapshot: Snapshot; context: DecisionContext }> {
    const [snapshot, clusters] = await Promise.all([this.store.read(), this.listClusters()]);
    this.cached = snapshot;
    return { snapshot, context: { now: this.clock.now(), clusters } };
  }

  /** Reads the table and the pool once, so the first request finds clients connected and caches warm. */
  async warmUp(): Promise<void> {
    await this.view();
  }

  /**
   * Follows the store's changes (when it can report them), so that writes start from the
   * latest table instead of losing a compare-and-swap to another replica's earlier write.
   */
  watchStore(): () => void {
    if (!this.store.watch || !this.batch) return () => undefined;
    return this.store.watch((snapshot) => {
      this.cached = snapshot;
    });
  }

  private async flush(): Promise<void> {
    this.flushing = true;
    try {
      while (this.queue.length > 0) {
        await this.commit(this.queue.splice(0), true);
      }
    } finally {
      this.flushing = false;
    }
  }

  private async commit(batch: Pending[], useCache: boolean): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      let base: Snapshot;
      let fresh: boolean;
      let clusters: Cluster[];
      try {
        fresh = !(useCache && this.cached);
        [base, clusters] = await Promise.all([
          fresh ? this.store.read() : Promise.resolve(this.cached as Snapshot),
          this.listClusters(),
        ]);
      } catch (error) {
        for (const pending of batch) pending.reject(error);
        return;
      }
      const context: DecisionContext = { now: this.clock.now(), clusters };
      let table = base.table;
      const outcomes = batch.map((pending) => {
        try {
          const outcome = pending.decision(table, context);
          table = outcome.table;
          return () => pending.resolve(outcome.result);
        } catch (error) {
          return () => pending.reject(error);
        }
      });
      if (table === base.table) {
        // Nothing to write. Answers such as "no cluster free" must come from a fresh table,
        // since another replica may have released a cluster since the cached one was read.
        if (!fresh) {
          this.cached = undefined;
          continue;
        }
        if (useCache) this.cached = base;
        for (const settle of outcomes) settle();
        return;
      }
      try {
        const written = await this.store.write(table, base);
        if (useCache) this.cached = written;
        for (const settle of outcomes) settle();
        return;
      } catch (error) {
        // Keep a table the watch delivered meanwhile: it is newer than the one that lost.
        if (this.cached?.version === base.version) this.cached = undefined;
        if (!(error instanceof VersionConflictError)) {
          for (const pending of batch) pending.reject(error);
          return;
        }
        if (attempt >= this.maxAttempts) {
          for (const pending of batch) pending.reject(new ContentionError());
          return;
        }
        // Decorrelated pauses keep replicas that collided from colliding again in lockstep.
        await this.sleep(this.random() * this.jitterMs * 2 ** Math.min(attempt - 1, 5));
        // The batch is decided again anyway: take in what arrived meanwhile, for free.
        if (useCache) batch.push(...this.queue.splice(0));
      }
    }
  }
}
