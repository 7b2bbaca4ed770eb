// GET /leases - auth. 200 every cluster of the pool with its state (free, leased, unavailable),
// and for a leased one its expiry, seconds left, note and holder; 401; 500. Never a token or a
// kubeconfig.

import type { RouteContext } from '../app.ts';
import { json } from '../services/http.ts';
import { clusterJson } from '../services/lease-json.ts';

export async function GET(_request: Request, context: RouteContext): Promise<Response> {
  const pool = await context.leases.list();
  return json({
    clusters: pool.clusters.map((view) => clusterJson(view, pool.now)),
    waiting: pool.waiting,
  });
}
