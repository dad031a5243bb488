/**
 * The runtime's semantics, one test each, on a simulated clock with the fake source
 * control and builder (no real sleeps).
 */
import { Writable } from 'node:stream'
import { pino, type Logger } from 'pino'
import { describe, expect, it, vi } from 'vitest'
import { SimulatedClock, type AnyActorRef } from 'xstate'
import {
  createStovepipe,
  EventLogConflictError,
  InvalidInputError,
  NotFoundError,
  StoppedError,
  StorageFailedError,
  StorageUnavailableError,
  type WriteOp,
} from '../../src/index.js'
import { createLiveStatusReader } from '../../src/status/index.js'
import { driveUntil, settle, track } from '../support/drive.js'
import { world } from '../support/runtime.js'
import { leases } from '../support/queue.js'
import type { QueueActor } from '../../src/machines/queue.js'
import { createFakeSourceControl, type FakeSourceControl } from '../../src/sourcecontrol/fake.js'
import { createMemoryStorage } from '../../src/storage/memory/index.js'

const ref = { ref: 'main' }

/** A pino logger at level error whose lines (JSON text) land in `lines`. */
function errorLog(): { lines: string[]; logger: Logger } {
  const lines: string[] = []
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      lines.push(chunk.toString())
      done()
    },
  })
  return { lines, logger: pino({ level: 'error' }, sink) }
}

describe('ingest', () => {
  it('resolves the head through source control and mints request/<queue>/1', async () => {
    const w = await world()
    w.sc.commit('main', 'a1')
    const main = await w.run(w.sp.queue('main', ref))
    expect(await w.run(main.ingest())).toEqual({ id: 'request/main/1', uri: 'fake://a1', deduplicated: false })
    expect(w.sc.calls).toContain('latest(main)')
  })

  it('refuses an unknown ref with NotFoundError and writes nothing', async () => {
    const w = await world()
    const main = await w.run(w.sp.queue('main', { ref: 'refs/heads/nope' }))
    await expect(w.run(main.ingest())).rejects.toBeInstanceOf(NotFoundError)
    expect((await w.storage.requests.listByQueue('main')).items).toEqual([])
    expect(await w.storage.counters.next('main')).toBe(1)
  })

  it('deduplicates on (queue, uri): a re-reported head resolves to its request', async () => {
    const w = await world()
    w.sc.commit('main', 'a1')
    const main = await w.run(w.sp.queue('main', ref))
    const first = await w.run(main.ingest())
    const again = await w.run(main.ingest())
    expect(again).toEqual({ ...first, deduplicated: true })
    await w.run(main.waitFor(first.id))
    expect(await w.run(main.ingest())).toEqual({ ...first, deduplicated: true })
    expect((await w.storage.requests.listByQueue('main')).items).toHaveLength(1)
  })

  it('pipelines concurrent ingests into one queue: numbered in the order their heads were seen, their writes grouped', async () => {
    // A ref that moves on every look, as under a stream of pushes: each ingest sees a new head.
    const fake = createFakeSourceControl()
    let pushes = 0
    const sc: FakeSourceControl = {
      ...fake,
      forQueue: (target) => {
        const inner = fake.forQueue(target)
        return { ...inner, latest: () => (fake.commit(target.ref, `h${++pushes}`), inner.latest()) }
      },
    }
    const w = await world({ sc, builder: { durationMs: 1000 } })
    const main = await w.run(w.sp.queue('main', { ...ref, maxConcurrent: 20 }))
    const batches = w.sp.writer.stats().batches
    const ingested = await w.run(Promise.all(Array.from({ length: 20 }, () => main.ingest())))
    expect(ingested.map(({ id, uri }) => [id, uri])).toEqual(
      Array.from({ length: 20 }, (_, i) => [`request/main/${i + 1}`, `fake://h${i + 1}`]),
    )
    // One at a time, each ingest waits for two commits (its number, then claim and row): 40 batches at least.
    expect(w.sp.writer.stats().batches - batches).toBeLessThan(20)
    const views = await w.run(Promise.all(ingested.map(({ id }) => main.waitFor(id))))
    expect(views.map((view) => view.verdict)).toEqual(Array.from({ length: 20 }, () => 'green'))
  })

  it('numbers heads in the order they were seen even when source control answers out of order', async () => {
    // Each look at the ref sees a new head; earlier looks take longer to answer.
    const clock = new SimulatedClock()
    clock.set(1_700_000_000_000)
    const fake = createFakeSourceControl()
    let looks = 0
    const sc: FakeSourceControl = {
      ...fake,
      forQueue: (target) => ({
        ...fake.forQueue(target),
        latest: () => {
          const head = fake.commit(target.ref, `h${++looks}`)
          return new Promise<string>((resolve) => {
            clock.setTimeout(() => {
              resolve(head)
            }, 50 - looks)
          })
        },
      }),
    }
    const w = await world({ sc, clock })
    const main = await w.run(w.sp.queue('main', { ...ref, maxConcurrent: 5 }))
    const ingested = await w.run(Promise.all(Array.from({ length: 5 }, () => main.ingest())), 1)
    expect(ingested.map(({ id, uri }) => [id, uri])).toEqual(
      Array.from({ length: 5 }, (_, i) => [`request/main/${i + 1}`, `fake://h${i + 1}`]),
    )
  })

  it('a claim whose acknowledgement was lost (the retry finds it applied) is still the request of this ingest, and is validated', async () => {
    let lose = true
    const w = await world({
      wrap: (inner) => ({
        ...inner,
        commit: async (ops: readonly WriteOp[]) => {
          const results = await inner.commit(ops)
          if (lose && ops.some((op) => op.op === 'requestUri.create')) {
            lose = false
            throw new StorageUnavailableError('the commit applied; its acknowledgement was lost')
          }
          return results
        },
      }),
    })
    w.sc.commit('main', 'a1')
    const main = await w.run(w.sp.queue('main', ref))
    expect(await w.run(main.ingest())).toEqual({ id: 'request/main/1', uri: 'fake://a1', deduplicated: false })
    expect(lose).toBe(false)
    expect(await w.run(main.waitFor('request/main/1'))).toMatchObject({ state: 'recorded', verdict: 'green' })
  })

  for (const ending of ['recorded', 'cancelled'] as const) {
    it(`a final write whose acknowledgement was lost (the retry finds it applied) still ends the request ${ending}`, async () => {
      let lose = true
      const { lines, logger } = errorLog()
      const w = await world({
        builder: { durationMs: 1_000 },
        runtime: { logger },
        wrap: (inner) => ({
          ...inner,
          commit: async (ops: readonly WriteOp[]) => {
            const results = await inner.commit(ops)
            const final = ops.findIndex((op) => op.op === 'request.update' && op.record.state === ending)
            if (lose && final >= 0 && results[final]?.status === 'ok') {
              lose = false
              throw new StorageUnavailableError('the commit applied; its acknowledgement was lost')
            }
            return results
          },
        }),
      })
      const main = await w.run(w.sp.queue('main', ref))
      w.sc.commit('main', 'a1')
      const { id } = await w.run(main.ingest())
      if (ending === 'cancelled') {
        await driveUntil(w.clock, () => w.builder.running() === 1)
        expect(await w.run(main.cancel(id))).toEqual({ id, cancelled: true, state: 'cancelled' })
      } else {
        expect(await w.run(main.waitFor(id))).toMatchObject({ state: 'recorded', verdict: 'green', factWritten: true })
        expect(main.lastGreen()?.requestId).toBe(id)
      }
      expect(lose).toBe(false)
      // Not salvaged: no actor failure, no second write over the row.
      expect(lines.filter((line) => line.includes('request actor failed'))).toEqual([])
      expect(main.stats()).toMatchObject(ending === 'recorded' ? { green: 1, indeterminate: 0 } : { cancelled: 1, indeterminate: 0 })
      const row = await w.storage.requests.get(id)
      expect(row.state).toBe(ending)
      expect(row.version).toBe(ending === 'recorded' ? 4 : 3) // accepted 0, planning 1, building 2, then the final write
    })
  }

  /** The verdict a recorded-row write carries, if it is one. */
  const verdictOf = (op: WriteOp): string | undefined =>
    op.op === 'request.update' && op.record.state === 'recorded'
      ? (op.record.data as { context: { verdict: string } }).context.verdict
      : undefined

  for (const [how, maxAttempts] of [
    ['retried', 3],
    ['concluding', 1],
    ['salvaged', 1],
  ] as const) {
    it(`a green row left uncorrected (an older red fact wins) is never adopted as green (${how})`, async () => {
      // The request's green row and its fact are one commit; the fact already exists (an older
      // request's, red), so the row must be corrected to red, and that write fails once.
      // Retried, concluding or salvaged, the request then finds its row recorded green.
      let failCorrection = true
      const w = await world({
        builder: { durationMs: 1_000 },
        runtime: { writer: { retry: { maxAttempts: 1, baseDelayMs: 10, maxDelayMs: 10 } } },
        wrap: (inner) => ({
          ...inner,
          commit: async (ops: readonly WriteOp[]) => {
            if (failCorrection && ops.some((op) => verdictOf(op) === 'red')) {
              failCorrection = false
              throw new StorageUnavailableError('down for the correction')
            }
            // Salvaged: the concluding write is refused, so the request actor fails.
            if (how === 'salvaged' && ops.some((op) => verdictOf(op) === 'indeterminate')) throw new StorageFailedError('refused')
            return inner.commit(ops)
          },
        }),
      })
      const main = await w.run(w.sp.queue('main', { ...ref, maxAttempts }))
      await w.storage.facts.put({ queue: 'main', uri: 'fake://a1', project: '', degree: 1, requestId: 'request/main/99', at: 1 })
      w.sc.commit('main', 'a1')
      const { id } = await w.run(main.ingest())
      const done = await w.run(main.waitFor(id))
      expect(failCorrection).toBe(false)
      expect(done).toMatchObject({ state: 'recorded', verdict: 'red', degree: 1, reason: 'fact already recorded by request/main/99' })
      expect(main.lastGreen()).toBeUndefined()
      expect(main.stats()).toMatchObject({ green: 0, red: 1, indeterminate: 0 })
      const failures = await w.sp.registry.getSingleMetricAsString('stovepipe_request_failures_total')
      expect(failures.includes('queue="main"} 1')).toBe(how === 'salvaged')
    })
  }

  for (const [ending, maxAttempts] of [
    ['recorded', 3],
    ['recorded', 1],
    ['cancelled', 3],
  ] as const) {
    it(`a final write that applied, lost its acknowledgement and was then given up by the writer still ends the request ${ending} (maxAttempts ${maxAttempts})`, async () => {
      // With no attempt left, the request concludes (indeterminate) instead of retrying the
      // step: that write finds the row recorded green, and the request ends green all the same.
      // The machine retries the step with a context changed since (attempt, time): the row it
      // finds is not that write, but it is in the state the request was ending in.
      let phase: 'idle' | 'lose' | 'down' | 'up' = ending === 'recorded' ? 'lose' : 'idle'
      const { lines, logger } = errorLog()
      const w = await world({
        builder: { durationMs: ending === 'recorded' ? 1_000 : 10_000 },
        runtime: { logger, writer: { retry: { maxAttempts: 2, baseDelayMs: 10, maxDelayMs: 10 } } },
        wrap: (inner) => ({
          ...inner,
          commit: async (ops: readonly WriteOp[]) => {
            const index = ops.findIndex((op) => op.op === 'request.update' && op.record.state === ending)
            if (index >= 0 && phase === 'lose') {
              const results = await inner.commit(ops)
              if (results[index]?.status !== 'ok') return results
              phase = 'down'
              throw new StorageUnavailableError('the commit applied; its acknowledgement was lost')
            }
            if (index >= 0 && phase === 'down') {
              phase = 'up'
              throw new StorageUnavailableError('still down: the writer gives up on this write')
            }
            return inner.commit(ops)
          },
        }),
      })
      const main = await w.run(w.sp.queue('main', { ...ref, maxAttempts }))
      w.sc.commit('main', 'a1')
      const { id } = await w.run(main.ingest())
      if (ending === 'cancelled') {
        await driveUntil(w.clock, () => w.builder.running() === 1)
        phase = 'lose'
        expect(await w.run(main.cancel(id))).toEqual({ id, cancelled: true, state: 'cancelled' })
      } else {
        expect(await w.run(main.waitFor(id))).toMatchObject({ state: 'recorded', verdict: 'green' })
        expect(main.lastGreen()?.requestId).toBe(id)
      }
      expect(phase).toBe('up')
      expect(lines.filter((line) => line.includes('request actor failed'))).toEqual([])
      expect(main.stats()).toMatchObject(ending === 'recorded' ? { green: 1, indeterminate: 0 } : { cancelled: 1, indeterminate: 0 })
      expect((await w.storage.requests.get(id)).state).toBe(ending)
    })
  }

  it('two processes ingesting one head: the one that loses the claim ends its own row superseded and reuses the winner', async () => {
    const w = await world()
    await w.run(w.sp.queue('main', ref))
    w.sc.commit('main', 'a1')
    // A second process on the same data (it loads the queue at start).
    const other = await createStovepipe({
      storage: createMemoryStorage({ database: w.database }),
      sourceControl: w.sc,
      builder: w.builder,
      clock: w.clock,
      nodeId: 'other',
    })
    const [mine, theirs] = [await w.run(w.sp.queue('main')), await w.run(other.queue('main'))]
    const results = await w.run(Promise.all([mine.ingest(), theirs.ingest()]))
    expect(results.map((r) => r.id)).toEqual(['request/main/1', 'request/main/1'])
    expect(results.map((r) => r.deduplicated)).toEqual([false, true])
    // Both took a number; the loser's row exists (the race happened) and is ended, not left to validate.
    expect(await w.storage.requests.get('request/main/2')).toMatchObject({ state: 'superseded', uri: 'fake://a1' })
    expect(await w.run(w.sp.request('request/main/2'))).toMatchObject({ supersededBy: 'request/main/1' })
    await w.run(other.stop())
    const restarted = await w.crash()
    expect((await w.run(restarted.queue('main'))).inFlight().map((r) => r.id)).not.toContain('request/main/2')
  })

  it('joins concurrent ingests of one head: one request minted, no number burned', async () => {
    const w = await world()
    w.sc.commit('main', 'a1')
    const main = await w.run(w.sp.queue('main', ref))
    const results = await w.run(Promise.all([main.ingest(), main.ingest(), main.ingest()]))
    expect(results).toEqual([
      { id: 'request/main/1', uri: 'fake://a1', deduplicated: false },
      { id: 'request/main/1', uri: 'fake://a1', deduplicated: true },
      { id: 'request/main/1', uri: 'fake://a1', deduplicated: true },
    ])
    expect((await w.storage.requests.listByQueue('main')).items).toHaveLength(1)
    expect(await w.storage.counters.next('main')).toBe(2)
  })

  it('heals a mapping whose row is missing (a crash between the two writes) and validates it', async () => {
    const w = await world()
    w.sc.commit('main', 'a1')
    const main = await w.run(w.sp.queue('main', ref))
    await w.storage.counters.next('main')
    await w.storage.requestUris.create({ queue: 'main', uri: 'fake://a1', requestId: 'request/main/1' })
    expect(await w.run(main.ingest())).toEqual({ id: 'request/main/1', uri: 'fake://a1', deduplicated: true })
    expect(await w.run(main.waitFor('request/main/1'))).toMatchObject({ state: 'recorded', verdict: 'green' })
  })
})

describe('waitFor', () => {
  it('resolves with the row in the state waited for, not the one before it (a step commits after the machine enters it)', async () => {
    const w = await world({ builder: { durationMs: 1000 } })
    const main = await w.run(w.sp.queue('main', ref))
    w.sc.commit('main', 'a1')
    await w.run(main.ingest())
    w.sc.commit('main', 'a2')
    const second = await w.run(main.ingest()) // waits for the first to finish building
    const processing = await w.run(main.waitFor(second.id, 'processing'))
    expect(processing).toMatchObject({ id: second.id, state: 'processing' })
    expect((await w.storage.requests.get(second.id)).version).toBeGreaterThanOrEqual(processing.version)
  })

  it('answers a waiter for processing once planning is committed, not after the planning work', async () => {
    const w = await world()
    const main = await w.run(w.sp.queue('main', ref))
    w.sc.commit('main', 'a1')
    await w.run(main.waitFor((await w.run(main.ingest())).id))
    w.sc.commit('main', 'a2')
    const ingesting = main.ingest() // reads the head at once
    w.sc.failNext(1) // so planning's isAncestor fails and waits for its retry backoff
    const { id } = await ingesting
    const processing = track(main.waitFor(id, 'processing'))
    await settle()
    expect(w.sc.calls.filter((call) => call.startsWith('isAncestor'))).toHaveLength(1)
    expect(processing.settled).toBe(true)
    expect(processing.value).toMatchObject({ state: 'processing', step: 'processing.planning' })
    expect(await w.run(main.waitFor(id))).toMatchObject({ verdict: 'green', strategy: 'incremental' })
  })

  it('answers several waiters of one request, each with the row as committed', async () => {
    const w = await world({ builder: { durationMs: 1000 } })
    const main = await w.run(w.sp.queue('main', ref))
    w.sc.commit('main', 'a1')
    const { id } = await w.run(main.ingest())
    const waits = [main.waitFor(id), main.waitFor(id, 'processing'), main.waitFor(id)]
    const [recorded, processing, again] = await w.run(Promise.all(waits))
    const row = await w.storage.requests.get(id)
    expect(recorded).toMatchObject({ state: 'recorded', verdict: 'green', version: row.version, updatedAt: row.updatedAt })
    expect(again).toEqual(recorded)
    expect(processing?.state).toBe('processing')
  })
})

describe('waitFor views', () => {
  it('gives each waiter a view of its own: changing one changes no other', async () => {
    const outcome = () => ({ outcome: 'passed' as const, projects: { api: 'passed' as const }, log: 'ok\n' })
    const w = await world({ builder: { durationMs: 1000, outcome } })
    const main = await w.run(w.sp.queue('main', { ref: 'main', projects: ['api'] }))
    w.sc.commit('main', 'a1')
    const { id } = await w.run(main.ingest())
    const [first, second] = await w.run(Promise.all([main.waitFor(id), main.waitFor(id)]))
    expect(first.build?.projects).toEqual({ api: 'passed' })
    if (first.build?.projects) first.build.projects.api = 'failed'
    expect(second.build?.projects).toEqual({ api: 'passed' })
    expect((await w.run(main.waitFor(id))).build?.projects).toEqual({ api: 'passed' })
  })
})

describe('queue', () => {
  it('coalesces: with maxConcurrent 1, heads arriving during a build leave only the newest validated', async () => {
    const w = await world({ builder: { durationMs: 1000 } })
    const main = await w.run(w.sp.queue('main', ref))
    w.sc.commit('main', 'a1')
    const first = await w.run(main.ingest())
    const others = []
    for (const sha of ['a2', 'a3', 'a4']) {
      w.sc.commit('main', sha)
      others.push(await w.run(main.ingest()))
    }
    const last = others[2]?.id ?? ''
    await w.run(main.waitFor(last))
    const states = await Promise.all([first, ...others].map((r) => w.run(w.sp.request(r.id))))
    expect(states.map((r) => r.state)).toEqual(['recorded', 'superseded', 'superseded', 'recorded'])
    expect(states[1]?.supersededBy).toBe('request/main/3')
    expect(states[2]?.supersededBy).toBe('request/main/4')
    expect(w.builder.builds.map((b) => b.uri)).toEqual(['fake://a1', 'fake://a4'])
    expect(main.stats()).toMatchObject({ superseded: 2, green: 2 })
  })

  it('gates concurrency at maxConcurrent, holding each slot as a lease with a deadline', async () => {
    const w = await world({ builder: { durationMs: 1000 } })
    const main = await w.run(w.sp.queue('main', { ref: 'main', maxConcurrent: 2, maxValidationMs: 60_000, leaseGraceMs: 5_000 }))
    const ids: string[] = []
    for (const sha of ['a1', 'a2', 'a3']) {
      w.sc.commit('main', sha)
      ids.push((await w.run(main.ingest())).id)
    }
    expect(w.builder.running()).toBe(2)
    expect(main.inFlight().map((r) => r.state)).toEqual(['processing', 'processing', 'accepted'])
    const held = leases((w.sp.system.get('queue:main') as QueueActor).getSnapshot().context)
    const started = await w.run(w.sp.request(ids[0] ?? ''))
    expect(held[ids[0] ?? '']).toBe((started.deadlineAt ?? 0) + 5_000)
    expect(Object.keys(held)).toHaveLength(2)
    await w.run(main.waitFor(ids[2] ?? ''))
    expect(Math.max(...w.builder.builds.map((_, i) => i))).toBe(2)
  })

  it('moves last green only forward: a slow older green never regresses it', async () => {
    const w = await world({ builder: { durationMs: (uri) => (uri === 'fake://a1' ? 5_000 : 100) } })
    const main = await w.run(w.sp.queue('main', { ref: 'main', maxConcurrent: 2 }))
    w.sc.commit('main', 'a1')
    const slow = await w.run(main.ingest())
    w.sc.commit('main', 'a2')
    const fast = await w.run(main.ingest())
    await w.run(main.waitFor(fast.id))
    expect(main.lastGreen()?.requestId).toBe(fast.id)
    await w.run(main.waitFor(slow.id))
    expect((await w.run(w.sp.request(slow.id))).verdict).toBe('green')
    expect(main.lastGreen()?.requestId).toBe(fast.id)
  })
})

describe('planning', () => {
  it('validates fully without a last green, then incrementally since the last green', async () => {
    const w = await world()
    const main = await w.run(w.sp.queue('main', ref))
    w.sc.commit('main', 'a1')
    const first = await w.run(main.ingest())
    expect(await w.run(main.waitFor(first.id))).toMatchObject({ strategy: 'full', fallback: 'no last green yet' })
    w.sc.commit('main', 'a2')
    const second = await w.run(main.ingest())
    expect(await w.run(main.waitFor(second.id))).toMatchObject({ strategy: 'incremental', baseline: 'fake://a1' })
    expect(w.builder.builds[1]).toMatchObject({ strategy: 'incremental', baseline: 'fake://a1' })
  })

  it('validates fully after a history rewrite (force-push)', async () => {
    const w = await world()
    const main = await w.run(w.sp.queue('main', ref))
    w.sc.commit('main', 'a1')
    await w.run(main.waitFor((await w.run(main.ingest())).id))
    w.sc.forcePush('main', ['b1', 'b2'])
    const rewritten = await w.run(main.ingest())
    expect(await w.run(main.waitFor(rewritten.id))).toMatchObject({
      strategy: 'full',
      fallback: expect.stringContaining('history rewritten') as string,
    })
  })

  it('validates fully, and counts the fallback, when the last green is unknown to source control', async () => {
    const w = await world()
    const main = await w.run(w.sp.queue('main', ref))
    w.sc.commit('main', 'a1')
    await w.run(main.waitFor((await w.run(main.ingest())).id))
    w.sc.commit('main', 'a2')
    w.sc.forget('a1')
    const next = await w.run(main.ingest())
    expect(await w.run(main.waitFor(next.id))).toMatchObject({
      strategy: 'full',
      fallback: expect.stringContaining('unknown to source control') as string,
    })
    expect(await w.sp.registry.getSingleMetricAsString('stovepipe_planning_fallbacks_total')).toContain('queue="main"} 1')
  })

  it('validates fully when source control cannot compare the last green (e.g. the repository moved)', async () => {
    const sc = createFakeSourceControl()
    let foreign = false
    const forQueue = sc.forQueue.bind(sc)
    sc.forQueue = (target) => {
      const bound = forQueue(target)
      return {
        latest: () => bound.latest(),
        history: (cursor, limit) => bound.history(cursor, limit),
        isAncestor: (a, d) =>
          foreign ? Promise.reject(new InvalidInputError(`${a} belongs to another repository`)) : bound.isAncestor(a, d),
      }
    }
    const w = await world({ sc })
    const main = await w.run(w.sp.queue('main', ref))
    sc.commit('main', 'a1')
    await w.run(main.waitFor((await w.run(main.ingest())).id))
    foreign = true
    sc.commit('main', 'a2')
    const next = await w.run(main.ingest())
    expect(await w.run(main.waitFor(next.id))).toMatchObject({
      verdict: 'green',
      strategy: 'full',
      fallback: expect.stringContaining('cannot be compared by source control') as string,
    })
    expect(main.lastGreen()?.requestId).toBe(next.id)
  })
})

describe('recording', () => {
  it('keeps an existing fact (first writer wins) and reports its verdict', async () => {
    const w = await world()
    const main = await w.run(w.sp.queue('main', ref))
    w.sc.commit('main', 'a1')
    const existing = { queue: 'main', uri: 'fake://a1', project: '', degree: 1, requestId: 'request/main/7', at: 5 }
    await w.storage.facts.put(existing)
    const { id } = await w.run(main.ingest())
    expect(await w.run(main.waitFor(id))).toMatchObject({
      verdict: 'red',
      degree: 1,
      factWritten: false,
      reason: 'fact already recorded by request/main/7',
    })
    expect(await w.storage.facts.get('main', 'fake://a1')).toEqual(existing)
    expect(main.lastGreen()).toBeUndefined()
  })

  it('writes per-project facts and the fraction of broken projects as the degree', async () => {
    const w = await world({
      builder: { outcome: () => ({ outcome: 'failed', projects: { api: 'passed', web: 'failed', cli: 'passed', docs: 'failed' } }) },
    })
    const main = await w.run(w.sp.queue('main', { ref: 'main', projects: ['api', 'web', 'cli', 'docs'] }))
    w.sc.commit('main', 'a1')
    const { id } = await w.run(main.ingest())
    expect(await w.run(main.waitFor(id))).toMatchObject({ verdict: 'red', degree: 0.5 })
    expect((await w.storage.facts.listByUri('main', 'fake://a1')).map((f) => [f.project, f.degree])).toEqual([
      ['', 0.5],
      ['api', 0],
      ['cli', 0],
      ['docs', 1],
      ['web', 1],
    ])
  })
})

describe('inconsistent build results are never green', () => {
  type Reported = { outcome: 'passed' | 'failed'; projects?: Record<string, 'passed' | 'failed'> }
  const projects = ['api', 'web']
  const cases: {
    what: string
    result: Reported
    queueProjects?: string[]
    expected: Record<string, unknown>
    facts: [string, number][]
  }[] = [
    {
      what: 'a failed build whose projects all passed is red, degree 1 (something outside them broke)',
      result: { outcome: 'failed', projects: { api: 'passed', web: 'passed' } },
      queueProjects: projects,
      expected: { verdict: 'red', degree: 1 },
      facts: [
        ['', 1],
        ['api', 0],
        ['web', 0],
      ],
    },
    {
      what: 'a failed build without projects on a queue without projects is red, degree 1',
      result: { outcome: 'failed' },
      expected: { verdict: 'red', degree: 1 },
      facts: [['', 1]],
    },
    {
      what: 'a failed build counts a project it did not report as not passed',
      result: { outcome: 'failed', projects: { api: 'passed' } },
      queueProjects: projects,
      expected: { verdict: 'red', degree: 0.5 },
      facts: [
        ['', 0.5],
        ['api', 0],
      ],
    },
    {
      what: 'a project the queue does not have gets no fact and does not count',
      result: { outcome: 'passed', projects: { api: 'passed', web: 'passed', extra: 'failed' } },
      queueProjects: projects,
      expected: { verdict: 'green', degree: 0 },
      facts: [
        ['', 0],
        ['api', 0],
        ['web', 0],
      ],
    },
    {
      what: 'a passed build that does not report every project is retried, then indeterminate (no fact)',
      result: { outcome: 'passed', projects: { api: 'passed' } },
      queueProjects: projects,
      expected: { verdict: 'indeterminate', reason: expect.stringContaining('reported no result for project(s) web') as string },
      facts: [],
    },
  ]
  for (const { what, result, queueProjects, expected, facts } of cases) {
    it(what, async () => {
      const w = await world({ builder: { outcome: () => result } })
      const config = { ref: 'main', maxAttempts: 2, ...(queueProjects === undefined ? {} : { projects: queueProjects }) }
      const main = await w.run(w.sp.queue('main', config))
      w.sc.commit('main', 'a1')
      const { id } = await w.run(main.ingest())
      expect(await w.run(main.waitFor(id), 100)).toMatchObject(expected)
      expect((await w.storage.facts.listByUri('main', 'fake://a1')).map((f) => [f.project, f.degree])).toEqual(facts)
      expect(main.lastGreen()?.requestId).toBe(expected.verdict === 'green' ? id : undefined)
    })
  }
})

describe('failures', () => {
  it('retries transient errors with backoff on the clock, then records indeterminate', async () => {
    const w = await world({ builder: { outcome: () => 'error' } })
    const main = await w.run(w.sp.queue('main', { ref: 'main', maxAttempts: 3 }))
    w.sc.commit('main', 'a1')
    const { id } = await w.run(main.ingest())
    const done = await w.run(main.waitFor(id))
    expect(done).toMatchObject({ verdict: 'indeterminate', degree: null, factWritten: false })
    expect(done.reason).toMatch(/gave up after 3 attempt\(s\): UnavailableError: build infrastructure failed/)
    expect(w.builder.builds).toHaveLength(3)
    await expect(w.storage.facts.get('main', 'fake://a1')).rejects.toBeInstanceOf(NotFoundError)
    expect(main.lastGreen()).toBeUndefined()
  })

  it('recovers from a transient source-control failure', async () => {
    const w = await world()
    const main = await w.run(w.sp.queue('main', ref))
    w.sc.commit('main', 'a1')
    await w.run(main.waitFor((await w.run(main.ingest())).id))
    w.sc.commit('main', 'a2')
    const next = await w.run(main.ingest())
    w.sc.failNext(1)
    expect(await w.run(main.waitFor(next.id))).toMatchObject({ verdict: 'green', strategy: 'incremental' })
  })

  it('records indeterminate and aborts the build when maxValidationMs passes', async () => {
    const w = await world({ builder: { durationMs: 10_000 } })
    const main = await w.run(w.sp.queue('main', { ref: 'main', maxValidationMs: 1_000 }))
    w.sc.commit('main', 'a1')
    const { id } = await w.run(main.ingest())
    expect(await w.run(main.waitFor(id))).toMatchObject({ verdict: 'indeterminate', reason: 'maxValidationMs passed' })
    expect(w.builder.builds[0]?.result).toBe('aborted')
    await expect(w.storage.facts.get('main', 'fake://a1')).rejects.toBeInstanceOf(NotFoundError)
  })

  it('keeps one timer for every deadline and lease of every queue, and none when nothing is due', async () => {
    const w = await world({ builder: { durationMs: 10_000 } })
    const timers = (): string[] => Object.keys(w.sp.system.getSnapshot()._scheduledEvents)
    const main = await w.run(w.sp.queue('main', { ref: 'main', maxConcurrent: 20, maxValidationMs: 60_000 }))
    const other = await w.run(w.sp.queue('other', { ref: 'other', maxValidationMs: 30_000 }))
    await w.run(w.sp.queue('idle', { ref: 'idle' }))
    expect(timers()).toEqual([])
    for (let k = 1; k <= 20; k++) {
      w.sc.commit('main', `a${k}`)
      await w.run(main.ingest())
    }
    w.sc.commit('other', 'b1')
    const { id: otherId } = await w.run(other.ingest())
    await driveUntil(w.clock, () => w.builder.running() === 21)
    // 21 requests building over two queues, each with a deadline and a lease: one timer, the timer service's.
    expect(timers()).toHaveLength(1)
    expect(timers()[0]).toContain('stovepipe.timers.tick')
    const last = main.inFlight().at(-1)?.id ?? ''
    await w.run(main.waitFor(last))
    await w.run(other.waitFor(otherId))
    expect(main.inFlight()).toEqual([])
    expect(other.inFlight()).toEqual([])
    expect(timers()).toEqual([])
  })

  it('tells a request its deadline passed at deadlineAt exactly, before its lease expires', async () => {
    const w = await world({ builder: { durationMs: 10_000 } })
    const main = await w.run(w.sp.queue('main', { ref: 'main', maxValidationMs: 1_000, leaseGraceMs: 5_000 }))
    w.sc.commit('main', 'a1')
    const { id } = await w.run(main.ingest())
    await driveUntil(w.clock, () => w.builder.running() === 1)
    const { deadlineAt } = ((await w.storage.requests.get(id)).data as { context: { deadlineAt: number } }).context
    expect(typeof deadlineAt).toBe('number')
    w.clock.increment(deadlineAt - w.clock.now() - 1)
    await new Promise((resolve) => setImmediate(resolve))
    expect(w.builder.running()).toBe(1)
    w.clock.increment(1)
    const view = await w.run(main.waitFor(id))
    expect(view).toMatchObject({ verdict: 'indeterminate', reason: 'maxValidationMs passed' })
    expect(view.endedAt).toBe(deadlineAt)
    expect(main.stats().leaseExpiries).toBe(0)
  })

  it('cancel aborts the builder through its AbortSignal and writes no fact', async () => {
    const w = await world({ builder: { durationMs: 10_000 } })
    const main = await w.run(w.sp.queue('main', ref))
    w.sc.commit('main', 'a1')
    const { id } = await w.run(main.ingest())
    await driveUntil(w.clock, () => w.builder.running() === 1)
    expect(await w.run(main.cancel(id))).toEqual({ id, cancelled: true, state: 'cancelled' })
    expect(w.builder.builds[0]?.result).toBe('aborted')
    await expect(w.storage.facts.get('main', 'fake://a1')).rejects.toBeInstanceOf(NotFoundError)
    expect(await w.run(main.cancel(id))).toEqual({ id, cancelled: false, state: 'cancelled' })
  })

  it('never stops a queue silently: a failed request actor is logged, settled, and the queue goes on', async () => {
    const { lines, logger } = errorLog()
    const w = await world({ builder: { durationMs: 1_000 }, runtime: { logger } })
    const main = await w.run(w.sp.queue('main', ref))
    w.sc.commit('main', 'a1')
    const { id } = await w.run(main.ingest())
    // Someone else ends the row behind the actor's back: its next CAS write cannot succeed.
    const row = await w.storage.requests.get(id)
    await w.storage.requests.update({ ...row, state: 'cancelled' }, row.version, row.version + 1)
    await driveUntil(w.clock, () => main.inFlight().length === 0)
    expect((await w.run(w.sp.request(id))).state).toBe('cancelled')
    // Counted as the row ended (cancelled), not as a verdict it does not have.
    expect(main.stats()).toMatchObject({ cancelled: 1, indeterminate: 0 })
    expect(lines.some((line) => line.includes('request actor failed'))).toBe(true)
    expect(await w.sp.registry.getSingleMetricAsString('stovepipe_request_failures_total')).toContain('queue="main"} 1')
    w.sc.commit('main', 'a2')
    const next = await w.run(main.ingest())
    expect(await w.run(main.waitFor(next.id))).toMatchObject({ state: 'recorded', verdict: 'green' })
  })

  it('a failed queue actor is logged, cancels its requests (builds aborted) and refuses work; the other queues go on', async () => {
    const { lines, logger } = errorLog()
    // Holds the commit of the next request number of `broken` until released.
    let holdNumber = false
    let release = (): void => undefined
    const w = await world({
      builder: { durationMs: 10_000 },
      runtime: { logger },
      wrap: (inner) => ({
        ...inner,
        commit: async (ops: readonly WriteOp[]) => {
          if (holdNumber && ops.some((op) => op.op === 'counter.next' && op.queue === 'broken')) {
            holdNumber = false
            await new Promise<void>((resolve) => (release = resolve))
          }
          return inner.commit(ops)
        },
      }),
    })
    const broken = await w.run(w.sp.queue('broken', { ref: 'broken' }))
    const other = await w.run(w.sp.queue('other', { ref: 'other' }))
    w.sc.commit('broken', 'b1')
    const building = await w.run(broken.ingest())
    w.sc.commit('broken', 'b2')
    const waiting = await w.run(broken.ingest())
    await driveUntil(w.clock, () => w.builder.running() === 1)
    const waiter = track(broken.waitFor(waiting.id))
    // An ingest whose number is being committed when the actor fails.
    w.sc.commit('broken', 'b2b')
    holdNumber = true
    const minting = track(broken.ingest())
    await driveUntil(w.clock, () => !holdNumber)
    // A bug in the machine, simulated: an event its action cannot handle makes the actor fail.
    const actor = w.sp.system.get('queue:broken') as AnyActorRef | undefined
    actor?.send({ type: 'resume', requests: null, at: 0 })
    expect(lines.some((line) => line.includes('queue actor failed') && line.includes('queue:broken'))).toBe(true)
    release()
    await driveUntil(w.clock, () => waiter.settled && minting.settled)
    expect(waiter.error).toBeInstanceOf(StoppedError)
    // The ingest under way is refused and mints nothing.
    expect(minting.error).toBeInstanceOf(StoppedError)
    await expect(w.storage.requestUris.getIdByUri('broken', 'fake://b2b')).rejects.toBeInstanceOf(NotFoundError)
    // Its requests end cancelled: the build is aborted, nothing runs on unattended, no fact.
    await driveUntil(w.clock, () => w.builder.running() === 0)
    expect(w.builder.builds.map((b) => b.result)).toEqual(['aborted'])
    for (const id of [building.id, waiting.id]) expect((await w.run(w.sp.request(id))).state).toBe('cancelled')
    await expect(w.storage.facts.get('broken', 'fake://b1')).rejects.toBeInstanceOf(NotFoundError)
    // It takes no more work.
    w.sc.commit('broken', 'b3')
    await expect(w.run(broken.ingest())).rejects.toThrow(/queue broken failed/)
    await expect(w.run(broken.cancel(building.id))).rejects.toBeInstanceOf(StoppedError)
    await expect(w.run(broken.waitFor(building.id, 'recorded'))).resolves.toMatchObject({ state: 'cancelled' })
    // The other queue goes on.
    w.sc.commit('other', 'o1')
    const { id } = await w.run(other.ingest())
    expect(await w.run(other.waitFor(id))).toMatchObject({ state: 'recorded', verdict: 'green' })
  })

  describe('a request whose failure cannot be recorded (reads and its writes fail)', () => {
    /**
     * A queue whose first request is lost: its row moves on behind its actor's back (so none
     * of its writes can succeed) while reads fail (so neither can its salvage). Reads stay
     * broken until `reads.broken` is set back to false. Counts the most builds running at once.
     */
    async function lostRequest(config: Record<string, unknown> = {}) {
      const reads = { broken: false }
      const builds = { most: 0 }
      const w = await world({
        builder: {
          durationMs: () => {
            builds.most = Math.max(builds.most, w.builder.running() + 1)
            return 1_000
          },
        },
        wrap: (inner) => ({
          ...inner,
          requests: {
            ...inner.requests,
            get: (id: string) => (reads.broken ? Promise.reject(new StorageUnavailableError('reads are down')) : inner.requests.get(id)),
          },
        }),
      })
      const main = await w.run(w.sp.queue('main', { ...ref, maxValidationMs: 5_000, leaseGraceMs: 1_000, ...config }))
      w.sc.commit('main', 'a1')
      const { id } = await w.run(main.ingest())
      await driveUntil(w.clock, () => w.builder.running() === 1)
      const waiter = track(main.waitFor(id))
      const row = await w.storage.requests.get(id)
      const { deadlineAt } = (row.data as { context: { deadlineAt: number } }).context
      await w.storage.requests.update({ ...row, state: 'processing' }, row.version, row.version + 5)
      reads.broken = true
      await driveUntil(w.clock, () => waiter.settled)
      expect(waiter.error).toBeInstanceOf(StorageFailedError)
      expect((waiter.error as Error).message).toContain('resumes at the next start')
      return { w, main, id, reads, builds, deadlineAt }
    }

    it('leaves the queue, its waiters rejected, and keeps its slot: the next head waits; a restart resumes it', async () => {
      const { w, main, id, builds } = await lostRequest()
      await expect(w.run(main.waitFor(id))).rejects.toBeInstanceOf(StorageFailedError)
      await expect(w.run(main.cancel(id))).rejects.toBeInstanceOf(StorageFailedError)
      // Its row still says processing (a restart resumes it): it keeps its slot, so the next
      // head waits rather than building next to it after a restart.
      expect(main.inFlight()).toEqual([{ id, n: 1, uri: 'fake://a1', state: 'lost' }])
      // Status shows it lost, not at the step its row still names.
      const status = await w.run(createLiveStatusReader(w.sp, w.storage).queue('main'))
      expect(status.inFlight).toEqual([{ id, n: 1, uri: 'fake://a1', state: 'lost', step: null }])
      w.sc.commit('main', 'a2')
      const next = await w.run(main.ingest())
      await w.run(settle(), 100)
      expect(main.inFlight().map((r) => [r.id, r.state])).toEqual([
        [id, 'lost'],
        [next.id, 'accepted'],
      ])
      // A restart resumes it, holding its slot; the next head still waits its turn.
      const sp = await w.restart()
      const again = await w.run(sp.queue('main'))
      expect(await w.run(again.waitFor(id))).toMatchObject({ state: 'recorded', verdict: 'green' })
      expect(await w.run(again.waitFor(next.id))).toMatchObject({ state: 'recorded', verdict: 'green' })
      expect(builds.most).toBe(1)
    })

    it('is recorded indeterminate once storage allows (its salvage is tried again), which frees its slot', async () => {
      const { w, main, id, reads, builds } = await lostRequest()
      w.sc.commit('main', 'a2')
      const next = await w.run(main.ingest())
      await w.run(settle(), 100)
      expect(main.inFlight().map((r) => r.state)).toEqual(['lost', 'accepted'])
      const before = w.clock.now()
      reads.broken = false
      expect(await w.run(main.waitFor(next.id))).toMatchObject({ state: 'recorded', verdict: 'green' })
      // Well before its lease would have expired (deadline 5 s, grace 1 s).
      expect(w.clock.now() - before).toBeLessThan(4_000)
      expect(await w.run(main.waitFor(id))).toMatchObject({ state: 'recorded', verdict: 'indeterminate' })
      expect((await w.run(main.waitFor(id))).reason).toMatch(/^request actor failed/)
      expect(main.stats()).toMatchObject({ green: 1, indeterminate: 1, leaseExpiries: 0 })
      expect(main.inFlight()).toEqual([])
      expect(builds.most).toBe(1)
    })

    it('frees its slot when its lease expires, and is recorded once storage allows', async () => {
      const { w, main, id, reads, builds, deadlineAt } = await lostRequest()
      w.sc.commit('main', 'a2')
      const next = await w.run(main.ingest())
      // Reads stay down: the lease expires (counted) and the next head is validated.
      expect(await w.run(main.waitFor(next.id))).toMatchObject({ state: 'recorded', verdict: 'green' })
      expect(w.clock.now()).toBeGreaterThanOrEqual(deadlineAt + 1_000)
      expect(main.stats().leaseExpiries).toBe(1)
      expect(main.inFlight()).toEqual([])
      // While it is lost, a wait for it is refused at once; once its salvage succeeds, answered.
      await expect(w.run(main.waitFor(id))).rejects.toBeInstanceOf(StorageFailedError)
      reads.broken = false
      await driveUntil(w.clock, () => main.stats().indeterminate === 1)
      expect(await w.run(main.waitFor(id))).toMatchObject({ state: 'recorded', verdict: 'indeterminate' })
      expect(main.stats()).toMatchObject({ green: 1, indeterminate: 1 })
      expect(builds.most).toBe(1)
    })
  })

  it('stops the runtime when an actor it cannot do without fails, rejecting waiters with the cause', async () => {
    const { lines, logger } = errorLog()
    const w = await world({ builder: { durationMs: 10_000 }, runtime: { logger } })
    const main = await w.run(w.sp.queue('main', ref))
    w.sc.commit('main', 'a1')
    const { id } = await w.run(main.ingest())
    await driveUntil(w.clock, () => w.builder.running() === 1)
    const waiter = track(main.waitFor(id))
    // What XState sends the root when its event-log child fails.
    w.sp.root.send({ type: 'xstate.error.actor.eventLog', error: new Error('event log broke') })
    await driveUntil(w.clock, () => waiter.settled)
    expect(waiter.error).toBeInstanceOf(StoppedError)
    expect((waiter.error as Error).message).toContain('eventLog actor failed')
    expect(lines.some((line) => line.includes('"level":60') && line.includes('eventLog'))).toBe(true)
    // Stopped as by stop(): the build is aborted, nothing runs on, no more ingest.
    await driveUntil(w.clock, () => w.builder.running() === 0)
    expect(w.builder.builds[0]?.result).toBe('aborted')
    await expect(w.run(main.ingest())).rejects.toBeInstanceOf(StoppedError)
  })
})

describe('stopping', () => {
  it('a waitFor after stop settles at once with StoppedError (nothing would ever answer it)', async () => {
    const w = await world({ builder: { durationMs: 10_000 } })
    const main = await w.run(w.sp.queue('main', ref))
    w.sc.commit('main', 'a1')
    const { id } = await w.run(main.ingest())
    await driveUntil(w.clock, () => w.builder.running() === 1)
    await w.run(w.sp.stop())
    const late = track(main.waitFor(id))
    await settle()
    expect(late.settled).toBe(true)
    expect(late.error).toBeInstanceOf(StoppedError)
    await expect(main.cancel(id)).rejects.toBeInstanceOf(StoppedError)
  })

  it('stop returns by its deadline while storage hangs, and reports the write left in flight', async () => {
    let hang = false
    const w = await world({
      wrap: (inner) => ({
        ...inner,
        // Once set, commits carrying a queue snapshot never return (a connection that died silently).
        commit: (ops) => (hang && ops.some((op) => op.op === 'queue.update') ? new Promise(() => undefined) : inner.commit(ops)),
      }),
    })
    const main = await w.run(w.sp.queue('main', ref))
    w.sc.commit('main', 'a1')
    hang = true
    // Recorded green: last green moves, and the queue's snapshot write hangs.
    expect(await w.run(main.waitFor((await w.run(main.ingest())).id))).toMatchObject({ verdict: 'green' })
    // An ingest whose writes wait behind the hung commit.
    w.sc.commit('main', 'a2')
    const second = track(main.ingest())
    await settle()
    const before = w.clock.now()
    const report = await w.run(w.sp.stop({ deadlineMs: 1_000 }), 50)
    expect(w.clock.now() - before).toBeLessThanOrEqual(1_100)
    // The snapshot's batch (and whatever shared it) is reported in flight: its outcome is unknown.
    expect(report.writer.timedOut).toBe(true)
    expect(report.writer.inFlight).toBeGreaterThan(0)
    // What waited behind it was not written: the ingest is told the runtime stopped.
    await driveUntil(w.clock, () => second.settled)
    expect(second.error).toBeInstanceOf(StoppedError)
    expect((second.error as Error).message).toContain('the drain deadline passed')
  })

  it('stops the runtime when its event log fails (another process writes this node), with the cause', async () => {
    const { lines, logger } = errorLog()
    const w = await world({ builder: { durationMs: 1_000 }, runtime: { logger } })
    // A second process on the same data with the same (default) nodeId: both logs start at seq 0.
    const other = await createStovepipe({
      storage: createMemoryStorage({ database: w.database }),
      sourceControl: w.sc,
      builder: w.builder,
      clock: w.clock,
    })
    const main = await w.run(w.sp.queue('main', ref))
    w.sc.commit('main', 'a1')
    await w.run(main.waitFor((await w.run(main.ingest())).id))
    const theirs = await w.run(other.queue('other', ref))
    const { id } = await w.run(theirs.ingest())
    // Its first transition lands on a seq the first process wrote: the other runtime stops.
    const waiting = track(theirs.waitFor(id))
    await driveUntil(w.clock, () => waiting.settled)
    expect(waiting.error).toBeInstanceOf(StoppedError)
    expect((waiting.error as Error).message).toBe('the runtime stopped: its event log failed')
    expect((waiting.error as Error).cause).toBeInstanceOf(EventLogConflictError)
    await expect(w.run(theirs.ingest())).rejects.toThrow('the runtime stopped: its event log failed')
    expect((await w.run(other.stop())).eventLog.flushed).toBe(false)
    // The first process goes on, its log intact.
    expect(lines.some((line) => line.includes('"level":60'))).toBe(false)
    w.sc.commit('main', 'a2')
    expect(await w.run(main.waitFor((await w.run(main.ingest())).id))).toMatchObject({ verdict: 'green' })
  })
})

describe('a runtime that stopped itself', () => {
  it('writes nothing more of its queues at stop (another process may run them)', async () => {
    const w = await world({ builder: { outcome: (uri) => (uri.includes('bad') ? 'failed' : 'passed') } })
    const main = await w.run(w.sp.queue('main', ref))
    for (const sha of ['a1', 'bad2']) {
      w.sc.commit('main', sha)
      await w.run(main.waitFor((await w.run(main.ingest())).id))
    }
    // The red verdict changed the queue's counts only: not written yet.
    expect(main.stats()).toMatchObject({ green: 1, red: 1 })
    await settle()
    const before = await w.storage.queues.get('main')
    // A second process with the same node id writes the next seq of the log: the first fails.
    const other = await createStovepipe({
      storage: createMemoryStorage({ database: w.database }),
      sourceControl: w.sc,
      builder: w.builder,
      clock: w.clock,
    })
    const theirs = await w.run(other.queue('other', ref))
    w.sc.commit('other', 'o1')
    await w.run(theirs.waitFor((await w.run(theirs.ingest())).id))
    w.sc.commit('main', 'a3')
    const ingest = track(main.ingest().then(({ id }) => main.waitFor(id)))
    await driveUntil(w.clock, () => ingest.settled)
    expect(ingest.error).toBeInstanceOf(StoppedError)
    await w.run(w.sp.stop())
    expect(await w.storage.queues.get('main')).toEqual(before)
    await w.run(other.stop())
  })
})

describe('an ingest under way at stop', () => {
  it('whose request row commits after the stop began is acknowledged, tells the stopped queue nothing, and is validated at the next start', async () => {
    let hold = false
    let release = (): void => undefined
    const w = await world({
      wrap: (inner) => ({
        ...inner,
        commit: async (ops: readonly WriteOp[]) => {
          if (hold && ops.some((op) => op.op === 'request.create')) {
            hold = false
            await new Promise<void>((resolve) => (release = resolve))
          }
          return inner.commit(ops)
        },
      }),
    })
    const main = await w.run(w.sp.queue('main', ref))
    w.sc.commit('main', 'a1')
    hold = true
    const ingest = track(main.ingest())
    await driveUntil(w.clock, () => !hold)
    const warn = vi.spyOn(console, 'warn').mockImplementation(() => undefined)
    try {
      const stopping = track(w.sp.stop())
      await settle()
      release()
      await driveUntil(w.clock, () => ingest.settled && stopping.settled)
      expect(ingest.value).toEqual({ id: 'request/main/1', uri: 'fake://a1', deduplicated: false })
      expect(warn).not.toHaveBeenCalled()
    } finally {
      warn.mockRestore()
    }
    const sp = await w.restart()
    expect(await w.run((await w.run(sp.queue('main'))).waitFor('request/main/1'))).toMatchObject({ state: 'recorded', verdict: 'green' })
  })
})

describe('opening a queue while the runtime stops', () => {
  it('neither call says it opened or reconfigured a queue, and no queue actor starts', async () => {
    const w = await world()
    const first = track(w.sp.queue('main', ref))
    const second = track(w.sp.queue('main', { ...ref, maxConcurrent: 2 }))
    await w.run(w.sp.stop())
    await driveUntil(w.clock, () => first.settled && second.settled)
    expect(first.error).toBeInstanceOf(StoppedError)
    expect(second.error).toBeInstanceOf(StoppedError)
    expect(w.sp.queues()).toEqual([])
  })
})

describe('bad input', () => {
  it('refuses an unknown queue, invalid configs, ingest after stop and waitFor on an unknown id', async () => {
    const w = await world()
    await expect(w.run(w.sp.queue('nope'))).rejects.toThrow(NotFoundError)
    await expect(w.run(w.sp.queue('nope'))).rejects.toThrow(/queue nope does not exist; pass its config to create it/)
    for (const config of [
      { ref: 'main', maxConcurrent: 0 },
      { ref: 'main', maxConcurrent: 1.5 },
      { ref: 'main', maxValidationMs: -1 },
      { ref: 'main', maxValidationMs: Number.POSITIVE_INFINITY },
      { ref: 'main', leaseGraceMs: Number.NaN },
      { ref: '' },
      { ref: 'main', projects: ['a', 'a'] },
    ]) {
      await expect(w.run(w.sp.queue('main', config))).rejects.toBeInstanceOf(InvalidInputError)
    }
    await expect(w.run(w.sp.queue('bad name', ref))).rejects.toBeInstanceOf(InvalidInputError)
    expect(await w.storage.queues.list()).toEqual([])
    const main = await w.run(w.sp.queue('main', ref))
    await expect(w.run(main.waitFor('request/main/42'))).rejects.toBeInstanceOf(NotFoundError)
    await expect(w.run(main.waitFor('request/other/1'))).rejects.toBeInstanceOf(InvalidInputError)
    await expect(w.run(w.sp.request('nonsense'))).rejects.toBeInstanceOf(InvalidInputError)
    await w.run(w.sp.stop())
    w.sc.commit('main', 'a1')
    await expect(w.run(main.ingest())).rejects.toBeInstanceOf(StoppedError)
    expect((await w.storage.requests.listByQueue('main')).items).toEqual([])
  })
})
