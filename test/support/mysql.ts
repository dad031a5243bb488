/**
 * MySQL for tests: where it is, whether it answers, and a fresh database per fixture so
 * runs never see each other's rows.
 *
 * `STOVEPIPE_MYSQL_URL` points the suites at a server (default
 * mysql://root@127.0.0.1:3306/test). Under `CI=true` an unreachable server fails the
 * suite; elsewhere the suite is skipped with one line saying why.
 */
import { randomBytes } from 'node:crypto'
import mysql from 'mysql2/promise'
import { describe, it } from 'vitest'
import { openMysqlStorage } from '../../src/storage/mysql/index.js'
import type { Storage } from '../../src/storage/index.js'
import type { StorageFixture } from '../../src/testing/index.js'

export const MYSQL_URL = process.env.STOVEPIPE_MYSQL_URL ?? 'mysql://root@127.0.0.1:3306/test'
const IN_CI = process.env.CI === 'true'

async function probe(): Promise<string | undefined> {
  try {
    const connection = await mysql.createConnection({ uri: MYSQL_URL, connectTimeout: 3_000 })
    await connection.query('SELECT 1')
    await connection.end()
    return undefined
  } catch (error) {
    return error instanceof Error ? error.message : String(error)
  }
}

/** Why MySQL cannot be used, or undefined when it answers. */
export const mysqlUnavailable = await probe()

/**
 * `describe` for suites that need MySQL: runs them when the server answers, fails loudly
 * under CI when it does not, and skips them with one line otherwise.
 */
export function describeMysql(name: string, body: () => void): void {
  if (mysqlUnavailable === undefined) {
    describe(name, body)
  } else if (IN_CI) {
    describe(name, () => {
      it('reaches MySQL (required under CI=true)', () => {
        throw new Error(`MySQL at ${MYSQL_URL} is not reachable: ${mysqlUnavailable}. Start it or set STOVEPIPE_MYSQL_URL.`)
      })
    })
  } else {
    console.warn(
      `[stovepipe] skipping MySQL suite "${name}": ${MYSQL_URL} unreachable (${mysqlUnavailable}); set STOVEPIPE_MYSQL_URL to run it`,
    )
    describe.skipIf(true)(name, body)
  }
}

/** The URL of `database` on the test server. */
export function mysqlUrlFor(database: string): string {
  const url = new URL(MYSQL_URL)
  url.pathname = `/${database}`
  return url.toString()
}

/** Creates an empty database with a unique name; returns its URL and a function dropping it. */
export async function createMysqlDatabase(): Promise<{ url: string; drop: () => Promise<void> }> {
  const database = `sp_${process.pid}_${randomBytes(6).toString('hex')}`
  const admin = await mysql.createConnection({ uri: MYSQL_URL })
  await admin.query(`CREATE DATABASE \`${database}\` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin`)
  await admin.end()
  return {
    url: mysqlUrlFor(database),
    drop: async () => {
      const connection = await mysql.createConnection({ uri: MYSQL_URL })
      await connection.query(`DROP DATABASE IF EXISTS \`${database}\``)
      await connection.end()
    },
  }
}

/** A contract fixture on a fresh MySQL database, dropped on destroy. */
export async function openMysqlFixture(): Promise<StorageFixture> {
  const { url, drop } = await createMysqlDatabase()
  const handles: Storage[] = []
  const open = async (): Promise<Storage> => {
    const storage = await openMysqlStorage({ uri: url, connectionLimit: 4 })
    handles.push(storage)
    return storage
  }
  const storage = await open()
  return {
    storage,
    reopen: async () => {
      await Promise.all(handles.map((h) => h.close()))
      return open()
    },
    destroy: async () => {
      await Promise.all(handles.map((h) => h.close()))
      await drop()
    },
  }
}
