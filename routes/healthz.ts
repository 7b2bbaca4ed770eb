// GET /healthz - no auth. 200 while the process serves requests.

import { json } from '../services/http.ts';

export function GET(): Response {
  return json({ status: 'ok' });
}
