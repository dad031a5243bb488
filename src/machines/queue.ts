/**
 * The queue machine: single writer for its queue. It owns the requests in flight (spawned
 * as its children, so their errors escalate to it), coalescing, the concurrency gate and
 * the last green pointer.
 *
 * - `request.accepted`: spawn the request; of the requests that have not started, keep only
 *   the newest by number (coalescing: usually the one just accepted, but a request older
 *   than one already waiting is superseded at once); start what the gate allows.
 * - The gate: at most `maxConcurrent` requests hold a slot. A slot is a lease with a
 *   deadline (the request's deadline plus `leaseGraceMs`), so a stuck or lost request
 *   cannot hold it forever: an expired lease is released and its request cancelled.
 * - Time: the queue tells the timer service (system id `timers`, one per actor system) its
 *   earliest due time on every change (`timer.set`, null when idle) and hears `timer.due`
 *   when it comes; it then tells each request in processing whose deadline passed
 *   (`DEADLINE`) and expires leases. Neither requests nor queues keep XState timers of
 *   their own: XState's scheduler scans every timer of the system whenever an actor stops,
 *   so a timer per request, or per busy queue, made each request's end cost a scan of all.
 * - `request.recorded`: release the slot, and move last green forward if the request is
 *   green and newer than the current one (never backwards).
 *
 * Pure: time comes in events (`at`); the runtime hears of every change
 * (the `changed` action) and persists the snapshot (context, no children) with a CAS write
 * whenever its durable part (config, last green) changed.
 *
 * @module
 */
import { assign, enqueueActions, sendTo, setup, type ActorRefFrom, type AnyActorRef, type SnapshotFrom } from 'xstate'
import { TIMER_SERVICE, type TimerDueEvent, type TimerServiceEvent } from '../actors/timer-service.js'
import { requestMachine, type RequestContext, type RequestReport } from './request.js'

/** A queue's configuration. */
export interface QueueConfig {
  /** Repository location (backend-specific; the fake ignores it). */
  repo?: string
  /** The ref whose heads are validated, e.g. `refs/heads/main`. */
  ref: string
  /** Requests validated at once (default 1). */
  maxConcurrent: number
  /** A validation taking longer is recorded indeterminate and its build aborted (default 1 hour). */
  maxValidationMs: number
  /** Grace after a request's deadline before its slot lease expires (default 60 s). */
  leaseGraceMs: number
  /** Attempts per step for transient failures (default 3). */
  maxAttempts: number
  /** Projects to validate separately; the fact's degree is the fraction that failed. */
  projects?: string[]
}

/** The last green commit of a queue. */
export interface QueueLastGreen {
  uri: string
  requestId: string
  n: number
  at: number
}

/** A request in flight, as the queue tracks it. */
export interface InFlight {
  n: number
  uri: string
  state: 'accepted' | 'superseding' | 'processing'
}

/** The queue machine's context: plain JSON, persisted as the queue's snapshot. */
export interface QueueContext {
  name: string
  config: QueueConfig
  lastGreen: QueueLastGreen | null
  requests: Readonly<Record<string, InFlight>>
  /** Slots held: request id → lease expiry (epoch ms). */
  leases: Readonly<Record<string, number>>
  /** Requests in processing whose deadline has not passed yet: request id → deadline (epoch ms). */
  deadlines: Readonly<Record<string, number>>
  /** When the queue's timer last fired (epoch ms): the time of a slot freed by expiry. */
  expiredAt: number
  /** Counts since the queue was created. */
  stats: Readonly<{
    accepted: number
    superseded: number
    cancelled: number
    green: number
    red: number
    indeterminate: number
    leaseExpiries: number
  }>
}

/**
 * The empty record new queues start with, shared: the machine never mutates its context's
 * records (every action builds new ones), and an open queue costs memory for as long as it
 * is open (see the heap figures in the README).
 */
const EMPTY: Readonly<Record<string, never>> = Object.freeze({})
/** The counts new queues start with, shared (and frozen) like {@link EMPTY}. */
const NO_COUNTS: QueueContext['stats'] = Object.freeze({
  accepted: 0,
  superseded: 0,
  cancelled: 0,
  green: 0,
  red: 0,
  indeterminate: 0,
  leaseExpiries: 0,
})

/** The context of a queue with nothing in flight, no last green and zero counts. */
export function newQueueContext(name: string, config: QueueConfig): QueueContext {
  return {
    name,
    config,
    lastGreen: null,
    requests: EMPTY,
    leases: EMPTY,
    deadlines: EMPTY,
    expiredAt: 0,
    stats: NO_COUNTS,
  }
}

/** Input: the queue's context (new, or restored from storage). */
export interface QueueInput {
  context: QueueContext
}

/** Events a queue accepts (every one carries the time it happened). */
export type QueueEvent =
  | { type: 'request.accepted'; id: string; n: number; uri: string; version: number; createdAt: number; at: number }
  | RequestReport
  | { type: 'cancel'; id: string; at: number }
  | { type: 'config'; config: QueueConfig; at: number }
  | { type: 'request.salvaged'; id: string; n: number; uri: string; at: number }
  /** A failed request that could not be recorded: it leaves the queue uncounted (its row resumes at the next start). */
  | { type: 'request.lost'; id: string; at: number }
  /** After a restart: the requests still in flight, as persisted (their leases are in the context). */
  | { type: 'resume'; requests: RequestContext[]; at: number }
  /** From the timer service: the time this queue asked for (`at`) has come. */
  | TimerDueEvent

const requestIdOf = (name: string, n: number): string => `request/${name}/${n}`

/**
 * `record` without `key`, as a new object. (Rest destructuring with a computed key,
 * `const { [key]: _, ...rest } = record`, takes V8's slow path: about 3 times slower on a
 * queue with 100 requests in flight, where it ran three times per finished request.)
 */
function without<T>(record: Readonly<Record<string, T>>, key: string): Record<string, T> {
  const copy: Record<string, T> = {}
  for (const k of Object.keys(record)) if (k !== key) copy[k] = record[k] as T
  return copy
}

/** The earliest time something is due (a deadline or a lease expiry), or undefined. */
export function nextDueAt(context: Pick<QueueContext, 'leases' | 'deadlines'>): number | undefined {
  let due: number | undefined
  for (const at of Object.values(context.leases)) if (due === undefined || at < due) due = at
  for (const at of Object.values(context.deadlines)) if (due === undefined || at < due) due = at
  return due
}

/** The queue machine. */
export const queueMachine = setup({
  types: {
    context: {} as QueueContext,
    events: {} as QueueEvent,
    input: {} as QueueInput,
  },
  actors: { request: requestMachine },
  guards: {
    /** Something is due later: a request deadline or a lease. */
    timed: ({ context }) => nextDueAt(context) !== undefined,
    /** The timer service's answer is for the earliest due time the queue wants now (not a stale one for a time since replaced). */
    dueNow: ({ context, event }) => event.type === 'timer.due' && event.at === nextDueAt(context),
  },
  actions: {
    /** A request child failed for good: the runtime logs it and records it indeterminate. */
    childFailed: () => undefined,
    /** The queue changed (entry to `routing`, inside the transition): the runtime persists what is durable, once it is over. */
    changed: () => undefined,
    /** Tells the timer service the earliest due time (or that nothing is due). */
    armTimer: sendTo(
      ({ system }) => system.get(TIMER_SERVICE) as AnyActorRef,
      ({ context, self }): TimerServiceEvent => ({ type: 'timer.set', at: nextDueAt(context) ?? null, queue: self }),
    ),
    /**
     * Re-spawns the requests restored from storage, each at its persisted step; of those
     * still waiting to start, only the newest is kept (coalescing).
     */
    resume: enqueueActions(({ enqueue, context, event }) => {
      if (event.type !== 'resume') return
      const newest = Math.max(0, ...event.requests.filter((r) => r.step === 'accepted').map((r) => r.n))
      const requests = { ...context.requests }
      const deadlines = { ...context.deadlines }
      let superseded = 0
      for (const resumed of event.requests) {
        enqueue.spawnChild('request', { id: resumed.id, input: { kind: 'resume', context: resumed } })
        const state = resumed.step === 'accepted' ? (resumed.n < newest ? 'superseding' : 'accepted') : 'processing'
        requests[resumed.id] = { n: resumed.n, uri: resumed.uri, state }
        // Deadlines are stored as absolute times: one that passed while the runtime was down fires at once.
        if (state === 'processing' && resumed.deadlineAt !== null) deadlines[resumed.id] = resumed.deadlineAt
        if (state === 'superseding') {
          enqueue.sendTo(resumed.id, { type: 'SUPERSEDE', by: requestIdOf(context.name, newest), at: event.at })
          superseded++
        }
      }
      enqueue.assign({ requests, deadlines, stats: { ...context.stats, superseded: context.stats.superseded + superseded } })
    }),
    accept: enqueueActions(({ enqueue, context, event }) => {
      if (event.type !== 'request.accepted' || context.requests[event.id] !== undefined) return
      const { id, n, uri, version, createdAt, at } = event
      enqueue.spawnChild('request', {
        id,
        input: { kind: 'new', id, queue: context.name, uri, n, version, createdAt, maxAttempts: context.config.maxAttempts },
      })
      const requests: Record<string, InFlight> = { ...context.requests, [id]: { n, uri, state: 'accepted' } }
      // Coalescing: of the requests that have not started, only the newest (highest number)
      // stays; normally that is this one, but a newer one accepted first supersedes it.
      let [newest, newestN] = [id, n]
      for (const [other, inFlight] of Object.entries(requests))
        if (inFlight.state === 'accepted' && inFlight.n > newestN) [newest, newestN] = [other, inFlight.n]
      let superseded = 0
      for (const [other, inFlight] of Object.entries(requests)) {
        if (other !== newest && inFlight.state === 'accepted' && inFlight.n < newestN) {
          requests[other] = { ...inFlight, state: 'superseding' }
          enqueue.sendTo(other, { type: 'SUPERSEDE', by: newest, at })
          superseded++
        }
      }
      enqueue.assign({
        requests,
        stats: { ...context.stats, accepted: context.stats.accepted + 1, superseded: context.stats.superseded + superseded },
      })
    }),
    /** Starts waiting requests, oldest first, while the gate has free slots. */
    admit: enqueueActions(({ enqueue, context, event }) => {
      const at = 'at' in event ? event.at : context.expiredAt
      const free = context.config.maxConcurrent - Object.keys(context.leases).length
      if (free <= 0) return
      const waiting = Object.entries(context.requests)
        .filter(([, r]) => r.state === 'accepted')
        .sort((a, b) => a[1].n - b[1].n)
        .slice(0, free)
      if (waiting.length === 0) return
      const requests = { ...context.requests }
      const leases = { ...context.leases }
      const deadlines = { ...context.deadlines }
      for (const [id, inFlight] of waiting) {
        const deadlineAt = at + context.config.maxValidationMs
        requests[id] = { ...inFlight, state: 'processing' }
        leases[id] = deadlineAt + context.config.leaseGraceMs
        deadlines[id] = deadlineAt
        const lastGreen = context.lastGreen === null ? null : { uri: context.lastGreen.uri, requestId: context.lastGreen.requestId }
        enqueue.sendTo(id, { type: 'START', at, deadlineAt, lastGreen, projects: context.config.projects ?? null })
      }
      enqueue.assign({ requests, leases, deadlines })
    }),
    finish: enqueueActions(({ enqueue, context, event }) => {
      if (
        event.type !== 'request.recorded' &&
        event.type !== 'request.ended' &&
        event.type !== 'request.salvaged' &&
        event.type !== 'request.lost'
      )
        return
      const requests = without(context.requests, event.id)
      const leases = without(context.leases, event.id)
      const deadlines = without(context.deadlines, event.id)
      const stats = { ...context.stats }
      let lastGreen = context.lastGreen
      if (event.type === 'request.recorded') {
        stats[event.verdict]++
        // Last green only moves forward: a slow older green never regresses it.
        if (event.verdict === 'green' && (lastGreen === null || event.n > lastGreen.n)) {
          lastGreen = { uri: event.uri, requestId: event.id, n: event.n, at: event.at }
        }
      } else if (event.type === 'request.ended' && event.state === 'cancelled') {
        stats.cancelled++
      } else if (event.type === 'request.salvaged') {
        stats.indeterminate++
      }
      enqueue.stopChild(event.id)
      enqueue.assign({ requests, leases, deadlines, stats, lastGreen })
    }),
    cancel: enqueueActions(({ enqueue, context, event }) => {
      if (event.type !== 'cancel' || context.requests[event.id] === undefined) return
      enqueue.sendTo(event.id, { type: 'CANCEL', at: event.at })
    }),
    /**
     * The timer fired for the earliest due time: tells requests whose deadline passed
     * (`DEADLINE`), releases leases that expired and cancels their requests.
     */
    expire: enqueueActions(({ enqueue, context }) => {
      const due = nextDueAt(context)
      if (due === undefined) return
      const deadlines: Record<string, number> = {}
      for (const [id, at] of Object.entries(context.deadlines)) {
        if (at > due) deadlines[id] = at
        else if (context.requests[id] !== undefined) enqueue.sendTo(id, { type: 'DEADLINE', at })
      }
      const leases: Record<string, number> = {}
      let expired = 0
      for (const [id, until] of Object.entries(context.leases)) {
        if (until > due) {
          leases[id] = until
          continue
        }
        expired++
        if (context.requests[id] !== undefined) enqueue.sendTo(id, { type: 'CANCEL', at: until })
      }
      enqueue.assign({
        leases,
        deadlines,
        expiredAt: due,
        stats: expired === 0 ? context.stats : { ...context.stats, leaseExpiries: context.stats.leaseExpiries + expired },
      })
    }),
    configure: assign(({ event }) => (event.type === 'config' ? { config: event.config } : {})),
  },
}).createMachine({
  id: 'queue',
  context: ({ input }) => input.context,
  initial: 'active',
  states: {
    active: {
      initial: 'routing',
      // Every change of what is in flight goes through `routing`, which (re-)arms the timer.
      on: {
        'request.accepted': { target: '.routing', actions: ['accept', 'admit'] },
        'request.recorded': { target: '.routing', actions: ['finish', 'admit'] },
        'request.ended': { target: '.routing', actions: ['finish', 'admit'] },
        'request.salvaged': { target: '.routing', actions: ['finish', 'admit'] },
        'request.lost': { target: '.routing', actions: ['finish', 'admit'] },
        resume: { target: '.routing', actions: ['resume', 'admit'] },
        cancel: { actions: 'cancel' },
        config: { target: '.routing', actions: ['configure', 'admit'] },
        'xstate.error.actor.*': { actions: 'childFailed' },
      },
      states: {
        routing: { entry: ['changed', 'armTimer'], always: [{ guard: 'timed', target: 'timed' }, { target: 'idle' }] },
        /** Nothing due: the timer service holds nothing for this queue. */
        idle: {},
        /** A deadline or a lease is due: the timer service tells the queue when the earliest comes. */
        timed: { on: { 'timer.due': { guard: 'dueNow', target: 'routing', actions: ['expire', 'admit'] } } },
      },
    },
  },
})

/** The queue machine's actor type. */
export type QueueActor = ActorRefFrom<typeof queueMachine>
/** A queue machine snapshot. */
export type QueueSnapshot = SnapshotFrom<typeof queueMachine>

export { requestIdOf }
