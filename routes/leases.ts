// GET /leases - auth. 200 every cluster of every pool with its state (free, leased, unavailable),
// and for a leased one its expiry, seconds left, note and holder; each pool's health (how its
// last listing went); 401; 500. Never a token or a kubeconfig.

import type { RouteContext } from '../app.ts';
import { json } from '../services/http.ts';
import { clusterJson } from '../services/lease-json.ts';

export async function GET(_request: Request, context: RouteContext): Promise<Response> {
  const pool = await context.leases.list();
  return json({
    clusters: pool.clusters.map((view) => clusterJson(view, pool.now)),
    waiting: pool.waiting,
    pools: context.leases.poolHealth().map((health) => ({
      name: health.name,
      provider: health.provider,
      aliases: health.aliases,
      healthy: health.healthy,
      last_error: health.lastError,
      listed_at: health.listedAt === null ? null : new Date(health.listedAt).toISOString(),
      clusters: health.clusters,
      ...context.leases.managedFacts(health.name),
    })),
  });
}
