// Many CI jobs at once: three replicas share one fake kube-apiserver, 60 concurrent acquires
// on a 40-cluster pool. Group commit must grant exactly 40 distinct clusters and refuse 20.
// Then the same on a table past one object's limit, spread over shard ConfigMaps.

import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import { rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { after, before, describe, test } from 'node:test';
import { SignJWT, exportJWK, generateKeyPair } from 'jose';
import type { FakeKubeApiserver } from './fakes/kube-apiserver.ts';
import { poolOf, startTestApp, tempDir, ManualClock, type TestApp } from './support/harness.ts';
import { LEASE_SERVICE, clusterRecords, leaseAnnotations, leaseObjects, seedLeaseService, seedShards, startKube, writeKubeconfig } from './support/kube.ts';
import { homeOf, shardName } from '../services/store/shards.ts';
import { hashToken } from '../services/tokens.ts';

let kube: FakeKubeApiserver;
let folder: string;
const replicas: TestApp[] = [];

before(async () => {
  kube = await startKube();
  kube.setLatency(2);
  seedLeaseService(kube);
  folder = await tempDir();
  const kubeconfig = await writeKubeconfig(folder, kube.url);
  const clock = new ManualClock();
  for (let index = 0; index < 3; index++) {
    replicas.push(await startTestApp({ clusters: poolOf(40), clock, env: { LEASE_STORE: 'kubernetes', KUBECONFIG: kubeconfig } }));
  }
});

after(async () => {
  for (const replica of replicas) await replica.close();
  await kube.close();
  await rm(folder, { recursive: true, force: true });
});

test('3 replicas x 60 concurrent acquires on 40 clusters: 40 granted, 20 refused, no 500, records agree', async () => {
  const responses = await Promise.all(
    Array.from({ length: 60 }, (_, index) =>
      replicas[index % 3].request('POST', '/lease', { body: { max_time: 600 } }).then(async (response) => ({
        status: response.status,
        body: await response.json(),
      })),
    ),
  );
  const granted = responses.filter((response) => response.status === 200);
  assert.equal(granted.length, 40);
  assert.equal(responses.filter((response) => response.status === 409).length, 20);
  assert.equal(responses.filter((response) => response.status >= 500).length, 0);
  assert.equal(new Set(granted.map((response) => response.body.cluster_id)).size, 40);

  // The Service holds exactly the granted leases, each under its own token's hash.
  const records = Object.entries(leaseAnnotations(kube))
    .filter(([key]) => key.startsWith('lease.k8s-claimer.io/'))
    .map(([, value]) => JSON.parse(value));
  const stored = new Map(records.filter((record) => record.state === 'leased').map((record) => [record.cluster, record.lease.token_sha256]));
  assert.equal(stored.size, 40);
  for (const response of granted) assert.equal(stored.get(response.body.cluster_id), hashToken(response.body.token));
});

// The same checks on a table that spans many objects: 1,500 clusters whose records carry
// 256-character notes and long OIDC subjects as holders, too many for one object's 256 KiB.
describe('3 replicas on a sharded table', () => {
  const CLUSTERS = 1500;
  const ISSUER = 'https://oidc.ci.invalid';
  const AUDIENCE = 'k8s-claimer';
  let shardedKube: FakeKubeApiserver;
  let shardedFolder: string;
  let jwks: Server;
  let signingKey: CryptoKey;
  const sharded: TestApp[] = [];

  before(async () => {
    const pair = await generateKeyPair('RS256', { extractable: true });
    signingKey = pair.privateKey;
    const publicJwk = { ...(await exportJWK(pair.publicKey)), kid: 'key-1', alg: 'RS256', use: 'sig' };
    jwks = createServer((_request, response) => response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [publicJwk] })));
    await new Promise<void>((resolve) => jwks.listen(0, '127.0.0.1', resolve));
    shardedKube = await startKube();
    shardedKube.setLatency(2);
    seedLeaseService(shardedKube);
    seedShards(shardedKube, { shards: 32 });
    shardedFolder = await tempDir();
    const kubeconfig = await writeKubeconfig(shardedFolder, shardedKube.url);
    const clock = new ManualClock();
    const env = {
      LEASE_STORE: 'kubernetes',
      KUBECONFIG: kubeconfig,
      LEASE_SHARDS: '32',
      AUTH_JWKS_URL: `http://127.0.0.1:${(jwks.address() as { port: number }).port}/jwks`,
      AUTH_ISSUER: ISSUER,
      AUTH_AUDIENCE: AUDIENCE,
    };
    for (let index = 0; index < 3; index++) sharded.push(await startTestApp({ clusters: poolOf(CLUSTERS), clock, env }));
  });

  after(async () => {
    for (const replica of sharded) await replica.close();
    await shardedKube.close();
    await new Promise((resolve) => jwks.close(resolve));
    await rm(shardedFolder, { recursive: true, force: true });
  });

  test(`${CLUSTERS + 100} concurrent acquires with 256-character notes and long holders on ${CLUSTERS} clusters: ${CLUSTERS} granted, 100 refused, no 5xx, records agree`, { timeout: 120_000 }, async () => {
    const note = 'e2e run '.repeat(32);
    const responses = await Promise.all(
      Array.from({ length: CLUSTERS + 100 }, async (_, index) => {
        // Each job its own identity, as CI systems name them: repository, workflow, ref and run.
        const subject = `repo:my-org/service-${index % 97}-end-to-end-tests:environment:staging-eu:ref:refs/heads/release/2026.12.${index}`;
        const token = await new SignJWT({ sub: subject }).setProtectedHeader({ alg: 'RS256', kid: 'key-1' }).setIssuer(ISSUER).setAudience(AUDIENCE).setIssuedAt().setExpirationTime('10m').sign(signingKey);
        const response = await sharded[index % 3].request('POST', '/lease', { body: { max_time: 600, note }, auth: `Bearer ${token}` });
        return { status: response.status, body: await response.json(), subject };
      }),
    );
    const granted = responses.filter((response) => response.status === 200);
    assert.deepEqual(
      responses.filter((response) => response.status >= 500).map((response) => response.body),
      [],
    );
    assert.equal(granted.length, CLUSTERS);
    assert.equal(responses.filter((response) => response.status === 409).length, 100);
    assert.equal(new Set(granted.map((response) => response.body.cluster_id)).size, CLUSTERS);

    // The objects hold exactly the granted leases, each under its own token's hash and holder,
    // each in the shard its cluster's id hashes to.
    // Records that were written before the table grew move on while it serves.
    const layoutNow = () => JSON.parse(leaseAnnotations(shardedKube)['lease.k8s-claimer.io/layout'] ?? '{}');
    for (const deadline = Date.now() + 30_000; layoutNow().from !== undefined && Date.now() < deadline; ) await new Promise((resolve) => setTimeout(resolve, 50));
    const layout = layoutNow();
    assert.ok(layout.shards > 1 && layout.from === undefined, JSON.stringify(layout));
    const records = clusterRecords(shardedKube);
    assert.equal(records.length, CLUSTERS);
    assert.ok(new Set(records.map(({ object }) => object)).size >= 8, 'records spread over the shards');
    for (const { object, record } of records) assert.equal(object, shardName(LEASE_SERVICE, 'clusters', homeOf(record.cluster, layout.shards)));
    const stored = new Map(records.map(({ record }) => [record.cluster, record.lease]));
    for (const response of granted) {
      const lease = stored.get(response.body.cluster_id) as { token_sha256: string; holder?: string; note?: string };
      assert.equal(lease.token_sha256, hashToken(response.body.token));
      assert.equal(lease.holder, response.subject);
      assert.equal(lease.note, note);
    }
    for (const { name, annotations } of leaseObjects(shardedKube)) {
      const bytes = Object.entries(annotations).reduce((sum, [key, value]) => sum + Buffer.byteLength(key) + Buffer.byteLength(value), 0);
      assert.ok(bytes <= 256 * 1024, `${name} holds ${bytes} bytes`);
    }
  });
});
