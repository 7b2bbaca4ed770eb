// Command-line parsing for the CLI: usage texts, node:util parseArgs per command, and the
// checks (durations, labels, prefixes, tokens) that turn flags into a typed command.

import { parseArgs, type ParseArgsConfig } from 'node:util';
import type { LeaseRequest } from './client.ts';
import { parseDuration } from './durations.ts';
import { UsageError, oneLine } from './errors.ts';

/** Options shared by `lease create` and `run`: what to ask for, and how to hand it over. */
export interface LeaseOptions {
  request: LeaseRequest;
  kubeconfigFile?: string;
  envPrefix?: string;
}

export type Command =
  | { kind: 'help'; text: string }
  | { kind: 'lease-create'; server?: string; lease: LeaseOptions }
  | { kind: 'lease-delete'; server?: string; token: string }
  | { kind: 'lease-extend'; server?: string; token: string; seconds: number; kubeconfigFile?: string }
  | { kind: 'lease-list'; server?: string }
  | { kind: 'run'; server?: string; lease: LeaseOptions; command: string[] };

/** The server's limit on `wait` (README: 0 to 3600): refusing more here gives a clearer message. */
const MAX_WAIT_SECONDS = 3600;
const UUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const ENV_NAME_PATTERN = /^[A-Za-z_][A-Za-z0-9_]*$/;

const CONNECTION_HELP = `Connection:
  --server URL           the claimer's URL (default: $K8S_CLAIMER_URL)
  AUTH_TOKEN             environment variable: the claimer's shared token
  AUTH_TOKEN_FILE        or: a file that holds it, readable by its owner only (not both)`;

const DURATION_HELP = 'Durations are seconds (90) or units: 30s, 30m, 2h, 1h30m.';

const LEASE_OPTIONS_HELP = `  --duration D           how long the lease lasts (required)
  --wait D               wait up to D (at most 1h) for a matching cluster to become free
  --label KEY=VALUE      the cluster must have this label (repeatable)
  --regex PATTERN        the cluster's name must match this RE2 pattern
  --version PREFIX       the cluster's Kubernetes version must start with PREFIX (e.g. 1.31)
  --note TEXT            shown with the lease, e.g. the CI job's URL
  --gpu                  ask for a cluster with GPUs`;

export const MAIN_USAGE = `Usage: k8s-claimer [--server URL] COMMAND [options]

Leases whole Kubernetes clusters from a k8s-claimer server.

Commands:
  lease create   lease a cluster and print shell exports for it
  lease delete   release a lease
  lease extend   change when a lease ends
  lease list     show every cluster of the pool and who holds it
  run            lease a cluster, run a command with it, then release it

${CONNECTION_HELP}

${DURATION_HELP}
Exit codes: 0 ok, 1 error, 2 usage error, 3 no cluster available; run has its own (see
'k8s-claimer run --help').
Run 'k8s-claimer COMMAND --help' for a command's options.`;

export const LEASE_USAGE = `Usage: k8s-claimer lease create|delete|extend|list [options]

  lease create --duration D [options]   lease a cluster and print shell exports for it
  lease delete TOKEN                    release a lease
  lease extend TOKEN --duration D       the lease now ends D from now
  lease list                            show every cluster of the pool and who holds it

Run 'k8s-claimer lease COMMAND --help' for a command's options.`;

export const CREATE_USAGE = `Usage: k8s-claimer lease create --duration D [options]

Leases a cluster and prints shell exports: eval "$(k8s-claimer lease create --duration 30m)".
Prints IP, TOKEN, CLUSTER_NAME, EXPIRES_AT (and KUBECONFIG with --kubeconfig-file).

Options:
${LEASE_OPTIONS_HELP}
  --kubeconfig-file PATH write the cluster's kubeconfig to PATH (mode 0600)
  --env-prefix P         name the variables P_IP, P_TOKEN, ...

${CONNECTION_HELP}

${DURATION_HELP}
Exit codes: 0 leased, 1 error, 2 usage error, 3 no cluster available.`;

export const DELETE_USAGE = `Usage: k8s-claimer lease delete TOKEN

Releases the lease: its cluster is free at once and TOKEN is dead.
Exit codes: 0 released, 1 error (also when no live lease has TOKEN), 2 usage error.

${CONNECTION_HELP}`;

export const EXTEND_USAGE = `Usage: k8s-claimer lease extend TOKEN --duration D [--kubeconfig-file PATH]

The lease now ends D from now (never later than the server's limit after it began).
Prints the new expiry: 'expires at TIME (in D)'. When the lease outlives its token, the
server mints a fresh one: its kubeconfig follows on stdout (YAML, from the second line on),
or replaces PATH with --kubeconfig-file. Without a fresh token, PATH is left as it is.

Options:
  --kubeconfig-file PATH write a fresh kubeconfig to PATH (mode 0600) instead of stdout

${CONNECTION_HELP}

${DURATION_HELP}`;

export const LIST_USAGE = `Usage: k8s-claimer lease list

Shows every cluster of the pool: NAME, LOCATION, STATE, EXPIRES, NOTE.

${CONNECTION_HELP}`;

export const RUN_USAGE = `Usage: k8s-claimer run --duration D [options] -- COMMAND [ARGS...]

Leases a cluster, runs COMMAND with KUBECONFIG, IP, TOKEN, CLUSTER_NAME and EXPIRES_AT set,
keeps extending the lease while COMMAND runs (KUBECONFIG's file is replaced whenever the
server mints a fresh token), and releases it when COMMAND ends (also on SIGINT, SIGTERM and
SIGHUP, which are passed on to COMMAND's whole process group). COMMAND never outlives the
lease: 30 s before a lease that could not be extended ends (a third of a shorter lease; at
once when it has already ended), COMMAND's process group gets SIGTERM, then SIGKILL after up
to 10 s, and run exits 124.

When COMMAND ends, what it left running in its process group gets SIGTERM, then SIGKILL
after 2 s, before the lease is released. One line on stderr says which cluster was leased,
one that it was released (or why not).

Exit codes (those of docker run, and GNU timeout's 124):
  COMMAND's own code, or 128 + the signal's number if a signal killed it
  124  the lease ended (or could not be extended) first: COMMAND was stopped
  125  k8s-claimer failed, COMMAND did not run: usage error, no server or token, no cluster
       free or matching (also when --wait ran out), the claimer unreachable or refusing
  126  COMMAND cannot be executed
  127  COMMAND was not found
A signal to the CLI before a cluster was granted exits 128 + its number.

Options:
${LEASE_OPTIONS_HELP}
  --kubeconfig-file PATH write the kubeconfig to PATH (default: a private temporary file)
  --env-prefix P         also set P_IP, P_TOKEN, ... instead of IP, TOKEN, ...

${CONNECTION_HELP}

${DURATION_HELP}`;

const SERVER_OPTIONS = {
  server: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const satisfies ParseArgsConfig['options'];

const LEASE_OPTIONS = {
  ...SERVER_OPTIONS,
  duration: { type: 'string' },
  wait: { type: 'string' },
  label: { type: 'string', multiple: true },
  regex: { type: 'string' },
  version: { type: 'string' },
  note: { type: 'string' },
  gpu: { type: 'boolean' },
  'kubeconfig-file': { type: 'string' },
  'env-prefix': { type: 'string' },
} as const satisfies ParseArgsConfig['options'];

/** Parses the whole argument list (without `node` and the script). Throws UsageError. */
export function parseCommand(argv: string[]): Command {
  // Global options may come before the command: `k8s-claimer --server URL lease list`.
  let server: string | undefined;
  let rest = argv;
  while (rest[0]?.startsWith('-')) {
    const [flag = '', ...after] = rest;
    if (flag === '--help' || flag === '-h') return { kind: 'help', text: MAIN_USAGE };
    if (flag === '--server') {
      if (after[0] === undefined) throw new UsageError('--server needs a URL', MAIN_USAGE);
      server = after[0];
      rest = after.slice(1);
    } else if (flag.startsWith('--server=')) {
      server = flag.slice('--server='.length);
      rest = after;
    } else {
      throw new UsageError(`unknown option ${flagName(flag)}`, MAIN_USAGE);
    }
  }
  const [word, ...args] = rest;
  switch (word) {
    case undefined:
      throw new UsageError('no command given', MAIN_USAGE);
    case 'help':
      return { kind: 'help', text: MAIN_USAGE };
    case 'lease':
      return withGlobalServer(parseLeaseCommand(args), server);
    case 'run':
      return withGlobalServer(parseRun(args), server);
    default:
      throw new UsageError(`unknown command '${oneLine(word, 60)}'`, MAIN_USAGE);
  }
}

/** A --server given after the command wins over one given before it. */
function withGlobalServer(command: Command, server: string | undefined): Command {
  if (server === undefined || command.kind === 'help' || command.server !== undefined) return command;
  return { ...command, server };
}

function parseLeaseCommand(argv: string[]): Command {
  const [word, ...args] = argv;
  switch (word) {
    case undefined:
      throw new UsageError('lease needs a command: create, delete, extend or list', LEASE_USAGE);
    case '--help':
    case '-h':
    case 'help':
      return { kind: 'help', text: LEASE_USAGE };
    case 'create': {
      const { values, positionals } = parse(args, LEASE_OPTIONS, CREATE_USAGE);
      if (values.help) return { kind: 'help', text: CREATE_USAGE };
      noPositionals(positionals, CREATE_USAGE);
      return { kind: 'lease-create', server: values.server, lease: leaseOptions(values, CREATE_USAGE) };
    }
    case 'delete': {
      const { values, positionals } = parse(args, SERVER_OPTIONS, DELETE_USAGE);
      if (values.help) return { kind: 'help', text: DELETE_USAGE };
      return { kind: 'lease-delete', server: values.server, token: leaseToken(positionals, DELETE_USAGE) };
    }
    case 'extend': {
      const options = { ...SERVER_OPTIONS, duration: LEASE_OPTIONS.duration, 'kubeconfig-file': LEASE_OPTIONS['kubeconfig-file'] };
      const { values, positionals } = parse(args, options, EXTEND_USAGE);
      if (values.help) return { kind: 'help', text: EXTEND_USAGE };
      const token = leaseToken(positionals, EXTEND_USAGE);
      const kubeconfigFile = kubeconfigFileOf(values, EXTEND_USAGE);
      return {
        kind: 'lease-extend',
        server: values.server,
        token,
        seconds: leaseDuration(values.duration, EXTEND_USAGE),
        ...(kubeconfigFile !== undefined && { kubeconfigFile }),
      };
    }
    case 'list': {
      const { values, positionals } = parse(args, SERVER_OPTIONS, LIST_USAGE);
      if (values.help) return { kind: 'help', text: LIST_USAGE };
      noPositionals(positionals, LIST_USAGE);
      return { kind: 'lease-list', server: values.server };
    }
    default:
      throw new UsageError(`unknown command 'lease ${oneLine(word, 60)}'`, LEASE_USAGE);
  }
}

function parseRun(argv: string[]): Command {
  const { values, tokens } = parse(argv, LEASE_OPTIONS, RUN_USAGE);
  if (values.help) return { kind: 'help', text: RUN_USAGE };
  // Everything after `--` is the command, untouched; anything loose before it is a mistake.
  const terminator = tokens.find((token) => token.kind === 'option-terminator');
  const stray = tokens.find((token) => token.kind === 'positional' && (!terminator || token.index < terminator.index));
  if (stray && stray.kind === 'positional') {
    throw new UsageError(`unexpected argument '${oneLine(stray.value, 60)}' (put the command after --)`, RUN_USAGE);
  }
  const command = terminator ? argv.slice(terminator.index + 1) : [];
  if (command.length === 0) throw new UsageError('run needs a command after --', RUN_USAGE);
  return { kind: 'run', server: values.server, lease: leaseOptions(values, RUN_USAGE), command };
}

function parse<const TOptions extends NonNullable<ParseArgsConfig['options']>>(argv: string[], options: TOptions, usage: string) {
  try {
    return parseArgs({ args: argv, options, strict: true, allowPositionals: true, tokens: true });
  } catch (error) {
    throw new UsageError(parseProblem(error), usage);
  }
}

/** parseArgs' messages are long and advise on quoting; keep the first sentence. */
function parseProblem(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  const code = error instanceof Error && 'code' in error ? error.code : undefined;
  if (code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') {
    const flag = /'([^']+)'/.exec(message)?.[1];
    if (flag) return `unknown option ${flagName(flag)}`;
  }
  return oneLine(message.split('. ')[0] ?? message, 200);
}

/** An option's name without a value someone may have glued to it (`--secret=...`). */
function flagName(flag: string): string {
  return oneLine(flag.split('=')[0] ?? flag, 60);
}

function noPositionals(positionals: string[], usage: string): void {
  if (positionals.length > 0) throw new UsageError(`unexpected argument '${oneLine(positionals[0] ?? '', 60)}'`, usage);
}

function leaseToken(positionals: string[], usage: string): string {
  if (positionals.length === 0) throw new UsageError('missing TOKEN (the lease token that lease create printed)', usage);
  if (positionals.length > 1) throw new UsageError(`unexpected argument '${oneLine(positionals[1] ?? '', 60)}'`, usage);
  const token = positionals[0] ?? '';
  if (!UUID_PATTERN.test(token)) throw new UsageError('TOKEN must be a lease token (a UUID)', usage);
  return token;
}

function duration(text: string | undefined, flag: string, usage: string): number | undefined {
  if (text === undefined) return undefined;
  const seconds = parseDuration(text);
  if (seconds === undefined) {
    throw new UsageError(`${flag}: '${oneLine(text, 40)}' is not a duration (use seconds like 90, or 30s, 30m, 2h, 1h30m)`, usage);
  }
  return seconds;
}

function leaseDuration(text: string | undefined, usage: string): number {
  const seconds = duration(text, '--duration', usage);
  if (seconds === undefined) throw new UsageError('--duration is required', usage);
  if (seconds < 1) throw new UsageError('--duration must be at least 1 second', usage);
  return seconds;
}

interface LeaseFlagValues {
  duration?: string;
  wait?: string;
  label?: string[];
  regex?: string;
  version?: string;
  note?: string;
  gpu?: boolean;
  'kubeconfig-file'?: string;
  'env-prefix'?: string;
}

function leaseOptions(values: LeaseFlagValues, usage: string): LeaseOptions {
  const request: LeaseRequest = { max_time: leaseDuration(values.duration, usage) };
  const wait = duration(values.wait, '--wait', usage);
  if (wait !== undefined) {
    if (wait > MAX_WAIT_SECONDS) throw new UsageError('--wait can be at most 1h', usage);
    request.wait = wait;
  }
  if (values.label && values.label.length > 0) request.labels = labels(values.label, usage);
  if (values.regex !== undefined) request.cluster_regex = values.regex;
  if (values.version !== undefined) request.cluster_version = values.version;
  if (values.note !== undefined) request.note = values.note;
  if (values.gpu) request.gpu = true;

  const envPrefix = values['env-prefix'];
  if (envPrefix !== undefined && !ENV_NAME_PATTERN.test(envPrefix)) {
    throw new UsageError('--env-prefix must be letters, digits and _ (not starting with a digit)', usage);
  }
  const kubeconfigFile = kubeconfigFileOf(values, usage);
  return { request, ...(kubeconfigFile !== undefined && { kubeconfigFile }), ...(envPrefix !== undefined && { envPrefix }) };
}

function kubeconfigFileOf(values: { 'kubeconfig-file'?: string }, usage: string): string | undefined {
  const kubeconfigFile = values['kubeconfig-file'];
  if (kubeconfigFile === '') throw new UsageError('--kubeconfig-file needs a path', usage);
  return kubeconfigFile;
}

function labels(pairs: string[], usage: string): Record<string, string> {
  const result: Record<string, string> = {};
  for (const pair of pairs) {
    const separator = pair.indexOf('=');
    if (separator <= 0) throw new UsageError(`--label '${oneLine(pair, 60)}' must be KEY=VALUE`, usage);
    result[pair.slice(0, separator)] = pair.slice(separator + 1);
  }
  return result;
}
