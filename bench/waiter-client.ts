// The jobs of scenario (i), in a process of their own: waiting requests sent in rounds, each
// round once the one before is queued (so that arrival order is known), spread round-robin over
// the replicas. A job releases its cluster as soon as it is granted, so that the next waiter
// is served. argv: token, count, round size, url...
// Prints `{"queued": n}` once every request waits, then one JSON line of what was served.

const [token, countText, roundText, ...urls] = process.argv.slice(2);
const count = Number(countText);
const roundSize = Number(roundText);
const headers = { authorization: `Bearer ${token}` };

await Promise.all(urls.map((url) => fetch(`${url}/healthz`).then((response) => response.text())));

/** Rounds of the jobs in the order their answers came, and with when the server granted each. */
const grantedRounds: number[] = [];
const grants: Array<{ round: number; grantedAt: number }> = [];
let errors = 0;
let failures = 0;

async function job(index: number, round: number): Promise<void> {
  const url = urls[index % urls.length];
  const response = await fetch(`${url}/lease`, { method: 'POST', headers, body: JSON.stringify({ max_time: 600, wait: 3600, note: `round ${round}` }) });
  const body = await response.json();
  if (response.status !== 200) {
    if (response.status >= 500) errors += 1;
    else failures += 1;
    return;
  }
  grantedRounds.push(round);
  // The lease's start: when the claimer decided the grant (its expiry less the max_time asked).
  grants.push({ round, grantedAt: Date.parse(body.expires_at) - 600_000 });
  const released = await fetch(`${url}/lease/${body.token}`, { method: 'DELETE', headers });
  await released.text();
  if (released.status !== 200) failures += 1;
}

async function waitingNow(): Promise<number> {
  const response = await fetch(`${urls[0]}/leases`, { headers });
  return ((await response.json()) as { waiting: number }).waiting;
}

const started = performance.now();
const jobs: Array<Promise<void>> = [];
for (let round = 0; round * roundSize < count; round++) {
  const size = Math.min(roundSize, count - round * roundSize);
  for (let offset = 0; offset < size; offset++) jobs.push(job(round * roundSize + offset, round));
  const expected = round * roundSize + size;
  while ((await waitingNow()) < expected) await new Promise((resolve) => setTimeout(resolve, 5));
}
process.stdout.write(`${JSON.stringify({ queued: count, enqueueMs: performance.now() - started })}\n`);
await Promise.all(jobs);
process.stdout.write(`${JSON.stringify({ served: grantedRounds.length, grantedRounds, grants, errors, failures })}\n`);
