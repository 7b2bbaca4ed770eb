// Termination signals for the CLI: while a lease is held, SIGINT/SIGTERM/SIGHUP must not kill
// the process before it has released the lease, so they are caught and handed to listeners.

import { constants } from 'node:os';

/** Where signals come from: `process` in the real CLI, an EventEmitter in a test. */
export interface SignalSource {
  on(signal: NodeJS.Signals, listener: (signal: NodeJS.Signals) => void): unknown;
  off(signal: NodeJS.Signals, listener: (signal: NodeJS.Signals) => void): unknown;
}

const CAUGHT_SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

/** The shell convention for "ended by a signal": 128 + its number (SIGTERM -> 143). */
export function signalExitCode(signal: NodeJS.Signals): number {
  return 128 + (constants.signals[signal] ?? 0);
}

/** Catches the termination signals until disposed; remembers the first one received. */
export class Interrupts {
  first?: NodeJS.Signals;
  private readonly listeners = new Set<(signal: NodeJS.Signals) => void>();
  private readonly handle = (signal: NodeJS.Signals) => {
    this.first ??= signal;
    for (const listener of [...this.listeners]) listener(signal);
  };

  constructor(private readonly source: SignalSource | undefined) {
    for (const signal of CAUGHT_SIGNALS) source?.on(signal, this.handle);
  }

  /** Calls `listener` on every signal from now on; returns the way to stop. */
  onSignal(listener: (signal: NodeJS.Signals) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** An AbortSignal that aborts on the first signal (already aborted if one came). */
  abortSignal(): AbortSignal {
    const controller = new AbortController();
    if (this.first) controller.abort();
    else this.onSignal(() => controller.abort());
    return controller.signal;
  }

  dispose(): void {
    for (const signal of CAUGHT_SIGNALS) this.source?.off(signal, this.handle);
    this.listeners.clear();
  }
}
