// Entry point: reads the environment, builds everything once, binds BIND_HOST:BIND_PORT.
// The only runtime-specific file: srvx serves the app with node:http under Node/tsx and with
// Deno.serve under Deno.

import process from 'node:process';
import { fileURLToPath } from 'node:url';
import { serve } from 'srvx';
import { createApp, startingResponse, type App } from './app.ts';
import { ConfigError, loadConfig } from './services/config.ts';
import { LocalTokenFileError, ensureLocalAuthToken } from './services/local-auth.ts';
import { processLogger } from './services/logger.ts';
import { buildServices, unwritableFiles, type Services } from './services/wiring.ts';

let config;
try {
  config = loadConfig(process.env, {
    staticPoolFile: fileURLToPath(new URL('./pool/example.yaml', import.meta.url)),
  });
} catch (error) {
  if (!(error instanceof ConfigError)) throw error;
  console.error(`k8s-claimer: ${error.message}`);
  process.exit(2);
}

// Local mode with neither a shared token nor OIDC: a generated token keeps the API closed.
const needsLocalToken = config.authToken === undefined && !config.oidc;
const unwritable = await unwritableFiles(config, { tokenFile: needsLocalToken });
if (unwritable) {
  console.error(`k8s-claimer: ${unwritable}`);
  process.exit(2);
}

// A person at a terminal reads lines; anything else (a log collector) gets JSON.
const logger = processLogger(config.logLevel, config.logFormat ?? (process.stdout.isTTY ? 'pretty' : 'json'), Boolean(process.stdout.isTTY));
if (config.oidc && config.oidc.allowedSubjects.length === 0) {
  logger.warn(
    { issuer: config.oidc.issuer },
    'AUTH_ALLOWED_SUBJECTS is not set: every subject of this issuer may lease; with a public issuer (GitHub Actions, gitlab.com) that is anyone who can run a job there',
  );
}

let authToken = config.authToken;
if (needsLocalToken) {
  const local = await ensureLocalAuthToken(config.authTokenFile).catch((error: unknown) => {
    if (!(error instanceof LocalTokenFileError)) throw error;
    logger.fatal({ file: config.authTokenFile }, error.message);
    process.exit(1);
  });
  authToken = local.token;
  if (local.warning) logger.warn({ file: config.authTokenFile }, local.warning);
  logger.warn(
    { file: config.authTokenFile },
    local.generated
      ? 'AUTH_TOKEN is not set: generated a token for local mode and wrote it to this file (mode 0600)'
      : 'AUTH_TOKEN is not set: using the local-mode token kept in this file',
  );
}

// Bind first: /healthz answers while the clients are built (the GKE and Kubernetes libraries
// take a while to load); every other route answers 503 until the claimer is ready.
let app: App | undefined;
const server = serve({
  fetch: (request) => (app ? app.fetch(request) : startingResponse(request)),
  port: config.bindPort,
  hostname: config.bindHost,
  silent: true,
  gracefulShutdown: false,
});
try {
  await server.ready();
} catch (error) {
  const code = (error as NodeJS.ErrnoException).code;
  const where = `${config.bindHost}:${config.bindPort}`;
  if (code === 'EADDRINUSE') console.error(`k8s-claimer: port ${config.bindPort} is in use (${where}): stop what listens there, or set BIND_PORT to another port`);
  else if (code === 'EACCES') console.error(`k8s-claimer: not allowed to listen on ${where}: choose a BIND_PORT above 1023, or run with the right to bind it`);
  else if (code === 'EADDRNOTAVAIL') console.error(`k8s-claimer: ${config.bindHost} is not an address of this host: set BIND_HOST to one (0.0.0.0 for all)`);
  else throw error;
  process.exit(1);
}
logger.info({ url: server.url, runtime: server.runtime, mode: config.mode, store: config.leaseStore }, 'listening');

let services: Services;
try {
  services = await buildServices(config, logger, { authToken });
} catch (error) {
  logger.fatal({ err: error }, 'could not start');
  process.exit(1);
}

// A failed first read is not fatal: the store or GKE may come up after the claimer does.
await services.writePath.warmUp().catch((error: unknown) => {
  logger.warn({ err: error }, 'the lease store or the cluster pool is not reachable yet');
});
// Tickets this replica held before a restart would refuse others a free cluster until they lapse.
void services.waiting.start();
app = createApp(services.deps);
logger.info({ url: server.url }, 'ready');

let stopping = false;
async function shutdown(signal: string): Promise<void> {
  if (stopping) return;
  stopping = true;
  logger.info({ signal }, 'shutting down: no new connections, waiters answered 503, finishing requests in flight');
  services.waiting.shutdown();
  try {
    await server.close();
    await services.close();
  } catch (error) {
    logger.error({ err: error }, 'error while shutting down');
    process.exit(1);
  }
  logger.info('stopped');
  process.exit(0);
}
process.on('SIGTERM', () => void shutdown('SIGTERM'));
process.on('SIGINT', () => void shutdown('SIGINT'));
