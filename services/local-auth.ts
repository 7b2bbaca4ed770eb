// Local mode without AUTH_TOKEN: the claimer generates a token once, keeps it in a file only its
// user can read, and tells the operator where it is (never what it is).

import { randomBytes } from 'node:crypto';
import { mkdir, open } from 'node:fs/promises';
import { dirname } from 'node:path';
import { replaceFileAtomically } from './atomic-file.ts';

/** The token file is readable by others and its mode cannot be fixed (it is not ours). */
export class LocalTokenFileError extends Error {
  override readonly name = 'LocalTokenFileError';
}

export interface LocalAuthToken {
  token: string;
  generated: boolean;
  /** Something the operator should hear about (a mode that was fixed); never the token. */
  warning?: string;
}

const OTHERS_BITS = 0o077;

export async function ensureLocalAuthToken(path: string): Promise<LocalAuthToken> {
  let warning: string | undefined;
  const existing = await open(path, 'r').catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return undefined;
    throw error;
  });
  if (existing) {
    try {
      // Through the open file, so the mode checked and fixed is that of the file read.
      const { mode } = await existing.stat();
      if ((mode & OTHERS_BITS) !== 0) {
        const was = (mode & 0o777).toString(8).padStart(4, '0');
        try {
          await existing.chmod(0o600);
        } catch (error) {
          throw new LocalTokenFileError(
            `the local-mode token file ${path} is readable by others (mode ${was}) and its mode cannot be changed (${(error as NodeJS.ErrnoException).code}); make it private (chmod 600) or set AUTH_TOKEN`,
          );
        }
        warning = `the local-mode token file had mode ${was}, readable by others: changed it to 0600; if others may have read it, delete the file to get a new token`;
      }
      const token = (await existing.readFile('utf8')).trim();
      if (token !== '') return { token, generated: false, ...(warning && { warning }) };
    } finally {
      await existing.close();
    }
  }
  const token = randomBytes(32).toString('base64url');
  await mkdir(dirname(path), { recursive: true });
  // A new file of mode 0600 renamed over the path: the token never lands in an inode that
  // others may have open, whatever mode the old file had.
  await replaceFileAtomically(path, `${token}\n`);
  return { token, generated: true, ...(warning && { warning }) };
}
