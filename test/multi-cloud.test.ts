// One server, four pools: GKE (the real @google-cloud/container over gRPC to the fake GKE), EKS
// (the real @aws-sdk/client-eks to the fake EKS, the claimer reaching clusters with the EKS bearer
// token), AKS (the real @azure/arm-containerservice and @azure/identity over HTTPS to a fake
// Resource Manager and Entra ID) and a static pool. Each pool's clusters are fake kube-apiservers
// over HTTPS that take only what the real ones would: per-lease credentials are made and revoked
// in each. The server is chosen by `pool` and by `cloud_provider`, as the original CLI sends it.

import tls from 'node:tls';
import { TEST_TLS_CERT, TEST_TLS_KEY } from './fakes/tls-fixture.ts';

// The fake Resource Manager and Entra ID serve HTTPS with the test certificate.
tls.setDefaultCACertificates([...tls.getCACertificates('default'), TEST_TLS_CERT]);

import assert from 'node:assert/strict';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, afterEach, before, describe, test } from 'node:test';
import { CoreV1Api, KubeConfig } from '@kubernetes/client-node';
import { stringify } from 'yaml';
import { LEASES_NAMESPACE } from '../services/credentials.ts';
import { makeManagedCluster, startFakeAzure, type FakeAzure } from './fakes/azure.ts';
import { makeEksCluster, startFakeEks, ACCESS_DENIED, type FakeEks } from './fakes/eks.ts';
import { makeCluster, startFakeGke, type FakeGke } from './fakes/gke.ts';
import { startFakeKubeApiserver, type FakeKubeApiserver } from './fakes/kube-apiserver.ts';
import { verifyEksToken } from './support/eks-token.ts';
import { startTestApp, tempDir, type TestApp } from './support/harness.ts';

const CA = Buffer.from(TEST_TLS_CERT).toString('base64');
const AWS = { accessKeyId: 'AKIDMULTICLOUD', secretAccessKey: 'multiCloudSecret/K7MDENG+bPxRfiCYEXAMPLE' };
const TENANT = '11111111-2222-3333-4444-555555555555';
const CLIENT_ID = '66666666-7777-8888-9999-000000000000';
const CLIENT_SECRET = 'multi-cloud-client-secret';
const SUBSCRIPTION = '00000000-0000-0000-0000-0000000000aa';
const AKS_ADMIN_TOKEN = 'aks-admin-token-of-the-fake-arm';
const STATIC_TOKEN = 'static-pool-token';
/** The environment the SDKs' default credential chains read, set for this file and put back after. */
const CLOUD_ENV: Record<string, string | undefined> = {
  AWS_ACCESS_KEY_ID: AWS.accessKeyId,
  AWS_SECRET_ACCESS_KEY: AWS.secretAccessKey,
  AWS_SESSION_TOKEN: undefined,
  AWS_PROFILE: undefined,
  AZURE_TENANT_ID: TENANT,
  AZURE_CLIENT_ID: CLIENT_ID,
  AZURE_CLIENT_SECRET: CLIENT_SECRET,
};

describe('one server, a GKE, an EKS, an AKS and a static pool', () => {
  const eksClusters = () => ['eks-1', 'eks-2'].map((name) => makeEksCluster({ region: 'us-east-1', name, endpoint: clusters.eks.url, caData: CA, tags: { cloud: 'aws' } }));
  const saved = new Map<string, string | undefined>();
  let gke: FakeGke;
  let eks: FakeEks;
  let azure: FakeAzure;
  const clusters: Record<string, FakeKubeApiserver> = {};
  let folder: string;
  let app: TestApp | undefined;

  before(async () => {
    for (const [name, value] of Object.entries(CLOUD_ENV)) {
      saved.set(name, process.env[name]);
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
    const https = { tls: { cert: TEST_TLS_CERT, key: TEST_TLS_KEY } };
    // GKE through an emulator: its stand-ins take the claimer without a Google token.
    clusters.gke = await startFakeKubeApiserver({ ...https, requireToken: (token, self) => token === undefined || self.isTokenValid(token) });
    clusters.eks = await startFakeKubeApiserver({
      ...https,
      requireToken: async (token, self) => self.isTokenValid(token) || (await verifyEksToken(token, { clusterName: 'eks-1', region: 'us-east-1', credentials: AWS })).ok || (await verifyEksToken(token, { clusterName: 'eks-2', region: 'us-east-1', credentials: AWS })).ok,
    });
    clusters.aks = await startFakeKubeApiserver({ ...https, requireToken: (token, self) => token === AKS_ADMIN_TOKEN || self.isTokenValid(token) });
    clusters.lab = await startFakeKubeApiserver({ ...https, requireToken: (token, self) => token === STATIC_TOKEN || self.isTokenValid(token) });
    const gkeAt = `127.0.0.1:${new URL(clusters.gke.url).port}`;
    gke = await startFakeGke({ clusters: ['gke-1', 'gke-2'].map((name) => makeCluster({ project: 'ci', location: 'us-central1-a', name, endpoint: gkeAt, caCertificate: CA })) });
    eks = await startFakeEks({ secrets: { [AWS.accessKeyId]: AWS.secretAccessKey }, clusters: eksClusters() });
    azure = await startFakeAzure({ tenantId: TENANT, clientId: CLIENT_ID, clientSecret: CLIENT_SECRET });
    azure.setClusters(['aks-1', 'aks-2'].map((name) => makeManagedCluster({ subscriptionId: SUBSCRIPTION, resourceGroup: 'ci', name, kubeServer: clusters.aks.url, adminToken: AKS_ADMIN_TOKEN, tags: { cloud: 'azure' } })));
    folder = await tempDir();
    await writeFile(
      join(folder, 'lab.yaml'),
      stringify({ clusters: ['lab-1', 'lab-2'].map((name) => ({ name, server: clusters.lab.url, certificate_authority_data: CA, token: STATIC_TOKEN })) }),
    );
  });

  after(async () => {
    await Promise.all([gke.close(), eks.close(), azure.close(), ...Object.values(clusters).map((cluster) => cluster.close())]);
    await rm(folder, { recursive: true, force: true });
    for (const [name, value] of saved) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
  });

  afterEach(async () => {
    await app?.close();
    app = undefined;
    eks.reset();
    eks.setClusters(eksClusters());
  });

  async function server(): Promise<TestApp> {
    const poolsFile = join(folder, 'pools.yaml');
    // No namespace cleanup here (the fakes' namespaces are not the point); per-lease credentials everywhere.
    await writeFile(
      poolsFile,
      stringify({
        pools: [
          { name: 'gke-ci', provider: 'gke', project: 'ci', endpoint: gke.address, cleanup: 'none' },
          { name: 'eks-ci', provider: 'eks', regions: ['us-east-1'], endpoint: eks.url, cleanup: 'none' },
          { name: 'aks-ci', provider: 'aks', subscription: SUBSCRIPTION, endpoint: azure.url, authority_host: azure.url, cleanup: 'none' },
          { name: 'lab', provider: 'static', file: 'lab.yaml', aliases: ['onprem'], cleanup: 'none' },
        ],
      }),
    );
    app = await startTestApp({ env: { POOLS_FILE: poolsFile } });
    return app;
  }

  async function lease(body: Record<string, unknown>) {
    const response = await (app as TestApp).request('POST', '/lease', { body: { max_time: 600, ...body } });
    return { status: response.status, body: await response.json() };
  }

  /** The lessee's kubeconfig, used as a CI job would: its cluster must take it. */
  async function reach(kubeconfigBase64: string): Promise<{ server: string; token: string }> {
    const config = new KubeConfig();
    config.loadFromString(Buffer.from(kubeconfigBase64, 'base64').toString('utf8'));
    await config.makeApiClient(CoreV1Api).listNamespace();
    return { server: config.getCurrentCluster()?.server as string, token: config.getCurrentUser()?.token as string };
  }

  test('leases from each pool by pool and by cloud_provider (google, aws, azure as the original CLI sends it, onprem); each lessee reaches its cluster with its own credentials, revoked at release', async () => {
    await server();
    const asked = [
      { expect: 'gke-ci', body: { cloud_provider: 'google' } },
      { expect: 'eks-ci', body: { cloud_provider: 'aws' } },
      // The original Go CLI's `--provider azure`: every field it sends, empty ones included.
      { expect: 'aks-ci', body: { cluster_regex: '', cluster_version: '', cloud_provider: 'azure' } },
      { expect: 'lab', body: { cloud_provider: 'onprem' } },
      { expect: 'eks-ci', body: { pool: 'eks-ci' } },
      { expect: 'aks-ci', body: { pool: 'aks-ci', cloud_provider: 'aks' } },
      { expect: 'gke-ci', body: { pool: 'gke-ci' } },
      { expect: 'lab', body: { pool: 'lab', cloud_provider: 'static' } },
    ];
    const held: Array<{ token: string; pool: string; lessee: string }> = [];
    for (const { expect, body } of asked) {
      const answer = await lease(body);
      assert.equal(answer.status, 200, JSON.stringify(answer.body));
      assert.equal(answer.body.pool, expect);
      assert.ok(answer.body.cluster_id.startsWith(`${expect}/`));
      const reached = await reach(answer.body.kubeconfig);
      const cluster = clusters[expect.replace('-ci', '')];
      assert.equal(reached.server, cluster.url);
      assert.ok(cluster.isTokenValid(reached.token), 'the lessee holds a token of its own');
      held.push({ token: answer.body.token, pool: expect, lessee: reached.token });
    }
    // Two clusters a pool, all eight leased: the next gets none.
    assert.equal((await lease({})).status, 409);
    for (const name of Object.keys(clusters)) {
      assert.equal(clusters[name].listObjects('serviceaccounts', LEASES_NAMESPACE).length, 2, `${name}: a ServiceAccount per lease`);
    }
    for (const { token } of held) assert.equal((await (app as TestApp).request('DELETE', `/lease/${token}`)).status, 200);
    const deadline = Date.now() + 15_000;
    const lessees = () => held.filter(({ pool, lessee }) => clusters[pool.replace('-ci', '')].isTokenValid(lessee));
    while (lessees().length > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
    assert.deepEqual(lessees(), [], 'a lessee kept its credentials after release');
    for (const name of Object.keys(clusters)) assert.equal(clusters[name].listObjects('serviceaccounts', LEASES_NAMESPACE).length, 0, `${name}: revoked`);
    // Revoked, then handed back: every cluster free again.
    let listed = await (await (app as TestApp).request('GET', '/leases')).json();
    while (listed.clusters.some((cluster: { state: string }) => cluster.state !== 'free') && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      listed = await (await (app as TestApp).request('GET', '/leases')).json();
    }
    assert.deepEqual(listed.clusters.map((cluster: { state: string }) => cluster.state), Array(8).fill('free'));
    assert.deepEqual(listed.pools.map((pool: { name: string; provider: string; healthy: boolean }) => [pool.name, pool.provider, pool.healthy]), [
      ['gke-ci', 'gke', true],
      ['eks-ci', 'eks', true],
      ['aks-ci', 'aks', true],
      ['lab', 'static', true],
    ]);
  });

  test('a burst across the four pools: every cluster leased once, the rest 409', async () => {
    await server();
    const answers = await Promise.all(Array.from({ length: 12 }, () => lease({})));
    const granted = answers.filter((answer) => answer.status === 200);
    assert.equal(granted.length, 8);
    assert.equal(new Set(granted.map((answer) => answer.body.cluster_id)).size, 8, 'a cluster was leased twice');
    assert.deepEqual(new Set(granted.map((answer) => answer.body.pool)), new Set(['gke-ci', 'eks-ci', 'aks-ci', 'lab']));
    assert.ok(answers.filter((answer) => answer.status !== 200).every((answer) => answer.status === 409));
  });

  test('EKS refusing every call: the other three pools lease on, /leases says which pool is down and why, /readyz is ready', async () => {
    eks.failRegion('us-east-1', ACCESS_DENIED);
    await server();
    const answers = await Promise.all(Array.from({ length: 8 }, () => lease({})));
    const granted = answers.filter((answer) => answer.status === 200);
    assert.equal(granted.length, 6);
    assert.ok(granted.every((answer) => answer.body.pool !== 'eks-ci'));
    assert.equal((await lease({ cloud_provider: 'aws' })).status, 409);
    const listed = await (await (app as TestApp).request('GET', '/leases')).json();
    const down = listed.pools.find((pool: { name: string }) => pool.name === 'eks-ci');
    assert.equal(down.healthy, false);
    assert.ok(down.last_error);
    assert.doesNotMatch(JSON.stringify(listed), new RegExp(AWS.secretAccessKey.replace(/[+/]/g, '.')));
    assert.equal(listed.pools.filter((pool: { healthy: boolean }) => pool.healthy).length, 3);
    assert.equal((await (app as TestApp).request('GET', '/readyz', { auth: null })).status, 200);
  });
});
