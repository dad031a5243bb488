/**
 * The storage contract: types, typed errors and input rules. Backends live in their own
 * subpaths (`stovepipe/storage/memory`, `…/sqlite`, `…/mysql`) so importing this never
 * loads a driver.
 * @module
 */
export {
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
  isRetryable,
} from './errors.js'
export type { StovepipeErrorCode, StovepipeErrorOptions } from './errors.js'
export { FINAL_REQUEST_STATES, OUTBOX_KINDS, OUTBOX_NEVER, REQUEST_STATES } from './types.js'
export type {
  CounterStore,
  DeadLetter,
  DueOutboxOptions,
  DeadLetterStore,
  EventEntry,
  EventRow,
  EventStore,
  Fact,
  FactPutResult,
  FactStore,
  GapEntry,
  Json,
  JsonObject,
  LastGreen,
  ListOutboxOptions,
  ListRequestsOptions,
  OutboxEntry,
  OutboxKey,
  OutboxKind,
  OutboxPutResult,
  OutboxSettlement,
  OutboxStore,
  Page,
  QueueRecord,
  QueueStore,
  ReadEventsOptions,
  RequestRecord,
  RequestState,
  RequestStore,
  RequestUriMapping,
  RequestUriStore,
  Storage,
  WriteOp,
  WriteResult,
} from './types.js'
export {
  HOOK_NAME_PATTERN,
  MAX_JSON_BYTES,
  MAX_OUTBOX_ERROR_BYTES,
  MAX_OUTBOX_PAYLOAD_BYTES,
  MAX_PROJECT_BYTES,
  MAX_URI_BYTES,
  NODE_ID_PATTERN,
  QUEUE_NAME_PATTERN,
} from './validation.js'
