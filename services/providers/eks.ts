// The EKS pool: clusters listed from one or more AWS regions with @aws-sdk/client-eks. A cluster
// is region + name (names are unique per region only); only ACTIVE ones are leasable. The list is
// cached so that an acquire normally costs no AWS call, and a warm cache keeps the claimer
// leasing through an outage. Regions fail alone: one region's outage or missing permission must
// not hide the others, and its clusters are kept from the last list (not leased) so that their
// leases do not vanish.
//
// The claimer reaches a cluster with the standard EKS bearer token (what `aws eks get-token` and
// aws-iam-authenticator make): a presigned STS GetCallerIdentity URL, which EKS checks with STS to
// learn the caller's IAM identity. Anyone holding it acts as the claimer's AWS identity for 15
// minutes, so it is never handed to a lessee: an EKS pool gives out per-lease credentials only.

import { Sha256 } from '@aws-crypto/sha256-js';
import { DescribeClusterCommand, DescribeNodegroupCommand, EKSClient, paginateListClusters, paginateListNodegroups, type Cluster as AwsCluster } from '@aws-sdk/client-eks';
import { fromNodeProviderChain } from '@aws-sdk/credential-providers';
import { HttpRequest } from '@smithy/protocol-http';
import { SignatureV4 } from '@smithy/signature-v4';
import type { AwsCredentialIdentity, AwsCredentialIdentityProvider, HttpRequest as SignedRequest } from '@smithy/types';
import type { Logger } from 'pino';
import { buildKubeconfig, hostOf } from '../kubeconfig.ts';
import type { Clock } from '../write-path.ts';
import { ClusterListCache } from './list-cache.ts';
import type { Cluster, ClusterProvider, ClusterStatus } from './types.ts';

/** An EKS pool never hands its own credentials to a lessee (`credentials: pool` is refused). */
export const EKS_REFUSES_POOL_CREDENTIALS = true;

export type AwsCredentials = AwsCredentialIdentity | AwsCredentialIdentityProvider;

export interface EksProviderOptions {
  regions: string[];
  /** The EKS API's URL, as AWS_ENDPOINT_URL_EKS (which the SDK also reads by itself). */
  endpoint?: string;
  cacheSeconds: number;
  clock: Clock;
  logger: Logger;
  /** Deadline of one EKS call, in ms. */
  timeoutMs?: number;
  /** Default: the SDK's Node chain (env, IRSA web identity, EKS Pod Identity, profiles, IMDS). */
  credentials?: AwsCredentials;
}

/** aws-iam-authenticator's prefix; the header that binds the token to one cluster. */
const TOKEN_PREFIX = 'k8s-aws-v1.';
const CLUSTER_ID_HEADER = 'x-k8s-aws-id';
/** What aws-iam-authenticator presigns with; EKS refuses more than 60. */
const TOKEN_EXPIRES_SECONDS = 60;
/** DescribeCluster calls in flight per region: a large account is listed quickly, within limits. */
const DESCRIBE_CONCURRENCY = 8;
/** The most EKS returns in one page. */
const PAGE_SIZE = 100;
/** Managed node groups' AMI types with GPU drivers: AL2_x86_64_GPU, AL2023_x86_64_NVIDIA, BOTTLEROCKET_*_NVIDIA. */
const GPU_AMI = /GPU|NVIDIA/;
/**
 * How long a cluster's node groups are taken as known: they change far less often than the list
 * is refreshed, and asking for them costs a call per node group.
 */
const GPU_MEMO_MS = 10 * 60_000;

const STATUSES: Record<string, ClusterStatus> = {
  ACTIVE: 'RUNNING',
  CREATING: 'PROVISIONING',
  PENDING: 'PROVISIONING',
  UPDATING: 'RECONCILING',
  DELETING: 'STOPPING',
  FAILED: 'ERROR',
};

/** RFC 3986 encoding, which SigV4's canonical query uses. */
function rfc3986(value: string): string {
  return encodeURIComponent(value).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

export function stsRequest(region: string, clusterName?: string): HttpRequest {
  return new HttpRequest({
    method: 'GET',
    protocol: 'https:',
    hostname: `sts.${region}.amazonaws.com`,
    path: '/',
    query: { Action: 'GetCallerIdentity', Version: '2011-06-15' },
    headers: { host: `sts.${region}.amazonaws.com`, ...(clusterName !== undefined && { [CLUSTER_ID_HEADER]: clusterName }) },
  });
}

export function stsSigner(region: string, credentials: AwsCredentials): SignatureV4 {
  return new SignatureV4({ service: 'sts', region, sha256: Sha256, credentials });
}

export function urlOf(request: SignedRequest): string {
  const query = Object.entries(request.query ?? {})
    .flatMap(([key, value]) => (Array.isArray(value) ? value : [value]).map((one) => `${rfc3986(key)}=${rfc3986(String(one ?? ''))}`))
    .join('&');
  return `${request.protocol}//${request.hostname}${request.path}?${query}`;
}

/**
 * The EKS bearer token for a cluster, as aws-iam-authenticator makes it: a presigned STS
 * GetCallerIdentity URL with the cluster's name in a signed header (a token for one cluster is
 * refused by another), base64url without padding.
 */
export async function eksToken(clusterName: string, region: string, credentials: AwsCredentials, clock: Clock = { now: () => Date.now() }): Promise<string> {
  const presigned = await stsSigner(region, credentials).presign(stsRequest(region, clusterName), {
    expiresIn: TOKEN_EXPIRES_SECONDS,
    signingDate: new Date(clock.now()),
  });
  return TOKEN_PREFIX + Buffer.from(urlOf(presigned)).toString('base64url');
}

export function toCluster(region: string, eks: AwsCluster, gpu = false): Cluster {
  const name = eks.name ?? '';
  const server = eks.endpoint ?? '';
  const caData = eks.certificateAuthority?.data || undefined;
  return {
    id: `${region}/${name}`,
    name,
    location: region,
    endpoint: server ? hostOf(server) : '',
    server,
    ...(caData && { caData }),
    labels: { ...(eks.tags ?? {}) },
    version: eks.version ?? '',
    status: STATUSES[eks.status ?? ''] ?? 'STATUS_UNSPECIFIED',
    tag: eks.arn || `${region}/${name}`,
    gpu,
    registryLocation: null,
  };
}

/** What an operator can read of an AWS error: its type, never its request or credentials. */
function errorName(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  const code = (error as { code?: unknown }).code;
  if (error.name && error.name !== 'Error') return error.name;
  return typeof code === 'string' ? code : error.message;
}

function errorSummary(error: unknown): Record<string, unknown> {
  if (!(error instanceof Error)) return { message: String(error) };
  const metadata = (error as { $metadata?: { httpStatusCode?: number; requestId?: string } }).$metadata;
  return { type: errorName(error), message: error.message, status: metadata?.httpStatusCode, request_id: metadata?.requestId };
}

async function mapBounded<T, R>(items: readonly T[], limit: number, work: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const index = next++;
      results[index] = await work(items[index] as T);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

type RegionResult = { region: string; clusters: Cluster[] } | { region: string; error: unknown };

export class EksProvider implements ClusterProvider {
  readonly kind = 'eks';
  readonly aliases = ['eks', 'aws'] as const;
  private readonly clients: Map<string, EKSClient>;
  private readonly credentials: AwsCredentials;
  private readonly lists: ClusterListCache;
  private lastProblem?: string;
  /** Whether a cluster (by ARN) has GPU node groups, and until when that is taken as known. */
  private readonly gpus = new Map<string, { gpu: boolean; until: number }>();

  constructor(private readonly options: EksProviderOptions) {
    if (options.regions.length === 0) throw new Error('an EKS pool needs at least one region');
    this.credentials = options.credentials ?? fromNodeProviderChain();
    this.lists = new ClusterListCache(options.clock, options.cacheSeconds);
    const timeoutMs = options.timeoutMs ?? 10_000;
    this.clients = new Map(
      options.regions.map((region) => [
        region,
        new EKSClient({
          region,
          credentials: this.credentials,
          ...(options.endpoint && { endpoint: options.endpoint }),
          // One retry: a listing that stalls holds up every acquire waiting on it.
          maxAttempts: 2,
          requestHandler: { requestTimeout: timeoutMs, connectionTimeout: timeoutMs },
        }),
      ]),
    );
  }

  list(): Promise<Cluster[]> {
    return this.lists.list(() => this.fetch());
  }

  problem(): string | undefined {
    return this.lastProblem;
  }

  private async fetch(): Promise<Cluster[]> {
    const results = await Promise.all([...this.clients].map(([region, client]) => this.listRegion(region, client)));
    const failed = results.filter((result) => 'error' in result);
    const problem = failed.length > 0 ? failed.map((result) => `region ${result.region}: ${errorName(result.error)}`).join('; ') : undefined;
    for (const result of failed) {
      this.options.logger.warn({ backend: 'eks', region: result.region, error: errorSummary(result.error) }, 'EKS did not list the clusters of a region');
    }
    if (failed.length === results.length) {
      this.lastProblem = problem;
      const stale = this.lists.stale();
      if (!stale) throw new Error(`EKS listed no region: ${problem}`);
      this.options.logger.warn({ backend: 'eks', cache_age_s: stale.ageSeconds }, 'EKS did not answer; leasing from the cached cluster list');
      return stale.clusters;
    }
    const clusters = results.flatMap((result) => ('error' in result ? this.keptFrom(result.region) : result.clusters));
    const live = new Set(clusters.map((cluster) => cluster.tag));
    for (const key of this.gpus.keys()) if (!live.has(key)) this.gpus.delete(key);
    this.lastProblem = problem;
    return this.lists.store(clusters);
  }

  private async listRegion(region: string, client: EKSClient): Promise<RegionResult> {
    try {
      const names: string[] = [];
      for await (const page of paginateListClusters({ client, pageSize: PAGE_SIZE }, {})) names.push(...(page.clusters ?? []));
      const described = await mapBounded(names, DESCRIBE_CONCURRENCY, async (name) => {
        try {
          const { cluster } = await client.send(new DescribeClusterCommand({ name }));
          return cluster ? toCluster(region, cluster, await this.hasGpu(region, client, cluster)) : undefined;
        } catch (error) {
          // Deleted between the list and its description: gone, not a failure of the region.
          if (error instanceof Error && error.name === 'ResourceNotFoundException') return undefined;
          throw error;
        }
      });
      return { region, clusters: described.filter((cluster) => cluster !== undefined) };
    } catch (error) {
      return { region, error };
    }
  }

  /**
   * From the AMI types of the managed node groups (self-managed nodes and Karpenter's are not
   * seen: such a cluster counts as without GPUs). Only leasable clusters are asked about. A
   * failure here (no eks:ListNodegroups in the policy, say) does not fail the region: the last
   * answer stands, or no GPUs.
   */
  private async hasGpu(region: string, client: EKSClient, cluster: AwsCluster): Promise<boolean> {
    const clusterName = cluster.name;
    if (cluster.status !== 'ACTIVE' || !clusterName) return false;
    const key = cluster.arn || `${region}/${clusterName}`;
    const known = this.gpus.get(key);
    const now = this.options.clock.now();
    if (known && now < known.until) return known.gpu;
    try {
      let gpu = false;
      pages: for await (const page of paginateListNodegroups({ client, pageSize: PAGE_SIZE }, { clusterName })) {
        for (const nodegroupName of page.nodegroups ?? []) {
          const { nodegroup } = await client.send(new DescribeNodegroupCommand({ clusterName, nodegroupName }));
          if (GPU_AMI.test(nodegroup?.amiType ?? '')) {
            gpu = true;
            break pages;
          }
        }
      }
      this.gpus.set(key, { gpu, until: now + GPU_MEMO_MS });
      return gpu;
    } catch (error) {
      this.options.logger.warn({ backend: 'eks', region, cluster: clusterName, error: errorSummary(error) }, 'EKS did not list the node groups of a cluster; its GPUs are taken as last known');
      return known?.gpu ?? false;
    }
  }

  /** A failed region's clusters as the last list knew them; not leased until it answers again. */
  private keptFrom(region: string): Cluster[] {
    const kept = (this.lists.last ?? []).filter((cluster) => cluster.location === region);
    if (kept.length > 0) {
      this.options.logger.warn({ backend: 'eks', region, clusters: kept.length }, 'EKS region unreachable; its clusters are kept from the last list and not leased');
    }
    return kept.map((cluster) => ({ ...cluster, status: 'UNREACHABLE' }));
  }

  async kubeconfigFor(cluster: Cluster): Promise<string> {
    throw new Error(`${cluster.id}: EKS pools hand out per-lease credentials only: the claimer's AWS identity is never given to a lessee`);
  }

  async adminKubeconfigFor(cluster: Cluster): Promise<string> {
    return buildKubeconfig({
      contextName: `eks_${cluster.location}_${cluster.name}`,
      server: cluster.server,
      caData: cluster.caData,
      // Signed at the real time whatever the provider's clock: AWS checks the token against its own.
      user: { token: await eksToken(cluster.name, cluster.location, this.credentials) },
    });
  }

  async close(): Promise<void> {
    for (const client of this.clients.values()) client.destroy();
  }
}
