/**
 * Migrations: two processes opening the same database at once both succeed, and each
 * migration is applied exactly once (by one of them), under the backend's lock.
 */
import { execFile } from 'node:child_process'
import { join } from 'node:path'
import { promisify } from 'node:util'
import Database from 'better-sqlite3'
import mysql from 'mysql2/promise'
import { afterEach, describe, expect, it } from 'vitest'
import { MYSQL_MIGRATIONS } from '../../src/storage/mysql/migrations.js'
import { SQLITE_MIGRATIONS } from '../../src/storage/sqlite/migrations.js'
import { createMysqlDatabase, describeMysql } from '../support/mysql.js'
import { tempDir } from '../support/sqlite.js'

const run = promisify(execFile)
const CHILD = join(import.meta.dirname, '../support/migrate-child.ts')

async function raceTwo(kind: 'sqlite' | 'mysql', target: string): Promise<number[][]> {
  const startAt = String(Date.now() + 1_500)
  const outputs = await Promise.all(
    [1, 2].map(() => run(process.execPath, ['--import', 'tsx', CHILD, kind, target, startAt], { timeout: 60_000 })),
  )
  return outputs.map(({ stdout }) => (JSON.parse(stdout) as { applied: number[] }).applied)
}

function expectEachOnce(applied: number[][], versions: number[]): void {
  expect(applied.flat().sort((a, b) => a - b)).toEqual(versions)
}

const cleanups: (() => Promise<void> | void)[] = []
afterEach(async () => {
  for (const cleanup of cleanups.splice(0)) await cleanup()
})

describe('sqlite migrations', () => {
  it('two processes migrating one new file at once both succeed and apply each migration once', async () => {
    const { dir, remove } = tempDir()
    cleanups.push(remove)
    const filename = join(dir, 'race.db')
    const applied = await raceTwo('sqlite', filename)
    expectEachOnce(
      applied,
      SQLITE_MIGRATIONS.map((m) => m.version),
    )
    const db = new Database(filename, { readonly: true })
    const rows = db.prepare('SELECT version FROM stovepipe_migrations ORDER BY version').all()
    db.close()
    expect(rows).toEqual(SQLITE_MIGRATIONS.map((m) => ({ version: m.version })))
  }, 60_000)
})

describeMysql('mysql migrations', () => {
  it('two processes migrating one new database at once both succeed and apply each migration once', async () => {
    const { url, drop } = await createMysqlDatabase()
    cleanups.push(drop)
    const applied = await raceTwo('mysql', url)
    expectEachOnce(
      applied,
      MYSQL_MIGRATIONS.map((m) => m.version),
    )
    const connection = await mysql.createConnection({ uri: url })
    const [rows] = await connection.query('SELECT version FROM stovepipe_migrations ORDER BY version')
    await connection.end()
    expect(rows).toEqual(MYSQL_MIGRATIONS.map((m) => ({ version: m.version })))
  }, 60_000)
})
