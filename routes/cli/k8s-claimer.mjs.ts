// GET /cli/k8s-claimer.mjs - no auth. 200 the CLI as one file for Node 22 or newer, 304 when
// If-None-Match names its ETag, 404 when the server was started without building it.

import type { RouteRequest } from '../../app.ts';
import { matchesEtag, readCliBundle } from '../../services/cli-bundle.ts';

export async function GET(request: RouteRequest): Promise<Response> {
  const bundle = await readCliBundle();
  // Kept, but checked on every use: a CLI must not lag behind the server it talks to.
  const headers = { etag: bundle.etag, 'cache-control': 'no-cache' };
  if (matchesEtag(request.headers.get('if-none-match'), bundle.etag)) return new Response(null, { status: 304, headers });
  return new Response(bundle.bytes, { headers: { ...headers, 'content-type': 'text/javascript; charset=utf-8', 'x-content-type-options': 'nosniff' } });
}
