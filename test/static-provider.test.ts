import assert from 'node:assert/strict';
import { mkdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { parse, stringify } from 'yaml';
import { PoolFileError, StaticProvider } from '../services/providers/static.ts';
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
        'provider: lab\nclusters:\n  - name: a\n    location: rack-1\n    server: https://localhost:6443\n    certificate_authority_data: Q0E=\n    token: tkn\n    labels: {gpu: "no"}\n    version: 1.30.2\n',
      );
      const provider = await StaticProvider.load(join(folder, 'pool.yaml'));
      assert.equal(provider.kind, 'lab');
      const [cluster] = await provider.list();
      assert.deepEqual(cluster, {
        id: 'rack-1/a', name: 'a', location: 'rack-1', server: 'https://localhost:6443', endpoint: 'localhost',
        caData: 'Q0E=', labels: { gpu: 'no' }, version: '1.30.2', status: 'RUNNING', tag: 'rack-1/a', gpu: false, registryLocation: null,
      });
      const kubeconfig = parse(await provider.kubeconfigFor(cluster));
      assert.equal(kubeconfig.clusters[0].cluster.server, 'https://localhost:6443');
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

/** A kubeconfig with one cluster, user and context; `cluster` and `user` add file references. */
function kubeconfigWith(references: { cluster?: Record<string, string>; user?: Record<string, string> }): string {
  return stringify({
    apiVersion: 'v1',
    kind: 'Config',
    'current-context': 'ctx',
    clusters: [{ name: 'c', cluster: { server: 'https://127.0.0.1:40000', ...references.cluster } }],
    users: [{ name: 'u', user: { ...references.user } }],
    contexts: [{ name: 'ctx', context: { cluster: 'c', user: 'u' } }],
  });
}

/**
 * `root/pool` holds the pool file; `root/outside` is a folder it has no business reading (with
 * a secret in it); `root/allowed` is one it may read once it lists it in file_folders.
 */
async function poolLayout(root: string): Promise<{ pool: string; outside: string; shared: string }> {
  const [pool, outside, shared] = ['pool', 'outside', 'allowed'].map((name) => join(root, name));
  await Promise.all([mkdir(pool), mkdir(outside), mkdir(shared)]);
  await writeFile(join(outside, 'secret'), 'OUTSIDE-SECRET');
  await writeFile(join(outside, 'escape.kubeconfig'), kubeconfigWith({ user: { tokenFile: join(outside, 'secret') } }));
  await writeFile(join(shared, 'ca.pem'), 'SHARED-CA');
  await writeFile(join(shared, 'kind.kubeconfig'), kubeconfigWith({ cluster: { 'certificate-authority': 'ca.pem' } }));
  return { pool, outside, shared };
}

describe('static pool file references stay in the pool folder', () => {
  const escapes: Array<[string, (layout: { pool: string; outside: string }) => Promise<string>, RegExp]> = [
    ['a kubeconfig reached through ..', async () => 'kubeconfig: ../outside/escape.kubeconfig', /kubeconfig of cluster lab-1 \(.*\) is outside the pool file's folder and its file_folders/],
    ['a key file reached through ..', async ({ pool }) => {
      await writeFile(join(pool, 'kc.yaml'), kubeconfigWith({ user: { 'client-key': '../outside/secret' } }));
      return 'kubeconfig: kc.yaml';
    }, /client-key of cluster lab-1 \(.*outside\/secret\) is outside/],
    ['a token file at an absolute path outside (the server\'s environment)', async ({ pool }) => {
      await writeFile(join(pool, 'kc.yaml'), kubeconfigWith({ user: { tokenFile: '/proc/self/environ' } }));
      return 'kubeconfig: kc.yaml';
    }, /tokenFile of cluster lab-1 \(\/proc\/self\/environ\) is outside/],
    ['a CA file that is a symlink pointing outside', async ({ pool, outside }) => {
      await symlink(join(outside, 'secret'), join(pool, 'ca.pem'));
      await writeFile(join(pool, 'kc.yaml'), kubeconfigWith({ cluster: { 'certificate-authority': 'ca.pem' } }));
      return 'kubeconfig: kc.yaml';
    }, /certificate-authority of cluster lab-1 \(.*ca\.pem\) is outside/],
    ['a kubeconfig that is a symlink pointing outside', async ({ pool, outside }) => {
      await symlink(join(outside, 'escape.kubeconfig'), join(pool, 'kc.yaml'));
      return 'kubeconfig: kc.yaml';
    }, /kubeconfig of cluster lab-1 \(.*kc\.yaml\) is outside/],
  ];
  for (const [name, arrange, message] of escapes) {
    test(`refused, naming the cluster and the key: ${name}`, async () => {
      await withFolder(async (root) => {
        const layout = await poolLayout(root);
        const clusterLine = await arrange(layout);
        await writeFile(join(layout.pool, 'pool.yaml'), `clusters:\n  - name: lab-1\n    ${clusterLine}\n`);
        await assert.rejects(StaticProvider.load(join(layout.pool, 'pool.yaml')), (error: Error) => {
          assert.ok(error instanceof PoolFileError, error.message);
          assert.match(error.message, message);
          assert.doesNotMatch(error.message, /OUTSIDE-SECRET|PATH=/);
          return true;
        });
      });
    });
  }

  test('a folder the pool file names in file_folders may hold kubeconfigs and the files they reference', async () => {
    await withFolder(async (root) => {
      const { pool, shared } = await poolLayout(root);
      // Reached directly, and through a symlink in the pool folder that resolves into it (its
      // relative references would be relative to the symlink's folder, as for kubectl).
      await writeFile(join(shared, 'absolute.kubeconfig'), kubeconfigWith({ cluster: { 'certificate-authority': join(shared, 'ca.pem') } }));
      await symlink(join(shared, 'absolute.kubeconfig'), join(pool, 'linked.kubeconfig'));
      await writeFile(
        join(pool, 'pool.yaml'),
        `file_folders: [../allowed]\nclusters:\n  - {name: direct, kubeconfig: ${join(shared, 'kind.kubeconfig')}}\n  - {name: linked, kubeconfig: linked.kubeconfig}\n`,
      );
      const provider = await StaticProvider.load(join(pool, 'pool.yaml'));
      for (const cluster of await provider.list()) {
        const kubeconfig = parse(await provider.kubeconfigFor(cluster));
        assert.equal(kubeconfig.clusters[0].cluster['certificate-authority-data'], Buffer.from('SHARED-CA').toString('base64'), cluster.name);
      }
      // Without the entry, the same pool file is refused.
      await writeFile(join(pool, 'pool.yaml'), `clusters:\n  - {name: direct, kubeconfig: ${join(shared, 'kind.kubeconfig')}}\n`);
      await assert.rejects(StaticProvider.load(join(pool, 'pool.yaml')), /kubeconfig of cluster direct .* is outside/);
    });
  });

  test('a file_folders entry that does not exist stops start-up, naming it', async () => {
    await withFolder(async (root) => {
      const { pool } = await poolLayout(root);
      await writeFile(join(pool, 'pool.yaml'), 'file_folders: [/nonexistent/kind]\nclusters: []\n');
      await assert.rejects(StaticProvider.load(join(pool, 'pool.yaml')), /file_folders entry \/nonexistent\/kind: ENOENT/);
    });
  });
});
