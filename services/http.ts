// Small helpers shared by routes and the app: JSON responses and bounded JSON bodies.

import { BadRequestError, PayloadTooLargeError } from './errors.ts';

export const MAX_BODY_BYTES = 64 * 1024;

export function json(data: unknown, status = 200, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(data), {
    status,
    headers: { 'content-type': 'application/json; charset=utf-8', ...headers },
  });
}

/**
 * Reads the body as JSON whatever the Content-Type says (`curl -d` sends form encoding), and
 * stops reading once it passes the limit, so an oversized body is never read to its end.
 */
export async function readJsonBody(request: Request, limit = MAX_BODY_BYTES): Promise<unknown> {
  const declared = Number(request.headers.get('content-length') ?? '0');
  if (declared > limit) throw new PayloadTooLargeError(`request body is larger than ${limit} bytes`);
  const chunks: Uint8Array[] = [];
  let size = 0;
  if (request.body) {
    const reader = request.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      size += value.byteLength;
      if (size > limit) {
        await reader.cancel();
        throw new PayloadTooLargeError(`request body is larger than ${limit} bytes`);
      }
      chunks.push(value);
    }
  }
  if (size === 0) throw new BadRequestError('request body must be a JSON object', ['request body']);
  const bytes = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.byteLength;
  }
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new BadRequestError('request body is not valid UTF-8', ['request body']);
  }
  try {
    return JSON.parse(text);
  } catch {
    throw new BadRequestError('request body is not valid JSON', ['request body']);
  }
}
