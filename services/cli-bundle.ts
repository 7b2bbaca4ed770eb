// The CLI that the claimer hands out (GET /cli/k8s-claimer.mjs): dist/k8s-claimer.mjs beside the
// app, which `npm run build` makes (the image runs `npm run build:mjs`).

import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { NotFoundError } from './errors.ts';

const BUNDLE = new URL('../dist/k8s-claimer.mjs', import.meta.url);

export interface CliBundle {
  bytes: Uint8Array<ArrayBuffer>;
  /** A strong validator of these bytes: a rebuilt CLI is downloaded again, an unchanged one is not. */
  etag: string;
}

/** The file as it is now, so a rebuild needs no restart. NotFoundError when it was never built. */
export async function readCliBundle(): Promise<CliBundle> {
  let bytes: Uint8Array<ArrayBuffer>;
  try {
    bytes = await readFile(BUNDLE);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    throw new NotFoundError('this claimer was started without the bundled CLI: run `npm run build:mjs` where it runs (the image has it)');
  }
  return { bytes, etag: `"${createHash('sha256').update(bytes).digest('base64url')}"` };
}

/** If-None-Match (RFC 9110 13.1.2): `*`, or a list of tags compared weakly. */
export function matchesEtag(ifNoneMatch: string | null, etag: string): boolean {
  if (ifNoneMatch === null) return false;
  return ifNoneMatch.split(',').some((tag) => {
    const trimmed = tag.trim();
    return trimmed === '*' || trimmed.replace(/^W\//, '') === etag;
  });
}
