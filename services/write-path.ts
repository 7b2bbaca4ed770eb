// The one write path: every change to the lease table goes through here. Decisions that arrive
// while a write is in flight are queued and applied together in the next single
// compare-and-swap (group commit); each still gets its own answer. A conflict re-reads the
// table and replays the same decisions, so no answer is ever based on a stale table.

import { ContentionError, LeaseNotFoundError, StoreFullError, TransientStoreError, VersionConflictError } from './errors.ts';
import { holdsChanges, type Decision, type DecisionContext, type LeaseTable } from './lease-table.ts';
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
  /** What a lease's end leaves behind: see DecisionContext.endState. */
  endState?: 'free' | 'dirty';
  /** Tries when the store fails for a while (429, 5xx, a reset connection) before giving up. */
  transientAttempts?: number;
  /** First pause after such a failure, in ms; it doubles. */
  transientPauseMs?: number;
  random?: () => number;
  sleep?: (ms: number) => Promise<void>;
}

interface Pending {
  decision: Decision<unknown>;
  /**
   * What this decision answered in an earlier write whose fate is unknown. If deciding again
   * finds its lease gone (a release that did land), that earlier answer is the true one.
   */
  unclearAnswer?: { value: unknown };
  /** A "nothing to change" answer from the cached table will do (the reaper's sweeps). */
  staleOk: boolean;
  resolve(value: unknown): void;
  reject(error: unknown): void;
}

export interface SubmitOptions {
  staleOk?: boolean;
}

/** Told of every table this replica learns of: its own commits and other replicas' (watch). */
export type TableListener = (table: LeaseTable) => void;

export class WritePath {
  private readonly queue: Pending[] = [];
  private flushing = false;
  /** The last table this replica saw, used as the base of the next write without a read. */
  private cached?: Snapshot;
  /** The newest table seen by any means, kept even when `cached` is dropped: what scrapes show. */
  private latest?: Snapshot;
  /** A readiness read in flight or just done, shared by every probe for a moment. */
  private readinessRead?: { promise: Promise<unknown>; at: number };
  private readonly batch: boolean;
  private readonly maxAttempts: number;
  private readonly jitterMs: number;
  private readonly transientAttempts: number;
  private readonly endState: 'free' | 'dirty';
  private readonly transientPauseMs: number;
  private readonly random: () => number;
  private readonly sleep: (ms: number) => Promise<void>;
  private readonly listeners = new Set<TableListener>();
  /** Decisions applied so far, retries included: what waking waiters costs (benchmarks, tests). */
  decisionsApplied = 0;

  constructor(
    private readonly store: LeaseStore,
    private readonly listClusters: () => Promise<Cluster[]>,
    private readonly clock: Clock,
    options: WritePathOptions = {},
  ) {
    this.batch = options.batch ?? true;
    this.maxAttempts = options.maxAttempts ?? 30;
    this.jitterMs = options.jitterMs ?? 5;
    this.transientAttempts = options.transientAttempts ?? 4;
    this.endState = options.endState ?? 'free';
    this.transientPauseMs = options.transientPauseMs ?? 100;
    this.random = options.random ?? Math.random;
    this.sleep = options.sleep ?? ((ms) => new Promise((resolve) => setTimeout(resolve, ms)));
  }

  /** Applies one decision through the write path and returns its answer (or throws its error). */
  submit<R>(decision: Decision<R>, options: SubmitOptions = {}): Promise<R> {
    return new Promise<R>((resolve, reject) => {
      const pending: Pending = { decision, staleOk: options.staleOk ?? false, resolve: resolve as (value: unknown) => void, reject };
      if (!this.batch) {
        void this.commit([pending], false);
        return;
      }
      this.queue.push(pending);
      if (!this.flushing) void this.flush();
    });
  }

  /** The time on this replica's clock. */
  now(): number {
    return this.clock.now();
  }

  /** The pool and the time, without reading the table. */
  async context(): Promise<DecisionContext> {
    return { now: this.clock.now(), clusters: await this.listClusters(), endState: this.endState };
  }

  /** A fresh read of the table and the pool, for answers that change nothing. */
  async view(): Promise<{ snapshot: Snapshot; context: DecisionContext }> {
    const [snapshot, clusters] = await Promise.all([this.store.read(), this.listClusters()]);
    this.cached = snapshot;
    this.remember(snapshot);
    return { snapshot, context: { now: this.clock.now(), clusters, endState: this.endState } };
  }

  /**
   * The newest table this replica knows (its own writes, the watch, its reads) and the pool,
   * without asking the store: what metrics show, so that scrapes cost the store nothing.
   * Undefined before the first table is known.
   */
  async cachedView(): Promise<{ table: LeaseTable; context: DecisionContext } | undefined> {
    const latest = this.latest;
    if (!latest) return undefined;
    return { table: latest.table, context: await this.context() };
  }

  /**
   * Throws when the store or the pool does not answer. A store whose watch is live needs no
   * read; otherwise one read is shared by every probe for two seconds, so that probes (which
   * need no auth) cannot make the replica hammer its store.
   */
  async checkReady(): Promise<void> {
    await this.listClusters();
    if (this.store.watchLive?.()) return;
    const now = performance.now();
    if (!this.readinessRead || now - this.readinessRead.at > 2_000) {
      this.readinessRead = { promise: this.view(), at: now };
    }
    await this.readinessRead.promise;
  }

  /** Whether the store's watch is live (readiness without a read). */
  watchLive(): boolean {
    return this.store.watchLive?.() ?? false;
  }

  private remember(snapshot: Snapshot): void {
    this.latest = snapshot;
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
      this.remember(snapshot);
      this.tell(snapshot.table);
    });
  }

  /** Registers a listener for new tables; returns a function that removes it. */
  onTable(listener: TableListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private tell(table: LeaseTable): void {
    for (const listener of this.listeners) listener(table);
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
    let troubles = 0;
    /** Earlier writes of this batch whose fate is unknown (no answer): one may still show up. */
    const unclear: Array<{ base: LeaseTable; next: LeaseTable; settle: Array<() => void>; size: number }> = [];
    /** The batch did not fit the store: from now on each decision is checked, and only those that do not fit are refused. */
    let full = false;
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
        if (error instanceof TransientStoreError && ++troubles < this.transientAttempts) {
          await this.sleep(this.transientPauseMs * 2 ** (troubles - 1));
          continue;
        }
        for (const pending of batch) pending.reject(error);
        return;
      }
      // A fresh table that holds an earlier unclear write: that write landed, its answers stand.
      if (fresh) this.remember(base);
      const earlier = unclear.find((write) => holdsChanges(write.base, write.next, base.table));
      if (earlier) {
        if (useCache) this.cached = base;
        for (const settle of earlier.settle) settle();
        // Requests that joined the batch after that write are decided again on their own.
        const later = batch.slice(earlier.size);
        if (later.length > 0) this.queue.unshift(...later);
        this.tell(base.table);
        return;
      }
      const context: DecisionContext = { now: this.clock.now(), clusters, endState: this.endState };
      const wouldFit = this.store.wouldFit?.bind(this.store);
      const { table, answers, outcomes } = this.decide(batch, base.table, context, full && wouldFit ? (next) => wouldFit(next, base) : undefined);
      if (table === base.table) {
        // Nothing to write. Answers such as "no cluster free" must come from a fresh table,
        // since another replica may have released a cluster since the cached one was read.
        if (!fresh && !batch.every((pending) => pending.staleOk)) {
          this.cached = undefined;
          continue;
        }
        if (useCache) this.cached = base;
        for (const settle of outcomes) settle();
        return;
      }
      let failure: unknown;
      let written: Snapshot | undefined;
      try {
        written = await this.store.write(table, base);
      } catch (error) {
        failure = error;
        // Keep a table the watch delivered meanwhile: it is newer than the one that lost.
        if (this.cached?.version === base.version) this.cached = undefined;
        // Anything but a clean refusal may hide a write that landed (a timeout, a reset).
        if (!(error instanceof VersionConflictError || error instanceof StoreFullError)) {
          written = await this.landed(base.table, table);
          if (!written) {
            unclear.push({ base: base.table, next: table, settle: outcomes, size: batch.length });
            batch.forEach((pending, index) => {
              if (answers[index]) pending.unclearAnswer = answers[index];
            });
          }
        }
      }
      if (written) {
        if (useCache) this.cached = written;
        this.remember(written);
        for (const settle of outcomes) settle();
        this.tell(written.table);
        return;
      }
      if (failure instanceof StoreFullError && !full && batch.length > 1 && this.store.wouldFit) {
        // One request's growth must not fail the others of its batch: decide again, one by one.
        full = true;
        continue;
      }
      if (failure instanceof VersionConflictError) {
        if (attempt >= this.maxAttempts) {
          for (const pending of batch) pending.reject(new ContentionError());
          return;
        }
        // Decorrelated pauses keep replicas that collided from colliding again in lockstep.
        await this.sleep(this.random() * this.jitterMs * 2 ** Math.min(attempt - 1, 5));
      } else if (failure instanceof TransientStoreError && ++troubles < this.transientAttempts) {
        await this.sleep(this.transientPauseMs * 2 ** (troubles - 1));
      } else {
        for (const pending of batch) pending.reject(failure);
        return;
      }
      // The batch is decided again anyway: take in what arrived meanwhile, for free.
      if (useCache) batch.push(...this.queue.splice(0));
    }
  }

  /**
   * Applies the batch's decisions in order, each to the table the previous one left. With
   * `fits`, a decision whose table would not fit the store is refused on its own (503) and the
   * rest go on without it.
   */
  private decide(batch: Pending[], base: LeaseTable, context: DecisionContext, fits?: (table: LeaseTable) => boolean) {
    let table = base;
    const answers: Array<{ value: unknown } | undefined> = [];
    this.decisionsApplied += batch.length;
    const outcomes = batch.map((pending, index) => {
      try {
        const outcome = pending.decision(table, context);
        if (fits && outcome.table !== table && !fits(outcome.table)) return () => pending.reject(new StoreFullError());
        table = outcome.table;
        answers[index] = { value: outcome.result };
        return () => pending.resolve(outcome.result);
      } catch (error) {
        const earlier = pending.unclearAnswer;
        if (earlier && error instanceof LeaseNotFoundError) return () => pending.resolve(earlier.value);
        return () => pending.reject(error);
      }
    });
    return { table, answers, outcomes };
  }

  /** The fresh table if it holds exactly what the failed write meant to change, else undefined. */
  private async landed(base: LeaseTable, next: LeaseTable): Promise<Snapshot | undefined> {
    try {
      const fresh = await this.store.read();
      return holdsChanges(base, next, fresh.table) ? fresh : undefined;
    } catch {
      return undefined;
    }
  }
}
