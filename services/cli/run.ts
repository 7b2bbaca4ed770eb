// `k8s-claimer run`: lease a cluster, run a command with it while a heartbeat keeps the lease
// alive, and release the lease however the command ends (exit, crash, signal, Ctrl-C).

import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { LeaseOptions } from './args.ts';
import { ClaimerHttpError, RequestAbortedError, type ClaimerClient } from './client.ts';
import { formatDuration } from './durations.ts';
import { oneLine } from './errors.ts';
import { acquireLease, messageOf, type CommandContext, type TextSink } from './lease-commands.ts';
import { decodeKubeconfig, leaseVariables, writePrivateFile } from './output.ts';
import { Interrupts, signalExitCode } from './signals.ts';

/** Beats come every third of the lease (two can fail before it runs out), but not more than 1/s. */
const MIN_HEARTBEAT_MS = 1000;
const EXIT_CANNOT_EXECUTE = 126;
const EXIT_COMMAND_NOT_FOUND = 127;

export async function run(
  context: CommandContext,
  options: LeaseOptions,
  command: string[],
  env: Record<string, string | undefined>,
): Promise<number> {
  // Caught from before the request: a Ctrl-C while waiting must cancel the wait, and one after
  // the grant must not kill the CLI before it has released the lease.
  const interrupts = new Interrupts(context.io.signals);
  try {
    const granted = await acquireLease(context, options.request, interrupts);
    const expiry = { at: granted.expires_at };
    let temporaryFolder: string | undefined;
    try {
      let kubeconfigPath: string;
      if (options.kubeconfigFile !== undefined) {
        kubeconfigPath = resolve(options.kubeconfigFile);
      } else {
        // mkdtemp makes a fresh folder of mode 0700 with an unguessable name: nobody can plant or
        // read the file.
        temporaryFolder = await mkdtemp(join(tmpdir(), 'k8s-claimer-'));
        kubeconfigPath = join(temporaryFolder, 'kubeconfig');
      }
      await writePrivateFile(kubeconfigPath, decodeKubeconfig(granted));
      if (interrupts.first) return signalExitCode(interrupts.first);

      const variables = leaseVariables(granted, kubeconfigPath, options.envPrefix);
      // The command gets the cluster, not the claimer: the shared token is not passed on, so test
      // code cannot lease, list or release beyond its own lease.
      const { AUTH_TOKEN: _sharedToken, ...inherited } = env;
      const childEnv = { ...inherited, ...Object.fromEntries(variables), KUBECONFIG: kubeconfigPath };
      const heartbeat = startHeartbeat(context.client, granted.token, options.request.max_time, context.io.stderr, expiry);
      try {
        return await runChild(command, childEnv, interrupts, context.io.stderr);
      } finally {
        await heartbeat.stop();
      }
    } finally {
      await release(context, granted.token, expiry.at);
      if (temporaryFolder !== undefined) await rm(temporaryFolder, { recursive: true, force: true });
    }
  } finally {
    interrupts.dispose();
  }
}

/**
 * Runs the command with the terminal's stdio and returns its exit code, or 128 + the signal's
 * number when a signal ended it. Signals the CLI gets are passed on; the CLI waits for the
 * command to end rather than leaving it running on a released cluster.
 */
function runChild(command: string[], env: Record<string, string | undefined>, interrupts: Interrupts, stderr: TextSink): Promise<number> {
  const [file = '', ...args] = command;
  return new Promise((resolveExit) => {
    const child = spawn(file, args, { stdio: 'inherit', env });
    const stopForwarding = interrupts.onSignal((signal) => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    });
    child.once('error', (error: NodeJS.ErrnoException) => {
      // Only a failure to start means there is no child to wait for; a failed kill is not one.
      if (child.pid !== undefined) return;
      stopForwarding();
      stderr.write(`k8s-claimer: cannot run ${oneLine(file, 100)}: ${error.code ?? oneLine(error.message)}\n`);
      resolveExit(error.code === 'ENOENT' ? EXIT_COMMAND_NOT_FOUND : EXIT_CANNOT_EXECUTE);
    });
    child.once('exit', (code, signal) => {
      stopForwarding();
      resolveExit(code ?? (signal ? signalExitCode(signal) : 1));
    });
  });
}

/**
 * Keeps the lease alive: every third of its length, it now ends a full length from now. A failed
 * beat is reported and retried at the next one; it never stops the command. When the server
 * says the lease cannot be extended (ended, or at its longest), beating stops.
 */
function startHeartbeat(client: ClaimerClient, token: string, seconds: number, stderr: TextSink, expiry: { at: string }) {
  const intervalMs = Math.max(MIN_HEARTBEAT_MS, Math.floor((seconds * 1000) / 3));
  const stopper = new AbortController();
  const loop = (async () => {
    for (;;) {
      try {
        await sleep(intervalMs, undefined, { signal: stopper.signal });
      } catch {
        return;
      }
      try {
        // A beat that takes longer than a beat is as good as failed: the next one tries again.
        const lease = await client.extend(token, seconds, { signal: stopper.signal, timeoutMs: Math.max(intervalMs, 2000) });
        if (lease.expires_at) expiry.at = lease.expires_at;
      } catch (error) {
        if (error instanceof RequestAbortedError) return;
        if (error instanceof ClaimerHttpError && (error.status === 400 || error.status === 409)) {
          const why = error.status === 409 ? 'the lease has already ended' : error.serverMessage;
          stderr.write(`k8s-claimer: the lease cannot be extended any more (${why}); it ends at ${expiry.at}\n`);
          return;
        }
        stderr.write(`k8s-claimer: could not extend the lease, trying again in ${formatDuration(intervalMs / 1000)}: ${messageOf(error)}\n`);
      }
    }
  })();
  return {
    async stop(): Promise<void> {
      stopper.abort();
      await loop;
    },
  };
}

async function release(context: CommandContext, token: string, expiresAt: string): Promise<void> {
  try {
    await context.client.release(token);
  } catch (error) {
    const message =
      error instanceof ClaimerHttpError && error.status === 409
        ? 'the lease had already ended'
        : `could not release the lease, it ends by itself at ${expiresAt}: ${messageOf(error)}`;
    context.io.stderr.write(`k8s-claimer: ${message}\n`);
  }
}
