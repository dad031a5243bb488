/**
 * The queue machine: single writer for its queue. It owns the requests in flight (spawned
 * as its children, so their errors escalate to it), coalescing, the concurrency gate and
 * the last green pointer.
 *
 * - `request.accepted`: spawn the request; supersede older requests that have not started
 *   (coalescing); start what the gate allows.
 * - The gate: at most `maxConcurrent` requests hold a slot. A slot is a lease with a
 *   deadline (the request's deadline plus `leaseGraceMs`), so a stuck or lost request
 *   cannot hold it forever: an expired lease is released and its request cancelled.
 * - `request.recorded`: release the slot, and move last green forward if the request is
 *   green and newer than the current one (never backwards).
 *
 * Pure: time comes in events (`at`) and provided delays; the runtime persists the snapshot
 * (context, no children) with a CAS write whenever it changes.
 *
 * @module
 */
import { assign, enqueueActions, setup, type ActorRefFrom, type SnapshotFrom } from 'xstate'
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
  requests: Record<string, InFlight>
  /** Slots held: request id → lease expiry (epoch ms). */
  leases: Record<string, number>
  /** When leases last expired (epoch ms): the time of a slot freed by expiry. */
  expiredAt: number
  /** Counts since the queue was created. */
  stats: {
    accepted: number
    superseded: number
    cancelled: number
    green: number
    red: number
    indeterminate: number
    leaseExpiries: number
  }
}

/** The context of a queue with nothing in flight, no last green and zero counts. */
export function newQueueContext(name: string, config: QueueConfig): QueueContext {
  return {
    name,
    config,
    lastGreen: null,
    requests: {},
    leases: {},
    expiredAt: 0,
    stats: { accepted: 0, superseded: 0, cancelled: 0, green: 0, red: 0, indeterminate: 0, leaseExpiries: 0 },
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
  /** After a restart: the requests still in flight, as persisted (their leases are in the context). */
  | { type: 'resume'; requests: RequestContext[]; at: number }

const requestIdOf = (name: string, n: number): string => `request/${name}/${n}`

/** The queue machine. */
export const queueMachine = setup({
  types: {
    context: {} as QueueContext,
    events: {} as QueueEvent,
    input: {} as QueueInput,
  },
  actors: { request: requestMachine },
  delays: {
    /** Until the earliest lease expires (the runtime provides its clock). */
    nextLeaseExpiry: ({ context }) => {
      const expiries = Object.values(context.leases)
      return expiries.length === 0 ? 2 ** 31 - 1 : Math.max(0, Math.min(...expiries))
    },
  },
  actions: {
    /** A request child failed for good: the runtime logs it and records it indeterminate. */
    childFailed: () => undefined,
    /**
     * Re-spawns the requests restored from storage, each at its persisted step; of those
     * still waiting to start, only the newest is kept (coalescing).
     */
    resume: enqueueActions(({ enqueue, context, event }) => {
      if (event.type !== 'resume') return
      const newest = Math.max(0, ...event.requests.filter((r) => r.step === 'accepted').map((r) => r.n))
      const requests = { ...context.requests }
      let superseded = 0
      for (const resumed of event.requests) {
        enqueue.spawnChild('request', { id: resumed.id, systemId: resumed.id, input: { kind: 'resume', context: resumed } })
        const state = resumed.step === 'accepted' ? (resumed.n < newest ? 'superseding' : 'accepted') : 'processing'
        requests[resumed.id] = { n: resumed.n, uri: resumed.uri, state }
        if (state === 'superseding') {
          enqueue.sendTo(resumed.id, { type: 'SUPERSEDE', by: requestIdOf(context.name, newest), at: event.at })
          superseded++
        }
      }
      enqueue.assign({ requests, stats: { ...context.stats, superseded: context.stats.superseded + superseded } })
    }),
    accept: enqueueActions(({ enqueue, context, event }) => {
      if (event.type !== 'request.accepted' || context.requests[event.id] !== undefined) return
      const { id, n, uri, version, createdAt, at } = event
      enqueue.spawnChild('request', {
        id,
        systemId: id,
        input: { kind: 'new', id, queue: context.name, uri, n, version, createdAt, maxAttempts: context.config.maxAttempts },
      })
      const requests: Record<string, InFlight> = { ...context.requests, [id]: { n, uri, state: 'accepted' } }
      // Coalescing: an older request that has not started is superseded by this one.
      let superseded = 0
      for (const [other, inFlight] of Object.entries(requests)) {
        if (inFlight.state === 'accepted' && inFlight.n < n) {
          requests[other] = { ...inFlight, state: 'superseding' }
          enqueue.sendTo(other, { type: 'SUPERSEDE', by: id, at })
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
      for (const [id, inFlight] of waiting) {
        const deadlineAt = at + context.config.maxValidationMs
        requests[id] = { ...inFlight, state: 'processing' }
        leases[id] = deadlineAt + context.config.leaseGraceMs
        const lastGreen = context.lastGreen === null ? null : { uri: context.lastGreen.uri, requestId: context.lastGreen.requestId }
        enqueue.sendTo(id, { type: 'START', at, deadlineAt, lastGreen, projects: context.config.projects ?? null })
      }
      enqueue.assign({ requests, leases })
    }),
    finish: enqueueActions(({ enqueue, context, event }) => {
      if (event.type !== 'request.recorded' && event.type !== 'request.ended' && event.type !== 'request.salvaged') return
      const { [event.id]: _done, ...requests } = context.requests
      const { [event.id]: _lease, ...leases } = context.leases
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
      enqueue.assign({ requests, leases, stats, lastGreen })
    }),
    cancel: enqueueActions(({ enqueue, context, event }) => {
      if (event.type !== 'cancel' || context.requests[event.id] === undefined) return
      enqueue.sendTo(event.id, { type: 'CANCEL', at: event.at })
    }),
    /** Releases the earliest-expiring leases and cancels their requests. */
    expireLeases: enqueueActions(({ enqueue, context }) => {
      const expiries = Object.values(context.leases)
      if (expiries.length === 0) return
      const due = Math.min(...expiries)
      const leases = Object.fromEntries(Object.entries(context.leases).filter(([, until]) => until > due))
      let expired = 0
      for (const [id, until] of Object.entries(context.leases)) {
        if (until > due) continue
        expired++
        if (context.requests[id] !== undefined) enqueue.sendTo(id, { type: 'CANCEL', at: until })
      }
      enqueue.assign({ leases, expiredAt: due, stats: { ...context.stats, leaseExpiries: context.stats.leaseExpiries + expired } })
    }),
    configure: assign(({ event }) => (event.type === 'config' ? { config: event.config } : {})),
  },
}).createMachine({
  id: 'queue',
  context: ({ input }) => input.context,
  initial: 'active',
  states: {
    active: {
      after: { nextLeaseExpiry: { target: 'active', reenter: true, actions: ['expireLeases', 'admit'] } },
      on: {
        'request.accepted': { target: 'active', reenter: true, actions: ['accept', 'admit'] },
        'request.recorded': { target: 'active', reenter: true, actions: ['finish', 'admit'] },
        'request.ended': { target: 'active', reenter: true, actions: ['finish', 'admit'] },
        'request.salvaged': { target: 'active', reenter: true, actions: ['finish', 'admit'] },
        resume: { target: 'active', reenter: true, actions: ['resume', 'admit'] },
        cancel: { actions: 'cancel' },
        config: { target: 'active', reenter: true, actions: ['configure', 'admit'] },
        'xstate.error.actor.*': { actions: 'childFailed' },
      },
    },
  },
})

/** The queue machine's actor type. */
export type QueueActor = ActorRefFrom<typeof queueMachine>
/** A queue machine snapshot. */
export type QueueSnapshot = SnapshotFrom<typeof queueMachine>

export { requestIdOf }
