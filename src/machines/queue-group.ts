/**
 * The queue group machine: the parent of up to {@link QUEUES_PER_GROUP} queue actors, itself
 * a child of the runtime's root actor (`stovepipe > queues:0 > queue:main > 17`).
 *
 * Why a level of its own: XState copies a parent's record of children on every spawn and on
 * every stop of a child (`{ ...children }`), so a root holding n queue actors directly made
 * opening, restarting and stopping n queues grow with n². Grouped, each spawn or stop copies
 * at most a group's record (up to 32 queues) or the root's (one entry per group and the
 * runtime's services).
 *
 * A group does nothing else. A queue's error (XState relays it to the queue's parent) goes on
 * to the root unchanged (`xstate.error.actor.queue:<name>`), where the runtime fails that
 * queue alone (left unhandled, XState would fail the group with it, and the root would stop
 * the runtime). Queue actors keep their system ids (`queue:<name>`).
 *
 * @module
 */
import { enqueueActions, sendParent, setup } from 'xstate'
import { queueMachine, type QueueContext } from './queue.js'

/** Queue actors per group: the largest record of children a spawn or a stop copies. */
export const QUEUES_PER_GROUP = 32

/** Id and system id of group `index` (the groups of a runtime are numbered from 0). */
export const queueGroupId = (index: number): string => `queues:${index}`

/** Events a group takes. */
export type QueueGroupEvent =
  /** Spawn the queue actor `queue:<name>` from `context`. */
  | { type: 'queue.open'; name: string; context: QueueContext }
  /** One of its queue actors failed (XState relays a child's error to its parent). */
  | { type: `xstate.error.actor.${string}`; error: unknown }

/**
 * The group machine. `queue` is the queue machine as the runtime provides it
 * (`queueGroupMachine.provide({ actors: { queue } })`).
 */
export const queueGroupMachine = setup({
  types: { events: {} as QueueGroupEvent },
  actors: { queue: queueMachine },
}).createMachine({
  id: 'queues',
  on: {
    'queue.open': {
      actions: enqueueActions(({ enqueue, event }) => {
        const id = `queue:${event.name}`
        enqueue.spawnChild('queue', { id, systemId: id, input: { context: event.context } })
      }),
    },
    'xstate.error.actor.*': { actions: sendParent(({ event }) => event) },
  },
})
