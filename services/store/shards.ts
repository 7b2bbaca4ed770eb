// How the lease table is split over Kubernetes objects (shards), as pure functions of what the
// objects hold: the layout record, where each record lives, the one table the write path sees,
// and which object each decision's changes go to.
//
// Shard 0 is the lease Service; cluster shards 1.. are ConfigMaps `<service>-shard-<i>`,
// ticket shards 1.. are ConfigMaps `<service>-tickets-<j>`. A cluster's record lives in the
// shard of the highest rendezvous score of its id among the active cluster shards, so adding
// shards moves records only into the new ones. While records move (`from` in the layout), a
// record is where its old shard says until the old shard holds it no more; a writer's view of
// the old shard must show the layout's epoch (the fence) before it writes a record to the new
// shard, so that writers with an older layout, who still write the old shard, are refused there.
// A ticket lives in the ticket shard its id scores highest in (or in shard 0 without ticket
// shards), with copies of its filter and its replica's heartbeat beside it, so that every
// object is whole on its own and one compare-and-swap covers what a decision there relies on.

import { Buffer } from 'node:buffer';
import { createHash } from 'node:crypto';
import * as v from 'valibot';
import type { ClusterFilter } from '../cluster-filter.ts';
import type { ClusterEntry, LeaseTable, LegacyLease, ReplicaHeartbeat, Waiter } from '../lease-table.ts';
import type { TableChange } from '../table-changes.ts';

export const ANNOTATION_PREFIX = 'lease.k8s-claimer.io/';
/** Shard 0's record of the layout (absent: one shard, no ticket shards, epoch 0). */
export const LAYOUT_KEY = `${ANNOTATION_PREFIX}layout`;
/** Every shard's fence: the newest layout epoch a writer of this object must know. */
export const EPOCH_KEY = `${ANNOTATION_PREFIX}epoch`;
/** Kubernetes refuses an object whose annotations (keys and values) exceed 256 KiB. */
export const ANNOTATIONS_LIMIT_BYTES = 256 * 1024;
/**
 * What lease records may fill of an object: the limit less room for the layout and the fence,
 * which a full object must still take, or it could never grow.
 */
export const RECORDS_LIMIT_BYTES = ANNOTATIONS_LIMIT_BYTES - 1024;

export interface Layout {
  epoch: number;
  /** Active cluster shards; shard 0 is the lease Service. */
  shards: number;
  /** Ticket shards; 0 keeps tickets in shard 0. */
  tickets: number;
  /** While records move: the cluster shards they move from. */
  from?: number;
}

export const FIRST_LAYOUT: Layout = Object.freeze({ epoch: 0, shards: 1, tickets: 0 });

const LayoutRecord = v.object({
  epoch: v.pipe(v.number(), v.integer(), v.minValue(1)),
  shards: v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(1024)),
  tickets: v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(1024)),
  from: v.optional(v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(1024))),
});

export function decodeLayout(text: string | undefined): Layout | undefined {
  if (text === undefined) return FIRST_LAYOUT;
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return undefined;
  }
  const parsed = v.safeParse(LayoutRecord, raw);
  if (!parsed.success || (parsed.output.from !== undefined && parsed.output.from >= parsed.output.shards)) return undefined;
  return parsed.output;
}

export function encodeLayout(layout: Layout): string {
  return JSON.stringify({ epoch: layout.epoch, shards: layout.shards, tickets: layout.tickets, ...(layout.from !== undefined && { from: layout.from }) });
}

export function decodeEpoch(text: string | undefined): number {
  const epoch = Number(text ?? 0);
  return Number.isSafeInteger(epoch) && epoch >= 0 ? epoch : 0;
}

// ---- rendezvous hashing ------------------------------------------------------------------

/** murmur3's finaliser: every input bit reaches every output bit. */
function mix32(value: number): number {
  let h = value >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/** Ids seen lately: the first 32 bits of their SHA-256, and their shard by shard count (forgotten all at once past a bound). */
const seeds = new Map<string, { seed: number; homes: Map<number, number> }>();
const MAX_SEEDS = 200_000;

/**
 * The shard (0..count-1) whose score for `id` is highest. This function decides where stored
 * records are: it must never change, or records would be looked for where they are not.
 */
export function homeOf(id: string, count: number): number {
  if (count <= 1) return 0;
  let known = seeds.get(id);
  if (!known) {
    if (seeds.size >= MAX_SEEDS) seeds.clear();
    known = { seed: createHash('sha256').update(id).digest().readUInt32BE(0), homes: new Map() };
    seeds.set(id, known);
  }
  const cached = known.homes.get(count);
  if (cached !== undefined) return cached;
  let best = 0;
  let bestScore = -1;
  for (let shard = 0; shard < count; shard++) {
    const score = mix32(known.seed ^ mix32(Math.imul(shard + 1, 0x9e3779b1)));
    if (score > bestScore) {
      best = shard;
      bestScore = score;
    }
  }
  known.homes.set(count, best);
  return best;
}

// ---- what each object holds -----------------------------------------------------------------

export type ShardKind = 'clusters' | 'tickets';

/** One object of the table as last seen: its records, decoded, and what sizing a write needs. */
export interface ShardView {
  name: string;
  kind: ShardKind;
  /** Cluster shards from 0 (the Service), ticket shards from 1. */
  index: number;
  version: string;
  epoch: number;
  /** Shard 0 only: the layout it records (undefined: a record that does not parse). */
  layout?: Layout;
  table: LeaseTable;
  /** Every annotation of the object (the limit counts everyone's). */
  annotations: Readonly<Record<string, string>>;
  bytes: number;
}

export function annotationKeyFor(clusterId: string): string {
  return `${ANNOTATION_PREFIX}c-${createHash('sha256').update(clusterId).digest('hex').slice(0, 24)}`;
}

export const waiterKeyFor = (ticket: string) => `${ANNOTATION_PREFIX}w-${ticket}`;
export const filterKeyFor = (digest: string) => `${ANNOTATION_PREFIX}f-${digest}`;
export const heartbeatKeyFor = (replica: string) => `${ANNOTATION_PREFIX}r-${replica}`;

export function annotationsSize(annotations: Readonly<Record<string, string>>): number {
  let size = 0;
  for (const key in annotations) size += Buffer.byteLength(key) + Buffer.byteLength(annotations[key]);
  return size;
}

/** The names of the shard objects of a lease Service. */
export function shardName(service: string, kind: ShardKind, index: number): string {
  if (kind === 'clusters') return index === 0 ? service : `${service}-shard-${index}`;
  return `${service}-tickets-${index}`;
}

// ---- one table from many objects ------------------------------------------------------------

/** The views of every object a layout reads, by kind and index. */
export interface ViewSet {
  layout: Layout;
  clusters: ReadonlyArray<ShardView | undefined>;
  tickets: ReadonlyArray<ShardView | undefined>;
}

/** Where the record of `clusterId` is, or is to be written, given what the views show. */
export function clusterShard(clusterId: string, views: ViewSet): number {
  const { layout } = views;
  const home = homeOf(clusterId, layout.shards);
  if (layout.from === undefined) return home;
  const old = homeOf(clusterId, layout.from);
  if (old === home) return home;
  const oldView = views.clusters[old];
  // The old shard holds it, or may still be written by writers that know only the old layout.
  if (!oldView || clusterId in oldView.table.clusters || oldView.epoch < layout.epoch) return old;
  return home;
}

/** The shards that hold tickets: the ticket shards, and shard 0 (always: tickets written before ticket shards). */
export function ticketHolders(views: ViewSet): ShardView[] {
  const holders: ShardView[] = [];
  if (views.clusters[0]) holders.push(views.clusters[0]);
  for (let index = 1; index <= views.layout.tickets; index++) {
    const view = views.tickets[index];
    if (view) holders.push(view);
  }
  return holders;
}

/** Where a new ticket goes. */
export function ticketShardName(ticket: string, views: ViewSet, service: string): string {
  if (views.layout.tickets === 0) return shardName(service, 'clusters', 0);
  return shardName(service, 'tickets', homeOf(`ticket:${ticket}`, views.layout.tickets) + 1);
}

const UNREADABLE: ClusterEntry = Object.freeze({ state: 'unknown' });

export interface Merged {
  table: LeaseTable;
  /** Which object each ticket, filter copy and heartbeat copy is in. */
  ticketAt: ReadonlyMap<string, string>;
  filterCopies: ReadonlyMap<string, readonly string[]>;
  heartbeatCopies: ReadonlyMap<string, readonly string[]>;
  /** Per ticket-holding object: the replicas whose tickets it holds. */
  replicasIn: ReadonlyMap<string, ReadonlySet<string>>;
  /** Records found where no layout puts them: their clusters are not leased. */
  strays: Array<{ shard: string; clusterId: string }>;
}

function push<K, T>(map: Map<K, T[]>, key: K, value: T): void {
  const list = map.get(key);
  if (list) list.push(value);
  else map.set(key, [value]);
}

/**
 * The records of one object that the layout puts there, and the others: while no records move,
 * that depends on the object and the shard count alone, so it is worked out once per view.
 */
const placedMemo = new WeakMap<ShardView, { shards: number; placed: Array<[string, ClusterEntry]>; strays: string[] }>();

function placedIn(view: ShardView, shards: number) {
  let known = placedMemo.get(view);
  if (!known || known.shards !== shards) {
    known = { shards, placed: [], strays: [] };
    for (const clusterId in view.table.clusters) {
      if (homeOf(clusterId, shards) === view.index) known.placed.push([clusterId, view.table.clusters[clusterId]]);
      else known.strays.push(clusterId);
    }
    placedMemo.set(view, known);
  }
  return known;
}

/** The one table the write path decides on. */
export function mergeViews(views: ViewSet): Merged {
  const clusters: Record<string, ClusterEntry> = {};
  const strays: Merged['strays'] = [];
  const strayIds = new Set<string>();
  const count = Math.max(views.layout.shards, views.layout.from ?? 0);
  for (let index = 0; index < count; index++) {
    const view = views.clusters[index];
    if (!view) continue;
    if (views.layout.from === undefined) {
      const known = placedIn(view, views.layout.shards);
      for (const [clusterId, entry] of known.placed) clusters[clusterId] = entry;
      for (const clusterId of known.strays) {
        strays.push({ shard: view.name, clusterId });
        strayIds.add(clusterId);
      }
      continue;
    }
    for (const clusterId in view.table.clusters) {
      const at = clusterShard(clusterId, views);
      if (at === index) clusters[clusterId] = view.table.clusters[clusterId];
      else if (!isMoving(clusterId, index, views)) {
        strays.push({ shard: view.name, clusterId });
        strayIds.add(clusterId);
      }
    }
  }
  // A record out of place (a hand edit, a bug) may hold a live lease: its cluster is not leased.
  for (const clusterId of strayIds) if (!(clusterId in clusters)) clusters[clusterId] = UNREADABLE;
  const legacy: Record<string, LegacyLease> = { ...(views.clusters[0]?.table.legacy ?? {}) };
  const waiters: Record<string, Waiter> = {};
  const filters: Record<string, ClusterFilter> = {};
  const replicas: Record<string, ReplicaHeartbeat> = {};
  const ticketAt = new Map<string, string>();
  const filterCopies = new Map<string, string[]>();
  const heartbeatCopies = new Map<string, string[]>();
  const replicasIn = new Map<string, Set<string>>();
  for (const view of ticketHolders(views)) {
    const here = new Set<string>();
    for (const ticket in view.table.waiters) {
      const waiter = view.table.waiters[ticket];
      waiters[ticket] = waiter;
      ticketAt.set(ticket, view.name);
      here.add(waiter.replica);
    }
    replicasIn.set(view.name, here);
    for (const digest in view.table.filters) {
      filters[digest] = view.table.filters[digest];
      push(filterCopies, digest, view.name);
    }
    for (const replica in view.table.replicas) {
      const beat = view.table.replicas[replica];
      // A renewal that reached some copies and not others: the latest counts.
      if (!replicas[replica] || replicas[replica].expiresAt < beat.expiresAt) replicas[replica] = beat;
      push(heartbeatCopies, replica, view.name);
    }
  }
  return { table: { clusters, legacy, waiters, filters, replicas }, ticketAt, filterCopies, heartbeatCopies, replicasIn, strays };
}

/** A copy in the shard a record moves to, or the record in the shard it moves from: in place while it moves. */
function isMoving(clusterId: string, index: number, views: ViewSet): boolean {
  const { layout } = views;
  if (layout.from === undefined) return false;
  return index === homeOf(clusterId, layout.shards) || index === homeOf(clusterId, layout.from);
}

// ---- where a decision's changes go ----------------------------------------------------------

/** A decision's changes, by the object they go to. */
export interface Placement {
  byShard: Map<string, TableChange[]>;
  /** The objects whose writes decide whether the decision landed: its cluster records' (or, without any, all). */
  commitShards: string[];
  /** Objects it changes besides (tickets a grant removes): they follow once the commit shards landed. */
  followShards: string[];
}

export function placeChanges(changes: readonly TableChange[], views: ViewSet, merged: Merged, service: string): Placement {
  const byShard = new Map<string, TableChange[]>();
  const recordShards = new Set<string>();
  const add = (shard: string, change: TableChange) => push(byShard, shard, change);
  for (const change of changes) {
    switch (change.section) {
      case 'clusters': {
        const shard = shardName(service, 'clusters', clusterShard(change.key, views));
        add(shard, change);
        recordShards.add(shard);
        break;
      }
      case 'legacy': {
        const shard = shardName(service, 'clusters', 0);
        add(shard, change);
        recordShards.add(shard);
        break;
      }
      case 'waiters': {
        const at = merged.ticketAt.get(change.key);
        if (at) add(at, change);
        else if (change.value !== undefined) add(ticketShardName(change.key, views, service), change);
        break;
      }
      case 'replicas': {
        const shards = new Set(merged.heartbeatCopies.get(change.key) ?? []);
        if (change.value !== undefined) {
          for (const [shard, replicas] of merged.replicasIn) if (replicas.has(change.key)) shards.add(shard);
        }
        for (const shard of shards) add(shard, change);
        break;
      }
      case 'filters': {
        // A new filter travels with its tickets (see `withCopies`); a removed one goes everywhere.
        if (change.value === undefined) for (const shard of merged.filterCopies.get(change.key) ?? []) add(shard, change);
        break;
      }
    }
  }
  const hasRecords = recordShards.size > 0;
  return {
    byShard,
    commitShards: hasRecords ? [...recordShards] : [...byShard.keys()],
    followShards: hasRecords ? [...byShard.keys()].filter((shard) => !recordShards.has(shard)) : [],
  };
}

/**
 * `changes` to one object, with what keeps it whole on its own: each ticket it holds has its
 * filter and its replica's heartbeat beside it (values from `final`, the table the write path
 * decided), so that a compare-and-swap there covers all a decision about the ticket reads.
 */
export function withCopies(view: ShardView, changes: readonly TableChange[], final: LeaseTable): TableChange[] {
  const added = new Map<string, Waiter>();
  const removed = new Set<string>();
  const filtersGone = new Set<string>();
  const replicasGone = new Set<string>();
  for (const change of changes) {
    if (change.section === 'waiters') {
      if (change.value === undefined) removed.add(change.key);
      else added.set(change.key, change.value as Waiter);
    } else if (change.value === undefined && change.section === 'filters') filtersGone.add(change.key);
    else if (change.value === undefined && change.section === 'replicas') replicasGone.add(change.key);
  }
  if (added.size === 0) return [...changes];
  const copies: TableChange[] = [];
  const filters = new Set<string>();
  const replicas = new Set<string>();
  const need = (waiter: Waiter) => {
    if (!filtersGone.has(waiter.filter) && !(waiter.filter in view.table.filters) && final.filters[waiter.filter] && !filters.has(waiter.filter)) {
      filters.add(waiter.filter);
      copies.push({ section: 'filters', key: waiter.filter, value: final.filters[waiter.filter] });
    }
    const explicit = changes.some((change) => change.section === 'replicas' && change.key === waiter.replica);
    if (!explicit && !replicasGone.has(waiter.replica) && !(waiter.replica in view.table.replicas) && final.replicas[waiter.replica] && !replicas.has(waiter.replica)) {
      replicas.add(waiter.replica);
      copies.push({ section: 'replicas', key: waiter.replica, value: final.replicas[waiter.replica] });
    }
  };
  for (const waiter of added.values()) need(waiter);
  return [...changes, ...copies];
}
