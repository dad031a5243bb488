/**
 * The event log's guarantees (DESIGN.md, Event log 1–9), each its own fast-check property,
 * run against every backend. Sends, clock ticks, storage outages, subscribers and crashes
 * interleave in random order; fast-check prints the seed and path of any failure.
 */
import fc from 'fast-check'
import { SimulatedClock } from 'xstate'
import { expect, it } from 'vitest'
import { sleep } from '../../src/actors/clock.js'
import { createEventLog, renderEntry, type EventLog, type LogEntry } from '../../src/actors/event-log.js'
import { createWriter, type Writer } from '../../src/actors/writer.js'
import { StorageUnavailableError, type EventRow, type Storage } from '../../src/storage/index.js'
import { createFaultyStorage, type FaultyStorage, type StorageFixture } from '../../src/testing/index.js'
import { describeBackends, recordCommits, type Backend, type RecordingStorage } from '../support/backends.js'
import { driveUntil, settle } from '../support/drive.js'

type Step =
  | { kind: 'send'; request: number; count: number; await: boolean }
  | { kind: 'tick'; ms: number }
  | { kind: 'down'; down: boolean }
  | { kind: 'subscribe'; from: number | undefined; slow: boolean }
  | { kind: 'crash' }
  | { kind: 'restart' }
  /** Storage refuses, deterministically, the row of the next event sent (a poison row). */
  | { kind: 'poison' }

interface Config {
  capacity: number
  batchSize: number
  lingerMs: number
  /** The writer's maxBatch: smaller than a log batch, the writer would split a batch it may split. */
  writerMaxBatch: number
  policy: 'gap' | 'block'
}

const config = fc.record({
  capacity: fc.integer({ min: 1, max: 12 }),
  batchSize: fc.integer({ min: 1, max: 6 }),
  lingerMs: fc.integer({ min: 0, max: 3 }),
  writerMaxBatch: fc.integer({ min: 1, max: 8 }),
  policy: fc.constantFrom('gap' as const, 'block' as const),
})
const send = fc.record({
  kind: fc.constant('send' as const),
  request: fc.nat(3),
  count: fc.integer({ min: 1, max: 6 }),
  await: fc.boolean(),
})
const tick = fc.record({ kind: fc.constant('tick' as const), ms: fc.integer({ min: 1, max: 20 }) })
const down = fc.record({ kind: fc.constant('down' as const), down: fc.boolean() })
const subscribe = fc.record({
  kind: fc.constant('subscribe' as const),
  from: fc.option(fc.nat(40), { nil: undefined }),
  slow: fc.boolean(),
})
const restarts = fc.oneof(fc.constant({ kind: 'crash' as const }), fc.constant({ kind: 'restart' as const }))
const poison = fc.constant({ kind: 'poison' as const })
const withRestarts = fc.array(fc.oneof({ arbitrary: send, weight: 4 }, { arbitrary: tick, weight: 2 }, down, restarts, poison), {
  minLength: 1,
  maxLength: 25,
})
const withSubscribers = fc.array(fc.oneof({ arbitrary: send, weight: 4 }, { arbitrary: tick, weight: 2 }, down, subscribe, poison), {
  minLength: 1,
  maxLength: 25,
})

/** A subscriber's view: what it received, in order. */
interface Seen {
  /** Index of the incarnation (process) it subscribed to. */
  incarnation: number
  from: number | undefined
  slow: boolean
  entries: LogEntry[]
}

interface Incarnation {
  storage: RecordingStorage
  writer: Writer
  log: EventLog
  killed: { value: boolean }
  /** Row count and last row in storage when it started. */
  startedAfter: EventRow | undefined
}

interface Run {
  clock: SimulatedClock
  faulty: FaultyStorage
  fixture: StorageFixture
  incarnations: Incarnation[]
  /** Per request, the sequence numbers sent, in order. */
  sent: Map<string, number[]>
  seen: Seen[]
  /** Acks that arrived before the row was committed (must stay empty). */
  earlyAcks: string[]
  rows: EventRow[]
}

const NODE = 'node-p'

/** A storage that stops applying anything once `killed` is set: a crashed process. */
function killable(inner: Storage, killed: { value: boolean }): Storage {
  const dead = (): Promise<never> => Promise.reject(new StorageUnavailableError('this process crashed'))
  return {
    ...inner,
    commit: (ops) => (killed.value ? dead() : inner.commit(ops)),
    events: { ...inner.events, read: (o) => (killed.value ? dead() : inner.events.read(o)) },
  }
}

async function start(clock: SimulatedClock, faulty: FaultyStorage, cfg: Config, committed: Set<number>): Promise<Incarnation> {
  const killed = { value: false }
  const base = killable(faulty, killed)
  const storage = recordCommits(
    {
      ...base,
      commit: async (ops) => {
        const results = await base.commit(ops)
        // Track, synchronously with the commit's completion, which logical ids are durable.
        ops.forEach((op, i) => {
          if (op.op === 'event.append' && results[i]?.status === 'ok') {
            const row = op.row
            const [a, b] = row.kind === 'event' ? [row.id, row.id] : [row.fromId, row.toId]
            for (let id = a; id <= b; id++) committed.add(id)
          }
        })
        return results
      },
    },
    () => clock.now(),
  )
  const writer = createWriter({
    storage,
    clock,
    lingerMs: cfg.lingerMs,
    maxBatch: cfg.writerMaxBatch,
    retry: { maxAttempts: 2, baseDelayMs: 2, maxDelayMs: 8 },
    name: 'wp',
  })
  const startedAfter = await faulty.inner.events.last(NODE)
  const log = await createEventLog({
    storage,
    writer,
    clock,
    nodeId: NODE,
    capacity: cfg.capacity,
    batchSize: cfg.batchSize,
    policy: cfg.policy,
    subscriberBuffer: 3,
    retry: { baseDelayMs: 2, maxDelayMs: 8 },
  })
  return { storage, writer, log, killed, startedAfter }
}

async function run(backend: Backend, cfg: Config, steps: readonly Step[]): Promise<Run> {
  const fixture = await backend.open()
  const clock = new SimulatedClock()
  /** Events (by request and sequence number) whose rows storage refuses. */
  const poisoned = new Set<string>()
  let poisonNext = false
  const eventKey = (payload: unknown): string => {
    const { requestId, event } = payload as { requestId: string; event: string }
    return `${requestId} ${event}`
  }
  const faulty = createFaultyStorage(fixture.storage, {
    poison: (op) => op.op === 'event.append' && op.row.kind === 'event' && poisoned.has(eventKey(op.row.payload)),
  })
  const committed = new Set<number>()
  const incarnations = [await start(clock, faulty, cfg, committed)]
  const current = (): Incarnation => incarnations[incarnations.length - 1] as Incarnation
  const busy = (): boolean => current().storage.busy()
  const sent = new Map<string, number[]>()
  const seen: Seen[] = []
  const earlyAcks: string[] = []
  for (const step of steps) {
    const { log } = current()
    switch (step.kind) {
      case 'send':
        for (let i = 0; i < step.count; i++) {
          const requestId = `request/main/${step.request + 1}`
          const k = (sent.get(requestId) ?? []).length
          sent.set(requestId, [...(sent.get(requestId) ?? []), k])
          const event = { at: clock.now(), queue: 'main', requestId, from: 's', to: 's', event: `E${k}` }
          if (poisonNext) poisoned.add(eventKey(event))
          poisonNext = false
          if (!step.await) log.send(event)
          else {
            log.append(event).then(
              (ack) => {
                const ids = ack.gap === undefined ? [ack.id] : [ack.gap.fromId, ack.gap.toId]
                for (const id of ids) if (!committed.has(id)) earlyAcks.push(`ack of ${ack.id} before id ${id} was durable`)
              },
              () => undefined, // a crash may leave appends unresolved or refused; durability is checked from storage
            )
          }
        }
        break
      case 'tick':
        for (let ms = 0; ms < step.ms; ms++) {
          await driveUntil(clock, () => !busy(), { stepMs: 0 })
          clock.increment(1)
          await settle(1)
        }
        break
      case 'down':
        faulty.faults.down = step.down
        break
      case 'poison':
        poisonNext = true
        break
      case 'subscribe': {
        const view: Seen = { incarnation: incarnations.length - 1, from: step.from, slow: step.slow, entries: [] }
        seen.push(view)
        log.subscribe(
          async (entry) => {
            view.entries.push(entry)
            if (view.slow) await sleep(clock, 50).done
          },
          { ...(step.from === undefined ? {} : { from: step.from }), buffer: step.slow ? 2 : 1000 },
        )
        break
      }
      case 'crash':
      case 'restart': {
        const old = current()
        if (step.kind === 'restart') {
          faulty.faults.down = false
          const stopped = old.log.stop({ deadlineMs: 1_000 })
          let done = false
          void stopped.then(() => (done = true))
          await driveUntil(clock, () => done, { busy })
          await old.writer.stop({ deadlineMs: 0 })
        }
        // A crash: whatever the database already received finishes; nothing after it does.
        await driveUntil(clock, () => !old.storage.busy(), { stepMs: 0 })
        old.killed.value = true
        faulty.faults.down = false // the new process starts once its database answers
        incarnations.push(await start(clock, faulty, cfg, committed))
        break
      }
    }
    await settle()
  }
  faulty.faults.down = false
  const { log } = current()
  let flushed = false
  void log.flush().then(() => (flushed = true))
  await driveUntil(clock, () => flushed, { busy })
  const rows = await faulty.inner.events.read({ nodeId: NODE, limit: 10_000 })
  // Give resuming subscribers of the live process time to catch up (a replay read that
  // failed while storage was down retries after a backoff): at most 2 s of simulated time.
  const lastId = rows.flatMap(idsOf).at(-1)
  const waiting = seen.filter((v) => v.incarnation === incarnations.length - 1 && !v.slow && v.from !== undefined && lastId !== undefined)
  const caughtUp = (): boolean =>
    waiting.every((v) => v.entries.flatMap(idsOf).includes(lastId as number) || (v.from as number) > (lastId as number))
  for (let ms = 0; ms < 2000 && !caughtUp(); ms++) {
    await settle()
    if (!busy()) clock.increment(1)
  }
  return { clock, faulty, fixture, incarnations, sent, seen, earlyAcks, rows }
}

function property(backend: Backend, steps: fc.Arbitrary<Step[]>, check: (r: Run, cfg: Config) => Promise<void> | void): Promise<void> {
  return fc.assert(
    fc.asyncProperty(config, steps, async (cfg, s) => {
      const r = await run(backend, cfg, s)
      try {
        await check(r, cfg)
      } finally {
        for (const incarnation of r.incarnations) incarnation.killed.value = true
        await r.fixture.destroy()
      }
    }),
    { numRuns: backend.runs },
  )
}

const idsOf = (entry: EventRow | LogEntry): number[] =>
  entry.kind === 'event' ? [entry.id] : Array.from({ length: entry.toId - entry.fromId + 1 }, (_, i) => entry.fromId + i)

describeBackends('event log properties', (backend) => {
  it('E1 persisted ids and gap ranges partition [0, n): nothing vanishes without a gap', async () => {
    await property(backend, withRestarts, (r) => {
      const ids = r.rows.flatMap(idsOf)
      const n = (r.incarnations[r.incarnations.length - 1] as Incarnation).log.stats().nextId
      expect(ids).toEqual(Array.from({ length: n }, (_, i) => i))
    })
  }, 300_000)

  it('E2 storage seq is contiguous from 0 per node, gap rows included', async () => {
    await property(backend, withRestarts, (r) => {
      expect(r.rows.map((row) => row.seq)).toEqual(r.rows.map((_, i) => i))
    })
  }, 300_000)

  it('E3 per-request order is preserved and ids increase with emission order', async () => {
    await property(backend, withRestarts, (r) => {
      const byRequest = new Map<string, number[]>()
      for (const row of r.rows) {
        if (row.kind !== 'event') continue
        const payload = row.payload as { requestId: string; event: string }
        byRequest.set(payload.requestId, [...(byRequest.get(payload.requestId) ?? []), Number(payload.event.slice(1))])
      }
      for (const [requestId, ks] of byRequest) {
        // Sequence numbers of one request appear in increasing id order, each at most once,
        // except that a crash may lose unpersisted ones, whose numbers the test never resends.
        for (let i = 1; i < ks.length; i++) expect(ks[i], requestId).toBeGreaterThan(ks[i - 1] as number)
        for (const k of ks) expect(r.sent.get(requestId)).toContain(k)
      }
      if (r.incarnations.length === 1) {
        const total = r.rows.filter((row) => row.kind === 'event').length
        const dropped = r.rows.filter((row) => row.kind === 'gap').reduce((sum, row) => sum + idsOf(row).length, 0)
        expect(total + dropped).toBe([...r.sent.values()].reduce((sum, ks) => sum + ks.length, 0))
      }
    })
  }, 300_000)

  it('E4 an append is acknowledged only after it is durable', async () => {
    await property(backend, withRestarts, (r) => {
      expect(r.earlyAcks).toEqual([])
    })
  }, 300_000)

  it('E5 after a restart or crash both counters continue from the last persisted values', async () => {
    await property(backend, withRestarts, (r) => {
      for (const incarnation of r.incarnations) {
        const last = incarnation.startedAfter
        const nextId = last === undefined ? 0 : (idsOf(last).at(-1) ?? 0) + 1
        const nextSeq = last === undefined ? 0 : last.seq + 1
        const firstRow = r.rows.find((row) => row.seq === nextSeq)
        if (firstRow !== undefined) expect(idsOf(firstRow)[0]).toBe(nextId)
      }
    })
  }, 300_000)

  it('E6 a slow subscriber gets a lag notice; it slows neither the log nor the others', async () => {
    await property(backend, withSubscribers, (r) => {
      for (const view of r.seen) {
        // Whatever each subscriber got is in order, without duplicates, and lag notices
        // cover exactly the ids it missed: its coverage is one contiguous run.
        const covered = view.entries.flatMap(idsOf)
        if (covered.length > 0) expect(covered).toEqual(Array.from({ length: covered.length }, (_, i) => (covered[0] as number) + i))
        if (!view.slow) expect(view.entries.some((e) => e.kind === 'lag')).toBe(false)
        if (!view.slow && covered.length > 0) expect(covered.at(-1)).toBe(r.rows.flatMap(idsOf).at(-1))
      }
    })
  }, 300_000)

  it('E7 a subscriber resumes from an id: history from storage, then live, no duplicate, no hole', async () => {
    await property(backend, withSubscribers, (r) => {
      const all = r.rows.flatMap(idsOf)
      for (const view of r.seen.filter((v) => !v.slow && v.from !== undefined)) {
        const from = view.from as number
        const covered = view.entries.flatMap(idsOf)
        const expected = all.filter((id) => id >= from)
        // The row holding `from` may be a gap starting before it.
        expect(covered.filter((id) => id >= from)).toEqual(expected)
        expect(new Set(covered).size).toBe(covered.length)
      }
    })
  }, 300_000)

  it('E8 rendering of gaps and transitions is stable text', () => {
    const row = fc.oneof(
      fc.record({
        kind: fc.constant('event' as const),
        nodeId: fc.constant('n'),
        seq: fc.nat(),
        id: fc.nat(),
        at: fc.integer({ min: 0, max: 4_000_000_000_000 }),
        payload: fc.record({
          queue: fc.constant('main'),
          requestId: fc.integer({ min: 1, max: 999 }).map((n) => `request/main/${n}`),
          from: fc.constantFrom('accepted', 'processing.building'),
          to: fc.constantFrom('processing.planning', 'recorded'),
          event: fc.constantFrom('START', 'BUILT'),
        }),
      }),
      fc.record({
        kind: fc.constant('gap' as const),
        nodeId: fc.constant('n'),
        seq: fc.nat(),
        fromId: fc.nat(),
        toId: fc.nat(),
        at: fc.nat(),
      }),
    )
    fc.assert(
      fc.property(row, (entry) => {
        const text = renderEntry(entry)
        expect(renderEntry(JSON.parse(JSON.stringify(entry)) as LogEntry)).toBe(text)
        if (entry.kind === 'gap') expect(text).toBe(`events between ${entry.fromId} and ${entry.toId} were dropped`)
        else {
          const p = entry.payload
          expect(text).toBe(`#${entry.id} ${new Date(entry.at).toISOString()} ${p.requestId} ${p.from} -> ${p.to} (${p.event})`)
        }
      }),
    )
  })

  it('E9 reading merges nodes ordered by (nodeId, seq)', async () => {
    const sends = fc.array(fc.tuple(fc.constantFrom('na', 'nb', 'nc'), fc.integer({ min: 1, max: 4 })), { minLength: 1, maxLength: 12 })
    await fc.assert(
      fc.asyncProperty(sends, async (plan) => {
        const fixture = await backend.open()
        try {
          const clock = new SimulatedClock()
          const writer = createWriter({ storage: fixture.storage, clock, lingerMs: 1 })
          const logs = new Map<string, EventLog>()
          for (const node of ['nc', 'na', 'nb'])
            logs.set(node, await createEventLog({ storage: fixture.storage, writer, clock, nodeId: node }))
          for (const [node, count] of plan) {
            for (let i = 0; i < count; i++)
              logs.get(node)?.send({ at: 0, queue: 'main', requestId: 'request/main/1', from: 'a', to: 'b', event: 'E' })
          }
          let done = false
          void Promise.all([...logs.values()].map((l) => l.flush())).then(() => (done = true))
          await driveUntil(clock, () => done)
          const log = logs.get('na') as EventLog
          const merged = await log.read()
          const perNode = (await Promise.all(['na', 'nb', 'nc'].map((nodeId) => log.read({ nodeId })))).flat()
          expect(merged).toEqual(perNode)
          const keys = merged.map((row) => [row.nodeId, row.seq] as const)
          const sorted = [...keys].sort((a, b) => (a[0] === b[0] ? a[1] - b[1] : a[0] < b[0] ? -1 : 1))
          expect(keys).toEqual(sorted)
          await writer.stop()
        } finally {
          await fixture.destroy()
        }
      }),
      { numRuns: Math.max(5, Math.floor(backend.runs / 2)) },
    )
  }, 300_000)
})
