/**
 * Crash property: random workloads on a simulated clock, with the runtime abandoned
 * without stop (a crash: nothing more reaches storage) or stopped gracefully at random
 * points and started again on the same storage. Some ingests are awaited, others left
 * running while later steps push, ingest, crash or restart; bursts push and ingest several
 * heads in a row, so ingests into one queue overlap. Whatever happens:
 * - every acknowledged ingest reaches a final state;
 * - a fact, once stored, never changes;
 * - last green never moves backwards, across restarts too.
 */
import { join } from 'node:path'
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import type { Fact, Storage } from '../../src/index.js'
import { openSqliteStorage } from '../../src/storage/sqlite/index.js'
import { driveUntil, settle, track } from '../support/drive.js'
import { world, type World } from '../support/runtime.js'
import { tempDir } from '../support/sqlite.js'

type Step =
  | { kind: 'push'; queue: 'main' | 'rel' }
  /** `wait: false` leaves the ingest running into the next steps; it counts once it resolves. */
  | { kind: 'ingest'; queue: 'main' | 'rel'; wait: boolean }
  /** Pushes and ingests `pushes` times in a row without waiting: ingests of different heads overlap. */
  | { kind: 'burst'; queue: 'main' | 'rel'; pushes: number }
  | { kind: 'tick'; ms: number }
  | { kind: 'crash'; downMs: number }
  | { kind: 'restart' }

const queueName = fc.constantFrom<'main' | 'rel'>('main', 'rel')
const step: fc.Arbitrary<Step> = fc.oneof(
  { arbitrary: fc.record({ kind: fc.constant('push' as const), queue: queueName }), weight: 3 },
  { arbitrary: fc.record({ kind: fc.constant('ingest' as const), queue: queueName, wait: fc.boolean() }), weight: 4 },
  { arbitrary: fc.record({ kind: fc.constant('burst' as const), queue: queueName, pushes: fc.integer({ min: 2, max: 4 }) }), weight: 2 },
  { arbitrary: fc.record({ kind: fc.constant('tick' as const), ms: fc.integer({ min: 1, max: 400 }) }), weight: 4 },
  { arbitrary: fc.record({ kind: fc.constant('crash' as const), downMs: fc.integer({ min: 0, max: 3_000 }) }), weight: 1 },
  { arbitrary: fc.constant({ kind: 'restart' as const }), weight: 1 },
)
const setup = fc.record({ maxConcurrent: fc.integer({ min: 1, max: 2 }), seed: fc.nat(1000) })

/** Outcome and duration of a build, decided by the commit (stable across restarts). */
function behaviour(uri: string, seed: number): { outcome: 'passed' | 'failed' | 'error'; durationMs: number } {
  let h = seed
  for (const c of uri) h = (h * 31 + c.charCodeAt(0)) >>> 0
  const outcome = h % 7 === 0 ? 'error' : h % 3 === 0 ? 'failed' : 'passed'
  return { outcome, durationMs: (h >>> 3) % 600 }
}

async function check(
  openStorage: (() => Promise<Storage>) | undefined,
  cfg: { maxConcurrent: number; seed: number },
  steps: Step[],
): Promise<void> {
  const w: World = await world({
    builder: { outcome: (uri) => behaviour(uri, cfg.seed).outcome, durationMs: (uri) => behaviour(uri, cfg.seed).durationMs },
    ...(openStorage === undefined ? {} : { openStorage }),
  })
  const config = { maxConcurrent: cfg.maxConcurrent, maxValidationMs: 2_000, maxAttempts: 2 }
  await w.run(w.sp.queue('main', { ref: 'main', ...config }))
  await w.run(w.sp.queue('rel', { ref: 'rel', ...config }))
  const acknowledged = new Set<string>()
  /** Ingests left running; the ones that resolve are acknowledged. */
  const running: ReturnType<typeof track<{ id: string }>>[] = []
  const push = (queue: 'main' | 'rel', sha: string): void => {
    w.sc.commit(queue, sha)
    shas[queue].push(sha)
  }
  const collect = (): void => {
    for (const pending of running) if (pending.value !== undefined) acknowledged.add(pending.value.id)
  }
  const shas = { main: [] as string[], rel: [] as string[] }
  const facts = new Map<string, Fact>()
  const greenSeen = { main: 0, rel: 0 }

  const observe = async (): Promise<void> => {
    for (const queue of ['main', 'rel'] as const) {
      const handle = w.sp.queues().find((q) => q.name === queue)
      const green = handle?.lastGreen()
      const n = green === undefined ? 0 : Number(green.requestId.split('/')[2])
      expect(n, `last green of ${queue} moved backwards`).toBeGreaterThanOrEqual(greenSeen[queue])
      greenSeen[queue] = n
      for (const sha of shas[queue]) {
        for (const fact of await w.storage.facts.listByUri(queue, `fake://${sha}`)) {
          const key = `${queue} ${fact.uri} ${fact.project}`
          const before = facts.get(key)
          if (before === undefined) facts.set(key, fact)
          else expect(fact, `fact ${key} changed`).toEqual(before)
        }
      }
    }
  }

  for (const [i, s] of steps.entries()) {
    switch (s.kind) {
      case 'push':
        push(s.queue, `${s.queue}${i}`)
        break
      case 'burst': {
        const handle = w.sp.queues().find((q) => q.name === s.queue)
        for (let k = 0; k < s.pushes; k++) {
          push(s.queue, `${s.queue}${i}-${k}`)
          if (handle !== undefined) running.push(track(handle.ingest()))
          // Lets this ingest's turn look at the head before the next push (its writes wait
          // for the writer's linger on the clock, so the mints overlap).
          await settle(1)
        }
        break
      }
      case 'ingest': {
        if (shas[s.queue].length === 0) break
        const handle = w.sp.queues().find((q) => q.name === s.queue)
        if (handle === undefined) break
        const pending = track(handle.ingest())
        running.push(pending)
        if (s.wait) await driveUntil(w.clock, () => pending.settled, { stepMs: 1, realTimeoutMs: 10_000 })
        break
      }
      case 'tick':
        for (let ms = 0; ms < s.ms; ms += 10) {
          w.clock.increment(10)
          await settle(1)
        }
        break
      case 'crash':
        await w.crash(s.downMs)
        break
      case 'restart':
        await w.restart()
        break
    }
    await settle()
    collect()
    await observe()
  }

  // Let everything finish, then check every acknowledged ingest ended.
  const final = new Set(['recorded', 'superseded', 'cancelled'])
  const allEnded = async (): Promise<boolean> => {
    const rows = await Promise.all([...acknowledged].map((id) => w.storage.requests.get(id)))
    return rows.every((row) => final.has(row.state))
  }
  for (let round = 0; round < 200 && !(await allEnded()); round++) {
    for (let k = 0; k < 20; k++) {
      w.clock.increment(50)
      await settle(1)
    }
    collect() // ingests of the last runtime left running resolve meanwhile
  }
  const stuck = (await Promise.all([...acknowledged].map((id) => w.storage.requests.get(id)))).filter((row) => !final.has(row.state))
  expect(stuck.map((row) => `${row.id} ${row.state} ${JSON.stringify((row.data as { step?: string }).step)}`)).toEqual([])
  await observe()
  await w.run(w.sp.stop())
  await w.storage.close()
}

describe('crash and restart', () => {
  it('memory: acknowledged ingests finish, facts never change, last green never regresses', async () => {
    await fc.assert(
      fc.asyncProperty(setup, fc.array(step, { minLength: 1, maxLength: 30 }), (cfg, steps) => check(undefined, cfg, steps)),
      { numRuns: 60 },
    )
  }, 300_000)

  it('sqlite file: the same across real close-and-reopen of the database', async () => {
    await fc.assert(
      fc.asyncProperty(setup, fc.array(step, { minLength: 1, maxLength: 25 }), async (cfg, steps) => {
        const { dir, remove } = tempDir()
        try {
          await check(() => openSqliteStorage({ filename: join(dir, 'crash.db') }), cfg, steps)
        } finally {
          remove()
        }
      }),
      { numRuns: 15 },
    )
  }, 300_000)
})
