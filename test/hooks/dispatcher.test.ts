/**
 * The outbox dispatcher on a simulated clock: due entries are delivered once, failures are
 * retried with growing backoff, given up after maxAttempts, slow calls time out, stop
 * aborts calls and leaves entries for the next dispatcher, and nothing it does throws.
 */
import { SimulatedClock } from 'xstate'
import { describe, expect, it } from 'vitest'
import { createWriter, type Writer } from '../../src/actors/writer.js'
import { createOutboxDispatcher, type Hook, type HookRetryOptions } from '../../src/hooks/index.js'
import { InvalidInputError, OUTBOX_NEVER, type OutboxEntry, type Storage } from '../../src/index.js'
import { createMemoryDatabase, createMemoryStorage } from '../../src/storage/memory/index.js'
import { sampleOutbox } from '../../src/testing/storage-contract.js'
import { driveUntil, settle } from '../support/drive.js'
import { capturingLogger, recordingHook } from './support.js'

const T0 = 1_700_000_000_000

function setup(hooks: (clock: SimulatedClock) => Hook[], retry: HookRetryOptions = {}, database = createMemoryDatabase()) {
  const clock = new SimulatedClock()
  clock.set(T0)
  const storage = createMemoryStorage({ database })
  const writer = createWriter({ storage, clock })
  const log = capturingLogger()
  const list = hooks(clock)
  const dispatcher = createOutboxDispatcher({ storage, writer, hooks: list, clock, logger: log.logger, random: () => 0.5, retry })
  return { clock, storage, writer, dispatcher, log, database, hooks: list }
}

const entry = (n: number, overrides: Partial<OutboxEntry> = {}): OutboxEntry =>
  sampleOutbox('main', n, { hook: 'recorder', createdAt: T0, nextAttemptAt: T0, ...overrides })

async function stored(storage: Storage, n: number, kind: OutboxEntry['kind'] = 'verdict', hook = 'recorder'): Promise<OutboxEntry> {
  return storage.outbox.get({ queue: 'main', requestId: `request/main/${n}`, kind, hook })
}

describe('outbox dispatcher', () => {
  it('delivers what is due at start, once, with its idempotency key, and settles it delivered', async () => {
    const hook = recordingHook(new SimulatedClock())
    const s = setup(() => [hook])
    await s.storage.outbox.put(entry(1))
    await s.storage.outbox.put(entry(2, { kind: 'lastGreen', payload: { queue: 'main', requestId: 'request/main/2', previous: null } }))
    s.dispatcher.start()
    await driveUntil(s.clock, () => hook.delivered().length === 2)
    await driveUntil(s.clock, () => s.writer.stats().pending === 0)
    expect(hook.calls.map((c) => [c.kind, c.idempotencyKey, c.attempt])).toEqual([
      ['verdict', 'main:request/main/1:verdict', 1],
      ['lastGreen', 'main:request/main/2:lastGreen', 1],
    ])
    expect(hook.calls[0]?.payload).toEqual(entry(1).payload)
    const first = await stored(s.storage, 1)
    expect(first).toMatchObject({ attempts: 1, lastError: null })
    expect(first.deliveredAt).toBeGreaterThanOrEqual(T0)
    expect(await s.storage.outbox.due({ before: OUTBOX_NEVER - 1 })).toEqual([])
    s.clock.increment(3_600_000)
    await settle(10)
    expect(hook.calls).toHaveLength(2)
    expect(s.dispatcher.stats()).toMatchObject({ delivered: 2, failed: 0, gaveUp: 0, inFlight: 0 })
  })

  it('retries a failing hook with growing delays and delivers it exactly once in the end', async () => {
    let hook = recordingHook(new SimulatedClock())
    const s = setup((clock) => [(hook = recordingHook(clock, { failFirst: 3 }))], { baseDelayMs: 1000, maxDelayMs: 60_000 })
    await s.storage.outbox.put(entry(1))
    s.dispatcher.start()
    await driveUntil(s.clock, () => hook.delivered().length === 1, { stepMs: 50 })
    expect(hook.calls.map((c) => c.outcome)).toEqual(['failed', 'failed', 'failed', 'delivered'])
    expect(hook.calls.map((c) => c.attempt)).toEqual([1, 2, 3, 4])
    expect(new Set(hook.calls.map((c) => c.idempotencyKey))).toEqual(new Set(['main:request/main/1:verdict']))
    // Full jitter with random 0.5: half of 1000, 2000, 4000 ms.
    const gaps = hook.calls.slice(1).map((c, i) => c.at - (hook.calls[i]?.at ?? 0))
    expect(gaps[0]).toBeGreaterThanOrEqual(500)
    expect(gaps[1]).toBeGreaterThanOrEqual(1000)
    expect(gaps[2]).toBeGreaterThanOrEqual(2000)
    expect(gaps[0]).toBeLessThan(1000)
    expect(gaps[1]).toBeLessThan(gaps[2] ?? 0)
    await driveUntil(s.clock, () => s.writer.stats().pending === 0)
    expect(await stored(s.storage, 1)).toMatchObject({ attempts: 4, lastError: null })
    s.clock.increment(600_000)
    await settle(10)
    expect(hook.calls).toHaveLength(4)
    const warnings = s.log.lines().filter((l) => l.msg === 'hook delivery failed; it will be retried')
    expect(warnings).toHaveLength(3)
  })

  it('records each failure (attempts, next attempt, last error) while it retries', async () => {
    let hook = recordingHook(new SimulatedClock())
    const s = setup((clock) => [(hook = recordingHook(clock, { failFirst: 10 }))], { baseDelayMs: 1000 })
    await s.storage.outbox.put(entry(1))
    s.dispatcher.start()
    await driveUntil(s.clock, () => hook.calls.length === 2, { stepMs: 10 })
    await driveUntil(s.clock, () => s.writer.stats().pending === 0)
    const after = await stored(s.storage, 1)
    expect(after.deliveredAt).toBeNull()
    expect(after.attempts).toBeGreaterThanOrEqual(1)
    expect(after.lastError).toMatch(/refused call/)
    expect(after.nextAttemptAt).toBeGreaterThan(s.clock.now() - 1000)
  })

  it('waits for an entry that is not due yet, then delivers it when it falls due', async () => {
    let hook = recordingHook(new SimulatedClock())
    const s = setup((clock) => [(hook = recordingHook(clock))])
    await s.storage.outbox.put(entry(1, { nextAttemptAt: T0 + 5_000, attempts: 2, lastError: 'before a restart' }))
    s.dispatcher.start()
    await driveUntil(s.clock, () => s.clock.now() >= T0 + 4_900, { stepMs: 100 })
    expect(hook.calls).toEqual([])
    await driveUntil(s.clock, () => hook.delivered().length === 1, { stepMs: 10 })
    expect(hook.calls[0]?.at).toBeGreaterThanOrEqual(T0 + 5_000)
    expect(hook.calls[0]?.attempt).toBe(3)
  })

  it('wakes when new entries are committed', async () => {
    let hook = recordingHook(new SimulatedClock())
    const s = setup((clock) => [(hook = recordingHook(clock))])
    s.dispatcher.start()
    await settle(10)
    await s.storage.outbox.put(entry(1, { createdAt: T0 + 5, nextAttemptAt: T0 + 5 }))
    s.dispatcher.wake()
    await driveUntil(s.clock, () => hook.delivered().length === 1)
    expect(s.clock.now() - T0).toBeLessThan(100)
  })

  it('gives up after maxAttempts: lastError says so, an error is logged, it is never due again', async () => {
    let hook = recordingHook(new SimulatedClock())
    const s = setup((clock) => [(hook = recordingHook(clock, { failFirst: 100 }))], { maxAttempts: 3, baseDelayMs: 100 })
    await s.storage.outbox.put(entry(1))
    s.dispatcher.start()
    await driveUntil(s.clock, () => s.dispatcher.stats().gaveUp === 1, { stepMs: 10 })
    await driveUntil(s.clock, () => s.writer.stats().pending === 0)
    const given = await stored(s.storage, 1)
    expect(given).toMatchObject({ attempts: 3, deliveredAt: null, nextAttemptAt: OUTBOX_NEVER })
    expect(given.lastError).toMatch(/^gave up after 3 attempt\(s\): Error: refused call 3/)
    expect(
      s.log
        .lines()
        .filter((l) => l.level === 50)
        .map((l) => l.msg),
    ).toEqual(['hook delivery failed for the last time; giving up'])
    s.clock.increment(3_600_000)
    await settle(10)
    expect(hook.calls).toHaveLength(3)
  })

  it('times out a hook call that does not finish: its signal aborts and the attempt counts as failed', async () => {
    let hook = recordingHook(new SimulatedClock())
    const s = setup((clock) => [(hook = recordingHook(clock))], { timeoutMs: 2_000, baseDelayMs: 100 })
    hook.hang = true
    await s.storage.outbox.put(entry(1))
    s.dispatcher.start()
    await driveUntil(s.clock, () => hook.calls.length === 1)
    const signal = hook.calls[0]?.signal
    await driveUntil(s.clock, () => signal?.aborted === true, { stepMs: 100 })
    expect(s.clock.now() - T0).toBeGreaterThanOrEqual(2_000)
    hook.hang = false
    await driveUntil(s.clock, () => hook.delivered().length === 1, { stepMs: 10 })
    expect(hook.calls.map((c) => c.attempt)).toEqual([1, 2])
    expect(s.dispatcher.stats().failed).toBe(1)
  })

  it('retries an entry whose hook is not configured, and tells why', async () => {
    let hook = recordingHook(new SimulatedClock())
    const s = setup((clock) => [(hook = recordingHook(clock))], { baseDelayMs: 1000 })
    await s.storage.outbox.put(entry(1, { hook: 'gone' }))
    s.dispatcher.start()
    await driveUntil(s.clock, () => s.dispatcher.stats().failed === 1)
    await driveUntil(s.clock, () => s.writer.stats().pending === 0)
    const kept = await stored(s.storage, 1, 'verdict', 'gone')
    expect(kept).toMatchObject({ attempts: 1, deliveredAt: null })
    expect(kept.lastError).toMatch(/no hook named gone is configured/)
    expect(hook.calls).toEqual([])
  })

  it('survives hooks that throw synchronously or reject with a non-Error', async () => {
    let calls = 0
    const hooks: Hook[] = [
      {
        name: 'sync',
        onVerdict: () => {
          calls++
          if (calls === 1) throw new Error('thrown synchronously')
          return Promise.resolve()
        },
      },
      {
        name: 'odd',
        onVerdict: () => {
          calls++
          // eslint-disable-next-line @typescript-eslint/prefer-promise-reject-errors -- the point: a hook rejecting with a non-Error
          return calls <= 3 ? Promise.reject({ reason: 'not an Error' }) : Promise.resolve()
        },
      },
    ]
    const s = setup(() => hooks, { baseDelayMs: 100 })
    await s.storage.outbox.put(entry(1, { hook: 'sync' }))
    await s.storage.outbox.put(entry(1, { hook: 'odd' }))
    s.dispatcher.start()
    await driveUntil(s.clock, () => s.dispatcher.stats().delivered === 2, { stepMs: 10 })
    await driveUntil(s.clock, () => s.writer.stats().pending === 0)
    expect((await stored(s.storage, 1, 'verdict', 'sync')).deliveredAt).not.toBeNull()
    expect((await stored(s.storage, 1, 'verdict', 'odd')).deliveredAt).not.toBeNull()
  })

  it('keeps at most `concurrency` calls under way', async () => {
    let hook = recordingHook(new SimulatedClock())
    let peak = 0
    const s = setup(
      (clock) => {
        hook = recordingHook(clock)
        const onVerdict = hook.onVerdict?.bind(hook)
        let under = 0
        hook.onVerdict = async (payload, context) => {
          under++
          peak = Math.max(peak, under)
          await new Promise<void>((resolve) => clock.setTimeout(resolve, 100))
          under--
          await onVerdict?.(payload, context)
        }
        return [hook]
      },
      { concurrency: 2 },
    )
    for (let n = 1; n <= 5; n++) await s.storage.outbox.put(entry(n))
    s.dispatcher.start()
    await driveUntil(s.clock, () => hook.delivered().length === 5, { stepMs: 10 })
    expect(peak).toBe(2)
    expect(hook.calls.map((c) => (c.payload as { requestId: string }).requestId)).toEqual([1, 2, 3, 4, 5].map((n) => `request/main/${n}`))
  })

  it('stop() aborts calls under way and leaves their entries for the next dispatcher', async () => {
    let hook = recordingHook(new SimulatedClock())
    const database = createMemoryDatabase()
    const s = setup((clock) => [(hook = recordingHook(clock))], {}, database)
    hook.hang = true
    await s.storage.outbox.put(entry(1))
    s.dispatcher.start()
    await driveUntil(s.clock, () => hook.calls.length === 1)
    const stopping = s.dispatcher.stop()
    await driveUntil(s.clock, () => hook.calls[0]?.signal.aborted === true)
    await stopping
    await driveUntil(s.clock, () => s.writer.stats().pending === 0)
    expect(await stored(s.storage, 1)).toEqual(entry(1))
    s.dispatcher.wake()
    s.dispatcher.start()
    await settle(10)
    expect(hook.calls).toHaveLength(1)

    let next = recordingHook(new SimulatedClock())
    const again = setup((clock) => [(next = recordingHook(clock))], {}, database)
    again.dispatcher.start()
    await driveUntil(again.clock, () => next.delivered().length === 1)
    expect(next.calls[0]?.idempotencyKey).toBe(hook.calls[0]?.idempotencyKey)
  })

  it('refuses bad options and bad hooks with InvalidInputError', () => {
    const clock = new SimulatedClock()
    const storage = createMemoryStorage()
    const writer = createWriter({ storage, clock })
    const make =
      (hooks: unknown, retry: HookRetryOptions = {}) =>
      () =>
        createOutboxDispatcher({ storage, writer, hooks: hooks as Hook[], clock, retry })
    const ok = { name: 'a', onVerdict: () => Promise.resolve() }
    expect(make([{ ...ok }, { ...ok }])).toThrow(InvalidInputError)
    expect(make([{ name: 'a b', onVerdict: ok.onVerdict }])).toThrow(/hooks\[0\]\.name/)
    expect(make([{ name: 'quiet' }])).toThrow(/neither onVerdict nor onLastGreen/)
    expect(make([{ name: 'x', onVerdict: 'no' }])).toThrow(/onVerdict must be a function/)
    expect(make('nope')).toThrow(/hooks must be an array/)
    expect(make([ok], { maxAttempts: 0 })).toThrow(/maxAttempts/)
    expect(make([ok], { baseDelayMs: -1 })).toThrow(/baseDelayMs/)
    expect(make([ok], { concurrency: 1.5 })).toThrow(/concurrency/)
    expect(make([ok], { maxAttempts: Number.POSITIVE_INFINITY })).not.toThrow()
  })
})

describe('outbox dispatcher under failing settles', () => {
  it('does not spin when more entries are held (delivered, settle failed) than a page holds: it waits for the earliest hold', async () => {
    const clock = new SimulatedClock()
    clock.set(T0)
    const hook = recordingHook(clock)
    const raw = createMemoryStorage()
    let dueReads = 0
    const spin = { halt: (): void => undefined }
    const storage: Storage = {
      ...raw,
      outbox: {
        ...raw.outbox,
        due: (options) => {
          if (++dueReads >= 500) spin.halt() // a spin: break it so the test ends
          return raw.outbox.due(options)
        },
      },
    }
    const ops = Array.from({ length: 1001 }, (_, i) => ({
      op: 'outbox.put' as const,
      entry: sampleOutbox('main', i + 1, { hook: 'recorder', createdAt: T0, nextAttemptAt: T0 }),
    }))
    await raw.commit(ops)
    // Every settle is dead-lettered (storage writes failing): each delivered entry is held for a while.
    const writer = {
      write: (written: readonly unknown[]) =>
        Promise.resolve(written.map(() => ({ status: 'dead_lettered', error: { code: 'STORAGE_FAILED', message: 'write refused' } }))),
    } as unknown as Writer
    const dispatcher = createOutboxDispatcher({
      storage,
      writer,
      hooks: [hook],
      clock,
      random: () => 0.5,
      retry: { baseDelayMs: 60_000, concurrency: 8 },
    })
    spin.halt = () => {
      dispatcher.halt()
    }
    dispatcher.start()
    for (let i = 0; i < 400; i++) await settle()
    dispatcher.halt()
    // The first 1000 delivered once each, then idle on its timer: a handful of reads, not a loop.
    expect(hook.calls).toHaveLength(1000)
    expect(dueReads).toBeLessThan(500)
  })
})
