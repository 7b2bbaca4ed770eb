// GKE cluster operations through the real @google-cloud/container client, over gRPC, against the
// fake ClusterManager; its clock moves only when a test advances it, so every status is deterministic.

import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, test } from 'node:test';
import { ClusterManagerClient, type protos } from '@google-cloud/container';
import { fakeGkeClientOptions, grpc, makeCluster, startFakeGke, type FakeGke } from './fakes/gke.ts';
import {
  MANAGED_LABEL,
  GkeOperationError,
  NotOwnedError,
  OperationWaitTimeout,
  createCluster,
  deleteCluster,
  findOperations,
  setNodePoolSize,
  waitForOperation,
} from '../services/providers/gke-operations.ts';
import { toCluster } from '../services/providers/gke.ts';

const PROJECT = 'ci-project';
const ZONE = 'us-central1-a';
const POOL = 'nightly';
const scope = { projectId: PROJECT, location: ZONE };
const DURATIONS = { create: 1_000, delete: 500, resize: 300 };
/** Fast polls: the fake's clock, not the poll, decides when an operation is done. */
const FAST = { pollMs: 5, timeoutMs: 5_000, callTimeoutMs: 2_000 };

function spec(name: string, nodeCount = 2): protos.google.container.v1.ICluster {
  return { name, nodePools: [{ name: 'default-pool', initialNodeCount: nodeCount, config: { machineType: 'e2-standard-4' } }] };
}

function ours(name: string, extra: Parameters<typeof makeCluster>[0] extends infer O ? Partial<O> : never = {}) {
  return makeCluster({ project: PROJECT, location: ZONE, name, resourceLabels: { [MANAGED_LABEL]: POOL }, ...extra });
}

/** Asserts that `work` rejects with a GkeOperationError of `kind` and gRPC `code`. */
async function rejectsWith(work: Promise<unknown>, kind: GkeOperationError['kind'], code: number): Promise<GkeOperationError> {
  let caught: unknown;
  await assert.rejects(work, (error) => {
    caught = error;
    return true;
  });
  assert.ok(caught instanceof GkeOperationError, `expected a GkeOperationError, got ${String(caught)}`);
  assert.equal(caught.kind, kind);
  assert.equal(caught.code, code);
  return caught;
}

describe('GKE operations', () => {
  let fake: FakeGke;
  let client: ClusterManagerClient;

  async function listed(name: string) {
    const [cluster] = await client.getCluster({ name: `projects/${PROJECT}/locations/${ZONE}/clusters/${name}` });
    return cluster;
  }
  async function statusOf(name: string) {
    const [response] = await client.listClusters({ parent: `projects/${PROJECT}/locations/${ZONE}` });
    return response.clusters!.find((cluster) => cluster.name === name)?.status;
  }

  before(async () => {
    fake = await startFakeGke({ now: () => Date.UTC(2025, 0, 1), operationDurations: DURATIONS });
    client = new ClusterManagerClient(fakeGkeClientOptions(fake));
  });
  after(async () => {
    await client.close();
    await fake.close();
  });
  beforeEach(() => {
    fake.reset();
    fake.setClusters([]);
    fake.setOperationDurations(DURATIONS);
  });

  test('create: PROVISIONING, then RUNNING with an endpoint and CA; the operation followed to DONE; the pool label set', async () => {
    const operation = await createCluster(client, { ...scope, pool: POOL, cluster: { ...spec('ci-1'), resourceLabels: { team: 'infra' } } });
    assert.match(operation, /^operation-\d+-\d+$/);

    const booting = await listed('ci-1');
    assert.equal(booting.status, 'PROVISIONING');
    assert.equal(booting.endpoint, '');
    assert.deepEqual(booting.resourceLabels, { team: 'infra', [MANAGED_LABEL]: POOL });
    const [started] = await client.getOperation({ name: `projects/${PROJECT}/locations/${ZONE}/operations/${operation}` });
    assert.equal(started.status, 'PENDING');
    assert.equal(started.operationType, 'CREATE_CLUSTER');
    assert.equal(started.targetLink, `https://container.googleapis.com/v1/projects/${PROJECT}/zones/${ZONE}/clusters/ci-1`);
    assert.equal(started.endTime, '');

    fake.advance(400);
    const [midway] = await client.getOperation({ name: `projects/${PROJECT}/locations/${ZONE}/operations/${operation}` });
    assert.equal(midway.status, 'RUNNING');
    assert.equal(await statusOf('ci-1'), 'PROVISIONING');

    fake.advance(600);
    const outcome = await waitForOperation(client, { ...scope, operation }, FAST);
    assert.equal(outcome.ok, true);
    assert.equal(outcome.operation.status, 'DONE');
    assert.equal(outcome.operation.endTime, new Date(Date.UTC(2025, 0, 1) + 1_000).toISOString());

    const up = toCluster(await listed('ci-1'));
    assert.equal(up.status, 'RUNNING');
    assert.match(up.endpoint, /^127\.\d+\.\d+\.\d+$/);
    assert.ok(up.caData);
    assert.equal(up.labels[MANAGED_LABEL], POOL);
    assert.deepEqual(fake.operations.map((op) => [op.kind, op.cluster, op.status]), [['create', 'ci-1', 'DONE']]);
    // CreateCluster went once (never retried); the rest were polls.
    assert.equal(fake.calls.filter((c) => c.method === 'CreateCluster').length, 1);
  });

  test('delete: STOPPING, then gone', async () => {
    fake.setClusters([ours('old')]);
    const operation = await deleteCluster(client, { ...scope, pool: POOL, cluster: await listed('old') });
    assert.equal(await statusOf('old'), 'STOPPING');
    fake.advance(DURATIONS.delete);
    assert.deepEqual(await waitForOperation(client, { ...scope, operation }, FAST).then((o) => o.ok), true);
    assert.equal(await statusOf('old'), undefined);
    assert.equal(fake.operations[0]!.operationType, 'DELETE_CLUSTER');
  });

  test('resize: RECONCILING, then RUNNING with the new node count (the provider\'s Cluster as listed works too)', async () => {
    fake.setClusters([ours('ci-2', { nodePools: [{ name: 'default-pool', nodeCount: 1 }] })]);
    const cluster = toCluster(await listed('ci-2'));
    const operation = await setNodePoolSize(client, { ...scope, pool: POOL, cluster, nodePool: 'default-pool', nodeCount: 5 });
    assert.equal(await statusOf('ci-2'), 'RECONCILING');
    const [op] = await client.getOperation({ name: `projects/${PROJECT}/locations/${ZONE}/operations/${operation}` });
    assert.equal(op.operationType, 'SET_NODE_POOL_SIZE');
    assert.equal(op.targetLink, `https://container.googleapis.com/v1/projects/${PROJECT}/zones/${ZONE}/clusters/ci-2/nodePools/default-pool`);

    fake.advance(DURATIONS.resize);
    assert.equal((await waitForOperation(client, { ...scope, operation }, FAST)).ok, true);
    const after = await listed('ci-2');
    assert.equal(after.status, 'RUNNING');
    assert.equal(after.nodePools![0]!.initialNodeCount, 5);
    assert.equal(after.currentNodeCount, 5);
    assert.equal(fake.calls.find((c) => c.method === 'SetNodePoolSize')!.request.nodeCount, 5);
  });

  test('a create that fails midway is ok: false with GKE\'s message; the cluster stays in ERROR until deleted', async () => {
    const message = 'Try a different location, or try again later: ZONE_RESOURCE_POOL_EXHAUSTED: the zone does not have enough resources.';
    fake.failNextOperation({ kind: 'create', code: grpc.status.RESOURCE_EXHAUSTED, message, afterMs: 600 });
    const operation = await createCluster(client, { ...scope, pool: POOL, cluster: spec('unlucky') });
    fake.advance(600);
    const outcome = await waitForOperation(client, { ...scope, operation }, FAST);
    assert.deepEqual(outcome.ok ? outcome : { ok: outcome.ok, code: outcome.code, message: outcome.message }, { ok: false, code: grpc.status.RESOURCE_EXHAUSTED, message });
    assert.equal(outcome.operation.statusMessage, message);

    const broken = await listed('unlucky');
    assert.equal(broken.status, 'ERROR');
    assert.equal(broken.statusMessage, message);
    // Its owner may delete it.
    const deleting = await deleteCluster(client, { ...scope, pool: POOL, cluster: broken });
    fake.advance(DURATIONS.delete);
    assert.equal((await waitForOperation(client, { ...scope, operation: deleting }, FAST)).ok, true);
    assert.equal(await statusOf('unlucky'), undefined);
  });

  test('RESOURCE_EXHAUSTED from CreateCluster is a quota error, retryable, not retried by gax', async () => {
    fake.setClusters([ours('one')]);
    fake.setClusterQuota(1);
    const error = await rejectsWith(createCluster(client, { ...scope, pool: POOL, cluster: spec('two') }), 'quota', grpc.status.RESOURCE_EXHAUSTED);
    assert.equal(error.retryable, true);
    assert.equal(error.rpc, 'CreateCluster');
    assert.match(error.message, /Insufficient quota/);
    assert.deepEqual(fake.calls.map((c) => [c.method, c.outcome]), [['CreateCluster', grpc.status.RESOURCE_EXHAUSTED]]);
    assert.equal(fake.operations.length, 0);
  });

  test('ALREADY_EXISTS, NOT_FOUND and an invalid cluster are typed and not retryable', async () => {
    fake.setClusters([ours('taken')]);
    const exists = await rejectsWith(createCluster(client, { ...scope, pool: POOL, cluster: spec('taken') }), 'already-exists', grpc.status.ALREADY_EXISTS);
    assert.equal(exists.retryable, false);
    await rejectsWith(createCluster(client, { ...scope, pool: POOL, cluster: { name: 'empty' } }), 'invalid', grpc.status.INVALID_ARGUMENT);

    const cluster = await listed('taken');
    fake.setClusters([]); // deleted by someone else after it was listed
    await rejectsWith(deleteCluster(client, { ...scope, pool: POOL, cluster }), 'not-found', grpc.status.NOT_FOUND);
    await rejectsWith(waitForOperation(client, { ...scope, operation: 'operation-0-0' }, FAST), 'not-found', grpc.status.NOT_FOUND);
  });

  test('a second operation on a busy cluster is FAILED_PRECONDITION', async () => {
    await createCluster(client, { ...scope, pool: POOL, cluster: spec('busy') });
    const creating = await rejectsWith(deleteCluster(client, { ...scope, pool: POOL, cluster: await listed('busy') }), 'busy', grpc.status.FAILED_PRECONDITION);
    assert.match(creating.message, /is currently creating cluster busy/);
    assert.equal(creating.retryable, true);

    fake.advance(DURATIONS.create);
    const running = await listed('busy');
    await setNodePoolSize(client, { ...scope, pool: POOL, cluster: running, nodePool: 'default-pool', nodeCount: 3 });
    const resizing = await rejectsWith(setNodePoolSize(client, { ...scope, pool: POOL, cluster: running, nodePool: 'default-pool', nodeCount: 4 }), 'busy', grpc.status.FAILED_PRECONDITION);
    assert.match(resizing.message, /running incompatible operation operation-/);
    // Once done, the next one is accepted.
    fake.advance(DURATIONS.resize);
    await deleteCluster(client, { ...scope, pool: POOL, cluster: running });
    assert.deepEqual(fake.operations.map((op) => op.kind), ['create', 'resize', 'delete']);
  });

  test('an operation whose replica died is found from a new client by findOperations and followed to its end', async () => {
    const first = new ClusterManagerClient(fakeGkeClientOptions(fake));
    const operation = await createCluster(first, { ...scope, pool: POOL, cluster: spec('orphan') });
    await first.close();
    fake.setClusters([...fake.clusters, ours('other')]);
    fake.advance(200);

    const second = new ClusterManagerClient(fakeGkeClientOptions(fake));
    try {
      // Another cluster's operation and a finished one are not returned.
      await deleteCluster(second, { ...scope, pool: POOL, cluster: await listed('other') });
      const found = await findOperations(second, scope, 'orphan');
      assert.deepEqual(found.map((op) => [op.name, op.status, op.operationType, op.location]), [[operation, 'RUNNING', 'CREATE_CLUSTER', ZONE]]);
      assert.deepEqual((await findOperations(second, { projectId: PROJECT, location: '-' }, 'orphan')).map((op) => op.name), [operation]);

      const waiting = waitForOperation(second, { ...scope, operation: found[0]!.name! }, FAST);
      // Let it poll a few times while the operation runs, then finish it.
      while (fake.calls.filter((c) => c.method === 'GetOperation').length < 3) await new Promise((resolve) => setTimeout(resolve, 5));
      fake.advance(800);
      assert.equal((await waiting).ok, true);
      assert.equal(await statusOf('orphan'), 'RUNNING');
      assert.deepEqual(await findOperations(second, scope, 'orphan'), []);
    } finally {
      await second.close();
    }
  });

  test('delete and resize of a cluster without the pool\'s label are refused without any RPC', async () => {
    fake.setClusters([
      makeCluster({ project: PROJECT, location: ZONE, name: 'hand-made' }),
      makeCluster({ project: PROJECT, location: ZONE, name: 'theirs', resourceLabels: { [MANAGED_LABEL]: 'other-pool' } }),
      makeCluster({ project: PROJECT, location: 'us-east1-b', name: 'elsewhere', resourceLabels: { [MANAGED_LABEL]: POOL } }),
    ]);
    const [response] = await client.listClusters({ parent: `projects/${PROJECT}/locations/-` });
    fake.clearCalls();
    for (const cluster of response.clusters!) {
      await assert.rejects(deleteCluster(client, { ...scope, pool: POOL, cluster }), NotOwnedError);
      await assert.rejects(setNodePoolSize(client, { ...scope, pool: POOL, cluster, nodePool: 'default-pool', nodeCount: 0 }), NotOwnedError);
      await assert.rejects(deleteCluster(client, { ...scope, pool: POOL, cluster: toCluster(cluster) }), NotOwnedError);
    }
    await assert.rejects(
      deleteCluster(client, { ...scope, pool: POOL, cluster: response.clusters!.find((c) => c.name === 'theirs')! }),
      /refusing to change cluster theirs: it belongs to pool other-pool/,
    );
    assert.deepEqual(fake.calls, []);
    assert.equal(fake.clusters.length, 3);
    assert.ok(fake.clusters.every((cluster) => cluster.status === 'RUNNING'));
  });

  test('gax retries UNAVAILABLE for DeleteCluster (idempotent) but not for CreateCluster', async () => {
    fake.setClusters([ours('gone-soon')]);
    const cluster = await listed('gone-soon');
    fake.failNext(1, grpc.status.UNAVAILABLE);
    await deleteCluster(client, { ...scope, pool: POOL, cluster });
    assert.deepEqual(fake.calls.filter((c) => c.method === 'DeleteCluster').map((c) => c.outcome), [grpc.status.UNAVAILABLE, 'ok']);
    assert.equal(fake.operations.length, 1);

    fake.clearCalls();
    fake.failNext(1, grpc.status.UNAVAILABLE);
    const error = await rejectsWith(createCluster(client, { ...scope, pool: POOL, cluster: spec('new') }), 'unavailable', grpc.status.UNAVAILABLE);
    assert.equal(error.retryable, true);
    assert.equal(fake.calls.length, 1);
  });

  test('the fake counts operations running at once', async () => {
    await Promise.all(['a', 'b', 'c'].map((name) => createCluster(client, { ...scope, pool: POOL, cluster: spec(name) })));
    assert.equal(fake.runningOperations(), 3);
    assert.equal(fake.maxConcurrentOperations, 3);
    fake.advance(DURATIONS.create);
    assert.equal(fake.runningOperations(), 0);
    // One at a time: the maximum seen does not grow.
    for (const name of ['a', 'b', 'c']) {
      const operation = await deleteCluster(client, { ...scope, pool: POOL, cluster: await listed(name) });
      fake.advance(DURATIONS.delete);
      assert.equal((await waitForOperation(client, { ...scope, operation }, FAST)).ok, true);
    }
    assert.equal(fake.maxConcurrentOperations, 3);
    fake.reset();
    await createCluster(client, { ...scope, pool: POOL, cluster: spec('d') });
    fake.advance(DURATIONS.create);
    await createCluster(client, { ...scope, pool: POOL, cluster: spec('e') });
    assert.equal(fake.maxConcurrentOperations, 1);
  });

  test('polling: RPC failures the library retries pass, others throw; a wait times out or is aborted', async () => {
    const operation = await createCluster(client, { ...scope, pool: POOL, cluster: spec('slow') });
    fake.clearCalls();
    fake.failNext(1, grpc.status.UNAVAILABLE);
    await assert.rejects(waitForOperation(client, { ...scope, operation }, { ...FAST, timeoutMs: 300 }), OperationWaitTimeout);
    assert.deepEqual(fake.calls.slice(0, 2).map((c) => [c.method, c.outcome]), [['GetOperation', grpc.status.UNAVAILABLE], ['GetOperation', 'ok']]);

    fake.failNext(1, grpc.status.INTERNAL, 'backend exploded');
    const error = await rejectsWith(waitForOperation(client, { ...scope, operation }, FAST), 'other', grpc.status.INTERNAL);
    assert.equal(error.message, 'backend exploded');

    const controller = new AbortController();
    const waiting = waitForOperation(client, { ...scope, operation }, { ...FAST, signal: controller.signal });
    setTimeout(() => controller.abort(new Error('shutting down')), 30);
    await assert.rejects(waiting, /shutting down/);
  });

  test('on real time, with short durations', async () => {
    const realTime = await startFakeGke({ operationDurations: { create: 40, delete: 20, resize: 20 } });
    const realClient = new ClusterManagerClient(fakeGkeClientOptions(realTime));
    try {
      const operation = await createCluster(realClient, { ...scope, pool: POOL, cluster: spec('quick') });
      const outcome = await waitForOperation(realClient, { ...scope, operation }, { pollMs: 10, timeoutMs: 5_000 });
      assert.equal(outcome.ok, true);
      assert.equal(realTime.clusters[0]!.status, 'RUNNING');
      assert.ok(realTime.calls.filter((c) => c.method === 'GetOperation').length >= 2);
    } finally {
      await realClient.close();
      await realTime.close();
    }
  });
});
