// `run`'s heartbeat: keeps the lease alive while the command runs, as far as the server allows;
// hands on every fresh kubeconfig the server returns; and says when the command must stop,
// a margin before the lease ends, because it cannot be extended (or extending keeps failing).

import { Buffer } from 'node:buffer';
import { setTimeout as sleep } from 'node:timers/promises';
import { ClaimerHttpError, RequestAbortedError, type ClaimerClient } from './client.ts';
import { formatDuration } from './durations.ts';
import { messageOf, type TextSink } from './lease-commands.ts';

/** Beats come every third of the lease (two can fail before it runs out), but not more than 1/s. */
const MIN_HEARTBEAT_MS = 1000;
/** The command is stopped this long before the lease ends, or a third of a shorter lease. */
const MAX_STOP_MARGIN_MS = 30_000;
/** `max_time_left` shrinks while its answer travels: a few tries to reach the maximum. */
const ATTEMPTS_TO_REACH_MAX = 3;

const AT_MAXIMUM = "it has reached the claimer's MAX_LEASE_SECONDS";
const NOT_CONFIRMED = 'no extension was confirmed in time';
const GONE = 'the claimer has no live lease with its token: released or expired';

/** When the lease ends: as the server wrote it, and as a time on the CLI's own clock. */
export interface Expiry {
  at: string;
  localMs: number;
}

/**
 * The expiry in an answer received at `receivedAt`. The server's clock may run ahead of this
 * one: `seconds_left` (rounded up, so at most a second late) bounds it whatever the skew.
 */
export function expiryOf(answer: { expires_at?: string; seconds_left?: number }, receivedAt: number): Expiry | undefined {
  if (answer.expires_at === undefined) return undefined;
  const byClock = Date.parse(answer.expires_at);
  const bySecondsLeft = answer.seconds_left === undefined ? Number.POSITIVE_INFINITY : receivedAt + answer.seconds_left * 1000;
  const localMs = Math.min(Number.isNaN(byClock) ? Number.POSITIVE_INFINITY : byClock, bySecondsLeft);
  return Number.isFinite(localMs) ? { at: answer.expires_at, localMs } : undefined;
}

/** How long before the lease's end the command is stopped: 30 s, or a third of a shorter lease. */
export function stopMarginMs(leaseSeconds: number): number {
  return Math.min(MAX_STOP_MARGIN_MS, (leaseSeconds * 1000) / 3);
}

/** Why the command must stop; no `endsAt` when the lease has already ended. */
export interface LeaseEnding {
  endsAt?: string;
  reason: string;
}

export function describeEnding(ending: LeaseEnding): string {
  return ending.endsAt === undefined
    ? `the lease has already ended (${ending.reason})`
    : `the lease ends at ${ending.endsAt} and cannot be extended (${ending.reason})`;
}

export interface HeartbeatOptions {
  client: ClaimerClient;
  token: string;
  /** The lease's length: each beat asks for it from now. */
  seconds: number;
  /** When the lease ends, as granted. */
  expiry: Expiry;
  stderr: TextSink;
  /** A fresh kubeconfig (YAML): the lease outlived its token, and the server minted another. */
  onKubeconfig(kubeconfig: Buffer): Promise<void>;
  /** The command must stop now. Called at most once, and never after `stop()`. */
  onEnding(ending: LeaseEnding): void;
}

export interface Heartbeat {
  /** The latest expiry the server confirmed. */
  expiresAt(): string;
  stop(): Promise<void>;
}

/**
 * Every third of the lease, it now ends a full length from now. Beyond the server's maximum it
 * is extended as far as it may go, and no more beats follow. A failed beat is reported and
 * retried at the next one. Whatever happens, a margin before the last confirmed expiry that no
 * beat has moved since, `onEnding` says the command must stop; and at once when the lease is gone.
 */
export function startHeartbeat(options: HeartbeatOptions): Heartbeat {
  const { client, token, seconds, stderr } = options;
  const intervalMs = Math.max(MIN_HEARTBEAT_MS, Math.floor((seconds * 1000) / 3));
  const marginMs = stopMarginMs(seconds);
  const stopper = new AbortController();
  let expiry = options.expiry;
  /** What the reason will be if the deadline passes now. */
  let risk = NOT_CONFIRMED;
  let deadline: NodeJS.Timeout | undefined;

  const end = (ending: LeaseEnding) => {
    if (stopper.signal.aborted) return;
    stopper.abort();
    clearTimeout(deadline);
    options.onEnding(ending);
  };
  const armDeadline = () => {
    if (stopper.signal.aborted) return;
    clearTimeout(deadline);
    deadline = setTimeout(() => end({ endsAt: expiry.at, reason: risk }), Math.max(0, expiry.localMs - marginMs - Date.now()));
  };

  /** The lease now ends `asked` seconds from now: the deadline moves, a fresh kubeconfig is handed on. */
  const extendBy = async (asked: number): Promise<void> => {
    const lease = await client.extend(token, asked, { signal: stopper.signal, timeoutMs: Math.max(intervalMs, 2000) });
    expiry = expiryOf(lease, Date.now()) ?? expiry;
    risk = NOT_CONFIRMED;
    armDeadline();
    if (lease.kubeconfig) {
      try {
        await options.onKubeconfig(Buffer.from(lease.kubeconfig, 'base64'));
      } catch (error) {
        stderr.write(`k8s-claimer: the lease outlived its token, and the fresh kubeconfig could not be passed on: ${messageOf(error)}\n`);
      }
    }
  };

  /** One beat: a full length from now, or as far as the server allows. True when that was the maximum. */
  const beat = async (): Promise<boolean> => {
    let asked = seconds;
    for (let attempt = 1; ; attempt++) {
      try {
        await extendBy(asked);
        return asked < seconds;
      } catch (error) {
        const left = error instanceof ClaimerHttpError && error.status === 400 ? error.maxTimeLeft : undefined;
        if (left === undefined || left <= 0 || attempt >= ATTEMPTS_TO_REACH_MAX) throw error;
        asked = Math.min(left, seconds);
      }
    }
  };

  const loop = (async () => {
    armDeadline();
    for (;;) {
      try {
        await sleep(intervalMs, undefined, { signal: stopper.signal });
      } catch {
        return;
      }
      try {
        if (await beat()) {
          // The deadline stays armed: it stops the command before this last expiry.
          risk = AT_MAXIMUM;
          return;
        }
      } catch (error) {
        if (error instanceof RequestAbortedError) return;
        if (error instanceof ClaimerHttpError && error.status === 409) {
          end({ reason: GONE });
          return;
        }
        if (error instanceof ClaimerHttpError && error.status === 400) {
          risk = error.maxTimeLeft !== undefined ? AT_MAXIMUM : error.serverMessage;
          return;
        }
        risk = `the last extension failed: ${messageOf(error)}`;
        stderr.write(`k8s-claimer: could not extend the lease, trying again in ${formatDuration(intervalMs / 1000)}: ${messageOf(error)}\n`);
      }
    }
  })();

  return {
    expiresAt: () => expiry.at,
    async stop() {
      stopper.abort();
      clearTimeout(deadline);
      await loop;
    },
  };
}
