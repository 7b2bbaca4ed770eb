// A lease store that lives in memory: for benchmarks of the HTTP layer and for tests of the
// domain that need no persistence. Same compare-and-swap contract as the real stores.

import { VersionConflictError } from '../errors.ts';
import { emptyTable, type LeaseTable } from '../lease-table.ts';
import type { LeaseStore, Snapshot } from './types.ts';

export class MemoryLeaseStore implements LeaseStore {
  private snapshot: Snapshot = { table: emptyTable, version: '0' };
  writes = 0;

  async read(): Promise<Snapshot> {
    return this.snapshot;
  }

  async write(next: LeaseTable, base: Snapshot): Promise<Snapshot> {
    if (base.version !== this.snapshot.version) throw new VersionConflictError();
    this.writes += 1;
    this.snapshot = { table: next, version: String(Number(this.snapshot.version) + 1) };
    return this.snapshot;
  }
}
