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
}
