/**
 * Fake GKE ClusterManager (google.container.v1) gRPC server for tests.
 *
 * The service is built from the very .proto files that `@google-cloud/container`
 * ships, so the real `ClusterManagerClient` can talk to it over the wire:
 *
 *   const fake = await startFakeGke({ clusters: [makeCluster({ project: 'p', location: 'us-central1-a', name: 'c1' })] });
 *   const client = new ClusterManagerClient(fakeGkeClientOptions(fake));
 *   const [resp] = await client.listClusters({ parent: 'projects/p/locations/-' });
 *   ...
 *   await client.close();
 *   await fake.close();
 *
 * Facts verified against @google-cloud/container 7.2.0 / google-gax 6.17.0 /
 * @grpc/grpc-js 1.14.7 (see gke.test.ts, which asserts each of them):
 *
 * - Client options: `{apiEndpoint: '127.0.0.1', port, sslCreds: grpc.credentials.createInsecure(),
 *   authClient}`. With `sslCreds` set, google-gax's `_getCredentials` returns it untouched and never asks
 *   the auth client for headers, so no Authorization metadata is sent. `authClient` is still needed:
 *   `createStub` calls `auth.getUniverseDomain()`, which without an `authClient` (or a `universeDomain`
 *   option) runs Application Default Credentials discovery, including the GCE metadata-server probe.
 *   `getUniverseDomain()` only reads `authClient.universeDomain`, so any object works at runtime; we pass
 *   a google-auth-library `OAuth2Client` subclass whose `getRequestHeaders()` returns empty `Headers`
 *   (it satisfies the `AuthClient` type, its `universeDomain` is 'googleapis.com', and it could never
 *   obtain a token even if it were asked).
 * - The client decodes responses with google-gax's proto-loader defaults
 *   (`keepCase: false, enums: String, longs: String, defaults: true, oneofs: true`): fields are
 *   camelCase, `status` comes back as the enum NAME ('RUNNING'), int64 fields such as
 *   `acceleratorCount` come back as decimal STRINGS ('2'), and unset fields come back as defaults
 *   ('' / 0 / [] / {} / null for messages).
 *   The server here loads the same protos with the same options, so the JS objects you give it use
 *   camelCase names and may use enum names or numbers and numbers or strings for int64 fields.
 * - Retries: ListClusters and GetCluster are "idempotent" in the gapic config: UNAVAILABLE and
 *   DEADLINE_EXCEEDED are retried (backoff starts at a random 0..100 ms delay, x1.3 growth) until the
 *   per-method timeout of 20 s is used up. So `failNext(1, UNAVAILABLE)` is retried and the client call
 *   SUCCEEDS (the fake records two calls). To see the error fast, either use a code that is not
 *   retried (INTERNAL, NOT_FOUND, PERMISSION_DENIED, ...) or pass the call option `{retry: null}` (or
 *   `{retry: {retryCodes: []}}`). Do not use `{maxRetries: 0}`/`{maxRetries: n}`: when the retries run
 *   out, gax reports its own DEADLINE_EXCEEDED error ("Exceeded maximum number of retries") instead of
 *   the server's code. A call option `{timeout: ms}` also caps the total retry time, and then gax
 *   reports DEADLINE_EXCEEDED ("Total timeout of API ... exceeded").
 *   Of the operation methods, DeleteCluster, GetOperation and ListOperations are "idempotent" (retried
 *   as above); CreateCluster and SetNodePoolSize are "non_idempotent" (never retried, 45 s timeout).
 * - Operations (CreateCluster, DeleteCluster, SetNodePoolSize; followed with GetOperation and
 *   ListOperations) behave as GKE's long-running operations: the RPC answers at once with an
 *   `Operation` in PENDING, which is RUNNING on later reads and DONE once its duration
 *   (`operationDurations`) has passed on the fake's clock. The clock is `now()` (default `Date.now`)
 *   plus whatever `advance(ms)` added: pass `now: () => 0` for a clock that only moves by `advance`.
 *   Operations progress lazily, on every RPC and on `advance()`/`tick()`. A cluster being created is
 *   PROVISIONING (no endpoint, no CA) and then RUNNING; being deleted, STOPPING and then gone; being
 *   resized, RECONCILING and then RUNNING with the pool's new size (the fake keeps a pool's size in
 *   `initialNodeCount`; real GKE reports it through the pool's instance groups). One operation per
 *   cluster at a time: a second is FAILED_PRECONDITION, as GKE. `failNextOperation()` makes an
 *   operation end DONE with an `error` (a failed create leaves the cluster in ERROR, as GKE does, until
 *   it is deleted); `setClusterQuota()` makes CreateCluster fail with RESOURCE_EXHAUSTED. These methods
 *   take only the `parent`/`name` forms (not the deprecated project_id/zone fields).
 * - There is one copy of @grpc/grpc-js in this tree (`npm ls @grpc/grpc-js`: google-gax's is
 *   "deduped"). To stay correct if that ever changes, this module loads the copy google-gax resolves
 *   and re-exports it as `grpc`. Use it for `credentials`/`status` next to the client: grpc-js checks
 *   `credentials instanceof ChannelCredentials`, so credentials made by a different copy are rejected.
 */
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import path from 'node:path';
import type { ClusterManagerClient, protos } from '@google-cloud/container';
import { OAuth2Client } from 'google-auth-library';

type GrpcModule = typeof import('@grpc/grpc-js');
type ProtoLoaderModule = typeof import('@grpc/proto-loader');
type ServerUnaryCall = import('@grpc/grpc-js').ServerUnaryCall<Record<string, unknown>, unknown>;
type SendUnaryData = import('@grpc/grpc-js').sendUnaryData<unknown>;
type UntypedServiceImplementation = import('@grpc/grpc-js').UntypedServiceImplementation;

// ---------------------------------------------------------------------------
// Module resolution: use the same google-gax / grpc-js / protos as the client.
// ---------------------------------------------------------------------------

const rootRequire = createRequire(import.meta.url);
const containerMain = rootRequire.resolve('@google-cloud/container'); // .../container/build/src/index.js
const containerRoot = path.resolve(path.dirname(containerMain), '..', '..');
const containerRequire = createRequire(containerMain);
const gaxMain = containerRequire.resolve('google-gax'); // .../google-gax/build/src/index.js
const gaxRequire = createRequire(gaxMain);

/** The @grpc/grpc-js copy that google-gax (and therefore ClusterManagerClient) uses. */
export const grpc: GrpcModule = gaxRequire('@grpc/grpc-js');
const protoLoader: ProtoLoaderModule = gaxRequire('@grpc/proto-loader');

/** Directories used to load cluster_service.proto (exported for debugging / reuse). */
export const GKE_PROTO_INCLUDE_DIRS: readonly string[] = [
  path.join(containerRoot, 'build', 'protos'),
  path.resolve(path.dirname(gaxMain), '..', 'protos'), // google/api, google/rpc, google/type, google/protobuf
];
export const GKE_PROTO_FILE = 'google/container/v1/cluster_service.proto';

/** Same options google-gax uses for the client side (GrpcClient.defaultOptions()). */
const PROTO_LOADER_OPTIONS = {
  keepCase: false,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [...GKE_PROTO_INCLUDE_DIRS],
};

let cachedService: import('@grpc/grpc-js').ServiceDefinition | undefined;
function clusterManagerService(): import('@grpc/grpc-js').ServiceDefinition {
  if (!cachedService) {
    const def = protoLoader.loadSync(GKE_PROTO_FILE, PROTO_LOADER_OPTIONS);
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    const pkg = grpc.loadPackageDefinition(def) as any;
    cachedService = pkg.google.container.v1.ClusterManager.service;
  }
  return cachedService!;
}

// ---------------------------------------------------------------------------
// Cluster model
// ---------------------------------------------------------------------------

export type ClusterStatus =
  | 'STATUS_UNSPECIFIED'
  | 'PROVISIONING'
  | 'RUNNING'
  | 'RECONCILING'
  | 'STOPPING'
  | 'ERROR'
  | 'DEGRADED';

/**
 * A cluster as the fake stores it: a `google.container.v1.ICluster` (camelCase fields) plus the
 * owning `project`, which real Cluster messages do not carry. `project` is stripped before the
 * cluster is sent. If `project` is missing it is derived from `selfLink`.
 */
export type FakeCluster = protos.google.container.v1.ICluster & {
  project: string;
  name: string;
  location: string;
};

export interface FakeAccelerator {
  acceleratorType: string; // e.g. 'nvidia-tesla-t4', 'nvidia-l4', 'nvidia-h100-80gb'
  acceleratorCount: number | string; // int64 on the wire; the client gets it back as a string
  gpuPartitionSize?: string;
}

export interface FakeNodePoolOptions {
  name?: string;
  nodeCount?: number;
  machineType?: string;
  version?: string;
  status?: 'RUNNING' | 'PROVISIONING' | 'RECONCILING' | 'STOPPING' | 'ERROR' | 'RUNNING_WITH_ERROR';
  accelerators?: FakeAccelerator[];
  labels?: Record<string, string>;
}

export interface MakeClusterOptions {
  project: string;
  location: string; // zone ('us-central1-a') or region ('us-central1')
  name: string;
  status?: ClusterStatus;
  statusMessage?: string;
  endpoint?: string; // IPv4; default derived deterministically from project/location/name
  currentMasterVersion?: string;
  currentNodeVersion?: string;
  resourceLabels?: Record<string, string>;
  /** base64 of a PEM CA certificate (as GKE returns `masterAuth.clusterCaCertificate`). */
  caCertificate?: string;
  /** hex id; default sha256(project/location/name) (64 hex chars). */
  id?: string;
  description?: string;
  createTime?: string;
  nodePools?: FakeNodePoolOptions[];
}

export const DEFAULT_GKE_VERSION = '1.31.5-gke.1000';

function isZone(location: string): boolean {
  // zones look like us-central1-a; regions like us-central1
  return /^[a-z]+-[a-z]+\d+-[a-z]$/.test(location);
}

function sha256(s: string): string {
  return createHash('sha256').update(s).digest('hex');
}

/**
 * A syntactically PEM-shaped but NOT parseable-as-X.509 certificate, base64-encoded the way GKE
 * returns `masterAuth.clusterCaCertificate`. Pass `caCertificate` if your code parses the cert.
 */
export function fakeCaCertificate(seed: string): string {
  const body = Buffer.from(`fake-gke-ca:${seed}:${sha256(seed)}`).toString('base64');
  const lines = body.match(/.{1,64}/g) ?? [];
  const pem = `-----BEGIN CERTIFICATE-----\n${lines.join('\n')}\n-----END CERTIFICATE-----\n`;
  return Buffer.from(pem).toString('base64');
}

/** Build a cluster with realistic defaults. All defaults are deterministic. */
export function makeCluster(opts: MakeClusterOptions): FakeCluster {
  const { project, location, name } = opts;
  const seed = `${project}/${location}/${name}`;
  const h = sha256(seed);
  const version = opts.currentMasterVersion ?? DEFAULT_GKE_VERSION;
  const nodeVersion = opts.currentNodeVersion ?? version;
  const zonal = isZone(location);
  const locKind = zonal ? 'zones' : 'locations';
  const selfLink = `https://container.googleapis.com/v1/projects/${project}/${locKind}/${location}/clusters/${name}`;
  const nodeLocations = zonal ? [location] : [`${location}-a`, `${location}-b`, `${location}-c`];
  const endpoint =
    opts.endpoint ?? `127.${parseInt(h.slice(0, 2), 16)}.${parseInt(h.slice(2, 4), 16)}.${(parseInt(h.slice(4, 6), 16) % 254) + 1}`;
  const status = opts.status ?? 'RUNNING';

  const poolOpts = opts.nodePools ?? [{ name: 'default-pool' }];
  const nodePools: protos.google.container.v1.INodePool[] = poolOpts.map((p, i) => {
    const poolName = p.name ?? (i === 0 ? 'default-pool' : `pool-${i}`);
    const nodeCount = p.nodeCount ?? 3;
    return {
      name: poolName,
      config: {
        machineType: p.machineType ?? (p.accelerators?.length ? 'g2-standard-8' : 'e2-standard-4'),
        diskSizeGb: 100,
        diskType: 'pd-balanced',
        imageType: 'COS_CONTAINERD',
        oauthScopes: ['https://www.googleapis.com/auth/cloud-platform'],
        serviceAccount: 'default',
        labels: p.labels ?? {},
        accelerators: (p.accelerators ?? []).map((a) => ({
          acceleratorCount: a.acceleratorCount,
          acceleratorType: a.acceleratorType,
          ...(a.gpuPartitionSize ? { gpuPartitionSize: a.gpuPartitionSize } : {}),
        })),
      },
      initialNodeCount: nodeCount,
      locations: nodeLocations,
      selfLink: `${selfLink}/nodePools/${poolName}`,
      version: p.version ?? nodeVersion,
      instanceGroupUrls: [],
      status: p.status ?? (status === 'PROVISIONING' ? 'PROVISIONING' : 'RUNNING'),
      podIpv4CidrSize: 24,
    };
  });
  const nodeCount = poolOpts.reduce((n, p) => n + (p.nodeCount ?? 3), 0) * (zonal ? 1 : 3);

  return {
    project,
    name,
    description: opts.description ?? '',
    location,
    zone: location,
    locations: nodeLocations,
    selfLink,
    id: opts.id ?? h,
    endpoint,
    initialClusterVersion: version,
    currentMasterVersion: version,
    currentNodeVersion: nodeVersion,
    currentNodeCount: status === 'PROVISIONING' ? 0 : nodeCount,
    createTime: opts.createTime ?? '2025-01-01T00:00:00+00:00',
    status,
    statusMessage: opts.statusMessage ?? '',
    resourceLabels: opts.resourceLabels ?? {},
    labelFingerprint: h.slice(0, 8),
    masterAuth: { clusterCaCertificate: opts.caCertificate ?? fakeCaCertificate(seed) },
    network: 'default',
    subnetwork: 'default',
    clusterIpv4Cidr: '10.8.0.0/14',
    servicesIpv4Cidr: '34.118.224.0/20',
    loggingService: 'logging.googleapis.com/kubernetes',
    monitoringService: 'monitoring.googleapis.com/kubernetes',
    nodePools,
  };
}

function projectOf(c: FakeCluster): string | undefined {
  if (c.project) return c.project;
  const m = /\/projects\/([^/]+)\//.exec(c.selfLink ?? '');
  return m?.[1];
}

function toWire(c: FakeCluster): protos.google.container.v1.ICluster {
  // eslint-disable-next-line @typescript-eslint/no-unused-vars
  const { project: _project, ...rest } = structuredClone(c);
  if (!rest.zone) rest.zone = rest.location;
  return rest;
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

export interface FakeGkeCall {
  method: string; // e.g. 'ListClusters', 'GetCluster'
  parent?: string;
  name?: string;
  projectId?: string;
  zone?: string;
  clusterId?: string;
  /** full decoded request (camelCase, defaults filled) */
  request: Record<string, unknown>;
  /** request metadata, e.g. 'x-goog-request-params', 'x-goog-api-client' (no 'authorization' expected) */
  metadata: Record<string, string>;
  /** outcome, filled in when the call completes: 'ok' or a grpc status code number */
  outcome?: 'ok' | number;
}

export type FakeOperationKind = 'create' | 'delete' | 'resize';

const OPERATION_TYPES = { create: 'CREATE_CLUSTER', delete: 'DELETE_CLUSTER', resize: 'SET_NODE_POOL_SIZE' } as const;

/** An operation as the fake records it (`fake.operations`); GetOperation sends its wire form. */
export interface FakeOperation {
  /** GKE's short operation id, e.g. 'operation-1735689600000-1'. */
  readonly name: string;
  readonly kind: FakeOperationKind;
  readonly operationType: (typeof OPERATION_TYPES)[FakeOperationKind];
  readonly project: string;
  readonly location: string;
  readonly cluster: string;
  readonly nodePool?: string;
  /** The size asked for, for a resize. */
  readonly nodeCount?: number;
  /** On the fake's clock (ms). */
  readonly startedAt: number;
  /** When it ends (successfully or not) on the fake's clock. */
  readonly endsAt: number;
  status: 'PENDING' | 'RUNNING' | 'DONE';
  /** Set when the operation ends with an error (set from the start; only sent once DONE). */
  readonly error?: { code: number; message: string };
}

export interface FakeOperationDurations {
  create: number;
  delete: number;
  resize: number;
}

export interface FakeOperationFailure {
  /** Which kind of operation fails; any when unset. */
  kind?: FakeOperationKind;
  /** A google.rpc.Code; default RESOURCE_EXHAUSTED (a stockout). */
  code?: number;
  message?: string;
  /** How long into the operation it fails; default its whole duration. */
  afterMs?: number;
}

export interface FakeGke {
  readonly host: '127.0.0.1';
  readonly port: number;
  readonly address: string; // '127.0.0.1:PORT'
  /** Live, mutable list of clusters. Mutate it (push/splice) or call setClusters(). */
  readonly clusters: FakeCluster[];
  setClusters(clusters: FakeCluster[]): void;
  /**
   * Zones GKE cannot reach (a zonal outage): ListClusters leaves out their clusters (zonal ones,
   * and regional ones of the zone's region) and names the zones in `missingZones`, as GKE does.
   */
  setMissingZones(zones: string[]): void;
  /** Every RPC received, in arrival order (retries show up as separate entries). */
  readonly calls: FakeGkeCall[];
  clearCalls(): void;
  /** The next `n` RPCs (any method) fail with `code` (a grpc.status value). */
  failNext(n: number, code: number, message?: string): void;
  /** Delay every response (success or failure) by `ms`. 0 disables. */
  setLatency(ms: number): void;
  /** Hold every response (current and future) until unhang()/close() or until the client gives up. */
  hang(): void;
  unhang(): void;
  /** Every operation started, in order (live: statuses move as the clock does). */
  readonly operations: readonly FakeOperation[];
  /** How many operations are not DONE now. */
  runningOperations(): number;
  /** The most operations that were not DONE at once since the start or reset(). */
  readonly maxConcurrentOperations: number;
  /** The next operation (of `kind`, if given) ends DONE with an error instead of succeeding. */
  failNextOperation(failure?: FakeOperationFailure): void;
  /** CreateCluster fails with RESOURCE_EXHAUSTED once a project has this many clusters; undefined lifts it. */
  setClusterQuota(clusters: number | undefined): void;
  setOperationDurations(durations: Partial<FakeOperationDurations>): void;
  /** The fake's clock (ms): `now()` of the options plus everything advanced. */
  now(): number;
  /** Moves the fake's clock forward and lets operations progress. */
  advance(ms: number): void;
  /** Lets operations progress to the present of the clock (every RPC does this too). */
  tick(): void;
  /**
   * Clear calls, pending failNext failures, latency and hang, operation failures, the quota, the
   * operations record and its concurrency count (clusters are kept; operations in flight are
   * abandoned and their clusters stay as they are).
   */
  reset(): void;
  close(): Promise<void>;
}

export interface StartFakeGkeOptions {
  clusters?: FakeCluster[];
  /** Port to bind on 127.0.0.1; default 0 (ephemeral). */
  port?: number;
  /** How long operations take, in ms of the fake's clock; default create 200, delete 100, resize 100. */
  operationDurations?: Partial<FakeOperationDurations>;
  /** The fake's clock; default Date.now. `() => 0` makes it move only by advance(). */
  now?: () => number;
  /** See setClusterQuota. */
  clusterQuota?: number;
}

class GrpcError extends Error {
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
  }
}

const CLUSTERS_PARENT_RE = /^projects\/([^/]+)\/locations\/([^/]+)$/;
const CLUSTER_NAME_RE = /^projects\/([^/]+)\/locations\/([^/]+)\/clusters\/([^/]+)$/;
const NODE_POOL_NAME_RE = /^projects\/([^/]+)\/locations\/([^/]+)\/clusters\/([^/]+)\/nodePools\/([^/]+)$/;
const OPERATION_NAME_RE = /^projects\/([^/]+)\/locations\/([^/]+)\/operations\/([^/]+)$/;
/** GKE's rule for cluster names: lowercase letters, digits and hyphens, a letter first, at most 40. */
const GKE_CLUSTER_NAME_RE = /^[a-z](?:[-a-z0-9]{0,38}[a-z0-9])?$/;

/** `field` of `req` matched against `re`, or INVALID_ARGUMENT naming the form wanted. */
function parseName(req: Record<string, unknown>, field: 'name' | 'parent', re: RegExp, form: string): string[] {
  const value = String(req[field] ?? '');
  const m = re.exec(value);
  if (!m) throw new GrpcError(grpc.status.INVALID_ARGUMENT, `Invalid ${field} "${value}": want ${form}`);
  return m.slice(1);
}

function linkBase(project: string, location: string): string {
  return `https://container.googleapis.com/v1/projects/${project}/${isZone(location) ? 'zones' : 'locations'}/${location}`;
}

function poolSize(c: FakeCluster): number {
  const perPool = (c.nodePools ?? []).reduce((n, p) => n + Number(p.initialNodeCount ?? 0), 0);
  return perPool * (isZone(c.location) ? 1 : 3);
}

export async function startFakeGke(options: StartFakeGkeOptions = {}): Promise<FakeGke> {
  const service = clusterManagerService();
  const clusters: FakeCluster[] = [...(options.clusters ?? [])];
  let missingZones: string[] = [];
  const calls: FakeGkeCall[] = [];
  let failures: Array<{ code: number; message?: string }> = [];
  let latencyMs = 0;
  let hung = false;
  let hangWaiters: Array<() => void> = [];
  const closeController = new AbortController();
  const baseNow = options.now ?? Date.now;
  let skewMs = 0;
  const now = () => baseNow() + skewMs;
  let durations: FakeOperationDurations = { create: 200, delete: 100, resize: 100, ...options.operationDurations };
  const operations: FakeOperation[] = [];
  let operationCount = 0;
  let maxConcurrentOperations = 0;
  let operationFailures: FakeOperationFailure[] = [];
  let clusterQuota = options.clusterQuota;
  /** What a cluster being created gets once it is up. */
  const whenUp = new Map<FakeOperation, { endpoint: string; caCertificate: string }>();

  const releaseHung = () => {
    const waiters = hangWaiters;
    hangWaiters = [];
    for (const w of waiters) w();
  };

  function listClusters(req: Record<string, unknown>): protos.google.container.v1.IListClustersResponse {
    let project: string;
    let location: string;
    const parent = String(req.parent ?? '');
    if (parent) {
      const m = CLUSTERS_PARENT_RE.exec(parent);
      if (!m) throw new GrpcError(grpc.status.INVALID_ARGUMENT, `Invalid parent "${parent}": want projects/*/locations/*`);
      [, project, location] = m as unknown as [string, string, string];
    } else {
      project = String(req.projectId ?? '');
      location = String(req.zone ?? '');
      if (!project || !location) {
        throw new GrpcError(grpc.status.INVALID_ARGUMENT, 'parent or project_id and zone must be set');
      }
    }
    const inScope = (zone: string) => location === '-' || zone === location || zone.startsWith(`${location}-`);
    const missing = missingZones.filter(inScope);
    const unreachable = (c: FakeCluster) => missing.some((zone) => zone === c.location || zone.startsWith(`${c.location}-`));
    const matches = clusters.filter((c) => projectOf(c) === project && (location === '-' || c.location === location) && !unreachable(c));
    return { clusters: matches.map(toWire), missingZones: missing };
  }

  function getCluster(req: Record<string, unknown>): protos.google.container.v1.ICluster {
    let project: string;
    let location: string;
    let name: string;
    const full = String(req.name ?? '');
    if (full) {
      const m = CLUSTER_NAME_RE.exec(full);
      if (!m) throw new GrpcError(grpc.status.INVALID_ARGUMENT, `Invalid name "${full}": want projects/*/locations/*/clusters/*`);
      [, project, location, name] = m as unknown as [string, string, string, string];
    } else {
      project = String(req.projectId ?? '');
      location = String(req.zone ?? '');
      name = String(req.clusterId ?? '');
      if (!project || !location || !name) {
        throw new GrpcError(grpc.status.INVALID_ARGUMENT, 'name or project_id, zone and cluster_id must be set');
      }
    }
    // '-' as location matches any location (first match); this is fake-only convenience.
    const c = clusters.find((x) => projectOf(x) === project && x.name === name && (location === '-' || x.location === location));
    if (!c) {
      throw new GrpcError(grpc.status.NOT_FOUND, `Not found: projects/${project}/locations/${location}/clusters/${name}.`);
    }
    return toWire(c);
  }

  // -- operations --------------------------------------------------------------------------

  const findCluster = (project: string, location: string, name: string) =>
    clusters.find((c) => projectOf(c) === project && c.location === location && c.name === name);
  const running = () => operations.filter((op) => op.status !== 'DONE');

  /** Brings every operation to the present of the clock, in the order they end. */
  function settle(): void {
    const t = now();
    for (const op of [...running()].sort((a, b) => a.endsAt - b.endsAt)) {
      if (t >= op.endsAt) finish(op);
      else if (t > op.startedAt) op.status = 'RUNNING';
    }
  }

  function finish(op: FakeOperation): void {
    op.status = 'DONE';
    const c = findCluster(op.project, op.location, op.cluster);
    const up = whenUp.get(op);
    whenUp.delete(op);
    if (!c) return; // removed by the test meanwhile
    if (op.error) {
      // A failed create or delete leaves the cluster in ERROR, as GKE does; a failed resize leaves it running.
      c.status = op.kind === 'resize' ? 'RUNNING' : 'ERROR';
      c.statusMessage = op.error.message;
      for (const pool of c.nodePools ?? []) pool.status = op.kind === 'resize' ? 'RUNNING' : 'ERROR';
      return;
    }
    if (op.kind === 'delete') {
      clusters.splice(clusters.indexOf(c), 1);
      return;
    }
    if (op.kind === 'resize') {
      const pool = (c.nodePools ?? []).find((p) => p.name === op.nodePool);
      if (pool) pool.initialNodeCount = op.nodeCount;
    }
    if (up) {
      c.endpoint = up.endpoint;
      c.masterAuth = { clusterCaCertificate: up.caCertificate };
    }
    c.status = 'RUNNING';
    for (const pool of c.nodePools ?? []) pool.status = 'RUNNING';
    c.currentNodeCount = poolSize(c);
  }

  /** FAILED_PRECONDITION while another operation runs on the cluster, with GKE's messages. */
  function assertIdle(project: string, location: string, name: string): void {
    const busy = running().find((op) => op.project === project && op.location === location && op.cluster === name);
    if (!busy) return;
    throw new GrpcError(
      grpc.status.FAILED_PRECONDITION,
      busy.kind === 'create'
        ? `Operation ${busy.name} is currently creating cluster ${name}. Please wait and try again once it is done.`
        : `Cluster is running incompatible operation ${busy.name}.`,
    );
  }

  function startOperation(kind: FakeOperationKind, project: string, location: string, cluster: string, extra: { nodePool?: string; nodeCount?: number } = {}): FakeOperation {
    const failureAt = operationFailures.findIndex((f) => !f.kind || f.kind === kind);
    const failure = failureAt >= 0 ? operationFailures.splice(failureAt, 1)[0] : undefined;
    const startedAt = now();
    const op: FakeOperation = {
      name: `operation-${startedAt}-${++operationCount}`,
      kind,
      operationType: OPERATION_TYPES[kind],
      project,
      location,
      cluster,
      ...extra,
      startedAt,
      endsAt: startedAt + (failure?.afterMs ?? durations[kind]),
      status: 'PENDING',
      ...(failure && {
        error: {
          code: failure.code ?? grpc.status.RESOURCE_EXHAUSTED,
          message: failure.message ?? `fake GKE: the ${OPERATION_TYPES[kind]} operation failed`,
        },
      }),
    };
    operations.push(op);
    maxConcurrentOperations = Math.max(maxConcurrentOperations, running().length);
    return op;
  }

  function operationToWire(op: FakeOperation): protos.google.container.v1.IOperation {
    const done = op.status === 'DONE';
    const clusterLink = `${linkBase(op.project, op.location)}/clusters/${op.cluster}`;
    return {
      name: op.name,
      zone: op.location,
      location: op.location,
      operationType: op.operationType,
      status: op.status,
      selfLink: `${linkBase(op.project, op.location)}/operations/${op.name}`,
      // GKE names the node pool of a node pool operation, the cluster otherwise.
      targetLink: op.nodePool ? `${clusterLink}/nodePools/${op.nodePool}` : clusterLink,
      startTime: new Date(op.startedAt).toISOString(),
      endTime: done ? new Date(op.endsAt).toISOString() : '',
      statusMessage: done && op.error ? op.error.message : '',
      detail: '',
      error: done && op.error ? { code: op.error.code, message: op.error.message, details: [] } : null,
    };
  }

  function createCluster(req: Record<string, unknown>): protos.google.container.v1.IOperation {
    const [project, location] = parseName(req, 'parent', CLUSTERS_PARENT_RE, 'projects/*/locations/*') as [string, string];
    if (location === '-') throw new GrpcError(grpc.status.INVALID_ARGUMENT, 'Location "-" is not valid for creating a cluster.');
    const wanted = (req.cluster ?? null) as protos.google.container.v1.ICluster | null;
    if (!wanted) throw new GrpcError(grpc.status.INVALID_ARGUMENT, 'Cluster must be set.');
    const name = String(wanted.name ?? '');
    if (!GKE_CLUSTER_NAME_RE.test(name)) {
      throw new GrpcError(grpc.status.INVALID_ARGUMENT, `Invalid value for field "cluster.name": "${name}". Must be a match of regex '(?:[a-z](?:[-a-z0-9]{0,38}[a-z0-9])?)'`);
    }
    const pools = wanted.nodePools ?? [];
    const initialNodeCount = Number(wanted.initialNodeCount ?? 0);
    if (pools.length === 0 && initialNodeCount <= 0) {
      throw new GrpcError(grpc.status.INVALID_ARGUMENT, 'Cluster.initial_node_count must be greater than zero, or node pools must be specified.');
    }
    if (pools.length > 0 && initialNodeCount > 0) {
      throw new GrpcError(grpc.status.INVALID_ARGUMENT, 'Cluster.initial_node_count must be unset when node pools are specified.');
    }
    if (findCluster(project, location, name)) throw new GrpcError(grpc.status.ALREADY_EXISTS, `Already exists: projects/${project}/locations/${location}/clusters/${name}.`);
    const owned = clusters.filter((c) => projectOf(c) === project).length;
    if (clusterQuota !== undefined && owned >= clusterQuota) {
      throw new GrpcError(grpc.status.RESOURCE_EXHAUSTED, `Insufficient quota to satisfy request: project "${project}" may have at most ${clusterQuota} clusters.`);
    }
    const made = makeCluster({
      project,
      location,
      name,
      status: 'PROVISIONING',
      description: wanted.description ?? '',
      resourceLabels: { ...(wanted.resourceLabels ?? {}) },
      ...(wanted.initialClusterVersion && { currentMasterVersion: wanted.initialClusterVersion }),
      createTime: new Date(now()).toISOString(),
      nodePools: (pools.length > 0 ? pools : [{ name: 'default-pool', initialNodeCount, config: wanted.nodeConfig }]).map((p) => ({
        name: p.name ?? undefined,
        nodeCount: Number(p.initialNodeCount ?? 0),
        ...(p.config?.machineType && { machineType: p.config.machineType }),
        accelerators: (p.config?.accelerators ?? []).map((a) => ({ acceleratorType: String(a.acceleratorType ?? ''), acceleratorCount: String(a.acceleratorCount ?? 0) })),
      })),
    });
    const op = startOperation('create', project, location, name);
    whenUp.set(op, { endpoint: made.endpoint!, caCertificate: made.masterAuth!.clusterCaCertificate! });
    clusters.push({ ...made, endpoint: '', masterAuth: { clusterCaCertificate: '' } });
    return operationToWire(op);
  }

  function deleteCluster(req: Record<string, unknown>): protos.google.container.v1.IOperation {
    const [project, location, name] = parseName(req, 'name', CLUSTER_NAME_RE, 'projects/*/locations/*/clusters/*') as [string, string, string];
    const c = findCluster(project, location, name);
    if (!c) throw new GrpcError(grpc.status.NOT_FOUND, `Not found: projects/${project}/locations/${location}/clusters/${name}.`);
    assertIdle(project, location, name);
    const op = startOperation('delete', project, location, name);
    c.status = 'STOPPING';
    return operationToWire(op);
  }

  function setNodePoolSize(req: Record<string, unknown>): protos.google.container.v1.IOperation {
    const [project, location, name, poolName] = parseName(req, 'name', NODE_POOL_NAME_RE, 'projects/*/locations/*/clusters/*/nodePools/*') as [string, string, string, string];
    const nodeCount = Number(req.nodeCount ?? 0);
    if (!Number.isInteger(nodeCount) || nodeCount < 0) throw new GrpcError(grpc.status.INVALID_ARGUMENT, `Invalid node count ${nodeCount}.`);
    const c = findCluster(project, location, name);
    if (!c) throw new GrpcError(grpc.status.NOT_FOUND, `Not found: projects/${project}/locations/${location}/clusters/${name}.`);
    const pool = (c.nodePools ?? []).find((p) => p.name === poolName);
    if (!pool) throw new GrpcError(grpc.status.NOT_FOUND, `Not found: projects/${project}/locations/${location}/clusters/${name}/nodePools/${poolName}.`);
    assertIdle(project, location, name);
    if (c.status !== 'RUNNING') throw new GrpcError(grpc.status.FAILED_PRECONDITION, `Cluster ${name} is in status ${String(c.status)}; it must be RUNNING.`);
    const op = startOperation('resize', project, location, name, { nodePool: poolName, nodeCount });
    c.status = 'RECONCILING';
    pool.status = 'RECONCILING';
    return operationToWire(op);
  }

  function getOperation(req: Record<string, unknown>): protos.google.container.v1.IOperation {
    const [project, location, id] = parseName(req, 'name', OPERATION_NAME_RE, 'projects/*/locations/*/operations/*') as [string, string, string];
    const op = operations.find((o) => o.project === project && o.location === location && o.name === id);
    if (!op) throw new GrpcError(grpc.status.NOT_FOUND, `Not found: projects/${project}/locations/${location}/operations/${id}.`);
    return operationToWire(op);
  }

  function listOperations(req: Record<string, unknown>): protos.google.container.v1.IListOperationsResponse {
    const [project, location] = parseName(req, 'parent', CLUSTERS_PARENT_RE, 'projects/*/locations/*') as [string, string];
    const inScope = (op: FakeOperation) => op.project === project && (location === '-' || op.location === location || op.location.startsWith(`${location}-`));
    return { operations: operations.filter(inScope).map(operationToWire), missingZones: [] };
  }

  const handlers: Record<string, (req: Record<string, unknown>) => unknown> = {
    ListClusters: listClusters,
    GetCluster: getCluster,
    CreateCluster: createCluster,
    DeleteCluster: deleteCluster,
    SetNodePoolSize: setNodePoolSize,
    GetOperation: getOperation,
    ListOperations: listOperations,
  };

  /** Resolves after ms, or early when the call is cancelled or the server closes. */
  function pause(ms: number, call: ServerUnaryCall): Promise<void> {
    return new Promise((resolve) => {
      if (ms <= 0 || call.cancelled || closeController.signal.aborted) return resolve();
      const done = () => {
        clearTimeout(t);
        call.removeListener('cancelled', done);
        closeController.signal.removeEventListener('abort', done);
        resolve();
      };
      const t = setTimeout(done, ms);
      call.once('cancelled', done);
      closeController.signal.addEventListener('abort', done, { once: true });
    });
  }

  function waitWhileHung(call: ServerUnaryCall): Promise<void> {
    return new Promise((resolve) => {
      if (!hung || call.cancelled || closeController.signal.aborted) return resolve();
      const done = () => {
        call.removeListener('cancelled', done);
        resolve();
      };
      hangWaiters.push(done);
      call.once('cancelled', done);
    });
  }

  const implementation: UntypedServiceImplementation = {};
  for (const [methodName, def] of Object.entries(service)) {
    if (def.requestStream || def.responseStream) continue; // ClusterManager has no streaming methods
    const rpcName = def.path.slice(def.path.lastIndexOf('/') + 1); // 'ListClusters'
    implementation[methodName] = async (call: ServerUnaryCall, callback: SendUnaryData) => {
      const req = call.request ?? {};
      const metadata: Record<string, string> = {};
      for (const [k, v] of Object.entries(call.metadata.getMap())) metadata[k] = String(v);
      const record: FakeGkeCall = { method: rpcName, request: req, metadata };
      for (const k of ['parent', 'name', 'projectId', 'zone', 'clusterId'] as const) {
        if (typeof req[k] === 'string' && req[k] !== '') record[k] = req[k] as string;
      }
      calls.push(record);
      const injected = failures.shift();

      await pause(latencyMs, call);
      await waitWhileHung(call);
      if (call.cancelled || closeController.signal.aborted) {
        record.outcome = grpc.status.CANCELLED;
        return;
      }

      try {
        if (injected) {
          throw new GrpcError(injected.code, injected.message ?? `fake GKE: injected ${grpc.status[injected.code] ?? injected.code}`);
        }
        const handler = handlers[rpcName];
        if (!handler) throw new GrpcError(grpc.status.UNIMPLEMENTED, `fake GKE: ${rpcName} is not implemented`);
        settle();
        const res = handler(req);
        record.outcome = 'ok';
        callback(null, res);
      } catch (e) {
        const err = e instanceof GrpcError ? e : new GrpcError(grpc.status.INTERNAL, String((e as Error)?.stack ?? e));
        record.outcome = err.code;
        callback({ code: err.code, details: err.message, name: 'Error', message: err.message });
      }
    };
  }

  const server = new grpc.Server();
  server.addService(service, implementation);
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(`127.0.0.1:${options.port ?? 0}`, grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    );
  });

  let closed: Promise<void> | undefined;
  return {
    host: '127.0.0.1',
    port,
    address: `127.0.0.1:${port}`,
    clusters,
    setClusters(next) {
      clusters.splice(0, clusters.length, ...next);
    },
    setMissingZones(zones) {
      missingZones = [...zones];
    },
    calls,
    clearCalls() {
      calls.length = 0;
    },
    failNext(n, code, message) {
      for (let i = 0; i < n; i++) failures.push({ code, message });
    },
    setLatency(ms) {
      latencyMs = ms;
    },
    hang() {
      hung = true;
    },
    unhang() {
      hung = false;
      releaseHung();
    },
    operations,
    runningOperations() {
      settle();
      return running().length;
    },
    get maxConcurrentOperations() {
      return maxConcurrentOperations;
    },
    failNextOperation(failure = {}) {
      operationFailures.push({ ...failure });
    },
    setClusterQuota(n) {
      clusterQuota = n;
    },
    setOperationDurations(next) {
      durations = { ...durations, ...next };
    },
    now,
    advance(ms) {
      skewMs += ms;
      settle();
    },
    tick() {
      settle();
    },
    reset() {
      calls.length = 0;
      failures = [];
      operationFailures = [];
      clusterQuota = options.clusterQuota;
      operations.length = 0;
      whenUp.clear();
      maxConcurrentOperations = 0;
      latencyMs = 0;
      hung = false;
      releaseHung();
    },
    close() {
      closed ??= new Promise<void>((resolve) => {
        hung = false;
        failures = [];
        closeController.abort();
        releaseHung();
        // Pending calls were just released and return without answering; forceShutdown cancels them
        // so no client is left waiting for its deadline.
        server.forceShutdown();
        resolve();
      });
      return closed;
    },
  };
}

// ---------------------------------------------------------------------------
// Client side helpers
// ---------------------------------------------------------------------------

/**
 * An AuthClient that never authenticates: `getRequestHeaders()` returns no headers and
 * `universeDomain` is the default 'googleapis.com' (which is all google-gax reads from it when
 * `sslCreds` is given).
 */
export class NoAuthClient extends OAuth2Client {
  override async getRequestHeaders(): Promise<Headers> {
    return new Headers();
  }
  override async getAccessToken(): Promise<{ token?: string | null }> {
    return { token: null };
  }
}

export type ClusterManagerClientOptions = NonNullable<ConstructorParameters<typeof ClusterManagerClient>[0]>;

/** Options for `new ClusterManagerClient(...)` that point it at the fake, insecure and unauthenticated. */
export function fakeGkeClientOptions(fake: Pick<FakeGke, 'host' | 'port'>): ClusterManagerClientOptions {
  return {
    apiEndpoint: fake.host,
    port: fake.port,
    sslCreds: grpc.credentials.createInsecure(),
    authClient: new NoAuthClient(),
  };
}
