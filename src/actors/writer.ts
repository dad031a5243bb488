/**
 * The group-commit writer: the path every durable write of the runtime takes.
 *
 * Producers call {@link Writer.write} with a few ops and await their results. Ops from all
 * producers queue in arrival order; one batch at a time is committed with one
 * `storage.commit` (a batch closes at `maxBatch` ops or `lingerMs` after its first op, and
 * whatever queued during a commit goes out right after it). Because batches commit one
 * after another and a batch is split only in order, every key sees its ops committed in
 * the order they were written (FIFO per request, per queue).
 *
 * Guarantees (DESIGN.md, Writer 1–9):
 * - bounded memory: at most `capacity` ops accepted and not finished; further writes wait;
 * - transient failures (`retryable` errors) retry the batch with exponential backoff and
 *   full jitter on the injected clock, up to `retry.maxAttempts` commits;
 * - a deterministic failure splits the batch in halves until the poison op stands alone,
 *   so its neighbours commit;
 * - an atomic write (`write(ops, { atomic: true })`) is never split: its ops commit in one
 *   transaction (a batch closes early or late rather than cut it), and if one of them is
 *   poison the whole write is dead-lettered with that error;
 * - conservation: every accepted op ends committed (its `WriteResult`) or dead-lettered
 *   (`{ status: 'dead_lettered' }`), never dropped; dead letters go to the `dead_letters`
 *   table when storage works and are kept in memory (and reported) when it does not;
 * - `stop()` refuses new ops, drains within a deadline and dead-letters what is left.
 *
 * A retried batch is idempotent: each op carries its own key or version condition, so an
 * attempt that committed but lost its acknowledgement reports `already_exists` or
 * `version_mismatch` on the retry instead of writing twice.
 *
 * @module
 */
import type { Logger } from 'pino'
import { Registry, type Counter, type Gauge, type Histogram } from 'prom-client'
import { InvalidInputError, StorageClosedError, StoppedError, StovepipeError, isRetryable } from '../storage/errors.js'
import type { DeadLetter, Json, Storage, WriteOp, WriteResult } from '../storage/types.js'
import { COMMIT_PREPARED, type MaybePreparedCommitter } from '../storage/facade.js'
import { prepareOps, type PreparedOp } from '../storage/validation.js'
import { backoffDelay, sleep, systemClock, type Clock } from './clock.js'
import { counter, histogram, sampledGauge, silentLogger } from './observability.js'

const DEADLINE_PASSED = 'the drain deadline passed before the op was committed'

/** Retry policy for transient storage failures. */
export interface RetryOptions {
  /** Commits of a batch before its ops are dead-lettered (default 5). */
  maxAttempts?: number
  /** Backoff ceiling of the first retry, doubled each time (default 50 ms). */
  baseDelayMs?: number
  /** Largest backoff ceiling (default 5000 ms). */
  maxDelayMs?: number
}

/** Options of {@link createWriter}. */
export interface WriterOptions {
  storage: Storage
  /** Ops accepted and not yet finished, at most (default 10 000). */
  capacity?: number
  /** Ops per commit, at most (default 1000). */
  maxBatch?: number
  /** How long a batch waits for company after its first op (default 1 ms; 0 = until the current turn of the event loop ends). */
  lingerMs?: number
  retry?: RetryOptions
  clock?: Clock
  logger?: Logger
  /** prom-client registry for the metrics (default: a private one, see {@link Writer.registry}). */
  registry?: Registry
  /** Source of randomness for jitter (default Math.random). */
  random?: () => number
  /** Name used in dead-letter ids and metric labels (default `writer-<random>`). */
  name?: string
  /** Dead letters kept in memory while storage cannot take them (default 10 000). */
  maxUnpersistedDeadLetters?: number
}

/** The outcome of one written op: its commit result, or why it was dead-lettered. */
export type WriterResult = WriteResult | { status: 'dead_lettered'; error: { code: string; message: string } }

/** What {@link Writer.stop} did. */
export interface DrainReport {
  /** Ops committed while draining. */
  committed: number
  /** Ops dead-lettered while draining (deadline passed, storage down, poison). */
  deadLettered: number
  /** True when the deadline passed before the writer was empty. */
  timedOut: boolean
  /**
   * Ops whose commit had not returned when the deadline passed (storage hung): their outcome
   * is unknown; their writes settle if that commit ever returns (e.g. when storage is closed).
   */
  inFlight: number
  /** Dead letters that could not be stored, with their ops: report them elsewhere. */
  unpersisted: DeadLetter[]
}

/** Counters since the writer was created. */
export interface WriterStats {
  accepted: number
  committed: number
  deadLettered: number
  /** Accepted and not finished. */
  pending: number
  /** Producers waiting for room. */
  waiting: number
  /** True while a commit (or its retry backoff) is under way. */
  flushing: boolean
  batches: number
  retries: number
  /** Dead letters held in memory, not yet stored. */
  unpersistedDeadLetters: number
  /** Dead letters whose details were logged but not kept because memory was full. */
  deadLettersNotKept: number
}

/**
 * Writes ops whose prepared form the caller built and validated itself (the event log
 * does), skipping the writer's own validation. `prepared[i]` must be what `prepareOps`
 * makes of `ops[i]`.
 *
 * @internal
 */
export const WRITE_PREPARED = Symbol('stovepipe.writePrepared')

/** Options of one {@link Writer.write}. */
export interface WriteOptions {
  /** Never split these ops across transactions (default false: ops may be split, see poison isolation). */
  atomic?: boolean
}

/** The writer. Create with {@link createWriter}. */
export interface Writer {
  /**
   * Queues ops; resolves with one result per op once committed or dead-lettered. With
   * `atomic`, the ops always share one transaction (all dead-lettered together if one is poison).
   */
  write(ops: readonly WriteOp[], options?: WriteOptions): Promise<WriterResult[]>
  /**
   * Refuses new ops, drains within `deadlineMs` (default 10 000), reports. Returns by the
   * deadline even while a commit hangs (see {@link DrainReport.inFlight}). Idempotent.
   */
  stop(options?: { deadlineMs?: number }): Promise<DrainReport>
  stats(): WriterStats
  /** Dead letters not yet stored (storage was failing), oldest first. */
  unpersistedDeadLetters(): readonly DeadLetter[]
  /** The registry holding this writer's metrics. */
  readonly registry: Registry
  readonly name: string
  /** @internal */
  [WRITE_PREPARED]?: (ops: readonly WriteOp[], prepared: readonly PreparedOp[], options?: WriteOptions) => Promise<WriterResult[]>
}

/** @internal One write: its ops commit together when atomic, and it resolves once all are settled. */
export interface Job {
  /** Never split across transactions. */
  atomic: boolean
  /** Number of ops. */
  size: number
  results: WriterResult[]
  remaining: number
  resolve: (results: WriterResult[]) => void
}

/** @internal One op of a write, queued. */
export interface Entry {
  op: WriteOp
  /** The op as validated at write() time: a detached copy, committed without re-validation. */
  prepared: PreparedOp
  job: Job
  index: number
}

/**
 * Where to split a failing batch: near the middle, never inside an atomic job; undefined
 * when it cannot be split (one op, or one atomic job).
 */
function splitPoint(entries: readonly Entry[]): number | undefined {
  if (entries.length < 2) return undefined
  const middle = entries.length >> 1
  const at = entries[middle] as Entry
  if (!at.job.atomic || at.index === 0) return middle
  const start = middle - at.index // the job's first entry
  if (start > 0) return start
  const end = start + at.job.size // just after the job
  return end < entries.length ? end : undefined
}

/**
 * The writer's FIFO of accepted entries, with O(1) amortized shift.
 *
 * @internal
 */
export class EntryQueue {
  private items: Entry[] = []
  private head = 0
  get length(): number {
    return this.items.length - this.head
  }
  push(entry: Entry): void {
    this.items.push(entry)
  }
  /** Up to `n` entries, more when stopping at `n` would cut an atomic job (a job's entries are contiguous). */
  take(n: number): Entry[] {
    let end = Math.min(this.items.length, this.head + n)
    const last = this.items[end - 1]
    if (last !== undefined && last.job.atomic) end += last.job.size - 1 - last.index
    const out = this.items.slice(this.head, end)
    this.head += out.length
    // Taken entries must not stay reachable (each holds its op, its prepared JSON and its
    // job): drop them once the queue is empty; while it is not, compact once more than 1024
    // taken entries are most of the array.
    if (this.head === this.items.length) {
      this.items = []
      this.head = 0
    } else if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head)
      this.head = 0
    }
    return out
  }
  /** Array slots in use, taken entries included (for tests: taken entries are released). */
  get retained(): number {
    return this.items.length
  }
}

interface Waiter {
  count: number
  admit: () => void
  refuse: (error: Error) => void
}

interface Metrics {
  pending: Gauge
  batchSize: Histogram
  flushSeconds: Histogram
  retries: Counter
  deadLetters: Counter
  committed: Counter
}

function positiveInt(value: number, what: string, allowZero = false): number {
  if (!Number.isSafeInteger(value) || value < (allowZero ? 0 : 1)) {
    throw new InvalidInputError(`${what} must be a ${allowZero ? 'non-negative' : 'positive'} integer, got ${String(value)}`)
  }
  return value
}

function describeError(error: unknown): { code: string; message: string } {
  const code = error instanceof StovepipeError ? error.code : 'UNEXPECTED'
  const message = error instanceof Error ? error.message : String(error)
  return { code, message: message.length > 1000 ? `${message.slice(0, 1000)}…` : message }
}

const MAX_LETTER_OP_CHARS = 1024 * 1024

class GroupCommitWriter implements Writer {
  readonly registry: Registry
  readonly name: string
  private readonly storage: MaybePreparedCommitter
  private readonly capacity: number
  private readonly maxBatch: number
  private readonly lingerMs: number
  private readonly maxAttempts: number
  private readonly baseDelayMs: number
  private readonly maxDelayMs: number
  private readonly clock: Clock
  private readonly logger: Logger
  private readonly random: () => number
  private readonly maxUnpersisted: number
  private readonly metrics: Metrics
  /** Removes this writer's sampler of the pending gauge (at stop). */
  private readonly unsample: () => void

  private readonly queue = new EntryQueue()
  private readonly waiters: Waiter[] = []
  private pendingCount = 0
  private flushing = false
  private lingerTimer: unknown = undefined
  private lingerArmed = false
  private stopping = false
  private deadlinePassed = false
  private currentSleep: { cancel: () => void } | undefined
  private stopPromise: Promise<DrainReport> | undefined
  private idleWaiters: (() => void)[] = []
  private readonly unpersisted: DeadLetter[] = []
  private letterSeq = 0
  private readonly counts = { accepted: 0, committed: 0, deadLettered: 0, batches: 0, retries: 0, notKept: 0 }

  constructor(options: WriterOptions) {
    this.storage = options.storage
    this.capacity = positiveInt(options.capacity ?? 10_000, 'capacity')
    this.maxBatch = positiveInt(options.maxBatch ?? 1000, 'maxBatch')
    this.lingerMs = positiveInt(options.lingerMs ?? 1, 'lingerMs', true)
    this.maxAttempts = positiveInt(options.retry?.maxAttempts ?? 5, 'retry.maxAttempts')
    this.baseDelayMs = positiveInt(options.retry?.baseDelayMs ?? 50, 'retry.baseDelayMs', true)
    this.maxDelayMs = positiveInt(options.retry?.maxDelayMs ?? 5000, 'retry.maxDelayMs', true)
    this.maxUnpersisted = positiveInt(options.maxUnpersistedDeadLetters ?? 10_000, 'maxUnpersistedDeadLetters')
    this.clock = options.clock ?? systemClock
    this.logger = (options.logger ?? silentLogger()).child({ component: 'writer' })
    this.random = options.random ?? Math.random
    this.name = options.name ?? `writer-${Math.floor(Math.random() * 2 ** 32).toString(36)}`
    if (!/^[A-Za-z0-9._-]{1,64}$/.test(this.name))
      throw new InvalidInputError(`writer name must match [A-Za-z0-9._-]{1,64}, got ${this.name}`)
    this.registry = options.registry ?? new Registry()
    const labels = ['writer']
    const pending = sampledGauge(
      this.registry,
      'stovepipe_writer_pending_ops',
      'Ops accepted and not yet committed or dead-lettered',
      labels,
    )
    this.unsample = pending.sample(() => {
      pending.gauge.set({ writer: this.name }, this.pendingCount)
    })
    this.metrics = {
      pending: pending.gauge,
      batchSize: histogram(
        this.registry,
        'stovepipe_writer_batch_size',
        'Ops per storage commit',
        labels,
        [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500],
      ),
      flushSeconds: histogram(
        this.registry,
        'stovepipe_writer_flush_seconds',
        'Duration of one storage commit',
        labels,
        [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      ),
      retries: counter(this.registry, 'stovepipe_writer_retries_total', 'Commits retried after a transient failure', labels),
      deadLetters: counter(this.registry, 'stovepipe_writer_dead_letters_total', 'Ops dead-lettered', labels),
      committed: counter(this.registry, 'stovepipe_writer_committed_ops_total', 'Ops committed', labels),
    }
    this.metrics.pending.set({ writer: this.name }, 0)
    for (const series of [this.metrics.retries, this.metrics.deadLetters, this.metrics.committed]) series.inc({ writer: this.name }, 0)
  }

  async write(ops: readonly WriteOp[], options: WriteOptions = {}): Promise<WriterResult[]> {
    if (this.stopping) throw new StoppedError(`writer ${this.name} is stopped; it accepts no new ops`)
    return this.accept(ops, prepareOps(ops), options.atomic === true) // bad input: a typed error now, nothing accepted
  }

  /** {@link WRITE_PREPARED}: ops the caller validated into `prepared` itself. */
  [WRITE_PREPARED](ops: readonly WriteOp[], prepared: readonly PreparedOp[], options: WriteOptions = {}): Promise<WriterResult[]> {
    if (this.stopping) return Promise.reject(new StoppedError(`writer ${this.name} is stopped; it accepts no new ops`))
    return this.accept(ops, prepared, options.atomic === true)
  }

  private async accept(ops: readonly WriteOp[], prepared: readonly PreparedOp[], atomic: boolean): Promise<WriterResult[]> {
    if (ops.length === 0) return []
    if (ops.length > this.capacity) {
      throw new InvalidInputError(`a write of ${ops.length} ops exceeds the writer capacity of ${this.capacity}`)
    }
    // Room is reserved (pendingCount) when a write is admitted, so nothing overtakes it.
    if (this.waiters.length > 0 || this.pendingCount + ops.length > this.capacity) {
      await new Promise<void>((admit, refuse) => {
        this.waiters.push({ count: ops.length, admit, refuse })
      })
    } else {
      this.pendingCount += ops.length
    }
    return new Promise<WriterResult[]>((resolve) => {
      const job: Job = {
        atomic: atomic && ops.length > 1,
        size: ops.length,
        results: new Array<WriterResult>(ops.length),
        remaining: ops.length,
        resolve,
      }
      // A storage without the prepared path (e.g. a wrapper) commits the ops themselves: a
      // copy of them as written, so a caller changing its objects afterwards changes nothing.
      const own = this.storage[COMMIT_PREPARED] === undefined ? structuredClone(ops) : ops
      own.forEach((op, index) => {
        this.queue.push({ op, prepared: prepared[index] as PreparedOp, job, index })
      })
      this.counts.accepted += ops.length
      this.kick()
    })
  }

  /** Starts a flush now, or arms the linger timer for the batch's first op. */
  private kick(): void {
    if (this.flushing || this.queue.length === 0) return
    if (this.queue.length >= this.maxBatch || this.stopping) {
      this.disarmLinger()
      void this.flushLoop()
      return
    }
    if (this.lingerArmed) return
    this.lingerArmed = true
    const fire = (): void => {
      this.lingerArmed = false
      this.lingerTimer = undefined
      void this.flushLoop()
    }
    if (this.lingerMs === 0) setImmediate(fire)
    else this.lingerTimer = this.clock.setTimeout(fire, this.lingerMs)
  }

  private disarmLinger(): void {
    if (this.lingerTimer !== undefined) this.clock.clearTimeout(this.lingerTimer)
    this.lingerTimer = undefined
    this.lingerArmed = false
  }

  private async flushLoop(): Promise<void> {
    if (this.flushing) return
    this.flushing = true
    try {
      while (this.queue.length > 0) {
        if (this.deadlinePassed) {
          this.deadLetter(this.queue.take(this.queue.length), new StoppedError(DEADLINE_PASSED), 0)
          break
        }
        await this.commitEntries(this.queue.take(this.maxBatch))
        await this.persistDeadLetters()
      }
    } catch (error) {
      // commitEntries settles every entry itself; reaching here is a bug, and it is loud.
      this.logger.error({ err: error }, 'writer flush loop failed unexpectedly')
    } finally {
      this.flushing = false
    }
    if (this.queue.length > 0) this.kick()
    else this.notifyIdle()
  }

  /** Commits entries as one batch, retrying transient failures and isolating poison. */
  private async commitEntries(entries: Entry[]): Promise<void> {
    for (let failures = 0; ;) {
      if (this.deadlinePassed) {
        this.deadLetter(entries, new StoppedError(DEADLINE_PASSED), failures)
        return
      }
      const started = performance.now()
      try {
        const results = await this.commit(entries)
        this.metrics.flushSeconds.observe({ writer: this.name }, (performance.now() - started) / 1000)
        this.metrics.batchSize.observe({ writer: this.name }, entries.length)
        this.counts.batches++
        entries.forEach((entry, i) => {
          this.finish(
            entry,
            results[i] ?? { status: 'dead_lettered', error: { code: 'STORAGE_FAILED', message: 'storage returned no result for this op' } },
          )
        })
        this.admitWaiters() // once per batch, not once per op
        this.counts.committed += entries.length
        this.metrics.committed.inc({ writer: this.name }, entries.length)
        return
      } catch (error) {
        failures++
        if (isRetryable(error)) {
          if (failures >= this.maxAttempts) {
            this.deadLetter(entries, error, failures)
            return
          }
          this.counts.retries++
          this.metrics.retries.inc({ writer: this.name })
          const delay = backoffDelay(failures, this.baseDelayMs, this.maxDelayMs, this.random)
          this.logger.warn({ err: error, failures, delayMs: delay, ops: entries.length }, 'commit failed transiently; retrying')
          const pause = sleep(this.clock, delay)
          this.currentSleep = pause
          await pause.done
          this.currentSleep = undefined
          continue
        }
        const middle = splitPoint(entries)
        if (middle === undefined || error instanceof StorageClosedError) {
          this.deadLetter(entries, error, failures)
          return
        }
        // A deterministic failure: isolate the op (or atomic write) causing it, committing the rest in order.
        await this.commitEntries(entries.slice(0, middle))
        await this.commitEntries(entries.slice(middle))
        return
      }
    }
  }

  private commit(entries: Entry[]): Promise<WriteResult[]> {
    const fast = this.storage[COMMIT_PREPARED]
    return fast === undefined ? this.storage.commit(entries.map((e) => e.op)) : fast(entries.map((e) => e.prepared))
  }

  /** Settles one entry; the caller admits waiting writes once the batch is done. */
  private finish(entry: Entry, result: WriterResult): void {
    const { job } = entry
    job.results[entry.index] = result
    job.remaining--
    if (job.remaining === 0) job.resolve(job.results)
    this.pendingCount--
  }

  private admitWaiters(): void {
    for (let next = this.waiters[0]; next !== undefined; next = this.waiters[0]) {
      if (this.pendingCount + next.count > this.capacity) break
      this.waiters.shift()
      this.pendingCount += next.count
      next.admit()
    }
  }

  private deadLetter(entries: Entry[], error: unknown, attempts: number): void {
    if (entries.length === 0) return
    const described = describeError(error)
    for (const entry of entries) {
      const letter = this.letterFor(entry.op, described, attempts)
      this.logger.error({ deadLetter: letter }, 'op dead-lettered')
      if (this.unpersisted.length < this.maxUnpersisted) this.unpersisted.push(letter)
      else this.counts.notKept++
      this.counts.deadLettered++
      this.metrics.deadLetters.inc({ writer: this.name })
      this.finish(entry, { status: 'dead_lettered', error: described })
    }
    this.admitWaiters() // once per batch, not once per op
  }

  private letterFor(op: WriteOp, error: { code: string; message: string }, attempts: number): DeadLetter {
    let kept = op as unknown as Json
    if (JSON.stringify(kept).length > MAX_LETTER_OP_CHARS) kept = { op: op.op, note: 'op too large to keep in a dead letter' }
    return { id: `${this.name}:${++this.letterSeq}`, at: Math.max(0, Math.floor(this.clock.now())), op: kept, error, attempts }
  }

  /** Stores the dead letters held in memory, when storage takes them; keeps them otherwise. */
  private async persistDeadLetters(): Promise<void> {
    while (this.unpersisted.length > 0) {
      const letters = this.unpersisted.slice(0, 100)
      try {
        await this.storage.commit(letters.map((letter) => ({ op: 'deadLetter.put', letter })))
        this.unpersisted.splice(0, letters.length)
      } catch (error) {
        this.logger.warn({ err: error, held: this.unpersisted.length }, 'dead letters not stored yet; keeping them in memory')
        return
      }
    }
  }

  private notifyIdle(): void {
    if (this.queue.length > 0 || this.flushing) return
    for (const wake of this.idleWaiters.splice(0)) wake()
  }

  private whenIdle(): Promise<void> {
    if (this.queue.length === 0 && !this.flushing) return Promise.resolve()
    return new Promise((resolve) => this.idleWaiters.push(resolve))
  }

  stop(options: { deadlineMs?: number } = {}): Promise<DrainReport> {
    this.stopPromise ??= this.drain(positiveInt(options.deadlineMs ?? 10_000, 'deadlineMs', true))
    return this.stopPromise
  }

  private async drain(deadlineMs: number): Promise<DrainReport> {
    const before = { committed: this.counts.committed, deadLettered: this.counts.deadLettered }
    this.stopping = true
    for (const waiter of this.waiters.splice(0)) {
      waiter.refuse(new StoppedError(`writer ${this.name} stopped before this write was accepted`))
    }
    let deadline: unknown
    // Returns by the deadline even when a commit hangs (a connection that died silently).
    const deadlinePassed = new Promise<void>((resolve) => {
      deadline = this.clock.setTimeout(() => {
        this.deadlinePassed = true
        this.currentSleep?.cancel()
        resolve()
      }, deadlineMs)
    })
    this.disarmLinger()
    this.kick()
    const work = this.whenIdle().then(() => this.persistDeadLetters())
    await Promise.race([work, deadlinePassed])
    if (this.deadlinePassed) {
      // Ops queued behind a commit still under way will not be committed now. What the flush
      // loop holds settles within a turn (its backoff was cancelled) unless a storage call
      // hangs (a connection that died silently): that one is reported in flight.
      this.deadLetter(this.queue.take(this.queue.length), new StoppedError(DEADLINE_PASSED), 0)
      await Promise.race([work, new Promise((resolve) => setImmediate(resolve))])
    }
    this.clock.clearTimeout(deadline)
    const report: DrainReport = {
      committed: this.counts.committed - before.committed,
      deadLettered: this.counts.deadLettered - before.deadLettered,
      timedOut: this.deadlinePassed,
      inFlight: this.pendingCount,
      unpersisted: [...this.unpersisted],
    }
    // The gauge keeps its last value (nothing pending, or what the deadline left) once stopped.
    this.metrics.pending.set({ writer: this.name }, this.pendingCount)
    this.unsample()
    this.logger.info({ ...report, unpersisted: report.unpersisted.length }, 'writer stopped')
    return report
  }

  stats(): WriterStats {
    return {
      accepted: this.counts.accepted,
      committed: this.counts.committed,
      deadLettered: this.counts.deadLettered,
      pending: this.pendingCount,
      waiting: this.waiters.length,
      flushing: this.flushing,
      batches: this.counts.batches,
      retries: this.counts.retries,
      unpersistedDeadLetters: this.unpersisted.length,
      deadLettersNotKept: this.counts.notKept,
    }
  }

  unpersistedDeadLetters(): readonly DeadLetter[] {
    return [...this.unpersisted]
  }
}

/** Creates a group-commit writer over a storage. */
export function createWriter(options: WriterOptions): Writer {
  return new GroupCommitWriter(options)
}
