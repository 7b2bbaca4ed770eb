// POST /lease - auth. 200 lease granted; 400 bad body; 401; 409 no cluster (reason
// NoMatchingCluster, or AllLeased with Retry-After, also when `wait` ran out); 413; 500; 503.

import { Buffer } from 'node:buffer';
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

function acquireBody(maxLeaseSeconds: number) {
  const wait = `must be an integer number of seconds from 0 to ${MAX_WAIT_SECONDS}`;
  return v.looseObject(
    {
      max_time: durationSchema(maxLeaseSeconds),
      // The original Go CLI always sends these three, empty when unused: empty means no filter.
      cluster_regex: v.optional(text(1024, 'an RE2 pattern (a string)')),
      cluster_version: v.optional(text(64, 'a version prefix (a string)')),
      cloud_provider: v.optional(text(64, 'a provider name (a string)')),
      labels: v.optional(
        v.pipe(
          v.custom<Record<string, unknown>>((value) => typeof value === 'object' && value !== null && !Array.isArray(value), 'must be an object of label keys and values'),
          v.record(text(317, 'a label key (a string)'), text(63, 'a label value (a string)'), 'must be an object of label keys and values'),
          v.check((labels) => Object.keys(labels).length <= 64, 'must have at most 64 labels'),
        ),
      ),
      note: v.optional(text(MAX_NOTE_LENGTH, 'a string')),
      wait: v.optional(v.pipe(v.number(wait), v.integer(wait), v.minValue(0, wait), v.maxValue(MAX_WAIT_SECONDS, wait))),
    },
  );
}

/** RE2's complaint without the pattern it quotes: the reason, never the raw input. */
function patternProblem(error: unknown): string {
  const message = error instanceof Error ? error.message : '';
  return /regexp: ([^:`]+)/.exec(message)?.[1]?.trim() ?? 'not a valid pattern';
}

function filterOf(body: { cluster_regex?: string; cluster_version?: string; labels?: Record<string, string> }): ClusterFilter {
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
  return filter;
}

/** The seed's response fields, plus `uuid` (what the original Go CLI reads) and the lease's end. */
function grantedBody(granted: GrantedLease) {
  return {
    kubeconfig: Buffer.from(granted.kubeconfig, 'utf8').toString('base64'),
    ip: granted.cluster.endpoint,
    token: granted.token,
    uuid: granted.token,
    cluster_name: granted.cluster.name,
    cluster_id: granted.cluster.id,
    location: granted.cluster.location,
    expires_at: new Date(granted.lease.expiresAt).toISOString(),
    lease: leaseJson({ cluster: granted.cluster, state: 'leased', lease: granted.lease }, granted.lease.startedAt),
  };
}

export async function POST(request: Request, context: RouteContext): Promise<Response> {
  const body = parseBody(acquireBody(context.maxLeaseSeconds), await readJsonBody(request));
  if (body.cloud_provider && !context.leases.servesProvider(body.cloud_provider)) {
    throw new BadRequestError('cloud_provider: not a provider this claimer serves', ['cloud_provider']);
  }
  const granted = await context.leases.acquire(
    {
      durationSeconds: body.max_time,
      filter: filterOf(body),
      ...(body.note !== undefined && { note: body.note }),
      ...(context.principal.subject !== undefined && { holder: context.principal.subject }),
      waitSeconds: body.wait ?? 0,
      signal: request.signal,
    },
    context.log,
  );
  return json(grantedBody(granted));
}
