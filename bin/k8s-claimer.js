#!/usr/bin/env node
// Launcher for the k8s-claimer command: registers tsx (resolved from this package, not from the
// working directory) and loads the TypeScript entry point next to this file.

import { register } from 'tsx/esm/api';

register();
await import('./k8s-claimer.ts');
