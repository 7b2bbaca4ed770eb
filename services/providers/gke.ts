// The GKE pool: clusters listed from a Google Cloud project with @google-cloud/container.
// A cluster is location + name (the same name in two zones is two clusters); only RUNNING ones
// are leasable. The list is cached so that an acquire normally costs no GKE call, and a warm
// cache keeps the claimer leasing through a GKE outage.

import { ClusterManagerClient, type protos } from '@google-cloud/container';
import * as grpc from '@grpc/grpc-js';
import { JWT, OAuth2Client, gaxios } from 'google-auth-library';
import type { Logger } from 'pino';
import type { GkeConfig } from '../config.ts';
import { buildKubeconfig } from '../kubeconfig.ts';
import type { Clock } from '../write-path.ts';
import { ClusterListCache } from './list-cache.ts';
import type { Cluster, ClusterProvider, ClusterStatus } from './types.ts';
import { MANAGED_LABEL } from './gke-operations.ts';

type GkeCluster = protos.google.container.v1.ICluster;

/**
 * The only scope of the token handed to lessees: GKE accepts it to authenticate the service
 * account, and it cannot call any other Google Cloud API. A cloud-platform token would hand
 * every lessee the claimer's project-wide powers.
 */
export const LESSEE_TOKEN_SCOPE = 'https://www.googleapis.com/auth/userinfo.email';
/** The claimer's own calls (GKE's API, and administering leased clusters) use its full powers. */
export const CLAIMER_SCOPE = 'https://www.googleapis.com/auth/cloud-platform';

const STATUSES: readonly ClusterStatus[] = ['RUNNING', 'PROVISIONING', 'RECONCILING', 'STOPPING', 'ERROR', 'DEGRADED'];

/** Adds no credentials: for an emulator, and it keeps google-gax from probing the metadata server. */
class NoCredentials extends OAuth2Client {
  override async getRequestHeaders(): Promise<Headers> {
    return new Headers();
  }
}

export function gkeClientFor(config: GkeConfig): ClusterManagerClient {
  if (config.emulatorHost) {
    const separator = config.emulatorHost.lastIndexOf(':');
    return new ClusterManagerClient({
      apiEndpoint: config.emulatorHost.slice(0, separator),
      port: Number(config.emulatorHost.slice(separator + 1)),
      sslCreds: grpc.credentials.createInsecure(),
      authClient: new NoCredentials(),
    });
  }
  return new ClusterManagerClient({ authClient: serviceAccountClient(config.accountJson as string, CLAIMER_SCOPE), projectId: config.projectId });
}

/** Mints an access token of the service account with the given scope; none without an account. */
export type TokenSource = () => Promise<string | undefined>;

/** Where google-auth-library sends a service account's signed assertion for an access token. */
const GOOGLE_TOKEN_URL = 'https://oauth2.googleapis.com/token';

/**
 * The key's own `token_uri` is honoured (google-auth-library always asks Google's public
 * endpoint): a private or emulated token service is named in the key, as Google's key files do.
 * https only, or plain http on loopback.
 */
function tokenTransporter(tokenUri: unknown): gaxios.Gaxios | undefined {
  if (typeof tokenUri !== 'string' || tokenUri === GOOGLE_TOKEN_URL) return undefined;
  const target = new URL(tokenUri);
  if (target.protocol !== 'https:' && !(target.protocol === 'http:' && ['127.0.0.1', 'localhost', '[::1]'].includes(target.hostname))) {
    throw new Error('the service account key\'s token_uri must be an https URL');
  }
  // The library's own gaxios (its module format), not a second copy: it checks instances.
  return new gaxios.Gaxios({
    adapter: (options, defaultAdapter) => defaultAdapter(String(options.url) === GOOGLE_TOKEN_URL ? { ...options, url: target } : options),
  });
}

/** The service account of a JSON key as an auth client with one scope. */
function serviceAccountClient(accountJson: string, scope: string): JWT {
  const key = JSON.parse(accountJson);
  const transporter = tokenTransporter(key.token_uri);
  return new JWT({ email: key.client_email, key: key.private_key, keyId: key.private_key_id, scopes: [scope], ...(transporter && { transporter }) });
}

export function googleTokenSource(config: GkeConfig, scope: string): TokenSource {
  if (!config.accountJson) return async () => undefined;
  const client = serviceAccountClient(config.accountJson, scope);
  return async () => {
    const { token } = await client.getAccessToken();
    if (!token) throw new Error('Google returned no access token for the service account');
    return token;
  };
}

export interface GkeTokens {
  /** userinfo.email only: what LEASE_CREDENTIALS=google-token hands to lessees. */
  lessee: TokenSource;
  /** cloud-platform: the claimer's own access to leased clusters. None with an emulator. */
  claimer: TokenSource;
}

export function gkeTokens(config: GkeConfig): GkeTokens {
  return {
    lessee: googleTokenSource(config, LESSEE_TOKEN_SCOPE),
    // Emulator clusters are test stand-ins: the claimer reaches them with no Google token.
    claimer: config.emulatorHost ? async () => undefined : googleTokenSource(config, CLAIMER_SCOPE),
  };
}

export interface GkeProviderOptions {
  projectId: string;
  zone: string;
  registryLocation?: string;
  cacheSeconds: number;
  clock: Clock;
  logger: Logger;
  /** Deadline of one GKE call, in ms. */
  timeoutMs?: number;
  /** A managed pool: only the clusters whose MANAGED_LABEL names it are the pool's. */
  managedPool?: string;
}

export function toCluster(gke: GkeCluster, registryLocation: string | null = null): Cluster {
  const location = gke.location || gke.zone || '';
  const name = gke.name ?? '';
  const endpoint = gke.endpoint ?? '';
  const status = STATUSES.find((known) => known === String(gke.status)) ?? 'STATUS_UNSPECIFIED';
  const caData = gke.masterAuth?.clusterCaCertificate || undefined;
  return {
    id: `${location}/${name}`,
    name,
    location,
    endpoint,
    server: `https://${endpoint}`,
    ...(caData && { caData }),
    labels: { ...(gke.resourceLabels ?? {}) },
    version: gke.currentMasterVersion ?? '',
    status,
    tag: gke.id || `${location}/${name}`,
    gpu: (gke.nodePools ?? []).some((pool) => (pool.config?.accelerators ?? []).some((accelerator) => Number(accelerator.acceleratorCount ?? 0) > 0)),
    registryLocation,
  };
}

export class GkeProvider implements ClusterProvider {
  readonly kind = 'gke';
  /** The original CLI sends `google`. */
  readonly aliases = ['gke', 'google'] as const;
  private readonly lists: ClusterListCache;
  /** Why the last list came from the cache or missed zones, for the pool's health. */
  private lastProblem?: string;

  /** The GKE client, for a managed pool's operations. */
  get gke(): ClusterManagerClient {
    return this.client;
  }

  /** Forgets the cached list: the next list() asks GKE (after a managed pool's operation ended). */
  invalidate(): void {
    this.lists.invalidate();
  }

  problem(): string | undefined {
    return this.lastProblem;
  }

  constructor(
    private readonly client: ClusterManagerClient,
    private readonly tokens: GkeTokens,
    private readonly options: GkeProviderOptions,
  ) {
    this.lists = new ClusterListCache(options.clock, options.cacheSeconds);
  }

  list(): Promise<Cluster[]> {
    return this.lists.list(() => this.fetch());
  }

  private async fetch(): Promise<Cluster[]> {
    const parent = `projects/${this.options.projectId}/locations/${this.options.zone}`;
    try {
      const [response] = await this.client.listClusters({ parent }, { timeout: this.options.timeoutMs ?? 10_000 });
      const own = (response.clusters ?? []).filter((cluster) => this.options.managedPool === undefined || cluster.resourceLabels?.[MANAGED_LABEL] === this.options.managedPool);
      // A managed pool's own resizes (hibernate, wake) leave its clusters RECONCILING: the table's
      // states (hibernated, waking) keep them from being leased meanwhile, and a waiter for the pool
      // must not take it for a pool with nothing to lease.
      const listed = own
        .map((cluster) => toCluster(cluster, this.options.registryLocation ?? null))
        .map((cluster) => (this.options.managedPool === undefined ? cluster : { ...cluster, managed: true, ...(cluster.status === 'RECONCILING' && { status: 'RUNNING' as const }) }));
      const clusters = [...listed, ...this.stillInMissingZones(listed, response.missingZones ?? [])];
      this.lastProblem = (response.missingZones ?? []).length > 0 ? `GKE could not reach ${(response.missingZones ?? []).join(', ')}` : undefined;
      return this.lists.store(clusters);
    } catch (error) {
      const stale = this.lists.stale();
      if (!stale) throw error;
      const code = (error as { code?: unknown }).code;
      this.lastProblem = `GKE did not answer (${typeof code === 'number' || typeof code === 'string' ? code : 'error'}); leasing from the list of ${new Date(stale.fetchedAt).toISOString()}`;
      this.options.logger.warn({ err: error, backend: 'gke', cache_age_s: stale.ageSeconds }, 'GKE did not answer; leasing from the cached cluster list');
      return stale.clusters;
    }
  }

  /**
   * Clusters of zones GKE could not reach this time (`missingZones`), as the last list knew
   * them: a zonal outage must not make their leases vanish. They are not leased meanwhile.
   */
  private stillInMissingZones(listed: Cluster[], missingZones: readonly string[]): Cluster[] {
    const last = this.lists.last;
    if (missingZones.length === 0 || !last) return [];
    const seen = new Set(listed.map((cluster) => cluster.id));
    const inMissingZone = (location: string) => missingZones.some((zone) => zone === location || zone.startsWith(`${location}-`));
    const kept = last.filter((cluster) => !seen.has(cluster.id) && inMissingZone(cluster.location));
    if (kept.length > 0) {
      this.options.logger.warn({ backend: 'gke', missing_zones: missingZones, clusters: kept.length }, 'GKE could not reach some zones; their clusters are kept from the last list and not leased');
    }
    return kept.map((cluster) => ({ ...cluster, status: 'UNREACHABLE' }));
  }

  async kubeconfigFor(cluster: Cluster): Promise<string> {
    return this.kubeconfigWith(cluster, await this.tokens.lessee());
  }

  async adminKubeconfigFor(cluster: Cluster): Promise<string> {
    return this.kubeconfigWith(cluster, await this.tokens.claimer());
  }

  private kubeconfigWith(cluster: Cluster, token: string | undefined): string {
    return buildKubeconfig({
      contextName: `gke_${this.options.projectId}_${cluster.location}_${cluster.name}`,
      server: cluster.server,
      caData: cluster.caData,
      user: token ? { token } : {},
    });
  }

  async close(): Promise<void> {
    await this.client.close();
  }
}
