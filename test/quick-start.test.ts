// The README's quick start, followed as a user would: a kubeconfig with the kind clusters a
// developer has (here: contexts that point at local fake API servers over HTTPS, since kind
// cannot run here), one variable to make them the pool, a lease, and `kubectl get nodes` with
// the kubeconfig just leased answering from the leased cluster. And the example pool's
// placeholder clusters: their kubeconfig never makes kubectl prompt for a user name.

import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { parse, stringify } from 'yaml';
import { startFakeKubeApiserver, type FakeKubeApiserver } from './fakes/kube-apiserver.ts';
import { TEST_TLS_CERT, TEST_TLS_KEY } from './fakes/tls-fixture.ts';
import { tempDir } from './support/harness.ts';
import { startServerProcess, type ServerProcess } from './support/server-process.ts';

const TOKEN = 'quick-start-token';
const CA = Buffer.from(TEST_TLS_CERT).toString('base64');
const HAS_KUBECTL = spawnSync('kubectl', ['version', '--client'], { stdio: 'ignore' }).status === 0;

/** A command, asynchronously: the fake API servers it may talk to live in this process. */
function run(command: string, args: string[], env: Record<string, string> = {}): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = execFile(command, args, { encoding: 'utf8', timeout: 30_000, env: { ...process.env, ...env } }, (error, stdout, stderr) => {
      resolve({ status: error ? (typeof error.code === 'number' ? error.code : 1) : 0, stdout, stderr });
    });
    child.stdin?.end();
  });
}

/** kubectl with a kubeconfig; its stdin is not a terminal, so a kubeconfig without credentials fails instead of prompting. */
function kubectl(kubeconfig: string, args: string[]) {
  return run('kubectl', ['--kubeconfig', kubeconfig, '--request-timeout', '10s', ...args]);
}

async function lease(server: ServerProcess, body: unknown) {
  const response = await fetch(`${server.url}/lease`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}` }, body: JSON.stringify(body) });
  return { status: response.status, body: await response.json() };
}

describe('quick start: the kind clusters of a kubeconfig are the pool', () => {
  let folder: string;
  let clusters: FakeKubeApiserver[] = [];
  let server: ServerProcess;

  before(async () => {
    folder = await tempDir();
    // Two "kind" clusters and one that is not part of the pool.
    clusters = await Promise.all(
      ['ci-1', 'ci-2', 'prod'].map((name) =>
        startFakeKubeApiserver({
          tls: { cert: TEST_TLS_CERT, key: TEST_TLS_KEY },
          gitVersion: 'v1.31.4',
          requireToken: (token, self) => token === `admin-${name}` || self.isTokenValid(token),
        }),
      ),
    );
    for (const [index, fake] of clusters.entries()) {
      fake.putObject('nodes', { apiVersion: 'v1', kind: 'Node', metadata: { name: `node-of-cluster-${index + 1}` }, status: { conditions: [{ type: 'Ready', status: 'True' }] } });
    }
    const names = ['kind-ci-1', 'kind-ci-2', 'prod'];
    await writeFile(
      join(folder, 'config'),
      stringify({
        apiVersion: 'v1',
        kind: 'Config',
        'current-context': 'kind-ci-1',
        clusters: clusters.map((fake, index) => ({ name: names[index], cluster: { server: fake.url, 'certificate-authority-data': CA } })),
        users: names.map((name) => ({ name, user: { token: `admin-${name.replace(/^kind-/, '')}` } })),
        contexts: names.map((name) => ({ name, context: { cluster: name, user: name } })),
      }),
    );
    server = await startServerProcess(process.execPath, ['--import', 'tsx', 'main.ts'], {
      AUTH_TOKEN: TOKEN,
      POOL_KUBECONFIG: join(folder, 'config'),
      POOL_CONTEXTS: 'kind-*',
      LEASE_STORE_FILE: join(folder, 'leases.json'),
    });
  });

  after(async () => {
    await server?.stop();
    await Promise.all(clusters.map((fake) => fake.close()));
    await rm(folder, { recursive: true, force: true });
  });

  test('only the matching contexts are leased, with the version their API servers report', async () => {
    const listed = await (await fetch(`${server.url}/leases`, { headers: { authorization: `Bearer ${TOKEN}` } })).json();
    assert.deepEqual(
      listed.clusters.map((cluster: { name: string; cluster_version: string; state: string }) => [cluster.name, cluster.cluster_version, cluster.state]),
      [['kind-ci-1', '1.31.4', 'free'], ['kind-ci-2', '1.31.4', 'free']],
    );
    assert.equal((await lease(server, { max_time: 60, cluster_version: '1.31' })).status, 200);
    assert.equal((await lease(server, { max_time: 60, cluster_version: '1.3' })).body.reason, 'NoMatchingCluster');
  });

  test('as the README says: lease create --kubeconfig-file, then kubectl get nodes answers from the leased cluster', { skip: !HAS_KUBECTL && 'kubectl is not installed' }, async () => {
    const path = join(folder, 'leased.yaml');
    const created = await run(process.execPath, ['bin/k8s-claimer.js', 'lease', 'create', '--server', server.url, '--duration', '30m', '--kubeconfig-file', path], { AUTH_TOKEN: TOKEN });
    assert.equal(created.status, 0, created.stderr);
    // Per-lease credentials: the token is the lease's own, not an admin one of the pool kubeconfig.
    const leased = parse(await readFile(path, 'utf8'));
    assert.doesNotMatch(String(leased.users[0].user.token), /^admin-/);
    const nodes = await kubectl(path, ['get', 'nodes', '-o', 'name']);
    assert.equal(nodes.status, 0, nodes.stderr);
    assert.match(nodes.stdout.trim(), /^node\/node-of-cluster-[12]$/);
  });
});

describe('the example pool', () => {
  test('its placeholder clusters say so, and their kubeconfig carries a token: kubectl fails at once, it never prompts', { skip: !HAS_KUBECTL && 'kubectl is not installed' }, async () => {
    const folder = await tempDir();
    const server = await startServerProcess(process.execPath, ['--import', 'tsx', 'main.ts'], { AUTH_TOKEN: TOKEN, LEASE_STORE_FILE: join(folder, 'leases.json') });
    try {
      const granted = await lease(server, { max_time: 60 });
      assert.equal(granted.status, 200);
      const kubeconfig = parse(Buffer.from(granted.body.kubeconfig, 'base64').toString('utf8'));
      assert.match(String(kubeconfig.users[0].user.token), /placeholder/);
      const path = join(folder, 'example.yaml');
      await writeFile(path, Buffer.from(granted.body.kubeconfig, 'base64'), { mode: 0o600 });
      const answer = await kubectl(path, ['get', 'nodes']);
      assert.notEqual(answer.status, 0);
      assert.match(answer.stderr, /connection refused|connect/i);
      assert.doesNotMatch(answer.stderr + answer.stdout, /Username|Password/);
    } finally {
      await server.stop();
      await rm(folder, { recursive: true, force: true });
    }
  });
});
