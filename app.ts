// Builds the HTTP app from its dependencies: the router from the static manifest, auth, and the
// one place where errors become responses. No runtime-specific code: main.ts serves it with
// node:http or Deno.serve.

import type { Logger } from 'pino';
import { Router, type IRequest } from 'itty-router';
import { manifest, pathOf } from './routes/index.ts';
import type { Authenticator, Principal } from './services/auth.ts';
import {
  AppError,
  BadRequestError,
  ClientGoneError,
  ClusterStateError,
  ContentionError,
  IdempotencyConflictError,
  IdempotencyKeyReusedError,
  LeaseNotFoundError,
  MethodNotAllowedError,
  NoClusterAvailableError,
  NotFoundError,
  NotReadyError,
  PayloadTooLargeError,
  ShuttingDownError,
  StoreFullError,
  TooManyWaitersError,
  UnauthorizedError,
} from './services/errors.ts';
import { json } from './services/http.ts';
import type { CleanupControl } from './services/janitor.ts';
import type { LeaseService } from './services/leases.ts';
import type { Backend, Metrics } from './services/metrics.ts';

export interface AppDeps {
  leases: LeaseService;
  cleanup: CleanupControl;
  authenticate: Authenticator;
  logger: Logger;
  metrics: Metrics;
  maxLeaseSeconds: number;
}

/** What a route handler receives besides the request. */
export interface RouteContext extends AppDeps {
  /** The request's logger: every line carries the request id. */
  log: Logger;
  principal: Principal;
}

export type RouteRequest = IRequest;
export type Handler = (request: RouteRequest, context: RouteContext) => Response | Promise<Response>;

export const METHODS = ['GET', 'POST', 'PUT', 'PATCH', 'DELETE'] as const;
export type RouteModule = Partial<Record<(typeof METHODS)[number], Handler>>;

export function allowedMethods(module: RouteModule): (typeof METHODS)[number][] {
  return METHODS.filter((method) => typeof module[method] === 'function');
}

/** What the Allow header lists: every GET route answers HEAD too (RFC 9110). */
function allowHeader(module: RouteModule): string[] {
  const allow: string[] = allowedMethods(module);
  if (allow.includes('GET')) allow.splice(allow.indexOf('GET') + 1, 0, 'HEAD');
  return allow;
}

/** HEAD answers as GET would, with the same status and headers and no body. */
function withoutBody(response: Response): Response {
  return new Response(null, { status: response.status, statusText: response.statusText, headers: response.headers });
}

/** Each typed error's status: the only place where that mapping lives. */
const STATUS_OF: ReadonlyArray<[new (...args: never[]) => AppError, number]> = [
  [BadRequestError, 400],
  [UnauthorizedError, 401],
  [NotFoundError, 404],
  [MethodNotAllowedError, 405],
  [LeaseNotFoundError, 409],
  [NoClusterAvailableError, 409],
  [IdempotencyConflictError, 409],
  [IdempotencyKeyReusedError, 422],
  [ClusterStateError, 409],
  [PayloadTooLargeError, 413],
  [TooManyWaitersError, 429],
  [ContentionError, 503],
  [NotReadyError, 503],
  [ShuttingDownError, 503],
  [StoreFullError, 503],
  // Nobody hears it: the client disconnected while waiting (nginx's "client closed request").
  [ClientGoneError, 499],
];

function headersFor(error: AppError): Record<string, string> {
  if (error instanceof UnauthorizedError) return { 'www-authenticate': 'Bearer' };
  if (error instanceof MethodNotAllowedError) return { allow: error.allow.join(', ') };
  if (error instanceof NoClusterAvailableError && error.retryAfterSeconds !== undefined) {
    return { 'retry-after': String(error.retryAfterSeconds) };
  }
  if (error instanceof TooManyWaitersError) return { 'retry-after': String(error.retryAfterSeconds) };
  if (error instanceof StoreFullError) return { 'retry-after': '30' };
  if (error instanceof ContentionError || error instanceof ShuttingDownError) return { 'retry-after': '1' };
  return {};
}

/** Which backend an unexpected error came from, for the metrics. */
function backendOf(error: unknown): Backend {
  const { name, code, details } = (error ?? {}) as { name?: string; code?: unknown; details?: unknown };
  if (name === 'LeaseServiceError' || name === 'TransientStoreError' || name === 'VersionConflictError') return 'kubernetes';
  // gRPC errors carry a numeric status code and details.
  if (typeof code === 'number' && typeof details === 'string') return 'gke';
  if (typeof code === 'number') return 'cluster';
  // No answer from a leased cluster's API server (store calls arrive as TransientStoreError);
  // client-node's fetch says `fetch failed` and keeps the socket's error as the cause.
  const causeCode = (error as { cause?: { code?: unknown } } | null)?.cause?.code;
  const network = /^(ECONNREFUSED|ECONNRESET|ETIMEDOUT|EHOSTUNREACH|ENOTFOUND|EAI_AGAIN|UND_ERR_\w+)$/;
  if ((typeof code === 'string' && network.test(code)) || (typeof causeCode === 'string' && network.test(causeCode))) return 'cluster';
  if (typeof code === 'string' && code.startsWith('E')) return 'file';
  return 'other';
}

export function errorToResponse(error: unknown, log: Logger, requestId: string, metrics?: Metrics): Response {
  const known = error instanceof AppError ? STATUS_OF.find(([type]) => error instanceof type) : undefined;
  if (error instanceof AppError && known) {
    return json({ error: error.message, ...error.details }, known[1], headersFor(error));
  }
  // A backend failure: the cause goes to the log, the client gets nothing of it.
  metrics?.backendErrors.inc({ backend: backendOf(error) });
  log.error({ err: error }, 'request failed');
  return json({ error: 'internal error', request_id: requestId }, 500);
}

const REQUEST_ID = /^[\w.:-]{1,128}$/;

export interface App {
  fetch(request: Request): Promise<Response>;
}

/** What the server answers while its clients are still being built: alive, not ready. */
export function startingResponse(request: Request): Response {
  if (new URL(request.url).pathname === '/healthz') return json({ status: 'starting' });
  return json({ error: 'the claimer is starting; try again shortly' }, 503, { 'retry-after': '1' });
}

export function createApp(deps: AppDeps): App {
  const router = Router<RouteRequest, [RouteContext]>();
  for (const entry of manifest) {
    const path = pathOf(entry);
    const allow = allowedMethods(entry.module);
    for (const method of allow) {
      const handler = entry.module[method] as Handler;
      router[method.toLowerCase() as Lowercase<typeof method>](path, async (request: RouteRequest, context: RouteContext) => {
        if (entry.auth) context.principal = await deps.authenticate(request.headers.get('authorization'));
        return handler(request, context);
      });
    }
    const get = entry.module.GET;
    if (get) {
      router.head(path, async (request: RouteRequest, context: RouteContext) => {
        if (entry.auth) context.principal = await deps.authenticate(request.headers.get('authorization'));
        return withoutBody(await get(request, context));
      });
    }
    const allowed = allowHeader(entry.module);
    router.all(path, () => {
      throw new MethodNotAllowedError(allowed);
    });
  }
  router.all('*', () => {
    throw new NotFoundError('no such route');
  });

  return {
    async fetch(request) {
      const started = performance.now();
      const incomingId = request.headers.get('x-request-id');
      const requestId = incomingId && REQUEST_ID.test(incomingId) ? incomingId : crypto.randomUUID();
      // The request's logger is made when something is logged: most requests log nothing.
      let log: Logger | undefined;
      const requestLog = () => (log ??= deps.logger.child({ request_id: requestId }));
      const context = {
        ...deps,
        principal: {},
        get log() {
          return requestLog();
        },
      } as RouteContext;
      let response: Response;
      try {
        response = await router.fetch(request, context);
      } catch (error) {
        response = errorToResponse(error, requestLog(), requestId, deps.metrics);
      }
      if (request.method === 'HEAD' && response.body !== null) response = withoutBody(response);
      response.headers.set('x-request-id', requestId);
      // The route pattern, never the raw path: a path can carry a lease token.
      const route = (request as Partial<RouteRequest>).route ?? '*';
      // Every request at debug; refusals at info (a 5xx was logged with its cause already).
      const level = response.status >= 400 ? 'info' : 'debug';
      if (deps.logger.isLevelEnabled(level)) {
        requestLog()[level]({ method: request.method, route, status: response.status, ms: Math.round(performance.now() - started) }, 'request');
      }
      return response;
    },
  };
}
