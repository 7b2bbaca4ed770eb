// The `lease` commands: create (print exports, write the kubeconfig), delete, extend, list; and
// the acquire step that `run` shares with create.

import { Buffer } from 'node:buffer';
import { resolve } from 'node:path';
import type { LeaseOptions } from './args.ts';
import { ClaimerHttpError, RequestAbortedError, type ClaimerClient, type GrantedLease, type LeaseRequest, type LeaseView } from './client.ts';
import { formatDuration, formatExpiry } from './durations.ts';
import { CliError, EXIT_NO_CLUSTER, EXIT_OK, oneLine } from './errors.ts';
import { decodeKubeconfig, exportLines, leaseVariables, poolTable, writePrivateFile } from './output.ts';
import { Interrupts, signalExitCode, type SignalSource } from './signals.ts';

export interface TextSink {
  write(text: string): unknown;
}

/** Where the CLI writes, and where it hears signals (`process` by default). */
export interface CliIO {
  stdout: TextSink;
  stderr: TextSink;
  signals?: SignalSource;
}

export interface CommandContext {
  client: ClaimerClient;
  io: CliIO;
}

/** How long to wait for POST /lease beyond its own `wait`: the server answers at its end. */
const ACQUIRE_GRACE_SECONDS = 60;

/** A signal arrived before a cluster was granted: nothing is held, exit as the signal says. */
export class InterruptedError extends CliError {
  constructor(signal: NodeJS.Signals) {
    super(`interrupted by ${signal} before a cluster was leased`, signalExitCode(signal));
  }
}

/**
 * POST /lease, saying on stderr that it may take a while when it waits. 409 NoMatchingCluster
 * or AllLeased becomes exit 3; a signal cancels the request (the server then drops the waiter).
 */
export async function acquireLease(context: CommandContext, request: LeaseRequest, interrupts: Interrupts): Promise<GrantedLease> {
  if (request.wait) context.io.stderr.write(`k8s-claimer: waiting up to ${formatDuration(request.wait)} for a cluster...\n`);
  try {
    return await context.client.acquire(request, {
      signal: interrupts.abortSignal(),
      timeoutMs: ((request.wait ?? 0) + ACQUIRE_GRACE_SECONDS) * 1000,
    });
  } catch (error) {
    if (error instanceof RequestAbortedError && interrupts.first) throw new InterruptedError(interrupts.first);
    if (error instanceof ClaimerHttpError && error.status === 409 && (error.reason === 'AllLeased' || error.reason === 'NoMatchingCluster')) {
      const retry = error.retryAfterSeconds !== undefined ? `; one may be free in ${formatDuration(error.retryAfterSeconds)}` : '';
      throw new CliError(`no cluster available: ${error.serverMessage} (${error.reason}${retry})`, EXIT_NO_CLUSTER);
    }
    throw new CliError(`could not lease a cluster: ${messageOf(error)}`);
  }
}

/** Gives a lease back, for the paths where something failed after it was granted. */
export async function releaseQuietly(context: CommandContext, token: string): Promise<void> {
  try {
    await context.client.release(token);
  } catch (error) {
    context.io.stderr.write(`k8s-claimer: could not release the lease, it ends by itself at its expiry: ${messageOf(error)}\n`);
  }
}

export async function leaseCreate(context: CommandContext, options: LeaseOptions): Promise<number> {
  const interrupts = new Interrupts(context.io.signals);
  let granted: GrantedLease;
  try {
    granted = await acquireLease(context, options.request, interrupts);
  } finally {
    interrupts.dispose();
  }
  let kubeconfigPath: string | undefined;
  if (options.kubeconfigFile !== undefined) {
    // Absolute, so that `export KUBECONFIG=...` still points at it after a `cd`.
    kubeconfigPath = resolve(options.kubeconfigFile);
    try {
      await writePrivateFile(kubeconfigPath, decodeKubeconfig(granted));
    } catch (error) {
      // Nobody could use a lease whose kubeconfig was lost: give the cluster back.
      await releaseQuietly(context, granted.token);
      throw error;
    }
  }
  context.io.stdout.write(exportLines(leaseVariables(granted, kubeconfigPath, options.envPrefix)));
  return EXIT_OK;
}

export async function leaseDelete(context: CommandContext, token: string): Promise<number> {
  try {
    await context.client.release(token);
  } catch (error) {
    throw new CliError(`could not release the lease: ${leaseProblem(error)}`);
  }
  context.io.stdout.write('lease released\n');
  return EXIT_OK;
}

/**
 * Prints the new expiry. A fresh kubeconfig (the lease outlived its token) goes to
 * `kubeconfigFile`, or follows the expiry line on stdout; never to stderr.
 */
export async function leaseExtend(context: CommandContext, token: string, seconds: number, kubeconfigFile?: string): Promise<number> {
  let lease: LeaseView;
  try {
    lease = await context.client.extend(token, seconds);
  } catch (error) {
    throw new CliError(`could not extend the lease: ${leaseProblem(error)}`);
  }
  const expiry = `expires at ${lease.expires_at ?? 'an unknown time'}${lease.seconds_left !== undefined ? ` (${formatExpiry(lease.seconds_left)})` : ''}`;
  const kubeconfig = lease.kubeconfig ? Buffer.from(lease.kubeconfig, 'base64') : undefined;
  if (kubeconfig && kubeconfigFile !== undefined) {
    const path = resolve(kubeconfigFile);
    try {
      await writePrivateFile(path, kubeconfig);
    } catch (error) {
      throw new CliError(`the lease was extended (${expiry}), but its fresh token is lost: ${messageOf(error)}`);
    }
    context.io.stderr.write(`k8s-claimer: the lease outlived its token: wrote a fresh kubeconfig to ${oneLine(path)}\n`);
  }
  context.io.stdout.write(`${expiry}\n`);
  if (kubeconfig && kubeconfigFile === undefined) {
    const yaml = kubeconfig.toString('utf8');
    context.io.stdout.write(yaml.endsWith('\n') ? yaml : `${yaml}\n`);
  }
  return EXIT_OK;
}

export async function leaseList(context: CommandContext): Promise<number> {
  try {
    context.io.stdout.write(poolTable(await context.client.list()));
    return EXIT_OK;
  } catch (error) {
    throw new CliError(`could not list the pool: ${messageOf(error)}`);
  }
}

/** 409 on /lease/{token} always means the same thing; say it plainly. */
function leaseProblem(error: unknown): string {
  if (error instanceof ClaimerHttpError && error.status === 409) return 'no live lease has this token (released or expired)';
  return messageOf(error);
}

export function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
