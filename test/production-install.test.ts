// The image's install, without Docker: what the Dockerfile copies, installed with production
// dependencies only in a temporary folder, starts with the image's command, leases from the
// example pool and stops cleanly on SIGTERM. The install is offline: it takes the packages from
// the npm cache that the suite's own `npm ci` filled, and never asks the registry.

import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { access, cp, mkdir, mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { basename, dirname, join, posix, resolve } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const AUTH_TOKEN = 'x';
const INSTALL = ['ci', '--omit=dev', '--ignore-scripts', '--offline', '--no-audit', '--no-fund'];
const NETWORK_GUARD = join(ROOT, 'test', 'support', 'network-guard.mjs');
const INSTALL_TIMEOUT_MS = 300_000;

// ---------------------------------------------------------------------------------------------
// The Dockerfile, read as far as this test needs it

interface Copy {
  sources: string[];
  /** The absolute path in the image; a trailing / means "into this folder". */
  destination: string;
}

interface Image {
  from: string;
  workdir: string;
  copies: Copy[];
  runs: string[];
  env: Record<string, string>;
  user: string;
  cmd: string[];
}

/** Instructions with their continuation lines joined and comments dropped. */
function instructionsOf(text: string): Array<{ keyword: string; rest: string }> {
  const instructions: Array<{ keyword: string; rest: string }> = [];
  let pending = '';
  for (const line of text.split('\n')) {
    // Docker drops comment lines, also in the middle of a continued instruction.
    if (/^\s*#/.test(line)) continue;
    if (/\\\s*$/.test(line)) {
      pending += `${line.replace(/\\\s*$/, '')} `;
      continue;
    }
    const whole = `${pending}${line}`.trim();
    pending = '';
    if (whole === '') continue;
    const match = /^([A-Za-z]+)\s+(.*)$/.exec(whole);
    assert.ok(match, `Dockerfile: cannot read "${whole}"`);
    instructions.push({ keyword: match[1].toUpperCase(), rest: match[2].trim() });
  }
  return instructions;
}

function parseDockerfile(text: string): Image {
  const image: Image = { from: '', workdir: '/', copies: [], runs: [], env: {}, user: 'root', cmd: [] };
  for (const { keyword, rest } of instructionsOf(text)) {
    switch (keyword) {
      case 'FROM':
        assert.equal(image.from, '', 'one stage only: this test does not model multi-stage builds');
        image.from = rest;
        break;
      case 'WORKDIR':
        image.workdir = posix.resolve(image.workdir, rest);
        break;
      case 'COPY': {
        assert.ok(!rest.startsWith('['), 'COPY in JSON form is not read by this test');
        const words = rest.split(/\s+/).filter((word) => !word.startsWith('--chown=') && !word.startsWith('--chmod='));
        assert.ok(!words.some((word) => word.startsWith('--')), `COPY ${rest}: a flag this test does not model`);
        assert.ok(words.length >= 2, `COPY ${rest}: sources and a destination`);
        const destination = words[words.length - 1];
        // A trailing slash means "into this folder"; keep it through the path resolution.
        image.copies.push({ sources: words.slice(0, -1), destination: posix.resolve(image.workdir, destination) + (destination.endsWith('/') ? '/' : '') });
        break;
      }
      case 'RUN':
        image.runs.push(rest);
        break;
      case 'ENV':
        for (const pair of rest.split(/\s+/)) {
          const match = /^([A-Za-z_][A-Za-z0-9_]*)=(\S*)$/.exec(pair);
          assert.ok(match, `ENV ${rest}: only KEY=value pairs without quotes are read by this test`);
          image.env[match[1]] = match[2];
        }
        break;
      case 'CMD': {
        const parsed: unknown = JSON.parse(rest);
        assert.ok(Array.isArray(parsed) && parsed.every((word) => typeof word === 'string'), 'CMD in exec (JSON) form, so SIGTERM reaches the process');
        image.cmd = parsed;
        break;
      }
      case 'USER':
        image.user = rest;
        break;
      case 'EXPOSE':
        break;
      default:
        assert.fail(`Dockerfile: ${keyword} is not modelled by this test; teach it what ${keyword} changes`);
    }
  }
  return image;
}

/** Root-level .dockerignore patterns (the only kind the file uses), as regular expressions. */
function ignoredBy(dockerignore: string): RegExp[] {
  return dockerignore
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '' && !line.startsWith('#'))
    .map((pattern) => {
      assert.ok(!pattern.includes('/') && !pattern.startsWith('!'), `.dockerignore: ${pattern} is a form this test does not read`);
      return new RegExp(`^${pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[^/]*').replace(/\?/g, '[^/]')}$`);
    });
}

/** Copies what the image's COPY lines copy, from the repository into `appDir` (the WORKDIR). */
async function copyAsTheImage(image: Image, appDir: string): Promise<string[]> {
  const copied: string[] = [];
  for (const { sources, destination } of image.copies) {
    assert.ok(destination.startsWith(image.workdir), `COPY to ${destination}: outside WORKDIR ${image.workdir}`);
    const target = join(appDir, posix.relative(image.workdir, destination));
    assert.ok(sources.length === 1 || destination.endsWith('/'), `COPY of several files to ${destination}: it must end in /`);
    for (const source of sources) {
      const from = join(ROOT, source);
      // docker build fails on a missing source, so this test does too.
      await access(from).catch(() => assert.fail(`the Dockerfile copies ${source}, which does not exist: the image build would fail`));
      if ((await stat(from)).isDirectory()) {
        await cp(from, target, { recursive: true });
      } else {
        const file = destination.endsWith('/') ? join(target, basename(source)) : target;
        await mkdir(dirname(file), { recursive: true });
        await cp(from, file);
      }
      copied.push(source.replace(/\/$/, ''));
    }
  }
  return copied;
}

/**
 * Does on the copy what the image's RUN lines do, step by step (`a && b`): the npm install
 * (with --ignore-scripts: no package's install script is needed to run), removals inside
 * node_modules, the CLI's bundle (`npm run build:mjs`, run as it is: it only reads the copy and
 * writes its dist/), and cleaning npm's cache, which only matters inside the image. Any other
 * command fails the test until it is modelled here: no other RUN line is run on this machine.
 */
async function runAsTheImage(image: Image, appDir: string, timeoutMs: number): Promise<string[]> {
  const steps: string[] = [];
  for (const command of image.runs) {
    for (const step of command.split('&&').map((part) => part.trim())) {
      if (/^npm ci\b/.test(step)) {
        assert.match(step, /\s--omit=dev\b/, `${step}: production dependencies only`);
        const install = await run('npm', INSTALL, appDir, timeoutMs);
        assert.equal(install.code, 0, `npm ${INSTALL.join(' ')} failed:\n${install.output.slice(-4000)}`);
        steps.push(`npm ${INSTALL.join(' ')}`);
      } else if (/^rm -rf\s/.test(step)) {
        for (const path of step.split(/\s+/).slice(2)) {
          assert.match(path, /^node_modules\/[\w@.\/-]+$/, `${step}: only removals inside node_modules are modelled`);
          assert.ok(!path.split('/').includes('..'), `${step}: stays inside node_modules`);
          await rm(join(appDir, path), { recursive: true, force: true });
        }
        steps.push(step);
      } else if (step === 'npm run build:mjs') {
        const built = await run('npm', ['run', 'build:mjs'], appDir, timeoutMs);
        assert.equal(built.code, 0, `${step} failed:\n${built.output.slice(-4000)}`);
        steps.push(step);
      } else if (step !== 'npm cache clean --force') {
        assert.fail(`RUN ${step}: not modelled by this test; teach runAsTheImage what it does`);
      }
    }
  }
  assert.ok(steps.some((step) => step.startsWith('npm ci')), 'the Dockerfile installs the dependencies with npm ci');
  return steps;
}

// ---------------------------------------------------------------------------------------------
// Processes

function run(command: string, args: string[], cwd: string, timeoutMs: number): Promise<{ code: number | null; output: string }> {
  return new Promise((resolveRun, rejectRun) => {
    const child = spawn(command, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('error', rejectRun);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolveRun({ code, output });
    });
  });
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((ready) => server.listen(0, '127.0.0.1', ready));
  const address = server.address();
  assert.ok(address && typeof address === 'object');
  await new Promise<void>((closed) => server.close(() => closed()));
  return address.port;
}

async function pollUntil200(url: string, timeoutMs: number, output: () => string): Promise<unknown> {
  const deadline = Date.now() + timeoutMs;
  let last = 'no answer';
  while (Date.now() < deadline) {
    try {
      const response = await fetch(url);
      if (response.status === 200) return response.json();
      last = `${response.status} ${await response.text()}`;
    } catch (error) {
      last = (error as Error).message;
    }
    await new Promise((wait) => setTimeout(wait, 200));
  }
  assert.fail(`${url} did not answer 200 within ${timeoutMs} ms (last: ${last}); server output:\n${output()}`);
}

// ---------------------------------------------------------------------------------------------

describe('the production install (what the image would contain)', () => {
  let workspace: string;
  let appDir: string;
  let image: Image;
  let copied: string[];
  let server: ChildProcess | undefined;
  let serverOutput = '';
  let baseUrl = '';

  before(
    async () => {
      image = parseDockerfile(await readFile(join(ROOT, 'Dockerfile'), 'utf8'));
      workspace = await mkdtemp(join(tmpdir(), 'k8s-claimer-install-'));
      appDir = join(workspace, 'app');
      await mkdir(appDir);
      copied = await copyAsTheImage(image, appDir);
      // One install for the whole suite: it is the slow part.
      await runAsTheImage(image, appDir, INSTALL_TIMEOUT_MS - 10_000);
    },
    { timeout: INSTALL_TIMEOUT_MS },
  );

  after(async () => {
    // tsx runs the server in a child process: a failed test must not leave either behind.
    if (server?.pid) {
      try {
        process.kill(-server.pid, 'SIGKILL');
      } catch {
        // The group is gone: everything exited.
      }
    }
    if (workspace) await rm(workspace, { recursive: true, force: true });
  });

  test('the Dockerfile builds from node:24-slim, installs production dependencies, runs as non-root in exec form', async () => {
    assert.equal(image.from, 'node:24-slim');
    assert.ok(
      image.runs.some((command) => /\bnpm ci\b/.test(command) && /--omit=dev\b/.test(command)),
      'RUN npm ci --omit=dev',
    );
    assert.doesNotMatch(image.user, /^(0|root)(:|$)/, 'a non-root USER');
    assert.equal(image.env.NODE_ENV, 'production');
    assert.equal(image.env.BIND_PORT, '8080');
    assert.deepEqual(image.cmd, ['node_modules/.bin/tsx', 'main.ts']);
  });

  test('the image copies the app sources and the lockfile, and .dockerignore keeps the rest out', async () => {
    for (const needed of ['package.json', 'package-lock.json', 'main.ts', 'app.ts', 'routes', 'services', 'pool', 'bin', 'cli']) {
      assert.ok(copied.includes(needed), `the Dockerfile copies ${needed}`);
    }
    // dist/ is built in the image: a local build (with its 100 MB executable) stays out.
    for (const unwanted of ['node_modules', 'test', 'bench', 'data', '.git', 'dist']) {
      assert.ok(!copied.includes(unwanted), `the Dockerfile does not copy ${unwanted}`);
    }
    const ignored = ignoredBy(await readFile(join(ROOT, '.dockerignore'), 'utf8'));
    for (const unwanted of ['node_modules', 'test', 'bench', 'data', '.git', 'dist']) {
      assert.ok(ignored.some((pattern) => pattern.test(unwanted)), `.dockerignore excludes ${unwanted}`);
    }
    for (const source of copied) {
      assert.ok(!ignored.some((pattern) => pattern.test(source.split('/')[0])), `${source} is copied but .dockerignore excludes it`);
    }
  });

  test('the install has the runtime and no development dependencies', async () => {
    await access(join(appDir, 'node_modules', '.bin', 'tsx'));
    for (const devOnly of ['typescript', '@typescript', '.bin/tsc', 'fast-check', 'deno']) {
      await assert.rejects(
        access(join(appDir, 'node_modules', devOnly)),
        `node_modules/${devOnly} is development-only and must not be in the image (see the Dockerfile's RUN)`,
      );
    }
    // Every package the lockfile marks as needed only for development is absent.
    const lock = JSON.parse(await readFile(join(ROOT, 'package-lock.json'), 'utf8')) as {
      packages: Record<string, { dev?: boolean }>;
    };
    const devPackages = Object.entries(lock.packages).filter(([path, entry]) => entry.dev && path.startsWith('node_modules/'));
    assert.ok(devPackages.length > 0, 'the lockfile marks development packages');
    const present: string[] = [];
    for (const [path] of devPackages) {
      if (await access(join(appDir, path)).then(() => true, () => false)) present.push(path);
    }
    assert.deepEqual(present, []);
  });

  test('the image command starts the server: /healthz, /readyz, a lease from the example pool', { timeout: 120_000 }, async () => {
    const port = await freePort();
    baseUrl = `http://127.0.0.1:${port}`;
    const [command, ...args] = image.cmd;
    server = spawn(command.includes('/') ? resolve(appDir, command) : command, args, {
      cwd: appDir,
      env: {
        PATH: process.env.PATH ?? '',
        HOME: workspace,
        ...image.env,
        BIND_HOST: '127.0.0.1',
        BIND_PORT: String(port),
        AUTH_TOKEN,
        LEASE_STORE_FILE: join(workspace, 'leases.json'),
        // The suite's network guard in the server too (the image itself has no such thing).
        NODE_OPTIONS: `--import ${NETWORK_GUARD}`,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
      // Its own process group, so that cleanup also reaches the server process tsx starts.
      detached: true,
    });
    server.stdout?.on('data', (chunk: Buffer) => (serverOutput += chunk.toString()));
    server.stderr?.on('data', (chunk: Buffer) => (serverOutput += chunk.toString()));

    // /healthz answers as soon as the socket is bound ("starting" until the clients are built).
    assert.match(String((await pollUntil200(`${baseUrl}/healthz`, 60_000, () => serverOutput) as { status?: unknown }).status), /^(starting|ok)$/);
    assert.deepEqual(await pollUntil200(`${baseUrl}/readyz`, 60_000, () => serverOutput), { status: 'ready' });
    assert.deepEqual(await pollUntil200(`${baseUrl}/healthz`, 10_000, () => serverOutput), { status: 'ok' });

    const response = await fetch(`${baseUrl}/lease`, {
      method: 'POST',
      headers: { authorization: `Bearer ${AUTH_TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ max_time: 60 }),
    });
    const body = (await response.json()) as { token?: unknown; cluster_name?: unknown; kubeconfig?: unknown };
    assert.equal(response.status, 200, `POST /lease: ${JSON.stringify(body)}\n${serverOutput}`);
    assert.equal(typeof body.token, 'string');
    assert.match(String(body.cluster_name), /^example-\d$/, 'a cluster of the embedded example pool');
    assert.equal(typeof body.kubeconfig, 'string');
    await access(join(workspace, 'leases.json'));
  });

  test('the image builds the CLI into one file and serves it at /cli/k8s-claimer.mjs, without the single executable', async () => {
    assert.ok(server && server.exitCode === null, 'the server from the previous test is running');
    assert.deepEqual(await readdir(join(appDir, 'dist')), ['k8s-claimer.mjs']);
    const built = await readFile(join(appDir, 'dist', 'k8s-claimer.mjs'));
    const response = await fetch(`${baseUrl}/cli/k8s-claimer.mjs`);
    assert.equal(response.status, 200);
    assert.match(response.headers.get('content-type') ?? '', /^text\/javascript/);
    assert.ok(Buffer.from(await response.arrayBuffer()).equals(built), 'the served file is the one the image built');
  });

  test('SIGTERM stops the server with exit code 0 within a few seconds', { timeout: 30_000 }, async () => {
    assert.ok(server && server.exitCode === null, 'the server from the previous test is running');
    const running = server;
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((done) =>
      running.once('exit', (code, signal) => done({ code, signal })),
    );
    const sentAt = Date.now();
    // Only the command's own process gets the signal, as PID 1 of a container does.
    running.kill('SIGTERM');
    const timeout = new Promise<'timeout'>((done) => setTimeout(() => done('timeout'), 10_000).unref());
    const outcome = await Promise.race([exited, timeout]);
    assert.notEqual(outcome, 'timeout', `no exit within 10 s of SIGTERM:\n${serverOutput}`);
    assert.deepEqual(outcome, { code: 0, signal: null }, serverOutput);
    assert.ok(Date.now() - sentAt < 10_000);
    assert.doesNotMatch(serverOutput, /NETWORK GUARD/, 'the installed server reached for an address other than loopback');
  });
});
