// The waiting queue, worked out once per table: the live tickets oldest first, and the free
// cluster each gets when free clusters are handed out in that order (each takes the first one
// its filter accepts). A waiter is granted exactly its assigned cluster; a request without a
// ticket may take only what no waiter gets. Whether a filter accepts a cluster is remembered
// per pool list, so a table change costs one pass over the tickets, not a pass over the tickets
// for each of them.

import { matches, type ClusterFilter } from './cluster-filter.ts';
import type { Cluster } from './providers/types.ts';
import type { LeaseTable, Waiter } from './lease-table.ts';

export interface Queue {
  /** Live tickets, oldest first. */
  readonly order: ReadonlyArray<readonly [string, Waiter]>;
  /** The free cluster each live ticket gets, if any. */
  readonly assigned: ReadonlyMap<string, Cluster>;
  /** Free clusters that no waiter gets, in the free list's order: all a newcomer may take. */
  readonly leftover: readonly Cluster[];
  /** Live tickets whose filter accepts no leasable cluster of the pool at all (they fail at once). */
  readonly hopeless: ReadonlySet<string>;
  /** Live tickets by principal digest, for the caps. */
  readonly byPrincipal: ReadonlyMap<string, number>;
}

/** A ticket lives while the replica that holds it keeps its heartbeat going. */
export function ticketLive(table: LeaseTable, waiter: Waiter, now: number): boolean {
  const beat = table.replicas[waiter.replica];
  return beat !== undefined && now < beat.expiresAt;
}

/** Every ticket, oldest first (ties by id), per waiters object: tables share it until a ticket comes or goes. */
const orderMemo = new WeakMap<object, ReadonlyArray<readonly [string, Waiter]>>();

export function ticketOrder(waiters: LeaseTable['waiters']): ReadonlyArray<readonly [string, Waiter]> {
  let order = orderMemo.get(waiters);
  if (!order) {
    order = Object.entries(waiters).sort(([idA, a], [idB, b]) => a.since - b.since || (idA < idB ? -1 : idA > idB ? 1 : 0));
    orderMemo.set(waiters, order);
  }
  return order;
}

/** Records that the ticket order of `next` is `order` (a ticket joined at the end, or left). */
export function rememberOrder(next: LeaseTable['waiters'], order: ReadonlyArray<readonly [string, Waiter]>): void {
  orderMemo.set(next, order);
}

/**
 * Which clusters of a pool list each filter accepts, filled in lazily: 0 not yet known, 1 yes,
 * 2 no. Keyed by the pool list itself (providers hand out the same array until the pool changes).
 */
const matchMemo = new WeakMap<readonly Cluster[], { index: Map<Cluster, number>; byFilter: Map<string, Uint8Array> }>();

function matcherFor(clusters: readonly Cluster[]) {
  let memo = matchMemo.get(clusters);
  if (!memo) {
    memo = { index: new Map(clusters.map((cluster, position) => [cluster, position])), byFilter: new Map() };
    matchMemo.set(clusters, memo);
  }
  const { index, byFilter } = memo;
  return (digest: string, filter: ClusterFilter, cluster: Cluster): boolean => {
    const position = index.get(cluster);
    if (position === undefined) return matches(filter, cluster);
    let known = byFilter.get(digest);
    if (!known) {
      known = new Uint8Array(clusters.length);
      byFilter.set(digest, known);
    }
    if (known[position] === 0) known[position] = matches(filter, cluster) ? 1 : 2;
    return known[position] === 1;
  };
}

/**
 * The queue of `table` at `now`, given its free clusters (idle the longest first) and the
 * pool's leasable clusters.
 */
export function computeQueue(
  table: LeaseTable,
  now: number,
  clusters: readonly Cluster[],
  free: readonly Cluster[],
  leasable: readonly Cluster[],
): Queue {
  const accepts = matcherFor(clusters);
  const order: Array<readonly [string, Waiter]> = [];
  const assigned = new Map<string, Cluster>();
  const hopeless = new Set<string>();
  const byPrincipal = new Map<string, number>();
  const taken = new Uint8Array(free.length);
  let takenCount = 0;
  /** Per filter: every free cluster before this position is taken or not accepted. */
  const next = new Map<string, number>();
  /** Per filter: whether it accepts any leasable cluster at all. */
  const possible = new Map<string, boolean>();
  for (const entry of ticketOrder(table.waiters)) {
    const [ticket, waiter] = entry;
    if (!ticketLive(table, waiter, now)) continue;
    order.push(entry);
    byPrincipal.set(waiter.principal, (byPrincipal.get(waiter.principal) ?? 0) + 1);
    // A ticket whose filter is not in the table (a record lost or unreadable) takes nothing.
    const filter = table.filters[waiter.filter];
    if (!filter) continue;
    let canLease = possible.get(waiter.filter);
    if (canLease === undefined) {
      canLease = leasable.some((cluster) => accepts(waiter.filter, filter, cluster));
      possible.set(waiter.filter, canLease);
    }
    if (!canLease) {
      hopeless.add(ticket);
      continue;
    }
    if (takenCount === free.length) continue;
    let position = next.get(waiter.filter) ?? 0;
    while (position < free.length && (taken[position] === 1 || !accepts(waiter.filter, filter, free[position] as Cluster))) position++;
    if (position < free.length) {
      taken[position] = 1;
      takenCount += 1;
      assigned.set(ticket, free[position] as Cluster);
      next.set(waiter.filter, position + 1);
    } else {
      next.set(waiter.filter, free.length);
    }
  }
  const leftover = takenCount === 0 ? free : free.filter((_, position) => taken[position] === 0);
  return { order, assigned, leftover, hopeless, byPrincipal };
}

/** The queue once `ticket` has taken its assigned cluster: nobody else's assignment changes. */
export function afterGrant(queue: Queue, ticket: string, principal: string): Queue {
  const assigned = new Map(queue.assigned);
  assigned.delete(ticket);
  const byPrincipal = new Map(queue.byPrincipal);
  byPrincipal.set(principal, (byPrincipal.get(principal) ?? 1) - 1);
  return { ...queue, order: queue.order.filter(([id]) => id !== ticket), assigned, byPrincipal };
}

/** The queue once a newcomer has taken a leftover cluster. */
export function afterNewcomer(queue: Queue, cluster: Cluster): Queue {
  return { ...queue, leftover: queue.leftover.filter((candidate) => candidate !== cluster) };
}
