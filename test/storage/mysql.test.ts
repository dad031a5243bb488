/** MySQL-specific behaviour: failures write nothing, errors are translated, concurrency. */
import mysql from 'mysql2/promise'
import { afterEach, expect, it } from 'vitest'
import {
  AlreadyExistsError,
  InvalidInputError,
  StorageClosedError,
  StorageFailedError,
  StorageUnavailableError,
  type Storage,
} from '../../src/storage/index.js'
import { openMysqlStorage } from '../../src/storage/mysql/index.js'
import { describeTarget, translateMysqlError } from '../../src/storage/mysql/mysql-storage.js'
import { sampleFact, sampleRequest } from '../../src/testing/index.js'
import { createMysqlDatabase, describeMysql } from '../support/mysql.js'

const cleanups: (() => Promise<void> | void)[] = []
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

async function openFresh(options: { maxCommitAttempts?: number } = {}): Promise<{ storage: Storage; url: string }> {
  const { url, drop } = await createMysqlDatabase()
  cleanups.push(drop)
  const storage = await openMysqlStorage({ uri: url, connectionLimit: 4, ...options })
  cleanups.push(() => storage.close())
  return { storage, url }
}

it('gives StorageUnavailableError naming host and port when MySQL is unreachable', async () => {
  const error = await openMysqlStorage({ uri: 'mysql://root@127.0.0.1:1/test', connectTimeout: 2_000 }).catch((e: unknown) => e)
  expect(error).toBeInstanceOf(StorageUnavailableError)
  expect((error as Error).message).toContain('127.0.0.1:1')
  expect((error as StorageUnavailableError).retryable).toBe(true)
})

it('rejects a malformed URI and bad options with InvalidInputError', async () => {
  await expect(openMysqlStorage({ uri: 'not a uri' })).rejects.toBeInstanceOf(InvalidInputError)
  await expect(openMysqlStorage({ uri: 'mysql://h/db', maxCommitAttempts: 0 })).rejects.toBeInstanceOf(InvalidInputError)
})

it('refuses a URI with a malformed escape with InvalidInputError, not a URIError', async () => {
  await expect(openMysqlStorage({ uri: 'mysql://root:p%zz@127.0.0.1:1/test', connectTimeout: 1_000 })).rejects.toBeInstanceOf(
    InvalidInputError,
  )
})

it('describes targets for messages', () => {
  expect(describeTarget({ uri: 'mysql://u:p@db.example:3307/x' })).toBe('db.example:3307')
  expect(describeTarget({ uri: 'mysql://db.example/x' })).toBe('db.example:3306')
  expect(describeTarget({ host: '10.0.0.5', port: 4000 })).toBe('10.0.0.5:4000')
  expect(describeTarget({ socketPath: '/run/mysqld.sock' })).toBe('/run/mysqld.sock')
})

it('translates driver errors: no ER_* code reaches a caller', () => {
  const cases: [string, new (...args: never[]) => Error][] = [
    ['ER_DUP_ENTRY', AlreadyExistsError],
    ['ECONNREFUSED', StorageUnavailableError],
    ['PROTOCOL_CONNECTION_LOST', StorageUnavailableError],
    ['ER_LOCK_DEADLOCK', StorageUnavailableError],
    ['ER_LOCK_WAIT_TIMEOUT', StorageUnavailableError],
    ['ER_ACCESS_DENIED_ERROR', StorageFailedError],
    ['ER_PARSE_ERROR', StorageFailedError],
  ]
  for (const [code, type] of cases) {
    const driver = Object.assign(new Error(`driver says ${code}`), { code })
    const translated = translateMysqlError(driver, 'h:3306')
    expect(translated, code).toBeInstanceOf(type)
    expect(translated.cause).toBe(driver)
    expect(translated.message).toContain('h:3306')
  }
  expect(translateMysqlError(new Error('Pool is closed.'), 'h:3306')).toBeInstanceOf(StorageClosedError)
})

describeMysql('mysql storage', () => {
  it('rejects a whole batch when the database fails midway, and writes nothing', async () => {
    const { storage, url } = await openFresh()
    const side = await mysql.createConnection({ uri: url })
    await side.query(`CREATE TRIGGER poison BEFORE INSERT ON facts FOR EACH ROW
      IF NEW.uri = 'fake://poison' THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'poisoned fact'; END IF`)
    await side.end()
    const error = await storage
      .commit([
        { op: 'request.create', record: sampleRequest('main', 1) },
        { op: 'counter.next', queue: 'main' },
        { op: 'fact.put', fact: sampleFact('main', 1, { uri: 'fake://poison' }) },
      ])
      .catch((e: unknown) => e)
    expect(error).toBeInstanceOf(StorageFailedError)
    expect((error as Error).message).toContain('poisoned fact')
    await expect(storage.requests.get('request/main/1')).rejects.toMatchObject({ code: 'NOT_FOUND' })
    expect(await storage.counters.next('main')).toBe(1)
  })

  it('a batch that keeps meeting duplicate keys (concurrent inserts) fails with StorageUnavailableError, not AlreadyExistsError', async () => {
    const { storage, url } = await openFresh({ maxCommitAttempts: 2 })
    const side = await mysql.createConnection({ uri: url })
    // As if another writer inserted the same key between this batch's read and its insert, every time.
    await side.query(`CREATE TRIGGER collide BEFORE INSERT ON facts FOR EACH ROW
      SIGNAL SQLSTATE '23000' SET MYSQL_ERRNO = 1062, MESSAGE_TEXT = 'Duplicate entry for key PRIMARY'`)
    await side.end()
    const error = await storage.commit([{ op: 'fact.put', fact: sampleFact('main', 1) }]).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(StorageUnavailableError)
    expect((error as Error).message).toContain('duplicate')
    await expect(storage.facts.get('main', sampleFact('main', 1).uri)).rejects.toMatchObject({ code: 'NOT_FOUND' })
  })

  it('keeps numbers numbers (and CAS working) whatever number options the caller passes the pool', async () => {
    const { url, drop } = await createMysqlDatabase()
    cleanups.push(drop)
    const storage = await openMysqlStorage({ uri: url, supportBigNumbers: true, bigNumberStrings: true })
    cleanups.push(() => storage.close())
    await storage.requests.create(sampleRequest('main', 1))
    expect((await storage.requests.get('request/main/1')).version).toBe(0)
    expect(await storage.requests.update(sampleRequest('main', 1, { state: 'processing' }), 0, 1)).toMatchObject({ version: 1 })
  })

  it('reports a lock held too long as StorageUnavailableError (retryable), writing nothing', async () => {
    const { storage, url } = await openFresh({ maxCommitAttempts: 1 })
    await storage.requests.create(sampleRequest('main', 1))
    const holder = await mysql.createConnection({ uri: url })
    await holder.query('SET GLOBAL innodb_lock_wait_timeout = 1').catch(() => undefined)
    await holder.beginTransaction()
    await holder.query("SELECT * FROM requests WHERE id = 'request/main/1' FOR UPDATE")
    const waiter = await openMysqlStorage({ uri: url, maxCommitAttempts: 1 })
    cleanups.push(() => waiter.close())
    const error = await waiter
      .commit([
        { op: 'counter.next', queue: 'main' },
        { op: 'request.update', record: sampleRequest('main', 1, { state: 'processing' }), oldVersion: 0, newVersion: 1 },
      ])
      .catch((e: unknown) => e)
    await holder.rollback()
    await holder.query('SET GLOBAL innodb_lock_wait_timeout = 50').catch(() => undefined)
    await holder.end()
    expect(error).toBeInstanceOf(StorageUnavailableError)
    expect((await storage.requests.get('request/main/1')).state).toBe('accepted')
    expect(await storage.counters.next('main')).toBe(1)
  }, 90_000)

  it('a call in flight when the storage is closed fails with StorageClosedError', async () => {
    const { url } = await createMysqlDatabase().then((db) => {
      cleanups.push(db.drop)
      return db
    })
    const storage = await openMysqlStorage({ uri: url })
    await storage.counters.next('main')
    // Another connection holds the counter row: the next call waits on its lock.
    const holder = await mysql.createConnection({ uri: url })
    await holder.beginTransaction()
    await holder.query('SELECT * FROM counters FOR UPDATE')
    const pending = storage.counters.next('main').catch((e: unknown) => e)
    await new Promise((done) => setTimeout(done, 200))
    const closing = storage.close()
    await new Promise((done) => setTimeout(done, 200))
    await holder.rollback()
    await holder.end()
    await closing
    expect(await pending).toBeInstanceOf(StorageClosedError)
  }, 30_000)

  it('opens read-only: reads, refuses every write with StorageUnavailableError (as SQLite does), changes nothing', async () => {
    const { storage, url } = await openFresh()
    await storage.commit([{ op: 'request.create', record: sampleRequest('main', 1) }])
    const reader = await openMysqlStorage({ uri: url, connectionLimit: 2, readOnly: true })
    cleanups.push(() => reader.close())
    expect((await reader.requests.get('request/main/1')).id).toBe('request/main/1')
    const refused = await reader.requests.create(sampleRequest('main', 2)).catch((e: unknown) => e)
    expect(refused).toBeInstanceOf(StorageUnavailableError)
    expect((refused as Error).message).toContain('cannot be written')
    const [result] = await reader.commit([{ op: 'counter.next', queue: 'main' }]).catch((e: unknown) => [e])
    expect(result).toBeInstanceOf(StorageUnavailableError)
    expect((await storage.requests.listByQueue('main')).items.map((r) => r.id)).toEqual(['request/main/1'])
    expect(await storage.counters.next('main')).toBe(1)
  })

  it('keeps two pools on one database consistent: every id created once, counters never repeat', async () => {
    const { storage: a, url } = await openFresh()
    const b = await openMysqlStorage({ uri: url, connectionLimit: 4 })
    cleanups.push(() => b.close())
    const batches = Array.from({ length: 40 }, (_, i) =>
      (i % 2 === 0 ? a : b).commit([
        { op: 'request.create', record: sampleRequest('main', (i % 10) + 1) },
        { op: 'counter.next', queue: 'main' },
        { op: 'fact.put', fact: sampleFact('main', (i % 5) + 1, { degree: i % 2 }) },
      ]),
    )
    const results = await Promise.all(batches)
    expect(results.filter(([create]) => create?.status === 'ok')).toHaveLength(10)
    expect(results.filter((r) => r[2]?.status === 'ok')).toHaveLength(5)
    const counters = results.map(([, counter]) => (counter?.status === 'ok' ? (counter.value ?? -1) : -1)).sort((x, y) => x - y)
    expect(counters).toEqual(Array.from({ length: 40 }, (_, i) => i + 1))
  }, 60_000)
})
