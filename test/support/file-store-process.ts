// A claimer process that holds a file store on command, for the tests of the store's lock and
// compare-and-swap across processes (see line-process.ts). Commands:
//   open {options}  -> {"event":"opened","pid":N} or {"event":"refused","message":...}
//   write-forever   -> {"event":"written","version":...} after each write returns, until killed
//   close           -> {"event":"closed"}
// It takes the file's path as its argument, and closes the store when stdin closes.

import { FileLeaseStore, type FileStoreOptions } from '../../services/store/file.ts';
import { hashToken } from '../../services/tokens.ts';
import { answer, commands } from './line-process.ts';

const path = process.argv[2];
const quiet = { warn() {}, error() {} };
let store: FileLeaseStore | undefined;

async function writeForever(opened: FileLeaseStore): Promise<never> {
  for (let round = 0; ; round++) {
    const base = await opened.read();
    const clusters = Object.fromEntries(
      Array.from({ length: 200 }, (_, index) => [
        `static/c${index}`,
        { state: 'leased' as const, lease: { id: 'bbbbbbbbbbbb', tokenHash: hashToken(`${round}-${index}`), startedAt: round, expiresAt: round + 1000, note: 'x'.repeat(200) } },
      ]),
    );
    const written = await opened.write({ clusters, legacy: {}, waiters: {}, filters: {}, replicas: {} }, base);
    answer({ event: 'written', version: written.version });
  }
}

for await (const { name, argument } of commands()) {
  if (name === 'open') {
    try {
      store = await FileLeaseStore.open(path, quiet, argument as FileStoreOptions | undefined);
      answer({ event: 'opened', pid: process.pid });
    } catch (error) {
      answer({ event: 'refused', message: (error as Error).message });
    }
  } else if (name === 'write-forever' && store) {
    void writeForever(store);
  } else if (name === 'close') {
    await store?.close();
    store = undefined;
    answer({ event: 'closed' });
  } else {
    answer({ event: 'unknown-command', name });
  }
}
await store?.close();
