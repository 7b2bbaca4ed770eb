import type { LeaseTable } from '../lease-table.ts';
import type { TableChange } from '../table-changes.ts';

/** The lease table as read from a store, with the version a compare-and-swap must match. */
export interface Snapshot {
  table: LeaseTable;
  version: string;
}

/** One decision of a batch, as the write path hands it to a store: what it changed, and the table after it. */
export interface CommitStep {
  changes: readonly TableChange[];
  table: LeaseTable;
}

/** What became of one decision's changes. */
export type StepOutcome =
  | { kind: 'written' }
  /** Somebody else wrote first where this decision's records live: decide it again. */
  | { kind: 'conflict' }
  /** Its records would not fit where they live (503). */
  | { kind: 'full' }
  /** `mayHaveLanded`: no answer came, so the write may yet show up. */
  | { kind: 'failed'; error: unknown; mayHaveLanded: boolean };

export interface CommitResult {
  /** One per step, in order. */
  outcomes: StepOutcome[];
  /** The newest table the store knows after the commit, when it knows one. */
  snapshot?: Snapshot;
  /** Tickets that written steps removed, but whose removal did not land: to be removed again. */
  strayTickets?: string[];
}

export interface StoreUsage {
  /** The object (a Kubernetes Service or ConfigMap) that holds records. */
  object: string;
  usedBytes: number;
  limitBytes: number;
}

export interface LeaseStore {
  read(): Promise<Snapshot>;
  /**
   * Optional, for stores whose table spans several objects: a snapshot in which the objects
   * that hold these clusters' records are read now (the others as last seen).
   */
  readFor?(clusterIds: readonly string[]): Promise<Snapshot>;
  /**
   * Optional, for stores whose table spans several objects: this replica's order among equally
   * idle clusters (see DecisionContext.prefer), so that replicas leasing at once write different objects.
   */
  preference?(): ((clusterId: string) => number) | undefined;
  /** Optional, for stores whose table spans several objects: these clusters by the object that holds their records. */
  groupByObject?(clusterIds: readonly string[]): string[][];
  /**
   * Writes `next` if the stored version is still `base.version`, and returns the new snapshot.
   * Throws VersionConflictError when somebody else wrote first; nothing is changed then.
   */
  write(next: LeaseTable, base: Snapshot): Promise<Snapshot>;
  /**
   * Optional, for stores whose table spans several objects: writes each step's changes where
   * its records live (each object a compare-and-swap of its own) and says, per step, whether
   * they landed. Steps are in the order they were decided, each on the table the one before
   * left. A store with it is written only through it.
   */
  commit?(base: Snapshot, steps: readonly CommitStep[]): Promise<CommitResult>;
  /**
   * Optional: reports tables written by others (other replicas) as they happen, so that the
   * next write starts from a fresh table. Returns a function that stops watching.
   */
  watch?(onChange: (snapshot: Snapshot) => void): () => void;
  /** With a watch: whether it is connected and has been heard from lately (readiness). */
  watchLive?(): boolean;
  /** How full each object of the store is, by its name, when objects have a size limit. */
  usage?(): StoreUsage[];
  /** Starts the store's upkeep (the Kubernetes store's shard keeper); returns a function that stops it. */
  maintain?(): () => void;
  /** Releases what the store holds (the file store's lock). */
  close?(): Promise<void>;
}

/** Where a store reports what its caller cannot see in an answer (a pino logger will do). */
export interface StoreLog {
  warn(fields: Record<string, unknown>, message: string): void;
  error(fields: Record<string, unknown>, message: string): void;
}
