// GKE cluster operations for managed pools: create, delete and resize a pool's own clusters, and
// follow GKE's long-running operations to their end.
//
// - Each of createCluster, deleteCluster and setNodePoolSize makes one RPC and returns the name of
//   the Operation GKE started (its short id, 'operation-…'); waitForOperation polls GetOperation
//   until the operation is DONE (GKE's documented pattern) and resolves with its outcome:
//   `{ ok: true }`, or `{ ok: false, code, message }` when it ended with an `error` (a create that
//   ran out of stock midway, say). A failed operation is an outcome, not a throw.
// - An RPC that GKE refuses is thrown as a GkeOperationError whose `kind` says what to do:
//   'quota' (RESOURCE_EXHAUSTED), 'busy' (FAILED_PRECONDITION: an operation is already in progress
//   on the cluster, or it is not in a state for this one) and 'unavailable' are worth retrying later
//   with a backoff (`retryable`); 'already-exists', 'not-found', 'invalid', 'denied' and 'other' are
//   not. The gRPC code and GKE's message are kept (`code`, `message`).
// - Retries of the unary calls are google-gax's own (the library's per-method settings: GetOperation,
//   ListOperations and DeleteCluster retry UNAVAILABLE and DEADLINE_EXCEEDED; CreateCluster and
//   SetNodePoolSize are never retried, they are not idempotent). Every call has a deadline
//   (`timeoutMs`, default 30 s) that caps its retries too. A DeleteCluster retried after a lost
//   answer may find its own operation running ('busy'): findOperations finds it.
// - Ownership: createCluster always labels the cluster `MANAGED_LABEL: <pool>`; deleteCluster and
//   setNodePoolSize take the cluster as it was listed and throw NotOwnedError, before any RPC, unless
//   that label names the pool and the cluster is in the location asked for. Nothing else is ever
//   deleted or resized.
// - findOperations lists the operations GKE is still running on a cluster, so that an operation
//   started by a replica that died can be found and followed by another.

import type { ClusterManagerClient, protos } from '@google-cloud/container';
import { setTimeout as sleep } from 'node:timers/promises';

type Operation = protos.google.container.v1.IOperation;
type GkeCluster = protos.google.container.v1.ICluster;

/** The resource label that names the managed pool owning a cluster. */
export const MANAGED_LABEL = 'k8s-claimer-pool';

/** Deadline of one GKE call (its retries included), in ms. */
export const DEFAULT_CALL_TIMEOUT_MS = 30_000;

/** gRPC status codes (google.rpc.Code) this module tells apart. */
const Code = {
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  OUT_OF_RANGE: 11,
  UNAVAILABLE: 14,
  UNAUTHENTICATED: 16,
} as const;

export type GkeErrorKind = 'quota' | 'busy' | 'unavailable' | 'already-exists' | 'not-found' | 'invalid' | 'denied' | 'other';

const KINDS: Record<number, GkeErrorKind> = {
  [Code.RESOURCE_EXHAUSTED]: 'quota',
  [Code.FAILED_PRECONDITION]: 'busy',
  [Code.ABORTED]: 'busy',
  [Code.UNAVAILABLE]: 'unavailable',
  [Code.DEADLINE_EXCEEDED]: 'unavailable',
  [Code.ALREADY_EXISTS]: 'already-exists',
  [Code.NOT_FOUND]: 'not-found',
  [Code.INVALID_ARGUMENT]: 'invalid',
  [Code.OUT_OF_RANGE]: 'invalid',
  [Code.PERMISSION_DENIED]: 'denied',
  [Code.UNAUTHENTICATED]: 'denied',
};

/** A GKE RPC that failed; `kind` is what the caller backs off on. */
export class GkeOperationError extends Error {
  readonly kind: GkeErrorKind;
  constructor(
    readonly code: number,
    message: string,
    readonly rpc: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'GkeOperationError';
    this.kind = KINDS[code] ?? 'other';
  }

  /** Worth trying again later, with a backoff: quota, an operation in progress, GKE unavailable. */
  get retryable(): boolean {
    return this.kind === 'quota' || this.kind === 'busy' || this.kind === 'unavailable';
  }
}

/** A delete or resize refused because the listed cluster does not carry the pool's label. */
export class NotOwnedError extends Error {
  constructor(
    readonly cluster: string,
    readonly pool: string,
    reason: string,
  ) {
    super(`refusing to change cluster ${cluster}: ${reason}`);
    this.name = 'NotOwnedError';
  }
}

/** waitForOperation's timeout passed before the operation was DONE (it may still be running). */
export class OperationWaitTimeout extends Error {
  constructor(readonly operation: string, timeoutMs: number) {
    super(`GKE operation ${operation} was not done after ${timeoutMs} ms`);
    this.name = 'OperationWaitTimeout';
  }
}

export interface GkeScope {
  projectId: string;
  location: string;
}

export interface CallOptions {
  /** Deadline of the call, its gax retries included; default DEFAULT_CALL_TIMEOUT_MS. */
  timeoutMs?: number;
}

/** A cluster as listed: GKE's Cluster message, or the provider's Cluster (`labels`). */
export interface ListedCluster {
  name?: string | null;
  location?: string | null;
  zone?: string | null;
  resourceLabels?: Record<string, string> | null;
  labels?: Record<string, string>;
}

export type OperationOutcome =
  | { ok: true; operation: Operation }
  | { ok: false; code: number; message: string; operation: Operation };

/** GKE's rule for label values (the pool name lands in one). */
const LABEL_VALUE_RE = /^[a-z0-9_-]{1,63}$/;

function parentOf({ projectId, location }: GkeScope): string {
  return `projects/${projectId}/locations/${location}`;
}

async function call<T>(rpc: string, run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (error) {
    const { code, details, message } = error as { code?: unknown; details?: unknown; message?: unknown };
    if (typeof code !== 'number') throw error;
    throw new GkeOperationError(code, typeof details === 'string' && details ? details : String(message ?? ''), rpc, { cause: error });
  }
}

function startedName(rpc: string, operation: Operation): string {
  if (!operation.name) throw new GkeOperationError(Code.UNKNOWN, `GKE answered ${rpc} with no operation name`, rpc);
  return operation.name;
}

/** Throws NotOwnedError unless the listed cluster is in `location` and labelled as `pool`'s. */
export function assertOwnedBy(cluster: ListedCluster, pool: string, location: string): void {
  const name = cluster.name ?? '';
  const labels = cluster.resourceLabels ?? cluster.labels ?? {};
  if (!name) throw new NotOwnedError('(unnamed)', pool, 'the listed cluster has no name');
  if (labels[MANAGED_LABEL] !== pool) {
    throw new NotOwnedError(name, pool, labels[MANAGED_LABEL] ? `it belongs to pool ${labels[MANAGED_LABEL]}` : `it has no ${MANAGED_LABEL} label`);
  }
  const listedIn = cluster.location || cluster.zone || '';
  if (listedIn !== location) throw new NotOwnedError(name, pool, `it was listed in ${listedIn || 'no location'}, not ${location}`);
}

/** Starts creating `cluster`, labelled as `pool`'s; the started operation's name. */
export async function createCluster(
  client: ClusterManagerClient,
  request: GkeScope & { pool: string; cluster: GkeCluster },
  options: CallOptions = {},
): Promise<string> {
  if (!LABEL_VALUE_RE.test(request.pool)) throw new RangeError(`pool name ${JSON.stringify(request.pool)} cannot be a GKE label value`);
  const cluster = { ...request.cluster, resourceLabels: { ...(request.cluster.resourceLabels ?? {}), [MANAGED_LABEL]: request.pool } };
  const [operation] = await call('CreateCluster', () =>
    client.createCluster({ parent: parentOf(request), cluster }, { timeout: options.timeoutMs ?? DEFAULT_CALL_TIMEOUT_MS }),
  );
  return startedName('CreateCluster', operation);
}

/** Starts deleting a cluster of `pool` as it was listed; refuses any other. */
export async function deleteCluster(
  client: ClusterManagerClient,
  request: GkeScope & { pool: string; cluster: ListedCluster },
  options: CallOptions = {},
): Promise<string> {
  assertOwnedBy(request.cluster, request.pool, request.location);
  const name = `${parentOf(request)}/clusters/${request.cluster.name}`;
  const [operation] = await call('DeleteCluster', () => client.deleteCluster({ name }, { timeout: options.timeoutMs ?? DEFAULT_CALL_TIMEOUT_MS }));
  return startedName('DeleteCluster', operation);
}

/** Starts resizing a node pool of a cluster of `pool` as it was listed; refuses any other. */
export async function setNodePoolSize(
  client: ClusterManagerClient,
  request: GkeScope & { pool: string; cluster: ListedCluster; nodePool: string; nodeCount: number },
  options: CallOptions = {},
): Promise<string> {
  assertOwnedBy(request.cluster, request.pool, request.location);
  if (!Number.isInteger(request.nodeCount) || request.nodeCount < 0) throw new RangeError(`node count ${request.nodeCount} is not a whole number of nodes`);
  const name = `${parentOf(request)}/clusters/${request.cluster.name}/nodePools/${request.nodePool}`;
  const [operation] = await call('SetNodePoolSize', () =>
    client.setNodePoolSize({ name, nodeCount: request.nodeCount }, { timeout: options.timeoutMs ?? DEFAULT_CALL_TIMEOUT_MS }),
  );
  return startedName('SetNodePoolSize', operation);
}

export interface WaitOptions extends CallOptions {
  /** Between two GetOperation calls; default 5 s. */
  pollMs?: number;
  /**
   * How long to follow the operation before OperationWaitTimeout; default 30 min. Checked between
   * polls, so a slow last GetOperation may take it up to callTimeoutMs longer.
   */
  timeoutMs?: number;
  /** Deadline of each GetOperation call; default DEFAULT_CALL_TIMEOUT_MS. */
  callTimeoutMs?: number;
  /** Stops following (rejects with the signal's reason); the operation goes on in GKE. */
  signal?: AbortSignal;
}

/** The outcome of a DONE operation: an `error` (or, from older GKE, a statusMessage) is a failure. */
export function outcomeOf(operation: Operation): OperationOutcome {
  const code = Number(operation.error?.code ?? 0);
  if (code !== 0) return { ok: false, code, message: operation.error?.message || operation.statusMessage || '', operation };
  if (operation.statusMessage) return { ok: false, code: Code.UNKNOWN, message: operation.statusMessage, operation };
  return { ok: true, operation };
}

function untilAborted<T>(work: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return work;
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    work.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}

/** Polls GetOperation until the operation is DONE; resolves with its outcome. */
export async function waitForOperation(
  client: ClusterManagerClient,
  request: GkeScope & { operation: string },
  options: WaitOptions = {},
): Promise<OperationOutcome> {
  const { pollMs = 5_000, timeoutMs = 30 * 60_000, callTimeoutMs = DEFAULT_CALL_TIMEOUT_MS, signal } = options;
  const name = `${parentOf(request)}/operations/${request.operation}`;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    signal?.throwIfAborted();
    const [operation] = await untilAborted(call('GetOperation', () => client.getOperation({ name }, { timeout: callTimeoutMs })), signal);
    if (operation.status === 'DONE') return outcomeOf(operation);
    if (Date.now() + pollMs > deadline) throw new OperationWaitTimeout(request.operation, timeoutMs);
    // timers/promises rejects with its own AbortError: rethrow the signal's reason, as the polls do.
    await sleep(pollMs, undefined, { signal }).catch((error: unknown) => {
      throw signal?.aborted ? signal.reason : error;
    });
  }
}

const TARGET_RE = /\/projects\/[^/]+\/(?:zones|locations)\/([^/]+)\/clusters\/([^/]+)(?:\/|$)/;

/** Whether a link (targetLink or selfLink) names the cluster, or one of its node pools. */
function namesCluster(link: string | null | undefined, location: string, cluster: string): boolean {
  const m = TARGET_RE.exec(link ?? '');
  return !!m && m[2] === cluster && (location === '-' || m[1] === location);
}

/**
 * The operations GKE is still running (not DONE) on a cluster, oldest first: follow one with
 * waitForOperation({ projectId, location: op.location, operation: op.name }). `location` '-' looks
 * in every location (and then the same name in two zones is two clusters' operations).
 */
export async function findOperations(
  client: ClusterManagerClient,
  scope: GkeScope,
  clusterName: string,
  options: CallOptions = {},
): Promise<Operation[]> {
  const [response] = await call('ListOperations', () =>
    client.listOperations({ parent: parentOf(scope) }, { timeout: options.timeoutMs ?? DEFAULT_CALL_TIMEOUT_MS }),
  );
  return (response.operations ?? [])
    .filter((op) => op.status !== 'DONE' && (namesCluster(op.targetLink, scope.location, clusterName) || namesCluster(op.selfLink, scope.location, clusterName)))
    .sort((a, b) => String(a.startTime ?? '').localeCompare(String(b.startTime ?? '')));
}
