// Metrics, logs and secrets hygiene: a full lease cycle with per-lease credentials, including
// failures, and then a search for every secret in every log line, error body, /leases,
// /metrics and the status page.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { parse } from 'yaml';
import { startFakeKubeApiserver, type FakeKubeApiserver } from './fakes/kube-apiserver.ts';
import { TEST_TLS_CERT, TEST_TLS_KEY } from './fakes/tls-fixture.ts';
import { AUTH_TOKEN, poolOf, startTestApp, type TestApp } from './support/harness.ts';

const POOL_TOKEN = 'pool-admin-token-7f3a9c';
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function call(app: TestApp, method: string, path: string, body?: unknown, auth: string | null = AUTH_TOKEN) {
  const response = await app.request(method, path, { body, auth });
  const text = await response.text();
  return { status: response.status, text, body: text.startsWith('{') ? JSON.parse(text) : undefined };
}

function metric(text: string, name: string, labels = ''): number {
  const line = text.split('\n').find((candidate) => candidate.startsWith(`${name}${labels ? `{${labels}}` : ''} `));
  return line ? Number(line.split(' ').at(-1)) : Number.NaN;
}

describe('metrics', () => {
  let app: TestApp;
  before(async () => {
    app = await startTestApp({ clusters: poolOf(2), env: { REAP_INTERVAL_SECONDS: '1' } });
  });
  after(() => app.close());

  test('clusters by state, lease events, refusals by reason, acquire latency and the wait queue', async () => {
    const first = await call(app, 'POST', '/lease', { max_time: 30 });
    const second = await call(app, 'POST', '/lease', { max_time: 300 });
    await call(app, 'POST', '/lease', { max_time: 30 });
    await call(app, 'POST', '/lease', { max_time: 30, cluster_regex: '^nothing$' });
    await call(app, 'PATCH', `/lease/${second.body.token}`, { max_time: 600 });
    let text = (await call(app, 'GET', '/metrics', undefined, null)).text;
    assert.equal(metric(text, 'k8s_claimer_clusters', 'state="leased",pool="static"'), 2);
    assert.equal(metric(text, 'k8s_claimer_clusters', 'state="free",pool="static"'), 0);
    assert.equal(metric(text, 'k8s_claimer_leases_granted_total', 'pool="static"'), 2);
    assert.equal(metric(text, 'k8s_claimer_leases_extended_total'), 1);
    assert.equal(metric(text, 'k8s_claimer_leases_refused_total', 'reason="AllLeased"'), 1);
    assert.equal(metric(text, 'k8s_claimer_leases_refused_total', 'reason="NoMatchingCluster"'), 1);
    assert.equal(metric(text, 'k8s_claimer_acquire_duration_seconds_count', 'waited="no",outcome="granted"'), 2);
    assert.equal(metric(text, 'k8s_claimer_wait_queue_depth'), 0);

    await call(app, 'DELETE', `/lease/${second.body.token}`);
    app.clock.advance(30);
    const deadline = Date.now() + 3_000;
    while (!(metric((await call(app, 'GET', '/metrics', undefined, null)).text, 'k8s_claimer_leases_expired_total') === 1) && Date.now() < deadline) await sleep(50);
    text = (await call(app, 'GET', '/metrics', undefined, null)).text;
    assert.equal(metric(text, 'k8s_claimer_leases_released_total'), 1);
    assert.equal(metric(text, 'k8s_claimer_leases_expired_total'), 1);
    assert.equal(metric(text, 'k8s_claimer_clusters', 'state="free",pool="static"'), 2);
    assert.equal(text.includes(first.body.token), false);
  });
});

describe('secrets hygiene through a full lease cycle', () => {
  let cluster: FakeKubeApiserver;
  let app: TestApp;
  const secrets: string[] = [AUTH_TOKEN, POOL_TOKEN];
  const surfaces: string[] = [];

  before(async () => {
    cluster = await startFakeKubeApiserver({
      tls: { cert: TEST_TLS_CERT, key: TEST_TLS_KEY },
      requireToken: (token, fake) => token === POOL_TOKEN || fake.isTokenValid(token),
    });
    app = await startTestApp({
      clusters: [{ name: 'real', server: cluster.url, certificate_authority_data: Buffer.from(TEST_TLS_CERT).toString('base64'), token: POOL_TOKEN }, ...poolOf(0)],
      poolSettings: {},
      env: { REAP_INTERVAL_SECONDS: '1' },
      janitor: { pollMs: 50, namespacePollMs: 20 },
    });
  });
  after(async () => {
    await app.close();
    await cluster.close();
  });

  test('no token, kubeconfig or credential in any log line, error body, /leases, /metrics or the status page', async () => {
    const record = (answer: { text: string }) => surfaces.push(answer.text);
    // A lease, its token and its minted credential.
    const lease = await call(app, 'POST', '/lease', { max_time: 900, note: 'job 1' });
    assert.equal(lease.status, 200);
    const kubeconfig = Buffer.from(lease.body.kubeconfig, 'base64').toString('utf8');
    const minted = parse(kubeconfig).users[0].user.token;
    secrets.push(lease.body.token, lease.body.kubeconfig, kubeconfig, minted);
    // Every other answer the claimer gives along the way, successes and errors.
    record(await call(app, 'GET', '/leases'));
    record(await call(app, 'GET', `/lease/${lease.body.token}`));
    record(await call(app, 'PATCH', `/lease/${lease.body.token}`, { max_time: 100_000 }));
    record(await call(app, 'POST', '/lease', { max_time: 60 }));
    record(await call(app, 'POST', '/lease', { max_time: 60 }, `Bearer ${minted}`));
    record(await call(app, 'POST', '/lease', { max_time: 60 }, lease.body.token));
    record(await call(app, 'DELETE', `/lease/${'0'.repeat(8)}-0000-4000-8000-${'0'.repeat(12)}`));
    record(await call(app, 'POST', '/lease', `{"max_time": 60, "note": "${POOL_TOKEN}`));
    // The cluster's API server fails while the janitor revokes: the error goes to the log.
    cluster.failNext(1, 500, { match: (request) => request.method === 'DELETE' });
    record(await call(app, 'DELETE', `/lease/${lease.body.token}`));
    await sleep(100);
    app.clock.advance(2);
    const deadline = Date.now() + 5_000;
    while ((await call(app, 'GET', '/leases')).body.clusters[0].state !== 'free' && Date.now() < deadline) await sleep(50);
    assert.equal((await call(app, 'GET', '/leases')).body.clusters[0].state, 'free');
    record(await call(app, 'GET', '/leases'));
    record(await call(app, 'GET', '/metrics', undefined, null));
    record(await call(app, 'GET', '/', undefined, null));
    record(await call(app, 'GET', '/openapi.json', undefined, null));

    assert.ok(app.logs.lines.some((line) => line.level === 'warn' && line.event === undefined && String(line.msg).includes('cleanup failed')));
    const haystacks = [app.logs.raw(), ...surfaces];
    for (const secret of secrets) {
      for (const haystack of haystacks) assert.equal(haystack.includes(secret), false, 'a secret appeared in a log line or an answer');
    }
  });
});
