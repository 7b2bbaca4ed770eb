// Which clusters a request accepts: a name pattern (RE2, linear time, so no pattern can hang
// the server), a version prefix, and labels. Plain data, so a waiter's filter can be stored
// with its ticket and evaluated by any replica.

import { createHash } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import { RE2JS } from 're2js';
import type { Cluster } from './providers/types.ts';

export interface ClusterFilter {
  /** RE2 pattern searched in the cluster name (unanchored, as the original did). */
  regex?: string;
  /**
   * The control plane version, by whole components: `1.31` matches `1.31.5-gke.100` and
   * `1.31.0` but not `1.310.0`; a full version matches itself. A leading `v` is ignored.
   */
  version?: string;
  /** Every pair must be among the cluster's labels. */
  labels?: Record<string, string>;
  /** Only clusters with GPU nodes. */
  gpu?: boolean;
  /** Only clusters of these pools (from `pool` and `cloud_provider`); unset: any pool. */
  pools?: string[];
}

/** Throws RE2JS's syntax error for a pattern RE2 does not accept (backreferences, bad syntax). */
export function compilePattern(pattern: string): RE2JS {
  return RE2JS.compile(pattern);
}

/** No pattern is absent, so the cache stores this for one that does not compile. */
const INVALID = Symbol('invalid pattern');
/** Compiled patterns, the least recently used dropped first: many distinct patterns never mean recompiling the hot ones. */
const compiled = new LRUCache<string, RE2JS | typeof INVALID>({ max: 4096 });
let compilations = 0;

/** How many patterns have been compiled so far, and how many are cached (tests, benchmarks). */
export function patternCacheStats(): { compilations: number; cached: number } {
  return { compilations, cached: compiled.size };
}

function patternFor(pattern: string): RE2JS | null {
  let re = compiled.get(pattern);
  if (re === undefined) {
    compilations += 1;
    try {
      re = compilePattern(pattern);
    } catch {
      // Only a stored ticket can get here (requests are validated): it then matches nothing.
      re = INVALID;
    }
    compiled.set(pattern, re);
  }
  return re === INVALID ? null : re;
}

/** The filter in one canonical JSON form: equal filters, equal text. */
export function canonicalFilter(filter: ClusterFilter): string {
  const labels = filter.labels && Object.keys(filter.labels).length > 0
    ? Object.fromEntries(Object.entries(filter.labels).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
    : undefined;
  return JSON.stringify({
    ...(filter.regex && { regex: filter.regex }),
    ...(filter.version && { version: filter.version }),
    ...(labels && { labels }),
    ...(filter.gpu && { gpu: true }),
    ...(filter.pools && { pools: [...filter.pools].sort() }),
  });
}

/** A short name of a filter (128 bits of SHA-256, hex): what a waiter's ticket stores instead of the filter. */
export function filterDigest(filter: ClusterFilter): string {
  return createHash('sha256').update(canonicalFilter(filter)).digest('hex').slice(0, 32);
}

/**
 * Whether `version` is `wanted` or continues it at a component boundary (`.`, or the `-` and
 * `+` of pre-release and build parts): `1.3` is not a prefix of `1.32.1`.
 */
export function versionMatches(wanted: string, version: string): boolean {
  const want = wanted.replace(/^v/, '');
  const have = version.replace(/^v/, '');
  if (!have.startsWith(want)) return false;
  const next = have.charAt(want.length);
  return next === '' || next === '.' || next === '-' || next === '+' || /[.\-+]$/.test(want);
}

export function matches(filter: ClusterFilter, cluster: Cluster): boolean {
  if (filter.gpu && !cluster.gpu) return false;
  if (filter.pools && !filter.pools.includes(cluster.pool ?? '')) return false;
  if (filter.version && !versionMatches(filter.version, cluster.version)) return false;
  for (const [key, value] of Object.entries(filter.labels ?? {})) {
    if (cluster.labels[key] !== value) return false;
  }
  if (filter.regex) {
    const re = patternFor(filter.regex);
    if (!re || !re.matcher(cluster.name).find()) return false;
  }
  return true;
}
