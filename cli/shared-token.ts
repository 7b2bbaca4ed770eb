// The claimer's shared token for the CLI: from AUTH_TOKEN, or from the file AUTH_TOKEN_FILE
// names. A file keeps the token out of the environment, which every process the CLI starts
// could read (/proc/<ppid>/environ is readable by the same user).

import { Buffer } from 'node:buffer';
import { open } from 'node:fs/promises';
import { UsageError, oneLine } from './errors.ts';

/** Far more than any token; stops a mistaken path (a device, a log) from being read whole. */
const MAX_TOKEN_FILE_BYTES = 64 * 1024;

/** The token, trimmed like the server trims it. Throws UsageError with `usage`. */
export async function sharedToken(env: Record<string, string | undefined>, usage: string): Promise<string> {
  const inline = env.AUTH_TOKEN?.trim() || undefined;
  const file = env.AUTH_TOKEN_FILE || undefined;
  // Like the *_FILE convention of container images: two sources would leave a doubt which one is used.
  if (inline !== undefined && file !== undefined) throw new UsageError('set AUTH_TOKEN or AUTH_TOKEN_FILE, not both', usage);
  const [token, source] = file !== undefined ? [await readTokenFile(file, usage), 'AUTH_TOKEN_FILE'] : [inline, 'AUTH_TOKEN'];
  if (token === undefined) throw new UsageError("AUTH_TOKEN is not set (the claimer's shared token; or AUTH_TOKEN_FILE, a file that holds it)", usage);
  // An HTTP header cannot carry control characters; say so instead of failing inside node:http.
  if (/[^\t\u0020-\u007e\u0080-\u00ff]/.test(token)) throw new UsageError(`${source} contains characters an HTTP header cannot carry`, usage);
  return token;
}

/** The file's content, trimmed; refused when its group or others may read it (like ssh's keys). */
async function readTokenFile(path: string, usage: string): Promise<string> {
  const shown = oneLine(path, 200);
  let file;
  try {
    file = await open(path, 'r');
  } catch (error) {
    throw new UsageError(`AUTH_TOKEN_FILE: cannot read ${shown}: ${codeOf(error)}`, usage);
  }
  try {
    // The mode of what was opened, not of what the path names a moment later.
    const { mode } = await file.stat();
    if ((mode & 0o044) !== 0) {
      throw new UsageError(`AUTH_TOKEN_FILE: ${shown} can be read by its group or others (mode ${(mode & 0o777).toString(8)}); make it private: chmod 600`, usage);
    }
    const buffer = Buffer.alloc(MAX_TOKEN_FILE_BYTES + 1);
    let length = 0;
    for (;;) {
      const { bytesRead } = await file.read(buffer, length, buffer.length - length);
      if (bytesRead === 0) break;
      length += bytesRead;
      if (length > MAX_TOKEN_FILE_BYTES) throw new UsageError(`AUTH_TOKEN_FILE: ${shown} is too large to hold a token`, usage);
    }
    const token = buffer.subarray(0, length).toString('utf8').trim();
    if (token === '') throw new UsageError(`AUTH_TOKEN_FILE: ${shown} is empty`, usage);
    return token;
  } catch (error) {
    if (error instanceof UsageError) throw error;
    throw new UsageError(`AUTH_TOKEN_FILE: cannot read ${shown}: ${codeOf(error)}`, usage);
  } finally {
    await file.close();
  }
}

function codeOf(error: unknown): string {
  return error instanceof Error && 'code' in error ? String(error.code) : oneLine(String(error));
}
