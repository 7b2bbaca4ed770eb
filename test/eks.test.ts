// The EKS provider through the real @aws-sdk/client-eks, against a fake EKS API that checks
// SigV4 signatures and tells regions apart by their credential scope; the claimer's EKS bearer
// token is checked as EKS would (test/support/eks-token.ts), by a fake kube-apiserver over HTTPS.

import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';
import { KubeConfig } from '@kubernetes/client-node';
import { ClusterAccess } from '../services/cluster-access.ts';
import { LeaseCredentialRevoker, LEASES_NAMESPACE, ServiceAccountCredentials } from '../services/credentials.ts';
import type { Lease } from '../services/lease-table.ts';
import { EksProvider, eksToken, stsRequest, stsSigner, urlOf, type EksProviderOptions } from '../services/providers/eks.ts';
import { isLeasable } from '../services/providers/types.ts';
import { ACCESS_DENIED, makeEksCluster, SERVER_ERROR, startFakeEks, type FakeEks } from './fakes/eks.ts';
import { startFakeKubeApiserver } from './fakes/kube-apiserver.ts';
import { TEST_TLS_CERT, TEST_TLS_KEY } from './fakes/tls-fixture.ts';
import { verifyEksToken } from './support/eks-token.ts';
import { captureLogs, ManualClock } from './support/harness.ts';

const CREDENTIALS = { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY' };
const ENV_CREDENTIALS = { accessKeyId: 'AKIDENVEXAMPLE', secretAccessKey: 'envSecretKey/K7MDENG+bPxRfiCYEXAMPLEKEY' };

let fake: FakeEks;
const providers: EksProvider[] = [];

function eks(options: Partial<EksProviderOptions> = {}) {
  const logs = captureLogs();
  const clock = new ManualClock();
  const provider = new EksProvider({
    regions: ['us-east-1'],
    endpoint: fake.url,
    cacheSeconds: 30,
    clock,
    logger: logs.logger,
    timeoutMs: 5_000,
    credentials: CREDENTIALS,
    ...options,
  });
  providers.push(provider);
  return { provider, logs, clock };
}

/** Replaces process.env entries for the length of `run`, and puts them back. */
async function withEnv(values: Record<string, string | undefined>, run: () => Promise<void>): Promise<void> {
  const saved = Object.fromEntries(Object.keys(values).map((key) => [key, process.env[key]]));
  const put = (entries: Record<string, string | undefined>) => {
    for (const [key, value] of Object.entries(entries)) {
      if (value === undefined) delete process.env[key];
      else process.env[key] = value;
    }
  };
  put(values);
  try {
    await run();
  } finally {
    put(saved);
  }
}

before(async () => {
  fake = await startFakeEks({ secrets: { [CREDENTIALS.accessKeyId]: CREDENTIALS.secretAccessKey, [ENV_CREDENTIALS.accessKeyId]: ENV_CREDENTIALS.secretAccessKey } });
});
after(() => fake.close());
afterEach(async () => {
  fake.reset();
  await Promise.all(providers.splice(0).map((provider) => provider.close()));
});

describe('EKS listing', () => {
  test('clusters map to the claimer\'s: only ACTIVE is RUNNING; tags, version, ARN, endpoint host and CA', async () => {
    const statuses = { ready: 'ACTIVE', booting: 'CREATING', queued: 'PENDING', upgrading: 'UPDATING', going: 'DELETING', broken: 'FAILED', odd: 'SOMETHING_NEW' };
    fake.setClusters([
      ...Object.entries(statuses).map(([name, status]) => makeEksCluster({ region: 'us-east-1', name, status, tags: { team: name } })),
      makeEksCluster({ region: 'eu-west-1', name: 'elsewhere' }),
    ]);
    const { provider } = eks();
    const clusters = await provider.list();
    const byName = Object.fromEntries(clusters.map((cluster) => [cluster.name, cluster]));
    assert.deepEqual(Object.keys(byName).sort(), Object.keys(statuses).sort(), 'only the region asked for');
    assert.deepEqual(
      Object.fromEntries(clusters.map((cluster) => [cluster.name, cluster.status])),
      { ready: 'RUNNING', booting: 'PROVISIONING', queued: 'PROVISIONING', upgrading: 'RECONCILING', going: 'STOPPING', broken: 'ERROR', odd: 'STATUS_UNSPECIFIED' },
    );
    assert.deepEqual(clusters.filter(isLeasable).map((cluster) => cluster.name), ['ready']);
    const ready = makeEksCluster({ region: 'us-east-1', name: 'ready' });
    assert.deepEqual(byName.ready, {
      id: 'us-east-1/ready',
      name: 'ready',
      location: 'us-east-1',
      endpoint: new URL(ready.endpoint).hostname,
      server: ready.endpoint,
      caData: ready.caData,
      labels: { team: 'ready' },
      version: '1.31',
      status: 'RUNNING',
      tag: `arn:aws:eks:us-east-1:111122223333:cluster/ready`,
      gpu: false,
      registryLocation: null,
    });
    // Every call was signed for the region and by the given key (the fake checked each signature).
    assert.ok(fake.requests.length > 0);
    for (const request of fake.requests) {
      assert.equal(request.status, 200);
      assert.equal(request.region, 'us-east-1');
      assert.equal(request.accessKeyId, CREDENTIALS.accessKeyId);
    }
  });

  test('a cluster still being created has no endpoint yet and is not leasable', async () => {
    fake.setClusters([makeEksCluster({ region: 'us-east-1', name: 'new', status: 'CREATING' })]);
    const [cluster] = await eks().provider.list();
    assert.equal(cluster?.status, 'PROVISIONING');
    assert.equal(cluster?.server, '');
    assert.equal(cluster?.caData, undefined);
  });

  test('every page of ListClusters is followed', async () => {
    const names = Array.from({ length: 205 }, (_, index) => `c${String(index).padStart(3, '0')}`);
    fake.setClusters(names.map((name) => makeEksCluster({ region: 'us-east-1', name })));
    const clusters = await eks().provider.list();
    assert.deepEqual(clusters.map((cluster) => cluster.name).sort(), names);
    const lists = fake.calls('ListClusters');
    assert.equal(lists.length, 3);
    assert.equal(lists[0]?.query.nextToken, undefined);
    assert.ok(lists[1]?.query.nextToken && lists[2]?.query.nextToken);
    assert.equal(fake.calls('DescribeCluster').length, 205);
  });

  test('GPU clusters are told by the AMI types of their managed node groups, asked about every 10 minutes at most', async () => {
    fake.setClusters([
      makeEksCluster({ region: 'us-east-1', name: 'gpu-al2', nodegroups: { cpu: 'AL2023_x86_64_STANDARD', gpu: 'AL2_x86_64_GPU' } }),
      makeEksCluster({ region: 'us-east-1', name: 'gpu-bottlerocket', nodegroups: { accel: 'BOTTLEROCKET_x86_64_NVIDIA' } }),
      makeEksCluster({ region: 'us-east-1', name: 'plain', nodegroups: { a: 'AL2023_x86_64_STANDARD', b: 'AL2023_ARM_64_STANDARD' } }),
      makeEksCluster({ region: 'us-east-1', name: 'karpenter', nodegroups: {} }),
      makeEksCluster({ region: 'us-east-1', name: 'booting', status: 'CREATING', nodegroups: { gpu: 'AL2023_x86_64_NVIDIA' } }),
    ]);
    const { provider, clock, logs } = eks();
    const gpus = async () => Object.fromEntries((await provider.list()).map((cluster) => [cluster.name, cluster.gpu]));
    assert.deepEqual(await gpus(), { 'gpu-al2': true, 'gpu-bottlerocket': true, plain: false, karpenter: false, booting: false });
    assert.equal(fake.requests.filter((request) => request.path.startsWith('/clusters/booting/')).length, 0, 'a cluster not leasable is not asked about');
    const asked = fake.calls('ListNodegroups').length;
    assert.equal(asked, 4);

    clock.advance(31);
    await gpus();
    assert.equal(fake.calls('ListNodegroups').length, asked, 'node groups are not asked about on every refresh');

    // Without eks:ListNodegroups the region is still listed, and what was known stands.
    fake.failOperation('ListNodegroups', ACCESS_DENIED);
    clock.advance(11 * 60);
    assert.deepEqual(await gpus(), { 'gpu-al2': true, 'gpu-bottlerocket': true, plain: false, karpenter: false, booting: false });
    assert.equal(fake.calls('ListNodegroups').length, asked * 2);
    assert.equal(provider.problem(), undefined);
    assert.ok(logs.lines.some((line) => line.backend === 'eks' && line.cluster === 'gpu-al2' && String(line.msg).includes('node groups')));
    const cold = eks().provider;
    assert.deepEqual(Object.fromEntries((await cold.list()).map((cluster) => [cluster.name, cluster.gpu])), { 'gpu-al2': false, 'gpu-bottlerocket': false, plain: false, karpenter: false, booting: false });
  });

  test('the list is cached for cacheSeconds, and concurrent callers share one listing', async () => {
    fake.setClusters([makeEksCluster({ region: 'us-east-1', name: 'a' })]);
    const { provider, clock } = eks();
    await Promise.all([provider.list(), provider.list(), provider.list()]);
    assert.equal(fake.calls('ListClusters').length, 1);
    clock.advance(29);
    await provider.list();
    assert.equal(fake.calls('ListClusters').length, 1);
    clock.advance(2);
    await provider.list();
    assert.equal(fake.calls('ListClusters').length, 2);
  });

  test('a region that fails keeps its clusters from the last list as UNREACHABLE; the others are listed', async () => {
    fake.setClusters([
      makeEksCluster({ region: 'us-east-1', name: 'east' }),
      makeEksCluster({ region: 'eu-west-1', name: 'west' }),
      makeEksCluster({ region: 'eu-west-1', name: 'east' }),
    ]);
    const { provider, clock, logs } = eks({ regions: ['us-east-1', 'eu-west-1'] });
    const first = await provider.list();
    assert.deepEqual(first.map((cluster) => `${cluster.id} ${cluster.status}`).sort(), ['eu-west-1/east RUNNING', 'eu-west-1/west RUNNING', 'us-east-1/east RUNNING']);
    assert.equal(provider.problem(), undefined);
    assert.ok(fake.calls('ListClusters', 'eu-west-1').length === 1 && fake.calls('ListClusters', 'us-east-1').length === 1);

    fake.failRegion('eu-west-1', ACCESS_DENIED);
    fake.setClusters([makeEksCluster({ region: 'us-east-1', name: 'east' }), makeEksCluster({ region: 'us-east-1', name: 'second' })]);
    clock.advance(31);
    const second = await provider.list();
    assert.deepEqual(second.map((cluster) => `${cluster.id} ${cluster.status}`).sort(), [
      'eu-west-1/east UNREACHABLE',
      'eu-west-1/west UNREACHABLE',
      'us-east-1/east RUNNING',
      'us-east-1/second RUNNING',
    ]);
    assert.equal(provider.problem(), 'region eu-west-1: AccessDeniedException');
    const warning = logs.lines.find((line) => line.region === 'eu-west-1' && line.backend === 'eks' && line.error);
    assert.ok(warning, 'the failure is logged with its region');
    assert.equal((warning.error as { type?: string }).type, 'AccessDeniedException');
    assert.ok(!logs.raw().includes(CREDENTIALS.secretAccessKey));

    // Still failing: still kept, still not leased.
    clock.advance(31);
    assert.deepEqual((await provider.list()).filter((cluster) => cluster.location === 'eu-west-1').map((cluster) => cluster.status), ['UNREACHABLE', 'UNREACHABLE']);

    fake.failRegion('eu-west-1');
    fake.setClusters([makeEksCluster({ region: 'us-east-1', name: 'east' }), makeEksCluster({ region: 'eu-west-1', name: 'west' })]);
    clock.advance(31);
    const third = await provider.list();
    assert.deepEqual(third.map((cluster) => `${cluster.id} ${cluster.status}`).sort(), ['eu-west-1/west RUNNING', 'us-east-1/east RUNNING']);
    assert.equal(provider.problem(), undefined);
  });

  test('a region failing on the first list: the others are listed and the problem names it', async () => {
    fake.setClusters([makeEksCluster({ region: 'us-east-1', name: 'east' }), makeEksCluster({ region: 'eu-west-1', name: 'west' })]);
    fake.failRegion('eu-west-1', SERVER_ERROR);
    const { provider } = eks({ regions: ['us-east-1', 'eu-west-1'] });
    assert.deepEqual((await provider.list()).map((cluster) => cluster.id), ['us-east-1/east']);
    assert.equal(provider.problem(), 'region eu-west-1: ServerException');
    // A server error is retried once, not more: the listing must not stall acquires.
    assert.equal(fake.calls('ListClusters', 'eu-west-1').length, 2);
  });

  test('a cluster deleted between the list and its description is left out, and the region counts as listed', async () => {
    fake.setClusters([makeEksCluster({ region: 'us-east-1', name: 'east' })]);
    fake.failOperation('DescribeCluster', { status: 404, type: 'ResourceNotFoundException', message: 'No cluster found for name: east.' });
    const { provider } = eks();
    assert.deepEqual(await provider.list(), []);
    assert.equal(provider.problem(), undefined);
    assert.equal(fake.calls('DescribeCluster').length, 1);
  });

  test('every region failing: rejects without a cache, serves the cache with one', async () => {
    fake.setClusters([makeEksCluster({ region: 'us-east-1', name: 'east' }), makeEksCluster({ region: 'eu-west-1', name: 'west' })]);
    fake.failRegion('us-east-1', ACCESS_DENIED);
    fake.failRegion('eu-west-1', ACCESS_DENIED);
    const cold = eks({ regions: ['us-east-1', 'eu-west-1'] }).provider;
    await assert.rejects(cold.list(), /region us-east-1: AccessDeniedException; region eu-west-1: AccessDeniedException/);

    fake.failRegion('us-east-1');
    fake.failRegion('eu-west-1');
    const { provider, clock, logs } = eks({ regions: ['us-east-1', 'eu-west-1'] });
    const warm = await provider.list();
    fake.failRegion('us-east-1', SERVER_ERROR);
    fake.failRegion('eu-west-1', ACCESS_DENIED);
    clock.advance(31);
    assert.deepEqual(await provider.list(), warm);
    assert.equal(provider.problem(), 'region us-east-1: ServerException; region eu-west-1: AccessDeniedException');
    assert.ok(logs.lines.some((line) => line.backend === 'eks' && String(line.msg).includes('cached cluster list')));
  });

  test('the fake takes signed requests only: a wrong secret or no signature is refused as EKS refuses them', async () => {
    fake.setClusters([makeEksCluster({ region: 'us-east-1', name: 'east' })]);
    const wrong = eks({ credentials: { ...CREDENTIALS, secretAccessKey: 'not-the-secret' } }).provider;
    await assert.rejects(wrong.list(), /InvalidSignatureException/);
    const unsigned = await fetch(`${fake.url}/clusters`);
    assert.equal(unsigned.status, 403);
    assert.match(unsigned.headers.get('x-amzn-errortype') ?? '', /^MissingAuthenticationTokenException/);
    assert.deepEqual(await unsigned.json(), { message: 'Missing Authentication Token' });
  });

  test('the SDK\'s own AWS_ENDPOINT_URL_EKS and the default credential chain are used when no option is given', async () => {
    fake.setClusters([makeEksCluster({ region: 'us-east-1', name: 'east' })]);
    await withEnv(
      {
        AWS_ENDPOINT_URL_EKS: fake.url,
        AWS_ACCESS_KEY_ID: ENV_CREDENTIALS.accessKeyId,
        AWS_SECRET_ACCESS_KEY: ENV_CREDENTIALS.secretAccessKey,
        AWS_SESSION_TOKEN: undefined,
        AWS_PROFILE: undefined,
      },
      async () => {
        const { provider } = eks({ endpoint: undefined, credentials: undefined });
        const [cluster] = await provider.list();
        assert.equal(cluster?.id, 'us-east-1/east');
        assert.ok(fake.requests.every((request) => request.accessKeyId === ENV_CREDENTIALS.accessKeyId && request.status === 200));
        const token = new KubeConfig();
        token.loadFromString(await provider.adminKubeconfigFor(cluster!));
        assert.deepEqual(await verifyEksToken(token.getCurrentUser()?.token, { clusterName: 'east', region: 'us-east-1', credentials: ENV_CREDENTIALS }), { ok: true });
      },
    );
  });
});

describe('EKS bearer token', () => {
  const expect = (overrides: Partial<Parameters<typeof verifyEksToken>[1]> = {}) => ({ clusterName: 'prod', region: 'eu-west-1', credentials: CREDENTIALS, ...overrides });

  test('a token is accepted for its cluster, region and credentials only', async () => {
    const token = await eksToken('prod', 'eu-west-1', CREDENTIALS);
    assert.match(token, /^k8s-aws-v1\.[A-Za-z0-9_-]+$/);
    const url = new URL(Buffer.from(token.slice('k8s-aws-v1.'.length), 'base64url').toString());
    assert.equal(url.host, 'sts.eu-west-1.amazonaws.com');
    assert.equal(url.searchParams.get('X-Amz-Expires'), '60');
    assert.equal(url.searchParams.get('X-Amz-SignedHeaders'), 'host;x-k8s-aws-id');
    assert.deepEqual(await verifyEksToken(token, expect()), { ok: true });
    assert.deepEqual(await verifyEksToken(token, expect({ clusterName: 'staging' })), { ok: false, reason: 'signature does not match' });
    assert.deepEqual(await verifyEksToken(token, expect({ region: 'us-east-1' })), { ok: false, reason: 'unexpected host sts.eu-west-1.amazonaws.com' });
    assert.deepEqual(await verifyEksToken(token, expect({ credentials: { ...CREDENTIALS, secretAccessKey: 'other' } })), { ok: false, reason: 'signature does not match' });
    assert.deepEqual(await verifyEksToken(undefined, expect()), { ok: false, reason: 'no k8s-aws-v1. prefix' });
  });

  test('a tampered token is refused', async () => {
    const token = await eksToken('prod', 'eu-west-1', CREDENTIALS);
    const url = new URL(Buffer.from(token.slice('k8s-aws-v1.'.length), 'base64url').toString());
    const remade = (change: (params: URLSearchParams) => void) => {
      const copy = new URL(url);
      change(copy.searchParams);
      return `k8s-aws-v1.${Buffer.from(copy.toString()).toString('base64url')}`;
    };
    const signature = url.searchParams.get('X-Amz-Signature') ?? '';
    const flipped = (signature[0] === 'a' ? 'b' : 'a') + signature.slice(1);
    assert.deepEqual(await verifyEksToken(remade((params) => params.set('X-Amz-Signature', flipped)), expect()), { ok: false, reason: 'signature does not match' });
    assert.deepEqual(await verifyEksToken(remade((params) => params.set('X-Amz-Expires', '900')), expect()), { ok: false, reason: 'invalid X-Amz-Expires' });
    assert.deepEqual(await verifyEksToken(remade((params) => params.set('X-Amz-Expires', '30')), expect()), { ok: false, reason: 'signature does not match' });
    assert.deepEqual(await verifyEksToken(remade((params) => params.set('X-Amz-SignedHeaders', 'host')), expect()), { ok: false, reason: 'x-k8s-aws-id not signed' });
    assert.deepEqual(await verifyEksToken(remade((params) => params.set('Action', 'AssumeRole')), expect()), { ok: false, reason: 'not GetCallerIdentity' });
    assert.deepEqual(await verifyEksToken(token.replace('k8s-aws-v1.', 'k8s-aws-v2.'), expect()), { ok: false, reason: 'no k8s-aws-v1. prefix' });
  });

  test('a URL presigned without the cluster header is refused, even with a good signature', async () => {
    const presigned = await stsSigner('eu-west-1', CREDENTIALS).presign(stsRequest('eu-west-1'), { expiresIn: 60 });
    const token = `k8s-aws-v1.${Buffer.from(urlOf(presigned)).toString('base64url')}`;
    assert.deepEqual(await verifyEksToken(token, expect()), { ok: false, reason: 'x-k8s-aws-id not signed' });
  });

  test('a token is taken for 15 minutes from its signing time', async () => {
    const signedAt = Date.parse('2026-03-01T12:00:00Z');
    const token = await eksToken('prod', 'eu-west-1', CREDENTIALS, { now: () => signedAt });
    assert.deepEqual(await verifyEksToken(token, expect({ now: signedAt + 14 * 60_000 })), { ok: true });
    assert.deepEqual(await verifyEksToken(token, expect({ now: signedAt + 16 * 60_000 })), { ok: false, reason: 'expired' });
    assert.deepEqual(await verifyEksToken(token, expect({ now: signedAt - 10 * 60_000 })), { ok: false, reason: 'signed in the future' });
  });

  test('a session token is carried and signed', async () => {
    const session = { ...CREDENTIALS, sessionToken: 'FwoGZXIvYXdzEXAMPLE/session+token==' };
    const token = await eksToken('prod', 'eu-west-1', async () => session);
    assert.deepEqual(await verifyEksToken(token, expect({ credentials: session })), { ok: true });
    assert.deepEqual(await verifyEksToken(token, expect()), { ok: false, reason: 'unexpected session token' });
  });
});

describe('EKS cluster access', () => {
  test('the admin kubeconfig has the server, the CA and a token EKS takes', async () => {
    fake.setClusters([makeEksCluster({ region: 'eu-west-1', name: 'prod' })]);
    const { provider } = eks({ regions: ['eu-west-1'] });
    const [cluster] = await provider.list();
    const kubeConfig = new KubeConfig();
    kubeConfig.loadFromString(await provider.adminKubeconfigFor(cluster!));
    assert.equal(kubeConfig.getCurrentCluster()?.server, cluster?.server);
    assert.equal(kubeConfig.getCurrentCluster()?.caData, cluster?.caData);
    assert.deepEqual(await verifyEksToken(kubeConfig.getCurrentUser()?.token, expect()), { ok: true });
    function expect() {
      return { clusterName: 'prod', region: 'eu-west-1', credentials: CREDENTIALS };
    }
  });

  test('pool credentials are refused: a lessee never gets the claimer\'s AWS identity', async () => {
    fake.setClusters([makeEksCluster({ region: 'us-east-1', name: 'east' })]);
    const { provider } = eks();
    const [cluster] = await provider.list();
    await assert.rejects(provider.kubeconfigFor(cluster!), /per-lease credentials only/);
  });

  test('per-lease credentials are made and revoked over HTTPS with the EKS token', async (t) => {
    const kube = await startFakeKubeApiserver({
      tls: { cert: TEST_TLS_CERT, key: TEST_TLS_KEY },
      requireToken: async (token, self) =>
        self.isTokenValid(token) || (await verifyEksToken(token, { clusterName: 'prod', region: 'eu-west-1', credentials: CREDENTIALS })).ok,
    });
    t.after(() => kube.close());
    fake.setClusters([makeEksCluster({ region: 'eu-west-1', name: 'prod', endpoint: kube.url, caData: Buffer.from(TEST_TLS_CERT).toString('base64') })]);
    const { provider } = eks({ regions: ['eu-west-1'] });
    const [cluster] = await provider.list();
    assert.equal(cluster?.endpoint, '127.0.0.1');
    const access = new ClusterAccess(provider, 5_000);
    const lease: Lease = { id: 'l1a2b3', tokenHash: 'x'.repeat(64), startedAt: Date.now(), expiresAt: Date.now() + 600_000 };
    const issued = await new ServiceAccountCredentials(access, { 'system:masters': 'cluster-admin' }).issue(cluster!, lease, 600);
    assert.ok(kube.getObject('serviceaccounts', LEASES_NAMESPACE, 'lease-l1a2b3'));
    const binding = kube.getObject('clusterrolebindings', undefined, 'k8s-claimer-lease-l1a2b3') as { roleRef?: { name?: string } } | undefined;
    assert.equal(binding?.roleRef?.name, 'cluster-admin');
    const lessee = new KubeConfig();
    lessee.loadFromString(issued.kubeconfig);
    const lesseeToken = lessee.getCurrentUser()?.token;
    assert.ok(kube.isTokenValid(lesseeToken), 'the lessee has a TokenRequest token, not the EKS one');
    assert.equal(lessee.getCurrentCluster()?.server, kube.url);

    assert.ok((await new LeaseCredentialRevoker(access).revoke(cluster!, [lease.id])) >= 2);
    assert.equal(kube.getObject('serviceaccounts', LEASES_NAMESPACE, 'lease-l1a2b3'), undefined);
    assert.equal(kube.getObject('clusterrolebindings', undefined, 'k8s-claimer-lease-l1a2b3'), undefined);
    assert.equal(kube.isTokenValid(lesseeToken), false);

    // The same cluster with the wrong AWS secret: the API server refuses the claimer.
    const wrong = eks({ regions: ['eu-west-1'], endpoint: fake.url, credentials: { ...CREDENTIALS, secretAccessKey: 'not-the-secret' } }).provider;
    await assert.rejects(
      new ServiceAccountCredentials(new ClusterAccess(wrong, 5_000), { 'system:masters': 'cluster-admin' }).issue(cluster!, { ...lease, id: 'l9' }, 600),
      (error: { code?: number }) => error.code === 401,
    );
    assert.equal(kube.getObject('serviceaccounts', LEASES_NAMESPACE, 'lease-l9'), undefined);
  });
});
