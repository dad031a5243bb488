/**
 * A storage wrapper that injects faults, reproducibly from a seed: transient failures,
 * latency, lost acknowledgements, outages and deterministic poison ops.
 *
 * @module
 */
import { systemClock, seededRandom, type Clock } from '../actors/clock.js'
import { StorageFailedError, StorageUnavailableError } from '../storage/errors.js'
import type { Storage, WriteOp } from '../storage/types.js'

/** Options of {@link createFaultyStorage}. */
export interface FaultOptions {
  /** Probability that a commit fails with StorageUnavailableError before writing (default 0). */
  failRate?: number
  /**
   * Probability that a commit is applied but reported as StorageUnavailableError (a lost
   * acknowledgement; default 0).
   */
  lostAckRate?: number
  /** Delay of every commit, in ms on `clock`: a number or a `[min, max]` range (default 0). */
  latencyMs?: number | readonly [number, number]
  /** Ops that fail deterministically: a commit containing one is refused with StorageFailedError. */
  poison?: (op: WriteOp) => boolean
  /** Seed of the fault sequence (default 1). */
  seed?: number
  /** Clock for the latency (default the system clock). */
  clock?: Clock
  /** Also fail reads at `failRate` (default false: only commits fail). */
  faultReads?: boolean
}

/** Live switches of a faulty storage. */
export interface FaultControls {
  /** While true every call fails with StorageUnavailableError (an outage). */
  down: boolean
  /** Probability of a transient commit failure; may be changed at any time. */
  failRate: number
  /** Probability of a lost acknowledgement; may be changed at any time. */
  lostAckRate: number
}

/** What was injected so far. */
export interface FaultStats {
  commits: number
  failed: number
  lostAcks: number
  poisoned: number
}

/** A storage with fault injection. */
export interface FaultyStorage extends Storage {
  readonly faults: FaultControls
  readonly faultStats: FaultStats
  /** The wrapped storage, to inspect what really got written. */
  readonly inner: Storage
}

/** Wraps `inner` so its calls fail, lag or lose acknowledgements as configured. */
export function createFaultyStorage(inner: Storage, options: FaultOptions = {}): FaultyStorage {
  const random = seededRandom(options.seed ?? 1)
  const clock = options.clock ?? systemClock
  const faults: FaultControls = { down: false, failRate: options.failRate ?? 0, lostAckRate: options.lostAckRate ?? 0 }
  const faultStats: FaultStats = { commits: 0, failed: 0, lostAcks: 0, poisoned: 0 }
  const latency = options.latencyMs ?? 0
  const [minLatency, maxLatency] = typeof latency === 'number' ? [latency, latency] : latency

  const unavailable = (why: string): StorageUnavailableError => new StorageUnavailableError(`injected fault: ${why}`)
  const delay = async (): Promise<void> => {
    const ms = minLatency + Math.floor(random() * (maxLatency - minLatency + 1))
    if (ms > 0) await new Promise<void>((resolve) => clock.setTimeout(resolve, ms))
  }
  const read =
    <A extends unknown[], R>(fn: (...args: A) => Promise<R>) =>
    async (...args: A): Promise<R> => {
      if (faults.down) throw unavailable('storage is down')
      if (options.faultReads === true && random() < faults.failRate) throw unavailable('read failed')
      return fn(...args)
    }

  return {
    kind: `faulty ${inner.kind}`,
    faults,
    faultStats,
    inner,
    requests: {
      create: read(inner.requests.create),
      get: read(inner.requests.get),
      update: read(inner.requests.update),
      listByQueue: read(inner.requests.listByQueue),
    },
    requestUris: { create: read(inner.requestUris.create), getIdByUri: read(inner.requestUris.getIdByUri) },
    queues: {
      create: read(inner.queues.create),
      get: read(inner.queues.get),
      update: read(inner.queues.update),
      list: read(inner.queues.list),
    },
    facts: { put: read(inner.facts.put), get: read(inner.facts.get), listByUri: read(inner.facts.listByUri) },
    counters: { next: read(inner.counters.next) },
    events: {
      append: read(inner.events.append),
      read: read(inner.events.read),
      last: read(inner.events.last),
      nodes: read(inner.events.nodes),
    },
    deadLetters: { put: read(inner.deadLetters.put), list: read(inner.deadLetters.list) },
    outbox: {
      put: read(inner.outbox.put),
      settle: read(inner.outbox.settle),
      get: read(inner.outbox.get),
      due: read(inner.outbox.due),
      list: read(inner.outbox.list),
    },
    commit: async (ops) => {
      faultStats.commits++
      await delay()
      if (faults.down) {
        faultStats.failed++
        throw unavailable('storage is down')
      }
      if (options.poison !== undefined && ops.some(options.poison)) {
        faultStats.poisoned++
        throw new StorageFailedError('injected fault: a poison op in the batch')
      }
      if (random() < faults.failRate) {
        faultStats.failed++
        throw unavailable('commit failed')
      }
      const results = await inner.commit(ops)
      if (random() < faults.lostAckRate) {
        faultStats.lostAcks++
        throw unavailable('commit applied but its acknowledgement was lost')
      }
      return results
    },
    migrate: () => inner.migrate(),
    close: () => inner.close(),
  }
}
