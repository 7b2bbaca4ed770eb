// GET /readyz - no auth. 200 when the lease store and the cluster pool answer; 503 otherwise
// (and while the claimer is starting). Says nothing about why beyond that: causes go to the log.

import type { RouteContext, RouteRequest } from '../app.ts';
import { json } from '../services/http.ts';

export async function GET(_request: RouteRequest, context: RouteContext): Promise<Response> {
  await context.leases.checkReady(context.log);
  return json({ status: 'ready' });
}
