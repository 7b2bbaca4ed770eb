// The local lease store: one JSON file, guarded by a lock (file-lock.ts) so that one claimer
// serves it, and written with a compare-and-swap against the version on disk so that even two
// claimers that both believe they hold the lock can never overwrite each other. A write makes
// a private temporary file (synced), commits it by hard-linking it as `<file>.v<version>` (the
// link fails when another writer committed that version first), then renames it over `<file>`
// and syncs the folder: a crash at any point leaves the old table or the new. The newest commit
// marker is the table; `<file>` is its copy for people and for earlier versions of the claimer.

import { constants } from 'node:fs';
import { access, link, mkdir, open, readFile, readdir, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { writePrivateTemporary } from '../atomic-file.ts';
import type { ClusterFilter } from '../cluster-filter.ts';
import { TransientStoreError, VersionConflictError } from '../errors.ts';
import { emptyTable, type ClusterEntry, type LeaseTable, type LegacyLease, type ReplicaHeartbeat, type Waiter } from '../lease-table.ts';
import {
  clusterNamedIn,
  decodeEntry,
  decodeFilter,
  decodeHeartbeat,
  decodeLegacy,
  decodeWaiter,
  encodeEntry,
  encodeFilter,
  encodeHeartbeat,
  encodeLegacy,
  encodeWaiter,
} from './codec.ts';
import { FileLock, type FileLockOptions } from './file-lock.ts';
import type { LeaseStore, Snapshot, StoreLog } from './types.ts';

const FORMAT = 'k8s-claimer/lease-table/v1';
/**
 * Commit markers kept behind the newest. A marker's name is what stops a second commit of the
 * same version, so names are reused only long after any writer could still be deciding on them.
 */
const KEPT_MARKERS = 8;

interface FileContent {
  format: typeof FORMAT;
  version: number;
  clusters: unknown[];
  legacy: Record<string, unknown>;
  waiters?: unknown[];
  filters?: unknown[];
  replicas?: unknown[];
}

export interface FileStoreOptions {
  /** Tests shorten the lock's heartbeat and staleness. */
  lock?: FileLockOptions;
}

/** What the disk held when the snapshot was read or written; a read parses again only when it changed. */
interface DiskState {
  newestMarker?: number;
  /** `<file>`'s identity: a rename gives it a new inode, a rewrite in place a new size or mtime. */
  file?: { ino: number; size: number; mtimeMs: number };
}

interface Loaded {
  snapshot: Snapshot;
  /** Records that did not parse: kept and written back untouched, never silently dropped. */
  unreadable: unknown[];
}

export class FileLeaseStore implements LeaseStore {
  private loaded: Loaded = { snapshot: { table: emptyTable, version: '0' }, unreadable: [] };
  private seen: DiskState = {};
  private queue: Promise<unknown> = Promise.resolve();

  private constructor(
    readonly path: string,
    private readonly log: StoreLog,
    private readonly lock: FileLock,
  ) {}

  /**
   * Loads the file, or starts empty when it does not exist yet. A file that is not ours, or
   * one another claimer process holds, fails loudly.
   */
  static async open(path: string, log: StoreLog, options: FileStoreOptions = {}): Promise<FileLeaseStore> {
    await mkdir(dirname(path), { recursive: true });
    const lock = await FileLock.acquire(path, log, options.lock);
    const store = new FileLeaseStore(path, log, lock);
    try {
      await removeLeftovers(path);
      await store.refresh();
    } catch (error) {
      await lock.release();
      throw error;
    }
    return store;
  }

  /** Lets another process open the file. */
  async close(): Promise<void> {
    await this.queue;
    await this.lock.release();
  }

  /** The table on disk: re-read when another writer changed it. */
  read(): Promise<Snapshot> {
    return this.serially(() => {
      this.lock.assertHeld();
      return this.refresh();
    });
  }

  write(next: LeaseTable, base: Snapshot): Promise<Snapshot> {
    return this.serially(() => this.writeNow(next, base));
  }

  /** Reads and writes run one at a time, so that the snapshot and what was seen on disk agree. */
  private serially<T>(operation: () => Promise<T>): Promise<T> {
    const result = this.queue.then(operation);
    this.queue = result.catch(() => undefined);
    return result;
  }

  private async refresh(): Promise<Snapshot> {
    for (let attempt = 1; ; attempt++) {
      const disk = await this.probe();
      if (sameDisk(disk, this.seen)) return this.loaded.snapshot;
      try {
        await this.load(disk);
        return this.loaded.snapshot;
      } catch (error) {
        // A marker removed by a newer commit between the listing and the read: look again.
        if ((error as NodeJS.ErrnoException).code !== 'ENOENT' || attempt >= 5) throw error;
      }
    }
  }

  private async probe(): Promise<DiskState> {
    const [names, file] = await Promise.all([readdir(dirname(this.path)), stat(this.path).catch(absentOnly)]);
    return {
      newestMarker: newestMarker(markersIn(names, this.path)),
      file: file && { ino: file.ino, size: file.size, mtimeMs: file.mtimeMs },
    };
  }

  private async load(disk: DiskState): Promise<void> {
    let loaded: Loaded = { snapshot: { table: emptyTable, version: '0' }, unreadable: [] };
    let fileIdentity: DiskState['file'];
    const handle = await open(this.path, 'r').catch(absentOnly);
    if (handle) {
      try {
        const { ino, size, mtimeMs } = await handle.stat();
        fileIdentity = { ino, size, mtimeMs };
        loaded = this.parse(this.path, await handle.readFile('utf8'));
      } finally {
        await handle.close();
      }
    }
    // A marker newer than the file: its writer died (or is paused) between commit and rename.
    const marker = disk.newestMarker;
    if (marker !== undefined && marker > Number(loaded.snapshot.version)) {
      loaded = this.parse(markerPath(this.path, marker), await readFile(markerPath(this.path, marker), 'utf8'));
    }
    this.loaded = loaded;
    this.seen = { newestMarker: disk.newestMarker, file: fileIdentity };
  }

  private parse(path: string, text: string): Loaded {
    let content: FileContent;
    try {
      content = JSON.parse(text);
    } catch {
      throw new Error(`lease store file ${path} is not valid JSON; move it aside to start with an empty table`);
    }
    if (content?.format !== FORMAT || !Number.isInteger(content.version) || !Array.isArray(content.clusters)) {
      throw new Error(`lease store file ${path} is not a k8s-claimer lease table (format ${FORMAT})`);
    }
    const unreadable: unknown[] = [];
    const clusters: Record<string, ClusterEntry> = {};
    for (const record of content.clusters ?? []) {
      const decoded = decodeEntry(record);
      if (decoded.ok) clusters[decoded.value.clusterId] = decoded.value.entry;
      else {
        this.log.warn({ store: path, problem: decoded.problem }, 'a lease record does not parse: its cluster is not leased until it is fixed');
        unreadable.push(record);
        const named = clusterNamedIn(record);
        if (named) clusters[named] = { state: 'unknown' };
      }
    }
    const legacy: Record<string, LegacyLease> = {};
    for (const [token, record] of Object.entries(content.legacy ?? {})) {
      const decoded = decodeLegacy(record);
      if (decoded.ok) legacy[token] = decoded.value;
    }
    const records = (section: unknown) => (Array.isArray(section) ? section : []);
    const waiters: Record<string, Waiter> = {};
    for (const record of records(content.waiters)) {
      const decoded = decodeWaiter(record);
      if (decoded.ok) waiters[decoded.value.ticket] = decoded.value.waiter;
    }
    const filters: Record<string, ClusterFilter> = {};
    for (const record of records(content.filters)) {
      const decoded = decodeFilter(record);
      if (decoded.ok) filters[decoded.value.digest] = decoded.value.filter;
    }
    const replicas: Record<string, ReplicaHeartbeat> = {};
    for (const record of records(content.replicas)) {
      const decoded = decodeHeartbeat(record);
      if (decoded.ok) replicas[decoded.value.replica] = decoded.value.beat;
    }
    return { snapshot: { table: { clusters, legacy, waiters, filters, replicas }, version: String(content.version) }, unreadable };
  }

  private async writeNow(next: LeaseTable, base: Snapshot): Promise<Snapshot> {
    this.lock.assertHeld();
    if (base.version !== this.loaded.snapshot.version) throw new VersionConflictError();
    // Another writer may have committed since this table was read: then the base is not what
    // is on disk, and the write path reads again and decides again.
    if (!sameDisk(await this.probe(), this.seen)) throw new VersionConflictError('the lease store file changed since it was read');
    const version = Number(base.version) + 1;
    const temporary = await writePrivateTemporary(this.path, this.encode(next, version));
    let fileIdentity: DiskState['file'];
    let markers: number[];
    try {
      const { ino, size, mtimeMs } = await stat(temporary);
      fileIdentity = { ino, size, mtimeMs };
      try {
        await link(temporary, markerPath(this.path, version));
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === 'EEXIST') throw new VersionConflictError(`lease table version ${version} was committed by another writer`);
        throw error;
      }
      // The link is the commit, unless markers newer than ours exist: then either a writer far
      // ahead removed the old marker of this version (ours is no commit), or one already built
      // on ours (it is). Reading again tells which, so the write path checks before deciding again.
      markers = markersIn(await readdir(dirname(this.path)), this.path);
      if ((newestMarker(markers) ?? 0) > version) {
        throw new TransientStoreError(`another writer committed past lease table version ${version} of ${this.path}`);
      }
      await rename(temporary, this.path);
    } finally {
      await rm(temporary, { force: true });
    }
    // Committed: this is the table now, whatever the folder's sync says below.
    this.loaded = { snapshot: { table: next, version: String(version) }, unreadable: this.loaded.unreadable };
    this.seen = { newestMarker: version, file: fileIdentity };
    await syncFolder(dirname(this.path)).catch((error: unknown) => {
      this.log.warn({ store: this.path, err: error }, 'could not sync the lease store folder; the write may not survive a power cut');
    });
    const old = markers.filter((marker) => marker <= version - KEPT_MARKERS);
    await Promise.all(old.map((marker) => rm(markerPath(this.path, marker), { force: true }).catch(() => undefined)));
    return this.loaded.snapshot;
  }

  private encode(next: LeaseTable, version: number): string {
    const content: FileContent = {
      format: FORMAT,
      version,
      clusters: [
        ...Object.entries(next.clusters)
          .filter(([, entry]) => entry.state !== 'unknown')
          .map(([clusterId, entry]) => encodeEntry(clusterId, entry)),
        ...this.loaded.unreadable,
      ],
      legacy: Object.fromEntries(Object.entries(next.legacy).map(([token, lease]) => [token, encodeLegacy(lease)])),
      waiters: Object.entries(next.waiters).map(([ticket, waiter]) => encodeWaiter(ticket, waiter)),
      filters: Object.entries(next.filters).map(([digest, filter]) => encodeFilter(digest, filter)),
      replicas: Object.entries(next.replicas).map(([replica, beat]) => encodeHeartbeat(replica, beat)),
    };
    return `${JSON.stringify(content, null, 2)}\n`;
  }
}

function markerPath(path: string, version: number): string {
  return `${path}.v${version}`;
}

function markersIn(names: string[], path: string): number[] {
  const prefix = `${basename(path)}.v`;
  return names
    .filter((name) => name.startsWith(prefix) && /^[0-9]+$/.test(name.slice(prefix.length)))
    .map((name) => Number(name.slice(prefix.length)));
}

function newestMarker(markers: number[]): number | undefined {
  return markers.length > 0 ? Math.max(...markers) : undefined;
}

function sameDisk(a: DiskState, b: DiskState): boolean {
  return (
    a.newestMarker === b.newestMarker &&
    a.file?.ino === b.file?.ino &&
    a.file?.size === b.file?.size &&
    a.file?.mtimeMs === b.file?.mtimeMs
  );
}

/** A file that is not there is an answer (undefined); any other failure is not. */
function absentOnly(error: unknown): undefined {
  if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
  throw error;
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

/** A rename is durable only once the folder itself is synced. */
async function syncFolder(folder: string): Promise<void> {
  const directory = await open(folder, 'r');
  try {
    await directory.sync();
  } finally {
    await directory.close();
  }
}

const UNWRITABLE_REASONS: Record<string, string> = {
  EROFS: 'is on a read-only file system',
  EACCES: 'is not writable by this user',
  EPERM: 'is not writable (EPERM: an immutable folder, or a security policy)',
};

/**
 * Why this process could not create files in `folder`, or undefined when it could. A folder
 * that does not exist yet is judged by the nearest one above it, where it would be created.
 * Asks the kernel (access), so nothing is written to find out.
 */
export async function unwritableFolder(folder: string): Promise<{ folder: string; reason: string } | undefined> {
  let existing = resolve(folder);
  for (;;) {
    const found = await stat(existing).catch(absentOnly);
    if (found) {
      if (!found.isDirectory()) return { folder: existing, reason: 'is not a folder' };
      break;
    }
    if (dirname(existing) === existing) return undefined;
    existing = dirname(existing);
  }
  try {
    await access(existing, constants.W_OK | constants.X_OK);
    return undefined;
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? 'an unknown error';
    return { folder: existing, reason: UNWRITABLE_REASONS[code] ?? `cannot be written (${code})` };
  }
}
