// The shard keeper: gives the lease table more shards when the pool or its records need them,
// and moves the records whose shard changes, without stopping leasing. It runs on every
// replica; each of its steps is a compare-and-swap that is safe to repeat or to race with
// another replica's, so no coordination is needed:
//
//   1. grow:  shard 0 gets the new layout (epoch + 1, `from` the old count) and that epoch as
//             its fence, in one write. Writers that know only the old layout are refused there.
//   2. fence: every other old shard gets the epoch too. Until a writer sees an old shard fenced
//             it keeps writing that shard's records there (shards.ts, clusterShard).
//   3. move:  each record whose shard changes is copied to its new shard (if it is not there
//             with the same value: the new shard is read before the old one, so a copy never
//             overwrites a record that had already moved), then removed from the old shard (if
//             the new one holds the same value: the old one is read first, and the removal is
//             conditional on its version, so a record written meanwhile stays).
//   4. done:  when no old shard holds a record that belongs elsewhere, `from` goes.
//
// Layouts only grow; records never move between old shards (rendezvous hashing).

import { Buffer } from 'node:buffer';
import type { Logger } from 'pino';
import { StoreFullError, VersionConflictError } from '../errors.ts';
import type { KubeObject } from './kube-object.ts';
import {
  ANNOTATIONS_LIMIT_BYTES,
  RECORDS_LIMIT_BYTES,
  EPOCH_KEY,
  LAYOUT_KEY,
  annotationKeyFor,
  encodeLayout,
  homeOf,
  shardName,
  type Layout,
  type ShardView,
} from './shards.ts';

/** What the keeper needs of the store. */
export interface KeeperHost {
  /** The object as last seen (the watch keeps it fresh), if seen. */
  view(name: string): ShardView | undefined;
  refresh(name: string): Promise<ShardView>;
  patch(name: string, changes: Readonly<Record<string, string | null>>, version: string): Promise<ShardView>;
  object(name: string): KubeObject;
}

export interface KeeperOptions {
  service: string;
  logger: Logger;
  maxShards: number;
  ticketShards: number;
  poolSize?: () => Promise<number>;
}

/**
 * What one cluster's record may take when it is leased with the longest note and holder, with
 * a margin; the pool's size times this, over the share of an object the records may fill, is
 * how many shards the pool needs.
 */
export const RECORD_BUDGET_BYTES = 900;
/** The share of an object's 256 KiB that the records of a fully leased pool may fill. */
export const FILL_TARGET = 0.7;
/** An object fuller than this gets the table more shards, whatever the pool's size says. */
export const GROW_AT = 0.8;
/** Steps of a move taken again at once after losing to writers, before the next look. */
const MOVE_ROUNDS = 50;

export interface GrowthTarget {
  shards: number;
  tickets: number;
}

/** How many shards the table needs, from the pool's size and how full its objects are. */
export function shardsNeeded(layout: Layout, poolSize: number, fullest: number, maxShards: number, ticketShards: number): GrowthTarget {
  const byPool = Math.ceil((poolSize * RECORD_BUDGET_BYTES) / (FILL_TARGET * ANNOTATIONS_LIMIT_BYTES));
  const byFullness = fullest > GROW_AT ? Math.ceil((layout.shards * fullest) / FILL_TARGET) : layout.shards;
  return {
    shards: Math.min(maxShards, Math.max(layout.shards, byPool, byFullness)),
    tickets: Math.max(layout.tickets, ticketShards),
  };
}

export class ShardKeeper {
  /** Objects found missing, reported once each. */
  private readonly missing = new Set<string>();

  constructor(
    private readonly host: KeeperHost,
    private readonly options: KeeperOptions,
  ) {}

  private running?: Promise<void>;
  private queued?: Promise<void>;

  start(intervalMs: number): () => void {
    const timer = setInterval(() => void this.kick(), intervalMs);
    timer.unref?.();
    setImmediate(() => void this.kick());
    return () => clearInterval(timer);
  }

  /** Whether the table may get more shards than `layout` has. */
  canGrow(layout: Layout): boolean {
    return layout.shards < this.options.maxShards;
  }

  /** A look that starts now, or after the one under way (callers meanwhile share it); never throws. */
  kick(): Promise<void> {
    if (this.queued) return this.queued;
    if (!this.running) return this.look();
    this.queued = this.running.then(() => {
      this.queued = undefined;
      return this.look();
    });
    return this.queued;
  }

  private look(): Promise<void> {
    const running: Promise<void> = this.tick()
      .catch((error: unknown) => this.options.logger.warn({ err: error }, 'the shard keeper could not finish a step; it tries again'))
      .finally(() => {
        if (this.running === running) this.running = undefined;
      });
    this.running = running;
    return running;
  }

  /** One look: finish a move under way, or start one when the table needs more shards. */
  async tick(): Promise<void> {
    // What the watch shows will do to find out whether there is anything to do.
    const seen = this.host.view(this.options.service) ?? (await this.host.refresh(this.options.service));
    if (!seen.layout) return;
    if (seen.layout.from !== undefined) {
      await this.moveUntilDone(seen.layout);
      return;
    }
    if (this.options.maxShards <= seen.layout.shards && this.options.ticketShards <= seen.layout.tickets) return;
    const fullest = this.fullest(seen.layout);
    const poolSize = (await this.options.poolSize?.()) ?? 0;
    const wanted = shardsNeeded(seen.layout, poolSize, fullest, this.options.maxShards, this.options.ticketShards);
    if (wanted.shards <= seen.layout.shards && wanted.tickets <= seen.layout.tickets) return;
    const zero = await this.host.refresh(this.options.service);
    const layout = zero.layout;
    if (!layout || !sameLayout(layout, seen.layout)) return;
    const target = await this.existing(layout, wanted);
    if (target.shards <= layout.shards && target.tickets <= layout.tickets) return;
    const next: Layout = {
      epoch: layout.epoch + 1,
      shards: target.shards,
      tickets: target.tickets,
      ...(target.shards > layout.shards && { from: layout.shards }),
    };
    try {
      await this.host.patch(this.options.service, { [LAYOUT_KEY]: encodeLayout(next), [EPOCH_KEY]: String(next.epoch) }, zero.version);
    } catch (error) {
      if (error instanceof VersionConflictError) return;
      throw error;
    }
    this.options.logger.info(
      { event: 'store.grow', from_shards: layout.shards, shards: next.shards, ticket_shards: next.tickets, epoch: next.epoch, pool: poolSize, fullest: Number(fullest.toFixed(2)) },
      'the lease table grows into more shards; records move while leasing goes on',
    );
    if (next.from !== undefined) await this.moveUntilDone(next);
  }

  /** The fullest active cluster shard's share of the limit, as last seen. */
  private fullest(layout: Layout): number {
    let fullest = 0;
    for (let index = 0; index < layout.shards; index++) {
      const view = this.host.view(shardName(this.options.service, 'clusters', index));
      fullest = Math.max(fullest, (view?.bytes ?? 0) / ANNOTATIONS_LIMIT_BYTES);
    }
    return fullest;
  }

  /** The growth the objects allow: every shard up to the target must exist (the manifests make them). */
  private async existing(layout: Layout, wanted: GrowthTarget): Promise<GrowthTarget> {
    const exists = async (name: string) => {
      try {
        await this.host.refresh(name);
        return true;
      } catch (error) {
        if (!this.missing.has(name)) {
          this.missing.add(name);
          this.options.logger.error(
            { err: error, object: name },
            'a shard object the lease table would grow into cannot be read; the table stays at the shards it has (create the ConfigMaps of k8s/, or lower LEASE_SHARDS / LEASE_TICKET_SHARDS)',
          );
        }
        return false;
      }
    };
    let shards = layout.shards;
    while (shards < wanted.shards && (await exists(shardName(this.options.service, 'clusters', shards)))) shards += 1;
    let tickets = layout.tickets;
    while (tickets < wanted.tickets && (await exists(shardName(this.options.service, 'tickets', tickets + 1)))) tickets += 1;
    return { shards, tickets };
  }

  /**
   * Moves while leasing goes on: a step that loses a compare-and-swap to a writer is taken
   * again at once, on fresh reads, so that a busy table does not keep records moving for long.
   */
  private async moveUntilDone(layout: Layout): Promise<void> {
    for (let round = 0; round < MOVE_ROUNDS; round++) {
      if (await this.move(layout)) return;
      await new Promise((resolve) => setTimeout(resolve, Math.random() * 20));
    }
  }

  /** Fences the old shards, moves their records out, and ends the move when none is left; true when done. */
  private async move(layout: Layout): Promise<boolean> {
    const from = layout.from as number;
    const name = (index: number) => shardName(this.options.service, 'clusters', index);
    for (let index = 1; index < from; index++) {
      const view = await this.host.refresh(name(index));
      if (view.epoch >= layout.epoch) continue;
      try {
        await this.host.patch(name(index), { [EPOCH_KEY]: String(layout.epoch) }, view.version);
      } catch (error) {
        if (error instanceof VersionConflictError) return false;
        throw error;
      }
    }
    let left = 0;
    for (let index = 0; index < from; index++) left += await this.moveOut(index, layout);
    if (left > 0) return false;
    const zero = await this.host.refresh(this.options.service);
    if (zero.layout?.epoch !== layout.epoch || zero.layout.from === undefined) return true;
    const done: Layout = { epoch: layout.epoch, shards: layout.shards, tickets: layout.tickets };
    try {
      await this.host.patch(this.options.service, { [LAYOUT_KEY]: encodeLayout(done) }, zero.version);
    } catch (error) {
      if (error instanceof VersionConflictError) return false;
      throw error;
    }
    this.options.logger.info({ event: 'store.grown', shards: done.shards, ticket_shards: done.tickets, epoch: done.epoch }, 'the lease table\'s records are all in their shards');
    return true;
  }

  /** Moves the records of one old shard that belong elsewhere; returns how many were left there. */
  private async moveOut(index: number, layout: Layout): Promise<number> {
    const oldName = shardName(this.options.service, 'clusters', index);
    const misplaced = (view: ShardView) => {
      const byTarget = new Map<number, string[]>();
      for (const clusterId in view.table.clusters) {
        const home = homeOf(clusterId, layout.shards);
        if (home === index) continue;
        const list = byTarget.get(home) ?? [];
        list.push(annotationKeyFor(clusterId));
        byTarget.set(home, list);
      }
      return byTarget;
    };
    const before = misplaced(await this.host.refresh(oldName));
    if (before.size === 0) return 0;
    // Copy: the new shard first, then the old one, then a write conditional on the new one's version.
    for (const [target, keys] of before) {
      const newName = shardName(this.options.service, 'clusters', target);
      const fresh = await this.host.refresh(newName);
      const old = await this.host.refresh(oldName);
      const copies: Record<string, string> = {};
      let bytes = fresh.bytes;
      for (const key of keys) {
        const value = old.annotations[key];
        if (value === undefined || fresh.annotations[key] === value) continue;
        copies[key] = value;
        bytes += Buffer.byteLength(key) + Buffer.byteLength(value) - (fresh.annotations[key] === undefined ? 0 : Buffer.byteLength(key) + Buffer.byteLength(fresh.annotations[key]));
      }
      if (Object.keys(copies).length === 0) continue;
      if (bytes > RECORDS_LIMIT_BYTES) {
        this.options.logger.error({ object: newName, bytes }, 'records moving into this shard would pass the 256 KiB limit; the move waits (raise LEASE_SHARDS)');
        throw new StoreFullError();
      }
      try {
        await this.host.patch(newName, copies, fresh.version);
      } catch (error) {
        if (error instanceof VersionConflictError) return keys.length;
        throw error;
      }
    }
    // Remove: the old shard first, then the new ones; only records the new shard holds as they are.
    const old = await this.host.refresh(oldName);
    const removals: Record<string, null> = {};
    let left = 0;
    for (const [target, keys] of misplaced(old)) {
      const fresh = await this.host.refresh(shardName(this.options.service, 'clusters', target));
      for (const key of keys) {
        if (fresh.annotations[key] === old.annotations[key]) removals[key] = null;
        else left += 1;
      }
    }
    if (Object.keys(removals).length > 0) {
      try {
        await this.host.patch(oldName, removals, old.version);
      } catch (error) {
        if (error instanceof VersionConflictError) return Object.keys(removals).length + left;
        throw error;
      }
    }
    return left;
  }
}

function sameLayout(a: Layout, b: Layout): boolean {
  return a.epoch === b.epoch && a.shards === b.shards && a.tickets === b.tickets && a.from === b.from;
}
