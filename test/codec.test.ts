// The lease record format shared by the file and Kubernetes stores: what this version writes
// reads back the same, and records written by earlier versions keep decoding.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { ClusterEntry } from '../services/lease-table.ts';
import { decodeEntry, encodeEntry } from '../services/store/codec.ts';

const T0 = Date.parse('2026-01-01T00:00:00Z');

describe('cluster records', () => {
  const cases: Array<[string, ClusterEntry]> = [
    ['a dirty cluster with lease credentials to revoke', { state: 'dirty', idleSince: T0, cleanup: { attempts: 0, revoke: ['feedfacecafe'] } }],
    ['a quarantined cluster', { state: 'quarantined', idleSince: T0, cleanup: { attempts: 5, lastError: 'deleting namespaces failed: still terminating after 300 s: e2e (finalizers: example.com/x)', retryAt: T0 + 3_600_000 } }],
    ['a cluster being cleaned', { state: 'cleaning', idleSince: T0, cleanup: { owner: 'claimer-0', deadline: T0 + 60_000, attempts: 2, lastError: 'deleting namespaces failed', revoke: ['0123456789ab'] } }],
  ];
  for (const [name, entry] of cases) {
    test(`round trip: ${name}`, () => {
      const decoded = decodeEntry(JSON.parse(JSON.stringify(encodeEntry('static/a', entry))));
      assert.deepEqual(decoded, { ok: true, value: { clusterId: 'static/a', entry } });
    });
  }

  test('a dirty record of an earlier version (no lease ids) still decodes', () => {
    const decoded = decodeEntry({ cluster: 'static/a', state: 'dirty', idle_since: '2026-01-01T00:00:00.000Z', cleanup: { attempts: 1, last_error: 'x', retry_at: '2026-01-01T00:00:01.000Z' } });
    assert.deepEqual(decoded, { ok: true, value: { clusterId: 'static/a', entry: { state: 'dirty', idleSince: T0, cleanup: { attempts: 1, lastError: 'x', retryAt: T0 + 1000 } } } });
  });

  test('a lease id that is not one makes the record unreadable (its cluster is blocked, not cleaned blind)', () => {
    const decoded = decodeEntry({ cluster: 'static/a', state: 'dirty', cleanup: { attempts: 0, revoke: ['../../etc'] } });
    assert.equal(decoded.ok, false);
  });
});
