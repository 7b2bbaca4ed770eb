// What the lease domain needs to know about a cluster, whatever pool it comes from.

/**
 * GKE's cluster status names; a static pool's clusters are always RUNNING. `UNREACHABLE`: the
 * cluster's zone did not answer the provider's list, so it is known only from an earlier one.
 */
export type ClusterStatus =
  | 'UNREACHABLE'
  | 'RUNNING'
  | 'PROVISIONING'
  | 'RECONCILING'
  | 'STOPPING'
  | 'ERROR'
  | 'DEGRADED'
  | 'STATUS_UNSPECIFIED';

export interface Cluster {
  /**
   * Stable, unique across the server's pools: `<location>/<name>` from a provider (the same name
   * in two zones is two clusters), prefixed `<pool>/` for the pools of a pools file.
   */
  id: string;
  /** The name of the pool it is in (set by the pool set; a provider leaves it out). */
  pool?: string;
  name: string;
  location: string;
  /** The API server's host (no scheme, no port): the lease response's `ip`. */
  endpoint: string;
  /** The API server's URL. */
  server: string;
  /** Base64 of the API server's CA bundle (PEM), when it has one. */
  caData?: string;
  labels: Record<string, string>;
  /** Kubernetes version of the control plane, e.g. `1.31.5-gke.1000`. */
  version: string;
  status: ClusterStatus;
  /** A stable identifier of the cluster for the lessee (kube-control's cluster tag): GKE's cluster id, or the pool file's. */
  tag: string;
  /** Whether the cluster has GPU nodes (GKE node pools with accelerators; the pool file's `gpu`). */
  gpu: boolean;
  /** Where the lessee's images come from (kube-control's registry location), if configured. */
  registryLocation: string | null;
  /** Of a managed pool: leased only once the pool's table knows it (made, or adopted, by its runner). */
  managed?: boolean;
}

export interface ClusterProvider {
  /** The provider's name (`gke`, or the static pool's `provider`). */
  readonly kind: string;
  /** What clients may send as `cloud_provider` to mean this provider. */
  readonly aliases: readonly string[];
  /** Every cluster of the pool, leasable or not. */
  list(): Promise<Cluster[]>;
  /** A kubeconfig (YAML) with the pool's own credentials for the lessee (LEASE_CREDENTIALS=google-token). */
  kubeconfigFor(cluster: Cluster): Promise<string>;
  /** A kubeconfig (YAML) with which the claimer itself administers the cluster (credentials, cleanup). */
  adminKubeconfigFor(cluster: Cluster): Promise<string>;
  /**
   * How the last listing went, when part of it can fail while the rest answers (one region of
   * several): the problem in words fit for an operator, never a credential. Unset: fine.
   */
  problem?(): string | undefined;
  close?(): Promise<void>;
}

export function isLeasable(cluster: Cluster): boolean {
  return cluster.status === 'RUNNING';
}
