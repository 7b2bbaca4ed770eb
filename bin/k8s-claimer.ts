#!/usr/bin/env -S node --import tsx
// The k8s-claimer command: runs the CLI core with the process's arguments, environment and
// signals, then exits with its code. bin/k8s-claimer.js is the robust way to start it (it
// loads tsx from this package wherever the command is run from).

import process from 'node:process';
import { main } from '../cli/main.ts';

const code = await main(process.argv.slice(2), process.env, { stdout: process.stdout, stderr: process.stderr, signals: process });

// process.exit does not wait for pending writes to a pipe: let both streams flush first.
await Promise.all([process.stdout, process.stderr].map((stream) => new Promise<void>((resolve) => stream.write('', () => resolve()))));
process.exit(code);
