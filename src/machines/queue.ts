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
 * - `request.lost` (a request failed and its end could not be stored): its actor is gone,
 *   but it keeps its slot until the lease expires or its salvage, retried by the runtime,
 *   succeeds (else its row resumes at the next start).
 *
 * Pure: time comes in events (`at`); the runtime hears of every change
 * (the `changed` action) and persists the snapshot (context, no children) with a CAS write
 * whenever its durable part (config, last green) changed, and every 100 requests ended (the
 * counts, and how far the requests have all ended: see the runtime's queue host).
 *
 * @module
 */
import { assign, enqueueActions, sendTo, setup, type ActorRefFrom, type AnyActorRef, type SnapshotFrom } from 'xstate'
import { TIMER_SERVICE, type TimerDueEvent, type TimerServiceEvent } from '../actors/timer-service.js'
import { pastDeadlineAt, requestMachine, type RequestContext, type RequestReport } from './request.js'

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
  /**
   * `lost`: its actor failed and its end could not be stored (the runtime retries; else it
   * resumes from its row at the next start). It keeps its slot until the lease expires or it
   * ends: its row still says processing, so a restart would resume it next to whatever took
   * the slot.
   */
  state: 'accepted' | 'superseding' | 'processing' | 'lost'
  /** While it holds a slot: when the slot's lease expires (epoch ms); otherwise null. */
  leaseUntil: number | null
  /**
   * In processing until its deadline has been told (`DEADLINE`): the deadline (epoch ms);
   * otherwise null (also for a lost request, and for one resumed past its deadline, which
   * concludes as it resumes).
   */
  deadlineAt: number | null
}

/** The queue machine's context: plain JSON, persisted as the queue's snapshot. */
export interface QueueContext {
  name: string
  config: QueueConfig
  lastGreen: QueueLastGreen | null
  /**
   * The requests in flight by id, each with its slot lease and deadline: one record, so a
   * change of what is in flight copies one object (the context is never mutated).
   */
  requests: Readonly<Record<string, InFlight>>
  /** The earliest lease expiry or deadline in `requests` (epoch ms), null when none: when the queue's timer is due. */
  dueAt: number | null
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
const EMPTY: Readonly<Record<string, never>> = Object.freeze(Object.create(null) as Record<string, never>)
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
    dueAt: null,
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
  /**
   * A failed request that could not be recorded: uncounted, its actor gone, it keeps its slot
   * (if it held one) as `lost` until the lease expires, or until the runtime's salvage,
   * retried, succeeds (`request.salvaged` or its stored end); else it resumes at the next start.
   */
  | { type: 'request.lost'; id: string; at: number }
  /** After a restart: the requests still in flight, as persisted (their leases are in the context). */
  | { type: 'resume'; requests: RequestContext[]; at: number }
  /** From the timer service: the time this queue asked for (`at`) has come. */
  | TimerDueEvent

const requestIdOf = (name: string, n: number): string => `request/${name}/${n}`

/**
 * The id of a request's actor among its queue's children: the request's number, as text
 * (`request/main/17` is child `17` of `queue:main`; the inspector shows it so). XState
 * copies a parent's `children` record on every spawn and stop. V8 keeps integer-like keys
 * (up to 2^32 − 2) as elements, which copy as an array does, while keys like
 * `request/main/17` are named properties: each new one takes a hidden class of its own, and
 * each copy rebuilds them (12–19 % of the runtime's CPU per lifecycle, measured side by side).
 */
export function requestActorId(id: string): string {
  return id.slice(id.lastIndexOf('/') + 1)
}

/**
 * A copy of `record` (optionally without `key`), made as an object without a prototype.
 *
 * Request ids are unique, so V8 gave every ordinary record of requests a chain of hidden
 * classes of its own, one per key, and each copy built without an ended request started a
 * new chain: about 130 µs per request at 100 in flight (a side-by-side microbenchmark of
 * removing one request and adding one). An object made by `Object.create(null)` keeps its
 * keys in a hash table instead (V8's dictionary mode): about 25 µs, and still plain JSON
 * (`JSON.stringify`, `Object.keys`, insertion order).
 */
function copyOf<T>(record: Readonly<Record<string, T>>, key?: string): Record<string, T> {
  const copy = Object.create(null) as Record<string, T>
  for (const k in record) if (k !== key) copy[k] = record[k] as T
  return copy
}

/** The earliest lease expiry or deadline of the requests in flight, or null when nothing is due. */
export function nextDueAt(requests: Readonly<Record<string, InFlight>>): number | null {
  let due: number | null = null
  for (const id in requests) {
    const { leaseUntil, deadlineAt } = requests[id] as InFlight
    if (leaseUntil !== null && (due === null || leaseUntil < due)) due = leaseUntil
    if (deadlineAt !== null && (due === null || deadlineAt < due)) due = deadlineAt
  }
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
    timed: ({ context }) => context.dueAt !== null,
    /** The timer service's answer is for the earliest due time the queue wants now (not a stale one for a time since replaced). */
    dueNow: ({ context, event }) => event.type === 'timer.due' && event.at === context.dueAt,
  },
  actions: {
    /** A request child failed for good: the runtime logs it and records it indeterminate. */
    childFailed: () => undefined,
    /** The queue changed (entry to `routing`, inside the transition): the runtime persists what is durable, once it is over. */
    changed: () => undefined,
    /** Tells the timer service the earliest due time (or that nothing is due). */
    armTimer: sendTo(
      ({ system }) => system.get(TIMER_SERVICE) as AnyActorRef,
      ({ context, self }): TimerServiceEvent => ({ type: 'timer.set', at: context.dueAt, queue: self }),
    ),
    /**
     * Re-spawns the requests restored from storage, each at its persisted step; of those
     * still waiting to start, only the newest is kept (coalescing).
     */
    resume: enqueueActions(({ enqueue, context, event }) => {
      if (event.type !== 'resume') return
      const newest = Math.max(0, ...event.requests.filter((r) => r.step === 'accepted').map((r) => r.n))
      const requests = copyOf(context.requests)
      const superseding: string[] = []
      for (const resumed of event.requests) {
        const state = resumed.step === 'accepted' ? (resumed.n < newest ? 'superseding' : 'accepted') : 'processing'
        // Deadlines are stored as absolute times, and a request in processing holds its slot,
        // leased as when it started. One whose deadline passed while the runtime was down (or
        // before its end was stored) concludes as it resumes, without building (see
        // pastDeadlineAt): it is not told DEADLINE; its lease, if expired, is released at once.
        const due = state === 'processing' ? resumed.deadlineAt : null
        const leaseUntil = due === null ? null : due + context.config.leaseGraceMs
        const deadlineAt = due !== null && pastDeadlineAt(resumed, event.at) ? null : due
        requests[resumed.id] = { n: resumed.n, uri: resumed.uri, state, leaseUntil, deadlineAt }
        if (state === 'superseding') superseding.push(resumed.id)
      }
      // Spawned inside one assign rather than by one spawnChild action each: XState copies the
      // children record once per spawnChild but once per assign, so a queue resuming k
      // requests made k copies of up to k children (quadratic) where it now makes one.
      enqueue.assign(({ spawn }) => {
        for (const resumed of event.requests)
          spawn('request', { id: requestActorId(resumed.id), input: { kind: 'resume', context: resumed, at: event.at } })
        // The superseded are counted when they end superseded (request.ended), as after an ingest.
        return { requests, dueAt: nextDueAt(requests) }
      })
      for (const id of superseding) {
        enqueue.sendTo(requestActorId(id), { type: 'SUPERSEDE', by: requestIdOf(context.name, newest), at: event.at })
      }
    }),
    accept: enqueueActions(({ enqueue, context, event }) => {
      if (event.type !== 'request.accepted' || context.requests[event.id] !== undefined) return
      const { id, n, uri, version, createdAt, at } = event
      enqueue.spawnChild('request', {
        id: requestActorId(id),
        input: { kind: 'new', id, queue: context.name, uri, n, version, createdAt, maxAttempts: context.config.maxAttempts },
      })
      const requests = copyOf(context.requests)
      requests[id] = { n, uri, state: 'accepted', leaseUntil: null, deadlineAt: null }
      // Coalescing: of the requests that have not started, only the newest (highest number)
      // stays; normally that is this one, but a newer one accepted first supersedes it.
      let [newest, newestN] = [id, n]
      for (const other in requests) {
        const inFlight = requests[other] as InFlight
        if (inFlight.state === 'accepted' && inFlight.n > newestN) [newest, newestN] = [other, inFlight.n]
      }
      for (const other in requests) {
        const inFlight = requests[other] as InFlight
        if (other !== newest && inFlight.state === 'accepted' && inFlight.n < newestN) {
          requests[other] = { ...inFlight, state: 'superseding' }
          enqueue.sendTo(requestActorId(other), { type: 'SUPERSEDE', by: newest, at })
        }
      }
      // Superseded requests are counted when they end so (one being cancelled ends cancelled).
      enqueue.assign({ requests, stats: { ...context.stats, accepted: context.stats.accepted + 1 } })
    }),
    /** Starts waiting requests, oldest first, while the gate has free slots. */
    admit: enqueueActions(({ enqueue, context, event }) => {
      // A slot freed by the timer is taken now, not at the due time (which may be long past:
      // after a restart, a deadline missed while the runtime was down would start the next
      // request with its own deadline already passed).
      const at = event.type === 'timer.due' ? Math.max(event.at, event.now) : 'at' in event ? event.at : context.expiredAt
      // One pass, allocating only for the waiting (coalescing leaves at most one, normally).
      let held = 0
      const waiting: string[] = []
      for (const id in context.requests) {
        const inFlight = context.requests[id] as InFlight
        if (inFlight.leaseUntil !== null) held++
        if (inFlight.state === 'accepted') waiting.push(id)
      }
      const free = context.config.maxConcurrent - held
      if (free <= 0 || waiting.length === 0) return
      const requests = copyOf(context.requests)
      const starting = waiting.sort((a, b) => (requests[a] as InFlight).n - (requests[b] as InFlight).n).slice(0, free)
      const deadlineAt = at + context.config.maxValidationMs
      for (const id of starting) {
        requests[id] = {
          ...(requests[id] as InFlight),
          state: 'processing',
          leaseUntil: deadlineAt + context.config.leaseGraceMs,
          deadlineAt,
        }
        const lastGreen = context.lastGreen === null ? null : { uri: context.lastGreen.uri, requestId: context.lastGreen.requestId }
        enqueue.sendTo(requestActorId(id), { type: 'START', at, deadlineAt, lastGreen, projects: context.config.projects ?? null })
      }
      // The new deadline is earlier than the new leases (deadline plus grace).
      enqueue.assign({ requests, dueAt: context.dueAt === null ? deadlineAt : Math.min(context.dueAt, deadlineAt) })
    }),
    finish: enqueueActions(({ enqueue, context, event }) => {
      if (
        event.type !== 'request.recorded' &&
        event.type !== 'request.ended' &&
        event.type !== 'request.salvaged' &&
        event.type !== 'request.lost'
      )
        return
      const ended = context.requests[event.id]
      const requests = copyOf(context.requests, event.id)
      // A lost request holding a slot keeps it, leased, until the lease expires (see InFlight).
      if (event.type === 'request.lost' && ended?.leaseUntil != null) requests[event.id] = { ...ended, state: 'lost', deadlineAt: null }
      // The earliest due time changes only when it was this request's.
      const dueAt =
        ended !== undefined && (ended.leaseUntil === context.dueAt || ended.deadlineAt === context.dueAt)
          ? nextDueAt(requests)
          : context.dueAt
      const stats = { ...context.stats }
      let lastGreen = context.lastGreen
      if (event.type === 'request.recorded') {
        stats[event.verdict]++
        // Last green only moves forward: a slow older green never regresses it.
        if (event.verdict === 'green' && (lastGreen === null || event.n > lastGreen.n)) {
          lastGreen = { uri: event.uri, requestId: event.id, n: event.n, at: event.at }
        }
      } else if (event.type === 'request.ended') {
        stats[event.state]++
      } else if (event.type === 'request.salvaged') {
        stats.indeterminate++
      }
      enqueue.stopChild(requestActorId(event.id))
      enqueue.assign({ requests, dueAt, stats, lastGreen })
    }),
    cancel: enqueueActions(({ enqueue, context, event }) => {
      if (event.type !== 'cancel') return
      const inFlight = context.requests[event.id]
      // A lost request has no actor to tell.
      if (inFlight === undefined || inFlight.state === 'lost') return
      enqueue.sendTo(requestActorId(event.id), { type: 'CANCEL', at: event.at })
    }),
    /**
     * The timer fired for the earliest due time: tells requests whose deadline passed
     * (`DEADLINE`), releases leases that expired and cancels their requests.
     */
    expire: enqueueActions(({ enqueue, context }) => {
      const due = context.dueAt
      if (due === null) return
      // A copy (as copyOf makes it) without the lost requests whose lease expired.
      const requests = Object.create(null) as Record<string, InFlight>
      let expired = 0
      for (const id in context.requests) {
        const inFlight = context.requests[id] as InFlight
        const { deadlineAt, leaseUntil } = inFlight
        const deadlinePassed = deadlineAt !== null && deadlineAt <= due
        const leaseExpired = leaseUntil !== null && leaseUntil <= due
        if (inFlight.state === 'lost' && leaseExpired) {
          // No actor to tell: its slot is free once the lease expires (a lost request has no deadline).
          expired++
          continue
        }
        if (!deadlinePassed && !leaseExpired) {
          requests[id] = inFlight
          continue
        }
        requests[id] = { ...inFlight, deadlineAt: deadlinePassed ? null : deadlineAt, leaseUntil: leaseExpired ? null : leaseUntil }
        if (deadlinePassed) enqueue.sendTo(requestActorId(id), { type: 'DEADLINE', at: deadlineAt })
        if (leaseExpired) {
          expired++
          enqueue.sendTo(requestActorId(id), { type: 'CANCEL', at: leaseUntil })
        }
      }
      enqueue.assign({
        requests,
        dueAt: nextDueAt(requests),
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
