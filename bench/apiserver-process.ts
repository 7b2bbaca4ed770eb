// The fake kube-apiserver in a process of its own, so that it does not share a core with the
// claimers being measured. Driven over IPC by bench/run.ts.

import { startFakeKubeApiserver } from '../test/fakes/kube-apiserver.ts';

const fake = await startFakeKubeApiserver();

type Command =
  | { id: number; command: 'seed'; namespace: string; name: string; shards?: number; tickets?: number }
  | { id: number; command: 'records'; namespace: string; name: string }
  | { id: number; command: 'latency'; ms: number }
  | { id: number; command: 'counts' }
  | { id: number; command: 'annotations'; namespace: string; name: string };

process.on('message', (message: Command) => {
  let result: unknown = null;
  switch (message.command) {
    case 'seed': {
      fake.deleteObject('services', message.namespace, message.name);
      for (const object of fake.listObjects('configmaps', message.namespace)) fake.deleteObject('configmaps', message.namespace, object.metadata.name as string);
      fake.putObject('services', {
        apiVersion: 'v1',
        kind: 'Service',
        metadata: { name: message.name, namespace: message.namespace, annotations: {} },
        spec: { ports: [{ port: 80 }] },
      });
      // The shard ConfigMaps, as k8s/lease-shards.yaml makes them.
      const names = [
        ...Array.from({ length: Math.max(0, (message.shards ?? 1) - 1) }, (_, index) => `${message.name}-shard-${index + 1}`),
        ...Array.from({ length: message.tickets ?? 0 }, (_, index) => `${message.name}-tickets-${index + 1}`),
      ];
      for (const name of names) fake.putObject('configmaps', { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name, namespace: message.namespace, annotations: {} } });
      fake.resetCounts();
      break;
    }
    case 'records': {
      // Every lease object's annotations: the Service and its shard ConfigMaps.
      const objects = [fake.getObject('services', message.namespace, message.name), ...fake.listObjects('configmaps', message.namespace)];
      result = objects.flatMap((object) =>
        object ? [{ name: object.metadata.name, annotations: object.metadata.annotations ?? {} }] : [],
      );
      break;
    }
    case 'latency':
      fake.setLatency(message.ms);
      break;
    case 'counts':
      result = { requests: fake.requests.length, writes: fake.writeCount };
      break;
    case 'annotations':
      result = fake.getObject('services', message.namespace, message.name)?.metadata?.annotations ?? {};
      break;
  }
  process.send?.({ id: message.id, result });
});

process.send?.({ id: 0, result: { url: fake.url } });
process.on('disconnect', () => void fake.close().then(() => process.exit(0)));
