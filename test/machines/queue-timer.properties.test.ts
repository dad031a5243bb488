/**
 * The queue's one timer, as a property: random arrivals, endings, cancels, lost requests
 * (their actor failed and their end could not be stored) and passing time
 * on a SimulatedClock, with stub requests that never end on their own and note what they
 * are told. Checks after every step that the queue holds a timer exactly while a lease is
 * held, that a request with a deadline holds a lease, that the queue's `dueAt` is the
 * earliest lease or deadline, that the gate holds; and that every started request hears
 * `DEADLINE` once, at its deadline, unless it ended first; and that a lost request keeps its
 * slot until its lease expires, and is told nothing more.
 */
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { SimulatedClock, setup } from 'xstate'
import { newQueueContext, queueMachine, type QueueConfig } from '../../src/machines/queue.js'
import { deadlines, leases, startQueue } from '../support/queue.js'

type Command =
  | { kind: 'accept' }
  | { kind: 'record'; pick: number; green: boolean }
  | { kind: 'end'; pick: number; state: 'superseded' | 'cancelled' }
  | { kind: 'cancel'; pick: number }
  /** The request's actor failed and its end could not be stored (`request.lost`). */
  | { kind: 'lose'; pick: number }
  | { kind: 'advance'; ms: number }

const command: fc.Arbitrary<Command> = fc.oneof(
  fc.constant<Command>({ kind: 'accept' }),
  fc.record({ kind: fc.constant('record' as const), pick: fc.nat(), green: fc.boolean() }),
  fc.record({ kind: fc.constant('end' as const), pick: fc.nat(), state: fc.constantFrom('superseded' as const, 'cancelled' as const) }),
  fc.record({ kind: fc.constant('cancel' as const), pick: fc.nat() }),
  fc.record({ kind: fc.constant('lose' as const), pick: fc.nat() }),
  fc.record({ kind: fc.constant('advance' as const), ms: fc.integer({ min: 0, max: 3_000 }) }),
)

interface Told {
  id: string
  type: string
  at: number | undefined
  now: number
  deadlineAt?: number
}

function run(config: QueueConfig, commands: Command[]): void {
  const clock = new SimulatedClock()
  clock.set(1_000_000)
  const told: Told[] = []
  // A request that never ends on its own and notes every event it gets.
  const types: { input: { id?: string }; context: { id: string } } = { input: {}, context: { id: '' } }
  const stub = setup({ types }).createMachine({
    context: ({ input }) => ({ id: input.id ?? '?' }),
    on: {
      '*': {
        actions: ({ context, event }) => {
          const { at, deadlineAt } = event as { at?: number; deadlineAt?: number }
          told.push({ id: context.id, type: event.type, at, now: clock.now(), ...(deadlineAt === undefined ? {} : { deadlineAt }) })
        },
      },
    },
  })
  const queue = queueMachine.provide({ actors: { request: stub as never } })
  const { actor, stop } = startQueue(queue, { context: newQueueContext('main', config) }, clock)
  /** When the test ended each request (as if it had reported to the queue). */
  const ended = new Map<string, number>()
  /** The cancels the test sent (the queue forwards each as a CANCEL). */
  const cancels: { id: string; at: number }[] = []
  /** Requests lost while holding a slot, with their lease: they keep the slot until then. */
  const lost = new Map<string, number>()
  let n = 0

  /**
   * Lets `ms` pass. SimulatedClock fires what fell due, but not a timer armed meanwhile with
   * a delay of 0 (the queue re-arms for a due time already passed): keep flushing until the
   * queue settles, as the real clock would on its next turns.
   */
  const advance = (ms: number): void => {
    clock.increment(ms)
    for (let flushes = 0, before = undefined as unknown; flushes < 500; flushes++) {
      const snapshot = actor.getSnapshot()
      if (snapshot === before) break
      before = snapshot
      clock.increment(0)
    }
  }

  const check = (): void => {
    const { context, value } = actor.getSnapshot()
    const held = Object.keys(leases(context))
    for (const id of Object.keys(deadlines(context))) expect(held).toContain(id)
    expect(held.length).toBeLessThanOrEqual(config.maxConcurrent)
    // The cached earliest due time is the earliest lease or deadline.
    const due = [...Object.values(leases(context)), ...Object.values(deadlines(context))]
    expect(context.dueAt).toBe(due.length === 0 ? null : Math.min(...due))
    const timers = Object.keys(actor.system.getSnapshot()._scheduledEvents)
    expect(timers).toHaveLength(held.length > 0 ? 1 : 0)
    expect(value).toEqual({ active: held.length > 0 ? 'timed' : 'idle' })
    for (const [id, lease] of lost) {
      if (clock.now() < lease) expect(leases(context)[id], `${id} lost, leased until ${lease}`).toBe(lease)
      else expect(context.requests[id], `${id} lost, lease expired at ${lease}`).toBeUndefined()
    }
  }

  const pick = (index: number, state?: string): string | undefined => {
    const ids = Object.entries(actor.getSnapshot().context.requests)
      // A lost request has no actor any more: nothing ends, cancels or loses it again.
      .filter(([, r]) => (state === undefined ? r.state !== 'lost' : r.state === state))
      .map(([id]) => id)
    return ids.length === 0 ? undefined : ids[index % ids.length]
  }

  check()
  for (const step of commands) {
    const at = clock.now()
    if (step.kind === 'accept') {
      n++
      actor.send({ type: 'request.accepted', id: `request/main/${n}`, n, uri: `fake://${n}`, version: 0, createdAt: at, at })
    } else if (step.kind === 'record') {
      const id = pick(step.pick, 'processing')
      if (id !== undefined) {
        ended.set(id, at)
        actor.send({
          type: 'request.recorded',
          id,
          n: Number(id.split('/')[2]),
          uri: `fake://x`,
          verdict: step.green ? 'green' : 'red',
          at,
        })
      }
    } else if (step.kind === 'end') {
      const id = pick(step.pick)
      if (id !== undefined) {
        ended.set(id, at)
        actor.send({ type: 'request.ended', id, n: Number(id.split('/')[2]), state: step.state, at })
      }
    } else if (step.kind === 'lose') {
      const id = pick(step.pick)
      if (id !== undefined) {
        ended.set(id, at)
        const lease = actor.getSnapshot().context.requests[id]?.leaseUntil
        if (lease !== null && lease !== undefined) lost.set(id, lease)
        actor.send({ type: 'request.lost', id, at })
      }
    } else if (step.kind === 'cancel') {
      const id = pick(step.pick)
      if (id !== undefined) {
        cancels.push({ id, at })
        actor.send({ type: 'cancel', id, at })
      }
    } else {
      advance(step.ms)
    }
    check()
  }
  // Let every deadline and lease pass (expiries free slots, which start waiting requests).
  for (let rounds = 0; rounds <= n && Object.keys(leases(actor.getSnapshot().context)).length > 0; rounds++) {
    advance(config.maxValidationMs + config.leaseGraceMs + 1)
    check()
  }
  expect(leases(actor.getSnapshot().context)).toEqual({})

  const started = told.filter((t) => t.type === 'START')
  for (const start of started) {
    const deadlineAt = start.deadlineAt ?? Number.NaN
    // Started when its slot was given (the time a freed lease expired, or of the event).
    expect(start.at).toBeLessThanOrEqual(start.now)
    expect(deadlineAt).toBe((start.at ?? Number.NaN) + config.maxValidationMs)
    const endedAt = ended.get(start.id) ?? Number.POSITIVE_INFINITY
    // Told DEADLINE once, for its deadline, unless it ended before. (SimulatedClock moves
    // `now` to the end of an increment before firing what fell due in it, so `now` can be
    // past the due time; the event carries the due time.)
    const deadlines = told.filter((t) => t.id === start.id && t.type === 'DEADLINE')
    if (endedAt < deadlineAt) expect(deadlines).toEqual([])
    else {
      expect(deadlines).toHaveLength(1)
      expect(deadlines[0]?.at).toBe(deadlineAt)
      expect(deadlines[0]?.now).toBeGreaterThanOrEqual(deadlineAt)
    }
    // Its lease expires at deadline + grace with one CANCEL, unless it ended before (the
    // cancels the test sent at that same time aside).
    const lease = deadlineAt + config.leaseGraceMs
    const atLease = told.filter((t) => t.id === start.id && t.type === 'CANCEL' && t.at === lease).length
    const sentAtLease = cancels.filter((c) => c.id === start.id && c.at === lease).length
    expect(atLease - sentAtLease).toBe(endedAt < lease ? 0 : 1)
  }
  // Nobody hears DEADLINE without having started.
  for (const t of told.filter((x) => x.type === 'DEADLINE')) expect(started.map((s) => s.id)).toContain(t.id)
  stop()
}

describe('queue timer (property)', () => {
  it('one timer while a lease is held, none when idle; each started request hears DEADLINE once, at its deadline', () => {
    fc.assert(
      fc.property(
        fc.record({
          maxConcurrent: fc.integer({ min: 1, max: 3 }),
          maxValidationMs: fc.integer({ min: 500, max: 2_000 }),
          leaseGraceMs: fc.integer({ min: 0, max: 1_000 }),
        }),
        fc.array(command, { maxLength: 60 }),
        (limits, commands) => {
          run({ ref: 'main', maxAttempts: 3, ...limits }, commands)
        },
      ),
      { numRuns: 200 },
    )
  })
})
