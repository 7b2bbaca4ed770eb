// DELETE /lease/:token - auth. 200 released; 400 not a UUID; 401; 409 no live lease has it; 500; 503.

import type { RouteContext, RouteRequest } from '../../app.ts';
import { json } from '../../services/http.ts';
import { LeaseToken, parseInput } from '../../services/validation.ts';

export async function DELETE(request: RouteRequest, context: RouteContext): Promise<Response> {
  const token = parseInput(LeaseToken, request.params.token, 'token');
  await context.leases.release(token, context.log);
  return json({ released: true });
}
