/**
 * `npm run bench:storage`: 1000-op `commit` batches against the raw driver doing the same
 * inserts, side by side in one run, on SQLite (file, WAL, synchronous NORMAL) and on MySQL.
 *
 * Each round writes one batch with ours and one with the baseline, alternating which goes
 * first; the figure is the median over rounds. Ends with one `target` line per goal.
 *
 * Environment: STOVEPIPE_MYSQL_URL (default mysql://root@127.0.0.1:3306/test),
 * BENCH_ROUNDS (default 30).
 */
import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { cpus, tmpdir } from 'node:os'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import mysql from 'mysql2/promise'
import type { RequestRecord, Storage, WriteOp } from '../src/storage/index.js'
import { openMysqlStorage } from '../src/storage/mysql/index.js'
import { openSqliteStorage } from '../src/storage/sqlite/index.js'
import { SQLITE_MIGRATIONS } from '../src/storage/sqlite/migrations.js'
import { median, printTargets, type Target } from './support.js'

const BATCH = 1000
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 30)
const MYSQL_URL = process.env.STOVEPIPE_MYSQL_URL ?? 'mysql://root@127.0.0.1:3306/test'

function rows(queue: string, from: number): RequestRecord[] {
  return Array.from({ length: BATCH }, (_, i) => {
    const n = from + i
    return {
      id: `request/${queue}/${n}`,
      queue,
      uri: `git+file:///srv/repo#${n.toString(16).padStart(40, '0')}`,
      state: 'accepted',
      version: 0,
      createdAt: 1_700_000_000_000 + n,
      updatedAt: 1_700_000_000_000 + n,
      data: { value: 'accepted', context: { attempt: 0, strategy: null } },
    }
  })
}

const rawValues = (r: RequestRecord, n: number): unknown[] => [
  r.id,
  r.queue,
  n,
  r.uri,
  r.state,
  r.version,
  r.createdAt,
  r.updatedAt,
  JSON.stringify(r.data),
]

/** Runs `ours` and `baseline` alternately; returns ops/s medians. */
async function sideBySide(
  ours: (round: number) => Promise<void>,
  baseline: (round: number) => Promise<void>,
): Promise<{ ours: number; base: number }> {
  const oursRates: number[] = []
  const baseRates: number[] = []
  const time = async (fn: () => Promise<void>): Promise<number> => {
    const start = process.hrtime.bigint()
    await fn()
    return BATCH / (Number(process.hrtime.bigint() - start) / 1e9)
  }
  for (let round = -3; round < ROUNDS; round++) {
    const pair =
      round % 2 === 0
        ? [await time(() => ours(round)), await time(() => baseline(round))]
        : [await time(() => baseline(round)), await time(() => ours(round))].reverse()
    if (round >= 0) {
      oursRates.push(pair[0] ?? 0)
      baseRates.push(pair[1] ?? 0)
    }
  }
  return { ours: median(oursRates), base: median(baseRates) }
}

async function benchSqlite(): Promise<Target> {
  const dir = mkdtempSync(join(tmpdir(), 'stovepipe-bench-'))
  try {
    const storage = await openSqliteStorage({ filename: join(dir, 'ours.db') })
    const raw = new Database(join(dir, 'raw.db'))
    raw.pragma('journal_mode = WAL')
    raw.pragma('synchronous = NORMAL')
    // The same schema as ours, so the ratio measures our code, not a different table.
    for (const migration of SQLITE_MIGRATIONS) raw.exec(migration.sql)
    const insert = raw.prepare(
      'INSERT INTO requests (id, queue, n, uri, state, version, created_at, updated_at, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
    )
    const insertAll = raw.transaction((batch: RequestRecord[], from: number) => {
      batch.forEach((r, i) => insert.run(...rawValues(r, from + i)))
    })
    const from = (round: number): number => (round + 3) * BATCH + 1
    const result = await sideBySide(
      async (round) => {
        const ops: WriteOp[] = rows('main', from(round)).map((record) => ({ op: 'request.create', record }))
        await storage.commit(ops)
      },
      (round) => {
        insertAll(rows('main', from(round)), from(round))
        return Promise.resolve()
      },
    )
    await storage.close()
    raw.close()
    const ratio = result.ours / result.base
    console.log(
      `sqlite  commit(1000 creates): ours ${Math.round(result.ours)} ops/s, raw better-sqlite3 ${Math.round(result.base)} ops/s, ratio ${ratio.toFixed(2)}`,
    )
    return { name: 'sqlite commit vs raw prepared inserts', value: ratio, goal: 0.7 }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

async function benchMysql(): Promise<Target | undefined> {
  const database = `sp_bench_${randomBytes(4).toString('hex')}`
  let admin: mysql.Connection
  try {
    admin = await mysql.createConnection({ uri: MYSQL_URL, connectTimeout: 3_000 })
  } catch (error) {
    console.log(`mysql   skipped: ${MYSQL_URL} unreachable (${error instanceof Error ? error.message : String(error)})`)
    return undefined
  }
  await admin.query(`CREATE DATABASE \`${database}\``)
  const url = new URL(MYSQL_URL)
  url.pathname = `/${database}`
  try {
    const storage: Storage = await openMysqlStorage({ uri: url.toString(), connectionLimit: 2 })
    const raw = await mysql.createConnection({ uri: url.toString() })
    await raw.query('CREATE TABLE raw_requests LIKE requests')
    const from = (round: number): number => (round + 3) * BATCH + 1
    const result = await sideBySide(
      async (round) => {
        await storage.commit(rows('main', from(round)).map((record) => ({ op: 'request.create', record })))
      },
      async (round) => {
        await raw.beginTransaction()
        await raw.query('INSERT INTO raw_requests (id, queue, n, uri, state, version, created_at, updated_at, data) VALUES ?', [
          rows('main', from(round)).map((r, i) => rawValues(r, from(round) + i)),
        ])
        await raw.commit()
      },
    )
    await storage.close()
    await raw.end()
    const ratio = result.ours / result.base
    console.log(
      `mysql   commit(1000 creates): ours ${Math.round(result.ours)} ops/s, raw mysql2 multi-row insert ${Math.round(result.base)} ops/s, ratio ${ratio.toFixed(2)}`,
    )
    return { name: 'mysql commit vs raw multi-row insert', value: ratio, goal: 0.7 }
  } finally {
    await admin.query(`DROP DATABASE IF EXISTS \`${database}\``)
    await admin.end()
  }
}

console.log(
  `bench:storage — ${BATCH}-op batches, ${ROUNDS} rounds, median; node ${process.version}, ${cpus().length} cores (${cpus()[0]?.model ?? 'unknown cpu'})`,
)
const targets: Target[] = [await benchSqlite()]
const mysqlTarget = await benchMysql()
if (mysqlTarget !== undefined) targets.push(mysqlTarget)
else targets.push({ name: 'mysql commit vs raw multi-row insert', value: Number.NaN, goal: 0.7 })
printTargets(targets)
