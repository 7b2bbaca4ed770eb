// The k8s-claimer CLI's core: argv and environment in, output and an exit code out. program.ts
// only wires it to the process, so tests and other tools can call `main` directly.

import process from 'node:process';
import { CREATE_USAGE, DELETE_USAGE, EXTEND_USAGE, LIST_USAGE, RUN_USAGE, parseCommand, type Command } from './args.ts';
import { ClaimerClient } from './client.ts';
import { CliError, EXIT_ERROR, EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE, UsageError, oneLine } from './errors.ts';
import { InterruptedError, leaseCreate, leaseDelete, leaseExtend, leaseList, messageOf, type CliIO } from './lease-commands.ts';
import { run } from './run.ts';
import { sharedToken } from './shared-token.ts';

export type { CliIO, TextSink } from './lease-commands.ts';
export type { SignalSource } from './signals.ts';
export { EXIT_ERROR, EXIT_NO_CLUSTER, EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE } from './errors.ts';

/**
 * Runs one CLI invocation. `argv` excludes `node` and the script; `env` supplies
 * K8S_CLAIMER_URL and AUTH_TOKEN or AUTH_TOKEN_FILE (the rest is passed on to `run`'s command).
 * `io.signals` defaults to `process`, so that `run` can release its lease on SIGINT/SIGTERM.
 */
export async function main(argv: string[], env: Record<string, string | undefined>, io: CliIO): Promise<number> {
  const fullIo: CliIO = { ...io, signals: io.signals ?? process };
  let command: Command | undefined;
  try {
    command = parseCommand(argv);
    if (command.kind === 'help') {
      fullIo.stdout.write(`${command.text}\n`);
      return EXIT_OK;
    }
    const context = { client: await connect(command, env), io: fullIo };
    switch (command.kind) {
      case 'lease-create':
        return await leaseCreate(context, command.lease);
      case 'lease-delete':
        return await leaseDelete(context, command.token);
      case 'lease-extend':
        return await leaseExtend(context, command.token, command.seconds, command.kubeconfigFile);
      case 'lease-list':
        return await leaseList(context);
      case 'run':
        return await run(context, command.lease, command.command, env);
    }
  } catch (error) {
    report(error, fullIo);
    return exitCodeOf(error, command?.kind === 'run' || (error instanceof UsageError && error.usage === RUN_USAGE));
  }
}

/** One line on stderr, plus the usage for a usage error. */
function report(error: unknown, io: CliIO): void {
  if (error instanceof UsageError) io.stderr.write(`k8s-claimer: ${error.message}\n\n${error.usage}\n`);
  else if (error instanceof CliError) io.stderr.write(`k8s-claimer: ${error.message}\n`);
  else io.stderr.write(`k8s-claimer: ${oneLine(messageOf(error))}\n`);
}

/**
 * `run` leaves every code but 125 to its command, as `docker run` does: each failure of its
 * own, a usage error too, is 125. A signal that came before any cluster was granted stays 128+n.
 */
function exitCodeOf(error: unknown, failedRun: boolean): number {
  if (error instanceof InterruptedError) return error.exitCode;
  if (failedRun) return EXIT_RUN_FAILED;
  if (error instanceof UsageError) return EXIT_USAGE;
  if (error instanceof CliError) return error.exitCode;
  return EXIT_ERROR;
}

type ServerCommand = Exclude<Command, { kind: 'help' }>;

const USAGE_OF: Record<ServerCommand['kind'], string> = {
  'lease-create': CREATE_USAGE,
  'lease-delete': DELETE_USAGE,
  'lease-extend': EXTEND_USAGE,
  'lease-list': LIST_USAGE,
  run: RUN_USAGE,
};

/** The server from --server or K8S_CLAIMER_URL, the token from AUTH_TOKEN or AUTH_TOKEN_FILE; both required. */
async function connect(command: ServerCommand, env: Record<string, string | undefined>): Promise<ClaimerClient> {
  const usage = USAGE_OF[command.kind];
  const server = command.server || env.K8S_CLAIMER_URL || undefined;
  if (server === undefined) throw new UsageError('no server: pass --server URL or set K8S_CLAIMER_URL', usage);
  let url: URL;
  try {
    url = new URL(server);
  } catch {
    // Not echoed: a URL someone typed may carry a password.
    throw new UsageError('the server is not a URL (expected e.g. http://claimer.example:8080)', usage);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new UsageError('the server URL must start with http:// or https://', usage);
  if (url.username || url.password) throw new UsageError('the server URL must not contain a user name or password (AUTH_TOKEN is the credential)', usage);

  return new ClaimerClient(url, await sharedToken(env, usage));
}
