import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { parse } from 'yaml';
import { StaticProvider } from '../services/providers/static.ts';
import { withFolder } from './support/harness.ts';

describe('static pool file', () => {
  test('the example pool shipped in the repo has at least 3 clusters', async () => {
    const provider = await StaticProvider.load('pool/example.yaml');
    const clusters = await provider.list();
    assert.ok(clusters.length >= 3);
    assert.ok(clusters.every((cluster) => cluster.status === 'RUNNING'));
  });

  test('inline clusters: server, CA, token, labels, version, location', async () => {
    await withFolder(async (folder) => {
      await writeFile(
        join(folder, 'pool.yaml'),
        'provider: lab\nclusters:\n  - name: a\n    location: rack-1\n    server: https://k8s.lab.example:6443\n    certificate_authority_data: Q0E=\n    token: tkn\n    labels: {gpu: "no"}\n    version: 1.30.2\n',
      );
      const provider = await StaticProvider.load(join(folder, 'pool.yaml'));
      assert.equal(provider.kind, 'lab');
      const [cluster] = await provider.list();
      assert.deepEqual(cluster, {
        id: 'rack-1/a', name: 'a', location: 'rack-1', server: 'https://k8s.lab.example:6443', endpoint: 'k8s.lab.example',
        caData: 'Q0E=', labels: { gpu: 'no' }, version: '1.30.2', status: 'RUNNING', tag: 'rack-1/a', gpu: false, registryLocation: null,
      });
      const kubeconfig = parse(await provider.kubeconfigFor(cluster));
      assert.equal(kubeconfig.clusters[0].cluster.server, 'https://k8s.lab.example:6443');
      assert.equal(kubeconfig.clusters[0].cluster['certificate-authority-data'], 'Q0E=');
      assert.equal(kubeconfig.users[0].user.token, 'tkn');
      assert.equal(kubeconfig['current-context'], 'a');
    });
  });

  test('a cluster from a kubeconfig file: context chosen, file references inlined', async () => {
    await withFolder(async (folder) => {
      await writeFile(join(folder, 'ca.pem'), 'CA-PEM');
      await writeFile(join(folder, 'client.key'), 'KEY');
      await writeFile(
        join(folder, 'kind.kubeconfig'),
        [
          'apiVersion: v1', 'kind: Config', 'current-context: other',
          'clusters:', '  - name: kind', '    cluster: {server: "https://127.0.0.1:40000", certificate-authority: ca.pem}',
          '  - name: other', '    cluster: {server: "https://192.168.0.9:6443"}',
          'users:', '  - name: kind-admin', '    user: {client-key: client.key, client-certificate-data: Q0VSVA==}',
          'contexts:', '  - name: kind-ctx', '    context: {cluster: kind, user: kind-admin}', '  - name: other', '    context: {cluster: other, user: kind-admin}',
        ].join('\n'),
      );
      await writeFile(join(folder, 'pool.yaml'), 'clusters:\n  - name: kind-ci\n    kubeconfig: kind.kubeconfig\n    context: kind-ctx\n');
      const provider = await StaticProvider.load(join(folder, 'pool.yaml'));
      const [cluster] = await provider.list();
      assert.equal(cluster.id, 'static/kind-ci');
      assert.equal(cluster.endpoint, '127.0.0.1');
      const kubeconfig = parse(await provider.kubeconfigFor(cluster));
      assert.equal(kubeconfig.clusters[0].cluster['certificate-authority-data'], Buffer.from('CA-PEM').toString('base64'));
      assert.deepEqual(kubeconfig.users[0].user, { 'client-key-data': Buffer.from('KEY').toString('base64'), 'client-certificate-data': 'Q0VSVA==' });
    });
  });

  const invalid: Array<[string, string, RegExp]> = [
    ['no clusters key', 'provider: x\n', /clusters/],
    ['a cluster without server or kubeconfig', 'clusters:\n  - name: a\n', /invalid/],
    ['a server that is not a URL', 'clusters:\n  - name: a\n    server: not a url\n', /invalid/],
    ['the same cluster twice', 'clusters:\n  - {name: a, server: "https://h"}\n  - {name: a, server: "https://i"}\n', /twice/],
    ['a missing kubeconfig file', 'clusters:\n  - {name: a, kubeconfig: nope.yaml}\n', /cannot read kubeconfig/],
    ['not YAML', 'clusters: [\n', /cannot read static pool file .*YAML syntax error at line/],
  ];
  test('a YAML syntax error is reported by position, never by quoting the line (it may hold a token)', async () => {
    await withFolder(async (folder) => {
      await writeFile(join(folder, 'pool.yaml'), 'clusters:\n  - name: a\n    server: https://h\n    token: SUPER-SECRET-BEARER: oops\n');
      await assert.rejects(StaticProvider.load(join(folder, 'pool.yaml')), (error: Error) => {
        assert.doesNotMatch(error.message, /SUPER-SECRET/);
        assert.match(error.message, /line 4/);
        return true;
      });
    });
  });

  for (const [name, content, message] of invalid) {
    test(`an invalid pool file stops start-up: ${name}`, async () => {
      await withFolder(async (folder) => {
        await writeFile(join(folder, 'pool.yaml'), content);
        await assert.rejects(StaticProvider.load(join(folder, 'pool.yaml')), message);
      });
    });
  }
});
