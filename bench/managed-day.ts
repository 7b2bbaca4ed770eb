// Scenario (j): a managed GKE pool through two simulated days of CI demand, against a fixed pool
// of max_size clusters under the same demand in the same run. The managed pool is the real
// server (its runner, the real @google-cloud/container client) against the fake GKE, whose
// operations take GKE's usual times scaled down as the clock is: one simulated hour is HOUR_MS.
//
//   day 1 (a weekday): one job an hour from 09:00 to 18:00, a burst of 10 jobs at 20:00 (the
//   nightly run, as many as max_size);
//   day 2 (the weekend): two jobs. Every job holds its cluster for an hour.
//
// The managed pool keeps one cluster (hibernated when idle, so a job waits for a wake), keeps it
// running through the working day (08:00), has max_size clusters made and running for the
// nightly run (19:00), and goes back to one hibernated cluster at 22:00: its schedule. Node-hours: the nodes of the
// pool's clusters while they exist and are not scaled to zero (creating ones count), sampled
// every 20 ms; the fixed pool's are its clusters' nodes for the whole time.

import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { serve } from 'srvx';
import { stringify } from 'yaml';
import { createApp } from '../app.ts';
import { loadConfig } from '../services/config.ts';
import { createLogger } from '../services/logger.ts';
import { MANAGED_LABEL } from '../services/providers/gke-operations.ts';
import { buildServices } from '../services/wiring.ts';
import { startFakeGke } from '../test/fakes/gke.ts';
import { poolOf, writePool } from '../test/support/harness.ts';

const HOUR_MS = Number(process.env.BENCH_HOUR_MS ?? 1_500);
const MINUTE_MS = HOUR_MS / 60;
const NODES = 2;
const MAX_SIZE = 10;
const TOKEN = 'bench-managed-token';
/** GKE's usual operation times: create 6 min, delete 4 min, a node pool resize 2 min. */
const DURATIONS = { create: 6 * MINUTE_MS, delete: 4 * MINUTE_MS, resize: 2 * MINUTE_MS };

/** The jobs: when each starts, in simulated hours from midnight of day 1. */
function demand(): number[] {
  const jobs: number[] = [];
  for (let hour = 9; hour <= 18; hour++) jobs.push(hour);
  for (let index = 0; index < MAX_SIZE; index++) jobs.push(20);
  jobs.push(24 + 11, 24 + 15);
  return jobs;
}
const DAYS_HOURS = 48;

/** A 6-field cron line (with seconds) firing once, at the real time `at`. */
function cronAt(at: number): string {
  const date = new Date(at);
  return `${date.getSeconds()} ${date.getMinutes()} ${date.getHours()} ${date.getDate()} ${date.getMonth() + 1} *`;
}

interface DayResult {
  waitsMinutes: number[];
  nodeHours: number;
  served: number;
  failures: number;
  maxClusters: number;
  maxConcurrent: number;
}

async function startServer(env: Record<string, string>, managed?: { intervalMs: number; claimMs: number; pollMs: number }) {
  const config = loadConfig({ AUTH_TOKEN: TOKEN, LEASE_STORE: 'memory', LOG_LEVEL: 'silent', REPLICA_NAME: 'bench-managed', CLUSTER_CACHE_SECONDS: '1', ...env }, { staticPoolFile: env.STATIC_POOL_FILE ?? '' });
  const services = await buildServices(config, createLogger(process.env.BENCH_LOG ?? 'silent'), { authToken: TOKEN, processMetrics: false, ...(managed && { managed }) });
  const app = createApp(services.deps);
  const server = serve({ port: 0, hostname: '127.0.0.1', silent: true, gracefulShutdown: false, fetch: (request) => app.fetch(request) });
  await server.ready();
  return {
    url: String(server.url).replace(/\/$/, ''),
    async close() {
      await server.close(true);
      await services.close();
    },
  };
}

/** Runs the demand against a server; each job waits for a cluster, holds it an hour, releases it. */
async function runDemand(url: string, started: number): Promise<{ waits: number[]; failures: number }> {
  const headers = { authorization: `Bearer ${TOKEN}` };
  const waits: number[] = [];
  let failures = 0;
  await Promise.all(
    demand().map(async (hour) => {
      const at = started + hour * HOUR_MS;
      await new Promise((resolve) => setTimeout(resolve, Math.max(0, at - Date.now())));
      const asked = Date.now();
      const response = await fetch(`${url}/lease`, { method: 'POST', headers, body: JSON.stringify({ max_time: Math.ceil((3 * HOUR_MS) / 1000) + 60, wait: 3600 }) });
      const body = (await response.json()) as { token?: string };
      if (response.status !== 200 || !body.token) {
        failures += 1;
        return;
      }
      waits.push((Date.now() - asked) / MINUTE_MS);
      await new Promise((resolve) => setTimeout(resolve, HOUR_MS));
      const released = await fetch(`${url}/lease/${body.token}`, { method: 'DELETE', headers });
      await released.text();
      if (released.status !== 200) failures += 1;
    }),
  );
  return { waits, failures };
}

export async function managedDay(folder: string): Promise<{ managed: DayResult; fixed: DayResult }> {
  const gke = await startFakeGke({ operationDurations: DURATIONS });
  const started = Date.now() + 2_000;
  // The fixed pool: max_size clusters, all of them running all the time; the same jobs at the same times.
  const fixedPool = await writePool(folder, poolOf(MAX_SIZE, 'fixed'));
  const fixedServer = await startServer({ STATIC_POOL_FILE: fixedPool });
  const fixedRunning = runDemand(fixedServer.url, started);
  const poolsFile = join(folder, 'managed-pools.yaml');
  await writeFile(
    poolsFile,
    stringify({
      pools: [
        {
          name: 'ci',
          provider: 'gke',
          project: 'bench',
          location: 'us-central1-a',
          endpoint: gke.address,
          credentials: 'pool',
          cleanup: 'none',
          managed: {
            template: { nodePools: [{ name: 'default-pool', initialNodeCount: NODES }] },
            min_ready: 1,
            max_size: MAX_SIZE,
            max_concurrent: 4,
            hibernate_after: Math.max(1, Math.round((40 * MINUTE_MS) / 1000)),
            running_min: 0,
            schedule: [
              { cron: cronAt(started + 8 * HOUR_MS), min_ready: 1, running_min: 1 },
              { cron: cronAt(started + 19 * HOUR_MS), min_ready: MAX_SIZE, running_min: MAX_SIZE },
              { cron: cronAt(started + 22 * HOUR_MS), min_ready: 1, running_min: 0 },
            ],
          },
        },
      ],
    }),
  );
  const server = await startServer({ POOLS_FILE: poolsFile }, { intervalMs: Math.max(20, MINUTE_MS / 2), claimMs: 2_000, pollMs: Math.max(10, MINUTE_MS / 4) });
  let nodeMs = 0;
  let maxClusters = 0;
  let last = Date.now();
  const sampler = setInterval(() => {
    const now = Date.now();
    const ours = gke.clusters.filter((cluster) => cluster.resourceLabels?.[MANAGED_LABEL] === 'ci');
    maxClusters = Math.max(maxClusters, ours.length);
    const nodes = ours.reduce((sum, cluster) => sum + (cluster.nodePools ?? []).reduce((inPool, pool) => inPool + Number(pool.initialNodeCount ?? 0), 0), 0);
    if (now > started) nodeMs += nodes * (now - Math.max(last, started));
    last = now;
  }, 20);
  const [run, fixedRun] = await Promise.all([runDemand(server.url, started), fixedRunning]);
  await fixedServer.close();
  const fixed: DayResult = { waitsMinutes: fixedRun.waits, nodeHours: MAX_SIZE * NODES * DAYS_HOURS, served: fixedRun.waits.length, failures: fixedRun.failures, maxClusters: MAX_SIZE, maxConcurrent: 0 };
  // The rest of the two days: the pool shrinks and hibernates.
  await new Promise((resolve) => setTimeout(resolve, Math.max(0, started + DAYS_HOURS * HOUR_MS - Date.now())));
  clearInterval(sampler);
  await server.close();
  await gke.close();
  return {
    fixed,
    managed: { waitsMinutes: run.waits, nodeHours: nodeMs / HOUR_MS, served: run.waits.length, failures: run.failures, maxClusters, maxConcurrent: gke.maxConcurrentOperations },
  };
}
