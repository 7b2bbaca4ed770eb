// The local lease store: one JSON file, replaced atomically (write a temporary file, fsync,
// rename, fsync the folder), so a crash at any point leaves either the old or the new table.
// It serves one claimer process; replicas share the Kubernetes store instead.

import { mkdir, open, readFile, readdir, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { VersionConflictError } from '../errors.ts';
import { emptyTable, type ClusterEntry, type LeaseTable, type LegacyLease } from '../lease-table.ts';
import { decodeEntry, decodeLegacy, encodeEntry, encodeLegacy } from './codec.ts';
import type { LeaseStore, Snapshot } from './types.ts';

const FORMAT = 'k8s-claimer/lease-table/v1';

interface FileContent {
  format: typeof FORMAT;
  version: number;
  clusters: unknown[];
  legacy: Record<string, unknown>;
}

export interface StoreWarnings {
  warn(fields: Record<string, unknown>, message: string): void;
}

export class FileLeaseStore implements LeaseStore {
  private snapshot: Snapshot = { table: emptyTable, version: '0' };
  /** Records that did not parse: kept and written back untouched, never silently dropped. */
  private unreadable: unknown[] = [];
  private queue: Promise<unknown> = Promise.resolve();

  private constructor(readonly path: string) {}

  /** Loads the file, or starts empty when it does not exist yet. A file that is not ours fails loudly. */
  static async open(path: string, log: StoreWarnings): Promise<FileLeaseStore> {
    const store = new FileLeaseStore(path);
    await removeLeftovers(path);
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return store;
      throw error;
    }
    let content: FileContent;
    try {
      content = JSON.parse(text);
    } catch {
      throw new Error(`lease store file ${path} is not valid JSON; move it aside to start with an empty table`);
    }
    if (content?.format !== FORMAT || !Number.isInteger(content.version)) {
      throw new Error(`lease store file ${path} is not a k8s-claimer lease table (format ${FORMAT})`);
    }
    const clusters: Record<string, ClusterEntry> = {};
    for (const record of content.clusters ?? []) {
      const decoded = decodeEntry(record);
      if (decoded.ok) clusters[decoded.value.clusterId] = decoded.value.entry;
      else {
        log.warn({ store: path, problem: decoded.problem }, 'skipping a lease record that does not parse');
        store.unreadable.push(record);
      }
    }
    const legacy: Record<string, LegacyLease> = {};
    for (const [token, record] of Object.entries(content.legacy ?? {})) {
      const decoded = decodeLegacy(record);
      if (decoded.ok) legacy[token] = decoded.value;
    }
    store.snapshot = { table: { clusters, legacy }, version: String(content.version) };
    return store;
  }

  async read(): Promise<Snapshot> {
    return this.snapshot;
  }

  write(next: LeaseTable, base: Snapshot): Promise<Snapshot> {
    // Writes run one at a time so that the version check and the rename cannot interleave.
    const result = this.queue.then(() => this.writeNow(next, base));
    this.queue = result.catch(() => undefined);
    return result;
  }

  private async writeNow(next: LeaseTable, base: Snapshot): Promise<Snapshot> {
    if (base.version !== this.snapshot.version) throw new VersionConflictError();
    const version = Number(this.snapshot.version) + 1;
    const content: FileContent = {
      format: FORMAT,
      version,
      clusters: [
        ...Object.entries(next.clusters).map(([clusterId, entry]) => encodeEntry(clusterId, entry)),
        ...this.unreadable,
      ],
      legacy: Object.fromEntries(Object.entries(next.legacy).map(([token, lease]) => [token, encodeLegacy(lease)])),
    };
    await replaceFile(this.path, `${JSON.stringify(content, null, 2)}\n`);
    this.snapshot = { table: next, version: String(version) };
    return this.snapshot;
  }
}

/** Temporary files of writes that a crash interrupted; the table itself is intact. */
async function removeLeftovers(path: string): Promise<void> {
  const folder = dirname(path);
  const prefix = `${basename(path)}.`;
  let names: string[];
  try {
    names = await readdir(folder);
  } catch {
    return;
  }
  await Promise.all(
    names
      .filter((name) => name.startsWith(prefix) && name.endsWith('.tmp'))
      .map((name) => rm(join(folder, name), { force: true })),
  );
}

async function replaceFile(path: string, text: string): Promise<void> {
  const folder = dirname(path);
  await mkdir(folder, { recursive: true });
  const temporary = `${path}.${crypto.randomUUID()}.tmp`;
  try {
    const file = await open(temporary, 'w', 0o600);
    try {
      await file.writeFile(text, 'utf8');
      await file.sync();
    } finally {
      await file.close();
    }
    await rename(temporary, path);
  } catch (error) {
    await rm(temporary, { force: true });
    throw error;
  }
  // The rename is durable only once the folder itself is synced.
  const directory = await open(folder, 'r');
  try {
    await directory.sync();
  } finally {
    await directory.close();
  }
}
