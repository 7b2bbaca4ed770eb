// Child processes that take commands on stdin and answer with JSON lines on stdout, for tests
// that need several claimers at once. Both ends live here: `commands`/`answer` in the child,
// `startLineProcess` in the test. A child may run as pid 1 of a PID namespace of its own, as a
// claimer does in a container.

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';

/** Whether `unshare` can make PID namespaces here (it needs root or user namespaces). */
export const pidNamespacesWork =
  spawnSync('unshare', ['--pid', '--fork', '--mount-proc', 'true'], { stdio: 'ignore' }).status === 0;

export type Answer = Record<string, unknown> & { event: string };

/** In the child: one line on stdout per answer. */
export function answer(event: Answer): void {
  process.stdout.write(`${JSON.stringify(event)}\n`);
}

/** In the child: the commands, a word and an optional JSON argument per line, until stdin closes. */
export async function* commands(): AsyncGenerator<{ name: string; argument: unknown }> {
  for await (const line of createInterface({ input: process.stdin })) {
    const [name, ...rest] = line.trim().split(' ');
    if (name) yield { name, argument: rest.length > 0 ? JSON.parse(rest.join(' ')) : undefined };
  }
}

export interface LineProcess {
  child: ChildProcess;
  send(name: string, argument?: unknown): void;
  /** The next answer, whatever it is; rejects if the child exits first. */
  next(): Promise<Answer>;
  /** The answers that arrived and were not taken by `next` yet. */
  received(): Answer[];
  /** Closes stdin (the child finishes and exits) and waits for the exit. */
  stop(): Promise<void>;
}

export function startLineProcess(script: string, args: string[], options: { ownPidNamespace?: boolean } = {}): LineProcess {
  const node = [process.execPath, '--import', 'tsx', script, ...args];
  // --kill-child: the child dies with unshare, so a test that kills unshare leaves nothing behind.
  const [command, ...commandArgs] = options.ownPidNamespace ? ['unshare', '--pid', '--fork', '--mount-proc', '--kill-child', ...node] : node;
  const child = spawn(command, commandArgs, { stdio: ['pipe', 'pipe', 'inherit'] });
  const answers: Answer[] = [];
  const waiting: Array<{ resolve(answer: Answer): void; reject(error: Error): void }> = [];
  let exited = false;
  createInterface({ input: child.stdout! }).on('line', (line) => {
    const parsed = JSON.parse(line) as Answer;
    const waiter = waiting.shift();
    if (waiter) waiter.resolve(parsed);
    else answers.push(parsed);
  });
  // 'close', not 'exit': every line the child wrote has been read by then.
  const exit = new Promise<void>((resolve) =>
    child.once('close', (code, signal) => {
      exited = true;
      for (const waiter of waiting.splice(0)) waiter.reject(new Error(`${script} exited (${code ?? signal}) before answering`));
      resolve();
    }),
  );
  return {
    child,
    send(name, argument) {
      child.stdin!.write(`${name}${argument === undefined ? '' : ` ${JSON.stringify(argument)}`}\n`);
    },
    next() {
      const ready = answers.shift();
      if (ready) return Promise.resolve(ready);
      if (exited) return Promise.reject(new Error(`${script} has exited`));
      return new Promise((resolve, reject) => waiting.push({ resolve, reject }));
    },
    received() {
      return answers.splice(0);
    },
    async stop() {
      if (!exited) child.stdin!.end();
      await exit;
    },
  };
}
