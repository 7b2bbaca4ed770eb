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

/** A copy of `parent` with `updates` applied (undefined removes), remembered as derived from it. */
export function withRecords<T>(parent: Records<T>, updates: Readonly<Record<string, T | undefined>>): Records<T> {
  const child: Record<string, T> = { ...parent };
  const keys = Object.keys(updates);
  for (const key of keys) {
    const value = updates[key];
    if (value === undefined) delete child[key];
    else child[key] = value;
  }
  parents.set(child, { parent, keys });
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
  if (before === after) return;
  const recorded = recordedKeys(before, after);
  if (recorded) {
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
