// The burst's clients in a process of their own (so that their CPU is not charged to the
// claimers): all requests at once, spread round-robin over the replicas.
// argv: token, count, url...   Prints one JSON line: wall time, statuses, leased cluster ids, and
// the reasons of the answers that were not 200, counted.

const [token, countText, ...urls] = process.argv.slice(2);
const count = Number(countText);

// Connect first (as CI runners already are, to their own network), then fire all at once.
await Promise.all(urls.map((url) => fetch(`${url}/healthz`).then((response) => response.text())));

const started = performance.now();
const results = await Promise.all(
  Array.from({ length: count }, async (_, index) => {
    const response = await fetch(`${urls[index % urls.length]}/lease`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}` },
      body: JSON.stringify({ max_time: 600 }),
    });
    const body = await response.json();
    return { status: response.status, cluster: response.status === 200 ? (body.cluster_id as string) : undefined, reason: body.reason as string | undefined };
  }),
);
const wall = performance.now() - started;
const statuses = results.map((result) => result.status);
const clusters = results.flatMap((result) => (result.cluster ? [result.cluster] : []));
const reasons: Record<string, number> = {};
for (const result of results) if (result.status !== 200) reasons[`${result.status} ${result.reason ?? ''}`] = (reasons[`${result.status} ${result.reason ?? ''}`] ?? 0) + 1;
process.stdout.write(`${JSON.stringify({ wall, statuses, clusters, reasons })}\n`);
