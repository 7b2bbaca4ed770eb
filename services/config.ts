// Configuration comes from the environment only, parsed once at start-up. A bad value stops
// the claimer with a message that names the variable (and never echoes a secret's value).

import { Buffer } from 'node:buffer';
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import * as v from 'valibot';

export type Mode = 'local' | 'gke';
export type StoreKind = 'file' | 'kubernetes' | 'memory';

export interface GkeConfig {
  projectId: string;
  /** A zone or region, or `-` for every location of the project. */
  zone: string;
  /** The service account's JSON key; optional only with an emulator. */
  accountJson?: string;
  /** `host:port` of a plaintext gRPC ClusterManager that needs no Google credentials. */
  emulatorHost?: string;
}

export interface Config {
  bindHost: string;
  bindPort: number;
  /** Unset only in local mode, where main.ts generates one into `authTokenFile`. */
  authToken?: string;
  authTokenFile: string;
  /** The lease Service's namespace: NAMESPACE, else the pod's own (POD_NAMESPACE), else k8s-claimer. */
  namespace: string;
  serviceName: string;
  maxLeaseSeconds: number;
  logLevel: string;
  /** json or pretty; unset: pretty on a terminal, json otherwise (main.ts decides). */
  logFormat?: 'json' | 'pretty';
  mode: Mode;
  staticPoolFile: string;
  /** Named pools from a file (every provider), instead of the one pool the environment describes. */
  poolsFile?: string;
  leaseStore: StoreKind;
  leaseStoreFile: string;
  clusterCacheSeconds: number;
  /** How often the reaper writes down expired leases. */
  reapIntervalSeconds: number;
  /** A kubeconfig whose contexts are the pool (local mode), and globs of the contexts to take. */
  poolKubeconfig?: { file: string; contexts: string[] };
  /** Free records of clusters missing from the pool this long are removed (0: kept). */
  forgetDepartedSeconds: number;
  /** Requests that may wait at once, per principal and in all (across replicas). */
  waitCaps: { perPrincipal: number; total: number };
  /** Kubernetes store: the cluster shards (the Service and its shard ConfigMaps) and ticket shards that exist. */
  shards: { clusters: number; tickets: number };
  /** CI systems' ID tokens accepted beside (or instead of) the shared token. */
  oidc?: { jwksUrl: string; issuer: string; audience: string; allowedSubjects: string[]; maxTokenAgeSeconds: number };
  /** Deadline of one call to a backend (the lease store's apiserver, GKE, a leased cluster). */
  backendTimeoutSeconds: number;
  /** What a lessee's kubeconfig carries: a per-lease ServiceAccount token, or the pool's own credentials. Unset: the pool file's choice, else serviceaccount. */
  leaseCredentials?: 'serviceaccount' | 'pool';
  /** Which ClusterRole a requested group gets (per-lease credentials). */
  groupRoles: Record<string, string>;
  /** The group of a request that names none; always one of groupRoles' keys. */
  defaultGroup: string;
  /** What happens to a cluster between leases: its namespaces are deleted, or nothing. Unset: the pool file's choice, else namespaces. */
  cleanup?: 'namespaces' | 'none';
  /** Namespaces cleanup never deletes, beside the built-in ones; `prefix*` patterns allowed. */
  protectedNamespaces: string[];
  /** The cluster DNS domain told to lessees. */
  clusterDomain: string;
  /** The registry location told to lessees of GKE clusters (the pool file says it for static ones). */
  registryLocation?: string;
  /** Where the Kubernetes store finds its cluster; unset: client-node's default loading. */
  kubeconfigPath?: string;
  /**
   * This replica's name in the claims and tickets it writes: unique among replicas, and the same
   * after a restart when REPLICA_NAME or POD_NAME says it, so that a restarted replica
   * recognises what it left behind.
   */
  replicaName: string;
  gke?: GkeConfig;
  /** Failed cleanup attempts in a row after which a cluster is quarantined. */
  cleanupMaxAttempts: number;
  /** How often a quarantined cluster's cleanup is tried again. */
  quarantineRetrySeconds: number;
  /** Quarantine waits until a cluster has waited this long for its cleanup. */
  quarantineAfterSeconds: number;
}

export class ConfigError extends Error {}

export interface ConfigDefaults {
  /** The example pool shipped in the repository. */
  staticPoolFile: string;
}

const text = () => v.optional(v.pipe(v.string(), v.nonEmpty()));
const textOr = (fallback: string) => v.optional(v.pipe(v.string(), v.nonEmpty()), fallback);

const wholeNumber = (min: number, max: number) =>
  v.pipe(
    v.string(),
    v.regex(/^\d+$/, `must be a whole number from ${min} to ${max}`),
    v.transform(Number),
    v.minValue(min, `must be a whole number from ${min} to ${max}`),
    v.maxValue(max, `must be a whole number from ${min} to ${max}`),
  );

const integer = (min: number, max: number, fallback: number) => v.optional(wholeNumber(min, max), String(fallback));

/** Tickets one ticket shard holds at 70% of its 256 KiB (a ticket and its key take about 250 bytes). */
export const TICKETS_PER_SHARD = 700;

const namespaceName = () =>
  v.optional(v.pipe(v.string(), v.regex(/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/, 'must be a Kubernetes namespace name')));

const oneOf = <const T extends string>(values: readonly [T, ...T[]]) =>
  v.optional(v.picklist(values, `must be one of: ${values.join(', ')}`));

const Environment = v.object({
  BIND_HOST: textOr('0.0.0.0'),
  BIND_PORT: integer(0, 65535, 8080),
  // Trimmed: a Secret made with --from-file often ends in a newline the clients never send.
  AUTH_TOKEN: v.optional(v.pipe(v.string(), v.trim(), v.nonEmpty('must not be blank'))),
  AUTH_TOKEN_FILE: textOr('data/auth-token'),
  NAMESPACE: namespaceName(),
  SERVICE_NAME: v.optional(
    v.pipe(v.string(), v.regex(/^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$/, 'must be a Kubernetes Service name')),
    'k8s-claimer',
  ),
  MAX_LEASE_SECONDS: integer(1, 31_536_000, 86_400),
  LOG_LEVEL: oneOf(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']),
  LOG_FORMAT: oneOf(['json', 'pretty']),
  STATIC_POOL_FILE: text(),
  POOL_KUBECONFIG: text(),
  POOLS_FILE: text(),
  POOL_CONTEXTS: v.optional(v.pipe(v.string(), v.regex(/^[^\s,]+(\s*,\s*[^\s,]+)*$/, 'must be context names or globs separated by commas'))),
  LEASE_STORE: oneOf(['file', 'kubernetes', 'memory']),
  LEASE_STORE_FILE: textOr('data/leases.json'),
  CLUSTER_CACHE_SECONDS: integer(0, 86_400, 30),
  REAP_INTERVAL_SECONDS: integer(1, 3_600, 2),
  FORGET_DEPARTED_SECONDS: integer(0, 31_536_000, 3_600),
  WAIT_MAX_PER_PRINCIPAL: integer(0, 100_000, 50),
  // 200 in the Service; with ticket shards, what they hold.
  WAIT_MAX_TOTAL: v.optional(wholeNumber(0, 100_000)),
  LEASE_SHARDS: integer(1, 1024, 1),
  LEASE_TICKET_SHARDS: integer(0, 1024, 0),
  BACKEND_TIMEOUT_SECONDS: integer(1, 600, 10),
  // https only: whoever can change the keys in transit can sign tokens. Plain http for loopback (tests).
  AUTH_JWKS_URL: v.optional(
    v.pipe(v.string(), v.url('must be a URL'), v.regex(/^(https:\/\/|http:\/\/(127\.0\.0\.1|localhost|\[::1\])[:/])/, 'must be an https URL')),
  ),
  AUTH_ISSUER: text(),
  AUTH_AUDIENCE: text(),
  AUTH_ALLOWED_SUBJECTS: text(),
  // CI ID tokens live minutes; an old one that leaked (a log, a cache) must not lease.
  AUTH_MAX_TOKEN_AGE: integer(60, 86_400, 3_600),
  LEASE_CREDENTIALS: oneOf(['serviceaccount', 'google-token', 'pool']),
  LEASE_GROUP_ROLES: v.optional(
    v.pipe(
      v.string(),
      v.regex(/^\s*[^=,\s]+\s*=\s*[^=,\s]+\s*(,\s*[^=,\s]+\s*=\s*[^=,\s]+\s*)*$/, 'must be group=ClusterRole pairs separated by commas'),
    ),
    'system:masters=cluster-admin',
  ),
  LEASE_DEFAULT_GROUP: v.optional(v.pipe(v.string(), v.regex(/^[^=,\s]{1,253}$/, 'must be a group name')), 'system:masters'),
  CLEANUP: oneOf(['namespaces', 'none']),
  PROTECTED_NAMESPACES: v.optional(v.pipe(v.string(), v.regex(/^[a-z0-9*,\s-]*$/, 'must be namespace names or prefix* patterns separated by commas'))),
  CLUSTER_DOMAIN: v.optional(v.pipe(v.string(), v.regex(/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/, 'must be a DNS domain')), 'cluster.local'),
  REGISTRY_LOCATION: text(),
  GOOGLE_CLOUD_PROJECT_ID: text(),
  GOOGLE_CLOUD_ZONE: textOr('-'),
  GOOGLE_CLOUD_ACCOUNT_FILE_BASE64: text(),
  GOOGLE_CLOUD_ACCOUNT_FILE: text(),
  KUBECONFIG: text(),
  REPLICA_NAME: v.optional(v.pipe(v.string(), v.regex(/^[\w.-]{1,63}$/, 'must be 1 to 63 letters, digits, _ . or -'))),
  // Set by the Deployment from the downward API (metadata.name): survives container restarts.
  POD_NAME: v.optional(v.pipe(v.string(), v.regex(/^[\w.-]{1,253}$/, 'must be a pod name'))),
  GKE_EMULATOR_HOST: v.optional(v.pipe(v.string(), v.regex(/^[^\s/:]+:\d+$/, 'must be host:port'))),
  CLEANUP_MAX_ATTEMPTS: integer(1, 1_000, 5),
  QUARANTINE_RETRY_SECONDS: integer(1, 604_800, 3_600),
  QUARANTINE_AFTER_SECONDS: integer(0, 604_800, 600),
  // Set by the Deployment from the downward API (metadata.namespace): the namespace the pod
  // runs in, wherever an overlay moved it. NAMESPACE, when set, wins.
  POD_NAMESPACE: namespaceName(),
});

type Variable = keyof v.InferInput<typeof Environment>;

/** Empty variables count as unset: Kubernetes manifests and shells often produce them. */
function presentOnly(env: Record<string, string | undefined>): Record<string, string> {
  return Object.fromEntries(
    Object.entries(env).filter((entry): entry is [string, string] => entry[1] !== undefined && entry[1] !== ''),
  );
}

function fail(variable: Variable, problem: string): never {
  throw new ConfigError(`invalid configuration: ${variable} ${problem}`);
}

/** The account key as JSON text, from either the base64 variable or the raw one; never logged. */
function accountJson(env: v.InferOutput<typeof Environment>): string | undefined {
  const [variable, raw] = env.GOOGLE_CLOUD_ACCOUNT_FILE_BASE64
    ? (['GOOGLE_CLOUD_ACCOUNT_FILE_BASE64', Buffer.from(env.GOOGLE_CLOUD_ACCOUNT_FILE_BASE64, 'base64').toString('utf8')] as const)
    : (['GOOGLE_CLOUD_ACCOUNT_FILE', env.GOOGLE_CLOUD_ACCOUNT_FILE] as const);
  if (raw === undefined) return undefined;
  let key: unknown;
  try {
    key = JSON.parse(raw);
  } catch {
    fail(variable, 'is not a service-account JSON key (it does not decode to JSON)');
  }
  const account = key as Record<string, unknown> | null;
  if (typeof account?.client_email !== 'string' || typeof account?.private_key !== 'string') {
    fail(variable, 'is not a service-account JSON key (client_email or private_key missing)');
  }
  return raw;
}

export function loadConfig(environment: Record<string, string | undefined>, defaults: ConfigDefaults): Config {
  const parsed = v.safeParse(Environment, presentOnly(environment));
  if (!parsed.success) {
    const [issue] = parsed.issues;
    fail((v.getDotPath(issue) ?? 'environment') as Variable, issue.message);
  }
  const env = parsed.output;
  const mode: Mode = env.GOOGLE_CLOUD_PROJECT_ID ? 'gke' : 'local';
  let gke: GkeConfig | undefined;
  if (env.GOOGLE_CLOUD_PROJECT_ID) {
    const json = accountJson(env);
    if (!json && !env.GKE_EMULATOR_HOST) {
      fail('GOOGLE_CLOUD_ACCOUNT_FILE_BASE64', 'is required when GOOGLE_CLOUD_PROJECT_ID is set (or set GKE_EMULATOR_HOST)');
    }
    gke = {
      projectId: env.GOOGLE_CLOUD_PROJECT_ID,
      zone: env.GOOGLE_CLOUD_ZONE,
      ...(json && { accountJson: json }),
      ...(env.GKE_EMULATOR_HOST && { emulatorHost: env.GKE_EMULATOR_HOST }),
    };
  }
  const oidcParts = [env.AUTH_JWKS_URL, env.AUTH_ISSUER, env.AUTH_AUDIENCE];
  if (oidcParts.some(Boolean) && !oidcParts.every(Boolean)) {
    fail(!env.AUTH_JWKS_URL ? 'AUTH_JWKS_URL' : !env.AUTH_ISSUER ? 'AUTH_ISSUER' : 'AUTH_AUDIENCE', 'is required with the other AUTH_JWKS_URL, AUTH_ISSUER, AUTH_AUDIENCE settings');
  }
  if (env.POOL_KUBECONFIG && env.GOOGLE_CLOUD_PROJECT_ID) fail('POOL_KUBECONFIG', 'and GOOGLE_CLOUD_PROJECT_ID each name a pool: set one of them');
  if (env.POOLS_FILE) {
    const other = (['GOOGLE_CLOUD_PROJECT_ID', 'POOL_KUBECONFIG', 'STATIC_POOL_FILE'] as const).find((variable) => env[variable]);
    if (other) fail('POOLS_FILE', `and ${other} both name the pool: list every pool in the pools file, or leave POOLS_FILE unset`);
  }
  if (env.POOL_CONTEXTS && !env.POOL_KUBECONFIG) fail('POOL_CONTEXTS', 'needs POOL_KUBECONFIG (the kubeconfig whose contexts it picks)');
  if (env.AUTH_ALLOWED_SUBJECTS && !env.AUTH_JWKS_URL) fail('AUTH_ALLOWED_SUBJECTS', 'needs AUTH_JWKS_URL, AUTH_ISSUER and AUTH_AUDIENCE');
  const oidc = env.AUTH_JWKS_URL && env.AUTH_ISSUER && env.AUTH_AUDIENCE
    ? {
        jwksUrl: env.AUTH_JWKS_URL,
        issuer: env.AUTH_ISSUER,
        audience: env.AUTH_AUDIENCE,
        allowedSubjects: (env.AUTH_ALLOWED_SUBJECTS ?? '').split(',').map((subject) => subject.trim()).filter(Boolean),
        maxTokenAgeSeconds: env.AUTH_MAX_TOKEN_AGE,
      }
    : undefined;
  const groupRoles: Record<string, string> = Object.fromEntries(
    env.LEASE_GROUP_ROLES.split(',').map((pair) => pair.split('=').map((part) => part.trim()) as [string, string]),
  );
  // Checked here, not at the first lease: an unmapped default would fail every request without
  // auth.group, after a grant, a mint and an undo.
  if (!Object.hasOwn(groupRoles, env.LEASE_DEFAULT_GROUP)) {
    fail('LEASE_DEFAULT_GROUP', `names a group that LEASE_GROUP_ROLES does not map to a ClusterRole; add ${env.LEASE_DEFAULT_GROUP}=<ClusterRole> to LEASE_GROUP_ROLES or set LEASE_DEFAULT_GROUP to one of its groups`);
  }
  if (mode !== 'local' && !env.AUTH_TOKEN && !oidc) fail('AUTH_TOKEN', 'is required outside local mode (or configure AUTH_JWKS_URL, AUTH_ISSUER and AUTH_AUDIENCE)');
  return {
    bindHost: env.BIND_HOST,
    bindPort: env.BIND_PORT,
    ...(env.AUTH_TOKEN && { authToken: env.AUTH_TOKEN }),
    authTokenFile: env.AUTH_TOKEN_FILE,
    namespace: env.NAMESPACE ?? env.POD_NAMESPACE ?? 'k8s-claimer',
    serviceName: env.SERVICE_NAME,
    maxLeaseSeconds: env.MAX_LEASE_SECONDS,
    logLevel: env.LOG_LEVEL ?? 'info',
    ...(env.LOG_FORMAT && { logFormat: env.LOG_FORMAT }),
    mode,
    staticPoolFile: env.STATIC_POOL_FILE ?? defaults.staticPoolFile,
    ...(env.POOLS_FILE && { poolsFile: env.POOLS_FILE }),
    leaseStore: env.LEASE_STORE ?? (mode === 'gke' ? 'kubernetes' : 'file'),
    leaseStoreFile: env.LEASE_STORE_FILE,
    clusterCacheSeconds: env.CLUSTER_CACHE_SECONDS,
    reapIntervalSeconds: env.REAP_INTERVAL_SECONDS,
    forgetDepartedSeconds: env.FORGET_DEPARTED_SECONDS,
    ...(env.POOL_KUBECONFIG && {
      poolKubeconfig: { file: env.POOL_KUBECONFIG, contexts: (env.POOL_CONTEXTS ?? '').split(',').map((glob) => glob.trim()).filter(Boolean) },
    }),
    waitCaps: { perPrincipal: env.WAIT_MAX_PER_PRINCIPAL, total: env.WAIT_MAX_TOTAL ?? (env.LEASE_TICKET_SHARDS > 0 ? env.LEASE_TICKET_SHARDS * TICKETS_PER_SHARD : 200) },
    shards: { clusters: env.LEASE_SHARDS, tickets: env.LEASE_TICKET_SHARDS },
    backendTimeoutSeconds: env.BACKEND_TIMEOUT_SECONDS,
    // google-token and pool are one thing: the provider's own credentials for the lessee.
    ...(env.LEASE_CREDENTIALS && { leaseCredentials: env.LEASE_CREDENTIALS === 'serviceaccount' ? 'serviceaccount' : 'pool' }),
    groupRoles,
    defaultGroup: env.LEASE_DEFAULT_GROUP,
    ...(env.CLEANUP && { cleanup: env.CLEANUP }),
    protectedNamespaces: (env.PROTECTED_NAMESPACES ?? '').split(',').map((name) => name.trim()).filter(Boolean),
    clusterDomain: env.CLUSTER_DOMAIN,
    ...(env.REGISTRY_LOCATION && { registryLocation: env.REGISTRY_LOCATION }),
    ...(env.KUBECONFIG && { kubeconfigPath: env.KUBECONFIG }),
    // Without a name that survives restarts, a fresh one each start: two replicas on one host
    // must never take each other's tickets or claims for their own.
    replicaName: env.REPLICA_NAME ?? env.POD_NAME?.slice(0, 63) ?? `${hostname().slice(0, 56)}-${randomBytes(3).toString('hex')}`,
    ...(oidc && { oidc }),
    ...(gke && { gke }),
    cleanupMaxAttempts: env.CLEANUP_MAX_ATTEMPTS,
    quarantineRetrySeconds: env.QUARANTINE_RETRY_SECONDS,
    quarantineAfterSeconds: env.QUARANTINE_AFTER_SECONDS,
  };
}
