/**
 * Typed storage errors. Every backend translates its driver's errors into one of these at
 * its boundary, so callers branch on `code` and never on `SQLITE_CONSTRAINT` or
 * `ER_DUP_ENTRY`. The driver error, when there is one, is kept as `cause`.
 *
 * @module
 */

/** Stable machine-readable codes of {@link StovepipeError}. */
export type StovepipeErrorCode =
  | 'NOT_FOUND'
  | 'ALREADY_EXISTS'
  | 'VERSION_MISMATCH'
  | 'STORAGE_UNAVAILABLE'
  | 'STORAGE_CLOSED'
  | 'STORAGE_FAILED'
  | 'INVALID_INPUT'
  | 'STOPPED'
  | 'UNAVAILABLE'

/** Options shared by every Stovepipe error. */
export interface StovepipeErrorOptions {
  /** The underlying error (a driver error, a failed check), kept for diagnosis. */
  cause?: unknown
}

/** Base class of every error Stovepipe throws on purpose. */
export abstract class StovepipeError extends Error {
  /** Stable code to branch on; never changes for a given class. */
  abstract readonly code: StovepipeErrorCode
  /** True when the same call may succeed if retried later (a transient failure). */
  readonly retryable: boolean = false

  constructor(message: string, options: StovepipeErrorOptions = {}) {
    super(message, 'cause' in options ? { cause: options.cause } : undefined)
    this.name = new.target.name
  }
}

/** The addressed row does not exist. */
export class NotFoundError extends StovepipeError {
  readonly code = 'NOT_FOUND'
}

/** A create collided with an existing row (duplicate id, duplicate `(queue, uri)`, …). */
export class AlreadyExistsError extends StovepipeError {
  readonly code = 'ALREADY_EXISTS'
}

/**
 * A conditional update found a different stored version than the caller's `oldVersion`,
 * or no row at all. The caller re-reads and decides; nothing was written.
 */
export class VersionMismatchError extends StovepipeError {
  readonly code = 'VERSION_MISMATCH'
}

/**
 * The storage could not be reached or refused for a transient reason (connection refused,
 * lock timeout, database busy). Nothing was written; retrying later may succeed.
 */
export class StorageUnavailableError extends StovepipeError {
  readonly code = 'STORAGE_UNAVAILABLE'
  override readonly retryable = true
}

/** The storage handle was closed; open a new one. Retrying on this handle never succeeds. */
export class StorageClosedError extends StovepipeError {
  readonly code = 'STORAGE_CLOSED'
}

/**
 * The storage failed in a way that retrying will not fix (a corrupt file, an unexpected
 * driver error). Nothing was written.
 */
export class StorageFailedError extends StovepipeError {
  readonly code = 'STORAGE_FAILED'
}

/** The input was rejected before anything was written; the message says which rule. */
export class InvalidInputError extends StovepipeError {
  readonly code = 'INVALID_INPUT'
}

/** The component (writer, event log, runtime) is stopping or stopped and refuses new work. */
export class StoppedError extends StovepipeError {
  readonly code = 'STOPPED'
}

/**
 * A dependency other than storage (source control, the build infrastructure) failed for a
 * reason that may pass. Retrying later may succeed.
 */
export class UnavailableError extends StovepipeError {
  readonly code = 'UNAVAILABLE'
  override readonly retryable = true
}

/** True for errors a caller may retry (see {@link StovepipeError.retryable}). */
export function isRetryable(error: unknown): boolean {
  return error instanceof StovepipeError && error.retryable
}
