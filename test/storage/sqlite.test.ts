/** SQLite-specific behaviour: failures write nothing, errors are translated, concurrency. */
import { join } from 'node:path'
import Database from 'better-sqlite3'
import { afterEach, describe, expect, it } from 'vitest'
import {
  AlreadyExistsError,
  InvalidInputError,
  StorageClosedError,
  StorageFailedError,
  StorageUnavailableError,
  type Storage,
} from '../../src/storage/index.js'
import { openSqliteStorage } from '../../src/storage/sqlite/index.js'
import { translateSqliteError } from '../../src/storage/sqlite/sqlite-storage.js'
import { sampleFact, sampleRequest } from '../../src/testing/index.js'
import { tempDir } from '../support/sqlite.js'

const cleanups: (() => Promise<void> | void)[] = []
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

async function openFile(options: { busyTimeoutMs?: number } = {}): Promise<{ storage: Storage; filename: string }> {
  const { dir, remove } = tempDir()
  cleanups.push(remove)
  const filename = join(dir, 'db.sqlite')
  const storage = await openSqliteStorage({ filename, ...options })
  cleanups.push(() => storage.close())
  return { storage, filename }
}

describe('sqlite storage', () => {
  it('rejects a whole batch when the database fails midway, and writes nothing', async () => {
    const { storage, filename } = await openFile()
    const side = new Database(filename)
    side.exec(`CREATE TRIGGER poison BEFORE INSERT ON facts WHEN NEW.uri = 'fake://poison'
               BEGIN SELECT RAISE(ABORT, 'poisoned fact'); END`)
    side.close()
    const error = await storage
      .commit([
        { op: 'request.create', record: sampleRequest('main', 1) },
        { op: 'counter.next', queue: 'main' },
        { op: 'fact.put', fact: sampleFact('main', 1, { uri: 'fake://poison' }) },
      ])
      .catch((e: unknown) => e)
    expect(error).toBeInstanceOf(StorageFailedError)
    expect((error as StorageFailedError).cause).toMatchObject({ code: 'SQLITE_CONSTRAINT_TRIGGER' })
    await expect(storage.requests.get('request/main/1')).rejects.toMatchObject({ code: 'NOT_FOUND' })
    expect(await storage.counters.next('main')).toBe(1)
  })

  it('reports a database locked by another process as StorageUnavailableError (retryable), writing nothing', async () => {
    const { storage, filename } = await openFile({ busyTimeoutMs: 50 })
    const other = new Database(filename)
    other.exec('BEGIN EXCLUSIVE')
    const error = await storage.commit([{ op: 'request.create', record: sampleRequest('main', 1) }]).catch((e: unknown) => e)
    other.exec('ROLLBACK')
    other.close()
    expect(error).toBeInstanceOf(StorageUnavailableError)
    expect((error as StorageUnavailableError).retryable).toBe(true)
    expect((error as Error).message).toContain(filename)
    expect((await storage.requests.listByQueue('main')).items).toEqual([])
  })

  it('serializes two handles on one file: every id created once, counters never repeat', async () => {
    const { storage: a, filename } = await openFile()
    const b = await openSqliteStorage({ filename })
    cleanups.push(() => b.close())
    const batches = Array.from({ length: 40 }, (_, i) =>
      (i % 2 === 0 ? a : b).commit([
        { op: 'request.create', record: sampleRequest('main', (i % 10) + 1) },
        { op: 'counter.next', queue: 'main' },
      ]),
    )
    const results = await Promise.all(batches)
    expect(results.filter(([create]) => create?.status === 'ok')).toHaveLength(10)
    const counters = results.map(([, counter]) => (counter?.status === 'ok' ? counter.value : -1)).sort((x, y) => (x ?? 0) - (y ?? 0))
    expect(counters).toEqual(Array.from({ length: 40 }, (_, i) => i + 1))
  })

  it('fails to open a file in a missing directory with StorageUnavailableError naming it', async () => {
    const error = await openSqliteStorage({ filename: '/nonexistent/dir/db.sqlite' }).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(StorageUnavailableError)
    expect((error as Error).message).toContain('/nonexistent/dir/db.sqlite')
  })

  it('opens read-only: reads, refuses every write (StorageUnavailableError), changes nothing; needs an existing file', async () => {
    const { storage, filename } = await openFile()
    await storage.commit([{ op: 'request.create', record: sampleRequest('main', 1) }])
    await storage.close()
    const reader = await openSqliteStorage({ filename, readOnly: true })
    cleanups.push(() => reader.close())
    expect((await reader.requests.get('request/main/1')).id).toBe('request/main/1')
    await expect(reader.requests.create(sampleRequest('main', 2))).rejects.toBeInstanceOf(StorageUnavailableError)
    const raw = new Database(filename, { readonly: true })
    expect(raw.prepare('SELECT id FROM requests').all()).toEqual([{ id: 'request/main/1' }])
    raw.close()
    await expect(openSqliteStorage({ filename: `${filename}.missing`, readOnly: true })).rejects.toBeInstanceOf(StorageUnavailableError)
    await expect(openSqliteStorage({ filename: ':memory:', readOnly: true })).rejects.toBeInstanceOf(InvalidInputError)
  })

  it('rejects bad options with InvalidInputError', async () => {
    await expect(openSqliteStorage({ filename: '' })).rejects.toBeInstanceOf(InvalidInputError)
    await expect(openSqliteStorage({ filename: ':memory:', synchronous: 'OFF' as 'FULL' })).rejects.toBeInstanceOf(InvalidInputError)
    await expect(openSqliteStorage({ filename: ':memory:', busyTimeoutMs: -1 })).rejects.toBeInstanceOf(InvalidInputError)
    await expect(openSqliteStorage({ filename: ':memory:', busyTimeoutMs: 2 ** 31 })).rejects.toBeInstanceOf(InvalidInputError)
  })

  it('refuses malformed arguments of the facade with InvalidInputError, not a TypeError', async () => {
    const { storage } = await openFile()
    const row = { kind: 'event' as const, nodeId: 'n', seq: 0, id: 0, at: 1, payload: {} }
    await expect(storage.events.append(row as never)).rejects.toBeInstanceOf(InvalidInputError)
    const key = { queue: 'main', requestId: 'request/main/1', kind: 'verdict' as const, hook: 'h' }
    await expect(storage.outbox.settle(key, undefined as never)).rejects.toBeInstanceOf(InvalidInputError)
  })

  it('opens :memory: databases, each private', async () => {
    const one = await openSqliteStorage({ filename: ':memory:' })
    const two = await openSqliteStorage({ filename: ':memory:' })
    await one.requests.create(sampleRequest('main', 1))
    await expect(two.requests.get('request/main/1')).rejects.toMatchObject({ code: 'NOT_FOUND' })
    await one.close()
    await two.close()
  })

  it('translates driver errors: no SQLITE_* code reaches a caller', () => {
    const cases: [string, new (...args: never[]) => Error][] = [
      ['SQLITE_CONSTRAINT_PRIMARYKEY', AlreadyExistsError],
      ['SQLITE_CONSTRAINT_UNIQUE', AlreadyExistsError],
      ['SQLITE_CONSTRAINT_NOTNULL', StorageFailedError],
      ['SQLITE_BUSY', StorageUnavailableError],
      ['SQLITE_BUSY_SNAPSHOT', StorageUnavailableError],
      ['SQLITE_LOCKED', StorageUnavailableError],
      ['SQLITE_IOERR_WRITE', StorageUnavailableError],
      ['SQLITE_FULL', StorageUnavailableError],
      ['SQLITE_CORRUPT', StorageFailedError],
    ]
    for (const [code, type] of cases) {
      const driver = Object.assign(new Error(`driver says ${code}`), { code })
      const translated = translateSqliteError(driver, 'x.db')
      expect(translated, code).toBeInstanceOf(type)
      expect(translated.cause).toBe(driver)
      expect(translated.code).not.toMatch(/^SQLITE/)
    }
    expect(translateSqliteError(new TypeError('The database connection is not open'), 'x.db')).toBeInstanceOf(StorageClosedError)
  })
})
