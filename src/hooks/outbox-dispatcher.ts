/**
 * The outbox dispatcher: delivers the outbox's due entries to their hooks, at least once.
 *
 * It reads due entries from storage, calls each entry's hook (at most `concurrency` calls
 * at once, one per entry), and settles the outcome through the writer: delivered, or a
 * failed attempt with the next one due after an exponential backoff with full jitter
 * (`backoffDelay`), or given up after `maxAttempts`. It wakes when told that entries were
 * committed ({@link OutboxDispatcher.wake}), when the earliest pending entry falls due (a
 * timer on the injected clock), and on start, so entries a crashed runtime left behind are
 * delivered after a restart.
 *
 * Hook failures are logged (pino) and counted, never thrown. Every timer goes through the
 * injected {@link Clock}, so `SimulatedClock` drives it in tests.
 *
 * @module
 */
import type { Logger } from 'pino'
import { Registry, type Counter } from 'prom-client'
import { backoffDelay, MAX_TIMER_MS, sleep, systemClock, type Clock } from '../actors/clock.js'
import { counter, silentLogger } from '../actors/observability.js'
import type { Writer } from '../actors/writer.js'
import { InvalidInputError, StorageClosedError, StoppedError, UnavailableError } from '../storage/errors.js'
import { OUTBOX_NEVER, type OutboxEntry, type OutboxKey, type OutboxSettlement, type Storage } from '../storage/types.js'
import { outboxIdempotencyKey, truncateText, validateHooks } from './outbox.js'
import type { Hook, HookContext, HookRetryOptions, LastGreenPayload, VerdictPayload } from './types.js'

/** Options of {@link createOutboxDispatcher}. */
export interface OutboxDispatcherOptions {
  /** Where the outbox is read. */
  storage: Storage
  /** How delivery outcomes are written (`outbox.settle`). */
  writer: Writer
  hooks: readonly Hook[]
  retry?: HookRetryOptions
  clock?: Clock
  logger?: Logger
  /** Randomness for the backoff jitter (default Math.random). */
  random?: () => number
  /** prom-client registry for `stovepipe_hook_deliveries_total` (default: a private one). */
  registry?: Registry
}

/** Counts since the dispatcher was created. */
export interface OutboxDispatcherStats {
  /** Hook calls that resolved (and were settled delivered). */
  delivered: number
  /** Hook calls that failed and will be retried. */
  failed: number
  /** Entries given up after `maxAttempts`. */
  gaveUp: number
  /** Hook calls under way. */
  inFlight: number
}

/** The dispatcher. Create with {@link createOutboxDispatcher}. */
export interface OutboxDispatcher {
  /** Starts delivering: reads what is due now and arms a timer for what is due later. Idempotent. */
  start(): void
  /** New entries were committed: look for due entries now. No-op unless started. */
  wake(): void
  /**
   * Stops: no new calls, aborts the calls under way (their signal), and waits up to
   * `deadlineMs` (default 10 000) for them to end. What was not delivered stays in the outbox.
   */
  stop(options?: { deadlineMs?: number }): Promise<void>
  /** Stops at once, like a crash: aborts the calls under way and waits for nothing. */
  halt(): void
  stats(): OutboxDispatcherStats
}

function positive(value: number, what: string, allowInfinity = false): number {
  if ((allowInfinity && value === Number.POSITIVE_INFINITY) || (Number.isSafeInteger(value) && value >= 1)) return value
  throw new InvalidInputError(`${what} must be a positive integer${allowInfinity ? ' or Infinity' : ''}, got ${String(value)}`)
}

function nonNegative(value: number, what: string): number {
  if (Number.isSafeInteger(value) && value >= 0) return value
  throw new InvalidInputError(`${what} must be a non-negative integer, got ${String(value)}`)
}

function describeError(error: unknown): string {
  if (error instanceof Error) return `${error.name}: ${error.message}`
  if (typeof error === 'string') return error
  return typeof error === 'object' && error !== null ? JSON.stringify(error) : String(error)
}

const keyText = (key: OutboxKey): string => `${key.queue}\n${key.requestId}\n${key.kind}\n${key.hook}`
const keyOf = (entry: OutboxEntry): OutboxKey => ({ queue: entry.queue, requestId: entry.requestId, kind: entry.kind, hook: entry.hook })

interface Call {
  controller: AbortController
  done: Promise<void>
}

class Dispatcher implements OutboxDispatcher {
  private readonly storage: Storage
  private readonly writer: Writer
  private readonly hooks: Map<string, Hook>
  private readonly clock: Clock
  private readonly logger: Logger
  private readonly random: () => number
  private readonly baseDelayMs: number
  private readonly maxDelayMs: number
  private readonly maxAttempts: number
  private readonly timeoutMs: number
  private readonly concurrency: number
  private readonly deliveries: Counter

  private running = false
  private stopped = false
  private pumping = false
  private again = false
  private readFailures = 0
  private timer: unknown = undefined
  private readonly calls = new Map<string, Call>()
  /** Entries whose settle write failed: not before this time, though storage says due. */
  private readonly held = new Map<string, number>()
  private readonly counts = { delivered: 0, failed: 0, gaveUp: 0 }
  private stopPromise: Promise<void> | undefined

  constructor(options: OutboxDispatcherOptions) {
    this.storage = options.storage
    this.writer = options.writer
    this.hooks = new Map(validateHooks(options.hooks).map((hook) => [hook.name, hook]))
    this.clock = options.clock ?? systemClock
    this.logger = (options.logger ?? silentLogger()).child({ component: 'hooks' })
    this.random = options.random ?? Math.random
    const retry = options.retry ?? {}
    this.baseDelayMs = nonNegative(retry.baseDelayMs ?? 1000, 'hookRetry.baseDelayMs')
    this.maxDelayMs = nonNegative(retry.maxDelayMs ?? 300_000, 'hookRetry.maxDelayMs')
    this.maxAttempts = positive(retry.maxAttempts ?? Number.POSITIVE_INFINITY, 'hookRetry.maxAttempts', true)
    this.timeoutMs = Math.min(MAX_TIMER_MS, positive(retry.timeoutMs ?? 60_000, 'hookRetry.timeoutMs'))
    this.concurrency = Math.min(1000, positive(retry.concurrency ?? 8, 'hookRetry.concurrency'))
    this.deliveries = counter(
      options.registry ?? new Registry(),
      'stovepipe_hook_deliveries_total',
      'Hook calls by outcome (delivered, failed, gave_up)',
      ['hook', 'kind', 'outcome'],
    )
  }

  private now(): number {
    return Math.max(0, Math.floor(this.clock.now()))
  }

  start(): void {
    if (this.running || this.stopped) return
    this.running = true
    this.logger.debug({ hooks: [...this.hooks.keys()] }, 'hook dispatcher started')
    this.wake()
  }

  wake(): void {
    if (this.running) void this.pump()
  }

  stats(): OutboxDispatcherStats {
    return { ...this.counts, inFlight: this.calls.size }
  }

  /** Reads due entries and starts their calls; loops while there may be more; arms the timer. */
  private async pump(): Promise<void> {
    if (this.pumping) {
      this.again = true
      return
    }
    this.pumping = true
    try {
      do {
        this.again = false
        await this.pumpOnce()
      } while (this.loopAgain())
      this.readFailures = 0
    } catch (error) {
      if (!this.running) return
      if (error instanceof StorageClosedError) {
        this.logger.warn({ err: error }, 'storage is closed; hook dispatcher halts')
        this.halt()
        return
      }
      this.readFailures++
      const delay = Math.max(1, backoffDelay(this.readFailures, Math.max(1, this.baseDelayMs), Math.max(1, this.maxDelayMs), this.random))
      this.logger.warn({ err: error, delayMs: delay }, 'outbox not read; retrying')
      this.arm(this.now() + delay)
    } finally {
      this.pumping = false
    }
  }

  /** Whether a pump should read again (a wake-up came, or a page was full) — set while it awaited. */
  private loopAgain(): boolean {
    return this.again && this.running
  }

  private async pumpOnce(): Promise<void> {
    if (this.calls.size >= this.concurrency) return // a call that ends pumps again
    const limit = Math.min(1000, this.concurrency + this.calls.size + this.held.size)
    // Every pending entry not given up, by nextAttemptAt: the due ones first, then the next to fall due.
    const entries = await this.storage.outbox.due({ before: OUTBOX_NEVER - 1, limit })
    if (!this.running) return
    const now = this.now()
    let next = Number.POSITIVE_INFINITY
    let launched = 0
    for (const entry of entries) {
      const key = keyText(entry)
      if (this.calls.has(key)) continue
      const at = Math.max(entry.nextAttemptAt, this.held.get(key) ?? 0)
      if (at > now) {
        next = Math.min(next, at)
        continue
      }
      if (this.calls.size >= this.concurrency) return
      this.held.delete(key)
      this.launch(key, entry)
      launched++
    }
    // A page that is not full holds every pending entry: holds of entries no longer pending
    // (settled since, e.g. by another process) are dropped.
    if (entries.length < limit && this.held.size > 0) {
      const pending = new Set(entries.map(keyText))
      for (const key of this.held.keys()) if (!pending.has(key)) this.held.delete(key)
    }
    const last = entries[entries.length - 1]
    // A full page whose last entry is due may hide more due entries: read again, unless this
    // page launched nothing (every entry on it in flight or held after a failed settle),
    // which reading again at once would repeat forever; its earliest hold is waited for then.
    if (launched > 0 && entries.length === limit && last !== undefined && last.nextAttemptAt <= now) this.again = true
    else this.arm(next)
  }

  /** Arms the wake-up timer for `at` (replacing any), or clears it for Infinity. */
  private arm(at: number): void {
    if (this.timer !== undefined) this.clock.clearTimeout(this.timer)
    this.timer = undefined
    if (!this.running || at === Number.POSITIVE_INFINITY) return
    const delay = Math.min(MAX_TIMER_MS, Math.max(0, at - this.now()))
    this.timer = this.clock.setTimeout(() => {
      this.timer = undefined
      this.wake()
    }, delay)
  }

  private launch(key: string, entry: OutboxEntry): void {
    const controller = new AbortController()
    const done = this.deliver(entry, controller).then(
      () => {
        this.ended(key)
      },
      (error: unknown) => {
        // deliver() handles its own errors; reaching here is a bug, and it is loud.
        this.logger.error({ err: error, hook: entry.hook, requestId: entry.requestId }, 'hook delivery failed unexpectedly')
        this.ended(key)
      },
    )
    this.calls.set(key, { controller, done })
  }

  private ended(key: string): void {
    this.calls.delete(key)
    this.wake()
  }

  /** Calls the hook, then settles the outcome. Never rejects. */
  private async deliver(entry: OutboxEntry, controller: AbortController): Promise<void> {
    const attempt = entry.attempts + 1
    const hook = this.hooks.get(entry.hook)
    const log = { hook: entry.hook, kind: entry.kind, queue: entry.queue, requestId: entry.requestId, attempt }
    const method = hook === undefined ? undefined : entry.kind === 'verdict' ? hook.onVerdict : hook.onLastGreen
    if (hook !== undefined && typeof method !== 'function') {
      const lastError = `hook ${hook.name} has no ${entry.kind === 'verdict' ? 'onVerdict' : 'onLastGreen'}; nothing to deliver`
      this.logger.warn(log, lastError)
      await this.settle(entry, { attempts: entry.attempts, nextAttemptAt: OUTBOX_NEVER, deliveredAt: null, lastError }, 0)
      return
    }
    let failure: unknown
    try {
      if (hook === undefined || method === undefined) throw new InvalidInputError(`no hook named ${entry.hook} is configured`)
      const context: HookContext = { signal: controller.signal, idempotencyKey: outboxIdempotencyKey(entry), attempt }
      const call = method.call(hook, entry.payload as VerdictPayload & LastGreenPayload, context)
      await this.bounded(Promise.resolve(call), controller, hook.name)
    } catch (error) {
      failure = error
    }
    if (failure !== undefined && this.stopped) {
      this.logger.debug({ ...log, err: failure }, 'hook call stopped; the entry stays in the outbox')
      return
    }
    const at = this.now()
    if (failure === undefined) {
      this.counts.delivered++
      this.deliveries.inc({ hook: entry.hook, kind: entry.kind, outcome: 'delivered' })
      this.logger.debug(log, 'hook delivered')
      await this.settle(entry, { attempts: attempt, nextAttemptAt: entry.nextAttemptAt, deliveredAt: at, lastError: null }, 0)
      return
    }
    const message = truncateText(describeError(failure), 3000)
    if (attempt >= this.maxAttempts) {
      this.counts.gaveUp++
      this.deliveries.inc({ hook: entry.hook, kind: entry.kind, outcome: 'gave_up' })
      this.logger.error({ ...log, err: failure }, 'hook delivery failed for the last time; giving up')
      const lastError = `gave up after ${attempt} attempt(s): ${message}`
      await this.settle(entry, { attempts: attempt, nextAttemptAt: OUTBOX_NEVER, deliveredAt: null, lastError }, 0)
      return
    }
    const delay = backoffDelay(attempt, this.baseDelayMs, this.maxDelayMs, this.random)
    this.counts.failed++
    this.deliveries.inc({ hook: entry.hook, kind: entry.kind, outcome: 'failed' })
    this.logger.warn({ ...log, err: failure, retryInMs: delay }, 'hook delivery failed; it will be retried')
    await this.settle(entry, { attempts: attempt, nextAttemptAt: at + delay, deliveredAt: null, lastError: message }, delay)
  }

  /** Waits for a hook call, failing it when it outlasts the timeout or the dispatcher stops. */
  private bounded(call: Promise<void>, controller: AbortController, name: string): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const onAbort = (): void => {
        reject(controller.signal.reason instanceof Error ? controller.signal.reason : new StoppedError('the hook call was aborted'))
      }
      const timer = this.clock.setTimeout(() => {
        controller.abort(new UnavailableError(`hook ${name} did not finish within ${this.timeoutMs} ms`))
      }, this.timeoutMs)
      controller.signal.addEventListener('abort', onAbort, { once: true })
      const finish = (): void => {
        this.clock.clearTimeout(timer)
        controller.signal.removeEventListener('abort', onAbort)
      }
      call.then(
        () => {
          finish()
          resolve()
        },
        (error: unknown) => {
          finish()
          reject(error instanceof Error ? error : new Error(describeError(error)))
        },
      )
    })
  }

  /** Writes the outcome through the writer; if that fails, holds the entry back for `holdMs` (at least the base delay). */
  private async settle(entry: OutboxEntry, settlement: OutboxSettlement, holdMs: number): Promise<void> {
    const key = keyOf(entry)
    const log = { hook: entry.hook, kind: entry.kind, requestId: entry.requestId }
    let problem: unknown
    try {
      const [result] = await this.writer.write([{ op: 'outbox.settle', key, ...settlement }])
      if (result?.status === 'ok') return
      if (result?.status === 'version_mismatch') {
        this.logger.debug(log, 'outbox entry was already delivered (another dispatcher)')
        return
      }
      if (result?.status === 'not_found') {
        this.logger.error(log, 'outbox entry vanished before it was settled')
        return
      }
      problem = result?.status === 'dead_lettered' ? result.error : new Error(`unexpected result ${result?.status ?? 'none'}`)
    } catch (error) {
      problem = error
    }
    this.logger.error({ ...log, err: problem }, 'hook delivery outcome not stored; the entry will be attempted again')
    this.held.set(keyText(key), this.now() + Math.max(holdMs, this.baseDelayMs, 1))
  }

  halt(): void {
    this.running = false
    this.stopped = true
    if (this.timer !== undefined) this.clock.clearTimeout(this.timer)
    this.timer = undefined
    for (const call of this.calls.values()) call.controller.abort(new StoppedError('the hook dispatcher stopped'))
  }

  stop(options: { deadlineMs?: number } = {}): Promise<void> {
    this.stopPromise ??= this.drain(nonNegative(options.deadlineMs ?? 10_000, 'deadlineMs'))
    return this.stopPromise
  }

  private async drain(deadlineMs: number): Promise<void> {
    this.halt()
    const calls = [...this.calls.values()].map((call) => call.done)
    if (calls.length === 0) return
    const deadline = sleep(this.clock, deadlineMs)
    await Promise.race([Promise.all(calls), deadline.done])
    deadline.cancel()
    if (this.calls.size > 0) this.logger.warn({ inFlight: this.calls.size }, 'hook calls still under way at the stop deadline')
  }
}

/** Creates an outbox dispatcher; call `start()` to begin delivering. */
export function createOutboxDispatcher(options: OutboxDispatcherOptions): OutboxDispatcher {
  return new Dispatcher(options)
}
