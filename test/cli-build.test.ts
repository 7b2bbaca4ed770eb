// The CLI as users download it: `npm run build` makes dist/k8s-claimer.mjs (one file, nothing
// but Node) and, on linux-x64, a single executable; the server hands the .mjs out at
// /cli/k8s-claimer.mjs. Both run from a folder with no node_modules against the real server.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { access, copyFile, cp, mkdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { poolOf, tempDir, writePool } from './support/harness.ts';
import { startServerProcess, type ServerProcess } from './support/server-process.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const BUNDLE = join(ROOT, 'dist', 'k8s-claimer.mjs');
const EXECUTABLE = join(ROOT, 'dist', 'k8s-claimer-linux-x64');
const SHARED_TOKEN = 'cli-build-shared-token-77';
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const BUILDS_EXECUTABLE = process.platform === 'linux' && process.arch === 'x64';

interface Finished {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a command to its end (killed after 60 s), with only the environment given. */
function runCommand(command: string, args: string[], options: { cwd: string; env: Record<string, string> }): Promise<Finished> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd: options.cwd, env: options.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.once('error', reject);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** The specifiers a JavaScript file imports or requires. */
function importsOf(source: string): string[] {
  const found = new Set<string>();
  for (const match of source.matchAll(/\b(?:from\s*|import\s*\(\s*|require\s*\(\s*|import\s+)(["'])([^"']+)\1/g)) found.add(match[2]!);
  return [...found].sort();
}

describe('the built CLI: dist/k8s-claimer.mjs, the single executable, GET /cli/k8s-claimer.mjs', () => {
  let folder: string;
  let server: ServerProcess;

  before(
    async () => {
      const built = await runCommand('npm', ['run', 'build'], { cwd: ROOT, env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp' } });
      assert.equal(built.code, 0, `npm run build failed:\n${built.stdout}${built.stderr}`);
      folder = await tempDir();
      server = await startServerProcess(process.execPath, ['--import', 'tsx', 'main.ts'], {
        AUTH_TOKEN: SHARED_TOKEN,
        STATIC_POOL_FILE: await writePool(folder, poolOf(2)),
        LEASE_STORE_FILE: join(folder, 'leases.json'),
      });
    },
    { timeout: 120_000 },
  );

  after(async () => {
    await server?.stop();
    if (folder) await rm(folder, { recursive: true, force: true });
  });

  /** A fresh folder for a downloaded CLI: nothing beside it, no node_modules above it. */
  async function downloadFolder(name: string): Promise<string> {
    const target = join(folder, name);
    await mkdir(target);
    for (let above = target; above !== dirname(above); above = dirname(above)) {
      await assert.rejects(access(join(above, 'node_modules')), `${above} has a node_modules the CLI could lean on`);
    }
    return target;
  }

  /** What a CI job has: the claimer's URL and token, a PATH, and nothing of this project. */
  const jobEnv = () => ({ PATH: process.env.PATH ?? '', HOME: folder, K8S_CLAIMER_URL: server.url, AUTH_TOKEN: SHARED_TOKEN });

  async function freeCount(): Promise<number> {
    const response = await fetch(`${server.url}/leases`, { headers: { authorization: `Bearer ${SHARED_TOKEN}` } });
    const body = (await response.json()) as { clusters: { state: string }[] };
    return body.clusters.filter((cluster) => cluster.state === 'free').length;
  }

  /** lease create, then lease delete of the token it printed: what every CI step starts with. */
  async function createAndDelete(command: string, args: string[], cwd: string): Promise<void> {
    const created = await runCommand(command, [...args, 'lease', 'create', '--duration', '1m', '--note', 'downloaded'], { cwd, env: jobEnv() });
    assert.equal(created.code, 0, created.stderr);
    const token = /^export TOKEN='([^']+)'$/m.exec(created.stdout)?.[1];
    assert.match(token ?? '', UUID, created.stdout);
    assert.match(created.stdout, /^export CLUSTER_NAME='pool-\d'$/m);
    assert.equal(await freeCount(), 1);
    const deleted = await runCommand(command, [...args, 'lease', 'delete', token!], { cwd, env: jobEnv() });
    assert.equal(deleted.code, 0, deleted.stderr);
    assert.equal(deleted.stdout, 'lease released\n');
    assert.equal(await freeCount(), 2);
  }

  test('npm run build - dist/k8s-claimer.mjs is one file that imports nothing but node: builtins', async () => {
    const source = await readFile(BUNDLE, 'utf8');
    assert.ok(source.startsWith('#!/usr/bin/env node\n'), 'runs as a command once made executable');
    const imports = importsOf(source);
    assert.ok(imports.includes('node:http'), `the scan finds the imports: ${imports.join(', ')}`);
    assert.deepEqual(imports.filter((specifier) => !specifier.startsWith('node:')), []);
  });

  test('GET /cli/k8s-claimer.mjs - the built file byte for byte, without auth, with an ETag; 304 when the copy is current; HEAD', async () => {
    const built = await readFile(BUNDLE);
    const response = await fetch(`${server.url}/cli/k8s-claimer.mjs`);
    assert.equal(response.status, 200);
    assert.equal(response.headers.get('content-type'), 'text/javascript; charset=utf-8');
    assert.equal(response.headers.get('cache-control'), 'no-cache');
    assert.ok(Buffer.from(await response.arrayBuffer()).equals(built), 'the same bytes as dist/k8s-claimer.mjs');
    const etag = response.headers.get('etag');
    assert.match(etag ?? '', /^"[\w-]+"$/);

    const current = await fetch(`${server.url}/cli/k8s-claimer.mjs`, { headers: { 'if-none-match': `"other", W/${etag}` } });
    assert.equal(current.status, 304);
    assert.equal(await current.text(), '');
    const stale = await fetch(`${server.url}/cli/k8s-claimer.mjs`, { headers: { 'if-none-match': '"an-older-build"' } });
    assert.equal(stale.status, 200);
    await stale.arrayBuffer();
    const head = await fetch(`${server.url}/cli/k8s-claimer.mjs`, { method: 'HEAD' });
    assert.equal(head.status, 200);
    assert.equal(head.headers.get('etag'), etag);
  });

  test('the downloaded k8s-claimer.mjs runs with node alone, from a folder without node_modules: lease create, lease delete, run', async () => {
    const target = await downloadFolder('downloaded-mjs');
    const response = await fetch(`${server.url}/cli/k8s-claimer.mjs`);
    assert.equal(response.status, 200);
    await writeFile(join(target, 'k8s-claimer.mjs'), Buffer.from(await response.arrayBuffer()));
    await createAndDelete(process.execPath, ['k8s-claimer.mjs'], target);
    const ran = await runCommand(process.execPath, ['k8s-claimer.mjs', 'run', '--duration', '1m', '--', 'sh', '-c', 'test -s "$KUBECONFIG" && exit 3'], { cwd: target, env: jobEnv() });
    assert.equal(ran.code, 3, ran.stderr);
    assert.equal(await freeCount(), 2);
  });

  test('the single executable runs without node or node_modules: --help, lease create, lease delete', { skip: !BUILDS_EXECUTABLE && 'built on linux-x64 only' }, async () => {
    const target = await downloadFolder('downloaded-executable');
    const executable = join(target, 'k8s-claimer');
    await copyFile(EXECUTABLE, executable);
    assert.ok(((await stat(EXECUTABLE)).mode & 0o111) !== 0, 'the build makes it executable');
    const help = await runCommand(executable, ['--help'], { cwd: target, env: { PATH: '/usr/bin:/bin' } });
    assert.equal(help.code, 0, help.stderr);
    assert.match(help.stdout, /^Usage: k8s-claimer /);
    assert.equal(help.stderr, '', 'no warning that single executables are experimental');
    await createAndDelete(executable, [], target);
  });

  test('GET /cli/k8s-claimer.mjs - 404 with a JSON error that says how, when the server was started without building the CLI', async () => {
    // The app's sources without dist/, beside the project's dependencies.
    const app = join(folder, 'unbuilt');
    await mkdir(app);
    for (const entry of ['main.ts', 'app.ts', 'package.json', 'tsconfig.json', 'routes', 'services', 'pool']) {
      await cp(join(ROOT, entry), join(app, entry), { recursive: true });
    }
    await symlink(join(ROOT, 'node_modules'), join(app, 'node_modules'));
    const unbuilt = await startServerProcess(process.execPath, ['--import', 'tsx', join(app, 'main.ts')], {
      AUTH_TOKEN: SHARED_TOKEN,
      STATIC_POOL_FILE: await writePool(app, poolOf(1)),
      LEASE_STORE_FILE: join(app, 'leases.json'),
    });
    try {
      const response = await fetch(`${unbuilt.url}/cli/k8s-claimer.mjs`);
      assert.equal(response.status, 404);
      assert.match(response.headers.get('content-type') ?? '', /^application\/json/);
      const body = (await response.json()) as { error?: string };
      assert.match(body.error ?? '', /started without the bundled CLI: run `npm run build:mjs`/);
    } finally {
      await unbuilt.stop();
    }
  });
});
