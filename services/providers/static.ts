// The static pool: clusters listed in a YAML file, for teams with kind, k3s or on-prem
// clusters, and the embedded default that lets the claimer run with no cloud account.
//
//   provider: static            # optional: what clients may send as cloud_provider
//   credentials: pool           # optional: lessees get the credentials below, not per-lease ones
//   cleanup: none               # optional: no namespace cleanup between leases
//   registry_location: gcr.io/p # optional: every cluster's registry unless it names its own
//   clusters:
//     - name: ci-1              # unique per location
//       location: lab           # optional, default "static"
//       server: https://10.0.0.1:6443
//       certificate_authority_data: <base64 PEM>   # optional
//       token: <bearer token>                      # optional
//       labels: {team: infra}   # optional
//       version: 1.31.2         # optional
//       cluster_tag: lab-ci-1   # optional, default: the id
//       gpu: true               # optional, default false
//       registry_location: registry.lab:5000   # optional, default: the pool's
//     - name: kind-ci
//       kubeconfig: ./kind.kubeconfig   # relative to this file; `context` picks one (default: current)

import { readFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import * as v from 'valibot';
import { parse } from 'yaml';
import { buildKubeconfig, hostOf } from '../kubeconfig.ts';
import type { Cluster, ClusterProvider } from './types.ts';

const Labels = v.optional(v.record(v.string(), v.string()), {});
const Facts = {
  cluster_tag: v.optional(v.pipe(v.string(), v.nonEmpty())),
  gpu: v.optional(v.boolean(), false),
  registry_location: v.optional(v.pipe(v.string(), v.nonEmpty())),
};

const InlineCluster = v.strictObject({
  name: v.pipe(v.string(), v.nonEmpty()),
  location: v.optional(v.pipe(v.string(), v.nonEmpty()), 'static'),
  server: v.pipe(v.string(), v.url('must be a URL')),
  certificate_authority_data: v.optional(v.string()),
  insecure_skip_tls_verify: v.optional(v.boolean(), false),
  token: v.optional(v.string()),
  labels: Labels,
  version: v.optional(v.string(), ''),
  ...Facts,
});

const KubeconfigCluster = v.strictObject({
  name: v.pipe(v.string(), v.nonEmpty()),
  location: v.optional(v.pipe(v.string(), v.nonEmpty()), 'static'),
  kubeconfig: v.pipe(v.string(), v.nonEmpty()),
  context: v.optional(v.string()),
  labels: Labels,
  version: v.optional(v.string(), ''),
  ...Facts,
});

const PoolFile = v.object({
  provider: v.optional(v.pipe(v.string(), v.nonEmpty()), 'static'),
  /** `pool`: lessees get the pool file's credentials instead of per-lease ones. */
  credentials: v.optional(v.picklist(['serviceaccount', 'pool'], 'must be serviceaccount or pool')),
  cleanup: v.optional(v.picklist(['namespaces', 'none'], 'must be namespaces or none')),
  registry_location: v.optional(v.pipe(v.string(), v.nonEmpty())),
  clusters: v.array(v.union([InlineCluster, KubeconfigCluster])),
});

/** The parts of a kubeconfig file this provider reads; anything else in a user entry is passed on. */
const KubeconfigFile = v.object({
  'current-context': v.optional(v.string()),
  contexts: v.array(v.object({ name: v.string(), context: v.object({ cluster: v.string(), user: v.string() }) })),
  clusters: v.array(v.object({ name: v.string(), cluster: v.looseObject({ server: v.pipe(v.string(), v.url('must be a URL')) }) })),
  users: v.optional(v.array(v.object({ name: v.string(), user: v.record(v.string(), v.unknown()) })), []),
});

export class PoolFileError extends Error {}

/**
 * Why a file could not be read or parsed, without quoting it: YAML's own message shows the
 * offending line, which may be a token.
 */
function problemOf(error: unknown): string {
  const { name, code, linePos } = (error ?? {}) as { name?: string; code?: string; linePos?: Array<{ line: number; col: number }> };
  if (name === 'YAMLParseError' || name === 'YAMLWarning') {
    const where = linePos?.[0] ? `line ${linePos[0].line}, column ${linePos[0].col}` : 'somewhere';
    return `YAML syntax error at ${where} (${code ?? 'unknown'})`;
  }
  return code ?? 'unreadable';
}

function describeIssues(issues: readonly v.BaseIssue<unknown>[]): string {
  const shown = issues.slice(0, 5).map((issue) => `${v.getDotPath(issue) ?? '(top)'}: ${issue.message}`);
  if (issues.length > shown.length) shown.push(`and ${issues.length - shown.length} more`);
  return shown.join('; ');
}

interface PoolMember {
  cluster: Cluster;
  kubeconfig: string;
}

export class StaticProvider implements ClusterProvider {
  readonly aliases: readonly string[];

  private constructor(
    readonly kind: string,
    private readonly members: PoolMember[],
    /** The pool's own choices; the environment overrides them. */
    readonly settings: { credentials?: 'serviceaccount' | 'pool'; cleanup?: 'namespaces' | 'none' },
  ) {
    this.aliases = [kind];
  }

  static async load(path: string): Promise<StaticProvider> {
    let document: unknown;
    try {
      document = parse(await readFile(path, 'utf8'));
    } catch (error) {
      throw new PoolFileError(`cannot read static pool file ${path}: ${problemOf(error)}`);
    }
    const parsed = v.safeParse(PoolFile, document);
    if (!parsed.success) throw new PoolFileError(`static pool file ${path} is invalid: ${describeIssues(parsed.issues)}`);
    const members: PoolMember[] = [];
    for (const entry of parsed.output.clusters) {
      const member =
        'kubeconfig' in entry
          ? await fromKubeconfigFile(entry, resolve(dirname(path), entry.kubeconfig))
          : fromInline(entry);
      member.cluster.registryLocation = entry.registry_location ?? parsed.output.registry_location ?? null;
      if (members.some((other) => other.cluster.id === member.cluster.id)) {
        throw new PoolFileError(`static pool file ${path} lists cluster ${member.cluster.id} twice`);
      }
      members.push(member);
    }
    const { credentials, cleanup } = parsed.output;
    return new StaticProvider(parsed.output.provider, members, { ...(credentials && { credentials }), ...(cleanup && { cleanup }) });
  }

  async list(): Promise<Cluster[]> {
    return this.members.map((member) => member.cluster);
  }

  async kubeconfigFor(cluster: Cluster): Promise<string> {
    const member = this.members.find((candidate) => candidate.cluster.id === cluster.id);
    if (!member) throw new Error(`cluster ${cluster.id} is not in the static pool`);
    return member.kubeconfig;
  }

  /** The pool file's credentials serve the claimer too. */
  adminKubeconfigFor(cluster: Cluster): Promise<string> {
    return this.kubeconfigFor(cluster);
  }
}

type PoolEntry = Pick<v.InferOutput<typeof InlineCluster>, 'name' | 'location' | 'labels' | 'version' | 'cluster_tag' | 'gpu'>;

/** A pool member from its pool-file entry and how to reach its API server. */
function poolMember(
  entry: PoolEntry,
  access: { server: string; caData?: string; insecureSkipTlsVerify?: boolean; user: Record<string, unknown> },
): PoolMember {
  const cluster: Cluster = {
    id: `${entry.location}/${entry.name}`,
    name: entry.name,
    location: entry.location,
    server: access.server,
    endpoint: hostOf(access.server),
    ...(access.caData && { caData: access.caData }),
    labels: entry.labels,
    version: entry.version,
    status: 'RUNNING',
    tag: entry.cluster_tag ?? `${entry.location}/${entry.name}`,
    gpu: entry.gpu,
    registryLocation: null,
  };
  const kubeconfig = buildKubeconfig({ contextName: entry.name, ...access });
  return { cluster, kubeconfig };
}

function fromInline(entry: v.InferOutput<typeof InlineCluster>): PoolMember {
  return poolMember(entry, {
    server: entry.server,
    caData: entry.certificate_authority_data,
    insecureSkipTlsVerify: entry.insecure_skip_tls_verify,
    user: entry.token ? { token: entry.token } : {},
  });
}

/** File references in a kubeconfig are inlined, so the lessee's copy works anywhere. */
const INLINED_FILES: Record<string, string> = {
  'certificate-authority': 'certificate-authority-data',
  'client-certificate': 'client-certificate-data',
  'client-key': 'client-key-data',
};

async function inlineFiles(section: Record<string, unknown>, folder: string): Promise<Record<string, unknown>> {
  const result: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(section)) {
    const dataKey = INLINED_FILES[key];
    if (dataKey && typeof value === 'string') {
      result[dataKey] = (await readFile(resolve(folder, value))).toString('base64');
    } else if (key === 'tokenFile' && typeof value === 'string') {
      result.token = (await readFile(resolve(folder, value), 'utf8')).trim();
    } else {
      result[key] = value;
    }
  }
  return result;
}

async function fromKubeconfigFile(entry: v.InferOutput<typeof KubeconfigCluster>, file: string): Promise<PoolMember> {
  let document: unknown;
  try {
    document = parse(await readFile(file, 'utf8'));
  } catch (error) {
    throw new PoolFileError(`cannot read kubeconfig ${file} of cluster ${entry.name}: ${problemOf(error)}`);
  }
  const parsed = v.safeParse(KubeconfigFile, document);
  if (!parsed.success) throw new PoolFileError(`kubeconfig ${file} is invalid: ${describeIssues(parsed.issues)}`);
  const config = parsed.output;
  const contextName = entry.context ?? config['current-context'];
  const context = config.contexts.find((candidate) => candidate.name === contextName)?.context;
  const clusterSection = config.clusters.find((candidate) => candidate.name === context?.cluster)?.cluster;
  if (!context || !clusterSection) {
    throw new PoolFileError(`kubeconfig ${file} has no usable context ${contextName ?? '(none set)'}`);
  }
  const folder = dirname(file);
  const clusterData = await inlineFiles(clusterSection, folder);
  const user = await inlineFiles(config.users.find((candidate) => candidate.name === context.user)?.user ?? {}, folder);
  const server = clusterSection.server;
  const caData = typeof clusterData['certificate-authority-data'] === 'string' ? clusterData['certificate-authority-data'] : undefined;
  return poolMember(entry, { server, caData, insecureSkipTlsVerify: clusterData['insecure-skip-tls-verify'] === true, user });
}
