// The same app under Deno (from the npm registry): start main.ts and lease a cluster.

import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { poolOf, tempDir, writePool } from './support/harness.ts';
import { startServerProcess } from './support/server-process.ts';

test('Deno smoke test: main.ts serves and leases a cluster under Deno', async () => {
  const folder = await tempDir();
  const pool = await writePool(folder, poolOf(2));
  const server = await startServerProcess(
    'node_modules/.bin/deno',
    // Deno's own permission: the server may listen on and reach loopback only.
    ['run', '--allow-net=127.0.0.1', '--allow-read', '--allow-write', '--allow-env', '--allow-sys', '--no-lock', '--quiet', 'main.ts'],
    { AUTH_TOKEN: 'deno-token', STATIC_POOL_FILE: pool, LEASE_STORE_FILE: join(folder, 'leases.json'), DENO_NO_UPDATE_CHECK: '1' },
    60_000,
  );
  try {
    const response = await fetch(`${server.url}/lease`, { method: 'POST', headers: { authorization: 'Bearer deno-token' }, body: '{"max_time": 30}' });
    assert.equal(response.status, 200);
    const lease = await response.json();
    assert.equal(lease.cluster_name, 'pool-1');
    const released = await fetch(`${server.url}/lease/${lease.token}`, { method: 'DELETE', headers: { authorization: 'deno-token' } });
    assert.equal(released.status, 200);
    assert.match(server.output(), /"runtime":"deno"/);
  } finally {
    await server.stop();
    await rm(folder, { recursive: true, force: true });
  }
});
