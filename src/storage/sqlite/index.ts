/**
 * `stovepipe/storage/sqlite`: the embedded default backend (better-sqlite3).
 * @module
 */
export { openSqliteStorage } from './sqlite-storage.js'
export type { SqliteStorageOptions } from './sqlite-storage.js'
