/**
 * Errors on the wire: every error response is JSON `{ error: { code, message } }` with an
 * HTTP status chosen from the error's type, and the client turns it back into the same
 * typed error.
 *
 * @module
 */
import {
  AlreadyExistsError,
  InvalidInputError,
  NotFoundError,
  StorageClosedError,
  StorageFailedError,
  StorageUnavailableError,
  StoppedError,
  StovepipeError,
  UnavailableError,
  VersionMismatchError,
} from '../storage/errors.js'

/** An error that is about HTTP itself (auth, method, size, read-only), with its status and code. */
export class HttpError extends Error {
  constructor(
    /** HTTP status code. */
    readonly status: number,
    /** Stable code, e.g. `UNAUTHORIZED`, `METHOD_NOT_ALLOWED`, `PAYLOAD_TOO_LARGE`, `READ_ONLY`. */
    readonly code: string,
    message: string,
    /** Extra response headers (e.g. `Allow`, `WWW-Authenticate`). */
    readonly headers: Readonly<Record<string, string>> = {},
  ) {
    super(message)
    this.name = 'HttpError'
  }
}

/** The JSON body of every error response. */
export interface ErrorBody {
  error: { code: string; message: string }
}

/** What an error becomes on the wire; `expected` is false for errors worth logging (500). */
export function toResponse(error: unknown): {
  status: number
  body: ErrorBody
  headers: Readonly<Record<string, string>>
  expected: boolean
} {
  const reply = (status: number, code: string, message: string, headers: Readonly<Record<string, string>> = {}) => ({
    status,
    body: { error: { code, message } },
    headers,
    expected: status < 500 || status === 503,
  })
  if (error instanceof HttpError) return reply(error.status, error.code, error.message, error.headers)
  if (error instanceof StovepipeError) {
    switch (error.code) {
      case 'INVALID_INPUT':
        return reply(400, error.code, error.message)
      case 'NOT_FOUND':
        return reply(404, error.code, error.message)
      case 'ALREADY_EXISTS':
      case 'VERSION_MISMATCH':
        return reply(409, error.code, error.message)
      case 'STOPPED':
      case 'UNAVAILABLE':
      case 'STORAGE_UNAVAILABLE':
      case 'STORAGE_CLOSED':
        return reply(503, error.code, error.message, error.retryable ? { 'Retry-After': '1' } : {})
      case 'STORAGE_FAILED':
        return { ...reply(500, error.code, error.message), expected: false }
    }
  }
  return { ...reply(500, 'INTERNAL', 'internal error; see the server log'), expected: false }
}

/** Turns an error body back into the typed error the server had (or an {@link HttpError}). */
export function fromResponse(status: number, body: unknown): Error {
  const error = (body as Partial<ErrorBody> | null)?.error
  // Every error a Stovepipe server sends has a body with a code: without one, something else answered.
  if (typeof error?.code !== 'string') {
    return new UnavailableError(`HTTP ${status} without a Stovepipe error body: is the URL a Stovepipe server (or is a proxy answering)?`)
  }
  const code = error.code
  const message = typeof error.message === 'string' ? error.message : `HTTP ${status}`
  switch (code) {
    case 'INVALID_INPUT':
      return new InvalidInputError(message)
    case 'NOT_FOUND':
      return new NotFoundError(message)
    case 'ALREADY_EXISTS':
      return new AlreadyExistsError(message)
    case 'VERSION_MISMATCH':
      return new VersionMismatchError(message)
    case 'STOPPED':
      return new StoppedError(message)
    case 'UNAVAILABLE':
      return new UnavailableError(message)
    case 'STORAGE_UNAVAILABLE':
      return new StorageUnavailableError(message)
    case 'STORAGE_CLOSED':
      return new StorageClosedError(message)
    case 'STORAGE_FAILED':
      return new StorageFailedError(message)
    default:
      return new HttpError(status, code, message)
  }
}
