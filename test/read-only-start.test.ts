// The real server process on a read-only filesystem, as k8s/deployment.yaml runs it
// (readOnlyRootFilesystem): a file store or a local-mode token file it could not write is
// refused at start-up with one line that says what to do, before anything is bound.
// The read-only folder is a tmpfs mounted read-only in a mount namespace of the server's own
// (`unshare -m`), so nothing stays mounted whatever happens to the test.

import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { poolOf, tempDir, writePool } from './support/harness.ts';
import { NETWORK_GUARD, startServerProcess } from './support/server-process.ts';

/** A tmpfs at "$0" holding an empty folder `data`, then remounted read-only. */
const MOUNT_READ_ONLY = 'mount -t tmpfs tmpfs "$0" && mkdir "$0/data" && mount -o remount,ro "$0"';

/** `unshare` arguments that give a mount namespace here: as root, or inside a user namespace. */
function mountNamespace(): string[] | undefined {
  for (const prefix of [['--mount'], ['--map-root-user', '--mount']]) {
    const probe = spawnSync('unshare', [...prefix, 'sh', '-c', 'mount -t tmpfs -o ro tmpfs "$0" && ! touch "$0/probe"', tmpdir()], { stdio: 'ignore' });
    if (probe.status === 0) return prefix;
  }
  return undefined;
}

const UNSHARE = mountNamespace();

/** `main.ts` with `readOnly` mounted read-only: the command and arguments to spawn. */
function serverWithReadOnly(readOnly: string): [string, string[]] {
  assert.ok(UNSHARE);
  const server = [process.execPath, '--import', NETWORK_GUARD, '--import', 'tsx', 'main.ts'];
  return ['unshare', [...UNSHARE, 'sh', '-c', `${MOUNT_READ_ONLY} && exec "$@"`, readOnly, ...server]];
}

/** Runs the server to its exit: its code and what it printed. */
async function runToExit(readOnly: string, env: Record<string, string>): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const [command, args] = serverWithReadOnly(readOnly);
  const child = spawn(command, args, {
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', BIND_HOST: '127.0.0.1', BIND_PORT: '0', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  // A server that did start would never exit by itself: stop it, so that the test fails instead of hanging.
  const timer = setTimeout(() => child.kill('SIGTERM'), 20_000);
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  clearTimeout(timer);
  return { code, stdout, stderr };
}

describe('start-up on a read-only filesystem', { skip: UNSHARE ? false : 'unshare cannot make a mount namespace with a read-only tmpfs here (it needs root or user namespaces)' }, () => {
  let folder: string;
  let readOnly: string;
  let pool: string;

  before(async () => {
    folder = await tempDir();
    readOnly = join(folder, 'read-only');
    await mkdir(readOnly);
    pool = await writePool(folder, poolOf(1));
  });
  after(async () => {
    await rm(folder, { recursive: true, force: true });
  });

  const cases = [
    {
      name: 'the file store in an existing read-only folder',
      env: () => ({ AUTH_TOKEN: 'read-only-test-token', LEASE_STORE_FILE: join(readOnly, 'data', 'leases.json') }),
      says: () => [
        `LEASE_STORE_FILE ${join(readOnly, 'data', 'leases.json')}: ${join(readOnly, 'data')} is on a read-only file system; mount a writable volume at ${join(readOnly, 'data')} or use LEASE_STORE=kubernetes`,
      ],
    },
    {
      name: 'the file store in a folder it would have to create on a read-only filesystem',
      env: () => ({ AUTH_TOKEN: 'read-only-test-token', LEASE_STORE_FILE: join(readOnly, 'missing', 'leases.json') }),
      says: () => [
        `LEASE_STORE_FILE ${join(readOnly, 'missing', 'leases.json')}: ${readOnly} is on a read-only file system; mount a writable volume at ${join(readOnly, 'missing')} or use LEASE_STORE=kubernetes`,
      ],
    },
    {
      name: 'the local-mode token file without AUTH_TOKEN (memory store)',
      env: () => ({ LEASE_STORE: 'memory', AUTH_TOKEN_FILE: join(readOnly, 'data', 'auth-token') }),
      says: () => [
        `AUTH_TOKEN_FILE ${join(readOnly, 'data', 'auth-token')}: ${join(readOnly, 'data')} is on a read-only file system; mount a writable volume at ${join(readOnly, 'data')} or set AUTH_TOKEN`,
      ],
    },
    {
      name: 'both, as with the defaults under /app: one line names both',
      env: () => ({ LEASE_STORE_FILE: join(readOnly, 'data', 'leases.json'), AUTH_TOKEN_FILE: join(readOnly, 'data', 'auth-token') }),
      says: () => [
        `LEASE_STORE_FILE ${join(readOnly, 'data', 'leases.json')}: `,
        'or use LEASE_STORE=kubernetes; AUTH_TOKEN_FILE ',
        'or set AUTH_TOKEN',
      ],
    },
  ];

  for (const { name, env, says } of cases) {
    test(`refused with one line: ${name}`, async () => {
      const { code, stdout, stderr } = await runToExit(readOnly, { STATIC_POOL_FILE: pool, ...env() });
      assert.equal(code, 2, `exit code; it printed:\n${stdout}${stderr}`);
      assert.equal(stdout, '', 'nothing else is logged: the refusal comes before the socket is bound');
      const lines = stderr.split('\n').filter(Boolean);
      assert.equal(lines.length, 1, `one line:\n${stderr}`);
      assert.match(lines[0], /^k8s-claimer: cannot start: /);
      for (const part of says()) assert.ok(lines[0].includes(part), `${JSON.stringify(part)} missing from:\n${lines[0]}`);
    });
  }

  test('a read-only token folder is not checked when AUTH_TOKEN is set, and a writable store folder starts', async () => {
    const writable = join(folder, 'writable');
    const [command, args] = serverWithReadOnly(readOnly);
    const server = await startServerProcess(command, args, {
      STATIC_POOL_FILE: pool,
      AUTH_TOKEN: 'read-only-test-token',
      AUTH_TOKEN_FILE: join(readOnly, 'data', 'auth-token'),
      LEASE_STORE_FILE: join(writable, 'leases.json'),
    });
    try {
      const response = await fetch(`${server.url}/leases`, { headers: { authorization: 'Bearer read-only-test-token' } });
      assert.equal(response.status, 200);
      assert.equal(((await response.json()) as { clusters: unknown[] }).clusters.length, 1);
    } finally {
      assert.equal(await server.stop(), 0);
    }
  });
});
