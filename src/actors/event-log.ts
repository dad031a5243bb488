/**
 * The lag-aware event log: every transition of every actor, with contiguous ids, persisted
 * gap sentinels instead of silent drops, and resumable subscribers.
 *
 * - `send(event)` is O(1) and never blocks the runtime. It assigns the event a logical id
 *   (contiguous per node from 0) and buffers it for the writer.
 * - When more than `capacity` events wait (the writer fell behind), policy `gap` (default)
 *   turns the overflowed ids into one gap sentinel `{ kind: 'gap', fromId, toId }`, which is
 *   persisted in their place; policy `block` makes `append` wait for room instead.
 * - Rows go to storage through the writer, one batch at a time; each row gets a storage seq
 *   (contiguous per node from 0, gap rows included) when it is handed over. A batch must be
 *   fully durable before the next leaves, so the persisted seqs are always a contiguous
 *   prefix, also after a crash. A row the writer dead-letters is handed over again (same
 *   seq) after a backoff; one that fails deterministically is replaced by a gap row.
 * - `append(event)` resolves once the event (or the gap that replaced it) is durable.
 * - Subscribers replay history from storage, then go live, with no duplicate and no hole;
 *   each has its own bounded buffer, and one too slow to keep up gets a lag notice
 *   (`{ kind: 'lag', fromId, toId }`: read those ids from storage) instead of slowing the log.
 * - A new event log on the same storage continues both counters from the last persisted row.
 *
 * @module
 */
import { isDeepStrictEqual } from 'node:util'
import { EventEmitter } from 'eventemitter3'
import type { Logger } from 'pino'
import { Registry, type Counter, type Gauge } from 'prom-client'
import { fromCallback, type CallbackActorLogic, type EventObject } from 'xstate'
import { AlreadyExistsError, InvalidInputError, StoppedError, StovepipeError, isRetryable } from '../storage/errors.js'
import type { EventRow, Json, Storage, WriteOp } from '../storage/types.js'
import { assertNodeId, assertQueueName, parseRequestId, toJsonText, type PreparedEvent, type PreparedOp } from '../storage/validation.js'
import { backoffDelay, sleep, systemClock, type Clock } from './clock.js'
import { counter, gauge, silentLogger } from './observability.js'
import { WRITE_PREPARED, type Writer } from './writer.js'

/** A state transition of an actor, as sent to the event log. */
export interface TransitionEvent {
  /** Epoch milliseconds. */
  at: number
  queue: string
  requestId: string
  /** State before, e.g. `accepted` or `processing.building`. */
  from: string
  /** State after. */
  to: string
  /** The event that caused it, e.g. `START`. */
  event: string
  /** Optional plain-JSON detail (verdict, strategy, error). */
  detail?: Json
}

/** A subscriber's notice that it was too slow: ids `fromId..toId` were not delivered to it. */
export interface LagNotice {
  kind: 'lag'
  nodeId: string
  fromId: number
  toId: number
}

/** What subscribers receive: persisted rows (events and gaps) and lag notices. */
export type LogEntry = EventRow | LagNotice

/** What `append` resolves with once the event is durable. */
export interface EventAck {
  id: number
  seq: number
  /** Present when the event was dropped into a gap sentinel (policy `gap`, buffer full). */
  gap?: { fromId: number; toId: number }
}

/** Options of {@link createEventLog}. */
export interface EventLogOptions {
  storage: Storage
  writer: Writer
  /** This process's node id (default `local`): ids and seqs are contiguous per node. */
  nodeId?: string
  /** Events waiting for the writer, at most (default 10 000). */
  capacity?: number
  /** `gap` (default): overflow becomes a gap sentinel. `block`: `append` waits for room. */
  policy?: 'gap' | 'block'
  /** Rows handed to the writer per batch (default 500). */
  batchSize?: number
  /** Default per-subscriber buffer, in entries (default 1000). */
  subscriberBuffer?: number
  /** Backoff for re-submitting rows the writer dead-lettered (defaults 100 ms, 5000 ms). */
  retry?: { baseDelayMs?: number; maxDelayMs?: number }
  clock?: Clock
  logger?: Logger
  registry?: Registry
  random?: () => number
}

/** Options of {@link EventLog.subscribe}. */
export interface SubscribeOptions {
  /** Replay from this logical id (inclusive) before going live; live only when omitted. */
  from?: number
  /** Entries buffered for this subscriber before it gets a lag notice (default from the log). */
  buffer?: number
}

/** A live subscription. */
export interface Subscription {
  /** Resolves when history has been replayed and the subscription is live. */
  readonly live: Promise<void>
  unsubscribe(): void
}

/** Counters since the log was created. */
export interface EventLogStats {
  /** Next logical id and next seq to be assigned. */
  nextId: number
  nextSeq: number
  sent: number
  invalid: number
  /** Events that went into gap sentinels. */
  dropped: number
  gapRows: number
  persistedRows: number
  /** Events and gaps waiting for the writer (not counting the batch in flight). */
  buffered: number
  resubmitted: number
  subscribers: number
  lagNotices: number
}

/** What {@link EventLog.stop} did. */
export interface EventLogStopReport {
  /** True when everything sent was durable before the deadline. */
  flushed: boolean
  /** Logical ids sent but not persisted (storage down through the deadline). */
  unpersisted: number
}

/** The event log. Create with {@link createEventLog}. */
export interface EventLog {
  readonly nodeId: string
  /** Logs a transition without waiting. Throws InvalidInputError (and counts it) on bad input. */
  send(event: TransitionEvent): void
  /** Logs a transition; resolves when it (or the gap that replaced it) is durable. */
  append(event: TransitionEvent): Promise<EventAck>
  /** Persisted rows ordered by `(nodeId, seq)`; all nodes unless `nodeId` is given. */
  read(options?: { nodeId?: string; from?: number; limit?: number }): Promise<EventRow[]>
  /** Stable one-line text for an entry. */
  render(entry: LogEntry): string
  subscribe(listener: (entry: LogEntry) => void | Promise<void>, options?: SubscribeOptions): Subscription
  /**
   * Where a live-only subscription made now starts: the id of the next entry it would get.
   * Subscribing with `{ from: position() }` later misses nothing in between.
   */
  position(): number
  /** Resolves when everything sent so far is durable. */
  flush(): Promise<void>
  /** Refuses new events, flushes within `deadlineMs` (default 10 000), stops subscribers. */
  stop(options?: { deadlineMs?: number }): Promise<EventLogStopReport>
  /**
   * Calls `listener` if the log fails: it found another process's row at one of its seqs
   * ({@link EventLogConflictError}; two processes share a nodeId). A failed log refuses
   * every event not yet durable and takes no more. Returns the function that removes the listener.
   */
  onFailure(listener: (error: Error) => void): () => void
  stats(): EventLogStats
  readonly registry: Registry
}

/** How an `append` hears its outcome: the row holding it is durable (a gap row when it was dropped), or the log failed. */
type Ack = (outcome: { seq: number; gap: { fromId: number; toId: number } | undefined } | { error: Error }) => void

type Pending =
  | { kind: 'event'; id: number; at: number; payload: Json; payloadJson: string; acks: Ack[] }
  | { kind: 'gap'; fromId: number; toId: number; at: number; acks: Ack[] }

/** An event waiting for room (policy `block`), or being admitted. */
interface Blocked {
  at: number
  payload: Json
  payloadJson: string
  resolve: (ack: EventAck) => void
  reject: (error: Error) => void
}

/** A row handed to the writer (or waiting to be handed again), with its seq fixed. */
interface Outgoing {
  row: EventRow
  /** The row as the writer commits it (validated here, so not again). */
  prepared: PreparedEvent
  acks: Ack[]
  failures: number
}

/**
 * The log found a row it did not write at one of its seqs: another process writes the same
 * node's log (each process needs its own `nodeId` on shared storage). The log stops.
 */
export class EventLogConflictError extends AlreadyExistsError {}

/** Whether a stored row is the one this log wrote (payloads compared as JSON values: a backend may reorder keys). */
function sameRow(stored: EventRow, ours: EventRow): boolean {
  if (stored.kind !== ours.kind || stored.seq !== ours.seq || stored.at !== ours.at) return false
  if (stored.kind === 'gap' || ours.kind === 'gap') return firstId(stored) === firstId(ours) && lastId(stored) === lastId(ours)
  return stored.id === ours.id && isDeepStrictEqual(stored.payload, ours.payload)
}

const noop = (): void => undefined
const firstId = (row: EventRow | LagNotice): number => (row.kind === 'event' ? row.id : row.fromId)
const lastId = (row: EventRow | LagNotice): number => (row.kind === 'event' ? row.id : row.toId)

function positiveInt(value: number, what: string): number {
  if (!Number.isSafeInteger(value) || value < 1) throw new InvalidInputError(`${what} must be a positive integer, got ${String(value)}`)
  return value
}

/** Validates a transition event; returns its payload and the payload's JSON text. */
export function transitionPayload(input: unknown): { payload: Json; payloadJson: string } {
  if (typeof input !== 'object' || input === null || Array.isArray(input))
    throw new InvalidInputError('a transition event must be an object')
  const { at, queue, requestId, from, to, event, detail } = input as Record<string, unknown>
  if (typeof at !== 'number' || !Number.isSafeInteger(at) || at < 0)
    throw new InvalidInputError(`transition at must be epoch milliseconds, got ${String(at)}`)
  assertQueueName(queue, 'transition queue')
  parseRequestId(requestId, queue)
  for (const [name, value] of [
    ['from', from],
    ['to', to],
    ['event', event],
  ] as const) {
    if (typeof value !== 'string' || value.length === 0 || value.length > 200 || !value.isWellFormed()) {
      throw new InvalidInputError(`transition ${name} must be a non-empty string of at most 200 characters`)
    }
  }
  const payload: Record<string, Json> = {
    queue,
    requestId: requestId as string,
    from: from as string,
    to: to as string,
    event: event as string,
  }
  if (detail !== undefined) payload.detail = JSON.parse(toJsonText(detail, 'transition detail')) as Json
  return { payload, payloadJson: JSON.stringify(payload) }
}

function iso(at: number): string {
  return new Date(at).toISOString()
}

/** Stable one-line text for a log entry. */
export function renderEntry(entry: LogEntry): string {
  switch (entry.kind) {
    case 'gap':
      return `events between ${entry.fromId} and ${entry.toId} were dropped`
    case 'lag':
      return `this subscriber missed events between ${entry.fromId} and ${entry.toId} (too slow; read them from storage)`
    case 'event': {
      const p = entry.payload
      if (typeof p === 'object' && p !== null && !Array.isArray(p)) {
        const { requestId, from, to, event, detail } = p
        if (typeof requestId === 'string' && typeof from === 'string' && typeof to === 'string' && typeof event === 'string') {
          const verdict =
            typeof detail === 'object' && detail !== null && !Array.isArray(detail) && typeof detail.verdict === 'string'
              ? ` ${detail.verdict}`
              : ''
          return `#${entry.id} ${iso(entry.at)} ${requestId} ${from} -> ${to} (${event})${verdict}`
        }
      }
      return `#${entry.id} ${iso(entry.at)} ${JSON.stringify(p)}`
    }
  }
}

interface Metrics {
  sent: Counter
  dropped: Counter
  gapRows: Counter
  invalid: Counter
  persisted: Counter
  buffered: Gauge
  lag: Counter
}

class Subscriber {
  private readonly queue: LogEntry[] = []
  private queuedRows = 0
  private next: number
  /** Newly durable rows are queued once this is set (before the last storage read). */
  private buffering = false
  /** Queued rows are delivered once the replay is over. */
  private ready = false
  private delivering = false
  private closedFlag = false
  readonly live: Promise<void>

  /** Stops delivery; the subscription is over. */
  close(): void {
    this.closedFlag = true
  }

  private isClosed(): boolean {
    return this.closedFlag
  }

  constructor(
    private readonly log: LagAwareEventLog,
    private readonly listener: (entry: LogEntry) => void | Promise<void>,
    private readonly capacity: number,
    from: number | undefined,
  ) {
    this.next = from ?? log.durableNextId()
    this.live = from === undefined ? this.goLive() : this.replay()
  }

  private goLive(): Promise<void> {
    this.buffering = true
    this.ready = true
    return Promise.resolve()
  }

  /**
   * Replays from storage, then starts queueing newly durable rows, then reads storage once
   * more: a row made durable around the switch is in the queue or in that last read (or
   * both; the id check drops the second copy), so nothing is missed or doubled.
   */
  private async replay(): Promise<void> {
    await this.readStorage()
    this.buffering = true
    await this.readStorage()
    this.ready = true
    this.pump()
  }

  private async readStorage(): Promise<void> {
    const pageSize = 500
    for (let failures = 0; ;) {
      if (this.isClosed()) return
      let rows: EventRow[]
      try {
        rows = await this.log.readOwn(this.next, pageSize)
        failures = 0
      } catch (error) {
        // Storage unavailable: wait and read again; the subscriber must not miss history.
        if (!isRetryable(error)) throw error
        await this.log.pause(++failures)
        continue
      }
      for (const row of rows) {
        if (this.isClosed()) return
        if (lastId(row) < this.next) continue
        await this.deliver(row)
      }
      if (rows.length < pageSize) return
    }
  }

  /** A newly durable row of this node. */
  offer(row: EventRow): void {
    if (this.isClosed() || !this.buffering) return
    if (this.queuedRows >= this.capacity) {
      const tail = this.queue[this.queue.length - 1]
      if (tail?.kind === 'lag') tail.toId = lastId(row)
      else {
        this.queue.push({ kind: 'lag', nodeId: row.nodeId, fromId: firstId(row), toId: lastId(row) })
        this.log.countLag()
      }
    } else {
      this.queue.push(row)
      this.queuedRows++
    }
    this.pump()
  }

  private pump(): void {
    if (this.delivering || this.isClosed() || !this.ready) return
    this.delivering = true
    void (async () => {
      try {
        for (let entry = this.queue.shift(); entry !== undefined && !this.isClosed(); entry = this.queue.shift()) {
          if (entry.kind !== 'lag') this.queuedRows--
          if (lastId(entry) < this.next) continue // already delivered by the replay
          await this.deliver(entry)
        }
      } finally {
        this.delivering = false
      }
      if (this.queue.length > 0) this.pump()
    })()
  }

  private async deliver(entry: LogEntry): Promise<void> {
    this.next = lastId(entry) + 1
    try {
      await this.listener(entry)
    } catch (error) {
      this.log.listenerFailed(error)
    }
  }
}

class LagAwareEventLog implements EventLog {
  readonly registry: Registry
  private readonly storage: Storage
  private readonly writer: Writer
  private readonly capacity: number
  private readonly policy: 'gap' | 'block'
  private readonly batchSize: number
  private readonly subscriberBuffer: number
  private readonly baseDelayMs: number
  private readonly maxDelayMs: number
  private readonly clock: Clock
  private readonly logger: Logger
  private readonly random: () => number
  private readonly metrics: Metrics
  private readonly emitter = new EventEmitter<{ row: [EventRow]; failed: [Error] }>()
  private readonly subscribers = new Set<Subscriber>()

  private nextId: number
  private nextSeq: number
  /** Ids below this are durable (or were never assigned). */
  private durableId: number
  private readonly buffer: Pending[] = []
  private bufferedEvents = 0
  private readonly blocked: Blocked[] = []
  private retryRows: Outgoing[] = []
  /** A batch was refused deterministically: its rows go one at a time until all are stored. */
  private isolating = false
  /** Why the log stopped taking events (another process writes this node's log), if it did. */
  private failure: Error | undefined
  private inFlight = false
  private retrySleep: { cancel: () => void } | undefined
  private stopping = false
  private flushWaiters: (() => void)[] = []
  private readonly counts = { sent: 0, invalid: 0, dropped: 0, gapRows: 0, persisted: 0, resubmitted: 0, lag: 0 }
  /** What the prom-client series show; hot-path counts are pushed there once per batch. */
  private readonly reported = { sent: 0, dropped: 0, gapRows: 0, persisted: 0 }

  private syncMetrics(): void {
    const node = { node: this.nodeId }
    for (const key of ['sent', 'dropped', 'gapRows', 'persisted'] as const) {
      const delta = this.counts[key] - this.reported[key]
      if (delta > 0) this.metrics[key].inc(node, delta)
      this.reported[key] = this.counts[key]
    }
    this.metrics.buffered.set(node, this.bufferedEvents)
  }

  constructor(
    readonly nodeId: string,
    options: EventLogOptions,
    last: EventRow | undefined,
  ) {
    this.storage = options.storage
    this.writer = options.writer
    this.capacity = positiveInt(options.capacity ?? 10_000, 'capacity')
    this.policy = options.policy ?? 'gap'
    if (!['gap', 'block'].includes(this.policy)) throw new InvalidInputError(`policy must be 'gap' or 'block', got ${this.policy}`)
    this.batchSize = positiveInt(options.batchSize ?? 500, 'batchSize')
    this.subscriberBuffer = positiveInt(options.subscriberBuffer ?? 1000, 'subscriberBuffer')
    this.baseDelayMs = options.retry?.baseDelayMs ?? 100
    this.maxDelayMs = options.retry?.maxDelayMs ?? 5000
    this.clock = options.clock ?? systemClock
    this.logger = (options.logger ?? silentLogger()).child({ component: 'event-log', nodeId })
    this.random = options.random ?? Math.random
    this.nextSeq = last === undefined ? 0 : last.seq + 1
    this.nextId = last === undefined ? 0 : lastId(last) + 1
    this.durableId = this.nextId
    this.registry = options.registry ?? new Registry()
    const labels = ['node']
    this.metrics = {
      sent: counter(this.registry, 'stovepipe_event_log_events_total', 'Transitions logged', labels),
      dropped: counter(this.registry, 'stovepipe_event_log_dropped_events_total', 'Transitions turned into gap sentinels', labels),
      gapRows: counter(this.registry, 'stovepipe_event_log_gap_rows_total', 'Gap sentinels persisted', labels),
      invalid: counter(this.registry, 'stovepipe_event_log_invalid_events_total', 'Transitions refused as invalid', labels),
      persisted: counter(this.registry, 'stovepipe_event_log_persisted_rows_total', 'Rows made durable', labels),
      buffered: gauge(this.registry, 'stovepipe_event_log_buffered_events', 'Transitions waiting for the writer', labels),
      lag: counter(this.registry, 'stovepipe_event_log_subscriber_lag_total', 'Lag notices given to slow subscribers', labels),
    }
    for (const series of [
      this.metrics.sent,
      this.metrics.dropped,
      this.metrics.gapRows,
      this.metrics.invalid,
      this.metrics.persisted,
      this.metrics.lag,
    ]) {
      series.inc({ node: nodeId }, 0)
    }
  }

  send(event: TransitionEvent): void {
    if (this.failure !== undefined) throw this.failure
    if (this.stopping) throw new StoppedError(`event log ${this.nodeId} is stopped`)
    const valid = this.validate(event)
    this.enqueue({ at: event.at, ...valid, resolve: noop, reject: this.logRejection })
  }

  append(event: TransitionEvent): Promise<EventAck> {
    try {
      if (this.failure !== undefined) throw this.failure
      if (this.stopping) throw new StoppedError(`event log ${this.nodeId} is stopped`)
      const valid = this.validate(event)
      return new Promise<EventAck>((resolve, reject) => {
        this.enqueue({ at: event.at, ...valid, resolve, reject })
      })
    } catch (error) {
      return Promise.reject(error instanceof Error ? error : new Error(String(error)))
    }
  }

  private readonly logRejection = (error: Error): void => {
    this.logger.error({ err: error }, 'event not logged')
  }

  private enqueue(waiter: Blocked): void {
    if (this.policy === 'block' && (this.bufferedEvents >= this.capacity || this.blocked.length > 0)) this.blocked.push(waiter)
    else this.admit(waiter)
  }

  private validate(event: TransitionEvent): { payload: Json; payloadJson: string } {
    try {
      return transitionPayload(event)
    } catch (error) {
      this.counts.invalid++
      this.metrics.invalid.inc({ node: this.nodeId })
      throw error instanceof StovepipeError ? error : new InvalidInputError(String(error))
    }
  }

  /** Assigns the next id and buffers the event, or folds it into a gap when the buffer is full. */
  private admit({ at, payload, payloadJson, resolve, reject }: Blocked): void {
    const id = this.nextId++
    this.counts.sent++
    // `send` wants no answer; an `append` hears of the row that holds its id (its own, or a gap).
    const acks: Ack[] =
      resolve === noop
        ? []
        : [
            (outcome) => {
              if ('error' in outcome) reject(outcome.error)
              else resolve(outcome.gap === undefined ? { id, seq: outcome.seq } : { id, seq: outcome.seq, gap: outcome.gap })
            },
          ]
    if (this.bufferedEvents < this.capacity) {
      this.buffer.push({ kind: 'event', id, at, payload, payloadJson, acks })
      this.bufferedEvents++
    } else {
      // Policy gap and the buffer is full: the id joins a gap sentinel; nothing vanishes silently.
      this.counts.dropped++
      const tail = this.buffer[this.buffer.length - 1]
      const gap: Extract<Pending, { kind: 'gap' }> = tail?.kind === 'gap' ? tail : { kind: 'gap', fromId: id, toId: id, at, acks: [] }
      if (gap !== tail) this.buffer.push(gap)
      gap.toId = id
      gap.acks.push(...acks)
    }
    this.pump()
  }

  /** Hands the next batch to the writer when none is in flight. */
  private pump(): void {
    if (this.inFlight || this.failure !== undefined) return
    this.syncMetrics()
    if (this.retryRows.length > 0) {
      // Rows of a batch storage refused go one at a time, to find the row it refuses.
      const batch = this.isolating ? this.retryRows.splice(0, 1) : this.retryRows.splice(0)
      this.inFlight = true
      void this.submit(batch)
      return
    }
    if (this.buffer.length === 0) {
      this.notifyFlushed()
      return
    }
    this.isolating = false
    const batch = this.buffer.splice(0, this.batchSize).map((item) => this.toOutgoing(item))
    // In flight before admitting blocked events: `admit` pumps again, and a second batch
    // handed over now could become durable before this one.
    this.inFlight = true
    this.admitBlocked()
    void this.submit(batch)
  }

  private toOutgoing(item: Pending): Outgoing {
    const seq = this.nextSeq++
    if (item.kind === 'event') {
      this.bufferedEvents--
      return this.outgoing(
        { kind: 'event', nodeId: this.nodeId, seq, id: item.id, at: item.at, payload: item.payload },
        item.payloadJson,
        item.acks,
      )
    }
    this.counts.gapRows++
    this.logger.warn({ fromId: item.fromId, toId: item.toId }, 'event log overflowed; persisting a gap sentinel')
    return this.outgoing({ kind: 'gap', nodeId: this.nodeId, seq, fromId: item.fromId, toId: item.toId, at: item.at }, null, item.acks)
  }

  private outgoing(row: EventRow, payloadJson: string | null, acks: Ack[], failures = 0): Outgoing {
    const [first, last] = row.kind === 'event' ? [row.id, row.id] : [row.fromId, row.toId]
    const prepared: PreparedEvent = {
      kind: row.kind,
      nodeId: row.nodeId,
      seq: row.seq,
      firstId: first,
      lastId: last,
      at: row.at,
      payloadJson,
    }
    return { row, prepared, acks, failures }
  }

  private admitBlocked(): void {
    while (this.bufferedEvents < this.capacity) {
      const next = this.blocked.shift()
      if (next === undefined) break
      this.admit(next)
    }
  }

  /**
   * Writes a batch and makes its rows durable, in seq order: the writer commits it as one
   * atomic write (one transaction, never split across commits), so its rows are stored
   * together or not at all and the persisted seqs stay a contiguous prefix, also after a
   * crash. Rows not stored are handed over again, with the same seqs, after a backoff.
   */
  private async submit(batch: Outgoing[]): Promise<void> {
    let failed: Outgoing[] = []
    try {
      const ops = batch.map((out): WriteOp => ({ op: 'event.append', row: out.row }))
      const prepared = batch.map((out): PreparedOp => ({ op: 'event.append', event: out.prepared }))
      const results =
        this.writer[WRITE_PREPARED] === undefined
          ? await this.writer.write(ops, { atomic: true })
          : await this.writer[WRITE_PREPARED](ops, prepared, { atomic: true })
      const stored = await this.storedRows(batch, results)
      let i = 0
      for (; i < batch.length && stored[i] === true; i++) this.durable(batch[i] as Outgoing)
      const rest = batch.slice(i)
      const status = stored[i]
      if (status instanceof EventLogConflictError) {
        this.fail(status, rest)
        return
      }
      if (rest.length > 0) failed = this.afterFailure(rest, results[i], status === 'unknown')
    } catch (error) {
      // The writer refused the whole batch (it is stopped): keep the rows for a later try.
      this.logger.error({ err: error, rows: batch.length }, 'writer refused event rows')
      failed = batch.map((out) => ({ ...out, failures: out.failures + 1 }))
    }
    this.syncMetrics()
    if (failed.length > 0) {
      // Ahead of the rows still waiting to be isolated one at a time (none otherwise).
      this.retryRows = [...failed, ...this.retryRows]
      this.counts.resubmitted += failed.length
      const attempt = Math.max(...failed.map((out) => out.failures))
      const pause = sleep(this.clock, backoffDelay(attempt, this.baseDelayMs, this.maxDelayMs, this.random))
      this.retrySleep = pause
      await pause.done
      this.retrySleep = undefined
      if (this.stopping && this.stopDeadlinePassed) {
        this.inFlight = false
        this.notifyFlushed()
        return
      }
    }
    this.inFlight = false
    this.pump()
  }

  /**
   * Per row of a written batch: whether it is stored (`true`), not (`false`), or could not
   * be checked (`'unknown'`: storage unavailable). An `already_exists` row is ours when a
   * commit applied but its acknowledgement was lost; the stored row at its seq is read to
   * make sure. A different row there means another process writes this node's log: an
   * {@link EventLogConflictError} in that row's place.
   */
  private async storedRows(
    batch: Outgoing[],
    results: readonly { status: string }[],
  ): Promise<(boolean | 'unknown' | EventLogConflictError)[]> {
    const stored: (boolean | 'unknown' | EventLogConflictError)[] = results.map((result) => result.status === 'ok')
    const existing = batch.filter((_, i) => results[i]?.status === 'already_exists')
    if (existing.length === 0) return stored
    const first = (existing[0] as Outgoing).row.seq
    const last = (existing[existing.length - 1] as Outgoing).row.seq
    let rows: EventRow[]
    try {
      rows = await this.storage.events.read({ nodeId: this.nodeId, fromSeq: first, limit: last - first + 1 })
    } catch (error) {
      if (!isRetryable(error)) throw error
      return results.map((result) => (result.status === 'ok' ? true : 'unknown'))
    }
    const bySeq = new Map(rows.map((row) => [row.seq, row]))
    batch.forEach((out, i) => {
      if (results[i]?.status !== 'already_exists') return
      const found = bySeq.get(out.row.seq)
      stored[i] =
        found !== undefined && sameRow(found, out.row)
          ? true
          : new EventLogConflictError(
              `the event log of node ${this.nodeId} found another row at seq ${out.row.seq}: another process writes this node's log (give each process its own nodeId)`,
            )
    })
    return stored
  }

  /**
   * What to hand over again when `rest` (the batch from its first row not stored on) failed
   * with `result`. A transient failure retries the rows as they are. A deterministic one
   * retries them one at a time, until the row storage refuses is alone: an event row is then
   * replaced by a gap over its id (same seq); a gap row is retried.
   */
  private afterFailure(rest: Outgoing[], result: { status: string; error?: { code: string } } | undefined, unknown: boolean): Outgoing[] {
    const transient =
      unknown || (result?.status === 'dead_lettered' && (result.error?.code === 'STORAGE_UNAVAILABLE' || result.error?.code === 'STOPPED'))
    const again = rest.map((out) => ({ ...out, failures: out.failures + 1 }))
    if (transient) return again
    if (rest.length > 1) {
      this.isolating = true
      return again
    }
    const out = rest[0] as Outgoing
    if (out.row.kind === 'gap') return again
    this.logger.error({ seq: out.row.seq, id: out.row.id, result }, 'event row refused by storage; persisting a gap in its place')
    this.counts.gapRows++
    const { seq, id, at } = out.row
    return [this.outgoing({ kind: 'gap', nodeId: this.nodeId, seq, fromId: id, toId: id, at }, null, out.acks, out.failures + 1)]
  }

  private durable(out: Outgoing): void {
    const row = out.row
    this.durableId = Math.max(this.durableId, lastId(row) + 1)
    this.counts.persisted++
    const gap = row.kind === 'gap' ? { fromId: row.fromId, toId: row.toId } : undefined
    for (const ack of out.acks) ack({ seq: row.seq, gap })
    this.emitter.emit('row', row)
  }

  /**
   * The log cannot go on (another process writes this node's log): every event not yet
   * durable is refused with `error`, the log takes no more, and `onFailure` listeners hear it.
   */
  private fail(error: Error, inFlight: Outgoing[]): void {
    this.failure = error
    this.inFlight = false
    this.logger.fatal({ err: error, unpersisted: this.nextId - this.durableId }, 'event log failed; it takes no more events')
    const refused = [...inFlight, ...this.retryRows.splice(0)].flatMap((out) => out.acks)
    for (const item of this.buffer.splice(0)) refused.push(...item.acks)
    this.bufferedEvents = 0
    for (const ack of refused) ack({ error })
    for (const waiter of this.blocked.splice(0)) waiter.reject(error)
    this.syncMetrics()
    for (const wake of this.flushWaiters.splice(0)) wake()
    this.emitter.emit('failed', error)
  }

  private notifyFlushed(): void {
    if (this.inFlight || this.buffer.length > 0 || this.retryRows.length > 0) return
    for (const wake of this.flushWaiters.splice(0)) wake()
  }

  /** Ids below this are durable (for live-only subscribers). */
  durableNextId(): number {
    return this.durableId
  }

  position(): number {
    return this.durableId
  }

  readOwn(fromId: number, limit: number): Promise<EventRow[]> {
    return this.storage.events.read({ nodeId: this.nodeId, fromId, limit })
  }

  /** Waits a backoff on the log's clock (attempt 1, 2, …). */
  pause(attempt: number): Promise<void> {
    return sleep(this.clock, backoffDelay(attempt, this.baseDelayMs, this.maxDelayMs, this.random)).done
  }

  countLag(): void {
    this.counts.lag++
    this.metrics.lag.inc({ node: this.nodeId })
  }

  listenerFailed(error: unknown): void {
    this.logger.error({ err: error }, 'event log subscriber threw; continuing')
  }

  read(options: { nodeId?: string; from?: number; limit?: number } = {}): Promise<EventRow[]> {
    if (options.nodeId !== undefined) assertNodeId(options.nodeId)
    return this.storage.events.read({
      ...(options.nodeId === undefined ? {} : { nodeId: options.nodeId }),
      fromId: options.from ?? 0,
      limit: options.limit ?? 1000,
    })
  }

  render(entry: LogEntry): string {
    return renderEntry(entry)
  }

  subscribe(listener: (entry: LogEntry) => void | Promise<void>, options: SubscribeOptions = {}): Subscription {
    if (options.from !== undefined && (!Number.isSafeInteger(options.from) || options.from < 0)) {
      throw new InvalidInputError(`from must be a non-negative integer, got ${String(options.from)}`)
    }
    const subscriber = new Subscriber(this, listener, positiveInt(options.buffer ?? this.subscriberBuffer, 'buffer'), options.from)
    const onRow = (row: EventRow): void => {
      subscriber.offer(row)
    }
    this.emitter.on('row', onRow)
    this.subscribers.add(subscriber)
    subscriber.live.catch((error: unknown) => {
      this.logger.error({ err: error }, 'subscriber replay failed')
    })
    return {
      live: subscriber.live,
      unsubscribe: () => {
        subscriber.close()
        this.emitter.off('row', onRow)
        this.subscribers.delete(subscriber)
      },
    }
  }

  flush(): Promise<void> {
    if (this.failure !== undefined) return Promise.reject(this.failure)
    if (!this.inFlight && this.buffer.length === 0 && this.retryRows.length === 0) return Promise.resolve()
    return new Promise<void>((resolve) => {
      this.flushWaiters.push(resolve)
    }).then(() => {
      if (this.failure !== undefined) throw this.failure
    })
  }

  onFailure(listener: (error: Error) => void): () => void {
    this.emitter.on('failed', listener)
    return () => {
      this.emitter.off('failed', listener)
    }
  }

  private stopDeadlinePassed = false
  private stopPromise: Promise<EventLogStopReport> | undefined

  stop(options: { deadlineMs?: number } = {}): Promise<EventLogStopReport> {
    this.stopPromise ??= this.drain(options.deadlineMs ?? 10_000)
    return this.stopPromise
  }

  private async drain(deadlineMs: number): Promise<EventLogStopReport> {
    this.stopping = true
    for (const waiter of this.blocked.splice(0))
      waiter.reject(new StoppedError(`event log ${this.nodeId} stopped before the event was admitted`))
    const deadlineState = { passed: false }
    const deadline = this.clock.setTimeout(() => {
      deadlineState.passed = true
      this.stopDeadlinePassed = true
      this.retrySleep?.cancel()
      for (const wake of this.flushWaiters.splice(0)) wake()
    }, deadlineMs)
    // A failed log has refused what was not durable; the report counts it.
    await this.flush().catch(() => undefined)
    this.clock.clearTimeout(deadline)
    const timedOut = deadlineState.passed || this.failure !== undefined
    const unpersisted = timedOut ? this.nextId - this.durableId : 0
    if (unpersisted > 0) this.logger.error({ unpersisted }, 'event log stopped with events not persisted')
    this.emitter.removeAllListeners()
    for (const subscriber of this.subscribers) subscriber.close()
    this.subscribers.clear()
    return { flushed: !timedOut, unpersisted }
  }

  stats(): EventLogStats {
    return {
      nextId: this.nextId,
      nextSeq: this.nextSeq,
      sent: this.counts.sent,
      invalid: this.counts.invalid,
      dropped: this.counts.dropped,
      gapRows: this.counts.gapRows,
      persistedRows: this.counts.persisted,
      buffered: this.buffer.length,
      resubmitted: this.counts.resubmitted,
      subscribers: this.subscribers.size,
      lagNotices: this.counts.lag,
    }
  }
}

/**
 * Opens the event log of `nodeId` on a storage, continuing its ids and seqs from the last
 * persisted row.
 */
export async function createEventLog(options: EventLogOptions): Promise<EventLog> {
  const nodeId = options.nodeId ?? 'local'
  assertNodeId(nodeId)
  const last = await options.storage.events.last(nodeId)
  return new LagAwareEventLog(nodeId, options, last)
}

/** Events the event-log actor accepts: transitions, sent by any actor. */
export type EventLogActorEvent = TransitionEvent & EventObject & { type: 'transition' }

/**
 * The event log as an XState actor (`systemId: 'eventLog'` in the runtime): actors
 * `sendTo` it `{ type: 'transition', at, queue, requestId, from, to, event }`.
 */
export function eventLogActor(log: EventLog): CallbackActorLogic<EventLogActorEvent> {
  return fromCallback<EventLogActorEvent>(({ receive }) => {
    receive(({ type: _type, ...transition }) => {
      log.send(transition)
    })
  })
}
