/**
 * Recovery: a runtime started on storage left by a stopped or crashed one resumes every
 * request that had not ended, at its persisted step, with deadlines re-armed from absolute
 * times; counters continue; facts are never written twice; last green never regresses.
 */
import { describe, expect, it } from 'vitest'
import {
  createStovepipe,
  EventLogConflictError,
  StoppedError,
  StorageFailedError,
  StorageUnavailableError,
  type QueueHandle,
  type Storage,
} from '../../src/index.js'
import type { RequestContext } from '../../src/machines/request.js'
import { requestRecord } from '../../src/runtime/request-services.js'
import { createMemoryStorage } from '../../src/storage/memory/index.js'
import { describeRequest } from '../../src/runtime/views.js'
import type { QueueRecord, WriteOp } from '../../src/storage/types.js'
import { createFaultyStorage } from '../../src/testing/faulty-storage.js'
import { driveUntil, settle, track } from '../support/drive.js'
import { droppingQueueWrites, world, type World } from '../support/runtime.js'

async function buildingRequest(w: World, config: Record<string, unknown> = {}): Promise<string> {
  const main = await w.run(w.sp.queue('main', { ref: 'main', ...config }))
  w.sc.commit('main', 'a1')
  const { id } = await w.run(main.ingest())
  await driveUntil(w.clock, () => w.builder.running() === 1)
  return id
}

/**
 * Waits for request `id` to end as the queue's last green (its snapshot write dropped by the
 * caller), crashes the runtime, and checks that the next start finds it last green.
 */
async function greenFoundAfterCrash(w: World, main: QueueHandle, id: string): Promise<void> {
  await w.run(main.waitFor(id))
  expect(main.lastGreen()?.requestId).toBe(id)
  const sp = await w.crash()
  expect((await w.run(sp.queue('main'))).lastGreen()?.requestId).toBe(id)
}

describe('recovery', () => {
  for (const how of ['stop', 'crash'] as const) {
    it(`resumes a request in flight after a ${how}, at its persisted step`, async () => {
      const w = await world({ builder: { durationMs: 1_000 } })
      const id = await buildingRequest(w)
      const before = await w.storage.requests.get(id)
      expect(before.state).toBe('processing')
      const sp = how === 'stop' ? await w.restart() : await w.crash()
      const main = await w.run(sp.queue('main'))
      expect(main.inFlight()).toEqual([{ id, n: 1, uri: 'fake://a1', state: 'processing' }])
      // The build restarts from the row as it was: a resumed step is not written again first.
      await driveUntil(w.clock, () => w.builder.running() === 1)
      expect((await w.storage.requests.get(id)).version).toBe(before.version)
      const done = await w.run(main.waitFor(id))
      expect(done).toMatchObject({ state: 'recorded', verdict: 'green' })
      expect(w.builder.builds.map((b) => [b.requestId, b.result === 'aborted' || b.result === 'running' ? 'interrupted' : 'done'])).toEqual(
        [
          [id, 'interrupted'],
          [id, 'done'],
        ],
      )
      expect(main.lastGreen()?.requestId).toBe(id)
    })
  }

  it('re-arms deadlines from stored absolute times: one that passed while the runtime was down fires at once', async () => {
    const w = await world({ builder: { durationMs: 10_000 } })
    const id = await buildingRequest(w, { maxValidationMs: 1_000 })
    const sp = await w.crash(5_000)
    const main = await w.run(sp.queue('main'))
    const before = w.clock.now()
    const done = await w.run(main.waitFor(id), 1)
    expect(done).toMatchObject({ verdict: 'indeterminate', reason: 'maxValidationMs passed' })
    expect(w.clock.now() - before).toBeLessThan(50)
    // It concludes as it resumes: its build does not start again only to be aborted.
    expect(w.builder.builds.map((b) => b.requestId)).toEqual([id])
  })

  it('keeps a deadline that has not passed: the resumed request gets only the time left', async () => {
    const w = await world({ builder: { durationMs: 10_000 } })
    const id = await buildingRequest(w, { maxValidationMs: 3_000 })
    const started = (await w.storage.requests.get(id)).data as { context: { deadlineAt: number } }
    const sp = await w.crash(1_000)
    const main = await w.run(sp.queue('main'))
    const done = await w.run(main.waitFor(id), 50)
    expect(done.reason).toBe('maxValidationMs passed')
    expect(done.endedAt).toBeGreaterThanOrEqual(started.context.deadlineAt)
    expect((done.endedAt ?? 0) - started.context.deadlineAt).toBeLessThan(200)
  })

  it('a slot freed by a deadline missed while the runtime was down is taken with a deadline from now, not from then', async () => {
    // The first build outlives the runtime; the second head waits for the slot.
    const w = await world({ builder: { durationMs: 500, outcome: () => 'passed' } })
    let main = await w.run(w.sp.queue('main', { ref: 'main', maxValidationMs: 1_000, leaseGraceMs: 0 }))
    w.sc.commit('main', 'a1')
    const first = await w.run(main.ingest())
    await driveUntil(w.clock, () => w.builder.running() === 1)
    w.sc.commit('main', 'a2')
    const second = await w.run(main.ingest())
    expect(main.inFlight().map((r) => r.state)).toEqual(['processing', 'accepted'])
    const sp = await w.crash(10_000)
    main = await w.run(sp.queue('main'))
    // The first request's deadline and lease passed while the runtime was down: the timer
    // fires at once with that due time, and the second request starts now, with its full time.
    expect(await w.run(main.waitFor(first.id))).toMatchObject({ verdict: 'indeterminate', reason: 'maxValidationMs passed' })
    expect(await w.run(main.waitFor(second.id))).toMatchObject({ state: 'recorded', verdict: 'green' })
    expect(w.builder.builds.filter((b) => b.requestId === second.id).map((b) => b.result)).toEqual([{ outcome: 'passed' }])
  })

  it('a crash between recording green and its correction by an older fact never makes that commit last green', async () => {
    // Without hooks, the recording commit writes the row with the request's own verdict and
    // corrects it in a second write when the commit already had a fact; the crash comes between.
    let recorded = false
    let opened = 0
    const w = await world({
      wrap: (inner) => {
        const first = ++opened === 1
        return {
          ...inner,
          // The first runtime's commits hang once the row is recorded: the crash comes then.
          commit: async (ops) => {
            if (first && recorded) return new Promise(() => undefined)
            const results = await inner.commit(ops)
            recorded ||= first && ops.some((op) => op.op === 'request.update' && op.record.state === 'recorded')
            return results
          },
        }
      },
    })
    const main = await w.run(w.sp.queue('main', { ref: 'main' }))
    w.sc.commit('main', 'a1')
    const red = { queue: 'main', uri: 'fake://a1', project: '', degree: 1, requestId: 'request/main/7', at: 5 }
    await w.storage.facts.put(red)
    const { id } = await w.run(main.ingest())
    await driveUntil(w.clock, () => recorded)
    expect(describeRequest(await w.storage.requests.get(id))).toMatchObject({ verdict: 'green' }) // the row before its correction
    const sp = await w.crash()
    const restarted = await w.run(sp.queue('main'))
    expect(restarted.lastGreen()).toBeUndefined()
    expect(await w.run(sp.request(id))).toMatchObject({ verdict: 'red', degree: 1, reason: 'fact already recorded by request/main/7' })
    expect(await w.storage.facts.get('main', 'fake://a1')).toEqual(red)
  })

  it('continues counters after a restart and keeps last green', async () => {
    const w = await world()
    let main = await w.run(w.sp.queue('main', { ref: 'main' }))
    w.sc.commit('main', 'a1')
    const first = await w.run(main.ingest())
    await w.run(main.waitFor(first.id))
    const sp = await w.crash()
    main = await w.run(sp.queue('main'))
    expect(main.lastGreen()?.requestId).toBe(first.id)
    w.sc.commit('main', 'a2')
    expect((await w.run(main.ingest())).id).toBe('request/main/2')
  })

  it('recovers last green from recorded requests when the queue snapshot lagged behind', async () => {
    let dropQueueWrites = false
    const w = await world({ wrap: (inner) => ({ ...inner, commit: droppingQueueWrites(inner, () => dropQueueWrites) }) })
    let main = await w.run(w.sp.queue('main', { ref: 'main' }))
    w.sc.commit('main', 'a1')
    await w.run(main.waitFor((await w.run(main.ingest())).id))
    dropQueueWrites = true
    w.sc.commit('main', 'a2')
    const second = await w.run(main.ingest())
    await w.run(main.waitFor(second.id))
    expect(main.lastGreen()?.requestId).toBe(second.id)
    expect((await w.storage.queues.get('main')).lastGreen?.requestId).not.toBe(second.id)
    const sp = await w.crash()
    main = await w.run(sp.queue('main'))
    expect(main.lastGreen()?.requestId).toBe(second.id)
  })

  it('a green that ended after the snapshot was written, below a request that had ended before it, is found after a crash', async () => {
    // Request 1 builds long; request 2 (red) ends first; a snapshot is written while 1 is in
    // flight. Recovery must read down to request 1, not stop at the highest number ended.
    let dropQueueWrites = false
    const w = await world({
      builder: { durationMs: (uri) => (uri.endsWith('slow') ? 5_000 : 0), outcome: (uri) => (uri.endsWith('red') ? 'failed' : 'passed') },
      wrap: (inner) => ({ ...inner, commit: droppingQueueWrites(inner, () => dropQueueWrites) }),
    })
    const main = await w.run(w.sp.queue('main', { ref: 'main', maxConcurrent: 2 }))
    w.sc.commit('main', 'slow')
    const slow = await w.run(main.ingest())
    await driveUntil(w.clock, () => w.builder.running() === 1)
    w.sc.commit('main', 'red')
    await w.run(main.waitFor((await w.run(main.ingest())).id))
    await w.run(w.sp.queue('main', { ref: 'main', maxConcurrent: 3 })) // a snapshot write, request 1 in flight
    const stored = await w.storage.queues.get('main')
    expect((stored.snapshot as { settledThrough?: number }).settledThrough).toBe(0)
    dropQueueWrites = true
    await greenFoundAfterCrash(w, main, slow.id)
  })

  /** A world whose queue snapshot writes can be dropped (they "succeed" without reaching storage), and request creations held. */
  async function laggingWorld(durationMs: (uri: string) => number) {
    const gates = { dropQueueWrites: false, holdCreates: undefined as Promise<void> | undefined, held: 0 }
    const w = await world({
      builder: { durationMs, outcome: (uri) => (uri.endsWith('red') ? 'failed' : 'passed') },
      wrap: (inner) => {
        const commit = droppingQueueWrites(inner, () => gates.dropQueueWrites)
        return {
          ...inner,
          commit: async (ops) => {
            if (gates.holdCreates !== undefined && ops.some((op) => op.op === 'request.create')) {
              gates.held++
              await gates.holdCreates
            }
            return commit(ops)
          },
        }
      },
    })
    const settledThrough = async (): Promise<number | undefined> =>
      ((await w.storage.queues.get('main')).snapshot as { settledThrough?: number }).settledThrough
    /** Drives the clock until the stored queue row satisfies `done`. */
    const stored = async (done: (row: QueueRecord) => boolean): Promise<void> => {
      for (let step = 0; !done(await w.storage.queues.get('main')); step++) {
        if (step > 1_000) throw new Error('the queue row never got there')
        await settle()
        w.clock.increment(1)
      }
    }
    return { w, gates, settledThrough, stored }
  }

  it('a request resumed after a crash is not settled by the snapshot written before it resumes', async () => {
    // Request 1 is green but its snapshot write is lost; request 2 builds on. Recovery finds
    // 1 and writes a snapshot before 2 resumes: that snapshot must not call 2 settled.
    const { w, gates, settledThrough, stored } = await laggingWorld((uri) => (uri.endsWith('slow') ? 5_000 : 0))
    let main = await w.run(w.sp.queue('main', { ref: 'main', maxConcurrent: 2 }))
    gates.dropQueueWrites = true
    w.sc.commit('main', 'fast')
    const fast = await w.run(main.ingest())
    await w.run(main.waitFor(fast.id))
    w.sc.commit('main', 'slow')
    const slow = await w.run(main.ingest())
    await driveUntil(w.clock, () => w.builder.running() === 1)
    gates.dropQueueWrites = false
    const sp = await w.crash()
    main = await w.run(sp.queue('main'))
    expect(main.lastGreen()?.requestId).toBe(fast.id)
    await stored((row) => row.lastGreen?.requestId === fast.id)
    expect(await settledThrough()).toBe(1)
    gates.dropQueueWrites = true
    await greenFoundAfterCrash(w, main, slow.id)
  })

  it('a request being minted is not settled by a snapshot written meanwhile', async () => {
    const { w, gates, settledThrough } = await laggingWorld(() => 0)
    const main = await w.run(w.sp.queue('main', { ref: 'main' }))
    let release = (): void => undefined
    gates.holdCreates = new Promise((resolve) => (release = resolve))
    w.sc.commit('main', 'a1')
    const ingest = track(main.ingest())
    await driveUntil(w.clock, () => gates.held === 1)
    // Its number is taken, its row not yet written: a config change writes the snapshot now.
    const config = track(w.sp.queue('main', { ref: 'main', maxConcurrent: 2 }))
    await settle()
    release()
    gates.holdCreates = undefined
    await driveUntil(w.clock, () => ingest.settled && config.settled)
    expect(await settledThrough()).toBe(0)
    gates.dropQueueWrites = true
    const { id } = ingest.value as { id: string }
    await greenFoundAfterCrash(w, main, id)
  })

  it('a request healed under an old number is not settled by the snapshot: its green is found after a crash', async () => {
    const { w, gates, settledThrough } = await laggingWorld(() => 0)
    let main = await w.run(w.sp.queue('main', { ref: 'main' }))
    // Number 1 was taken and its head claimed, but its row never written (as a crash between
    // the two would leave, in a store without the atomic claim): a later ingest heals it.
    await w.storage.counters.next('main')
    await w.storage.requestUris.create({ queue: 'main', uri: 'fake://old', requestId: 'request/main/1' })
    w.sc.commit('main', 'red')
    await w.run(main.waitFor((await w.run(main.ingest())).id))
    const sp = await w.restart()
    main = await w.run(sp.queue('main'))
    expect(await settledThrough()).toBe(2)
    w.sc.commit('main', 'old')
    // Held as its row is created, after the snapshot written before it: then snapshots are lost.
    let release = (): void => undefined
    gates.holdCreates = new Promise((resolve) => (release = resolve))
    const ingest = main.ingest()
    await driveUntil(w.clock, () => gates.held === 1)
    expect(await settledThrough()).toBe(0)
    gates.dropQueueWrites = true
    gates.holdCreates = undefined
    release()
    const healed = await w.run(ingest)
    expect(healed).toEqual({ id: 'request/main/1', uri: 'fake://old', deduplicated: true })
    await greenFoundAfterCrash(w, main, healed.id)
  })

  it('a lost request found green by a salvage that ends while the runtime stops stays unsettled: the next start finds its green', async () => {
    const reads = { mode: 'ok' as 'ok' | 'broken' | 'gate', gate: undefined as Promise<void> | undefined, waiting: 0 }
    const hold = { queue: undefined as Promise<void> | undefined, held: 0 }
    const w = await world({
      builder: { durationMs: () => 1_000 },
      wrap: (inner) => ({
        ...inner,
        commit: async (ops) => {
          if (hold.queue !== undefined && ops.some((op) => op.op === 'queue.update')) {
            hold.held++
            await hold.queue
          }
          return inner.commit(ops)
        },
        requests: {
          ...inner.requests,
          get: async (id: string) => {
            if (reads.mode === 'broken') throw new StorageUnavailableError('reads are down')
            if (reads.mode === 'gate') {
              reads.waiting++
              await reads.gate
            }
            return inner.requests.get(id)
          },
        },
      }),
    })
    const main = await w.run(w.sp.queue('main', { ref: 'main', maxValidationMs: 5_000, leaseGraceMs: 1_000 }))
    const isLost = (id: string): boolean => (main as unknown as { isLost(id: string): boolean }).isLost(id)
    w.sc.commit('main', 'a1')
    const { id } = await w.run(main.ingest())
    await driveUntil(w.clock, () => w.builder.running() === 1)
    // Its green end is stored (as a final write whose acknowledgement was lost leaves it), but
    // its actor cannot know: its own writes fail on the stale version, and reads fail, so
    // the salvage fails: lost.
    const row = await w.storage.requests.get(id)
    const context = (row.data as unknown as { context: RequestContext }).context
    const now = w.clock.now()
    await w.storage.facts.put({ queue: 'main', uri: row.uri, project: '', degree: 0, requestId: id, at: now })
    const green = requestRecord(
      { ...context, verdict: 'green', degree: 0, reason: null, endedAt: now },
      'recorded',
      'recorded',
      row.version + 5,
      now,
    )
    await w.storage.requests.update(green, row.version, row.version + 5)
    reads.mode = 'broken'
    await driveUntil(w.clock, () => isLost(id), { stepMs: 10 })
    // A config write, slow to land.
    let releaseQueue = (): void => undefined
    hold.queue = new Promise((resolve) => (releaseQueue = resolve))
    const config = track(w.sp.queue('main', { ref: 'main', maxValidationMs: 5_000, leaseGraceMs: 1_000, maxConcurrent: 2 }))
    await driveUntil(w.clock, () => hold.held === 1)
    // Its lease expires: it leaves the queue's context (the host still holds it lost).
    await driveUntil(w.clock, () => main.inFlight().length === 0, { stepMs: 50 })
    expect(main.stats().leaseExpiries).toBe(1)
    // A salvage retry reads the row (slowly) while the runtime stops.
    let releaseReads = (): void => undefined
    reads.gate = new Promise((resolve) => (releaseReads = resolve))
    reads.mode = 'gate'
    await driveUntil(w.clock, () => reads.waiting >= 1, { stepMs: 10 })
    const stopping = track(w.sp.stop())
    await settle()
    reads.mode = 'ok'
    releaseReads()
    await settle()
    expect(isLost(id)).toBe(true) // the stopped queue takes no event: still lost, still unsettled
    releaseQueue()
    hold.queue = undefined
    await driveUntil(w.clock, () => stopping.settled && config.settled)
    expect(((await w.storage.queues.get('main')).snapshot as { settledThrough?: number }).settledThrough).toBe(0)
    const sp = await w.restart()
    const reopened = await w.run(sp.queue('main'))
    expect(reopened.lastGreen()?.requestId).toBe(id)
  })

  it('a green row over a red fact whose correction failed at one start is corrected at a later one', async () => {
    const verdictOf = (op: WriteOp): string | undefined =>
      op.op === 'request.update' && op.record.state === 'recorded'
        ? (op.record.data as { context: { verdict: string } }).context.verdict
        : undefined
    const gates = { failCorrections: false }
    const w = await world({
      builder: { outcome: (uri) => (uri.endsWith('red') ? 'failed' : 'passed') },
      wrap: (inner) => ({
        ...inner,
        commit: async (ops) => {
          if (gates.failCorrections && ops.some((op) => verdictOf(op) === 'red')) throw new StorageFailedError('refused')
          return inner.commit(ops)
        },
      }),
    })
    const main = await w.run(w.sp.queue('main', { ref: 'main' }))
    w.sc.commit('main', 'a1-red')
    const { id } = await w.run(main.ingest())
    expect(await w.run(main.waitFor(id))).toMatchObject({ verdict: 'red' })
    await w.run(w.sp.stop())
    // As a crash between the green row and its correction leaves it (the request in flight: nothing settled).
    const raw = createMemoryStorage({ database: w.database })
    const row = await raw.requests.get(id)
    const data = row.data as { context: Record<string, unknown> }
    await raw.requests.update(
      { ...row, version: row.version + 1, data: { ...data, context: { ...data.context, verdict: 'green', degree: 0, reason: null } } },
      row.version,
      row.version + 1,
    )
    const q = await raw.queues.get('main')
    await raw.queues.update(
      { ...q, version: q.version + 1, snapshot: { ...(q.snapshot as object), settledThrough: 0 } },
      q.version,
      q.version + 1,
    )
    // A start whose correction write fails (logged, the row left green) …
    gates.failCorrections = true
    let sp = await w.restart()
    gates.failCorrections = false
    expect(describeRequest(await w.storage.requests.get(id)).verdict).toBe('green')
    let again = await w.run(sp.queue('main'))
    w.sc.commit('main', 'b-red')
    await w.run(again.waitFor((await w.run(again.ingest())).id))
    // … keeps it unsettled, so the next start corrects it.
    sp = await w.restart()
    again = await w.run(sp.queue('main'))
    expect(describeRequest(await w.storage.requests.get(id)).verdict).toBe('red')
    expect(again.lastGreen()).toBeUndefined()
  })

  for (const how of ['stop', 'crash'] as const) {
    it(`a start after a ${how} reads only the requests that ended since the snapshot, not a long red history`, async () => {
      const pages: string[] = []
      const w = await world({
        builder: { outcome: () => 'failed' },
        wrap: (inner) => ({
          ...inner,
          requests: {
            ...inner.requests,
            listByQueue: async (queue, options) => {
              const page = await inner.requests.listByQueue(queue, options)
              if (options?.states?.join() === 'recorded') pages.push(`${page.items.length} from ${page.items[0]?.id ?? 'none'}`)
              return page
            },
          },
        }),
      })
      const main = await w.run(w.sp.queue('main', { ref: 'main' }))
      const total = 450
      for (let k = 1; k <= total; k++) {
        w.sc.commit('main', `c${k}`)
        await w.run(main.waitFor((await w.run(main.ingest())).id), 1)
      }
      const stored = await w.storage.queues.get('main')
      // Written every 100 ended requests even with no last green to move.
      expect((stored.snapshot as { settledThrough?: number }).settledThrough).toBeGreaterThanOrEqual(total - 100)
      const sp = how === 'stop' ? await w.restart() : await w.crash()
      // The newest page only (it reaches below settledThrough), where it read all 450 rows.
      expect(pages.slice(-1)).toEqual([`200 from request/main/${total}`])
      expect(pages).toHaveLength(1)
      const reopened = await w.run(sp.queue('main'))
      expect(reopened.lastGreen()).toBeUndefined()
      expect(reopened.stats().red).toBeGreaterThanOrEqual(how === 'stop' ? total : total - 100)
    })
  }

  it('never writes a fact twice: a request resumed after writing its fact keeps that fact', async () => {
    const w = await world({ builder: { durationMs: 1_000 } })
    const id = await buildingRequest(w)
    // As if this request had written its fact before a crash that lost the rest.
    const fact = { queue: 'main', uri: 'fake://a1', project: '', degree: 0, requestId: id, at: 1 }
    await w.storage.facts.put(fact)
    const sp = await w.crash(10)
    const done = await w.run((await w.run(sp.queue('main'))).waitFor(id))
    expect(done).toMatchObject({ state: 'recorded', verdict: 'green', factWritten: true })
    expect(await w.storage.facts.get('main', 'fake://a1')).toEqual(fact)
  })
})

describe('queue state across restarts', () => {
  it('counts survive a graceful restart (written at stop, not on every request end)', async () => {
    const w = await world({ builder: { outcome: (uri) => (uri.endsWith('bad') ? 'failed' : 'passed') } })
    let main = await w.run(w.sp.queue('main', { ref: 'main' }))
    for (const sha of ['good', 'bad']) {
      w.sc.commit('main', sha)
      await w.run(main.waitFor((await w.run(main.ingest())).id))
    }
    const before = main.stats()
    expect(before).toMatchObject({ accepted: 2, green: 1, red: 1 })
    const sp = await w.restart()
    main = await w.run(sp.queue('main'))
    expect(main.stats()).toEqual(before)
  })

  it('a new config resolves once stored: a crash right after it keeps it', async () => {
    const w = await world()
    await w.run(w.sp.queue('main', { ref: 'main', maxConcurrent: 1 }))
    await w.sp.queue('main', { ref: 'main', maxConcurrent: 3 }) // nothing driven after it resolves
    const sp = await w.crash()
    expect((await w.run(sp.queue('main'))).config().maxConcurrent).toBe(3)
  })

  it('a new config that cannot be stored is refused with StorageUnavailableError, in effect, and stored at the next stop', async () => {
    let faulty: ReturnType<typeof createFaultyStorage> | undefined
    const w = await world({
      runtime: { writer: { retry: { maxAttempts: 2, baseDelayMs: 10, maxDelayMs: 10 } } },
      wrap: (inner) => (faulty = createFaultyStorage(inner)),
    })
    const main = await w.run(w.sp.queue('main', { ref: 'main', maxConcurrent: 1 }))
    if (faulty === undefined) throw new Error('no faulty storage')
    faulty.faults.down = true
    await expect(w.run(w.sp.queue('main', { ref: 'main', maxConcurrent: 3 }))).rejects.toBeInstanceOf(StorageUnavailableError)
    expect(main.config().maxConcurrent).toBe(3)
    faulty.faults.down = false
    const sp = await w.restart()
    expect((await w.run(sp.queue('main'))).config().maxConcurrent).toBe(3)
  })

  it('a config asked for again after its write failed resolves once stored (written again then): a crash right after keeps it', async () => {
    let faulty: ReturnType<typeof createFaultyStorage> | undefined
    const w = await world({
      runtime: { writer: { retry: { maxAttempts: 2, baseDelayMs: 10, maxDelayMs: 10 } } },
      wrap: (inner) => (faulty = createFaultyStorage(inner)),
    })
    await w.run(w.sp.queue('main', { ref: 'main', maxConcurrent: 1 }))
    if (faulty === undefined) throw new Error('no faulty storage')
    faulty.faults.down = true
    const wanted = { ref: 'main', maxConcurrent: 3 }
    await expect(w.run(w.sp.queue('main', wanted))).rejects.toBeInstanceOf(StorageUnavailableError)
    // Still down: asked again, it is written again, and refused again.
    await expect(w.run(w.sp.queue('main', wanted))).rejects.toBeInstanceOf(StorageUnavailableError)
    faulty.faults.down = false
    await w.run(w.sp.queue('main', wanted))
    expect((await w.storage.queues.get('main')).config).toMatchObject({ maxConcurrent: 3 })
    const sp = await w.crash()
    expect((await w.run(sp.queue('main'))).config().maxConcurrent).toBe(3)
  })

  it('two calls creating one queue at once both get it', async () => {
    const w = await world()
    const [a, b] = await w.run(Promise.all([w.sp.queue('main', { ref: 'main' }), w.sp.queue('main', { ref: 'main', maxConcurrent: 2 })]))
    expect(a).toBe(b)
    expect(a.config().maxConcurrent).toBe(2)
    expect(w.sp.queues()).toHaveLength(1)
  })

  it('a request superseded as its queue resumes is counted once', async () => {
    let hang = true
    const w = await world({
      builder: { durationMs: 5_000 },
      // The process dies while request 2's `superseded` write is in its commit: it never lands.
      wrap: (inner) => ({
        ...inner,
        commit: (ops: readonly WriteOp[]) =>
          hang && ops.some((op) => op.op === 'request.update' && op.record.state === 'superseded')
            ? new Promise(() => undefined)
            : inner.commit(ops),
      }),
    })
    let main = await w.run(w.sp.queue('main', { ref: 'main' }))
    w.sc.commit('main', 'a1')
    await w.run(main.ingest()) // request 1 builds for 5 s
    await driveUntil(w.clock, () => w.builder.running() === 1)
    w.sc.commit('main', 'a2')
    await w.run(main.ingest()) // request 2 waits
    w.sc.commit('main', 'a3')
    const third = track(main.ingest()) // request 3 supersedes 2
    await driveUntil(w.clock, () => third.settled)
    await settle()
    expect((await w.storage.requests.get('request/main/2')).state).toBe('accepted')
    hang = false
    const sp = await w.crash()
    main = await w.run(sp.queue('main'))
    await w.run(main.waitFor('request/main/3'))
    await settle()
    expect((await w.storage.requests.listByQueue('main')).items.map((r) => r.state)).toEqual(['recorded', 'superseded', 'recorded'])
    expect(main.stats().superseded).toBe(1)
  })
})

describe('recovery that cannot finish', () => {
  it('a storage error during recovery rejects createStovepipe and leaves nothing running', async () => {
    const w = await world({ builder: { durationMs: 10_000 } })
    const a = await w.run(w.sp.queue('a', { ref: 'main' }))
    const b = await w.run(w.sp.queue('b', { ref: 'main' }))
    w.sc.commit('main', 'a1')
    await w.run(b.waitFor((await w.run(b.ingest())).id))
    await w.run(a.ingest())
    await driveUntil(w.clock, () => w.builder.running() === 1)
    await w.storage.close()
    w.sp.root.stop()
    // b's stored snapshot lags (no last green), so recovery reads the fact of its green row; that read fails.
    const raw = createMemoryStorage({ database: w.database })
    const queueB = await raw.queues.get('b')
    // As written before its request ended: no last green, nothing settled.
    const lagging = { ...queueB, version: queueB.version + 1, snapshot: { ...(queueB.snapshot as object), settledThrough: 0 } }
    delete lagging.lastGreen
    await raw.queues.update(lagging, queueB.version, queueB.version + 1)
    const storage: Storage = {
      ...raw,
      facts: {
        ...raw.facts,
        get: () => Promise.reject(new StorageUnavailableError('blip')),
      },
    }
    const started = track(createStovepipe({ storage, sourceControl: w.sc, builder: w.builder, clock: w.clock }))
    await driveUntil(w.clock, () => started.settled)
    expect(started.error).toBeInstanceOf(StorageUnavailableError)
    // Queue a was resumed before b failed: its build was stopped with the runtime nobody holds.
    await settle()
    w.clock.increment(20_000)
    await settle()
    expect(w.builder.running()).toBe(0)
    expect(w.builder.builds.slice(1).map((build) => build.result)).toEqual(w.builder.builds.slice(1).map(() => 'aborted'))
  })

  it('an event log that fails during recovery (another process writes its node) rejects createStovepipe with the cause', async () => {
    const w = await world({ builder: { durationMs: 10_000 } })
    const a = await w.run(w.sp.queue('a', { ref: 'main' }))
    await w.run(w.sp.queue('b', { ref: 'main' }))
    w.sc.commit('main', 'a1')
    await w.run(a.ingest())
    await driveUntil(w.clock, () => w.builder.running() === 1)
    await w.storage.close()
    w.sp.root.stop()
    const raw = createMemoryStorage({ database: w.database })
    const storage: Storage = {
      ...raw,
      // The new log starts at seq 0, where rows already are: its first write conflicts.
      events: { ...raw.events, last: () => Promise.resolve(undefined) },
      requests: {
        ...raw.requests,
        // Reading queue b takes a while (real I/O): queue a's resumed request logs meanwhile.
        listByQueue: async (queue, options) => {
          if (queue === 'b') for (let i = 0; i < 50; i++) await new Promise((resolve) => setImmediate(resolve))
          return raw.requests.listByQueue(queue, options)
        },
      },
    }
    const started = track(createStovepipe({ storage, sourceControl: w.sc, builder: w.builder, clock: w.clock }))
    await driveUntil(w.clock, () => started.settled)
    expect(started.error).toBeInstanceOf(StoppedError)
    expect((started.error as Error).message).toBe('the runtime stopped: its event log failed')
    expect((started.error as Error).cause).toBeInstanceOf(EventLogConflictError)
  })
})
