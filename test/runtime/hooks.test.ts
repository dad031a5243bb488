/**
 * Hooks in the runtime: every verdict and every last-green move is stored in the outbox in
 * the same commit as the change itself, and delivered at least once, with a stable
 * idempotency key, across failures, crashes and stops.
 */
import { SimulatedClock } from 'xstate'
import { describe, expect, it } from 'vitest'
import type { LastGreenPayload, VerdictPayload } from '../../src/hooks/index.js'
import { InvalidInputError, StorageUnavailableError, createStovepipe, type WriteOp } from '../../src/index.js'
import { createMemoryStorage } from '../../src/storage/memory/index.js'
import { createFakeSourceControl } from '../../src/sourcecontrol/fake.js'
import { createFakeBuilder } from '../../src/build/fake.js'
import { recordCommits, type RecordingStorage } from '../support/backends.js'
import { driveUntil, settle } from '../support/drive.js'
import { world, type World } from '../support/runtime.js'
import { recordingHook, type RecordingHook } from '../hooks/support.js'
import { createFaultyStorage, type FaultyStorage } from '../../src/testing/index.js'

const ref = { ref: 'main' }

function clockAt(): SimulatedClock {
  const clock = new SimulatedClock()
  clock.set(1_700_000_000_000)
  return clock
}

/** Ingests the head `sha` and waits until it is recorded. */
async function validate(w: World, sha: string): Promise<string> {
  const main = await w.run(w.sp.queue('main', ref))
  w.sc.commit('main', sha)
  const { id } = await w.run(main.ingest())
  await w.run(main.waitFor(id))
  return id
}

const keys = (hook: RecordingHook): string[] => hook.delivered().map((c) => c.idempotencyKey)

/** Lets an hour pass on the clock: no more deliveries may come. */
async function quiet(w: World): Promise<void> {
  for (let i = 0; i < 60; i++) {
    w.clock.increment(60_000)
    await settle(5)
  }
}

describe('hooks in the runtime', () => {
  it('delivers one onVerdict per verdict and one onLastGreen per last-green move, with their idempotency keys', async () => {
    const clock = clockAt()
    const hook = recordingHook(clock)
    const w = await world({
      clock,
      runtime: { hooks: [hook] },
      builder: { outcome: (uri) => (uri.endsWith('r2') ? 'failed' : 'passed') },
    })
    const first = await validate(w, 'g1')
    await driveUntil(clock, () => hook.delivered().length === 2)
    const second = await validate(w, 'r2')
    await driveUntil(clock, () => hook.delivered().length === 3)
    const third = await validate(w, 'g3')
    await driveUntil(clock, () => hook.delivered().length === 5)
    await quiet(w)

    expect(keys(hook).sort()).toEqual(
      [
        `main:${first}:verdict`,
        `main:${first}:lastGreen`,
        `main:${second}:verdict`,
        `main:${third}:verdict`,
        `main:${third}:lastGreen`,
      ].sort(),
    )
    expect(hook.calls.every((c) => c.outcome === 'delivered' && c.attempt === 1)).toBe(true)
    const verdicts = hook.calls.filter((c) => c.kind === 'verdict').map((c) => c.payload as VerdictPayload)
    expect(verdicts.map((v) => [v.requestId, v.uri, v.verdict, v.degree])).toEqual([
      [first, 'fake://g1', 'green', 0],
      [second, 'fake://r2', 'red', 1],
      [third, 'fake://g3', 'green', 0],
    ])
    const view = await w.sp.request(third)
    expect(verdicts[2]).toEqual({
      queue: 'main',
      requestId: third,
      uri: 'fake://g3',
      verdict: 'green',
      degree: 0,
      reason: null,
      at: view.endedAt,
    })
    const moves = hook.calls.filter((c) => c.kind === 'lastGreen').map((c) => c.payload as LastGreenPayload)
    expect(moves).toEqual([
      { queue: 'main', requestId: first, uri: 'fake://g1', previous: null, at: expect.any(Number) as number },
      {
        queue: 'main',
        requestId: third,
        uri: 'fake://g3',
        previous: { requestId: first, uri: 'fake://g1', at: moves[0]?.at ?? -1 },
        at: view.endedAt ?? -1,
      },
    ])
    const entries = (await w.storage.outbox.list()).items
    expect(entries).toHaveLength(5)
    expect(entries.every((e) => e.deliveredAt !== null && e.attempts === 1 && e.hook === 'recorder')).toBe(true)
  })

  it('stores each notification in the same commit as the change it reports', async () => {
    const clock = clockAt()
    const hook = recordingHook(clock)
    let recording: RecordingStorage | undefined
    const w = await world({
      clock,
      runtime: { hooks: [hook] },
      wrap: (inner) => (recording = recordCommits(inner, () => clock.now())),
    })
    const id = await validate(w, 'g1')
    await driveUntil(clock, () => hook.delivered().length === 2)
    const commits = recording?.commits ?? []
    const has = (ops: readonly WriteOp[], test: (op: WriteOp) => boolean): boolean => ops.some(test)
    const recorded = commits.filter((c) =>
      has(c.ops, (op) => op.op === 'request.update' && op.record.id === id && op.record.state === 'recorded'),
    )
    expect(recorded).toHaveLength(1)
    expect(has(recorded[0]?.ops ?? [], (op) => op.op === 'outbox.put' && op.entry.requestId === id && op.entry.kind === 'verdict')).toBe(
      true,
    )
    const moved = commits.filter((c) => has(c.ops, (op) => op.op === 'queue.update' && op.record.lastGreen?.requestId === id))
    expect(moved.length).toBeGreaterThanOrEqual(1)
    expect(has(moved[0]?.ops ?? [], (op) => op.op === 'outbox.put' && op.entry.requestId === id && op.entry.kind === 'lastGreen')).toBe(
      true,
    )
    // Nowhere else: the entries are never written on their own.
    const puts = commits.filter((c) => has(c.ops, (op) => op.op === 'outbox.put'))
    expect(puts.every((c) => has(c.ops, (op) => op.op === 'request.update' || op.op === 'queue.update'))).toBe(true)
  })

  it('retries a failing hook and delivers each notification exactly once in the end', async () => {
    const clock = clockAt()
    const hook = recordingHook(clock, { failFirst: 4 })
    const w = await world({ clock, runtime: { hooks: [hook], hookRetry: { baseDelayMs: 1_000 }, random: () => 0.5 } })
    const id = await validate(w, 'g1')
    await driveUntil(clock, () => hook.delivered().length === 2, { stepMs: 50 })
    await quiet(w)
    expect(keys(hook).sort()).toEqual([`main:${id}:lastGreen`, `main:${id}:verdict`])
    expect(hook.calls.filter((c) => c.outcome === 'failed')).toHaveLength(4)
    const attempts = (await w.storage.outbox.list()).items.map((e) => e.attempts)
    expect(attempts.reduce((a, b) => a + b, 0)).toBe(6)
  })

  it('delivers at least once across a crash: notifications left in the outbox go out after the restart', async () => {
    const clock = clockAt()
    const hook = recordingHook(clock, { failFirst: 1_000 })
    const w = await world({ clock, runtime: { hooks: [hook], hookRetry: { baseDelayMs: 1_000, maxDelayMs: 5_000 } } })
    const id = await validate(w, 'g1')
    await driveUntil(clock, () => hook.calls.length >= 4, { stepMs: 50 })
    expect(hook.delivered()).toEqual([])
    await w.crash(10_000)
    hook.failNext = 0
    await driveUntil(clock, () => hook.delivered().length === 2, { stepMs: 50 })
    await quiet(w)
    expect(keys(hook).sort()).toEqual([`main:${id}:lastGreen`, `main:${id}:verdict`])
    const tries = hook.calls.filter((c) => c.kind === 'verdict')
    expect(new Set(tries.map((c) => c.idempotencyKey)).size).toBe(1)
    expect(tries.at(-1)?.attempt).toBeGreaterThan(1)
  })

  it('does not lose a last-green move when the runtime crashed before the queue snapshot write', async () => {
    const clock = clockAt()
    const hook = recordingHook(clock)
    let loseSnapshots = false
    const w = await world({
      clock,
      runtime: { hooks: [hook] },
      wrap: (inner) => ({
        ...inner,
        // While set, queue snapshot writes and their last-green notifications are lost (the rest
        // of their batch commits), as if
        // the process died after the verdict was durable and before the snapshot was.
        commit: async (ops) => {
          if (!loseSnapshots) return inner.commit(ops)
          const lost = (op: WriteOp): boolean => op.op === 'queue.update' || (op.op === 'outbox.put' && op.entry.kind === 'lastGreen')
          const kept = ops.filter((op) => !lost(op))
          const results = kept.length === 0 ? [] : await inner.commit(kept)
          return ops.map((op) => (lost(op) ? { status: 'ok' as const } : (results.shift() ?? { status: 'ok' as const })))
        },
      }),
    })
    const first = await validate(w, 'g1')
    await driveUntil(clock, () => hook.delivered().length === 2)
    loseSnapshots = true
    const second = await validate(w, 'g2')
    await driveUntil(clock, () => hook.delivered().length === 3)
    expect((await w.storage.queues.get('main')).lastGreen?.requestId).toBe(first)
    await expect(w.storage.outbox.get({ queue: 'main', requestId: second, kind: 'lastGreen', hook: 'recorder' })).rejects.toThrow()
    loseSnapshots = false
    await w.crash()
    await driveUntil(clock, () => hook.delivered().length === 4)
    await quiet(w)
    const move = hook.calls.at(-1)
    expect(move?.idempotencyKey).toBe(`main:${second}:lastGreen`)
    expect(move?.payload).toMatchObject({ requestId: second, uri: 'fake://g2', previous: { requestId: first, uri: 'fake://g1' } })
    expect((await w.storage.queues.get('main')).lastGreen?.requestId).toBe(second)
    expect(keys(hook).filter((k) => k.endsWith(':lastGreen'))).toEqual([`main:${first}:lastGreen`, `main:${second}:lastGreen`])
  })

  it('stop() aborts hook calls under way; their notifications stay in the outbox for the next start', async () => {
    const clock = clockAt()
    const hook = recordingHook(clock)
    hook.hang = true
    const w = await world({ clock, runtime: { hooks: [hook] } })
    const id = await validate(w, 'g1')
    await driveUntil(clock, () => hook.calls.length === 2)
    await w.run(w.sp.stop())
    expect(hook.calls.every((c) => c.signal.aborted)).toBe(true)
    const pending = (await w.storage.outbox.list()).items
    expect(pending.map((e) => [e.kind, e.attempts, e.deliveredAt])).toEqual([
      ['verdict', 0, null],
      ['lastGreen', 0, null],
    ])
    hook.hang = false
    await w.restart()
    await driveUntil(clock, () => hook.delivered().length === 2)
    expect(hook.calls.map((c) => c.attempt)).toEqual([1, 1, 1, 1])
    expect(keys(hook).sort()).toEqual([`main:${id}:lastGreen`, `main:${id}:verdict`])
  })

  it('tells onVerdict of indeterminate verdicts too (and moves no last green)', async () => {
    const clock = clockAt()
    const hook = recordingHook(clock)
    const w = await world({ clock, runtime: { hooks: [hook] }, builder: { durationMs: 10_000 } })
    const main = await w.run(w.sp.queue('main', { ref: 'main', maxValidationMs: 1_000 }))
    w.sc.commit('main', 'a1')
    const { id } = await w.run(main.ingest())
    await w.run(main.waitFor(id), 50)
    await driveUntil(clock, () => hook.delivered().length === 1)
    await quiet(w)
    expect(hook.calls.map((c) => [c.kind, c.payload])).toEqual([
      [
        'verdict',
        {
          queue: 'main',
          requestId: id,
          uri: 'fake://a1',
          verdict: 'indeterminate',
          degree: null,
          reason: 'maxValidationMs passed',
          at: expect.any(Number) as number,
        },
      ],
    ])
  })

  it('only stores notifications a hook wants, and none without hooks', async () => {
    const clock = clockAt()
    const greenOnly = recordingHook(clock, { name: 'green-only', kinds: ['lastGreen'] })
    const w = await world({ clock, runtime: { hooks: [greenOnly] } })
    await validate(w, 'g1')
    await driveUntil(clock, () => greenOnly.delivered().length === 1)
    expect((await w.storage.outbox.list()).items.map((e) => [e.kind, e.hook])).toEqual([['lastGreen', 'green-only']])

    const plain = await world()
    await validate(plain, 'g1')
    await plain.run(plain.sp.stop())
    expect((await plain.storage.outbox.list()).items).toEqual([])
  })

  it('refuses invalid hooks with InvalidInputError', async () => {
    const base = { storage: createMemoryStorage(), sourceControl: createFakeSourceControl(), builder: createFakeBuilder() }
    const hook = { name: 'same', onVerdict: () => Promise.resolve() }
    await expect(createStovepipe({ ...base, hooks: [hook, { ...hook }] })).rejects.toBeInstanceOf(InvalidInputError)
    await expect(createStovepipe({ ...base, hooks: [{ name: 'no/slash', onVerdict: hook.onVerdict }] })).rejects.toThrow(/name/)
    await expect(createStovepipe({ ...base, hooks: [hook], hookRetry: { maxAttempts: -1 } })).rejects.toThrow(/maxAttempts/)
  })
})

describe('hooks and lost acknowledgements', () => {
  it('delivers a verdict notification whose commit applied but lost its acknowledgement', async () => {
    const clock = new SimulatedClock()
    clock.set(1_700_000_000_000)
    const hook = recordingHook(clock)
    let lose = true
    const w = await world({
      clock,
      runtime: { hooks: [hook] },
      builder: { outcome: () => 'failed' },
      wrap: (inner) => ({
        ...inner,
        commit: async (ops: readonly WriteOp[]) => {
          const results = await inner.commit(ops)
          const i = ops.findIndex((op) => op.op === 'request.update' && op.record.state === 'recorded')
          if (lose && i >= 0 && results[i]?.status === 'ok' && ops.some((op) => op.op === 'outbox.put')) {
            lose = false
            throw new StorageUnavailableError('the commit applied; its acknowledgement was lost')
          }
          return results
        },
      }),
    })
    const main = await w.run(w.sp.queue('main', { ref: 'main' }))
    w.sc.commit('main', 'r1')
    const { id } = await w.run(main.ingest())
    expect(await w.run(main.waitFor(id))).toMatchObject({ state: 'recorded', verdict: 'red' })
    expect(lose).toBe(false)
    // The retry found the entry stored (already_exists): the dispatcher is woken all the same.
    for (let i = 0; i < 50 && hook.delivered().length === 0; i++) {
      clock.increment(100)
      await settle(5)
    }
    expect(hook.delivered().map((c) => (c.payload as VerdictPayload).requestId)).toEqual([id])
  })
})

describe('hooks and a step the machine did not hear of', () => {
  it('a concluding write from a stale version stores its notification only with its row: after a crash the hook hears what storage says', async () => {
    const clock = new SimulatedClock()
    clock.set(1_700_000_000_000)
    const hook = recordingHook(clock)
    let faulty: FaultyStorage | undefined
    let failedRecord = false
    let concluded = false
    const w = await world({
      clock,
      runtime: { hooks: [hook], writer: { retry: { maxAttempts: 1 } } },
      wrap: (inner) => {
        const f = (faulty = createFaultyStorage(inner))
        return {
          ...f,
          commit: async (ops: readonly WriteOp[]) => {
            // The recording write (facts, green notification, row) fails once, applying nothing:
            // the step write before it (processing.recording) is one the machine never hears of.
            if (!failedRecord && ops.some((op) => op.op === 'fact.put')) {
              failedRecord = true
              throw new StorageUnavailableError('injected: commit failed')
            }
            const results = await f.commit(ops)
            // The concluding write (maxAttempts 1): the process dies right after it.
            if (ops.some((op) => op.op === 'outbox.put' && (op.entry.payload as VerdictPayload).verdict === 'indeterminate')) {
              concluded = true
              f.faults.down = true
            }
            return results
          },
        }
      },
    })
    const main = await w.run(w.sp.queue('main', { ref: 'main', maxAttempts: 1 }))
    w.sc.commit('main', 'g1')
    const { id } = await w.run(main.ingest())
    await driveUntil(clock, () => concluded)
    const inner = faulty?.inner
    if (inner === undefined) throw new Error('no storage')
    // The notification and the change it announces, together.
    const entry = await inner.outbox.get({ queue: 'main', requestId: id, kind: 'verdict', hook: 'recorder' })
    expect((entry.payload as VerdictPayload).verdict).toBe('indeterminate')
    expect((await inner.requests.get(id)).state).toBe('recorded')
    await w.crash(1_000)
    const again = await w.run(w.sp.queue('main'))
    const stored = await w.run(again.waitFor(id))
    for (let i = 0; i < 100; i++) {
      clock.increment(100)
      await settle(3)
    }
    const told = hook.delivered().filter((c) => c.kind === 'verdict')
    expect(told.map((c) => (c.payload as VerdictPayload).verdict)).toEqual([stored.verdict])
  })
})

/** Lets 20 s pass (hook backoffs run out), then the last-green moves delivered, as `previous -> requestId`. */
async function deliveredMoves(clock: SimulatedClock, hook: RecordingHook): Promise<string[]> {
  for (let i = 0; i < 200; i++) {
    clock.increment(100)
    await settle(3)
  }
  return hook
    .delivered()
    .filter((c) => c.kind === 'lastGreen')
    .map((c) => {
      const p = c.payload as LastGreenPayload
      return `${p.previous?.requestId ?? 'none'} -> ${p.requestId}`
    })
}

describe('hooks and last-green moves across a crash', () => {
  it('every move of last green that was in effect is notified, also when the snapshot writes that carried them failed before a crash', async () => {
    const clock = new SimulatedClock()
    clock.set(1_700_000_000_000)
    const hook = recordingHook(clock)
    const faults = { snapshots: false }
    const w = await world({
      clock,
      runtime: { hooks: [hook] },
      // While set, queue snapshot writes fail (a row the database refuses, say).
      wrap: (inner) => createFaultyStorage(inner, { poison: (op) => faults.snapshots && op.op === 'queue.update' }),
    })
    const main = await w.run(w.sp.queue('main', { ref: 'main' }))
    const validate = async (sha: string): Promise<string> => {
      w.sc.commit('main', sha)
      const { id } = await w.run(main.ingest())
      await w.run(main.waitFor(id))
      return id
    }
    const r1 = await validate('g1')
    await driveUntil(clock, () => hook.delivered().length === 2)
    faults.snapshots = true
    const r2 = await validate('g2')
    expect(main.lastGreen()?.requestId).toBe(r2) // in effect
    const r3 = await validate('g3')
    expect((await w.sp.request(r3)).baseline).toBe('fake://g2') // built since r2
    await settle(10)
    faults.snapshots = false
    const sp = await w.crash(1_000)
    expect((await w.run(sp.queue('main'))).lastGreen()?.requestId).toBe(r3)
    const moves = await deliveredMoves(clock, hook)
    expect(moves).toEqual([`none -> ${r1}`, `${r1} -> ${r2}`, `${r2} -> ${r3}`])
  })

  it('a slow older green recorded after a newer one was no move, and is not notified as one after a crash', async () => {
    const clock = new SimulatedClock()
    clock.set(1_700_000_000_000)
    const hook = recordingHook(clock)
    const faults = { snapshots: true }
    const w = await world({
      clock,
      runtime: { hooks: [hook] },
      builder: { durationMs: (uri) => (uri === 'fake://slow1' ? 5_000 : 100) },
      wrap: (inner) => createFaultyStorage(inner, { poison: (op) => faults.snapshots && op.op === 'queue.update' }),
    })
    const main = await w.run(w.sp.queue('main', { ref: 'main', maxConcurrent: 2 }))
    w.sc.commit('main', 'slow1')
    const older = await w.run(main.ingest())
    w.sc.commit('main', 'fast2')
    const newer = await w.run(main.ingest())
    await w.run(main.waitFor(newer.id))
    await w.run(main.waitFor(older.id))
    expect(main.lastGreen()?.requestId).toBe(newer.id)
    await settle(10)
    faults.snapshots = false
    const sp = await w.crash(1_000)
    expect((await w.run(sp.queue('main'))).lastGreen()?.requestId).toBe(newer.id)
    const moves = await deliveredMoves(clock, hook)
    expect(moves).toEqual([`none -> ${newer.id}`])
  })
})

describe('hooks and a deadline while a step is being written', () => {
  it('the concluding write waits for the step write under way: its notification is stored with its row, never beside a failed CAS', async () => {
    const clock = new SimulatedClock()
    clock.set(1_700_000_000_000)
    const hook = recordingHook(clock)
    let holdPlanning = true
    let release = (): void => undefined
    const orphans: string[] = []
    const w = await world({
      clock,
      runtime: { hooks: [hook] },
      wrap: (inner) => ({
        ...inner,
        commit: async (ops: readonly WriteOp[]) => {
          // The planning step's write hangs until released (storage is slow).
          if (holdPlanning && ops.some((op) => op.op === 'request.update' && op.record.state === 'processing')) {
            holdPlanning = false
            await new Promise<void>((resolve) => (release = resolve))
          }
          const results = await inner.commit(ops)
          const put = ops.findIndex((op) => op.op === 'outbox.put')
          const update = ops.findIndex((op) => op.op === 'request.update')
          if (put >= 0 && results[put]?.status === 'ok' && update >= 0 && results[update]?.status !== 'ok')
            orphans.push(`${results[update]?.status ?? 'no result'} beside a stored notification`)
          return results
        },
      }),
    })
    const main = await w.run(w.sp.queue('main', { ref: 'main', maxValidationMs: 500 }))
    w.sc.commit('main', 'g1')
    const { id } = await w.run(main.ingest())
    await driveUntil(clock, () => !holdPlanning)
    // The deadline passes while the planning write hangs: the request concludes.
    for (let i = 0; i < 60; i++) {
      clock.increment(10)
      await settle(2)
    }
    release()
    const done = await w.run(main.waitFor(id))
    expect(done).toMatchObject({ state: 'recorded', verdict: 'indeterminate', reason: 'maxValidationMs passed' })
    await driveUntil(clock, () => hook.delivered().some((c) => c.kind === 'verdict'))
    expect(orphans).toEqual([])
    const told = hook.delivered().filter((c) => c.kind === 'verdict')
    expect(told.map((c) => [(c.payload as VerdictPayload).verdict, (c.payload as VerdictPayload).at])).toEqual([
      ['indeterminate', done.endedAt],
    ])
  })
})
