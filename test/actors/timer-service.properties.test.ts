/**
 * The timer service the queues share, on a SimulatedClock: random due times set, replaced
 * and forgotten by several queues while time passes. Checks that each queue hears
 * `timer.due` once for the last time it asked for, exactly when that time comes (never for
 * a time it replaced or forgot), and that the actor system holds one scheduled event while
 * anything is due and none otherwise.
 */
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { SimulatedClock, createActor, fromCallback, type AnyActorRef } from 'xstate'
import { TIMER_SERVICE, timerService, type TimerDueEvent, type TimerServiceEvent } from '../../src/actors/timer-service.js'

const QUEUES = 4

type Command = { kind: 'set'; queue: number; inMs: number } | { kind: 'clear'; queue: number } | { kind: 'advance'; ms: number }

const command: fc.Arbitrary<Command> = fc.oneof(
  fc.record({ kind: fc.constant('set' as const), queue: fc.nat(QUEUES - 1), inMs: fc.integer({ min: 0, max: 5_000 }) }),
  fc.record({ kind: fc.constant('clear' as const), queue: fc.nat(QUEUES - 1) }),
  fc.record({ kind: fc.constant('advance' as const), ms: fc.integer({ min: 0, max: 3_000 }) }),
)

/** What a stand-in queue heard: the due time, and the clock when it heard it. */
interface Heard {
  queue: number
  at: number
  now: number
}

/** A timer service (a root actor on `clock`) and `QUEUES` stand-in queues (actors noting what they hear). */
function system(clock: SimulatedClock) {
  const heard: Heard[] = []
  const queue = fromCallback<TimerDueEvent, { index: number }>(({ receive, input }) => {
    receive((event) => heard.push({ queue: input.index, at: event.at, now: clock.now() }))
  })
  const timers = createActor(timerService(clock), { clock, systemId: TIMER_SERVICE }).start()
  const queues = Array.from({ length: QUEUES }, (_, index) => createActor(queue, { input: { index } }).start())
  const scheduled = (): number => Object.keys(timers.system.getSnapshot()._scheduledEvents).length
  const tell = (index: number, at: number | null): void => {
    timers.send({ type: 'timer.set', at, queue: queues[index] as AnyActorRef } satisfies TimerServiceEvent)
  }
  return { timers, queues, heard, scheduled, tell }
}

/**
 * Lets `ms` pass, then flushes: SimulatedClock fires a timer armed while it fires others
 * (here, a re-arm for a time already reached) only at its next increment.
 */
function advance(clock: SimulatedClock, ms: number): void {
  clock.increment(ms)
  for (let flushes = 0; flushes < 3; flushes++) clock.increment(0)
}

describe('timer service', () => {
  it('tells each queue once, at the last time it asked for, and holds one timer while anything is due', () => {
    fc.assert(
      fc.property(fc.array(command, { maxLength: 60 }), (commands) => {
        const clock = new SimulatedClock()
        clock.set(1_000_000)
        const { timers, heard, scheduled, tell } = system(clock)
        const wanted = new Map<number, number>()
        let seen = 0
        for (const step of commands) {
          if (step.kind === 'set') {
            wanted.set(step.queue, clock.now() + step.inMs)
            tell(step.queue, clock.now() + step.inMs)
          } else if (step.kind === 'clear') {
            wanted.delete(step.queue)
            tell(step.queue, null)
          } else {
            advance(clock, step.ms)
            const now = clock.now()
            const expected = [...wanted].filter(([, at]) => at <= now).map(([queue, at]) => ({ queue, at }))
            const got = heard.slice(seen).map(({ queue, at }) => ({ queue, at }))
            expect(got.sort((a, b) => a.queue - b.queue)).toEqual(expected.sort((a, b) => a.queue - b.queue))
            // Each heard it when its time came: not before, and not later than the step that reached it.
            for (const h of heard.slice(seen)) expect(h.now).toBeGreaterThanOrEqual(h.at)
            for (const { queue } of expected) wanted.delete(queue)
            seen = heard.length
          }
          expect(heard.length).toBe(seen) // nothing heard between steps that let no time pass
          expect(scheduled()).toBe(wanted.size > 0 ? 1 : 0)
        }
        timers.stop()
      }),
    )
  })

  it('fires at the time asked for exactly, and re-arms earlier for an earlier time', () => {
    const clock = new SimulatedClock()
    clock.set(0)
    const { heard, scheduled, tell } = system(clock)
    tell(0, 5_000)
    tell(1, 2_000)
    expect(scheduled()).toBe(1)
    clock.increment(1_999)
    expect(heard).toEqual([])
    clock.increment(1)
    expect(heard).toEqual([{ queue: 1, at: 2_000, now: 2_000 }])
    clock.increment(2_999)
    expect(heard).toHaveLength(1)
    clock.increment(1)
    expect(heard).toEqual([
      { queue: 1, at: 2_000, now: 2_000 },
      { queue: 0, at: 5_000, now: 5_000 },
    ])
    expect(scheduled()).toBe(0)
  })

  it('forgets a queue that stopped without telling it anything', () => {
    const clock = new SimulatedClock()
    clock.set(0)
    const { heard, scheduled, tell, queues } = system(clock)
    tell(0, 1_000)
    tell(1, 1_000)
    queues[0]?.stop()
    clock.increment(1_000)
    expect(heard).toEqual([{ queue: 1, at: 1_000, now: 1_000 }])
    expect(scheduled()).toBe(0)
  })
})
