// GET / - no auth. 200 the status page (HTML); it shows nothing until given a token, then polls /leases.

// The page is static apart from a per-response CSP nonce: it embeds no pool data, so serving it
// without auth leaks nothing. Its script asks for the claimer's token (kept in this tab's
// sessionStorage only), polls GET /leases with it and renders every value with textContent.
// Filters by state and label run in the page and live in the query string, so a filtered view
// is a link to share. Below 48rem the table's rows become stacked cards.

import type { RouteContext, RouteRequest } from '../app.ts';

const STYLE = `
:root { color-scheme: light dark; --fg: #1f2328; --muted: #59636e; --bg: #fff; --line: #d1d9e0; --head: #f6f8fa; }
[hidden] { display: none !important; }
body { margin: 0 auto; padding: 1.5rem; max-width: 72rem; font: 14px/1.5 system-ui, sans-serif; color: var(--fg); background: var(--bg); }
header { display: flex; flex-wrap: wrap; align-items: baseline; gap: 0 1rem; }
h1 { font-size: 1.4rem; margin: 0 0 .5rem; }
#status { color: var(--muted); margin: 0; }
.banner { margin: 1rem 0; padding: .6rem .9rem; border: 1px solid #d1242f; border-radius: 6px; background: #d1242f1a; }
form { display: flex; flex-wrap: wrap; align-items: center; gap: .5rem; margin: 1.5rem 0; }
input, button, select { font: inherit; padding: .35rem .6rem; border: 1px solid var(--line); border-radius: 6px; background: var(--bg); color: var(--fg); }
button { cursor: pointer; background: var(--head); }
.hint, .meta { color: var(--muted); font-size: .9em; width: 100%; margin: 0; }
.meta { display: flex; justify-content: space-between; align-items: center; margin-top: .75rem; }
.counts { display: flex; gap: .75rem; margin: 1rem 0; padding: 0; }
.counts div { border: 1px solid var(--line); border-radius: 6px; padding: .4rem .9rem; min-width: 5rem; }
.counts dt { color: var(--muted); font-size: .85em; }
.counts dd { margin: 0; font-size: 1.4rem; font-weight: 600; }
.filters { display: flex; flex-wrap: wrap; align-items: center; gap: .5rem 1rem; margin: 1rem 0; }
.filters label { display: flex; align-items: center; gap: .4rem; }
.filters input { width: 16rem; max-width: 100%; }
#shown { color: var(--muted); }
table { width: 100%; border-collapse: collapse; }
th, td { text-align: left; padding: .45rem .6rem; border-bottom: 1px solid var(--line); vertical-align: top; }
thead th { background: var(--head); font-weight: 600; }
td.expires { white-space: nowrap; font-variant-numeric: tabular-nums; }
td.note, td.cleanup { overflow-wrap: anywhere; max-width: 22rem; }
td.labels { max-width: 16rem; }
.chip { font-size: .8em; padding: 0 .45rem; margin: 0 .25rem .2rem 0; border-radius: 1rem; background: var(--head); overflow-wrap: anywhere; text-align: left; }
.badge { display: inline-block; padding: 0 .55rem; border-radius: 1rem; font-size: .85em; font-weight: 600; border: 1px solid; }
.badge-free { color: #1a7f37; background: #1a7f371a; }
.badge-leased { color: #0969da; background: #0969da1a; }
.badge-dirty { color: #9a6700; background: #9a67001a; }
.badge-cleaning { color: #8250df; background: #8250df1a; }
.badge-quarantined { color: #bc4c00; background: #bc4c001a; }
.badge-unavailable { color: var(--muted); background: #59636e1a; }
.badge-unknown { color: #d1242f; background: #d1242f1a; }
.badge-provisioning { color: #0550ae; background: #0550ae1a; }
.badge-hibernated { color: #57606a; background: #57606a1a; }
.badge-waking { color: #1f6feb; background: #1f6feb1a; }
.badge-deleting { color: #cf222e; background: #cf222e1a; }
tr.pool-row th { background: var(--head); font-size: 1.05rem; padding-top: .9rem; }
.pool-provider { color: var(--muted); font-weight: 400; font-size: .85em; }
.pool-problem { color: #d1242f; font-weight: 400; font-size: .85em; }
@media (max-width: 48rem) {
  body { padding: 1rem .75rem; }
  .counts { flex-wrap: wrap; gap: .5rem; }
  .counts div { flex: 1 1 4.5rem; min-width: 0; padding: .3rem .6rem; }
  .filters label { flex: 1 1 100%; }
  .filters input, .filters select { flex: 1 1 auto; min-width: 0; }
  /* Cards: each row a box, each cell a line named by its column. The head stays for screen readers. */
  thead { position: absolute; width: 1px; height: 1px; overflow: hidden; clip-path: inset(50%); }
  table, tbody, tr, th, td { display: block; }
  tbody tr { border: 1px solid var(--line); border-radius: 6px; margin: 0 0 .75rem; padding: .5rem .75rem; }
  tbody tr.pool-row { border: 0; padding: .5rem 0 0; }
  tbody th, tbody td { border: 0; padding: .15rem 0; max-width: none; overflow-wrap: anywhere; }
  tbody th { font-size: 1.05rem; }
  tbody td[data-label] { position: relative; padding-left: 6rem; }
  tbody td[data-label]::before { content: attr(data-label); position: absolute; left: 0; color: var(--muted); font-size: .85em; line-height: 1.75; }
  tbody td:empty { display: none; }
  td.expires { white-space: normal; }
}
@media (prefers-color-scheme: dark) {
  :root { --fg: #e6edf3; --muted: #9198a1; --bg: #0d1117; --line: #3d444d; --head: #151b23; }
  .badge-free { color: #3fb950; } .badge-leased { color: #4493f8; } .badge-dirty { color: #d29922; }
  .badge-cleaning { color: #ab7df8; } .badge-quarantined { color: #f0883e; } .badge-unknown { color: #f85149; }
  .badge-provisioning { color: #58a6ff; } .badge-hibernated { color: #8b949e; } .badge-waking { color: #79c0ff; } .badge-deleting { color: #ff7b72; }
}
`;

// Plain JavaScript for the browser. No template placeholders or backslashes in it: it sits in
// a TypeScript template literal.
const SCRIPT = `
'use strict';
(function () {
  var TOKEN_KEY = 'k8s-claimer.token';
  var STATES = ['free', 'leased', 'dirty', 'cleaning', 'quarantined', 'provisioning', 'hibernated', 'waking', 'deleting', 'unavailable', 'unknown'];
  var COLUMNS = ['Name', 'Location', 'Version', 'Labels', 'State', 'Expires', 'Note', 'Holder', 'Cleanup'];
  var query = new URLSearchParams(location.search);
  var asked = Number(query.get('refresh'));
  var refreshSeconds = asked >= 1 ? Math.min(asked, 300) : 5;
  var byId = function (id) { return document.getElementById(id); };
  var form = byId('login'), tokenInput = byId('token'), statusLine = byId('status');
  var banner = byId('banner'), board = byId('board'), rows = byId('rows'), updated = byId('updated');
  var stateFilter = byId('state-filter'), labelFilter = byId('label-filter'), shown = byId('shown');
  var timer = 0;
  // Each start bumps the run; answers of an older run (before a new token) are dropped.
  var run = 0;
  // The last answer and when it came: filtering again needs no new poll.
  var last = null;

  if (STATES.indexOf(query.get('state')) >= 0) stateFilter.value = query.get('state');
  labelFilter.value = query.get('label') || '';

  function say(text) { if (statusLine.textContent !== text) statusLine.textContent = text; }
  function cell(tag, className, text) {
    var element = document.createElement(tag);
    if (className) element.className = className;
    if (text !== undefined && text !== null) element.textContent = String(text);
    return element;
  }

  function askForToken(message) {
    run++;
    clearTimeout(timer);
    sessionStorage.removeItem(TOKEN_KEY);
    board.hidden = true;
    banner.hidden = true;
    rows.replaceChildren();
    last = null;
    form.hidden = false;
    say(message);
    tokenInput.focus();
  }

  function start() {
    run++;
    clearTimeout(timer);
    form.hidden = true;
    say('Loading the pool…');
    poll(run);
  }

  function schedule(current) {
    if (current === run) timer = setTimeout(function () { poll(current); }, refreshSeconds * 1000);
  }

  function trouble(message) {
    banner.textContent = message + ' Retrying every ' + refreshSeconds + ' s.';
    banner.hidden = false;
  }

  async function poll(current) {
    var token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) return askForToken('Enter the claimer token to see the pool.');
    var body;
    try {
      var response = await fetch('leases', {
        headers: { authorization: 'Bearer ' + token },
        cache: 'no-store',
        signal: AbortSignal.timeout(10000),
      });
      if (current !== run) return;
      if (response.status === 401) return askForToken('Wrong token: enter the claimer token again.');
      if (!response.ok) {
        trouble('The claimer answered ' + response.status + '.');
        return schedule(current);
      }
      body = await response.json();
    } catch (error) {
      if (current !== run) return;
      trouble('Cannot reach the claimer.');
      return schedule(current);
    }
    if (current !== run) return;
    banner.hidden = true;
    render(body);
    schedule(current);
  }

  // A note is text; only an http(s) URL becomes a link, so a javascript: note never runs.
  function noteContent(note) {
    var url = null;
    try { url = new URL(note); } catch (error) { url = null; }
    if (!url || (url.protocol !== 'https:' && url.protocol !== 'http:')) return document.createTextNode(note);
    var link = cell('a', '', note);
    link.href = url.href;
    link.rel = 'noopener noreferrer';
    link.target = '_blank';
    return link;
  }

  function labelsOf(cluster) {
    var labels = cluster.labels && typeof cluster.labels === 'object' ? cluster.labels : {};
    return Object.keys(labels).sort().map(function (key) { return key + '=' + labels[key]; });
  }

  // A label chip adds its pair to the label filter.
  function chip(pair) {
    var button = cell('button', 'chip', pair);
    button.type = 'button';
    button.title = 'Show only clusters labelled ' + pair;
    button.addEventListener('click', function () {
      var terms = filterTerms();
      if (terms.indexOf(pair) < 0) terms.push(pair);
      labelFilter.value = terms.join(' ');
      filtersChanged();
    });
    return button;
  }

  function row(cluster, now) {
    var state = STATES.indexOf(cluster.state) >= 0 ? cluster.state : 'unknown';
    var tr = document.createElement('tr');
    var name = cell('th', '', cluster.name);
    name.scope = 'row';
    var labels = cell('td', 'labels');
    labels.append(...labelsOf(cluster).map(chip));
    var stateCell = cell('td', 'state');
    var badge = cell('span', 'badge badge-' + state, state);
    if (state === 'quarantined') badge.title = 'Cleanup failed too often; POST /cleanup returns it to service';
    stateCell.append(badge);
    var expires = cell('td', 'expires');
    if (state === 'leased' && typeof cluster.seconds_left === 'number') {
      // From seconds_left rather than expires_at alone: the browser's clock may differ from the server's.
      var countdown = cell('span', 'countdown');
      countdown.dataset.deadline = String(now + cluster.seconds_left * 1000);
      if (cluster.expires_at) countdown.title = 'Expires ' + new Date(cluster.expires_at).toLocaleString();
      expires.append(countdown);
    }
    var note = cell('td', 'note');
    if (cluster.note) note.append(noteContent(String(cluster.note)));
    var cleanup = cell('td', 'cleanup');
    if (cluster.cleanup) {
      var parts = ['attempt ' + cluster.cleanup.attempts];
      if (cluster.cleanup.last_error) parts.push(cluster.cleanup.last_error);
      if (cluster.cleanup.retry_at) parts.push('retry at ' + new Date(cluster.cleanup.retry_at).toLocaleTimeString());
      cleanup.textContent = parts.join(' · ');
    }
    tr.append(name, cell('td', 'location', cluster.location), cell('td', 'version', cluster.version), labels, stateCell, expires, note,
      cell('td', 'holder', cluster.holder), cleanup);
    // Each cell names its column, for the stacked layout of narrow screens.
    Array.prototype.forEach.call(tr.children, function (element, index) {
      if (index > 0) element.dataset.label = COLUMNS[index];
    });
    return tr;
  }

  // Label filter terms: key=value (that label with that value) or key (that label, any value).
  function filterTerms() {
    return labelFilter.value.split(/[ ,]+/).filter(Boolean);
  }

  function matches(cluster, state, terms) {
    if (state && cluster.state !== state) return false;
    var labels = cluster.labels && typeof cluster.labels === 'object' ? cluster.labels : {};
    return terms.every(function (term) {
      var equals = term.indexOf('=');
      if (equals < 0) return Object.prototype.hasOwnProperty.call(labels, term);
      var key = term.slice(0, equals);
      return Object.prototype.hasOwnProperty.call(labels, key) && String(labels[key]) === term.slice(equals + 1);
    });
  }

  function showRows() {
    if (!last) return;
    var clusters = last.clusters;
    var state = stateFilter.value, terms = filterTerms();
    var visible = clusters.filter(function (cluster) { return matches(cluster, state, terms); });
    var shownRows = [];
    // Several pools: each pool's clusters under a heading that says how its last listing went.
    var grouped = last.pools.length > 1;
    var current;
    visible.forEach(function (cluster) {
      if (grouped && cluster.pool !== current) {
        current = cluster.pool;
        shownRows.push(poolHeading(last.pools.find(function (pool) { return pool.name === current; }) || { name: String(current) }));
      }
      shownRows.push(row(cluster, last.at));
    });
    rows.replaceChildren(...shownRows);
    if (visible.length === 0) {
      var empty = cell('td', '', clusters.length === 0 ? 'The pool has no clusters.' : 'No cluster matches the filters.');
      empty.colSpan = COLUMNS.length;
      var emptyRow = cell('tr');
      emptyRow.append(empty);
      rows.append(emptyRow);
    }
    shown.textContent = state || terms.length > 0 ? 'Showing ' + visible.length + ' of ' + clusters.length : '';
    tick();
  }

  function poolHeading(pool) {
    var heading = cell('th', 'pool', String(pool.name));
    heading.scope = 'rowgroup';
    heading.colSpan = COLUMNS.length;
    if (pool.provider) heading.append(cell('span', 'pool-provider', ' ' + pool.provider));
    if (pool.healthy === false) heading.append(cell('span', 'pool-problem', ' · ' + (pool.last_error || 'not answering')));
    var tr = cell('tr', 'pool-row');
    tr.append(heading);
    return tr;
  }

  function render(body) {
    var clusters = Array.isArray(body.clusters) ? body.clusters.slice() : [];
    var pools = Array.isArray(body.pools) ? body.pools : [];
    var order = pools.map(function (pool) { return pool.name; });
    clusters.sort(function (a, b) {
      return order.indexOf(a.pool) - order.indexOf(b.pool) || String(a.name).localeCompare(String(b.name));
    });
    var count = function (states) { return clusters.filter(function (c) { return states.indexOf(c.state) >= 0; }).length; };
    byId('n-free').textContent = count(['free']);
    byId('n-leased').textContent = count(['leased']);
    byId('n-cleaning').textContent = count(['dirty', 'cleaning']);
    byId('n-quarantined').textContent = count(['quarantined']);
    byId('n-waiting').textContent = Number(body.waiting) || 0;
    var now = Date.now();
    last = { clusters: clusters, pools: pools, at: now };
    showRows();
    updated.textContent = 'Last updated ' + new Date(now).toLocaleTimeString();
    updated.dateTime = new Date(now).toISOString();
    board.hidden = false;
    say('Watching ' + clusters.length + ' clusters; refreshing every ' + refreshSeconds + ' s.');
  }

  // The filters live in the query string, so that the address bar is a link to this view.
  function filtersChanged() {
    var params = new URLSearchParams(location.search);
    if (stateFilter.value) params.set('state', stateFilter.value); else params.delete('state');
    if (labelFilter.value.trim()) params.set('label', labelFilter.value.trim()); else params.delete('label');
    var search = params.toString();
    history.replaceState(null, '', search ? '?' + search : location.pathname);
    showRows();
  }

  function left(ms) {
    var total = Math.max(0, Math.ceil(ms / 1000));
    if (total === 0) return 'ending…';
    var hours = Math.floor(total / 3600), minutes = Math.floor((total % 3600) / 60), seconds = total % 60;
    return (hours ? hours + 'h ' : '') + (hours || minutes ? minutes + 'm ' : '') + seconds + 's left';
  }

  function tick() {
    var now = Date.now();
    rows.querySelectorAll('.countdown').forEach(function (span) {
      span.textContent = left(Number(span.dataset.deadline) - now);
    });
  }

  form.addEventListener('submit', function (event) {
    event.preventDefault();
    var token = tokenInput.value.trim();
    // Out of the DOM at once: the token lives in sessionStorage only.
    tokenInput.value = '';
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    start();
  });
  stateFilter.addEventListener('change', filtersChanged);
  labelFilter.addEventListener('input', filtersChanged);
  byId('filters').addEventListener('submit', function (event) { event.preventDefault(); });
  byId('forget').addEventListener('click', function () { askForToken('Token forgotten. Enter it to see the pool again.'); });
  setInterval(tick, 1000);
  if (sessionStorage.getItem(TOKEN_KEY)) start();
  else askForToken('Enter the claimer token to see the pool.');
})();
`;

function page(nonce: string): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>k8s-claimer status</title>
<link rel="icon" href="favicon.svg" type="image/svg+xml">
<style nonce="${nonce}">${STYLE}</style>
</head>
<body>
<header>
<h1>k8s-claimer</h1>
<p id="status" role="status" aria-live="polite">This page needs JavaScript.</p>
</header>
<div id="banner" class="banner" role="alert" hidden></div>
<!-- Hidden until the script runs; form-action 'none' and POST keep a token out of any URL. -->
<form id="login" method="post" autocomplete="off" hidden>
<label for="token">Claimer token</label>
<input id="token" name="token" type="password" autocomplete="off" spellcheck="false" required>
<button type="submit">Show pool</button>
<p class="hint">Kept in this browser tab only (sessionStorage); sent only to this server's /leases.</p>
</form>
<main id="board" hidden>
<dl class="counts">
<div><dt>Free</dt><dd id="n-free">0</dd></div>
<div><dt>Leased</dt><dd id="n-leased">0</dd></div>
<div><dt title="dirty or cleaning">Cleaning</dt><dd id="n-cleaning">0</dd></div>
<div><dt title="cleanup failed too often; POST /cleanup returns one to service">Quarantined</dt><dd id="n-quarantined">0</dd></div>
<div><dt>Waiting</dt><dd id="n-waiting">0</dd></div>
</dl>
<form id="filters" class="filters" role="search">
<label for="state-filter">State
<select id="state-filter">
<option value="">all</option><option>free</option><option>leased</option><option>dirty</option><option>cleaning</option>
<option>quarantined</option><option>provisioning</option><option>hibernated</option><option>waking</option><option>deleting</option><option>unavailable</option><option>unknown</option>
</select></label>
<label for="label-filter">Labels
<input id="label-filter" type="search" placeholder="size=large arch=amd64" autocomplete="off" spellcheck="false"></label>
<output id="shown" for="state-filter label-filter"></output>
</form>
<table>
<thead><tr>
<th scope="col">Name</th><th scope="col">Location</th><th scope="col">Version</th><th scope="col">Labels</th><th scope="col">State</th>
<th scope="col">Expires</th><th scope="col">Note</th><th scope="col">Holder</th><th scope="col">Cleanup</th>
</tr></thead>
<tbody id="rows"></tbody>
</table>
<p class="meta"><time id="updated"></time><button id="forget" type="button">Forget token</button></p>
</main>
<script nonce="${nonce}">${SCRIPT}</script>
</body>
</html>
`;
}

export function GET(_request: RouteRequest, _context: RouteContext): Response {
  // A fresh nonce per response: only this response's own inline style and script may run.
  const nonce = crypto.randomUUID().replaceAll('-', '');
  const policy = [
    "default-src 'none'",
    `script-src 'nonce-${nonce}'`,
    `style-src 'nonce-${nonce}'`,
    // The favicon, from this server (routes/favicon.svg.ts).
    "img-src 'self'",
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
  ].join('; ');
  return new Response(page(nonce), {
    headers: {
      'content-type': 'text/html; charset=utf-8',
      'content-security-policy': policy,
      'x-content-type-options': 'nosniff',
      'referrer-policy': 'no-referrer',
      'cache-control': 'no-store',
    },
  });
}
