/**
 * A fake Amazon EKS control-plane API (REST-JSON over HTTP on 127.0.0.1) for tests, serving
 * what the real @aws-sdk/client-eks sends for ListClusters and DescribeCluster:
 *
 *   GET /clusters?maxResults=&nextToken=  -> { clusters: [names], nextToken }
 *   GET /clusters/{name}                  -> { cluster: { name, arn, endpoint, status, ... } }
 *   GET /clusters/{name}/node-groups      -> { nodegroups: [names], nextToken }
 *   GET /clusters/{name}/node-groups/{ng} -> { nodegroup: { nodegroupName, amiType, ... } }
 *
 * Like the real service it refuses requests without a SigV4 `Authorization` header for service
 * `eks`, and it tells the region from the credential scope, so one fake serves the clients of
 * several regions (clusters are seeded per region). Given the secret keys, it also checks the
 * signatures. Errors are what EKS sends: a status, `x-amzn-errortype` and a JSON `message`.
 * Every request is recorded.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { randomUUID, timingSafeEqual } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { Sha256 } from '@aws-crypto/sha256-js';
import { HttpRequest } from '@smithy/protocol-http';
import { SignatureV4 } from '@smithy/signature-v4';

export interface FakeEksCluster {
  region: string;
  name: string;
  arn: string;
  endpoint: string;
  /** EKS's status names: CREATING, ACTIVE, DELETING, FAILED, UPDATING, PENDING. */
  status: string;
  version: string;
  platformVersion: string;
  caData: string;
  tags: Record<string, string>;
  createdAt: Date;
  /** Managed node groups, by name: their AMI types (AL2023_x86_64_STANDARD, AL2_x86_64_GPU, ...). */
  nodegroups: Record<string, string>;
}

export const FAKE_ACCOUNT = '111122223333';

export function makeEksCluster(fields: Partial<FakeEksCluster> & { region: string; name: string }): FakeEksCluster {
  const { region, name } = fields;
  return {
    arn: `arn:aws:eks:${region}:${FAKE_ACCOUNT}:cluster/${name}`,
    endpoint: `https://${name}.${region}.eks.localhost`,
    status: 'ACTIVE',
    version: '1.31',
    platformVersion: 'eks.12',
    caData: Buffer.from('-----BEGIN CERTIFICATE-----\nfake\n-----END CERTIFICATE-----\n').toString('base64'),
    tags: {},
    createdAt: new Date('2026-01-02T03:04:05Z'),
    nodegroups: { standard: 'AL2023_x86_64_STANDARD' },
    ...fields,
  };
}

export interface EksError {
  status: number;
  /** The error's shape name, e.g. AccessDeniedException. */
  type: string;
  message: string;
}

export const ACCESS_DENIED: EksError = {
  status: 403,
  type: 'AccessDeniedException',
  message: `User: arn:aws:iam::${FAKE_ACCOUNT}:role/claimer is not authorized to perform: eks:ListClusters`,
};
export const SERVER_ERROR: EksError = { status: 500, type: 'ServerException', message: 'Internal service error' };

export interface EksRequest {
  method: string;
  path: string;
  query: Record<string, string>;
  operation: Operation;
  /** From the credential scope of the request's signature. */
  region?: string;
  accessKeyId?: string;
  status: number;
}

export type Operation = 'ListClusters' | 'DescribeCluster' | 'ListNodegroups' | 'DescribeNodegroup' | 'Unknown';

function operationOf(method: string | undefined, segments: readonly string[]): Operation {
  if (method !== 'GET' || segments[0] !== 'clusters') return 'Unknown';
  if (segments.length === 1) return 'ListClusters';
  if (segments.length === 2) return 'DescribeCluster';
  if (segments[2] !== 'node-groups') return 'Unknown';
  if (segments.length === 3) return 'ListNodegroups';
  return segments.length === 4 ? 'DescribeNodegroup' : 'Unknown';
}

export interface FakeEksOptions {
  clusters?: FakeEksCluster[];
  /** Secret keys by access key id: given, signatures are checked too (403 when wrong). */
  secrets?: Record<string, string>;
}

const AUTHORIZATION = /^AWS4-HMAC-SHA256 Credential=([^/]+)\/(\d{8})\/([^/]+)\/([^/]+)\/aws4_request, ?SignedHeaders=([^,]+), ?Signature=([0-9a-f]{64})$/;
/** As EKS: maxResults between 1 and 100, 100 when not given. */
const MAX_RESULTS = 100;

class ReplyError extends Error {
  constructor(readonly error: EksError) {
    super(error.message);
  }
}

export class FakeEks {
  readonly requests: EksRequest[] = [];
  private clusters: FakeEksCluster[];
  private readonly failures = new Map<string, EksError>();
  private readonly operationFailures = new Map<Operation, EksError>();
  private readonly server: Server;
  url = '';

  constructor(private readonly options: FakeEksOptions = {}) {
    this.clusters = [...(options.clusters ?? [])];
    this.server = createServer((req, res) => {
      this.handle(req, res).catch((error: unknown) => {
        if (!res.headersSent) this.reply(res, 500, { message: String(error) }, 'ServerException');
      });
    });
  }

  async listen(): Promise<this> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this;
  }

  setClusters(clusters: FakeEksCluster[]): void {
    this.clusters = [...clusters];
  }

  /** Every request signed for the region answers this error, until `failRegion(region)`. */
  failRegion(region: string, error?: EksError): void {
    if (error) this.failures.set(region, error);
    else this.failures.delete(region);
  }

  /** Every request of the operation answers this error, until `failOperation(operation)`. */
  failOperation(operation: Operation, error?: EksError): void {
    if (error) this.operationFailures.set(operation, error);
    else this.operationFailures.delete(operation);
  }

  calls(operation: Operation, region?: string): EksRequest[] {
    return this.requests.filter((request) => request.operation === operation && (region === undefined || request.region === region));
  }

  reset(): void {
    this.requests.length = 0;
    this.failures.clear();
    this.operationFailures.clear();
    this.clusters = [];
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    for await (const _ of req); // no body is expected; drain it
    const url = new URL(req.url ?? '/', 'http://fake');
    const query = Object.fromEntries(url.searchParams);
    const segments = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
    const operation = operationOf(req.method, segments);
    const record: EksRequest = { method: req.method ?? '', path: url.pathname, query, operation, status: 0 };
    this.requests.push(record);
    try {
      const { region, accessKeyId } = await this.authenticate(req, url);
      record.region = region;
      record.accessKeyId = accessKeyId;
      const failure = this.failures.get(region) ?? this.operationFailures.get(operation);
      if (failure) throw new ReplyError(failure);
      const inRegion = this.clusters.filter((cluster) => cluster.region === region);
      const [, clusterName = '', , nodegroupName = ''] = segments;
      if (operation === 'ListClusters') {
        record.status = this.reply(res, 200, this.page(inRegion.map((cluster) => cluster.name), query, 'clusters'));
      } else if (operation === 'DescribeCluster') {
        record.status = this.reply(res, 200, { cluster: this.describe(this.find(inRegion, clusterName)) });
      } else if (operation === 'ListNodegroups') {
        record.status = this.reply(res, 200, this.page(Object.keys(this.find(inRegion, clusterName).nodegroups), query, 'nodegroups'));
      } else if (operation === 'DescribeNodegroup') {
        record.status = this.reply(res, 200, { nodegroup: this.describeNodegroup(this.find(inRegion, clusterName), nodegroupName) });
      } else {
        throw new ReplyError({ status: 404, type: 'UnknownOperationException', message: 'Unknown operation' });
      }
    } catch (error) {
      if (!(error instanceof ReplyError)) throw error;
      record.status = this.reply(res, error.error.status, { message: error.error.message }, error.error.type);
    }
  }

  private async authenticate(req: IncomingMessage, url: URL): Promise<{ region: string; accessKeyId: string }> {
    const match = AUTHORIZATION.exec(String(req.headers.authorization ?? ''));
    if (!match) throw new ReplyError({ status: 403, type: 'MissingAuthenticationTokenException', message: 'Missing Authentication Token' });
    const [, accessKeyId = '', day = '', region = '', service, signedHeaders = '', signature = ''] = match;
    if (service !== 'eks') {
      throw new ReplyError({ status: 403, type: 'InvalidSignatureException', message: `Credential should be scoped to correct service: 'eks'.` });
    }
    const amzDate = String(req.headers['x-amz-date'] ?? '');
    if (!amzDate.startsWith(day)) throw new ReplyError({ status: 403, type: 'InvalidSignatureException', message: 'Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP' });
    const secrets = this.options.secrets;
    if (secrets) {
      const secretAccessKey = secrets[accessKeyId];
      if (!secretAccessKey) throw new ReplyError({ status: 403, type: 'UnrecognizedClientException', message: 'The security token included in the request is invalid.' });
      const headers = Object.fromEntries(signedHeaders.split(';').map((name) => [name, String(req.headers[name] ?? '')]));
      const signer = new SignatureV4({ service: 'eks', region, sha256: Sha256, credentials: { accessKeyId, secretAccessKey } });
      const resigned = await signer.sign(
        new HttpRequest({ method: req.method, hostname: url.hostname, path: url.pathname, query: Object.fromEntries(url.searchParams), headers }),
        { signingDate: parseAmzDate(amzDate) },
      );
      const expected = /Signature=([0-9a-f]{64})/.exec(String(resigned.headers.authorization))?.[1] ?? '';
      if (expected.length !== signature.length || !timingSafeEqual(Buffer.from(expected), Buffer.from(signature))) {
        throw new ReplyError({
          status: 403,
          type: 'InvalidSignatureException',
          message: 'The request signature we calculated does not match the signature you provided.',
        });
      }
    }
    return { region, accessKeyId };
  }

  private page<K extends string>(all: string[], query: Record<string, string>, key: K): Record<K, string[]> & { nextToken?: string } {
    const maxResults = query.maxResults === undefined ? MAX_RESULTS : Number(query.maxResults);
    if (!Number.isInteger(maxResults) || maxResults < 1 || maxResults > MAX_RESULTS) {
      throw new ReplyError({ status: 400, type: 'InvalidParameterException', message: 'maxResults must be between 1 and 100' });
    }
    const names = [...all].sort();
    let start = 0;
    if (query.nextToken !== undefined) {
      start = names.indexOf(Buffer.from(query.nextToken, 'base64url').toString());
      if (start < 0) throw new ReplyError({ status: 400, type: 'InvalidParameterException', message: 'The nextToken is invalid' });
    }
    const page = names.slice(start, start + maxResults);
    const next = names[start + maxResults];
    const body = { [key]: page } as Record<K, string[]>;
    return next === undefined ? body : { ...body, nextToken: Buffer.from(next).toString('base64url') };
  }

  private find(clusters: FakeEksCluster[], name: string): FakeEksCluster {
    const cluster = clusters.find((one) => one.name === name);
    if (!cluster) throw new ReplyError({ status: 404, type: 'ResourceNotFoundException', message: `No cluster found for name: ${name}.` });
    return cluster;
  }

  private describeNodegroup(cluster: FakeEksCluster, name: string): Record<string, unknown> {
    const amiType = cluster.nodegroups[name];
    if (amiType === undefined) throw new ReplyError({ status: 404, type: 'ResourceNotFoundException', message: `No node group found for name: ${name}.` });
    return {
      nodegroupName: name,
      nodegroupArn: `arn:aws:eks:${cluster.region}:${FAKE_ACCOUNT}:nodegroup/${cluster.name}/${name}/0a1b2c3d`,
      clusterName: cluster.name,
      version: cluster.version,
      status: 'ACTIVE',
      amiType,
      capacityType: 'ON_DEMAND',
      scalingConfig: { minSize: 1, maxSize: 3, desiredSize: 2 },
    };
  }

  private describe(cluster: FakeEksCluster): Record<string, unknown> {
    return {
      name: cluster.name,
      arn: cluster.arn,
      createdAt: cluster.createdAt.getTime() / 1000,
      version: cluster.version,
      endpoint: cluster.status === 'CREATING' ? undefined : cluster.endpoint,
      roleArn: `arn:aws:iam::${FAKE_ACCOUNT}:role/eks-cluster`,
      status: cluster.status,
      certificateAuthority: cluster.status === 'CREATING' ? {} : { data: cluster.caData },
      platformVersion: cluster.platformVersion,
      tags: cluster.tags,
    };
  }

  private reply(res: ServerResponse, status: number, body: unknown, errorType?: string): number {
    const headers: Record<string, string> = { 'content-type': 'application/json', 'x-amzn-requestid': randomUUID() };
    // The real service appends the shape's namespace; the SDK reads the part before the colon.
    if (errorType) headers['x-amzn-errortype'] = `${errorType}:http://internal.amazon.com/coral/com.amazon.eks/`;
    res.writeHead(status, headers).end(JSON.stringify(body));
    return status;
  }
}

export function parseAmzDate(value: string): Date {
  const match = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(value);
  if (!match) return new Date(Number.NaN);
  const [, y, mo, d, h, mi, s] = match.map(Number) as number[];
  return new Date(Date.UTC(y as number, (mo as number) - 1, d, h, mi, s));
}

export async function startFakeEks(options: FakeEksOptions = {}): Promise<FakeEks> {
  return new FakeEks(options).listen();
}
