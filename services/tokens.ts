import { createHash, timingSafeEqual } from 'node:crypto';
import { Buffer } from 'node:buffer';

/** A lease token: a random UUID v4, the lessee's proof of ownership. */
export function newLeaseToken(): string {
  return crypto.randomUUID();
}

/** Lease tokens are stored only as this hash, so read access to the store cannot release leases. */
export function hashToken(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

/** Compares two secrets in time that does not depend on where they differ. */
export function secretsEqual(a: string, b: string): boolean {
  // Hashing first gives equal lengths, so the comparison leaks neither content nor length.
  const digestA = createHash('sha256').update(a, 'utf8').digest();
  const digestB = createHash('sha256').update(b, 'utf8').digest();
  return timingSafeEqual(digestA, digestB);
}

/** Compares two hex token hashes in constant time. */
export function tokenHashesEqual(a: string, b: string): boolean {
  const bufferA = Buffer.from(a, 'hex');
  const bufferB = Buffer.from(b, 'hex');
  return bufferA.length === bufferB.length && timingSafeEqual(bufferA, bufferB);
}
