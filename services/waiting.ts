// Requests that wait for a cluster (`wait` on POST /lease). Each waiter holds a ticket in the
// shared lease table, so that a cluster goes to the oldest waiter that can use it whichever
// replica it waits on; this replica keeps its waiters in arrival order and tries them again,
// in that order, whenever it learns of a new table (its own commits, the store's watch) and
// every few seconds besides. A client that goes away leaves the queue and is given nothing.

import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { ClientGoneError, ShuttingDownError } from './errors.ts';
import { acquire, dropWaiter, renewWaiters, type AcquireRequest, type AcquireResult } from './lease-table.ts';
import type { WritePath } from './write-path.ts';

export type Granted = Extract<AcquireResult, { granted: true }>;

export interface WaitingOptions {
  /** How long a ticket lives without renewal: a dead replica's waiters lapse after this. */
  ticketTtlMs?: number;
  /** How often waiters try again when nothing told them to. */
  pollMs?: number;
}

interface LocalWaiter {
  ticket: string;
  wake(): void;
}

export class Waiting {
  private readonly waiters = new Set<LocalWaiter>();
  readonly ticketTtlMs: number;
  private readonly pollMs: number;
  private timers: ReturnType<typeof setInterval>[] = [];
  private readonly stopListening: () => void;
  private shuttingDown = false;

  constructor(
    private readonly writePath: WritePath,
    private readonly logger: Logger,
    options: WaitingOptions = {},
  ) {
    this.ticketTtlMs = options.ticketTtlMs ?? 30_000;
    this.pollMs = options.pollMs ?? 2_000;
    this.stopListening = writePath.onTable(() => this.wakeAll());
  }

  /** Waiters on this replica now. */
  get depth(): number {
    return this.waiters.size;
  }

  /** Leases a matching cluster as soon as one is free for this request, or fails at the deadline. */
  async acquire(request: Omit<AcquireRequest, 'wait'>, waitSeconds: number, signal?: AbortSignal): Promise<Granted> {
    if (this.shuttingDown) throw new ShuttingDownError();
    const ticket = randomBytes(8).toString('hex');
    const attempt = (final: boolean) =>
      this.writePath.submit(acquire({ ...request, wait: { ticket, ttlMs: this.ticketTtlMs, final } }));
    let deadlinePassed = false;
    // A wake-up that comes while a try is under way is kept for the next wait, never lost.
    let wakeRequested = false;
    let woken: () => void = () => undefined;
    const waiter: LocalWaiter = {
      ticket,
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
    this.add(waiter);
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
        this.logger.warn({ err: dropError }, 'could not remove a waiter ticket; it lapses by itself');
      });
      throw error;
    } finally {
      clearTimeout(deadline);
      signal?.removeEventListener('abort', onAbort);
      this.remove(waiter);
    }
  }

  private add(waiter: LocalWaiter): void {
    this.waiters.add(waiter);
    if (this.timers.length > 0) return;
    const renew = setInterval(() => {
      const tickets = [...this.waiters].map((one) => one.ticket);
      this.writePath.submit(renewWaiters(tickets, this.ticketTtlMs)).catch((error: unknown) => {
        this.logger.warn({ err: error }, 'could not renew waiter tickets');
      });
    }, this.ticketTtlMs / 3);
    const poll = setInterval(() => this.wakeAll(), this.pollMs);
    renew.unref?.();
    poll.unref?.();
    this.timers = [renew, poll];
  }

  private remove(waiter: LocalWaiter): void {
    this.waiters.delete(waiter);
    if (this.waiters.size > 0) return;
    for (const timer of this.timers) clearInterval(timer);
    this.timers = [];
  }

  /** Oldest first: each waiter's next try joins the write path's queue in arrival order. */
  private wakeAll(): void {
    for (const waiter of this.waiters) waiter.wake();
  }

  /** Graceful shutdown: every waiter leaves the queue now with a 503, so the replica can stop. */
  shutdown(): void {
    this.shuttingDown = true;
    this.wakeAll();
  }

  close(): void {
    this.stopListening();
    for (const timer of this.timers) clearInterval(timer);
    this.timers = [];
  }
}
