// The status page (GET /) against the real server process, driven by a real Chromium: it is
// served without auth and without data, asks for the token, shows the pool, renders notes as
// text, and follows a release by polling /leases on its own.

import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Browser, Page } from 'playwright-core';
import { poolOf, tempDir, writePool } from './support/harness.ts';
import { startServerProcess, type ServerProcess } from './support/server-process.ts';

const TOKEN = 'status-page-shared-token';
const CHROMIUM = '/usr/bin/chromium';
const LINK_NOTE = 'https://ci.example/job/1';
const HOSTILE_NOTE = '<img src=x onerror=alert(1)>';
const HAS_CHROMIUM = existsSync(CHROMIUM);

async function launchBrowser(): Promise<Browser> {
  const { chromium } = await import('playwright-core');
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

/** Retries an assertion until it holds or the time is up. */
async function eventually(check: () => Promise<void>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await check();
    } catch (error) {
      if (Date.now() > deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
}

interface Granted {
  token: string;
  kubeconfig: string;
  cluster_name: string;
}

describe('the status page', () => {
  let folder: string;
  let server: ServerProcess;
  let linked: Granted;
  let hostile: Granted;
  let browser: Browser | undefined;

  async function call(method: string, path: string, body?: unknown): Promise<{ status: number; body: unknown }> {
    const response = await fetch(`${server.url}${path}`, {
      method,
      headers: { authorization: `Bearer ${TOKEN}` },
      ...(body !== undefined && { body: JSON.stringify(body) }),
    });
    return { status: response.status, body: await response.json() };
  }

  async function lease(note: string): Promise<Granted> {
    const { status, body } = await call('POST', '/lease', { max_time: 600, note });
    assert.equal(status, 200);
    return body as Granted;
  }

  /** Everything that must never reach the page: the shared token, lease tokens, kubeconfigs. */
  function secrets(): string[] {
    return [TOKEN, ...[linked, hostile].flatMap((granted) => [granted.token, granted.kubeconfig, Buffer.from(granted.kubeconfig, 'base64').toString('utf8')])];
  }

  before(async () => {
    folder = await tempDir();
    // Both take seconds: the browser starts while the server does.
    const [started, launched] = await Promise.allSettled([
      startServerProcess(process.execPath, ['--import', 'tsx', 'main.ts'], {
        AUTH_TOKEN: TOKEN,
        STATIC_POOL_FILE: await writePool(folder, poolOf(3)),
        LEASE_STORE_FILE: join(folder, 'leases.json'),
      }),
      HAS_CHROMIUM ? launchBrowser() : Promise.resolve(undefined),
    ]);
    if (launched.status === 'fulfilled') browser = launched.value;
    if (started.status === 'rejected') throw started.reason;
    server = started.value;
    if (launched.status === 'rejected') throw launched.reason;
    linked = await lease(LINK_NOTE);
    hostile = await lease(HOSTILE_NOTE);
  });
  after(async () => {
    await browser?.close();
    await server?.stop();
    await rm(folder, { recursive: true, force: true });
  });

  test('GET / needs no auth, embeds no data and sends a strict CSP with a fresh nonce', async () => {
    const response = await fetch(`${server.url}/`);
    assert.equal(response.status, 200);
    assert.equal(response.headers.get('content-type'), 'text/html; charset=utf-8');
    assert.equal(response.headers.get('x-content-type-options'), 'nosniff');
    assert.equal(response.headers.get('referrer-policy'), 'no-referrer');
    assert.equal(response.headers.get('cache-control'), 'no-store');
    const policy = response.headers.get('content-security-policy') ?? '';
    const directives = new Map(policy.split(';').map((part) => {
      const [name = '', ...values] = part.trim().split(/\s+/);
      return [name, values.join(' ')] as const;
    }));
    assert.equal(directives.get('default-src'), "'none'");
    assert.equal(directives.get('connect-src'), "'self'");
    assert.match(directives.get('script-src') ?? '', /^'nonce-[\w+/-]{16,}={0,2}'$/);
    assert.equal(directives.get('style-src'), directives.get('script-src'));
    assert.equal(policy.includes('unsafe'), false);

    const html = await response.text();
    const nonce = /'nonce-([^']+)'/.exec(policy)?.[1];
    const tags = html.match(/<(script|style)\b[^>]*>/g) ?? [];
    assert.ok(tags.length >= 2);
    for (const tag of tags) assert.ok(tag.includes(`nonce="${nonce}"`), `${tag} lacks the response's nonce`);
    assert.doesNotMatch(html, /<(script|link|img|iframe)\b[^>]*\b(src|href)=/i, 'an external resource');
    for (const secret of [...secrets(), 'pool-1', LINK_NOTE]) assert.equal(html.includes(secret), false, 'the page embeds data');

    const again = await fetch(`${server.url}/`);
    assert.notEqual(again.headers.get('content-security-policy'), policy, 'the nonce is reused');
    await again.body?.cancel();
  });

  describe('in Chromium', { skip: HAS_CHROMIUM ? false : `${CHROMIUM} is missing: the browser tests need Debian's chromium` }, () => {
    async function openPage(): Promise<{ page: Page; problems: string[] }> {
      assert.ok(browser, 'the browser did not start');
      // A fresh context each time: its own sessionStorage.
      const page = await (await browser.newContext()).newPage();
      // CSP violations and script errors: the page must work under its own policy.
      const problems: string[] = [];
      page.on('console', (message) => {
        if (/content.security.policy/i.test(message.text())) problems.push(message.text());
      });
      page.on('pageerror', (error) => problems.push(error.message));
      page.on('dialog', (dialog) => {
        problems.push(`a dialog opened: ${dialog.message()}`);
        void dialog.dismiss();
      });
      await page.goto(`${server.url}/?refresh=1`);
      return { page, problems };
    }

    async function signIn(page: Page, token: string): Promise<void> {
      await page.getByLabel('Claimer token').fill(token);
      await page.getByRole('button', { name: 'Show pool' }).click();
    }

    const rowOf = (page: Page, name: string) =>
      page.locator('tbody tr').filter({ has: page.getByRole('rowheader', { name, exact: true }) });

    test('shows the pool after the token, follows a release by itself, and survives a network error', async () => {
      const { page, problems } = await openPage();
      await page.getByRole('status').filter({ hasText: 'Enter the claimer token' }).waitFor();
      assert.equal(await page.locator('tbody tr').count(), 0, 'data shown before the token');

      await signIn(page, TOKEN);
      await page.locator('tbody tr').nth(2).waitFor();
      assert.equal(await page.locator('tbody tr').count(), 3);
      assert.equal(await page.getByLabel('Claimer token').inputValue(), '', 'the token stays in the field');
      assert.equal(await page.locator('#n-free').textContent(), '1');
      assert.equal(await page.locator('#n-leased').textContent(), '2');
      assert.match((await page.locator('#updated').textContent()) ?? '', /^Last updated /);

      const leasedRow = rowOf(page, linked.cluster_name);
      assert.equal(await leasedRow.locator('td.state').textContent(), 'leased');
      const countdown = leasedRow.locator('.countdown');
      const first = (await countdown.textContent()) ?? '';
      assert.match(first, /^(9m 5\d|10m 0)s left$/);
      // It ticks in the browser (each poll also re-renders the row, so read it afresh).
      await eventually(async () => assert.notEqual(await countdown.textContent(), first), 3000);
      const link = leasedRow.locator('td.note a');
      assert.equal(await link.getAttribute('href'), LINK_NOTE);
      assert.equal(await link.getAttribute('rel'), 'noopener noreferrer');
      assert.equal(await link.textContent(), LINK_NOTE);

      // The hostile note is text: no element made of it, no handler run.
      assert.equal(await rowOf(page, hostile.cluster_name).locator('td.note').textContent(), HOSTILE_NOTE);
      assert.equal(await page.locator('tbody img').count(), 0);
      assert.equal(await page.locator('tbody a').count(), 1, 'only the URL note is a link');

      const rendered = await page.content();
      for (const secret of secrets()) assert.equal(rendered.includes(secret), false, 'a secret reached the page');

      assert.equal((await call('DELETE', `/lease/${linked.token}`)).status, 200);
      await leasedRow.locator('td.state .badge-free').waitFor({ timeout: 5000 });
      assert.equal(await leasedRow.locator('td.note').textContent(), '');
      assert.equal(await page.locator('#n-free').textContent(), '2');

      // Unreachable: a banner, and the polling goes on until the server answers again.
      await page.route('**/leases', (route) => route.abort('internetdisconnected'));
      await page.getByRole('alert').filter({ hasText: 'Cannot reach the claimer' }).waitFor({ timeout: 5000 });
      await page.unroute('**/leases');
      await page.getByRole('alert').waitFor({ state: 'hidden', timeout: 5000 });

      // The token outlives a reload of the tab (sessionStorage), not the tab.
      await page.reload();
      await page.locator('tbody tr').nth(2).waitFor();
      assert.deepEqual(problems, []);
      await page.context().close();
    });

    test('a quarantined cluster shows as such with its reason, and as free again once POST /cleanup returned it', async () => {
      const own = await tempDir();
      const storeFile = join(own, 'leases.json');
      const reason = 'deleting namespaces failed: still terminating after 300 s: e2e-7 (finalizers: example.com/teardown)';
      const retryAt = new Date(Date.now() + 3_600_000).toISOString();
      // The table as a claimer left it after five failed cleanups of pool-1.
      const quarantined = { cluster: 'static/pool-1', state: 'quarantined', idle_since: new Date().toISOString(), cleanup: { attempts: 5, last_error: reason, retry_at: retryAt } };
      await writeFile(storeFile, JSON.stringify({ format: 'k8s-claimer/lease-table/v1', version: 1, clusters: [quarantined], legacy: {}, waiters: [] }));
      const quarantineServer = await startServerProcess(process.execPath, ['--import', 'tsx', 'main.ts'], {
        AUTH_TOKEN: TOKEN,
        STATIC_POOL_FILE: await writePool(own, poolOf(2)),
        LEASE_STORE_FILE: storeFile,
      });
      try {
        assert.ok(browser, 'the browser did not start');
        const page = await (await browser.newContext()).newPage();
        await page.goto(`${quarantineServer.url}/?refresh=1`);
        await signIn(page, TOKEN);
        const row = rowOf(page, 'pool-1');
        await row.locator('td.state .badge-quarantined').waitFor({ timeout: 5000 });
        assert.equal(await row.locator('td.state').textContent(), 'quarantined');
        assert.match((await row.locator('td.cleanup').textContent()) ?? '', /^attempt 5 · deleting namespaces failed: still terminating after 300 s: e2e-7 \(finalizers: example\.com\/teardown\) · retry at /);
        assert.equal(await page.locator('#n-quarantined').textContent(), '1');
        assert.equal(await page.locator('#n-free').textContent(), '1');

        const returned = await fetch(`${quarantineServer.url}/cleanup`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}` }, body: JSON.stringify({ cluster: 'static/pool-1' }) });
        assert.equal(returned.status, 200);
        await row.locator('td.state .badge-free').waitFor({ timeout: 5000 });
        assert.equal(await page.locator('#n-quarantined').textContent(), '0');
        await page.context().close();
      } finally {
        await quarantineServer.stop();
        await rm(own, { recursive: true, force: true });
      }
    });

    test('a wrong token shows "wrong token" and asks again', async () => {
      const { page, problems } = await openPage();
      await signIn(page, 'not-the-token');
      await page.getByRole('status').filter({ hasText: /wrong token/i }).waitFor({ timeout: 5000 });
      assert.ok(await page.getByLabel('Claimer token').isVisible());
      assert.equal(await page.locator('tbody tr').count(), 0);
      assert.equal(await page.evaluate(() => sessionStorage.length), 0, 'a wrong token was kept');
      assert.deepEqual(problems, []);
      await page.context().close();
    });
  });
});
