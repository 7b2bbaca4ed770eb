// Replaces a file so that readers see the old content or the new, never a part, and so that a
// secret in it is never readable by others, not even for a moment: a new file of mode 0600 is
// written and synced next to the target, then renamed over it.

import { randomUUID } from 'node:crypto';
import { open, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

/** The temporary files it leaves behind only if the process dies mid-write: `<name>.<uuid>.tmp`. */
export function temporaryNameFor(path: string): string {
  return join(dirname(path), `${basename(path)}.${randomUUID()}.tmp`);
}

/**
 * Writes `content` to a new private file next to `path` and syncs it; returns its name. The
 * caller renames it into place (or links it first, as the file store does) and removes it on
 * failure.
 */
export async function writePrivateTemporary(path: string, content: string | Uint8Array): Promise<string> {
  const temporary = temporaryNameFor(path);
  try {
    const file = await open(temporary, 'wx', 0o600);
    try {
      // The umask can only take bits away; chmod makes sure the owner can read it.
      await file.chmod(0o600);
      await file.writeFile(content);
      await file.sync();
    } finally {
      await file.close();
    }
  } catch (error) {
    await rm(temporary, { force: true });
    throw error;
  }
  return temporary;
}

export async function replaceFileAtomically(path: string, content: string | Uint8Array): Promise<void> {
  const temporary = await writePrivateTemporary(path, content);
  try {
    await rename(temporary, path);
  } catch (error) {
    await rm(temporary, { force: true });
    throw error;
  }
}
