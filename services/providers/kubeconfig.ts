// A pool that is a kubeconfig: every context of the file (or those whose names match a glob
// such as `kind-*`) is a cluster, with its own server, CA and credentials. The quickest real
// pool: `kind create cluster --name ci-1 && kind create cluster --name ci-2`, then
// POOL_KUBECONFIG=~/.kube/config POOL_CONTEXTS='kind-*'. Like a static pool, file references in
// the kubeconfig (a CA file, a client key) must lie in its folder or in the folders allowed.

import { resolve } from 'node:path';
import picomatch from 'picomatch';
import { allowedFolders, memberFromContext, PoolFileError, readKubeconfig, StaticProvider } from './static.ts';

export interface KubeconfigPoolOptions {
  /** Globs of context names; none: every context. */
  contexts?: readonly string[];
  /** More folders that file references may point into. */
  fileFolders?: readonly string[];
  /** The clusters' location (the first part of their ids). */
  location?: string;
  labels?: Record<string, string>;
  /** How long to wait for each API server's version. */
  probeTimeoutMs?: number;
}

/** Loads the pool: a static pool whose members are the kubeconfig's contexts. */
export async function loadKubeconfigPool(file: string, options: KubeconfigPoolOptions = {}): Promise<StaticProvider> {
  const path = resolve(file);
  const folders = await allowedFolders(path, [...(options.fileFolders ?? [])]);
  const config = await readKubeconfig(path, folders, 'the kubeconfig pool');
  const wanted = options.contexts?.length ? picomatch([...options.contexts]) : () => true;
  const names = config.contexts.map((context) => context.name).filter((name) => wanted(name));
  if (names.length === 0) {
    throw new PoolFileError(`kubeconfig pool ${path} has no context that matches ${options.contexts?.join(', ') ?? '*'} (it has ${config.contexts.map((context) => context.name).join(', ') || 'none'})`);
  }
  const members = await Promise.all(
    names.map((name) =>
      memberFromContext(
        { name, location: options.location ?? 'kubeconfig', labels: { ...options.labels }, version: '', gpu: false },
        config,
        name,
        path,
        folders,
      ),
    ),
  );
  // A kubeconfig says nothing of versions: each API server is asked, briefly; one that does not
  // answer keeps an empty version (cluster_version filters then pass it by).
  await Promise.all(members.map(async (member) => {
    member.cluster.version = await serverVersion(member.kubeconfig, options.probeTimeoutMs ?? 3_000);
  }));
  return new StaticProvider('kubeconfig', members, {});
}

async function serverVersion(kubeconfig: string, timeoutMs: number): Promise<string> {
  const [{ KubeConfig, VersionApi }, { makeClient }] = await Promise.all([import('@kubernetes/client-node'), import('../kube-client.ts')]);
  const kubeConfig = new KubeConfig();
  kubeConfig.loadFromString(kubeconfig);
  try {
    const info = await makeClient(kubeConfig, VersionApi, timeoutMs).getCode();
    return info.gitVersion.replace(/^v/, '');
  } catch {
    return '';
  }
}
