// What a lessee's kubeconfig carries (kube-control's auth request, sign and flush-departed):
// - `serviceaccount` (default): per-lease credentials. A ServiceAccount for the lease in
//   namespace k8s-claimer-leases, a ClusterRoleBinding to the ClusterRole its group maps to, and
//   a token from the TokenRequest API.
// - `google-token` / `pool`: the earlier behaviour, the provider's own credentials for lessees.
//
// Revocation (the janitor's, between leases) goes by what the lessee cannot change: the ended
// leases' ids, kept in the lease table (names follow from them), every ServiceAccount of the
// lease namespace whatever its labels, and every binding that gives anything to an account of
// that namespace or to its group. A lessee with cluster-admin can strip labels; it cannot make
// its token outlive its ServiceAccount.

import type { RbacV1Subject } from '@kubernetes/client-node';
import { ClusterAccess, ignoreConflict, ignoreMissing } from './cluster-access.ts';
import { buildKubeconfig } from './kubeconfig.ts';
import type { Lease } from './lease-table.ts';
import type { Cluster, ClusterProvider } from './providers/types.ts';

export const LEASES_NAMESPACE = 'k8s-claimer-leases';
export const MANAGED_BY = { 'app.kubernetes.io/managed-by': 'k8s-claimer' };
/** The group every ServiceAccount of the lease namespace is in. */
const LEASES_GROUP = `system:serviceaccounts:${LEASES_NAMESPACE}`;
/** A ServiceAccount's user name, which a binding may name instead of the account. */
const LEASES_USER_PREFIX = `system:serviceaccount:${LEASES_NAMESPACE}:`;

export interface Issued {
  kubeconfig: string;
  /** When the token in the kubeconfig stops working (per-lease credentials only). */
  tokenExpiresAt?: number;
}

export interface CredentialIssuer {
  /** Whether leases of this cluster get credentials of their own, which must be revoked when they end. */
  perLease(cluster: Cluster): boolean;
  /** Whether leases of any cluster may (a request records who it is for before its cluster is known). */
  readonly anyPerLease: boolean;
  /** The lessee's kubeconfig for a lease just granted (or being extended: a fresh token). */
  issue(cluster: Cluster, lease: Lease, tokenSeconds: number): Promise<Issued>;
  /** Removes the credentials of one lease (it ended while they were being made). */
  revokeLease(cluster: Cluster, leaseId: string): Promise<void>;
}

export class ProviderCredentials implements CredentialIssuer {
  readonly anyPerLease = false;
  perLease(): boolean {
    return false;
  }
  constructor(private readonly provider: ClusterProvider) {}

  async issue(cluster: Cluster): Promise<Issued> {
    return { kubeconfig: await this.provider.kubeconfigFor(cluster) };
  }

  async revokeLease(): Promise<void> {}
}

export class ServiceAccountCredentials implements CredentialIssuer {
  readonly anyPerLease = true;
  perLease(): boolean {
    return true;
  }

  constructor(
    private readonly access: ClusterAccess,
    private readonly roleForGroup: Record<string, string>,
  ) {}

  async issue(cluster: Cluster, lease: Lease, tokenSeconds: number): Promise<Issued> {
    const { user, group } = lease.credentials ?? { user: 'lessee', group: 'system:masters' };
    const role = this.roleForGroup[group];
    if (!role) throw new Error(`no ClusterRole is configured for group ${group}`);
    const { core, rbac, server, caData } = await this.access.clientsFor(cluster);
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
      kubeconfig: buildKubeconfig({ contextName: cluster.name, server, caData, user: { token } }),
      tokenExpiresAt: expiry ? new Date(expiry).getTime() : Date.now() + tokenSeconds * 1000,
    };
  }

  async revokeLease(cluster: Cluster, leaseId: string): Promise<void> {
    const { core, rbac } = await this.access.clientsFor(cluster);
    await ignoreMissing(rbac.deleteClusterRoleBinding({ name: bindingName(leaseId) }));
    await ignoreMissing(core.deleteNamespacedServiceAccount({ name: serviceAccountName(leaseId), namespace: LEASES_NAMESPACE }));
  }
}

export function serviceAccountName(leaseId: string): string {
  return `lease-${leaseId}`;
}

export function bindingName(leaseId: string): string {
  return `k8s-claimer-lease-${leaseId}`;
}

/** Whether a binding gives anything to an account of the lease namespace, or to all of them. */
export function grantsLeaseAccounts(binding: { metadata?: { namespace?: string }; subjects?: RbacV1Subject[] }): boolean {
  return (binding.subjects ?? []).some(
    (subject) =>
      (subject.kind === 'ServiceAccount' && (subject.namespace ?? binding.metadata?.namespace) === LEASES_NAMESPACE) ||
      (subject.kind === 'Group' && subject.name === LEASES_GROUP) ||
      (subject.kind === 'User' && subject.name.startsWith(LEASES_USER_PREFIX)),
  );
}

export class RevocationUnconfirmedError extends Error {
  constructor(left: readonly string[], rounds: number) {
    super(`still there after ${rounds} rounds of deleting them: ${left.slice(0, 5).join(', ')}${left.length > 5 ? ` and ${left.length - 5} more` : ''}`);
    this.name = 'RevocationUnconfirmedError';
  }
}

/**
 * How destructive work is fenced by the janitor's claim on the cluster: each throws (and the
 * work stops) once the claim is no longer the janitor's.
 */
export interface Fence {
  /** Before a batch of deletes: the claim is renewed. */
  step(): Promise<void>;
  /** Before one delete: the claim outlasts the call (renewed if need be). */
  call(): Promise<void>;
}

const unfenced: Fence = { step: async () => undefined, call: async () => undefined };

interface Doomed {
  what: string;
  remove(): Promise<unknown>;
}

/**
 * Revokes every credential of ended leases in a cluster, and confirms it by listing again. Any
 * ServiceAccount of the lease namespace goes, `default` included (Kubernetes makes a new one,
 * with a new uid, so tokens of the old one die); `default` goes last in each round, once the
 * accounts that could mint a token for its successor are gone.
 */
/** Per pool: per-lease credentials, or the pool's own (a static pool's `credentials: pool`). */
export class PoolCredentials implements CredentialIssuer {
  constructor(
    private readonly perLeaseIssuer: CredentialIssuer,
    private readonly poolIssuer: CredentialIssuer,
    private readonly perLeaseFor: (cluster: Cluster) => boolean,
    readonly anyPerLease: boolean,
  ) {}

  perLease(cluster: Cluster): boolean {
    return this.perLeaseFor(cluster);
  }

  private of(cluster: Cluster): CredentialIssuer {
    return this.perLeaseFor(cluster) ? this.perLeaseIssuer : this.poolIssuer;
  }

  issue(cluster: Cluster, lease: Lease, tokenSeconds: number): Promise<Issued> {
    return this.of(cluster).issue(cluster, lease, tokenSeconds);
  }

  revokeLease(cluster: Cluster, leaseId: string): Promise<void> {
    return this.of(cluster).revokeLease(cluster, leaseId);
  }
}

export class LeaseCredentialRevoker {
  constructor(
    private readonly access: ClusterAccess,
    /** Rounds of deleting before revocation counts as failed (a lessee still racing it). */
    private readonly maxRounds = 3,
  ) {}

  /** Returns how many objects it deleted. */
  async revoke(cluster: Cluster, leaseIds: readonly string[], fence: Fence = unfenced): Promise<number> {
    const { core, rbac } = await this.access.clientsFor(cluster);
    const bindingNames = new Set(leaseIds.map(bindingName));
    let deleted = 0;
    let defaultReplaced = false;
    for (let round = 1; ; round++) {
      const [accounts, clusterBindings, bindings] = await Promise.all([
        ignoreMissing(core.listNamespacedServiceAccount({ namespace: LEASES_NAMESPACE })).then((list) => list?.items ?? []),
        rbac.listClusterRoleBinding(),
        rbac.listRoleBindingForAllNamespaces(),
      ]);
      const doomed: Doomed[] = [
        ...accounts
          .map((account) => account.metadata?.name ?? '')
          .filter((name) => name !== '' && name !== 'default')
          .map((name) => ({ what: `ServiceAccount ${name}`, remove: () => core.deleteNamespacedServiceAccount({ name, namespace: LEASES_NAMESPACE }) })),
        ...clusterBindings.items
          .filter((binding) => bindingNames.has(binding.metadata?.name ?? '') || grantsLeaseAccounts(binding))
          .map((binding) => binding.metadata?.name ?? '')
          .map((name) => ({ what: `ClusterRoleBinding ${name}`, remove: () => rbac.deleteClusterRoleBinding({ name }) })),
        ...bindings.items.filter(grantsLeaseAccounts).map((binding) => {
          const { name = '', namespace = '' } = binding.metadata ?? {};
          return { what: `RoleBinding ${namespace}/${name}`, remove: () => rbac.deleteNamespacedRoleBinding({ name, namespace }) };
        }),
      ];
      if (doomed.length === 0 && defaultReplaced) return deleted;
      if (round > this.maxRounds) throw new RevocationUnconfirmedError(doomed.map((item) => item.what), this.maxRounds);
      const defaultAccount = accounts.some((account) => account.metadata?.name === 'default');
      if (defaultAccount) {
        doomed.push({ what: 'ServiceAccount default', remove: () => core.deleteNamespacedServiceAccount({ name: 'default', namespace: LEASES_NAMESPACE }) });
      }
      await fence.step();
      for (const item of doomed) {
        await fence.call();
        if (await ignoreMissing(item.remove())) deleted++;
      }
      defaultReplaced = true;
    }
  }
}
