/**
 * MySQL with NO_BACKSLASH_ESCAPES in the server's sql_mode (a supported server setting):
 * mysql2 escapes with backslashes, so the backend must take the mode off its sessions.
 * Here each new connection turns the mode on first, as a server default would.
 */
import { afterEach, expect, it, vi } from 'vitest'

vi.mock('mysql2/promise', async (importOriginal) => {
  type Pool = { pool: { on: (event: string, listener: (connection: { query: (sql: string) => void }) => void) => void } }
  const original = await importOriginal<{ default: { createPool: (options: unknown) => Pool } }>()
  const createPool = (options: unknown): Pool => {
    const pool = original.default.createPool(options)
    pool.pool.on('connection', (connection) => {
      connection.query("SET SESSION sql_mode = CONCAT(@@SESSION.sql_mode, ',NO_BACKSLASH_ESCAPES')")
    })
    return pool
  }
  return { ...original, default: { ...original.default, createPool } }
})

const { openMysqlStorage } = await import('../../src/storage/mysql/index.js')
const { createMysqlDatabase, describeMysql } = await import('../support/mysql.js')
const { sampleRequest } = await import('../../src/testing/index.js')

const cleanups: (() => Promise<void>)[] = []
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

describeMysql('mysql under sql_mode NO_BACKSLASH_ESCAPES', () => {
  it("stores backslashes and quotes exactly (a quote in user data cannot end the statement's literal)", async () => {
    const { url, drop } = await createMysqlDatabase()
    cleanups.push(drop)
    const storage = await openMysqlStorage({ uri: url, connectionLimit: 1 })
    cleanups.push(() => storage.close())
    const record = sampleRequest('main', 1, { uri: 'fake://a\\b', data: { log: "x\\y ' z" } })
    await storage.requests.create(record)
    expect(await storage.requests.get(record.id)).toEqual(record)
  })
})
