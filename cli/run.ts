// `k8s-claimer run`: lease a cluster, run a command with it while a heartbeat keeps the lease
// alive, stop the command before a lease that cannot be extended ends, and release the lease
// however the command ends (exit, crash, signal, Ctrl-C).

import { spawn } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import process from 'node:process';
import { setTimeout as sleep } from 'node:timers/promises';
import type { LeaseOptions } from './args.ts';
import { ClaimerHttpError, type GrantedLease } from './client.ts';
import { formatDuration } from './durations.ts';
import { EXIT_CANNOT_EXECUTE, EXIT_COMMAND_NOT_FOUND, EXIT_LEASE_ENDED, oneLine } from './errors.ts';
import { describeEnding, expiryOf, startHeartbeat, stopMarginMs, type LeaseEnding } from './heartbeat.ts';
import { acquireLease, messageOf, type CommandContext, type TextSink } from './lease-commands.ts';
import { decodeKubeconfig, leaseVariables, writePrivateFile } from './output.ts';
import { Interrupts, signalExitCode } from './signals.ts';

/** How long a command stopped for its lease's end has between SIGTERM and SIGKILL, at most. */
const MAX_STOP_GRACE_MS = 10_000;
/** What a command left running when it ended has this long between SIGTERM and SIGKILL. */
const LEFTOVER_GRACE_MS = 2000;
/** After SIGKILL, how long to wait for the group to be gone. */
const KILLED_WAIT_MS = 1000;
const GROUP_POLL_MS = 50;

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
    context.io.stderr.write(`k8s-claimer: leased ${describeCluster(granted)} until ${granted.expires_at}, extended while the command runs\n`);
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
      const alreadyEnded = outcome.ending !== undefined && outcome.ending.endsAt === undefined;
      await release(context, granted, { grantedAt, expiresAt: outcome.expiresAt, alreadyEnded });
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

/** `pool-1 (static/pool-1)`: the name people know, and the id when the server sends one. */
function describeCluster(granted: GrantedLease): string {
  const name = oneLine(granted.cluster_name, 100);
  return granted.cluster_id && granted.cluster_id !== granted.cluster_name ? `${name} (${oneLine(granted.cluster_id, 200)})` : name;
}

interface RunningCommand {
  /**
   * Its exit code, or 128 + the signal's number when a signal ended it; settles once nothing
   * of its process group is left running.
   */
  exited: Promise<number>;
  /** Sends a signal to the command and to every process in its group. */
  signal(signal: NodeJS.Signals): void;
  /** SIGTERM to the group now; SIGKILL after `graceMs`, or once the command itself has ended. False if it had ended. */
  stop(graceMs: number): boolean;
}

/** Sends a signal to every process of a group; false when none is left. */
function signalGroup(groupId: number, signal: NodeJS.Signals | 0): boolean {
  try {
    process.kill(-groupId, signal);
    return true;
  } catch (error) {
    // EPERM: a member runs as another user (a setuid program): the group is not empty.
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Whether a process of the group still runs. kill() counts zombies too: an orphan that has
 * ended waits for pid 1 to reap it, which in a container can take seconds or never happen, so
 * on Linux /proc tells which members are zombies. Elsewhere kill() is all there is.
 */
async function groupRunning(groupId: number): Promise<boolean> {
  if (!signalGroup(groupId, 0)) return false;
  if (process.platform !== 'linux') return true;
  let pids: string[];
  try {
    pids = (await readdir('/proc')).filter((name) => /^\d+$/.test(name));
  } catch {
    return true;
  }
  for (const pid of pids) {
    let stat: string;
    try {
      stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    } catch {
      continue; // Ended meanwhile.
    }
    // After the command name in parentheses: state, parent, process group.
    const [state, , group] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (Number(group) === groupId && state !== 'Z' && state !== 'X') return true;
  }
  return false;
}

/** Waits up to `ms` for every process of the group to be gone; true when they are. */
async function groupGone(groupId: number, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (await groupRunning(groupId)) {
    if (Date.now() >= deadline) return false;
    await sleep(GROUP_POLL_MS);
  }
  return true;
}

/**
 * Once the command has ended, whatever it left running in its group (a `&` job, a server a test
 * started) gets SIGTERM, then SIGKILL after a short grace, so that nothing uses the cluster
 * once it is released. `atOnce`: the command was already stopped for its lease's end.
 * Processes that left the group (setsid, a daemon's double fork) are out of reach.
 */
async function stopLeftovers(groupId: number, atOnce: boolean, stderr: TextSink): Promise<void> {
  if (!(await groupRunning(groupId))) return;
  if (!atOnce) {
    stderr.write(`k8s-claimer: the command left processes running in its process group: SIGTERM, then SIGKILL after ${formatDuration(LEFTOVER_GRACE_MS / 1000)}\n`);
    signalGroup(groupId, 'SIGTERM');
    if (await groupGone(groupId, LEFTOVER_GRACE_MS)) return;
  }
  signalGroup(groupId, 'SIGKILL');
  await groupGone(groupId, KILLED_WAIT_MS);
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
  const exited = new Promise<number>((resolveExit) => {
    child.once('error', (error: NodeJS.ErrnoException) => {
      // Only a failure to start means there is no child to wait for; a failed kill is not one.
      if (child.pid !== undefined) return;
      const notFound = error.code === 'ENOENT';
      stderr.write(`k8s-claimer: cannot run ${oneLine(file, 100)}: ${notFound ? 'not found' : 'cannot be executed'} (${error.code ?? oneLine(error.message)})\n`);
      resolveExit(notFound ? EXIT_COMMAND_NOT_FOUND : EXIT_CANNOT_EXECUTE);
    });
    child.once('exit', (code, signal) => {
      clearTimeout(killTimer);
      const exitCode = code ?? (signal ? signalExitCode(signal) : 1);
      // The group keeps the leader's pid as its id while any member is left.
      void stopLeftovers(child.pid!, stopping, stderr).then(() => resolveExit(exitCode));
    });
  });
  return {
    exited,
    signal: (signal) => {
      if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) signalGroup(child.pid, signal);
    },
    stop(graceMs) {
      const groupId = child.pid;
      if (groupId === undefined || child.exitCode !== null || child.signalCode !== null) return false;
      if (!stopping) {
        stopping = true;
        signalGroup(groupId, 'SIGTERM');
        killTimer = setTimeout(() => signalGroup(groupId, 'SIGKILL'), graceMs);
      }
      return true;
    },
  };
}

/** Gives the cluster back, and says so in one line either way. */
async function release(
  context: CommandContext,
  granted: GrantedLease,
  lease: { grantedAt: number; expiresAt: string; alreadyEnded: boolean },
): Promise<void> {
  const name = oneLine(granted.cluster_name, 100);
  const ended = `did not release ${name}: its lease had already ended`;
  let message = ended;
  if (!lease.alreadyEnded) {
    try {
      await context.client.release(granted.token);
      message = `released ${name} after ${formatDuration((Date.now() - lease.grantedAt) / 1000)}`;
    } catch (error) {
      if (!(error instanceof ClaimerHttpError && error.status === 409)) {
        message = `could not release ${name}, its lease ends by itself at ${lease.expiresAt}: ${messageOf(error)}`;
      }
    }
  }
  context.io.stderr.write(`k8s-claimer: ${message}\n`);
}
