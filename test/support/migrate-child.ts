/**
 * Child process for the concurrent-migration test: waits for a shared start time, opens
 * the storage (which migrates), prints the versions it applied as JSON, and exits.
 * Usage: migrate-child.ts <sqlite|mysql> <filename|url> <startAtEpochMs>
 */
import { openMysqlStorage } from '../../src/storage/mysql/index.js'
import { openSqliteStorage } from '../../src/storage/sqlite/index.js'

const [kind, target, startAt] = process.argv.slice(2)
if (kind === undefined || target === undefined || startAt === undefined) throw new Error('usage: migrate-child <kind> <target> <startAt>')
const wait = Number(startAt) - Date.now()
if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait))
const storage =
  kind === 'sqlite'
    ? await openSqliteStorage({ filename: target, migrate: false })
    : await openMysqlStorage({ uri: target, migrate: false })
const applied = await storage.migrate()
await storage.close()
process.stdout.write(JSON.stringify({ applied }))
