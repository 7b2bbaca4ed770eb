// Typed errors thrown by services. app.ts maps each class to an HTTP status in one place;
// anything that is not an AppError is a backend failure and becomes a generic 500.

export abstract class AppError extends Error {
  /** Extra JSON fields for the error body (never secrets, never raw input). */
  readonly details: Record<string, unknown>;
  constructor(message: string, details: Record<string, unknown> = {}) {
    super(message);
    this.name = new.target.name;
    this.details = details;
  }
}

/**
 * The request is malformed; `fields` names what is wrong, without echoing the input, and
 * `hints` adds machine-readable advice (e.g. `max_time_left`).
 */
export class BadRequestError extends AppError {
  constructor(message: string, fields?: string[], hints: Record<string, unknown> = {}) {
    super(message, { ...(fields && { fields }), ...hints });
  }
}

export class UnauthorizedError extends AppError {}

export class NotFoundError extends AppError {}

export class MethodNotAllowedError extends AppError {
  readonly allow: string[];
  constructor(allow: string[]) {
    super('method not allowed');
    this.allow = allow;
  }
}

export class PayloadTooLargeError extends AppError {}

/** Why no cluster could be leased: nothing in the pool matches, or everything matching is busy. */
export type NoClusterReason = 'NoMatchingCluster' | 'AllLeased';

export class NoClusterAvailableError extends AppError {
  readonly reason: NoClusterReason;
  /** Seconds until the soonest matching lease ends, when that is known. */
  readonly retryAfterSeconds?: number;
  constructor(reason: NoClusterReason, message: string, retryAfterSeconds?: number) {
    super(message, { reason });
    this.reason = reason;
    this.retryAfterSeconds = retryAfterSeconds;
  }
}

/**
 * A request may not wait: too many wait already, in all or from the same principal. Answered
 * 429 with Retry-After; nobody else's request is affected.
 */
export class TooManyWaitersError extends AppError {
  readonly retryAfterSeconds = 10;
  constructor(message: string) {
    super(message, { reason: 'TooManyWaiters' });
  }
}

/**
 * A write would make an object of the lease store bigger than Kubernetes allows. Answered 503:
 * what is in the table is safe, and the request may succeed once records are released.
 */
export class StoreFullError extends AppError {
  constructor() {
    super('the lease table is full; try again later', { reason: 'StoreFull' });
  }
}

/** The cluster is not in a state that allows what was asked (e.g. cleaning again a free cluster). */
export class ClusterStateError extends AppError {
  constructor(message: string) {
    super(message, { reason: 'WrongClusterState' });
  }
}

/** A request reused an Idempotency-Key of a live lease with another body: it is another request (422). */
export class IdempotencyKeyReusedError extends AppError {
  constructor() {
    super('this Idempotency-Key was used for a request with another body', { reason: 'IdempotencyKeyReused' });
  }
}

/** A request with this Idempotency-Key is still being answered (409): retry once it is done. */
export class IdempotencyConflictError extends AppError {
  constructor() {
    super('a request with this Idempotency-Key is still being answered', { reason: 'RequestInProgress' });
  }
}

/** No live lease has the given token (never existed, released, or expired). */
export class LeaseNotFoundError extends AppError {
  constructor() {
    super('no live lease has this token', { reason: 'LeaseNotFound' });
  }
}

/** The store kept changing under us for longer than the retry budget allows. */
export class ContentionError extends AppError {
  constructor() {
    super('the lease store is busy; try again', { reason: 'Contention' });
  }
}

/** The client went away while it waited; it is given nothing (and hears nothing). */
export class ClientGoneError extends AppError {}

/** The replica is shutting down: a waiting request should try again (another replica). */
export class ShuttingDownError extends AppError {
  constructor() {
    super('the claimer is shutting down; try again', { reason: 'ShuttingDown' });
  }
}

/** The store or the cluster pool cannot be reached: the replica should get no traffic. */
export class NotReadyError extends AppError {}

/**
 * The store failed in a way that may pass (429, 5xx, a reset connection, a timeout). A write
 * that failed so may still have landed: the write path checks before deciding again.
 */
export class TransientStoreError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'TransientStoreError';
  }
}

/** A compare-and-swap lost: somebody else wrote first. The write path re-reads and decides again. */
export class VersionConflictError extends Error {
  constructor(message = 'the lease table changed since it was read') {
    super(message);
    this.name = 'VersionConflictError';
  }
}
