/**
 * `stovepipe`: which commit of a branch is the last known green, and why.
 *
 * This entry point holds the runtime's actors, the storage contract and the typed errors;
 * storage backends are separate subpaths so that importing `stovepipe` never loads a
 * database driver.
 * @module
 */
export { createStovepipe, describeRequest, DEFAULT_QUEUE_CONFIG } from './runtime/index.js'
export type {
  CancelResult,
  IngestResult,
  LastGreenView,
  QueueConfigInput,
  QueueHandle,
  RequestView,
  StopReport,
  Stovepipe,
  StovepipeOptions,
} from './runtime/index.js'
export {
  WEBHOOK_IDEMPOTENCY_HEADER,
  WEBHOOK_KIND_HEADER,
  WEBHOOK_SIGNATURE_HEADER,
  createOutboxDispatcher,
  createWebhookHook,
  outboxIdempotencyKey,
  signWebhookBody,
  verifyWebhookSignature,
} from './hooks/index.js'
export type {
  Hook,
  HookContext,
  HookRetryOptions,
  LastGreenPayload,
  LastGreenRef,
  OutboxDispatcher,
  OutboxDispatcherOptions,
  OutboxDispatcherStats,
  VerdictPayload,
  WebhookBody,
  WebhookHookOptions,
} from './hooks/index.js'
export { newQueueContext, newRequestContext, queueMachine, requestActorId, requestMachine } from './machines/index.js'
export type { QueueConfig, QueueContext, RequestContext, RequestStep, Verdict } from './machines/index.js'
export type { SourceControl, SourceControlProvider, SourceControlTarget } from './sourcecontrol/index.js'
export type { BuildRequest, BuildResult, BuildRunner, Strategy } from './build/index.js'
export { createEventLog, createWriter, EventLogConflictError, eventLogActor, renderEntry, systemClock } from './actors/index.js'
export type {
  Clock,
  DrainReport,
  EventAck,
  EventLog,
  EventLogOptions,
  EventLogStats,
  EventLogStopReport,
  LagNotice,
  LogEntry,
  RetryOptions,
  SubscribeOptions,
  Subscription,
  TransitionEvent,
  Writer,
  WriterOptions,
  WriterResult,
  WriterStats,
} from './actors/index.js'
export {
  AlreadyExistsError,
  FINAL_REQUEST_STATES,
  HOOK_NAME_PATTERN,
  InvalidInputError,
  MAX_JSON_BYTES,
  MAX_OUTBOX_ERROR_BYTES,
  MAX_OUTBOX_PAYLOAD_BYTES,
  MAX_PROJECT_BYTES,
  MAX_URI_BYTES,
  NODE_ID_PATTERN,
  NotFoundError,
  OUTBOX_KINDS,
  OUTBOX_NEVER,
  QUEUE_NAME_PATTERN,
  REQUEST_STATES,
  StorageClosedError,
  StorageFailedError,
  StorageUnavailableError,
  StoppedError,
  StovepipeError,
  UnavailableError,
  VersionMismatchError,
  isRetryable,
} from './storage/index.js'
export type {
  CounterStore,
  DeadLetter,
  DeadLetterStore,
  DueOutboxOptions,
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
  StovepipeErrorCode,
  StovepipeErrorOptions,
  WriteOp,
  WriteResult,
} from './storage/index.js'
