// GET /metrics - no auth. 200 Prometheus text: clusters by state, lease events, acquire latency,
// the wait queue, backend errors, cleanups, and the process. Nothing secret.

import type { RouteContext, RouteRequest } from '../app.ts';

export async function GET(_request: RouteRequest, context: RouteContext): Promise<Response> {
  const { body, contentType } = await context.metrics.text();
  return new Response(body, { headers: { 'content-type': contentType } });
}
