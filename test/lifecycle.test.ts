// The lease lifecycle beyond the seed: see (GET /leases, GET /lease/{token}), extend (PATCH),
// choose (filters), wait (FIFO, across replicas, deadline, disconnect), note, and the reaper.

import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { describe, test } from 'node:test';
import { AUTH_TOKEN, poolOf, startTestApp, tempDir, type PoolCluster, type TestApp } from './support/harness.ts';
import { leaseAnnotations, seedLeaseService, startKube, writeKubeconfig } from './support/kube.ts';

const UNKNOWN_TOKEN = '0b8f6f1c-4a8b-4f7e-9a51-2d7c0c6a9e11';

async function call(app: TestApp, method: string, path: string, body?: unknown, signal?: AbortSignal) {
  const response = await app.request(method, path, { body, signal });
  return { status: response.status, headers: response.headers, body: await response.json() };
}

async function withApp(options: Parameters<typeof startTestApp>[0], run: (app: TestApp) => Promise<void>) {
  const app = await startTestApp(options);
  try {
    await run(app);
  } finally {
    await app.close();
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

const labelled: PoolCluster[] = [
  { name: 'ci-small-1', labels: { size: 'small', arch: 'amd64' }, version: '1.31.5-gke.100' },
  { name: 'ci-large-1', labels: { size: 'large', arch: 'amd64' }, version: '1.32.1-gke.200' },
  { name: 'gpu-box', labels: { size: 'large', arch: 'arm64' }, version: '1.32.4' },
];

describe('GET /leases and GET /lease/{token}', () => {
  test('GET /leases - every cluster with its state; a leased one with expiry, seconds left, note, holder; no secrets', async () => {
    await withApp({ clusters: labelled }, async (app) => {
      const lease = await call(app, 'POST', '/lease', { max_time: 90, note: 'https://ci.example/jobs/42', cluster_regex: 'gpu' });
      assert.equal(lease.status, 200);
      app.clock.advance(30);
      const listed = await call(app, 'GET', '/leases');
      assert.equal(listed.status, 200);
      assert.equal(listed.body.clusters.length, 3);
      const gpu = listed.body.clusters.find((cluster: { name: string }) => cluster.name === 'gpu-box');
      assert.deepEqual(
        { state: gpu.state, seconds_left: gpu.seconds_left, note: gpu.note, holder: gpu.holder, version: gpu.version, labels: gpu.labels, id: gpu.id, location: gpu.location },
        { state: 'leased', seconds_left: 60, note: 'https://ci.example/jobs/42', holder: null, version: '1.32.4', labels: { size: 'large', arch: 'arm64' }, id: 'static/gpu-box', location: 'static' },
      );
      assert.equal(gpu.expires_at, new Date(app.clock.now() + 60_000).toISOString());
      const free = listed.body.clusters.filter((cluster: { state: string }) => cluster.state === 'free');
      assert.equal(free.length, 2);
      assert.ok(free.every((cluster: Record<string, unknown>) => !('expires_at' in cluster)));
      const text = JSON.stringify(listed.body);
      assert.equal(text.includes(lease.body.token), false);
      assert.equal(text.includes(lease.body.kubeconfig), false);
      assert.doesNotMatch(text, /token_sha256|kubeconfig/);
      assert.equal((await app.request('GET', '/leases', { auth: null })).status, 401);
    });
  });

  test('GET /lease/{token} - the lease with its endpoint; 409 like DELETE once it is gone; 400 for a non-UUID', async () => {
    await withApp({ clusters: poolOf(1) }, async (app) => {
      const lease = await call(app, 'POST', '/lease', { max_time: 60, note: 'job 7' });
      const shown = await call(app, 'GET', `/lease/${lease.body.token}`);
      assert.equal(shown.status, 200);
      assert.equal(shown.body.name, 'pool-1');
      assert.equal(shown.body.endpoint, '127.1.0.1');
      assert.equal(shown.body.server, 'https://127.1.0.1:6443');
      assert.equal(shown.body.note, 'job 7');
      assert.equal(shown.body.seconds_left, 60);
      assert.equal(JSON.stringify(shown.body).includes(lease.body.token), false);
      assert.equal((await call(app, 'GET', `/lease/google/${lease.body.token}`)).status, 200);
      assert.equal((await call(app, 'GET', `/lease/${UNKNOWN_TOKEN}`)).status, 409);
      assert.equal((await call(app, 'GET', '/lease/nope')).status, 400);
      app.clock.advance(60);
      assert.equal((await call(app, 'GET', `/lease/${lease.body.token}`)).status, 409);
      assert.equal((await call(app, 'DELETE', `/lease/${lease.body.token}`)).status, 409);
    });
  });
});

describe('PATCH /lease/{token}', () => {
  test('the lease ends N seconds from now, sooner or later, never past MAX_LEASE_SECONDS from its start (the 400 says how far: max_time_left)', async () => {
    await withApp({ clusters: poolOf(1), env: { MAX_LEASE_SECONDS: '600' } }, async (app) => {
      const start = app.clock.now();
      const lease = await call(app, 'POST', '/lease', { max_time: 60 });
      app.clock.advance(50);
      const extended = await call(app, 'PATCH', `/lease/${lease.body.token}`, { max_time: 300 });
      assert.equal(extended.status, 200);
      assert.equal(extended.body.expires_at, new Date(start + 350_000).toISOString());
      assert.equal(extended.body.seconds_left, 300);

      // 50 s in, at most 550 s more fit under the 600 s cap.
      const tooLong = await call(app, 'PATCH', `/lease/${lease.body.token}`, { max_time: 551 });
      assert.equal(tooLong.status, 400);
      assert.deepEqual(tooLong.body.fields, ['max_time']);
      assert.match(tooLong.body.error, /at most 550 seconds/);
      assert.equal(tooLong.body.max_time_left, 550);
      assert.equal((await call(app, 'GET', `/lease/${lease.body.token}`)).body.expires_at, new Date(start + 350_000).toISOString());
      assert.equal((await call(app, 'PATCH', `/lease/${lease.body.token}`, { max_time: 550 })).status, 200);

      const shortened = await call(app, 'PATCH', `/lease/${lease.body.token}`, { max_time: 5 });
      assert.equal(shortened.body.seconds_left, 5);
      app.clock.advance(5);
      assert.equal((await call(app, 'PATCH', `/lease/${lease.body.token}`, { max_time: 60 })).status, 409);
      assert.equal((await call(app, 'POST', '/lease', { max_time: 60 })).status, 200);
    });
  });

  const bad: Array<[string, unknown]> = [
    ['no max_time', {}],
    ['max_time 0', { max_time: 0 }],
    ['max_time a string', { max_time: '60' }],
    ['not an object', 'null'],
  ];
  for (const [name, body] of bad) {
    test(`PATCH /lease/{token} - 400 for ${name}, the lease unchanged`, async () => {
      await withApp({ clusters: poolOf(1) }, async (app) => {
        const lease = await call(app, 'POST', '/lease', { max_time: 60 });
        assert.equal((await call(app, 'PATCH', `/lease/${lease.body.token}`, body)).status, 400);
        assert.equal((await call(app, 'GET', `/lease/${lease.body.token}`)).body.expires_at, lease.body.expires_at);
      });
    });
  }
});

describe('choosing a cluster', () => {
  const cases: Array<[string, Record<string, unknown>, string | number]> = [
    ['cluster_regex searches the name', { cluster_regex: 'large' }, 'ci-large-1'],
    ['cluster_regex anchored', { cluster_regex: '^gpu-' }, 'gpu-box'],
    ['cluster_version is a prefix of the version', { cluster_version: '1.31' }, 'ci-small-1'],
    ['labels: every pair must match', { labels: { size: 'large', arch: 'arm64' } }, 'gpu-box'],
    ['filters combine', { cluster_regex: '^ci-', labels: { size: 'large' } }, 'ci-large-1'],
    // Never leased, all idle forever: ties go by id, and static/ci-large-1 sorts first.
    ['empty strings mean no filter (the original CLI sends them)', { cluster_regex: '', cluster_version: '', cloud_provider: '' }, 'ci-large-1'],
    ['cloud_provider naming the static pool', { cloud_provider: 'static' }, 'ci-large-1'],
    ['no cluster matches: 409 NoMatchingCluster at once', { cluster_regex: '^prod-' }, 409],
    ['labels that no cluster has: 409 NoMatchingCluster', { labels: { size: 'huge' } }, 409],
    ['an invalid pattern: 400', { cluster_regex: '(unclosed' }, 400],
    ['a backreference (not RE2): 400', { cluster_regex: '(a)\\1' }, 400],
    ['a provider that is not configured: 400', { cloud_provider: 'google' }, 400],
    ['labels not an object: 400', { labels: ['size=large'] }, 400],
    ['a label value not a string: 400', { labels: { size: 3 } }, 400],
    ['a note over 256 characters: 400', { note: 'x'.repeat(257) }, 400],
    ['wait over 3600 seconds: 400', { wait: 3601 }, 400],
    ['wait negative: 400', { wait: -1 }, 400],
  ];
  for (const [name, filters, expected] of cases) {
    test(`POST /lease - ${name}`, async () => {
      await withApp({ clusters: labelled }, async (app) => {
        const response = await call(app, 'POST', '/lease', { max_time: 60, ...filters });
        if (typeof expected === 'string') {
          assert.equal(response.status, 200);
          assert.equal(response.body.cluster_name, expected);
        } else {
          assert.equal(response.status, expected);
          if (expected === 409) assert.equal(response.body.reason, 'NoMatchingCluster');
          if (expected === 400) assert.equal((await call(app, 'GET', '/leases')).body.clusters.filter((c: { state: string }) => c.state === 'leased').length, 0);
        }
      });
    });
  }

  test('a static pool answers the aliases its file names (the original CLI\'s `--provider google`); others are 400 listing them', async () => {
    await withApp({ clusters: poolOf(1), poolSettings: { credentials: 'pool', cleanup: 'none', aliases: ['google', 'onprem'] } }, async (app) => {
      assert.equal((await call(app, 'POST', '/lease', { max_time: 60, cloud_provider: 'Google' })).status, 200);
      const refused = await call(app, 'POST', '/lease', { max_time: 60, cloud_provider: 'azure' });
      assert.equal(refused.status, 400);
      assert.match(refused.body.error, /accepts static, google, onprem/);
    });
  });

  test('cluster_version 1.3 never leases a 1.32.1 cluster; 1.32 does, and the answer shows cluster_version', async () => {
    await withApp({ clusters: labelled }, async (app) => {
      assert.equal((await call(app, 'POST', '/lease', { max_time: 60, cluster_version: '1.3' })).body.reason, 'NoMatchingCluster');
      const granted = await call(app, 'POST', '/lease', { max_time: 60, cluster_version: '1.32' });
      assert.equal(granted.status, 200);
      assert.match(granted.body.cluster_version, /^1\.32\./);
      assert.equal((await call(app, 'GET', `/lease/${granted.body.token}`)).body.cluster_version, granted.body.cluster_version);
    });
  });

  test('a pattern that backtracking engines choke on is answered at once (RE2, linear time)', async () => {
    await withApp({ clusters: [{ name: `${'a'.repeat(60)}!` }] }, async (app) => {
      const response = await call(app, 'POST', '/lease', { max_time: 60, cluster_regex: '^(a+)+$' });
      assert.equal(response.status, 409);
      assert.equal(response.body.reason, 'NoMatchingCluster');
    });
  });

  test('matching clusters all leased: 409 AllLeased with Retry-After until the soonest matching end', async () => {
    await withApp({ clusters: labelled }, async (app) => {
      await call(app, 'POST', '/lease', { max_time: 500, cluster_regex: 'large' });
      await call(app, 'POST', '/lease', { max_time: 100, cluster_regex: 'gpu' });
      const response = await call(app, 'POST', '/lease', { max_time: 60, labels: { size: 'large' } });
      assert.equal(response.status, 409);
      assert.equal(response.body.reason, 'AllLeased');
      assert.equal(response.headers.get('retry-after'), '100');
    });
  });
});

describe('waiting for a cluster', () => {
  const fast = { pollMs: 50, ticketTtlMs: 3_000 };

  test('a waiter gets the cluster as soon as it is released', async () => {
    await withApp({ clusters: poolOf(1), waiting: fast }, async (app) => {
      const held = await call(app, 'POST', '/lease', { max_time: 600 });
      const waiting = call(app, 'POST', '/lease', { max_time: 60, wait: 30 });
      await sleep(100);
      assert.equal((await call(app, 'GET', '/leases')).body.waiting, 1);
      assert.equal((await call(app, 'DELETE', `/lease/${held.body.token}`)).status, 200);
      const granted = await waiting;
      assert.equal(granted.status, 200);
      assert.equal(granted.body.cluster_name, 'pool-1');
      assert.equal((await call(app, 'GET', '/leases')).body.waiting, 0);
    });
  });

  test('first come, first served; a newcomer without wait never jumps the queue', async () => {
    await withApp({ clusters: poolOf(2), waiting: fast }, async (app) => {
      const first = await call(app, 'POST', '/lease', { max_time: 600 });
      const second = await call(app, 'POST', '/lease', { max_time: 600 });
      const order: string[] = [];
      const early = call(app, 'POST', '/lease', { max_time: 60, wait: 30, note: 'early' }).then((r) => (order.push('early'), r));
      await sleep(50);
      const late = call(app, 'POST', '/lease', { max_time: 60, wait: 30, note: 'late' }).then((r) => (order.push('late'), r));
      await sleep(50);
      // Released, and at once a newcomer asks: the cluster belongs to the oldest waiter.
      await call(app, 'DELETE', `/lease/${first.body.token}`);
      const newcomer = await call(app, 'POST', '/lease', { max_time: 60 });
      assert.equal(newcomer.status, 409);
      const earlyAnswer = await early;
      assert.equal(earlyAnswer.status, 200, JSON.stringify(earlyAnswer.body));
      assert.deepEqual(order, ['early']);
      await call(app, 'DELETE', `/lease/${second.body.token}`);
      assert.equal((await late).status, 200);
      assert.deepEqual(order, ['early', 'late']);
    });
  });

  test('a waiter with a filter lets others take clusters it cannot use', async () => {
    await withApp({ clusters: labelled, waiting: fast }, async (app) => {
      const gpu = await call(app, 'POST', '/lease', { max_time: 600, cluster_regex: 'gpu' });
      const waiting = call(app, 'POST', '/lease', { max_time: 60, wait: 30, cluster_regex: 'gpu' });
      await sleep(50);
      assert.equal((await call(app, 'POST', '/lease', { max_time: 60 })).status, 200);
      await call(app, 'DELETE', `/lease/${gpu.body.token}`);
      assert.equal((await waiting).body.cluster_name, 'gpu-box');
    });
  });

  test('at the deadline: 409 AllLeased with Retry-After, and the ticket is gone', async () => {
    await withApp({ clusters: poolOf(1), waiting: fast }, async (app) => {
      await call(app, 'POST', '/lease', { max_time: 120 });
      const started = Date.now();
      const response = await call(app, 'POST', '/lease', { max_time: 60, wait: 1 });
      assert.ok(Date.now() - started >= 950);
      assert.equal(response.status, 409);
      assert.equal(response.body.reason, 'AllLeased');
      assert.equal(response.headers.get('retry-after'), '120');
      assert.equal((await call(app, 'GET', '/leases')).body.waiting, 0);
    });
  });

  test('a client that disconnects leaves the queue and is never given a cluster', async () => {
    await withApp({ clusters: poolOf(1), waiting: fast }, async (app) => {
      const held = await call(app, 'POST', '/lease', { max_time: 600 });
      const controller = new AbortController();
      const gone = app.app.fetch(
        new Request('http://claimer.test/lease', {
          method: 'POST',
          headers: { authorization: AUTH_TOKEN },
          body: JSON.stringify({ max_time: 60, wait: 30 }),
          signal: controller.signal,
        }),
      );
      await sleep(100);
      controller.abort();
      assert.equal((await gone).status, 499);
      assert.equal((await call(app, 'GET', '/leases')).body.waiting, 0);
      await call(app, 'DELETE', `/lease/${held.body.token}`);
      await sleep(150);
      const listed = await call(app, 'GET', '/leases');
      assert.equal(listed.body.clusters[0].state, 'free');
      assert.equal((await call(app, 'POST', '/lease', { max_time: 60 })).status, 200);
    });
  });

  test('a replica that restarts drops the tickets of its earlier run at once: a free cluster is not held back for 30 s', async () => {
    const kube = await startKube();
    const folder = await tempDir();
    try {
      seedLeaseService(kube);
      const env = { LEASE_STORE: 'kubernetes', KUBECONFIG: await writeKubeconfig(folder, kube.url) };
      const other = await startTestApp({ clusters: poolOf(1), env: { ...env, REPLICA_NAME: 'claimer-b' } });
      const before = await startTestApp({ clusters: poolOf(1), env: { ...env, REPLICA_NAME: 'claimer-a' }, clock: other.clock });
      const gone = new AbortController();
      try {
        const held = await call(other, 'POST', '/lease', { max_time: 600 });
        const orphaned = call(before, 'POST', '/lease', { max_time: 60, wait: 20 }, gone.signal).catch(() => undefined);
        await sleep(150);
        // The replica dies: its client is gone, its ticket and heartbeat stay in the table.
        await before.services.close();
        assert.ok(Object.keys(leaseAnnotations(kube)).some((key) => key.startsWith('lease.k8s-claimer.io/w-')));
        await call(other, 'DELETE', `/lease/${held.body.token}`);
        assert.equal((await call(other, 'POST', '/lease', { max_time: 60 })).status, 409);
        const after = await startTestApp({ clusters: poolOf(1), env: { ...env, REPLICA_NAME: 'claimer-a' }, clock: other.clock });
        try {
          await after.services.waiting.start();
          assert.equal(Object.keys(leaseAnnotations(kube)).some((key) => key.startsWith('lease.k8s-claimer.io/w-')), false);
          await sleep(100);
          assert.equal((await call(other, 'POST', '/lease', { max_time: 60 })).status, 200);
        } finally {
          await after.close();
        }
        gone.abort();
        await orphaned;
      } finally {
        await other.close();
        await rm(before.folder, { recursive: true, force: true });
      }
    } finally {
      await kube.close();
      await rm(folder, { recursive: true, force: true });
    }
  });

  test('across replicas: a waiter on one replica is never starved by newcomers on another', async () => {
    const kube = await startKube();
    const folder = await tempDir();
    try {
      seedLeaseService(kube);
      const env = { LEASE_STORE: 'kubernetes', KUBECONFIG: await writeKubeconfig(folder, kube.url) };
      const replicaA = await startTestApp({ clusters: poolOf(1), env, waiting: fast });
      const replicaB = await startTestApp({ clusters: poolOf(1), env, waiting: fast, clock: replicaA.clock });
      try {
        const held = await call(replicaB, 'POST', '/lease', { max_time: 600 });
        const waiting = call(replicaA, 'POST', '/lease', { max_time: 60, wait: 30, note: 'waiter on A' });
        await sleep(100);
        assert.ok(Object.keys(leaseAnnotations(kube)).some((key) => key.startsWith('lease.k8s-claimer.io/w-')));
        // B releases and B's newcomers ask at once, again and again: none may take it.
        await call(replicaB, 'DELETE', `/lease/${held.body.token}`);
        for (let round = 0; round < 5; round++) {
          assert.equal((await call(replicaB, 'POST', '/lease', { max_time: 60 })).status, 409);
        }
        const granted = await waiting;
        assert.equal(granted.status, 200);
        assert.equal((await call(replicaB, 'GET', `/lease/${granted.body.token}`)).body.note, 'waiter on A');
        assert.equal(Object.keys(leaseAnnotations(kube)).some((key) => key.startsWith('lease.k8s-claimer.io/w-')), false);
      } finally {
        await replicaA.close();
        await replicaB.close();
      }
    } finally {
      await kube.close();
      await rm(folder, { recursive: true, force: true });
    }
  });

  test('the ticket of a waiter whose replica died lapses, and the cluster goes to the next request', async () => {
    await withApp({ clusters: poolOf(1), waiting: { pollMs: 50, ticketTtlMs: 3_000 } }, async (app) => {
      const held = await call(app, 'POST', '/lease', { max_time: 600 });
      // A ticket as a dead replica leaves it: in the table, never renewed.
      const { acquire } = await import('../services/lease-table.ts');
      await app.services.writePath.submit(
        acquire({
          tokenHash: 'f'.repeat(64),
          durationSeconds: 60,
          wait: { ticket: 'deadbeefdeadbeef', replica: 'dead'.repeat(4), principal: '0'.repeat(32), ttlMs: 3_000, caps: { perPrincipal: 10, total: 10 } },
        }),
      );
      await call(app, 'DELETE', `/lease/${held.body.token}`);
      assert.equal((await call(app, 'POST', '/lease', { max_time: 60 })).status, 409);
      app.clock.advance(3);
      assert.equal((await call(app, 'POST', '/lease', { max_time: 60 })).status, 200);
    });
  });
});

describe('Idempotency-Key on POST /lease', () => {
  const post = (app: TestApp, body: unknown, key?: string, signal?: AbortSignal) =>
    app.request('POST', '/lease', { body, headers: key === undefined ? {} : { 'idempotency-key': key }, signal }).then(async (response) => ({
      status: response.status,
      body: await response.json(),
    }));

  test('a retry after a lost answer gets its own lease back, under a new token; never a second cluster', async () => {
    await withApp({ clusters: poolOf(3).map((cluster) => ({ ...cluster, labels: { a: '1', b: '2' } })) }, async (app) => {
      const body = { max_time: 600, note: 'job 42', labels: { a: '1', b: '2' } };
      const lost = await post(app, body, '"job-42-attempt"');
      assert.equal(lost.status, 200);
      // The same body, its labels in another order: the same request.
      const retried = await post(app, { note: 'job 42', labels: { b: '2', a: '1' }, max_time: 600 }, '"job-42-attempt"');
      assert.equal(retried.status, 200);
      assert.equal(retried.body.cluster_id, lost.body.cluster_id);
      assert.equal(retried.body.expires_at, lost.body.expires_at);
      assert.notEqual(retried.body.token, lost.body.token);
      const listed = await call(app, 'GET', '/leases');
      assert.equal(listed.body.clusters.filter((cluster: { state: string }) => cluster.state === 'leased').length, 1);
      // The lost answer's token is dead; the retry's holds the lease.
      assert.equal((await call(app, 'GET', `/lease/${lost.body.token}`)).status, 409);
      assert.equal((await call(app, 'DELETE', `/lease/${retried.body.token}`)).status, 200);
      // Once the lease is gone the key means nothing: a new request gets a new lease.
      assert.equal((await post(app, body, '"job-42-attempt"')).status, 200);
    });
  });

  test('the same key with another body is 422; a bare token is accepted as a key; a malformed header is 400 and changes nothing', async () => {
    await withApp({ clusters: poolOf(3) }, async (app) => {
      assert.equal((await post(app, { max_time: 600 }, 'plain-token-key')).status, 200);
      const other = await post(app, { max_time: 601 }, 'plain-token-key');
      assert.equal(other.status, 422);
      assert.equal(other.body.reason, 'IdempotencyKeyReused');
      for (const bad of ['"unterminated', '"', `"${'k'.repeat(256)}"`, '(list)', '12']) {
        const answer = await post(app, { max_time: 600 }, bad);
        assert.equal(answer.status, 400, bad);
        assert.deepEqual(answer.body.fields, ['Idempotency-Key']);
      }
      assert.equal((await call(app, 'GET', '/leases')).body.clusters.filter((cluster: { state: string }) => cluster.state === 'leased').length, 1);
    });
  });

  test('a request with a key that is still being answered is 409 RequestInProgress', async () => {
    await withApp({ clusters: poolOf(1), waiting: { pollMs: 50, ticketTtlMs: 3_000 } }, async (app) => {
      const held = await call(app, 'POST', '/lease', { max_time: 600 });
      const gone = new AbortController();
      const first = post(app, { max_time: 60, wait: 30 }, '"waiting-key"', gone.signal).catch(() => undefined);
      await sleep(100);
      const second = await post(app, { max_time: 60, wait: 30 }, '"waiting-key"');
      assert.equal(second.status, 409);
      assert.equal(second.body.reason, 'RequestInProgress');
      gone.abort();
      await first;
      await call(app, 'DELETE', `/lease/${held.body.token}`);
    });
  });
});

describe('many waiters', () => {
  test('2,000 waiters: a released cluster wakes only the waiter it goes to, not all 2,000', async () => {
    await withApp({ clusters: poolOf(1), waiting: { pollMs: 60_000, ticketTtlMs: 60_000 }, env: { WAIT_MAX_TOTAL: '5000', WAIT_MAX_PER_PRINCIPAL: '5000' } }, async (app) => {
      const held = await call(app, 'POST', '/lease', { max_time: 600 });
      const gone = new AbortController();
      const waiters = Array.from({ length: 2_000 }, () => call(app, 'POST', '/lease', { max_time: 60, wait: 600 }, gone.signal).catch(() => undefined));
      const deadline = Date.now() + 20_000;
      while ((await call(app, 'GET', '/leases')).body.waiting < 2_000 && Date.now() < deadline) await sleep(50);
      assert.equal((await call(app, 'GET', '/leases')).body.waiting, 2_000);
      const writePath = app.services.writePath;
      await sleep(200);
      const before = writePath.decisionsApplied;
      assert.equal((await call(app, 'DELETE', `/lease/${held.body.token}`)).status, 200);
      const served = await Promise.race(waiters);
      assert.equal(served?.status, 200);
      await sleep(200);
      const spent = writePath.decisionsApplied - before;
      // The release, the one waiter's grant, and a few heartbeats; never one try per waiter.
      assert.ok(spent < 20, `${spent} decisions for one released cluster`);
      gone.abort();
      await Promise.all(waiters);
    });
  });

  test('the pattern cache keeps the patterns in use: 1,200 distinct ones are not all recompiled', async () => {
    const { matches, patternCacheStats } = await import('../services/cluster-filter.ts');
    const target = { ...poolOf(1)[0], id: 'static/pool-1', location: 'static', endpoint: '127.0.0.1', labels: {}, version: '', status: 'RUNNING' as const, tag: 't', gpu: false, registryLocation: null };
    const patterns = Array.from({ length: 1_200 }, (_, index) => `^pool-${index}$|cache-test-${index}`);
    for (const pattern of patterns) matches({ regex: pattern }, target as never);
    const compiled = patternCacheStats().compilations;
    for (const pattern of patterns.slice(-1_000)) matches({ regex: pattern }, target as never);
    assert.equal(patternCacheStats().compilations, compiled);
  });
});

describe('the reaper', () => {
  test('ends an expired lease within seconds with nobody calling, logged once with its note', async () => {
    await withApp({ clusters: poolOf(1), env: { REAP_INTERVAL_SECONDS: '1' } }, async (app) => {
      await call(app, 'POST', '/lease', { max_time: 30, note: 'nightly e2e' });
      app.clock.advance(30);
      const deadline = Date.now() + 3_000;
      while (!app.logs.lines.some((line) => line.event === 'lease.expired') && Date.now() < deadline) await sleep(50);
      const expired = app.logs.lines.filter((line) => line.event === 'lease.expired');
      assert.equal(expired.length, 1);
      assert.equal(expired[0].note, 'nightly e2e');
      assert.equal(expired[0].cluster, 'static/pool-1');
      const stored = (await app.services.writePath.view()).snapshot.table.clusters['static/pool-1'];
      assert.equal(stored.state, 'free');
      assert.equal(stored.idleSince, app.clock.now());
    });
  });

  test('with several replicas, each expiry is written and logged exactly once', async () => {
    const kube = await startKube();
    const folder = await tempDir();
    try {
      seedLeaseService(kube);
      const env = { LEASE_STORE: 'kubernetes', KUBECONFIG: await writeKubeconfig(folder, kube.url), REAP_INTERVAL_SECONDS: '1' };
      const replicas = [await startTestApp({ clusters: poolOf(3), env })];
      replicas.push(await startTestApp({ clusters: poolOf(3), env, clock: replicas[0].clock }));
      replicas.push(await startTestApp({ clusters: poolOf(3), env, clock: replicas[0].clock }));
      try {
        for (const replica of replicas) await call(replica, 'POST', '/lease', { max_time: 10 });
        replicas[0].clock.advance(10);
        await sleep(2_500);
        const expired = replicas.flatMap((replica) => replica.logs.lines.filter((line) => line.event === 'lease.expired'));
        assert.deepEqual(expired.map((line) => line.cluster).sort(), ['static/pool-1', 'static/pool-2', 'static/pool-3']);
      } finally {
        for (const replica of replicas) await replica.close();
      }
    } finally {
      await kube.close();
      await rm(folder, { recursive: true, force: true });
    }
  });
});
