// The OpenAPI 3.1 description of every route, body and status. A test checks that its paths
// and methods are exactly those of the route manifest.

const error = (description: string, headers: Record<string, unknown> = {}) => ({
  description,
  ...(Object.keys(headers).length > 0 && { headers }),
  content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } },
});
const retryAfter = { 'Retry-After': { description: 'Seconds to wait before trying again', schema: { type: 'integer' } } };
const unauthorized = error('Missing or wrong Authorization', { 'WWW-Authenticate': { schema: { type: 'string', const: 'Bearer' } } });
const badToken = error('The token is not a UUID');
const noLease = error('No live lease has this token (never existed, released, or expired)');
const backend = error('The lease store, the pool or a cluster could not be reached; the cause is in the log');
const contention = error('The store stayed contended past the retry budget, the lease table is full (StoreFull), or the replica is starting or stopping', retryAfter);
const json = (schema: unknown) => ({ 'application/json': { schema } });
const tokenParameter = { name: 'token', in: 'path', required: true, schema: { type: 'string', format: 'uuid' }, description: 'The lease token' };
const providerParameter = { name: 'provider', in: 'path', required: true, schema: { type: 'string' }, description: 'Ignored: the original CLI sends it' };
const maxTime = { type: 'integer', minimum: 1, description: 'Seconds; at most MAX_LEASE_SECONDS' };

const leaseOperations = (withProvider: boolean) => {
  const parameters = withProvider ? [providerParameter, tokenParameter] : [tokenParameter];
  return {
    get: {
      summary: 'One lease',
      parameters,
      responses: { 200: { description: 'The lease', content: json({ $ref: '#/components/schemas/Lease' }) }, 400: badToken, 401: unauthorized, 409: noLease, 500: backend },
    },
    patch: {
      summary: 'Extend or shorten a lease: it ends max_time seconds from now',
      parameters,
      requestBody: { required: true, content: json({ type: 'object', required: ['max_time'], properties: { max_time: maxTime } }) },
      responses: {
        200: { description: 'The lease; with a fresh base64 kubeconfig when its token would have died first', content: json({ $ref: '#/components/schemas/Lease' }) },
        400: error('A bad body, or an end beyond MAX_LEASE_SECONDS after the lease began (then max_time_left says how far it can go)'),
        401: unauthorized,
        409: noLease,
        500: backend,
        503: contention,
      },
    },
    delete: {
      summary: 'Release a lease: the cluster is free (or cleaned, then free) at once',
      parameters,
      responses: {
        200: { description: 'Released', content: json({ type: 'object', properties: { released: { const: true } } }) },
        400: badToken,
        401: unauthorized,
        409: noLease,
        500: backend,
        503: contention,
      },
    },
  };
};

export const openApiDocument = {
  openapi: '3.1.0',
  info: {
    title: 'k8s-claimer',
    version: '1',
    description: 'Leases whole Kubernetes clusters from a pool to CI jobs. Every /lease, /leases and /cleanup route needs the shared token, raw or as Bearer.',
  },
  components: {
    securitySchemes: { sharedToken: { type: 'http', scheme: 'bearer' } },
    schemas: {
      Error: {
        type: 'object',
        required: ['error'],
        properties: {
          error: { type: 'string' },
          fields: { type: 'array', items: { type: 'string' }, description: 'What is wrong (400)' },
          max_time_left: {
            type: 'integer',
            minimum: 0,
            description: 'PATCH beyond MAX_LEASE_SECONDS (400): the largest max_time that would be accepted now, in whole seconds (0: none)',
          },
          reason: { type: 'string', enum: ['NoMatchingCluster', 'AllLeased', 'LeaseNotFound', 'Contention', 'ShuttingDown', 'NoSuchCluster', 'WrongClusterState', 'TooManyWaiters', 'StoreFull'] },
          request_id: { type: 'string' },
        },
      },
      Cluster: {
        type: 'object',
        properties: {
          id: { type: 'string' },
          pool: { type: 'string' },
          name: { type: 'string' },
          location: { type: 'string' },
          version: { type: 'string' },
          labels: { type: 'object', additionalProperties: { type: 'string' } },
          state: { type: 'string', enum: ['free', 'leased', 'dirty', 'cleaning', 'quarantined', 'unavailable', 'unknown'] },
          status: { type: 'string' },
          idle_since: { type: 'string', format: 'date-time' },
          started_at: { type: 'string', format: 'date-time' },
          expires_at: { type: 'string', format: 'date-time' },
          seconds_left: { type: 'integer' },
          note: { type: ['string', 'null'] },
          holder: { type: ['string', 'null'] },
          cleanup: {
            type: 'object',
            description: 'Of a dirty, cleaning or quarantined cluster',
            properties: {
              attempts: { type: 'integer', description: 'Failed attempts in a row' },
              last_error: { type: ['string', 'null'], description: 'Why the last attempt failed, or what the current one waits for' },
              retry_at: { type: 'string', format: 'date-time' },
            },
          },
        },
      },
      Facts: {
        type: 'object',
        properties: {
          dns: { type: ['object', 'null'], properties: { domain: { type: 'string' }, service_ip: { type: 'string' }, port: { type: 'integer' } } },
          cluster_tag: { type: 'string' },
          registry_location: { type: ['string', 'null'] },
          gpu: { type: 'boolean' },
        },
      },
      Credentials: {
        type: ['object', 'null'],
        properties: { user: { type: 'string' }, group: { type: 'string' }, expires_at: { type: 'string', format: 'date-time' } },
      },
      Lease: {
        allOf: [
          { $ref: '#/components/schemas/Cluster' },
          { $ref: '#/components/schemas/Facts' },
          {
            type: 'object',
            properties: {
              endpoint: { type: 'string' },
              server: { type: 'string' },
              credentials: { $ref: '#/components/schemas/Credentials' },
              kubeconfig: { type: 'string', description: 'Base64 kubeconfig, only when PATCH minted a fresh token' },
            },
          },
        ],
      },
      Granted: {
        allOf: [
          { $ref: '#/components/schemas/Facts' },
          {
            type: 'object',
            required: ['kubeconfig', 'ip', 'token', 'uuid', 'cluster_name', 'expires_at'],
            properties: {
              kubeconfig: { type: 'string', description: 'Base64 of a kubeconfig YAML' },
              ip: { type: 'string', description: "The API server's host" },
              token: { type: 'string', format: 'uuid', description: 'Proof of ownership' },
              uuid: { type: 'string', format: 'uuid', description: 'Same as token (the original CLI reads it)' },
              cluster_name: { type: 'string' },
              cluster_id: { type: 'string' },
              pool: { type: 'string', description: 'The pool the cluster is in' },
              location: { type: 'string' },
              expires_at: { type: 'string', format: 'date-time' },
              note: { type: ['string', 'null'] },
              holder: { type: ['string', 'null'] },
              credentials: { $ref: '#/components/schemas/Credentials' },
            },
          },
        ],
      },
    },
  },
  paths: {
    '/lease': {
      post: {
        summary: 'Lease a cluster',
        security: [{ sharedToken: [] }],
        parameters: [
          {
            name: 'Idempotency-Key',
            in: 'header',
            required: false,
            description: 'A structured-field string (or a bare token), at most 255 characters: a retry with the key of a live lease and the same body gets that lease back, under a new token',
            schema: { type: 'string', maxLength: 257 },
          },
        ],
        requestBody: {
          required: true,
          description: 'Read as JSON whatever the Content-Type says; at most 64 KiB',
          content: json({
            type: 'object',
            required: ['max_time'],
            properties: {
              max_time: maxTime,
              cluster_regex: { type: 'string', description: 'RE2 pattern searched in the name; empty: any' },
              cluster_version: { type: 'string', description: 'Version prefix; empty: any' },
              labels: { type: 'object', additionalProperties: { type: 'string' } },
              cloud_provider: { type: 'string', description: 'Only pools that answer to it: gke/google, eks/aws, aks/azure, a static pool\'s provider, a pool\'s name or aliases; empty: any' },
              pool: { type: 'string', description: 'Only this pool (POOLS_FILE); empty: any' },
              note: { type: 'string', maxLength: 256 },
              wait: { type: 'integer', minimum: 0, maximum: 3600, description: 'Seconds to wait for a free matching cluster' },
              gpu: { type: 'boolean' },
              auth: { type: 'object', properties: { user: { type: 'string' }, group: { type: 'string' } } },
            },
          }),
        },
        responses: {
          200: { description: 'Leased', content: json({ $ref: '#/components/schemas/Granted' }) },
          400: error('A malformed body, a bad field, an invalid pattern, an unknown provider or group'),
          401: unauthorized,
          409: error('NoMatchingCluster, or AllLeased (with Retry-After: seconds until the soonest matching end), or RequestInProgress (a request with this Idempotency-Key is still being answered)', retryAfter),
          413: error('Body over 64 KiB'),
          422: error('IdempotencyKeyReused: the Idempotency-Key of a live lease with another body'),
          429: error('TooManyWaiters: WAIT_MAX_TOTAL or WAIT_MAX_PER_PRINCIPAL requests wait already (with Retry-After)', retryAfter),
          500: backend,
          503: contention,
        },
      },
    },
    '/lease/{token}': leaseOperations(false),
    '/lease/{provider}/{token}': leaseOperations(true),
    '/leases': {
      get: {
        summary: 'Every cluster of the pool with its state',
        security: [{ sharedToken: [] }],
        responses: {
          200: {
            description: 'The pool',
            content: json({
              type: 'object',
              properties: {
                clusters: { type: 'array', items: { $ref: '#/components/schemas/Cluster' } },
                waiting: { type: 'integer' },
                pools: {
                  type: 'array',
                  description: 'How each pool\'s last listing went',
                  items: {
                    type: 'object',
                    properties: {
                      name: { type: 'string' },
                      provider: { type: 'string' },
                      aliases: { type: 'array', items: { type: 'string' } },
                      healthy: { type: 'boolean' },
                      last_error: { type: ['string', 'null'] },
                      listed_at: { type: ['string', 'null'], format: 'date-time' },
                      clusters: { type: 'integer' },
                    },
                  },
                },
              },
            }),
          },
          401: unauthorized,
          500: backend,
        },
      },
    },
    '/cleanup': {
      post: {
        summary: 'Return a quarantined (or dirty) cluster to service: it is cleaned again now, its attempts reset',
        security: [{ sharedToken: [] }],
        requestBody: {
          required: true,
          content: json({ type: 'object', required: ['cluster'], properties: { cluster: { type: 'string', description: 'The cluster id, as /leases shows it' } } }),
        },
        responses: {
          200: { description: 'The cluster as /leases shows it, now dirty', content: json({ $ref: '#/components/schemas/Cluster' }) },
          400: error('A bad body'),
          401: unauthorized,
          404: error('No cluster of the pool has this id (reason NoSuchCluster)'),
          409: error('The cluster is neither quarantined nor dirty (reason WrongClusterState)'),
          413: error('Body over 64 KiB'),
          500: backend,
          503: contention,
        },
      },
    },
    '/cli/k8s-claimer.mjs': {
      get: {
        summary: 'The CLI as one JavaScript file for Node 22 or newer: curl -fsSL "$K8S_CLAIMER_URL/cli/k8s-claimer.mjs" -o k8s-claimer.mjs',
        security: [],
        parameters: [{ name: 'If-None-Match', in: 'header', required: false, schema: { type: 'string' }, description: 'The ETag of a copy already downloaded' }],
        responses: {
          200: {
            description: 'The bundled CLI, with an ETag (Cache-Control: no-cache: revalidate before each use)',
            headers: { ETag: { schema: { type: 'string' } } },
            content: { 'text/javascript': { schema: { type: 'string' } } },
          },
          304: { description: 'The copy with the ETag of If-None-Match is current' },
          404: error('The server was started without building the CLI (npm run build:mjs)'),
        },
      },
    },
    '/healthz': {
      get: { summary: 'Liveness', security: [], responses: { 200: { description: 'Alive', content: json({ type: 'object', properties: { status: { enum: ['ok', 'starting'] } } }) } } },
    },
    '/readyz': {
      get: {
        summary: 'Readiness: the lease store and the pool answer',
        security: [],
        responses: {
          200: {
            description: 'Ready; with the Kubernetes store, how full each object of the lease table is (Kubernetes refuses one past 256 KiB of annotations)',
            content: json({
              type: 'object',
              properties: {
                status: { const: 'ready' },
                store: {
                  type: 'array',
                  items: {
                    type: 'object',
                    properties: { object: { type: 'string' }, used_bytes: { type: 'integer' }, limit_bytes: { type: 'integer' }, used_percent: { type: 'number' } },
                  },
                },
              },
            }),
          },
          503: error('Not ready'),
        },
      },
    },
    '/metrics': {
      get: { summary: 'Prometheus metrics', security: [], responses: { 200: { description: 'Prometheus text format', content: { 'text/plain': { schema: { type: 'string' } } } } } },
    },
    '/openapi.json': {
      get: { summary: 'This document', security: [], responses: { 200: { description: 'OpenAPI 3.1', content: json({ type: 'object' }) } } },
    },
    '/': {
      get: { summary: 'The status page (HTML); it asks for the token, then polls /leases', security: [], responses: { 200: { description: 'HTML', content: { 'text/html': { schema: { type: 'string' } } } } } },
    },
    '/favicon.svg': {
      get: { summary: 'The status page\'s icon', security: [], responses: { 200: { description: 'SVG', content: { 'image/svg+xml': { schema: { type: 'string' } } } } } },
    },
  },
} as const;
