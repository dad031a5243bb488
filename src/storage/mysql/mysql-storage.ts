/**
 * The shared backend: MySQL or MariaDB through a mysql2 promise pool, InnoDB tables.
 *
 * A commit runs in one READ COMMITTED transaction: it loads the rows its ops touch with
 * `SELECT … FOR UPDATE`, applies the shared op semantics to them in memory, then writes
 * the difference with one multi-row statement per table and kind (plain `INSERT` for new
 * rows, so a concurrent creator makes it fail and retry instead of being overwritten;
 * `INSERT … ON DUPLICATE KEY UPDATE` for rows it holds locked).
 *
 * @module
 */
import { createHash } from 'node:crypto'
import mysql, { type Pool, type PoolConnection, type PoolOptions, type RowDataPacket } from 'mysql2/promise'
import { applyOp, outboxKeyText, type TableView } from '../apply.js'
import {
  AlreadyExistsError,
  InvalidInputError,
  NotFoundError,
  StorageClosedError,
  StorageFailedError,
  StorageUnavailableError,
  StovepipeError,
} from '../errors.js'
import { createStorageFacade, type StorageBackend } from '../facade.js'
import {
  DEAD_LETTER_COLUMNS,
  EVENT_COLUMNS,
  FACT_COLUMNS,
  OUTBOX_COLUMNS,
  outboxValues,
  preparedOutboxOf,
  toOutbox,
  type OutboxRow,
  QUEUE_COLUMNS,
  REQUEST_COLUMNS,
  toDeadLetter,
  toEvent,
  toFact,
  toQueue,
  toRequest,
  type DeadLetterRow,
  type EventDbRow,
  type FactRow,
  type QueueRow,
  type RequestRow,
} from '../rows.js'
import type {
  DeadLetter,
  EventRow,
  Fact,
  OutboxEntry,
  OutboxKey,
  QueueRecord,
  RequestRecord,
  RequestUriMapping,
  Storage,
  WriteResult,
} from '../types.js'
import {
  assertCurrentSchema,
  assertKnownSchema,
  parseRequestId,
  type PreparedDeadLetter,
  type PreparedEvent,
  type PreparedListOptions,
  type PreparedOp,
  type PreparedOutbox,
  type PreparedQueue,
  type PreparedReadOptions,
  type PreparedRequest,
} from '../validation.js'
import { MYSQL_MIGRATIONS, type MysqlMigration } from './migrations.js'

/** Options of {@link openMysqlStorage}: a connection URI, or mysql2 pool options. */
export type MysqlStorageOptions = ({ uri: string } | PoolOptions) & {
  /** Apply pending migrations while opening (default true). */
  migrate?: boolean
  /**
   * Open for reading only (default false): nothing is created or migrated, sessions are
   * `READ ONLY`, and a database without Stovepipe's tables (or with a newer schema) is refused.
   */
  readOnly?: boolean
  /**
   * Retries of a commit that lost a race or a deadlock before giving up (default 5), after
   * the first, optimistic try.
   */
  maxCommitAttempts?: number
}

const SEP = '\n'
/** Rows per multi-row statement, and a bound on a statement's size. */
const MAX_ROWS_PER_STATEMENT = 1000
const MAX_STATEMENT_BYTES = 4 * 1024 * 1024
/** Errors after which the whole transaction is retried. */
const RETRY_CODES = new Set(['ER_DUP_ENTRY', 'ER_LOCK_DEADLOCK', 'ER_LOCK_WAIT_TIMEOUT'])
const UNAVAILABLE_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ENOTFOUND',
  'EAI_AGAIN',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EPIPE',
  'PROTOCOL_CONNECTION_LOST',
  'PROTOCOL_SEQUENCE_TIMEOUT',
  'ER_CON_COUNT_ERROR',
  'ER_TOO_MANY_USER_CONNECTIONS',
  'ER_SERVER_SHUTDOWN',
  'ER_QUERY_INTERRUPTED',
  'ER_LOCK_DEADLOCK',
  'ER_LOCK_WAIT_TIMEOUT',
])

function errorCode(error: unknown): string {
  return typeof error === 'object' && error !== null && 'code' in error ? String(error.code) : ''
}

function isFatal(error: unknown): boolean {
  return typeof error === 'object' && error !== null && 'fatal' in error && error.fatal === true
}

/**
 * Writes refused because the session, the server or the user may not write: a read-only
 * open (`SET SESSION TRANSACTION READ ONLY`), a server in `read_only`, or no write grant.
 * StorageUnavailableError, as SQLite's read-only refusals are.
 */
const READ_ONLY_CODES = new Set([
  'ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION',
  'ER_OPTION_PREVENTS_STATEMENT',
  'ER_TABLEACCESS_DENIED_ERROR',
  'ER_COLUMNACCESS_DENIED_ERROR',
])

/** Translates a mysql2 error into a typed one; `where` is `host:port`. */
export function translateMysqlError(error: unknown, where: string): StovepipeError {
  if (error instanceof StovepipeError) return error
  const code = errorCode(error)
  const message = error instanceof Error ? error.message : String(error)
  if (UNAVAILABLE_CODES.has(code)) {
    return new StorageUnavailableError(`MySQL at ${where} is unavailable (${code}): ${message}`, { cause: error })
  }
  if (READ_ONLY_CODES.has(code)) {
    return new StorageUnavailableError(
      `MySQL at ${where} cannot be written (a read-only open, a read-only server, or no write grant; ${code}): ${message}`,
      {
        cause: error,
      },
    )
  }
  if (code === 'ER_DUP_ENTRY') return new AlreadyExistsError(`MySQL at ${where} refused a duplicate: ${message}`, { cause: error })
  if (/pool is closed/i.test(message)) return new StorageClosedError(`MySQL storage at ${where} is closed`, { cause: error })
  return new StorageFailedError(`MySQL at ${where} failed${code === '' ? '' : ` (${code})`}: ${message}`, { cause: error })
}

const text = (value: unknown): string => (Buffer.isBuffer(value) ? value.toString('utf8') : String(value))

/** Decodes the binary columns (URIs, projects) mysql2 returns as Buffers. */
function requestRow(raw: RowDataPacket): RequestRow {
  return { ...(raw as unknown as RequestRow), uri: text(raw.uri) }
}
function outboxRow(raw: RowDataPacket): OutboxRow {
  const row = raw as unknown as OutboxRow
  return { ...row, payload: text(row.payload), last_error: row.last_error === null ? null : text(row.last_error) }
}
function factRow(raw: RowDataPacket): FactRow {
  return { ...(raw as unknown as FactRow), uri: text(raw.uri), project: text(raw.project) }
}

const requestKey = (id: string): string => id
const mappingKey = (queue: string, uri: string): string => `${queue}${SEP}${uri}`
const factKey = (queue: string, uri: string, project: string): string => `${queue}${SEP}${uri}${SEP}${project}`
const eventKey = (nodeId: string, seq: number): string => `${nodeId}${SEP}${seq}`

/** Rows of one table loaded in a transaction, and what the transaction wrote over them. */
class Rows<V> {
  readonly loaded = new Map<string, V>()
  readonly written = new Map<string, V>()
  get(key: string): V | undefined {
    return this.written.get(key) ?? this.loaded.get(key)
  }
  put(key: string, value: V): void {
    this.written.set(key, value)
  }
  /** Written rows that did not exist when loaded. */
  created(): V[] {
    return [...this.written].filter(([key]) => !this.loaded.has(key)).map(([, value]) => value)
  }
  /** Written rows that existed (and are locked by this transaction). */
  changed(): V[] {
    return [...this.written].filter(([key]) => this.loaded.has(key)).map(([, value]) => value)
  }
}

class LoadedView implements TableView {
  readonly requests = new Rows<PreparedRequest>()
  readonly mappings = new Rows<RequestUriMapping>()
  readonly queues = new Rows<PreparedQueue>()
  readonly facts = new Rows<Fact>()
  readonly counters = new Rows<number>()
  readonly events = new Rows<PreparedEvent>()
  readonly deadLetters = new Rows<PreparedDeadLetter>()
  readonly outbox = new Rows<PreparedOutbox>()
  /** Storage positions (`n`) of the outbox rows loaded, to update them in place. */
  readonly outboxPositions = new Map<string, number>()

  getRequest(id: string): PreparedRequest | undefined {
    return this.requests.get(requestKey(id))
  }
  putRequest(request: PreparedRequest): void {
    this.requests.put(requestKey(request.record.id), request)
  }
  getMapping(queue: string, uri: string): string | undefined {
    return this.mappings.get(mappingKey(queue, uri))?.requestId
  }
  putMapping(mapping: RequestUriMapping): void {
    this.mappings.put(mappingKey(mapping.queue, mapping.uri), mapping)
  }
  getQueue(name: string): PreparedQueue | undefined {
    return this.queues.get(name)
  }
  putQueue(queue: PreparedQueue): void {
    this.queues.put(queue.record.name, queue)
  }
  getFact(queue: string, uri: string, project: string): Fact | undefined {
    return this.facts.get(factKey(queue, uri, project))
  }
  putFact(fact: Fact): void {
    this.facts.put(factKey(fact.queue, fact.uri, fact.project), fact)
  }
  getCounter(queue: string): number {
    return this.counters.get(queue) ?? 0
  }
  putCounter(queue: string, value: number): void {
    this.counters.put(queue, value)
  }
  hasEvent(nodeId: string, seq: number): boolean {
    return this.events.get(eventKey(nodeId, seq)) !== undefined
  }
  putEvent(event: PreparedEvent): void {
    this.events.put(eventKey(event.nodeId, event.seq), event)
  }
  hasDeadLetter(id: string): boolean {
    return this.deadLetters.get(id) !== undefined
  }
  putDeadLetter(letter: PreparedDeadLetter): void {
    this.deadLetters.put(letter.letter.id, letter)
  }
  getOutbox(key: OutboxKey): PreparedOutbox | undefined {
    return this.outbox.get(outboxKeyText(key))
  }
  putOutbox(entry: PreparedOutbox): void {
    this.outbox.put(outboxKeyText(entry.entry), entry)
  }
}

/** Splits rows into statements of bounded count and size. */
function chunks(rows: unknown[][]): unknown[][][] {
  const out: unknown[][][] = []
  let current: unknown[][] = []
  let bytes = 0
  for (const row of rows) {
    const size = row.reduce<number>((sum, value) => sum + (typeof value === 'string' ? value.length * 3 : 16), 0)
    if (current.length > 0 && (current.length >= MAX_ROWS_PER_STATEMENT || bytes + size > MAX_STATEMENT_BYTES)) {
      out.push(current)
      current = []
      bytes = 0
    }
    current.push(row)
    bytes += size
  }
  if (current.length > 0) out.push(current)
  return out
}

function slices<T>(items: readonly T[], size: number): T[][] {
  const out: T[][] = []
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size))
  return out
}

const requestValues = (r: PreparedRequest): unknown[] => {
  const { id, queue, uri, state, version, createdAt, updatedAt } = r.record
  return [id, queue, r.n, uri, state, version, createdAt, updatedAt, r.dataJson]
}
const queueValues = (q: PreparedQueue): unknown[] => {
  const { name, version, createdAt, updatedAt } = q.record
  return [name, version, q.configJson, q.lastGreenJson, q.snapshotJson, createdAt, updatedAt]
}
const factValues = (f: Fact): unknown[] => [f.queue, f.uri, f.project, f.degree, f.requestId, f.at]
const eventValues = (e: PreparedEvent): unknown[] => [e.nodeId, e.seq, e.kind, e.firstId, e.lastId, e.at, e.payloadJson]

const INSERT_OUTBOX =
  'INSERT INTO outbox (queue, request_id, kind, hook, payload, created_at, attempts, next_attempt_at, delivered_at, last_error) VALUES ?'
const UPSERT_OUTBOX = `INSERT INTO outbox (n, queue, request_id, kind, hook, payload, created_at, attempts, next_attempt_at, delivered_at, last_error)
  VALUES ? ON DUPLICATE KEY UPDATE attempts = VALUES(attempts), next_attempt_at = VALUES(next_attempt_at),
  delivered_at = VALUES(delivered_at), last_error = VALUES(last_error)`
const INSERT_REQUESTS = 'INSERT INTO requests (id, queue, n, uri, state, version, created_at, updated_at, data) VALUES ?'
const INSERT_QUEUES = 'INSERT INTO queues (name, version, config, last_green, snapshot, created_at, updated_at) VALUES ?'

class MysqlBackend implements StorageBackend {
  readonly kind = 'mysql'
  private readonly readCommitted = new WeakSet<object>()
  /** Set by close(): what fails from then on failed because the pool was closed under it. */
  private closing = false

  constructor(
    private readonly pool: Pool,
    private readonly where: string,
    private readonly maxAttempts: number,
  ) {}

  private async run<T>(body: () => Promise<T>): Promise<T> {
    try {
      return await body()
    } catch (error) {
      throw this.translate(error)
    }
  }

  /** A driver error as a typed one; StorageClosedError once the pool is being closed. */
  private translate(error: unknown): StovepipeError {
    if (this.closing && !(error instanceof StovepipeError)) {
      return new StorageClosedError(`MySQL storage at ${this.where} was closed while the call was in flight`, { cause: error })
    }
    return translateMysqlError(error, this.where)
  }

  private async rows(sql: string, params: unknown[]): Promise<RowDataPacket[]> {
    const [rows] = await this.pool.query<RowDataPacket[]>(sql, params)
    return rows
  }

  async commit(ops: PreparedOp[], atomic: boolean): Promise<WriteResult[]> {
    if (ops.length === 0) return []
    let connection: PoolConnection
    try {
      connection = await this.pool.getConnection()
    } catch (error) {
      throw this.translate(error)
    }
    let fatal = false
    try {
      if (!this.readCommitted.has(connection.connection)) {
        await connection.query('SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED')
        this.readCommitted.add(connection.connection)
      }
      for (let attempt = 0; ; attempt++) {
        await connection.beginTransaction()
        try {
          const view = new LoadedView()
          // First try optimistically: rows only created (never updated) by this batch are
          // assumed new and not loaded; if one exists after all, its INSERT fails with a
          // duplicate key and the retry loads everything.
          await this.load(connection, ops, view, attempt === 0)
          const results = ops.map((op) => applyOp(op, view))
          if (atomic && results.some((result) => result.status !== 'ok')) {
            await connection.rollback()
            return results
          }
          await this.write(connection, view)
          await connection.commit()
          return results
        } catch (error) {
          fatal = isFatal(error)
          if (!fatal) await connection.rollback().catch(() => undefined)
          if (fatal || !RETRY_CODES.has(errorCode(error))) throw error
          if (attempt >= this.maxAttempts) {
            // Every attempt met a key another writer inserted meanwhile: contention, which may
            // pass (the per-op outcome `already_exists` comes from a batch that got through).
            if (errorCode(error) !== 'ER_DUP_ENTRY') throw error
            throw new StorageUnavailableError(
              `MySQL at ${this.where}: the batch met a duplicate key (a concurrent insert) on each of ${attempt + 1} attempts`,
              { cause: error },
            )
          }
        }
      }
    } catch (error) {
      fatal ||= isFatal(error)
      throw this.translate(error)
    } finally {
      if (fatal) connection.destroy()
      else connection.release()
    }
  }

  /**
   * Loads, locked, the rows the ops touch: all of them, or with `optimistic` only those an
   * op updates (and counters, which are always read).
   */
  private async load(connection: PoolConnection, ops: PreparedOp[], view: LoadedView, optimistic: boolean): Promise<void> {
    const requestIds = new Set<string>()
    const mappings = new Map<string, RequestUriMapping>()
    const queues = new Set<string>()
    const factUris = new Map<string, { queue: string; uri: string }>()
    const counters = new Set<string>()
    const events = new Map<string, Set<number>>()
    const deadLetters = new Set<string>()
    const outboxKeys = new Map<string, OutboxKey>()
    for (const op of ops) {
      switch (op.op) {
        case 'request.create':
          if (!optimistic) requestIds.add(op.request.record.id)
          break
        case 'request.update':
          requestIds.add(op.request.record.id)
          break
        case 'requestUri.create':
          if (!optimistic) mappings.set(mappingKey(op.mapping.queue, op.mapping.uri), op.mapping)
          break
        case 'queue.create':
          if (!optimistic) queues.add(op.queue.record.name)
          break
        case 'queue.update':
          queues.add(op.queue.record.name)
          break
        case 'fact.put':
          if (!optimistic) factUris.set(mappingKey(op.fact.queue, op.fact.uri), op.fact)
          break
        case 'counter.next':
          counters.add(op.queue)
          break
        case 'deadLetter.put':
          if (!optimistic) deadLetters.add(op.deadLetter.letter.id)
          break
        case 'outbox.put':
          if (!optimistic) outboxKeys.set(outboxKeyText(op.outbox.entry), op.outbox.entry)
          break
        case 'outbox.settle':
          outboxKeys.set(outboxKeyText(op.key), op.key)
          break
        case 'event.append': {
          if (optimistic) break
          let seqs = events.get(op.event.nodeId)
          if (seqs === undefined) events.set(op.event.nodeId, (seqs = new Set()))
          seqs.add(op.event.seq)
          break
        }
      }
    }
    const select = async (sql: string, params: unknown[]): Promise<RowDataPacket[]> => {
      const [rows] = await connection.query<RowDataPacket[]>(sql, params)
      return rows
    }
    for (const ids of slices([...requestIds], MAX_ROWS_PER_STATEMENT)) {
      for (const raw of await select(`SELECT ${REQUEST_COLUMNS} FROM requests WHERE id IN (?) FOR UPDATE`, [ids])) {
        const { data: _data, ...record } = toRequest({ ...requestRow(raw), data: null })
        view.requests.loaded.set(requestKey(record.id), {
          record,
          n: parseRequestId(record.id),
          dataJson: raw.data === null ? null : text(raw.data),
        })
      }
    }
    for (const pairs of slices([...mappings.values()], 500)) {
      const where = pairs.map(() => '(queue = ? AND uri = ?)').join(' OR ')
      const rows = await select(
        `SELECT queue, uri, request_id FROM request_uris WHERE ${where} FOR UPDATE`,
        pairs.flatMap((m) => [m.queue, m.uri]),
      )
      for (const raw of rows) {
        const mapping = { queue: text(raw.queue), uri: text(raw.uri), requestId: text(raw.request_id) }
        view.mappings.loaded.set(mappingKey(mapping.queue, mapping.uri), mapping)
      }
    }
    for (const names of slices([...queues], MAX_ROWS_PER_STATEMENT)) {
      for (const raw of await select(`SELECT ${QUEUE_COLUMNS} FROM queues WHERE name IN (?) FOR UPDATE`, [names])) {
        const row = raw as unknown as QueueRow
        const { config: _config, snapshot: _snapshot, ...record } = toQueue({ ...row, config: '{}', snapshot: null })
        view.queues.loaded.set(row.name, {
          record,
          configJson: row.config,
          lastGreenJson: row.last_green,
          snapshotJson: row.snapshot,
        })
      }
    }
    for (const pairs of slices([...factUris.values()], 500)) {
      const where = pairs.map(() => '(queue = ? AND uri = ?)').join(' OR ')
      const rows = await select(
        `SELECT ${FACT_COLUMNS} FROM facts WHERE ${where} FOR UPDATE`,
        pairs.flatMap((f) => [f.queue, f.uri]),
      )
      for (const raw of rows) {
        const fact = toFact(factRow(raw))
        view.facts.loaded.set(factKey(fact.queue, fact.uri, fact.project), fact)
      }
    }
    for (const names of slices([...counters], MAX_ROWS_PER_STATEMENT)) {
      for (const raw of await select('SELECT queue, value FROM counters WHERE queue IN (?) FOR UPDATE', [names])) {
        view.counters.loaded.set(text(raw.queue), Number(raw.value))
      }
    }
    for (const [nodeId, seqs] of events) {
      for (const part of slices([...seqs], MAX_ROWS_PER_STATEMENT)) {
        for (const raw of await select('SELECT seq FROM events WHERE node_id = ? AND seq IN (?) FOR UPDATE', [nodeId, part])) {
          const seq = Number(raw.seq)
          // Only existence matters for events; a placeholder marks the row as present.
          view.events.loaded.set(eventKey(nodeId, seq), { kind: 'gap', nodeId, seq, firstId: 0, lastId: 0, at: 0, payloadJson: null })
        }
      }
    }
    for (const keys of slices([...outboxKeys.values()], 250)) {
      const where = keys.map(() => '(queue = ? AND request_id = ? AND kind = ? AND hook = ?)').join(' OR ')
      const rows = await select(
        `SELECT ${OUTBOX_COLUMNS} FROM outbox WHERE ${where} FOR UPDATE`,
        keys.flatMap((k) => [k.queue, k.requestId, k.kind, k.hook]),
      )
      for (const raw of rows) {
        const row = outboxRow(raw)
        const prepared = preparedOutboxOf(row)
        const key = outboxKeyText(prepared.entry)
        view.outbox.loaded.set(key, prepared)
        view.outboxPositions.set(key, row.n)
      }
    }
    for (const ids of slices([...deadLetters], MAX_ROWS_PER_STATEMENT)) {
      for (const raw of await select('SELECT id FROM dead_letters WHERE id IN (?) FOR UPDATE', [ids])) {
        // Only existence matters; a placeholder marks the letter as present.
        view.deadLetters.loaded.set(text(raw.id), {
          letter: { id: text(raw.id), at: 0, error: { code: '', message: '' }, attempts: 0 },
          opJson: 'null',
        })
      }
    }
  }

  /** Writes what the transaction changed: inserts for new rows, upserts for locked ones. */
  private async write(connection: PoolConnection, view: LoadedView): Promise<void> {
    const exec = async (sql: string, rows: unknown[][]): Promise<void> => {
      for (const part of chunks(rows)) await connection.query(sql, [part])
    }
    await exec(INSERT_REQUESTS, view.requests.created().map(requestValues))
    await exec(
      `${INSERT_REQUESTS} ON DUPLICATE KEY UPDATE state = VALUES(state), version = VALUES(version),
       updated_at = VALUES(updated_at), data = VALUES(data)`,
      view.requests.changed().map(requestValues),
    )
    await exec(
      'INSERT INTO request_uris (queue, uri, request_id) VALUES ?',
      view.mappings.created().map((m) => [m.queue, m.uri, m.requestId]),
    )
    await exec(INSERT_QUEUES, view.queues.created().map(queueValues))
    await exec(
      `${INSERT_QUEUES} ON DUPLICATE KEY UPDATE version = VALUES(version), config = VALUES(config),
       last_green = VALUES(last_green), snapshot = VALUES(snapshot), updated_at = VALUES(updated_at)`,
      view.queues.changed().map(queueValues),
    )
    await exec('INSERT INTO facts (queue, uri, project, degree, request_id, at) VALUES ?', view.facts.created().map(factValues))
    const counterRows = (created: boolean): unknown[][] =>
      [...view.counters.written].filter(([queue]) => view.counters.loaded.has(queue) !== created)
    await exec('INSERT INTO counters (queue, value) VALUES ?', counterRows(true))
    await exec('INSERT INTO counters (queue, value) VALUES ? ON DUPLICATE KEY UPDATE value = VALUES(value)', counterRows(false))
    await exec('INSERT INTO events (node_id, seq, kind, first_id, last_id, at, payload) VALUES ?', view.events.created().map(eventValues))
    await exec(
      'INSERT INTO dead_letters (id, at, op, error_code, error_message, attempts) VALUES ?',
      view.deadLetters.created().map(({ letter: l, opJson }) => [l.id, l.at, opJson, l.error.code, l.error.message, l.attempts]),
    )
    await exec(INSERT_OUTBOX, view.outbox.created().map(outboxValues))
    await exec(
      UPSERT_OUTBOX,
      view.outbox.changed().map((entry) => [view.outboxPositions.get(outboxKeyText(entry.entry)) ?? null, ...outboxValues(entry)]),
    )
  }

  getRequest(id: string): Promise<RequestRecord | undefined> {
    return this.run(async () => {
      const [raw] = await this.rows(`SELECT ${REQUEST_COLUMNS} FROM requests WHERE id = ?`, [id])
      return raw === undefined ? undefined : toRequest(requestRow(raw))
    })
  }

  listRequests(queue: string, options: PreparedListOptions): Promise<RequestRecord[]> {
    return this.run(async () => {
      const asc = options.order === 'asc'
      const where = ['queue = ?']
      const params: unknown[] = [queue]
      if (options.after !== undefined) {
        where.push(asc ? 'n > ?' : 'n < ?')
        params.push(options.after)
      }
      if (options.states !== undefined && options.states.length > 0) {
        where.push('state IN (?)')
        params.push(options.states)
      }
      params.push(options.limit + 1)
      const sql = `SELECT ${REQUEST_COLUMNS} FROM requests WHERE ${where.join(' AND ')} ORDER BY n ${asc ? 'ASC' : 'DESC'} LIMIT ?`
      return (await this.rows(sql, params)).map((raw) => toRequest(requestRow(raw)))
    })
  }

  getRequestIdByUri(queue: string, uri: string): Promise<string | undefined> {
    return this.run(async () => {
      const [raw] = await this.rows('SELECT request_id FROM request_uris WHERE queue = ? AND uri = ?', [queue, uri])
      return raw === undefined ? undefined : text(raw.request_id)
    })
  }

  getQueue(name: string): Promise<QueueRecord | undefined> {
    return this.run(async () => {
      const [raw] = await this.rows(`SELECT ${QUEUE_COLUMNS} FROM queues WHERE name = ?`, [name])
      return raw === undefined ? undefined : toQueue(raw as unknown as QueueRow)
    })
  }

  listQueues(): Promise<QueueRecord[]> {
    return this.run(async () =>
      (await this.rows(`SELECT ${QUEUE_COLUMNS} FROM queues ORDER BY name`, [])).map((raw) => toQueue(raw as unknown as QueueRow)),
    )
  }

  getFact(queue: string, uri: string, project: string): Promise<Fact | undefined> {
    return this.run(async () => {
      const [raw] = await this.rows(`SELECT ${FACT_COLUMNS} FROM facts WHERE queue = ? AND uri = ? AND project = ?`, [queue, uri, project])
      return raw === undefined ? undefined : toFact(factRow(raw))
    })
  }

  listFacts(queue: string, uri: string): Promise<Fact[]> {
    return this.run(async () => {
      const rows = await this.rows(`SELECT ${FACT_COLUMNS} FROM facts WHERE queue = ? AND uri = ? ORDER BY project`, [queue, uri])
      return rows.map((raw) => toFact(factRow(raw)))
    })
  }

  readEvents(options: PreparedReadOptions): Promise<EventRow[]> {
    return this.run(async () => {
      const rows =
        options.nodeId === undefined
          ? await this.rows(`SELECT ${EVENT_COLUMNS} FROM events WHERE seq >= ? AND last_id >= ? ORDER BY node_id, seq LIMIT ?`, [
              options.fromSeq,
              options.fromId,
              options.limit,
            ])
          : await this.rows(`SELECT ${EVENT_COLUMNS} FROM events WHERE node_id = ? AND seq >= ? AND last_id >= ? ORDER BY seq LIMIT ?`, [
              options.nodeId,
              options.fromSeq,
              options.fromId,
              options.limit,
            ])
      return rows.map((raw) => toEvent(raw as unknown as EventDbRow))
    })
  }

  eventNodes(): Promise<string[]> {
    return this.run(async () => {
      // DISTINCT on the primary key's first column: a loose index scan, one probe per node.
      const rows = await this.rows('SELECT DISTINCT node_id FROM events ORDER BY node_id', [])
      return rows.map((raw) => String((raw as { node_id: unknown }).node_id))
    })
  }

  lastEvent(nodeId: string): Promise<EventRow | undefined> {
    return this.run(async () => {
      const [raw] = await this.rows(`SELECT ${EVENT_COLUMNS} FROM events WHERE node_id = ? ORDER BY seq DESC LIMIT 1`, [nodeId])
      return raw === undefined ? undefined : toEvent(raw as unknown as EventDbRow)
    })
  }

  listDeadLetters(after: number, limit: number): Promise<{ position: number; letter: DeadLetter }[]> {
    return this.run(async () => {
      const rows = await this.rows(`SELECT ${DEAD_LETTER_COLUMNS} FROM dead_letters WHERE n > ? ORDER BY n LIMIT ?`, [after, limit])
      return rows.map((raw) => {
        const row = raw as unknown as DeadLetterRow
        return { position: row.n, letter: toDeadLetter(row) }
      })
    })
  }

  getOutbox(key: OutboxKey): Promise<OutboxEntry | undefined> {
    return this.run(async () => {
      const [raw] = await this.rows(`SELECT ${OUTBOX_COLUMNS} FROM outbox WHERE queue = ? AND request_id = ? AND kind = ? AND hook = ?`, [
        key.queue,
        key.requestId,
        key.kind,
        key.hook,
      ])
      return raw === undefined ? undefined : toOutbox(outboxRow(raw))
    })
  }

  dueOutbox(before: number, limit: number): Promise<OutboxEntry[]> {
    return this.run(async () => {
      const rows = await this.rows(
        `SELECT ${OUTBOX_COLUMNS} FROM outbox WHERE delivered_at IS NULL AND next_attempt_at <= ?
         ORDER BY next_attempt_at, created_at, n LIMIT ?`,
        [before, limit],
      )
      return rows.map((raw) => toOutbox(outboxRow(raw)))
    })
  }

  listOutbox(queue: string | undefined, after: number, limit: number): Promise<{ position: number; entry: OutboxEntry }[]> {
    return this.run(async () => {
      const rows =
        queue === undefined
          ? await this.rows(`SELECT ${OUTBOX_COLUMNS} FROM outbox WHERE n > ? ORDER BY n LIMIT ?`, [after, limit])
          : await this.rows(`SELECT ${OUTBOX_COLUMNS} FROM outbox WHERE queue = ? AND n > ? ORDER BY n LIMIT ?`, [queue, after, limit])
      return rows.map((raw) => {
        const row = outboxRow(raw)
        return { position: row.n, entry: toOutbox(row) }
      })
    })
  }

  migrate(): Promise<number[]> {
    return this.run(() => applyMysqlMigrations(this.pool, MYSQL_MIGRATIONS))
  }

  async close(): Promise<void> {
    this.closing = true
    try {
      await this.pool.end()
    } catch (error) {
      throw translateMysqlError(error, this.where)
    }
  }
}

/**
 * Applies pending migrations while holding a named lock (`GET_LOCK`, scoped to the
 * database), so concurrent openers apply each migration exactly once. Returns the versions
 * this call applied.
 */
export async function applyMysqlMigrations(pool: Pool, migrations: readonly MysqlMigration[]): Promise<number[]> {
  const connection = await pool.getConnection()
  try {
    const [[current]] = await connection.query<RowDataPacket[]>('SELECT DATABASE() AS db')
    const database = current?.db == null ? '' : text(current.db)
    if (database === '') throw new InvalidInputError('the MySQL connection names no database; add one to the URI (mysql://host/db)')
    const lock = `stovepipe:migrate:${createHash('sha256').update(database).digest('hex').slice(0, 32)}`
    const [[locked]] = await connection.query<RowDataPacket[]>('SELECT GET_LOCK(?, 60) AS ok', [lock])
    if (Number(locked?.ok) !== 1) throw new StorageUnavailableError(`timed out waiting for the migration lock of database ${database}`)
    try {
      await connection.query(`CREATE TABLE IF NOT EXISTS stovepipe_migrations (
        version INT NOT NULL PRIMARY KEY, name VARCHAR(200) NOT NULL, applied_at BIGINT NOT NULL) ENGINE=InnoDB`)
      const [rows] = await connection.query<RowDataPacket[]>('SELECT version FROM stovepipe_migrations')
      const done = new Set(rows.map((row) => Number(row.version)))
      assertKnownSchema(Math.max(0, ...done), migrations, `MySQL database ${database}`)
      const applied: number[] = []
      for (const migration of migrations) {
        if (done.has(migration.version)) continue
        for (const statement of migration.statements) await connection.query(statement)
        await connection.query('INSERT INTO stovepipe_migrations (version, name, applied_at) VALUES (?, ?, ?)', [
          migration.version,
          migration.name,
          Date.now(),
        ])
        applied.push(migration.version)
      }
      return applied
    } finally {
      await connection.query('SELECT RELEASE_LOCK(?)', [lock])
    }
  } finally {
    connection.release()
  }
}

/** For a read-only open: the database must hold a Stovepipe schema this code can read. */
async function checkMysqlSchema(pool: Pool, where: string): Promise<void> {
  const [[current]] = await pool.query<RowDataPacket[]>(
    "SELECT DATABASE() AS db, (SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = 'stovepipe_migrations') AS found",
  )
  const database = current?.db == null ? '' : text(current.db)
  if (database === '') throw new InvalidInputError('the MySQL connection names no database; add one to the URI (mysql://host/db)')
  if (Number(current?.found) === 0)
    throw new NotFoundError(`no Stovepipe database in MySQL database ${database} on ${where} (it holds no Stovepipe tables)`)
  const [[row]] = await pool.query<RowDataPacket[]>('SELECT MAX(version) AS version FROM stovepipe_migrations')
  assertCurrentSchema(row?.version == null ? 0 : Number(row.version), MYSQL_MIGRATIONS, `MySQL database ${database} on ${where}`)
}

/** `host:port` (or the socket path) a pool connects to, for error messages. */
export function describeTarget(options: { uri: string } | PoolOptions): string {
  if ('uri' in options && typeof options.uri === 'string') {
    try {
      const url = new URL(options.uri)
      return `${url.hostname || 'localhost'}:${url.port || '3306'}`
    } catch {
      return 'an unparsable URI'
    }
  }
  if ('socketPath' in options && typeof options.socketPath === 'string') return options.socketPath
  const host = 'host' in options && typeof options.host === 'string' ? options.host : 'localhost'
  const port = 'port' in options && typeof options.port === 'number' ? options.port : 3306
  return `${host}:${port}`
}

/** Pool options the backend depends on, over whatever the caller (or the URI) asks. */
const FORCED_POOL_OPTIONS = { supportBigNumbers: false, bigNumberStrings: false, rowsAsArray: false, typeCast: true } as const

/** Drops NO_BACKSLASH_ESCAPES from the session's sql_mode (mysql2 escapes with backslashes). */
const SESSION_SQL_MODE =
  "SET SESSION sql_mode = TRIM(BOTH ',' FROM REPLACE(CONCAT(',', @@SESSION.sql_mode, ','), ',NO_BACKSLASH_ESCAPES,', ','))"

/**
 * Opens a MySQL/MariaDB storage on a connection pool and applies pending migrations
 * (unless `migrate: false`). An unreachable server gives `StorageUnavailableError` naming
 * its host and port.
 */
export async function openMysqlStorage(options: MysqlStorageOptions): Promise<Storage> {
  const { migrate = true, readOnly = false, maxCommitAttempts = 5, ...poolOptions } = options
  if (!Number.isSafeInteger(maxCommitAttempts) || maxCommitAttempts < 1) {
    throw new InvalidInputError(`maxCommitAttempts must be a positive integer, got ${String(maxCommitAttempts)}`)
  }
  const where = describeTarget(poolOptions)
  if ('uri' in poolOptions && typeof poolOptions.uri === 'string') {
    try {
      new URL(poolOptions.uri)
    } catch (error) {
      throw new InvalidInputError(`MySQL URI is not a URI (expected mysql://user:password@host:port/database)`, { cause: error })
    }
  }
  let pool: mysql.Pool
  try {
    // What the backend relies on is forced: numbers as numbers (versions are compared), rows as objects.
    pool = mysql.createPool({ connectionLimit: 10, connectTimeout: 10_000, ...poolOptions, ...FORCED_POOL_OPTIONS })
  } catch (error) {
    throw new InvalidInputError(`MySQL options are not usable: ${error instanceof Error ? error.message : String(error)}`, { cause: error })
  }
  // mysql2 escapes strings with backslashes: a server whose sql_mode has NO_BACKSLASH_ESCAPES
  // would read them as text (corrupt data, and a quote in user data would end a literal).
  pool.pool.on('connection', (connection) => {
    connection.query(SESSION_SQL_MODE, () => undefined)
    if (readOnly) connection.query('SET SESSION TRANSACTION READ ONLY', () => undefined)
  })
  const backend = new MysqlBackend(pool, where, maxCommitAttempts)
  try {
    if (readOnly) await checkMysqlSchema(pool, where)
    else if (migrate) await applyMysqlMigrations(pool, MYSQL_MIGRATIONS)
    else await pool.query('SELECT 1')
  } catch (error) {
    await pool.end().catch(() => undefined)
    throw translateMysqlError(error, where)
  }
  return createStorageFacade(backend)
}
