// The AKS pool: managed clusters listed from an Azure subscription (or one resource group of it)
// with @azure/arm-containerservice, signed in with @azure/identity. A cluster is resource group
// + name; only clusters that are provisioned (Succeeded) and powered on (Running) are leasable.
// The list is cached so that an acquire normally costs no Resource Manager call, and a warm
// cache keeps the claimer leasing through an outage of Azure Resource Manager.
//
// The claimer administers a cluster with its admin credentials (listClusterAdminCredential), or,
// for an Entra ID cluster whose local accounts are disabled, with an Entra ID token of its own
// identity for the AKS server application (that identity needs a cluster role there: an admin
// group of the cluster, or Azure RBAC for Kubernetes). Lessees get per-lease credentials only:
// neither kind of credential may leave the claimer.

import { ContainerServiceClient, type ManagedCluster } from '@azure/arm-containerservice';
import { DefaultAzureCredential, type TokenCredential } from '@azure/identity';
import type { Logger } from 'pino';
import { buildKubeconfig } from '../kubeconfig.ts';
import type { Clock } from '../write-path.ts';
import { ClusterListCache } from './list-cache.ts';
import type { Cluster, ClusterProvider, ClusterStatus } from './types.ts';

/** Azure Resource Manager in Azure's public cloud. */
export const DEFAULT_ARM_ENDPOINT = 'https://management.azure.com';
/** The AKS AAD server application (the same in every cloud): the audience of cluster tokens. */
export const AKS_SERVER_SCOPE = '6dae42f8-4368-4678-94ff-3960e28e3630/.default';

export interface AksProviderOptions {
  subscriptionId: string;
  /** Only this resource group's clusters; unset: the whole subscription. */
  resourceGroup?: string;
  /** Azure Resource Manager's endpoint (another cloud, Azure Stack). Default: the public cloud's. */
  endpoint?: string;
  /** Entra ID's authority host, as AZURE_AUTHORITY_HOST (which is read when this is unset). */
  authorityHost?: string;
  /**
   * Who the claimer is. Default: DefaultAzureCredential, which takes AZURE_TENANT_ID,
   * AZURE_CLIENT_ID and AZURE_CLIENT_SECRET (the original claimer's settings), workload identity
   * or managed identity.
   */
  credential?: TokenCredential;
  cacheSeconds: number;
  clock: Clock;
  logger: Logger;
  /** Deadline of one Azure call (a whole listing, all its pages), in ms. */
  timeoutMs?: number;
  /** Retries of a failed Resource Manager call (the SDK's policy: 5xx, 429 after Retry-After). Default 3. */
  maxRetries?: number;
}

/** What the provider keeps of a listed cluster to fetch its credentials: nothing secret. */
interface Located {
  resourceGroup: string;
  name: string;
  /** Entra ID integration with local accounts disabled: only Entra ID tokens get in. */
  entraOnly: boolean;
}

const RECONCILING = new Set(['updating', 'upgrading', 'scaling', 'migrating']);
const STOPPING = new Set(['deleting', 'stopping']);

export function aksStatus(cluster: Pick<ManagedCluster, 'provisioningState' | 'powerState'>): ClusterStatus {
  const state = (cluster.provisioningState ?? '').toLowerCase();
  const power = (cluster.powerState?.code ?? '').toLowerCase();
  if (state === 'failed') return 'ERROR';
  if (STOPPING.has(state) || power === 'stopped') return 'STOPPING';
  if (state === 'creating') return 'PROVISIONING';
  if (RECONCILING.has(state)) return 'RECONCILING';
  if (state === 'succeeded' && power === 'running') return 'RUNNING';
  return 'STATUS_UNSPECIFIED';
}

/** The resource group of an ARM resource id, lower-cased (ARM ids differ in its case). */
export function resourceGroupOf(armId: string): string {
  const match = /\/resourcegroups\/([^/]+)\//i.exec(armId);
  if (!match) throw new Error(`not an Azure resource id: ${armId}`);
  return decodeURIComponent(match[1]).toLowerCase();
}

export function toCluster(aks: ManagedCluster): Cluster {
  const armId = aks.id ?? '';
  const resourceGroup = resourceGroupOf(armId);
  const name = aks.name ?? '';
  const endpoint = aks.fqdn || aks.privateFqdn || '';
  return {
    id: `${resourceGroup}/${name}`,
    name,
    location: aks.location,
    endpoint,
    server: `https://${endpoint}:443`,
    labels: { ...(aks.tags ?? {}) },
    version: aks.currentKubernetesVersion ?? aks.kubernetesVersion ?? '',
    status: aksStatus(aks),
    tag: armId,
    // The N-series are Azure's GPU sizes (NC, ND, NV, ...).
    gpu: (aks.agentPoolProfiles ?? []).some((pool) => /^Standard_N/i.test(pool.vmSize ?? '')),
    registryLocation: null,
  };
}

export class AksProvider implements ClusterProvider {
  readonly kind = 'aks';
  /** The original CLI sends `azure`. */
  readonly aliases = ['aks', 'azure'] as const;
  private readonly client: ContainerServiceClient;
  private readonly credential: TokenCredential;
  private readonly lists: ClusterListCache;
  /** By ARM id (the cluster's tag, which a pool set leaves as it is). */
  private located = new Map<string, Located>();
  private lastProblem?: string;

  constructor(private readonly options: AksProviderOptions) {
    this.lists = new ClusterListCache(options.clock, options.cacheSeconds);
    const endpoint = (options.endpoint ?? DEFAULT_ARM_ENDPOINT).replace(/\/+$/, '');
    const authorityHost = options.authorityHost ?? process.env.AZURE_AUTHORITY_HOST;
    // A configured authority is trusted as it is: MSAL would otherwise ask the public cloud's
    // instance discovery about it.
    this.credential = options.credential ?? new DefaultAzureCredential({ ...(authorityHost && { authorityHost, disableInstanceDiscovery: true }) });
    this.client = new ContainerServiceClient(this.credential, options.subscriptionId, {
      endpoint,
      credentials: { scopes: [`${endpoint}/.default`] },
      ...(options.maxRetries !== undefined && { retryOptions: { maxRetries: options.maxRetries } }),
    });
  }

  private get timeoutMs(): number {
    return this.options.timeoutMs ?? 10_000;
  }

  list(): Promise<Cluster[]> {
    return this.lists.list(() => this.fetch());
  }

  problem(): string | undefined {
    return this.lastProblem;
  }

  private scope(): string {
    const { subscriptionId, resourceGroup } = this.options;
    return resourceGroup ? `resource group ${resourceGroup} of subscription ${subscriptionId}` : `subscription ${subscriptionId}`;
  }

  private async fetch(): Promise<Cluster[]> {
    try {
      const listed = await withDeadline(this.listAll(), this.timeoutMs, `listing the AKS clusters of ${this.scope()}`);
      const located = new Map<string, Located>();
      const clusters = listed.map((aks) => {
        const cluster = toCluster(aks);
        located.set(cluster.tag.toLowerCase(), {
          resourceGroup: resourceGroupOf(cluster.tag),
          name: cluster.name,
          entraOnly: aks.aadProfile !== undefined && aks.disableLocalAccounts === true,
        });
        return cluster;
      });
      this.located = located;
      this.lastProblem = undefined;
      return this.lists.store(clusters);
    } catch (error) {
      const stale = this.lists.stale();
      if (!stale) throw error;
      this.lastProblem = `Azure did not list the AKS clusters of ${this.scope()} (${describe(error)}); serving the list of ${stale.ageSeconds} s ago`;
      this.options.logger.warn({ err: error, backend: 'aks', cache_age_s: stale.ageSeconds }, 'Azure did not answer; leasing from the cached cluster list');
      return stale.clusters;
    }
  }

  /** Every page of the listing (the SDK's iterator follows nextLink). */
  private async listAll(): Promise<ManagedCluster[]> {
    const abortSignal = AbortSignal.timeout(this.timeoutMs);
    const pages = this.options.resourceGroup
      ? this.client.managedClusters.listByResourceGroup(this.options.resourceGroup, { abortSignal })
      : this.client.managedClusters.list({ abortSignal });
    const clusters: ManagedCluster[] = [];
    for await (const cluster of pages) clusters.push(cluster);
    return clusters;
  }

  private locate(cluster: Cluster): Located {
    const located = this.located.get(cluster.tag.toLowerCase());
    if (!located) throw new Error(`cluster ${cluster.id} is not in the AKS pool's last listing`);
    return located;
  }

  async kubeconfigFor(cluster: Cluster): Promise<string> {
    throw new Error(`AKS pools hand out per-lease credentials only (LEASE_CREDENTIALS=serviceaccount), not the pool's credentials for ${cluster.id}`);
  }

  async adminKubeconfigFor(cluster: Cluster): Promise<string> {
    const { resourceGroup, name, entraOnly } = this.locate(cluster);
    const abortSignal = AbortSignal.timeout(this.timeoutMs);
    const what = `the credentials of AKS cluster ${resourceGroup}/${name}`;
    const result = await withDeadline(
      entraOnly
        ? this.client.managedClusters.listClusterUserCredentials(resourceGroup, name, { abortSignal })
        : this.client.managedClusters.listClusterAdminCredentials(resourceGroup, name, { abortSignal }),
      this.timeoutMs,
      `fetching ${what}`,
    );
    const value = result.kubeconfigs?.[0]?.value;
    if (!value) throw new Error(`Azure returned no kubeconfig with ${what}`);
    const { server, caData, user } = await parseCredentialKubeconfig(Buffer.from(value).toString('utf8'), what);
    let kubeUser: Record<string, unknown>;
    if (entraOnly) {
      // The user kubeconfig names kubelogin; the claimer is its own kubelogin.
      const token = await withDeadline(this.credential.getToken(AKS_SERVER_SCOPE, { abortSignal }), this.timeoutMs, 'getting an Entra ID token for AKS');
      if (!token?.token) throw new Error('Entra ID returned no token for AKS');
      kubeUser = { token: token.token };
    } else {
      if (!user.token && !(user.certData && user.keyData)) throw new Error(`${what} have neither a token nor a client certificate`);
      kubeUser = {
        ...(user.certData && user.keyData && { 'client-certificate-data': user.certData, 'client-key-data': user.keyData }),
        ...(user.token && { token: user.token }),
      };
    }
    // The API server as its credentials name it, with its CA: lessees' kubeconfigs carry the
    // same (ClusterAccess reads them from this kubeconfig).
    return buildKubeconfig({ contextName: `aks_${resourceGroup}_${name}`, server, caData, user: kubeUser });
  }

  async close(): Promise<void> {
    // The SDK keeps nothing open between calls; what was listed is dropped.
    this.located.clear();
    this.lists.clear();
  }
}

interface CredentialParts {
  server: string;
  caData?: string;
  user: { token?: string; certData?: string; keyData?: string };
}

/** The current context's cluster and user of a kubeconfig from AKS. Its contents are never shown. */
async function parseCredentialKubeconfig(text: string, what: string): Promise<CredentialParts> {
  const { KubeConfig } = await import('@kubernetes/client-node');
  const config = new KubeConfig();
  try {
    config.loadFromString(text);
  } catch {
    throw new Error(`Azure returned a kubeconfig that could not be read with ${what}`);
  }
  const cluster = config.getCurrentCluster();
  const user = config.getCurrentUser();
  if (!cluster?.server || !user) throw new Error(`the kubeconfig with ${what} has no current cluster and user`);
  return { server: cluster.server, ...(cluster.caData && { caData: cluster.caData }), user: { token: user.token, certData: user.certData, keyData: user.keyData } };
}

/** An Azure error in a few words, for operators: its code and status, never a request. */
function describe(error: unknown): string {
  const { code, statusCode, message } = (error ?? {}) as { code?: unknown; statusCode?: unknown; message?: unknown };
  const head = [typeof code === 'string' ? code : undefined, typeof statusCode === 'number' ? `HTTP ${statusCode}` : undefined].filter(Boolean).join(', ');
  return head || (typeof message === 'string' ? message.split('\n')[0].slice(0, 200) : 'unknown error');
}

function withDeadline<T>(work: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} took longer than ${ms} ms`)), ms);
  });
  return Promise.race([work, deadline]).finally(() => clearTimeout(timer));
}
