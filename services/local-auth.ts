// Local mode without AUTH_TOKEN: the claimer generates a token once, keeps it in a file only its
// user can read, and tells the operator where it is (never what it is).

import { randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';

export async function ensureLocalAuthToken(path: string): Promise<{ token: string; generated: boolean }> {
  try {
    const existing = (await readFile(path, 'utf8')).trim();
    if (existing !== '') return { token: existing, generated: false };
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
  const token = randomBytes(32).toString('base64url');
  await mkdir(dirname(path), { recursive: true });
  await writeFile(path, `${token}\n`, { mode: 0o600 });
  return { token, generated: true };
}
