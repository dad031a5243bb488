/**
 * The timer service: one timer for every queue of an actor system.
 *
 * A queue with a deadline or a lease due tells the service when (`timer.set`, an absolute
 * time, or `at: null` for nothing due); the service keeps the earliest time of each queue
 * and schedules a single delayed event to itself, through XState's scheduler (so the
 * system's clock drives it, `SimulatedClock` included), for the earliest of all. When it
 * fires, every queue whose time has come hears `timer.due` with the time it asked for and
 * the time now.
 *
 * Why not a delayed transition per queue: XState's scheduler scans every scheduled event of
 * the system whenever any actor stops, so with a timer per busy queue, each request that
 * ends costs a scan of every queue's timer (6 to 13 % of the runtime's time at 1000 queues).
 *
 * Pure: no I/O; time comes from the clock given and the system's scheduler.
 *
 * @module
 */
import { fromCallback, type AnyActorRef } from 'xstate'
import { MAX_TIMER_MS } from './clock.js'
import { isRunning } from './running.js'

/** System id of the timer service. */
export const TIMER_SERVICE = 'timers'

/** Messages the timer service takes. */
export type TimerServiceEvent =
  /** `queue`'s earliest due time (epoch ms), or null: nothing due, forget it. */
  | { type: 'timer.set'; at: number | null; queue: AnyActorRef }
  /** The service's own delayed event (internal). */
  | { type: 'timer.tick' }

/** What the timer service sends a queue whose time has come. */
export interface TimerDueEvent {
  type: 'timer.due'
  /** The time the queue asked for. */
  at: number
  /**
   * The time now (at or after `at`): after a restart, or a stall, a due time can lie well in
   * the past, and what the queue starts then must be timed from now.
   */
  now: number
}

/** The id of the service's one delayed event. */
const TICK = 'stovepipe.timers.tick'

/**
 * The timer service's logic, to be invoked once per actor system with system id
 * {@link TIMER_SERVICE}. `clock.now()` must be the clock the actor system runs on.
 */
export function timerService(clock: { now(): number }) {
  return fromCallback<TimerServiceEvent>(({ receive, self, system }) => {
    const due = new Map<AnyActorRef, number>()
    /** When the delayed event is set to fire, if it is. */
    let armed: number | undefined

    const arm = (at: number | undefined): void => {
      if (armed !== undefined) system.scheduler.cancel(self, TICK)
      armed = at
      if (at !== undefined) {
        // A later time than the longest delay is re-armed on waking.
        const delay = Math.min(MAX_TIMER_MS, Math.max(0, at - clock.now()))
        system.scheduler.schedule(self, self, { type: 'timer.tick' }, delay, TICK)
      }
    }

    const tick = (): void => {
      armed = undefined
      const now = Math.floor(clock.now())
      let next: number | undefined
      for (const [queue, at] of due) {
        if (!isRunning(queue)) {
          due.delete(queue)
        } else if (at <= now) {
          due.delete(queue)
          queue.send({ type: 'timer.due', at, now } satisfies TimerDueEvent)
        } else if (next === undefined || at < next) {
          next = at
        }
      }
      // Queues told just now answer later with their next time (a new `timer.set`, queued
      // behind this tick), which re-arms if it is earlier.
      arm(next)
    }

    receive((event) => {
      if (event.type === 'timer.tick') {
        tick()
        return
      }
      const { queue, at } = event
      if (at === null) {
        due.delete(queue)
        if (due.size === 0) arm(undefined) // an idle system holds no timer
        return
      }
      due.set(queue, at)
      // A later time than the one armed is found when the timer fires (and re-armed then).
      if (armed === undefined || at < armed) arm(at)
    })
  })
}
