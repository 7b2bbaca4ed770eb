// The Kubernetes lease store: the lease table lives in annotations on one Service, so several
// replicas share it. Each cluster's record is its own annotation
// (`lease.k8s-claimer.io/c-<hash of the cluster id>`, value: the JSON record). Every write is a
// JSON merge patch carrying the resourceVersion it was decided on: the apiserver refuses it
// with 409 when somebody else wrote first. Only the annotations that changed are sent, so
// annotations the claimer does not own are never touched.

import { Buffer } from 'node:buffer';
import { createHash } from 'node:crypto';
import { ApiException, CoreV1Api, KubeConfig, PatchStrategy, Watch, setHeaderOptions, type V1Service } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { StoreFullError, TransientStoreError, VersionConflictError } from '../errors.ts';
import type { ClusterFilter } from '../cluster-filter.ts';
import type { ClusterEntry, LeaseTable, LegacyLease, ReplicaHeartbeat, Waiter } from '../lease-table.ts';
import {
  clusterNamedIn,
  decodeEntry,
  decodeFilter,
  decodeHeartbeat,
  decodeLegacy,
  decodeWaiter,
  encodeEntry,
  encodeFilter,
  encodeHeartbeat,
  encodeLegacy,
  encodeWaiter,
  type Decoded,
} from './codec.ts';
import { makeClient } from '../kube-client.ts';
import type { LeaseStore, Snapshot, StoreUsage } from './types.ts';

export const ANNOTATION_PREFIX = 'lease.k8s-claimer.io/';
/** Kubernetes refuses an object whose annotations (keys and values) exceed 256 KiB. */
export const ANNOTATIONS_LIMIT_BYTES = 256 * 1024;
/** The apiserver ends each watch after this long; the next one starts from the current Service. */
const WATCH_SECONDS = 240;
/** A watch silent for longer than its own timeout and a margin is taken for hung. */
const WATCH_SILENCE_MS = (WATCH_SECONDS + 30) * 1000;
/** The original k8s-claimer keyed its records by the lease UUID itself. */
const ORIGINAL_KEY = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export function annotationKeyFor(clusterId: string): string {
  return `${ANNOTATION_PREFIX}c-${createHash('sha256').update(clusterId).digest('hex').slice(0, 24)}`;
}

/** A waiting request's ticket: `lease.k8s-claimer.io/w-<ticket id>`. */
export function waiterKeyFor(ticket: string): string {
  return `${ANNOTATION_PREFIX}w-${ticket}`;
}

/** A filter of waiting requests, shared by their tickets: `lease.k8s-claimer.io/f-<digest>`. */
export function filterKeyFor(digest: string): string {
  return `${ANNOTATION_PREFIX}f-${digest}`;
}

/** A replica's heartbeat, which keeps its tickets alive: `lease.k8s-claimer.io/r-<replica digest>`. */
export function heartbeatKeyFor(replica: string): string {
  return `${ANNOTATION_PREFIX}r-${replica}`;
}

/** The annotation changes of one section of the table: a value for what is new or changed, null for what went. */
function diffSection<T>(
  changes: Record<string, string | null>,
  base: Readonly<Record<string, T>>,
  next: Readonly<Record<string, T>>,
  keyFor: (id: string) => string,
  encode: (id: string, value: T) => unknown,
): void {
  for (const [id, value] of Object.entries(next)) {
    if (base[id] !== value) changes[keyFor(id)] = JSON.stringify(encode(id, value));
  }
  for (const id of Object.keys(base)) {
    if (!(id in next)) changes[keyFor(id)] = null;
  }
}

const UNREADABLE: ClusterEntry = Object.freeze({ state: 'unknown' });

/** The lease Service is missing, or refused the annotations: a backend failure, logged clearly. */
export class LeaseServiceError extends Error {
  override readonly name = 'LeaseServiceError';
}

function annotationsSize(annotations: Record<string, string>): number {
  let size = 0;
  for (const [key, value] of Object.entries(annotations)) size += Buffer.byteLength(key) + Buffer.byteLength(value);
  return size;
}

export function kubeConfigFrom(path?: string): KubeConfig {
  const kubeConfig = new KubeConfig();
  // Default loading: KUBECONFIG, then ~/.kube/config, then the in-cluster service account.
  if (path) kubeConfig.loadFromFile(path);
  else kubeConfig.loadFromDefault();
  return kubeConfig;
}

export interface KubernetesStoreOptions {
  namespace: string;
  serviceName: string;
  logger: Logger;
}

export class KubernetesLeaseStore implements LeaseStore {
  /** Annotations as last seen, by resourceVersion: the base of the size check before a write. */
  private readonly seen = new Map<string, Record<string, string>>();
  /** Decoded records by annotation value: a write changes a few of hundreds, so decode only those. */
  private decoded = new Map<string, { clusterId: string; entry: ClusterEntry }>();
  private readonly where: string;
  private watchState = { connected: false, heardAt: 0 };
  /** Bytes of all the Service's annotations (the limit counts everyone's), as last seen. */
  private usedBytes = 0;

  constructor(
    private readonly api: CoreV1Api,
    private readonly options: KubernetesStoreOptions,
    private readonly watcher?: Watch,
  ) {
    this.where = `${options.namespace}/${options.serviceName}`;
  }

  static fromKubeConfig(kubeConfig: KubeConfig, options: KubernetesStoreOptions & { timeoutMs?: number }): KubernetesLeaseStore {
    return new KubernetesLeaseStore(makeClient(kubeConfig, CoreV1Api, options.timeoutMs ?? 10_000), options, new Watch(kubeConfig));
  }

  /**
   * Watches the lease Service; each change another writer made is reported as a snapshot. The
   * watch asks the apiserver to end it every few minutes and starts again (each start reports
   * the Service as it is), so that a stream that went silent is noticed and replaced.
   */
  watch(onChange: (snapshot: Snapshot) => void): () => void {
    const watcher = this.watcher;
    if (!watcher) return () => undefined;
    let stopped = false;
    let controller: AbortController | undefined;
    let failures = 0;
    const restart = (error?: unknown) => {
      this.watchState.connected = false;
      if (stopped) return;
      if (error) {
        failures += 1;
        this.options.logger.debug({ err: error, service: this.where }, 'lease Service watch ended; restarting');
      }
      setTimeout(start, Math.min(30_000, 100 * 2 ** Math.min(failures, 9)));
    };
    const start = () => {
      if (stopped) return;
      let ended = false;
      const end = (error?: unknown) => {
        if (ended) return;
        ended = true;
        restart(error);
      };
      watcher
        .watch(
          `/api/v1/namespaces/${this.options.namespace}/services`,
          { fieldSelector: `metadata.name=${this.options.serviceName}`, timeoutSeconds: WATCH_SECONDS, allowWatchBookmarks: true },
          (phase: string, service: V1Service) => {
            failures = 0;
            this.watchState.heardAt = performance.now();
            const version = service?.metadata?.resourceVersion;
            // Versions this replica has already seen (its own writes) would only set it back.
            if ((phase === 'ADDED' || phase === 'MODIFIED') && version && !this.seen.has(version)) {
              onChange(this.snapshotOf(service));
            }
          },
          end,
        )
        .then((abort) => {
          controller = abort;
          if (stopped) {
            abort.abort();
            return;
          }
          if (ended) return;
          this.watchState = { connected: true, heardAt: performance.now() };
        }, end);
    };
    // A stream that neither delivers nor ends (a hung connection) is given up and replaced.
    const watchdog = setInterval(() => {
      if (this.watchState.connected && performance.now() - this.watchState.heardAt > WATCH_SILENCE_MS) {
        this.options.logger.warn({ service: this.where }, 'lease Service watch went silent; restarting it');
        controller?.abort();
        this.watchState.connected = false;
      }
    }, WATCH_SILENCE_MS / 4);
    watchdog.unref?.();
    start();
    return () => {
      stopped = true;
      clearInterval(watchdog);
      controller?.abort();
    };
  }

  usage(): StoreUsage[] {
    return [{ object: this.options.serviceName, usedBytes: this.usedBytes, limitBytes: ANNOTATIONS_LIMIT_BYTES }];
  }

  /** Whether the watch is connected and was heard from (an event, or its start) lately. */
  watchLive(): boolean {
    return this.watchState.connected && performance.now() - this.watchState.heardAt <= WATCH_SILENCE_MS;
  }

  async read(): Promise<Snapshot> {
    let service: V1Service;
    try {
      service = await this.api.readNamespacedService({ name: this.options.serviceName, namespace: this.options.namespace });
    } catch (error) {
      throw this.explain(error);
    }
    return this.snapshotOf(service);
  }

  /** The size the Service's annotations would have after `changes`, when its base is known. */
  private sizeAfter(changes: Record<string, string | null>, base: Snapshot): number | undefined {
    const previous = this.seen.get(base.version);
    if (!previous) return undefined;
    let size = annotationsSize(previous);
    for (const [key, value] of Object.entries(changes)) {
      const before = previous[key];
      if (before !== undefined) size -= Buffer.byteLength(key) + Buffer.byteLength(before);
      if (value !== null) size += Buffer.byteLength(key) + Buffer.byteLength(value);
    }
    return size;
  }

  wouldFit(next: LeaseTable, base: Snapshot): boolean {
    return (this.sizeAfter(this.changes(base.table, next), base) ?? 0) <= ANNOTATIONS_LIMIT_BYTES;
  }

  async write(next: LeaseTable, base: Snapshot): Promise<Snapshot> {
    const changes = this.changes(base.table, next);
    const size = this.sizeAfter(changes, base);
    if (size !== undefined && size > ANNOTATIONS_LIMIT_BYTES) {
      this.options.logger.warn(
        { service: this.where, bytes: size, limit: ANNOTATIONS_LIMIT_BYTES },
        'the lease records would pass Kubernetes\' 256 KiB annotation limit on the lease Service; the write is refused (503) and nothing changes',
      );
      throw new StoreFullError();
    }
    let service: V1Service;
    try {
      service = await this.api.patchNamespacedService(
        {
          name: this.options.serviceName,
          namespace: this.options.namespace,
          // A resourceVersion in a merge patch is a precondition: 409 if the Service has moved on.
          body: { metadata: { resourceVersion: base.version, annotations: changes } },
        },
        setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
      );
    } catch (error) {
      throw this.explain(error);
    }
    return this.snapshotOf(service);
  }

  /** The annotation changes that turn `base` into `next`: new values, or null to delete. */
  private changes(base: LeaseTable, next: LeaseTable): Record<string, string | null> {
    const changes: Record<string, string | null> = {};
    for (const [clusterId, entry] of Object.entries(next.clusters)) {
      // An unreadable record is left exactly as it is.
      if (entry.state === 'unknown') continue;
      if (base.clusters[clusterId] !== entry) changes[annotationKeyFor(clusterId)] = JSON.stringify(encodeEntry(clusterId, entry));
    }
    for (const clusterId of Object.keys(base.clusters)) {
      if (!(clusterId in next.clusters)) changes[annotationKeyFor(clusterId)] = null;
    }
    diffSection(changes, base.legacy, next.legacy, (token) => token, (_token, legacy) => encodeLegacy(legacy));
    diffSection(changes, base.waiters, next.waiters, waiterKeyFor, encodeWaiter);
    diffSection(changes, base.filters, next.filters, filterKeyFor, encodeFilter);
    diffSection(changes, base.replicas, next.replicas, heartbeatKeyFor, encodeHeartbeat);
    return changes;
  }

  private snapshotOf(service: V1Service): Snapshot {
    const version = service.metadata?.resourceVersion;
    if (!version) throw new LeaseServiceError(`Service ${this.where} came back without a resourceVersion`);
    const annotations = service.metadata?.annotations ?? {};
    const clusters: Record<string, ClusterEntry> = {};
    const legacy: Record<string, LegacyLease> = {};
    const waiters: Record<string, Waiter> = {};
    const filters: Record<string, ClusterFilter> = {};
    const replicas: Record<string, ReplicaHeartbeat> = {};
    const decodedNow = new Map<string, { clusterId: string; entry: ClusterEntry }>();
    /** Waiting records that do not parse are skipped: a ticket without its record lapses, nothing is leased by it. */
    const waitingRecord = <T>(key: string, value: string, decode: (record: unknown) => Decoded<T>, keyOf: (decoded: T) => string): T | undefined => {
      const decoded = decode(parseJson(value));
      if (decoded.ok && keyOf(decoded.value) === key) return decoded.value;
      this.options.logger.warn({ annotation: key, service: this.where }, 'skipping a waiting record that does not parse');
      return undefined;
    };
    for (const [key, value] of Object.entries(annotations)) {
      if (key.startsWith(`${ANNOTATION_PREFIX}w-`)) {
        const decoded = waitingRecord(key, value, decodeWaiter, (record) => waiterKeyFor(record.ticket));
        if (decoded) waiters[decoded.ticket] = decoded.waiter;
      } else if (key.startsWith(`${ANNOTATION_PREFIX}f-`)) {
        const decoded = waitingRecord(key, value, decodeFilter, (record) => filterKeyFor(record.digest));
        if (decoded) filters[decoded.digest] = decoded.filter;
      } else if (key.startsWith(`${ANNOTATION_PREFIX}r-`)) {
        const decoded = waitingRecord(key, value, decodeHeartbeat, (record) => heartbeatKeyFor(record.replica));
        if (decoded) replicas[decoded.replica] = decoded.beat;
      } else if (key.startsWith(ANNOTATION_PREFIX)) {
        const known = this.decoded.get(value);
        const raw = known ? undefined : parseJson(value);
        const decoded = known ? ({ ok: true, value: known } as const) : decodeEntry(raw);
        if (decoded.ok && annotationKeyFor(decoded.value.clusterId) === key) {
          clusters[decoded.value.clusterId] = decoded.value.entry;
          decodedNow.set(value, decoded.value);
        } else {
          // A record this version cannot read may hold a live lease: its cluster is not leased.
          const named = clusterNamedIn(raw);
          if (named && annotationKeyFor(named) === key) clusters[named] = UNREADABLE;
          this.options.logger.warn(
            { annotation: key, service: this.where, cluster: named, problem: decoded.ok ? 'key does not match the cluster id' : decoded.problem },
            'a lease record does not parse: it is left in place and its cluster is not leased',
          );
        }
      } else if (ORIGINAL_KEY.test(key)) {
        const decoded = decodeLegacy(parseJson(value));
        if (decoded.ok) legacy[key] = decoded.value;
        // The key of such a record is a lease token of the original claimer: only its start is logged.
        else this.options.logger.warn({ annotation: `${key.slice(0, 8)}...`, service: this.where, problem: decoded.problem }, 'an annotation keyed like an original k8s-claimer lease does not parse; it is left alone');
      }
    }
    this.decoded = decodedNow;
    this.seen.set(version, annotations);
    this.usedBytes = annotationsSize(annotations);
    // Only recent versions can be the base of a write; keep the map small.
    for (const old of this.seen.keys()) {
      if (this.seen.size <= 8) break;
      this.seen.delete(old);
    }
    return { table: { clusters, legacy, waiters, filters, replicas }, version };
  }

  private explain(error: unknown): Error {
    if (error instanceof ApiException) {
      if (error.code === 409) return new VersionConflictError();
      if (error.code === 404) {
        return new LeaseServiceError(`lease Service ${this.where} does not exist; create it (see k8s/) before starting`);
      }
      if (error.code === 422 && /annotations.*too long|must have at most/i.test(statusMessage(error))) {
        this.options.logger.warn({ service: this.where, problem: statusMessage(error) }, 'the apiserver refused the lease records as too large; the write is refused (503)');
        return new StoreFullError();
      }
      if (error.code === 422) return new LeaseServiceError(`the apiserver refused the lease records on Service ${this.where}: ${statusMessage(error)}`);
      if (error.code === 429 || (error.code >= 500 && error.code <= 504)) {
        return new TransientStoreError(`the apiserver answered ${error.code} for Service ${this.where}: ${statusMessage(error)}`, { cause: error });
      }
      return new LeaseServiceError(`the apiserver answered ${error.code} for Service ${this.where}: ${statusMessage(error)}`);
    }
    // No answer at all (reset, refused, timed out): the request may or may not have landed.
    if (isNetworkError(error)) return new TransientStoreError(`no answer from the apiserver for Service ${this.where}: ${(error as Error).message}`, { cause: error });
    return error instanceof Error ? error : new Error(String(error));
  }
}

const NETWORK_CODES = new Set(['ECONNRESET', 'ECONNREFUSED', 'ETIMEDOUT', 'EPIPE', 'EAI_AGAIN', 'UND_ERR_SOCKET', 'ECONNABORTED']);

/** No answer at all: client-node's fetch says `fetch failed` and puts the socket's error in `cause`. */
function isNetworkError(error: unknown): boolean {
  for (let current = error, depth = 0; current && depth < 4; current = (current as { cause?: unknown }).cause, depth++) {
    const { name, code, type, message } = current as { name?: string; code?: string; type?: string; message?: string };
    if (name === 'FetchError' || name === 'AbortError' || name === 'TimeoutError' || type === 'system') return true;
    if (code !== undefined && (NETWORK_CODES.has(code) || code.startsWith('UND_ERR'))) return true;
    if (name === 'TypeError' && message?.startsWith('fetch failed')) return true;
  }
  return false;
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function statusMessage(error: ApiException<unknown>): string {
  const body = typeof error.body === 'string' ? parseJson(error.body) : error.body;
  const message = (body as { message?: unknown } | undefined)?.message;
  return typeof message === 'string' ? message.slice(0, 300) : 'no message';
}
