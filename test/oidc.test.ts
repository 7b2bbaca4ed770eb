// OIDC / JWT auth beside the shared token: a local JWKS server and ID tokens signed in the test,
// as a CI system (GitHub Actions, GitLab CI) would issue them.

import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { after, before, describe, test } from 'node:test';
import { SignJWT, exportJWK, exportSPKI, generateKeyPair, type JWK } from 'jose';
import { AUTH_TOKEN, poolOf, startTestApp, type TestApp } from './support/harness.ts';

const ISSUER = 'https://token.actions.example';
const AUDIENCE = 'k8s-claimer';
const SUBJECT = 'repo:my-org/e2e:ref:refs/heads/main';

let jwksServer: Server;
let jwksUrl: string;
let app: TestApp;
let signingKey: CryptoKey;
let publicJwk: JWK;
let publicPem: string;
let strangerKey: CryptoKey;

const now = () => Math.floor(Date.now() / 1000);

function idToken(claims: Record<string, unknown> = {}, options: { key?: CryptoKey; kid?: string } = {}) {
  const jwt = new SignJWT({ sub: SUBJECT, ...claims })
    .setProtectedHeader({ alg: 'RS256', kid: options.kid ?? 'key-1' })
    .setIssuer(ISSUER)
    .setAudience(AUDIENCE)
    .setIssuedAt()
    .setExpirationTime('10m');
  return jwt.sign(options.key ?? signingKey);
}

const base64url = (value: unknown) => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');

function unsignedToken(): string {
  return `${base64url({ alg: 'none', typ: 'JWT' })}.${base64url({ sub: SUBJECT, iss: ISSUER, aud: AUDIENCE, exp: now() + 600 })}.`;
}

/** The classic key-confusion attack: HS256 with the issuer's public key as the shared secret. */
function confusedToken(): string {
  const head = `${base64url({ alg: 'HS256', typ: 'JWT', kid: 'key-1' })}.${base64url({ sub: SUBJECT, iss: ISSUER, aud: AUDIENCE, exp: now() + 600 })}`;
  return `${head}.${createHmac('sha256', publicPem).update(head).digest('base64url')}`;
}

async function lease(bearer: string) {
  const response = await app.request('POST', '/lease', { body: { max_time: 60 }, auth: `Bearer ${bearer}` });
  return { status: response.status, body: await response.json(), challenge: response.headers.get('www-authenticate') };
}

before(async () => {
  const pair = await generateKeyPair('RS256', { extractable: true });
  signingKey = pair.privateKey;
  publicJwk = { ...(await exportJWK(pair.publicKey)), kid: 'key-1', alg: 'RS256', use: 'sig' };
  publicPem = await exportSPKI(pair.publicKey);
  strangerKey = (await generateKeyPair('RS256')).privateKey;
  jwksServer = createServer((_request, response) => {
    response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [publicJwk] }));
  });
  await new Promise<void>((resolve) => jwksServer.listen(0, '127.0.0.1', resolve));
  jwksUrl = `http://127.0.0.1:${(jwksServer.address() as { port: number }).port}/.well-known/jwks`;
  app = await startTestApp({
    clusters: poolOf(20),
    env: { AUTH_JWKS_URL: jwksUrl, AUTH_ISSUER: ISSUER, AUTH_AUDIENCE: AUDIENCE, AUTH_ALLOWED_SUBJECTS: 'repo:my-org/*:ref:refs/heads/main, repo:my-org/tools:*, repo:my-org/infra:**' },
  });
});

after(async () => {
  await app.close();
  await new Promise((resolve) => jwksServer.close(resolve));
});

describe('OIDC ID tokens', () => {
  test('a valid token leases, and its subject is the lease holder in /leases', async () => {
    const granted = await lease(await idToken());
    assert.equal(granted.status, 200);
    assert.equal(granted.body.holder, SUBJECT);
    const listed = await (await app.request('GET', '/leases')).json();
    const held = listed.clusters.find((cluster: { name: string }) => cluster.name === granted.body.cluster_name);
    assert.equal(held.holder, SUBJECT);
    assert.equal((await lease(await idToken({ sub: 'repo:my-org/tools:pull_request' }))).status, 200);
    // `**` spans the parts of a subject; `*` does not.
    assert.equal((await lease(await idToken({ sub: 'repo:my-org/infra:environment:prod' }))).status, 200);
  });

  test('the shared token still works beside OIDC', async () => {
    assert.equal((await lease(AUTH_TOKEN)).status, 200);
  });

  const refused: Array<[string, () => Promise<string> | string]> = [
    ['expired', () => new SignJWT({ sub: SUBJECT }).setProtectedHeader({ alg: 'RS256', kid: 'key-1' }).setIssuer(ISSUER).setAudience(AUDIENCE).setIssuedAt(now() - 700).setExpirationTime(now() - 60).sign(signingKey)],
    ['not yet valid', () => idToken({ nbf: now() + 300 })],
    ['wrong issuer', () => new SignJWT({ sub: SUBJECT }).setProtectedHeader({ alg: 'RS256', kid: 'key-1' }).setIssuer('https://evil.example').setAudience(AUDIENCE).setExpirationTime('10m').sign(signingKey)],
    ['wrong audience', () => new SignJWT({ sub: SUBJECT }).setProtectedHeader({ alg: 'RS256', kid: 'key-1' }).setIssuer(ISSUER).setAudience('someone-else').setExpirationTime('10m').sign(signingKey)],
    ['a subject not allowed', () => idToken({ sub: 'repo:other-org/e2e:ref:refs/heads/main' })],
    ['a subject matching only a prefix of a pattern', () => idToken({ sub: 'repo:my-org/e2e:ref:refs/heads/main-evil' })],
    ['a * stretched over a colon', () => idToken({ sub: 'repo:my-org/x:environment:ref:refs/heads/main' })],
    ['a * of the last part stretched over a colon', () => idToken({ sub: 'repo:my-org/tools:ref:refs/heads/dev' })],
    ['issued longer ago than AUTH_MAX_TOKEN_AGE (1 h by default)', () => new SignJWT({ sub: SUBJECT }).setProtectedHeader({ alg: 'RS256', kid: 'key-1' }).setIssuer(ISSUER).setAudience(AUDIENCE).setIssuedAt(now() - 3_700).setExpirationTime(now() + 600).sign(signingKey)],
    ['no issued-at time', () => new SignJWT({ sub: SUBJECT }).setProtectedHeader({ alg: 'RS256', kid: 'key-1' }).setIssuer(ISSUER).setAudience(AUDIENCE).setExpirationTime('10m').sign(signingKey)],
    ['no expiry', () => new SignJWT({ sub: SUBJECT }).setProtectedHeader({ alg: 'RS256', kid: 'key-1' }).setIssuer(ISSUER).setAudience(AUDIENCE).sign(signingKey)],
    ['alg: none', unsignedToken],
    ['an unknown key id', () => idToken({}, { key: strangerKey, kid: 'key-2' })],
    ['a known key id but another key', () => idToken({}, { key: strangerKey })],
    ['HS256 with the public key as secret', confusedToken],
    ['garbage that looks like a JWT', () => 'aaa.bbb.ccc'],
  ];
  for (const [name, make] of refused) {
    test(`401 for a token: ${name}`, async () => {
      const answer = await lease(await make());
      assert.equal(answer.status, 401);
      assert.equal(answer.challenge, 'Bearer');
      assert.deepEqual(Object.keys(answer.body), ['error']);
    });
  }

  test('a JWKS endpoint that is down means 401, never 500, and no token in the log', async () => {
    const token = await idToken();
    const down = await startTestApp({
      clusters: poolOf(1),
      env: { AUTH_JWKS_URL: 'http://127.0.0.1:9/jwks', AUTH_ISSUER: ISSUER, AUTH_AUDIENCE: AUDIENCE },
    });
    try {
      const response = await down.request('POST', '/lease', { body: { max_time: 60 }, auth: `Bearer ${token}` });
      assert.equal(response.status, 401);
      assert.equal(down.logs.raw().includes(token), false);
    } finally {
      await down.close();
    }
  });
});
