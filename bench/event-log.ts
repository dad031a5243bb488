/**
 * `npm run bench:event-log`: the event log and the group-commit writer on SQLite (file, WAL,
 * synchronous NORMAL), each side by side with raw better-sqlite3 doing the same inserts, in
 * one run:
 *
 * 1. throughput: 50 000 transitions through `createEventLog` + `createWriter` (real clock,
 *    linger 1 ms) until durable, against the same rows inserted raw in 1000-row transactions
 *    with a prepared statement; alternating rounds after a warm-up, medians;
 * 2. latency: 10 000 producers each calling `writer.write([op])` at once; p50 and p99 from
 *    call to resolve, against the time of one raw transaction holding all 10 000 inserts;
 * 3. gaps: storage latency injected with `createFaultyStorage`, bursts sent faster than the
 *    storage absorbs into a small event log; how much is dropped into gap sentinels, and a
 *    check from storage that persisted event ids and gap ranges partition `[0, n)` exactly.
 *
 * Ends with one `target` line per goal. Environment: BENCH_EVENT_LOG_ROUNDS (default 5).
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { cpus, tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as delay } from 'node:timers/promises'
import Database from 'better-sqlite3'
import { createEventLog, type TransitionEvent } from '../src/actors/event-log.js'
import { createWriter } from '../src/actors/writer.js'
import type { RequestRecord, Storage, WriteOp } from '../src/storage/index.js'
import { openSqliteStorage } from '../src/storage/sqlite/index.js'
import { SQLITE_MIGRATIONS } from '../src/storage/sqlite/migrations.js'
import { createFaultyStorage } from '../src/testing/faulty-storage.js'
import { median, percentile, printTargets, type Target } from './support.js'

const ROUNDS = Number(process.env.BENCH_EVENT_LOG_ROUNDS ?? 5)
const EVENTS = 50_000
/** Rows per event-log batch and per writer commit; raw transactions hold as many. */
const BATCH = 1000
const PRODUCERS = 10_000
const BURSTS = 20
const BURST_SIZE = 2000
const BURST_PAUSE_MS = 5
const GAP_CAPACITY = 1000
const LATENCIES: readonly (readonly [number, number])[] = [
  [0, 0],
  [3, 7],
  [15, 25],
]
const BASE_AT = 1_700_000_000_000
const WRITER_OPTIONS = { lingerMs: 1, maxBatch: BATCH, capacity: 20_000 } as const

function transition(k: number): TransitionEvent {
  return { at: BASE_AT + k, queue: 'main', requestId: `request/main/${k + 1}`, from: 'accepted', to: 'processing', event: 'START' }
}

function request(n: number): RequestRecord {
  return {
    id: `request/main/${n}`,
    queue: 'main',
    uri: `git+file:///srv/repo#${n.toString(16).padStart(40, '0')}`,
    state: 'accepted',
    version: 0,
    createdAt: BASE_AT + n,
    updatedAt: BASE_AT + n,
    data: { value: 'accepted', context: { attempt: 0, strategy: null } },
  }
}

/** A raw better-sqlite3 database with our pragmas and our schema. */
function openRaw(filename: string): Database.Database {
  const raw = new Database(filename)
  raw.pragma('journal_mode = WAL')
  raw.pragma('synchronous = NORMAL')
  // The same schema as ours, so the ratio measures our code, not a different table.
  for (const migration of SQLITE_MIGRATIONS) raw.exec(migration.sql)
  return raw
}

const ms = (start: number): number => performance.now() - start

/** Runs `ours` and `baseline` (each returning its elapsed ms) alternately after one warm-up round. */
async function sideBySide(
  ours: (round: number) => Promise<number>,
  baseline: (round: number) => Promise<number>,
): Promise<{ ours: number[]; base: number[] }> {
  const result = { ours: [] as number[], base: [] as number[] }
  for (let round = -1; round < ROUNDS; round++) {
    let o: number
    let b: number
    if (round % 2 === 0) {
      o = await ours(round)
      b = await baseline(round)
    } else {
      b = await baseline(round)
      o = await ours(round)
    }
    if (round >= 0) {
      result.ours.push(o)
      result.base.push(b)
    }
  }
  return result
}

/** 1. Events/s into SQLite through the event log and the writer, against raw batched inserts. */
async function benchThroughput(dir: string): Promise<Target> {
  const storage = await openSqliteStorage({ filename: join(dir, 'events.db') })
  const writer = createWriter({ storage, ...WRITER_OPTIONS })
  const raw = openRaw(join(dir, 'events-raw.db'))
  const insert = raw.prepare('INSERT INTO events (node_id, seq, kind, first_id, last_id, at, payload) VALUES (?, ?, ?, ?, ?, ?, ?)')
  const insertBatch = raw.transaction((nodeId: string, events: readonly TransitionEvent[], from: number) => {
    events.forEach(({ at, ...payload }, i) => insert.run(nodeId, from + i, 'event', from + i, from + i, at, JSON.stringify(payload)))
  })
  const events = Array.from({ length: EVENTS }, (_, k) => transition(k))
  const problems: string[] = []

  const result = await sideBySide(
    async (round) => {
      const log = await createEventLog({ storage, writer, nodeId: `ours-${round + 1}`, capacity: 100_000, batchSize: BATCH })
      const start = performance.now()
      for (const event of events) log.send(event)
      await log.flush()
      const elapsed = ms(start)
      const stats = log.stats()
      await log.stop()
      if (stats.dropped !== 0 || stats.gapRows !== 0 || stats.persistedRows !== EVENTS) {
        problems.push(`round ${round}: dropped ${stats.dropped}, gap rows ${stats.gapRows}, persisted ${stats.persistedRows}/${EVENTS}`)
      }
      return elapsed
    },
    (round) => {
      const nodeId = `raw-${round + 1}`
      const start = performance.now()
      for (let from = 0; from < EVENTS; from += BATCH) insertBatch(nodeId, events.slice(from, from + BATCH), from)
      return Promise.resolve(ms(start))
    },
  )
  const report = await writer.stop()
  await storage.close()
  raw.close()

  const ours = EVENTS / (median(result.ours) / 1000)
  const base = EVENTS / (median(result.base) / 1000)
  const ratio = ours / base
  console.log(
    `throughput  ${EVENTS} events, batch ${BATCH}: event log ${Math.round(ours)} events/s, raw better-sqlite3 ${Math.round(base)} events/s, ratio ${ratio.toFixed(2)}`,
  )
  console.log(
    `            per round ms: ours [${result.ours.map((v) => v.toFixed(0)).join(', ')}], raw [${result.base.map((v) => v.toFixed(0)).join(', ')}]`,
  )
  if (problems.length === 0) console.log(`            stats().dropped === 0 in every round (writer dead letters: ${report.deadLettered})`)
  else for (const problem of problems) console.log(`            NOT ALL DURABLE ${problem}`)
  return { name: 'event log vs raw batched inserts', value: problems.length === 0 ? ratio : Number.NaN, goal: 0.5 }
}

/** 2. Latency seen by 10 000 concurrent one-op producers, against one raw transaction of the same ops. */
async function benchLatency(dir: string): Promise<Target> {
  const storage = await openSqliteStorage({ filename: join(dir, 'writer.db') })
  const writer = createWriter({ storage, ...WRITER_OPTIONS })
  const raw = openRaw(join(dir, 'writer-raw.db'))
  const insert = raw.prepare(
    'INSERT INTO requests (id, queue, n, uri, state, version, created_at, updated_at, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
  )
  const insertAll = raw.transaction((records: readonly RequestRecord[], from: number) => {
    records.forEach((r, i) =>
      insert.run(r.id, r.queue, from + i, r.uri, r.state, r.version, r.createdAt, r.updatedAt, JSON.stringify(r.data)),
    )
  })
  const records = (round: number): RequestRecord[] => Array.from({ length: PRODUCERS }, (_, i) => request((round + 1) * PRODUCERS + i + 1))
  const p50s: number[] = []
  const p99s: number[] = []
  let notOk = 0
  const batchesBefore = writer.stats().batches

  const result = await sideBySide(
    async (round) => {
      const ops: WriteOp[] = records(round).map((record) => ({ op: 'request.create', record }))
      const latencies: number[] = []
      const start = performance.now()
      await Promise.all(
        ops.map((op) => {
          const called = performance.now()
          return writer.write([op]).then((results) => {
            latencies.push(performance.now() - called)
            if (results[0]?.status !== 'ok') notOk++
          })
        }),
      )
      const elapsed = ms(start)
      if (round >= 0) {
        p50s.push(percentile(latencies, 50))
        p99s.push(percentile(latencies, 99))
      }
      return elapsed
    },
    (round) => {
      const batch = records(round)
      const from = (round + 1) * PRODUCERS + 1
      const start = performance.now()
      insertAll(batch, from)
      return Promise.resolve(ms(start))
    },
  )
  const batches = writer.stats().batches - batchesBefore
  await writer.stop()
  await storage.close()
  raw.close()

  const p50 = median(p50s)
  const p99 = median(p99s)
  const rawTotal = median(result.base)
  const ratio = p99 / rawTotal
  console.log(
    `latency     ${PRODUCERS} concurrent write([op]), linger 1 ms: p50 ${p50.toFixed(1)} ms, p99 ${p99.toFixed(1)} ms, all resolved ${median(result.ours).toFixed(1)} ms; one raw transaction of the same ops ${rawTotal.toFixed(1)} ms; p99/raw ${ratio.toFixed(2)}`,
  )
  console.log(
    `            ${(((ROUNDS + 1) * PRODUCERS) / batches).toFixed(0)} ops per commit on average over ${batches} commits${notOk > 0 ? `; ${notOk} WRITES NOT OK` : ''}`,
  )
  return {
    name: 'writer p99 latency vs one raw transaction of the same ops',
    value: notOk === 0 ? ratio : Number.NaN,
    goal: 3,
    atMost: true,
    unit: 'x',
  }
}

/** Checks from storage that the node's event ids and gap ranges partition [0, n) exactly, seqs contiguous from 0. */
async function checkPartition(storage: Storage, nodeId: string, n: number): Promise<{ ok: boolean; eventRows: number; gapIds: number }> {
  const ranges: [number, number][] = []
  let seqsOk = true
  let eventRows = 0
  let gapIds = 0
  for (;;) {
    const page = await storage.events.read({ nodeId, fromSeq: ranges.length, limit: 10_000 })
    for (const row of page) {
      if (row.seq !== ranges.length) seqsOk = false
      if (row.kind === 'event') {
        ranges.push([row.id, row.id])
        eventRows++
      } else {
        ranges.push([row.fromId, row.toId])
        gapIds += row.toId - row.fromId + 1
      }
    }
    if (page.length < 10_000) break
  }
  ranges.sort((a, b) => a[0] - b[0])
  let next = 0
  for (const [first, last] of ranges) {
    if (first !== next || last < first) return { ok: false, eventRows, gapIds }
    next = last + 1
  }
  return { ok: seqsOk && next === n, eventRows, gapIds }
}

/** 3. How much overflows into gaps when storage lags, and whether every id is accounted for. */
async function benchGaps(dir: string): Promise<Target> {
  const storage = await openSqliteStorage({ filename: join(dir, 'gaps.db') })
  let allOk = true
  try {
    for (const [low, high] of LATENCIES) {
      const faulty = createFaultyStorage(storage, { latencyMs: [low, high], seed: 7 })
      const writer = createWriter({ storage: faulty, ...WRITER_OPTIONS })
      const nodeId = `gaps-${low}-${high}`
      const log = await createEventLog({ storage: faulty, writer, nodeId, capacity: GAP_CAPACITY })
      const start = performance.now()
      let k = 0
      for (let burst = 0; burst < BURSTS; burst++) {
        for (let i = 0; i < BURST_SIZE; i++) log.send(transition(k++))
        await delay(BURST_PAUSE_MS)
      }
      await log.flush()
      const elapsed = ms(start)
      const stats = log.stats()
      await log.stop()
      await writer.stop()
      const check = await checkPartition(storage, nodeId, stats.nextId)
      const consistent = check.ok && stats.nextId === k && check.gapIds === stats.dropped && check.eventRows === k - stats.dropped
      allOk &&= consistent
      console.log(
        `gaps        latency ${low}-${high} ms, capacity ${GAP_CAPACITY}, ${BURSTS}x${BURST_SIZE} every ${BURST_PAUSE_MS} ms: sent ${stats.sent}, dropped ${stats.dropped} (${((100 * stats.dropped) / stats.sent).toFixed(1)}%), gap rows ${stats.gapRows}, event rows ${check.eventRows}, durable after ${elapsed.toFixed(0)} ms, ${consistent ? 'partition ok' : 'PARTITION BROKEN'}`,
      )
    }
  } finally {
    await storage.close()
  }
  return { name: 'gap accounting (ids ∪ gaps partition [0,n)) at every latency', value: allOk ? 1 : 0, goal: 1 }
}

console.log(
  `bench:event-log — SQLite file, WAL, synchronous NORMAL; ${ROUNDS} rounds after 1 warm-up, median; node ${process.version}, ${cpus().length} cores (${cpus()[0]?.model ?? 'unknown cpu'})`,
)
const dir = mkdtempSync(join(tmpdir(), 'stovepipe-bench-'))
try {
  const targets: Target[] = [await benchThroughput(dir), await benchLatency(dir), await benchGaps(dir)]
  printTargets(targets)
} finally {
  rmSync(dir, { recursive: true, force: true })
}
