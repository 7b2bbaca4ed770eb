// The file store's lock: one claimer per lease file, arbitrated by the filesystem alone, so it
// holds between containers that share a volume (where every claimer may be pid 1). The lock is
// a series of generation files `<file>.lock.<n>`, each created with O_EXCL. The highest
// generation holds the lock for as long as its owner keeps touching the file (the heartbeat);
// one left untouched for `staleMs` is taken over by creating the next generation, which only
// one racer can do. A generation file is deleted only by its owner, or by the claimer that
// superseded it.

import { open, readFile, readdir, rm, stat, type FileHandle } from 'node:fs/promises';
import { hostname } from 'node:os';
import { basename, dirname, join } from 'node:path';
import type { StoreLog } from './types.ts';

export interface FileLockOptions {
  /** How often the holder touches its lock file and checks that it still holds it. */
  heartbeatMs?: number;
  /** A lock file untouched for this long is taken to belong to a claimer that is gone. */
  staleMs?: number;
}

export const DEFAULT_HEARTBEAT_MS = 5_000;
export const DEFAULT_STALE_MS = 30_000;

/** Another claimer holds the file: its lock file was touched less than `staleMs` ago. */
export class FileLockHeldError extends Error {
  override readonly name = 'FileLockHeldError';
}

/** Another claimer took this one's lock over: this one must not write to the file any more. */
export class FileLockLostError extends Error {
  override readonly name = 'FileLockLostError';
}

/** Enough tries for a few releases and takeovers racing ours; more means something is wrong. */
const ACQUIRE_ATTEMPTS = 10;

export class FileLock {
  private timer?: NodeJS.Timeout;
  private lostWith?: FileLockLostError;
  private released = false;

  private constructor(
    /** The lease file the lock guards; its lock files are `<target>.lock.<n>`. */
    private readonly target: string,
    readonly generation: number,
    /** Kept open so that the inode cannot be reused: a file at our path with another inode is not ours. */
    private readonly handle: FileHandle,
    private readonly inode: number,
    private readonly heartbeatMs: number,
    private readonly log: StoreLog,
  ) {}

  get path(): string {
    return lockPath(this.target, this.generation);
  }

  /** Takes the lock of `target`, or throws FileLockHeldError when a live claimer holds it. */
  static async acquire(target: string, log: StoreLog, options: FileLockOptions = {}): Promise<FileLock> {
    const heartbeatMs = options.heartbeatMs ?? DEFAULT_HEARTBEAT_MS;
    const staleMs = options.staleMs ?? DEFAULT_STALE_MS;
    for (let attempt = 0; attempt < ACQUIRE_ATTEMPTS; attempt++) {
      const top = await highestGeneration(target);
      if (top !== undefined) {
        const age = await ageOf(lockPath(target, top));
        // Released meanwhile: look again.
        if (age === undefined) continue;
        if (age < staleMs) throw await heldError(target, lockPath(target, top), age, staleMs);
      }
      const generation = (top ?? 0) + 1;
      const handle = await createExclusively(lockPath(target, generation));
      // Another claimer created this generation first: it holds the lock, or will say so.
      if (!handle) continue;
      // The stale generation must still be there. If its holder released it meanwhile, the
      // folder may have emptied and someone may hold generation 1 now: ours would oust them.
      if (top !== undefined && (await ageOf(lockPath(target, top))) === undefined) {
        await handle.close();
        await rm(lockPath(target, generation), { force: true });
        continue;
      }
      const lock = new FileLock(target, generation, handle, (await handle.stat()).ino, heartbeatMs, log);
      await lock.removeSuperseded();
      lock.scheduleBeat();
      return lock;
    }
    throw new Error(`could not lock lease store file ${target}: its lock files (${lockPath(target, 'N')}) keep changing`);
  }

  /** Throws once the lock has been taken over; until then the holder may write. */
  assertHeld(): void {
    if (this.lostWith) throw this.lostWith;
  }

  /** Deletes this generation's file, and only if it is still ours. */
  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    clearTimeout(this.timer);
    try {
      if (!this.lostWith && (await this.stillOurs())) await rm(this.path, { force: true });
    } catch {
      // Best effort: a lock that is not removed goes stale and is taken over.
    } finally {
      await this.handle.close();
    }
  }

  private scheduleBeat(): void {
    this.timer = setTimeout(() => void this.beat(), this.heartbeatMs);
    // The lock must not keep a process alive that has nothing else to do.
    this.timer.unref();
  }

  private async beat(): Promise<void> {
    try {
      const top = await highestGeneration(this.target);
      if ((top ?? 0) > this.generation || !(await this.stillOurs())) {
        this.lose(top);
        return;
      }
      const now = new Date();
      await this.handle.utimes(now, now);
    } catch (error) {
      this.log.warn({ store: this.target, lock: this.path, err: error }, 'could not renew the lease store lock; it is taken over if this goes on');
    }
    if (!this.released && !this.lostWith) this.scheduleBeat();
  }

  private lose(top: number | undefined): void {
    const by = top !== undefined && top > this.generation ? `lock ${lockPath(this.target, top)}` : 'a claimer that removed it';
    this.lostWith = new FileLockLostError(
      `lease store file ${this.target} was taken over by another claimer (${by}) after this claimer's lock ${this.path} went stale; this claimer no longer reads or writes it. Run one claimer per file, or the Kubernetes store for several replicas`,
    );
    this.log.error({ store: this.target, lock: this.path, err: this.lostWith }, 'lost the lease store lock: no more reads or writes of the file');
  }

  private async stillOurs(): Promise<boolean> {
    const current = await stat(this.path).catch(() => undefined);
    return current?.ino === this.inode;
  }

  /** Older generations belong to holders that have been taken over; they are ours to clean. */
  private async removeSuperseded(): Promise<void> {
    const older = (await generations(this.target)).filter((generation) => generation < this.generation);
    await Promise.all(older.map((generation) => rm(lockPath(this.target, generation), { force: true }).catch(() => undefined)));
  }
}

function lockPath(target: string, generation: number | string): string {
  return `${target}.lock.${generation}`;
}

async function generations(target: string): Promise<number[]> {
  const prefix = `${basename(target)}.lock.`;
  const names = await readdir(dirname(target));
  return names
    .filter((name) => name.startsWith(prefix) && /^[0-9]+$/.test(name.slice(prefix.length)))
    .map((name) => Number(name.slice(prefix.length)));
}

async function highestGeneration(target: string): Promise<number | undefined> {
  const found = await generations(target);
  return found.length > 0 ? Math.max(...found) : undefined;
}

/** Milliseconds since the lock file was last touched; undefined when it is gone. */
async function ageOf(path: string): Promise<number | undefined> {
  try {
    return Date.now() - (await stat(path)).mtimeMs;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
}

/** The new lock file, or undefined when that generation exists already. */
async function createExclusively(path: string): Promise<FileHandle | undefined> {
  let handle: FileHandle;
  try {
    handle = await open(path, 'wx', 0o600);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') return undefined;
    throw error;
  }
  // Only for people looking at the folder: who holds it, since when. Arbitration uses none of it.
  await handle.writeFile(`${JSON.stringify({ host: hostname(), since: new Date().toISOString() })}\n`);
  return handle;
}

async function heldError(target: string, path: string, ageMs: number, staleMs: number): Promise<FileLockHeldError> {
  let holder = '';
  try {
    const { host } = JSON.parse(await readFile(path, 'utf8'));
    if (typeof host === 'string') holder = `, held by ${host}`;
  } catch {
    // The file names its holder only for people; without it the message still says enough.
  }
  const seconds = Math.max(0, Math.round(ageMs / 1000));
  return new FileLockHeldError(
    `lease store file ${target} is in use by another claimer (lock ${path}${holder}, last heartbeat ${seconds} s ago); run one claimer per file, or the Kubernetes store for several replicas. A lock without a heartbeat for ${Math.round(staleMs / 1000)} s is taken over`,
  );
}
