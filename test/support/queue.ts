/**
 * Runs a queue machine on its own, as the runtime does: in an actor system that holds the
 * timer service the queues share, on the given clock.
 */
import { createActor, setup, type SimulatedClock } from 'xstate'
import { TIMER_SERVICE, timerService } from '../../src/actors/timer-service.js'
import type { QueueActor, QueueContext, QueueInput, queueMachine } from '../../src/machines/queue.js'

/**
 * Starts `queue` (the queue machine, with test actors provided) next to a timer service;
 * returns the queue's actor and the root's `stop`.
 */
export function startQueue(queue: typeof queueMachine, input: QueueInput, clock: SimulatedClock): { actor: QueueActor; stop: () => void } {
  const root = setup({ actors: { queue, timers: timerService(clock) } }).createMachine({
    invoke: [
      { src: 'timers', id: 'timers', systemId: TIMER_SERVICE },
      { src: 'queue', id: 'queue', input },
    ],
  })
  const actor = createActor(root, { clock }).start()
  const queueActor = actor.getSnapshot().children.queue
  if (queueActor === undefined) throw new Error('the queue actor did not start')
  return {
    actor: queueActor,
    stop: () => {
      actor.stop()
    },
  }
}

/** The requests of a queue that have `field` set: request id → its value (epoch ms). */
function timesOf(context: Pick<QueueContext, 'requests'>, field: 'leaseUntil' | 'deadlineAt'): Record<string, number> {
  const times: Record<string, number> = {}
  for (const [id, r] of Object.entries(context.requests)) {
    const at = r[field]
    if (at !== null) times[id] = at
  }
  return times
}

/** The slots a queue holds: request id → lease expiry (epoch ms). */
export const leases = (context: Pick<QueueContext, 'requests'>): Record<string, number> => timesOf(context, 'leaseUntil')

/** The deadlines a queue has yet to tell: request id → deadline (epoch ms). */
export const deadlines = (context: Pick<QueueContext, 'requests'>): Record<string, number> => timesOf(context, 'deadlineAt')
