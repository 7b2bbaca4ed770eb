// The one write path: every change to the lease table goes through here. Decisions that arrive
// while a write is in flight are queued and applied together in the next commit (group
// commit); each still gets its own answer. A store whose table spans several objects writes
// each decision's records where they live, one compare-and-swap per object, and says per
// decision whether they landed; a decision whose object moved on is decided again on fresh
// data, so no answer is ever based on a stale table.

import { ContentionError, LeaseNotFoundError, StoreFullError, TransientStoreError, VersionConflictError } from './errors.ts';
import { isDeepStrictEqual } from 'node:util';
import { clusterOfLease, dropWaiters, holdsChanges, type Decision, type DecisionContext, type LeaseTable } from './lease-table.ts';
import type { Cluster } from './providers/types.ts';
import type { CommitResult, CommitStep, LeaseStore, Snapshot, StepOutcome, StoreUsage } from './store/types.ts';
import { tableChanges, type TableChange } from './table-changes.ts';

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
  /** Conflicts so far: past maxAttempts the caller gets a 503. */
  conflicts: number;
  /** Writes of this decision that failed for a passing reason: past transientAttempts, its error. */
  troubles: number;
  /** A write of this decision whose answer was lost: should its records show up, it landed. */
  unclear?: { changes: readonly TableChange[]; settle: () => void };
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
      const pending: Pending = { decision, conflicts: 0, troubles: 0, staleOk: options.staleOk ?? false, resolve: resolve as (value: unknown) => void, reject };
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

  /** Clusters managed pools could still make (set once their runners exist): see DecisionContext. */
  prospects?: (table: LeaseTable) => readonly Cluster[];

  /** The pool and the time, without reading the table. */
  async context(): Promise<DecisionContext> {
    return { now: this.clock.now(), clusters: await this.listClusters(), endState: this.endState, ...(this.prospects && { prospects: this.prospects }) };
  }

  /**
   * A fresh read of the table and the pool, for answers that change nothing. With cluster ids,
   * a store split over objects reads only the objects that hold their records.
   */
  async view(clusterIds?: readonly string[]): Promise<{ snapshot: Snapshot; context: DecisionContext }> {
    const read = clusterIds && this.store.readFor ? this.store.readFor(clusterIds) : this.store.read();
    const [snapshot, clusters] = await Promise.all([read, this.listClusters()]);
    this.cached = snapshot;
    this.remember(snapshot);
    return { snapshot, context: { now: this.clock.now(), clusters, endState: this.endState, ...(this.prospects && { prospects: this.prospects }) } };
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

  /** How full each object of the store is, as last seen. */
  storeUsage(): StoreUsage[] {
    return this.store.usage?.() ?? [];
  }

  /** The records of `table` by the object of the store that holds them, for stores split over several. */
  groupByObject(table: LeaseTable | undefined): string[][] | undefined {
    return table && this.store.groupByObject?.(Object.keys(table.clusters));
  }

  /** The cluster of the live lease with this token hash in the newest table known, if any. */
  clusterOfLease(tokenHash: string): string | undefined {
    return this.latest ? clusterOfLease(this.latest.table, tokenHash, this.clock.now()) : undefined;
  }

  /** The newest table this replica knows, without asking the store; undefined before the first. */
  latestTable(): LeaseTable | undefined {
    return this.latest?.table;
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
    /** The next round reads the table from the store instead of using the cached one. */
    let mustRead = !useCache;
    let pending = batch;
    while (pending.length > 0) {
      let base: Snapshot;
      let fresh: boolean;
      let clusters: Cluster[];
      try {
        fresh = mustRead || !useCache || !this.cached;
        [base, clusters] = await Promise.all([fresh ? this.store.read() : Promise.resolve(this.cached as Snapshot), this.listClusters()]);
      } catch (error) {
        if (error instanceof TransientStoreError && ++troubles < this.transientAttempts) {
          await this.sleep(this.transientPauseMs * 2 ** (troubles - 1));
          continue;
        }
        for (const waiting of pending) waiting.reject(error);
        return;
      }
      mustRead = false;
      if (fresh) {
        this.remember(base);
        if (useCache) this.cached = base;
      }
      // Earlier writes whose answer was lost, and that show up now: their answers stand.
      pending = pending.filter((waiting) => {
        if (!waiting.unclear || !holdsAll(waiting.unclear.changes, base.table)) return true;
        waiting.unclear.settle();
        return false;
      });
      if (pending.length === 0) return;
      const prefer = this.store.preference?.();
      const round = this.decide(pending, base.table, { now: this.clock.now(), clusters, endState: this.endState, ...(prefer && { prefer }), ...(this.prospects && { prospects: this.prospects }) }, fresh);
      let result: CommitResult = { outcomes: [] };
      if (round.steps.length > 0) {
        try {
          result = await (this.store.commit ? this.store.commit(base, round.steps) : commitWhole(this.store, base, round.steps));
        } catch (error) {
          result = { outcomes: round.steps.map(() => ({ kind: 'failed', error, mayHaveLanded: true })) };
        }
        if (result.snapshot) {
          this.remember(result.snapshot);
          if (useCache) this.cached = result.snapshot;
        } else if (this.cached?.version === base.version) {
          // Keep a table the watch delivered meanwhile: it is newer than the one that lost.
          this.cached = undefined;
        }
        if (result.strayTickets?.length) this.dropStrays(result.strayTickets);
      }
      const next: Pending[] = [];
      let conflicts = 0;
      /** The most failed writes of a decision decided again: the pause grows with it. */
      let transient = 0;
      let allWritten = true;
      round.steps.forEach((step, index) => {
        const writer = round.writers[index];
        const outcome = result.outcomes[index] ?? { kind: 'conflict' };
        if (outcome.kind !== 'written') allWritten = false;
        if (outcome.kind === 'written') {
          writer.settle();
        } else if (outcome.kind === 'full') {
          writer.pending.reject(new StoreFullError());
        } else if (outcome.kind === 'conflict') {
          writer.pending.conflicts += 1;
          if (writer.pending.conflicts >= this.maxAttempts) writer.pending.reject(new ContentionError());
          else {
            conflicts = Math.max(conflicts, writer.pending.conflicts);
            next.push(writer.pending);
          }
        } else {
          if (outcome.mayHaveLanded) {
            // What was sent for this decision's records: the batch's last value of each.
            const last = round.steps[round.steps.length - 1].table;
            writer.pending.unclear = { changes: step.changes.map((change) => ({ ...change, value: last[change.section][change.key] })), settle: writer.settle };
            writer.pending.unclearAnswer = writer.answer;
          }
          if (outcome.error instanceof TransientStoreError && ++writer.pending.troubles < this.transientAttempts) {
            transient = Math.max(transient, writer.pending.troubles);
            next.push(writer.pending);
          } else writer.pending.reject(outcome.error);
        }
      });
      if (round.steps.length > 0 && result.outcomes.some((outcome) => outcome.kind === 'written') && result.snapshot) this.tell(result.snapshot.table);
      // Answers that changed nothing stand when the table they came from stands.
      for (const quiet of round.quiet) {
        if (quiet.after > 0 && !allWritten) next.push(quiet.pending);
        else quiet.settle();
      }
      if (round.needFresh.length > 0) {
        // "No cluster free" must come from a fresh table: another replica may have released one.
        mustRead = true;
        next.push(...round.needFresh);
      }
      if (next.length === 0) return;
      if (transient > 0) {
        // Only the decisions whose writes kept failing are refused; the others are decided again.
        await this.sleep(this.transientPauseMs * 2 ** (transient - 1));
      } else if (conflicts > 0) {
        // Decorrelated pauses keep replicas that collided from colliding again in lockstep.
        await this.sleep(this.random() * this.jitterMs * 2 ** Math.min(conflicts - 1, 5));
      }
      // Decided again anyway, in the order they came: take in what arrived meanwhile, for free.
      if (useCache) next.push(...this.queue.splice(0));
      pending = next;
    }
  }

  /**
   * Applies the decisions in order, each to the table the previous one left. A decision that
   * changes nothing is answered once the steps before it are written (`after` counts them);
   * from a cached table, only when a stale answer will do.
   */
  private decide(pending: Pending[], base: LeaseTable, context: DecisionContext, fresh: boolean) {
    let table = base;
    const steps: CommitStep[] = [];
    const writers: Array<{ pending: Pending; settle: () => void; answer: { value: unknown } }> = [];
    const quiet: Array<{ pending: Pending; settle: () => void; after: number }> = [];
    const needFresh: Pending[] = [];
    this.decisionsApplied += pending.length;
    const unlanded: DecisionContext = { ...context, mayHaveLanded: false };
    for (const waiting of pending) {
      let outcome: ReturnType<Decision<unknown>>;
      try {
        outcome = waiting.decision(table, waiting.unclear || waiting.unclearAnswer ? context : unlanded);
      } catch (error) {
        const earlier = waiting.unclearAnswer;
        // Its release did land, in the write whose answer was lost.
        if (earlier && error instanceof LeaseNotFoundError) waiting.resolve(earlier.value);
        else if (!fresh && !waiting.staleOk) needFresh.push(waiting);
        else quiet.push({ pending: waiting, settle: () => waiting.reject(error), after: steps.length });
        continue;
      }
      const result = outcome.result;
      if (outcome.table === table) {
        if (!fresh && !waiting.staleOk) needFresh.push(waiting);
        else quiet.push({ pending: waiting, settle: () => waiting.resolve(result), after: steps.length });
        continue;
      }
      steps.push({ changes: tableChanges(table, outcome.table), table: outcome.table });
      writers.push({ pending: waiting, settle: () => waiting.resolve(result), answer: { value: result } });
      table = outcome.table;
    }
    return { steps, writers, quiet, needFresh };
  }

  /** Tickets whose removal did not land: removed again, decided on a fresh table like anything else. */
  private dropStrays(tickets: string[]): void {
    this.submit(dropWaiters(tickets)).catch(() => undefined);
  }
}

/**
 * A store that holds the table in one object: the batch's last table is written in one
 * compare-and-swap, and every step shares its fate. A failure that is not a clean refusal may
 * hide a write that landed; a fresh read tells.
 */
async function commitWhole(store: LeaseStore, base: Snapshot, steps: readonly CommitStep[]): Promise<CommitResult> {
  const next = steps[steps.length - 1].table;
  const all = (outcome: StepOutcome) => steps.map(() => outcome);
  try {
    return { outcomes: all({ kind: 'written' }), snapshot: await store.write(next, base) };
  } catch (error) {
    if (error instanceof VersionConflictError) return { outcomes: all({ kind: 'conflict' }) };
    if (error instanceof StoreFullError) return { outcomes: all({ kind: 'full' }) };
    let fresh: Snapshot | undefined;
    try {
      fresh = await store.read();
    } catch {
      return { outcomes: all({ kind: 'failed', error, mayHaveLanded: true }) };
    }
    if (holdsChanges(base.table, next, fresh.table)) return { outcomes: all({ kind: 'written' }), snapshot: fresh };
    return { outcomes: all({ kind: 'failed', error, mayHaveLanded: true }), snapshot: fresh };
  }
}

/** Whether `table` holds every one of these records, as they were written. */
function holdsAll(changes: readonly TableChange[], table: LeaseTable): boolean {
  return changes.every((change) => isDeepStrictEqual(table[change.section][change.key], change.value));
}
