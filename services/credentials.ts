// What a lessee's kubeconfig carries (kube-control's auth request, sign and flush-departed):
// - `serviceaccount` (default): per-lease credentials. A ServiceAccount for the lease in
//   namespace k8s-claimer-leases, a ClusterRoleBinding to the ClusterRole its group maps to, and
//   a token from the TokenRequest API. Revoked when the lease ends by deleting both (the
//   janitor does it, and retries until it succeeds).
// - `google-token` / `pool`: the earlier behaviour, the provider's own credentials for lessees.

import { buildKubeconfig } from './kubeconfig.ts';
import { ClusterAccess, ignoreConflict, ignoreMissing } from './cluster-access.ts';
import type { Lease } from './lease-table.ts';
import type { Cluster, ClusterProvider } from './providers/types.ts';

export const LEASES_NAMESPACE = 'k8s-claimer-leases';
export const MANAGED_BY = { 'app.kubernetes.io/managed-by': 'k8s-claimer' };
const MANAGED_SELECTOR = 'app.kubernetes.io/managed-by=k8s-claimer';

export interface Issued {
  kubeconfig: string;
  /** When the token in the kubeconfig stops working (per-lease credentials only). */
  tokenExpiresAt?: number;
}

export interface CredentialIssuer {
  /** Whether leases get credentials of their own, which must be revoked when they end. */
  readonly perLease: boolean;
  /** The lessee's kubeconfig for a lease just granted (or being extended: a fresh token). */
  issue(cluster: Cluster, lease: Lease, tokenSeconds: number): Promise<Issued>;
  /** Removes every credential the claimer issued in the cluster (it is between leases). */
  revokeAll(cluster: Cluster): Promise<number>;
  /** Removes the credentials of one lease (it ended while they were being made). */
  revokeLease(cluster: Cluster, leaseId: string): Promise<void>;
}

export class ProviderCredentials implements CredentialIssuer {
  readonly perLease = false;
  constructor(private readonly provider: ClusterProvider) {}

  async issue(cluster: Cluster): Promise<Issued> {
    return { kubeconfig: await this.provider.kubeconfigFor(cluster) };
  }

  async revokeAll(): Promise<number> {
    return 0;
  }

  async revokeLease(): Promise<void> {}
}

export class ServiceAccountCredentials implements CredentialIssuer {
  readonly perLease = true;

  constructor(
    private readonly access: ClusterAccess,
    private readonly roleForGroup: Record<string, string>,
  ) {}

  async issue(cluster: Cluster, lease: Lease, tokenSeconds: number): Promise<Issued> {
    const { user, group } = lease.credentials ?? { user: 'lessee', group: 'system:masters' };
    const role = this.roleForGroup[group];
    if (!role) throw new Error(`no ClusterRole is configured for group ${group}`);
    const { core, rbac } = await this.access.clientsFor(cluster);
    const name = serviceAccountName(lease.id);
    const labels = { ...MANAGED_BY, 'k8s-claimer.io/lease': lease.id };
    await ignoreConflict(core.createNamespace({ body: { metadata: { name: LEASES_NAMESPACE, labels: { ...MANAGED_BY } } } }));
    await ignoreConflict(
      core.createNamespacedServiceAccount({
        namespace: LEASES_NAMESPACE,
        body: { metadata: { name, labels, annotations: { 'k8s-claimer.io/user': user, 'k8s-claimer.io/group': group } } },
      }),
    );
    await ignoreConflict(
      rbac.createClusterRoleBinding({
        body: {
          metadata: { name: bindingName(lease.id), labels },
          roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: role },
          subjects: [{ kind: 'ServiceAccount', name, namespace: LEASES_NAMESPACE }],
        },
      }),
    );
    const request = await core.createNamespacedServiceAccountToken({
      name,
      namespace: LEASES_NAMESPACE,
      body: { spec: { audiences: [], expirationSeconds: tokenSeconds } },
    });
    const token = request.status?.token;
    if (!token) throw new Error('the TokenRequest API returned no token');
    const expiry = request.status?.expirationTimestamp;
    return {
      kubeconfig: buildKubeconfig({ contextName: cluster.name, server: cluster.server, caData: cluster.caData, user: { token } }),
      tokenExpiresAt: expiry ? new Date(expiry).getTime() : Date.now() + tokenSeconds * 1000,
    };
  }

  async revokeLease(cluster: Cluster, leaseId: string): Promise<void> {
    const { core, rbac } = await this.access.clientsFor(cluster);
    await ignoreMissing(rbac.deleteClusterRoleBinding({ name: bindingName(leaseId) }));
    await ignoreMissing(core.deleteNamespacedServiceAccount({ name: serviceAccountName(leaseId), namespace: LEASES_NAMESPACE }));
  }

  async revokeAll(cluster: Cluster): Promise<number> {
    const { core, rbac } = await this.access.clientsFor(cluster);
    const bindings = await rbac.listClusterRoleBinding({ labelSelector: MANAGED_SELECTOR });
    for (const binding of bindings.items) {
      if (binding.metadata?.name) await ignoreMissing(rbac.deleteClusterRoleBinding({ name: binding.metadata.name }));
    }
    const accounts = await ignoreMissing(core.listNamespacedServiceAccount({ namespace: LEASES_NAMESPACE, labelSelector: MANAGED_SELECTOR }));
    for (const account of accounts?.items ?? []) {
      if (account.metadata?.name) {
        await ignoreMissing(core.deleteNamespacedServiceAccount({ name: account.metadata.name, namespace: LEASES_NAMESPACE }));
      }
    }
    return bindings.items.length + (accounts?.items.length ?? 0);
  }
}

export function serviceAccountName(leaseId: string): string {
  return `lease-${leaseId}`;
}

export function bindingName(leaseId: string): string {
  return `k8s-claimer-lease-${leaseId}`;
}
