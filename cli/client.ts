// The CLI's client of the claimer API. It speaks node:http(s) rather than fetch: fetch (undici)
// gives up waiting for response headers after 300 s, and a POST /lease with `wait` may
// legitimately stay open for up to an hour.

import { Buffer } from 'node:buffer';
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { setTimeout as sleep } from 'node:timers/promises';
import * as v from 'valibot';
import { oneLine } from './errors.ts';

/** The body of POST /lease; absent fields are left out so the server applies its defaults. */
export interface LeaseRequest {
  max_time: number;
  wait?: number;
  labels?: Record<string, string>;
  cluster_regex?: string;
  cluster_version?: string;
  note?: string;
  gpu?: boolean;
}

const GrantedLeaseSchema = v.object({
  kubeconfig: v.string(),
  ip: v.string(),
  token: v.string(),
  cluster_name: v.string(),
  /** The pool's id of the cluster (`pool/location/name`); older servers leave it out. */
  cluster_id: v.optional(v.string()),
  expires_at: v.string(),
  seconds_left: v.optional(v.number()),
});
export type GrantedLease = v.InferOutput<typeof GrantedLeaseSchema>;

const LeaseViewSchema = v.object({
  name: v.string(),
  expires_at: v.optional(v.string()),
  seconds_left: v.optional(v.number()),
  /** Base64; only when the extension outlived the lease's token and the server minted a new one. */
  kubeconfig: v.optional(v.string()),
});
export type LeaseView = v.InferOutput<typeof LeaseViewSchema>;

const PoolSchema = v.object({
  clusters: v.array(
    v.object({
      name: v.string(),
      location: v.string(),
      state: v.string(),
      expires_at: v.optional(v.string()),
      seconds_left: v.optional(v.number()),
      note: v.optional(v.nullable(v.string())),
    }),
  ),
  waiting: v.optional(v.number(), 0),
});
export type Pool = v.InferOutput<typeof PoolSchema>;

const ErrorBodySchema = v.object({
  error: v.optional(v.string()),
  reason: v.optional(v.string()),
  request_id: v.optional(v.string()),
  // Not a whole number of seconds: ignored, rather than losing the message with it.
  max_time_left: v.fallback(v.optional(v.pipe(v.number(), v.integer(), v.minValue(0))), undefined),
});

/** What an error answer may say besides its message. */
export interface ErrorDetails {
  reason?: string;
  retryAfterSeconds?: number;
  requestId?: string;
  /** PATCH beyond the server's maximum: how many seconds from now the lease can still be extended by. */
  maxTimeLeft?: number;
}

/** The claimer answered, but not with success. */
export class ClaimerHttpError extends Error {
  readonly reason?: string;
  readonly retryAfterSeconds?: number;
  readonly requestId?: string;
  readonly maxTimeLeft?: number;

  constructor(
    readonly status: number,
    /** The server's `error` text (already one line), or the HTTP status text. */
    readonly serverMessage: string,
    details: ErrorDetails = {},
  ) {
    super(`the claimer answered ${status}: ${serverMessage}${details.requestId ? ` (request id ${details.requestId})` : ''}`);
    this.name = 'ClaimerHttpError';
    this.reason = details.reason;
    this.retryAfterSeconds = details.retryAfterSeconds;
    this.requestId = details.requestId;
    this.maxTimeLeft = details.maxTimeLeft;
  }
}

/** No usable answer: refused connection, DNS failure, timeout, a body that is not the API's. */
export class ClaimerUnreachableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ClaimerUnreachableError';
  }
}

/** The caller's signal aborted the request (the CLI got SIGINT or SIGTERM). */
export class RequestAbortedError extends Error {
  constructor() {
    super('the request was cancelled');
    this.name = 'RequestAbortedError';
  }
}

export interface CallOptions {
  /** Cancels the request, e.g. when the CLI is interrupted while waiting for a cluster. */
  signal?: AbortSignal;
  /** Gives up after this long without a complete answer. */
  timeoutMs?: number;
}

const DEFAULT_TIMEOUT_MS = 30_000;
/** The largest answer we accept: a kubeconfig with inlined certificates is tens of KiB. */
const MAX_RESPONSE_BYTES = 16 * 1024 * 1024;
/** 503 means nothing happened (contended store, server starting): safe to try again a few times. */
const ATTEMPTS_ON_503 = 3;
const MAX_RETRY_DELAY_SECONDS = 5;

interface RawResponse {
  status: number;
  statusText: string;
  headers: IncomingHttpHeaders;
  text: string;
}

export class ClaimerClient {
  constructor(
    private readonly baseUrl: URL,
    private readonly authToken: string,
  ) {}

  /** POST /lease. With `wait`, the server holds the request until a cluster is free or time is up. */
  async acquire(body: LeaseRequest, options: CallOptions = {}): Promise<GrantedLease> {
    return this.call('POST', '/lease', body, GrantedLeaseSchema, options);
  }

  /** DELETE /lease/{token}: the cluster is free at once. */
  async release(token: string, options: CallOptions = {}): Promise<void> {
    await this.call('DELETE', `/lease/${encodeURIComponent(token)}`, undefined, v.unknown(), options);
  }

  /** PATCH /lease/{token}: the lease now ends `seconds` from now (with a fresh kubeconfig if its token would die first). */
  async extend(token: string, seconds: number, options: CallOptions = {}): Promise<LeaseView> {
    return this.call('PATCH', `/lease/${encodeURIComponent(token)}`, { max_time: seconds }, LeaseViewSchema, options);
  }

  /** GET /leases: every cluster of the pool and its state. */
  async list(options: CallOptions = {}): Promise<Pool> {
    return this.call('GET', '/leases', undefined, PoolSchema, options);
  }

  private async call<TSchema extends v.GenericSchema>(
    method: string,
    path: string,
    body: unknown,
    schema: TSchema,
    options: CallOptions,
  ): Promise<v.InferOutput<TSchema>> {
    for (let attempt = 1; ; attempt++) {
      const response = await this.send(method, path, body, options);
      if (response.status >= 200 && response.status < 300) {
        const parsed = v.safeParse(schema, parseJson(response.text));
        if (!parsed.success) throw new ClaimerUnreachableError(`${this.origin()} did not answer like a k8s-claimer (${method} ${path.split('/')[1]})`);
        return parsed.output;
      }
      const error = httpError(response);
      if (response.status !== 503 || attempt >= ATTEMPTS_ON_503) throw error;
      await abortableSleep(Math.min(error.retryAfterSeconds ?? 1, MAX_RETRY_DELAY_SECONDS) * 1000, options.signal);
    }
  }

  private send(method: string, path: string, body: unknown, options: CallOptions): Promise<RawResponse> {
    const url = new URL(this.baseUrl.href);
    url.pathname = `${this.baseUrl.pathname.replace(/\/+$/, '')}${path}`;
    url.search = '';
    url.hash = '';
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const headers: Record<string, string> = {
      accept: 'application/json',
      authorization: `Bearer ${this.authToken}`,
      'user-agent': 'k8s-claimer-cli',
    };
    if (payload !== undefined) {
      headers['content-type'] = 'application/json';
      headers['content-length'] = String(Buffer.byteLength(payload));
    }
    const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const timeout = AbortSignal.timeout(timeoutMs);
    const signal = options.signal ? AbortSignal.any([options.signal, timeout]) : timeout;
    const requestFunction = url.protocol === 'https:' ? httpsRequest : httpRequest;

    return new Promise<RawResponse>((resolve, reject) => {
      const fail = (error: unknown) => {
        if (options.signal?.aborted) reject(new RequestAbortedError());
        else if (timeout.aborted) reject(new ClaimerUnreachableError(`no answer from ${this.origin()} within ${Math.round(timeoutMs / 1000)} s`));
        else reject(new ClaimerUnreachableError(`cannot reach ${this.origin()}: ${oneLine(error instanceof Error ? error.message : String(error))}`));
      };
      // A fresh connection per call: nothing lingers in a keep-alive pool after the CLI is done.
      const request = requestFunction(url, { method, headers, agent: false, signal }, (response) => {
        const chunks: Buffer[] = [];
        let size = 0;
        response.on('data', (chunk: Buffer) => {
          size += chunk.length;
          if (size > MAX_RESPONSE_BYTES) request.destroy(new Error('the answer is too large'));
          else chunks.push(chunk);
        });
        response.on('end', () =>
          resolve({
            status: response.statusCode ?? 0,
            statusText: response.statusMessage ?? '',
            headers: response.headers,
            text: Buffer.concat(chunks).toString('utf8'),
          }),
        );
        response.on('error', fail);
        response.on('close', () => {
          if (!response.complete) fail(new Error('the connection closed before the answer was complete'));
        });
      });
      request.on('error', fail);
      request.end(payload);
    });
  }

  /** The server's address for messages: never a path or query that could carry something private. */
  private origin(): string {
    return `the claimer at ${this.baseUrl.origin}`;
  }
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function httpError(response: RawResponse): ClaimerHttpError {
  const parsed = v.safeParse(ErrorBodySchema, parseJson(response.text));
  const body = parsed.success ? parsed.output : {};
  const retryAfter = Number(response.headers['retry-after']);
  return new ClaimerHttpError(response.status, oneLine(body.error ?? (response.statusText || 'unexpected answer')), {
    reason: body.reason,
    retryAfterSeconds: Number.isFinite(retryAfter) && retryAfter >= 0 ? retryAfter : undefined,
    requestId: body.request_id === undefined ? undefined : oneLine(body.request_id, 80),
    maxTimeLeft: body.max_time_left,
  });
}

async function abortableSleep(ms: number, signal?: AbortSignal): Promise<void> {
  try {
    await sleep(ms, undefined, { signal });
  } catch {
    throw new RequestAbortedError();
  }
}
