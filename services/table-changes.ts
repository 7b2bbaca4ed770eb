// What one decision changed in the lease table, record by record: what a store split over
// several objects needs, so that each decision's changes go to the objects that hold them and
// each decision gets the answer of those objects' writes. Tables are immutable, so a change
// is a record whose object differs between the table before and the table after. With
// thousands of records, comparing every key after every decision of a burst would cost more
// than the decisions; the helpers here record, as a map is derived from its parent, which keys
// differ, and `tableChanges` follows that record instead of scanning.

import type { LeaseTable } from './lease-table.ts';

export const SECTIONS = ['clusters', 'legacy', 'waiters', 'filters', 'replicas'] as const;
export type Section = (typeof SECTIONS)[number];

/** One record set (a value) or removed (undefined) by a decision. */
export interface TableChange {
  section: Section;
  key: string;
  value: unknown;
}

type Records<T> = Readonly<Record<string, T>>;

/** Each derived map, with its parent and the keys in which they differ. */
const parents = new WeakMap<object, { parent: object; keys: readonly string[] }>();

/**
 * While the write path applies one batch of decisions, each to the table the one before left,
 * no table of the batch but the last is looked at again once the next is made. Copying a map
 * of ten thousand records for every decision would cost more than deciding, so the maps made
 * during a batch are its own, and later decisions of the batch update them in place: the first
 * decision copies, the others write into that copy. Every such write is undone when the
 * decision that made it fails, and remembered as that decision's change.
 */
interface Draft {
  owned: WeakSet<object>;
  /** The current decision's writes into maps of the batch: keys by map, and how to undo them. */
  touched: Map<object, Set<string>>;
  undo: Array<() => void>;
}

let draft: Draft | undefined;

/** Applies a batch of decisions (see Draft): `run` calls `decision` for each. */
export function inDraft<T>(run: (decision: <R>(apply: () => R) => R) => T): T {
  const outer = draft;
  const current: Draft = { owned: new WeakSet(), touched: new Map(), undo: [] };
  draft = current;
  try {
    return run((apply) => {
      current.touched = new Map();
      current.undo = [];
      try {
        return apply();
      } catch (error) {
        for (const undo of current.undo.reverse()) undo();
        current.undo = [];
        throw error;
      }
    });
  } finally {
    draft = outer;
  }
}

/** Undoes the current decision's writes (a decision that ended up changing nothing). */
export function undoDecision(): void {
  if (!draft) return;
  for (const undo of draft.undo.reverse()) undo();
  draft.undo = [];
  draft.touched = new Map();
}

/**
 * A copy of `parent` with `updates` applied (undefined removes), remembered as derived from it.
 * `inBatch`: a map nothing else keys a memo by may be written in place within a batch (Draft).
 */
export function withRecords<T>(parent: Records<T>, updates: Readonly<Record<string, T | undefined>>, inBatch = false): Records<T> {
  const keys = Object.keys(updates);
  if (inBatch && draft?.owned.has(parent)) {
    const map = parent as Record<string, T>;
    let touched = draft.touched.get(map);
    if (!touched) {
      touched = new Set();
      draft.touched.set(map, touched);
    }
    for (const key of keys) {
      const had = Object.hasOwn(map, key);
      const before = map[key];
      draft.undo.push(() => {
        if (had) map[key] = before;
        else delete map[key];
      });
      const value = updates[key];
      if (value === undefined) delete map[key];
      else map[key] = value;
      touched.add(key);
    }
    return map;
  }
  const child: Record<string, T> = { ...parent };
  for (const key of keys) {
    const value = updates[key];
    if (value === undefined) delete child[key];
    else child[key] = value;
  }
  parents.set(child, { parent, keys });
  if (inBatch) draft?.owned.add(child);
  return child;
}

/** Remembers that `child` differs from `parent` only in `keys` (for maps built another way). */
export function derivedFrom<T>(child: Records<T>, parent: Records<T>, keys: readonly string[]): Records<T> {
  parents.set(child, { parent, keys });
  return child;
}

/** A chain of derivations longer than this is not followed: a full comparison is cheaper. */
const MAX_CHAIN = 64;

/** The keys in which `after` differs from `before`, or undefined when no record says. */
function recordedKeys(before: object, after: object): Set<string> | undefined {
  const keys = new Set<string>();
  let current: object = after;
  for (let depth = 0; depth < MAX_CHAIN; depth++) {
    if (current === before) return keys;
    const origin = parents.get(current);
    if (!origin) return undefined;
    for (const key of origin.keys) keys.add(key);
    current = origin.parent;
  }
  return undefined;
}

function sectionChanges(section: Section, before: Records<unknown>, after: Records<unknown>, into: TableChange[]): void {
  const inPlace = draft?.touched.get(after);
  if (before === after) {
    // Written in place by this decision (see Draft): what it wrote is what changed.
    for (const key of inPlace ?? []) into.push({ section, key, value: after[key] });
    return;
  }
  const recorded = recordedKeys(before, after);
  if (recorded) {
    for (const key of inPlace ?? []) recorded.add(key);
    for (const key of recorded) {
      if (before[key] !== after[key]) into.push({ section, key, value: after[key] });
    }
    return;
  }
  for (const key in after) {
    if (before[key] !== after[key]) into.push({ section, key, value: after[key] });
  }
  for (const key in before) {
    if (!(key in after)) into.push({ section, key, value: undefined });
  }
}

/** Every record `after` sets or removes relative to `before`. */
export function tableChanges(before: LeaseTable, after: LeaseTable): TableChange[] {
  const changes: TableChange[] = [];
  if (before === after) return changes;
  for (const section of SECTIONS) sectionChanges(section, before[section], after[section], changes);
  return changes;
}
