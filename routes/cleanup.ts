// POST /cleanup - auth. {"cluster": "<cluster id>"}: a quarantined (or dirty) cluster is cleaned
// again now, its attempts reset; 200 the cluster as /leases shows it (state dirty); 400 bad
// body; 401; 404 no cluster of the pool has this id; 409 the cluster is neither quarantined
// nor dirty; 413; 500; 503.

import * as v from 'valibot';
import type { RouteContext, RouteRequest } from '../app.ts';
import { json, readJsonBody } from '../services/http.ts';
import { clusterJson } from '../services/lease-json.ts';
import { parseBody } from '../services/validation.ts';

const RetryBody = v.looseObject({
  cluster: v.pipe(v.string('must be a cluster id (a string)'), v.nonEmpty('must not be empty'), v.maxLength(512, 'must be at most 512 characters')),
});

export async function POST(request: RouteRequest, context: RouteContext): Promise<Response> {
  const body = parseBody(RetryBody, await readJsonBody(request));
  const { view, now } = await context.cleanup.returnToService(body.cluster, context.log);
  return json(clusterJson(view, now));
}
