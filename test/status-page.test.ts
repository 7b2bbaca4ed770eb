// The status page (GET /) against the real server process, driven by a real Chromium: it is
// served without auth and without data, asks for the token, shows the pool with its labels and
// versions, renders notes as text, follows a release by polling /leases on its own, filters by
// state and label, stacks its rows at 400 px without sideways scrolling, and has its icon.

import assert from 'node:assert/strict';
import { stringify } from 'yaml';
import { existsSync } from 'node:fs';
import { rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Browser, Page } from 'playwright-core';
import { poolOf, tempDir, writePool, type PoolCluster } from './support/harness.ts';
import { startServerProcess, type ServerProcess } from './support/server-process.ts';

const TOKEN = 'status-page-shared-token';
const CHROMIUM = '/usr/bin/chromium';
const LINK_NOTE = 'https://ci.example/job/1';
const HOSTILE_NOTE = '<img src=x onerror=alert(1)>';
const HAS_CHROMIUM = existsSync(CHROMIUM);
/** The shared pool: labels and versions to show and filter by. */
const POOL: PoolCluster[] = poolOf(3).map((cluster, index) => ({
  ...cluster,
  labels: [{ size: 'small', arch: 'amd64' }, { size: 'large', arch: 'amd64' }, { size: 'small', arch: 'arm64' }][index],
  version: ['1.31.4', '1.32.1', '1.32.1'][index],
}));

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
        STATIC_POOL_FILE: await writePool(folder, POOL),
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
    // Same-origin relative addresses only (the favicon): no scheme, no host.
    const addresses = [...html.matchAll(/<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)="([^"]*)"/gi)].map((match) => match[1]);
    assert.deepEqual(addresses, ['favicon.svg']);
    assert.equal(directives.get('img-src'), "'self'", 'images (the favicon) from this server only');
    for (const secret of [...secrets(), 'pool-1', LINK_NOTE]) assert.equal(html.includes(secret), false, 'the page embeds data');

    const again = await fetch(`${server.url}/`);
    assert.notEqual(again.headers.get('content-security-policy'), policy, 'the nonce is reused');
    await again.body?.cancel();
  });

  describe('in Chromium', { skip: HAS_CHROMIUM ? false : `${CHROMIUM} is missing: the browser tests need Debian's chromium` }, () => {
    async function openPage(
      options: { url?: string; viewport?: { width: number; height: number } } = {},
    ): Promise<{ page: Page; problems: string[] }> {
      assert.ok(browser, 'the browser did not start');
      // A fresh context each time: its own sessionStorage.
      const page = await (await browser.newContext(options.viewport && { viewport: options.viewport })).newPage();
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
      await page.goto(`${options.url ?? server.url}/?refresh=1`);
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

    test('several pools: each pool\'s clusters under a heading with its name and provider, in the pools file\'s order', async () => {
      const own = await tempDir();
      const settings = { credentials: 'pool', cleanup: 'none' };
      await writeFile(join(own, 'spare.yaml'), stringify({ ...settings, clusters: poolOf(2, 'spare').map((cluster) => ({ ...cluster, server: 'https://127.9.9.9:6443' })) }));
      await writeFile(join(own, 'lab.yaml'), stringify({ ...settings, clusters: poolOf(1, 'lab').map((cluster) => ({ ...cluster, server: 'https://127.9.9.9:6443' })) }));
      await writeFile(join(own, 'pools.yaml'), stringify({ pools: [{ name: 'spare', provider: 'static', file: 'spare.yaml' }, { name: 'lab', provider: 'static', file: 'lab.yaml' }] }));
      const poolsServer = await startServerProcess(process.execPath, ['--import', 'tsx', 'main.ts'], {
        AUTH_TOKEN: TOKEN,
        POOLS_FILE: join(own, 'pools.yaml'),
        LEASE_STORE_FILE: join(own, 'leases.json'),
      });
      try {
        const { page, problems } = await openPage({ url: poolsServer.url });
        await signIn(page, TOKEN);
        await page.locator('tbody tr').nth(4).waitFor({ timeout: 5000 });
        const rows = await page.locator('tbody tr').evaluateAll((elements) =>
          elements.map((element) => (element.classList.contains('pool-row') ? `# ${element.textContent}` : (element.querySelector('th')?.textContent ?? ''))),
        );
        assert.deepEqual(rows, ['# spare static', 'spare-1', 'spare-2', '# lab static', 'lab-1']);
        assert.deepEqual(problems, []);
      } finally {
        await poolsServer.stop();
        await rm(own, { recursive: true, force: true });
      }
    });

    test('labels and versions have their columns; the state and label filters narrow the list, survive polls and stay in the URL', async () => {
      const { page, problems } = await openPage();
      await signIn(page, TOKEN);
      await page.locator('tbody tr').nth(2).waitFor();
      const headers = await page.locator('thead th').allTextContents();
      assert.deepEqual(headers.slice(0, 5), ['Name', 'Location', 'Version', 'Labels', 'State']);
      assert.deepEqual(await rowOf(page, 'pool-2').locator('td.labels .chip').allTextContents(), ['arch=amd64', 'size=large']);
      assert.equal(await rowOf(page, 'pool-2').locator('td.version').textContent(), '1.32.1');
      assert.equal(await rowOf(page, 'pool-1').locator('td.version').textContent(), '1.31.4');

      // What the server says, so that the test holds whichever clusters the leases took.
      const pool = (await call('GET', '/leases')).body as { clusters: { name: string; state: string; labels: Record<string, string> }[] };
      const expected = (state: string | undefined, labels: Record<string, string>) =>
        pool.clusters
          .filter((cluster) => (!state || cluster.state === state) && Object.entries(labels).every(([key, value]) => cluster.labels[key] === value))
          .map((cluster) => cluster.name)
          .sort();
      const shownNames = async () => (await page.getByRole('rowheader').allTextContents()).sort();
      const stateFilter = page.locator('#state-filter');
      const labelFilter = page.locator('#label-filter');

      await stateFilter.selectOption('leased');
      assert.ok(expected('leased', {}).length > 0);
      assert.deepEqual(await shownNames(), expected('leased', {}));
      assert.equal(new URL(page.url()).searchParams.get('state'), 'leased');

      await labelFilter.fill('size=small');
      assert.deepEqual(await shownNames(), expected('leased', { size: 'small' }));
      await stateFilter.selectOption('');
      assert.deepEqual(await shownNames(), expected(undefined, { size: 'small' }));
      await labelFilter.fill('size=small, arch=arm64');
      assert.deepEqual(await shownNames(), ['pool-3']);
      assert.equal(await page.locator('#shown').textContent(), 'Showing 1 of 3');
      assert.deepEqual([...new URL(page.url()).searchParams], [['refresh', '1'], ['label', 'size=small, arch=arm64']]);

      // The next poll re-renders the list: still filtered.
      const before = await page.locator('#updated').getAttribute('datetime');
      await eventually(async () => assert.notEqual(await page.locator('#updated').getAttribute('datetime'), before), 5000);
      assert.deepEqual(await shownNames(), ['pool-3']);

      // A key alone: clusters that have that label, whatever its value.
      await labelFilter.fill('size');
      assert.deepEqual(await shownNames(), ['pool-1', 'pool-2', 'pool-3']);
      await labelFilter.fill('gpu');
      assert.deepEqual(await shownNames(), []);
      await labelFilter.fill('size=huge');
      assert.deepEqual(await shownNames(), []);
      assert.equal(await page.locator('tbody').textContent(), 'No cluster matches the filters.');

      // A label chip filters by its pair.
      await labelFilter.fill('');
      assert.equal(await page.locator('#shown').textContent(), '');
      await rowOf(page, 'pool-2').getByRole('button', { name: 'size=large' }).click();
      assert.equal(await labelFilter.inputValue(), 'size=large');
      assert.deepEqual(await shownNames(), ['pool-2']);

      // A shared link opens on the same view.
      await page.goto(`${server.url}/?refresh=1&state=free&label=size%3Dsmall`);
      await page.getByRole('status').filter({ hasText: 'Watching 3 clusters' }).waitFor();
      assert.equal(await stateFilter.inputValue(), 'free');
      assert.equal(await labelFilter.inputValue(), 'size=small');
      assert.deepEqual(await shownNames(), expected('free', { size: 'small' }));
      assert.deepEqual(problems, []);
      await page.context().close();
    });

    test('at 400 px wide the rows stack as cards with no sideways scrolling; wide, it is a table again', async () => {
      const own = await tempDir();
      const longLabels = { 'team.example.com/owner': 'platform-infrastructure-and-developer-tooling', size: 'large' };
      const narrowServer = await startServerProcess(process.execPath, ['--import', 'tsx', 'main.ts'], {
        AUTH_TOKEN: TOKEN,
        STATIC_POOL_FILE: await writePool(own, [
          { name: 'e2e-cluster-with-a-name-far-too-long-for-a-phone-screen', location: 'europe-west1-b', labels: longLabels, version: '1.32.1', server: 'https://127.1.0.1:6443' },
          { name: 'pool-2', labels: { size: 'small' }, version: '1.31.4', server: 'https://127.1.0.2:6443' },
        ]),
        LEASE_STORE_FILE: join(own, 'leases.json'),
      });
      try {
        // Nearly the longest note allowed (256), without a space to break at.
        const note = `https://ci.example/${'a-very-long-path-segment-without-spaces-'.repeat(5)}job/1`;
        const granted = await fetch(`${narrowServer.url}/lease`, {
          method: 'POST',
          headers: { authorization: `Bearer ${TOKEN}` },
          body: JSON.stringify({ max_time: 600, note, cluster_regex: '^e2e-' }),
        });
        assert.equal(granted.status, 200);
        const { page, problems } = await openPage({ url: narrowServer.url, viewport: { width: 400, height: 800 } });
        await signIn(page, TOKEN);
        await page.locator('tbody tr').nth(1).waitFor();
        await page.locator('td.expires .countdown').waitFor();

        const layout = () =>
          page.evaluate(() => ({
            scrollWidth: document.documentElement.scrollWidth,
            // Every element's right edge, so that nothing is cut off either.
            rightmost: Math.max(...[...document.querySelectorAll('body *')].map((element) => element.getBoundingClientRect().right)),
            rowDisplay: getComputedStyle(document.querySelector('tbody tr') as Element).display,
            versionCaption: getComputedStyle(document.querySelector('tbody td.version') as Element, '::before').content,
          }));
        const narrow = await layout();
        assert.ok(narrow.scrollWidth <= 400, `scrollWidth ${narrow.scrollWidth} > 400`);
        assert.ok(narrow.rightmost <= 400, `an element reaches ${narrow.rightmost} px`);
        assert.equal(narrow.rowDisplay, 'block', 'rows are stacked cards');
        assert.equal(narrow.versionCaption, '"Version"', 'each cell says its column');
        const screenshot = join(own, 'status-400px.png');
        await page.screenshot({ path: screenshot, fullPage: true });
        assert.ok((await stat(screenshot)).size > 0);

        await page.setViewportSize({ width: 1280, height: 800 });
        const wide = await layout();
        assert.equal(wide.rowDisplay, 'table-row');
        assert.ok(wide.scrollWidth <= 1280, `scrollWidth ${wide.scrollWidth} > 1280`);
        assert.deepEqual(problems, []);
        await page.context().close();
      } finally {
        await narrowServer.stop();
        await rm(own, { recursive: true, force: true });
      }
    });

    test('the favicon is served by the claimer and loads under the page\'s own policy', async () => {
      const response = await fetch(`${server.url}/favicon.svg`);
      assert.equal(response.status, 200);
      assert.equal(response.headers.get('content-type'), 'image/svg+xml');
      assert.equal(response.headers.get('content-security-policy'), "default-src 'none'");
      assert.match(await response.text(), /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);

      const { page, problems } = await openPage();
      const href = await page.locator('link[rel="icon"]').evaluate((link) => (link as HTMLLinkElement).href);
      assert.equal(href, `${server.url}/favicon.svg`);
      // Decoded as an image by the page itself: the CSP's img-src lets it in.
      const width = await page.evaluate(async (url) => {
        const image = new Image();
        image.src = url;
        await image.decode();
        return image.naturalWidth;
      }, href);
      assert.ok(width > 0);
      assert.deepEqual(problems, []);
      await page.context().close();
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
