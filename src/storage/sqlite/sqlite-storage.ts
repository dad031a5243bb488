/**
 * The embedded default backend: SQLite through better-sqlite3, WAL journal, prepared
 * statements, one `BEGIN IMMEDIATE` transaction per commit.
 *
 * @module
 */
import { dirname } from 'node:path'
import Database from 'better-sqlite3'
import { createStorageFacade, type StorageBackend } from '../facade.js'
import {
  AlreadyExistsError,
  InvalidInputError,
  NotFoundError,
  StorageClosedError,
  StorageFailedError,
  StorageUnavailableError,
  StovepipeError,
} from '../errors.js'
import {
  DEAD_LETTER_COLUMNS,
  EVENT_COLUMNS,
  FACT_COLUMNS,
  OUTBOX_COLUMNS,
  outboxValues,
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
import type { DeadLetter, EventRow, Fact, OutboxEntry, OutboxKey, QueueRecord, RequestRecord, Storage, WriteResult } from '../types.js'
import {
  assertCurrentSchema,
  assertKnownSchema,
  type PreparedListOptions,
  type PreparedOp,
  type PreparedReadOptions,
} from '../validation.js'
import { SQLITE_MIGRATIONS, type Migration } from './migrations.js'

/** Options of {@link openSqliteStorage}. */
export interface SqliteStorageOptions {
  /** Database file path, or `:memory:` for a private in-memory database. */
  filename: string
  /**
   * `NORMAL` (default): with WAL, a commit survives a process crash but the last commits
   * may be lost on power failure. `FULL`: every commit is fsynced before it resolves.
   */
  synchronous?: 'NORMAL' | 'FULL'
  /** How long a writer waits for another process's lock before failing, in ms (default 5000). */
  busyTimeoutMs?: number
  /** Apply pending migrations while opening (default true). */
  migrate?: boolean
  /**
   * Open an existing Stovepipe database for reading only (default false): nothing is created,
   * migrated or written, no write lock is taken, and a file that is not a Stovepipe database
   * (or one a newer Stovepipe wrote) is refused.
   */
  readOnly?: boolean
}

type Db = Database.Database

/** Rolls a transaction back after its results are known (atomic batches). */
class Rollback extends Error {
  constructor(readonly results: WriteResult[]) {
    super('rolled back: an op of an atomic batch failed its condition')
  }
}

/** Translates a better-sqlite3 error into a typed one; `where` names the file. */
export function translateSqliteError(error: unknown, where: string): StovepipeError {
  if (error instanceof StovepipeError) return error
  const code = typeof error === 'object' && error !== null && 'code' in error ? String(error.code) : ''
  const message = error instanceof Error ? error.message : String(error)
  if (code.startsWith('SQLITE_BUSY') || code.startsWith('SQLITE_LOCKED')) {
    return new StorageUnavailableError(`SQLite database ${where} is locked by another connection: ${message}`, { cause: error })
  }
  if (code.startsWith('SQLITE_IOERR') || code === 'SQLITE_FULL' || code.startsWith('SQLITE_CANTOPEN') || code === 'SQLITE_PROTOCOL') {
    return new StorageUnavailableError(`SQLite database ${where} is unavailable: ${message}`, { cause: error })
  }
  if (code === 'SQLITE_NOTADB') return new InvalidInputError(`${where} is not a SQLite database: ${message}`, { cause: error })
  if (code.startsWith('SQLITE_READONLY') || code === 'SQLITE_PERM') {
    return new StorageUnavailableError(`SQLite database ${where} cannot be written (permissions, or a read-only file system): ${message}`, {
      cause: error,
    })
  }
  if (code === 'SQLITE_CONSTRAINT_PRIMARYKEY' || code === 'SQLITE_CONSTRAINT_UNIQUE') {
    return new AlreadyExistsError(`SQLite database ${where} refused a duplicate: ${message}`, { cause: error })
  }
  if (error instanceof TypeError && /connection is not open/i.test(message)) {
    return new StorageClosedError(`SQLite database ${where} is closed`, { cause: error })
  }
  if (error instanceof TypeError && /cannot open database/i.test(message)) {
    return new StorageUnavailableError(`SQLite database ${where} cannot be opened: ${message}`, { cause: error })
  }
  return new StorageFailedError(`SQLite database ${where} failed: ${message}`, { cause: error })
}

type Value = string | number | null

function prepareStatements(db: Db) {
  return {
    insertRequest: db.prepare<Value[]>(
      `INSERT INTO requests (id, queue, n, uri, state, version, created_at, updated_at, data)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
    ),
    updateRequest: db.prepare<Value[]>('UPDATE requests SET state = ?, data = ?, updated_at = ?, version = ? WHERE id = ? AND version = ?'),
    requestExists: db.prepare<[string], { one: number }>('SELECT 1 AS one FROM requests WHERE id = ?'),
    getRequest: db.prepare<[string], RequestRow>(`SELECT ${REQUEST_COLUMNS} FROM requests WHERE id = ?`),
    insertMapping: db.prepare<Value[]>('INSERT INTO request_uris (queue, uri, request_id) VALUES (?, ?, ?) ON CONFLICT DO NOTHING'),
    getMapping: db.prepare<[string, string], { request_id: string }>('SELECT request_id FROM request_uris WHERE queue = ? AND uri = ?'),
    insertQueue: db.prepare<Value[]>(
      `INSERT INTO queues (name, version, config, last_green, snapshot, created_at, updated_at)
       VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
    ),
    updateQueue: db.prepare<Value[]>(
      `UPDATE queues SET config = ?, last_green = ?, snapshot = ?, updated_at = ?, version = ?
       WHERE name = ? AND version = ?`,
    ),
    queueExists: db.prepare<[string], { one: number }>('SELECT 1 AS one FROM queues WHERE name = ?'),
    getQueue: db.prepare<[string], QueueRow>(`SELECT ${QUEUE_COLUMNS} FROM queues WHERE name = ?`),
    listQueues: db.prepare<[], QueueRow>(`SELECT ${QUEUE_COLUMNS} FROM queues ORDER BY name`),
    insertFact: db.prepare<Value[]>(
      'INSERT INTO facts (queue, uri, project, degree, request_id, at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING',
    ),
    getFact: db.prepare<[string, string, string], FactRow>(`SELECT ${FACT_COLUMNS} FROM facts WHERE queue = ? AND uri = ? AND project = ?`),
    listFacts: db.prepare<[string, string], FactRow>(`SELECT ${FACT_COLUMNS} FROM facts WHERE queue = ? AND uri = ? ORDER BY project`),
    nextCounter: db.prepare<[string], { value: number }>(
      `INSERT INTO counters (queue, value) VALUES (?, 1)
       ON CONFLICT (queue) DO UPDATE SET value = value + 1 RETURNING value`,
    ),
    insertEvent: db.prepare<Value[]>(
      'INSERT INTO events (node_id, seq, kind, first_id, last_id, at, payload) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING',
    ),
    insertDeadLetter: db.prepare<Value[]>(
      'INSERT INTO dead_letters (id, at, op, error_code, error_message, attempts) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING',
    ),
    listDeadLetters: db.prepare<[number, number], DeadLetterRow>(
      `SELECT ${DEAD_LETTER_COLUMNS} FROM dead_letters WHERE n > ? ORDER BY n LIMIT ?`,
    ),
    readNodeEvents: db.prepare<[string, number, number, number], EventDbRow>(
      `SELECT ${EVENT_COLUMNS} FROM events WHERE node_id = ? AND seq >= ? AND last_id >= ? ORDER BY seq LIMIT ?`,
    ),
    readAllEvents: db.prepare<[number, number, number], EventDbRow>(
      `SELECT ${EVENT_COLUMNS} FROM events WHERE seq >= ? AND last_id >= ? ORDER BY node_id, seq LIMIT ?`,
    ),
    lastEvent: db.prepare<[string], EventDbRow>(`SELECT ${EVENT_COLUMNS} FROM events WHERE node_id = ? ORDER BY seq DESC LIMIT 1`),
    // One index probe per node (a loose index scan), not a scan of every row.
    eventNodes: db.prepare<[], { node: string }>(
      `WITH RECURSIVE nodes(node) AS (
         SELECT MIN(node_id) FROM events
         UNION ALL SELECT (SELECT MIN(node_id) FROM events WHERE node_id > nodes.node) FROM nodes WHERE nodes.node IS NOT NULL
       ) SELECT node FROM nodes WHERE node IS NOT NULL`,
    ),
    insertOutbox: db.prepare<Value[]>(
      `INSERT INTO outbox (queue, request_id, kind, hook, payload, created_at, attempts, next_attempt_at, delivered_at, last_error)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
    ),
    settleOutbox: db.prepare<Value[]>(
      `UPDATE outbox SET attempts = ?, next_attempt_at = ?, delivered_at = ?, last_error = ?
       WHERE queue = ? AND request_id = ? AND kind = ? AND hook = ? AND delivered_at IS NULL`,
    ),
    getOutbox: db.prepare<[string, string, string, string], OutboxRow>(
      `SELECT ${OUTBOX_COLUMNS} FROM outbox WHERE queue = ? AND request_id = ? AND kind = ? AND hook = ?`,
    ),
    dueOutbox: db.prepare<[number, number], OutboxRow>(
      `SELECT ${OUTBOX_COLUMNS} FROM outbox WHERE delivered_at IS NULL AND next_attempt_at <= ?
       ORDER BY next_attempt_at, created_at, n LIMIT ?`,
    ),
    listOutbox: db.prepare<[number, number], OutboxRow>(`SELECT ${OUTBOX_COLUMNS} FROM outbox WHERE n > ? ORDER BY n LIMIT ?`),
    listQueueOutbox: db.prepare<[string, number, number], OutboxRow>(
      `SELECT ${OUTBOX_COLUMNS} FROM outbox WHERE queue = ? AND n > ? ORDER BY n LIMIT ?`,
    ),
  }
}

type Statements = ReturnType<typeof prepareStatements>

const OK: WriteResult = { status: 'ok' }
const EXISTS: WriteResult = { status: 'already_exists' }

class SqliteBackend implements StorageBackend {
  readonly kind = 'sqlite'
  private statements: Statements | undefined
  private readonly listCache = new Map<string, Database.Statement<unknown[], RequestRow>>()
  private readonly runBatch: (ops: PreparedOp[], atomic: boolean) => WriteResult[]

  constructor(
    private readonly db: Db,
    private readonly where: string,
  ) {
    const transaction = db.transaction((ops: PreparedOp[], atomic: boolean) => {
      const results = ops.map((op) => this.apply(op))
      if (atomic && results.some((result) => result.status !== 'ok')) throw new Rollback(results)
      return results
    })
    this.runBatch = (ops, atomic) => transaction.immediate(ops, atomic)
  }

  private get sql(): Statements {
    this.statements ??= prepareStatements(this.db)
    return this.statements
  }

  private run<T>(body: () => T): Promise<T> {
    try {
      return Promise.resolve(body())
    } catch (error) {
      return Promise.reject(translateSqliteError(error, this.where))
    }
  }

  private apply(op: PreparedOp): WriteResult {
    const sql = this.sql
    switch (op.op) {
      case 'request.create': {
        const { record: r, n, dataJson } = op.request
        const { changes } = sql.insertRequest.run(r.id, r.queue, n, r.uri, r.state, r.version, r.createdAt, r.updatedAt, dataJson)
        return changes === 1 ? OK : EXISTS
      }
      case 'request.update': {
        const { record: r, dataJson } = op.request
        const { changes } = sql.updateRequest.run(r.state, dataJson, r.updatedAt, op.newVersion, r.id, op.oldVersion)
        if (changes === 1) return OK
        return sql.requestExists.get(r.id) === undefined ? { status: 'not_found' } : { status: 'version_mismatch' }
      }
      case 'requestUri.create': {
        const { queue, uri, requestId } = op.mapping
        return sql.insertMapping.run(queue, uri, requestId).changes === 1 ? OK : EXISTS
      }
      case 'queue.create': {
        const { record: q, configJson, lastGreenJson, snapshotJson } = op.queue
        const { changes } = sql.insertQueue.run(q.name, q.version, configJson, lastGreenJson, snapshotJson, q.createdAt, q.updatedAt)
        return changes === 1 ? OK : EXISTS
      }
      case 'queue.update': {
        const { record: q, configJson, lastGreenJson, snapshotJson } = op.queue
        const { changes } = sql.updateQueue.run(configJson, lastGreenJson, snapshotJson, q.updatedAt, op.newVersion, q.name, op.oldVersion)
        if (changes === 1) return OK
        return sql.queueExists.get(q.name) === undefined ? { status: 'not_found' } : { status: 'version_mismatch' }
      }
      case 'fact.put': {
        const f = op.fact
        if (sql.insertFact.run(f.queue, f.uri, f.project, f.degree, f.requestId, f.at).changes === 1) return OK
        const existing = sql.getFact.get(f.queue, f.uri, f.project)
        if (existing === undefined) throw new StorageFailedError(`fact for ${f.uri} vanished inside a transaction`)
        return { status: 'already_exists', fact: toFact(existing) }
      }
      case 'counter.next': {
        const row = sql.nextCounter.get(op.queue)
        if (row === undefined) throw new StorageFailedError(`counter for ${op.queue} returned no value`)
        return { status: 'ok', value: row.value }
      }
      case 'event.append': {
        const e = op.event
        const { changes } = sql.insertEvent.run(e.nodeId, e.seq, e.kind, e.firstId, e.lastId, e.at, e.payloadJson)
        return changes === 1 ? OK : EXISTS
      }
      case 'deadLetter.put': {
        const { letter: l, opJson } = op.deadLetter
        const { changes } = sql.insertDeadLetter.run(l.id, l.at, opJson, l.error.code, l.error.message, l.attempts)
        return changes === 1 ? OK : EXISTS
      }
      case 'outbox.put':
        return sql.insertOutbox.run(...outboxValues(op.outbox)).changes === 1 ? OK : EXISTS
      case 'outbox.settle': {
        const { key: k, settlement: s } = op
        const { changes } = sql.settleOutbox.run(
          s.attempts,
          s.nextAttemptAt,
          s.deliveredAt,
          s.lastError,
          k.queue,
          k.requestId,
          k.kind,
          k.hook,
        )
        if (changes === 1) return OK
        return sql.getOutbox.get(k.queue, k.requestId, k.kind, k.hook) === undefined
          ? { status: 'not_found' }
          : { status: 'version_mismatch' }
      }
    }
  }

  commit(ops: PreparedOp[], atomic: boolean): Promise<WriteResult[]> {
    if (ops.length === 0) return Promise.resolve([])
    try {
      return Promise.resolve(this.runBatch(ops, atomic))
    } catch (error) {
      if (error instanceof Rollback) return Promise.resolve(error.results)
      return Promise.reject(translateSqliteError(error, this.where))
    }
  }

  getRequest(id: string): Promise<RequestRecord | undefined> {
    return this.run(() => {
      const row = this.sql.getRequest.get(id)
      return row === undefined ? undefined : toRequest(row)
    })
  }

  listRequests(queue: string, options: PreparedListOptions): Promise<RequestRecord[]> {
    return this.run(() => {
      const states = options.states ?? []
      const asc = options.order === 'asc'
      const key = `${options.order}:${states.length}:${options.after === undefined ? 'first' : 'after'}`
      let statement = this.listCache.get(key)
      if (statement === undefined) {
        const where = ['queue = ?']
        if (options.after !== undefined) where.push(asc ? 'n > ?' : 'n < ?')
        if (states.length > 0) where.push(`state IN (${states.map(() => '?').join(', ')})`)
        const text = `SELECT ${REQUEST_COLUMNS} FROM requests WHERE ${where.join(' AND ')} ORDER BY n ${asc ? 'ASC' : 'DESC'} LIMIT ?`
        statement = this.db.prepare<unknown[], RequestRow>(text)
        this.listCache.set(key, statement)
      }
      const params: unknown[] = [queue]
      if (options.after !== undefined) params.push(options.after)
      params.push(...states, options.limit + 1)
      return statement.all(...params).map(toRequest)
    })
  }

  getRequestIdByUri(queue: string, uri: string): Promise<string | undefined> {
    return this.run(() => this.sql.getMapping.get(queue, uri)?.request_id)
  }

  getQueue(name: string): Promise<QueueRecord | undefined> {
    return this.run(() => {
      const row = this.sql.getQueue.get(name)
      return row === undefined ? undefined : toQueue(row)
    })
  }

  listQueues(): Promise<QueueRecord[]> {
    return this.run(() => this.sql.listQueues.all().map(toQueue))
  }

  getFact(queue: string, uri: string, project: string): Promise<Fact | undefined> {
    return this.run(() => {
      const row = this.sql.getFact.get(queue, uri, project)
      return row === undefined ? undefined : toFact(row)
    })
  }

  listFacts(queue: string, uri: string): Promise<Fact[]> {
    return this.run(() => this.sql.listFacts.all(queue, uri).map(toFact))
  }

  readEvents(options: PreparedReadOptions): Promise<EventRow[]> {
    return this.run(() => {
      const rows =
        options.nodeId === undefined
          ? this.sql.readAllEvents.all(options.fromSeq, options.fromId, options.limit)
          : this.sql.readNodeEvents.all(options.nodeId, options.fromSeq, options.fromId, options.limit)
      return rows.map(toEvent)
    })
  }

  eventNodes(): Promise<string[]> {
    return this.run(() => this.sql.eventNodes.all().map((row) => row.node))
  }

  lastEvent(nodeId: string): Promise<EventRow | undefined> {
    return this.run(() => {
      const row = this.sql.lastEvent.get(nodeId)
      return row === undefined ? undefined : toEvent(row)
    })
  }

  listDeadLetters(after: number, limit: number): Promise<{ position: number; letter: DeadLetter }[]> {
    return this.run(() => this.sql.listDeadLetters.all(after, limit).map((row) => ({ position: row.n, letter: toDeadLetter(row) })))
  }

  getOutbox(key: OutboxKey): Promise<OutboxEntry | undefined> {
    return this.run(() => {
      const row = this.sql.getOutbox.get(key.queue, key.requestId, key.kind, key.hook)
      return row === undefined ? undefined : toOutbox(row)
    })
  }

  dueOutbox(before: number, limit: number): Promise<OutboxEntry[]> {
    return this.run(() => this.sql.dueOutbox.all(before, limit).map(toOutbox))
  }

  listOutbox(queue: string | undefined, after: number, limit: number): Promise<{ position: number; entry: OutboxEntry }[]> {
    return this.run(() => {
      const rows = queue === undefined ? this.sql.listOutbox.all(after, limit) : this.sql.listQueueOutbox.all(queue, after, limit)
      return rows.map((row) => ({ position: row.n, entry: toOutbox(row) }))
    })
  }

  migrate(): Promise<number[]> {
    return this.run(() => applySqliteMigrations(this.db, SQLITE_MIGRATIONS))
  }

  close(): Promise<void> {
    return this.run(() => {
      this.db.close()
    })
  }
}

/**
 * Applies pending migrations inside one `BEGIN IMMEDIATE` transaction, so concurrent
 * openers serialize on SQLite's write lock and each migration is applied exactly once.
 * Returns the versions this call applied.
 */
export function applySqliteMigrations(db: Db, migrations: readonly Migration[]): number[] {
  db.exec('BEGIN IMMEDIATE')
  try {
    db.exec(`CREATE TABLE IF NOT EXISTS stovepipe_migrations (
      version INTEGER NOT NULL PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)`)
    const done = new Set(
      db
        .prepare<[], { version: number }>('SELECT version FROM stovepipe_migrations')
        .all()
        .map((r) => r.version),
    )
    assertKnownSchema(Math.max(0, ...done), migrations, db.name)
    const record = db.prepare<[number, string, number]>('INSERT INTO stovepipe_migrations (version, name, applied_at) VALUES (?, ?, ?)')
    const applied: number[] = []
    for (const migration of migrations) {
      if (done.has(migration.version)) continue
      db.exec(migration.sql)
      record.run(migration.version, migration.name, Date.now())
      applied.push(migration.version)
    }
    db.exec('COMMIT')
    return applied
  } catch (error) {
    if (db.inTransaction) db.exec('ROLLBACK')
    throw error
  }
}

/**
 * A WAL database is read through its `-wal` and `-shm` files, which exist while a writer
 * has it open; otherwise the reader creates them, which needs write access to the directory.
 */
function readOnlyDirectory(error: unknown, filename: string): StorageUnavailableError | undefined {
  const code = typeof error === 'object' && error !== null && 'code' in error ? String(error.code) : ''
  if (code !== 'SQLITE_READONLY_DIRECTORY') return undefined
  return new StorageUnavailableError(
    `cannot read SQLite database ${filename} as this user: a reader of a WAL database needs its -wal and -shm files, which exist only while a writer (\`stovepipe run\`) has it open, and this user cannot create them in ${dirname(filename)}; read it while it runs, or as a user who can write there`,
    { cause: error },
  )
}

/** For a read-only open: the file must hold a Stovepipe schema this code can read. */
function checkSqliteSchema(db: Db, filename: string): void {
  const table = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'stovepipe_migrations'").get()
  if (table === undefined) throw new NotFoundError(`no Stovepipe database at ${filename} (the file holds no Stovepipe tables)`)
  const row = db.prepare<[], { version: number | null }>('SELECT MAX(version) AS version FROM stovepipe_migrations').get()
  assertCurrentSchema(row?.version ?? 0, SQLITE_MIGRATIONS, filename)
}

/** The longest busy timeout taken (SQLite's is an int of milliseconds). */
const MAX_BUSY_TIMEOUT_MS = 2 ** 31 - 1

/**
 * Opens (creating if needed) a SQLite storage. WAL journal; `synchronous` NORMAL by
 * default, FULL on request; pending migrations applied unless `migrate: false`.
 */
export async function openSqliteStorage(options: SqliteStorageOptions): Promise<Storage> {
  const { filename, synchronous = 'NORMAL', busyTimeoutMs = 5000, migrate = true, readOnly = false } = options
  if (typeof filename !== 'string' || filename.length === 0) {
    throw new InvalidInputError('filename must be a non-empty path or :memory:')
  }
  if (!['NORMAL', 'FULL'].includes(synchronous)) {
    throw new InvalidInputError(`synchronous must be NORMAL or FULL, got ${synchronous}`)
  }
  if (!Number.isSafeInteger(busyTimeoutMs) || busyTimeoutMs < 0 || busyTimeoutMs > MAX_BUSY_TIMEOUT_MS) {
    throw new InvalidInputError(`busyTimeoutMs must be an integer from 0 to ${MAX_BUSY_TIMEOUT_MS}, got ${String(busyTimeoutMs)}`)
  }
  let db: Db | undefined
  try {
    if (readOnly) {
      if (filename === ':memory:') throw new InvalidInputError('a read-only storage needs a database file, not :memory:')
      db = new Database(filename, { timeout: busyTimeoutMs, readonly: true, fileMustExist: true })
      try {
        checkSqliteSchema(db, filename)
      } catch (error) {
        throw readOnlyDirectory(error, filename) ?? error
      }
      return createStorageFacade(new SqliteBackend(db, filename))
    }
    db = new Database(filename, { timeout: busyTimeoutMs })
    const opened = db
    // Switching a new file to WAL needs a moment of exclusive access and does not wait on
    // the busy handler: retry while another process is doing the same.
    if (filename !== ':memory:') await whileBusy(busyTimeoutMs, () => opened.pragma('journal_mode = WAL'))
    db.pragma(`synchronous = ${synchronous}`)
    const backend = new SqliteBackend(db, filename)
    if (migrate) await whileBusy(busyTimeoutMs, () => applySqliteMigrations(opened, SQLITE_MIGRATIONS))
    return createStorageFacade(backend)
  } catch (error) {
    db?.close()
    throw translateSqliteError(error, filename)
  }
}

/** Runs `body`, retrying on SQLITE_BUSY with short sleeps for up to `timeoutMs`. */
async function whileBusy<T>(timeoutMs: number, body: () => T): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (let pause = 5; ; pause = Math.min(pause * 2, 100)) {
    try {
      return body()
    } catch (error) {
      const busy = typeof error === 'object' && error !== null && 'code' in error && String(error.code).startsWith('SQLITE_BUSY')
      if (!busy || Date.now() + pause > deadline) throw error
      await new Promise((resolve) => setTimeout(resolve, pause))
    }
  }
}
