// GET /readyz - no auth. 200 when the lease store and the cluster pool answer, with how full
// each object of the lease table is (Kubernetes store); 503 otherwise (and while the claimer is
// starting). Says nothing about why beyond that: causes go to the log.

import type { RouteContext, RouteRequest } from '../app.ts';
import { json } from '../services/http.ts';

export async function GET(_request: RouteRequest, context: RouteContext): Promise<Response> {
  await context.leases.checkReady(context.log);
  const store = context.leases.storeUsage().map((usage) => ({
    object: usage.object,
    used_bytes: usage.usedBytes,
    limit_bytes: usage.limitBytes,
    used_percent: Math.round((usage.usedBytes / usage.limitBytes) * 1000) / 10,
  }));
  return json({ status: 'ready', ...(store.length > 0 && { store }) });
}
