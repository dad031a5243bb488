/**
 * Whether an actor still runs: the services answer only actors that do (XState drops an
 * event sent to a stopped actor, and warns of it in development builds).
 *
 * @module
 */
import type { AnyActorRef } from 'xstate'

/** Whether `actor` is still running (its snapshot's status is `active`). */
export function isRunning(actor: AnyActorRef): boolean {
  const snapshot: unknown = actor.getSnapshot()
  return typeof snapshot === 'object' && snapshot !== null && 'status' in snapshot && snapshot.status === 'active'
}
