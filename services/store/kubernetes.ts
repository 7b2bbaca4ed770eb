// The Kubernetes lease store: the lease table lives in annotations on the lease Service, and,
// for pools past what one object holds (Kubernetes caps an object's annotations at 256 KiB),
// on shard ConfigMaps beside it (see shards.ts for where each record lives). Each object is a
// compare-and-swap register of its own (kube-object.ts) with its own watch; the write path
// sees one table, and each decision's changes go only to the objects that hold its records,
// grouped per object, so one steady acquire is still one write. A keeper (shard-keeper.ts)
// adds shards as the pool or the records grow, moving records with the same compare-and-swap.

import { Buffer } from 'node:buffer';
import { CoreV1Api, KubeConfig, Watch } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { StoreFullError, TransientStoreError, VersionConflictError } from '../errors.ts';
import { makeClient } from '../kube-client.ts';
import { succeeds, type LeaseTable } from '../lease-table.ts';
import { tableChanges } from '../table-changes.ts';
import { KubeObject, LeaseServiceError, type ObjectState } from './kube-object.ts';
import { ShardKeeper } from './shard-keeper.ts';
import { RecordReader, annotationOf } from './shard-records.ts';
import {
  ANNOTATIONS_LIMIT_BYTES,
  RECORDS_LIMIT_BYTES,
  EPOCH_KEY,
  LAYOUT_KEY,
  annotationsSize,
  clusterShard,
  decodeEpoch,
  homeOf,
  decodeLayout,
  mergeViews,
  placeChanges,
  shardName,
  withCopies,
  type Layout,
  type Merged,
  type ShardKind,
  type ShardView,
  type ViewSet,
} from './shards.ts';
import type { CommitResult, CommitStep, LeaseStore, Snapshot, StepOutcome, StoreUsage } from './types.ts';

export { ANNOTATION_PREFIX, ANNOTATIONS_LIMIT_BYTES, annotationKeyFor, filterKeyFor, heartbeatKeyFor, waiterKeyFor } from './shards.ts';
export { LeaseServiceError } from './kube-object.ts';

export function kubeConfigFrom(path?: string): KubeConfig {
  const kubeConfig = new KubeConfig();
  // Default loading: KUBECONFIG, then ~/.kube/config, then the in-cluster service account.
  if (path) kubeConfig.loadFromFile(path);
  else kubeConfig.loadFromDefault();
  return kubeConfig;
}

export interface KubernetesStoreOptions {
  namespace: string;
  serviceName: string;
  logger: Logger;
  /** Cluster shards that exist, the Service included (LEASE_SHARDS): the most the table grows to. */
  maxShards?: number;
  /** Ticket shards that exist (LEASE_TICKET_SHARDS); none keeps tickets in the Service. */
  ticketShards?: number;
  /** How many clusters the pool has: the number of shards follows from it. */
  poolSize?: () => Promise<number>;
  /** How often the keeper looks whether the table needs more shards. */
  keeperIntervalMs?: number;
  /** This replica's name: which shards it prefers among equally idle clusters follows from it. */
  replica?: string;
}

/**
 * Resource versions are opaque to clients, but the apiserver's are etcd revisions, numbers
 * that grow: a view is replaced only by a newer one, so that a watch event that arrives after
 * this replica's own later write does not set it back. Only freshness rests on this; every
 * write is still a compare-and-swap.
 */
function isNewer(candidate: string, known: string): boolean {
  if (candidate === known) return false;
  if (/^\d+$/.test(candidate) && /^\d+$/.test(known)) return BigInt(candidate) > BigInt(known);
  return true;
}

type ShardResult = 'written' | 'conflict' | 'full' | { error: unknown; mayHaveLanded: boolean };

const CONFLICT: StepOutcome = Object.freeze({ kind: 'conflict' });
const WRITTEN: StepOutcome = Object.freeze({ kind: 'written' });

export class KubernetesLeaseStore implements LeaseStore {
  private readonly objects = new Map<string, KubeObject>();
  private readonly readers = new Map<string, RecordReader>();
  /** Each object as last seen, by name. */
  private readonly views = new Map<string, ShardView>();
  /** The view sets behind recent snapshots, by snapshot version: the bases of commits. */
  private readonly viewSets = new Map<string, { views: ViewSet; merged: Merged }>();
  private latest?: Snapshot;
  private watching?: { onChange: (snapshot: Snapshot) => void; stops: Map<string, () => void>; emitting: boolean };
  private readonly keeper: ShardKeeper;
  readonly service: string;

  constructor(
    private readonly api: CoreV1Api,
    private readonly options: KubernetesStoreOptions,
    private readonly watcher?: Watch,
  ) {
    this.service = options.serviceName;
    this.keeper = new ShardKeeper(this, {
      service: this.service,
      logger: options.logger,
      maxShards: options.maxShards ?? 1,
      ticketShards: options.ticketShards ?? 0,
      ...(options.poolSize && { poolSize: options.poolSize }),
    });
  }

  static fromKubeConfig(kubeConfig: KubeConfig, options: KubernetesStoreOptions & { timeoutMs?: number }): KubernetesLeaseStore {
    return new KubernetesLeaseStore(makeClient(kubeConfig, CoreV1Api, options.timeoutMs ?? 10_000), options, new Watch(kubeConfig));
  }

  // ---- objects and their views -------------------------------------------------------------

  object(name: string): KubeObject {
    let object = this.objects.get(name);
    if (!object) {
      object = new KubeObject(this.api, this.watcher, this.options.namespace, name, name === this.service ? 'Service' : 'ConfigMap', this.options.logger);
      this.objects.set(name, object);
    }
    return object;
  }

  private kindOf(name: string): { kind: ShardKind; index: number } {
    if (name === this.service) return { kind: 'clusters', index: 0 };
    const match = /-(shard|tickets)-(\d+)$/.exec(name);
    if (!match) throw new Error(`not a lease object: ${name}`);
    return { kind: match[1] === 'shard' ? 'clusters' : 'tickets', index: Number(match[2]) };
  }

  /** Takes in an object as read, written or watched, unless a newer one is known; returns the view. */
  absorb(name: string, state: ObjectState): ShardView {
    const known = this.views.get(name);
    if (known && !isNewer(state.version, known.version)) return known;
    let reader = this.readers.get(name);
    if (!reader) {
      reader = new RecordReader(this.object(name).where, this.options.logger);
      this.readers.set(name, reader);
    }
    const { kind, index } = this.kindOf(name);
    const annotations = state.annotations;
    const view: ShardView = {
      name,
      kind,
      index,
      version: state.version,
      epoch: decodeEpoch(annotations[EPOCH_KEY]),
      ...(index === 0 && kind === 'clusters' && { layout: decodeLayout(annotations[LAYOUT_KEY]) }),
      table: reader.read(annotations),
      annotations,
      bytes: annotationsSize(annotations),
    };
    this.views.set(name, view);
    if (view.index === 0 && kind === 'clusters' && !sameLayout(known?.layout, view.layout)) this.watchAll();
    return view;
  }

  view(name: string): ShardView | undefined {
    return this.views.get(name);
  }

  /** Reads one object now. */
  async refresh(name: string): Promise<ShardView> {
    return this.absorb(name, await this.object(name).read());
  }

  /** Patches one object if it is still at `version` (VersionConflictError otherwise). */
  async patch(name: string, changes: Readonly<Record<string, string | null>>, version: string): Promise<ShardView> {
    return this.absorb(name, await this.object(name).patch(changes, version));
  }

  /** The layout as shard 0 last showed it. */
  layout(): Layout | undefined {
    const zero = this.views.get(this.service);
    if (!zero) return undefined;
    if (!zero.layout) throw new LeaseServiceError(`the ${LAYOUT_KEY} annotation on Service ${this.options.namespace}/${this.service} does not parse; nothing is written until it is fixed`);
    return zero.layout;
  }

  /** Every object the layout reads. */
  private layoutNames(layout: Layout): string[] {
    const names: string[] = [];
    const clusterShards = Math.max(layout.shards, layout.from ?? 0);
    for (let index = 0; index < clusterShards; index++) names.push(shardName(this.service, 'clusters', index));
    for (let index = 1; index <= layout.tickets; index++) names.push(shardName(this.service, 'tickets', index));
    return names;
  }

  private viewSet(): ViewSet | undefined {
    const layout = this.layout();
    if (!layout) return undefined;
    const clusters: ShardView[] = [];
    const tickets: Array<ShardView | undefined> = [undefined];
    for (let index = 0; index < Math.max(layout.shards, layout.from ?? 0); index++) {
      const view = this.views.get(shardName(this.service, 'clusters', index));
      if (!view) return undefined;
      clusters.push(view);
    }
    for (let index = 1; index <= layout.tickets; index++) {
      const view = this.views.get(shardName(this.service, 'tickets', index));
      if (!view) return undefined;
      tickets.push(view);
    }
    return { layout, clusters, tickets };
  }

  /** A view of every object the layout reads, reading those not seen yet. */
  private async ensure(): Promise<ViewSet> {
    for (let round = 0; ; round++) {
      const set = this.viewSet();
      if (set) return set;
      if (round > 8) throw new TransientStoreError('the lease layout kept changing while its objects were read');
      if (!this.views.has(this.service)) await this.refresh(this.service);
      const layout = this.layout() as Layout;
      await Promise.all(this.layoutNames(layout).filter((name) => !this.views.has(name)).map((name) => this.refresh(name)));
    }
  }

  /** The one table of the current views. */
  private snapshotOf(set: ViewSet): Snapshot {
    const version = `${set.layout.epoch}/${set.layout.shards}/${set.layout.from ?? ''}/${set.layout.tickets}:${[...set.clusters, ...set.tickets.slice(1)].map((view) => view?.version).join(',')}`;
    if (this.latest?.version === version) return this.latest;
    const merged = mergeViews(set);
    const previous = this.latest && this.viewSets.get(this.latest.version);
    const changed = previous && changedClusters(previous.views, set);
    // What the table before it derived (its free list) carries over, changed records aside.
    if (previous && changed) succeeds(merged.table, previous.merged.table, changed);
    for (const stray of merged.strays) {
      this.options.logger.warn({ object: stray.shard, cluster: stray.clusterId }, 'a lease record is in an object where the layout does not put it: its cluster is not leased until it is removed');
    }
    this.viewSets.set(version, { views: set, merged });
    for (const old of this.viewSets.keys()) {
      if (this.viewSets.size <= 16) break;
      this.viewSets.delete(old);
    }
    this.latest = { table: merged.table, version };
    return this.latest;
  }

  private async snapshot(): Promise<Snapshot> {
    return this.snapshotOf(await this.ensure());
  }

  // ---- the LeaseStore contract -------------------------------------------------------------

  /**
   * Every object, read now. While records move, a record is copied into its new shard before it
   * leaves the old one, so the old shards are read first and the new ones after them: a record
   * the read misses in an old shard, it finds in the new. An object fenced by a newer layout
   * than shard 0 showed means the layout changed under the read: it starts again.
   */
  async read(): Promise<Snapshot> {
    for (let round = 0; ; round++) {
      if (round > 8) throw new TransientStoreError('the lease layout kept changing while its objects were read');
      await this.refresh(this.service);
      const layout = this.layout() as Layout;
      const names = this.layoutNames(layout).filter((name) => name !== this.service);
      const moving = layout.from !== undefined;
      const old = moving ? names.filter((name) => this.kindOf(name).kind === 'clusters' && this.kindOf(name).index < (layout.from as number)) : [];
      const rest = names.filter((name) => !old.includes(name));
      const oldViews = await Promise.all(old.map((name) => this.refresh(name)));
      await this.readAfter(oldViews, () => Promise.all(rest.map((name) => this.refresh(name))));
      if (this.fencedPast(layout, names)) continue;
      return this.snapshot();
    }
  }

  /**
   * Reads `then` after the old shards as `oldViews` show them; should the watch bring a newer
   * old shard meanwhile (a record may have left it since), `then` is read again.
   */
  private async readAfter(oldViews: readonly ShardView[], then: () => Promise<unknown>): Promise<void> {
    for (let round = 0; ; round++) {
      const seen = oldViews.map((view) => this.views.get(view.name)?.version);
      await then();
      if (oldViews.every((view, index) => this.views.get(view.name)?.version === seen[index])) return;
      if (round >= 8) throw new TransientStoreError('records kept moving while the lease table was read');
    }
  }

  /** Whether one of the objects carries the fence of a newer layout than `layout`. */
  private fencedPast(layout: Layout, names: readonly string[]): boolean {
    return [this.service, ...names].some((name) => (this.views.get(name)?.epoch ?? 0) > layout.epoch);
  }

  /** The records of these clusters read now (the other objects as the watch shows them). */
  async readFor(clusterIds: readonly string[]): Promise<Snapshot> {
    const set = await this.ensure();
    const { layout } = set;
    const old = new Set<string>();
    const home = new Set<string>();
    for (const clusterId of clusterIds) {
      const at = homeOf(clusterId, layout.shards);
      home.add(shardName(this.service, 'clusters', at));
      if (layout.from !== undefined && homeOf(clusterId, layout.from) !== at) old.add(shardName(this.service, 'clusters', homeOf(clusterId, layout.from)));
    }
    const oldViews = await Promise.all([...old].map((name) => this.refresh(name)));
    await this.readAfter(oldViews, () => Promise.all([...home].filter((name) => !old.has(name)).map((name) => this.refresh(name))));
    // A shard fenced by a layout this replica has not seen yet: records may have moved; read all.
    if (this.fencedPast(layout, [...old, ...home]) || !sameLayout(this.layout(), layout)) return this.read();
    return this.snapshot();
  }

  private preferred?: { layout: Layout; turn: number; rank: (clusterId: string) => number };
  /** Bumped when this replica lost a compare-and-swap to another: it then prefers other shards. */
  private turn = 0;
  private turnedAt = 0;

  /**
   * Shards in an order of this replica's own (starting at one its name and its turn hash to),
   * and clusters by their shard's place in it. A replica that loses a write to another moves on
   * to other shards, at most every 200 ms, so that two replicas never keep meeting on one.
   */
  preference(): ((clusterId: string) => number) | undefined {
    const layout = this.views.get(this.service)?.layout;
    if (!layout || layout.shards <= 1) return undefined;
    if (!this.preferred || this.preferred.turn !== this.turn || !sameLayout(this.preferred.layout, layout)) {
      const { shards } = layout;
      const start = homeOf(`replica:${this.options.replica ?? ''}:${this.turn}`, shards);
      this.preferred = { layout, turn: this.turn, rank: (clusterId) => (homeOf(clusterId, shards) - start + shards) % shards };
    }
    return this.preferred.rank;
  }

  private lostToAnother(): void {
    const now = performance.now();
    if (now - this.turnedAt < 200) return;
    this.turnedAt = now;
    this.turn += 1;
  }

  groupByObject(clusterIds: readonly string[]): string[][] {
    const set = this.viewSet();
    if (!set) return [[...clusterIds]];
    const groups = new Map<number, string[]>();
    for (const clusterId of clusterIds) {
      const shard = clusterShard(clusterId, set);
      const group = groups.get(shard);
      if (group) group.push(clusterId);
      else groups.set(shard, [clusterId]);
    }
    return [...groups.values()];
  }

  async write(next: LeaseTable, base: Snapshot): Promise<Snapshot> {
    const { outcomes, snapshot } = await this.commit(base, [{ changes: tableChanges(base.table, next), table: next }]);
    const outcome = outcomes[0];
    if (outcome.kind === 'written') return snapshot ?? this.snapshot();
    if (outcome.kind === 'conflict') throw new VersionConflictError();
    if (outcome.kind === 'full') throw new StoreFullError();
    throw outcome.error;
  }

  async commit(base: Snapshot, steps: readonly CommitStep[]): Promise<CommitResult> {
    const known = this.viewSets.get(base.version);
    const conflictAll = async (): Promise<CommitResult> => ({ outcomes: steps.map(() => CONFLICT), snapshot: await this.snapshot() });
    // A table this replica no longer knows the objects of: decided again on the current one.
    if (!known) return conflictAll();
    const { views, merged } = known;
    // A layout changed since, or an object fenced by a newer layout than the one decided on: decide again.
    if (!sameLayout(this.layout(), views.layout)) return conflictAll();
    if ([...views.clusters, ...views.tickets].some((view) => view && view.epoch > views.layout.epoch)) {
      await this.refresh(this.service);
      return conflictAll();
    }
    const final = steps[steps.length - 1].table;
    const outcomes: Array<StepOutcome | undefined> = steps.map(() => undefined);
    /** Per object: the annotations to send, and their size after, across the batch. */
    const running = new Map<string, { bytes: number; values: Map<string, string | null> }>();
    /** Objects where a step did not fit: the later steps there are decided again. */
    const blocked = new Set<string>();
    const parts: Array<{ commit: Map<string, Array<[string, string | null]>>; follow: Map<string, Array<[string, string | null]>> }> = [];
    steps.forEach((step, index) => {
      const placement = placeChanges(step.changes, views, merged, this.service);
      const commit = new Map<string, Array<[string, string | null]>>();
      const follow = new Map<string, Array<[string, string | null]>>();
      parts[index] = { commit, follow };
      if (placement.byShard.size === 0) {
        outcomes[index] = WRITTEN;
        return;
      }
      if ([...placement.byShard.keys()].some((shard) => blocked.has(shard))) {
        outcomes[index] = CONFLICT;
        return;
      }
      const sizes = new Map<string, number>();
      let tooBig: { shard: string; bytes: number } | undefined;
      for (const [shard, changes] of placement.byShard) {
        const view = this.viewOf(views, shard);
        const entries = withCopies(view, changes, final)
          .map(annotationOf)
          .filter((entry): entry is [string, string | null] => entry !== undefined);
        (placement.commitShards.includes(shard) ? commit : follow).set(shard, entries);
        const state = running.get(shard);
        let bytes = state?.bytes ?? view.bytes;
        for (const [key, value] of entries) {
          const before = state?.values.has(key) ? state.values.get(key) : view.annotations[key];
          if (before !== undefined && before !== null) bytes -= Buffer.byteLength(key) + Buffer.byteLength(before);
          if (value !== null) bytes += Buffer.byteLength(key) + Buffer.byteLength(value);
        }
        sizes.set(shard, bytes);
        if (bytes > RECORDS_LIMIT_BYTES && bytes > (state?.bytes ?? view.bytes)) tooBig = { shard, bytes };
      }
      if (tooBig) {
        this.options.logger.warn(
          { object: this.object(tooBig.shard).where, bytes: tooBig.bytes, limit: RECORDS_LIMIT_BYTES, shards: views.layout.shards, max_shards: this.options.maxShards ?? 1 },
          "the lease records would pass Kubernetes' 256 KiB annotation limit on this object; the request is refused (503) and nothing changes (more shards: LEASE_SHARDS)",
        );
        outcomes[index] = { kind: 'full' };
        for (const shard of placement.byShard.keys()) blocked.add(shard);
        return;
      }
      for (const [shard, changes] of [...commit, ...follow]) {
        let state = running.get(shard);
        if (!state) {
          state = { bytes: 0, values: new Map() };
          running.set(shard, state);
        }
        state.bytes = sizes.get(shard) as number;
        for (const [key, value] of changes) state.values.set(key, value);
      }
    });

    // A full object and room to grow: grow now, and decide everything again on the new layout.
    if (outcomes.some((outcome) => outcome?.kind === 'full') && this.keeper.canGrow(views.layout)) {
      await this.keeper.kick();
      await this.refresh(this.service).catch(() => undefined);
      if (!sameLayout(this.layout(), views.layout)) return conflictAll();
    }
    // The objects that decide each step, all at once; then what written steps change besides.
    const phase = async (pick: (index: number) => Map<string, Array<[string, string | null]>> | undefined, baseOf: (shard: string) => string) => {
      const groups = new Map<string, Record<string, string | null>>();
      steps.forEach((_step, index) => {
        for (const [shard, entries] of pick(index) ?? []) {
          let group = groups.get(shard);
          if (!group) {
            group = {};
            groups.set(shard, group);
          }
          for (const [key, value] of entries) group[key] = value;
        }
      });
      const results = new Map<string, ShardResult>();
      await Promise.all(
        [...groups].map(async ([shard, changes]) => {
          const version = baseOf(shard);
          // The watch already brought a newer version: the compare-and-swap would lose; spare the apiserver.
          if (this.views.get(shard)?.version !== version) {
            this.lostToAnother();
            results.set(shard, 'conflict');
          }
          else results.set(shard, await this.writeShard(shard, version, changes));
        }),
      );
      return results;
    };
    const first = await phase((index) => (outcomes[index] ? undefined : parts[index].commit), (shard) => this.viewOf(views, shard).version);
    steps.forEach((_step, index) => {
      if (outcomes[index]) return;
      const results = [...parts[index].commit.keys()].map((shard) => first.get(shard) as ShardResult);
      const failed = results.find((result): result is { error: unknown; mayHaveLanded: boolean } => typeof result === 'object');
      if (results.every((result) => result === 'written')) outcomes[index] = WRITTEN;
      else if (results.includes('full')) outcomes[index] = { kind: 'full' };
      else if (failed && !results.includes('conflict')) outcomes[index] = { kind: 'failed', error: failed.error, mayHaveLanded: failed.mayHaveLanded || results.includes('written') };
      else outcomes[index] = CONFLICT;
    });
    const strayTickets: string[] = [];
    const written = (index: number) => outcomes[index]?.kind === 'written' && parts[index].follow.size > 0;
    if (steps.some((_step, index) => written(index))) {
      // On the object as it is now: what follows a grant is the removal of its own ticket and
      // this replica's own heartbeat, keys no other decision writes (filters and other
      // replicas' heartbeats go only by the reaper, one object at a time, with no follow-up).
      const second = await phase((index) => (written(index) ? parts[index].follow : undefined), (shard) => (this.views.get(shard) as ShardView).version);
      steps.forEach((step, index) => {
        if (!written(index)) return;
        for (const shard of parts[index].follow.keys()) {
          if (second.get(shard) === 'written') continue;
          for (const change of step.changes) if (change.section === 'waiters' && change.value === undefined) strayTickets.push(change.key);
        }
      });
    }
    return { outcomes: outcomes as StepOutcome[], snapshot: await this.snapshot(), ...(strayTickets.length > 0 && { strayTickets }) };
  }

  private viewOf(views: ViewSet, shard: string): ShardView {
    const { kind, index } = this.kindOf(shard);
    const view = kind === 'clusters' ? views.clusters[index] : views.tickets[index];
    if (!view) throw new Error(`no view of ${shard}`);
    return view;
  }

  /** One object's compare-and-swap, and what became of it. */
  private async writeShard(shard: string, version: string, changes: Record<string, string | null>): Promise<ShardResult> {
    try {
      await this.patch(shard, changes, version);
      return 'written';
    } catch (error) {
      if (error instanceof VersionConflictError) {
        this.lostToAnother();
        await this.refresh(shard).catch(() => undefined);
        return 'conflict';
      }
      if (error instanceof StoreFullError) return 'full';
      if (!(error instanceof TransientStoreError)) return { error, mayHaveLanded: false };
      // No answer: the write may have landed. A fresh read tells.
      try {
        const view = await this.refresh(shard);
        if (Object.entries(changes).every(([key, value]) => (value === null ? !(key in view.annotations) : view.annotations[key] === value))) return 'written';
      } catch {
        // Still no answer: unclear.
      }
      return { error, mayHaveLanded: true };
    }
  }

  watch(onChange: (snapshot: Snapshot) => void): () => void {
    this.watching = { onChange, stops: new Map(), emitting: false };
    this.watchAll();
    return () => {
      for (const stop of this.watching?.stops.values() ?? []) stop();
      this.watching = undefined;
    };
  }

  /** Watches every object the layout reads (the Service alone until the layout is known). */
  private watchAll(): void {
    const watching = this.watching;
    if (!watching) return;
    const zero = this.views.get(this.service);
    const names = zero?.layout ? this.layoutNames(zero.layout) : [this.service];
    for (const name of names) {
      if (watching.stops.has(name)) continue;
      watching.stops.set(
        name,
        this.object(name).watch((state) => {
          const before = this.views.get(name);
          if (this.absorb(name, state) !== before) this.emit();
        }),
      );
    }
  }

  /** Reports the table once per burst of watch events. */
  private emit(): void {
    const watching = this.watching;
    if (!watching || watching.emitting) return;
    watching.emitting = true;
    setImmediate(() => {
      watching.emitting = false;
      this.snapshot().then(
        (snapshot) => this.watching?.onChange(snapshot),
        (error: unknown) => this.options.logger.debug({ err: error }, 'could not assemble the lease table after a change'),
      );
    });
  }

  /** Whether every object's watch is connected and heard from lately (readiness). */
  watchLive(): boolean {
    const watching = this.watching;
    const layout = this.views.get(this.service)?.layout;
    if (!watching || !layout) return false;
    return this.layoutNames(layout).every((name) => this.objects.get(name)?.watchLive() ?? false);
  }

  /** How full each object is. */
  usage(): StoreUsage[] {
    const layout = this.views.get(this.service)?.layout ?? { shards: 1, tickets: 0 };
    return this.layoutNames(layout as Layout).flatMap((name) => {
      const view = this.views.get(name);
      return view ? [{ object: name, usedBytes: view.bytes, limitBytes: ANNOTATIONS_LIMIT_BYTES }] : [];
    });
  }

  /** The keeper, on a timer: adds shards when the pool or the records need them. */
  maintain(): () => void {
    return this.keeper.start(this.options.keeperIntervalMs ?? 5_000);
  }
}

/**
 * The clusters whose records differ between two view sets of one layout, when nothing else of
 * the table does (no records move, the ticket shards are the same, shard 0 holds no tickets or
 * original records); otherwise undefined.
 */
function changedClusters(before: ViewSet, after: ViewSet): string[] | undefined {
  if (!sameLayout(before.layout, after.layout) || after.layout.from !== undefined) return undefined;
  if (after.tickets.some((view, index) => view !== before.tickets[index])) return undefined;
  const quiet = (view: ShardView | undefined) => {
    const table = view?.table;
    return table !== undefined && isEmpty(table.legacy) && isEmpty(table.waiters) && isEmpty(table.replicas) && isEmpty(table.filters);
  };
  if (before.clusters[0] !== after.clusters[0] && !(quiet(before.clusters[0]) && quiet(after.clusters[0]))) return undefined;
  const changed: string[] = [];
  after.clusters.forEach((view, index) => {
    const old = before.clusters[index];
    if (!view || !old || view === old) return;
    for (const clusterId in view.table.clusters) if (old.table.clusters[clusterId] !== view.table.clusters[clusterId]) changed.push(clusterId);
    for (const clusterId in old.table.clusters) if (!(clusterId in view.table.clusters)) changed.push(clusterId);
  });
  return changed;
}

function isEmpty(records: object): boolean {
  for (const _key in records) return false;
  return true;
}

function sameLayout(a: Layout | undefined, b: Layout | undefined): boolean {
  return a?.epoch === b?.epoch && a?.shards === b?.shards && a?.tickets === b?.tickets && a?.from === b?.from;
}
