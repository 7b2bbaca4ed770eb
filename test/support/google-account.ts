// A throwaway service-account key (a real RSA key made in the test) whose `token_uri` names a
// local stand-in for Google's OAuth token endpoint, which checks the signed assertion as
// Google does and records the scopes each token was asked for.

import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { importSPKI, jwtVerify } from 'jose';

export interface TokenEndpoint {
  /** The service-account key (JSON) to configure: its `token_uri` points here. */
  key: string;
  /** The `scope` claim of every assertion the endpoint accepted. */
  scopes: string[];
  /** What the endpoint answers: a token, or a failure with this status. */
  answer: { accessToken: string } | { status: number };
  close(): Promise<void>;
}

function readForm(request: import('node:http').IncomingMessage): Promise<URLSearchParams> {
  return new Promise((resolve, reject) => {
    let body = '';
    request.on('data', (chunk: Buffer) => {
      body += chunk.toString('utf8');
    });
    request.on('end', () => resolve(new URLSearchParams(body)));
    request.on('error', reject);
  });
}

/** Starts the endpoint on 127.0.0.1; it answers every valid assertion as `answer` says. */
export async function fakeGoogleTokenEndpoint(accessToken: string): Promise<TokenEndpoint> {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const verifyKey = await importSPKI((publicKey as KeyObject).export({ type: 'spki', format: 'pem' }).toString(), 'RS256');
  const clientEmail = 'claimer@test-project.iam.gserviceaccount.com';
  const endpoint = { scopes: [] as string[], answer: { accessToken } as TokenEndpoint['answer'] };
  const server: Server = createServer(async (request, response) => {
    const form = await readForm(request);
    const reply = (status: number, body: unknown) => response.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
    if (request.method !== 'POST' || request.url !== '/token' || form.get('grant_type') !== 'urn:ietf:params:oauth:grant-type:jwt-bearer') {
      reply(400, { error: 'invalid_request' });
      return;
    }
    try {
      // As Google does: the assertion is signed by the account's key and issued by the account.
      const { payload } = await jwtVerify(form.get('assertion') ?? '', verifyKey, { issuer: clientEmail, audience: 'https://oauth2.googleapis.com/token' });
      endpoint.scopes.push(String(payload.scope));
    } catch {
      reply(400, { error: 'invalid_grant' });
      return;
    }
    const answer = endpoint.answer;
    if ('status' in answer) reply(answer.status, { error: 'backend_error' });
    else reply(200, { access_token: answer.accessToken, expires_in: 3600, token_type: 'Bearer' });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  const key = JSON.stringify({
    type: 'service_account',
    project_id: 'test-project',
    private_key_id: 'test-key-1',
    private_key: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    client_email: clientEmail,
    client_id: '1234567890',
    token_uri: `http://127.0.0.1:${port}/token`,
  });
  return {
    key,
    get scopes() {
      return endpoint.scopes;
    },
    get answer() {
      return endpoint.answer;
    },
    set answer(value) {
      endpoint.answer = value;
    },
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
