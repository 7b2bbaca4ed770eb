// How the claimer reaches the API server of a cluster in its pool: @kubernetes/client-node with
// the provider's admin kubeconfig (the pool file's credentials, or the claimer's own Google
// token for GKE; none for an emulator's test stand-ins). Loaded only when first needed.

import type { CoreV1Api, RbacAuthorizationV1Api } from '@kubernetes/client-node';
import type { Cluster, ClusterProvider } from './providers/types.ts';

export interface ClusterClients {
  core: CoreV1Api;
  rbac: RbacAuthorizationV1Api;
  /** The API server and its CA as the admin kubeconfig names them: what lessees are handed too. */
  server: string;
  caData?: string;
}

export class ClusterAccess {
  constructor(
    private readonly provider: ClusterProvider,
    /** Deadline of one call to a cluster's API server. */
    private readonly timeoutMs = 10_000,
  ) {}

  /** Fresh clients each time: GKE tokens expire hourly, and a kubeconfig is cheap to load. */
  async clientsFor(cluster: Cluster): Promise<ClusterClients> {
    const [{ KubeConfig, CoreV1Api, RbacAuthorizationV1Api }, { makeClient }] = await Promise.all([
      import('@kubernetes/client-node'),
      import('./kube-client.ts'),
    ]);
    const kubeConfig = new KubeConfig();
    kubeConfig.loadFromString(await this.provider.adminKubeconfigFor(cluster));
    const current = kubeConfig.getCurrentCluster();
    return {
      core: makeClient(kubeConfig, CoreV1Api, this.timeoutMs),
      rbac: makeClient(kubeConfig, RbacAuthorizationV1Api, this.timeoutMs),
      server: current?.server ?? cluster.server,
      ...((current?.caData ?? cluster.caData) && { caData: current?.caData ?? cluster.caData }),
    };
  }
}

/** The HTTP status of a client-node error, if it has one. */
export function statusOf(error: unknown): number | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'number' ? code : undefined;
}

/** Creating something that is already there is fine: every step can be repeated. */
export async function ignoreConflict<T>(create: Promise<T>): Promise<T | undefined> {
  try {
    return await create;
  } catch (error) {
    if (statusOf(error) === 409) return undefined;
    throw error;
  }
}

/** Deleting something that is already gone is fine. */
export async function ignoreMissing<T>(remove: Promise<T>): Promise<T | undefined> {
  try {
    return await remove;
  } catch (error) {
    if (statusOf(error) === 404) return undefined;
    throw error;
  }
}
