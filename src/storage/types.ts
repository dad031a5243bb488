/**
 * The storage contract. Every backend (memory, SQLite, MySQL) implements {@link Storage}
 * with the same observable behaviour; `describeStorageContract` in `stovepipe/testing`
 * checks it.
 *
 * Conventions:
 * - Timestamps are epoch milliseconds, supplied by the caller (storage never reads a clock).
 * - Versions are owned by the caller: `update(record, oldVersion, newVersion)` persists only
 *   when the stored version equals `oldVersion`, and stores `newVersion`.
 * - Everything stored is plain JSON and comes back as a fresh copy.
 *
 * @module
 */

/** A plain JSON value: what survives `JSON.parse(JSON.stringify(x))` unchanged. */
export type Json = null | boolean | number | string | Json[] | JsonObject
/** A plain JSON object. */
export interface JsonObject {
  [key: string]: Json
}

/** Every state a request can be in; `processing` has sub-states kept in `data`. */
export const REQUEST_STATES = ['accepted', 'processing', 'recorded', 'superseded', 'cancelled'] as const
/** Top-level state of a request. */
export type RequestState = (typeof REQUEST_STATES)[number]
/** States a request never leaves. */
export const FINAL_REQUEST_STATES: readonly RequestState[] = ['recorded', 'superseded', 'cancelled']

/** One validation of one queue at one URI. */
export interface RequestRecord {
  /** `request/<queue>/<n>`, `n` a positive integer from the queue's counter. */
  id: string
  queue: string
  /** Opaque commit identity owned by the source-control backend. */
  uri: string
  state: RequestState
  /** CAS version; the caller picks it (normally 0 on create, +1 on each update). */
  version: number
  createdAt: number
  updatedAt: number
  /** Plain JSON owned by the runtime (the request machine's persisted snapshot). */
  data?: Json
}

/** `(queue, uri) → request id`: the dedup index. */
export interface RequestUriMapping {
  queue: string
  uri: string
  requestId: string
}

/** The last green commit of a queue. */
export interface LastGreen {
  uri: string
  requestId: string
  at: number
}

/** A queue: configuration, last green and the queue actor's persisted snapshot. */
export interface QueueRecord {
  /** Matches `^[A-Za-z0-9._-]{1,128}$`. */
  name: string
  version: number
  /** Queue configuration (repo, ref, limits), plain JSON. */
  config: JsonObject
  lastGreen?: LastGreen
  /** The queue actor's persisted snapshot, plain JSON. */
  snapshot?: Json
  createdAt: number
  updatedAt: number
}

/**
 * An immutable greenness fact: `(queue, uri, project) → degree`. Degree 0 is green, 1 fully
 * broken; with projects, the fraction of broken projects. Project `""` is the whole repo.
 */
export interface Fact {
  queue: string
  uri: string
  project: string
  degree: number
  requestId: string
  at: number
}

/** Result of {@link FactStore.put}: the first writer wins and the stored fact never changes. */
export type FactPutResult = { written: true; fact: Fact } | { written: false; fact: Fact }

/** A logged transition (or any payload) with its logical id. */
export interface EventEntry {
  kind: 'event'
  /** Node (process) that logged it. */
  nodeId: string
  /** Storage sequence number, contiguous per node from 0 (gap rows count too). */
  seq: number
  /** Logical id, contiguous per node from 0 across events and gap ranges. */
  id: number
  at: number
  payload: Json
}

/** A persisted gap sentinel: logical ids `fromId..toId` (inclusive) were dropped. */
export interface GapEntry {
  kind: 'gap'
  nodeId: string
  seq: number
  fromId: number
  toId: number
  at: number
}

/** One row of the event log. */
export type EventRow = EventEntry | GapEntry

/**
 * An op the writer could not commit, with why. Kept in the `dead_letters` table so nothing
 * accepted is ever dropped without a trace.
 */
export interface DeadLetter {
  /** Unique id chosen by the writer (`<writer>:<n>`); a second put of it is a no-op. */
  id: string
  at: number
  /** The op as it was accepted (plain JSON). */
  op: Json
  error: { code: string; message: string }
  /** Commit attempts made before giving up. */
  attempts: number
}

/** What an outbox entry notifies: a request's verdict, or a move of a queue's last green. */
export const OUTBOX_KINDS = ['verdict', 'lastGreen'] as const
/** Kind of an outbox entry. */
export type OutboxKind = (typeof OUTBOX_KINDS)[number]

/**
 * `nextAttemptAt` of an entry its dispatcher gave up on (after `maxAttempts`): never due
 * again. Such an entry keeps `deliveredAt: null` and says why in `lastError`.
 */
export const OUTBOX_NEVER = Number.MAX_SAFE_INTEGER

/** The key of an outbox entry: one notification, for one hook. */
export interface OutboxKey {
  queue: string
  /** The request the notification is about (for `lastGreen`: the new last green's request). */
  requestId: string
  kind: OutboxKind
  /** Name of the hook that receives it; matches `^[A-Za-z0-9._-]{1,128}$`. */
  hook: string
}

/**
 * A notification waiting for (or done with) delivery to a hook: the transactional outbox.
 * Written in the same commit as the change it reports, delivered at least once.
 */
export interface OutboxEntry extends OutboxKey {
  /** What the hook receives, plain JSON (at most 64 KiB serialized). */
  payload: JsonObject
  createdAt: number
  /** Delivery attempts made so far. */
  attempts: number
  /** When the entry is next due (epoch ms); {@link OUTBOX_NEVER} once given up. */
  nextAttemptAt: number
  /** When the hook accepted it; null while pending. */
  deliveredAt: number | null
  /** Why the last attempt failed; null when none did (or once delivered). */
  lastError: string | null
}

/** The new delivery state of a pending entry (see {@link OutboxStore.settle}). */
export interface OutboxSettlement {
  attempts: number
  nextAttemptAt: number
  deliveredAt: number | null
  lastError: string | null
}

/** Result of {@link OutboxStore.put}: the first writer wins and its entry is returned. */
export interface OutboxPutResult {
  written: boolean
  entry: OutboxEntry
}

/** Options of {@link OutboxStore.due}. */
export interface DueOutboxOptions {
  /** Entries with `nextAttemptAt <= before`. */
  before: number
  /** At most this many, 1 to 1000; default 100. */
  limit?: number
}

/** Options of {@link OutboxStore.list}. */
export interface ListOutboxOptions {
  /** Only this queue's entries. */
  queue?: string
  /** Opaque cursor from a previous page's `nextCursor`. */
  cursor?: string
  /** Page size, 1 to 1000; default 100. */
  limit?: number
}

/** Options of {@link RequestStore.listByQueue}. */
export interface ListRequestsOptions {
  /** Only requests in one of these states. */
  states?: readonly RequestState[]
  /** Opaque cursor from a previous page's `nextCursor`. */
  cursor?: string
  /** Page size, 1 to 1000; default 100. */
  limit?: number
  /** By request number: `asc` (oldest first, the default) or `desc` (newest first). */
  order?: 'asc' | 'desc'
}

/** A page of results. `nextCursor` is present when more may follow. */
export interface Page<T> {
  items: T[]
  nextCursor?: string
}

/** Options of {@link EventStore.read}. */
export interface ReadEventsOptions {
  /** Only this node's rows; all nodes when omitted, ordered by `(nodeId, seq)`. */
  nodeId?: string
  /** Only rows with `seq >= fromSeq`. */
  fromSeq?: number
  /** Only rows covering logical ids `>= fromId` (an event with `id >= fromId`, a gap with `toId >= fromId`). */
  fromId?: number
  /** At most this many rows, 1 to 10000; default 1000. */
  limit?: number
}

/** Requests by id. */
export interface RequestStore {
  /** Creates the row; `AlreadyExistsError` when the id exists. */
  create: (record: RequestRecord) => Promise<RequestRecord>
  /** The row; `NotFoundError` when missing. */
  get: (id: string) => Promise<RequestRecord>
  /**
   * Persists `state`, `data` and `updatedAt` (the mutable fields) with version `newVersion`,
   * only if the stored version is `oldVersion`; otherwise `VersionMismatchError` (also
   * when the row is missing). Returns the stored row.
   */
  update: (record: RequestRecord, oldVersion: number, newVersion: number) => Promise<RequestRecord>
  /** A queue's requests by request number, filtered by state, paged. */
  listByQueue: (queue: string, options?: ListRequestsOptions) => Promise<Page<RequestRecord>>
}

/** The `(queue, uri)` dedup index. */
export interface RequestUriStore {
  /** Claims `(queue, uri)`; `AlreadyExistsError` when it is taken: the dedup signal. */
  create: (mapping: RequestUriMapping) => Promise<void>
  /** The request id minted for `(queue, uri)`; `NotFoundError` when none. */
  getIdByUri: (queue: string, uri: string) => Promise<string>
}

/** Queue records. */
export interface QueueStore {
  /** `AlreadyExistsError` when the name exists. */
  create: (record: QueueRecord) => Promise<QueueRecord>
  /** `NotFoundError` when missing. */
  get: (name: string) => Promise<QueueRecord>
  /**
   * Persists `config`, `lastGreen`, `snapshot` and `updatedAt` with version `newVersion`
   * only if the stored version is `oldVersion`; otherwise `VersionMismatchError`.
   */
  update: (record: QueueRecord, oldVersion: number, newVersion: number) => Promise<QueueRecord>
  /** Every queue, by name. */
  list: () => Promise<QueueRecord[]>
}

/** Immutable greenness facts. */
export interface FactStore {
  /** Writes the fact unless one exists for `(queue, uri, project)`; the first writer wins. */
  put: (fact: Fact) => Promise<FactPutResult>
  /** The fact for `(queue, uri, project)` (project defaults to `""`); `NotFoundError` when none. */
  get: (queue: string, uri: string, project?: string) => Promise<Fact>
  /** Every project's fact for `(queue, uri)`, by project. */
  listByUri: (queue: string, uri: string) => Promise<Fact[]>
}

/** Per-queue request counters. */
export interface CounterStore {
  /** 1, 2, 3, … per queue; durable and never reused, also across close and reopen. */
  next: (queue: string) => Promise<number>
}

/** Dead letters, in the order they were stored. */
export interface DeadLetterStore {
  /** Stores the letter unless one with its id exists. */
  put: (letter: DeadLetter) => Promise<void>
  /** Letters in storage order, paged (limit 1 to 1000, default 100). */
  list: (options?: { cursor?: string; limit?: number }) => Promise<Page<DeadLetter>>
}

/** The event log's rows. */
export interface EventStore {
  /** Appends rows; `AlreadyExistsError` when a `(nodeId, seq)` exists (nothing written then). */
  append: (rows: readonly EventRow[]) => Promise<void>
  /** Rows ordered by `(nodeId, seq)`. */
  read: (options?: ReadEventsOptions) => Promise<EventRow[]>
  /** The row with the highest seq of a node, or undefined when the node has none. */
  last: (nodeId: string) => Promise<EventRow | undefined>
  /**
   * The nodes that have rows, in the order `read` gives them. Ids are contiguous per node,
   * so a reader of several nodes pages each with `nodeId` and a position of its own.
   */
  nodes: () => Promise<string[]>
}

/** The hooks' outbox: notifications to deliver, with their delivery state. */
export interface OutboxStore {
  /**
   * Stores the entry unless one with its key `(queue, requestId, kind, hook)` exists; the
   * first writer wins (its entry is returned, `written: false`), so a repeated put is a no-op.
   */
  put: (entry: OutboxEntry) => Promise<OutboxPutResult>
  /**
   * Sets the delivery state of a pending entry and returns it; `NotFoundError` when there is
   * no such entry, `VersionMismatchError` when it was already delivered (nothing changes).
   */
  settle: (key: OutboxKey, settlement: OutboxSettlement) => Promise<OutboxEntry>
  /** The entry; `NotFoundError` when missing. */
  get: (key: OutboxKey) => Promise<OutboxEntry>
  /**
   * Undelivered entries with `nextAttemptAt <= before`, the longest waiting first: by
   * `nextAttemptAt`, then `createdAt`, then storage order.
   */
  due: (options: DueOutboxOptions) => Promise<OutboxEntry[]>
  /** Every entry (of one queue, when given) in storage order, paged. */
  list: (options?: ListOutboxOptions) => Promise<Page<OutboxEntry>>
}

/** One operation of a {@link Storage.commit} batch. */
export type WriteOp =
  | { op: 'request.create'; record: RequestRecord }
  | { op: 'request.update'; record: RequestRecord; oldVersion: number; newVersion: number }
  | { op: 'requestUri.create'; mapping: RequestUriMapping }
  | { op: 'queue.create'; record: QueueRecord }
  | { op: 'queue.update'; record: QueueRecord; oldVersion: number; newVersion: number }
  | { op: 'fact.put'; fact: Fact }
  | { op: 'counter.next'; queue: string }
  | { op: 'event.append'; row: EventRow }
  | { op: 'deadLetter.put'; letter: DeadLetter }
  | { op: 'outbox.put'; entry: OutboxEntry }
  | {
      op: 'outbox.settle'
      key: OutboxKey
      attempts: number
      nextAttemptAt: number
      deliveredAt: number | null
      lastError: string | null
    }

/**
 * The outcome of one op of a batch.
 * - `ok`: applied; `counter.next` carries the issued `value`.
 * - `already_exists`: a create or append collided; `fact.put` carries the stored `fact`.
 * - `version_mismatch`: an update found another version (`outbox.settle`: the entry was
 *   already delivered).
 * - `not_found`: an update found no row.
 */
export type WriteResult =
  { status: 'ok'; value?: number } | { status: 'already_exists'; fact?: Fact } | { status: 'version_mismatch' } | { status: 'not_found' }

/** The storage contract every backend implements. */
export interface Storage {
  /** Which backend: `memory`, `sqlite` or `mysql`. */
  readonly kind: string
  readonly requests: RequestStore
  readonly requestUris: RequestUriStore
  readonly queues: QueueStore
  readonly facts: FactStore
  readonly counters: CounterStore
  readonly events: EventStore
  readonly deadLetters: DeadLetterStore
  readonly outbox: OutboxStore
  /**
   * The group-commit primitive: every op in one transaction, one result per op, in order.
   * A failed condition (`already_exists`, `version_mismatch`, `not_found`) does not roll
   * back the other ops; later ops see earlier ones. Invalid input rejects the call with
   * `InvalidInputError` and a storage failure with `StorageUnavailableError` or
   * `StorageFailedError`; either way nothing is written.
   */
  commit: (ops: readonly WriteOp[]) => Promise<WriteResult[]>
  /** Applies pending migrations under a lock; returns the versions this call applied. */
  migrate: () => Promise<number[]>
  /** Releases the handle; later calls fail with `StorageClosedError`. Idempotent. */
  close: () => Promise<void>
}
