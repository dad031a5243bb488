/**
 * Model property of one queue's semantics: random workloads on a simulated clock (pushes,
 * force-pushes, forgotten commits, source-control failures, overlapping ingests and bursts,
 * cancels, reconfigures, time, graceful restarts; the second property adds crashes, storage
 * faults and outages) checked against a model of the branch (each
 * commit's parent and its build's outcome), of the calls made and their answers, and of the
 * queue's config. Whatever happens:
 * - every acknowledged ingest reaches a final state and nothing is left in flight;
 * - dedup: one request per (queue, uri), the first ingest of a head is not deduplicated, later ones are;
 * - coalescing: at most one request waits to start, the others are superseded by a newer one
 *   (with maxConcurrent 1, only the newest head that arrived during a build is validated);
 * - gate: never more builds at once than maxConcurrent (the fake builder is watched at each start);
 * - last green only moves forward, is always a commit whose build passed (a recorded green whose
 *   fact has degree 0), and ends as the newest recorded green;
 * - facts never change once written; verdicts, plans and deadlines agree with the model;
 * - history pages return each recorded request once, newest first;
 * - sp.request(), waitFor() and cancel() answers agree with the stored rows;
 * - request numbers follow ingest order and continue after a restart or crash;
 * - a reconfigure is in effect at once and survives a restart or crash once sp.queue() resolved
 *   (under faults it may reject with StorageUnavailableError: then it is in effect, and the next
 *   start finds it or an earlier config);
 * - stats() equals the rows' counts in runs without restarts; across stops and crashes it is
 *   approximate by design (README: a crash loses counts since the last write, an end landing
 *   during a stop is not counted), so there it is checked never to go down (graceful restarts
 *   included) and never to exceed the rows' counts;
 * - with a hook (in some runs; its calls fail, hang or lag at random), once its calls succeed:
 *   every recorded verdict is delivered as stored, and only those; every last green that was
 *   in effect is delivered as a move; one payload per idempotency key; no call from a runtime
 *   that is gone (see checkHooks).
 */
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { SimulatedClock } from 'xstate'
import {
  describeRequest,
  StorageUnavailableError,
  StovepipeError,
  type BuildRequest,
  type CancelResult,
  type Fact,
  type IngestResult,
  type QueueConfigInput,
  type QueueHandle,
  type RequestView,
} from '../../src/index.js'
import { seededRandom } from '../../src/actors/index.js'
import { createMemoryStorage } from '../../src/storage/memory/index.js'
import { createFaultyStorage, type FaultyStorage } from '../../src/testing/index.js'
import type { LastGreenPayload, VerdictPayload } from '../../src/hooks/index.js'
import { driveUntil, settle, track } from '../support/drive.js'
import { hookRecorder, recorderWorldOptions, type HookBehaviour, type HookRecorder } from '../support/hook-recorder.js'
import { world } from '../support/runtime.js'

type Outcome = 'passed' | 'failed' | 'error'
interface Reconfig {
  maxConcurrent: number
  maxValidationMs: number
}
type Step =
  | { kind: 'commit'; outcome: Outcome; durationMs: number }
  /** Replaces the branch by a new history of `outcomes.length` commits. */
  | { kind: 'force'; outcomes: Outcome[]; durationMs: number }
  /** `wait: false` leaves the ingest running into the next steps; it counts once it resolves. */
  | { kind: 'ingest'; wait: boolean }
  /** Pushes and ingests once per outcome without waiting: ingests of different heads overlap. */
  | { kind: 'burst'; outcomes: Outcome[]; durationMs: number }
  /** Cancels an acknowledged request (or, one time in 7, an id that does not exist). */
  | { kind: 'cancel'; pick: number; wait: boolean }
  | { kind: 'tick'; ms: number }
  | { kind: 'restart' }
  | { kind: 'crash'; downMs: number }
  /** Source control fails its next `times` calls. */
  | { kind: 'scfail'; times: number }
  /** Source control forgets a commit no other one descends from (not the head). */
  | { kind: 'forget'; pick: number }
  | ({ kind: 'reconfig' } & Reconfig)
  /** Storage is down for `ms` (faults only), while the queue is reconfigured or not. */
  | { kind: 'outage'; ms: number; reconfig: Reconfig | null }

interface Mode {
  crashes: boolean
  faults: boolean
}

const outcome = fc.constantFrom<Outcome>('passed', 'passed', 'failed', 'error')
const durationMs = fc.integer({ min: 0, max: 800 })
const reconfig: fc.Arbitrary<Reconfig> = fc.record({
  maxConcurrent: fc.integer({ min: 1, max: 3 }),
  maxValidationMs: fc.integer({ min: 300, max: 3_000 }),
})

function stepsOf(mode: Mode): fc.Arbitrary<Step> {
  const weighted: { weight: number; arbitrary: fc.Arbitrary<Step> }[] = [
    { weight: 4, arbitrary: fc.record({ kind: fc.constant('commit' as const), outcome, durationMs }) },
    {
      weight: 1,
      arbitrary: fc.record({
        kind: fc.constant('force' as const),
        outcomes: fc.array(outcome, { minLength: 1, maxLength: 3 }),
        durationMs,
      }),
    },
    { weight: 5, arbitrary: fc.record({ kind: fc.constant('ingest' as const), wait: fc.boolean() }) },
    {
      weight: 2,
      arbitrary: fc.record({
        kind: fc.constant('burst' as const),
        outcomes: fc.array(outcome, { minLength: 2, maxLength: 4 }),
        durationMs,
      }),
    },
    { weight: 2, arbitrary: fc.record({ kind: fc.constant('cancel' as const), pick: fc.nat(50), wait: fc.boolean() }) },
    { weight: 3, arbitrary: fc.record({ kind: fc.constant('tick' as const), ms: fc.integer({ min: 1, max: 1_500 }) }) },
    { weight: 1, arbitrary: fc.constant({ kind: 'restart' as const }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('scfail' as const), times: fc.integer({ min: 1, max: 3 }) }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('forget' as const), pick: fc.nat(50) }) },
    { weight: 1, arbitrary: reconfig.map((r): Step => ({ kind: 'reconfig', ...r })) },
  ]
  if (mode.crashes) {
    weighted.push({ weight: 1, arbitrary: fc.record({ kind: fc.constant('crash' as const), downMs: fc.integer({ min: 0, max: 3_000 }) }) })
  }
  if (mode.faults) {
    weighted.push({
      weight: 1,
      arbitrary: fc.record({
        kind: fc.constant('outage' as const),
        ms: fc.integer({ min: 1, max: 3_000 }),
        reconfig: fc.option(reconfig, { nil: null }),
      }),
    })
  }
  return fc.oneof(...weighted)
}

interface Setup {
  maxConcurrent: number
  maxValidationMs: number
  leaseGraceMs: number
  maxAttempts: number
  /** A recording hook and how its calls go, or none (the runtime then runs without hooks). */
  hooks: (HookBehaviour & { seed: number }) | null
}
const setup: fc.Arbitrary<Setup> = fc.record({
  maxConcurrent: fc.integer({ min: 1, max: 3 }),
  maxValidationMs: fc.integer({ min: 300, max: 3_000 }),
  leaseGraceMs: fc.integer({ min: 0, max: 500 }),
  maxAttempts: fc.integer({ min: 1, max: 3 }),
  hooks: fc.option(
    fc.record({
      failRate: fc.constantFrom(0, 0.2, 0.5),
      hangRate: fc.constantFrom(0, 0.05),
      delayMs: fc.integer({ min: 0, max: 300 }),
      seed: fc.nat(),
    }),
    { nil: null },
  ),
})

const FINAL = new Set(['recorded', 'superseded', 'cancelled'])
const COUNTS = ['accepted', 'superseded', 'cancelled', 'green', 'red', 'indeterminate'] as const
const MIN_VALIDATION_MS = 300
/** Ids from this number on are never minted in a run: cancelling them is NotFoundError. */
const UNKNOWN_FROM = 1_000
const numberOf = (id: string): number => Number(id.slice(id.lastIndexOf('/') + 1))
const shaOf = (uri: string): string => uri.slice('fake://'.length)
const codeOf = (error: unknown): string => (error instanceof StovepipeError ? error.code : String(error))
const sameConfig = (a: QueueConfigInput, b: QueueConfigInput): boolean =>
  a.ref === b.ref &&
  a.maxConcurrent === b.maxConcurrent &&
  a.maxValidationMs === b.maxValidationMs &&
  a.leaseGraceMs === b.leaseGraceMs &&
  a.maxAttempts === b.maxAttempts

type Tracked<T> = ReturnType<typeof track<T>>
interface IngestCall {
  call: number
  tracked: Tracked<IngestResult>
  /** Made to a runtime that crashed since: it may never answer. */
  orphan: boolean
}
interface CancelCall {
  id: string
  tracked: Tracked<CancelResult>
  orphan: boolean
}

async function check(mode: Mode, cfg: Setup, steps: Step[]): Promise<void> {
  const clock = new SimulatedClock()
  clock.set(1_700_000_000_000)
  const hooks: HookRecorder | undefined = cfg.hooks === null ? undefined : hookRecorder(clock, cfg.hooks, cfg.hooks.seed)
  /** Every last green seen through lastGreen(), in order: each was in effect, so each is notified. */
  const greensSeen: string[] = []

  // The branch: each commit's parent and how its build goes.
  const behaviour = new Map<string, { outcome: Outcome; durationMs: number }>()
  const behaviourOf = (uri: string): { outcome: Outcome; durationMs: number } => {
    const b = behaviour.get(shaOf(uri))
    if (b === undefined) throw new Error(`no commit behind ${uri}`)
    return b
  }
  const parent = new Map<string, string | undefined>()
  const pushed: string[] = []
  const forgotten = new Set<string>()
  let head: string | undefined
  let shaCount = 0
  const isAncestor = (a: string, d: string): boolean => {
    for (let x: string | undefined = d; x !== undefined; x = parent.get(x)) if (x === a) return true
    return false
  }

  // The gate: the limit a build start must respect. A build retried by a request that already
  // had one may start while builds freed by a lowered maxConcurrent still run (bounded by the
  // highest limit ever); a first build may not exceed the highest limit since the queue was
  // last idle.
  const gate = { max: cfg.maxConcurrent, sinceIdle: cfg.maxConcurrent, ever: cfg.maxConcurrent }
  const built = new Set<string>()
  const violations: string[] = []
  let runningBuilds = (): number => 0
  const buildStarts = (request: BuildRequest): void => {
    const first = !built.has(request.requestId)
    built.add(request.requestId)
    const running = runningBuilds() + 1
    const limit = first ? Math.max(gate.max, gate.sinceIdle) : gate.ever
    if (running > limit) violations.push(`${running} builds at once (limit ${limit}) as ${request.requestId} starts`)
  }

  // Storage faults: each start of the runtime gets a faulty handle with its own seed.
  const faults = { on: mode.faults, seed: 1, current: undefined as FaultyStorage | undefined }
  const w = await world({
    clock,
    // Jitter from a seed: a run replays exactly (its seed and path reproduce a failure).
    runtime: { random: seededRandom(1), hookRetry: { baseDelayMs: 100, maxDelayMs: 2_000, timeoutMs: 1_500 } },
    ...recorderWorldOptions(hooks),
    builder: {
      outcome: (uri) => behaviourOf(uri).outcome,
      durationMs: (uri, request) => {
        buildStarts(request)
        return behaviourOf(uri).durationMs
      },
    },
    ...(mode.faults
      ? {
          wrap: (inner) => {
            const rate = faults.on ? 0.05 : 0
            faults.current = createFaultyStorage(inner, {
              clock,
              latencyMs: [0, 30],
              failRate: rate,
              lostAckRate: rate,
              seed: faults.seed++,
            })
            return faults.current
          },
        }
      : {}),
  })
  runningBuilds = () => w.builder.running()
  // Reads what is really stored, past any fault.
  const stored = createMemoryStorage({ database: w.database })

  const requested: QueueConfigInput = { ref: 'main', ...cfg }
  /** Configs the next start may find: the last one stored for sure, and any asked for since whose write was not confirmed. */
  let candidates: QueueConfigInput[] = [{ ...requested }]
  let q: QueueHandle = await w.run(w.sp.queue('main', requested))
  /** Restarts and crashes so far. */
  const starts = { again: 0 }
  let statsSeen = q.stats()

  const ingests: IngestCall[] = []
  const acknowledged: (IngestResult & { call: number })[] = []
  const cancelCalls: CancelCall[] = []
  const cancels: { id: string; result: CancelResult }[] = []
  const errors: string[] = []
  let calls = 0
  const facts = new Map<string, Fact>()
  let greenN = 0

  const storageCodes = mode.faults ? ['STORAGE_UNAVAILABLE', 'STORAGE_FAILED'] : []
  const collect = (): void => {
    for (let i = ingests.length - 1; i >= 0; i--) {
      const pending = ingests[i]
      if (pending === undefined || !pending.tracked.settled) continue
      ingests.splice(i, 1)
      const { value, error } = pending.tracked
      if (value !== undefined) acknowledged.push({ ...value, call: pending.call })
      else if (!pending.orphan && !['UNAVAILABLE', 'STOPPED', ...storageCodes].includes(codeOf(error))) {
        errors.push(`ingest call ${pending.call} failed: ${String(error)}`)
      }
    }
    for (let i = cancelCalls.length - 1; i >= 0; i--) {
      const pending = cancelCalls[i]
      if (pending === undefined || !pending.tracked.settled) continue
      cancelCalls.splice(i, 1)
      const { value, error } = pending.tracked
      const unknown = numberOf(pending.id) >= UNKNOWN_FROM
      if (value !== undefined) {
        if (unknown) errors.push(`cancel of unknown ${pending.id} answered ${JSON.stringify(value)}`)
        cancels.push({ id: pending.id, result: value })
      } else if (!pending.orphan && !(unknown ? ['NOT_FOUND', 'STOPPED'] : ['STOPPED', ...storageCodes]).includes(codeOf(error))) {
        errors.push(`cancel ${pending.id} failed: ${String(error)}`)
      }
    }
  }

  const observe = async (where: string): Promise<void> => {
    expect(violations, where).toEqual([])
    const waiting = q.inFlight().filter((r) => r.state === 'accepted')
    expect(waiting.length, `${where}: waiting to start at once: ${waiting.map((r) => r.id).join(', ')}`).toBeLessThanOrEqual(1)
    const green = q.lastGreen()
    const n = green === undefined ? 0 : numberOf(green.requestId)
    expect(n, `${where}: last green moved back`).toBeGreaterThanOrEqual(greenN)
    greenN = n
    if (green !== undefined && greensSeen.at(-1) !== green.requestId) greensSeen.push(green.requestId)
    if (green !== undefined) {
      const view = describeRequest(await stored.requests.get(green.requestId))
      expect([view.uri, view.state, view.verdict], `${where}: last green ${green.requestId}`).toEqual([green.uri, 'recorded', 'green'])
      expect((await stored.facts.get('main', green.uri, '')).degree, `${where}: last green's fact`).toBe(0)
      expect(behaviourOf(green.uri).outcome, `${where}: last green's build`).toBe('passed')
    }
    for (const sha of pushed) {
      for (const fact of await stored.facts.listByUri('main', `fake://${sha}`)) {
        const key = `${fact.uri} ${fact.project}`
        const before = facts.get(key)
        if (before === undefined) facts.set(key, fact)
        else expect(fact, `${where}: fact ${key} changed`).toEqual(before)
      }
    }
    if (q.inFlight().length === 0 && runningBuilds() === 0) gate.sinceIdle = gate.max
    // Counts only grow, across graceful restarts too (they are written at stop).
    const stats = q.stats()
    for (const key of COUNTS) expect(stats[key], `${where}: stats().${key} went down`).toBeGreaterThanOrEqual(statsSeen[key])
    statsSeen = stats
  }

  const reopen = async (how: { crash: false } | { crash: true; downMs: number }): Promise<void> => {
    starts.again++
    if (how.crash) {
      for (const pending of [...ingests, ...cancelCalls]) pending.orphan = true
      // Nothing of the dead runtime reaches storage any more, not even a commit it had under way.
      if (faults.current !== undefined) faults.current.faults.down = true
      await w.crash(how.downMs)
    } else {
      await w.restart()
      await settle()
      collect()
      // A stop answers every call it interrupts (StoppedError or its result).
      expect(
        [
          ...ingests.filter((c) => !c.orphan).map((c) => `ingest ${c.call}`),
          ...cancelCalls.filter((c) => !c.orphan).map((c) => `cancel ${c.id}`),
        ],
        'calls left unanswered by a stop',
      ).toEqual([])
    }
    q = await w.run(w.sp.queue('main'))
    // A stop writes the config in effect; a crash may lose one whose write was not confirmed.
    const allowed = how.crash ? candidates : candidates.slice(-1)
    const config = q.config()
    const found = allowed.find((c) => sameConfig(c, config))
    expect(found, `config after a ${how.crash ? 'crash' : 'restart'}: ${JSON.stringify(config)}`).toBeDefined()
    if (found !== undefined) candidates = [found]
    Object.assign(requested, found)
    gate.max = config.maxConcurrent
    gate.sinceIdle = Math.max(gate.sinceIdle, gate.max)
    // A crash loses the counts since their last write.
    if (how.crash) statsSeen = q.stats()
  }

  const reconfigure = async (where: string, change: Reconfig): Promise<void> => {
    const next: QueueConfigInput = { ...requested, maxConcurrent: change.maxConcurrent, maxValidationMs: change.maxValidationMs }
    gate.ever = Math.max(gate.ever, change.maxConcurrent)
    gate.sinceIdle = Math.max(gate.sinceIdle, change.maxConcurrent)
    // While the call is under way, either limit may be in effect.
    gate.max = Math.max(gate.max, change.maxConcurrent)
    try {
      q = await w.run(w.sp.queue('main', next))
      candidates = [next]
    } catch (error) {
      // Not stored (or its acknowledgement lost): in effect all the same, written again later.
      if (!(mode.faults && error instanceof StorageUnavailableError)) throw error
      candidates.push(next)
    }
    Object.assign(requested, next)
    gate.max = change.maxConcurrent
    expect(sameConfig(q.config(), next), `${where}: config in effect ${JSON.stringify(q.config())}`).toBe(true)
  }
  const tick = async (ms: number): Promise<void> => {
    for (let t = 0; t < ms; t += 10) {
      clock.increment(10)
      await settle(1)
    }
  }
  const push = (sha: string, b: { outcome: Outcome; durationMs: number }, parentSha: string | undefined): void => {
    behaviour.set(sha, b)
    parent.set(sha, parentSha)
    head = sha
    pushed.push(sha)
  }

  for (const [i, s] of steps.entries()) {
    const where = `step ${i} ${JSON.stringify(s)}`
    switch (s.kind) {
      case 'commit': {
        const sha = `s${++shaCount}`
        w.sc.commit('main', sha)
        push(sha, { outcome: s.outcome, durationMs: s.durationMs }, head)
        break
      }
      case 'force': {
        const shas = s.outcomes.map(() => `s${++shaCount}`)
        w.sc.forcePush('main', shas)
        let previous: string | undefined
        for (const [k, sha] of shas.entries()) {
          push(sha, { outcome: s.outcomes[k] ?? 'passed', durationMs: s.durationMs }, previous)
          previous = sha
        }
        break
      }
      case 'burst':
        for (const o of s.outcomes) {
          const sha = `s${++shaCount}`
          w.sc.commit('main', sha)
          push(sha, { outcome: o, durationMs: s.durationMs }, head)
          ingests.push({ call: calls++, tracked: track(q.ingest()), orphan: false })
          await settle(1)
        }
        break
      case 'ingest': {
        if (pushed.length === 0) {
          const error = await w.run(q.ingest()).then(
            () => undefined,
            (e: unknown) => e,
          )
          expect(['NOT_FOUND', 'UNAVAILABLE'], `${where}: ingest of an empty branch`).toContain(codeOf(error))
          break
        }
        const tracked = track(q.ingest())
        ingests.push({ call: calls++, tracked, orphan: false })
        if (s.wait) await driveUntil(clock, () => tracked.settled, { stepMs: 1, realTimeoutMs: 10_000 })
        break
      }
      case 'cancel': {
        const known = [...new Set(acknowledged.map((a) => a.id))]
        const pick = known[s.pick % Math.max(known.length, 1)]
        const id = pick === undefined || s.pick % 7 === 6 ? `request/main/${UNKNOWN_FROM + s.pick}` : pick
        const tracked = track(q.cancel(id))
        cancelCalls.push({ id, tracked, orphan: false })
        if (s.wait) await driveUntil(clock, () => tracked.settled, { stepMs: 1, realTimeoutMs: 10_000 })
        break
      }
      case 'tick':
        await tick(s.ms)
        break
      case 'restart':
        await reopen({ crash: false })
        break
      case 'crash':
        await reopen({ crash: true, downMs: s.downMs })
        break
      case 'scfail':
        w.sc.failNext(s.times)
        break
      case 'forget': {
        const live = pushed.filter((sha) => !forgotten.has(sha))
        const leaves = live.filter((sha) => sha !== head && !live.some((d) => d !== sha && isAncestor(sha, d)))
        const sha = leaves[s.pick % Math.max(leaves.length, 1)]
        if (sha !== undefined) {
          w.sc.forget(sha)
          forgotten.add(sha)
        }
        break
      }
      case 'outage': {
        const storage = faults.current
        if (storage === undefined) break
        storage.faults.down = true
        if (s.reconfig !== null) await reconfigure(where, s.reconfig)
        await tick(s.ms)
        storage.faults.down = false
        break
      }
      case 'reconfig':
        await reconfigure(where, s)
        break
    }
    await settle()
    collect()
    await observe(where)
  }

  // Quiesce: faults off; requests whose writes were given up on resume at the next start.
  if (mode.faults) {
    faults.on = false
    if (faults.current !== undefined) {
      faults.current.faults.failRate = 0
      faults.current.faults.lostAckRate = 0
    }
    await tick(5_000)
    await reopen({ crash: false })
  }
  const ids = (): string[] => [...new Set(acknowledged.map((a) => a.id))]
  const allEnded = async (): Promise<boolean> => {
    collect()
    if (ingests.some((c) => !c.orphan)) return false
    const rows = await Promise.all(ids().map((id) => stored.requests.get(id)))
    return rows.every((r) => FINAL.has(r.state)) && q.inFlight().length === 0
  }
  for (let round = 0; round < 300 && !(await allEnded()); round++) await tick(1_000)
  await settle(5)
  collect()
  await observe('end')

  const views: RequestView[] = (await stored.requests.listByQueue('main', { limit: 1_000 })).items.map(describeRequest)
  const byId = new Map(views.map((v) => [v.id, v]))
  expect(
    views.filter((v) => !FINAL.has(v.state)).map((v) => `${v.id} ${v.state} ${String(v.step)}`),
    'every request ends',
  ).toEqual([])
  expect(q.inFlight(), 'nothing in flight').toEqual([])
  expect(errors, 'unexpected errors').toEqual([])
  for (const id of ids()) expect(byId.has(id), `acknowledged ${id} has a row`).toBe(true)

  // Dedup: one request per uri, and one uri per request.
  const inCallOrder = [...acknowledged].sort((a, b) => a.call - b.call)
  const ackedCalls = new Set(acknowledged.map((a) => a.call))
  const firstOf = new Map<string, (typeof acknowledged)[number]>()
  const uriOf = new Map<string, string>()
  for (const a of inCallOrder) {
    const first = firstOf.get(a.uri)
    if (first === undefined) {
      firstOf.set(a.uri, a)
      // An earlier call that was not acknowledged (stopped, storage failed) may have minted it.
      const earlierUnanswered = Array.from({ length: a.call }, (_, k) => k).some((k) => !ackedCalls.has(k))
      if (!earlierUnanswered) expect(a.deduplicated, `first ingest of ${a.uri} (${a.id})`).toBe(false)
    } else {
      expect(a.id, `dedup of ${a.uri}`).toBe(first.id)
      expect(a.deduplicated, `later ingest of ${a.uri} (${a.id})`).toBe(true)
    }
    const uri = uriOf.get(a.id)
    if (uri !== undefined) expect(a.uri, `one uri for ${a.id}`).toBe(uri)
    uriOf.set(a.id, a.uri)
    expect(byId.get(a.id)?.uri, `${a.id}'s row`).toBe(a.uri)
  }
  const rowOfUri = new Map<string, string>()
  for (const v of views) {
    expect(rowOfUri.get(v.uri), `two rows for ${v.uri}`).toBeUndefined()
    rowOfUri.set(v.uri, v.id)
  }
  // Numbering follows call order, across restarts and crashes (counters continue).
  const numbers = [...firstOf.values()].map((a) => numberOf(a.id))
  for (let k = 1; k < numbers.length; k++) {
    expect(numbers[k], `request numbers in call order: ${numbers.join(',')}`).toBeGreaterThan(numbers[k - 1] ?? 0)
  }

  for (const v of views) {
    const b = behaviourOf(v.uri)
    // Verdicts agree with the builds.
    if (v.state === 'recorded') {
      if (v.verdict === 'green') expect(b.outcome, `${v.id} green`).toBe('passed')
      if (v.verdict === 'red') expect(b.outcome, `${v.id} red`).toBe('failed')
      if (b.outcome === 'error') expect(v.verdict, `${v.id} of an erroring build`).toBe('indeterminate')
      if (v.verdict === 'green' || v.verdict === 'red') {
        const fact = await stored.facts.get('main', v.uri, '')
        expect(fact.degree === 0 ? 'green' : 'red', `${v.id} verdict agrees with its fact`).toBe(v.verdict)
      }
    }
    if (v.state === 'superseded') {
      expect(numberOf(v.supersededBy ?? ''), `${v.id} superseded by a newer one (${String(v.supersededBy)})`).toBeGreaterThan(v.n)
    }
    if (v.state === 'cancelled') {
      expect(await stored.facts.listByUri('main', v.uri), `cancelled ${v.id} wrote a fact`).toEqual([])
    }
    // Planning: incremental only since a green ancestor; "history rewritten" only when it is not one.
    if (v.strategy === 'incremental') {
      expect(v.baseline, `${v.id} baseline`).not.toBeNull()
      const baseline = v.baseline ?? ''
      expect(isAncestor(shaOf(baseline), shaOf(v.uri)), `${v.id} incremental since a non-ancestor`).toBe(true)
      expect((await stored.facts.get('main', baseline, '')).degree, `${v.id} baseline green`).toBe(0)
    }
    if (v.strategy === 'full' && v.fallback?.startsWith('history rewritten') === true) {
      const lastGreen = /last green (\S+) is not/.exec(v.fallback)?.[1]
      expect(lastGreen, `${v.id} fallback names the last green`).toBeDefined()
      expect(isAncestor(shaOf(lastGreen ?? ''), shaOf(v.uri)), `${v.id}: ${v.fallback}`).toBe(false)
    }
    // Deadlines.
    if (v.state === 'recorded' && v.reason === 'maxValidationMs passed') {
      expect(v.endedAt ?? 0, `${v.id} ended before its deadline`).toBeGreaterThanOrEqual(v.deadlineAt ?? Number.POSITIVE_INFINITY)
    }
    if (v.startedAt !== null && v.deadlineAt !== null) {
      expect(v.deadlineAt - v.startedAt, `${v.id} deadline`).toBeGreaterThanOrEqual(MIN_VALIDATION_MS)
    }
    // The API reads agree with the rows.
    expect(await w.run(w.sp.request(v.id)), `sp.request(${v.id})`).toEqual(v)
    expect(await w.run(q.waitFor(v.id)), `waitFor(${v.id})`).toEqual(v)
  }
  const newest = views.reduce<RequestView | undefined>((a, v) => (a === undefined || v.n > a.n ? v : a), undefined)
  if (newest !== undefined) expect(newest.state, `newest ${newest.id}`).not.toBe('superseded')
  const greens = views.filter((v) => v.state === 'recorded' && v.verdict === 'green')
  const newestGreen = greens.reduce<RequestView | undefined>((a, v) => (a === undefined || v.n > a.n ? v : a), undefined)
  expect(q.lastGreen()?.requestId, 'last green is the newest green').toBe(newestGreen?.id)

  for (const { id, result } of cancels) {
    const row = byId.get(id)
    expect(row, `cancel target ${id} has a row`).toBeDefined()
    if (result.cancelled) expect(row?.state, `cancel ${id} said cancelled`).toBe('cancelled')
    if (FINAL.has(result.state)) expect(result.state, `cancel ${id} state`).toBe(row?.state)
  }

  // History: each recorded request once, newest first, whatever the page size.
  const recorded = views
    .filter((v) => v.state === 'recorded')
    .sort((a, b) => b.n - a.n)
    .map((v) => v.id)
  for (const limit of [1, 2, 3, 7]) {
    const seen: string[] = []
    let cursor: string | undefined
    for (let pages = 0; pages <= recorded.length; pages++) {
      const page = await w.run(q.history({ limit, ...(cursor === undefined ? {} : { cursor }) }))
      expect(page.items.length, `history page of ${limit}`).toBeLessThanOrEqual(limit)
      seen.push(...page.items.map((v) => v.id))
      cursor = page.nextCursor
      if (cursor === undefined) break
    }
    expect(seen, `history by ${limit}`).toEqual(recorded)
  }

  // Stats: exact without restarts; across restarts and crashes never more than the rows (a crash
  // loses counts since their last write, an end landing during a stop is not counted).
  const count = (p: (v: RequestView) => boolean): number => views.filter(p).length
  const rowCounts: Record<(typeof COUNTS)[number], number> = {
    accepted: views.length,
    superseded: count((v) => v.state === 'superseded'),
    cancelled: count((v) => v.state === 'cancelled'),
    green: count((v) => v.state === 'recorded' && v.verdict === 'green'),
    red: count((v) => v.state === 'recorded' && v.verdict === 'red'),
    indeterminate: count((v) => v.state === 'recorded' && v.verdict === 'indeterminate'),
  }
  const stats = q.stats()
  if (starts.again === 0) expect(stats, 'stats agree with the rows').toMatchObject(rowCounts)
  else {
    for (const key of COUNTS) {
      expect(stats[key], `stats().${key} after restarts`).toBeLessThanOrEqual(rowCounts[key])
    }
  }

  if (hooks !== undefined) await checkHooks(hooks)

  await w.run(w.sp.stop())
  await w.storage.close()
  await stored.close()

  /**
   * Hooks, once their calls stop failing and every backoff has run out: every recorded
   * verdict was delivered as stored (and only those), every move of last green that was in
   * effect was delivered, each notification under one idempotency key with one payload,
   * every outbox entry delivered, and no call from a runtime already gone.
   */
  async function checkHooks(recorder: HookRecorder): Promise<void> {
    recorder.behaviour = { failRate: 0, hangRate: 0, delayMs: 0 }
    await reopen({ crash: false })
    await tick(30_000)
    await settle(5)
    const rows = (await stored.requests.listByQueue('main', { limit: 1_000 })).items.map(describeRequest)
    const rowOf = new Map(rows.map((v) => [v.id, v]))
    const problems: string[] = [...recorder.violations]
    const payloads = new Map<string, string>()
    for (const c of recorder.calls) {
      const { queue, requestId } = c.payload
      if (c.key !== `${queue}:${requestId}:${c.kind}`) problems.push(`key ${c.key} for ${requestId} ${c.kind}`)
      const text = JSON.stringify(c.payload)
      if ((payloads.get(c.key) ?? text) !== text) problems.push(`payload of ${c.key} changed: ${payloads.get(c.key) ?? ''} -> ${text}`)
      payloads.set(c.key, text)
    }
    for (const e of (await stored.outbox.list({ limit: 1_000 })).items)
      if (e.deliveredAt === null) problems.push(`outbox entry ${e.requestId} ${e.kind} undelivered after ${e.attempts} attempts`)
    const delivered = recorder.delivered()
    for (const v of rows.filter((r) => r.state === 'recorded')) {
      const told = delivered.filter((c) => c.kind === 'verdict' && c.payload.requestId === v.id).map((c) => c.payload as VerdictPayload)
      if (told.length === 0) problems.push(`recorded ${v.id} (${String(v.verdict)}) never delivered`)
      for (const p of told) {
        if (p.verdict !== v.verdict || p.degree !== v.degree)
          problems.push(`${v.id} told ${p.verdict}/${String(p.degree)}, stored ${String(v.verdict)}/${String(v.degree)}`)
        if (p.uri !== v.uri || p.at !== v.endedAt)
          problems.push(`${v.id} told ${p.uri} at ${p.at}, stored ${v.uri} at ${String(v.endedAt)}`)
      }
    }
    for (const c of recorder.calls) {
      const v = rowOf.get(c.payload.requestId)
      if (c.kind === 'verdict' && v?.state !== 'recorded') problems.push(`onVerdict for ${c.payload.requestId}, ${v?.state ?? 'missing'}`)
      if (c.kind !== 'lastGreen') continue
      const p = c.payload as LastGreenPayload
      if (v?.state !== 'recorded' || v.verdict !== 'green')
        problems.push(`onLastGreen for ${p.requestId}, ${v?.state ?? 'missing'} ${String(v?.verdict)}`)
      else if ((await stored.facts.get('main', v.uri, '')).degree !== 0)
        problems.push(`onLastGreen for ${p.requestId}, whose fact is not green`)
      if (p.previous !== null && numberOf(p.previous.requestId) >= numberOf(p.requestId))
        problems.push(`onLastGreen ${p.requestId} after ${p.previous.requestId}, not older`)
    }
    const movedTo = new Set(delivered.filter((c) => c.kind === 'lastGreen').map((c) => c.payload.requestId))
    for (const id of greensSeen) if (!movedTo.has(id)) problems.push(`last green ${id} (in effect) never delivered`)
    expect(problems, 'hooks').toEqual([])
  }
}

/** Runs per property: MODEL_RUNS=5000 for a longer hunt (a failure prints the seed and path that replay it). */
const RUNS = process.env.MODEL_RUNS === undefined ? undefined : Number(process.env.MODEL_RUNS)

describe('queue semantics against a model', () => {
  it('without faults: pushes, ingests, cancels, reconfigures, time and graceful restarts', async () => {
    await fc.assert(
      fc.asyncProperty(
        setup,
        fc.array(stepsOf({ crashes: false, faults: false }), { minLength: 8, maxLength: 50, size: 'max' }),
        (cfg, steps) => check({ crashes: false, faults: false }, cfg, steps),
      ),
      { numRuns: RUNS ?? 300 },
    )
  }, 1_200_000)

  it('with crashes, storage faults and outages too', async () => {
    await fc.assert(
      fc.asyncProperty(
        setup,
        fc.array(stepsOf({ crashes: true, faults: true }), { minLength: 8, maxLength: 50, size: 'max' }),
        (cfg, steps) => check({ crashes: true, faults: true }, cfg, steps),
      ),
      { numRuns: RUNS ?? 200 },
    )
  }, 1_200_000)
})
