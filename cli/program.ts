// The k8s-claimer program: runs the CLI core with the process's arguments, environment and
// signals, then exits with its code. The entry point of both the launcher (bin/k8s-claimer.js,
// from a checkout) and the bundle that `npm run build` makes (dist/k8s-claimer.mjs, and the
// single executable): so it uses no top-level await, which a CommonJS bundle cannot hold.

import process from 'node:process';
import { main } from './main.ts';

void main(process.argv.slice(2), process.env, { stdout: process.stdout, stderr: process.stderr, signals: process }).then(async (code) => {
  // process.exit does not wait for pending writes to a pipe: let both streams flush first.
  await Promise.all([process.stdout, process.stderr].map((stream) => new Promise<void>((resolve) => stream.write('', () => resolve()))));
  process.exit(code);
});
