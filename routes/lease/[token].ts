// /lease/:token - auth; 400 when the token is not a UUID; 401; 409 when no live lease has it
// (never existed, released, or expired); 500; 503.
//   GET    200 the lease: cluster, state, expiry, seconds left, note, holder, endpoint,
//          credentials and hand-off facts.
//   PATCH  {"max_time": N}: 200 the lease now ends N seconds from now (with a fresh
//          `kubeconfig` when its token would have died first); 400 beyond MAX_LEASE_SECONDS
//          after it began.
//   DELETE 200 released: the cluster is free at once.

import { Buffer } from 'node:buffer';
import * as v from 'valibot';
import type { RouteContext, RouteRequest } from '../../app.ts';
import { json, readJsonBody } from '../../services/http.ts';
import { leaseJson } from '../../services/lease-json.ts';
import { LeaseToken, durationSchema, parseBody, parseInput } from '../../services/validation.ts';

const tokenOf = (request: RouteRequest) => parseInput(LeaseToken, request.params.token, 'token');

/** PATCH's body schema per MAX_LEASE_SECONDS: built once, not per request. */
const extendBodies = new Map<number, v.GenericSchema<unknown, { max_time: number }>>();
function extendBody(maxLeaseSeconds: number) {
  let schema = extendBodies.get(maxLeaseSeconds);
  if (!schema) {
    schema = v.strictObject({ max_time: durationSchema(maxLeaseSeconds) });
    extendBodies.set(maxLeaseSeconds, schema);
  }
  return schema;
}

export async function GET(request: RouteRequest, context: RouteContext): Promise<Response> {
  const view = await context.leases.get(tokenOf(request));
  return json(leaseJson(view, view.now, view.facts));
}

export async function PATCH(request: RouteRequest, context: RouteContext): Promise<Response> {
  const token = tokenOf(request);
  const body = parseBody(extendBody(context.maxLeaseSeconds), await readJsonBody(request));
  const view = await context.leases.extend(token, body.max_time, context.log);
  return json({
    ...leaseJson(view, view.now, view.facts),
    ...(view.kubeconfig && { kubeconfig: Buffer.from(view.kubeconfig, 'utf8').toString('base64') }),
  });
}

export async function DELETE(request: RouteRequest, context: RouteContext): Promise<Response> {
  await context.leases.release(tokenOf(request), context.log);
  return json({ released: true });
}
