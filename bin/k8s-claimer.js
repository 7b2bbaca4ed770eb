#!/usr/bin/env node
// Launcher for the k8s-claimer command from a checkout: registers tsx (resolved from this
// package, not from the working directory) and loads the CLI's TypeScript entry point. The
// downloadable CLI needs no tsx: `npm run build` bundles the same entry point into one file.

import { register } from 'tsx/esm/api';

register();
await import('../cli/program.ts');
