// The k8s-claimer CLI end to end: the real server as a child process, the CLI as a real command
// (the bin/k8s-claimer.js launcher, started by absolute path from another folder).

import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import { access, chmod, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { constants } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import { parse as parseYaml } from 'yaml';
import { formatDuration, formatExpiry, parseDuration } from '../cli/durations.ts';
import { main } from '../cli/main.ts';
import { shellQuote } from '../cli/output.ts';
import { startFakeKubeApiserver, type FakeKubeApiserver } from './fakes/kube-apiserver.ts';
import { TEST_TLS_CERT, TEST_TLS_KEY } from './fakes/tls-fixture.ts';
import { poolOf, tempDir, writePool } from './support/harness.ts';
import { startServerProcess, type ServerProcess } from './support/server-process.ts';

const CLI = fileURLToPath(new URL('../bin/k8s-claimer.js', import.meta.url));
const SHARED_TOKEN = 'cli-e2e-shared-token-4242';
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const POOL_SIZE = 2;

interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

interface PoolCluster {
  name: string;
  state: string;
  started_at?: string;
  expires_at?: string;
  note?: string | null;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** run's line once a cluster is granted, and its line once it is given back. */
const GRANTED = /^k8s-claimer: leased [\w-]+ \(\S+\) until \S+, extended while the command runs$/;
const RELEASED = /^k8s-claimer: released [\w-]+ after \d+s$/;
const LEFT_RUNNING = /^k8s-claimer: the command left processes running in its process group: SIGTERM, then SIGKILL after 2s$/;

/**
 * run's stderr: exactly one line for the grant, first, and one for the release (or why there
 * was none), last. Returns the lines between them.
 */
function betweenLeaseLines(stderr: string, released = RELEASED): string[] {
  const lines = stderr.trimEnd().split('\n');
  assert.match(lines[0] ?? '', GRANTED, stderr);
  assert.match(lines.at(-1) ?? '', released, stderr);
  assert.equal(lines.filter((line) => /^k8s-claimer: leased /.test(line)).length, 1, stderr);
  assert.equal(lines.filter((line) => /^k8s-claimer: (released|did not release|could not release) /.test(line)).length, 1, stderr);
  return lines.slice(1, -1);
}

describe('k8s-claimer CLI against the real server', () => {
  let folder: string;
  let server: ServerProcess;
  /** Every CLI process still running: killed (with its whole process group) after the tests. */
  const running = new Set<ChildProcess>();

  before(async () => {
    folder = await tempDir();
    server = await startServerProcess(process.execPath, ['--import', 'tsx', 'main.ts'], {
      AUTH_TOKEN: SHARED_TOKEN,
      STATIC_POOL_FILE: await writePool(folder, poolOf(POOL_SIZE)),
      LEASE_STORE_FILE: join(folder, 'leases.json'),
    });
  });

  after(async () => {
    for (const child of running) killGroup(child);
    await server?.stop();
    await rm(folder, { recursive: true, force: true });
  });

  function killGroup(child: ChildProcess): void {
    try {
      // Detached: the CLI leads its own process group, so this also takes the command it runs.
      if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
  }

  function cliEnv(overrides: Record<string, string | undefined> = {}): Record<string, string> {
    const env: Record<string, string | undefined> = {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      K8S_CLAIMER_URL: server.url,
      AUTH_TOKEN: SHARED_TOKEN,
      ...overrides,
    };
    return Object.fromEntries(Object.entries(env).filter((entry): entry is [string, string] => entry[1] !== undefined));
  }

  /**
   * Starts the CLI from a folder that is not the project's: `node launcher` by default, or the
   * launcher itself through its shebang. `result` settles when it exits (killed after 15 s).
   */
  function startCli(args: string[], env = cliEnv(), how: 'node' | 'shebang' = 'node') {
    const [command, commandArgs] = how === 'node' ? [process.execPath, [CLI, ...args]] : [CLI, args];
    const child = spawn(command, commandArgs, { cwd: folder, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    running.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const result = new Promise<CliResult>((resolve) => {
      const timer = setTimeout(() => killGroup(child), 15_000);
      child.once('close', (code, signal) => {
        clearTimeout(timer);
        running.delete(child);
        resolve({ code, signal, stdout, stderr });
      });
    }).then((finished) => {
      assert.equal(finished.stderr.includes(SHARED_TOKEN), false, 'the shared token reached stderr');
      assert.equal(/apiVersion|certificate-authority|kind: Config/.test(finished.stderr), false, 'a kubeconfig reached stderr');
      return finished;
    });
    return { child, result };
  }

  const cli = (args: string[], env?: Record<string, string>) => startCli(args, env).result;

  async function api(method: string, path: string, body?: unknown, base = server.url) {
    const response = await fetch(`${base}${path}`, {
      method,
      headers: { authorization: `Bearer ${SHARED_TOKEN}` },
      ...(body !== undefined && { body: JSON.stringify(body) }),
    });
    return { status: response.status, body: await response.json() };
  }

  async function clusters(): Promise<PoolCluster[]> {
    const { status, body } = await api('GET', '/leases');
    assert.equal(status, 200);
    return body.clusters;
  }

  async function assertAllFree(): Promise<void> {
    assert.deepEqual((await clusters()).map((cluster) => cluster.state), Array(POOL_SIZE).fill('free'));
  }

  /** Releases leases a test took, whatever happened to it, so the next test finds a free pool. */
  async function releaseAll(tokens: (string | undefined)[]): Promise<void> {
    for (const token of tokens) if (token) await api('DELETE', `/lease/${token}`);
  }

  /** `export NAME='value'` lines as a map (the values these tests see hold no quotes); any other line fails. */
  function exportsOf(stdout: string): Map<string, string> {
    const exported = new Map<string, string>();
    for (const line of stdout.split('\n').filter(Boolean)) {
      const match = /^export ([A-Z_]+)='([^']*)'$/.exec(line);
      if (match) exported.set(match[1]!, match[2]!);
      else exported.set('NOT AN EXPORT', line);
    }
    return exported;
  }

  async function exists(path: string): Promise<boolean> {
    return access(path).then(
      () => true,
      () => false,
    );
  }

  async function waitFor<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 10_000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = await probe();
      if (found !== undefined) return found;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await sleep(100);
    }
  }

  const leasedCluster = async () => (await clusters()).find((cluster) => cluster.state === 'leased');

  /** What a command wrote to `file` (trimmed), once it has written something. */
  const writtenTo = (file: string) =>
    waitFor(`something in ${file}`, async () => {
      const text = (await readFile(file, 'utf8').catch(() => '')).trim();
      return text === '' ? undefined : text;
    });

  /** Whether a process runs: one that has ended but that nobody has reaped yet (a zombie) does not. */
  function isRunning(pid: number): boolean {
    try {
      process.kill(pid, 0);
    } catch {
      return false;
    }
    try {
      return !/^\d+ \(.*\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
    } catch {
      return true;
    }
  }

  /** Kills what a test's command started, if it still runs (a failed test must leave nothing behind). */
  async function killIfRunning(pidFile: string): Promise<void> {
    const pid = Number(await readFile(pidFile, 'utf8').catch(() => ''));
    if (pid > 0 && isRunning(pid)) process.kill(pid, 'SIGKILL');
  }

  /** Waits for a process the command started to end; kills it when it does not, so nothing lingers. */
  async function assertEnds(pid: number, what: string): Promise<void> {
    try {
      await waitFor(`${what} to end`, async () => (isRunning(pid) ? undefined : true), 5_000);
    } catch (error) {
      process.kill(pid, 'SIGKILL');
      throw error;
    }
  }

  test('lease create - prints quoted exports (P_IP, ... with --env-prefix P) and writes the kubeconfig with mode 0600', async () => {
    const kubeconfigFile = join(folder, 'create.kubeconfig');
    // A file left over with a loose mode must not keep that mode once it holds a secret.
    await writeFile(kubeconfigFile, 'stale', { mode: 0o644 });
    const [{ code, stdout, stderr }, withPrefix] = await Promise.all([
      cli(['lease', 'create', '--duration', '10m', '--note', "Bob's job", '--kubeconfig-file', kubeconfigFile]),
      cli(['lease', 'create', '--duration', '90', '--env-prefix', 'CI']),
    ]);
    const exported = exportsOf(stdout);
    const prefixed = exportsOf(withPrefix.stdout);
    try {
      assert.equal(code, 0, stderr);
      assert.equal(withPrefix.code, 0, withPrefix.stderr);
      assert.deepEqual([...prefixed.keys()], ['CI_IP', 'CI_TOKEN', 'CI_CLUSTER_NAME', 'CI_EXPIRES_AT']);
      assert.match(prefixed.get('CI_TOKEN')!, UUID);

      assert.deepEqual([...exported.keys()], ['IP', 'TOKEN', 'CLUSTER_NAME', 'EXPIRES_AT', 'KUBECONFIG']);
      assert.match(exported.get('TOKEN')!, UUID);
      assert.match(exported.get('CLUSTER_NAME')!, /^pool-\d$/);
      assert.match(exported.get('IP')!, /^127\.1\.0\.\d$/);
      assert.equal(exported.get('KUBECONFIG'), kubeconfigFile);
      assert.ok(Date.parse(exported.get('EXPIRES_AT')!) > Date.now() + 9 * 60_000);

      assert.equal((await stat(kubeconfigFile)).mode & 0o777, 0o600);
      const kubeconfig = parseYaml(await readFile(kubeconfigFile, 'utf8'));
      assert.equal(kubeconfig.kind, 'Config');
      assert.equal(kubeconfig.clusters[0].cluster.server, `https://${exported.get('IP')}:6443`);

      const leased = (await clusters()).find((cluster) => cluster.name === exported.get('CLUSTER_NAME'));
      assert.equal(leased?.state, 'leased');
      assert.equal(leased?.note, "Bob's job");
    } finally {
      await releaseAll([exported.get('TOKEN'), prefixed.get('CI_TOKEN')]);
    }
  });

  test('lease create - exit 3 when every cluster is leased or none matches (--regex, --gpu), and no kubeconfig is written', async () => {
    const taken = await Promise.all(Array.from({ length: POOL_SIZE }, () => api('POST', '/lease', { max_time: 60 })));
    try {
      assert.deepEqual(taken.map((lease) => lease.status), Array(POOL_SIZE).fill(200));
      const kubeconfigFile = join(folder, 'exhausted.kubeconfig');
      const [allLeased, noMatch, noGpu] = await Promise.all([
        cli(['lease', 'create', '--duration', '1m', '--wait', '1', '--kubeconfig-file', kubeconfigFile]),
        cli(['lease', 'create', '--duration', '1m', '--regex', '^nothing-like-this$', '--kubeconfig-file', kubeconfigFile]),
        // The pool has no GPU cluster: --gpu reaches the server as a filter.
        cli(['lease', 'create', '--duration', '1m', '--gpu']),
      ]);
      assert.equal(allLeased.code, 3, allLeased.stderr);
      assert.equal(allLeased.stdout, '');
      assert.match(allLeased.stderr, /waiting up to 1s for a cluster/);
      assert.match(allLeased.stderr, /no cluster available: .*AllLeased/);
      assert.equal(noMatch.code, 3, noMatch.stderr);
      assert.match(noMatch.stderr, /NoMatchingCluster/);
      assert.equal(noMatch.stderr.trimEnd().split('\n').length, 1, 'the error is one line');
      assert.equal(noGpu.code, 3, noGpu.stderr);
      assert.match(noGpu.stderr, /NoMatchingCluster/);
      assert.equal(await exists(kubeconfigFile), false);
    } finally {
      await releaseAll(taken.map((lease) => lease.body.token));
    }
  });

  test('usage errors exit 2 with the usage on stderr (bad duration, missing server, unknown command); --help prints to stdout', async () => {
    const cases: { args: string[]; env?: Record<string, string>; message: RegExp }[] = [
      { args: ['lease', 'create', '--duration', '5x'], message: /--duration: '5x' is not a duration/ },
      { args: ['lease', 'list'], env: cliEnv({ K8S_CLAIMER_URL: undefined }), message: /no server/ },
      { args: ['frobnicate'], message: /unknown command 'frobnicate'/ },
    ];
    // The launcher also runs as a command by its own path (its shebang), from any folder.
    const launched = startCli(['run', '--help'], cliEnv(), 'shebang').result;
    const [help, ...results] = await Promise.all([launched, ...cases.map((entry) => cli(entry.args, entry.env))]);
    results.forEach((result, index) => {
      const { args, message } = cases[index]!;
      assert.equal(result.code, 2, `${args.join(' ')}: ${result.stderr}`);
      assert.match(result.stderr, message, args.join(' '));
      assert.match(result.stderr, /\nUsage: k8s-claimer /, args.join(' '));
      assert.equal(result.stdout, '', args.join(' '));
    });
    assert.equal(help.code, 0, help.stderr);
    assert.match(help.stdout, /^Usage: k8s-claimer run /);
    assert.equal(help.stderr, '');
  });

  test('lease list, extend and delete - the table, the new expiry, release, and 409 for a dead token', async () => {
    const created = await api('POST', '/lease', { max_time: 600, note: 'list me' });
    const token: string | undefined = created.body.token;
    try {
      assert.equal(created.status, 200);
      const listed = await cli(['lease', 'list']);
      assert.equal(listed.code, 0, listed.stderr);
      const [header, ...rows] = listed.stdout.trimEnd().split('\n').map((line) => line.split(/\s{2,}/));
      assert.deepEqual(header, ['NAME', 'LOCATION', 'STATE', 'EXPIRES', 'NOTE']);
      const [free, leased] = rows.sort((left, right) => left[2]!.localeCompare(right[2]!));
      assert.deepEqual(free?.slice(1), ['static', 'free', '-', '-']);
      assert.equal(leased?.[2], 'leased');
      assert.match(leased?.[3] ?? '', /^in (10m|9m)$/);
      assert.equal(leased?.[4], 'list me');

      const extended = await cli(['lease', 'extend', token!, '--duration', '2h']);
      assert.equal(extended.code, 0, extended.stderr);
      assert.match(extended.stdout, /^expires at \d{4}-\d\d-\d\dT[\d:.]+Z \(in (2h|1h59m)\)\n$/);
      const lease = await leasedCluster();
      assert.ok(Date.parse(lease!.expires_at!) > Date.now() + 110 * 60_000, 'the server has the new expiry');

      const deleted = await cli(['lease', 'delete', token!]);
      assert.equal(deleted.code, 0, deleted.stderr);
      await assertAllFree();

      const again = await Promise.all([cli(['lease', 'delete', token!]), cli(['lease', 'extend', token!, '--duration', '1m'])]);
      for (const result of again) {
        assert.equal(result.code, 1);
        assert.match(result.stderr, /no live lease has this token/);
      }
    } finally {
      await releaseAll([token]);
    }
  });

  test("run - exits with the command's own code (3 too, which is not 'no cluster'), 126 when it cannot be executed, 127 when it is not found, 128+n when signal n killed it; one line for the grant, one for the release", async () => {
    const notExecutable = join(folder, 'not-executable.sh');
    await writeFile(notExecutable, '#!/bin/sh\nexit 0\n', { mode: 0o644 });
    const cases: { command: string[]; code: number; said?: RegExp }[] = [
      { command: ['sh', '-c', 'exit 3'], code: 3 },
      { command: ['sh', '-c', 'exit 7'], code: 7 },
      { command: ['true'], code: 0 },
      { command: ['sh', '-c', 'kill -USR1 $$'], code: 128 + constants.signals.SIGUSR1 },
      { command: [join(folder, 'no-such-command')], code: 127, said: /^k8s-claimer: cannot run \S+\/no-such-command: not found \(ENOENT\)$/ },
      { command: ['no-such-command-on-the-path'], code: 127, said: /^k8s-claimer: cannot run no-such-command-on-the-path: not found \(ENOENT\)$/ },
      { command: [notExecutable], code: 126, said: /^k8s-claimer: cannot run \S+\/not-executable\.sh: cannot be executed \(EACCES\)$/ },
      { command: [folder], code: 126, said: /: cannot be executed \(EACCES\)$/ },
    ];
    // One after the other: the pool has two clusters, and a wait would add a line.
    for (const { command, code, said } of cases) {
      const result = await cli(['run', '--duration', '1m', '--', ...command]);
      assert.equal(result.code, code, `${command.join(' ')}: ${result.stderr}`);
      const between = betweenLeaseLines(result.stderr);
      assert.equal(between.length, said ? 1 : 0, result.stderr);
      if (said) assert.match(between[0]!, said);
    }
    await assertAllFree();
  });

  test('run - 125 when the claimer gives no cluster (none free when --wait runs out, none matching, unreachable, token refused, a server error, no token): the command never runs; a signal while waiting is 128+n', async () => {
    const taken = await Promise.all(Array.from({ length: POOL_SIZE }, () => api('POST', '/lease', { max_time: 60 })));
    // A claimer that fails every request, and a port where nothing listens.
    const failing = createServer((_request, response) => {
      response.writeHead(500, { 'content-type': 'application/json' });
      response.end(JSON.stringify({ error: 'internal error', request_id: 'request-1' }));
    });
    await new Promise<void>((ready) => failing.listen(0, '127.0.0.1', ready));
    const closed = createServer();
    await new Promise<void>((ready) => closed.listen(0, '127.0.0.1', ready));
    const closedUrl = `http://127.0.0.1:${(closed.address() as { port: number }).port}`;
    await new Promise<void>((done) => closed.close(() => done()));
    const marker = join(folder, 'ran-anyway');
    try {
      assert.deepEqual(taken.map((lease) => lease.status), Array(POOL_SIZE).fill(200));
      const command = ['--', 'sh', '-c', `touch '${marker}'`];
      const cases: { args: string[]; env?: Record<string, string>; said: RegExp }[] = [
        { args: ['--wait', '1'], said: /no cluster available: .*AllLeased/ },
        { args: ['--regex', '^nothing-like-this$'], said: /no cluster available: .*NoMatchingCluster/ },
        { args: [], env: cliEnv({ K8S_CLAIMER_URL: closedUrl }), said: /could not lease a cluster: cannot reach the claimer at http:\/\/127\.0\.0\.1:\d+: / },
        { args: [], env: cliEnv({ AUTH_TOKEN: 'not-the-token' }), said: /could not lease a cluster: the claimer answered 401/ },
        { args: [], env: cliEnv({ K8S_CLAIMER_URL: `http://127.0.0.1:${(failing.address() as { port: number }).port}` }), said: /could not lease a cluster: the claimer answered 500: internal error \(request id request-1\)/ },
        { args: [], env: cliEnv({ AUTH_TOKEN: undefined }), said: /AUTH_TOKEN is not set/ },
      ];
      const results = await Promise.all(cases.map(({ args, env }) => cli(['run', '--duration', '1m', ...args, ...command], env)));
      results.forEach((result, index) => {
        assert.equal(result.code, 125, `${cases[index]!.said}: ${result.stderr}`);
        assert.match(result.stderr, cases[index]!.said);
        assert.doesNotMatch(result.stderr, /^k8s-claimer: (leased|released|did not release|could not release) /m, 'nothing was granted');
      });
      assert.equal(await exists(marker), false, 'the command did not run');

      // Interrupted while waiting for a cluster: nothing was granted, the signal's code.
      const waiting = startCli(['run', '--duration', '1m', '--wait', '30', ...command]);
      await waitFor('the CLI to wait', async () => ((await api('GET', '/leases')).body.waiting === 1 ? true : undefined));
      waiting.child.kill('SIGINT');
      const interrupted = await waiting.result;
      assert.equal(interrupted.code, 128 + constants.signals.SIGINT, interrupted.stderr);
      assert.match(interrupted.stderr, /interrupted by SIGINT before a cluster was leased/);
      assert.equal(await exists(marker), false);
    } finally {
      await new Promise<void>((done) => failing.close(() => done()));
      await releaseAll(taken.map((lease) => lease.body.token));
    }
  });


  test('run - the command gets KUBECONFIG (private, removed afterwards), IP, TOKEN, CLUSTER_NAME, EXPIRES_AT, with or without a prefix', async () => {
    // The command reports what it sees: its environment and the kubeconfig's mode and content.
    const report = (file: string) => [
      process.execPath,
      '-e',
      `const fs = require('node:fs');
       const path = process.env.KUBECONFIG;
       fs.writeFileSync(${JSON.stringify(file)}, JSON.stringify({
         env: process.env, mode: fs.statSync(path).mode & 0o777, kubeconfig: fs.readFileSync(path, 'utf8'),
       }));`,
    ];
    const plainFile = join(folder, 'run-plain.json');
    const prefixedFile = join(folder, 'run-prefixed.json');
    const [plain, prefixed] = await Promise.all([
      cli(['run', '--duration', '1m', '--', ...report(plainFile)]),
      cli(['run', '--duration', '1m', '--env-prefix', 'K8S', '--', ...report(prefixedFile)]),
    ]);
    assert.equal(plain.code, 0, plain.stderr);
    assert.equal(prefixed.code, 0, prefixed.stderr);

    const seen = JSON.parse(await readFile(plainFile, 'utf8'));
    assert.equal(seen.mode, 0o600);
    assert.equal(parseYaml(seen.kubeconfig).kind, 'Config');
    assert.match(seen.env.TOKEN, UUID);
    assert.match(seen.env.CLUSTER_NAME, /^pool-\d$/);
    assert.match(seen.env.IP, /^127\.1\.0\.\d$/);
    assert.ok(Date.parse(seen.env.EXPIRES_AT) > Date.now());
    assert.equal(seen.env.AUTH_TOKEN, undefined, 'the shared token is not passed on to the command');
    assert.equal(typeof seen.env.PATH, 'string', 'the rest of the environment is passed on');
    assert.equal(await exists(dirname(seen.env.KUBECONFIG)), false, 'the private temporary folder is removed');

    const seenPrefixed = JSON.parse(await readFile(prefixedFile, 'utf8'));
    assert.match(seenPrefixed.env.K8S_TOKEN, UUID);
    assert.match(seenPrefixed.env.K8S_CLUSTER_NAME, /^pool-\d$/);
    assert.match(seenPrefixed.env.K8S_IP, /^127\.1\.0\.\d$/);
    assert.ok(seenPrefixed.env.K8S_EXPIRES_AT);
    assert.equal(seenPrefixed.env.K8S_KUBECONFIG, seenPrefixed.env.KUBECONFIG, 'kubectl still finds KUBECONFIG');
    assert.equal(seenPrefixed.env.TOKEN, undefined);
    assert.notEqual(seenPrefixed.env.K8S_TOKEN, seen.env.TOKEN, 'both ran at once, on different clusters');
    await assertAllFree();
  });

  test('run - SIGTERM to the CLI is passed to the command, then the lease is released; exit 128+15', async () => {
    const pidFile = join(folder, 'sleep.pid');
    const { child, result } = startCli(['run', '--duration', '1m', '--', 'sh', '-c', `echo $$ > '${pidFile}'; exec sleep 30`]);
    const commandPid = Number(await writtenTo(pidFile));
    assert.equal((await leasedCluster())?.state, 'leased');
    child.kill('SIGTERM');
    const { code, stderr } = await result;
    assert.equal(code, 143, stderr);
    assert.throws(() => process.kill(commandPid, 0), /ESRCH/, 'the command is gone');
    await assertAllFree();
  });

  test("run - SIGTERM to the CLI reaches the command's whole process group: a sh -c script's background child too", async () => {
    const pidFile = join(folder, 'background.pid');
    // The child does not hold the CLI's stdout and stderr, so the CLI's end is seen at once.
    const { child, result } = startCli(['run', '--duration', '1m', '--', 'sh', '-c', `sleep 30 >/dev/null 2>&1 & echo $! > '${pidFile}'; wait`]);
    const backgroundPid = Number(await writtenTo(pidFile));
    child.kill('SIGTERM');
    const { code, stderr } = await result;
    assert.equal(code, 143, stderr);
    await assertEnds(backgroundPid, 'the background child');
    await assertAllFree();
  });

  test('run - SIGINT to the CLI alone: the script ends, the background job it left (which ignores SIGINT, as sh makes it) gets SIGTERM, and the lease is released within seconds; exit 130', { timeout: 30_000 }, async () => {
    const pidFile = join(folder, 'interrupted.pid');
    try {
      // The job does not hold the CLI's stdout and stderr, so a job left running fails the test at once.
      const { child, result } = startCli(['run', '--duration', '1m', '--', 'sh', '-c', `sleep 60 >/dev/null 2>&1 & echo $! > '${pidFile}'; wait`]);
      const backgroundPid = Number(await writtenTo(pidFile));
      const sentAt = Date.now();
      child.kill('SIGINT');
      const { code, stderr } = await result;
      const tookMs = Date.now() - sentAt;
      assert.equal(code, 128 + constants.signals.SIGINT, stderr);
      assert.ok(tookMs < 10_000, `the CLI ended ${tookMs} ms after SIGINT, not within seconds`);
      assert.equal(isRunning(backgroundPid), false, 'the background job was gone before the CLI ended');
      assert.deepEqual(betweenLeaseLines(stderr).map((line) => LEFT_RUNNING.test(line)), [true]);
      await assertAllFree();
    } finally {
      await killIfRunning(pidFile);
    }
  });

  test('run - what the command left running gets SIGTERM before the lease is released, and SIGKILL after 2 s when it ignores SIGTERM; exit 0', { timeout: 30_000 }, async () => {
    const reportFile = join(folder, 'leftover.json');
    const readyFile = join(folder, 'leftover.ready');
    const stubbornPidFile = join(folder, 'stubborn.pid');
    // On SIGTERM, the reporter asks the claimer whether its cluster is still leased, then exits.
    const reporter = `
      const fs = require('node:fs');
      process.on('SIGTERM', async () => {
        const response = await fetch(${JSON.stringify(`${server.url}/leases`)}, { headers: { authorization: ${JSON.stringify(`Bearer ${SHARED_TOKEN}`)} } });
        const { clusters } = await response.json();
        fs.writeFileSync(${JSON.stringify(reportFile)}, JSON.stringify(clusters.find((cluster) => cluster.name === process.env.CLUSTER_NAME)));
        process.exit(0);
      });
      setInterval(() => {}, 1000);
      fs.writeFileSync(${JSON.stringify(readyFile)}, String(process.pid));`;
    // Neither job holds the CLI's stdout and stderr, so one left running fails the test at once.
    const script = `"$NODE" -e "$REPORTER" >/dev/null 2>&1 & until [ -s '${readyFile}' ]; do sleep 0.05; done
      trap '' TERM; sleep 60 >/dev/null 2>&1 & echo $! > '${stubbornPidFile}'; exit 0`;
    try {
      const { code, stderr } = await cli(['run', '--duration', '1m', '--', 'sh', '-c', script], cliEnv({ NODE: process.execPath, REPORTER: reporter }));
      assert.equal(code, 0, stderr);
      assert.deepEqual(betweenLeaseLines(stderr).map((line) => LEFT_RUNNING.test(line)), [true]);
      const seen = JSON.parse(await readFile(reportFile, 'utf8'));
      assert.equal(seen.state, 'leased', 'the reporter got SIGTERM while the cluster was still leased');
      assert.equal(isRunning(Number(await readFile(stubbornPidFile, 'utf8'))), false, 'the job that ignored SIGTERM was killed before the CLI ended');
      await assertAllFree();
    } finally {
      await Promise.all([killIfRunning(readyFile), killIfRunning(stubbornPidFile)]);
    }
  });

  test('run - a lease that ended on the server (409 on a beat) stops the whole command at once: exit 124, one line why', async () => {
    const pidFile = join(folder, 'ended.pid');
    const tokenFile = join(folder, 'ended.token');
    const { result } = startCli(['run', '--duration', '3', '--', 'sh', '-c', `sleep 60 & echo $! > '${pidFile}'; echo "$TOKEN" > '${tokenFile}'; wait`]);
    const backgroundPid = Number(await writtenTo(pidFile));
    assert.equal((await api('DELETE', `/lease/${await writtenTo(tokenFile)}`)).status, 200);
    const { code, stderr } = await result;
    assert.equal(code, 124, stderr);
    const between = betweenLeaseLines(stderr, /^k8s-claimer: did not release pool-\d: its lease had already ended$/);
    assert.equal(between.length, 1, stderr);
    assert.match(between[0]!, /^k8s-claimer: the lease has already ended \([^\n]*released or expired\); stopped the command$/);
    await assertEnds(backgroundPid, 'the background child');
  });

  test('run - when extending keeps failing (the claimer is gone), the command is stopped before the last confirmed expiry: exit 124', async () => {
    const ownFolder = await tempDir();
    const doomed = await startServerProcess(process.execPath, ['--import', 'tsx', 'main.ts'], {
      AUTH_TOKEN: SHARED_TOKEN,
      STATIC_POOL_FILE: await writePool(ownFolder, poolOf(1)),
      LEASE_STORE_FILE: join(ownFolder, 'leases.json'),
    });
    try {
      const pidFile = join(ownFolder, 'command.pid');
      const { result } = startCli(['run', '--duration', '3', '--', 'sh', '-c', `echo $$ > '${pidFile}'; exec sleep 60`], cliEnv({ K8S_CLAIMER_URL: doomed.url }));
      const commandPid = Number(await writtenTo(pidFile));
      const lease = (await api('GET', '/leases', undefined, doomed.url)).body.clusters[0] as PoolCluster;
      await doomed.stop();
      const { code, stderr } = await result;
      const exitedAt = Date.now();
      assert.equal(code, 124, stderr);
      const said = /^k8s-claimer: the lease ends at (\S+) and cannot be extended \(the last extension failed: cannot reach the claimer at [^)]+\); stopped the command$/m.exec(stderr);
      assert.ok(said, stderr);
      betweenLeaseLines(stderr, /^k8s-claimer: could not release pool-1, its lease ends by itself at \S+: cannot reach the claimer at /);
      assert.ok(Date.parse(said[1]!) >= Date.parse(lease.expires_at!), 'the last expiry the claimer confirmed');
      assert.ok(exitedAt < Date.parse(said[1]!), 'stopped before it');
      await assertEnds(commandPid, 'the command');
    } finally {
      await doomed.stop();
      await rm(ownFolder, { recursive: true, force: true });
    }
  });

  test('AUTH_TOKEN_FILE - the token from a private file; refused when others can read it or with AUTH_TOKEN too; run passes neither on', async () => {
    const tokenFile = join(folder, 'auth-token');
    await writeFile(tokenFile, `${SHARED_TOKEN}\n`, { mode: 0o600 });
    const looseFile = join(folder, 'auth-token-loose');
    await writeFile(looseFile, SHARED_TOKEN);
    await chmod(looseFile, 0o640);
    const fromFile = cliEnv({ AUTH_TOKEN: undefined, AUTH_TOKEN_FILE: tokenFile });
    // The command reports its environment, and its parent's (the CLI's) initial one.
    const report = (file: string) => [
      process.execPath,
      '-e',
      `const fs = require('node:fs');
       let parent = null;
       try { parent = fs.readFileSync('/proc/' + process.ppid + '/environ', 'utf8'); } catch {}
       fs.writeFileSync(${JSON.stringify(file)}, JSON.stringify({ env: process.env, parent }));`,
    ];
    const withFile = join(folder, 'token-file-run.json');
    const withVariable = join(folder, 'token-variable-run.json');
    const [listed, loose, both, missing, ranWithFile, ranWithVariable] = await Promise.all([
      cli(['lease', 'list'], fromFile),
      cli(['lease', 'list'], cliEnv({ AUTH_TOKEN: undefined, AUTH_TOKEN_FILE: looseFile })),
      cli(['lease', 'list'], cliEnv({ AUTH_TOKEN_FILE: tokenFile })),
      cli(['lease', 'list'], cliEnv({ AUTH_TOKEN: undefined, AUTH_TOKEN_FILE: join(folder, 'no-such-file') })),
      cli(['run', '--duration', '1m', '--', ...report(withFile)], fromFile),
      cli(['run', '--duration', '1m', '--', ...report(withVariable)]),
    ]);
    assert.equal(listed.code, 0, listed.stderr);
    assert.match(listed.stdout, /^NAME +LOCATION/);
    const refusals: [typeof loose, RegExp][] = [
      [loose, /^k8s-claimer: AUTH_TOKEN_FILE: \S+auth-token-loose can be read by its group or others \(mode 640\); make it private: chmod 600\n/],
      [both, /^k8s-claimer: set AUTH_TOKEN or AUTH_TOKEN_FILE, not both\n/],
      [missing, /^k8s-claimer: AUTH_TOKEN_FILE: cannot read \S+no-such-file: ENOENT\n/],
    ];
    for (const [result, message] of refusals) {
      assert.equal(result.code, 2, result.stderr);
      assert.match(result.stderr, message);
      assert.equal(result.stdout, '');
    }
    assert.equal(ranWithFile.code, 0, ranWithFile.stderr);
    assert.equal(ranWithVariable.code, 0, ranWithVariable.stderr);
    const seen = JSON.parse(await readFile(withFile, 'utf8'));
    assert.equal(seen.env.AUTH_TOKEN, undefined);
    assert.equal(seen.env.AUTH_TOKEN_FILE, undefined, 'where the token is kept is not passed on either');
    // What the README warns of: a command can read the CLI's initial environment, so only the
    // file keeps the token out of its reach.
    const seenWithVariable = JSON.parse(await readFile(withVariable, 'utf8'));
    assert.equal(seenWithVariable.env.AUTH_TOKEN, undefined);
    if (process.platform === 'linux') {
      assert.ok(seenWithVariable.parent.includes(`AUTH_TOKEN=${SHARED_TOKEN}`), "with AUTH_TOKEN, the token is in the parent's environment");
      assert.ok(seen.parent.includes(`AUTH_TOKEN_FILE=${tokenFile}`));
      assert.equal(seen.parent.includes(SHARED_TOKEN), false, "with AUTH_TOKEN_FILE, the token is not in the parent's environment");
    }
    await assertAllFree();
  });

  test('run - the heartbeat keeps a 3 s lease alive while the command runs for 5 s', async () => {
    const { result } = startCli(['run', '--duration', '3', '--', 'sleep', '5']);
    const lease = await waitFor('the lease', leasedCluster);
    // Past the lease's first end: without heartbeats the cluster would be free by now.
    await sleep(Date.parse(lease.started_at!) + 4500 - Date.now());
    const later = (await clusters()).find((cluster) => cluster.name === lease.name);
    assert.equal(later?.state, 'leased');
    assert.ok(Date.parse(later!.expires_at!) > Date.parse(lease.started_at!) + 4000, 'the lease was extended');
    const { code, stderr } = await result;
    assert.equal(code, 0, stderr);
    assert.doesNotMatch(stderr, /already ended|cannot be extended|could not release/);
    await assertAllFree();
  });

  describe('with per-lease credentials from an API server that caps tokens at 3 s, and MAX_LEASE_SECONDS=8', () => {
    const POOL_TOKEN = 'pool-admin-token';
    let cappedFolder: string;
    let apiserver: FakeKubeApiserver;
    let capped: ServerProcess;

    before(async () => {
      cappedFolder = await tempDir();
      apiserver = await startFakeKubeApiserver({
        tls: { cert: TEST_TLS_CERT, key: TEST_TLS_KEY },
        maxTokenExpirationSeconds: 3,
        requireToken: (token, self) => token === POOL_TOKEN || self.isTokenValid(token),
      });
      const lab = { name: 'lab-1', server: apiserver.url, certificate_authority_data: Buffer.from(TEST_TLS_CERT).toString('base64'), token: POOL_TOKEN };
      capped = await startServerProcess(process.execPath, ['--import', 'tsx', 'main.ts'], {
        AUTH_TOKEN: SHARED_TOKEN,
        STATIC_POOL_FILE: await writePool(cappedFolder, [lab], { cleanup: 'none' }),
        LEASE_STORE_FILE: join(cappedFolder, 'leases.json'),
        MAX_LEASE_SECONDS: '8',
      });
    });

    after(async () => {
      await capped?.stop();
      await apiserver?.close();
      await rm(cappedFolder, { recursive: true, force: true });
    });

    const cappedEnv = () => cliEnv({ K8S_CLAIMER_URL: capped.url });
    const lab = async (): Promise<PoolCluster> => (await api('GET', '/leases', undefined, capped.url)).body.clusters[0];
    /** Its one cluster is free again: the last lease's credentials have been revoked. */
    const labFree = () => waitFor('the cluster to be free', async () => ((await lab()).state === 'free' ? true : undefined));
    const tokenIn = (kubeconfigYaml: string): string => parseYaml(kubeconfigYaml).users[0].user.token;

    test("run - the command's next client reads a fresh token from $KUBECONFIG once its first one died, and the cluster takes it", async () => {
      await labFree();
      const reportFile = join(cappedFolder, 'fresh-token.json');
      // The command waits past its first token's end (the JWT's exp), then lists namespaces with
      // the real client, which loads $KUBECONFIG as kubectl does.
      const script = `
        import { readFileSync, writeFileSync } from 'node:fs';
        const { CoreV1Api, KubeConfig } = await import(${JSON.stringify(import.meta.resolve('@kubernetes/client-node'))});
        const tokenNow = () => /token: (\\S+)/.exec(readFileSync(process.env.KUBECONFIG, 'utf8'))[1];
        const first = tokenNow();
        const dies = JSON.parse(Buffer.from(first.split('.')[1], 'base64url')).exp * 1000;
        await new Promise((resolve) => setTimeout(resolve, dies - Date.now() + 1100));
        const kubeConfig = new KubeConfig();
        kubeConfig.loadFromDefault();
        let status = 200;
        await kubeConfig.makeApiClient(CoreV1Api).listNamespace().catch((error) => (status = error.code ?? String(error)));
        writeFileSync(${JSON.stringify(reportFile)}, JSON.stringify({ first, last: tokenNow(), status }));`;
      const { code, stderr } = await cli(['run', '--duration', '3', '--', process.execPath, '--input-type=module', '-e', script], cappedEnv());
      assert.equal(code, 0, stderr);
      assert.deepEqual(betweenLeaseLines(stderr), [], 'nothing but the lease lines');
      const seen = JSON.parse(await readFile(reportFile, 'utf8'));
      assert.equal(apiserver.isTokenValid(seen.first), false, 'the first token has died');
      assert.notEqual(seen.last, seen.first, 'KUBECONFIG holds a fresh token');
      assert.equal(seen.status, 200, 'the cluster accepted it');
    });

    test('lease extend - a fresh kubeconfig replaces --kubeconfig-file (mode 0600), or follows the expiry line on stdout', async () => {
      await labFree();
      const lease = await api('POST', '/lease', { max_time: 4 }, capped.url);
      try {
        assert.equal(lease.status, 200);
        const first = tokenIn(Buffer.from(lease.body.kubeconfig, 'base64').toString('utf8'));
        const kubeconfigFile = join(cappedFolder, 'extended.kubeconfig');
        await writeFile(kubeconfigFile, 'stale', { mode: 0o644 });
        const written = await cli(['lease', 'extend', lease.body.token, '--duration', '5', '--kubeconfig-file', kubeconfigFile], cappedEnv());
        assert.equal(written.code, 0, written.stderr);
        assert.match(written.stdout, /^expires at \S+ \(in \d+s\)\n$/);
        assert.equal((await stat(kubeconfigFile)).mode & 0o777, 0o600);
        const fromFile = tokenIn(await readFile(kubeconfigFile, 'utf8'));
        assert.notEqual(fromFile, first);
        assert.equal(apiserver.isTokenValid(fromFile), true);

        const printed = await cli(['lease', 'extend', lease.body.token, '--duration', '6'], cappedEnv());
        assert.equal(printed.code, 0, printed.stderr);
        const [expiryLine, ...kubeconfigLines] = printed.stdout.split('\n');
        assert.match(expiryLine ?? '', /^expires at \S+ \(in \d+s\)$/);
        const fromStdout = tokenIn(kubeconfigLines.join('\n'));
        assert.notEqual(fromStdout, fromFile);
        assert.equal(apiserver.isTokenValid(fromStdout), true);
        assert.equal(parseYaml(kubeconfigLines.join('\n')).kind, 'Config');
      } finally {
        await api('DELETE', `/lease/${lease.body.token}`, undefined, capped.url);
      }
    });

    test("run - at MAX_LEASE_SECONDS the lease is extended as far as it may go, then the command's whole group is stopped before it ends: exit 124", async () => {
      await labFree();
      const pidFile = join(cappedFolder, 'at-maximum.pid');
      // The script and its child ignore SIGTERM: only the SIGKILL after the grace ends them.
      const { result } = startCli(['run', '--duration', '6', '--', 'sh', '-c', `trap '' TERM; sleep 60 & echo $! > '${pidFile}'; wait`], cappedEnv());
      const backgroundPid = Number(await writtenTo(pidFile));
      const leased = await waitFor('the lease', async () => {
        const cluster = await lab();
        return cluster.state === 'leased' ? cluster : undefined;
      });
      const { code, stderr } = await result;
      const exitedAt = Date.now();
      const stateAfter = (await lab()).state;
      assert.equal(code, 124, stderr);
      const [line = '', ...more] = betweenLeaseLines(stderr);
      assert.deepEqual(more, [], stderr);
      const said = /^k8s-claimer: the lease ends at (\S+) and cannot be extended \(it has reached the claimer's MAX_LEASE_SECONDS\); stopped the command$/.exec(line);
      assert.ok(said, stderr);
      // Granted for 6 s, extended at 2 s: by 6 s would pass the 8 s maximum, so by what is left.
      const lasts = Date.parse(said[1]!) - Date.parse(leased.started_at!);
      assert.ok(lasts >= 7000 && lasts <= 8000, `the lease lasts ${lasts} ms`);
      assert.ok(exitedAt < Date.parse(said[1]!), 'the CLI was done before the lease ended');
      assert.notEqual(stateAfter, 'leased', 'the lease was released');
      await assertEnds(backgroundPid, 'the background child, which ignored SIGTERM');
    });
  });
});

describe('CLI core, in process', () => {
  /** main() with captured output; usage errors never reach a server, so none is needed. */
  async function runMain(args: string[], env: Record<string, string | undefined> = { K8S_CLAIMER_URL: 'http://127.0.0.1:9', AUTH_TOKEN: 'secret-shared-token' }) {
    let stdout = '';
    let stderr = '';
    const signals = new EventEmitter();
    const code = await main(args, env, { stdout: { write: (text: string) => (stdout += text) }, stderr: { write: (text: string) => (stderr += text) }, signals });
    return { code, stdout, stderr };
  }

  test('usage errors - exit 2 (125 for run), the problem on the first line of stderr, then the usage', async () => {
    const cases: { args: string[]; env?: Record<string, string | undefined>; message: RegExp; code?: number }[] = [
      { args: ['lease', 'create', '--duration', '1h30'], message: /is not a duration/ },
      { args: ['lease', 'create', '--duration', '0'], message: /at least 1 second/ },
      { args: ['lease', 'create'], message: /--duration is required/ },
      { args: ['lease', 'create', '--duration', '30m', '--wait', '2h'], message: /--wait can be at most 1h/ },
      { args: ['lease', 'create', '--duration', '30m', '--bogus'], message: /unknown option --bogus/ },
      { args: ['lease', 'create', '--duration', '30m', '--bogus=secret'], message: /^k8s-claimer: unknown option --bogus\n/ },
      { args: ['lease', 'create', '--duration', '30m', '--label', 'novalue'], message: /must be KEY=VALUE/ },
      { args: ['lease', 'create', '--duration', '30m', '--env-prefix', '1X'], message: /--env-prefix must be/ },
      { args: ['lease', 'create', '--duration'], message: /--duration/ },
      { args: ['lease', 'list'], env: { K8S_CLAIMER_URL: 'http://127.0.0.1:9' }, message: /AUTH_TOKEN is not set/ },
      { args: ['lease', 'list'], env: { K8S_CLAIMER_URL: 'ftp://x', AUTH_TOKEN: 't' }, message: /http:\/\/ or https:\/\// },
      { args: ['--server', 'http://user:pw@127.0.0.1:9', 'lease', 'list'], env: { AUTH_TOKEN: 't' }, message: /must not contain a user name or password/ },
      { args: ['lease', 'delete', 'not-a-token'], message: /TOKEN must be a lease token/ },
      { args: ['lease', 'extend', '0b8f6f1c-4a8b-4f7e-9a51-2d7c0c6a9e11'], message: /--duration is required/ },
      { args: ['lease', 'extend', '0b8f6f1c-4a8b-4f7e-9a51-2d7c0c6a9e11', '--duration', '1m', '--kubeconfig-file', ''], message: /--kubeconfig-file needs a path/ },
      { args: ['lease', 'list'], env: { K8S_CLAIMER_URL: 'http://127.0.0.1:9', AUTH_TOKEN: 'secret-shared-token', AUTH_TOKEN_FILE: '/nowhere' }, message: /not both/ },
      { args: ['lease'], message: /lease needs a command/ },
      { args: ['lease', 'grab'], message: /unknown command 'lease grab'/ },
      { args: [], message: /no command given/ },
      { args: ['--verbose', 'lease', 'list'], message: /unknown option --verbose/ },
      // run leaves every code but 125 to its command, as docker run does: its usage errors are 125.
      { args: ['run', '--duration', '1m', 'true'], message: /unexpected argument 'true'/, code: 125 },
      { args: ['run', '--duration', '1m', '--'], message: /run needs a command/, code: 125 },
      { args: ['run', '--duration', '1m', '--', 'true'], env: { K8S_CLAIMER_URL: 'http://127.0.0.1:9' }, message: /AUTH_TOKEN is not set/, code: 125 },
      { args: ['--server', 'ftp://x', 'run', '--duration', '1m', '--', 'true'], message: /http:\/\/ or https:\/\//, code: 125 },
    ];
    for (const { args, env, message, code = 2 } of cases) {
      const result = await runMain(args, env);
      assert.equal(result.code, code, `${args.join(' ')}: ${result.stderr}`);
      assert.match(result.stderr, message, args.join(' '));
      assert.match(result.stderr, /^k8s-claimer: [^\n]+\n\nUsage: k8s-claimer /, args.join(' '));
      assert.equal(result.stdout, '');
      assert.equal(/secret/.test(result.stderr), false, 'nothing secret is echoed');
    }
  });

  test('--server before or after the command; every --help exits 0 on stdout', async () => {
    for (const args of [['--help'], ['help'], ['lease', '--help'], ['lease', 'create', '--help'], ['lease', 'delete', '-h'], ['lease', 'extend', '--help'], ['lease', 'list', '--help'], ['run', '--help']]) {
      const result = await runMain(args, {});
      assert.equal(result.code, 0, args.join(' '));
      assert.match(result.stdout, /^Usage: k8s-claimer /, args.join(' '));
      assert.equal(result.stderr, '');
    }
    // Port 9 (discard) refuses: a network error is exit 1 with the server's origin, not a usage error.
    for (const args of [['--server', 'http://127.0.0.1:9', 'lease', 'list'], ['lease', 'list', '--server=http://127.0.0.1:9']]) {
      const result = await runMain(args, { AUTH_TOKEN: 'secret-shared-token' });
      assert.equal(result.code, 1, result.stderr);
      assert.match(result.stderr, /^k8s-claimer: could not list the pool: cannot reach the claimer at http:\/\/127\.0\.0\.1:9: .*\n$/);
    }
  });

  test('durations - seconds or h/m/s units; anything else is refused', () => {
    const cases: [string, number | undefined][] = [
      ['90', 90],
      ['30s', 30],
      ['30m', 1800],
      ['2h', 7200],
      ['1h30m', 5400],
      ['1h0m5s', 3605],
      ['', undefined],
      ['1.5h', undefined],
      ['-5', undefined],
      ['5 m', undefined],
      ['30m1h', undefined],
      ['1d', undefined],
      ['h', undefined],
    ];
    for (const [text, seconds] of cases) assert.equal(parseDuration(text), seconds, JSON.stringify(text));
    assert.equal(formatDuration(5400), '1h30m');
    assert.equal(formatDuration(600), '10m');
    assert.equal(formatExpiry(1799), 'in 29m');
    assert.equal(formatExpiry(45), 'in 45s');
    assert.equal(formatExpiry(0), 'expired');
  });

  test('shellQuote - sh reads back exactly the value, quotes and $ included', () => {
    const value = `it's "$HOME" \`id\` \\ ; rm -rf /`;
    const echoed = spawnSync('sh', ['-c', `printf '%s' ${shellQuote(value)}`], { encoding: 'utf8' });
    assert.equal(echoed.stdout, value);
  });
});
