// The static pool: clusters listed in a YAML file, for teams with kind, k3s or on-prem
// clusters, and the embedded default that lets the claimer run with no cloud account.
//
//   provider: static            # optional: what clients may send as cloud_provider
//   credentials: pool           # optional: lessees get the credentials below, not per-lease ones
//   cleanup: none               # optional: no namespace cleanup between leases
//   registry_location: gcr.io/p # optional: every cluster's registry unless it names its own
//   file_folders: [/etc/kind]   # optional: folders besides this file's own that kubeconfig files,
//                               # and the files they reference, may be in (relative: to this file)
//   clusters:
//     - name: ci-1              # unique per location
//       location: lab           # optional, default "static"
//       server: https://127.0.0.1:6443
//       certificate_authority_data: <base64 PEM>   # optional
//       token: <bearer token>                      # optional
//       labels: {team: infra}   # optional
//       version: 1.31.2         # optional
//       cluster_tag: lab-ci-1   # optional, default: the id
//       gpu: true               # optional, default false
//       registry_location: registry.lab:5000   # optional, default: the pool's
//     - name: kind-ci
//       kubeconfig: ./kind.kubeconfig   # relative to this file; `context` picks one (default: current)
//
// What a kubeconfig references (certificate-authority, client-certificate, client-key, tokenFile)
// is inlined into what lessees get, so every file reference must resolve, symlinks followed, to
// this file's folder or a `file_folders` entry: a pool file cannot hand out any file the server
// can read.

import { readFile, realpath } from 'node:fs/promises';
import { dirname, isAbsolute, relative, resolve, sep } from 'node:path';
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
  /** More values of `cloud_provider` the pool answers to (e.g. `google`, for the original CLI). */
  aliases: v.optional(v.array(v.pipe(v.string(), v.regex(/^[\w.-]{1,64}$/, 'must be a provider name'))), []),
  /** `pool`: lessees get the pool file's credentials instead of per-lease ones. */
  credentials: v.optional(v.picklist(['serviceaccount', 'pool'], 'must be serviceaccount or pool')),
  cleanup: v.optional(v.picklist(['namespaces', 'none'], 'must be namespaces or none')),
  registry_location: v.optional(v.pipe(v.string(), v.nonEmpty())),
  file_folders: v.optional(v.array(v.pipe(v.string(), v.nonEmpty())), []),
  clusters: v.array(v.union([InlineCluster, KubeconfigCluster])),
});

/** The parts of a kubeconfig file this provider reads; anything else in a user entry is passed on. */
const KubeconfigFile = v.object({
  'current-context': v.optional(v.string()),
  contexts: v.array(v.object({ name: v.string(), context: v.object({ cluster: v.string(), user: v.string() }) })),
  clusters: v.array(v.object({ name: v.string(), cluster: v.looseObject({ server: v.pipe(v.string(), v.url('must be a URL')) }) })),
  users: v.optional(v.array(v.object({ name: v.string(), user: v.record(v.string(), v.unknown()) })), []),
});

export class PoolFileError extends Error {
  override readonly name = 'PoolFileError';
}

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

export interface PoolMember {
  cluster: Cluster;
  kubeconfig: string;
}

export class StaticProvider implements ClusterProvider {
  readonly aliases: readonly string[];

  constructor(
    readonly kind: string,
    private readonly members: PoolMember[],
    /** The pool's own choices; the environment overrides them. */
    readonly settings: { credentials?: 'serviceaccount' | 'pool'; cleanup?: 'namespaces' | 'none' },
    aliases: readonly string[] = [],
  ) {
    this.aliases = [...new Set([kind, ...aliases].map((alias) => alias.toLowerCase()))];
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
    const folders = await allowedFolders(path, parsed.output.file_folders);
    const members: PoolMember[] = [];
    for (const entry of parsed.output.clusters) {
      const member =
        'kubeconfig' in entry
          ? await fromKubeconfigFile(entry, resolve(dirname(path), entry.kubeconfig), folders)
          : fromInline(entry);
      member.cluster.registryLocation = entry.registry_location ?? parsed.output.registry_location ?? null;
      if (members.some((other) => other.cluster.id === member.cluster.id)) {
        throw new PoolFileError(`static pool file ${path} lists cluster ${member.cluster.id} twice`);
      }
      members.push(member);
    }
    const { credentials, cleanup } = parsed.output;
    return new StaticProvider(parsed.output.provider, members, { ...(credentials && { credentials }), ...(cleanup && { cleanup }) }, parsed.output.aliases);
  }

  /** The same array every time: what is derived from the pool list is remembered per list. */
  private clusters?: Cluster[];

  async list(): Promise<Cluster[]> {
    this.clusters ??= this.members.map((member) => member.cluster);
    return this.clusters;
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

export type PoolEntry = Pick<v.InferOutput<typeof InlineCluster>, 'name' | 'location' | 'labels' | 'version' | 'cluster_tag' | 'gpu'>;

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

/** The real paths of the folders a pool file's file references may point into. */
export async function allowedFolders(poolFile: string, fileFolders: string[]): Promise<string[]> {
  const folders = [dirname(poolFile), ...fileFolders.map((folder) => resolve(dirname(poolFile), folder))];
  return Promise.all(
    folders.map((folder, index) =>
      realpath(folder).catch((error: NodeJS.ErrnoException) => {
        const which = index === 0 ? 'its folder' : `file_folders entry ${folder}`;
        throw new PoolFileError(`static pool file ${poolFile}: cannot read ${which}: ${problemOf(error)}`);
      }),
    ),
  );
}

function isInside(path: string, folder: string): boolean {
  const rest = relative(folder, path);
  return rest === '' || (rest !== '..' && !rest.startsWith(`..${sep}`) && !isAbsolute(rest));
}

/**
 * Reads a file that a pool file's cluster references (`key` names the reference), after
 * checking, symlinks resolved, that it lies in an allowed folder. Errors name the cluster, the
 * key and the path, never what the file holds.
 */
async function readReferenced(path: string, folders: string[], owner: string, key: string): Promise<Buffer> {
  const unreadable = (error: unknown) => {
    throw new PoolFileError(`cannot read ${key} ${path} of ${owner}: ${problemOf(error)}`);
  };
  const real = await realpath(path).catch(unreadable);
  if (!folders.some((folder) => isInside(real, folder))) {
    throw new PoolFileError(
      `${key} of ${owner} (${path}) is outside the pool file's folder and its file_folders; move the file there or name its folder in file_folders`,
    );
  }
  // Read by its resolved path: the path read is the path checked.
  return readFile(real).catch(unreadable);
}

async function inlineFiles(section: Record<string, unknown>, folder: string, allowed: string[], cluster: string): Promise<Record<string, unknown>> {
  const result: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(section)) {
    const dataKey = INLINED_FILES[key];
    if (dataKey && typeof value === 'string') {
      result[dataKey] = (await readReferenced(resolve(folder, value), allowed, `cluster ${cluster}`, key)).toString('base64');
    } else if (key === 'tokenFile' && typeof value === 'string') {
      result.token = (await readReferenced(resolve(folder, value), allowed, `cluster ${cluster}`, key)).toString('utf8').trim();
    } else {
      result[key] = value;
    }
  }
  return result;
}

export type KubeconfigDocument = v.InferOutput<typeof KubeconfigFile>;

/** A kubeconfig file, read and checked (only from an allowed folder); `owner` names who refers to it. */
export async function readKubeconfig(file: string, allowed: string[], owner: string): Promise<KubeconfigDocument> {
  let document: unknown;
  const text = (await readReferenced(file, allowed, owner, 'kubeconfig')).toString('utf8');
  try {
    document = parse(text);
  } catch (error) {
    throw new PoolFileError(`cannot read kubeconfig ${file} of ${owner}: ${problemOf(error)}`);
  }
  const parsed = v.safeParse(KubeconfigFile, document);
  if (!parsed.success) throw new PoolFileError(`kubeconfig ${file} is invalid: ${describeIssues(parsed.issues)}`);
  return parsed.output;
}

async function fromKubeconfigFile(entry: v.InferOutput<typeof KubeconfigCluster>, file: string, allowed: string[]): Promise<PoolMember> {
  const config = await readKubeconfig(file, allowed, `cluster ${entry.name}`);
  return memberFromContext(entry, config, entry.context ?? config['current-context'], file, allowed);
}

/** A pool member from one context of a kubeconfig: its server, CA and user, file references inlined. */
export async function memberFromContext(
  entry: PoolEntry,
  config: KubeconfigDocument,
  contextName: string | undefined,
  file: string,
  allowed: string[],
): Promise<PoolMember> {
  const context = config.contexts.find((candidate) => candidate.name === contextName)?.context;
  const clusterSection = config.clusters.find((candidate) => candidate.name === context?.cluster)?.cluster;
  if (!context || !clusterSection) {
    throw new PoolFileError(`kubeconfig ${file} has no usable context ${contextName ?? '(none set)'}`);
  }
  const folder = dirname(file);
  const clusterData = await inlineFiles(clusterSection, folder, allowed, entry.name);
  const user = await inlineFiles(config.users.find((candidate) => candidate.name === context.user)?.user ?? {}, folder, allowed, entry.name);
  const server = clusterSection.server;
  const caData = typeof clusterData['certificate-authority-data'] === 'string' ? clusterData['certificate-authority-data'] : undefined;
  return poolMember(entry, { server, caData, insecureSkipTlsVerify: clusterData['insecure-skip-tls-verify'] === true, user });
}
