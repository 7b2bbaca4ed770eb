// `k8s-claimer run`: lease a cluster, run a command with it while a heartbeat keeps the lease
// alive, stop the command before a lease that cannot be extended ends, and release the lease
// however the command ends (exit, crash, signal, Ctrl-C).

import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import process from 'node:process';
import type { LeaseOptions } from './args.ts';
import { ClaimerHttpError, type GrantedLease } from './client.ts';
import { EXIT_LEASE_ENDED, oneLine } from './errors.ts';
import { describeEnding, expiryOf, startHeartbeat, stopMarginMs, type LeaseEnding } from './heartbeat.ts';
import { acquireLease, messageOf, type CommandContext, type TextSink } from './lease-commands.ts';
import { decodeKubeconfig, leaseVariables, writePrivateFile } from './output.ts';
import { Interrupts, signalExitCode } from './signals.ts';

const EXIT_CANNOT_EXECUTE = 126;
const EXIT_COMMAND_NOT_FOUND = 127;
/** How long a command stopped for its lease's end has between SIGTERM and SIGKILL, at most. */
const MAX_STOP_GRACE_MS = 10_000;

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
    const grantedAt = Date.now();
    const outcome: { expiresAt: string; ending?: LeaseEnding } = { expiresAt: granted.expires_at };
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

      const running = startCommand(command, commandEnvironment(env, granted, kubeconfigPath, options.envPrefix), context.io.stderr);
      const stopForwarding = interrupts.onSignal((signal) => running.signal(signal));
      const seconds = options.request.max_time;
      const heartbeat = startHeartbeat({
        client: context.client,
        token: granted.token,
        seconds,
        expiry: expiryOf(granted, grantedAt) ?? { at: granted.expires_at, localMs: grantedAt + seconds * 1000 },
        stderr: context.io.stderr,
        // Replaced whole, so the command's next kubectl call reads the fresh token.
        onKubeconfig: (kubeconfig) => writePrivateFile(kubeconfigPath, kubeconfig),
        onEnding: (ending) => {
          // A command that has just ended by itself keeps its own exit code.
          if (running.stop(Math.min(MAX_STOP_GRACE_MS, stopMarginMs(seconds) / 2))) outcome.ending = ending;
        },
      });
      let code: number;
      try {
        code = await running.exited;
      } finally {
        stopForwarding();
        await heartbeat.stop();
        outcome.expiresAt = heartbeat.expiresAt();
      }
      if (outcome.ending === undefined) return code;
      context.io.stderr.write(`k8s-claimer: ${describeEnding(outcome.ending)}; stopped the command\n`);
      return EXIT_LEASE_ENDED;
    } finally {
      // A lease that has already ended has nothing to release.
      const gone = outcome.ending !== undefined && outcome.ending.endsAt === undefined;
      if (!gone) await release(context, granted.token, outcome.expiresAt);
      if (temporaryFolder !== undefined) await rm(temporaryFolder, { recursive: true, force: true });
    }
  } finally {
    interrupts.dispose();
  }
}

/**
 * The command gets the cluster, not the claimer: the shared token (and where it is kept) is not
 * passed on. A command of the same user can still read the CLI's initial environment
 * (/proc/<ppid>/environ), which only AUTH_TOKEN_FILE keeps the token out of.
 */
function commandEnvironment(env: Record<string, string | undefined>, granted: GrantedLease, kubeconfigPath: string, prefix?: string) {
  const { AUTH_TOKEN: _sharedToken, AUTH_TOKEN_FILE: _sharedTokenFile, ...inherited } = env;
  return { ...inherited, ...Object.fromEntries(leaseVariables(granted, kubeconfigPath, prefix)), KUBECONFIG: kubeconfigPath };
}

interface RunningCommand {
  /** Its exit code, or 128 + the signal's number when a signal ended it. */
  exited: Promise<number>;
  /** Sends a signal to the command and to every process in its group. */
  signal(signal: NodeJS.Signals): void;
  /** SIGTERM to the group now; SIGKILL after `graceMs`, or once the command itself has ended. False if it had ended. */
  stop(graceMs: number): boolean;
}

/**
 * Starts the command with the terminal's stdio, as the leader of a process group (and session)
 * of its own, so that a signal reaches everything it started: a `sh -c` script's children, a
 * test runner's workers.
 */
function startCommand(command: string[], env: Record<string, string | undefined>, stderr: TextSink): RunningCommand {
  const [file = '', ...args] = command;
  const child = spawn(file, args, { stdio: 'inherit', env, detached: true });
  let stopping = false;
  let killTimer: NodeJS.Timeout | undefined;
  const signalGroup = (signal: NodeJS.Signals) => {
    if (child.pid === undefined) return;
    try {
      process.kill(-child.pid, signal);
    } catch {
      // The whole group has ended.
    }
  };
  const exited = new Promise<number>((resolveExit) => {
    child.once('error', (error: NodeJS.ErrnoException) => {
      // Only a failure to start means there is no child to wait for; a failed kill is not one.
      if (child.pid !== undefined) return;
      stderr.write(`k8s-claimer: cannot run ${oneLine(file, 100)}: ${error.code ?? oneLine(error.message)}\n`);
      resolveExit(error.code === 'ENOENT' ? EXIT_COMMAND_NOT_FOUND : EXIT_CANNOT_EXECUTE);
    });
    child.once('exit', (code, signal) => {
      clearTimeout(killTimer);
      // Stopped for the lease's end: what the command left behind must not outlive it either.
      if (stopping) signalGroup('SIGKILL');
      resolveExit(code ?? (signal ? signalExitCode(signal) : 1));
    });
  });
  return {
    exited,
    signal: (signal) => {
      if (child.exitCode === null && child.signalCode === null) signalGroup(signal);
    },
    stop(graceMs) {
      if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return false;
      if (!stopping) {
        stopping = true;
        signalGroup('SIGTERM');
        killTimer = setTimeout(() => signalGroup('SIGKILL'), graceMs);
      }
      return true;
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
