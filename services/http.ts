// Small helpers shared by routes and the app: JSON responses and bounded JSON bodies.

import { FastResponse } from 'srvx';
import { BadRequestError, PayloadTooLargeError } from './errors.ts';

export const MAX_BODY_BYTES = 64 * 1024;

export function json(data: unknown, status = 200, headers: Record<string, string> = {}): Response {
  // srvx's Response for the runtime it serves on: on Node it skips building a web Response.
  return new FastResponse(JSON.stringify(data), {
    status,
    headers: { 'content-type': 'application/json; charset=utf-8', ...headers },
  });
}

/**
 * Reads the body as JSON whatever the Content-Type says (`curl -d` sends form encoding), and
 * stops reading once it passes the limit, so an oversized body is never read to its end.
 */
export async function readJsonBody(request: Request, limit = MAX_BODY_BYTES): Promise<unknown> {
  const length = request.headers.get('content-length');
  const declared = Number(length ?? '0');
  if (declared > limit) throw new PayloadTooLargeError(`request body is larger than ${limit} bytes`);
  // A declared length within the limit is all there is (the HTTP parser holds the body to it),
  // so it is read whole, as text: the cheapest read a server runtime offers. Decoding replaced
  // any invalid byte with U+FFFD, so a body that holds one is refused as not UTF-8 (a client
  // that means the character itself sends it escaped, as \ufffd).
  if (length !== null && Number.isSafeInteger(declared)) {
    const text = await request.text();
    if (text.length > limit) throw new PayloadTooLargeError(`request body is larger than ${limit} bytes`);
    if (text.includes('\uFFFD')) throw new BadRequestError('request body is not valid UTF-8', ['request body']);
    return parseText(text);
  }
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
  const bytes = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return parseJson(bytes);
}

const UTF8 = new TextDecoder('utf-8', { fatal: true });

function parseJson(bytes: Uint8Array): unknown {
  if (bytes.byteLength === 0) throw new BadRequestError('request body must be a JSON object', ['request body']);
  let text: string;
  try {
    text = UTF8.decode(bytes);
  } catch {
    throw new BadRequestError('request body is not valid UTF-8', ['request body']);
  }
  return parseText(text);
}

function parseText(text: string): unknown {
  if (text === '') throw new BadRequestError('request body must be a JSON object', ['request body']);
  try {
    return JSON.parse(text);
  } catch {
    throw new BadRequestError('request body is not valid JSON', ['request body']);
  }
}
