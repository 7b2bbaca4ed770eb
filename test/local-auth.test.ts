import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmod, mkdir, open, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import process from 'node:process';
import { describe, test } from 'node:test';
import { ensureLocalAuthToken } from '../services/local-auth.ts';
import { withFolder } from './support/harness.ts';

async function modeOf(path: string): Promise<number> {
  return (await stat(path)).mode & 0o777;
}

/** A file of this mode whatever the umask. */
async function writeWithMode(path: string, content: string, mode: number): Promise<void> {
  await writeFile(path, content);
  await chmod(path, mode);
}

describe('local-mode token file', () => {
  test('a new token file is private from the start', async () => {
    await withFolder(async (folder) => {
      const path = join(folder, 'data', 'auth-token');
      const local = await ensureLocalAuthToken(path);
      assert.equal(local.generated, true);
      assert.equal(local.warning, undefined);
      assert.equal(await modeOf(path), 0o600);
      assert.equal((await readFile(path, 'utf8')).trim(), local.token);
    });
  });

  test('an empty token file of mode 0644: the new token goes into a new private file, never into the old one', async () => {
    await withFolder(async (folder) => {
      const path = join(folder, 'auth-token');
      await writeWithMode(path, '', 0o644);
      // Someone who opened the world-readable file before the claimer started.
      const reader = await open(path, 'r');
      try {
        const local = await ensureLocalAuthToken(path);
        assert.equal(local.generated, true);
        assert.equal(await modeOf(path), 0o600);
        assert.equal((await readFile(path, 'utf8')).trim(), local.token);
        assert.equal(await reader.readFile('utf8'), '', 'the token was written into the file others could read');
        assert.match(local.warning ?? '', /mode 0644, readable by others/);
      } finally {
        await reader.close();
      }
    });
  });

  test('a token file readable by others is made private, with a warning that names the mode, and the token is kept', async () => {
    await withFolder(async (folder) => {
      const path = join(folder, 'auth-token');
      await writeWithMode(path, 'kept-token-0123456789\n', 0o644);
      const local = await ensureLocalAuthToken(path);
      assert.deepEqual({ token: local.token, generated: local.generated }, { token: 'kept-token-0123456789', generated: false });
      assert.equal(await modeOf(path), 0o600);
      assert.match(local.warning ?? '', /had mode 0644, readable by others: changed it to 0600/);
      assert.doesNotMatch(local.warning ?? '', /kept-token/);
      // Private already: nothing to say.
      assert.equal((await ensureLocalAuthToken(path)).warning, undefined);
    });
  });

  const root = process.getuid?.() === 0;
  test('a token file readable by others that is not ours to fix is refused', { skip: !root && 'needs root to run the claimer as another user' }, async () => {
    await withFolder(async (folder) => {
      const path = join(folder, 'shared', 'auth-token');
      await mkdir(join(folder, 'shared'));
      // The claimer runs as nobody; the file belongs to root and everyone may read it.
      await chmod(folder, 0o755);
      await chmod(join(folder, 'shared'), 0o755);
      await writeWithMode(path, 'someone-elses-token\n', 0o644);
      const script = `
        import { ensureLocalAuthToken } from './services/local-auth.ts';
        try {
          console.log(JSON.stringify({ granted: await ensureLocalAuthToken(${JSON.stringify(path)}) }));
        } catch (error) {
          console.log(JSON.stringify({ refused: { name: error.name, message: error.message } }));
        }`;
      const run = spawnSync(
        'setpriv',
        ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, '--import', 'tsx', '--input-type=module', '-e', script],
        { encoding: 'utf8' },
      );
      assert.equal(run.status, 0, run.stderr);
      const { refused } = JSON.parse(run.stdout);
      assert.equal(refused?.name, 'LocalTokenFileError', run.stdout);
      assert.match(refused.message, new RegExp(`${path} is readable by others \\(mode 0644\\).*chmod 600.*AUTH_TOKEN`));
      assert.doesNotMatch(refused.message, /someone-elses-token/);
      assert.equal(await modeOf(path), 0o644);
    });
  });
});
