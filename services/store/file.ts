// The local lease store: one JSON file, replaced atomically (write a temporary file, fsync,
// rename, fsync the folder), so a crash at any point leaves either the old or the new table.
// It serves one claimer process; replicas share the Kubernetes store instead.

import { mkdir, open, readFile, readdir, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import process from 'node:process';
import { replaceFileAtomically } from '../atomic-file.ts';
import { VersionConflictError } from '../errors.ts';
import type { ClusterFilter } from '../cluster-filter.ts';
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
import type { LeaseStore, Snapshot } from './types.ts';

const FORMAT = 'k8s-claimer/lease-table/v1';

interface FileContent {
  format: typeof FORMAT;
  version: number;
  clusters: unknown[];
  legacy: Record<string, unknown>;
  waiters?: unknown[];
  filters?: unknown[];
  replicas?: unknown[];
}

export interface StoreWarnings {
  warn(fields: Record<string, unknown>, message: string): void;
}

export class FileLeaseStore implements LeaseStore {
  private snapshot: Snapshot = { table: emptyTable, version: '0' };
  /** Records that did not parse: kept and written back untouched, never silently dropped. */
  private unreadable: unknown[] = [];
  private queue: Promise<unknown> = Promise.resolve();
  private readonly lock: FileLock;

  private constructor(
    readonly path: string,
    private readonly log: StoreWarnings,
  ) {
    this.lock = new FileLock(`${path}.lock`);
  }

  /**
   * Loads the file, or starts empty when it does not exist yet. A file that is not ours, or
   * one another claimer process holds, fails loudly.
   */
  static async open(path: string, log: StoreWarnings): Promise<FileLeaseStore> {
    const store = new FileLeaseStore(path, log);
    await mkdir(dirname(path), { recursive: true });
    await store.lock.take();
    try {
      await store.load();
    } catch (error) {
      await store.lock.release();
      throw error;
    }
    return store;
  }

  /** Lets another process open the file. */
  async close(): Promise<void> {
    await this.queue;
    await this.lock.release();
  }

  private async load(): Promise<void> {
    const { path, log } = this;
    await removeLeftovers(path);
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw error;
    }
    let content: FileContent;
    try {
      content = JSON.parse(text);
    } catch {
      throw new Error(`lease store file ${path} is not valid JSON; move it aside to start with an empty table`);
    }
    if (content?.format !== FORMAT || !Number.isInteger(content.version) || !Array.isArray(content.clusters)) {
      throw new Error(`lease store file ${path} is not a k8s-claimer lease table (format ${FORMAT})`);
    }
    const clusters: Record<string, ClusterEntry> = {};
    for (const record of content.clusters ?? []) {
      const decoded = decodeEntry(record);
      if (decoded.ok) clusters[decoded.value.clusterId] = decoded.value.entry;
      else {
        log.warn({ store: path, problem: decoded.problem }, 'a lease record does not parse: its cluster is not leased until it is fixed');
        this.unreadable.push(record);
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
    this.snapshot = { table: { clusters, legacy, waiters, filters, replicas }, version: String(content.version) };
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
        ...Object.entries(next.clusters)
          .filter(([, entry]) => entry.state !== 'unknown')
          .map(([clusterId, entry]) => encodeEntry(clusterId, entry)),
        ...this.unreadable,
      ],
      legacy: Object.fromEntries(Object.entries(next.legacy).map(([token, lease]) => [token, encodeLegacy(lease)])),
      waiters: Object.entries(next.waiters).map(([ticket, waiter]) => encodeWaiter(ticket, waiter)),
      filters: Object.entries(next.filters).map(([digest, filter]) => encodeFilter(digest, filter)),
      replicas: Object.entries(next.replicas).map(([replica, beat]) => encodeHeartbeat(replica, beat)),
    };
    await replaceFile(this.path, `${JSON.stringify(content, null, 2)}\n`);
    // Renamed into place: this is the table now, whatever the folder's sync says below.
    this.snapshot = { table: next, version: String(version) };
    await syncFolder(dirname(this.path)).catch((error: unknown) => {
      this.log.warn({ store: this.path, err: error }, 'could not sync the lease store folder; the write may not survive a power cut');
    });
    return this.snapshot;
  }
}

/**
 * One claimer process per file: a lock file holding the owner's pid, taken with O_EXCL. A lock
 * left by a process that no longer runs is taken over.
 */
const heldHere = new Set<string>();

class FileLock {
  constructor(private readonly path: string) {}

  async take(): Promise<void> {
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        const file = await open(this.path, 'wx', 0o600);
        await file.writeFile(`${process.pid}\n`);
        await file.close();
        heldHere.add(this.path);
        return;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      }
      const owner = Number((await readFile(this.path, 'utf8').catch(() => '')).trim());
      if (heldHere.has(this.path) || (owner !== process.pid && isRunning(owner))) {
        throw new Error(
          `lease store file ${this.path.replace(/\.lock$/, '')} is in use by another claimer (process ${owner}, lock ${this.path}); run one claimer per file, or the Kubernetes store for several replicas`,
        );
      }
      await rm(this.path, { force: true });
    }
    throw new Error(`could not lock ${this.path}`);
  }

  async release(): Promise<void> {
    if (!heldHere.delete(this.path)) return;
    // Best effort: a lock that cannot be removed is taken over once this process is gone.
    await rm(this.path, { force: true }).catch(() => undefined);
  }
}

function isRunning(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: it runs, as somebody else.
    return (error as NodeJS.ErrnoException).code === 'EPERM';
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
  await mkdir(dirname(path), { recursive: true });
  await replaceFileAtomically(path, text);
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
