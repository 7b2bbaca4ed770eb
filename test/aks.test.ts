// The AKS provider through the real @azure/arm-containerservice and @azure/identity (MSAL inside,
// by DefaultAzureCredential from AZURE_TENANT_ID/AZURE_CLIENT_ID/AZURE_CLIENT_SECRET), against a
// fake Azure Resource Manager and a fake Entra ID authority over HTTPS on loopback; the clusters'
// API servers are fake kube-apiservers, also over HTTPS with the test CA.

import tls from 'node:tls';
import { TEST_TLS_CERT, TEST_TLS_KEY } from './fakes/tls-fixture.ts';

// The Azure SDKs make their own TLS connections with Node's default CAs: the test CA joins them
// for this test process only (NODE_EXTRA_CA_CERTS would have to be set before it started).
tls.setDefaultCACertificates([...tls.getCACertificates('default'), TEST_TLS_CERT]);

import assert from 'node:assert/strict';
import { inspect } from 'node:util';
import { after, afterEach, before, beforeEach, describe, test } from 'node:test';
import { CoreV1Api, KubeConfig } from '@kubernetes/client-node';
import { AksProvider, type AksProviderOptions } from '../services/providers/aks.ts';
import { ClusterAccess } from '../services/cluster-access.ts';
import { LEASES_NAMESPACE, LeaseCredentialRevoker, ServiceAccountCredentials, serviceAccountName } from '../services/credentials.ts';
import type { Lease } from '../services/lease-table.ts';
import { AKS_SERVER_APP_ID, makeManagedCluster, startFakeAzure, type FakeAzure } from './fakes/azure.ts';
import { startFakeKubeApiserver, type FakeKubeApiserver } from './fakes/kube-apiserver.ts';
import { captureLogs, ManualClock } from './support/harness.ts';

const TENANT = '72f988bf-86f1-41af-91ab-2d7cd011db47';
const CLIENT_ID = '0b1f4c8e-5a43-4d2b-9d5e-1c3f2a7e9b10';
const CLIENT_SECRET = 'Xq8~fake.client-secret_value-4711';
const SUB = '11111111-2222-3333-4444-555555555555';
const OTHER_SUB = '99999999-8888-7777-6666-555555555555';

/** Azure settings the credential chain reads: set for these tests, restored afterwards. */
const AZURE_ENV = [
  'AZURE_TENANT_ID', 'AZURE_CLIENT_ID', 'AZURE_CLIENT_SECRET', 'AZURE_AUTHORITY_HOST', 'AZURE_CLIENT_CERTIFICATE_PATH', 'AZURE_CLIENT_CERTIFICATE_PASSWORD',
  'AZURE_USERNAME', 'AZURE_PASSWORD', 'AZURE_FEDERATED_TOKEN_FILE', 'AZURE_TOKEN_CREDENTIALS', 'AZURE_REGIONAL_AUTHORITY_NAME', 'AZURE_POD_IDENTITY_AUTHORITY_HOST',
  'IDENTITY_ENDPOINT', 'IDENTITY_HEADER', 'MSI_ENDPOINT', 'MSI_SECRET', 'IDENTITY_SERVER_THUMBPRINT', 'IMDS_ENDPOINT', 'AZURE_ADDITIONALLY_ALLOWED_TENANTS',
];
const savedEnv = new Map<string, string | undefined>();

let azure: FakeAzure;

function setAzureEnv(overrides: Record<string, string> = {}): void {
  for (const name of AZURE_ENV) delete process.env[name];
  Object.assign(process.env, { AZURE_TENANT_ID: TENANT, AZURE_CLIENT_ID: CLIENT_ID, AZURE_CLIENT_SECRET: CLIENT_SECRET, AZURE_AUTHORITY_HOST: azure.url, ...overrides });
}

function provider(options: Partial<AksProviderOptions> = {}) {
  const logs = captureLogs();
  const clock = new ManualClock();
  const aks = new AksProvider({ subscriptionId: SUB, endpoint: azure.url, cacheSeconds: 30, clock, logger: logs.logger, timeoutMs: 5_000, maxRetries: 0, ...options });
  return { aks, logs, clock };
}

before(async () => {
  for (const name of AZURE_ENV) savedEnv.set(name, process.env[name]);
  azure = await startFakeAzure({ tenantId: TENANT, clientId: CLIENT_ID, clientSecret: CLIENT_SECRET, pageSize: 2, subscriptions: [SUB, OTHER_SUB] });
});
after(async () => {
  for (const [name, value] of savedEnv) {
    if (value === undefined) delete process.env[name];
    else process.env[name] = value;
  }
  await azure.close();
});
beforeEach(() => setAzureEnv());
afterEach(() => azure.reset());

describe('AKS provider: listing', () => {
  test('only Succeeded and Running clusters are RUNNING; the others map to what they are doing', async () => {
    const states: [string, string, 'Running' | 'Stopped', string][] = [
      ['ready', 'Succeeded', 'Running', 'RUNNING'],
      ['stopped', 'Succeeded', 'Stopped', 'STOPPING'],
      ['booting', 'Creating', 'Running', 'PROVISIONING'],
      ['updating', 'Updating', 'Running', 'RECONCILING'],
      ['upgrading', 'Upgrading', 'Running', 'RECONCILING'],
      ['scaling', 'Scaling', 'Running', 'RECONCILING'],
      ['stopping', 'Stopping', 'Running', 'STOPPING'],
      ['deleting', 'Deleting', 'Running', 'STOPPING'],
      ['broken', 'Failed', 'Running', 'ERROR'],
      ['odd', 'Canceled', 'Running', 'STATUS_UNSPECIFIED'],
    ];
    azure.setClusters([
      ...states.map(([name, provisioningState, powerState]) => makeManagedCluster({ subscriptionId: SUB, resourceGroup: 'CI-RG', name, provisioningState, powerState })),
      makeManagedCluster({ subscriptionId: OTHER_SUB, resourceGroup: 'ci-rg', name: 'theirs' }),
    ]);
    const { aks } = provider();
    const clusters = await aks.list();
    assert.deepEqual(
      clusters.map((cluster) => [cluster.id, cluster.status]),
      states.map(([name, , , status]) => [`ci-rg/${name}`, status]),
    );
    // Ten clusters, two a page: five listing calls, the later ones by nextLink.
    const lists = azure.armRequests().filter((request) => request.method === 'GET');
    assert.equal(lists.length, 5);
    assert.deepEqual(lists.map((request) => request.query.$skipToken), [undefined, '2', '4', '6', '8']);
    assert.ok(lists.every((request) => request.path === `/subscriptions/${SUB}/providers/Microsoft.ContainerService/managedClusters` && request.query['api-version']));
  });

  test('tags are labels; version, endpoint, server, tag and gpu come from the managed cluster', async () => {
    const seeded = makeManagedCluster({
      subscriptionId: SUB,
      resourceGroup: 'ci-rg',
      name: 'gpu-1',
      location: 'eastus2',
      tags: { team: 'ml', 'cost-center': '42' },
      kubernetesVersion: '1.30',
      currentKubernetesVersion: '1.30.7',
      fqdn: 'gpu-1-dns-abc.aks.localhost',
      agentPools: [{ name: 'system', vmSize: 'Standard_D4s_v5', count: 1 }, { name: 'gpu', vmSize: 'Standard_NC6s_v3', count: 2 }],
    });
    const privateOne = makeManagedCluster({ subscriptionId: SUB, resourceGroup: 'ci-rg', name: 'private', fqdn: undefined, privateFqdn: 'private-x.privatelink.aks.localhost', currentKubernetesVersion: undefined, kubernetesVersion: '1.29.4' });
    azure.setClusters([seeded, privateOne]);
    const { aks } = provider();
    const [gpu, inside] = await aks.list();
    assert.deepEqual(gpu, {
      id: 'ci-rg/gpu-1',
      name: 'gpu-1',
      location: 'eastus2',
      endpoint: 'gpu-1-dns-abc.aks.localhost',
      server: 'https://gpu-1-dns-abc.aks.localhost:443',
      labels: { team: 'ml', 'cost-center': '42' },
      version: '1.30.7',
      status: 'RUNNING',
      tag: `/subscriptions/${SUB}/resourcegroups/ci-rg/providers/Microsoft.ContainerService/managedClusters/gpu-1`,
      gpu: true,
      registryLocation: null,
    });
    assert.equal(inside.endpoint, 'private-x.privatelink.aks.localhost');
    assert.equal(inside.version, '1.29.4');
    assert.equal(inside.gpu, false);
    assert.deepEqual(inside.labels, {});
    assert.equal(inside.caData, undefined);
  });

  test('resourceGroup narrows the listing to that group (through every page)', async () => {
    azure.setClusters([
      ...[1, 2, 3].map((index) => makeManagedCluster({ subscriptionId: SUB, resourceGroup: 'ci-rg', name: `c${index}` })),
      makeManagedCluster({ subscriptionId: SUB, resourceGroup: 'prod-rg', name: 'prod' }),
    ]);
    const { aks } = provider({ resourceGroup: 'ci-rg' });
    assert.deepEqual((await aks.list()).map((cluster) => cluster.id), ['ci-rg/c1', 'ci-rg/c2', 'ci-rg/c3']);
    const lists = azure.armRequests();
    assert.equal(lists.length, 2);
    assert.ok(lists.every((request) => request.path === `/subscriptions/${SUB}/resourceGroups/ci-rg/providers/Microsoft.ContainerService/managedClusters`));
  });

  test('the list is cached for cacheSeconds, and concurrent callers share one listing', async () => {
    azure.setClusters([makeManagedCluster({ subscriptionId: SUB, resourceGroup: 'ci-rg', name: 'c1' })]);
    const { aks, clock } = provider();
    await Promise.all([aks.list(), aks.list(), aks.list()]);
    assert.equal(azure.armRequests().length, 1);
    clock.advance(29);
    await aks.list();
    assert.equal(azure.armRequests().length, 1);
    clock.advance(2);
    await aks.list();
    assert.equal(azure.armRequests().length, 2);
  });

  test('Azure fails with a warm cache: the cache is served, with a warning and a problem(); no cache: the listing rejects', async () => {
    azure.setClusters([makeManagedCluster({ subscriptionId: SUB, resourceGroup: 'ci-rg', name: 'c1' })]);
    const cold = provider();
    azure.setFailure(SUB, { status: 403, code: 'AuthorizationFailed', message: `The client '${CLIENT_ID}' does not have authorization to perform action 'Microsoft.ContainerService/managedClusters/read' over scope '/subscriptions/${SUB}'.` });
    await assert.rejects(cold.aks.list(), (error: Error & { code?: string; statusCode?: number }) => error.code === 'AuthorizationFailed' && error.statusCode === 403);
    assert.equal(cold.aks.problem(), undefined);
    azure.setFailure(SUB, undefined);

    const { aks, clock, logs } = provider();
    const before = await aks.list();
    assert.equal(aks.problem(), undefined);
    clock.advance(31);
    azure.setFailure(SUB, { status: 500, code: 'InternalServerError', message: 'Encountered internal server error.' });
    assert.deepEqual(await aks.list(), before);
    assert.match(aks.problem() ?? '', new RegExp(`subscription ${SUB}.*InternalServerError, HTTP 500.*31 s ago`));
    assert.ok(logs.lines.some((line) => line.level === 'warn' && line.backend === 'aks'));
    assert.ok(!logs.raw().includes(CLIENT_SECRET) && azure.tokens.every((issued) => !logs.raw().includes(issued.token)));
    // Asked again only after a short pause, not on every call.
    const calls = azure.armRequests().length;
    await aks.list();
    assert.equal(azure.armRequests().length, calls);
    // Throttled (429 with Retry-After, which the SDK waits for before it gives up): still the cache.
    clock.advance(6);
    azure.setFailure(SUB, { status: 429, code: 'TooManyRequests', message: 'The request is being throttled.', retryAfter: 0 });
    assert.deepEqual(await aks.list(), before);
    assert.match(aks.problem() ?? '', /TooManyRequests, HTTP 429/);
    // Back: the problem is gone.
    clock.advance(6);
    azure.setFailure(SUB, undefined);
    await aks.list();
    assert.equal(aks.problem(), undefined);
  });

  test('a Resource Manager slower than timeoutMs: the listing gives up (no cache) or serves the cache', async () => {
    azure.setClusters([makeManagedCluster({ subscriptionId: SUB, resourceGroup: 'ci-rg', name: 'c1' })]);
    const { aks, clock } = provider({ timeoutMs: 300 });
    azure.setArmLatency(2_000);
    const started = Date.now();
    await assert.rejects(aks.list(), /took longer than 300 ms|aborted/i);
    assert.ok(Date.now() - started < 1_500);
    azure.setArmLatency(0);
    await aks.list();
    clock.advance(31);
    azure.setArmLatency(2_000);
    assert.equal((await aks.list()).length, 1);
    assert.match(aks.problem() ?? '', /did not list/);
  });

  test('a failing resource group is the provider\'s problem when it is scoped to it', async () => {
    azure.setClusters([makeManagedCluster({ subscriptionId: SUB, resourceGroup: 'ci-rg', name: 'c1' })]);
    const { aks, clock } = provider({ resourceGroup: 'ci-rg' });
    await aks.list();
    clock.advance(31);
    azure.setFailure(`${SUB}/ci-rg`, { status: 500, code: 'InternalServerError', message: 'boom' });
    assert.equal((await aks.list()).length, 1);
    assert.match(aks.problem() ?? '', /resource group ci-rg of subscription/);
    // An unknown group is ARM's 404.
    const other = provider({ resourceGroup: 'nope-rg' });
    await assert.rejects(other.aks.list(), (error: Error & { code?: string }) => error.code === 'ResourceGroupNotFound');
  });

  test('a wrong client secret fails the listing without the secret in the error or the log', async () => {
    const wrong = 'Zz9~wrong.secret-value_0815';
    setAzureEnv({ AZURE_CLIENT_SECRET: wrong });
    azure.setClusters([makeManagedCluster({ subscriptionId: SUB, resourceGroup: 'ci-rg', name: 'c1' })]);
    const { aks, logs } = provider();
    let caught: unknown;
    await aks.list().catch((error: unknown) => {
      caught = error;
    });
    assert.ok(caught instanceof Error, 'the listing must fail');
    assert.match(caught.message, /AADSTS7000215/);
    const shown = `${caught.stack}\n${JSON.stringify(caught)}\n${inspect(caught, { depth: 8 })}`;
    assert.ok(!shown.includes(wrong) && !shown.includes(CLIENT_SECRET));
    assert.equal(azure.armRequests().length, 0);
    assert.deepEqual(azure.requests.filter((request) => request.kind === 'authority' && request.method === 'POST').map((request) => request.status), [401]);
    assert.ok(!logs.raw().includes(wrong));
  });

  test('authorityHost as an option (no AZURE_AUTHORITY_HOST): the fake authority is asked', async () => {
    delete process.env.AZURE_AUTHORITY_HOST;
    azure.setClusters([makeManagedCluster({ subscriptionId: SUB, resourceGroup: 'ci-rg', name: 'c1' })]);
    const { aks } = provider({ authorityHost: azure.url });
    assert.equal((await aks.list()).length, 1);
    assert.ok(azure.requests.some((request) => request.path === `/${TENANT}/v2.0/.well-known/openid-configuration`));
    assert.ok(azure.tokens.some((token) => token.scope === azure.armScope && token.clientId === CLIENT_ID && token.tenantId === TENANT));
  });

  test('ARM refuses a token issued for another audience, in its own error shape', async () => {
    azure.setClusters([makeManagedCluster({ subscriptionId: SUB, resourceGroup: 'ci-rg', name: 'c1' })]);
    const { aks: wrongAudience } = provider({
      credential: {
        getToken: async () => {
          // A real token of the fake authority, for the AKS server application rather than ARM.
          const token = await new (await import('@azure/identity')).ClientSecretCredential(TENANT, CLIENT_ID, CLIENT_SECRET, { authorityHost: azure.url, disableInstanceDiscovery: true }).getToken(`${AKS_SERVER_APP_ID}/.default`);
          return token;
        },
      },
    });
    await assert.rejects(wrongAudience.list(), (error: Error & { code?: string; statusCode?: number }) => error.code === 'InvalidAuthenticationToken' && error.statusCode === 401);
  });
});

describe('AKS provider: credentials', () => {
  let kube: FakeKubeApiserver;
  let entraKube: FakeKubeApiserver;
  const ADMIN_TOKEN = 'aks-admin-token-0123456789abcdef';

  before(async () => {
    kube = await startFakeKubeApiserver({ tls: { cert: TEST_TLS_CERT, key: TEST_TLS_KEY }, requireToken: (token, self) => token === ADMIN_TOKEN || self.isTokenValid(token) });
    // An Entra ID cluster: only the fake authority's tokens for the AKS server application get in.
    entraKube = await startFakeKubeApiserver({
      tls: { cert: TEST_TLS_CERT, key: TEST_TLS_KEY },
      requireToken: (token, self) => azure.tokenInfo(token)?.scope === `${AKS_SERVER_APP_ID}/.default` || self.isTokenValid(token),
    });
  });
  after(async () => {
    await kube.close();
    await entraKube.close();
  });

  function seed() {
    azure.setClusters([
      makeManagedCluster({ subscriptionId: SUB, resourceGroup: 'ci-rg', name: 'local', kubeServer: kube.url, adminToken: ADMIN_TOKEN, clientCertificate: { cert: TEST_TLS_CERT, key: TEST_TLS_KEY } }),
      makeManagedCluster({ subscriptionId: SUB, resourceGroup: 'ci-rg', name: 'entra', kubeServer: entraKube.url, aad: { tenantId: TENANT }, disableLocalAccounts: true, adminToken: 'never-handed-out' }),
      makeManagedCluster({ subscriptionId: SUB, resourceGroup: 'ci-rg', name: 'entra-local', kubeServer: kube.url, aad: { tenantId: TENANT }, disableLocalAccounts: false, adminToken: ADMIN_TOKEN }),
    ]);
  }

  function lease(id: string): Lease {
    return { id, tokenHash: 'f'.repeat(64), startedAt: Date.now(), expiresAt: Date.now() + 600_000 };
  }

  function loaded(kubeconfig: string): KubeConfig {
    const config = new KubeConfig();
    config.loadFromString(kubeconfig);
    return config;
  }

  function api(kubeconfig: string): CoreV1Api {
    return loaded(kubeconfig).makeApiClient(CoreV1Api);
  }

  /** A provider that has listed the seeded clusters, and one of them. */
  async function listed(name: string) {
    seed();
    const { aks, logs } = provider();
    const cluster = (await aks.list()).find((candidate) => candidate.name === name);
    assert.ok(cluster, `${name} is listed`);
    return { aks, logs, cluster };
  }

  test('a local-accounts cluster: the admin kubeconfig carries ARM\'s admin credentials and reaches the cluster', async () => {
    const { aks, logs, cluster: local } = await listed('local');
    const kubeconfig = await aks.adminKubeconfigFor(local);
    const config = loaded(kubeconfig);
    assert.equal(config.getContexts().length, 1);
    assert.equal(config.getCurrentCluster()?.server, kube.url);
    assert.equal(config.getCurrentCluster()?.caData, Buffer.from(TEST_TLS_CERT).toString('base64'));
    const user = config.getCurrentUser();
    assert.equal(user?.token, ADMIN_TOKEN);
    assert.equal(user?.certData, Buffer.from(TEST_TLS_CERT).toString('base64'));
    assert.equal(user?.keyData, Buffer.from(TEST_TLS_KEY).toString('base64'));
    const namespaces = await config.makeApiClient(CoreV1Api).listNamespace();
    assert.ok(Array.isArray(namespaces.items));
    // What lessees' kubeconfigs carry: the API server and CA the credentials name.
    const reached = await new ClusterAccess(aks).clientsFor(local);
    assert.equal(reached.server, kube.url);
    assert.equal(reached.caData, Buffer.from(TEST_TLS_CERT).toString('base64'));
    // Once for the kubeconfig above, once for the ClusterAccess: nothing is cached past a call.
    assert.deepEqual(azure.armRequests().map((request) => request.path.split('/').at(-1)).filter((action) => action?.startsWith('listCluster')), ['listClusterAdminCredential', 'listClusterAdminCredential']);
    // The fake cluster does check the token: another one is refused.
    const forged = kubeconfig.replace(ADMIN_TOKEN, 'not-the-admin-token');
    await assert.rejects(api(forged).listNamespace(), (error: { code?: number }) => error.code === 401);
    assert.ok(!logs.raw().includes(ADMIN_TOKEN));
  });

  test('per-lease credentials on an AKS cluster: made through the admin kubeconfig, revoked by the revoker', async () => {
    const { aks, logs, cluster: local } = await listed('local');
    const access = new ClusterAccess(aks, 5_000);
    const issuer = new ServiceAccountCredentials(access, { 'system:masters': 'cluster-admin' });
    const granted = lease('aks1');
    const { kubeconfig, tokenExpiresAt } = await issuer.issue(local, granted, 600);
    assert.ok(tokenExpiresAt && tokenExpiresAt > Date.now());
    const lessee = loaded(kubeconfig);
    assert.equal(lessee.getCurrentCluster()?.server, kube.url);
    assert.equal(lessee.getCurrentCluster()?.caData, Buffer.from(TEST_TLS_CERT).toString('base64'));
    const lesseeToken = lessee.getCurrentUser()?.token;
    assert.ok(lesseeToken && lesseeToken !== ADMIN_TOKEN);
    assert.ok(kube.getObject('serviceaccounts', LEASES_NAMESPACE, serviceAccountName(granted.id)));
    assert.ok((await api(kubeconfig).listNamespace()).items.length > 0);

    const removed = await new LeaseCredentialRevoker(access).revoke(local, [granted.id]);
    assert.ok(removed >= 2);
    assert.equal(kube.getObject('serviceaccounts', LEASES_NAMESPACE, serviceAccountName(granted.id)), undefined);
    assert.equal(kube.isTokenValid(lesseeToken), false);
    await assert.rejects(api(kubeconfig).listNamespace(), (error: { code?: number }) => error.code === 401);
    assert.ok(!logs.raw().includes(ADMIN_TOKEN) && !logs.raw().includes(lesseeToken));
  });

  test('an Entra ID cluster without local accounts: server and CA from the user credentials, an Entra token for the AKS server application', async () => {
    const { aks, logs, cluster: entra } = await listed('entra');
    const config = loaded(await aks.adminKubeconfigFor(entra));
    assert.equal(config.getCurrentCluster()?.server, entraKube.url);
    const user = config.getCurrentUser();
    assert.equal(user?.exec, undefined);
    const issued = azure.tokenInfo(user?.token);
    assert.ok(issued, 'the token was issued by the fake authority');
    assert.equal(issued.scope, `${AKS_SERVER_APP_ID}/.default`);
    assert.equal(issued.clientId, CLIENT_ID);
    assert.ok((await config.makeApiClient(CoreV1Api).listNamespace()).items);
    const actions = azure.armRequests().map((request) => request.path.split('/').at(-1)).filter((action) => action?.startsWith('listCluster'));
    assert.deepEqual(actions, ['listClusterUserCredential']);
    // Per-lease credentials work there too.
    const { kubeconfig: lesseeConfig } = await new ServiceAccountCredentials(new ClusterAccess(aks, 5_000), { 'system:masters': 'cluster-admin' }).issue(entra, lease('aks2'), 600);
    assert.ok((await api(lesseeConfig).listNamespace()).items.length > 0);
    assert.ok(!logs.raw().includes(user?.token ?? 'unset'));
  });

  test('an Entra ID cluster that keeps local accounts is administered with its admin credentials', async () => {
    const { aks, cluster } = await listed('entra-local');
    const config = loaded(await aks.adminKubeconfigFor(cluster));
    assert.equal(config.getCurrentUser()?.token, ADMIN_TOKEN);
    assert.ok(azure.armRequests().some((request) => request.path.endsWith('/entra-local/listClusterAdminCredential')));
  });

  test('kubeconfigFor refuses: AKS pools hand out per-lease credentials only', async () => {
    seed();
    const { aks } = provider();
    const [cluster] = await aks.list();
    await assert.rejects(aks.kubeconfigFor(cluster), /per-lease credentials only/);
    assert.equal(azure.armRequests().filter((request) => request.method === 'POST').length, 0);
  });

  test('a cluster gone since the listing: its credentials are ARM\'s 404; one never listed is refused before any call', async () => {
    const { aks, cluster: local } = await listed('local');
    azure.setClusters([]);
    await assert.rejects(aks.adminKubeconfigFor(local), (error: Error & { code?: string; statusCode?: number }) => error.code === 'ResourceNotFound' && error.statusCode === 404);
    const calls = azure.armRequests().length;
    await assert.rejects(aks.adminKubeconfigFor({ ...local, tag: '/subscriptions/x/resourceGroups/y/providers/Microsoft.ContainerService/managedClusters/z' }), /not in the AKS pool's last listing/);
    assert.equal(azure.armRequests().length, calls);
  });
});
