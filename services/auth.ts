// Who may call the /lease routes:
// - the shared AUTH_TOKEN, raw (as the original Go CLI sends it) or as `Bearer <token>`,
//   compared in constant time; an empty token never matches;
// - an OIDC / JWT ID token of a CI system (GitHub Actions, GitLab CI, ...), verified with jose
//   against the issuer's JWKS: signature (asymmetric algorithms only), issuer, audience, expiry
//   and not-before, and the subject against AUTH_ALLOWED_SUBJECTS. Its subject holds the lease.

import { createRemoteJWKSet, jwtVerify, type JWTVerifyGetKey } from 'jose';
import { RE2JS } from 're2js';
import { UnauthorizedError } from './errors.ts';
import { secretCheck } from './tokens.ts';

export interface Principal {
  /** Who holds the lease, when the credential names somebody (e.g. a CI job's OIDC subject). */
  subject?: string;
}

export type Authenticator = (authorization: string | null) => Promise<Principal>;

export interface OidcSettings {
  jwksUrl: string;
  issuer: string;
  audience: string;
  /** Subject patterns; `*` matches any run of characters but `:`. None: any subject of the issuer. */
  allowedSubjects: readonly string[];
  /** The oldest token accepted, by its `iat`, in seconds. */
  maxTokenAgeSeconds?: number;
  timeoutMs?: number;
}

export interface AuthSettings {
  sharedToken?: string;
  oidc?: OidcSettings;
}

/** Never HS*: a symmetric algorithm would let anyone who knows the public key sign tokens. */
const ASYMMETRIC_ALGORITHMS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA'];
const JWT_SHAPE = /^[\w-]+\.[\w-]+\.[\w-]*$/;

function refuse(): never {
  throw new UnauthorizedError('missing or wrong Authorization header');
}

/**
 * `repo:my-org/*:ref:refs/heads/main` -> an anchored RE2 pattern. A `*` stays within one
 * `:`-separated part of the subject, so `repo:my-org/*` cannot match `repo:my-org/x:environment:prod`
 * as if `x:environment:prod` were a repository name; `**` spans parts on purpose.
 */
export function subjectPattern(pattern: string): RE2JS {
  const escape = (part: string) => part.replace(/[\\^$.|?+()[\]{}]/g, '\\$&');
  const escaped = pattern
    .split('**')
    .map((spanning) => spanning.split('*').map(escape).join('[^:]*'))
    .join('.*');
  return RE2JS.compile(`^${escaped}$`);
}

export function createAuthenticator(settings: AuthSettings): Authenticator {
  const shared = settings.sharedToken;
  if (shared === '') throw new Error('the shared auth token must not be empty');
  if (shared === undefined && !settings.oidc) throw new Error('no way to authenticate: set a shared token or OIDC');
  const isShared = shared === undefined ? () => false : secretCheck(shared);
  let jwks: JWTVerifyGetKey | undefined;
  const oidc = settings.oidc;
  const subjects = (oidc?.allowedSubjects ?? []).map(subjectPattern);
  return async (authorization) => {
    const presented = authorization?.replace(/^Bearer\s+/i, '').trim() ?? '';
    if (presented === '') refuse();
    if (isShared(presented)) return {};
    if (!oidc || !JWT_SHAPE.test(presented)) refuse();
    jwks ??= createRemoteJWKSet(new URL(oidc.jwksUrl), { timeoutDuration: oidc.timeoutMs ?? 5_000 });
    let subject: string | undefined;
    try {
      const { payload } = await jwtVerify(presented, jwks, {
        issuer: oidc.issuer,
        audience: oidc.audience,
        algorithms: ASYMMETRIC_ALGORITHMS,
        requiredClaims: ['sub', 'exp', 'iat'],
        maxTokenAge: oidc.maxTokenAgeSeconds ?? 3_600,
      });
      subject = payload.sub;
    } catch {
      // Why it failed (expired, wrong audience, unknown key, JWKS down) is not the caller's business.
      refuse();
    }
    if (!subject || (subjects.length > 0 && !subjects.some((pattern) => pattern.matcher(subject).matches()))) refuse();
    return { subject };
  };
}
