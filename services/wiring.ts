// Builds the app's dependencies from the configuration, once. Cloud libraries are imported only
// in the mode that needs them, so local mode starts fast and small.

import { readFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import type { Logger } from 'pino';
import type { AppDeps } from '../app.ts';
import { createAuthenticator } from './auth.ts';
import type { Config } from './config.ts';
import { ClusterAccess } from './cluster-access.ts';
import { LeaseCredentialRevoker, PoolCredentials, ProviderCredentials, ServiceAccountCredentials } from './credentials.ts';
import { Facts } from './facts.ts';
import { Janitor, type JanitorOptions } from './janitor.ts';
import type { ManagedRunner, ManagedRunnerOptions } from './managed-runner.ts';
import { LeaseService } from './leases.ts';
import { Metrics } from './metrics.ts';
import { startReaper } from './reaper.ts';
import { UnclearGrants } from './unclear-grants.ts';
import { Waiting, type WaitingOptions } from './waiting.ts';
import { DEFAULT_ALIASES, PoolSet, PoolsFileError, readPoolsFile, type Pool, type PoolSpec } from './providers/pools.ts';
import { StaticProvider } from './providers/static.ts';
import type { Cluster, ClusterProvider } from './providers/types.ts';
import { MemoryLeaseStore } from './store/memory.ts';
import { FileLeaseStore, unwritableFolder, type FileStoreOptions } from './store/file.ts';
import type { LeaseStore } from './store/types.ts';
import { WritePath, systemClock, type Clock, type WritePathOptions } from './write-path.ts';

export interface Services {
  deps: AppDeps;
  writePath: WritePath;
  waiting: Waiting;
  janitor: Janitor;
  /** Releases clients and timers; the HTTP server is closed by its owner. */
  close(): Promise<void>;
}

export interface BuildOptions {
  clock?: Clock;
  /** The shared token; main.ts resolves it (from AUTH_TOKEN or the local token file). None: OIDC only. */
  authToken?: string;
  /** Benchmarks switch group commit off to compare with plain retry-on-conflict. */
  writePath?: WritePathOptions;
  /** Tests shorten the waiters' poll and ticket times. */
  waiting?: WaitingOptions;
  /** Tests shorten the janitor's polls. */
  janitor?: Partial<JanitorOptions>;
  /** Process metrics are registered once per process; apps built in tests may skip them. */
  processMetrics?: boolean;
  /** Tests shorten the file store's lock times. */
  fileStore?: FileStoreOptions;
  /** Tests make the Kubernetes store's shard keeper look more often. */
  keeperIntervalMs?: number;
  /** Tests shorten the managed pools' ticks, claims and polls. */
  managed?: Pick<ManagedRunnerOptions, 'intervalMs' | 'claimMs' | 'pollMs' | 'suffix'>;
}

/** The one pool the environment describes (no pools file): its cluster ids as they always were. */
async function environmentPool(config: Config, logger: Logger, clock: Clock): Promise<Pool> {
  let provider: ClusterProvider;
  if (config.poolKubeconfig) {
    const { loadKubeconfigPool } = await import('./providers/kubeconfig.ts');
    provider = await loadKubeconfigPool(config.poolKubeconfig.file, { contexts: config.poolKubeconfig.contexts, probeTimeoutMs: config.backendTimeoutSeconds * 1000 });
  } else if (!config.gke) {
    provider = await StaticProvider.load(config.staticPoolFile);
  } else {
    provider = await gkeProvider(config, logger, clock, {
      projectId: config.gke.projectId,
      zone: config.gke.zone,
      ...(config.gke.accountJson && { accountJson: config.gke.accountJson }),
      ...(config.gke.emulatorHost && { emulatorHost: config.gke.emulatorHost }),
    }, config.registryLocation);
  }
  const settings = provider instanceof StaticProvider ? provider.settings : {};
  return { name: provider.kind, kind: provider.kind, provider, aliases: provider.aliases, labels: {}, ...settings, prefixIds: false };
}

async function gkeProvider(config: Config, logger: Logger, clock: Clock, gke: NonNullable<Config['gke']>, registryLocation?: string, managedPool?: string): Promise<ClusterProvider> {
  const { GkeProvider, gkeClientFor, gkeTokens } = await import('./providers/gke.ts');
  return new GkeProvider(gkeClientFor(gke), gkeTokens(gke), {
    projectId: gke.projectId,
    zone: gke.zone,
    ...(registryLocation && { registryLocation }),
    ...(managedPool && { managedPool }),
    cacheSeconds: config.clusterCacheSeconds,
    timeoutMs: config.backendTimeoutSeconds * 1000,
    clock,
    logger,
  });
}

/** One pool of the pools file, its provider built with the SDK's own credential sources. */
async function filePool(config: Config, logger: Logger, clock: Clock, spec: PoolSpec, labels: Record<string, string>): Promise<Pool> {
  const where = `pool ${spec.name}`;
  let provider: ClusterProvider;
  let managed: Pool['managed'];
  switch (spec.provider) {
    case 'gke': {
      let accountJson: string | undefined;
      if (spec.key_file) {
        try {
          accountJson = await readFile(spec.key_file, 'utf8');
        } catch (error) {
          throw new PoolsFileError(`${where}: key_file ${spec.key_file} cannot be read (${(error as { code?: string }).code ?? 'unreadable'})`);
        }
      }
      if (!accountJson && !spec.endpoint) throw new PoolsFileError(`${where}: a gke pool needs key_file (the service account's JSON key) or endpoint (an emulator)`);
      if (spec.managed) {
        const { resolveManaged, ManagedSettingsError } = await import('./managed-pool.ts');
        try {
          managed = { settings: resolveManaged(spec.name, spec.managed), projectId: spec.project, location: spec.location };
        } catch (error) {
          throw error instanceof ManagedSettingsError ? new PoolsFileError(error.message) : error;
        }
      }
      provider = await gkeProvider(config, logger, clock, { projectId: spec.project, zone: spec.location, ...(accountJson && { accountJson }), ...(spec.endpoint && { emulatorHost: spec.endpoint }) }, spec.registry_location ?? config.registryLocation, spec.managed && spec.name);
      break;
    }
    case 'eks':
    case 'aks':
      provider = await cloudProvider(config, logger, clock, spec);
      break;
    case 'static':
      provider = await StaticProvider.load(spec.file);
      break;
    case 'kubeconfig': {
      const { loadKubeconfigPool } = await import('./providers/kubeconfig.ts');
      provider = await loadKubeconfigPool(spec.file, { contexts: spec.contexts ?? ['*'], probeTimeoutMs: config.backendTimeoutSeconds * 1000 });
      break;
    }
  }
  const settings = provider instanceof StaticProvider ? provider.settings : {};
  // A pool answers to its name and its provider's kind; `aliases` replace the other defaults (google, aws, azure).
  const aliases = [...new Set([spec.name, spec.provider, ...(spec.aliases ?? (provider instanceof StaticProvider ? provider.aliases : DEFAULT_ALIASES[spec.provider]))].map((alias) => alias.toLowerCase()))];
  return {
    name: spec.name,
    kind: spec.provider,
    provider,
    aliases,
    labels: { ...labels, ...spec.labels },
    ...settings,
    ...(spec.credentials && { credentials: spec.credentials }),
    ...(spec.cleanup && { cleanup: spec.cleanup }),
    ...(managed && { managed }),
    prefixIds: true,
  };
}

/**
 * EKS and AKS pools, their SDKs loaded only when a pools file names one. Credentials come from
 * each SDK's own default chain (environment, web identity, pod identity, managed identity).
 */
async function cloudProvider(config: Config, logger: Logger, clock: Clock, spec: Extract<PoolSpec, { provider: 'eks' | 'aks' }>): Promise<ClusterProvider> {
  const common = { cacheSeconds: config.clusterCacheSeconds, clock, logger: logger.child({ pool: spec.name }), timeoutMs: config.backendTimeoutSeconds * 1000 };
  if (spec.provider === 'eks') {
    const { EksProvider } = await import('./providers/eks.ts');
    return new EksProvider({ ...common, regions: spec.regions, ...(spec.endpoint && { endpoint: spec.endpoint }) });
  }
  const { AksProvider } = await import('./providers/aks.ts');
  return new AksProvider({
    ...common,
    subscriptionId: spec.subscription,
    ...(spec.resource_group && { resourceGroup: spec.resource_group }),
    ...(spec.endpoint && { endpoint: spec.endpoint }),
    ...(spec.authority_host && { authorityHost: spec.authority_host }),
  });
}

async function buildPools(config: Config, logger: Logger, clock: Clock): Promise<PoolSet> {
  if (!config.poolsFile) return new PoolSet([await environmentPool(config, logger, clock)], logger, clock, 2 * config.backendTimeoutSeconds * 1000);
  const file = await readPoolsFile(config.poolsFile);
  const pools: Pool[] = [];
  for (const spec of file.pools) pools.push(await filePool(config, logger, clock, spec, file.labels));
  if (config.leaseCredentials === 'pool') {
    const cloud = pools.find((pool) => pool.kind === 'eks' || pool.kind === 'aks');
    if (cloud) throw new PoolsFileError(`LEASE_CREDENTIALS=pool would hand lessees the claimer's own cloud identity in pool ${cloud.name} (${cloud.kind}); set credentials per pool instead`);
  }
  return new PoolSet(pools, logger, clock, 2 * config.backendTimeoutSeconds * 1000);
}

async function buildStore(config: Config, logger: Logger, provider: ClusterProvider, options: BuildOptions): Promise<LeaseStore> {
  if (config.leaseStore === 'file') return FileLeaseStore.open(config.leaseStoreFile, logger, options.fileStore);
  // Nothing survives a restart: for trying the claimer out, and for measuring the HTTP layer.
  if (config.leaseStore === 'memory') return new MemoryLeaseStore();
  const { KubernetesLeaseStore, kubeConfigFrom } = await import('./store/kubernetes.ts');
  return KubernetesLeaseStore.fromKubeConfig(kubeConfigFrom(config.kubeconfigPath), {
    namespace: config.namespace,
    serviceName: config.serviceName,
    timeoutMs: config.backendTimeoutSeconds * 1000,
    logger,
    maxShards: config.shards.clusters,
    ticketShards: config.shards.tickets,
    poolSize: async () => (await provider.list()).length,
    replica: config.replicaName,
    ...(options.keeperIntervalMs && { keeperIntervalMs: options.keeperIntervalMs }),
  });
}

/**
 * The one line that refuses a start whose files could not be written: the file store's folder,
 * and the local-mode token file's when main.ts is to generate the token. Under a read-only root
 * filesystem (k8s/deployment.yaml) either would otherwise fail at its first write, with a stack.
 */
export async function unwritableFiles(config: Config, options: { tokenFile: boolean }): Promise<string | undefined> {
  const files = [
    ...(config.leaseStore === 'file' ? [{ variable: 'LEASE_STORE_FILE', path: config.leaseStoreFile, instead: 'use LEASE_STORE=kubernetes' }] : []),
    ...(options.tokenFile ? [{ variable: 'AUTH_TOKEN_FILE', path: config.authTokenFile, instead: 'set AUTH_TOKEN' }] : []),
  ];
  const problems: string[] = [];
  for (const { variable, path, instead } of files) {
    const folder = resolve(dirname(path));
    const problem = await unwritableFolder(folder);
    if (problem) problems.push(`${variable} ${path}: ${problem.folder} ${problem.reason}; mount a writable volume at ${folder} or ${instead}`);
  }
  return problems.length > 0 ? `cannot start: ${problems.join('; ')}` : undefined;
}

/**
 * Per-lease credentials and cleanup of one pool, from the environment, else from the pool (the
 * example pool's clusters do not exist, so it asks for neither), else the defaults.
 */
export function poolPolicy(config: Config, pool: Pick<Pool, 'credentials' | 'cleanup'>) {
  const credentials = config.leaseCredentials ?? pool.credentials ?? 'serviceaccount';
  const cleanup = config.cleanup ?? pool.cleanup ?? 'namespaces';
  return { perLease: credentials === 'serviceaccount', cleanup };
}

/** The policy of every pool; a lease ends dirty when any pool has work to do between leases. */
export function lifecyclePolicy(config: Config, pools: PoolSet) {
  const byPool = new Map(pools.pools.map((pool) => [pool.name, poolPolicy(config, pool)]));
  const of = (cluster: Cluster) => byPool.get(pools.poolOf(cluster).name) as ReturnType<typeof poolPolicy>;
  const policies = [...byPool.values()];
  const anyPerLease = policies.some((policy) => policy.perLease);
  const anyCleanup = policies.some((policy) => policy.cleanup === 'namespaces');
  return { of, anyPerLease, endState: anyPerLease || anyCleanup ? ('dirty' as const) : ('free' as const) };
}

export async function buildServices(config: Config, logger: Logger, options: BuildOptions): Promise<Services> {
  const clock = options.clock ?? systemClock;
  const provider = await buildPools(config, logger, clock);
  const store = await buildStore(config, logger, provider, options);
  const policy = lifecyclePolicy(config, provider);
  const writePath = new WritePath(store, () => provider.list(), clock, { endState: policy.endState, ...options.writePath });
  const stopWatching = writePath.watchStore();
  const stopUpkeep = store.maintain?.() ?? (() => undefined);
  const access = new ClusterAccess(provider, config.backendTimeoutSeconds * 1000);
  const issuer = new PoolCredentials(new ServiceAccountCredentials(access, config.groupRoles), new ProviderCredentials(provider), (cluster) => policy.of(cluster).perLease, policy.anyPerLease);
  const waiting = new Waiting(writePath, logger, { replicaName: config.replicaName, caps: config.waitCaps, ...options.waiting });
  const metrics = new Metrics({ processMetrics: options.processMetrics ?? true });
  const unclear = new UnclearGrants(writePath, clock, logger);
  const leases = new LeaseService(
    writePath,
    provider,
    issuer,
    // DNS facts are read only where the claimer reaches into the clusters anyway.
    new Facts(access, config.clusterDomain, logger, (cluster) => {
      const { perLease, cleanup } = policy.of(cluster);
      return perLease || cleanup === 'namespaces';
    }),
    waiting,
    { maxLeaseSeconds: config.maxLeaseSeconds, groupRoles: config.groupRoles, defaultGroup: config.defaultGroup },
    logger,
    unclear,
    metrics,
  );
  metrics.countStates = () => leases.countStates();
  metrics.storeUsage = () => store.usage?.() ?? [];
  metrics.waitingDepth = () => waiting.depth;
  const stopReaper = startReaper(
    writePath,
    logger,
    config.reapIntervalSeconds * 1000,
    {
      forgetDepartedMs: config.forgetDepartedSeconds * 1000,
      maxLeaseMs: config.maxLeaseSeconds * 1000,
      ticketTtlMs: waiting.ticketTtlMs,
      // A claim lasts minutes; a retry waits at most the quarantine's; a day's margin beyond both.
      maxCleanupWaitMs: config.quarantineRetrySeconds * 1000 + 86_400_000,
    },
    metrics,
  );
  // The lease store's own namespace is never cleaned, should its cluster be in the pool.
  const protectedNamespaces = [...config.protectedNamespaces, config.namespace];
  // Without cleanup work the janitor only frees what an earlier configuration left dirty: a
  // slow poll will do.
  const pollMs = policy.endState === 'dirty' ? 2_000 : 30_000;
  const janitor = new Janitor(
    writePath,
    access,
    new LeaseCredentialRevoker(access),
    {
      owner: config.replicaName,
      policyFor: (cluster) => {
        const { cleanup, perLease } = policy.of(cluster);
        return { cleanup, revokeEveryCleanup: perLease };
      },
      protectedNamespaces,
      pollMs,
      // A claim outlasts a few calls to the cluster, so that renewing it between them is enough.
      claimMs: Math.max(60_000, 3 * config.backendTimeoutSeconds * 1000),
      callTimeoutMs: config.backendTimeoutSeconds * 1000,
      limits: { maxAttempts: config.cleanupMaxAttempts, quarantineRetryMs: config.quarantineRetrySeconds * 1000, quarantineAfterMs: config.quarantineAfterSeconds * 1000 },
      ...options.janitor,
    },
    logger,
  );
  janitor.onCleanup(({ ok, ms }) => {
    metrics.cleanupSeconds.observe({ outcome: ok ? 'ok' : 'failed' }, ms / 1000);
    if (!ok) {
      metrics.cleanupFailures.inc();
      metrics.backendErrors.inc({ backend: 'cluster' });
    }
  });
  // Always: dirty clusters left by an earlier configuration still need freeing.
  janitor.start();
  const runners: ManagedRunner[] = [];
  for (const pool of provider.pools) {
    if (!pool.managed) continue;
    const { ManagedRunner } = await import('./managed-runner.ts');
    const runner = new ManagedRunner(
      writePath,
      pool.provider as unknown as import('./managed-runner.ts').ManagedProvider,
      { pool: pool.name, settings: pool.managed.settings, projectId: pool.managed.projectId, location: pool.managed.location, owner: config.replicaName, labels: pool.labels, ...options.managed },
      logger.child({ pool: pool.name }),
      metrics,
    );
    runners.push(runner);
    runner.start();
  }
  leases.managedPools = new Map(runners.map((runner) => [runner.pool, runner]));
  if (runners.length > 0) {
    writePath.prospects = (table) => runners.flatMap((runner) => runner.prospect(table) ?? []);
  }
  return {
    deps: {
      leases,
      cleanup: janitor,
      authenticate: createAuthenticator({
        ...(options.authToken !== undefined && { sharedToken: options.authToken }),
        ...(config.oidc && { oidc: { ...config.oidc, timeoutMs: config.backendTimeoutSeconds * 1000 } }),
      }),
      logger,
      metrics,
      maxLeaseSeconds: config.maxLeaseSeconds,
    },
    writePath,
    waiting,
    janitor,
    async close() {
      await Promise.all(runners.map((runner) => runner.stop()));
      janitor.stop();
      stopReaper();
      waiting.close();
      unclear.close();
      stopWatching();
      stopUpkeep();
      await provider.close?.();
      await store.close?.();
    },
  };
}
