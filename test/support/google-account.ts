// A throwaway service-account key (a real RSA key made in the test) and a nock stand-in for
// Google's OAuth token endpoint that records the scopes each token was asked for.

import { generateKeyPairSync } from 'node:crypto';
import nock from 'nock';

export function testServiceAccount(): string {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return JSON.stringify({
    type: 'service_account',
    project_id: 'test-project',
    private_key_id: 'test-key-1',
    private_key: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    client_email: 'claimer@test-project.iam.gserviceaccount.com',
    client_id: '1234567890',
    token_uri: 'https://oauth2.googleapis.com/token',
  });
}

export interface TokenEndpoint {
  /** The `scope` claim of every assertion the endpoint received. */
  scopes: string[];
  done(): void;
}

/** Answers every token request with `accessToken`, recording the scopes that were asked for. */
export function fakeGoogleTokenEndpoint(accessToken: string): TokenEndpoint {
  const scopes: string[] = [];
  nock('https://oauth2.googleapis.com')
    .persist()
    .post('/token', (body: Record<string, string>) => {
      const payload = JSON.parse(Buffer.from(body.assertion.split('.')[1], 'base64url').toString('utf8'));
      scopes.push(payload.scope);
      return body.grant_type === 'urn:ietf:params:oauth:grant-type:jwt-bearer';
    })
    .reply(200, { access_token: accessToken, expires_in: 3600, token_type: 'Bearer' });
  return {
    scopes,
    done() {
      nock.cleanAll();
    },
  };
}
