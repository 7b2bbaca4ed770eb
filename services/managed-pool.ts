// Managed pools: a pool that makes its own GKE clusters from a template. This file is the
// decision core only: the settings, the schedule, and a planner that looks at the pool's
// clusters and the requests waiting for them and says what to start next. No I/O, no clock
// and no randomness of its own (the time and the name suffixes are handed in), so every rule
// is a plain table test; the caller carries the actions out and reports back.
//
//   managed:
//     template: { nodePools: [{ name: default, initialNodeCount: 1, config: { machineType: e2-standard-4 } }] }
//     name_prefix: ci-             # default: "<pool name>-"
//     min_ready: 2                 # free clusters kept ready (hibernated ones count: see below)
//     max_size: 10                 # clusters in all, whatever their state
//     max_concurrent: 3            # create/delete/resize operations at once
//     recycle_after: 20            # leases; then the cluster is deleted and replaced
//     hibernate_after: 30m         # idle free clusters' node pools are scaled to zero
//     running_min: 1               # free clusters never hibernated
//     schedule:
//       - { cron: "0 8 * * 1-5", min_ready: 4, running_min: 2 }
//       - { cron: "0 20 * * 1-5", min_ready: 1 }
//       - { cron: "0 0 * * 6", min_ready: 0, running_min: 0 }
//
// The rules the planner follows, in the order it spends its operation budget:
//
//  - Limits. Clusters in all (every state, provisioning and deleting ones too) never exceed
//    max_size: a create needs room now, and a cluster being deleted holds its place until it
//    is gone. Operations in flight (clusters with an `operation`, or provisioning, waking or
//    deleting) plus the actions returned never exceed max_concurrent. Only free, hibernated
//    and error clusters are ever acted on, never one with an operation in flight or whose
//    `retryAt` has not come; leased, dirty and cleaning clusters never.
//  - Counting. *Warm*: free clusters and those becoming free (provisioning, waking).
//    *Cold*: hibernated ones (and free ones being hibernated). The *stock* is warm + cold: a
//    hibernated cluster is ready after a wake, so it counts toward min_ready, and running_min
//    says how much of the stock stays warm. A cluster due for recycling, or being deleted, is
//    in neither. With W requests waiting, the pool wants W + max(min_ready, running_min) in
//    stock (the waiters take W of them) and W + running_min warm.
//  1. Demand. Waiters beyond the warm clusters wake cold ones first (a wake is faster than a
//     create), then create.
//  2. Clean-up. An error cluster (a create that failed) is deleted (reason `error`); a free or
//     hibernated cluster with leases >= recycle_after is deleted (`recycle`). Rule 4 replaces
//     them: in the same plan where max_size leaves room, else once they are gone. A cluster
//     due for recycling is no longer supply: the lease side should not lease it (`recycleDue`).
//  3. running_min. Too few warm: wake cold ones.
//  4. min_ready. Too little stock: create.
//  5. Idle clusters. The stock is ranked for keeping: becoming warm, then free (most recently
//     idle first), then cold (most recently idle first). Those ranked beyond the wanted stock
//     are surplus and are deleted once idle hibernate_after (at once without hibernate_after);
//     so a burst's extra clusters go again, and so do those a lowered schedule target leaves
//     over, while waiters always keep theirs (W is in the target). Kept free clusters beyond
//     W + running_min are hibernated once idle hibernate_after, the longest idle first. A
//     cluster whose idleSince is unknown is never taken for idle.
//  Within a rule, clusters are taken in a fixed order (ties by name), so the same input gives
//  the same actions whatever the order of `clusters`.

import { Cron } from 'croner';
import * as v from 'valibot';

// ---- settings ------------------------------------------------------------------------------

/** GKE's limit on a cluster's name. */
export const MAX_CLUSTER_NAME = 40;
/** Letters and digits the caller's `suffix()` adds to the prefix; the prefix leaves room for them. */
export const SUFFIX_LENGTH = 6;
const MAX_PREFIX = MAX_CLUSTER_NAME - SUFFIX_LENGTH;
const PREFIX = /^[a-z][-a-z0-9]*$/;
const SUFFIX = /^[a-z0-9]+$/;

const count = (min: number) =>
  v.pipe(v.number(`must be a whole number, ${min} or more`), v.integer(`must be a whole number, ${min} or more`), v.minValue(min, `must be a whole number, ${min} or more`));

const UNIT_SECONDS: Readonly<Record<string, number>> = { s: 1, m: 60, h: 3_600, d: 86_400 };
const MAX_DURATION = 365 * 86_400;
const DURATION_MESSAGE = 'must be seconds or a duration such as 90s, 30m, 2h or 1d (at most 365d)';

/** Seconds from a number of seconds or a text such as `30m`; NaN when it is neither. */
export function durationSeconds(value: number | string): number {
  if (typeof value === 'number') return value;
  const match = /^\s*(\d{1,9})\s*([smhd]?)\s*$/.exec(value);
  return match ? Number(match[1]) * UNIT_SECONDS[match[2] || 's'] : Number.NaN;
}

const Duration = v.pipe(
  v.union([v.number(), v.string()], DURATION_MESSAGE),
  v.transform(durationSeconds),
  v.check((seconds) => Number.isInteger(seconds) && seconds >= 1 && seconds <= MAX_DURATION, DURATION_MESSAGE),
);

/** A cron line croner can read: 5 fields (minute first), 6 (seconds first) or 7 (and a year); or @daily and the like. */
function cronProblem(pattern: string): string | undefined {
  try {
    const cron = new Cron(pattern, { paused: true });
    if (cron.getOnce() !== null) return 'must be a cron line, not a date';
    return undefined;
  } catch (error) {
    return `must be a cron line (${(error as Error).message})`;
  }
}

const CronLine = v.pipe(
  v.string('must be a cron line such as "0 18 * * 1-5"'),
  v.rawCheck(({ dataset, addIssue }) => {
    const problem = dataset.typed ? cronProblem(dataset.value) : undefined;
    if (problem) addIssue({ message: problem });
  }),
);

/** Unknown keys are named as such: a typo is the usual cause. */
const strictMessage = (unknownKey: string, notObject: string) => (issue: v.BaseIssue<unknown>) => (issue.expected === 'never' ? unknownKey : notObject);

const ScheduleLine = v.pipe(
  v.strictObject({ cron: CronLine, min_ready: v.optional(count(0)), running_min: v.optional(count(0)) }, strictMessage('is not a schedule setting (cron, min_ready, running_min)', 'must be {cron, min_ready, running_min}')),
  v.check((line) => line.min_ready !== undefined || line.running_min !== undefined, 'must set min_ready or running_min'),
);

const Template = v.pipe(
  v.looseObject(
    {
      name: v.optional(v.never('must not be set: the pool names its clusters (name_prefix)')),
      nodePools: v.optional(v.pipe(v.array(v.looseObject({}, 'must be a node pool (an object)'), 'must be a list of node pools'), v.minLength(1, 'must list at least one node pool'))),
      initialNodeCount: v.optional(count(1)),
    },
    "must be an object: GKE's Cluster, as createCluster takes it",
  ),
  v.check((template) => (template.nodePools !== undefined) !== (template.initialNodeCount !== undefined), 'must set nodePools or initialNodeCount (one of them)'),
);

type PathItem = v.IssuePathItem;
const at = (input: Record<string, unknown>, key: string): PathItem => ({ type: 'object', origin: 'value', input, key, value: input[key] });

/**
 * The `managed` settings of a pool, as the pools file says them. `name_prefix` stays unset
 * when not given: `resolveManaged` fills in the pool's name.
 */
export const ManagedSchema = v.pipe(
  v.strictObject({
    template: Template,
    name_prefix: v.optional(
      v.pipe(
        v.string(),
        v.regex(PREFIX, 'must start with a lower-case letter and hold only lower-case letters, digits and dashes'),
        v.maxLength(MAX_PREFIX, `must be at most ${MAX_PREFIX} characters, so that a ${SUFFIX_LENGTH}-character suffix fits GKE's ${MAX_CLUSTER_NAME}`),
      ),
    ),
    min_ready: count(0),
    max_size: count(1),
    max_concurrent: v.optional(count(1), 3),
    recycle_after: v.optional(count(1)),
    hibernate_after: v.optional(Duration),
    running_min: v.optional(count(0), 0),
    schedule: v.optional(v.array(ScheduleLine, 'must be a list of {cron, min_ready, running_min}'), []),
  }, strictMessage('is not a managed setting', 'must be an object of managed settings')),
  // Across fields: each issue names the field to change.
  v.rawCheck(({ dataset, addIssue }) => {
    if (!dataset.typed) return;
    const settings = dataset.value as unknown as Record<string, unknown> & { max_size: number; min_ready: number; running_min: number; schedule: Array<Record<string, unknown>> };
    const most = settings.max_size;
    if (settings.min_ready > most) addIssue({ message: `must be at least min_ready (${settings.min_ready})`, path: [at(settings, 'max_size')] });
    if (settings.running_min > most) addIssue({ message: `must be at most max_size (${most})`, path: [at(settings, 'running_min')] });
    settings.schedule.forEach((line, index) => {
      for (const field of ['min_ready', 'running_min'] as const) {
        const value = line[field];
        if (typeof value === 'number' && value > most) {
          const item: PathItem = { type: 'array', origin: 'value', input: settings.schedule, key: index, value: line };
          addIssue({ message: `must be at most max_size (${most})`, path: [at(settings, 'schedule'), item, at(line, field)] });
        }
      }
    });
  }),
);

export type ManagedInput = v.InferInput<typeof ManagedSchema>;
export type ManagedOutput = v.InferOutput<typeof ManagedSchema>;
export type ScheduleEntry = ManagedOutput['schedule'][number];
/** The settings the planner takes: the schema's output with the name prefix decided. */
export type ManagedSettings = ManagedOutput & { name_prefix: string };

export class ManagedSettingsError extends Error {
  override readonly name = 'ManagedSettingsError';
}

/** `schedule[1].cron: must be a cron line (…)`: where, then what. */
export function describeIssue(issue: v.BaseIssue<unknown>, prefix = ''): string {
  let where = prefix;
  for (const item of issue.path ?? []) {
    const key = item.key as string | number;
    where += typeof key === 'number' ? `[${key}]` : where === '' ? key : `.${key}`;
  }
  return `${where || '(top)'}: ${issue.message}`;
}

/** The name prefix decided: the settings' own, else `<pool>-`, which must then make valid names too. */
export function resolveManaged(poolName: string, settings: ManagedOutput): ManagedSettings {
  const prefix = settings.name_prefix ?? `${poolName}-`;
  if (settings.name_prefix === undefined && (!PREFIX.test(prefix) || prefix.length > MAX_PREFIX)) {
    throw new ManagedSettingsError(
      `managed settings of pool ${poolName} are invalid: name_prefix: the default "${prefix}" (the pool's name and a dash) does not make GKE cluster names (a lower-case letter first, at most ${MAX_PREFIX} characters); set name_prefix`,
    );
  }
  return { ...settings, name_prefix: prefix };
}

/** A pool's `managed` settings, validated; a ManagedSettingsError names the field. */
export function parseManaged(poolName: string, input: unknown): ManagedSettings {
  const parsed = v.safeParse(ManagedSchema, input);
  if (!parsed.success) {
    const shown = parsed.issues.slice(0, 5).map((issue) => describeIssue(issue));
    if (parsed.issues.length > shown.length) shown.push(`and ${parsed.issues.length - shown.length} more`);
    throw new ManagedSettingsError(`managed settings of pool ${poolName} are invalid: ${shown.join('; ')}`);
  }
  return resolveManaged(poolName, parsed.output);
}

// ---- the schedule --------------------------------------------------------------------------

export interface Targets {
  minReady: number;
  runningMin: number;
}

/** Each line's Cron, per time zone: built once, not at every plan. */
const crons = new WeakMap<ScheduleEntry, Map<string, Cron>>();

function cronOf(line: ScheduleEntry, timeZone: string | undefined): Cron {
  let byZone = crons.get(line);
  if (!byZone) crons.set(line, (byZone = new Map()));
  const zone = timeZone ?? '';
  let cron = byZone.get(zone);
  if (!cron) byZone.set(zone, (cron = new Cron(line.cron, { paused: true, ...(timeZone && { timezone: timeZone }) })));
  return cron;
}

/** When the line last fired at or before `now` (ms), or undefined when it never has. */
export function lastFiring(line: ScheduleEntry, now: number, timeZone?: string): number | undefined {
  // previousRuns excludes a run at the reference itself: one millisecond later includes it.
  const [run] = cronOf(line, timeZone).previousRuns(1, new Date(now + 1));
  return run?.getTime();
}

/**
 * min_ready and running_min at `now`: those of the schedule line that fired most recently
 * (of two that fired at the same moment, the later in the list), each value the line leaves
 * out taken from the base settings; with no line fired yet, the base settings. Cron lines are
 * read in `timeZone` (an IANA name), else in the process's own.
 */
export function effectiveTargets(settings: Pick<ManagedOutput, 'min_ready' | 'running_min' | 'schedule'>, now: number, timeZone?: string): Targets {
  let latest: { at: number; line: ScheduleEntry } | undefined;
  for (const line of settings.schedule) {
    const at = lastFiring(line, now, timeZone);
    if (at !== undefined && (!latest || at >= latest.at)) latest = { at, line };
  }
  return {
    minReady: latest?.line.min_ready ?? settings.min_ready,
    runningMin: latest?.line.running_min ?? settings.running_min,
  };
}

// ---- the planner ---------------------------------------------------------------------------

export type ManagedState = 'provisioning' | 'free' | 'leased' | 'dirty' | 'cleaning' | 'hibernated' | 'waking' | 'deleting' | 'error';

export interface ManagedCluster {
  name: string;
  state: ManagedState;
  /** Leases so far. */
  leases: number;
  /** When it last became free (ms); unknown: never taken for idle. */
  idleSince?: number;
  /** The operation in flight on it, if any. */
  operation?: { kind: 'create' | 'delete' | 'resize'; startedAt: number };
  /** Failed attempts in a row (see retryBackoffMs), and no action before `retryAt`. */
  failures?: number;
  retryAt?: number;
}

export interface PoolView {
  settings: ManagedSettings;
  now: number;
  clusters: readonly ManagedCluster[];
  /** Requests waiting that this pool could serve. */
  waiting: number;
  /** How long the pool's recent creates and wakes took. */
  recentDurations?: { createMs?: number; wakeMs?: number };
  /** The schedule's time zone (IANA); unset: the process's. */
  timeZone?: string;
}

export interface PlanInput extends PoolView {
  /** A fresh suffix for a new cluster's name: lower-case letters and digits (SUFFIX_LENGTH of them). */
  suffix: () => string;
}

export type Action =
  | { kind: 'create'; name: string }
  | { kind: 'delete'; name: string; reason: 'recycle' | 'surplus' | 'error' }
  | { kind: 'hibernate'; name: string }
  | { kind: 'wake'; name: string };

/** When a failed operation on a cluster is tried again: 30 s, doubling, at most 30 min. */
export function retryBackoffMs(failures: number): number {
  return Math.min(1_800_000, 30_000 * 2 ** Math.max(0, failures - 1));
}

/** Busy with an operation of its own: counts against max_concurrent, and nothing else is started on it. */
export function inOperation(cluster: ManagedCluster): boolean {
  return cluster.operation !== undefined || cluster.state === 'provisioning' || cluster.state === 'waking' || cluster.state === 'deleting';
}

const byName = (a: ManagedCluster, b: ManagedCluster) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
/** Most recently idle first; an unknown idleSince counts as most recent. */
const recentFirst = (a: ManagedCluster, b: ManagedCluster) => (b.idleSince ?? Infinity) - (a.idleSince ?? Infinity) || byName(a, b);
const longestIdleFirst = (a: ManagedCluster, b: ManagedCluster) => (a.idleSince ?? Infinity) - (b.idleSince ?? Infinity) || byName(a, b);

interface Counted {
  /** Free and idle now, not due for recycling: what a lease could take, and what may hibernate. */
  free: ManagedCluster[];
  /** Provisioning or waking: warm soon. */
  coming: ManagedCluster[];
  /** Hibernated or being hibernated. */
  cold: ManagedCluster[];
  recycleDue: ManagedCluster[];
  errored: ManagedCluster[];
}

/** Free or hibernated with recycle_after leases behind it: to be deleted, not leased again. */
export function recycleDue(settings: Pick<ManagedOutput, 'recycle_after'>, cluster: ManagedCluster): boolean {
  return (cluster.state === 'free' || cluster.state === 'hibernated') && settings.recycle_after !== undefined && cluster.leases >= settings.recycle_after;
}

function classify(settings: ManagedSettings, clusters: readonly ManagedCluster[]): Counted {
  const counted: Counted = { free: [], coming: [], cold: [], recycleDue: [], errored: [] };
  for (const cluster of clusters) {
    const { state, operation } = cluster;
    if (operation?.kind === 'delete') continue;
    if (state === 'error') counted.errored.push(cluster);
    else if (state === 'free' || state === 'hibernated') {
      if (recycleDue(settings, cluster)) counted.recycleDue.push(cluster);
      // A resize on a free cluster is a hibernation under way; on a hibernated one, a wake.
      else if (state === 'free') (operation ? counted.cold : counted.free).push(cluster);
      else (operation ? counted.coming : counted.cold).push(cluster);
    } else if (state === 'provisioning' || state === 'waking') counted.coming.push(cluster);
  }
  for (const list of [counted.free, counted.coming, counted.cold]) list.sort(recentFirst);
  counted.recycleDue.sort(byName);
  counted.errored.sort(byName);
  return counted;
}

/** What the pool should start now, at most max_concurrent less the operations in flight. */
export function plan(input: PlanInput): Action[] {
  const { settings, now } = input;
  const clusters = [...input.clusters].sort(byName);
  const { minReady, runningMin } = effectiveTargets(settings, now, input.timeZone);
  const waiting = Math.max(0, Math.floor(input.waiting) || 0);
  const wantedStock = waiting + Math.max(minReady, runningMin);
  const wantedWarm = waiting + runningMin;
  const hibernateAfterMs = settings.hibernate_after === undefined ? undefined : settings.hibernate_after * 1000;

  let budget = Math.max(0, settings.max_concurrent - clusters.filter(inOperation).length);
  let room = Math.max(0, settings.max_size - clusters.length);
  const actions: Action[] = [];
  const touched = new Set<string>();
  const names = new Set(clusters.map((cluster) => cluster.name));
  const actionable = (cluster: ManagedCluster) =>
    !touched.has(cluster.name) && !inOperation(cluster) && !(cluster.retryAt !== undefined && now < cluster.retryAt);
  const act = (action: Action) => {
    actions.push(action);
    touched.add(action.name);
    budget -= 1;
  };

  const { free, coming, cold, recycleDue, errored } = classify(settings, clusters);
  let warm = free.length + coming.length;
  let stock = warm + cold.length;

  const wake = (wanted: number) => {
    for (const cluster of cold) {
      if (wanted <= 0 || budget <= 0) return;
      if (cluster.state !== 'hibernated' || !actionable(cluster)) continue;
      act({ kind: 'wake', name: cluster.name });
      warm += 1;
      wanted -= 1;
    }
  };
  const create = (wanted: number) => {
    for (; wanted > 0 && budget > 0 && room > 0; wanted--) {
      const name = freshName(settings.name_prefix, input.suffix, names);
      if (name === undefined) return;
      act({ kind: 'create', name });
      names.add(name);
      room -= 1;
      warm += 1;
      stock += 1;
    }
  };

  // 1. Demand: wake, then create.
  wake(waiting - warm);
  create(waiting - warm);
  // 2. Clean-up: failed creates, then worn-out clusters.
  for (const cluster of errored) if (budget > 0 && actionable(cluster)) act({ kind: 'delete', name: cluster.name, reason: 'error' });
  for (const cluster of recycleDue) if (budget > 0 && actionable(cluster)) act({ kind: 'delete', name: cluster.name, reason: 'recycle' });
  // 3. running_min, 4. min_ready.
  wake(wantedWarm - warm);
  create(wantedStock - stock);

  // 5. Idle clusters: beyond the wanted stock, surplus; kept free ones beyond wantedWarm, hibernated.
  const idleEnough = (cluster: ManagedCluster) => cluster.idleSince !== undefined && now - cluster.idleSince >= (hibernateAfterMs ?? 0);
  const ranked = [...coming, ...free, ...cold];
  const surplus = ranked.slice(wantedStock);
  for (const cluster of surplus) {
    if (budget <= 0) break;
    if ((hibernateAfterMs === undefined || idleEnough(cluster)) && actionable(cluster)) act({ kind: 'delete', name: cluster.name, reason: 'surplus' });
  }
  if (hibernateAfterMs !== undefined) {
    const keptFree = ranked.slice(0, wantedStock).filter((cluster) => free.includes(cluster));
    let spare = keptFree.length - wantedWarm;
    for (const cluster of [...keptFree].sort(longestIdleFirst)) {
      if (spare <= 0 || budget <= 0) break;
      if (idleEnough(cluster) && actionable(cluster)) {
        act({ kind: 'hibernate', name: cluster.name });
        spare -= 1;
      }
    }
  }
  return actions;
}

/** prefix + suffix(), checked, and not the name of a cluster the pool has; undefined after a few clashes. */
function freshName(prefix: string, suffix: () => string, taken: ReadonlySet<string>): string | undefined {
  for (let attempt = 0; attempt < 8; attempt++) {
    const tail = suffix();
    if (!SUFFIX.test(tail) || prefix.length + tail.length > MAX_CLUSTER_NAME) {
      throw new Error(`suffix() gave "${tail}": it must be lower-case letters and digits, at most ${MAX_CLUSTER_NAME - prefix.length} of them`);
    }
    const name = prefix + tail;
    if (!taken.has(name)) return name;
  }
  return undefined;
}

/** A random suffix for production: SUFFIX_LENGTH lower-case letters and digits. */
export function randomSuffix(): string {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789';
  return Array.from(crypto.getRandomValues(new Uint8Array(SUFFIX_LENGTH)), (byte) => alphabet[byte % alphabet.length]).join('');
}

// ---- Retry-After ---------------------------------------------------------------------------

/** What a create or a wake takes when the pool has not timed one yet (a GKE cluster: minutes). */
export const DEFAULT_CREATE_MS = 6 * 60_000;
export const DEFAULT_WAKE_MS = 2 * 60_000;
/** When nothing is on its way and nothing can be started: the pool is full and busy. */
export const BUSY_RETRY_SECONDS = 60;

/**
 * For a request that would not wait and found nothing free (a 409's Retry-After): the
 * seconds until a cluster is likely ready: the soonest of a wake or a create under way
 * (its recent duration less the time it has run), a wake of a hibernated cluster, or a
 * create where the pool has room. A likely time, not a promise: waiters come first.
 */
export function retryAfterSeconds(view: PoolView): number {
  const createMs = view.recentDurations?.createMs ?? DEFAULT_CREATE_MS;
  const wakeMs = view.recentDurations?.wakeMs ?? DEFAULT_WAKE_MS;
  const { coming, cold } = classify(view.settings, view.clusters);
  const candidates: number[] = [];
  for (const cluster of coming) {
    const took = cluster.state === 'provisioning' ? createMs : wakeMs;
    candidates.push(took - (cluster.operation ? Math.max(0, view.now - cluster.operation.startedAt) : 0));
  }
  if (cold.some((cluster) => cluster.state === 'hibernated')) candidates.push(wakeMs);
  if (view.clusters.length < view.settings.max_size) candidates.push(createMs);
  if (candidates.length === 0) return BUSY_RETRY_SECONDS;
  return Math.min(3_600, Math.max(1, Math.ceil(Math.min(...candidates) / 1000)));
}
