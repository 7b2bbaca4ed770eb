import { hash, timingSafeEqual } from 'node:crypto';

/** A lease token: a random UUID v4, the lessee's proof of ownership. */
export function newLeaseToken(): string {
  return crypto.randomUUID();
}

/** Lease tokens are stored only as this hash, so read access to the store cannot release leases. */
export function hashToken(token: string): string {
  // The one-shot hash: cheaper per call than a Hash object, and it runs on every request.
  return hash('sha256', token, 'hex');
}

/**
 * A check of a presented secret against a known one, in time that does not depend on where
 * they differ. Both are hashed first, so the comparison leaks neither content nor length; the
 * known one's digest is computed once.
 */
export function secretCheck(known: string): (presented: string) => boolean {
  const expected = hash('sha256', known, 'buffer');
  return (presented) => timingSafeEqual(hash('sha256', presented, 'buffer'), expected);
}
