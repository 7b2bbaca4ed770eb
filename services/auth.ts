// Who may call the /lease routes. The shared AUTH_TOKEN is accepted raw (as the original Go CLI
// sends it) or as `Bearer <token>`, compared in constant time. An empty token never matches.

import { UnauthorizedError } from './errors.ts';
import { secretsEqual } from './tokens.ts';

export interface Principal {
  /** Who holds the lease, when the credential names somebody (e.g. a CI job's OIDC subject). */
  subject?: string;
}

export type Authenticator = (authorization: string | null) => Promise<Principal>;

export function sharedTokenAuthenticator(expected: string): Authenticator {
  if (expected === '') throw new Error('the shared auth token must not be empty');
  return async (authorization) => {
    const presented = authorization?.replace(/^Bearer\s+/i, '').trim() ?? '';
    if (presented === '' || !secretsEqual(presented, expected)) {
      throw new UnauthorizedError('missing or wrong Authorization header');
    }
    return {};
  };
}
