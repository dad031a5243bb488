/**
 * The writer's guarantees (DESIGN.md, Writer 1–9), each its own fast-check property, run
 * against every backend. Producers, clock ticks, faults and a final stop interleave in
 * random order; fast-check prints the seed and path of any failure for replay.
 */
import fc from 'fast-check'
import { SimulatedClock } from 'xstate'
import { expect, it } from 'vitest'
import { createWriter, type DrainReport, type Writer, type WriterResult } from '../../src/actors/writer.js'
import { StoppedError, type Storage, type WriteOp } from '../../src/storage/index.js'
import { createMemoryStorage } from '../../src/storage/memory/index.js'
import { createFaultyStorage, sampleFact, sampleRequest, type FaultyStorage, type StorageFixture } from '../../src/testing/index.js'
import { describeBackends, recordCommits, type Backend, type CommitRecord, type RecordingStorage } from '../support/backends.js'
import { driveUntil, settle, track } from '../support/drive.js'

type Step =
  | { kind: 'write'; producer: number; count: number }
  | { kind: 'tick'; ms: number }
  | { kind: 'down'; down: boolean }
  | { kind: 'failRate'; rate: number }

interface Config {
  capacity: number
  maxBatch: number
  lingerMs: number
  maxAttempts: number
  seed: number
}

const config = fc.record({
  capacity: fc.integer({ min: 3, max: 30 }),
  maxBatch: fc.integer({ min: 1, max: 8 }),
  lingerMs: fc.integer({ min: 0, max: 4 }),
  maxAttempts: fc.integer({ min: 1, max: 4 }),
  seed: fc.integer({ min: 1, max: 2 ** 30 }),
})
const PRODUCERS = 3
const writeStep = fc.record({ kind: fc.constant('write' as const), producer: fc.nat(PRODUCERS - 1), count: fc.integer({ min: 1, max: 3 }) })
const tickStep = fc.record({ kind: fc.constant('tick' as const), ms: fc.integer({ min: 1, max: 30 }) })
const faultSteps = fc.oneof(
  fc.record({ kind: fc.constant('down' as const), down: fc.boolean() }),
  fc.record({ kind: fc.constant('failRate' as const), rate: fc.constantFrom(0, 0.2, 0.5) }),
)
const calmSteps = fc.array(fc.oneof({ arbitrary: writeStep, weight: 3 }, tickStep), { minLength: 1, maxLength: 30 })
const faultySteps = fc.array(fc.oneof({ arbitrary: writeStep, weight: 3 }, { arbitrary: tickStep, weight: 2 }, faultSteps), {
  minLength: 1,
  maxLength: 30,
})

/** The k-th op of producer p: creates, CAS updates of what it created, facts; some poison. */
type OpFactory = (producer: number, k: number) => WriteOp

const mixedOps =
  (poisonEvery: number): OpFactory =>
  (p, k) => {
    const queue = `q${p}`
    const n = Math.floor(k / 3) + 1
    if (poisonEvery > 0 && k % poisonEvery === poisonEvery - 1) {
      return { op: 'fact.put', fact: sampleFact(queue, n, { uri: `fake://poison/${p}/${k}` }) }
    }
    switch (k % 3) {
      case 0:
        return { op: 'request.create', record: sampleRequest(queue, n) }
      case 1:
        return {
          op: 'request.update',
          record: sampleRequest(queue, n, { state: 'processing', updatedAt: k }),
          oldVersion: 0,
          newVersion: 1,
        }
      default:
        return { op: 'fact.put', fact: sampleFact(queue, n, { degree: (k % 2) / 2 }) }
    }
  }

/** One request per producer, then a chain of CAS updates on it: reordering shows as a mismatch. */
const chainOps: OpFactory = (p, k) => {
  const record = sampleRequest(`q${p}`, 1)
  if (k === 0) return { op: 'request.create', record }
  return { op: 'request.update', record: { ...record, state: 'processing', updatedAt: k }, oldVersion: k - 1, newVersion: k }
}

const isPoison = (op: WriteOp): boolean => op.op === 'fact.put' && op.fact.uri.startsWith('fake://poison/')

interface Written {
  /** Clock time of the write call. */
  at: number
  ops: WriteOp[]
  outcome: { readonly settled: boolean; readonly value: WriterResult[] | undefined; readonly error: unknown }
}

interface Run {
  clock: SimulatedClock
  faulty: FaultyStorage
  recorded: RecordingStorage
  writer: Writer
  written: Written[]
  /** writer.stats().pending after every step. */
  pendingSeen: number[]
  report: DrainReport
  fixture: StorageFixture
  steps: readonly Step[]
}

interface RunOptions {
  ops: OpFactory
  lostAckRate?: number
  stopDown?: boolean
  retry?: { baseDelayMs: number; maxDelayMs: number }
  /** Wait (real time) for any commit in flight to finish after each step, so linger windows are exact. */
  idleAfterEachStep?: boolean
}

async function run(backend: Backend, cfg: Config, steps: readonly Step[], options: RunOptions): Promise<Run> {
  const fixture = await backend.open()
  const clock = new SimulatedClock()
  const faulty = createFaultyStorage(fixture.storage, { seed: cfg.seed, lostAckRate: options.lostAckRate ?? 0, poison: isPoison })
  const recorded = recordCommits(faulty, () => clock.now())
  let jitter = cfg.seed
  const writer = createWriter({
    storage: recorded,
    clock,
    capacity: cfg.capacity,
    maxBatch: cfg.maxBatch,
    lingerMs: cfg.lingerMs,
    retry: { maxAttempts: cfg.maxAttempts, ...(options.retry ?? { baseDelayMs: 4, maxDelayMs: 16 }) },
    random: () => (jitter = (jitter * 1103515245 + 12345) % 2 ** 31) / 2 ** 31,
    name: 'prop',
  })
  const written: Written[] = []
  const pendingSeen: number[] = []
  const produced = new Array<number>(PRODUCERS).fill(0)
  for (const step of steps) {
    switch (step.kind) {
      case 'write': {
        const ops = Array.from({ length: step.count }, () => {
          const k = produced[step.producer] ?? 0
          produced[step.producer] = k + 1
          return options.ops(step.producer, k)
        })
        if (ops.length <= cfg.capacity) written.push({ at: clock.now(), ops, outcome: track(writer.write(ops)) })
        break
      }
      case 'tick':
        // One millisecond at a time, so timers fire when they are due, not at the end of a jump.
        for (let ms = 0; ms < step.ms; ms++) {
          await driveUntil(clock, () => !recorded.busy(), { stepMs: 0 })
          clock.increment(1)
          await settle(1)
        }
        break
      case 'down':
        faulty.faults.down = step.down
        break
      case 'failRate':
        faulty.faults.failRate = step.rate
        break
    }
    await settle()
    if (options.idleAfterEachStep === true) await driveUntil(clock, () => !writer.stats().flushing, { stepMs: 0 })
    else await driveUntil(clock, () => !recorded.busy(), { stepMs: 0 })
    pendingSeen.push(writer.stats().pending)
  }
  faulty.faults.down = options.stopDown ?? false
  faulty.faults.failRate = 0
  const stopped = track(writer.stop({ deadlineMs: 200 }))
  await driveUntil(clock, () => stopped.settled && written.every((w) => w.outcome.settled), { busy: recorded.busy })
  if (stopped.value === undefined) throw new Error('stop did not resolve')
  return { clock, faulty, recorded, writer, written, pendingSeen, report: stopped.value, fixture, steps }
}

function property(
  backend: Backend,
  steps: fc.Arbitrary<Step[]>,
  options: RunOptions,
  check: (r: Run, cfg: Config) => Promise<void> | void,
  cfgArb: fc.Arbitrary<Config> = config,
): Promise<void> {
  return fc.assert(
    fc.asyncProperty(cfgArb, steps, async (cfg, s) => {
      const r = await run(backend, cfg, s, options)
      try {
        await check(r, cfg)
      } finally {
        await r.fixture.destroy()
      }
    }),
    { numRuns: backend.runs },
  )
}

const committedStatuses = new Set(['ok', 'already_exists', 'version_mismatch', 'not_found'])
const results = (r: Run): { op: WriteOp; result: WriterResult | undefined; refused: boolean }[] =>
  r.written.flatMap((w) => w.ops.map((op, i) => ({ op, result: w.outcome.value?.[i], refused: w.outcome.error !== undefined })))

async function storedDeadLetters(storage: Storage): Promise<string[]> {
  const out: string[] = []
  let cursor: string | undefined
  do {
    const page = await storage.deadLetters.list({ limit: 1000, ...(cursor === undefined ? {} : { cursor }) })
    out.push(...page.items.map((l) => JSON.stringify(l.op)))
    cursor = page.nextCursor
  } while (cursor !== undefined)
  return out
}

describeBackends('writer properties', (backend) => {
  it('W1 bounded memory: accepted-but-unfinished ops never exceed capacity', async () => {
    await property(backend, faultySteps, { ops: mixedOps(0) }, (r, cfg) => {
      expect(Math.max(...r.pendingSeen)).toBeLessThanOrEqual(cfg.capacity)
      expect(r.writer.stats().pending).toBe(0)
    })
  }, 300_000)

  it('W2 a batch closes at maxBatch ops or lingerMs after its first op', async () => {
    const single = fc.array(fc.oneof({ arbitrary: writeStep.map((w) => ({ ...w, count: 1 })), weight: 3 }, tickStep), {
      minLength: 1,
      maxLength: 30,
    })
    const roomy = config.map((c) => ({ ...c, capacity: Math.max(c.capacity, c.maxBatch) }))
    await property(
      backend,
      single,
      { ops: mixedOps(0), idleAfterEachStep: true },
      (r, cfg) => {
        // Model: a window opens at a batch's first op and closes lingerMs later (0: at once)
        // or when it holds maxBatch ops; stop flushes what is left.
        const expected: number[] = []
        let window: { opened: number; size: number } | undefined
        let now = 0
        const close = (): void => {
          if (window !== undefined) expected.push(window.size)
          window = undefined
        }
        let w = 0
        for (const step of r.steps) {
          if (step.kind === 'tick') {
            now += step.ms
            if (window !== undefined && now >= window.opened + cfg.lingerMs) close()
            continue
          }
          if (step.kind !== 'write') continue
          expect(r.written[w++]?.at).toBe(now)
          window ??= { opened: now, size: 0 }
          window.size++
          if (window.size === cfg.maxBatch || cfg.lingerMs === 0) close()
        }
        close()
        expect(r.recorded.commits.map((c) => c.ops.length)).toEqual(expected)
      },
      roomy,
    )
  }, 300_000)

  it('W3 one transaction per flush, idempotent on retry: lost acknowledgements never write twice', async () => {
    // Patient retries, so no op ends dead-lettered with its commit's outcome unknown.
    const patient = config.map((c) => ({ ...c, maxAttempts: 60 }))
    await property(
      backend,
      faultySteps.map((steps) => steps.filter((step) => step.kind !== 'down')),
      { ops: mixedOps(0), lostAckRate: 0.3 },
      async (r) => {
        const model = createMemoryStorage()
        const accepted = results(r).filter((x) => x.result !== undefined && committedStatuses.has(x.result.status))
        for (const { op } of accepted) await model.commit([op])
        for (const queue of ['q0', 'q1', 'q2']) {
          expect((await r.faulty.inner.requests.listByQueue(queue)).items).toEqual((await model.requests.listByQueue(queue)).items)
          for (let n = 1; n <= 12; n++) {
            const uri = `fake://${queue}/${n}`
            expect(await r.faulty.inner.facts.listByUri(queue, uri)).toEqual(await model.facts.listByUri(queue, uri))
          }
        }
        expect(r.writer.stats().deadLettered).toBe(0)
      },
      patient,
    )
  }, 300_000)

  it('W4 transient failures retry with capped exponential backoff and full jitter', async () => {
    const retry = { baseDelayMs: 5, maxDelayMs: 20 }
    await property(backend, faultySteps, { ops: mixedOps(0), retry }, (r, cfg) => {
      // Consecutive attempts of one batch: same ops array content, back to back in the log.
      // (Dead-letter batches are stored best-effort after each flush, not on a backoff.)
      const commits = r.recorded.commits.filter((c) => c.ops[0]?.op !== 'deadLetter.put')
      let streak = 0
      for (let i = 1; i < commits.length; i++) {
        const previous = commits[i - 1] as CommitRecord
        const current = commits[i] as CommitRecord
        const same = JSON.stringify(previous.ops) === JSON.stringify(current.ops) && !previous.ok
        streak = same ? streak + 1 : 0
        if (same) {
          const ceiling = Math.min(retry.maxDelayMs, retry.baseDelayMs * 2 ** (streak - 1))
          expect(current.at - previous.at).toBeGreaterThanOrEqual(0)
          expect(current.at - previous.at).toBeLessThanOrEqual(ceiling)
          expect(streak).toBeLessThan(cfg.maxAttempts)
        }
      }
    })
  }, 300_000)

  it('W5 conservation: every accepted op is committed or dead-lettered, exactly once, never dropped', async () => {
    await property(backend, faultySteps, { ops: mixedOps(5), stopDown: false }, async (r) => {
      const all = results(r)
      const accepted = all.filter((x) => !x.refused)
      expect(accepted.every((x) => x.result !== undefined)).toBe(true)
      const committed = accepted.filter((x) => x.result !== undefined && committedStatuses.has(x.result.status))
      const dead = accepted.filter((x) => x.result?.status === 'dead_lettered')
      expect(committed.length + dead.length).toBe(accepted.length)
      const stats = r.writer.stats()
      expect(stats.accepted).toBe(accepted.length)
      expect(stats.committed).toBe(committed.length)
      expect(stats.deadLettered).toBe(dead.length)
      const letters = [...(await storedDeadLetters(r.faulty.inner)), ...r.report.unpersisted.map((l) => JSON.stringify(l.op))].sort()
      expect(letters).toEqual(dead.map((x) => JSON.stringify(x.op)).sort())
      for (const x of committed.filter((c) => c.op.op === 'request.create' && c.result?.status === 'ok')) {
        if (x.op.op === 'request.create') await expect(r.faulty.inner.requests.get(x.op.record.id)).resolves.toBeDefined()
      }
      for (const w of r.written.filter((x) => x.outcome.error !== undefined)) expect(w.outcome.error).toBeInstanceOf(StoppedError)
    })
  }, 300_000)

  it('W5 conservation also when storage is down through the drain: letters are reported, not lost', async () => {
    await property(backend, faultySteps, { ops: mixedOps(0), stopDown: true }, async (r) => {
      const dead = results(r).filter((x) => x.result?.status === 'dead_lettered')
      const letters = [...(await storedDeadLetters(r.faulty.inner)), ...r.report.unpersisted.map((l) => JSON.stringify(l.op))].sort()
      expect(letters).toEqual(dead.map((x) => JSON.stringify(x.op)).sort())
      expect(r.writer.stats().committed + r.writer.stats().deadLettered).toBe(r.writer.stats().accepted)
    })
  }, 300_000)

  it('W6 a poison op is isolated: exactly the poison ops are dead-lettered, their neighbours commit', async () => {
    await property(backend, calmSteps, { ops: mixedOps(4) }, async (r) => {
      const all = results(r).filter((x) => !x.refused)
      for (const x of all) {
        if (isPoison(x.op)) expect(x.result).toMatchObject({ status: 'dead_lettered', error: { code: 'STORAGE_FAILED' } })
        else expect(committedStatuses.has(x.result?.status ?? '')).toBe(true)
      }
      const letters = (await storedDeadLetters(r.faulty.inner)).sort()
      expect(letters).toEqual(
        all
          .filter((x) => isPoison(x.op))
          .map((x) => JSON.stringify(x.op))
          .sort(),
      )
    })
  }, 300_000)

  it('W10 an atomic write is never split across transactions; a poison op dead-letters its whole atomic write', async () => {
    const writes = fc.array(
      fc.record({ size: fc.integer({ min: 1, max: 5 }), atomic: fc.boolean(), poisonAt: fc.option(fc.nat(6), { nil: undefined }) }),
      { minLength: 1, maxLength: 12 },
    )
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 1, max: 4 }), writes, async (maxBatch, plan) => {
        const fixture = await backend.open()
        try {
          const clock = new SimulatedClock()
          const storage = recordCommits(createFaultyStorage(fixture.storage, { poison: isPoison }), () => clock.now())
          const writer = createWriter({ storage, clock, maxBatch, lingerMs: 0, retry: { maxAttempts: 1, baseDelayMs: 1, maxDelayMs: 1 } })
          const batches = plan.map((w, i) =>
            Array.from({ length: w.size }, (_, k): WriteOp => ({
              op: 'fact.put',
              fact: sampleFact('q0', i * 10 + k + 1, { uri: `fake://${w.poisonAt === k ? 'poison' : 'ok'}/${i}/${k}` }),
            })),
          )
          // All written in one tick: they queue together and the batches cut across them.
          const results = await Promise.all(batches.map((ops, i) => writer.write(ops, { atomic: plan[i]?.atomic ?? false })))
          plan.forEach((w, i) => {
            const ops = batches[i] ?? []
            const got = results[i] ?? []
            if (w.atomic) {
              for (const commit of storage.commits.filter((c) => c.ok)) {
                expect([0, ops.length]).toContain(commit.ops.filter((op) => ops.includes(op)).length)
              }
            }
            const poisoned = w.poisonAt !== undefined && w.poisonAt < w.size
            got.forEach((result, k) => {
              const lost = poisoned && (w.atomic || k === w.poisonAt)
              if (lost) expect(result).toMatchObject({ status: 'dead_lettered', error: { code: 'STORAGE_FAILED' } })
              else expect(result.status).toBe('ok')
            })
          })
          await writer.stop({ deadlineMs: 0 })
        } finally {
          await fixture.destroy()
        }
      }),
      { numRuns: backend.runs },
    )
  }, 300_000)

  it('W7 stop drains: refuses new ops, finishes every accepted op, reports counts', async () => {
    await property(backend, faultySteps, { ops: mixedOps(0) }, async (r) => {
      await expect(r.writer.write([{ op: 'counter.next', queue: 'q0' }])).rejects.toBeInstanceOf(StoppedError)
      const stats = r.writer.stats()
      expect(stats.pending).toBe(0)
      expect(stats.waiting).toBe(0)
      expect(r.report.committed + r.report.deadLettered).toBeLessThanOrEqual(stats.accepted)
      expect(r.report.timedOut).toBe(false)
      for (const w of r.written) expect(w.outcome.settled).toBe(true)
    })
  }, 300_000)

  it('W8 FIFO per key: chains of CAS updates written without waiting all commit in order', async () => {
    const noDown = fc.array(
      fc.oneof(
        { arbitrary: writeStep.map((w) => ({ ...w, count: 1 })), weight: 3 },
        tickStep,
        fc.record({ kind: fc.constant('failRate' as const), rate: fc.constantFrom(0, 0.3) }),
      ),
      { minLength: 1, maxLength: 30 },
    )
    const patient = config.map((c) => ({ ...c, maxAttempts: 50 }))
    await property(
      backend,
      noDown,
      { ops: chainOps },
      async (r) => {
        const all = results(r).filter((x) => !x.refused)
        expect(all.map((x) => x.result?.status)).toEqual(all.map(() => 'ok'))
        for (let p = 0; p < PRODUCERS; p++) {
          const mine = all.filter((x) =>
            x.op.op === 'request.create' ? x.op.record.queue === `q${p}` : x.op.op === 'request.update' && x.op.record.queue === `q${p}`,
          )
          if (mine.length > 0) expect((await r.faulty.inner.requests.get(`request/q${p}/1`)).version).toBe(mine.length - 1)
        }
      },
      patient,
    )
  }, 300_000)

  it('W9 metrics agree with what happened', async () => {
    await property(backend, faultySteps, { ops: mixedOps(6) }, async (r) => {
      const stats = r.writer.stats()
      const metrics = await r.writer.registry.getMetricsAsJSON()
      const value = (name: string, suffix = ''): number =>
        metrics
          .find((m) => m.name === name)
          ?.values.find(
            (v) => (v as { metricName?: string }).metricName === undefined || (v as { metricName?: string }).metricName === name + suffix,
          )?.value ?? Number.NaN
      expect(value('stovepipe_writer_committed_ops_total')).toBe(stats.committed)
      expect(value('stovepipe_writer_dead_letters_total')).toBe(stats.deadLettered)
      expect(value('stovepipe_writer_retries_total')).toBe(stats.retries)
      expect(value('stovepipe_writer_pending_ops')).toBe(0)
      const batch = metrics.find((m) => m.name === 'stovepipe_writer_batch_size')?.values ?? []
      const count = batch.find((v) => (v as { metricName?: string }).metricName === 'stovepipe_writer_batch_size_count')?.value
      const sum = batch.find((v) => (v as { metricName?: string }).metricName === 'stovepipe_writer_batch_size_sum')?.value
      expect(count ?? 0).toBe(stats.batches)
      expect(sum ?? 0).toBe(stats.committed)
    })
  }, 300_000)
})
