// POST /lease - auth. 200 lease granted (also for a retry with the Idempotency-Key of a live
// lease: the same lease, under a new token); 400 bad body or header; 401; 409 no cluster (reason
// NoMatchingCluster, or AllLeased with Retry-After, also when `wait` ran out), or a request with
// the same Idempotency-Key still in progress; 413; 422 the Idempotency-Key was used with another
// body; 429 too many waiters; 500; 503.

import { Buffer } from 'node:buffer';
import { createHash } from 'node:crypto';
import { parseItem, Token } from 'structured-headers';
import * as v from 'valibot';
import type { RouteContext } from '../app.ts';
import { compilePattern, type ClusterFilter } from '../services/cluster-filter.ts';
import { BadRequestError } from '../services/errors.ts';
import { json, readJsonBody } from '../services/http.ts';
import { leaseJson } from '../services/lease-json.ts';
import type { GrantedLease } from '../services/leases.ts';
import { durationSchema, parseBody } from '../services/validation.ts';

const MAX_WAIT_SECONDS = 3600;
const MAX_NOTE_LENGTH = 256;

const text = (max: number, what: string) => v.pipe(v.string(`must be ${what}`), v.maxLength(max, `must be at most ${max} characters`));

/** The body's schema per MAX_LEASE_SECONDS: built once, not per request. */
const acquireBodies = new Map<number, ReturnType<typeof buildAcquireBody>>();

function acquireBody(maxLeaseSeconds: number) {
  let schema = acquireBodies.get(maxLeaseSeconds);
  if (!schema) {
    schema = buildAcquireBody(maxLeaseSeconds);
    acquireBodies.set(maxLeaseSeconds, schema);
  }
  return schema;
}

function buildAcquireBody(maxLeaseSeconds: number) {
  const wait = `must be an integer number of seconds from 0 to ${MAX_WAIT_SECONDS}`;
  // Strict: a field this server does not know is refused by name, never dropped in silence (a
  // `cluster-regex` for `cluster_regex` would lease any cluster).
  return v.strictObject(
    {
      max_time: durationSchema(maxLeaseSeconds),
      // The original Go CLI always sends these three, empty when unused: empty means no filter.
      cluster_regex: v.optional(text(1024, 'an RE2 pattern (a string)')),
      cluster_version: v.optional(text(64, 'a version (a string), matched by whole components')),
      cloud_provider: v.optional(text(64, 'a provider name (a string)')),
      pool: v.optional(text(64, 'a pool name (a string)')),
      labels: v.optional(
        v.pipe(
          v.custom<Record<string, unknown>>((value) => typeof value === 'object' && value !== null && !Array.isArray(value), 'must be an object of label keys and values'),
          v.record(text(317, 'a label key (a string)'), text(63, 'a label value (a string)'), 'must be an object of label keys and values'),
          v.check((labels) => Object.keys(labels).length <= 64, 'must have at most 64 labels'),
        ),
      ),
      note: v.optional(text(MAX_NOTE_LENGTH, 'a string')),
      gpu: v.optional(v.boolean('must be true or false')),
      // kube-control's set_auth_request(user, group): whom the per-lease credentials are for.
      auth: v.optional(
        v.strictObject(
          {
            user: v.optional(v.pipe(v.string('must be a string'), v.regex(/^[\w@.:-]{1,63}$/, 'must be 1 to 63 letters, digits or @ . : _ -'))),
            group: v.optional(v.pipe(v.string('must be a string'), v.nonEmpty('must not be empty'), v.maxLength(253, 'must be at most 253 characters'))),
          },
          'must be an object with user and group',
        ),
      ),
      wait: v.optional(v.pipe(v.number(wait), v.integer(wait), v.minValue(0, wait), v.maxValue(MAX_WAIT_SECONDS, wait))),
    },
  );
}

/** RE2's complaint without the pattern it quotes: the reason, never the raw input. */
function patternProblem(error: unknown): string {
  const message = error instanceof Error ? error.message : '';
  return /regexp: ([^:`]+)/.exec(message)?.[1]?.trim() ?? 'not a valid pattern';
}

function filterOf(body: { cluster_regex?: string; cluster_version?: string; labels?: Record<string, string>; gpu?: boolean }): ClusterFilter {
  const filter: ClusterFilter = {};
  if (body.cluster_regex) {
    try {
      compilePattern(body.cluster_regex);
    } catch (error) {
      throw new BadRequestError(`cluster_regex: not a valid RE2 pattern (${patternProblem(error)})`, ['cluster_regex']);
    }
    filter.regex = body.cluster_regex;
  }
  if (body.cluster_version) filter.version = body.cluster_version;
  if (body.labels && Object.keys(body.labels).length > 0) filter.labels = { ...body.labels };
  if (body.gpu) filter.gpu = true;
  return filter;
}

/**
 * The Idempotency-Key header (the IETF draft's: a structured-field string; a bare token is taken
 * too, as many clients send one), at most 255 characters. Undefined when absent.
 */
function idempotencyKeyOf(request: Request): string | undefined {
  const header = request.headers.get('idempotency-key');
  if (header === null) return undefined;
  let key: unknown;
  try {
    [key] = parseItem(header);
  } catch {
    key = undefined;
  }
  const text = key instanceof Token ? key.toString() : key;
  if (typeof text !== 'string' || text.length === 0 || text.length > 255) {
    throw new BadRequestError('Idempotency-Key: must be a quoted string of 1 to 255 characters, e.g. "8e03978e-40d5-43e8-bc93-6894a57f9324"', ['Idempotency-Key']);
  }
  return text;
}

/** What makes a retry the same request: every field of the body, in a fixed order. */
function fingerprintOf(body: Record<string, unknown>): string {
  const labels = body.labels as Record<string, string> | undefined;
  const canonical = JSON.stringify([
    body.max_time,
    body.cluster_regex ?? '',
    body.cluster_version ?? '',
    body.cloud_provider ?? '',
    body.pool ?? '',
    labels ? Object.entries(labels).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)) : [],
    body.note ?? null,
    body.gpu ?? false,
    body.auth ?? null,
    body.wait ?? 0,
  ]);
  return createHash('sha256').update(canonical).digest('hex').slice(0, 32);
}

/** The seed's response fields, plus `uuid` (what the original Go CLI reads) and the lease's end. */
function grantedBody(granted: GrantedLease) {
  return {
    kubeconfig: Buffer.from(granted.kubeconfig, 'utf8').toString('base64'),
    ip: granted.cluster.endpoint,
    token: granted.token,
    uuid: granted.token,
    cluster_name: granted.cluster.name,
    cluster_version: granted.cluster.version,
    cluster_id: granted.cluster.id,
    ...(granted.cluster.pool !== undefined && { pool: granted.cluster.pool }),
    location: granted.cluster.location,
    expires_at: new Date(granted.lease.expiresAt).toISOString(),
    note: granted.lease.note ?? null,
    holder: granted.lease.holder ?? null,
    credentials: leaseJson({ cluster: granted.cluster, state: 'leased', lease: granted.lease }, granted.lease.startedAt, granted.facts).credentials,
    ...granted.facts,
  };
}

export async function POST(request: Request, context: RouteContext): Promise<Response> {
  const idempotencyKey = idempotencyKeyOf(request);
  const body = parseBody(acquireBody(context.maxLeaseSeconds), await readJsonBody(request));
  const pools = context.leases.poolsFor(body.pool, body.cloud_provider);
  if (body.auth?.group && !context.leases.knowsGroup(body.auth.group)) {
    throw new BadRequestError('auth.group: no ClusterRole is configured for this group (LEASE_GROUP_ROLES)', ['auth.group']);
  }
  const granted = await context.leases.acquire(
    {
      durationSeconds: body.max_time,
      filter: { ...filterOf(body), ...(pools && { pools }) },
      ...(body.note !== undefined && { note: body.note }),
      ...(context.principal.subject !== undefined && { holder: context.principal.subject }),
      waitSeconds: body.wait ?? 0,
      signal: request.signal,
      ...(body.auth && { auth: body.auth }),
      ...(idempotencyKey !== undefined && { idempotency: { key: idempotencyKey, fingerprint: fingerprintOf(body) } }),
    },
    context.log,
  );
  return json(grantedBody(granted));
}
