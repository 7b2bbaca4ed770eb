// Named pools: the clusters a server leases may come from several pools, each from a provider
// (GKE, EKS, AKS, a static pool file, a kubeconfig's contexts), each with its own aliases for
// `cloud_provider`, labels, credentials and cleanup. The pool set is itself a provider: the one
// list of every pool's clusters, each naming its pool. A pool that fails to list is one pool
// down: the others lease on, and its clusters stay known from its last good list.
//
//   POOLS_FILE=pools.yaml
//   pools:
//     - name: gke-ci
//       provider: gke
//       project: my-project          # as GOOGLE_CLOUD_PROJECT_ID
//       location: "-"                # as GOOGLE_CLOUD_ZONE
//       key_file: gke-key.json       # the service account's JSON key (relative to this file)
//       endpoint: 127.0.0.1:9000     # or: a plaintext gRPC emulator, as GKE_EMULATOR_HOST
//     - name: eks-ci
//       provider: eks
//       regions: [us-east-1, eu-west-1]
//     - name: aks-ci
//       provider: aks
//       subscription: 00000000-0000-0000-0000-000000000000
//       resource_group: ci           # optional
//     - name: lab
//       provider: static
//       file: lab.yaml               # a static pool file, relative to this file
//       aliases: [onprem]
//   labels: {}                       # added to every cluster of every pool
//
// Cluster ids are `<pool>/<location>/<name>`, so that two pools never share one. The one pool
// the environment describes (GOOGLE_CLOUD_PROJECT_ID, STATIC_POOL_FILE, POOL_KUBECONFIG) keeps
// the ids it always had, so lease records written before pools existed keep their meaning.

import { readFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import type { Logger } from 'pino';
import * as v from 'valibot';
import { parse } from 'yaml';
import type { Clock } from '../write-path.ts';
import type { Cluster, ClusterProvider } from './types.ts';
import { ManagedSchema, type ManagedSettings } from '../managed-pool.ts';

export type CredentialsMode = 'serviceaccount' | 'pool';
export type CleanupMode = 'namespaces' | 'none';

export interface Pool {
  name: string;
  /** The provider's kind: gke, eks, aks, static, kubeconfig. */
  kind: string;
  provider: ClusterProvider;
  /** Values of `cloud_provider` that mean this pool (lower case). */
  aliases: readonly string[];
  /** Added to every cluster of the pool (the cluster's own labels win). */
  labels: Readonly<Record<string, string>>;
  /** Unset: the environment's choice, else per-lease credentials. */
  credentials?: CredentialsMode;
  /** Unset: the environment's choice, else namespaces. */
  cleanup?: CleanupMode;
  /** Whether cluster ids carry the pool's name (every pool of a pools file). */
  prefixIds: boolean;
  /** A managed GKE pool: the settings, and where it makes its clusters. */
  managed?: { settings: ManagedSettings; projectId: string; location: string };
}

/** How one pool's last listing went, for /leases and /readyz. */
export interface PoolHealth {
  name: string;
  provider: string;
  aliases: readonly string[];
  healthy: boolean;
  /** The problem, in words fit for an operator (never a credential); null when healthy. */
  lastError: string | null;
  /** When the pool last listed completely, if ever. */
  listedAt: number | null;
  clusters: number;
}

// ---- the pools file ------------------------------------------------------------------------

const POOL_NAME = /^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$/;
const Name = v.pipe(v.string(), v.regex(POOL_NAME, 'must be 1 to 40 lower-case letters, digits or dashes, starting and ending with a letter or digit'));
const Text = v.pipe(v.string(), v.nonEmpty('must not be empty'));
/** A file's path: never a file's contents pasted in its place (a key would be quoted in errors). */
const FilePath = v.pipe(v.string(), v.nonEmpty('must not be empty'), v.maxLength(1024, 'must be a file path'), v.regex(/^[^\n\r{}"]+$/, 'must be a file path (not the file\'s contents)'));
const Labels = v.optional(v.record(v.string(), v.string()), {});
const Alias = v.pipe(v.string(), v.regex(/^[\w.-]{1,64}$/, 'must be a provider name (letters, digits, . _ -)'));
/** What every pool may say, whatever its provider. */
const Common = {
  name: Name,
  aliases: v.optional(v.array(Alias)),
  labels: Labels,
  credentials: v.optional(v.picklist(['serviceaccount', 'pool'], 'must be serviceaccount or pool')),
  cleanup: v.optional(v.picklist(['namespaces', 'none'], 'must be namespaces or none')),
};
const HttpsEndpoint = v.pipe(
  v.string(),
  v.url('must be a URL'),
  v.regex(/^(https:\/\/|http:\/\/(127\.\d+\.\d+\.\d+|localhost|\[::1\])[:/])/, 'must be an https URL (or http on loopback)'),
);

const GkePool = v.strictObject({
  ...Common,
  provider: v.literal('gke'),
  project: Text,
  location: v.optional(Text, '-'),
  key_file: v.optional(FilePath),
  endpoint: v.optional(v.pipe(v.string(), v.regex(/^[^\s:/]+:\d{1,5}$/, 'must be host:port of a plaintext gRPC emulator'))),
  registry_location: v.optional(Text),
  /** The pool makes its own clusters (see managed-pool.ts). */
  managed: v.optional(ManagedSchema),
});
const EksPool = v.strictObject({
  ...Common,
  provider: v.literal('eks'),
  regions: v.pipe(v.array(v.pipe(v.string(), v.regex(/^[a-z]{2}(-[a-z]+)+-\d+$/, 'must be an AWS region such as us-east-1'))), v.minLength(1, 'must name at least one region')),
  endpoint: v.optional(HttpsEndpoint),
});
const AksPool = v.strictObject({
  ...Common,
  provider: v.literal('aks'),
  subscription: v.pipe(v.string(), v.uuid('must be a subscription id (a UUID)')),
  resource_group: v.optional(Text),
  endpoint: v.optional(HttpsEndpoint),
  authority_host: v.optional(HttpsEndpoint),
});
const StaticPool = v.strictObject({ ...Common, provider: v.literal('static'), file: FilePath });
const KubeconfigPool = v.strictObject({
  ...Common,
  provider: v.literal('kubeconfig'),
  file: FilePath,
  contexts: v.optional(v.array(Text)),
});

const PoolEntry = v.variant('provider', [GkePool, EksPool, AksPool, StaticPool, KubeconfigPool], 'must be gke, eks, aks, static or kubeconfig');
const PoolsFile = v.strictObject({
  pools: v.pipe(v.array(PoolEntry), v.minLength(1, 'must list at least one pool')),
  labels: Labels,
});

export type PoolSpec = v.InferOutput<typeof PoolEntry>;

export class PoolsFileError extends Error {
  override readonly name = 'PoolsFileError';
}

/** Default aliases: what the original claimer's CLI and the usual names send. */
export const DEFAULT_ALIASES: Readonly<Record<string, readonly string[]>> = {
  gke: ['gke', 'google'],
  eks: ['eks', 'aws'],
  aks: ['aks', 'azure'],
  static: ['static'],
  kubeconfig: ['kubeconfig'],
};

/** Each issue named by its pool and field: `pools[1] (eks-ci).regions: must name at least one region`. */
function describe(document: unknown, issues: readonly v.BaseIssue<unknown>[]): string {
  const pools = (document as { pools?: unknown } | null)?.pools;
  const shown = issues.slice(0, 5).map((issue) => {
    const path = issue.path ?? [];
    let where = path.length === 0 ? '(top)' : '';
    for (const item of path) {
      const key = item.key as string | number;
      if (typeof key === 'number') {
        where += `[${key}]`;
        const name = Array.isArray(pools) && where === `pools[${key}]` ? (pools[key] as { name?: unknown } | undefined)?.name : undefined;
        if (typeof name === 'string' && POOL_NAME.test(name)) where += ` (${name})`;
      } else where += where === '' ? key : `.${key}`;
    }
    return `${where}: ${issue.message}`;
  });
  if (issues.length > shown.length) shown.push(`and ${issues.length - shown.length} more`);
  return shown.join('; ');
}

/** The pools file, validated: every pool with its file references resolved against the file's folder. */
export async function readPoolsFile(path: string): Promise<{ pools: PoolSpec[]; labels: Record<string, string> }> {
  let document: unknown;
  try {
    document = parse(await readFile(path, 'utf8'));
  } catch (error) {
    const { name, code } = (error ?? {}) as { name?: string; code?: string };
    // YAML's own message quotes the line, which might hold a secret.
    throw new PoolsFileError(`cannot read pools file ${path}: ${name === 'YAMLParseError' ? 'YAML syntax error' : (code ?? 'unreadable')}`);
  }
  const parsed = v.safeParse(PoolsFile, document);
  if (!parsed.success) throw new PoolsFileError(`pools file ${path} is invalid: ${describe(document, parsed.issues)}`);
  const seen = new Set<string>();
  for (const pool of parsed.output.pools) {
    if (seen.has(pool.name)) throw new PoolsFileError(`pools file ${path} names pool ${pool.name} twice`);
    seen.add(pool.name);
    // A pool answers to its name: one named like what clients send for another provider (the
    // original CLI's `google`) would take those requests, unless its aliases say it means to.
    const claimed = Object.entries(DEFAULT_ALIASES).find(([kind, aliases]) => kind !== pool.provider && aliases.includes(pool.name));
    if (claimed && !(pool.aliases ?? []).includes(pool.name)) {
      throw new PoolsFileError(`pools file ${path}: pool ${pool.name}: its name is what clients send as cloud_provider for ${claimed[0]} pools; name it otherwise, or list "${pool.name}" in its aliases to mean it`);
    }
    if (pool.provider === 'gke' && pool.managed && (pool.location === '-' || pool.location.includes(','))) {
      throw new PoolsFileError(`pools file ${path}: pool ${pool.name}: a managed pool makes its clusters in one location: set location to a zone or a region, not "${pool.location}"`);
    }
    if ((pool.provider === 'eks' || pool.provider === 'aks') && pool.credentials === 'pool') {
      throw new PoolsFileError(`pools file ${path}: pool ${pool.name}: credentials: pool would hand lessees the claimer's own ${pool.provider === 'eks' ? 'AWS' : 'Azure'} identity; ${pool.provider} pools give per-lease credentials only (serviceaccount)`);
    }
  }
  const folder = dirname(resolve(path));
  const pools = parsed.output.pools.map((pool) => {
    if (pool.provider === 'static' || pool.provider === 'kubeconfig') return { ...pool, file: resolve(folder, pool.file) };
    if (pool.provider === 'gke' && pool.key_file) return { ...pool, key_file: resolve(folder, pool.key_file) };
    return pool;
  });
  return { pools, labels: parsed.output.labels };
}

// ---- the pool set --------------------------------------------------------------------------

/** Providers whose clusters have an identity of the cloud's own (GKE's id, an ARN, an ARM id). */
const CLOUD_KINDS = new Set(['gke', 'eks', 'aks']);

interface Listed {
  /** What the provider last handed out, to tell when nothing changed. */
  from: readonly Cluster[];
  clusters: Cluster[];
}

export class PoolSet implements ClusterProvider {
  readonly kind = 'pools';
  readonly aliases: readonly string[];
  private readonly byName: ReadonlyMap<string, Pool>;
  /** Each pool's clusters as last listed, and the provider's own cluster behind each id. */
  private readonly listed = new Map<string, Listed>();
  private readonly originals = new Map<string, Cluster>();
  private readonly health = new Map<string, { lastError: string | null; listedAt: number | null }>();
  /** Pools some of whose clusters another pool lists first: the problem, for their health. */
  private overlaps = new Map<string, string>();
  /** The same array while no pool's list changed: what is derived from the pool list is remembered per list. */
  private combined?: Cluster[];
  private inflight?: Promise<Cluster[]>;

  constructor(
    readonly pools: readonly Pool[],
    private readonly logger: Logger,
    private readonly clock: Clock,
    /** A pool that has not listed by then counts as failed this time (its last list stays): one slow cloud never holds up the others. */
    private readonly listDeadlineMs = 15_000,
  ) {
    this.byName = new Map(pools.map((pool) => [pool.name, pool]));
    this.aliases = [...new Set(pools.flatMap((pool) => pool.aliases))];
  }

  /** The pools a `cloud_provider` value means (none: it names no pool). */
  poolsAnswering(alias: string): string[] {
    const wanted = alias.toLowerCase();
    return this.pools.filter((pool) => pool.aliases.includes(wanted)).map((pool) => pool.name);
  }

  pool(name: string): Pool | undefined {
    return this.byName.get(name);
  }

  poolOf(cluster: Cluster): Pool {
    const pool = cluster.pool !== undefined ? this.byName.get(cluster.pool) : this.pools.length === 1 ? this.pools[0] : undefined;
    if (!pool) throw new Error(`cluster ${cluster.id} is in no pool of this server`);
    return pool;
  }

  list(): Promise<Cluster[]> {
    // One listing at a time, however many requests need it.
    this.inflight ??= this.listAll().finally(() => {
      this.inflight = undefined;
    });
    return this.inflight;
  }

  /** Whether a pool has never listed: its leases' clusters are not known yet (503, not 404). */
  neverListed(): string[] {
    return this.pools.filter((pool) => !this.listed.has(pool.name)).map((pool) => pool.name);
  }

  private listWithin(pool: Pool): Promise<Cluster[]> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => reject(Object.assign(new Error(`pool ${pool.name} did not list within ${this.listDeadlineMs} ms`), { code: 'timeout' })), this.listDeadlineMs);
      timer.unref?.();
    });
    return Promise.race([pool.provider.list(), late]).finally(() => clearTimeout(timer));
  }

  private async listAll(): Promise<Cluster[]> {
    const results = await Promise.allSettled(this.pools.map((pool) => this.listWithin(pool)));
    let changed = this.combined === undefined;
    let answered = 0;
    results.forEach((result, index) => {
      const pool = this.pools[index];
      const known = this.listed.get(pool.name);
      if (result.status === 'fulfilled') {
        answered += 1;
        const problem = pool.provider.problem?.() ?? null;
        this.health.set(pool.name, { lastError: problem, listedAt: problem ? (this.health.get(pool.name)?.listedAt ?? null) : this.clock.now() });
        if (known?.from === result.value) return;
        for (const cluster of known?.clusters ?? []) this.originals.delete(cluster.id);
        this.listed.set(pool.name, { from: result.value, clusters: result.value.map((cluster) => this.stamp(pool, cluster)) });
        changed = true;
        return;
      }
      const error = result.reason as { name?: string; code?: unknown };
      const problem = `listing failed (${typeof error?.code === 'string' || typeof error?.code === 'number' ? error.code : (error?.name ?? 'error')})`;
      if (this.health.get(pool.name)?.lastError !== problem) {
        this.logger.error({ err: result.reason, pool: pool.name, provider: pool.kind }, known ? 'a pool did not list; its clusters are kept from its last list, the other pools lease on' : 'a pool did not list and was never listed; the other pools lease on');
      }
      this.health.set(pool.name, { lastError: problem, listedAt: this.health.get(pool.name)?.listedAt ?? null });
    });
    if (answered === 0 && this.pools.every((pool) => !this.listed.has(pool.name))) {
      // Nothing to lease from at all: the first pool's error is the answer.
      throw (results[0] as PromiseRejectedResult).reason;
    }
    if (changed || !this.combined) this.combined = this.withoutOverlaps();
    return this.combined;
  }

  /**
   * Every pool's clusters, a cloud cluster listed by two pools (a zone's pool and the whole
   * project's) only in the first: one cluster is one lease, however many pools can see it.
   */
  private withoutOverlaps(): Cluster[] {
    const owner = new Map<string, string>();
    const combined: Cluster[] = [];
    const overlaps = new Map<string, { other: string; clusters: number }>();
    for (const pool of this.pools) {
      for (const cluster of this.listed.get(pool.name)?.clusters ?? []) {
        const identity = CLOUD_KINDS.has(pool.kind) ? `${pool.kind}:${cluster.tag}` : undefined;
        const first = identity && owner.get(identity);
        if (first && first !== pool.name) {
          const overlap = overlaps.get(pool.name) ?? { other: first, clusters: 0 };
          overlap.clusters += 1;
          overlaps.set(pool.name, overlap);
          continue;
        }
        if (identity) owner.set(identity, pool.name);
        combined.push(cluster);
      }
    }
    const before = this.overlaps;
    this.overlaps = new Map([...overlaps].map(([name, { other, clusters }]) => [name, `${clusters} of its clusters are in pool ${other} too; they are leased as that pool's`]));
    for (const [name, problem] of this.overlaps) {
      if (before.get(name) !== problem) this.logger.warn({ pool: name, other_pool: overlaps.get(name)?.other, clusters: overlaps.get(name)?.clusters }, 'two pools list the same clusters: each is leased from the first pool only');
    }
    return combined;
  }

  /** A provider's cluster as the server shows it: its pool, the pool's labels, the pool's id. */
  private stamp(pool: Pool, cluster: Cluster): Cluster {
    const stamped: Cluster = {
      ...cluster,
      id: pool.prefixIds ? `${pool.name}/${cluster.id}` : cluster.id,
      pool: pool.name,
      labels: { ...pool.labels, ...cluster.labels },
    };
    this.originals.set(stamped.id, cluster);
    return stamped;
  }

  private original(cluster: Cluster): Cluster {
    return this.originals.get(cluster.id) ?? cluster;
  }

  kubeconfigFor(cluster: Cluster): Promise<string> {
    return this.poolOf(cluster).provider.kubeconfigFor(this.original(cluster));
  }

  adminKubeconfigFor(cluster: Cluster): Promise<string> {
    return this.poolOf(cluster).provider.adminKubeconfigFor(this.original(cluster));
  }

  /** Each pool's last listing (a pool not listed yet is not healthy). */
  poolHealth(): PoolHealth[] {
    return this.pools.map((pool) => {
      const health = this.health.get(pool.name);
      return {
        name: pool.name,
        provider: pool.kind,
        aliases: pool.aliases,
        healthy: health !== undefined && health.lastError === null && !this.overlaps.has(pool.name),
        lastError: health?.lastError ?? this.overlaps.get(pool.name) ?? (health ? null : 'not listed yet'),
        listedAt: health?.listedAt ?? null,
        clusters: this.listed.get(pool.name)?.clusters.length ?? 0,
      };
    });
  }

  async close(): Promise<void> {
    await Promise.all(this.pools.map((pool) => pool.provider.close?.()));
  }
}
