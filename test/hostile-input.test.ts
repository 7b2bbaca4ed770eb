// Hostile input, property-based (fast-check): random methods, paths, headers and bodies —
// huge numbers, deep nesting, invalid UTF-8, duplicate keys, __proto__ keys. Never a 5xx, never
// a crash, always a JSON error, and a rejected request changes nothing.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import { AUTH_TOKEN, poolOf, startTestApp, type TestApp } from './support/harness.ts';

let app: TestApp;
let tried = 0;

before(async () => {
  app = await startTestApp({ clusters: poolOf(8) });
});
after(async () => {
  await app.close();
  // Written by the test run for SECURITY.md's figures.
  process.stdout.write(`# hostile inputs tried: ${tried}\n`);
});

const KNOWN_PATHS = ['/lease', '/leases', '/healthz', '/readyz', '/metrics', '/openapi.json', '/'];
const UUIDISH = fc.uuid().map((uuid) => uuid.toString());

const path = fc.oneof(
  fc.constantFrom(...KNOWN_PATHS),
  UUIDISH.map((uuid) => `/lease/${uuid}`),
  fc.tuple(fc.string({ maxLength: 12 }), UUIDISH).map(([provider, uuid]) => `/lease/${encodeURIComponent(provider) || 'x'}/${uuid}`),
  fc.array(fc.oneof(fc.string({ maxLength: 20 }), fc.constantFrom('..', '%2e%2e', '%00', '%E0%A4%A', '%', '//', 'lease')), { maxLength: 6 }).map(
    (segments) => `/${segments.map((segment) => segment.replace(/[?#]/g, '')).join('/')}`,
  ),
  fc.string({ minLength: 2000, maxLength: 5000 }).map((long) => `/lease/${encodeURIComponent(long)}`),
);

const method = fc.oneof(fc.constantFrom('GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'HEAD', 'OPTIONS'), fc.constantFrom('PROPFIND', 'TRACE-X', 'get'));

const authorization = fc.oneof(
  fc.constant(AUTH_TOKEN),
  fc.constant(`Bearer ${AUTH_TOKEN}`),
  fc.constant(`bearer   ${AUTH_TOKEN}  `),
  fc.constant(undefined),
  fc.string({ maxLength: 40 }).map((text) => text.replace(/[\r\n\0]/g, '')),
  fc.constant(`Bearer ${'a'.repeat(10_000)}`),
  fc.constant('Bearer a.b.c'),
);

const hugeNumbers = fc.constantFrom('1e309', '-1e309', '1e308', '-0', '0.0000001', '9007199254740993', '123456789012345678901234567890', '-5', '1.5', '86400', '86401', '3600', '3601');

/** JSON text, valid or not, with the shapes parsers get wrong. */
const jsonText = fc.oneof(
  fc.jsonValue({ maxDepth: 4 }).map((value) => JSON.stringify(value)),
  fc.record({ max_time: fc.oneof(fc.integer(), fc.double(), fc.string(), fc.constant(null), fc.boolean()) }, { requiredKeys: [] }).map((value) => JSON.stringify(value)),
  hugeNumbers.map((number) => `{"max_time": ${number}}`),
  hugeNumbers.map((number) => `{"max_time": 60, "wait": ${number}}`),
  fc.integer({ min: 100, max: 5000 }).map((depth) => `${'['.repeat(depth)}${']'.repeat(depth)}`),
  fc.integer({ min: 100, max: 3000 }).map((depth) => `{"max_time": 60, "labels": ${'{"a":'.repeat(depth)}1${'}'.repeat(depth)}}`),
  fc.constant('{"max_time": 60, "max_time": "sixty"}'),
  fc.constant('{"max_time": "sixty", "max_time": 60}'),
  fc.constant('{"__proto__": {"max_time": 60, "isAdmin": true}}'),
  fc.constant('{"max_time": 60, "__proto__": {"polluted": true}, "constructor": {"prototype": {"polluted": true}}}'),
  fc.constant('{"max_time": 60, "labels": {"__proto__": "x", "constructor": "y"}}'),
  fc.constant('{"max_time": 60, "auth": {"group": "__proto__"}}'),
  fc.constant('{"max_time": 60, "cluster_regex": "(a+)+$"}'),
  fc.constant('{"max_time": 60, "cluster_regex": "\\\\"}'),
  fc.string({ maxLength: 200 }),
  fc.string({ maxLength: 50 }).map((text) => `{"max_time": 60, "note": ${JSON.stringify(text)}}`),
  fc.constant('{"max_time": 60, "note": "\\ud800"}'),
);

const body = fc.oneof(
  jsonText.map((text) => new TextEncoder().encode(text)),
  // Invalid UTF-8: lone continuation bytes, overlongs, truncated sequences.
  fc.uint8Array({ minLength: 1, maxLength: 200 }).map((bytes) => Uint8Array.from([0x7b, 0xc0, 0x80, 0xff, ...bytes])),
  fc.constant(undefined),
);

const contentType = fc.oneof(
  fc.constant(undefined),
  fc.constantFrom('application/json', 'application/x-www-form-urlencoded', 'text/plain', 'multipart/form-data; boundary=x', 'application/json; charset=latin1'),
);

describe('hostile input', () => {
  test('random requests: never a 5xx, errors are JSON, rejected requests change nothing', async () => {
    await fc.assert(
      fc.asyncProperty(method, path, authorization, body, contentType, async (verb, target, auth, payload, type) => {
        tried += 1;
        const before = (await app.services.writePath.view()).snapshot.version;
        const headers: Record<string, string> = {};
        if (auth !== undefined) headers.authorization = auth;
        if (type !== undefined) headers['content-type'] = type;
        const canHaveBody = !['GET', 'HEAD'].includes(verb.toUpperCase());
        let request: Request;
        try {
          request = new Request(`http://claimer.test${target}`, { method: verb, headers, ...(canHaveBody && payload && { body: payload }) });
        } catch {
          return; // Not even a valid HTTP request: nothing a client could send.
        }
        const response = await app.app.fetch(request);
        assert.ok(response.status < 500, `${verb} ${target.slice(0, 80)} answered ${response.status}`);
        const text = await response.text();
        if (verb.toUpperCase() === 'HEAD') assert.equal(text, '', 'HEAD answered with a body');
        if (response.status >= 400) {
          assert.match(response.headers.get('content-type') ?? '', /^application\/json/);
          if (verb.toUpperCase() === 'HEAD') return;
          const parsed = JSON.parse(text);
          assert.equal(typeof parsed.error, 'string');
          assert.equal((await app.services.writePath.view()).snapshot.version, before, 'a rejected request changed the table');
        }
      }),
      { numRuns: 700 },
    );
    // Nothing leaked into Object.prototype.
    assert.equal(({} as Record<string, unknown>).polluted, undefined);
    assert.equal(({} as Record<string, unknown>).isAdmin, undefined);
    // Release what the valid requests leased, so the pool is usable: nothing is stuck.
    const listed = await (await app.request('GET', '/leases')).json();
    assert.ok(listed.clusters.length === 8);
  });

  test('a body over 64 KiB is refused with 413 without being read to the end', async () => {
    let pulled = 0;
    const chunk = new Uint8Array(16 * 1024).fill(0x20);
    const endless = new ReadableStream<Uint8Array>({
      pull(controller) {
        pulled += chunk.byteLength;
        // 100 MiB in all, if anybody read it.
        if (pulled > 100 * 1024 * 1024) controller.close();
        else controller.enqueue(chunk);
      },
    });
    const response = await app.app.fetch(
      new Request('http://claimer.test/lease', {
        method: 'POST',
        headers: { authorization: AUTH_TOKEN },
        body: endless,
        duplex: 'half',
      } as RequestInit),
    );
    assert.equal(response.status, 413);
    assert.equal(typeof (await response.json()).error, 'string');
    assert.ok(pulled < 1024 * 1024, `read ${pulled} bytes of the body`);
  });

  test('a declared Content-Length over 64 KiB is refused before reading anything', async () => {
    let pulled = 0;
    const stream = new ReadableStream<Uint8Array>({
      pull(controller) {
        pulled += 1;
        controller.enqueue(new Uint8Array(1024));
      },
    });
    const response = await app.app.fetch(
      new Request('http://claimer.test/lease', {
        method: 'POST',
        headers: { authorization: AUTH_TOKEN, 'content-length': String(10 * 1024 * 1024) },
        body: stream,
        duplex: 'half',
      } as RequestInit),
    );
    assert.equal(response.status, 413);
    assert.ok(pulled <= 1);
  });
});
