// The yardstick of scenario (d): a bare srvx server on the same runtime that reads each request's
// body and answers a JSON body as large as the claimer's, for the two requests (d) makes: POST
// /lease (a grant's fields, with a fresh token) and DELETE /lease/{token}. The load generator
// then parses as much as it does against the claimer. Prints its URL on stdout.

import { Buffer } from 'node:buffer';
import process from 'node:process';
import { FastResponse, serve } from 'srvx';

/** A grant as the claimer answers it for the benchmark's pool: the same fields and sizes. */
const GRANT = {
  kubeconfig: Buffer.from(`apiVersion: v1\nkind: Config\nclusters:\n  - name: cannon-1\n    cluster:\n      server: https://127.1.0.1:6443\nusers:\n  - name: cannon-1\n    user: {}\ncontexts:\n  - name: cannon-1\n    context:\n      cluster: cannon-1\n      user: cannon-1\ncurrent-context: cannon-1\n`).toString('base64'),
  ip: '127.1.0.1',
  uuid: '00000000-0000-4000-8000-000000000000',
  cluster_name: 'cannon-1',
  cluster_id: 'static/cannon-1',
  location: 'static',
  expires_at: new Date().toISOString(),
  note: null,
  holder: null,
  credentials: null,
  dns: null,
  cluster_tag: 'static/cannon-1',
  registry_location: null,
  gpu: false,
};

const server = serve({
  port: 0,
  hostname: '127.0.0.1',
  silent: true,
  gracefulShutdown: false,
  async fetch(request) {
    await request.text();
    const body = request.method === 'POST' ? { ...GRANT, token: crypto.randomUUID() } : { released: true };
    return new FastResponse(JSON.stringify(body), { headers: { 'content-type': 'application/json; charset=utf-8' } });
  },
});
await server.ready();
process.stdout.write(`${server.url}\n`);
