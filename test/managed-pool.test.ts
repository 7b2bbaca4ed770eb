import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import {
  BUSY_RETRY_SECONDS,
  DEFAULT_CREATE_MS,
  durationSeconds,
  effectiveTargets,
  inOperation,
  ManagedSettingsError,
  parseManaged,
  plan,
  randomSuffix,
  recycleDue,
  retryAfterSeconds,
  retryBackoffMs,
  SUFFIX_LENGTH,
  type Action,
  type ManagedCluster,
  type ManagedSettings,
  type ManagedState,
  type PlanInput,
} from '../services/managed-pool.ts';

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
/** A Wednesday. */
const T0 = Date.parse('2026-03-04T12:00:00Z');
const TEMPLATE = { nodePools: [{ name: 'default', initialNodeCount: 1 }] };

function settings(overrides: Record<string, unknown> = {}): ManagedSettings {
  return parseManaged('ci', { template: TEMPLATE, min_ready: 0, max_size: 10, ...overrides });
}

/** Suffixes 000001, 000002, …: deterministic names. */
function counter(): () => string {
  let next = 0;
  return () => String(++next).padStart(SUFFIX_LENGTH, '0');
}

function input(overrides: Partial<PlanInput> & { settings: ManagedSettings }): PlanInput {
  return { now: T0, clusters: [], waiting: 0, suffix: counter(), timeZone: 'UTC', ...overrides };
}

const c = (name: string, state: ManagedState, extra: Partial<ManagedCluster> = {}): ManagedCluster => ({ name, state, leases: 0, ...extra });
const free = (name: string, idleMs = 0, extra: Partial<ManagedCluster> = {}) => c(name, 'free', { idleSince: T0 - idleMs, ...extra });
const kinds = (actions: Action[]) => actions.map((action) => `${action.kind} ${action.name}${'reason' in action ? ` (${action.reason})` : ''}`);

describe('managed settings', () => {
  test('defaults: max_concurrent 3, running_min 0, no schedule, name prefix from the pool', () => {
    const parsed = parseManaged('gke-ci', { template: { initialNodeCount: 2 }, min_ready: 1, max_size: 4 });
    assert.deepEqual(parsed, {
      template: { initialNodeCount: 2 },
      min_ready: 1,
      max_size: 4,
      max_concurrent: 3,
      running_min: 0,
      schedule: [],
      name_prefix: 'gke-ci-',
    });
  });

  test('the template is passed on as it is, keys GKE knows and this does not included', () => {
    const template = { nodePools: [{ name: 'a', config: { machineType: 'e2-standard-4' } }], releaseChannel: { channel: 'REGULAR' } };
    assert.deepEqual(settings({ template }).template, template);
  });

  test('hibernate_after takes seconds or units', () => {
    for (const [given, seconds] of [[45, 45], ['45', 45], ['90s', 90], ['30m', 1800], ['2h', 7200], ['1d', 86_400]] as const) {
      assert.equal(settings({ hibernate_after: given }).hibernate_after, seconds, String(given));
    }
    assert.ok(Number.isNaN(durationSeconds('2 weeks')));
  });

  const base = { template: TEMPLATE, min_ready: 1, max_size: 3 };
  const invalid: Array<[string, Record<string, unknown>, RegExp]> = [
    ['template missing', { template: undefined }, /^template: /],
    ['template not an object', { template: 'e2-standard-4' }, /^template: must be an object/],
    ['template without node pools or count', { template: { locations: ['a'] } }, /^template: must set nodePools or initialNodeCount/],
    ['template with both', { template: { ...TEMPLATE, initialNodeCount: 1 } }, /^template: must set nodePools or initialNodeCount/],
    ['template with no node pool', { template: { nodePools: [] } }, /^template\.nodePools: must list at least one/],
    ['template naming the cluster', { template: { ...TEMPLATE, name: 'fixed' } }, /^template\.name: must not be set/],
    ['template with zero nodes', { template: { initialNodeCount: 0 } }, /^template\.initialNodeCount: must be a whole number, 1 or more/],
    ['prefix with capitals', { name_prefix: 'CI-' }, /^name_prefix: must start with a lower-case letter/],
    ['prefix starting with a digit', { name_prefix: '1ci-' }, /^name_prefix: must start with a lower-case letter/],
    ['prefix too long for a suffix', { name_prefix: 'a'.repeat(35) }, /^name_prefix: must be at most 34 characters/],
    ['min_ready negative', { min_ready: -1 }, /^min_ready: must be a whole number, 0 or more/],
    ['min_ready fractional', { min_ready: 1.5 }, /^min_ready: must be a whole number/],
    ['min_ready missing', { min_ready: undefined }, /^min_ready: /],
    ['max_size zero', { max_size: 0, min_ready: 0 }, /^max_size: must be a whole number, 1 or more/],
    ['max_size below min_ready', { min_ready: 4 }, /^max_size: must be at least min_ready \(4\)/],
    ['max_concurrent zero', { max_concurrent: 0 }, /^max_concurrent: must be a whole number, 1 or more/],
    ['recycle_after zero', { recycle_after: 0 }, /^recycle_after: must be a whole number, 1 or more/],
    ['hibernate_after in weeks', { hibernate_after: '2w' }, /^hibernate_after: must be seconds or a duration/],
    ['hibernate_after zero', { hibernate_after: 0 }, /^hibernate_after: must be seconds or a duration/],
    ['running_min above max_size', { running_min: 4 }, /^running_min: must be at most max_size \(3\)/],
    ['schedule not a list', { schedule: '0 8 * * *' }, /^schedule: must be a list/],
    ['schedule cron unreadable', { schedule: [{ cron: '0 25 * * *', min_ready: 1 }] }, /^schedule\[0\]\.cron: must be a cron line/],
    ['schedule cron a date', { schedule: [{ cron: '2026-03-04T12:00:00', min_ready: 1 }] }, /^schedule\[0\]\.cron: must be a cron line, not a date/],
    ['schedule line changing nothing', { schedule: [{ cron: '0 8 * * *' }] }, /^schedule\[0\]: must set min_ready or running_min/],
    ['schedule line above max_size', { schedule: [{ cron: '0 8 * * *', min_ready: 1 }, { cron: '0 9 * * *', running_min: 5 }] }, /^schedule\[1\]\.running_min: must be at most max_size \(3\)/],
    ['schedule line with a typo', { schedule: [{ cron: '0 8 * * *', min_redy: 1 }] }, /^schedule\[0\]\.min_redy: is not a schedule setting/],
    ['unknown setting', { max_sise: 3 }, /^max_sise: is not a managed setting/],
  ];
  for (const [name, patch, expected] of invalid) {
    test(`rejects ${name}, naming the field`, () => {
      assert.throws(
        () => parseManaged('ci', { ...base, ...patch }),
        (error: unknown) => {
          assert.ok(error instanceof ManagedSettingsError);
          const detail = error.message.replace(/^managed settings of pool ci are invalid: /, '');
          assert.match(detail, expected);
          return true;
        },
      );
    });
  }

  test('the default prefix must make GKE names too: a pool name that does not is told to set name_prefix', () => {
    assert.throws(() => parseManaged('9lab', base), /pool 9lab are invalid: name_prefix: the default "9lab-" .* set name_prefix/);
    assert.throws(() => parseManaged('a'.repeat(34), base), /name_prefix: the default/);
    assert.equal(parseManaged('9lab', { ...base, name_prefix: 'lab-' }).name_prefix, 'lab-');
  });
});

describe('schedule', () => {
  const scheduled = settings({
    min_ready: 1,
    running_min: 1,
    schedule: [
      { cron: '0 18 * * 1-5', min_ready: 6, running_min: 3 },
      { cron: '0 22 * * 1-5', min_ready: 2 },
      { cron: '0 0 * * 6', min_ready: 0, running_min: 0 },
    ],
  });
  const at = (iso: string) => effectiveTargets(scheduled, Date.parse(iso), 'UTC');

  test('a weekday evening raises min_ready; the line after it lowers it again, its left-out field from the base', () => {
    assert.deepEqual(at('2026-03-04T18:00:00Z'), { minReady: 6, runningMin: 3 }, 'from the very moment the line fires');
    assert.deepEqual(at('2026-03-04T21:59:59Z'), { minReady: 6, runningMin: 3 });
    assert.deepEqual(at('2026-03-04T22:30:00Z'), { minReady: 2, runningMin: 1 });
    assert.deepEqual(at('2026-03-05T17:59:59Z'), { minReady: 2, runningMin: 1 }, "the night line holds until the next evening's");
  });

  test('the weekend is zero from Saturday midnight until Monday evening', () => {
    assert.deepEqual(at('2026-03-07T00:00:00Z'), { minReady: 0, runningMin: 0 });
    assert.deepEqual(at('2026-03-08T15:00:00Z'), { minReady: 0, runningMin: 0 });
    assert.deepEqual(at('2026-03-09T12:00:00Z'), { minReady: 0, runningMin: 0 });
    assert.deepEqual(at('2026-03-09T18:00:00Z'), { minReady: 6, runningMin: 3 });
  });

  test('no line come yet: the base values', () => {
    const future = settings({ min_ready: 2, running_min: 1, schedule: [{ cron: '0 0 0 1 1 * 2099', min_ready: 9 }] });
    assert.deepEqual(effectiveTargets(future, T0, 'UTC'), { minReady: 2, runningMin: 1 });
    assert.deepEqual(effectiveTargets(settings({ min_ready: 2 }), T0), { minReady: 2, runningMin: 0 });
  });

  test('lines firing at the same moment: the later in the list wins', () => {
    const both = settings({ schedule: [{ cron: '0 8 * * *', min_ready: 3 }, { cron: '0 8 * * *', min_ready: 5 }] });
    assert.equal(effectiveTargets(both, T0, 'UTC').minReady, 5);
  });

  test('cron lines are read in the given time zone', () => {
    const evening = settings({ schedule: [{ cron: '0 18 * * *', min_ready: 4 }, { cron: '0 6 * * *', min_ready: 1 }] });
    const at1630Z = Date.parse('2026-03-04T16:30:00Z');
    assert.equal(effectiveTargets(evening, at1630Z, 'UTC').minReady, 1);
    assert.equal(effectiveTargets(evening, at1630Z, 'Europe/Helsinki').minReady, 4, '18:30 in Helsinki');
  });
});

describe('plan', () => {
  test('fills to min_ready from empty, max_concurrent at a time', () => {
    const pool = settings({ min_ready: 5, max_concurrent: 2 });
    assert.deepEqual(plan(input({ settings: pool })), [
      { kind: 'create', name: 'ci-000001' },
      { kind: 'create', name: 'ci-000002' },
    ]);
    const creating = [c('ci-a', 'provisioning', { operation: { kind: 'create', startedAt: T0 } }), c('ci-b', 'provisioning')];
    assert.deepEqual(plan(input({ settings: pool, clusters: creating })), [], 'two in flight: nothing more');
    assert.equal(plan(input({ settings: pool, clusters: [free('ci-a'), free('ci-b')] })).length, 2);
    assert.deepEqual(kinds(plan(input({ settings: pool, clusters: [free('ci-a'), free('ci-b'), free('ci-c'), free('ci-d')] }))), ['create ci-000001']);
    assert.deepEqual(plan(input({ settings: pool, clusters: ['a', 'b', 'c', 'd', 'e'].map((name) => free(`ci-${name}`)) })), []);
  });

  test('never grows past max_size, however many wait; provisioning and deleting clusters count', () => {
    const pool = settings({ max_size: 4, max_concurrent: 10 });
    const clusters = [c('ci-l', 'leased'), c('ci-p', 'provisioning'), c('ci-d', 'deleting')];
    assert.deepEqual(kinds(plan(input({ settings: pool, clusters, waiting: 1000 }))), ['create ci-000001']);
    assert.deepEqual(plan(input({ settings: pool, clusters: [...clusters, c('ci-x', 'leased')], waiting: 1000 })), []);
  });

  test('a name the pool already has is not given twice', () => {
    const pool = settings({ min_ready: 2 });
    const names = ['000001', '000001', '000002'];
    const actions = plan(input({ settings: pool, clusters: [c('ci-000001', 'leased')], suffix: () => names.shift() ?? 'zzzzzz' }));
    assert.deepEqual(kinds(actions), ['create ci-000002', 'create ci-zzzzzz']);
    assert.throws(() => plan(input({ settings: pool, suffix: () => 'Not-A-Suffix' })), /suffix\(\) gave/);
    assert.match(randomSuffix(), /^[a-z0-9]{6}$/);
  });

  test('waiters wake hibernated clusters before anything is created', () => {
    const pool = settings({ max_concurrent: 3, hibernate_after: '30m' });
    const clusters = [c('ci-h1', 'hibernated', { idleSince: T0 - 2 * HOUR }), c('ci-h2', 'hibernated', { idleSince: T0 - HOUR }), c('ci-l', 'leased')];
    assert.deepEqual(kinds(plan(input({ settings: pool, clusters, waiting: 3 }))), ['wake ci-h2', 'wake ci-h1', 'create ci-000001']);
    assert.deepEqual(kinds(plan(input({ settings: settings({ max_concurrent: 2 }), clusters, waiting: 3 }))), ['wake ci-h2', 'wake ci-h1']);
    assert.deepEqual(kinds(plan(input({ settings: pool, clusters, waiting: 1 }))), ['wake ci-h2', 'delete ci-h1 (surplus)'], 'min_ready 0: the other is surplus');
  });

  test('a cluster waking or provisioning already serves a waiter', () => {
    const pool = settings({ max_concurrent: 5 });
    const clusters = [c('ci-w', 'waking'), c('ci-p', 'provisioning')];
    assert.deepEqual(kinds(plan(input({ settings: pool, clusters, waiting: 3 }))), ['create ci-000001']);
  });

  test('hibernated clusters count toward min_ready: not replaced, woken for running_min', () => {
    const hibernated = [c('ci-h1', 'hibernated', { idleSince: T0 - HOUR }), c('ci-h2', 'hibernated', { idleSince: T0 - 2 * HOUR })];
    assert.deepEqual(plan(input({ settings: settings({ min_ready: 3, hibernate_after: '30m' }), clusters: [free('ci-f'), ...hibernated] })), []);
    const warm = settings({ min_ready: 3, running_min: 2, hibernate_after: '30m' });
    assert.deepEqual(kinds(plan(input({ settings: warm, clusters: [free('ci-f'), ...hibernated] }))), ['wake ci-h1']);
  });

  test('recycles a free cluster after recycle_after leases; never a leased one; replaced once there is room', () => {
    const pool = settings({ min_ready: 2, max_size: 2, recycle_after: 5 });
    const clusters = [free('ci-old', 0, { leases: 5 }), free('ci-new', 0, { leases: 4 })];
    assert.deepEqual(plan(input({ settings: pool, clusters })), [{ kind: 'delete', name: 'ci-old', reason: 'recycle' }]);
    const deleting = [c('ci-old', 'deleting', { leases: 5, operation: { kind: 'delete', startedAt: T0 } }), clusters[1]];
    assert.deepEqual(plan(input({ settings: pool, clusters: deleting })), [], 'full until the old one is gone');
    assert.deepEqual(kinds(plan(input({ settings: pool, clusters: [clusters[1]] }))), ['create ci-000001']);
    assert.deepEqual(plan(input({ settings: pool, clusters: [c('ci-old', 'leased', { leases: 9 }), clusters[1]] })), []);
    const roomy = settings({ min_ready: 2, max_size: 3, recycle_after: 5 });
    assert.deepEqual(kinds(plan(input({ settings: roomy, clusters }))), ['delete ci-old (recycle)', 'create ci-000001']);
  });

  test('hibernates free clusters idle hibernate_after beyond running_min, the longest idle first', () => {
    const pool = settings({ min_ready: 3, running_min: 1, hibernate_after: '30m' });
    const clusters = [free('ci-a', 60 * MINUTE), free('ci-b', 40 * MINUTE), free('ci-c', 10 * MINUTE)];
    assert.deepEqual(kinds(plan(input({ settings: pool, clusters }))), ['hibernate ci-a', 'hibernate ci-b']);
    assert.deepEqual(kinds(plan(input({ settings: settings({ min_ready: 3, running_min: 2, hibernate_after: '30m' }), clusters }))), ['hibernate ci-a']);
    assert.deepEqual(plan(input({ settings: settings({ min_ready: 3, running_min: 1 }), clusters })), [], 'no hibernate_after: never');
    assert.deepEqual(kinds(plan(input({ settings: pool, clusters: [...clusters.slice(0, 2), free('ci-x', 0, { idleSince: undefined })] }))), ['hibernate ci-a', 'hibernate ci-b']);
    const unknown = [free('ci-x', 0, { idleSince: undefined }), free('ci-y', 0, { idleSince: undefined }), free('ci-z', 0, { idleSince: undefined })];
    assert.deepEqual(plan(input({ settings: pool, clusters: unknown })), [], 'idle since unknown: not idle');
  });

  test('surplus beyond the target goes once idle hibernate_after (at once without it); waiters keep theirs', () => {
    const clusters = [free('ci-a', 3 * HOUR), free('ci-b', 2 * HOUR), free('ci-c', 10 * MINUTE), c('ci-h', 'hibernated', { idleSince: T0 - 4 * HOUR })];
    const pool = settings({ min_ready: 1, running_min: 1, hibernate_after: '30m' });
    assert.deepEqual(kinds(plan(input({ settings: pool, clusters }))), ['delete ci-b (surplus)', 'delete ci-a (surplus)', 'delete ci-h (surplus)']);
    assert.deepEqual(kinds(plan(input({ settings: pool, clusters, waiting: 2 }))), ['delete ci-h (surplus)']);
    const eager = settings({ min_ready: 2 });
    assert.deepEqual(kinds(plan(input({ settings: eager, clusters: clusters.slice(0, 3) }))), ['delete ci-a (surplus)']);
  });

  test('the schedule dropping to zero for the weekend lets every idle cluster go', () => {
    const weekend = settings({ min_ready: 3, hibernate_after: '1h', schedule: [{ cron: '0 0 * * 6', min_ready: 0 }, { cron: '0 8 * * 1', min_ready: 3 }] });
    const saturday = Date.parse('2026-03-07T10:00:00Z');
    const clusters = [c('ci-a', 'free', { idleSince: saturday - 2 * HOUR }), c('ci-b', 'hibernated', { idleSince: saturday - 5 * HOUR }), c('ci-l', 'leased')];
    assert.deepEqual(kinds(plan(input({ settings: weekend, now: saturday, clusters }))), ['delete ci-a (surplus)', 'delete ci-b (surplus)']);
  });

  test('an errored cluster is deleted, not before its retryAt', () => {
    const pool = settings();
    const failed = c('ci-e', 'error', { failures: 2, retryAt: T0 + retryBackoffMs(2) });
    assert.deepEqual(plan(input({ settings: pool, clusters: [failed] })), []);
    assert.deepEqual(plan(input({ settings: pool, clusters: [failed], now: T0 + 59_999 })), []);
    assert.deepEqual(plan(input({ settings: pool, clusters: [failed], now: T0 + 60_000 })), [{ kind: 'delete', name: 'ci-e', reason: 'error' }]);
    assert.deepEqual([1, 2, 3, 10, 20].map(retryBackoffMs), [30_000, 60_000, 120_000, 1_800_000, 1_800_000]);
    const retrying = [free('ci-f', 0, { leases: 9, retryAt: T0 + 1 }), c('ci-h', 'hibernated', { retryAt: T0 + 1 })];
    assert.deepEqual(kinds(plan(input({ settings: settings({ recycle_after: 1 }), clusters: retrying, waiting: 1 }))), ['create ci-000001'], 'retryAt holds for every action: the waiter gets a new one');
  });

  test('never acts on leased, dirty or cleaning clusters, nor on one with an operation in flight', () => {
    const pool = settings({ max_size: 5, recycle_after: 1, hibernate_after: 60 });
    const old = { leases: 50, idleSince: T0 - 24 * HOUR };
    const clusters = [c('ci-l', 'leased', old), c('ci-d', 'dirty', old), c('ci-c', 'cleaning', old), free('ci-r', HOUR, { leases: 50, operation: { kind: 'resize', startedAt: T0 } })];
    const actions = plan(input({ settings: pool, clusters, waiting: 10 }));
    assert.deepEqual(kinds(actions), ['create ci-000001'], 'room for one');
  });

  test('the same input in any order gives the same actions', () => {
    const pool = settings({ min_ready: 4, running_min: 1, recycle_after: 3, hibernate_after: '10m', max_concurrent: 6 });
    const clusters = [
      free('ci-a', HOUR),
      free('ci-b', HOUR),
      free('ci-c', HOUR, { leases: 3 }),
      c('ci-e', 'error'),
      c('ci-h', 'hibernated', { idleSince: T0 - HOUR }),
      c('ci-l', 'leased'),
    ];
    const first = plan(input({ settings: pool, clusters, waiting: 1 }));
    assert.deepEqual(plan(input({ settings: pool, clusters: [...clusters].reverse(), waiting: 1 })), first);
    assert.deepEqual(kinds(first), ['delete ci-e (error)', 'delete ci-c (recycle)', 'create ci-000001', 'create ci-000002']);
    const quiet = plan(input({ settings: pool, clusters, waiting: 0 }));
    assert.deepEqual(plan(input({ settings: pool, clusters: [...clusters].reverse(), waiting: 0 })), quiet);
    assert.deepEqual(kinds(quiet), ['delete ci-e (error)', 'delete ci-c (recycle)', 'create ci-000001', 'hibernate ci-a']);
  });
});

describe('retryAfterSeconds', () => {
  const pool = settings({ max_size: 3 });
  const view = (clusters: ManagedCluster[], recentDurations?: { createMs?: number; wakeMs?: number }) => ({ settings: pool, now: T0, clusters, waiting: 0, ...(recentDurations && { recentDurations }) });

  test('a create under way: what is left of the recent create duration', () => {
    const provisioning = c('ci-p', 'provisioning', { operation: { kind: 'create', startedAt: T0 - 4 * MINUTE } });
    assert.equal(retryAfterSeconds(view([provisioning, c('ci-l', 'leased'), c('ci-m', 'leased')], { createMs: 5 * MINUTE })), 60);
    assert.equal(retryAfterSeconds(view([provisioning, c('ci-l', 'leased'), c('ci-m', 'leased')], { createMs: 3 * MINUTE })), 1, 'overdue: soon');
  });

  test('a hibernated cluster: the wake duration, sooner than a create', () => {
    assert.equal(retryAfterSeconds(view([c('ci-h', 'hibernated'), c('ci-l', 'leased')], { createMs: 5 * MINUTE, wakeMs: 90_000 })), 90);
  });

  test('room to create: the create duration (the default when none was timed)', () => {
    assert.equal(retryAfterSeconds(view([c('ci-l', 'leased')])), DEFAULT_CREATE_MS / 1000);
  });

  test('full and busy: a fixed retry', () => {
    assert.equal(retryAfterSeconds(view([c('ci-a', 'leased'), c('ci-b', 'dirty'), c('ci-c', 'cleaning')])), BUSY_RETRY_SECONDS);
  });
});

// ---- properties ------------------------------------------------------------------------

const STATES: readonly ManagedState[] = ['provisioning', 'free', 'leased', 'dirty', 'cleaning', 'hibernated', 'waking', 'deleting', 'error'];
const UNTOUCHABLE = new Set<ManagedState>(['leased', 'dirty', 'cleaning']);

const clusterArbitrary = fc.record(
  {
    name: fc.stringMatching(/^ci-[a-z0-9]{1,4}$/),
    state: fc.constantFrom(...STATES),
    leases: fc.nat(12),
    idleSince: fc.option(fc.integer({ min: T0 - 6 * HOUR, max: T0 }), { nil: undefined }),
    operation: fc.option(fc.record({ kind: fc.constantFrom('create', 'delete', 'resize'), startedAt: fc.integer({ min: T0 - HOUR, max: T0 }) }), { nil: undefined }),
    retryAt: fc.option(fc.integer({ min: T0 - HOUR, max: T0 + HOUR }), { nil: undefined }),
  },
  { requiredKeys: ['name', 'state', 'leases'] },
) as fc.Arbitrary<ManagedCluster>;

const settingsArbitrary = fc
  .record({
    max_size: fc.integer({ min: 1, max: 12 }),
    min_ready: fc.nat(12),
    running_min: fc.nat(12),
    max_concurrent: fc.integer({ min: 1, max: 5 }),
    recycle_after: fc.option(fc.integer({ min: 1, max: 10 }), { nil: undefined }),
    hibernate_after: fc.option(fc.integer({ min: 1, max: 4 * 3600 }), { nil: undefined }),
    evening: fc.option(fc.nat(12), { nil: undefined }),
  })
  .map(({ max_size, min_ready, running_min, evening, ...rest }) =>
    settings({
      ...rest,
      max_size,
      min_ready: Math.min(min_ready, max_size),
      running_min: Math.min(running_min, max_size),
      schedule: evening === undefined ? [] : [{ cron: '0 18 * * *', min_ready: Math.min(evening, max_size) }, { cron: '0 6 * * *', running_min: 0 }],
    }),
  );

const planArbitrary = fc.record({
  settings: settingsArbitrary,
  clusters: fc.uniqueArray(clusterArbitrary, { maxLength: 16, selector: (cluster) => cluster.name }),
  waiting: fc.nat(60),
  now: fc.integer({ min: T0, max: T0 + 24 * HOUR }),
});

/** The clusters after the actions start: creates added as provisioning, the rest in their operation. */
function applied(clusters: readonly ManagedCluster[], actions: readonly Action[], now: number): ManagedCluster[] {
  const byName = new Map(clusters.map((cluster) => [cluster.name, cluster]));
  for (const action of actions) {
    const before = byName.get(action.name);
    if (action.kind === 'create') byName.set(action.name, c(action.name, 'provisioning', { operation: { kind: 'create', startedAt: now } }));
    else if (action.kind === 'delete') byName.set(action.name, { ...before!, state: 'deleting', operation: { kind: 'delete', startedAt: now } });
    else if (action.kind === 'wake') byName.set(action.name, { ...before!, state: 'waking', operation: { kind: 'resize', startedAt: now } });
    else byName.set(action.name, { ...before!, operation: { kind: 'resize', startedAt: now } });
  }
  return [...byName.values()];
}

/** What every plan must keep to, whatever it was given. */
function assertInvariants(given: PlanInput, actions: readonly Action[]): void {
  const { settings: pool, clusters, now } = given;
  const byName = new Map(clusters.map((cluster) => [cluster.name, cluster]));
  const after = applied(clusters, actions, now);
  assert.ok(after.length <= Math.max(pool.max_size, clusters.length), `total ${after.length} > max_size ${pool.max_size}`);
  const inFlightBefore = clusters.filter(inOperation).length;
  assert.ok(after.filter(inOperation).length <= Math.max(pool.max_concurrent, inFlightBefore), 'operations in flight beyond max_concurrent');
  assert.equal(new Set(actions.map((action) => action.name)).size, actions.length, 'one action a cluster');
  for (const action of actions) {
    const target = byName.get(action.name);
    if (action.kind === 'create') {
      assert.equal(target, undefined, `create of an existing name ${action.name}`);
      assert.ok(action.name.startsWith(pool.name_prefix) && action.name.length <= 40);
      continue;
    }
    assert.ok(target, `${action.kind} of an unknown cluster ${action.name}`);
    assert.ok(!UNTOUCHABLE.has(target.state), `${action.kind} of ${target.state} ${target.name}`);
    assert.ok(!inOperation(target), `${action.kind} of ${target.name}, busy with an operation`);
    assert.ok(target.retryAt === undefined || target.retryAt <= now, `${action.kind} of ${target.name} before its retryAt`);
    const allowed: Record<Action['kind'], readonly ManagedState[]> = { create: [], delete: ['free', 'hibernated', 'error'], wake: ['hibernated'], hibernate: ['free'] };
    assert.ok(allowed[action.kind].includes(target.state), `${action.kind} of a ${target.state} cluster`);
  }
}

describe('plan, for any input', () => {
  test('keeps to max_size and max_concurrent, never touches a busy cluster, and does not depend on input order', () => {
    fc.assert(
      fc.property(planArbitrary, fc.integer(), (given, seed) => {
        const planned: PlanInput = { ...given, timeZone: 'UTC', suffix: counter() };
        const actions = plan(planned);
        assertInvariants(planned, actions);
        // Shuffled by the seed: the same actions.
        const shuffled = [...given.clusters].sort((a, b) => ((hash(a.name) ^ seed) >>> 0) - ((hash(b.name) ^ seed) >>> 0));
        assert.deepEqual(plan({ ...planned, clusters: shuffled, suffix: counter() }), actions);
      }),
      { numRuns: 400 },
    );
  });
});

function hash(text: string): number {
  let value = 2166136261;
  for (const char of text) value = Math.imul(value ^ char.charCodeAt(0), 16777619);
  return value >>> 0;
}

// ---- a day (and a weekend) of a pool ---------------------------------------------------

describe('a simulated pool', () => {
  test('a weekday, a night burst and a quiet weekend: limits held throughout, every job served, idle clusters gone by Sunday', () => {
    const pool = settings({
      min_ready: 1,
      max_size: 8,
      max_concurrent: 3,
      recycle_after: 4,
      hibernate_after: '30m',
      running_min: 0,
      schedule: [
        { cron: '0 8 * * 1-5', min_ready: 3, running_min: 1 },
        { cron: '0 20 * * 1-5', min_ready: 1, running_min: 0 },
        { cron: '0 0 * * 6', min_ready: 0, running_min: 0 },
      ],
    });
    const took = { create: 6 * MINUTE, delete: 3 * MINUTE, wake: 2 * MINUTE, hibernate: MINUTE };
    const start = Date.parse('2026-03-05T06:00:00Z'); // Thursday morning
    const end = Date.parse('2026-03-08T12:00:00Z'); // Sunday noon
    // The scripted demand: a job an hour in the daytime, a burst of 30 in the night, nothing at the weekend.
    const jobs: Array<{ at: number; minutes: number; startedAt?: number }> = [];
    for (let hour = 9; hour <= 17; hour++) jobs.push({ at: Date.parse(`2026-03-05T${String(hour).padStart(2, '0')}:10:00Z`), minutes: 20 });
    for (let index = 0; index < 30; index++) jobs.push({ at: Date.parse('2026-03-06T02:00:00Z') + index * 20_000, minutes: 15 });
    for (let hour = 9; hour <= 17; hour += 2) jobs.push({ at: Date.parse(`2026-03-06T${String(hour).padStart(2, '0')}:30:00Z`), minutes: 30 });

    type Simulated = ManagedCluster & { until?: number; next?: ManagedState; job?: (typeof jobs)[number] };
    let clusters: Simulated[] = [];
    const queue: Array<(typeof jobs)[number]> = [];
    const suffix = counter();
    let creates = 0;
    let tenAmStock: number | undefined;
    const kindsSeen = new Map<string, number>();

    for (let now = start; now <= end; now += MINUTE) {
      // Operations and leases that end now.
      clusters = clusters.flatMap((cluster): Simulated[] => {
        if (cluster.until === undefined || cluster.until > now) return [cluster];
        const { until: _until, next, job: _job, operation, ...rest } = cluster;
        if (operation?.kind === 'delete') return [];
        if (cluster.state === 'leased') return [{ ...rest, state: 'dirty', until: now + MINUTE, next: 'cleaning' }];
        if (cluster.state === 'dirty') return [{ ...rest, state: 'cleaning', until: now + MINUTE, next: 'free' }];
        return [{ ...rest, state: next!, idleSince: now }];
      });
      // Demand: arrivals queue, and free clusters (not due for recycling) go to the oldest waiters.
      for (const job of jobs) if (job.at > now - MINUTE && job.at <= now) queue.push(job);
      for (const cluster of clusters) {
        if (queue.length === 0) break;
        if (cluster.state !== 'free' || cluster.operation || recycleDue(pool, cluster)) continue;
        const job = queue.shift()!;
        job.startedAt = now;
        Object.assign(cluster, { state: 'leased', leases: cluster.leases + 1, until: now + job.minutes * MINUTE, job });
      }
      const given: PlanInput = { settings: pool, now, clusters, waiting: queue.length, suffix, timeZone: 'UTC' };
      const actions = plan(given);
      assertInvariants(given, actions);
      for (const action of actions) {
        const seen = action.kind === 'delete' ? `delete (${action.reason})` : action.kind;
        kindsSeen.set(seen, (kindsSeen.get(seen) ?? 0) + 1);
        if (action.kind === 'create') {
          // Every fifth create fails: the cluster is left in error, to be deleted after a backoff.
          creates += 1;
          const fails = creates % 5 === 0;
          clusters.push({ name: action.name, state: 'provisioning', leases: 0, operation: { kind: 'create', startedAt: now }, until: now + took.create, next: fails ? 'error' : 'free', ...(fails && { failures: 1, retryAt: now + took.create + retryBackoffMs(1) }) });
          continue;
        }
        const cluster = clusters.find((candidate) => candidate.name === action.name)!;
        if (action.kind === 'delete') Object.assign(cluster, { state: 'deleting', operation: { kind: 'delete', startedAt: now }, until: now + took.delete });
        else if (action.kind === 'wake') Object.assign(cluster, { state: 'waking', operation: { kind: 'resize', startedAt: now }, until: now + took.wake, next: 'free' });
        else Object.assign(cluster, { operation: { kind: 'resize', startedAt: now }, until: now + took.hibernate, next: 'hibernated' });
      }
      if (now === Date.parse('2026-03-05T10:00:00Z')) tenAmStock = clusters.filter((cluster) => ['free', 'hibernated', 'provisioning', 'waking'].includes(cluster.state)).length;
    }

    // The week exercised every rule.
    assert.deepEqual([...kindsSeen.keys()].sort(), ['create', 'delete (error)', 'delete (recycle)', 'delete (surplus)', 'hibernate', 'wake']);
    assert.equal(tenAmStock, 3, 'min_ready 3 in the working day');
    for (const job of jobs) {
      assert.ok(job.startedAt !== undefined, `the job of ${new Date(job.at).toISOString()} was never served`);
      assert.ok(job.startedAt - job.at <= 2 * HOUR, `the job of ${new Date(job.at).toISOString()} waited ${(job.startedAt - job.at) / MINUTE} minutes`);
    }
    assert.deepEqual(clusters, [], 'every idle cluster deleted by Sunday noon');
  });
});
