import type { LeaseTable } from '../lease-table.ts';

/** The lease table as read from a store, with the version a compare-and-swap must match. */
export interface Snapshot {
  table: LeaseTable;
  version: string;
}

export interface LeaseStore {
  read(): Promise<Snapshot>;
  /**
   * Writes `next` if the stored version is still `base.version`, and returns the new snapshot.
   * Throws VersionConflictError when somebody else wrote first; nothing is changed then.
   */
  write(next: LeaseTable, base: Snapshot): Promise<Snapshot>;
  /**
   * Optional: reports tables written by others (other replicas) as they happen, so that the
   * next write starts from a fresh table. Returns a function that stops watching.
   */
  watch?(onChange: (snapshot: Snapshot) => void): () => void;
  /** Releases what the store holds (the file store's lock). */
  close?(): Promise<void>;
}

/** Where a store reports what its caller cannot see in an answer (a pino logger will do). */
export interface StoreLog {
  warn(fields: Record<string, unknown>, message: string): void;
  error(fields: Record<string, unknown>, message: string): void;
}
