// End to end: the real server process (npm start's command) on port 0, driven with fetch.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFile, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { poolOf, tempDir, writePool } from './support/harness.ts';
import { NETWORK_GUARD, startServerProcess, type ServerProcess } from './support/server-process.ts';

/** Runs a command to its end (at most 30 s) and collects what it printed. */
function runToEnd(command: string, args: string[], env: Record<string, string>): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(command, args, { env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

const TOKEN = 'e2e-shared-token';

async function call(server: ServerProcess, method: string, path: string, body?: unknown, token = TOKEN) {
  const response = await fetch(`${server.url}${path}`, {
    method,
    headers: { authorization: token },
    ...(body !== undefined && { body: JSON.stringify(body) }),
  });
  return { status: response.status, body: await response.json() };
}

describe('the real server, end to end', () => {
  const granted: string[] = [];
  let folder: string;
  let server: ServerProcess;
  before(async () => {
    folder = await tempDir();
    const pool = await writePool(folder, poolOf(3));
    server = await startServerProcess(process.execPath, ['--import', 'tsx', 'main.ts'], {
      AUTH_TOKEN: TOKEN,
      STATIC_POOL_FILE: pool,
      LEASE_STORE_FILE: join(folder, 'leases.json'),
    });
  });
  after(async () => {
    await server.stop();
    await rm(folder, { recursive: true, force: true });
  });

  test('leases every cluster, answers 409, releases, re-leases, and a lease expires on its own', async () => {
    assert.equal((await call(server, 'GET', '/healthz', undefined, '')).status, 200);
    const leases = [];
    for (let index = 0; index < 3; index++) {
      const { status, body } = await call(server, 'POST', '/lease', { max_time: 60 });
      assert.equal(status, 200);
      leases.push(body);
    }
    assert.deepEqual(leases.map((lease) => lease.cluster_name).sort(), ['pool-1', 'pool-2', 'pool-3']);
    granted.push(...leases.flatMap((lease) => [lease.token, lease.kubeconfig, Buffer.from(lease.kubeconfig, 'base64').toString('utf8')]));
    const refused = await call(server, 'POST', '/lease', { max_time: 60 });
    assert.equal(refused.status, 409);
    assert.equal(refused.body.reason, 'AllLeased');

    assert.equal((await call(server, 'DELETE', `/lease/${leases[1].token}`)).status, 200);
    const again = await call(server, 'POST', '/lease', { max_time: 1 });
    assert.equal(again.status, 200);
    assert.equal(again.body.cluster_name, leases[1].cluster_name);

    // The one-second lease ends with nobody calling.
    await new Promise((resolve) => setTimeout(resolve, 1100));
    assert.equal((await call(server, 'DELETE', `/lease/${again.body.token}`)).status, 409);
    const afterExpiry = await call(server, 'POST', '/lease', { max_time: 60 });
    assert.equal(afterExpiry.status, 200);
    assert.equal(afterExpiry.body.cluster_name, leases[1].cluster_name);

    const stored = await readFile(join(folder, 'leases.json'), 'utf8');
    for (const lease of leases) assert.equal(stored.includes(lease.token), false, 'a plain token reached the store');
  });

  test('the log never shows the shared token, a lease token or a kubeconfig; SIGTERM stops the server cleanly', async () => {
    const lease = await call(server, 'POST', '/lease', { max_time: 60 });
    assert.equal(lease.status, 409);
    const code = await server.stop('SIGTERM');
    assert.equal(code, 0);
    for (const secret of [TOKEN, ...granted]) assert.equal(server.output().includes(secret), false, 'a secret reached the log');
    assert.match(server.output(), /"msg":"stopped"/);
  });
});

describe('graceful shutdown', () => {
  test('SIGTERM: waiting requests get 503 with Retry-After at once, in-flight ones finish, the process exits 0', async () => {
    const folder = await tempDir();
    const pool = await writePool(folder, poolOf(1));
    const server = await startServerProcess(process.execPath, ['--import', 'tsx', 'main.ts'], {
      AUTH_TOKEN: TOKEN,
      STATIC_POOL_FILE: pool,
      LEASE_STORE_FILE: join(folder, 'leases.json'),
    });
    try {
      assert.equal((await call(server, 'POST', '/lease', { max_time: 600 })).status, 200);
      const waiting = fetch(`${server.url}/lease`, {
        method: 'POST',
        headers: { authorization: TOKEN },
        body: JSON.stringify({ max_time: 60, wait: 60 }),
      });
      await new Promise((resolve) => setTimeout(resolve, 300));
      const started = Date.now();
      const exited = server.stop('SIGTERM');
      const answer = await waiting;
      assert.equal(answer.status, 503);
      assert.equal(answer.headers.get('retry-after'), '1');
      assert.equal((await answer.json()).reason, 'ShuttingDown');
      assert.equal(await exited, 0);
      assert.ok(Date.now() - started < 5_000, 'the waiter did not hold the shutdown');
    } finally {
      await server.stop();
      await rm(folder, { recursive: true, force: true });
    }
  });
});

describe('local mode without AUTH_TOKEN', () => {
  test('generates a token into a private file, says where, and accepts only that token', async () => {
    const folder = await tempDir();
    const tokenFile = join(folder, 'auth-token');
    const server = await startServerProcess(process.execPath, ['--import', 'tsx', 'main.ts'], {
      AUTH_TOKEN_FILE: tokenFile,
      LEASE_STORE_FILE: join(folder, 'leases.json'),
    });
    try {
      const token = (await readFile(tokenFile, 'utf8')).trim();
      assert.ok(token.length >= 32);
      assert.match(server.output(), new RegExp(`"file":"${tokenFile}"`));
      assert.equal(server.output().includes(token), false);
      assert.equal((await call(server, 'POST', '/lease', { max_time: 5 }, 'guess')).status, 401);
      const granted = await call(server, 'POST', '/lease', { max_time: 5 }, token);
      assert.equal(granted.status, 200);
      assert.match(granted.body.cluster_name, /^example-/);
    } finally {
      await server.stop();
      await rm(folder, { recursive: true, force: true });
    }
  });

  test('a port already in use is one line naming BIND_PORT, exit 1, no stack trace', async () => {
    const busy = createServer().listen(0, '127.0.0.1');
    await once(busy, 'listening');
    const { port } = busy.address() as { port: number };
    try {
      const result = await runToEnd(process.execPath, ['--import', NETWORK_GUARD, '--import', 'tsx', 'main.ts'], { AUTH_TOKEN: 'x', LEASE_STORE: 'memory', BIND_HOST: '127.0.0.1', BIND_PORT: String(port) });
      assert.equal(result.code, 1);
      const lines = result.stderr.trim().split('\n');
      assert.equal(lines.length, 1, result.stderr);
      assert.match(lines[0] as string, new RegExp(`port ${port} is in use.*BIND_PORT`));
      assert.doesNotMatch(result.stderr, /\n\s+at /);
    } finally {
      busy.close();
    }
  });

  test('logs are JSON lines for a log collector, readable lines on a terminal (LOG_FORMAT chooses)', async () => {
    const folder = await tempDir();
    const env = { AUTH_TOKEN: 'x', LEASE_STORE: 'memory', BIND_HOST: '127.0.0.1', BIND_PORT: '0', STATIC_POOL_FILE: await writePool(folder, poolOf(1)) };
    try {
      // stdout a pipe: JSON, one object per line.
      const piped = await startServerProcess(process.execPath, ['--import', 'tsx', 'main.ts'], env);
      await piped.stop();
      assert.ok(piped.output().split('\n').filter(Boolean).every((line) => line.startsWith('{') && JSON.parse(line)));
      // stdout a terminal (script(1) gives the server one): readable lines, the level as a word.
      const typed = await runToEnd('script', ['-qec', `${process.execPath} --import tsx main.ts & pid=$!; sleep 4; kill -TERM $pid; wait $pid`, '/dev/null'], env);
      assert.match(typed.stdout, /INFO.*listening/);
      assert.doesNotMatch(typed.stdout, /^\{"level"/m);
      // LOG_FORMAT=pretty without a terminal, and LOG_FORMAT=json on one.
      const forced = await runToEnd('sh', ['-c', `${process.execPath} --import tsx main.ts & pid=$!; sleep 4; kill -TERM $pid; wait $pid`], { ...env, LOG_FORMAT: 'pretty' });
      assert.match(forced.stdout, /INFO.*listening/);
      const json = await runToEnd('script', ['-qec', `${process.execPath} --import tsx main.ts & pid=$!; sleep 4; kill -TERM $pid; wait $pid`, '/dev/null'], { ...env, LOG_FORMAT: 'json' });
      assert.match(json.stdout, /\{"level":"info"/);
    } finally {
      await rm(folder, { recursive: true, force: true });
    }
  });

  test('a bad variable stops start-up with a message naming it', async () => {
    await assert.rejects(
      startServerProcess(process.execPath, ['--import', 'tsx', 'main.ts'], { BIND_PORT: 'eighty' }),
      /BIND_PORT must be a whole number/,
    );
  });
});
