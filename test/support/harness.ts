// Test harness: builds the real app (real wiring, real file store, real static pool) in a
// temporary folder, with a clock the test moves by hand and logs captured in memory.

import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { stringify } from 'yaml';
import { createApp, type App } from '../../app.ts';
import { loadConfig, type Config } from '../../services/config.ts';
import { createLogger } from '../../services/logger.ts';
import type { JanitorOptions } from '../../services/janitor.ts';
import type { FileStoreOptions } from '../../services/store/file.ts';
import type { WaitingOptions } from '../../services/waiting.ts';
import { buildServices, type BuildOptions, type Services } from '../../services/wiring.ts';

export const AUTH_TOKEN = 'test-shared-token-0123456789';

export class ManualClock {
  constructor(public current = Date.parse('2026-01-01T00:00:00Z')) {}
  now(): number {
    return this.current;
  }
  advance(seconds: number): void {
    this.current += seconds * 1000;
  }
}

/** Collects every log line as parsed JSON, and the raw text for secret scans. */
export function captureLogs() {
  const lines: Record<string, unknown>[] = [];
  let raw = '';
  const stream = new Writable({
    write(chunk, _encoding, done) {
      const text = chunk.toString();
      raw += text;
      for (const line of text.split('\n').filter(Boolean)) lines.push(JSON.parse(line));
      done();
    },
  });
  return { logger: createLogger('debug', stream), lines, raw: () => raw };
}

export async function tempDir(): Promise<string> {
  return mkdtemp(join(tmpdir(), 'k8s-claimer-test-'));
}

/** Runs `run` in a new temporary folder, removed afterwards whatever happens. */
export async function withFolder(run: (folder: string) => Promise<void>): Promise<void> {
  const folder = await tempDir();
  try {
    await run(folder);
  } finally {
    await rm(folder, { recursive: true, force: true });
  }
}

export interface PoolCluster {
  name: string;
  kubeconfig?: string;
  certificate_authority_data?: string;
  gpu?: boolean;
  cluster_tag?: string;
  registry_location?: string;
  server?: string;
  location?: string;
  labels?: Record<string, string>;
  version?: string;
  token?: string;
}

export function poolOf(count: number, prefix = 'pool'): PoolCluster[] {
  return Array.from({ length: count }, (_, index) => ({
    name: `${prefix}-${index + 1}`,
    server: `https://127.1.${Math.floor((index + 1) / 250)}.${((index + 1) % 250) || 250}:6443`,
  }));
}

/**
 * A pool file. Its clusters do not exist unless a test gives real servers, so by default the
 * claimer is told not to reach into them (pool credentials, no cleanup).
 */
export async function writePool(
  folder: string,
  clusters: PoolCluster[],
  settings: Record<string, unknown> = { credentials: 'pool', cleanup: 'none' },
): Promise<string> {
  const path = join(folder, 'pool.yaml');
  await writeFile(
    path,
    stringify({ ...settings, clusters: clusters.map((cluster) => ({ server: 'https://127.9.9.9:6443', ...cluster })) }),
  );
  return path;
}

let replicas = 0;

export interface TestApp {
  app: App;
  services: Services;
  config: Config;
  clock: ManualClock;
  folder: string;
  logs: ReturnType<typeof captureLogs>;
  request(
    method: string,
    path: string,
    options?: { body?: unknown; auth?: string | null; headers?: Record<string, string>; signal?: AbortSignal },
  ): Promise<Response>;
  close(): Promise<void>;
}

export async function startTestApp(
  options: {
    clusters?: PoolCluster[];
    env?: Record<string, string>;
    clock?: ManualClock;
    folder?: string;
    waiting?: WaitingOptions;
    janitor?: Partial<JanitorOptions>;
    /** The file store's lock times (see FileStoreOptions). */
    fileStore?: FileStoreOptions;
    /** The pool file's own settings; default: pool credentials, no cleanup. */
    poolSettings?: Record<string, unknown>;
    /** How often the Kubernetes store's shard keeper looks. */
    keeperIntervalMs?: number;
    /** The managed pools' ticks, claims and polls. */
    managed?: BuildOptions['managed'];
  } = {},
): Promise<TestApp> {
  const folder = options.folder ?? (await tempDir());
  const poolFile = await writePool(folder, options.clusters ?? poolOf(3), options.poolSettings);
  const config = loadConfig(
    {
      AUTH_TOKEN,
      // A pools file names every pool itself.
      ...(!options.env?.POOLS_FILE && { STATIC_POOL_FILE: poolFile }),
      LEASE_STORE_FILE: join(folder, 'leases.json'),
      // Replicas of one test run in one process: each gets a name of its own, as pods do.
      REPLICA_NAME: `test-replica-${++replicas}`,
      ...options.env,
    },
    { staticPoolFile: poolFile },
  );
  const clock = options.clock ?? new ManualClock();
  const logs = captureLogs();
  const services = await buildServices(config, logs.logger, { authToken: AUTH_TOKEN, clock, waiting: options.waiting, janitor: options.janitor, fileStore: options.fileStore, keeperIntervalMs: options.keeperIntervalMs, managed: options.managed, processMetrics: false });
  const app = createApp(services.deps);
  return {
    app,
    services,
    config,
    clock,
    folder,
    logs,
    request(method, path, { body, auth = AUTH_TOKEN, headers = {}, signal } = {}) {
      const init: RequestInit = { method, headers: { ...headers }, ...(signal && { signal }) };
      if (auth !== null) (init.headers as Record<string, string>).authorization = auth;
      if (body !== undefined) init.body = typeof body === 'string' ? body : JSON.stringify(body);
      return app.fetch(new Request(`http://claimer.test${path}`, init));
    },
    async close() {
      await services.close();
      if (!options.folder) await rm(folder, { recursive: true, force: true });
    },
  };
}
