// npm run bench: everything measured side by side in one run against the fake kube-apiserver
// (in a process of its own) with an injected per-request latency. Prints one table.
//
//   BENCH_LATENCY_MS   apiserver latency per request (default 5)
//   BENCH_BURST        concurrent acquires in the burst, and the pool size (default 500)
//   BENCH_SECONDS      duration of the autocannon run (default 8)
//   BENCH_WAITERS      waiters in scenario (f) (default 5000)
//   BENCH_PROFILE      a folder: the claimers' CPU profiles of the measured bursts (b) and (h) are written there
//   BENCH_LOG          the log level of the bench's replicas (default silent)
//   BENCH_BIG_BURST    concurrent acquires in the sharded burst (h) (default 5000)
//   BENCH_BIG_POOL     the pool of (h) (default 10000)
//   BENCH_SHARDS       cluster shards provisioned for (h) (LEASE_SHARDS, default 64)
//   BENCH_HOUR_MS      one simulated hour of scenario (j), in ms (default 1500)
//   BENCH_ONLY         run only some scenarios, e.g. `a,b` (default: a,b,c,d,e,f,h,i,j)

import { fork, spawn, type ChildProcess } from 'node:child_process';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { Session } from 'node:inspector';
import { createServer } from 'node:net';
import { cpus } from 'node:os';
import { join } from 'node:path';
import autocannon from 'autocannon';
import { serve } from 'srvx';
import { createApp } from '../app.ts';
import { loadConfig } from '../services/config.ts';
import { createLogger } from '../services/logger.ts';
import { buildServices } from '../services/wiring.ts';
import { makeCluster, startFakeGke } from '../test/fakes/gke.ts';
import { tempDir, writePool, poolOf } from '../test/support/harness.ts';
import { managedDay } from './managed-day.ts';
import { waiterFigures } from './waiters.ts';
import { writeKubeconfig } from '../test/support/kube.ts';

const LATENCY_MS = Number(process.env.BENCH_LATENCY_MS ?? 5);
const BURST = Number(process.env.BENCH_BURST ?? 500);
const CANNON_SECONDS = Number(process.env.BENCH_SECONDS ?? 8);
const WAITERS = Number(process.env.BENCH_WAITERS ?? 5000);
const PROFILE = process.env.BENCH_PROFILE;
const BIG_BURST = Number(process.env.BENCH_BIG_BURST ?? 5000);
const BIG_POOL = Number(process.env.BENCH_BIG_POOL ?? 10000);
const SHARDS = Number(process.env.BENCH_SHARDS ?? 64);
const ONLY = new Set((process.env.BENCH_ONLY ?? 'a,b,c,d,e,f,h,i,j').split(','));
const TOKEN = 'bench-token';
const NAMESPACE = 'k8s-claimer';
const SERVICE = 'k8s-claimer';

interface Row {
  scenario: string;
  metric: string;
  value: string;
  target?: string;
}
const rows: Row[] = [];
const record = (scenario: string, metric: string, value: string | number, target?: string) =>
  rows.push({ scenario, metric, value: String(value), target });

// ---- the fake apiserver in its own process -------------------------------------------------

interface Apiserver {
  url: string;
  call<T>(message: Record<string, unknown>): Promise<T>;
  stop(): void;
}

async function startApiserver(): Promise<Apiserver> {
  const child = fork('bench/apiserver-process.ts', [], { execArgv: ['--import', 'tsx', ...(process.env.BENCH_PROFILE_APISERVER ? ['--cpu-prof', '--cpu-prof-dir=/tmp/prof2'] : [])], stdio: 'inherit' });
  const waiting = new Map<number, (result: unknown) => void>();
  let nextId = 1;
  child.on('message', (message: { id: number; result: unknown }) => {
    waiting.get(message.id)?.(message.result);
    waiting.delete(message.id);
  });
  const { url } = await new Promise<{ url: string }>((resolve) => waiting.set(0, resolve as (result: unknown) => void));
  return {
    url,
    call<T>(message: Record<string, unknown>) {
      const id = nextId++;
      return new Promise<T>((resolve) => {
        waiting.set(id, resolve as (result: unknown) => void);
        child.send({ ...message, id });
      });
    },
    stop: () => child.disconnect(),
  };
}

// ---- claimer replicas in this process ------------------------------------------------------

interface Replica {
  url: string;
  services: Awaited<ReturnType<typeof buildServices>>;
  close(): Promise<void>;
}

/** When the first POST reached any replica and when the last answer left: the claimers' own span. */
const serverSpan = {
  first: Number.POSITIVE_INFINITY,
  lastArrival: 0,
  last: 0,
  reset() {
    this.first = Number.POSITIVE_INFINITY;
    this.lastArrival = 0;
    this.last = 0;
  },
};

async function startReplicas(count: number, folder: string, kubeconfig: string, poolSize: number, batch: boolean, env: Record<string, string> = {}): Promise<Replica[]> {
  const poolFile = await writePool(folder, poolOf(poolSize));
  const replicas: Replica[] = [];
  for (let index = 0; index < count; index++) {
    const config = loadConfig(
      { AUTH_TOKEN: TOKEN, STATIC_POOL_FILE: poolFile, LEASE_STORE: 'kubernetes', KUBECONFIG: kubeconfig, LOG_LEVEL: 'silent', REPLICA_NAME: `bench-${index}`, ...env },
      { staticPoolFile: poolFile },
    );
    const services = await buildServices(config, createLogger(process.env.BENCH_LOG ?? 'silent'), { authToken: TOKEN, writePath: { batch } });
    // As main.ts does at start-up: a running replica has read the table once.
    await services.writePath.warmUp();
    const app = createApp(services.deps);
    const server = serve({
      port: 0,
      hostname: '127.0.0.1',
      silent: true,
      gracefulShutdown: false,
      async fetch(request) {
        if (request.method !== 'POST') return app.fetch(request);
        serverSpan.first = Math.min(serverSpan.first, performance.now());
        serverSpan.lastArrival = Math.max(serverSpan.lastArrival, performance.now());
        const response = await app.fetch(request);
        serverSpan.last = Math.max(serverSpan.last, performance.now());
        return response;
      },
    });
    await server.ready();
    replicas.push({
      url: String(server.url).replace(/\/$/, ''),
      services,
      async close() {
        await server.close(true);
        await services.close();
      },
    });
  }
  return replicas;
}

async function call(url: string, method: string, path: string, body?: unknown) {
  const response = await fetch(`${url}${path}`, {
    method,
    headers: { authorization: `Bearer ${TOKEN}` },
    ...(body !== undefined && { body: JSON.stringify(body) }),
  });
  return { status: response.status, body: await response.json() };
}

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

const ms = (value: number) => `${value.toFixed(1)} ms`;

// ---- (a) one client, acquire then release ----------------------------------------------------

async function sequential(api: Apiserver, folder: string, kubeconfig: string) {
  await api.call({ command: 'seed', namespace: NAMESPACE, name: SERVICE });
  const [replica] = await startReplicas(1, folder, kubeconfig, 10, true);
  const acquires: number[] = [];
  const releases: number[] = [];
  for (let round = 0; round < 200; round++) {
    const started = performance.now();
    const lease = await call(replica.url, 'POST', '/lease', { max_time: 600 });
    const acquired = performance.now();
    await call(replica.url, 'DELETE', `/lease/${lease.body.token}`);
    acquires.push(acquired - started);
    releases.push(performance.now() - acquired);
  }
  const counts = await api.call<{ requests: number; writes: number }>({ command: 'counts' });
  await replica.close();
  const scenario = '(a) 1 client, acquire+release x200';
  record(scenario, 'acquire p50 / p99', `${ms(percentile(acquires, 50))} / ${ms(percentile(acquires, 99))}`);
  record(scenario, 'release p50 / p99', `${ms(percentile(releases, 50))} / ${ms(percentile(releases, 99))}`);
  record(scenario, 'API requests per lease (acquire+release)', (counts.requests / 200).toFixed(2));
  record(scenario, 'API writes per acquire', (counts.writes / 2 / 200).toFixed(2), '1');
}

// ---- (b)/(c) burst across three replicas -----------------------------------------------------

interface BurstOptions {
  count?: number;
  pool?: number;
  /** Shard objects provisioned (LEASE_SHARDS); the table grows into them as the pool needs. */
  shards?: number;
}

/** Every cluster record in the lease objects, by object. */
async function leaseRecords(api: Apiserver) {
  const objects = await api.call<Array<{ name: string; annotations: Record<string, string> }>>({ command: 'records', namespace: NAMESPACE, name: SERVICE });
  return objects.map(({ name, annotations }) => ({
    name,
    bytes: Object.entries(annotations).reduce((sum, [key, value]) => sum + Buffer.byteLength(key) + Buffer.byteLength(value), 0),
    clusters: Object.entries(annotations)
      .filter(([key]) => key.startsWith('lease.k8s-claimer.io/c-'))
      .map(([, value]) => JSON.parse(value) as { cluster: string; state: string }),
  }));
}

/** The layout record on the lease Service, if any. */
async function layoutOf(api: Apiserver): Promise<{ shards: number; tickets: number; from?: number } | undefined> {
  const [service] = await api.call<Array<{ annotations: Record<string, string> }>>({ command: 'records', namespace: NAMESPACE, name: SERVICE });
  const text = service?.annotations['lease.k8s-claimer.io/layout'];
  return text ? JSON.parse(text) : undefined;
}

async function burst(api: Apiserver, folder: string, kubeconfig: string, batch: boolean, options: BurstOptions = {}) {
  const count = options.count ?? BURST;
  const shards = options.shards ?? 1;
  await api.call({ command: 'seed', namespace: NAMESPACE, name: SERVICE, shards });
  const replicas = await startReplicas(3, folder, kubeconfig, options.pool ?? count, batch, shards > 1 ? { LEASE_SHARDS: String(shards) } : {});
  // A deployment that has run for a moment: its table has the shards its pool needs.
  if (shards > 1) {
    for (const deadline = performance.now() + 60_000; performance.now() < deadline; ) {
      const layout = await layoutOf(api);
      if (layout && layout.shards > 1 && layout.from === undefined) break;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    for (const replica of replicas) await replica.services.writePath.warmUp();
  }
  const before = await api.call<{ requests: number; writes: number }>({ command: 'counts' });
  serverSpan.reset();
  const profiler = PROFILE && batch && (shards === 1 ? count === BURST : true) ? await startProfiler() : undefined;
  const { wall, statuses, clusters, reasons } = await burstFromAnotherProcess(replicas.map((replica) => replica.url), count);
  await profiler?.stop(join(PROFILE as string, `burst-${Date.now()}.cpuprofile`));
  const span = serverSpan.last - serverSpan.first;
  const arrivals = serverSpan.lastArrival - serverSpan.first;
  const after = await api.call<{ requests: number; writes: number }>({ command: 'counts' });
  const objects = await leaseRecords(api);
  const decisions = replicas.reduce((sum, replica) => sum + replica.services.writePath.decisionsApplied, 0);
  for (const replica of replicas) await replica.close();

  const perCluster = new Map<string, number>();
  for (const cluster of clusters) perCluster.set(cluster, (perCluster.get(cluster) ?? 0) + 1);
  const records = objects.flatMap((object) => object.clusters);
  const leased = new Set(records.filter((record) => record.state === 'leased').map((record) => record.cluster));
  // A double lease shows as a cluster granted twice, a cluster with two records, or fewer leased records than grants.
  const doubles =
    [...perCluster.values()].filter((times) => times > 1).length +
    (records.length - new Set(records.map((record) => record.cluster)).size) +
    Math.max(0, clusters.length - leased.size);
  const used = objects.filter((object) => object.clusters.length > 0);
  return {
    wall,
    span,
    arrivals,
    granted: clusters.length,
    doubles,
    errors: statuses.filter((status) => status >= 500).length,
    writes: after.writes - before.writes,
    requests: after.requests - before.requests,
    objects: used.length,
    decisions,
    reasons,
    fullest: Math.max(...used.map((object) => object.bytes)) / (256 * 1024),
  };
}

// ---- (i) waiters over HTTP, their tickets in ticket shards --------------------------------

async function waitersOverHttp(api: Apiserver, folder: string, kubeconfig: string, count: number, poolSize: number) {
  const tickets = Math.ceil(count / 600) + 1;
  await api.call({ command: 'seed', namespace: NAMESPACE, name: SERVICE, tickets });
  const env = { LEASE_TICKET_SHARDS: String(tickets), WAIT_MAX_TOTAL: String(count), WAIT_MAX_PER_PRINCIPAL: String(count) };
  const replicas = await startReplicas(3, folder, kubeconfig, poolSize, true, env);
  for (const deadline = performance.now() + 60_000; performance.now() < deadline && (await layoutOf(api))?.tickets !== tickets; ) {
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  for (const replica of replicas) await replica.services.writePath.warmUp();
  // Every cluster is leased when the waiters come.
  const held = await Promise.all(Array.from({ length: poolSize }, () => call(replicas[0].url, 'POST', '/lease', { max_time: 600 })));
  const child = spawn(process.execPath, ['--import', 'tsx', 'bench/waiter-client.ts', TOKEN, String(count), '100', ...replicas.map((replica) => replica.url)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const lines: Array<Record<string, unknown>> = [];
  let pending = '';
  let lineArrived: () => void = () => undefined;
  child.stdout?.on('data', (chunk: Buffer) => {
    pending += chunk.toString();
    for (let end = pending.indexOf('\n'); end >= 0; end = pending.indexOf('\n')) {
      lines.push(JSON.parse(pending.slice(0, end)));
      pending = pending.slice(end + 1);
      lineArrived();
    }
  });
  const nextLine = async (index: number) => {
    while (lines.length <= index) await new Promise<void>((resolve) => (lineArrived = resolve));
    return lines[index];
  };
  const queued = (await nextLine(0)) as { enqueueMs: number };
  const objects = await leaseRecords(api);
  const ticketObjects = objects.filter((object) => object.name.includes('-tickets-') && object.bytes > 0);
  const before = await api.call<{ writes: number }>({ command: 'counts' });
  const serving = performance.now();
  await Promise.all(held.map((lease) => call(replicas[1].url, 'DELETE', `/lease/${lease.body.token}`)));
  const served = (await nextLine(1)) as { served: number; grantedRounds: number[]; grants: Array<{ round: number; grantedAt: number }>; errors: number; failures: number };
  const serveMs = performance.now() - serving;
  const after = await api.call<{ writes: number }>({ command: 'counts' });
  for (const replica of replicas) await replica.close();
  // A job granted while one of a round before the last still waited was served out of order:
  // by when the answers came, and by when the claimer decided the grants.
  const outOfOrderIn = (rounds: readonly number[]) => {
    let count = 0;
    let latest = 0;
    let worst = 0;
    for (const round of rounds) {
      if (round < latest - 1) count += 1;
      worst = Math.max(worst, latest - round);
      latest = Math.max(latest, round);
    }
    return { count, worst };
  };
  const outOfOrder = outOfOrderIn(served.grantedRounds).count;
  const decided = outOfOrderIn([...served.grants].sort((a, b) => a.grantedAt - b.grantedAt).map((grant) => grant.round));
  const decidedOutOfOrder = decided.count;
  const worstRoundsLate = decided.worst;
  return {
    served: served.served,
    errors: served.errors,
    failures: served.failures,
    outOfOrder,
    decidedOutOfOrder,
    worstRoundsLate,
    enqueueMs: queued.enqueueMs,
    serveMs,
    writes: after.writes - before.writes - poolSize,
    ticketObjects: ticketObjects.length,
    fullestTickets: Math.max(0, ...ticketObjects.map((object) => object.bytes)) / (256 * 1024),
  };
}

/** The V8 profiler of this process (the claimer replicas), for one measured section. */
async function startProfiler() {
  const session = new Session();
  session.connect();
  const post = (method: string, params?: object) =>
    new Promise<unknown>((resolve, reject) => session.post(method, params, (error, result) => (error ? reject(error) : resolve(result))));
  await post('Profiler.enable');
  await post('Profiler.start');
  return {
    async stop(file: string) {
      const { profile } = (await post('Profiler.stop')) as { profile: unknown };
      await mkdir(PROFILE as string, { recursive: true });
      await writeFile(file, JSON.stringify(profile));
      session.disconnect();
    },
  };
}

async function burstFromAnotherProcess(urls: string[], count: number): Promise<{ wall: number; statuses: number[]; clusters: string[]; reasons: Record<string, number> }> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'bench/burst-client.ts', TOKEN, String(count), ...urls], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let output = '';
  child.stdout?.on('data', (chunk: Buffer) => {
    output += chunk.toString();
  });
  await new Promise((resolve) => child.once('exit', resolve));
  return JSON.parse(output);
}

// ---- (d) HTTP layer with the file store, (e) memory and start-up --------------------------

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

async function rssOf(pid: number): Promise<{ rss: number; peak: number }> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const field = (name: string) => Number(/\s(\d+) kB/.exec(status.split('\n').find((line) => line.startsWith(name)) ?? '')?.[1] ?? 0) / 1024;
  return { rss: field('VmRSS:'), peak: field('VmHWM:') };
}

async function startServerProcess(env: Record<string, string>) {
  const port = await freePort();
  const started = performance.now();
  const child: ChildProcess = spawn(process.execPath, ['--import', 'tsx', 'main.ts'], {
    env: { PATH: process.env.PATH ?? '', AUTH_TOKEN: TOKEN, BIND_HOST: '127.0.0.1', BIND_PORT: String(port), LOG_LEVEL: 'warn', ...env },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const url = `http://127.0.0.1:${port}`;
  for (;;) {
    try {
      if ((await fetch(`${url}/healthz`)).ok) break;
    } catch {
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  }
  const startup = performance.now() - started;
  while ((await fetch(`${url}/readyz`)).status !== 200) await new Promise((resolve) => setTimeout(resolve, 10));
  const ready = performance.now() - started;
  await new Promise((resolve) => setTimeout(resolve, 500));
  const idle = await rssOf(child.pid as number);
  return {
    url,
    startup,
    ready,
    idleRss: idle.rss,
    peak: async () => (await rssOf(child.pid as number)).peak,
    stop: () => new Promise((resolve) => child.once('exit', resolve).kill('SIGTERM')),
  };
}

async function cannon(url: string): Promise<{ pairs: number; non2xx: number; p99: number }> {
  const headers = { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' };
  const result = await autocannon({
    url,
    connections: 32,
    duration: CANNON_SECONDS,
    requests: [
      {
        method: 'POST',
        path: '/lease',
        headers,
        body: JSON.stringify({ max_time: 600 }),
        onResponse: (status: number, body: string, context: object) => {
          if (status === 200) (context as { token?: string }).token = JSON.parse(body).token;
        },
      },
      {
        method: 'DELETE',
        headers,
        setupRequest: (request, context) => ({ ...request, path: `/lease/${(context as { token?: string }).token}` }),
      },
    ],
  });
  return { pairs: result['2xx'] / 2 / CANNON_SECONDS, non2xx: result.non2xx, p99: result.latency.p99 };
}

/** The bare srvx server (bench/bare-srvx.ts) in a process of its own. */
async function startBareSrvx(): Promise<{ url: string; stop(): Promise<unknown> }> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'bench/bare-srvx.ts'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const url = await new Promise<string>((resolve) => child.stdout?.once('data', (chunk: Buffer) => resolve(chunk.toString().trim().replace(/\/$/, ''))));
  return { url, stop: () => new Promise((resolve) => child.once('exit', resolve).kill('SIGTERM')) };
}

async function httpAndMemory(folder: string, api: Apiserver, kubeconfig: string) {
  const pool = await writePool(folder, poolOf(64, 'cannon'));
  const local = await startServerProcess({ STATIC_POOL_FILE: pool, LEASE_STORE_FILE: join(folder, 'cannon-leases.json') });
  const cannonResult = await cannon(local.url);
  const localPeak = await local.peak();
  await local.stop();
  const scenario = '(d) HTTP layer, file store, autocannon 32 conns';
  record(scenario, 'acquire+release pairs/s', cannonResult.pairs.toFixed(0));
  record(scenario, 'latency p99 / non-2xx', `${cannonResult.p99} ms / ${cannonResult.non2xx}`);

  // The same load on the in-memory store, and on a bare srvx server that only answers.
  const memory = await startServerProcess({ STATIC_POOL_FILE: pool, LEASE_STORE: 'memory' });
  const memoryResult = await cannon(memory.url);
  await memory.stop();
  const bare = await startBareSrvx();
  const bareResult = await cannon(bare.url);
  await bare.stop();
  record('(d) HTTP layer, in-memory store, autocannon 32 conns', 'acquire+release pairs/s', memoryResult.pairs.toFixed(0));
  record('(d) HTTP layer, in-memory store, autocannon 32 conns', 'latency p99 / non-2xx', `${memoryResult.p99} ms / ${memoryResult.non2xx}`);
  record('(g) bare srvx answering a JSON body, driven like (d)', 'request pairs/s', bareResult.pairs.toFixed(0));
  record('(d)/(g)', 'claimer (in-memory store) / bare srvx', (memoryResult.pairs / bareResult.pairs).toFixed(2), '>= 0.50');

  const gke = await startFakeGke({
    clusters: Array.from({ length: 50 }, (_, index) => makeCluster({ project: 'bench', location: 'us-central1-a', name: `c${index}` })),
  });
  await api.call({ command: 'seed', namespace: NAMESPACE, name: SERVICE });
  const gkeServer = await startServerProcess({ GOOGLE_CLOUD_PROJECT_ID: 'bench', GKE_EMULATOR_HOST: gke.address, KUBECONFIG: kubeconfig, LEASE_CREDENTIALS: 'google-token', CLEANUP: 'none' });
  for (let round = 0; round < 100; round++) {
    const lease = await call(gkeServer.url, 'POST', '/lease', { max_time: 600 });
    await call(gkeServer.url, 'DELETE', `/lease/${lease.body.token}`);
  }
  const gkePeak = await gkeServer.peak();
  await gkeServer.stop();
  await gke.close();

  record('(e) memory and start-up', 'local mode: start to /healthz / to /readyz', `${ms(local.startup)} / ${ms(local.ready)}`, '<= 1500 ms');
  record('(e) memory and start-up', 'local mode: idle RSS / peak RSS under (d)', `${local.idleRss.toFixed(0)} MB / ${localPeak.toFixed(0)} MB`, 'idle <= 120 MB');
  record('(e) memory and start-up', 'GKE mode: start to /healthz / to /readyz', `${ms(gkeServer.startup)} / ${ms(gkeServer.ready)}`, '<= 1500 ms (healthz)');
  record('(e) memory and start-up', 'GKE mode: idle RSS / peak RSS after 100 leases', `${gkeServer.idleRss.toFixed(0)} MB / ${gkePeak.toFixed(0)} MB`);
}

// ---- run everything and print one table ----------------------------------------------------

const folder = await tempDir();
const api = await startApiserver();
try {
  await api.call({ command: 'latency', ms: LATENCY_MS });
  const kubeconfig = await writeKubeconfig(folder, api.url);
  if (ONLY.has('a')) await sequential(api, folder, kubeconfig);

  // Warm-up, not measured: a server that has run for a while has its code compiled.
  if (ONLY.has('b') || ONLY.has('c')) await burst(api, folder, kubeconfig, true, { count: 200 });
  const batched = ONLY.has('b') ? await burst(api, folder, kubeconfig, true) : undefined;
  const plain = ONLY.has('c') ? await burst(api, folder, kubeconfig, false) : undefined;
  for (const [scenario, result] of [
    [`(b) burst ${BURST} acquires, ${BURST} clusters, 3 replicas, group commit`, batched],
    [`(c) same burst, plain retry-on-conflict`, plain],
  ] as const) {
    if (!result) continue;
    record(scenario, 'wall time (client side: first connect to last answer)', ms(result.wall), scenario.startsWith('(b)') ? '<= 1000 ms' : undefined);
    record(scenario, 'server span (first request in to last answer out)', ms(result.span));
    record(scenario, 'of which requests still arriving (first in to last in)', ms(result.arrivals));
    record(scenario, 'leases granted / double leases / 5xx', `${result.granted} / ${result.doubles} / ${result.errors}${result.errors ? ` (${JSON.stringify(result.reasons)})` : ''}`, scenario.startsWith('(b)') ? `${BURST} / 0 / 0` : undefined);
    record(scenario, 'API writes / API requests', `${result.writes} / ${result.requests}`);
  }
  if (batched && plain) {
    const grantRate = (result: typeof batched) => result.granted / result.wall;
    record('(b)/(c)', 'speed-up: wall time (c) / (b)', `${(plain.wall / batched.wall).toFixed(1)}x`, '>= 10x');
    record('(b)/(c)', 'speed-up: grants per second (b) / (c)', `${(grantRate(batched) / grantRate(plain)).toFixed(1)}x`);
  }
  if (ONLY.has('h')) {
    const big = await burst(api, folder, kubeconfig, true, { count: BIG_BURST, pool: BIG_POOL, shards: SHARDS });
    const scenario = `(h) burst ${BIG_BURST} acquires, ${BIG_POOL} clusters, 3 replicas, sharded table`;
    record(scenario, 'wall time (client side: first connect to last answer)', ms(big.wall));
    record(scenario, 'leases granted / double leases / 5xx', `${big.granted} / ${big.doubles} / ${big.errors}${big.errors ? ` (${JSON.stringify(big.reasons)})` : ''}`, `${BIG_BURST} / 0 / 0`);
    record(scenario, 'API writes / API requests (writes per grant)', `${big.writes} / ${big.requests} (${(big.writes / Math.max(1, big.granted)).toFixed(3)})`);
    record(scenario, 'objects holding records / fullest object', `${big.objects} / ${(big.fullest * 100).toFixed(0)}% of 256 KiB`);
    record(scenario, 'grants per second / decisions applied per grant', `${(big.granted / (big.wall / 1000)).toFixed(0)} / ${(big.decisions / Math.max(1, big.granted)).toFixed(1)}`);
    if (batched) record('(b) vs (h)', 'grants per second: one object (b) / sharded (h)', `${(batched.granted / (batched.wall / 1000)).toFixed(0)} / ${(big.granted / (big.wall / 1000)).toFixed(0)}`);
  }
  if (ONLY.has('i')) {
    const waited = await waitersOverHttp(api, folder, kubeconfig, WAITERS, 100);
    const scenario = `(i) ${WAITERS} waiters, 100 clusters, 3 replicas, ticket shards: each job releases when granted`;
    record(scenario, 'served / 5xx / other failures', `${waited.served} / ${waited.errors} / ${waited.failures}`, `${WAITERS} / 0 / 0`);
    record(scenario, 'served out of arrival order (by more than the 100 served at once): by grant time / by answer', `${waited.decidedOutOfOrder} / ${waited.outOfOrder}`, '0');
    record(scenario, 'the latest grant, in rounds of 100 after a younger one', String(waited.worstRoundsLate));
    record(scenario, 'enqueue time / serve time (wall)', `${ms(waited.enqueueMs)} / ${ms(waited.serveMs)}`);
    record(scenario, 'API writes per grant (grant + release)', (waited.writes / Math.max(1, waited.served)).toFixed(2));
    record(scenario, 'ticket shards used / fullest ticket shard', `${waited.ticketObjects} / ${(waited.fullestTickets * 100).toFixed(0)}% of 256 KiB`);
  }
  if (ONLY.has('j')) {
    const { managed, fixed } = await managedDay(folder);
    const scenario = '(j) two days of CI demand: a managed GKE pool (min_ready 1, max_size 10) against a fixed pool of 10';
    // Simulated minutes, and the real milliseconds they were (the claimer's own latency reads as minutes at this scale).
    const minuteMs = Number(process.env.BENCH_HOUR_MS ?? 1_500) / 60;
    const wait = (result: typeof managed) => {
      const [p50, p95] = [percentile(result.waitsMinutes, 50), percentile(result.waitsMinutes, 95)];
      return `${p50.toFixed(1)} / ${p95.toFixed(1)} min (${(p50 * minuteMs).toFixed(0)} / ${(p95 * minuteMs).toFixed(0)} ms real)`;
    };
    record(scenario, 'jobs served / failed: managed / fixed', `${managed.served} / ${managed.failures} · ${fixed.served} / ${fixed.failures}`);
    record(scenario, 'node-hours: managed / fixed (ratio)', `${managed.nodeHours.toFixed(0)} / ${fixed.nodeHours.toFixed(0)} (${(managed.nodeHours / fixed.nodeHours).toFixed(2)})`, '<= 0.50');
    record(scenario, 'wait p50 / p95: managed', wait(managed), 'p95 <= fixed + 2 min (a wake)');
    record(scenario, 'wait p50 / p95: fixed', wait(fixed));
    record(scenario, 'most clusters at once / most operations at once (managed)', `${managed.maxClusters} / ${managed.maxConcurrent}`, '<= 10 / <= 4');
  }
  if (ONLY.has('d') || ONLY.has('e')) await httpAndMemory(folder, api, kubeconfig);
  if (ONLY.has('f')) {
    const figures = await waiterFigures(WAITERS, 100, 200);
    const scenario = `(f) ${figures.waiters} waiters, ${figures.clusters} clusters, 200 releases, one replica's queue`;
    record(scenario, 'CPU per table change (release, grant, heartbeat)', ms(figures.cpuPerTableChangeMs), '< 5 ms');
    record(scenario, 'working out the queue of one full table', ms(figures.queueMedianMs));
    record(scenario, 'release to grant p50 / p95', `${ms(figures.serveP50Ms)} / ${ms(figures.serveP95Ms)}`);
    record(scenario, 'decisions applied per release served', figures.decisionsPerRelease.toFixed(1));
    record(scenario, 'served / in arrival order (per filter)', `${figures.served} / ${figures.servedInOrder ? 'yes' : 'NO'}`, '200 / yes');
  }
} finally {
  api.stop();
  await rm(folder, { recursive: true, force: true });
}

const header = ['scenario', 'metric', 'value', 'target'];
const table = [header, header.map(() => '---'), ...rows.map((row) => [row.scenario, row.metric, row.value, row.target ?? ''])];
console.log(`\nk8s-claimer benchmark: ${cpus().length} cores, Node ${process.version}, apiserver latency ${LATENCY_MS} ms\n`);
console.log(table.map((cells) => `| ${cells.join(' | ')} |`).join('\n'));
await writeFile(join(process.cwd(), 'bench', 'last-run.md'), `${table.map((cells) => `| ${cells.join(' | ')} |`).join('\n')}\n`).catch(() => undefined);
process.exit(0);
