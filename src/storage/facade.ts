/**
 * Turns a backend's few primitives into the whole {@link Storage} contract: validation
 * before anything is written, closed-handle checks, and the mapping of op outcomes to typed
 * errors. Backends implement {@link StorageBackend} only.
 *
 * @internal
 * @module
 */
import {
  AlreadyExistsError,
  InvalidInputError,
  NotFoundError,
  StorageClosedError,
  StorageFailedError,
  StovepipeError,
  VersionMismatchError,
} from './errors.js'
import type {
  DeadLetter,
  EventRow,
  Fact,
  FactPutResult,
  OutboxEntry,
  OutboxKey,
  OutboxPutResult,
  Page,
  QueueRecord,
  RequestRecord,
  Storage,
  WriteOp,
  WriteResult,
} from './types.js'
import {
  assertNodeId,
  assertProject,
  assertQueueName,
  assertUri,
  parseRequestId,
  prepareDueOptions,
  prepareListOptions,
  prepareOps,
  prepareOutboxKey,
  prepareOutboxListOptions,
  preparePage,
  prepareReadOptions,
  type PreparedListOptions,
  type PreparedOp,
  type PreparedReadOptions,
} from './validation.js'

/**
 * A storage's commit for ops its caller already validated with `prepareOps` (the writer
 * does, at `write()` time), so a batch is not validated twice. Not enumerable: wrappers made
 * by spreading a storage (fault injection, recording) do not inherit it and keep seeing
 * every commit.
 *
 * @internal
 */
export const COMMIT_PREPARED = Symbol('stovepipe.commitPrepared')

/** A storage that may offer {@link COMMIT_PREPARED}. */
export type MaybePreparedCommitter = Storage & { [COMMIT_PREPARED]?: (ops: PreparedOp[]) => Promise<WriteResult[]> }

/** What a backend provides; everything else is shared. Inputs are already validated. */
export interface StorageBackend {
  readonly kind: string
  /**
   * Applies the ops in one transaction. With `atomic`, any op whose condition fails rolls
   * the whole batch back (the results still say which). Throws typed errors only.
   */
  commit(ops: PreparedOp[], atomic: boolean): Promise<WriteResult[]>
  getRequest(id: string): Promise<RequestRecord | undefined>
  /** Up to `limit + 1` rows, so the facade knows whether another page follows. */
  listRequests(queue: string, options: PreparedListOptions): Promise<RequestRecord[]>
  getRequestIdByUri(queue: string, uri: string): Promise<string | undefined>
  getQueue(name: string): Promise<QueueRecord | undefined>
  listQueues(): Promise<QueueRecord[]>
  getFact(queue: string, uri: string, project: string): Promise<Fact | undefined>
  listFacts(queue: string, uri: string): Promise<Fact[]>
  readEvents(options: PreparedReadOptions): Promise<EventRow[]>
  lastEvent(nodeId: string): Promise<EventRow | undefined>
  /** Node ids with event rows, in `(nodeId)` order. */
  eventNodes(): Promise<string[]>
  /** Up to `limit` letters stored after position `after`, with their positions. */
  listDeadLetters(after: number, limit: number): Promise<{ position: number; letter: DeadLetter }[]>
  getOutbox(key: OutboxKey): Promise<OutboxEntry | undefined>
  /** Up to `limit` undelivered entries due at `before`, by `(nextAttemptAt, createdAt, position)`. */
  dueOutbox(before: number, limit: number): Promise<OutboxEntry[]>
  /** Up to `limit` entries (of `queue`, when given) stored after position `after`, with their positions. */
  listOutbox(queue: string | undefined, after: number, limit: number): Promise<{ position: number; entry: OutboxEntry }[]>
  migrate(): Promise<number[]>
  close(): Promise<void>
}

function only(results: WriteResult[]): WriteResult {
  const [result] = results
  if (result === undefined || results.length !== 1) throw new StorageFailedError(`backend returned ${results.length} results for 1 op`)
  return result
}

/** Builds the full storage contract over a backend. */
export function createStorageFacade(backend: StorageBackend): Storage {
  let closed = false
  const open = (): void => {
    if (closed) throw new StorageClosedError(`${backend.kind} storage is closed`)
  }
  // Every public call: closed check first, then the body; synchronous throws become rejections.
  const call = async <T>(body: () => Promise<T>): Promise<T> => {
    open()
    return body()
  }
  const commitOne = async (op: WriteOp): Promise<WriteResult> => only(await backend.commit(prepareOps([op]), true))

  const getRequest = async (id: string): Promise<RequestRecord> => {
    const record = await backend.getRequest(id)
    if (record === undefined) throw new NotFoundError(`request ${id} not found`)
    return record
  }

  const storage: Storage = {
    kind: backend.kind,
    requests: {
      create: (record) =>
        call(async () => {
          const result = await commitOne({ op: 'request.create', record })
          if (result.status === 'already_exists') throw new AlreadyExistsError(`request ${record.id} already exists`)
          return getRequest(record.id)
        }),
      get: (id) =>
        call(() => {
          parseRequestId(id)
          return getRequest(id)
        }),
      update: (record, oldVersion, newVersion) =>
        call(async () => {
          const result = await commitOne({ op: 'request.update', record, oldVersion, newVersion })
          if (result.status === 'not_found') {
            throw new VersionMismatchError(`request ${record.id} does not exist, so it is not at version ${oldVersion}`)
          }
          if (result.status === 'version_mismatch') {
            throw new VersionMismatchError(`request ${record.id} is not at version ${oldVersion} (stale or concurrent update)`)
          }
          return getRequest(record.id)
        }),
      listByQueue: (queue, options) =>
        call(async (): Promise<Page<RequestRecord>> => {
          assertQueueName(queue)
          const prepared = prepareListOptions(options)
          const rows = await backend.listRequests(queue, prepared)
          if (rows.length <= prepared.limit) return { items: rows }
          const items = rows.slice(0, prepared.limit)
          const last = items[items.length - 1]
          return last === undefined ? { items } : { items, nextCursor: String(parseRequestId(last.id)) }
        }),
    },
    requestUris: {
      create: (mapping) =>
        call(async () => {
          const result = await commitOne({ op: 'requestUri.create', mapping })
          if (result.status === 'already_exists') {
            throw new AlreadyExistsError(`queue ${mapping.queue} already has a request for ${mapping.uri}`)
          }
        }),
      getIdByUri: (queue, uri) =>
        call(async () => {
          assertQueueName(queue)
          assertUri(uri)
          const id = await backend.getRequestIdByUri(queue, uri)
          if (id === undefined) throw new NotFoundError(`queue ${queue} has no request for ${uri}`)
          return id
        }),
    },
    queues: {
      create: (record) =>
        call(async () => {
          const result = await commitOne({ op: 'queue.create', record })
          if (result.status === 'already_exists') throw new AlreadyExistsError(`queue ${record.name} already exists`)
          return getQueue(record.name)
        }),
      get: (name) =>
        call(() => {
          assertQueueName(name)
          return getQueue(name)
        }),
      update: (record, oldVersion, newVersion) =>
        call(async () => {
          const result = await commitOne({ op: 'queue.update', record, oldVersion, newVersion })
          if (result.status === 'not_found') {
            throw new VersionMismatchError(`queue ${record.name} does not exist, so it is not at version ${oldVersion}`)
          }
          if (result.status === 'version_mismatch') {
            throw new VersionMismatchError(`queue ${record.name} is not at version ${oldVersion} (stale or concurrent update)`)
          }
          return getQueue(record.name)
        }),
      list: () => call(() => backend.listQueues()),
    },
    facts: {
      put: (fact) =>
        call(async (): Promise<FactPutResult> => {
          const result = await commitOne({ op: 'fact.put', fact })
          if (result.status === 'already_exists' && result.fact !== undefined) return { written: false, fact: result.fact }
          if (result.status !== 'ok') throw new StorageFailedError(`fact.put returned ${result.status}`)
          return { written: true, fact: await getFact(fact.queue, fact.uri, fact.project) }
        }),
      get: (queue, uri, project = '') =>
        call(() => {
          assertQueueName(queue)
          assertUri(uri)
          assertProject(project)
          return getFact(queue, uri, project)
        }),
      listByUri: (queue, uri) =>
        call(() => {
          assertQueueName(queue)
          assertUri(uri)
          return backend.listFacts(queue, uri)
        }),
    },
    counters: {
      next: (queue) =>
        call(async () => {
          const result = await commitOne({ op: 'counter.next', queue })
          if (result.status !== 'ok' || result.value === undefined) throw new StorageFailedError(`counter.next returned ${result.status}`)
          return result.value
        }),
    },
    events: {
      append: (rows) =>
        call(async () => {
          const given: unknown = rows
          if (!Array.isArray(given)) throw new InvalidInputError('events.append takes an array of rows')
          const ops: WriteOp[] = rows.map((row) => ({ op: 'event.append', row }))
          const results = await backend.commit(prepareOps(ops), true)
          const clash = results.findIndex((result) => result.status !== 'ok')
          const row = rows[clash]
          if (row !== undefined) throw new AlreadyExistsError(`event ${row.nodeId}#${row.seq} already exists; nothing was appended`)
        }),
      read: (options) => call(() => backend.readEvents(prepareReadOptions(options))),
      last: (nodeId) =>
        call(() => {
          assertNodeId(nodeId)
          return backend.lastEvent(nodeId)
        }),
      nodes: () => call(() => backend.eventNodes()),
    },
    deadLetters: {
      put: (letter) =>
        call(async () => {
          await commitOne({ op: 'deadLetter.put', letter })
        }),
      list: (options) =>
        call(async (): Promise<Page<DeadLetter>> => {
          const { after, limit } = preparePage(options)
          const rows = await backend.listDeadLetters(after, limit + 1)
          const items = rows.slice(0, limit)
          const last = items[items.length - 1]
          const page = { items: items.map((row) => row.letter) }
          return rows.length > limit && last !== undefined ? { ...page, nextCursor: String(last.position) } : page
        }),
    },
    outbox: {
      put: (entry) =>
        call(async (): Promise<OutboxPutResult> => {
          const result = await commitOne({ op: 'outbox.put', entry })
          if (result.status !== 'ok' && result.status !== 'already_exists')
            throw new StorageFailedError(`outbox.put returned ${result.status}`)
          return { written: result.status === 'ok', entry: await getOutbox(entry) }
        }),
      settle: (key, settlement) =>
        call(async () => {
          const given: unknown = settlement
          if (typeof given !== 'object' || given === null) throw new InvalidInputError('outbox.settle takes a settlement object')
          const { attempts, nextAttemptAt, deliveredAt, lastError } = settlement
          const result = await commitOne({ op: 'outbox.settle', key, attempts, nextAttemptAt, deliveredAt, lastError })
          if (result.status === 'not_found') throw new NotFoundError(`no outbox entry ${describeOutboxKey(key)}`)
          if (result.status === 'version_mismatch') {
            throw new VersionMismatchError(`outbox entry ${describeOutboxKey(key)} was already delivered; it is not settled again`)
          }
          return getOutbox(key)
        }),
      get: (key) => call(() => getOutbox(prepareOutboxKey(key))),
      due: (options) =>
        call(() => {
          const { before, limit } = prepareDueOptions(options)
          return backend.dueOutbox(before, limit)
        }),
      list: (options) =>
        call(async (): Promise<Page<OutboxEntry>> => {
          const { queue, after, limit } = prepareOutboxListOptions(options)
          const rows = await backend.listOutbox(queue, after, limit + 1)
          const items = rows.slice(0, limit)
          const last = items[items.length - 1]
          const page = { items: items.map((row) => row.entry) }
          return rows.length > limit && last !== undefined ? { ...page, nextCursor: String(last.position) } : page
        }),
    },
    commit: (ops) => call(() => backend.commit(prepareOps(ops), false)),
    migrate: () => call(() => backend.migrate()),
    close: async () => {
      if (closed) return
      closed = true
      await backend.close()
    },
  }

  async function getQueue(name: string): Promise<QueueRecord> {
    const record = await backend.getQueue(name)
    if (record === undefined) throw new NotFoundError(`queue ${name} not found`)
    return record
  }

  async function getFact(queue: string, uri: string, project: string): Promise<Fact> {
    const fact = await backend.getFact(queue, uri, project)
    if (fact === undefined) throw new NotFoundError(`no fact for ${uri} in queue ${queue}${project === '' ? '' : ` project ${project}`}`)
    return fact
  }

  async function getOutbox(key: OutboxKey): Promise<OutboxEntry> {
    const entry = await backend.getOutbox(key)
    if (entry === undefined) throw new NotFoundError(`no outbox entry ${describeOutboxKey(key)}`)
    return entry
  }

  Object.defineProperty(storage, COMMIT_PREPARED, {
    enumerable: false,
    value: (ops: PreparedOp[]) => call(() => backend.commit(ops, false)),
  })
  return storage
}

function describeOutboxKey(key: OutboxKey): string {
  return `${key.kind} of ${key.requestId} for hook ${key.hook}`
}

/** Re-throws typed errors as they are and wraps anything else, for backends' catch blocks. */
export function asStovepipeError(error: unknown, translate: (error: unknown) => StovepipeError): StovepipeError {
  return error instanceof StovepipeError ? error : translate(error)
}
