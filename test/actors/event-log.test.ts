/** The event log, example by example, on a simulated clock. */
import { SimulatedClock, createActor } from 'xstate'
import { describe, expect, it } from 'vitest'
import {
  createEventLog,
  EventLogConflictError,
  eventLogActor,
  renderEntry,
  type LogEntry,
  type TransitionEvent,
} from '../../src/actors/event-log.js'
import { createWriter, WRITE_PREPARED } from '../../src/actors/writer.js'
import { InvalidInputError, StoppedError, type EventRow, type Storage } from '../../src/storage/index.js'
import { createMemoryDatabase, createMemoryStorage } from '../../src/storage/memory/index.js'
import { createFaultyStorage } from '../../src/testing/index.js'
import { driveUntil, settle, track } from '../support/drive.js'

const transition = (n: number, at = 1_700_000_000_000 + n): TransitionEvent => ({
  at,
  queue: 'main',
  requestId: `request/main/${n + 1}`,
  from: 'accepted',
  to: 'processing',
  event: 'START',
})

interface SetupOptions {
  storage?: Storage
  capacity?: number
  policy?: 'gap' | 'block'
  nodeId?: string
  clock?: SimulatedClock
}

async function setup(options: SetupOptions = {}) {
  const clock = options.clock ?? new SimulatedClock()
  const storage = options.storage ?? createMemoryStorage()
  const writer = createWriter({ storage, clock, lingerMs: 1, retry: { maxAttempts: 3, baseDelayMs: 10, maxDelayMs: 10 }, name: 'w' })
  const log = await createEventLog({
    storage,
    writer,
    clock,
    nodeId: options.nodeId ?? 'node-a',
    ...(options.capacity === undefined ? {} : { capacity: options.capacity }),
    ...(options.policy === undefined ? {} : { policy: options.policy }),
    retry: { baseDelayMs: 10, maxDelayMs: 10 },
  })
  return { clock, storage, writer, log }
}

/** Logical ids covered by rows, in seq order, with their seqs. */
function coverage(rows: EventRow[]): { seqs: number[]; ids: number[] } {
  return {
    seqs: rows.map((r) => r.seq),
    ids: rows.flatMap((r) => (r.kind === 'event' ? [r.id] : Array.from({ length: r.toId - r.fromId + 1 }, (_, i) => r.fromId + i))),
  }
}

describe('event log', () => {
  it('assigns contiguous ids and seqs from 0 and acknowledges only once durable', async () => {
    const { clock, storage, log } = await setup()
    const acks = [0, 1, 2].map((n) => track(log.append(transition(n))))
    await settle()
    expect(acks.every((a) => !a.settled)).toBe(true)
    expect(await storage.events.read()).toEqual([])
    await driveUntil(clock, () => acks.every((a) => a.settled))
    expect(acks.map((a) => a.value)).toEqual([
      { id: 0, seq: 0 },
      { id: 1, seq: 1 },
      { id: 2, seq: 2 },
    ])
    const rows = await storage.events.read()
    expect(coverage(rows)).toEqual({ seqs: [0, 1, 2], ids: [0, 1, 2] })
    expect(rows[0]).toMatchObject({
      kind: 'event',
      nodeId: 'node-a',
      payload: { requestId: 'request/main/1', from: 'accepted', to: 'processing', event: 'START' },
    })
  })

  it('turns the overflow into one persisted gap sentinel instead of dropping silently', async () => {
    const storage = createFaultyStorage(createMemoryStorage())
    const { clock, log } = await setup({ storage, capacity: 3 })
    storage.faults.down = true
    const acks = Array.from({ length: 10 }, (_, n) => track(log.append(transition(n))))
    await settle()
    expect(log.stats()).toMatchObject({ sent: 10, dropped: 6 })
    storage.faults.down = false
    await driveUntil(clock, () => acks.every((a) => a.settled))
    const rows = await storage.inner.events.read()
    expect(coverage(rows)).toEqual({ seqs: [0, 1, 2, 3, 4], ids: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] })
    const gap = rows[4]
    expect(gap).toMatchObject({ kind: 'gap', fromId: 4, toId: 9 })
    expect(renderEntry(gap as LogEntry)).toBe('events between 4 and 9 were dropped')
    expect(acks[6]?.value).toEqual({ id: 6, seq: 4, gap: { fromId: 4, toId: 9 } })
  })

  it('with policy block makes append wait for room instead of making gaps', async () => {
    const storage = createFaultyStorage(createMemoryStorage())
    const { clock, log } = await setup({ storage, capacity: 2, policy: 'block' })
    storage.faults.down = true
    const acks = Array.from({ length: 6 }, (_, n) => track(log.append(transition(n))))
    await settle()
    expect(log.stats()).toMatchObject({ sent: 3, dropped: 0 }) // one in flight, two buffered, three waiting
    storage.faults.down = false
    await driveUntil(clock, () => acks.every((a) => a.settled))
    expect(log.stats()).toMatchObject({ sent: 6, dropped: 0, gapRows: 0 })
    expect(coverage(await storage.inner.events.read())).toEqual({ seqs: [0, 1, 2, 3, 4, 5], ids: [0, 1, 2, 3, 4, 5] })
  })

  it('continues ids and seqs from the last persisted row after a restart', async () => {
    const database = createMemoryDatabase()
    const first = await setup({ storage: createMemoryStorage({ database }) })
    const acks = [0, 1, 2].map((n) => track(first.log.append(transition(n))))
    await driveUntil(first.clock, () => acks.every((a) => a.settled))
    await first.log.stop()
    const second = await setup({ storage: createMemoryStorage({ database }) })
    expect(second.log.stats()).toMatchObject({ nextId: 3, nextSeq: 3 })
    const ack = track(second.log.append(transition(3)))
    await driveUntil(second.clock, () => ack.settled)
    expect(ack.value).toEqual({ id: 3, seq: 3 })
  })

  it('re-submits rows the writer dead-lettered with the same seq, so seqs stay contiguous', async () => {
    const storage = createFaultyStorage(createMemoryStorage())
    const { clock, writer, log } = await setup({ storage })
    storage.faults.down = true
    const acks = [0, 1].map((n) => track(log.append(transition(n))))
    await driveUntil(clock, () => writer.stats().deadLettered >= 2)
    expect(acks.every((a) => !a.settled)).toBe(true)
    storage.faults.down = false
    const later = track(log.append(transition(2)))
    await driveUntil(clock, () => later.settled && acks.every((a) => a.settled))
    expect(coverage(await storage.inner.events.read())).toEqual({ seqs: [0, 1, 2], ids: [0, 1, 2] })
    expect(log.stats().resubmitted).toBeGreaterThanOrEqual(2)
  })

  it('replays history to a subscriber from an id, then goes live, with no duplicate and no hole', async () => {
    const { clock, log } = await setup()
    const history = [0, 1, 2, 3].map((n) => track(log.append(transition(n))))
    await driveUntil(clock, () => history.every((a) => a.settled))
    const seen: number[] = []
    const subscription = log.subscribe(
      (entry) => {
        if (entry.kind === 'event') seen.push(entry.id)
      },
      { from: 1 },
    )
    log.send(transition(4))
    await subscription.live
    const more = track(log.append(transition(5)))
    await driveUntil(clock, () => more.settled && seen.length === 5)
    expect(seen).toEqual([1, 2, 3, 4, 5])
    subscription.unsubscribe()
  })

  it('gives a slow subscriber a lag notice without slowing the log or other subscribers', async () => {
    const { clock, log } = await setup()
    const fast: number[] = []
    const slow: LogEntry[] = []
    let release: () => void = () => undefined
    const gate = new Promise<void>((resolve) => {
      release = resolve
    })
    log.subscribe((entry) => {
      if (entry.kind === 'event') fast.push(entry.id)
    })
    log.subscribe(
      async (entry) => {
        slow.push(entry)
        await gate
      },
      { buffer: 2 },
    )
    const acks = Array.from({ length: 8 }, (_, n) => track(log.append(transition(n))))
    await driveUntil(clock, () => acks.every((a) => a.settled) && fast.length === 8)
    expect(fast).toEqual([0, 1, 2, 3, 4, 5, 6, 7])
    release()
    await driveUntil(clock, () => slow.length >= 4)
    expect(slow.map((e) => (e.kind === 'lag' ? `lag ${e.fromId}-${e.toId}` : e.kind === 'event' ? e.id : e.kind))).toEqual([
      0,
      1,
      2,
      'lag 3-7',
    ])
    expect(renderEntry(slow[3] as LogEntry)).toBe('this subscriber missed events between 3 and 7 (too slow; read them from storage)')
    expect(log.stats().lagNotices).toBe(1)
  })

  it('refuses events with missing fields or non-JSON detail at send time, counts them, writes nothing', async () => {
    const { clock, storage, log } = await setup()
    const bad: unknown[] = [
      { ...transition(0), requestId: undefined },
      { ...transition(0), at: -1 },
      { ...transition(0), queue: 'no spaces allowed' },
      { ...transition(0), event: '' },
      { ...transition(0), detail: { when: new Date(0) } },
      { ...transition(0), detail: { n: Number.NaN } },
      null,
    ]
    for (const event of bad)
      expect(() => {
        log.send(event as TransitionEvent)
      }).toThrow(InvalidInputError)
    await expect(log.append({ ...transition(0), from: 7 } as unknown as TransitionEvent)).rejects.toBeInstanceOf(InvalidInputError)
    expect(log.stats()).toMatchObject({ invalid: bad.length + 1, sent: 0, nextId: 0 })
    clock.increment(10)
    await settle()
    expect(await storage.events.read()).toEqual([])
  })

  it('renders entries as stable text', () => {
    expect(
      renderEntry({
        kind: 'event',
        nodeId: 'n',
        seq: 4,
        id: 12,
        at: Date.UTC(2026, 10, 23, 9, 30),
        payload: {
          queue: 'main',
          requestId: 'request/main/3',
          from: 'processing.recording',
          to: 'recorded',
          event: 'RECORDED',
          detail: { verdict: 'green' },
        },
      }),
    ).toBe('#12 2026-11-23T09:30:00.000Z request/main/3 processing.recording -> recorded (RECORDED) green')
    expect(renderEntry({ kind: 'gap', nodeId: 'n', seq: 5, fromId: 3, toId: 5, at: 0 })).toBe('events between 3 and 5 were dropped')
  })

  it('reads all nodes merged by (nodeId, seq)', async () => {
    const storage = createMemoryStorage()
    const clock = new SimulatedClock()
    const b = await setup({ storage, clock, nodeId: 'node-b' })
    const a = await setup({ storage, clock, nodeId: 'node-a' })
    const acks = [track(b.log.append(transition(0))), track(a.log.append(transition(1))), track(a.log.append(transition(2)))]
    await driveUntil(clock, () => acks.every((x) => x.settled))
    const rows = await a.log.read()
    expect(rows.map((r) => `${r.nodeId}#${r.seq}`)).toEqual(['node-a#0', 'node-a#1', 'node-b#0'])
    expect((await a.log.read({ nodeId: 'node-b' })).map((r) => r.nodeId)).toEqual(['node-b'])
  })

  it('is an XState actor that logs the transitions it is sent', async () => {
    const { clock, storage, log } = await setup()
    const actor = createActor(eventLogActor(log)).start()
    actor.send({ type: 'transition', ...transition(0) })
    await driveUntil(clock, () => log.stats().persistedRows === 1)
    expect((await storage.events.read())[0]).toMatchObject({ id: 0, payload: { requestId: 'request/main/1' } })
    actor.stop()
  })

  it('stop flushes, then refuses; with storage down past the deadline it reports what was not persisted', async () => {
    const storage = createFaultyStorage(createMemoryStorage())
    const { clock, log } = await setup({ storage })
    storage.faults.down = true
    log.send(transition(0))
    log.send(transition(1))
    const stopped = track(log.stop({ deadlineMs: 100 }))
    await driveUntil(clock, () => stopped.settled, { stepMs: 10 })
    expect(stopped.value).toEqual({ flushed: false, unpersisted: 2 })
    expect(() => {
      log.send(transition(2))
    }).toThrow(StoppedError)
  })

  it('with policy block hands one batch at a time to the writer, so rows become durable in order', async () => {
    const storage = createFaultyStorage(createMemoryStorage())
    const clock = new SimulatedClock()
    const writer = createWriter({ storage, clock, lingerMs: 1, retry: { maxAttempts: 3, baseDelayMs: 10, maxDelayMs: 10 }, name: 'w' })
    let writing = 0
    let mostAtOnce = 0
    const counted: typeof writer = Object.create(writer) as typeof writer
    counted.write = async (ops, options) => {
      mostAtOnce = Math.max(mostAtOnce, ++writing)
      try {
        return await writer.write(ops, options)
      } finally {
        writing--
      }
    }
    Object.defineProperty(counted, WRITE_PREPARED, { value: undefined })
    const log = await createEventLog({ storage, writer: counted, clock, nodeId: 'n', capacity: 2, batchSize: 1, policy: 'block' })
    const seen: LogEntry[] = []
    await log.subscribe((entry) => void seen.push(entry), { from: 0 }).live
    storage.faults.down = true
    const acks = Array.from({ length: 6 }, (_, n) => track(log.append(transition(n))))
    await driveUntil(clock, () => log.stats().sent >= 2)
    storage.faults.down = false
    await driveUntil(clock, () => acks.every((a) => a.settled) && seen.length === 6, { stepMs: 10 })
    expect(mostAtOnce).toBe(1)
    expect(seen.map((entry) => (entry.kind === 'event' ? entry.id : entry.kind))).toEqual([0, 1, 2, 3, 4, 5])
    expect(coverage(await storage.inner.events.read())).toEqual({ seqs: [0, 1, 2, 3, 4, 5], ids: [0, 1, 2, 3, 4, 5] })
  })

  it('writes a batch as one atomic write: a poison row in it leaves the stored seqs a prefix at every commit, then a gap in its place', async () => {
    const database = createMemoryDatabase()
    const inner = createMemoryStorage({ database })
    const faulty = createFaultyStorage(inner, {
      poison: (op) => op.op === 'event.append' && op.row.kind === 'event' && op.row.id === 2,
    })
    const prefixes: boolean[] = []
    const storage: Storage = {
      ...faulty,
      commit: async (ops) => {
        try {
          return await faulty.commit(ops)
        } finally {
          const seqs = (await inner.events.read({ nodeId: 'n' })).map((row) => row.seq)
          prefixes.push(seqs.every((seq, i) => seq === i))
        }
      },
    }
    const clock = new SimulatedClock()
    // maxBatch 2 under a log batch of 5: a write the writer may split would be split.
    const writer = createWriter({
      storage,
      clock,
      lingerMs: 1,
      maxBatch: 2,
      retry: { maxAttempts: 2, baseDelayMs: 10, maxDelayMs: 10 },
      name: 'w',
    })
    const log = await createEventLog({ storage, writer, clock, nodeId: 'n', batchSize: 5, retry: { baseDelayMs: 10, maxDelayMs: 10 } })
    const seen: LogEntry[] = []
    await log.subscribe((entry) => void seen.push(entry), { from: 0 }).live
    const acks = Array.from({ length: 5 }, (_, n) => track(log.append(transition(n))))
    await driveUntil(clock, () => acks.every((a) => a.settled) && seen.length === 5, { stepMs: 10 })
    expect(prefixes.length).toBeGreaterThan(1)
    expect(prefixes.every(Boolean)).toBe(true)
    expect(acks.map((a) => a.value)).toEqual([
      { id: 0, seq: 0 },
      { id: 1, seq: 1 },
      { id: 2, seq: 2, gap: { fromId: 2, toId: 2 } },
      { id: 3, seq: 3 },
      { id: 4, seq: 4 },
    ])
    expect(seen.map((entry) => (entry.kind === 'event' ? entry.id : `${entry.kind} ${entry.fromId}`))).toEqual([0, 1, 'gap 2', 3, 4])
    // A crash now and a restart: the new log continues after the last row, and nothing is missing.
    const restarted = await createEventLog({ storage: inner, writer: createWriter({ storage: inner, clock }), clock, nodeId: 'n' })
    expect(restarted.stats()).toMatchObject({ nextId: 5, nextSeq: 5 })
    expect(coverage(await inner.events.read({ nodeId: 'n' }))).toEqual({ seqs: [0, 1, 2, 3, 4], ids: [0, 1, 2, 3, 4] })
  })

  it('takes a row already stored at its seq as its own only when it is the same row (a lost acknowledgement)', async () => {
    const storage = createFaultyStorage(createMemoryStorage(), { lostAckRate: 1 })
    const { clock, log } = await setup({ storage, nodeId: 'n' })
    const ack = track(log.append(transition(0)))
    await driveUntil(clock, () => storage.faultStats.lostAcks > 0)
    storage.faults.lostAckRate = 0
    await driveUntil(clock, () => ack.settled, { stepMs: 10 })
    expect(ack.value).toEqual({ id: 0, seq: 0 })
    expect(coverage(await storage.inner.events.read())).toEqual({ seqs: [0], ids: [0] })
  })

  it('fails loudly when another process writes its node: EventLogConflictError, onFailure, nothing acknowledged that is not stored', async () => {
    const clock = new SimulatedClock()
    const storage = createMemoryStorage()
    const writer = createWriter({ storage, clock, lingerMs: 1, name: 'w' })
    // Two logs of one node on one storage: both start at seq 0.
    const [a, b] = [
      await createEventLog({ storage, writer, clock, nodeId: 'n' }),
      await createEventLog({ storage, writer, clock, nodeId: 'n' }),
    ]
    const failures: Error[] = []
    b.onFailure((error) => failures.push(error))
    const first = track(a.append(transition(0)))
    await driveUntil(clock, () => first.settled)
    const second = track(b.append(transition(1)))
    const third = track(b.append(transition(2)))
    await driveUntil(clock, () => second.settled && third.settled)
    expect(first.value).toEqual({ id: 0, seq: 0 })
    expect(second.error).toBeInstanceOf(EventLogConflictError)
    expect(third.error).toBeInstanceOf(EventLogConflictError)
    expect((second.error as EventLogConflictError).code).toBe('ALREADY_EXISTS')
    expect((second.error as Error).message).toMatch(/another process writes this node's log \(give each process its own nodeId\)/)
    expect(failures).toEqual([second.error])
    expect(() => {
      b.send(transition(3))
    }).toThrow(EventLogConflictError)
    await expect(b.flush()).rejects.toBeInstanceOf(EventLogConflictError)
    expect(await b.stop()).toEqual({ flushed: false, unpersisted: 2 })
    const rows = await storage.events.read({ nodeId: 'n' })
    expect(rows.map((row) => (row.kind === 'event' ? (row.payload as { requestId: string }).requestId : row.kind))).toEqual([
      'request/main/1',
    ])
  })
})
