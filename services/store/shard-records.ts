// The lease records of one object's annotations, read and written: each cluster's record is its
// own annotation (`lease.k8s-claimer.io/c-<hash of the cluster id>`, value: the JSON record),
// as are waiting tickets (`w-`), their filters (`f-`) and replicas' heartbeats (`r-`). Records
// of the original k8s-claimer (keyed by its lease UUID) are read and honoured.

import type { Logger } from 'pino';
import type { ClusterFilter } from '../cluster-filter.ts';
import type { ClusterEntry, LeaseTable, LegacyLease, ReplicaHeartbeat, Waiter } from '../lease-table.ts';
import type { TableChange } from '../table-changes.ts';
import {
  clusterNamedIn,
  decodeEntry,
  decodeFilter,
  decodeHeartbeat,
  decodeLegacy,
  decodeWaiter,
  encodeEntry,
  encodeFilter,
  encodeHeartbeat,
  encodeLegacy,
  encodeWaiter,
  type Decoded,
} from './codec.ts';
import { ANNOTATION_PREFIX, EPOCH_KEY, LAYOUT_KEY, annotationKeyFor, filterKeyFor, heartbeatKeyFor, waiterKeyFor } from './shards.ts';

/** The original k8s-claimer keyed its records by the lease UUID itself. */
const ORIGINAL_KEY = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

const UNREADABLE: ClusterEntry = Object.freeze({ state: 'unknown' });

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** Reads the records of one object; remembers decoded cluster records by value, since a write changes a few of hundreds. */
export class RecordReader {
  private decoded = new Map<string, { clusterId: string; entry: ClusterEntry }>();

  constructor(
    private readonly where: string,
    private readonly logger: Logger,
  ) {}

  /** The records among `annotations`; others' annotations, the layout and the fence are not records. */
  read(annotations: Readonly<Record<string, string>>): LeaseTable {
    const clusters: Record<string, ClusterEntry> = {};
    const legacy: Record<string, LegacyLease> = {};
    const waiters: Record<string, Waiter> = {};
    const filters: Record<string, ClusterFilter> = {};
    const replicas: Record<string, ReplicaHeartbeat> = {};
    const decodedNow = new Map<string, { clusterId: string; entry: ClusterEntry }>();
    /** Waiting records that do not parse are skipped: a ticket without its record lapses, nothing is leased by it. */
    const waitingRecord = <T>(key: string, value: string, decode: (record: unknown) => Decoded<T>, keyOf: (decoded: T) => string): T | undefined => {
      const decoded = decode(parseJson(value));
      if (decoded.ok && keyOf(decoded.value) === key) return decoded.value;
      this.logger.warn({ annotation: key, object: this.where }, 'skipping a waiting record that does not parse');
      return undefined;
    };
    for (const key in annotations) {
      const value = annotations[key];
      if (key.startsWith(ANNOTATION_PREFIX)) {
        const kind = key.slice(ANNOTATION_PREFIX.length, ANNOTATION_PREFIX.length + 2);
        if (kind === 'w-') {
          const decoded = waitingRecord(key, value, decodeWaiter, (record) => waiterKeyFor(record.ticket));
          if (decoded) waiters[decoded.ticket] = decoded.waiter;
        } else if (kind === 'f-') {
          const decoded = waitingRecord(key, value, decodeFilter, (record) => filterKeyFor(record.digest));
          if (decoded) filters[decoded.digest] = decoded.filter;
        } else if (kind === 'r-') {
          const decoded = waitingRecord(key, value, decodeHeartbeat, (record) => heartbeatKeyFor(record.replica));
          if (decoded) replicas[decoded.replica] = decoded.beat;
        } else if (key !== LAYOUT_KEY && key !== EPOCH_KEY) {
          const known = this.decoded.get(value);
          const raw = known ? undefined : parseJson(value);
          const decoded = known ? ({ ok: true, value: known } as const) : decodeEntry(raw);
          if (decoded.ok && annotationKeyFor(decoded.value.clusterId) === key) {
            clusters[decoded.value.clusterId] = decoded.value.entry;
            decodedNow.set(value, decoded.value);
          } else {
            // A record this version cannot read may hold a live lease: its cluster is not leased.
            const named = clusterNamedIn(raw);
            if (named && annotationKeyFor(named) === key) clusters[named] = UNREADABLE;
            this.logger.warn(
              { annotation: key, object: this.where, cluster: named, problem: decoded.ok ? 'key does not match the cluster id' : decoded.problem },
              'a lease record does not parse: it is left in place and its cluster is not leased',
            );
          }
        }
      } else if (ORIGINAL_KEY.test(key)) {
        const decoded = decodeLegacy(parseJson(value));
        if (decoded.ok) legacy[key] = decoded.value;
        // The key of such a record is a lease token of the original claimer: only its start is logged.
        else this.logger.warn({ annotation: `${key.slice(0, 8)}...`, object: this.where, problem: decoded.problem }, 'an annotation keyed like an original k8s-claimer lease does not parse; it is left alone');
      }
    }
    this.decoded = decodedNow;
    return { clusters, legacy, waiters, filters, replicas };
  }
}

/** The annotation a change sets (a JSON value) or removes (null); undefined for what is never written (an unreadable record). */
export function annotationOf(change: TableChange): [string, string | null] | undefined {
  const { key, value } = change;
  switch (change.section) {
    case 'clusters': {
      const entry = value as ClusterEntry | undefined;
      // An unreadable record is left exactly as it is.
      if (entry?.state === 'unknown') return undefined;
      return [annotationKeyFor(key), entry ? JSON.stringify(encodeEntry(key, entry)) : null];
    }
    case 'legacy':
      return [key, value ? JSON.stringify(encodeLegacy(value as LegacyLease)) : null];
    case 'waiters':
      return [waiterKeyFor(key), value ? JSON.stringify(encodeWaiter(key, value as Waiter)) : null];
    case 'filters':
      return [filterKeyFor(key), value ? JSON.stringify(encodeFilter(key, value as ClusterFilter)) : null];
    case 'replicas':
      return [heartbeatKeyFor(key), value ? JSON.stringify(encodeHeartbeat(key, value as ReplicaHeartbeat)) : null];
  }
}
