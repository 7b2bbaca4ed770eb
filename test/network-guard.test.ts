// The suite's network guard (test/support/network-guard.mjs, loaded before every test file): a
// connection to anything but loopback fails, whatever library makes it; loopback works.

import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { test } from 'node:test';
// @ts-expect-error a plain JavaScript module without types
import { isLoopback, takeViolations } from './support/network-guard.mjs';

test('non-loopback addresses are refused before any name is looked up, and each attempt is recorded', async () => {
  takeViolations();
  // A documentation address and a real host name: neither may be dialled.
  for (const url of ['http://192.0.2.10:8080/', 'https://oauth2.googleapis.com/token']) {
    await assert.rejects(fetch(url, { signal: AbortSignal.timeout(5_000) }));
  }
  const seen: string[] = takeViolations();
  assert.equal(seen.length, 2);
  assert.match(seen[0] as string, /192\.0\.2\.10:8080/);
  assert.match(seen[1] as string, /oauth2\.googleapis\.com:443/);
});

test('loopback connections go through', async () => {
  const server = createServer((_request, response) => response.end('pong'));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  try {
    assert.equal(await (await fetch(`http://127.0.0.1:${port}/`)).text(), 'pong');
    assert.equal(await (await fetch(`http://localhost:${port}/`)).text(), 'pong');
    assert.deepEqual(takeViolations(), []);
  } finally {
    await new Promise((resolve) => server.close(resolve));
  }
  assert.deepEqual(['127.0.0.1', '127.8.9.10', 'localhost', '::1', '[::1]', '::ffff:127.0.0.1'].map(isLoopback), [true, true, true, true, true, true]);
  assert.deepEqual(['10.0.0.1', '192.0.2.1', 'example.com', '2001:db8::1', '0.0.0.0'].map(isLoopback), [false, false, false, false, false]);
});
