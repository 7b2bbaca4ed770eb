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

/** The shard ConfigMaps of the lease table, as k8s/ makes them: cluster shards 1.. and ticket shards 1... */
export function seedShards(fake: FakeKubeApiserver, { shards = 1, tickets = 0 }: { shards?: number; tickets?: number }): void {
  const names = [
    ...Array.from({ length: Math.max(0, shards - 1) }, (_, index) => `${LEASE_SERVICE}-shard-${index + 1}`),
    ...Array.from({ length: tickets }, (_, index) => `${LEASE_SERVICE}-tickets-${index + 1}`),
  ];
  for (const name of names) {
    fake.putObject('configmaps', { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name, namespace: LEASE_NAMESPACE, annotations: {} } });
  }
}

/** Every object of the lease table (the Service and its shard ConfigMaps) with its annotations. */
export function leaseObjects(fake: FakeKubeApiserver): Array<{ name: string; annotations: Record<string, string> }> {
  const configMaps = fake
    .listObjects('configmaps', LEASE_NAMESPACE)
    .filter((object) => /-(shard|tickets)-\d+$/.test(object.metadata.name ?? ''))
    .map((object) => ({ name: object.metadata.name as string, annotations: object.metadata.annotations ?? {} }));
  return [{ name: LEASE_SERVICE, annotations: leaseAnnotations(fake) }, ...configMaps];
}

/** Every cluster record in the lease objects, with the object it is in. */
export function clusterRecords(fake: FakeKubeApiserver): Array<{ object: string; record: { cluster: string; state: string; lease?: { token_sha256: string; note?: string } } }> {
  return leaseObjects(fake).flatMap(({ name, annotations }) =>
    Object.entries(annotations)
      .filter(([key]) => key.startsWith('lease.k8s-claimer.io/c-'))
      .map(([, value]) => ({ object: name, record: JSON.parse(value) })),
  );
}
