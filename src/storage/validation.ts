/**
 * Input rules shared by every backend. Each backend runs these before touching its
 * database, so bad input is rejected with {@link InvalidInputError} and nothing is written.
 *
 * @module
 */
import { InvalidInputError } from './errors.js'
import {
  OUTBOX_KINDS,
  REQUEST_STATES,
  type DeadLetter,
  type DueOutboxOptions,
  type EventRow,
  type Fact,
  type LastGreen,
  type ListOutboxOptions,
  type ListRequestsOptions,
  type OutboxEntry,
  type OutboxKey,
  type OutboxKind,
  type QueueRecord,
  type ReadEventsOptions,
  type RequestRecord,
  type RequestState,
  type RequestUriMapping,
  type WriteOp,
} from './types.js'

/** Queue names: letters, digits, `.`, `_`, `-`; 1 to 128 characters. */
export const QUEUE_NAME_PATTERN = /^[A-Za-z0-9._-]{1,128}$/
/** Node ids of the event log: like queue names, plus `:`. */
export const NODE_ID_PATTERN = /^[A-Za-z0-9._:-]{1,128}$/
/** Hook names (the last part of an outbox key): like queue names. */
export const HOOK_NAME_PATTERN = /^[A-Za-z0-9._-]{1,128}$/
/** Largest serialized outbox payload, in bytes. */
export const MAX_OUTBOX_PAYLOAD_BYTES = 64 * 1024
/** Longest `lastError` of an outbox entry, in UTF-8 bytes. */
export const MAX_OUTBOX_ERROR_BYTES = 4096
/** Longest URI, in UTF-8 bytes. */
export const MAX_URI_BYTES = 2048
/** Longest project name, in UTF-8 bytes. */
export const MAX_PROJECT_BYTES = 256
/** Largest serialized JSON document (request data, snapshots, event payloads), in bytes. */
export const MAX_JSON_BYTES = 1024 * 1024
/** Deepest JSON nesting accepted. */
export const MAX_JSON_DEPTH = 64
/** Default and largest page sizes. */
export const DEFAULT_PAGE_LIMIT = 100
export const MAX_PAGE_LIMIT = 1000
export const DEFAULT_EVENT_LIMIT = 1000
export const MAX_EVENT_LIMIT = 10_000

const REQUEST_ID_PATTERN = /^request\/([A-Za-z0-9._-]{1,128})\/([1-9][0-9]{0,15})$/
// eslint-disable-next-line no-control-regex -- the point is to find control characters
const CONTROL_CHARS = /[\u0000-\u001f\u007f]/
const STATE_SET: ReadonlySet<string> = new Set(REQUEST_STATES)
const OUTBOX_KIND_SET: ReadonlySet<string> = new Set(OUTBOX_KINDS)

function fail(message: string): never {
  throw new InvalidInputError(message)
}

function describe(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value.length > 60 ? `${value.slice(0, 60)}…` : value)
  if (value === undefined) return 'undefined'
  if (typeof value === 'number' || typeof value === 'boolean' || value === null) return String(value)
  return typeof value
}

/** Checks a queue name. */
export function assertQueueName(name: unknown, what = 'queue name'): asserts name is string {
  if (typeof name !== 'string' || !QUEUE_NAME_PATTERN.test(name)) {
    fail(`${what} must match ${String(QUEUE_NAME_PATTERN)}, got ${describe(name)}`)
  }
}

/** Checks an event-log node id. */
export function assertNodeId(nodeId: unknown): asserts nodeId is string {
  if (typeof nodeId !== 'string' || !NODE_ID_PATTERN.test(nodeId)) {
    fail(`node id must match ${String(NODE_ID_PATTERN)}, got ${describe(nodeId)}`)
  }
}

function assertText(value: unknown, what: string, maxBytes: number, allowEmpty: boolean): asserts value is string {
  if (typeof value !== 'string') fail(`${what} must be a string, got ${describe(value)}`)
  if (!allowEmpty && value.length === 0) fail(`${what} must not be empty`)
  if (!value.isWellFormed()) fail(`${what} must be well-formed Unicode (no lone surrogates)`)
  if (CONTROL_CHARS.test(value)) fail(`${what} must not contain control characters`)
  // A UTF-16 unit is at most 3 UTF-8 bytes: short strings need no byte count.
  if (value.length * 3 > maxBytes) {
    const bytes = Buffer.byteLength(value, 'utf8')
    if (bytes > maxBytes) fail(`${what} must be at most ${maxBytes} bytes in UTF-8, got ${bytes}`)
  }
}

/** Checks a URI: non-empty, at most 2048 UTF-8 bytes, no control characters. */
export function assertUri(uri: unknown, what = 'uri'): asserts uri is string {
  assertText(uri, what, MAX_URI_BYTES, false)
}

/** Checks a project name: `""` (the whole repo) or up to 256 UTF-8 bytes. */
export function assertProject(project: unknown): asserts project is string {
  assertText(project, 'project', MAX_PROJECT_BYTES, true)
}

/** Checks a non-negative safe integer (versions, timestamps, sequence numbers). */
export function assertCount(value: unknown, what: string): asserts value is number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    fail(`${what} must be a non-negative integer, got ${describe(value)}`)
  }
}

/** Checks a non-negative safe integer and returns it with `-0` folded into `0`. */
function count(value: unknown, what: string): number {
  assertCount(value, what)
  return value + 0
}

/** Checks a version pair of a CAS update. */
export function assertVersions(oldVersion: unknown, newVersion: unknown): void {
  assertCount(oldVersion, 'oldVersion')
  assertCount(newVersion, 'newVersion')
  if (newVersion <= oldVersion) fail(`newVersion must be greater than oldVersion, got ${newVersion} <= ${oldVersion}`)
}

/**
 * Checks a request id and returns its number. When `queue` is given the id must belong to it.
 */
export function parseRequestId(id: unknown, queue?: string): number {
  if (typeof id !== 'string') fail(`request id must be a string, got ${describe(id)}`)
  const match = REQUEST_ID_PATTERN.exec(id)
  const n = match === null ? Number.NaN : Number(match[2])
  if (match === null || !Number.isSafeInteger(n)) {
    fail(`request id must look like request/<queue>/<n> with n a positive integer, got ${describe(id)}`)
  }
  if (queue !== undefined && match[1] !== queue) fail(`request id ${id} does not belong to queue ${queue}`)
  return n
}

function assertState(state: unknown): asserts state is RequestState {
  if (typeof state !== 'string' || !STATE_SET.has(state)) {
    fail(`request state must be one of ${REQUEST_STATES.join(', ')}, got ${describe(state)}`)
  }
}

function assertObject(value: unknown, what: string): asserts value is Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) fail(`${what} must be an object, got ${describe(value)}`)
}

/**
 * Checks that a value is plain JSON (null, booleans, finite numbers, well-formed strings,
 * arrays without holes, plain objects; no cycles, no `undefined` members) and returns its
 * serialization, at most {@link MAX_JSON_BYTES} bytes.
 */
export function toJsonText(value: unknown, what: string): string {
  checkJsonOrFail(value, what)
  const text = JSON.stringify(value)
  if (text.length > MAX_JSON_BYTES / 4 && Buffer.byteLength(text, 'utf8') > MAX_JSON_BYTES) {
    fail(`${what} must serialize to at most ${MAX_JSON_BYTES} bytes`)
  }
  return text
}

function checkJsonOrFail(value: unknown, what: string): void {
  const path: (string | number)[] = []
  const problem = checkJson(value, path, [])
  if (problem !== undefined) {
    const where = path.map((key) => (typeof key === 'number' ? `[${key}]` : `.${key}`)).join('')
    fail(`${what}${where} ${problem}`)
  }
}

/**
 * Walks a value; returns what is wrong with it (leaving `path` at the offending member) or
 * undefined when it is plain JSON. `ancestors` holds the objects above, to find cycles.
 */
function checkJson(value: unknown, path: (string | number)[], ancestors: object[]): string | undefined {
  switch (typeof value) {
    case 'string':
      return value.isWellFormed() ? undefined : 'is not well-formed Unicode'
    case 'boolean':
      return undefined
    case 'number':
      return Number.isFinite(value) ? undefined : `is ${String(value)}, which JSON cannot hold`
    case 'object':
      break
    default:
      return `is ${typeof value}, which is not plain JSON`
  }
  if (value === null) return undefined
  if (ancestors.length >= MAX_JSON_DEPTH) return `nests deeper than ${MAX_JSON_DEPTH} levels`
  if (ancestors.includes(value)) return 'is a cycle'
  ancestors.push(value)
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      path.push(i)
      if (!(i in value)) return 'is a hole in a sparse array'
      const problem = checkJson(value[i], path, ancestors)
      if (problem !== undefined) return problem
      path.pop()
    }
  } else {
    const proto: unknown = Object.getPrototypeOf(value)
    if (proto !== Object.prototype && proto !== null) return `is a ${value.constructor.name}, not a plain object`
    for (const key in value) {
      if (!Object.hasOwn(value, key)) continue
      path.push(key)
      if (!key.isWellFormed()) return 'is a key that is not well-formed Unicode'
      const problem = checkJson((value as Record<string, unknown>)[key], path, ancestors)
      if (problem !== undefined) return problem
      path.pop()
    }
  }
  ancestors.pop()
  return undefined
}

/** A validated request: its fields, with `data` carried only as JSON text. */
export interface PreparedRequest {
  record: Omit<RequestRecord, 'data'>
  n: number
  dataJson: string | null
}

/** Validates a request record and returns a detached copy. */
export function prepareRequest(input: unknown): PreparedRequest {
  assertObject(input, 'request record')
  const { id, queue, uri, state, version, createdAt, updatedAt, data } = input
  assertQueueName(queue)
  const n = parseRequestId(id, queue)
  assertUri(uri)
  assertState(state)
  const record = {
    id: id as string,
    queue,
    uri,
    state,
    version: count(version, 'version'),
    createdAt: count(createdAt, 'createdAt'),
    updatedAt: count(updatedAt, 'updatedAt'),
  }
  return { record, n, dataJson: data === undefined ? null : toJsonText(data, 'data') }
}

function prepareLastGreen(input: unknown): LastGreen {
  assertObject(input, 'lastGreen')
  const { uri, requestId, at } = input
  assertUri(uri, 'lastGreen.uri')
  parseRequestId(requestId)
  return { uri, requestId: requestId as string, at: count(at, 'lastGreen.at') }
}

/** A validated queue record: config and snapshot carried only as JSON text. */
export interface PreparedQueue {
  record: Omit<QueueRecord, 'config' | 'snapshot'>
  configJson: string
  lastGreenJson: string | null
  snapshotJson: string | null
}

/** Validates a queue record and returns a detached copy. */
export function prepareQueue(input: unknown): PreparedQueue {
  assertObject(input, 'queue record')
  const { name, version, config, lastGreen, snapshot, createdAt, updatedAt } = input
  assertQueueName(name)
  const counts = { version: count(version, 'version'), createdAt: count(createdAt, 'createdAt'), updatedAt: count(updatedAt, 'updatedAt') }
  assertObject(config, 'config')
  const configJson = toJsonText(config, 'config')
  const record: PreparedQueue['record'] = { name, ...counts }
  let lastGreenJson: string | null = null
  if (lastGreen !== undefined) {
    record.lastGreen = prepareLastGreen(lastGreen)
    lastGreenJson = JSON.stringify(record.lastGreen)
  }
  const snapshotJson = snapshot === undefined ? null : toJsonText(snapshot, 'snapshot')
  return { record, configJson, lastGreenJson, snapshotJson }
}

/** Validates a `(queue, uri) → id` mapping. */
export function prepareMapping(input: unknown): RequestUriMapping {
  assertObject(input, 'request uri mapping')
  const { queue, uri, requestId } = input
  assertQueueName(queue)
  assertUri(uri)
  parseRequestId(requestId, queue)
  return { queue, uri, requestId: requestId as string }
}

/** Validates a fact: degree within [0, 1]. */
export function prepareFact(input: unknown): Fact {
  assertObject(input, 'fact')
  const { queue, uri, project, degree, requestId, at } = input
  assertQueueName(queue)
  assertUri(uri)
  assertProject(project)
  if (typeof degree !== 'number' || !Number.isFinite(degree) || degree < 0 || degree > 1) {
    fail(`degree must be a number within [0, 1], got ${describe(degree)}`)
  }
  parseRequestId(requestId, queue)
  return { queue, uri, project, degree: degree + 0, requestId: requestId as string, at: count(at, 'at') }
}

/** A validated event-log row, as stored: an event covers one logical id, a gap a range. */
export interface PreparedEvent {
  kind: EventRow['kind']
  nodeId: string
  seq: number
  /** First logical id covered by the row (the event's id, or the gap's fromId). */
  firstId: number
  /** Last logical id covered by the row (the event's id, or the gap's toId). */
  lastId: number
  at: number
  /** The event's payload as JSON text; null for gaps. */
  payloadJson: string | null
}

/** Validates an event-log row. */
export function prepareEvent(input: unknown): PreparedEvent {
  assertObject(input, 'event row')
  const { kind, nodeId, seq, at } = input
  assertNodeId(nodeId)
  const where = { nodeId, seq: count(seq, 'seq'), at: count(at, 'at') }
  if (kind === 'event') {
    const id = count(input.id, 'id')
    return { kind, ...where, firstId: id, lastId: id, payloadJson: toJsonText(input.payload, 'payload') }
  }
  if (kind === 'gap') {
    const fromId = count(input.fromId, 'fromId')
    const toId = count(input.toId, 'toId')
    if (toId < fromId) fail(`gap toId must be >= fromId, got ${toId} < ${fromId}`)
    return { kind, ...where, firstId: fromId, lastId: toId, payloadJson: null }
  }
  return fail(`event row kind must be 'event' or 'gap', got ${describe(kind)}`)
}

/** Largest serialized op kept in a dead letter (an op may hold several 1 MiB documents). */
export const MAX_DEAD_LETTER_BYTES = 4 * 1024 * 1024
const DEAD_LETTER_ID = /^[A-Za-z0-9._:-]{1,200}$/

/** A validated dead letter: the op carried as JSON text. */
export interface PreparedDeadLetter {
  letter: Omit<DeadLetter, 'op'>
  opJson: string
}

/** Validates a dead letter. */
export function prepareDeadLetter(input: unknown): PreparedDeadLetter {
  assertObject(input, 'dead letter')
  const { id, at, op, error, attempts } = input
  if (typeof id !== 'string' || !DEAD_LETTER_ID.test(id)) fail(`dead letter id must match ${String(DEAD_LETTER_ID)}, got ${describe(id)}`)
  assertObject(error, 'dead letter error')
  const { code, message } = error
  assertText(code, 'dead letter error code', 64, false)
  if (typeof message !== 'string' || !message.isWellFormed() || Buffer.byteLength(message, 'utf8') > 4096) {
    fail('dead letter error message must be well-formed text of at most 4096 bytes')
  }
  checkJsonOrFail(op, 'dead letter op')
  const opJson = JSON.stringify(op)
  if (Buffer.byteLength(opJson, 'utf8') > MAX_DEAD_LETTER_BYTES)
    fail(`dead letter op must serialize to at most ${MAX_DEAD_LETTER_BYTES} bytes`)
  return { letter: { id, at: count(at, 'at'), error: { code, message }, attempts: count(attempts, 'attempts') }, opJson }
}

/** Validates the key of an outbox entry: queue, a request id of that queue, kind, hook name. */
export function prepareOutboxKey(input: unknown): OutboxKey {
  assertObject(input, 'outbox key')
  const { queue, requestId, kind, hook } = input
  assertQueueName(queue)
  parseRequestId(requestId, queue)
  if (typeof kind !== 'string' || !OUTBOX_KIND_SET.has(kind)) {
    fail(`outbox kind must be one of ${OUTBOX_KINDS.join(', ')}, got ${describe(kind)}`)
  }
  if (typeof hook !== 'string' || !HOOK_NAME_PATTERN.test(hook)) {
    fail(`hook name must match ${String(HOOK_NAME_PATTERN)}, got ${describe(hook)}`)
  }
  return { queue, requestId: requestId as string, kind: kind as OutboxKind, hook }
}

/** The delivery state of an outbox entry, validated. */
export interface PreparedSettlement {
  attempts: number
  nextAttemptAt: number
  deliveredAt: number | null
  lastError: string | null
}

function prepareSettlement(input: Record<string, unknown>): PreparedSettlement {
  const { attempts, nextAttemptAt, deliveredAt, lastError } = input
  if (lastError !== null) {
    if (typeof lastError !== 'string' || !lastError.isWellFormed() || Buffer.byteLength(lastError, 'utf8') > MAX_OUTBOX_ERROR_BYTES) {
      fail(`lastError must be null or well-formed text of at most ${MAX_OUTBOX_ERROR_BYTES} bytes, got ${describe(lastError)}`)
    }
  }
  return {
    attempts: count(attempts, 'attempts'),
    nextAttemptAt: count(nextAttemptAt, 'nextAttemptAt'),
    deliveredAt: deliveredAt === null ? null : count(deliveredAt, 'deliveredAt'),
    lastError,
  }
}

/** A validated outbox entry: the payload carried only as JSON text. */
export interface PreparedOutbox {
  entry: Omit<OutboxEntry, 'payload'>
  payloadJson: string
}

/** Validates an outbox entry and returns a detached copy. */
export function prepareOutboxEntry(input: unknown): PreparedOutbox {
  assertObject(input, 'outbox entry')
  const key = prepareOutboxKey(input)
  const { payload, createdAt } = input
  assertObject(payload, 'outbox payload')
  const payloadJson = toJsonText(payload, 'outbox payload')
  if (payloadJson.length > MAX_OUTBOX_PAYLOAD_BYTES / 3 && Buffer.byteLength(payloadJson, 'utf8') > MAX_OUTBOX_PAYLOAD_BYTES) {
    fail(`outbox payload must serialize to at most ${MAX_OUTBOX_PAYLOAD_BYTES} bytes`)
  }
  return { entry: { ...key, createdAt: count(createdAt, 'createdAt'), ...prepareSettlement(input) }, payloadJson }
}

/** A validated write op, with detached copies and pre-serialized JSON. */
export type PreparedOp =
  | { op: 'request.create'; request: PreparedRequest }
  | { op: 'request.update'; request: PreparedRequest; oldVersion: number; newVersion: number }
  | { op: 'requestUri.create'; mapping: RequestUriMapping }
  | { op: 'queue.create'; queue: PreparedQueue }
  | { op: 'queue.update'; queue: PreparedQueue; oldVersion: number; newVersion: number }
  | { op: 'fact.put'; fact: Fact }
  | { op: 'counter.next'; queue: string }
  | { op: 'event.append'; event: PreparedEvent }
  | { op: 'deadLetter.put'; deadLetter: PreparedDeadLetter }
  | { op: 'outbox.put'; outbox: PreparedOutbox }
  | { op: 'outbox.settle'; key: OutboxKey; settlement: PreparedSettlement }

/** Validates one write op; throws {@link InvalidInputError} naming the rule. */
export function prepareOp(input: WriteOp): PreparedOp {
  const op = input as unknown
  assertObject(op, 'write op')
  switch (op.op) {
    case 'request.create':
      return { op: 'request.create', request: prepareRequest(op.record) }
    case 'request.update': {
      assertVersions(op.oldVersion, op.newVersion)
      const request = prepareRequest(op.record)
      return { op: 'request.update', request, oldVersion: (op.oldVersion as number) + 0, newVersion: (op.newVersion as number) + 0 }
    }
    case 'requestUri.create':
      return { op: 'requestUri.create', mapping: prepareMapping(op.mapping) }
    case 'queue.create':
      return { op: 'queue.create', queue: prepareQueue(op.record) }
    case 'queue.update': {
      assertVersions(op.oldVersion, op.newVersion)
      const queue = prepareQueue(op.record)
      return { op: 'queue.update', queue, oldVersion: (op.oldVersion as number) + 0, newVersion: (op.newVersion as number) + 0 }
    }
    case 'fact.put':
      return { op: 'fact.put', fact: prepareFact(op.fact) }
    case 'counter.next':
      assertQueueName(op.queue)
      return { op: 'counter.next', queue: op.queue }
    case 'event.append':
      return { op: 'event.append', event: prepareEvent(op.row) }
    case 'deadLetter.put':
      return { op: 'deadLetter.put', deadLetter: prepareDeadLetter(op.letter) }
    case 'outbox.put':
      return { op: 'outbox.put', outbox: prepareOutboxEntry(op.entry) }
    case 'outbox.settle':
      return { op: 'outbox.settle', key: prepareOutboxKey(op.key), settlement: prepareSettlement(op) }
    default:
      return fail(`unknown write op ${describe(op.op)}`)
  }
}

/** Validates a whole batch before any of it is written. */
export function prepareOps(ops: readonly WriteOp[]): PreparedOp[] {
  const list: unknown = ops
  if (!Array.isArray(list)) fail('commit takes an array of write ops')
  return ops.map((op, i) => {
    try {
      return prepareOp(op)
    } catch (error) {
      if (error instanceof InvalidInputError) throw new InvalidInputError(`op ${i}: ${error.message}`)
      throw error
    }
  })
}

/** Validated, normalized list options. */
export interface PreparedListOptions {
  states: RequestState[] | undefined
  /** Request number after which (asc) or before which (desc) the page starts. */
  after: number | undefined
  limit: number
  order: 'asc' | 'desc'
}

/** Validates a page request of a store whose cursor is a position number. */
export function preparePage(options: { cursor?: string; limit?: number } | undefined): { after: number; limit: number } {
  const { cursor, limit = DEFAULT_PAGE_LIMIT } = options ?? {}
  let after = 0
  if (cursor !== undefined) {
    if (typeof cursor !== 'string' || !/^[0-9]{1,16}$/.test(cursor)) fail(`cursor ${describe(cursor)} is not one this store issued`)
    after = Number(cursor)
  }
  if (!Number.isSafeInteger(limit) || limit < 1 || limit > MAX_PAGE_LIMIT) {
    fail(`limit must be an integer from 1 to ${MAX_PAGE_LIMIT}, got ${describe(limit)}`)
  }
  return { after, limit }
}

/** Validates {@link ListRequestsOptions}. Cursors are the request number, as text. */
export function prepareListOptions(options: ListRequestsOptions | undefined): PreparedListOptions {
  const { states, cursor, limit = DEFAULT_PAGE_LIMIT, order = 'asc' } = options ?? {}
  if (states !== undefined) {
    const list: unknown = states
    if (!Array.isArray(list)) fail('states must be an array')
    if (states.length === 0) fail('states must not be empty; omit it to list every state')
    states.forEach(assertState)
  }
  let after: number | undefined
  if (cursor !== undefined) {
    if (typeof cursor !== 'string' || !/^[0-9]{1,16}$/.test(cursor)) fail(`cursor ${describe(cursor)} is not one this store issued`)
    after = Number(cursor)
  }
  if (!Number.isSafeInteger(limit) || limit < 1 || limit > MAX_PAGE_LIMIT) {
    fail(`limit must be an integer from 1 to ${MAX_PAGE_LIMIT}, got ${describe(limit)}`)
  }
  if (!['asc', 'desc'].includes(order)) fail(`order must be 'asc' or 'desc', got ${describe(order)}`)
  return { states: states === undefined ? undefined : [...states], after, limit, order }
}

/** Validated, normalized event read options. */
export interface PreparedReadOptions {
  nodeId: string | undefined
  fromSeq: number
  fromId: number
  limit: number
}

/** Validates {@link ReadEventsOptions}. */
export function prepareReadOptions(options: ReadEventsOptions | undefined): PreparedReadOptions {
  const { nodeId, fromSeq = 0, fromId = 0, limit = DEFAULT_EVENT_LIMIT } = options ?? {}
  if (nodeId !== undefined) assertNodeId(nodeId)
  assertCount(fromSeq, 'fromSeq')
  assertCount(fromId, 'fromId')
  if (!Number.isSafeInteger(limit) || limit < 1 || limit > MAX_EVENT_LIMIT) {
    fail(`limit must be an integer from 1 to ${MAX_EVENT_LIMIT}, got ${describe(limit)}`)
  }
  return { nodeId, fromSeq, fromId, limit }
}

/** Validates {@link DueOutboxOptions}. */
export function prepareDueOptions(options: DueOutboxOptions | undefined): { before: number; limit: number } {
  assertObject(options, 'due options')
  const { before, limit = DEFAULT_PAGE_LIMIT } = options
  if (!Number.isSafeInteger(limit) || limit < 1 || limit > MAX_PAGE_LIMIT) {
    fail(`limit must be an integer from 1 to ${MAX_PAGE_LIMIT}, got ${describe(limit)}`)
  }
  return { before: count(before, 'before'), limit }
}

/** Validates {@link ListOutboxOptions}. Cursors are storage positions, as text. */
export function prepareOutboxListOptions(options: ListOutboxOptions | undefined): {
  queue: string | undefined
  after: number
  limit: number
} {
  const { queue } = options ?? {}
  if (queue !== undefined) assertQueueName(queue)
  return { queue, ...preparePage(options) }
}

/**
 * Refuses a schema newer than this code knows: a newer Stovepipe may have changed what its
 * tables mean, so neither reading nor writing it is safe.
 */
export function assertKnownSchema(stored: number, migrations: readonly { version: number }[], where: string): void {
  const known = Math.max(0, ...migrations.map((m) => m.version))
  if (stored > known) {
    throw new InvalidInputError(
      `${where} was written by a newer Stovepipe (schema version ${stored}; this one knows up to ${known}): upgrade Stovepipe to use it`,
    )
  }
}

/**
 * For a read-only open: the schema must be the one this code reads. An older one needs its
 * migrations, which only a writer applies.
 */
export function assertCurrentSchema(stored: number, migrations: readonly { version: number }[], where: string): void {
  assertKnownSchema(stored, migrations, where)
  const known = Math.max(0, ...migrations.map((m) => m.version))
  if (stored < known) {
    throw new InvalidInputError(
      `${where} has schema version ${stored}, older than this Stovepipe's ${known}; a read does not migrate it: start \`stovepipe run\` on it (or open it with this version) first`,
    )
  }
}
