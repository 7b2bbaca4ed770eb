import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { test } from 'node:test';
import { allowedMethods } from '../app.ts';
import { manifest, pathOf, routePath } from '../routes/index.ts';

async function routeFiles(folder: string): Promise<string[]> {
  const entries = await readdir(folder, { withFileTypes: true, recursive: true });
  return entries
    .filter((entry) => entry.isFile() && entry.name.endsWith('.ts'))
    .map((entry) => relative('routes', join(entry.parentPath ?? entry.path, entry.name)))
    .filter((file) => file !== 'index.ts')
    .sort();
}

test('the route manifest lists exactly the files under routes/', async () => {
  assert.deepEqual(manifest.map((entry) => entry.file).sort(), await routeFiles('routes'));
});

test('every route module exports at least one HTTP method and nothing unknown', () => {
  for (const entry of manifest) {
    assert.ok(allowedMethods(entry.module).length > 0, entry.file);
    for (const name of Object.keys(entry.module)) assert.match(name, /^(GET|POST|PUT|PATCH|DELETE)$/, `${entry.file} exports ${name}`);
  }
});

test('route paths follow from file names', () => {
  assert.equal(routePath('lease.ts'), '/lease');
  assert.equal(routePath('lease/[token].ts'), '/lease/:token');
  assert.equal(routePath('lease/[provider]/[token].ts'), '/lease/:provider/:token');
  assert.equal(routePath('index.ts'), '/');
});

test('every /lease, /leases and /cleanup route requires auth; health, readiness, metrics, OpenAPI and the status page do not', () => {
  for (const entry of manifest) assert.equal(entry.auth, pathOf(entry).startsWith('/lease') || pathOf(entry) === '/cleanup', entry.file);
});

test('a path is given explicitly only where the file name cannot say it', () => {
  for (const entry of manifest) {
    if (entry.path !== undefined) assert.equal(entry.path, '/', entry.file);
  }
});

test('GET /openapi.json lists exactly the routes and methods of the manifest', async () => {
  const { openApiDocument } = await import('../services/openapi.ts');
  const documented = Object.entries(openApiDocument.paths)
    .flatMap(([path, operations]) => Object.keys(operations).map((method) => `${method.toUpperCase()} ${path}`))
    .sort();
  const served = manifest
    .flatMap((entry) => allowedMethods(entry.module).map((method) => `${method} ${pathOf(entry).replace(/:(\w+)/g, '{$1}')}`))
    .sort();
  assert.deepEqual(documented, served);
  assert.equal(openApiDocument.openapi, '3.1.0');
});
