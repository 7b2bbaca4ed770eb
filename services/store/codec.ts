// How one cluster's entry of the lease table is written down: a small JSON record with RFC 3339
// times, shared by the file store and the Kubernetes annotation store.

import * as v from 'valibot';
import { canonicalFilter, filterDigest, type ClusterFilter } from '../cluster-filter.ts';
import type { ClusterEntry, LegacyLease, ManagedRecord, ReplicaHeartbeat, Waiter } from '../lease-table.ts';

const Time = v.pipe(
  v.string(),
  v.check((text) => !Number.isNaN(Date.parse(text)), 'not an RFC 3339 time'),
  v.transform((text) => Date.parse(text)),
);

const LeaseId = v.pipe(v.string(), v.regex(/^[0-9a-f]{8,64}$/, 'not a lease id'));

const LeaseRecord = v.object({
  id: v.optional(LeaseId),
  token_sha256: v.pipe(v.string(), v.regex(/^[0-9a-f]{64}$/, 'not a SHA-256 hex digest')),
  started_at: Time,
  expires_at: Time,
  note: v.optional(v.string()),
  holder: v.optional(v.string()),
  credentials: v.optional(v.object({ user: v.string(), group: v.string(), token_expires_at: Time })),
  idempotency: v.optional(v.object({ key: v.pipe(v.string(), v.regex(/^[0-9a-f]{32}$/, 'not a digest')), fingerprint: v.pipe(v.string(), v.regex(/^[0-9a-f]{32}$/, 'not a digest')) })),
});

const CleanupRecord = v.object({
  owner: v.optional(v.string()),
  deadline: v.optional(Time),
  attempts: v.pipe(v.number(), v.integer(), v.minValue(0)),
  last_error: v.optional(v.string()),
  retry_at: v.optional(Time),
  // Written since the janitor revokes by lease id; older records have none.
  revoke: v.optional(v.pipe(v.array(LeaseId), v.maxLength(64, 'at most 64 lease ids'))),
});

const ManagedRecordJson = v.object({
  pool: v.pipe(v.string(), v.nonEmpty()),
  leases: v.pipe(v.number(), v.integer(), v.minValue(0)),
  recycle_after: v.optional(v.pipe(v.number(), v.integer(), v.minValue(1))),
  operation: v.optional(
    v.object({
      kind: v.picklist(['create', 'delete', 'hibernate', 'wake']),
      owner: v.string(),
      started_at: Time,
      deadline: Time,
      name: v.optional(v.string()),
    }),
  ),
  failures: v.optional(v.pipe(v.number(), v.integer(), v.minValue(0))),
  last_error: v.optional(v.string()),
  retry_at: v.optional(Time),
});

const ClusterRecord = v.object({
  cluster: v.pipe(v.string(), v.nonEmpty()),
  state: v.picklist(['free', 'leased', 'dirty', 'cleaning', 'quarantined', 'provisioning', 'hibernated', 'waking', 'deleting', 'manager']),
  idle_since: v.optional(Time),
  missing_since: v.optional(Time),
  lease: v.optional(LeaseRecord),
  cleanup: v.optional(CleanupRecord),
  managed: v.optional(ManagedRecordJson),
});

function encodeManaged(managed: ManagedRecord): v.InferInput<typeof ManagedRecordJson> {
  const { operation } = managed;
  return {
    pool: managed.pool,
    leases: managed.leases,
    ...(managed.recycleAfter !== undefined && { recycle_after: managed.recycleAfter }),
    ...(operation && {
      operation: { kind: operation.kind, owner: operation.owner, started_at: iso(operation.startedAt), deadline: iso(operation.deadline), ...(operation.name !== undefined && { name: operation.name }) },
    }),
    ...(managed.failures !== undefined && { failures: managed.failures }),
    ...(managed.lastError !== undefined && { last_error: managed.lastError }),
    ...(managed.retryAt !== undefined && { retry_at: iso(managed.retryAt) }),
  };
}

function decodeManaged(managed: v.InferOutput<typeof ManagedRecordJson>): ManagedRecord {
  const { operation } = managed;
  return {
    pool: managed.pool,
    leases: managed.leases,
    ...(managed.recycle_after !== undefined && { recycleAfter: managed.recycle_after }),
    ...(operation && {
      operation: { kind: operation.kind, owner: operation.owner, startedAt: operation.started_at, deadline: operation.deadline, ...(operation.name !== undefined && { name: operation.name }) },
    }),
    ...(managed.failures !== undefined && { failures: managed.failures }),
    ...(managed.last_error !== undefined && { lastError: managed.last_error }),
    ...(managed.retry_at !== undefined && { retryAt: managed.retry_at }),
  };
}

export type ClusterRecordJson = v.InferInput<typeof ClusterRecord>;

const iso = (ms: number) => new Date(ms).toISOString();

export function encodeEntry(clusterId: string, entry: ClusterEntry): ClusterRecordJson {
  if (entry.state === 'unknown') throw new Error(`refusing to write over the unreadable lease record of ${clusterId}`);
  const { lease, cleanup } = entry;
  return {
    cluster: clusterId,
    state: entry.state,
    ...(entry.idleSince !== undefined && { idle_since: iso(entry.idleSince) }),
    ...(entry.missingSince !== undefined && { missing_since: iso(entry.missingSince) }),
    ...(lease && {
      lease: {
        id: lease.id,
        token_sha256: lease.tokenHash,
        started_at: iso(lease.startedAt),
        expires_at: iso(lease.expiresAt),
        ...(lease.note !== undefined && { note: lease.note }),
        ...(lease.holder !== undefined && { holder: lease.holder }),
        ...(lease.credentials && {
          credentials: { user: lease.credentials.user, group: lease.credentials.group, token_expires_at: iso(lease.credentials.tokenExpiresAt) },
        }),
        ...(lease.idempotency && { idempotency: { key: lease.idempotency.key, fingerprint: lease.idempotency.fingerprint } }),
      },
    }),
    ...(cleanup && {
      cleanup: {
        ...(cleanup.owner !== undefined && { owner: cleanup.owner }),
        ...(cleanup.deadline !== undefined && { deadline: iso(cleanup.deadline) }),
        attempts: cleanup.attempts,
        ...(cleanup.lastError !== undefined && { last_error: cleanup.lastError }),
        ...(cleanup.retryAt !== undefined && { retry_at: iso(cleanup.retryAt) }),
        ...(cleanup.revoke?.length && { revoke: [...cleanup.revoke] }),
      },
    }),
    ...(entry.managed && { managed: encodeManaged(entry.managed) }),
  };
}

export type Decoded<T> = { ok: true; value: T } | { ok: false; problem: string };

function problemOf(issues: readonly v.BaseIssue<unknown>[]): string {
  return issues.map((issue) => `${v.getDotPath(issue) ?? 'record'}: ${issue.message}`).join('; ');
}

/** The cluster a record names, when it names one at all: an unreadable record still blocks it. */
export function clusterNamedIn(record: unknown): string | undefined {
  const cluster = (record as { cluster?: unknown } | null)?.cluster;
  return typeof cluster === 'string' && cluster !== '' ? cluster : undefined;
}

export function decodeEntry(record: unknown): Decoded<{ clusterId: string; entry: ClusterEntry }> {
  const parsed = v.safeParse(ClusterRecord, record);
  if (!parsed.success) return { ok: false, problem: problemOf(parsed.issues) };
  const { cluster, state, idle_since, missing_since, lease, cleanup, managed } = parsed.output;
  if (state === 'leased' && !lease) return { ok: false, problem: 'lease: required when state is leased' };
  const entry: ClusterEntry = {
    state,
    ...(idle_since !== undefined && { idleSince: idle_since }),
    ...(missing_since !== undefined && { missingSince: missing_since }),
    ...(lease && {
      lease: {
        // Records written before leases had ids get a stable one from their token hash.
        id: lease.id ?? lease.token_sha256.slice(0, 16),
        tokenHash: lease.token_sha256,
        startedAt: lease.started_at,
        expiresAt: lease.expires_at,
        ...(lease.note !== undefined && { note: lease.note }),
        ...(lease.holder !== undefined && { holder: lease.holder }),
        ...(lease.credentials && {
          credentials: { user: lease.credentials.user, group: lease.credentials.group, tokenExpiresAt: lease.credentials.token_expires_at },
        }),
        ...(lease.idempotency && { idempotency: { key: lease.idempotency.key, fingerprint: lease.idempotency.fingerprint } }),
      },
    }),
    ...(cleanup && {
      cleanup: {
        ...(cleanup.owner !== undefined && { owner: cleanup.owner }),
        ...(cleanup.deadline !== undefined && { deadline: cleanup.deadline }),
        attempts: cleanup.attempts,
        ...(cleanup.last_error !== undefined && { lastError: cleanup.last_error }),
        ...(cleanup.retry_at !== undefined && { retryAt: cleanup.retry_at }),
        ...(cleanup.revoke?.length && { revoke: cleanup.revoke }),
      },
    }),
    ...(managed && { managed: decodeManaged(managed) }),
  };
  return { ok: true, value: { clusterId: cluster, entry } };
}

/** The original k8s-claimer's record: `{"cluster_name": ..., "lease_expiration_time": RFC3339}`. */
const OriginalRecord = v.object({
  cluster_name: v.pipe(v.string(), v.nonEmpty()),
  lease_expiration_time: Time,
});

export function decodeLegacy(record: unknown): Decoded<LegacyLease> {
  const parsed = v.safeParse(OriginalRecord, record);
  if (!parsed.success) return { ok: false, problem: problemOf(parsed.issues) };
  return { ok: true, value: { clusterName: parsed.output.cluster_name, expiresAt: parsed.output.lease_expiration_time } };
}

export function encodeLegacy(legacy: LegacyLease): { cluster_name: string; lease_expiration_time: string } {
  return { cluster_name: legacy.clusterName, lease_expiration_time: iso(legacy.expiresAt) };
}

const Hex = (min: number, max: number, what: string) => v.pipe(v.string(), v.regex(new RegExp(`^[0-9a-f]{${min},${max}}$`), `not ${what}`));

const WaiterRecord = v.object({
  ticket: Hex(16, 64, 'a ticket id'),
  since: Time,
  replica: Hex(12, 64, 'a replica digest'),
  principal: Hex(16, 64, 'a principal digest'),
  filter: Hex(32, 32, 'a filter digest'),
});

export type WaiterRecordJson = v.InferInput<typeof WaiterRecord>;

export function encodeWaiter(ticket: string, waiter: Waiter): WaiterRecordJson {
  return { ticket, since: iso(waiter.since), replica: waiter.replica, principal: waiter.principal, filter: waiter.filter };
}

export function decodeWaiter(record: unknown): Decoded<{ ticket: string; waiter: Waiter }> {
  const parsed = v.safeParse(WaiterRecord, record);
  if (!parsed.success) return { ok: false, problem: problemOf(parsed.issues) };
  const { ticket, since, replica, principal, filter } = parsed.output;
  return { ok: true, value: { ticket, waiter: { since, replica, principal, filter } } };
}

const FilterRecord = v.object({
  digest: Hex(32, 32, 'a filter digest'),
  filter: v.object({
    regex: v.optional(v.string()),
    version: v.optional(v.string()),
    labels: v.optional(v.record(v.string(), v.string())),
    gpu: v.optional(v.boolean()),
    pools: v.optional(v.array(v.string())),
  }),
});

export type FilterRecordJson = v.InferInput<typeof FilterRecord>;

export function encodeFilter(digest: string, filter: ClusterFilter): FilterRecordJson {
  return { digest, filter: JSON.parse(canonicalFilter(filter)) };
}

/** A stored filter; one whose digest does not match what it says is refused. */
export function decodeFilter(record: unknown): Decoded<{ digest: string; filter: ClusterFilter }> {
  const parsed = v.safeParse(FilterRecord, record);
  if (!parsed.success) return { ok: false, problem: problemOf(parsed.issues) };
  const { digest, filter } = parsed.output;
  if (filterDigest(filter) !== digest) return { ok: false, problem: 'digest: does not match the filter' };
  return { ok: true, value: { digest, filter } };
}

const HeartbeatRecord = v.object({
  replica: Hex(12, 64, 'a replica digest'),
  expires_at: Time,
});

export type HeartbeatRecordJson = v.InferInput<typeof HeartbeatRecord>;

export function encodeHeartbeat(replica: string, beat: ReplicaHeartbeat): HeartbeatRecordJson {
  return { replica, expires_at: iso(beat.expiresAt) };
}

export function decodeHeartbeat(record: unknown): Decoded<{ replica: string; beat: ReplicaHeartbeat }> {
  const parsed = v.safeParse(HeartbeatRecord, record);
  if (!parsed.success) return { ok: false, problem: problemOf(parsed.issues) };
  return { ok: true, value: { replica: parsed.output.replica, beat: { expiresAt: parsed.output.expires_at } } };
}
