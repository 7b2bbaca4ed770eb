// `npm run build`: the CLI as one file that needs nothing but Node 22 or newer
// (dist/k8s-claimer.mjs), and, on linux-x64, as a single executable with its own Node inside
// (dist/k8s-claimer-linux-x64). `npm run build:mjs` makes only the .mjs: the image's build,
// where esbuild comes with tsx and postject is not installed.

import { spawn } from 'node:child_process';
import { chmod, copyFile, mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import process from 'node:process';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const ENTRY = join(ROOT, 'cli', 'program.ts');
const DIST = join(ROOT, 'dist');
const BUNDLE = join(DIST, 'k8s-claimer.mjs');
const EXECUTABLE = join(DIST, 'k8s-claimer-linux-x64');
/** The oldest Node line the CLI supports (package.json's engines). */
const TARGET = 'node22';
/** Where Node looks for an injected blob; postject flips it (docs: single-executable-applications). */
const SEA_FUSE = 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2';

/** The whole CLI in one file: its modules and valibot inlined, only node: builtins imported. */
async function bundle(outfile: string, format: 'esm' | 'cjs'): Promise<void> {
  await build({
    entryPoints: [ENTRY],
    outfile,
    format,
    bundle: true,
    platform: 'node',
    target: TARGET,
    // A downloaded file is run as `node k8s-claimer.mjs`, or as a command once made executable.
    ...(format === 'esm' && { banner: { js: '#!/usr/bin/env node' } }),
    logLevel: 'warning',
  });
}

/**
 * Node's single-executable application: the CLI as a CommonJS bundle (what Node 22 and 24 can
 * run as an injected main script), a blob made by this very Node, injected into a copy of it.
 * Written next to its place and renamed, so a failed build never leaves a broken executable.
 */
async function singleExecutable(target: string): Promise<void> {
  const node = await readFile(process.execPath);
  if (!node.includes(SEA_FUSE)) {
    throw new Error(`${process.execPath} has no single-executable fuse (a Node built without it, e.g. by a distribution); build with an official Node binary`);
  }
  const work = await mkdtemp(join(tmpdir(), 'k8s-claimer-sea-'));
  const partial = `${target}.${process.pid}.tmp`;
  try {
    const main = join(work, 'k8s-claimer.cjs');
    const blob = join(work, 'k8s-claimer.blob');
    const config = join(work, 'sea-config.json');
    await bundle(main, 'cjs');
    await writeFile(config, JSON.stringify({ main, output: blob, disableExperimentalSEAWarning: true }));
    await runQuietly(process.execPath, ['--experimental-sea-config', config]);
    await copyFile(process.execPath, partial);
    await chmod(partial, 0o755);
    const postject = createRequire(import.meta.url).resolve('postject/dist/cli.js');
    await runQuietly(process.execPath, [postject, partial, 'NODE_SEA_BLOB', blob, '--sentinel-fuse', SEA_FUSE]);
    await rename(partial, target);
  } finally {
    await rm(partial, { force: true });
    await rm(work, { recursive: true, force: true });
  }
}

/** Runs a build tool; its chatter (postject's section warnings) is shown only when it fails. */
function runQuietly(command: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.once('error', reject);
    child.once('exit', (code, signal) => {
      if (code === 0) resolve();
      else reject(new Error(`${args.slice(0, 2).join(' ')} failed (${signal ?? `exit ${code}`}):\n${output}`));
    });
  });
}

async function buildAll(bundleOnly: boolean): Promise<void> {
  await mkdir(DIST, { recursive: true });
  await bundle(BUNDLE, 'esm');
  console.log(`built ${relative(ROOT, BUNDLE)}`);
  if (bundleOnly) return;
  if (process.platform !== 'linux' || process.arch !== 'x64') {
    console.log(`the single executable is built on linux-x64 only; this is ${process.platform}-${process.arch}: skipped`);
    return;
  }
  await singleExecutable(EXECUTABLE);
  console.log(`built ${relative(ROOT, EXECUTABLE)} (Node ${process.version})`);
}

const [option, ...rest] = process.argv.slice(2);
if (rest.length > 0 || (option !== undefined && option !== '--bundle-only')) {
  console.error('usage: tsx cli/build.ts [--bundle-only]');
  process.exit(2);
}
try {
  await buildAll(option === '--bundle-only');
} catch (error) {
  console.error(`k8s-claimer build: ${error instanceof Error ? error.message : String(error)}`);
  process.exit(1);
}
