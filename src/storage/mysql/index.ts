/**
 * `stovepipe/storage/mysql`: the shared backend (mysql2, an optional peer dependency).
 * @module
 */
export { openMysqlStorage } from './mysql-storage.js'
export type { MysqlStorageOptions } from './mysql-storage.js'
