// The static route manifest: every route module, imported here so that nothing scans the disk
// at run time (the same app runs under tsx and Deno). A test checks it against the files.

import type { RouteModule } from '../app.ts';
import * as healthz from './healthz.ts';
import * as lease from './lease.ts';
import * as leases from './leases.ts';
import * as leaseByProviderAndToken from './lease/[provider]/[token].ts';
import * as leaseByToken from './lease/[token].ts';
import * as readyz from './readyz.ts';

export interface RouteEntry {
  /** The module's file under routes/; its path follows from it (`lease/[token].ts` is `/lease/:token`). */
  file: string;
  module: RouteModule;
  /** Whether callers must authenticate. */
  auth: boolean;
}

export const manifest: readonly RouteEntry[] = [
  { file: 'healthz.ts', module: healthz, auth: false },
  { file: 'lease.ts', module: lease, auth: true },
  { file: 'lease/[token].ts', module: leaseByToken, auth: true },
  { file: 'lease/[provider]/[token].ts', module: leaseByProviderAndToken, auth: true },
  { file: 'leases.ts', module: leases, auth: true },
  { file: 'readyz.ts', module: readyz, auth: false },
];

/** `lease/[provider]/[token].ts` -> `/lease/:provider/:token`; `index.ts` files name their folder. */
export function routePath(file: string): string {
  const path = file
    .replace(/\.ts$/, '')
    .replace(/(^|\/)index$/, '')
    .replace(/\[([^\]]+)\]/g, ':$1');
  return `/${path}`;
}
