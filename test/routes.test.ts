import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { startingResponse } from '../app.ts';
import { AUTH_TOKEN, poolOf, startTestApp, tempDir, type TestApp } from './support/harness.ts';
import { writeKubeconfig } from './support/kube.ts';

const UNKNOWN_TOKEN = '0b8f6f1c-4a8b-4f7e-9a51-2d7c0c6a9e11';

async function acquire(app: TestApp, maxTime = 60): Promise<Record<string, string>> {
  const response = await app.request('POST', '/lease', { body: { max_time: maxTime } });
  assert.equal(response.status, 200);
  return response.json();
}

describe('request tables: statuses of every route', () => {
  interface Case {
    name: string;
    method: string;
    path: string;
    body?: unknown;
    auth?: string | null;
    headers?: Record<string, string>;
    status: number;
    headersExpected?: Record<string, string>;
    errorMatches?: RegExp;
    fields?: string[];
  }
  const cases: Case[] = [
    { name: 'GET /healthz needs no auth', method: 'GET', path: '/healthz', auth: null, status: 200 },
    { name: 'GET /readyz needs no auth and is 200 when store and pool answer', method: 'GET', path: '/readyz', auth: null, status: 200 },
    { name: 'POST /lease - 401 without Authorization', method: 'POST', path: '/lease', body: { max_time: 30 }, auth: null, status: 401, headersExpected: { 'www-authenticate': 'Bearer' } },
    { name: 'POST /lease - 401 with a wrong token', method: 'POST', path: '/lease', body: { max_time: 30 }, auth: 'nope', status: 401, headersExpected: { 'www-authenticate': 'Bearer' } },
    { name: 'POST /lease - 401 with an empty Authorization header', method: 'POST', path: '/lease', body: { max_time: 30 }, auth: '', status: 401 },
    { name: 'POST /lease - 401 with Bearer and nothing after it', method: 'POST', path: '/lease', body: { max_time: 30 }, auth: 'Bearer ', status: 401 },
    { name: 'POST /lease - 401 with a prefix of the token', method: 'POST', path: '/lease', body: { max_time: 30 }, auth: AUTH_TOKEN.slice(0, -1), status: 401 },
    { name: 'POST /lease - 200 with the raw token (original CLI)', method: 'POST', path: '/lease', body: { max_time: 30 }, status: 200 },
    { name: 'POST /lease - 200 with Bearer token', method: 'POST', path: '/lease', body: { max_time: 30 }, auth: `Bearer ${AUTH_TOKEN}`, status: 200 },
    { name: 'POST /lease - 200 with a form Content-Type (curl -d)', method: 'POST', path: '/lease', body: '{"max_time": 30}', headers: { 'content-type': 'application/x-www-form-urlencoded' }, status: 200 },
    { name: 'POST /lease - 200 at MAX_LEASE_SECONDS', method: 'POST', path: '/lease', body: { max_time: 86400 }, status: 200 },
    { name: 'POST /lease - 400 on malformed JSON', method: 'POST', path: '/lease', body: '{"max_time": ', status: 400, errorMatches: /not valid JSON/ },
    { name: 'POST /lease - 400 on an empty body', method: 'POST', path: '/lease', body: '', status: 400, errorMatches: /JSON object/ },
    { name: 'POST /lease - 400 when max_time is missing', method: 'POST', path: '/lease', body: {}, status: 400, fields: ['max_time'] },
    { name: 'POST /lease - 400 when max_time is a string', method: 'POST', path: '/lease', body: { max_time: '30' }, status: 400, fields: ['max_time'] },
    { name: 'POST /lease - 400 when max_time is 0', method: 'POST', path: '/lease', body: { max_time: 0 }, status: 400, fields: ['max_time'] },
    { name: 'POST /lease - 400 when max_time is negative', method: 'POST', path: '/lease', body: { max_time: -5 }, status: 400, fields: ['max_time'] },
    { name: 'POST /lease - 400 when max_time is not whole', method: 'POST', path: '/lease', body: { max_time: 1.5 }, status: 400, fields: ['max_time'] },
    { name: 'POST /lease - 400 above MAX_LEASE_SECONDS', method: 'POST', path: '/lease', body: { max_time: 86401 }, status: 400, fields: ['max_time'] },
    { name: 'POST /lease - 400 when the body is an array', method: 'POST', path: '/lease', body: [30], status: 400 },
    { name: 'POST /lease - 400 when the body is a number', method: 'POST', path: '/lease', body: '30', status: 400 },
    { name: 'POST /lease - 413 when the body is over 64 KiB', method: 'POST', path: '/lease', body: JSON.stringify({ max_time: 30, pad: 'x'.repeat(70_000) }), status: 413 },
    { name: 'GET /lease - 405 with Allow', method: 'GET', path: '/lease', status: 405, headersExpected: { allow: 'POST' } },
    { name: 'PUT /lease/:token - 405 with Allow', method: 'PUT', path: `/lease/${UNKNOWN_TOKEN}`, status: 405, headersExpected: { allow: 'GET, HEAD, PATCH, DELETE' } },
    { name: 'POST /healthz - 405 with Allow', method: 'POST', path: '/healthz', status: 405, headersExpected: { allow: 'GET, HEAD' } },
    { name: 'DELETE /lease/:token - 401 without Authorization', method: 'DELETE', path: `/lease/${UNKNOWN_TOKEN}`, auth: null, status: 401 },
    { name: 'DELETE /lease/:token - 400 when the token is not a UUID', method: 'DELETE', path: '/lease/not-a-uuid', status: 400, fields: ['token'] },
    { name: 'DELETE /lease/:token - 409 when no lease has the token', method: 'DELETE', path: `/lease/${UNKNOWN_TOKEN}`, status: 409 },
    { name: 'DELETE /lease/:provider/:token - 409 when no lease has the token', method: 'DELETE', path: `/lease/google/${UNKNOWN_TOKEN}`, status: 409 },
    { name: 'DELETE /lease/:provider/:token - 400 when the token is not a UUID', method: 'DELETE', path: '/lease/google/xyz', status: 400 },
    { name: 'GET /nowhere - 404', method: 'GET', path: '/nowhere', status: 404 },
    { name: 'GET /leases - 401 without Authorization', method: 'GET', path: '/leases', auth: null, status: 401 },
    { name: 'GET /metrics needs no auth', method: 'GET', path: '/metrics', auth: null, status: 200 },
    { name: 'GET /openapi.json needs no auth', method: 'GET', path: '/openapi.json', auth: null, status: 200 },
    { name: 'POST /metrics - 405 with Allow', method: 'POST', path: '/metrics', status: 405, headersExpected: { allow: 'GET, HEAD' } },
    { name: 'POST /lease - 400 names an unknown field and the one it resembles (cluster-regex)', method: 'POST', path: '/lease', body: { max_time: 300, 'cluster-regex': 'gpu-.*' }, status: 400, fields: ['cluster-regex'], errorMatches: /did you mean cluster_regex\?/ },
    { name: 'POST /lease - 400 for "label" (did you mean labels?)', method: 'POST', path: '/lease', body: { max_time: 300, label: { gpu: 'true' } }, status: 400, fields: ['label'], errorMatches: /did you mean labels\?/ },
    { name: 'POST /lease - 400 for an unknown field inside auth', method: 'POST', path: '/lease', body: { max_time: 300, auth: { usr: 'me' } }, status: 400, fields: ['auth.usr'], errorMatches: /did you mean auth\.user\?/ },
    { name: 'POST /lease - 400 for an unknown field far from any known one, listing the known ones', method: 'POST', path: '/lease', body: { max_time: 300, colour: 'blue' }, status: 400, fields: ['colour'], errorMatches: /known: max_time, cluster_regex/ },
    { name: 'POST /lease - 200 for the original Go CLI\'s body, empty strings included', method: 'POST', path: '/lease', body: { max_time: 30, cluster_regex: '', cluster_version: '', cloud_provider: '' }, status: 200 },
    { name: 'POST /lease - 400 for a cloud_provider not served, listing what is', method: 'POST', path: '/lease', body: { max_time: 30, cloud_provider: 'azure' }, status: 400, fields: ['cloud_provider'], errorMatches: /accepts static/ },
    { name: 'PATCH /lease/:token - 400 names an unknown field', method: 'PATCH', path: `/lease/${UNKNOWN_TOKEN}`, body: { max_time: 60, maxtime: 60 }, status: 400, fields: ['maxtime'], errorMatches: /did you mean max_time\?/ },
    { name: 'POST /lease - 400 never echoes a label key', method: 'POST', path: '/lease', body: { max_time: 30, labels: { 'private-key-name-7': 5 } }, status: 400, fields: ['labels'] },
  ];

  let app: TestApp;
  before(async () => {
    app = await startTestApp({ clusters: poolOf(40) });
  });
  after(() => app.close());

  for (const item of cases) {
    test(item.name, async () => {
      const before = await app.services.writePath.view();
      const response = await app.request(item.method, item.path, { body: item.body, auth: item.auth, headers: item.headers });
      assert.equal(response.status, item.status);
      if (item.path !== '/metrics' || item.status !== 200) assert.match(response.headers.get('content-type') ?? '', /^application\/json/);
      for (const [name, value] of Object.entries(item.headersExpected ?? {})) {
        assert.equal(response.headers.get(name), value, `header ${name}`);
      }
      const body = item.path === '/metrics' && item.status === 200 ? await response.text() : await response.json();
      if (item.status >= 400) {
        assert.equal(typeof body.error, 'string');
        if (item.errorMatches) assert.match(body.error, item.errorMatches);
        if (item.fields) assert.deepEqual(body.fields, item.fields);
        // A rejected request changes nothing.
        const afterwards = await app.services.writePath.view();
        assert.equal(afterwards.snapshot.version, before.snapshot.version);
      }
    });
  }
});

describe('HEAD on GET routes', () => {
  let app: TestApp;
  before(async () => {
    app = await startTestApp({ clusters: poolOf(2) });
  });
  after(() => app.close());

  const cases: Array<{ path: string; auth?: string | null }> = [
    { path: '/healthz', auth: null },
    { path: '/readyz', auth: null },
    { path: '/metrics', auth: null },
    { path: '/openapi.json', auth: null },
    { path: '/', auth: null },
    { path: '/leases' },
    { path: '/leases', auth: null },
    { path: `/lease/${UNKNOWN_TOKEN}` },
    { path: '/lease/not-a-uuid' },
  ];
  for (const item of cases) {
    test(`HEAD ${item.path}${item.auth === null ? ' without auth' : ''} - the status and headers of GET, no body`, async () => {
      const get = await app.request('GET', item.path, { auth: item.auth });
      const head = await app.request('HEAD', item.path, { auth: item.auth });
      assert.equal(head.status, get.status);
      assert.equal(head.headers.get('content-type'), get.headers.get('content-type'));
      assert.equal(await head.text(), '');
      assert.notEqual(await get.text(), '');
    });
  }
});

describe('start-up and readiness', () => {
  test('while starting: /healthz is 200 (alive), everything else 503 with Retry-After', async () => {
    const healthz = startingResponse(new Request('http://claimer.test/healthz'));
    assert.equal(healthz.status, 200);
    for (const path of ['/readyz', '/lease', '/anything']) {
      const response = startingResponse(new Request(`http://claimer.test${path}`, { method: 'POST' }));
      assert.equal(response.status, 503);
      assert.equal(response.headers.get('retry-after'), '1');
      assert.equal(typeof (await response.json()).error, 'string');
    }
  });

  test('GET /readyz - 503 when the lease store cannot be reached, the cause only in the log', async () => {
    const folder = await tempDir();
    // A port that was free a moment ago: every apiserver call is refused.
    const port = await new Promise<number>((resolve) => {
      const server = createServer().listen(0, '127.0.0.1', () => {
        const { port: chosen } = server.address() as { port: number };
        server.close(() => resolve(chosen));
      });
    });
    const kubeconfig = await writeKubeconfig(folder, `http://127.0.0.1:${port}`);
    const app = await startTestApp({ folder, env: { LEASE_STORE: 'kubernetes', KUBECONFIG: kubeconfig } });
    try {
      const response = await app.request('GET', '/readyz', { auth: null });
      assert.equal(response.status, 503);
      const body = await response.json();
      assert.deepEqual(Object.keys(body), ['error']);
      assert.doesNotMatch(body.error, /ECONNREFUSED|127\.0\.0\.1/);
      assert.match(app.logs.raw(), /ECONNREFUSED/);
    } finally {
      await app.close();
      await rm(folder, { recursive: true, force: true });
    }
  });
});

describe('POST /lease and DELETE /lease/:token', () => {
  test('POST /lease - 200 carries the seed fields, uuid = token, and an RFC 3339 expiry', async () => {
    const app = await startTestApp();
    try {
      app.clock.current = Date.parse('2026-03-01T10:00:00Z');
      const lease = await acquire(app, 90);
      assert.match(lease.token, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
      assert.equal(lease.uuid, lease.token);
      assert.equal(lease.cluster_name, 'pool-1');
      assert.equal(lease.ip, '127.1.0.1');
      assert.equal(lease.expires_at, '2026-03-01T10:01:30.000Z');
      const kubeconfig = Buffer.from(lease.kubeconfig, 'base64').toString('utf8');
      assert.match(kubeconfig, /server: https:\/\/127\.1\.0\.1:6443/);
      assert.match(kubeconfig, /kind: Config/);
    } finally {
      await app.close();
    }
  });

  test('POST /lease - 409 when every cluster is leased, with Retry-After until the soonest end', async () => {
    const app = await startTestApp();
    try {
      await acquire(app, 300);
      await acquire(app, 100);
      await acquire(app, 200);
      app.clock.advance(40);
      const response = await app.request('POST', '/lease', { body: { max_time: 30 } });
      assert.equal(response.status, 409);
      assert.equal(response.headers.get('retry-after'), '60');
      assert.deepEqual(await response.json(), { error: 'every matching cluster is leased', reason: 'AllLeased' });
    } finally {
      await app.close();
    }
  });

  test('POST /lease - 409 NoMatchingCluster when the pool is empty', async () => {
    const app = await startTestApp({ clusters: [] });
    try {
      const response = await app.request('POST', '/lease', { body: { max_time: 30 } });
      assert.equal(response.status, 409);
      assert.equal((await response.json()).reason, 'NoMatchingCluster');
    } finally {
      await app.close();
    }
  });

  test('DELETE /lease/:token - 200 frees the cluster at once; the token is then dead (409)', async () => {
    const app = await startTestApp({ clusters: poolOf(1) });
    try {
      const lease = await acquire(app);
      assert.equal((await app.request('POST', '/lease', { body: { max_time: 30 } })).status, 409);
      const released = await app.request('DELETE', `/lease/${lease.token}`);
      assert.equal(released.status, 200);
      assert.equal((await app.request('DELETE', `/lease/${lease.token}`)).status, 409);
      const again = await acquire(app);
      assert.equal(again.cluster_name, lease.cluster_name);
      assert.notEqual(again.token, lease.token);
    } finally {
      await app.close();
    }
  });

  test('DELETE /lease/:provider/:token - releases whatever the provider segment says', async () => {
    const app = await startTestApp({ clusters: poolOf(1) });
    try {
      const lease = await acquire(app);
      assert.equal((await app.request('DELETE', `/lease/anything-at-all/${lease.token}`)).status, 200);
      assert.equal((await app.request('POST', '/lease', { body: { max_time: 30 } })).status, 200);
    } finally {
      await app.close();
    }
  });

  test('DELETE /lease/:token - a token of another lease never releases mine', async () => {
    const app = await startTestApp({ clusters: poolOf(2) });
    try {
      const mine = await acquire(app);
      const theirs = await acquire(app);
      assert.equal((await app.request('DELETE', `/lease/${theirs.token}`)).status, 200);
      assert.equal((await app.request('DELETE', `/lease/${UNKNOWN_TOKEN}`)).status, 409);
      // Only their cluster came back.
      const next = await acquire(app);
      assert.equal(next.cluster_name, theirs.cluster_name);
      assert.equal((await app.request('DELETE', `/lease/${mine.token}`)).status, 200);
    } finally {
      await app.close();
    }
  });

  test('expiry - a lease ends at expires_at with nobody calling, and can no longer be released', async () => {
    const app = await startTestApp({ clusters: poolOf(1) });
    try {
      const lease = await acquire(app, 60);
      app.clock.advance(59.999);
      assert.equal((await app.request('POST', '/lease', { body: { max_time: 30 } })).status, 409);
      app.clock.advance(0.001);
      const next = await acquire(app, 30);
      assert.equal(next.cluster_name, lease.cluster_name);
      assert.equal((await app.request('DELETE', `/lease/${lease.token}`)).status, 409);
      assert.equal((await app.request('DELETE', `/lease/${next.token}`)).status, 200);
    } finally {
      await app.close();
    }
  });

  test('the pick is deterministic: the cluster idle the longest goes first', async () => {
    const app = await startTestApp({ clusters: poolOf(3) });
    try {
      const first = await acquire(app);
      const second = await acquire(app);
      assert.deepEqual([first.cluster_name, second.cluster_name], ['pool-1', 'pool-2']);
      app.clock.advance(1);
      await app.request('DELETE', `/lease/${second.token}`);
      app.clock.advance(1);
      await app.request('DELETE', `/lease/${first.token}`);
      // pool-3 was never leased, then pool-2 was released before pool-1.
      const order = [(await acquire(app)).cluster_name, (await acquire(app)).cluster_name, (await acquire(app)).cluster_name];
      assert.deepEqual(order, ['pool-3', 'pool-2', 'pool-1']);
    } finally {
      await app.close();
    }
  });

  test('concurrent acquires: every free cluster is handed out exactly once, the rest get 409', async () => {
    const app = await startTestApp({ clusters: poolOf(10) });
    try {
      const responses = await Promise.all(
        Array.from({ length: 25 }, () => app.request('POST', '/lease', { body: { max_time: 60 } })),
      );
      const statuses = responses.map((response) => response.status);
      assert.equal(statuses.filter((status) => status === 200).length, 10);
      assert.equal(statuses.filter((status) => status === 409).length, 15);
      const names = await Promise.all(responses.filter((r) => r.status === 200).map(async (r) => (await r.json()).cluster_name));
      assert.equal(new Set(names).size, 10);
    } finally {
      await app.close();
    }
  });

  test('backend failure - 500 with a generic body, the cause only in the log', async () => {
    const folder = await tempDir();
    const app = await startTestApp({ clusters: poolOf(1), folder, env: { LEASE_STORE_FILE: join(folder, 'data', 'leases.json') } });
    try {
      // The store's folder becomes a plain file, so the real write fails with ENOTDIR.
      await rm(join(folder, 'data'), { recursive: true, force: true });
      await writeFile(join(folder, 'data'), 'not a folder');
      const response = await app.request('POST', '/lease', { body: { max_time: 30 } });
      assert.equal(response.status, 500);
      const body = await response.json();
      assert.deepEqual(Object.keys(body).sort(), ['error', 'request_id']);
      assert.equal(body.error, 'internal error');
      assert.doesNotMatch(JSON.stringify(body), /ENOTDIR|EEXIST|data/);
      assert.match(app.logs.raw(), /"level":"error".*(ENOTDIR|EEXIST)/);
    } finally {
      await app.close();
      await rm(folder, { recursive: true, force: true });
    }
  });

  test('logs never carry the lease token, the kubeconfig or the shared token', async () => {
    const app = await startTestApp({ clusters: [{ name: 'secretive', token: 'cluster-bearer-secret-xyz' }] });
    try {
      const lease = await acquire(app);
      await app.request('DELETE', `/lease/${lease.token}`);
      await app.request('DELETE', `/lease/${lease.token}`);
      await app.request('POST', '/lease', { body: { max_time: 30 }, auth: 'wrong-token-abc' });
      const logs = app.logs.raw();
      const kubeconfigYaml = Buffer.from(lease.kubeconfig, 'base64').toString('utf8');
      for (const secret of [lease.token, lease.kubeconfig, kubeconfigYaml, AUTH_TOKEN, 'cluster-bearer-secret-xyz', 'wrong-token-abc']) {
        assert.equal(logs.includes(secret), false, 'a secret reached the log');
      }
      assert.ok(app.logs.lines.some((line) => line.event === 'lease.granted' && line.cluster === 'static/secretive'));
    } finally {
      await app.close();
    }
  });
});
