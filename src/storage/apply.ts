/**
 * The meaning of each write op, written once over an abstract view of the tables. The
 * memory backend applies it to its maps; the MySQL backend applies it to rows it loaded
 * (locked) in the same transaction and then writes the difference. SQLite runs the same
 * rules as prepared statements, and the model test checks it against this.
 *
 * @internal
 * @module
 */
import type { Fact, OutboxKey, RequestUriMapping, WriteResult } from './types.js'
import type {
  PreparedDeadLetter,
  PreparedEvent,
  PreparedOp,
  PreparedOutbox,
  PreparedQueue,
  PreparedRequest,
  PreparedSettlement,
} from './validation.js'

/** Reads and writes of one transaction. Reads see the transaction's own earlier writes. */
export interface TableView {
  getRequest(id: string): PreparedRequest | undefined
  putRequest(request: PreparedRequest): void
  getMapping(queue: string, uri: string): string | undefined
  putMapping(mapping: RequestUriMapping): void
  getQueue(name: string): PreparedQueue | undefined
  putQueue(queue: PreparedQueue): void
  getFact(queue: string, uri: string, project: string): Fact | undefined
  putFact(fact: Fact): void
  getCounter(queue: string): number
  putCounter(queue: string, value: number): void
  hasEvent(nodeId: string, seq: number): boolean
  putEvent(event: PreparedEvent): void
  hasDeadLetter(id: string): boolean
  putDeadLetter(letter: PreparedDeadLetter): void
  getOutbox(key: OutboxKey): PreparedOutbox | undefined
  putOutbox(entry: PreparedOutbox): void
}

/** One string per outbox key (the parts are validated never to hold a newline). */
export function outboxKeyText(key: OutboxKey): string {
  return `${key.queue}\n${key.requestId}\n${key.kind}\n${key.hook}`
}

const OK: WriteResult = { status: 'ok' }
const EXISTS: WriteResult = { status: 'already_exists' }
const MISMATCH: WriteResult = { status: 'version_mismatch' }
const MISSING: WriteResult = { status: 'not_found' }

/** Applies one op to the view and reports its outcome. */
export function applyOp(op: PreparedOp, view: TableView): WriteResult {
  switch (op.op) {
    case 'request.create': {
      if (view.getRequest(op.request.record.id) !== undefined) return EXISTS
      view.putRequest(op.request)
      return OK
    }
    case 'request.update': {
      const current = view.getRequest(op.request.record.id)
      if (current === undefined) return MISSING
      if (current.record.version !== op.oldVersion) return MISMATCH
      view.putRequest(mergeRequest(current, op.request, op.newVersion))
      return OK
    }
    case 'requestUri.create': {
      const { queue, uri } = op.mapping
      if (view.getMapping(queue, uri) !== undefined) return EXISTS
      view.putMapping(op.mapping)
      return OK
    }
    case 'queue.create': {
      if (view.getQueue(op.queue.record.name) !== undefined) return EXISTS
      view.putQueue(op.queue)
      return OK
    }
    case 'queue.update': {
      const current = view.getQueue(op.queue.record.name)
      if (current === undefined) return MISSING
      if (current.record.version !== op.oldVersion) return MISMATCH
      view.putQueue(mergeQueue(current, op.queue, op.newVersion))
      return OK
    }
    case 'fact.put': {
      const { queue, uri, project } = op.fact
      const existing = view.getFact(queue, uri, project)
      if (existing !== undefined) return { status: 'already_exists', fact: { ...existing } }
      view.putFact(op.fact)
      return OK
    }
    case 'counter.next': {
      const value = view.getCounter(op.queue) + 1
      view.putCounter(op.queue, value)
      return { status: 'ok', value }
    }
    case 'event.append': {
      if (view.hasEvent(op.event.nodeId, op.event.seq)) return EXISTS
      view.putEvent(op.event)
      return OK
    }
    case 'deadLetter.put': {
      if (view.hasDeadLetter(op.deadLetter.letter.id)) return EXISTS
      view.putDeadLetter(op.deadLetter)
      return OK
    }
    case 'outbox.put': {
      if (view.getOutbox(op.outbox.entry) !== undefined) return EXISTS
      view.putOutbox(op.outbox)
      return OK
    }
    case 'outbox.settle': {
      const current = view.getOutbox(op.key)
      if (current === undefined) return MISSING
      if (current.entry.deliveredAt !== null) return MISMATCH
      view.putOutbox(settleOutbox(current, op.settlement))
      return OK
    }
  }
}

/** The stored outbox entry after a settle: key, payload and createdAt kept, delivery state replaced. */
export function settleOutbox(current: PreparedOutbox, settlement: PreparedSettlement): PreparedOutbox {
  return { entry: { ...current.entry, ...settlement }, payloadJson: current.payloadJson }
}

/** The stored request after an update: immutable fields kept, mutable ones replaced. */
export function mergeRequest(current: PreparedRequest, next: PreparedRequest, version: number): PreparedRequest {
  const { id, queue, uri, createdAt } = current.record
  const { state, updatedAt } = next.record
  return { record: { id, queue, uri, state, version, createdAt, updatedAt }, n: current.n, dataJson: next.dataJson }
}

/** The stored queue after an update: name and createdAt kept, the rest replaced. */
export function mergeQueue(current: PreparedQueue, next: PreparedQueue, version: number): PreparedQueue {
  const { name, createdAt } = current.record
  const { lastGreen, updatedAt } = next.record
  const record = { name, version, createdAt, updatedAt }
  return {
    record: lastGreen === undefined ? record : { ...record, lastGreen },
    configJson: next.configJson,
    lastGreenJson: next.lastGreenJson,
    snapshotJson: next.snapshotJson,
  }
}
