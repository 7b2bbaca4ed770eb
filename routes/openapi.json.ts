// GET /openapi.json - no auth. 200 the OpenAPI 3.1 document of every route, body and status.

import { json } from '../services/http.ts';
import { openApiDocument } from '../services/openapi.ts';

export function GET(): Response {
  return json(openApiDocument);
}
