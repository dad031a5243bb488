/** The group-commit writer, example by example, on a simulated clock. */
import { Registry } from 'prom-client'
import { SimulatedClock } from 'xstate'
import { describe, expect, it } from 'vitest'
import { createWriter, EntryQueue, type Entry, type WriterResult } from '../../src/actors/writer.js'
import {
  InvalidInputError,
  StoppedError,
  StorageUnavailableError,
  type Storage,
  type WriteOp,
  type WriteResult,
} from '../../src/storage/index.js'
import { createMemoryStorage } from '../../src/storage/memory/index.js'
import { createFaultyStorage, sampleFact, sampleRequest } from '../../src/testing/index.js'
import { driveUntil, settle, track } from '../support/drive.js'

function recording(inner: Storage): Storage & { batches: { at: number; size: number }[] } {
  const batches: { at: number; size: number }[] = []
  return { ...inner, batches, commit: (ops) => (batches.push({ at: -1, size: ops.length }), inner.commit(ops)) }
}

const create = (n: number, queue = 'main'): WriteOp => ({ op: 'request.create', record: sampleRequest(queue, n) })

describe('writer', () => {
  it('groups writes that arrive within lingerMs into one commit', async () => {
    const clock = new SimulatedClock()
    const storage = recording(createMemoryStorage())
    const writer = createWriter({ storage, clock, lingerMs: 5, name: 'w' })
    const writes = [1, 2, 3].map((n) => track(writer.write([create(n)])))
    await settle()
    expect(storage.batches).toEqual([])
    clock.increment(4)
    await settle()
    expect(storage.batches).toEqual([])
    clock.increment(1)
    await settle()
    expect(storage.batches.map((b) => b.size)).toEqual([3])
    expect(writes.map((w) => w.value)).toEqual([[{ status: 'ok' }], [{ status: 'ok' }], [{ status: 'ok' }]])
  })

  it('closes a batch at maxBatch ops without waiting for the linger', async () => {
    const clock = new SimulatedClock()
    const storage = recording(createMemoryStorage())
    const writer = createWriter({ storage, clock, lingerMs: 1000, maxBatch: 2, name: 'w' })
    const write = track(writer.write([1, 2, 3, 4, 5].map((n) => create(n))))
    await settle()
    expect(storage.batches.map((b) => b.size)).toEqual([2, 2, 1])
    expect(write.value).toHaveLength(5)
  })

  it('makes producers wait for room when capacity ops are pending (backpressure)', async () => {
    const clock = new SimulatedClock()
    const storage = createMemoryStorage()
    const writer = createWriter({ storage, clock, lingerMs: 10, capacity: 4, name: 'w' })
    const first = track(writer.write([1, 2, 3, 4].map((n) => create(n))))
    const second = track(writer.write([create(5)]))
    await settle()
    expect(writer.stats()).toMatchObject({ pending: 4, waiting: 1, accepted: 4 })
    await driveUntil(clock, () => second.settled)
    expect(first.value).toHaveLength(4)
    expect(second.value).toEqual([{ status: 'ok' }])
    expect(writer.stats()).toMatchObject({ pending: 0, waiting: 0, accepted: 5, committed: 5 })
  })

  it('retries transient failures with backoff on the clock, then commits', async () => {
    const clock = new SimulatedClock()
    const storage = createFaultyStorage(createMemoryStorage())
    storage.faults.down = true
    const writer = createWriter({
      storage,
      clock,
      lingerMs: 0,
      retry: { maxAttempts: 10, baseDelayMs: 100, maxDelayMs: 400 },
      random: () => 0.999,
      name: 'w',
    })
    const write = track(writer.write([create(1)]))
    await settle()
    expect(storage.faultStats.commits).toBe(1)
    clock.increment(98) // first backoff ceiling is 100 ms, jitter 0.999 → 99 ms
    await settle()
    expect(storage.faultStats.commits).toBe(1)
    clock.increment(1)
    await settle()
    expect(storage.faultStats.commits).toBe(2)
    storage.faults.down = false
    await driveUntil(clock, () => write.settled, { stepMs: 50 })
    expect(write.value).toEqual([{ status: 'ok' }])
    expect(writer.stats().retries).toBe(2)
    expect((await storage.inner.requests.get('request/main/1')).state).toBe('accepted')
  })

  it('dead-letters ops after maxAttempts, keeps the letters in memory while storage is down, stores them once it is up', async () => {
    const clock = new SimulatedClock()
    const storage = createFaultyStorage(createMemoryStorage())
    storage.faults.down = true
    const writer = createWriter({ storage, clock, lingerMs: 0, retry: { maxAttempts: 3, baseDelayMs: 10, maxDelayMs: 10 }, name: 'w' })
    const write = track(writer.write([create(1), create(2)]))
    await driveUntil(clock, () => write.settled)
    const results = write.value ?? []
    expect(results.map((r) => r.status)).toEqual(['dead_lettered', 'dead_lettered'])
    expect(results[0]).toMatchObject({ error: { code: 'STORAGE_UNAVAILABLE' } })
    expect(writer.unpersistedDeadLetters().map((l) => l.op)).toEqual([create(1), create(2)])
    expect(writer.stats()).toMatchObject({ deadLettered: 2, unpersistedDeadLetters: 2, committed: 0 })
    storage.faults.down = false
    const next = track(writer.write([create(3)]))
    await driveUntil(clock, () => next.settled)
    await settle()
    expect(writer.unpersistedDeadLetters()).toEqual([])
    const stored = await storage.inner.deadLetters.list()
    expect(stored.items.map((l) => [l.id, l.attempts, l.error.code])).toEqual([
      ['w:1', 3, 'STORAGE_UNAVAILABLE'],
      ['w:2', 3, 'STORAGE_UNAVAILABLE'],
    ])
  })

  it('isolates a poison op by splitting the batch so its neighbours commit', async () => {
    const clock = new SimulatedClock()
    const poison = (op: WriteOp): boolean => op.op === 'fact.put' && op.fact.uri === 'fake://poison'
    const storage = createFaultyStorage(createMemoryStorage(), { poison })
    const writer = createWriter({ storage, clock, lingerMs: 0, name: 'w' })
    const ops: WriteOp[] = [1, 2, 3, 4, 5, 6, 7].map((n) => create(n))
    ops.splice(4, 0, { op: 'fact.put', fact: sampleFact('main', 9, { uri: 'fake://poison' }) })
    const results = await writer.write(ops)
    expect(results.map((r) => r.status)).toEqual(['ok', 'ok', 'ok', 'ok', 'dead_lettered', 'ok', 'ok', 'ok'])
    expect((await storage.inner.requests.listByQueue('main')).items).toHaveLength(7)
    await settle()
    const [letter] = (await storage.inner.deadLetters.list()).items
    expect(letter).toMatchObject({ id: 'w:1', op: ops[4], error: { code: 'STORAGE_FAILED' } })
  })

  it('commits ops of one key in the order they were written', async () => {
    const clock = new SimulatedClock()
    const storage = createMemoryStorage()
    const writer = createWriter({ storage, clock, lingerMs: 3, maxBatch: 2, name: 'w' })
    const record = sampleRequest('main', 1)
    const writes: Promise<WriterResult[]>[] = [writer.write([create(1)])]
    const states = ['processing', 'processing', 'recorded'] as const
    states.forEach((state, v) => {
      writes.push(writer.write([{ op: 'request.update', record: { ...record, state, updatedAt: v }, oldVersion: v, newVersion: v + 1 }]))
    })
    const all = track(Promise.all(writes))
    await driveUntil(clock, () => all.settled)
    expect(all.value?.flat().map((r) => r.status)).toEqual(['ok', 'ok', 'ok', 'ok'])
    expect(await storage.requests.get(record.id)).toMatchObject({ version: 3, state: 'recorded' })
  })

  it('stop refuses new writes, drains what is pending and reports', async () => {
    const clock = new SimulatedClock()
    const storage = createMemoryStorage()
    const writer = createWriter({ storage, clock, lingerMs: 1000, name: 'w' })
    const pending = track(writer.write([create(1), create(2)]))
    const report = await writer.stop({ deadlineMs: 50 })
    expect(pending.value).toEqual([{ status: 'ok' }, { status: 'ok' }])
    expect(report).toEqual({ committed: 2, deadLettered: 0, timedOut: false, inFlight: 0, unpersisted: [] })
    await expect(writer.write([create(3)])).rejects.toBeInstanceOf(StoppedError)
    expect(await writer.stop()).toBe(report)
  })

  it('stop dead-letters what cannot be flushed by the deadline and reports it', async () => {
    const clock = new SimulatedClock()
    const storage = createFaultyStorage(createMemoryStorage())
    storage.faults.down = true
    const writer = createWriter({
      storage,
      clock,
      lingerMs: 0,
      capacity: 2,
      retry: { maxAttempts: 100, baseDelayMs: 1000, maxDelayMs: 1000 },
      name: 'w',
    })
    const accepted = track(writer.write([create(1), create(2)]))
    const waiting = track(writer.write([create(3)]))
    await settle()
    const stopped = track(writer.stop({ deadlineMs: 200 }))
    await settle()
    expect(waiting.error).toBeInstanceOf(StoppedError)
    await driveUntil(clock, () => stopped.settled, { stepMs: 50 })
    expect(accepted.value?.map((r) => r.status)).toEqual(['dead_lettered', 'dead_lettered'])
    expect(stopped.value).toMatchObject({ committed: 0, deadLettered: 2, timedOut: true })
    expect(stopped.value?.unpersisted.map((l) => l.op)).toEqual([create(1), create(2)])
    expect(stopped.value?.unpersisted[0]?.error.code).toBe('STOPPED')
  })

  it('stop returns by its deadline while a commit hangs: what waits behind it is dead-lettered, what it carries reported in flight', async () => {
    const clock = new SimulatedClock()
    const inner = createMemoryStorage()
    // Every commit hangs, as on a connection that died silently.
    const storage: Storage = { ...inner, commit: () => new Promise(() => undefined) }
    const writer = createWriter({ storage, clock, lingerMs: 0, name: 'w' })
    const stuck = track(writer.write([create(1)]))
    await settle()
    const behind = track(writer.write([create(2), create(3)]))
    await settle()
    const stopped = track(writer.stop({ deadlineMs: 100 }))
    await driveUntil(clock, () => stopped.settled, { stepMs: 50, realTimeoutMs: 5_000 })
    expect(stopped.value).toMatchObject({ committed: 0, deadLettered: 2, timedOut: true, inFlight: 1 })
    expect(behind.value?.map((r) => r.status)).toEqual(['dead_lettered', 'dead_lettered'])
    expect(stuck.settled).toBe(false)
    expect(writer.stats()).toMatchObject({ pending: 1, deadLettered: 2 })
  })

  for (const how of ['succeeds', 'fails transiently'] as const) {
    it(`a commit that hung past the stop deadline and later ${how} settles each write once, none both dead-lettered and committed`, async () => {
      const clock = new SimulatedClock()
      const inner = createMemoryStorage()
      let release: ((fail?: Error) => void) | undefined
      let hang = true
      const storage: Storage = {
        ...inner,
        commit: (ops) => {
          if (!hang || ops.every((op) => op.op === 'deadLetter.put')) return inner.commit(ops)
          return new Promise<WriteResult[]>((resolve, reject) => {
            release = (fail) => {
              if (fail === undefined) resolve(inner.commit(ops))
              else reject(fail)
            }
          })
        },
      }
      const writer = createWriter({
        storage,
        clock,
        lingerMs: 0,
        maxBatch: 1,
        retry: { maxAttempts: 3, baseDelayMs: 10, maxDelayMs: 10 },
        name: 'w',
      })
      let settles = 0
      const count = (results: WriterResult[]): WriterResult[] => {
        settles++
        return results
      }
      // One job of two ops split across batches (maxBatch 1), and a second job.
      const first = track(writer.write([create(1), create(2)]).then(count))
      const second = track(writer.write([create(3)]).then(count))
      await settle()
      const stopped = track(writer.stop({ deadlineMs: 100 }))
      await driveUntil(clock, () => stopped.settled)
      expect(stopped.value).toMatchObject({ committed: 0, deadLettered: 2, timedOut: true, inFlight: 1 })
      expect(second.value?.map((r) => r.status)).toEqual(['dead_lettered'])
      hang = false
      release?.(how === 'succeeds' ? undefined : new StorageUnavailableError('connection reset'))
      await driveUntil(clock, () => first.settled)
      await settle(10)
      expect(settles).toBe(2)
      expect(first.value?.map((r) => r.status)).toEqual([how === 'succeeds' ? 'ok' : 'dead_lettered', 'dead_lettered'])
      expect((await inner.requests.listByQueue('main')).items.map((r) => r.id)).toEqual(how === 'succeeds' ? ['request/main/1'] : [])
      expect(writer.stats()).toMatchObject({ pending: 0, committed: how === 'succeeds' ? 1 : 0, deadLettered: how === 'succeeds' ? 2 : 3 })
    })
  }

  it('commits ops as they were written, even through a storage wrapper and when the caller changes its objects afterwards', async () => {
    const clock = new SimulatedClock()
    const inner = createMemoryStorage()
    // A wrapper (spread) has no prepared-commit path: the writer hands it the ops themselves.
    const storage: Storage = { ...inner, commit: (ops) => inner.commit(ops) }
    const writer = createWriter({ storage, clock, lingerMs: 1, name: 'w' })
    const op = create(1)
    const written = track(writer.write([op]))
    if (op.op === 'request.create') op.record.uri = 'fake://changed-after-write'
    await driveUntil(clock, () => written.settled)
    expect(written.value?.map((r) => r.status)).toEqual(['ok'])
    const original = sampleRequest('main', 1)
    expect((await inner.requests.get(original.id)).uri).toBe(original.uri)
  })

  it('rejects bad input with InvalidInputError and accepts nothing of that write', async () => {
    const writer = createWriter({ storage: createMemoryStorage(), clock: new SimulatedClock(), name: 'w' })
    await expect(writer.write([create(1), { op: 'fact.put', fact: sampleFact('main', 1, { degree: 2 }) }])).rejects.toBeInstanceOf(
      InvalidInputError,
    )
    await expect(writer.write([{ op: 'nope' } as unknown as WriteOp])).rejects.toBeInstanceOf(InvalidInputError)
    const small = createWriter({ storage: createMemoryStorage(), capacity: 2, name: 'small' })
    await expect(small.write([create(1), create(2), create(3)])).rejects.toThrow(/exceeds the writer capacity of 2/)
    expect(writer.stats().accepted).toBe(0)
    expect(() => createWriter({ storage: createMemoryStorage(), capacity: 0 })).toThrow(InvalidInputError)
    expect(() => createWriter({ storage: createMemoryStorage(), lingerMs: -1 })).toThrow(InvalidInputError)
  })

  it('exposes prom-client metrics: depth, batch sizes, flush time, retries, dead letters, committed', async () => {
    const clock = new SimulatedClock()
    const storage = createFaultyStorage(createMemoryStorage(), { poison: (op) => op.op === 'counter.next' })
    const writer = createWriter({ storage, clock, lingerMs: 0, name: 'w' })
    await writer.write([create(1), create(2), { op: 'counter.next', queue: 'main' }])
    const text = await writer.registry.metrics()
    expect(text).toContain('stovepipe_writer_committed_ops_total{writer="w"} 2')
    expect(text).toContain('stovepipe_writer_dead_letters_total{writer="w"} 1')
    expect(text).toContain('stovepipe_writer_pending_ops{writer="w"} 0')
    expect(text).toMatch(/stovepipe_writer_batch_size_count\{writer="w"\} \d+/)
    expect(text).toMatch(/stovepipe_writer_flush_seconds_count\{writer="w"\} \d+/)
    expect(text).toContain('stovepipe_writer_retries_total{writer="w"} 0')
  })

  it('reports each writer of a shared registry its pending ops as of the scrape, and keeps the last value once stopped', async () => {
    const clock = new SimulatedClock()
    const registry = new Registry()
    const storage = createFaultyStorage(createMemoryStorage(), { clock })
    const a = createWriter({ storage, clock, registry, name: 'a' })
    const b = createWriter({ storage, clock, registry, name: 'b' })
    const pending = async (name: string): Promise<number | undefined> =>
      (await registry.getSingleMetric('stovepipe_writer_pending_ops')?.get())?.values.find((v) => v.labels.writer === name)?.value
    storage.faults.down = true
    const writes = [track(a.write([create(1), create(2), create(3)])), track(b.write([create(4)]))]
    await settle()
    expect(await pending('a')).toBe(3)
    expect(await pending('b')).toBe(1)
    storage.faults.down = false
    await driveUntil(clock, () => writes.every((w) => w.settled), { stepMs: 50 })
    expect(await pending('a')).toBe(0)
    expect(await pending('b')).toBe(0)
    // Stopped with an op left: the deadline dead-letters it; the gauge keeps what stop left (0).
    storage.faults.down = true
    const last = track(a.write([create(5)]))
    await settle()
    expect(await pending('a')).toBe(1)
    const stopped = track(a.stop({ deadlineMs: 100 }))
    await driveUntil(clock, () => stopped.settled && last.settled, { stepMs: 50 })
    expect(last.value?.map((r) => r.status)).toEqual(['dead_lettered'])
    expect(await pending('a')).toBe(0)
    expect(await pending('b')).toBe(0)
    await b.stop()
  })
})

describe('writer entry queue', () => {
  const entry = (n: number): Entry => ({
    op: create(n),
    prepared: {} as Entry['prepared'],
    job: { atomic: false, size: 1, results: [], remaining: 1, resolve: () => undefined },
    index: 0,
  })

  it('releases taken entries once it is empty, so a quiet writer holds no committed op', () => {
    const queue = new EntryQueue()
    for (let n = 1; n <= 10; n++) queue.push(entry(n))
    expect(queue.take(4)).toHaveLength(4)
    expect(queue.retained).toBe(10) // entries still queued keep the array
    expect(queue.take(100)).toHaveLength(6)
    expect(queue.length).toBe(0)
    expect(queue.retained).toBe(0)
  })

  it('compacts when taken entries are most of a long array', () => {
    const queue = new EntryQueue()
    for (let n = 1; n <= 3000; n++) queue.push(entry(n))
    queue.take(2000)
    expect(queue.length).toBe(1000)
    expect(queue.retained).toBe(1000)
    expect((queue.take(1)[0]?.op as { record: { id: string } }).record.id).toBe(sampleRequest('main', 2001).id)
  })
})
