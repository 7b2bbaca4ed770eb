import { stringify } from 'yaml';

export interface KubeconfigParts {
  contextName: string;
  server: string;
  caData?: string;
  insecureSkipTlsVerify?: boolean;
  /** The user entry, in kubeconfig's own shape (`token`, `client-certificate-data`, `exec`, ...). */
  user: Record<string, unknown>;
}

/** A one-context kubeconfig (YAML) that `kubectl` and client libraries accept. */
export function buildKubeconfig(parts: KubeconfigParts): string {
  const cluster: Record<string, unknown> = { server: parts.server };
  if (parts.caData) cluster['certificate-authority-data'] = parts.caData;
  if (parts.insecureSkipTlsVerify) cluster['insecure-skip-tls-verify'] = true;
  const name = parts.contextName;
  return stringify({
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [{ name, cluster }],
    users: [{ name, user: parts.user }],
    contexts: [{ name, context: { cluster: name, user: name } }],
    'current-context': name,
  });
}

/** The host of an API server URL, without scheme or port: what the lease response calls `ip`. */
export function hostOf(server: string): string {
  return new URL(server).hostname.replace(/^\[|\]$/g, '');
}
