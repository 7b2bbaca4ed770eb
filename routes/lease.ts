// POST /lease - auth. 200 lease granted; 400 bad body; 401; 409 no cluster free; 413; 500; 503.

import { Buffer } from 'node:buffer';
import * as v from 'valibot';
import type { RouteContext } from '../app.ts';
import { json, readJsonBody } from '../services/http.ts';
import type { GrantedLease } from '../services/leases.ts';
import { parseInput } from '../services/validation.ts';

function acquireBody(maxLeaseSeconds: number) {
  const duration = `must be an integer number of seconds from 1 to ${maxLeaseSeconds}`;
  return v.looseObject(
    {
      max_time: v.pipe(v.number(duration), v.integer(duration), v.minValue(1, duration), v.maxValue(maxLeaseSeconds, duration)),
    },
    'must be a JSON object',
  );
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
  };
}

export async function POST(request: Request, context: RouteContext): Promise<Response> {
  const body = parseInput(acquireBody(context.maxLeaseSeconds), await readJsonBody(request));
  const granted = await context.leases.acquire({ durationSeconds: body.max_time }, context.log);
  return json(grantedBody(granted));
}
