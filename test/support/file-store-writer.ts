// A child process for the crash test: writes the lease table to a file store as fast as it can
// and prints each version after its write has returned, until it is killed.

import { FileLeaseStore } from '../../services/store/file.ts';
import { hashToken } from '../../services/tokens.ts';

const store = await FileLeaseStore.open(process.argv[2], { warn() {} });
for (let round = 0; ; round++) {
  const base = await store.read();
  const clusters = Object.fromEntries(
    Array.from({ length: 200 }, (_, index) => [
      `static/c${index}`,
      { state: 'leased' as const, lease: { id: 'bbbbbbbbbbbb', tokenHash: hashToken(`${round}-${index}`), startedAt: round, expiresAt: round + 1000, note: 'x'.repeat(200) } },
    ]),
  );
  const written = await store.write({ clusters, legacy: {}, waiters: {}, filters: {}, replicas: {} }, base);
  process.stdout.write(`${written.version}\n`);
}
