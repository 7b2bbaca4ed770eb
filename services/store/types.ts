import type { LeaseTable } from '../lease-table.ts';

/** The lease table as read from a store, with the version a compare-and-swap must match. */
export interface Snapshot {
  table: LeaseTable;
  version: string;
}

export interface StoreUsage {
  /** The object (a Kubernetes Service) that holds records. */
  object: string;
  usedBytes: number;
  limitBytes: number;
}

export interface LeaseStore {
  read(): Promise<Snapshot>;
  /**
   * Writes `next` if the stored version is still `base.version`, and returns the new snapshot.
   * Throws VersionConflictError when somebody else wrote first; nothing is changed then.
   */
  write(next: LeaseTable, base: Snapshot): Promise<Snapshot>;
  /**
   * Optional, for stores with a size limit: whether `next` would fit when written over `base`.
   * `write` throws StoreFullError (and changes nothing) for a table that would not.
   */
  wouldFit?(next: LeaseTable, base: Snapshot): boolean;
  /**
   * Optional: reports tables written by others (other replicas) as they happen, so that the
   * next write starts from a fresh table. Returns a function that stops watching.
   */
  watch?(onChange: (snapshot: Snapshot) => void): () => void;
  /** With a watch: whether it is connected and has been heard from lately (readiness). */
  watchLive?(): boolean;
  /** How full each object of the store is, by its name, when objects have a size limit. */
  usage?(): StoreUsage[];
  /** Releases what the store holds (the file store's lock). */
  close?(): Promise<void>;
}

/** Where a store reports what its caller cannot see in an answer (a pino logger will do). */
export interface StoreLog {
  warn(fields: Record<string, unknown>, message: string): void;
  error(fields: Record<string, unknown>, message: string): void;
}
