// How clusters and leases are shown to clients (GET /leases, GET /lease/{token}, POST /lease):
// never a token, a token hash or a kubeconfig.

import type { HandOffFacts } from './facts.ts';
import type { ClusterView } from './lease-table.ts';

const iso = (ms: number) => new Date(ms).toISOString();

export function clusterJson(view: ClusterView, now: number) {
  const { cluster, lease, legacy } = view;
  const expiresAt = lease?.expiresAt ?? legacy?.expiresAt;
  return {
    id: cluster.id,
    ...(cluster.pool !== undefined && { pool: cluster.pool }),
    name: cluster.name,
    location: cluster.location,
    version: cluster.version,
    // The original claimer's name for it, which its clients read.
    cluster_version: cluster.version,
    labels: cluster.labels,
    state: view.state,
    status: cluster.status,
    ...(view.idleSince !== undefined && { idle_since: iso(view.idleSince) }),
    ...(lease && { started_at: iso(lease.startedAt) }),
    ...(expiresAt !== undefined && {
      expires_at: iso(expiresAt),
      seconds_left: Math.max(0, Math.ceil((expiresAt - now) / 1000)),
    }),
    ...(lease && { note: lease.note ?? null, holder: lease.holder ?? null }),
    ...(legacy && { note: null, holder: 'k8s-claimer (original)' }),
    ...(view.managed && {
      managed: {
        leases: view.managed.leases,
        operation: view.managed.operation ? { kind: view.managed.operation.kind, started_at: iso(view.managed.operation.startedAt) } : null,
        last_error: view.managed.lastError ?? null,
        ...(view.managed.retryAt !== undefined && { retry_at: iso(view.managed.retryAt) }),
      },
    }),
    ...(view.cleanup && {
      cleanup: {
        attempts: view.cleanup.attempts,
        last_error: view.cleanup.lastError ?? null,
        ...(view.cleanup.retryAt !== undefined && { retry_at: iso(view.cleanup.retryAt) }),
      },
    }),
  };
}

/** One lease: where its cluster's API server is, its credentials, and the hand-off facts. */
export function leaseJson(view: ClusterView, now: number, facts: HandOffFacts) {
  const credentials = view.lease?.credentials;
  return {
    ...clusterJson(view, now),
    endpoint: view.cluster.endpoint,
    server: view.cluster.server,
    credentials: credentials ? { user: credentials.user, group: credentials.group, expires_at: iso(credentials.tokenExpiresAt) } : null,
    ...facts,
  };
}
