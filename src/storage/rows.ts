/**
 * Rows as the SQL backends store them, and their conversion to contract records. Both SQL
 * backends use the same column names.
 *
 * @internal
 * @module
 */
import type {
  DeadLetter,
  EventRow,
  Fact,
  Json,
  JsonObject,
  OutboxEntry,
  OutboxKind,
  QueueRecord,
  RequestRecord,
  RequestState,
} from './types.js'
import type { PreparedDeadLetter, PreparedEvent, PreparedOutbox, PreparedQueue, PreparedRequest } from './validation.js'

export interface RequestRow {
  id: string
  queue: string
  uri: string
  state: string
  version: number
  created_at: number
  updated_at: number
  data: string | null
}
export interface QueueRow {
  name: string
  version: number
  config: string
  last_green: string | null
  snapshot: string | null
  created_at: number
  updated_at: number
}
export interface FactRow {
  queue: string
  uri: string
  project: string
  degree: number
  request_id: string
  at: number
}
export interface EventDbRow {
  node_id: string
  seq: number
  kind: string
  first_id: number
  last_id: number
  at: number
  payload: string | null
}

export const REQUEST_COLUMNS = 'id, queue, uri, state, version, created_at, updated_at, data'
export const QUEUE_COLUMNS = 'name, version, config, last_green, snapshot, created_at, updated_at'
export const FACT_COLUMNS = 'queue, uri, project, degree, request_id, at'
export const EVENT_COLUMNS = 'node_id, seq, kind, first_id, last_id, at, payload'

export function toRequest(row: RequestRow): RequestRecord {
  const record: RequestRecord = {
    id: row.id,
    queue: row.queue,
    uri: row.uri,
    state: row.state as RequestState,
    version: row.version,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  }
  if (row.data !== null) record.data = JSON.parse(row.data) as Json
  return record
}

export function toQueue(row: QueueRow): QueueRecord {
  const record: QueueRecord = {
    name: row.name,
    version: row.version,
    config: JSON.parse(row.config) as QueueRecord['config'],
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  }
  if (row.last_green !== null) record.lastGreen = JSON.parse(row.last_green) as NonNullable<QueueRecord['lastGreen']>
  if (row.snapshot !== null) record.snapshot = JSON.parse(row.snapshot) as Json
  return record
}

export function toFact(row: FactRow): Fact {
  return { queue: row.queue, uri: row.uri, project: row.project, degree: row.degree, requestId: row.request_id, at: row.at }
}

export function toEvent(row: EventDbRow): EventRow {
  if (row.kind === 'gap') return { kind: 'gap', nodeId: row.node_id, seq: row.seq, fromId: row.first_id, toId: row.last_id, at: row.at }
  return {
    kind: 'event',
    nodeId: row.node_id,
    seq: row.seq,
    id: row.first_id,
    at: row.at,
    payload: JSON.parse(row.payload ?? 'null') as Json,
  }
}

/** The record a validated request stands for, with a fresh copy of its data. */
export function requestOf(prepared: PreparedRequest): RequestRecord {
  const record: RequestRecord = { ...prepared.record }
  if (prepared.dataJson !== null) record.data = JSON.parse(prepared.dataJson) as Json
  return record
}

/** The record a validated queue stands for, with fresh copies of its JSON. */
export function queueOf(prepared: PreparedQueue): QueueRecord {
  const { lastGreen, ...rest } = prepared.record
  const record: QueueRecord = { ...rest, config: JSON.parse(prepared.configJson) as QueueRecord['config'] }
  if (lastGreen !== undefined) record.lastGreen = { ...lastGreen }
  if (prepared.snapshotJson !== null) record.snapshot = JSON.parse(prepared.snapshotJson) as Json
  return record
}

/** The event-log row a validated event stands for. */
export function eventOf(e: PreparedEvent): EventRow {
  return toEvent({ node_id: e.nodeId, seq: e.seq, kind: e.kind, first_id: e.firstId, last_id: e.lastId, at: e.at, payload: e.payloadJson })
}

export interface DeadLetterRow {
  n: number
  id: string
  at: number
  op: string
  error_code: string
  error_message: string
  attempts: number
}
export const DEAD_LETTER_COLUMNS = 'n, id, at, op, error_code, error_message, attempts'

export function toDeadLetter(row: DeadLetterRow): DeadLetter {
  return {
    id: row.id,
    at: row.at,
    op: JSON.parse(row.op) as Json,
    error: { code: row.error_code, message: row.error_message },
    attempts: row.attempts,
  }
}

/** The dead letter a validated one stands for, with a fresh copy of its op. */
export function deadLetterOf(prepared: PreparedDeadLetter): DeadLetter {
  const { letter } = prepared
  return { ...letter, error: { ...letter.error }, op: JSON.parse(prepared.opJson) as Json }
}

export interface OutboxRow {
  n: number
  queue: string
  request_id: string
  kind: string
  hook: string
  payload: string
  created_at: number
  attempts: number
  next_attempt_at: number
  delivered_at: number | null
  last_error: string | null
}
export const OUTBOX_COLUMNS = 'n, queue, request_id, kind, hook, payload, created_at, attempts, next_attempt_at, delivered_at, last_error'

/** The outbox entry a stored row stands for. */
export function toOutbox(row: OutboxRow): OutboxEntry {
  return {
    queue: row.queue,
    requestId: row.request_id,
    kind: row.kind as OutboxKind,
    hook: row.hook,
    payload: JSON.parse(row.payload) as JsonObject,
    createdAt: row.created_at,
    attempts: row.attempts,
    nextAttemptAt: row.next_attempt_at,
    deliveredAt: row.delivered_at,
    lastError: row.last_error,
  }
}

/** The validated form of a stored row (the MySQL backend loads rows it updates). */
export function preparedOutboxOf(row: OutboxRow): PreparedOutbox {
  const { payload: _payload, ...entry } = toOutbox({ ...row, payload: '{}' })
  return { entry, payloadJson: row.payload }
}

/** The outbox entry a validated one stands for, with a fresh copy of its payload. */
export function outboxOf(prepared: PreparedOutbox): OutboxEntry {
  return { ...prepared.entry, payload: JSON.parse(prepared.payloadJson) as JsonObject }
}

/** The row values of an outbox entry, in {@link OUTBOX_COLUMNS} order after `n`. */
export function outboxValues(prepared: PreparedOutbox): (string | number | null)[] {
  const e = prepared.entry
  return [e.queue, e.requestId, e.kind, e.hook, prepared.payloadJson, e.createdAt, e.attempts, e.nextAttemptAt, e.deliveredAt, e.lastError]
}
