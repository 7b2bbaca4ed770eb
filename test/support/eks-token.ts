// Checks an EKS bearer token as EKS would: aws-iam-authenticator's checks of the presigned URL
// (prefix, host, action, parameters, expiry, the cluster header signed), then STS's part, the
// signature, by presigning the same request with the same credentials and date through
// SignatureV4 and comparing. The cluster name goes in as the signed header's value, so a token
// made for another cluster does not verify.

import { timingSafeEqual } from 'node:crypto';
import type { AwsCredentialIdentity } from '@smithy/types';
import { stsRequest, stsSigner } from '../../services/providers/eks.ts';
import { parseAmzDate } from '../fakes/eks.ts';

const PREFIX = 'k8s-aws-v1.';
/** aws-iam-authenticator: tokens are taken for 15 minutes from X-Amz-Date, X-Amz-Expires at most 60. */
const VALID_MS = 15 * 60_000;
const MAX_EXPIRES = 60;
const MAX_TOKEN_BYTES = 4096;
const ALLOWED_PARAMS = new Set(['action', 'version', 'x-amz-algorithm', 'x-amz-credential', 'x-amz-date', 'x-amz-expires', 'x-amz-security-token', 'x-amz-signature', 'x-amz-signedheaders']);

export interface EksTokenExpectation {
  clusterName: string;
  region: string;
  /** What STS knows of the caller: the secret to check the signature with. */
  credentials: AwsCredentialIdentity;
  now?: number;
}

export type Verdict = { ok: true } | { ok: false; reason: string };

export async function verifyEksToken(token: string | undefined, expected: EksTokenExpectation): Promise<Verdict> {
  const refuse = (reason: string): Verdict => ({ ok: false, reason });
  if (!token?.startsWith(PREFIX)) return refuse('no k8s-aws-v1. prefix');
  if (token.length > MAX_TOKEN_BYTES) return refuse('token too long');
  let url: URL;
  try {
    url = new URL(Buffer.from(token.slice(PREFIX.length), 'base64url').toString('utf8'));
  } catch {
    return refuse('not a URL');
  }
  if (url.protocol !== 'https:' || url.host !== `sts.${expected.region}.amazonaws.com` || url.pathname !== '/') return refuse(`unexpected host ${url.host}`);
  const params = new Map<string, string>();
  for (const [key, value] of url.searchParams) {
    if (!ALLOWED_PARAMS.has(key.toLowerCase())) return refuse(`parameter ${key} not allowed`);
    if (params.has(key)) return refuse(`parameter ${key} repeated`);
    params.set(key, value);
  }
  if (params.get('Action') !== 'GetCallerIdentity' || params.get('Version') !== '2011-06-15') return refuse('not GetCallerIdentity');
  if (params.get('X-Amz-Algorithm') !== 'AWS4-HMAC-SHA256') return refuse('not AWS4-HMAC-SHA256');
  const expires = Number(params.get('X-Amz-Expires'));
  if (!Number.isInteger(expires) || expires < 0 || expires > MAX_EXPIRES) return refuse('invalid X-Amz-Expires');
  const amzDate = params.get('X-Amz-Date') ?? '';
  const signedAt = parseAmzDate(amzDate).getTime();
  const now = expected.now ?? Date.now();
  if (Number.isNaN(signedAt)) return refuse('invalid X-Amz-Date');
  if (now > signedAt + VALID_MS) return refuse('expired');
  if (signedAt > now + 5 * 60_000) return refuse('signed in the future');
  const signedHeaders = (params.get('X-Amz-SignedHeaders') ?? '').split(';');
  if (!signedHeaders.includes('x-k8s-aws-id')) return refuse('x-k8s-aws-id not signed');
  if (!signedHeaders.includes('host')) return refuse('host not signed');
  const { accessKeyId, sessionToken } = expected.credentials;
  if (params.get('X-Amz-Credential') !== `${accessKeyId}/${amzDate.slice(0, 8)}/${expected.region}/sts/aws4_request`) return refuse('unexpected credential scope');
  if (params.get('X-Amz-Security-Token') !== sessionToken) return refuse('unexpected session token');
  const again = await stsSigner(expected.region, expected.credentials).presign(stsRequest(expected.region, expected.clusterName), {
    expiresIn: expires,
    signingDate: new Date(signedAt),
  });
  const want = Buffer.from(String(again.query?.['X-Amz-Signature'] ?? ''));
  const got = Buffer.from(params.get('X-Amz-Signature') ?? '');
  if (want.length !== got.length || !timingSafeEqual(want, got)) return refuse('signature does not match');
  return { ok: true };
}
