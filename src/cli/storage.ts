/**
 * Opening the state a command works on: the embedded SQLite file (default `./stovepipe.db`)
 * or a shared MySQL database. mysql2 is loaded only when `--mysql` is given.
 *
 * @module
 */
import { existsSync } from 'node:fs'
import { resolve } from 'node:path'
import { InvalidInputError, NotFoundError } from '../storage/errors.js'
import type { Storage } from '../storage/types.js'

/** Where the state lives. */
export interface StateLocation {
  db?: string | undefined
  mysql?: string | undefined
}

/** The default database file of `stovepipe run`, relative to the working directory. */
export const DEFAULT_DB = 'stovepipe.db'

/**
 * Opens storage. With `readOnly` (the read commands), nothing is created, migrated or
 * written: a missing SQLite file, or a file or MySQL database without Stovepipe's tables, is
 * a NotFoundError, and a schema from a newer Stovepipe an InvalidInputError.
 */
export async function openState(where: StateLocation, cwd: string, options: { readOnly?: boolean } = {}): Promise<Storage> {
  if (where.db !== undefined && where.mysql !== undefined) throw new InvalidInputError('give either --db or --mysql, not both')
  const readOnly = options.readOnly === true
  if (where.mysql !== undefined) {
    const { openMysqlStorage } = await import('../storage/mysql/index.js')
    return openMysqlStorage({ uri: where.mysql, readOnly })
  }
  const filename = resolve(cwd, where.db ?? DEFAULT_DB)
  if (readOnly && !existsSync(filename)) {
    throw new NotFoundError(`no Stovepipe database at ${filename} (start \`stovepipe run\` there, or pass --db, --mysql or --url)`)
  }
  const { openSqliteStorage } = await import('../storage/sqlite/index.js')
  return openSqliteStorage({ filename, readOnly })
}
