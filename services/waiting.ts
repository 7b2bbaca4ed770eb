// Requests that wait for a cluster (`wait` on POST /lease). Each waiter holds a ticket in the
// shared lease table, so that a cluster goes to the oldest waiter that can use it whichever
// replica it waits on. Whenever this replica learns of a new table (its own commits, the
// store's watch) it works out the queue once and wakes only the waiters that now get a
// cluster (or can never get one); the others sleep. One heartbeat per replica keeps all its
// tickets alive. A client that goes away leaves the queue and is given nothing.

import { createHash, randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { ClientGoneError, ShuttingDownError } from './errors.ts';
import { acquire, dropWaiter, forgetReplica, heartbeat, queueOf, type AcquireRequest, type AcquireResult, type LeaseTable } from './lease-table.ts';
import type { WritePath } from './write-path.ts';

export type Granted = Extract<AcquireResult, { granted: true }>;

export interface WaitingOptions {
  /** How long the replica's heartbeat holds without renewal: a dead replica's tickets lapse after this. */
  ticketTtlMs?: number;
  /** How often waiters are looked at when nothing told this replica of a change. */
  pollMs?: number;
  /** This replica's name (its tickets carry a digest of it, so a restart finds them). */
  replicaName?: string;
  /** Live tickets allowed per principal and in all, across replicas. */
  caps?: { perPrincipal: number; total: number };
}

export const DEFAULT_WAIT_CAPS = { perPrincipal: 50, total: 200 };

interface LocalWaiter {
  wake(): void;
}

/** A short, stable name for a replica or a principal in the shared table. */
function digestOf(kind: string, name: string, length: number): string {
  return createHash('sha256').update(`${kind}:${name}`).digest('hex').slice(0, length);
}

export function principalDigest(subject: string | undefined): string {
  return digestOf('principal', subject ?? '', 32);
}

export class Waiting {
  /** Local waiters by ticket, in arrival order. */
  private readonly waiters = new Map<string, LocalWaiter>();
  readonly ticketTtlMs: number;
  private readonly pollMs: number;
  private readonly caps: { perPrincipal: number; total: number };
  /** This replica's digest in the tickets it writes. */
  readonly replica: string;
  private timers: ReturnType<typeof setInterval>[] = [];
  private readonly stopListening: () => void;
  private shuttingDown = false;
  private looking = false;
  private lookAgain?: LeaseTable | 'cached';

  constructor(
    private readonly writePath: WritePath,
    private readonly logger: Logger,
    options: WaitingOptions = {},
  ) {
    this.ticketTtlMs = options.ticketTtlMs ?? 30_000;
    this.pollMs = options.pollMs ?? 2_000;
    this.caps = options.caps ?? DEFAULT_WAIT_CAPS;
    this.replica = digestOf('replica', options.replicaName ?? randomBytes(8).toString('hex'), 16);
    this.stopListening = writePath.onTable((table) => this.look(table));
  }

  /** Waiters on this replica now. */
  get depth(): number {
    return this.waiters.size;
  }

  /** At start-up: tickets this replica left behind when it stopped refuse nobody a cluster. */
  async start(): Promise<void> {
    try {
      const dropped = await this.writePath.submit(forgetReplica(this.replica));
      if (dropped > 0) this.logger.info({ tickets: dropped }, 'dropped the waiter tickets this replica held before it restarted');
    } catch (error) {
      this.logger.warn({ err: error }, 'could not drop the tickets of this replica\'s earlier run; they lapse by themselves');
    }
  }

  /** Leases a matching cluster as soon as one is free for this request, or fails at the deadline. */
  async acquire(request: Omit<AcquireRequest, 'wait'>, waitSeconds: number, signal?: AbortSignal, principal?: string): Promise<Granted> {
    if (this.shuttingDown) throw new ShuttingDownError();
    const ticket = randomBytes(8).toString('hex');
    const wait = { ticket, replica: this.replica, ttlMs: this.ticketTtlMs, principal: principalDigest(principal), caps: this.caps };
    const attempt = (final: boolean) => this.writePath.submit(acquire({ ...request, wait: { ...wait, final } }));
    let deadlinePassed = false;
    // A wake-up that comes while a try is under way is kept for the next wait, never lost.
    let wakeRequested = false;
    let woken: () => void = () => undefined;
    const waiter: LocalWaiter = {
      wake: () => {
        wakeRequested = true;
        woken();
      },
    };
    const deadline = setTimeout(() => {
      deadlinePassed = true;
      woken();
    }, waitSeconds * 1000);
    const onAbort = () => woken();
    signal?.addEventListener('abort', onAbort);
    this.add(ticket, waiter);
    try {
      let outcome = await attempt(false);
      while (!outcome.granted) {
        await new Promise<void>((resolve) => {
          woken = resolve;
          if (wakeRequested || deadlinePassed || signal?.aborted) resolve();
        });
        wakeRequested = false;
        if (signal?.aborted) throw new ClientGoneError('the client went away while waiting');
        if (this.shuttingDown) throw new ShuttingDownError();
        outcome = await attempt(deadlinePassed);
      }
      return outcome;
    } catch (error) {
      // Leave the queue for good: gone, timed out, or nothing in the pool matches any more.
      await this.writePath.submit(dropWaiter(ticket)).catch((dropError: unknown) => {
        this.logger.warn({ err: dropError }, 'could not remove a waiter ticket; the next heartbeat removes it');
      });
      throw error;
    } finally {
      clearTimeout(deadline);
      signal?.removeEventListener('abort', onAbort);
      this.remove(ticket);
    }
  }

  private add(ticket: string, waiter: LocalWaiter): void {
    this.waiters.set(ticket, waiter);
    if (this.timers.length > 0) return;
    const renew = setInterval(() => {
      this.writePath.submit(heartbeat(this.replica, this.ticketTtlMs, new Set(this.waiters.keys()))).catch((error: unknown) => {
        this.logger.warn({ err: error }, 'could not renew this replica\'s waiter heartbeat');
      });
    }, this.ticketTtlMs / 3);
    // Time alone changes the queue (a lease runs out, a dead replica's tickets lapse): look again now and then.
    const poll = setInterval(() => this.look('cached'), this.pollMs);
    renew.unref?.();
    poll.unref?.();
    this.timers = [renew, poll];
  }

  private remove(ticket: string): void {
    this.waiters.delete(ticket);
    if (this.waiters.size > 0) return;
    for (const timer of this.timers) clearInterval(timer);
    this.timers = [];
  }

  /** Works out the queue of a table once, and wakes the waiters it gives a cluster; one look at a time. */
  private look(table: LeaseTable | 'cached'): void {
    if (this.waiters.size === 0) return;
    if (this.looking) {
      this.lookAgain = table;
      return;
    }
    this.looking = true;
    void this.wakeDue(table).finally(() => {
      this.looking = false;
      const again = this.lookAgain;
      this.lookAgain = undefined;
      if (again) this.look(again);
    });
  }

  private async wakeDue(source: LeaseTable | 'cached'): Promise<void> {
    let view: { table: LeaseTable; context: Awaited<ReturnType<WritePath['context']>> } | undefined;
    try {
      view = source === 'cached' ? await this.writePath.cachedView() : { table: source, context: await this.writePath.context() };
    } catch (error) {
      this.logger.debug({ err: error }, 'could not look at the waiters\' queue');
    }
    if (!view) {
      for (const waiter of this.waiters.values()) waiter.wake();
      return;
    }
    const queue = queueOf(view.table, view.context);
    for (const [ticket, waiter] of this.waiters) {
      // Its cluster is free, it can never get one, or its ticket is not (or no longer) queued.
      if (queue.assigned.has(ticket) || queue.hopeless.has(ticket) || !(ticket in view.table.waiters)) waiter.wake();
    }
  }

  /** Graceful shutdown: every waiter leaves the queue now with a 503, so the replica can stop. */
  shutdown(): void {
    this.shuttingDown = true;
    for (const waiter of this.waiters.values()) waiter.wake();
  }

  close(): void {
    this.stopListening();
    for (const timer of this.timers) clearInterval(timer);
    this.timers = [];
  }
}
