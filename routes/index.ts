// The static route manifest: every route module, imported here so that nothing scans the disk
// at run time (the same app runs under tsx and Deno). A test checks it against the files.

import type { RouteModule } from '../app.ts';
import * as cleanup from './cleanup.ts';
import * as cliBundle from './cli/k8s-claimer.mjs.ts';
import * as favicon from './favicon.svg.ts';
import * as healthz from './healthz.ts';
import * as lease from './lease.ts';
import * as leases from './leases.ts';
import * as leaseByProviderAndToken from './lease/[provider]/[token].ts';
import * as leaseByToken from './lease/[token].ts';
import * as metrics from './metrics.ts';
import * as openapi from './openapi.json.ts';
import * as readyz from './readyz.ts';
import * as status from './status.ts';

export interface RouteEntry {
  /** The module's file under routes/; its path follows from it (`lease/[token].ts` is `/lease/:token`). */
  file: string;
  /** Only where the file name cannot say it: `/` (index.ts is this manifest). */
  path?: string;
  module: RouteModule;
  /** Whether callers must authenticate. */
  auth: boolean;
}

export const manifest: readonly RouteEntry[] = [
  { file: 'cleanup.ts', module: cleanup, auth: true },
  { file: 'cli/k8s-claimer.mjs.ts', module: cliBundle, auth: false },
  { file: 'healthz.ts', module: healthz, auth: false },
  { file: 'lease.ts', module: lease, auth: true },
  { file: 'lease/[token].ts', module: leaseByToken, auth: true },
  { file: 'lease/[provider]/[token].ts', module: leaseByProviderAndToken, auth: true },
  { file: 'leases.ts', module: leases, auth: true },
  { file: 'readyz.ts', module: readyz, auth: false },
  { file: 'metrics.ts', module: metrics, auth: false },
  { file: 'openapi.json.ts', module: openapi, auth: false },
  { file: 'status.ts', path: '/', module: status, auth: false },
  { file: 'favicon.svg.ts', module: favicon, auth: false },
];

/** The path an entry serves. */
export function pathOf(entry: RouteEntry): string {
  return entry.path ?? routePath(entry.file);
}

/** `lease/[provider]/[token].ts` -> `/lease/:provider/:token`; `index.ts` files name their folder. */
export function routePath(file: string): string {
  const path = file
    .replace(/\.ts$/, '')
    .replace(/(^|\/)index$/, '')
    .replace(/\[([^\]]+)\]/g, ':$1');
  return `/${path}`;
}
