// One Kubernetes object whose annotations hold lease records (the lease Service, or one of its
// shard ConfigMaps), as a compare-and-swap register: read it, patch its annotations on the
// condition that it is still at the resourceVersion the change was decided on, and watch it.
// Every write is a JSON merge patch of only the annotations that change, carrying the
// resourceVersion: the apiserver refuses it with 409 when somebody else wrote first, and
// annotations the claimer does not own are never touched.

import { ApiException, CoreV1Api, PatchStrategy, Watch, setHeaderOptions, type V1ConfigMap, type V1Service } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { StoreFullError, TransientStoreError, VersionConflictError } from '../errors.ts';

export type ObjectKind = 'Service' | 'ConfigMap';

/** The object as read: its version and its annotations (all of them, everyone's). */
export interface ObjectState {
  version: string;
  annotations: Readonly<Record<string, string>>;
}

/** The apiserver ends each watch after this long; the next one starts from the object as it is. */
const WATCH_SECONDS = 240;
/** A watch silent for longer than its own timeout and a margin is taken for hung. */
const WATCH_SILENCE_MS = (WATCH_SECONDS + 30) * 1000;

/** A lease object is missing, or refused the annotations: a backend failure, logged clearly. */
export class LeaseServiceError extends Error {
  override readonly name = 'LeaseServiceError';
}

export class KubeObject {
  readonly where: string;
  private watchState = { connected: false, heardAt: 0 };

  constructor(
    private readonly api: CoreV1Api,
    private readonly watcher: Watch | undefined,
    readonly namespace: string,
    readonly name: string,
    readonly kind: ObjectKind,
    private readonly logger: Logger,
  ) {
    this.where = `${kind} ${namespace}/${name}`;
  }

  async read(): Promise<ObjectState> {
    try {
      const object =
        this.kind === 'Service'
          ? await this.api.readNamespacedService({ name: this.name, namespace: this.namespace })
          : await this.api.readNamespacedConfigMap({ name: this.name, namespace: this.namespace });
      return this.stateOf(object);
    } catch (error) {
      throw this.explain(error);
    }
  }

  /** Sets (a string) or removes (null) annotations if the object is still at `version`. */
  async patch(changes: Readonly<Record<string, string | null>>, version: string): Promise<ObjectState> {
    // A resourceVersion in a merge patch is a precondition: 409 if the object has moved on.
    const body = { metadata: { resourceVersion: version, annotations: changes } };
    const options = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);
    try {
      const object =
        this.kind === 'Service'
          ? await this.api.patchNamespacedService({ name: this.name, namespace: this.namespace, body }, options)
          : await this.api.patchNamespacedConfigMap({ name: this.name, namespace: this.namespace, body }, options);
      return this.stateOf(object);
    } catch (error) {
      throw this.explain(error);
    }
  }

  /**
   * Reports the object as others change it. The watch asks the apiserver to end it every few
   * minutes and starts again (each start reports the object as it is), so that a stream that
   * went silent is noticed and replaced. Returns a function that stops watching.
   */
  watch(onState: (state: ObjectState) => void): () => void {
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
        this.logger.debug({ err: error, object: this.where }, 'lease object watch ended; restarting');
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
      const path = this.kind === 'Service' ? `/api/v1/namespaces/${this.namespace}/services` : `/api/v1/namespaces/${this.namespace}/configmaps`;
      watcher
        .watch(
          path,
          { fieldSelector: `metadata.name=${this.name}`, timeoutSeconds: WATCH_SECONDS, allowWatchBookmarks: true },
          (phase: string, object: V1Service | V1ConfigMap) => {
            failures = 0;
            this.watchState.heardAt = performance.now();
            if ((phase === 'ADDED' || phase === 'MODIFIED') && object?.metadata?.resourceVersion) onState(this.stateOf(object));
            if (phase === 'DELETED') this.logger.error({ object: this.where }, 'a lease object was deleted: its records are gone; recreate it (see k8s/)');
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
        this.logger.warn({ object: this.where }, 'lease object watch went silent; restarting it');
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

  /** Whether the watch is connected and was heard from (an event, or its start) lately. */
  watchLive(): boolean {
    return this.watchState.connected && performance.now() - this.watchState.heardAt <= WATCH_SILENCE_MS;
  }

  private stateOf(object: V1Service | V1ConfigMap): ObjectState {
    const version = object.metadata?.resourceVersion;
    if (!version) throw new LeaseServiceError(`${this.where} came back without a resourceVersion`);
    return { version, annotations: object.metadata?.annotations ?? {} };
  }

  private explain(error: unknown): Error {
    if (error instanceof ApiException) {
      if (error.code === 409) return new VersionConflictError();
      if (error.code === 404) return new LeaseServiceError(`lease ${this.where} does not exist; create it (see k8s/) before starting`);
      if (error.code === 422 && /annotations.*too long|must have at most/i.test(statusMessage(error))) {
        this.logger.warn({ object: this.where, problem: statusMessage(error) }, 'the apiserver refused the lease records as too large; the write is refused (503)');
        return new StoreFullError();
      }
      if (error.code === 422) return new LeaseServiceError(`the apiserver refused the lease records on ${this.where}: ${statusMessage(error)}`);
      if (error.code === 429 || (error.code >= 500 && error.code <= 504)) {
        return new TransientStoreError(`the apiserver answered ${error.code} for ${this.where}: ${statusMessage(error)}`, { cause: error });
      }
      return new LeaseServiceError(`the apiserver answered ${error.code} for ${this.where}: ${statusMessage(error)}`);
    }
    // No answer at all (reset, refused, timed out): the request may or may not have landed.
    if (isNetworkError(error)) return new TransientStoreError(`no answer from the apiserver for ${this.where}: ${(error as Error).message}`, { cause: error });
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
