/**
 * One queue driven through a workload of steps, for the last-green properties
 * (`test/runtime/last-green.properties.test.ts`): pushes with scripted outcomes and build
 * durations, overlapping ingests, bursts, red streaks past the every-100 snapshot write,
 * config changes, cancels, queue snapshot writes dropped (reported ok, never applied: a
 * lagging snapshot), request creations held (a long window between a request number and its
 * actor), crashes and graceful restarts, and optionally storage faults. {@link check} throws
 * when, after a crash or restart, at the end, or (without faults) after any step, the
 * queue's last green is not the newest request that storage shows recorded green over a
 * green fact, or when a last green in effect was never notified to a hook.
 */
import { expect } from 'vitest'
import { SimulatedClock } from 'xstate'
import { seededRandom } from '../../src/actors/index.js'
import { StorageFailedError, StorageUnavailableError, type QueueHandle, type Storage, type WriteOp } from '../../src/index.js'
import { describeRequest } from '../../src/runtime/views.js'
import { createMemoryStorage } from '../../src/storage/memory/index.js'
import type { LastGreenPayload } from '../../src/hooks/index.js'
import { driveUntil, settle, track } from './drive.js'
import { hookRecorder, recorderWorldOptions, type HookRecorder } from './hook-recorder.js'
import { droppingQueueWrites, world, type World } from './runtime.js'
import { createFaultyStorage, type FaultyStorage } from '../../src/testing/index.js'

/** A build's outcome: passed, failed, error. */
export type O = 'p' | 'f' | 'e'
export type Step = StepKind & { drop?: boolean }
type StepKind =
  | { kind: 'push'; o: O; dur: number }
  | { kind: 'ingest'; wait: boolean }
  | { kind: 'pushIngest'; o: O; dur: number; wait: boolean }
  | { kind: 'burst'; os: O[]; dur: number }
  | { kind: 'redStreak'; count: number; style: 'seq' | 'burst' }
  | { kind: 'tick'; ms: number }
  | { kind: 'config'; maxConcurrent: number; wait: boolean }
  | { kind: 'cancel'; pick: number; wait: boolean }
  | { kind: 'drop'; on: boolean }
  | { kind: 'hold' }
  | { kind: 'release' }
  | { kind: 'crash'; downMs: number }
  | { kind: 'restart' }
  /** Fault mode only: commit failure and lost-ack rates of the current runtime's storage. */
  | { kind: 'faults'; rate: number }
  /** Fault mode only: storage down for `ms`. */
  | { kind: 'outage'; ms: number }
  /** Fault mode only: for `ms`, commits with a final request write fail deterministically (StorageFailedError). */
  | { kind: 'poison'; ms: number }

export interface Setup {
  maxConcurrent: number
  /** null: default (1 h) */
  maxValidationMs: number | null
  leaseGraceMs: number
  hooks: boolean
  /** Storage faults (createFaultyStorage under the gates); live checks are then off. */
  faults?: boolean
  /** Fault mode: request step attempts (queue maxAttempts) and writer commit attempts. */
  maxAttempts?: number
  writerAttempts?: number
}

/** What a head's build does, from its name (`fake://c12-p-1500`: passes after 1500 ms). */
export function behaviourOf(uri: string): { outcome: 'passed' | 'failed' | 'error'; durationMs: number } {
  const m = /-([pfe])-(\d+)$/.exec(uri)
  if (m === null) throw new Error(`bad uri ${uri}`)
  const o = m[1] as O
  return { outcome: o === 'p' ? 'passed' : o === 'f' ? 'failed' : 'error', durationMs: Number(m[2]) }
}

/** Runs `steps` on a fresh world set up as `cfg`; throws when last green is wrong (see the module doc). */
export async function check(cfg: Setup, steps: Step[]): Promise<void> {
  const clock = new SimulatedClock()
  clock.set(1_700_000_000_000)
  const hooks: HookRecorder | undefined = cfg.hooks ? hookRecorder(clock, { failRate: 0, hangRate: 0, delayMs: 50 }, 7) : undefined

  // Per generation of the runtime: whether its snapshot writes are dropped, its creates held, it is dead.
  interface Gen {
    drop: boolean
    hold: Promise<void> | undefined
    release: () => void
    dead: boolean
    faulty: FaultyStorage | undefined
    poison: boolean
  }
  const gens: Gen[] = []
  let current = -1
  const newGen = (): Gen => ({ drop: false, hold: undefined, release: () => undefined, dead: false, faulty: undefined, poison: false })

  const w: World = await world({
    clock,
    runtime: {
      random: seededRandom(1),
      hookRetry: { baseDelayMs: 100, maxDelayMs: 2_000, timeoutMs: 1_500 },
      ...(cfg.writerAttempts === undefined
        ? {}
        : { writer: { retry: { maxAttempts: cfg.writerAttempts, baseDelayMs: 10, maxDelayMs: 50 } } }),
    },
    ...recorderWorldOptions(hooks),
    builder: {
      outcome: (uri) => behaviourOf(uri).outcome,
      durationMs: (uri) => behaviourOf(uri).durationMs,
    },
    wrap: (base: Storage): Storage => {
      const g = newGen()
      let inner = base
      if (cfg.faults === true) {
        g.faulty = createFaultyStorage(base, { clock, latencyMs: [0, 20], seed: gens.length + 1 })
        inner = g.faulty
      }
      gens.push(g)
      current = gens.length - 1
      const commit = droppingQueueWrites(inner, () => g.drop)
      return {
        ...inner,
        commit: async (ops: readonly WriteOp[]) => {
          // A crashed runtime writes nothing more, also after a hold it waited on is released.
          const gone = (): boolean => g.dead
          if (gone()) throw new StorageUnavailableError('dead runtime')
          if (g.hold !== undefined && ops.some((op) => op.op === 'request.create')) await g.hold
          if (gone()) throw new StorageUnavailableError('dead runtime')
          if (g.poison && ops.some((op) => op.op === 'request.update' && ['recorded', 'superseded', 'cancelled'].includes(op.record.state)))
            throw new StorageFailedError('poisoned final write')
          return commit(ops)
        },
      }
    },
  })
  const raw = createMemoryStorage({ database: w.database })
  const gen = (): Gen => gens[current] as Gen

  const baseConfig = {
    ref: 'main',
    maxConcurrent: cfg.maxConcurrent,
    ...(cfg.maxValidationMs === null ? {} : { maxValidationMs: cfg.maxValidationMs }),
    leaseGraceMs: cfg.leaseGraceMs,
    ...(cfg.maxAttempts === undefined ? {} : { maxAttempts: cfg.maxAttempts }),
  }
  let q: QueueHandle = await w.run(w.sp.queue('main', baseConfig))
  let shaCount = 0
  let pushed = 0
  const acknowledged: string[] = []
  let pending: { t: ReturnType<typeof track<{ id: string }>>; gen: number }[] = []
  const greensSeen: string[] = []

  const collect = (): void => {
    pending = pending.filter((p) => {
      if (!p.t.settled) return true
      if (p.t.value !== undefined) acknowledged.push(p.t.value.id)
      return false
    })
  }
  const push = (o: O, dur: number): void => {
    const sha = `c${++shaCount}-${o}-${dur}`
    w.sc.commit('main', sha)
    pushed++
  }
  const ingest = async (wait: boolean): Promise<void> => {
    if (pushed === 0) return
    const t = track(q.ingest())
    pending.push({ t, gen: current })
    if (wait && gen().hold === undefined) await driveUntil(clock, () => t.settled, { stepMs: 1, realTimeoutMs: 20_000 })
  }

  /** The highest request whose stored row is recorded green over a green fact (skipping `exclude`). */
  const expected = async (exclude: Set<string>): Promise<string | undefined> => {
    let cursor: string | undefined
    for (;;) {
      const page = await raw.requests.listByQueue('main', {
        states: ['recorded'],
        order: 'desc',
        limit: 200,
        ...(cursor === undefined ? {} : { cursor }),
      })
      for (const row of page.items) {
        if (exclude.has(row.id)) continue
        const v = describeRequest(row)
        if (v.verdict !== 'green') continue
        const fact = await raw.facts.get('main', row.uri, '').catch(() => undefined)
        if (fact?.degree === 0) return row.id
      }
      cursor = page.nextCursor
      if (cursor === undefined) return undefined
    }
  }

  const compare = async (where: string): Promise<void> => {
    const inFlight = new Set(q.inFlight().map((r) => r.id))
    const want = await expected(inFlight)
    const got = q.lastGreen()?.requestId
    if (got !== undefined && greensSeen.at(-1) !== got) greensSeen.push(got)
    if (got !== want) {
      const stored = await raw.queues.get('main')
      const st = (stored.snapshot as { settledThrough?: number }).settledThrough
      const rows = (await raw.requests.listByQueue('main', { limit: 1000 })).items.map((r) => {
        const v = describeRequest(r)
        return `${v.n}:${v.state}/${String(v.verdict)}`
      })
      throw new Error(
        `${where}: lastGreen ${String(got)} but storage says ${String(want)}; stored lastGreen ${String(stored.lastGreen?.requestId)} settledThrough ${String(st)}; rows ${rows.join(' ')}`,
      )
    }
  }

  const reopened = async (where: string): Promise<void> => {
    const handle = w.sp.queues().find((h) => h.name === 'main')
    if (handle === undefined) throw new Error('queue not reopened')
    q = handle
    await compare(where)
  }

  for (const [i, s] of steps.entries()) {
    const where = `step ${i} ${JSON.stringify(s)}`
    if (s.drop !== undefined) gen().drop = s.drop
    const holding = gen().hold !== undefined
    switch (s.kind) {
      case 'push':
        push(s.o, s.dur)
        break
      case 'ingest':
        await ingest(s.wait)
        break
      case 'pushIngest':
        push(s.o, s.dur)
        await ingest(s.wait)
        break
      case 'burst':
        for (const o of s.os) {
          push(o, s.dur)
          pending.push({ t: track(q.ingest()), gen: current })
          await settle(1)
        }
        break
      case 'redStreak': {
        if (holding) break
        if (s.style === 'seq') {
          for (let k = 0; k < s.count; k++) {
            push('f', 0)
            const t = track(q.ingest().then((r) => r))
            pending.push({ t, gen: current })
            await driveUntil(clock, () => t.settled, { stepMs: 1, realTimeoutMs: 20_000 })
            if (t.value !== undefined) {
              const id = t.value.id
              await w.run(
                q.waitFor(id).catch(() => undefined),
                5,
              )
            }
          }
        } else {
          const ts: ReturnType<typeof track<{ id: string }>>[] = []
          for (let k = 0; k < s.count; k++) {
            push('f', 0)
            const t = track(q.ingest())
            ts.push(t)
            pending.push({ t, gen: current })
            await settle(1)
          }
          await driveUntil(clock, () => ts.every((t) => t.settled), { stepMs: 1, realTimeoutMs: 20_000 })
        }
        break
      }
      case 'tick': {
        const by = s.ms < 60 ? 1 : 10
        for (let ms = 0; ms < s.ms; ms += by) {
          clock.increment(by)
          await settle(1)
        }
        break
      }
      case 'config': {
        const t = track(w.sp.queue('main', { ...baseConfig, maxConcurrent: s.maxConcurrent }))
        if (s.wait && !holding) await driveUntil(clock, () => t.settled, { stepMs: 1, realTimeoutMs: 20_000 })
        break
      }
      case 'cancel': {
        const id = acknowledged[s.pick % Math.max(1, acknowledged.length)]
        if (id === undefined) break
        const t = track(q.cancel(id))
        if (s.wait && !holding) await driveUntil(clock, () => t.settled, { stepMs: 1, realTimeoutMs: 20_000 })
        break
      }
      case 'drop':
        gen().drop = s.on
        break
      case 'hold': {
        const g = gen()
        if (g.hold !== undefined) break
        g.hold = new Promise((resolve) => (g.release = resolve))
        break
      }
      case 'release': {
        const g = gen()
        g.release()
        g.hold = undefined
        break
      }
      case 'faults': {
        const f = gen().faulty
        if (f !== undefined) {
          f.faults.failRate = s.rate
          f.faults.lostAckRate = s.rate
        }
        break
      }
      case 'outage': {
        const f = gen().faulty
        if (f === undefined) break
        f.faults.down = true
        for (let ms = 0; ms < s.ms; ms += 10) {
          clock.increment(10)
          await settle(1)
        }
        f.faults.down = false
        break
      }
      case 'poison': {
        const g = gen()
        g.poison = true
        for (let ms = 0; ms < s.ms; ms += 10) {
          clock.increment(10)
          await settle(1)
        }
        g.poison = false
        break
      }
      case 'crash': {
        const old = gen()
        old.dead = true
        if (old.faulty !== undefined) old.faulty.faults.down = true
        await w.crash(s.downMs)
        old.release()
        await reopened(`${where} (after crash)`)
        break
      }
      case 'restart': {
        const old = gen()
        await w.restart()
        old.dead = true
        old.release()
        await reopened(`${where} (after restart)`)
        break
      }
    }
    await settle()
    collect()
    if (cfg.faults !== true) await compare(`${where} (live)`)
  }

  // Quiesce: holds released, drops off; every request ends.
  const g = gen()
  g.release()
  g.hold = undefined
  g.drop = false
  g.poison = false
  if (g.faulty !== undefined) {
    g.faulty.faults.failRate = 0
    g.faulty.faults.lostAckRate = 0
    g.faulty.faults.down = false
    for (let k = 0; k < 500; k++) {
      clock.increment(10)
      await settle(1)
    }
    // Requests lost to faults resume at the next start.
    await w.restart()
    g.dead = true
    await reopened('quiesce (after restart)')
  }
  const quiet = (): boolean => {
    collect()
    return pending.every((p) => p.gen !== current || p.t.settled) && q.inFlight().length === 0 && w.builder.running() === 0
  }
  for (let round = 0; round < 200 && !quiet(); round++) {
    for (let k = 0; k < 20; k++) {
      clock.increment(50)
      await settle(1)
    }
  }
  await settle(5)
  expect(quiet(), 'quiesced').toBe(true)
  await compare('end')
  await w.restart()
  await reopened('end (after restart)')
  gen().dead = true
  await w.crash(0)
  await reopened('end (after crash)')

  if (hooks !== undefined) {
    for (let k = 0; k < 3000; k++) {
      clock.increment(10)
      await settle(1)
    }
    const delivered = new Set(
      hooks
        .delivered()
        .filter((c) => c.kind === 'lastGreen')
        .map((c) => (c.payload as LastGreenPayload).requestId),
    )
    const missing = greensSeen.filter((id) => !delivered.has(id))
    expect(missing, `last greens in effect never notified (seen ${greensSeen.join(',')})`).toEqual([])
  }
  await w.run(w.sp.stop())
  await w.storage.close()
}
