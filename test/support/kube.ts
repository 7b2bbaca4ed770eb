// Wiring for tests of the Kubernetes store: a fake apiserver, the lease Service in it, and a
// kubeconfig file that points the real client-node at it.

import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { startFakeKubeApiserver, type FakeKubeApiserver } from '../fakes/kube-apiserver.ts';

export const LEASE_NAMESPACE = 'k8s-claimer';
export const LEASE_SERVICE = 'k8s-claimer';

export async function writeKubeconfig(folder: string, server: string, name = 'kubeconfig'): Promise<string> {
  const path = join(folder, name);
  await writeFile(
    path,
    stringify({
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [{ name: 'fake', cluster: { server, 'insecure-skip-tls-verify': true } }],
      users: [{ name: 'claimer', user: { token: 'claimer-sa-token' } }],
      contexts: [{ name: 'fake', context: { cluster: 'fake', user: 'claimer' } }],
      'current-context': 'fake',
    }),
  );
  return path;
}

export function seedLeaseService(fake: FakeKubeApiserver, annotations: Record<string, string> = {}): void {
  fake.putObject('services', {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: { name: LEASE_SERVICE, namespace: LEASE_NAMESPACE, annotations },
    spec: { ports: [{ port: 80, targetPort: 8080 }], selector: { app: 'k8s-claimer' } },
  });
}

export function leaseAnnotations(fake: FakeKubeApiserver): Record<string, string> {
  return fake.getObject('services', LEASE_NAMESPACE, LEASE_SERVICE)?.metadata?.annotations ?? {};
}

export async function startKube(): Promise<FakeKubeApiserver> {
  return startFakeKubeApiserver();
}
