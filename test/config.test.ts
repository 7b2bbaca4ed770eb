import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ConfigError, loadConfig } from '../services/config.ts';

const defaults = { staticPoolFile: '/repo/pool/example.yaml' };
const account = JSON.stringify({ type: 'service_account', client_email: 'sa@p.iam.gserviceaccount.com', private_key: '-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----\n' });

describe('configuration from the environment', () => {
  test('defaults: local mode, the seed names and ports, the example pool, the file store', () => {
    const config = loadConfig({}, defaults);
    assert.equal(config.bindHost, '0.0.0.0');
    assert.equal(config.bindPort, 8080);
    assert.equal(config.namespace, 'k8s-claimer');
    assert.equal(config.serviceName, 'k8s-claimer');
    assert.equal(config.maxLeaseSeconds, 86400);
    assert.equal(config.mode, 'local');
    assert.equal(config.leaseStore, 'file');
    assert.equal(config.staticPoolFile, '/repo/pool/example.yaml');
    assert.equal(config.leaseStoreFile, 'data/leases.json');
    assert.equal(config.authToken, undefined);
    assert.equal(config.clusterCacheSeconds, 30);
  });

  test('values are read and converted', () => {
    const config = loadConfig(
      { BIND_HOST: '127.0.0.1', BIND_PORT: '9000', AUTH_TOKEN: 's3cret', MAX_LEASE_SECONDS: '600', NAMESPACE: 'ci', SERVICE_NAME: 'leases', LEASE_STORE: 'kubernetes' },
      defaults,
    );
    assert.deepEqual(
      [config.bindHost, config.bindPort, config.authToken, config.maxLeaseSeconds, config.namespace, config.serviceName, config.leaseStore],
      ['127.0.0.1', 9000, 's3cret', 600, 'ci', 'leases', 'kubernetes'],
    );
  });

  test('AUTH_TOKEN is trimmed (a Secret from a file ends in a newline); a blank one is refused', () => {
    assert.equal(loadConfig({ AUTH_TOKEN: 'abc123\n' }, defaults).authToken, 'abc123');
    assert.throws(() => loadConfig({ AUTH_TOKEN: ' \n' }, defaults), /AUTH_TOKEN must not be blank/);
  });

  test('the replica name: REPLICA_NAME, else the pod name (both survive restarts), else the host name and a fresh suffix', () => {
    assert.equal(loadConfig({ REPLICA_NAME: 'claimer-a' }, defaults).replicaName, 'claimer-a');
    assert.equal(loadConfig({ POD_NAME: 'k8s-claimer-7d9f-abcde' }, defaults).replicaName, 'k8s-claimer-7d9f-abcde');
    // Two replicas on one host without a name never share one.
    assert.notEqual(loadConfig({}, defaults).replicaName, loadConfig({}, defaults).replicaName);
    assert.throws(() => loadConfig({ REPLICA_NAME: 'a b' }, defaults), /REPLICA_NAME must be/);
  });

  test('the default group must be mapped: the server refuses to start otherwise, naming both variables', () => {
    assert.equal(loadConfig({}, defaults).defaultGroup, 'system:masters');
    assert.throws(() => loadConfig({ LEASE_GROUP_ROLES: 'ci=edit' }, defaults), (error: Error) =>
      error instanceof ConfigError && /LEASE_DEFAULT_GROUP/.test(error.message) && /LEASE_GROUP_ROLES/.test(error.message) && !error.message.includes('\n'));
    const config = loadConfig({ LEASE_GROUP_ROLES: 'ci=edit', LEASE_DEFAULT_GROUP: 'ci' }, defaults);
    assert.deepEqual([config.defaultGroup, config.groupRoles], ['ci', { ci: 'edit' }]);
  });

  test('empty variables count as unset', () => {
    assert.equal(loadConfig({ BIND_PORT: '', AUTH_TOKEN: '' }, defaults).bindPort, 8080);
    assert.equal(loadConfig({ AUTH_TOKEN: '' }, defaults).authToken, undefined);
  });

  const bad: Array<[string, Record<string, string>, RegExp]> = [
    ['BIND_PORT not a number', { BIND_PORT: 'http' }, /BIND_PORT must be a whole number from 0 to 65535/],
    ['BIND_PORT too large', { BIND_PORT: '70000' }, /BIND_PORT/],
    ['MAX_LEASE_SECONDS zero', { MAX_LEASE_SECONDS: '0' }, /MAX_LEASE_SECONDS/],
    ['MAX_LEASE_SECONDS negative', { MAX_LEASE_SECONDS: '-1' }, /MAX_LEASE_SECONDS/],
    ['NAMESPACE not a DNS label', { NAMESPACE: 'Bad_NS' }, /NAMESPACE must be a Kubernetes namespace name/],
    ['LEASE_STORE unknown', { LEASE_STORE: 'redis' }, /LEASE_STORE must be one of: file, kubernetes, memory/],
    ['LOG_LEVEL unknown', { LOG_LEVEL: 'loud' }, /LOG_LEVEL/],
    ['two pools at once', { POOL_KUBECONFIG: '/k', GOOGLE_CLOUD_PROJECT_ID: 'p', AUTH_TOKEN: 't', GKE_EMULATOR_HOST: '127.0.0.1:1' }, /POOL_KUBECONFIG and GOOGLE_CLOUD_PROJECT_ID each name a pool/],
    ['contexts without a kubeconfig', { POOL_CONTEXTS: 'kind-*' }, /POOL_CONTEXTS needs POOL_KUBECONFIG/],
    ['GKE mode without AUTH_TOKEN', { GOOGLE_CLOUD_PROJECT_ID: 'p', GOOGLE_CLOUD_ACCOUNT_FILE: account }, /AUTH_TOKEN is required outside local mode/],
    ['GKE mode without an account file', { GOOGLE_CLOUD_PROJECT_ID: 'p', AUTH_TOKEN: 't' }, /GOOGLE_CLOUD_ACCOUNT_FILE_BASE64 is required/],
    ['account file not base64 JSON', { GOOGLE_CLOUD_PROJECT_ID: 'p', AUTH_TOKEN: 't', GOOGLE_CLOUD_ACCOUNT_FILE_BASE64: 'bm90IGpzb24=' }, /GOOGLE_CLOUD_ACCOUNT_FILE_BASE64 is not a service-account JSON key/],
    ['raw account file not JSON', { GOOGLE_CLOUD_PROJECT_ID: 'p', AUTH_TOKEN: 't', GOOGLE_CLOUD_ACCOUNT_FILE: '{oops' }, /GOOGLE_CLOUD_ACCOUNT_FILE is not/],
    ['account JSON without a key', { GOOGLE_CLOUD_PROJECT_ID: 'p', AUTH_TOKEN: 't', GOOGLE_CLOUD_ACCOUNT_FILE: '{"a":1}' }, /client_email or private_key missing/],
    ['GKE_EMULATOR_HOST not host:port', { GKE_EMULATOR_HOST: 'http://x' }, /GKE_EMULATOR_HOST must be host:port/],
    ['OIDC without an audience', { AUTH_JWKS_URL: 'https://issuer/jwks', AUTH_ISSUER: 'https://issuer' }, /AUTH_AUDIENCE is required with the other/],
    ['OIDC JWKS not a URL', { AUTH_JWKS_URL: 'jwks', AUTH_ISSUER: 'i', AUTH_AUDIENCE: 'a' }, /AUTH_JWKS_URL must be a URL/],
    ['allowed subjects without OIDC', { AUTH_ALLOWED_SUBJECTS: 'repo:*' }, /AUTH_ALLOWED_SUBJECTS needs AUTH_JWKS_URL/],
    ['BACKEND_TIMEOUT_SECONDS zero', { BACKEND_TIMEOUT_SECONDS: '0' }, /BACKEND_TIMEOUT_SECONDS/],
    ['LEASE_GROUP_ROLES malformed', { LEASE_GROUP_ROLES: 'admins' }, /LEASE_GROUP_ROLES must be group=ClusterRole pairs/],
  ];
  for (const [name, env, message] of bad) {
    test(`a bad value stops start-up naming the variable: ${name}`, () => {
      assert.throws(() => loadConfig(env, defaults), (error: unknown) => error instanceof ConfigError && message.test(error.message));
    });
  }

  test('an error message never echoes a secret value', () => {
    const secret = 'c3VwZXItc2VjcmV0LWtleS1tYXRlcmlhbA==';
    assert.throws(
      () => loadConfig({ GOOGLE_CLOUD_PROJECT_ID: 'p', AUTH_TOKEN: 't', GOOGLE_CLOUD_ACCOUNT_FILE_BASE64: secret }, defaults),
      (error: unknown) => error instanceof ConfigError && !error.message.includes(secret) && !error.message.includes('super-secret'),
    );
  });

  test('GKE mode: project set, account from base64 or raw JSON, zone default -, Kubernetes store', () => {
    const fromBase64 = loadConfig(
      { GOOGLE_CLOUD_PROJECT_ID: 'proj', AUTH_TOKEN: 't', GOOGLE_CLOUD_ACCOUNT_FILE_BASE64: Buffer.from(account).toString('base64') },
      defaults,
    );
    assert.equal(fromBase64.mode, 'gke');
    assert.equal(fromBase64.leaseStore, 'kubernetes');
    assert.deepEqual(fromBase64.gke, { projectId: 'proj', zone: '-', accountJson: account });
    const fromRaw = loadConfig({ GOOGLE_CLOUD_PROJECT_ID: 'proj', AUTH_TOKEN: 't', GOOGLE_CLOUD_ACCOUNT_FILE: account, GOOGLE_CLOUD_ZONE: 'europe-west1-b' }, defaults);
    assert.equal(fromRaw.gke?.zone, 'europe-west1-b');
    assert.equal(fromRaw.gke?.accountJson, account);
  });

  test('GKE mode with OIDC only: AUTH_TOKEN may be left out', () => {
    const config = loadConfig(
      { GOOGLE_CLOUD_PROJECT_ID: 'proj', GKE_EMULATOR_HOST: '127.0.0.1:1', AUTH_JWKS_URL: 'https://token.actions.example/.well-known/jwks', AUTH_ISSUER: 'https://token.actions.example', AUTH_AUDIENCE: 'k8s-claimer', AUTH_ALLOWED_SUBJECTS: 'repo:a/*, repo:b/c:*' },
      defaults,
    );
    assert.equal(config.authToken, undefined);
    assert.deepEqual(config.oidc?.allowedSubjects, ['repo:a/*', 'repo:b/c:*']);
  });

  test('quarantine: CLEANUP_MAX_ATTEMPTS (default 5) and QUARANTINE_RETRY_SECONDS (default an hour)', () => {
    assert.deepEqual([loadConfig({}, defaults).cleanupMaxAttempts, loadConfig({}, defaults).quarantineRetrySeconds], [5, 3600]);
    const config = loadConfig({ CLEANUP_MAX_ATTEMPTS: '12', QUARANTINE_RETRY_SECONDS: '600' }, defaults);
    assert.deepEqual([config.cleanupMaxAttempts, config.quarantineRetrySeconds], [12, 600]);
    assert.throws(() => loadConfig({ CLEANUP_MAX_ATTEMPTS: '0' }, defaults), /CLEANUP_MAX_ATTEMPTS must be a whole number from 1/);
    assert.throws(() => loadConfig({ QUARANTINE_RETRY_SECONDS: 'hourly' }, defaults), /QUARANTINE_RETRY_SECONDS/);
  });

  test('GKE mode with an emulator needs no account file', () => {
    const config = loadConfig({ GOOGLE_CLOUD_PROJECT_ID: 'proj', AUTH_TOKEN: 't', GKE_EMULATOR_HOST: '127.0.0.1:9999' }, defaults);
    assert.deepEqual(config.gke, { projectId: 'proj', zone: '-', emulatorHost: '127.0.0.1:9999' });
  });
});
