/**
 * One queue as the runtime hosts it: its actor, ingest (pipelined, numbered in order), the
 * persistence of the queue's snapshot (CAS, coalesced), waiting for requests, and the
 * public {@link QueueHandle}.
 *
 * @internal
 * @module
 */
import type { Logger } from 'pino'
import type { Clock } from '../actors/clock.js'
import type { Writer, WriterResult } from '../actors/writer.js'
import type { LastGreenPayload, LastGreenRef } from '../hooks/types.js'
import {
  queueMachine,
  requestActorId,
  type InFlight,
  type QueueActor,
  type QueueConfig,
  type QueueContext,
  type QueueEvent,
  type QueueLastGreen,
} from '../machines/queue.js'
import type { AnyActorRef } from 'xstate'
import { newRequestContext, type RequestContext } from '../machines/request.js'
import type { SourceControl } from '../sourcecontrol/types.js'
import { InvalidInputError, NotFoundError, StoppedError, StorageFailedError, StorageUnavailableError } from '../storage/errors.js'
import {
  FINAL_REQUEST_STATES,
  type Json,
  type Page,
  type QueueRecord,
  type RequestRecord,
  type RequestState,
  type Storage,
  type WriteOp,
} from '../storage/types.js'
import { parseRequestId } from '../storage/validation.js'
import { requestRecord, writeFailure } from './request-services.js'
import { copyView, describeRequest, type RequestView } from './views.js'

/** What `ingest` resolves with. */
export interface IngestResult {
  /** The request validating the head (`request/<queue>/<n>`). */
  id: string
  /** The head's URI. */
  uri: string
  /** True when the head already had a request (it was reported before). */
  deduplicated: boolean
}

/** What `cancel` did. */
export interface CancelResult {
  id: string
  /** True when the request is now cancelled; false when it had already ended or was recording. */
  cancelled: boolean
  state: RequestState
}

/** The last green commit of a queue, as the API returns it. */
export interface LastGreenView {
  uri: string
  requestId: string
  at: number
}

/** A queue, as the runtime API exposes it. */
export interface QueueHandle {
  readonly name: string
  config(): QueueConfig
  /** Resolves the ref's head through source control and mints (or finds) its request. */
  ingest(): Promise<IngestResult>
  /**
   * Resolves with the request once it is in `state` (default `recorded`), or once it has
   * ended in another final state (check `state` of the result).
   */
  waitFor(id: string, state?: RequestState): Promise<RequestView>
  /** The newest green commit, or undefined when there is none. */
  lastGreen(): LastGreenView | undefined
  /** Recorded requests, newest first: the greenness history. */
  history(options?: { cursor?: string; limit?: number }): Promise<Page<RequestView>>
  /** Cancels a request that has not reached recording (its build is aborted, no fact is written). */
  cancel(id: string): Promise<CancelResult>
  /** Requests in flight, oldest first. */
  inFlight(): { id: string; n: number; uri: string; state: string }[]
  /** Counts since the queue was created. */
  stats(): QueueContext['stats']
}

/** What a queue host needs from the runtime (one object, shared by every queue). */
export interface QueueHostDeps {
  storage: Storage
  writer: Writer
  clock: Clock
  logger: Logger
  /** The source control bound to a queue. */
  sourceControlFor(queue: string): SourceControl
  /**
   * Why the runtime takes no more work (the error the failed actor left, or a plain stop),
   * or undefined while it runs. Read afresh at each call: the runtime may stop meanwhile.
   */
  stopped(): StoppedError | undefined
  onIngest(deduplicated: boolean): void
  /** The `outbox.put` ops announcing a last-green move (one per hook with `onLastGreen`; none without hooks). */
  lastGreenOutbox(payload: LastGreenPayload): WriteOp[]
  /** Outbox entries were committed: wake the hook dispatcher. */
  outboxWritten(): void
}

interface Waiter {
  state: RequestState
  resolve: (view: RequestView) => void
  reject: (error: Error) => void
}

/**
 * The queue's persisted snapshot (XState's `getPersistedSnapshot` format) with `context`
 * and no children (requests live in their own rows), as plain JSON. Made from the snapshot
 * with its children left out, so that the requests in flight are not persisted only to be
 * dropped (`getPersistedSnapshot` of the actor persists every child, recursively); members
 * XState leaves undefined (`output`, `error`) are left out, as JSON would.
 */
export function persistedWithoutChildren(actor: QueueActor, context: QueueContext): Json {
  const persisted: Record<string, unknown> = queueMachine.getPersistedSnapshot({ ...actor.getSnapshot(), context, children: {} })
  const snapshot: Record<string, Json> = {}
  for (const key of Object.keys(persisted)) if (persisted[key] !== undefined) snapshot[key] = persisted[key] as Json
  return snapshot
}

/**
 * A queue's snapshot is written again once this many of its requests ended since the last
 * write, even when nothing else of it changed: its counts, and its `settledThrough` (see
 * `QueueHost.settledThrough`), stay at most this many requests behind after a crash.
 */
export const SNAPSHOT_EVERY_ENDED = 100

/**
 * The key of the queue snapshot's `settledThrough` (beside XState's members): every request
 * numbered up to it had ended, and was taken into the snapshot's context, when it was written.
 */
export const SETTLED_THROUGH = 'settledThrough'

/** The `settledThrough` of a stored queue snapshot; 0 (nothing known settled) when absent or malformed. */
export function storedSettledThrough(snapshot: Json | undefined): number {
  const value = (snapshot as Record<string, Json> | undefined)?.[SETTLED_THROUGH]
  return typeof value === 'number' && Number.isSafeInteger(value) && value > 0 ? value : 0
}

/** What recovery tells a queue host about the request numbers of its queue. */
export interface HostKnown {
  /** The highest request number storage shows (or the stored snapshot knew). */
  highWater: number
  /** Requests in flight about to be resumed ({@link QueueHost.resume}). */
  resuming: readonly number[]
  /** Green rows over a fact that is not green whose correction failed: unsettled until the next start. */
  uncorrected?: readonly number[]
}

/** Requests ended (in any final state), as the counts of a queue say. */
const endedCount = (stats: QueueContext['stats']): number =>
  stats.green + stats.red + stats.indeterminate + stats.superseded + stats.cancelled

const reached = (current: RequestState, wanted: RequestState): boolean =>
  current === wanted || FINAL_REQUEST_STATES.includes(current) || (wanted === 'accepted' && current === 'processing')

/**
 * One queue. Kept small (an idle queue is mostly its XState actor): the dependencies are
 * shared by every queue, and waiters, the ingest chain and the heads being minted exist
 * only while in use.
 */
export class QueueHost implements QueueHandle {
  private ingestChain: Promise<unknown> | undefined
  /**
   * Heads whose request is being minted, by URI, from the turn that queued the number until
   * the mint settles: a later ingest of the same head joins it (and shares its outcome).
   */
  private minting: Map<string, Promise<IngestResult>> | undefined
  private waiters: Map<string, Waiter[]> | undefined
  /** The last committed row of each request someone waits for. */
  private rows: Map<string, RequestRecord> | undefined
  /**
   * The durable part of the context last handed to the snapshot writer: what recovery cannot
   * rebuild from request rows (requests in flight and their leases are rebuilt from the rows;
   * counts ride along). The machine's `assign` keeps unchanged fields by reference, so
   * identity tells a change. Two fields rather than an object: a queue costs memory while open.
   */
  private persistedConfig: QueueConfig
  private persistedLastGreen: QueueContext['lastGreen']
  /**
   * The newest context whose snapshot write succeeded (config, last green and counts as
   * stored), and whether a write failed since: the next change, and the stop, write again.
   * (Counts alone are written every {@link SNAPSHOT_EVERY_ENDED} ends and at stop, not on every end.)
   */
  private durable: QueueContext
  private dirty = false
  /** Set when the queue actor failed: the queue takes no more work. */
  private failure: StoppedError | undefined
  /** Requests whose actor failed and could not be recorded (they resume at the next start): why. */
  private lost: Map<string, Error> | undefined
  private pending: QueueContext | undefined
  /**
   * What this host held open when `pending` was handed over (see {@link openFloor}): with
   * `pending`'s own requests in flight, its `settledThrough`.
   */
  private pendingFloor = 0
  /** Requests ended as of the context last handed to the snapshot writer (see {@link SNAPSHOT_EVERY_ENDED}). */
  private endedAtPersist: number
  private persisting: Promise<void> | undefined
  /**
   * Request numbers whose request the actor has not taken in yet, though a row with that
   * number may exist or come to exist: numbers being minted or healed, requests about to
   * be resumed, and mints that failed after their number was taken (kept for as long as
   * the process runs). Created on use.
   */
  private unaccepted: Set<number> | undefined
  /** The highest request number this host knows to exist. */
  private highWater: number
  /** The newest last green seen (stored, or moved to since). */
  private seenGreen: LastGreenRef | null
  /** Last-green moves whose hook notifications are not stored yet, oldest first. */
  private readonly moves: LastGreenPayload[] = []

  /**
   * `storedLastGreen` is the last green of the queue's stored row. When the actor starts
   * from a newer one (recovery found newer green requests: the runtime crashed before the
   * snapshot write), those moves (`recovered`, oldest first, ending with the actor's last
   * green) are persisted at once, with their hook notifications.
   */
  constructor(
    readonly name: string,
    readonly actor: QueueActor,
    private version: number,
    private readonly deps: QueueHostDeps,
    storedLastGreen: LastGreenRef | null = null,
    recovered: readonly QueueLastGreen[] = [],
    known: HostKnown = { highWater: 0, resuming: [] },
  ) {
    const context = actor.getSnapshot().context
    this.persistedConfig = context.config
    this.persistedLastGreen = context.lastGreen
    this.durable = context
    this.endedAtPersist = endedCount(context.stats)
    this.highWater = known.highWater
    for (const n of [...known.resuming, ...(known.uncorrected ?? [])]) this.numbered(n)
    this.seenGreen = storedLastGreen === null ? null : { ...storedLastGreen }
    for (const green of recovered) this.track(green)
    this.track(context.lastGreen)
    if (this.moves.length > 0) this.persistSoon(context)
  }

  /** Schedules a snapshot write of `context` (coalesced with one under way: the newest wins). */
  private persistSoon(context: QueueContext): void {
    this.pending = context
    this.pendingFloor = this.openFloor()
    this.endedAtPersist = endedCount(context.stats)
    this.persisting ??= this.persistLoop()
  }

  /**
   * The lowest request number this host holds open right now (lost, or not yet taken in by
   * the actor), or one past the highest number it knows when none: read when a context is
   * handed to the snapshot writer, as it is then the actor's context.
   */
  private openFloor(): number {
    let lowest = this.highWater + 1
    for (const n of this.unaccepted ?? []) lowest = Math.min(lowest, n)
    for (const id of this.lost?.keys() ?? []) lowest = Math.min(lowest, parseRequestId(id, this.name))
    return lowest
  }

  /**
   * The highest request number through which every request of this queue has ended and its
   * end was taken into `context` (a green one into last green), stored with the snapshot:
   * recovery looks for green requests the snapshot missed (a crash before its write) only
   * above it, so a restart does not read a queue's whole history when its last green is old.
   * (Counts are not rebuilt from rows: after a crash they miss the ends since the last
   * write.) Below the lowest request in flight in `context` and below `floor` (see
   * {@link openFloor}).
   */
  private static settledThrough(context: QueueContext, floor: number): number {
    let lowest = floor
    for (const id in context.requests) lowest = Math.min(lowest, (context.requests[id] as InFlight).n)
    return lowest - 1
  }

  /** A request number that may have (or come to have) a row the actor has not taken in yet. */
  private numbered(n: number): void {
    ;(this.unaccepted ??= new Set()).add(n)
    if (n > this.highWater) this.highWater = n
  }

  /** No row will ever have request number `n` (or it has ended for good): nothing to hold open. */
  private released(n: number): void {
    this.unaccepted?.delete(n)
    if (this.unaccepted?.size === 0) this.unaccepted = undefined
  }

  /**
   * Request `id` (number `n`) was sent to the actor: held open no more once the actor holds
   * it. A stopped or failed actor drops what it is sent, so then the number stays open: the
   * snapshot written at stop must not call settled what the actor never took in.
   */
  private taken(n: number, id: string): void {
    if (this.live() && this.actor.getSnapshot().context.requests[id] !== undefined) this.released(n)
  }

  /** Whether the queue actor takes events: the runtime runs and the queue has not failed. */
  private live(): boolean {
    return this.failure === undefined && this.deps.stopped() === undefined
  }

  /** Resumes the requests a restart found in flight (their numbers were passed to the constructor). */
  resume(requests: RequestContext[], at: number): void {
    this.actor.send({ type: 'resume', requests, at })
    for (const request of requests) this.taken(request.n, request.id)
  }

  /**
   * The queue machine changed (its `changed` action, on every entry to `routing`, in the
   * middle of the transition): notes a move of last green, and persists the snapshot when
   * its durable part changed, once the transition is over. (An action rather than a
   * subscription: a subscription costs every queue an observer and bound functions for as
   * long as it is open.)
   */
  changed(context: QueueContext): void {
    this.track(context.lastGreen)
    if (
      !this.dirty &&
      context.config === this.persistedConfig &&
      context.lastGreen === this.persistedLastGreen &&
      endedCount(context.stats) - this.endedAtPersist < SNAPSHOT_EVERY_ENDED
    )
      return
    this.persistedConfig = context.config
    this.persistedLastGreen = context.lastGreen
    this.persistSoon(context)
  }

  /**
   * The queue actor failed (a bug; the root logged it). Its requests are cancelled, so no
   * build runs on with nothing to end it (XState does not stop a failed actor's children);
   * waiters are rejected, and ingest, waitFor and cancel refuse with StoppedError. A restart
   * of the runtime starts the queue afresh.
   */
  fail(error: unknown): void {
    if (this.failure !== undefined) return
    this.failure = new StoppedError(`queue ${this.name} failed (see the log); restart the runtime to resume it`, { cause: error })
    const at = Math.max(0, Math.floor(this.deps.clock.now()))
    const { context, children } = this.actor.getSnapshot()
    for (const id of Object.keys(context.requests)) {
      const request = children[requestActorId(id)] as AnyActorRef | undefined
      request?.send({ type: 'CANCEL', at })
    }
    this.rejectWaiters(this.failure)
  }

  config(): QueueConfig {
    return structuredClone(this.actor.getSnapshot().context.config)
  }

  stats(): QueueContext['stats'] {
    return { ...this.actor.getSnapshot().context.stats }
  }

  lastGreen(): LastGreenView | undefined {
    const lastGreen = this.actor.getSnapshot().context.lastGreen
    return lastGreen === null ? undefined : { uri: lastGreen.uri, requestId: lastGreen.requestId, at: lastGreen.at }
  }

  inFlight(): { id: string; n: number; uri: string; state: string }[] {
    return Object.entries(this.actor.getSnapshot().context.requests)
      .map(([id, r]) => ({ id, n: r.n, uri: r.uri, state: r.state }))
      .sort((a, b) => a.n - b.n)
  }

  async history(options: { cursor?: string; limit?: number } = {}): Promise<Page<RequestView>> {
    const page = await this.deps.storage.requests.listByQueue(this.name, { ...options, states: ['recorded'], order: 'desc' })
    return { ...page, items: page.items.map(describeRequest) }
  }

  /** Notes a move of last green (each one is notified, even when snapshot writes coalesce). */
  private track(green: QueueLastGreen | null): void {
    if (green === null || green.requestId === this.seenGreen?.requestId) return
    const previous = this.seenGreen
    this.moves.push({ queue: this.name, requestId: green.requestId, uri: green.uri, previous, at: green.at })
    this.seenGreen = { uri: green.uri, requestId: green.requestId, at: green.at }
  }

  /** The moves a write carried were stored (or already were): forget them; wake the dispatcher. */
  private movesWritten(count: number, results: readonly WriterResult[]): void {
    // `already_exists`: stored by an earlier attempt whose acknowledgement was lost.
    if (results.some((result) => result.status === 'ok' || result.status === 'already_exists')) this.deps.outboxWritten()
    const lost = results.find((result) => result.status === 'dead_lettered')
    if (lost === undefined) this.moves.splice(0, count)
    else
      this.deps.logger.error(
        { err: writeFailure(lost, `last-green notification of ${this.name}`), queue: this.name },
        'last-green hook notification not stored; retried with the next snapshot write',
      )
  }

  /** Writes the queue's snapshot (context, no children) with CAS; coalesces bursts. */
  private async persistLoop(): Promise<void> {
    await Promise.resolve() // started from inside a transition: let it finish first
    try {
      for (let context = this.pending; context !== undefined; context = this.pending) {
        this.pending = undefined
        this.dirty = !(await this.persistContext(context, QueueHost.settledThrough(context, this.pendingFloor)))
        if (!this.dirty) this.durable = context
      }
    } catch (error) {
      this.dirty = true
      this.deps.logger.error({ err: error, queue: this.name }, 'queue snapshot not persisted; written again with the next change')
    } finally {
      this.persisting = undefined
    }
  }

  /** Writes the snapshot; true once stored, false when the write failed (it was logged). */
  private async persistContext(context: QueueContext, settledThrough: number): Promise<boolean> {
    const snapshot = persistedWithoutChildren(this.actor, context) as Record<string, Json>
    snapshot[SETTLED_THROUGH] = settledThrough
    const now = Math.max(0, Math.floor(this.deps.clock.now()))
    const record: QueueRecord = {
      name: this.name,
      version: this.version + 1,
      config: context.config as unknown as QueueRecord['config'],
      snapshot,
      createdAt: now,
      updatedAt: now,
    }
    if (context.lastGreen !== null)
      record.lastGreen = { uri: context.lastGreen.uri, requestId: context.lastGreen.requestId, at: context.lastGreen.at }
    for (let tries = 0; tries < 3; tries++) {
      // Last-green notifications first, in the same write: never a stored move without them.
      const moves = this.moves.slice()
      const outbox = moves.flatMap((move) => this.deps.lastGreenOutbox(move))
      const results = await this.deps.writer.write(
        [
          ...outbox,
          { op: 'queue.update', record: { ...record, version: this.version + 1 }, oldVersion: this.version, newVersion: this.version + 1 },
        ],
        { atomic: true },
      )
      this.movesWritten(moves.length, results.slice(0, outbox.length))
      const result = results[outbox.length]
      if (result?.status === 'ok') {
        this.version++
        return true
      }
      if (result?.status === 'version_mismatch' || result?.status === 'not_found') {
        // Only this host writes the row; re-read its version and write on top.
        const stored = await this.deps.storage.queues.get(this.name).catch(() => undefined)
        if (stored === undefined) break
        this.version = stored.version
        continue
      }
      if (result !== undefined)
        this.deps.logger.error({ err: writeFailure(result, `queue ${this.name}`), queue: this.name }, 'queue snapshot not persisted')
      return false
    }
    this.deps.logger.error({ queue: this.name }, 'queue snapshot not persisted: the row changed under us')
    return false
  }

  /** Resolves once every snapshot write started so far has settled. */
  async flush(): Promise<void> {
    while (this.persisting !== undefined) await this.persisting
  }

  /**
   * At stop: writes the snapshot once more if anything in it is not stored (counts, which
   * are not written on every change, or a write that failed), and waits for it.
   */
  async persistFinal(): Promise<void> {
    await this.flush()
    const context = this.actor.getSnapshot().context
    const stored = this.durable
    if (!this.dirty && context.stats === stored.stats && context.config === stored.config && context.lastGreen === stored.lastGreen) return
    this.persistSoon(context)
    await this.flush()
  }

  /**
   * Resolves once the config just sent is stored (or replaced by a newer one, stored);
   * StorageUnavailableError when the write failed (it is written again later).
   */
  async configStored(): Promise<void> {
    await Promise.resolve() // the config event's transition schedules the write
    await this.flush()
    // A stopped or failed queue took no config: nothing was written, and nothing is in effect.
    const stopped = this.failure ?? this.deps.stopped()
    if (stopped !== undefined) throw stopped
    // The last write carried the newest context, so this config or a newer one.
    if (this.dirty) {
      throw new StorageUnavailableError(
        `the new config of queue ${this.name} is in effect in this process but not stored yet (storage failed); it is written again with the next change and at stop`,
      )
    }
  }

  /**
   * For a config asked for again that is in effect already: resolves at once when the
   * snapshot is stored, else writes it once more (its last write failed) and resolves once
   * stored, or rejects with StorageUnavailableError.
   */
  async storedAgain(): Promise<void> {
    if (!this.dirty) return
    this.persistSoon(this.actor.getSnapshot().context)
    await this.configStored()
  }

  ingest(): Promise<IngestResult> {
    const stopped = this.deps.stopped()
    if (stopped !== undefined) return Promise.reject(stopped)
    // Turns run one at a time, in call order: each resolves the head, looks it up and queues
    // its number, so numbers follow the order heads were seen. The writes after that overlap
    // with the next turns: ingests into one queue pipeline instead of waiting for each other.
    const turn = this.ingestChain === undefined ? this.ingestTurn() : this.ingestChain.then(() => this.ingestTurn())
    const chain = turn.then(
      () => undefined,
      () => undefined,
    )
    this.ingestChain = chain
    // The chain is dropped once idle, so an idle queue holds no settled promise.
    void chain.then(() => {
      if (this.ingestChain === chain) this.ingestChain = undefined
    })
    return turn.then(({ result }) => result)
  }

  /** Refuses work once the runtime stops or the queue failed. */
  private checkOpen(): void {
    const stopped = this.deps.stopped()
    if (stopped !== undefined) throw stopped
    this.refuseIfFailed()
  }

  /** Throws the queue's failure, if it failed (a method: the check must be read afresh after each await). */
  private refuseIfFailed(): void {
    if (this.failure !== undefined) throw this.failure
  }

  /**
   * One ingest's turn: resolve the head; a head being minted right now, or already mapped
   * to a request, is that request; otherwise queue the counter op (not awaited) and go on
   * with {@link mint}. Resolves with the rest of the ingest, wrapped so that the chain does
   * not wait for it.
   */
  private async ingestTurn(): Promise<{ result: Promise<IngestResult> }> {
    this.checkOpen()
    const uri = await this.deps.sourceControlFor(this.name).latest()
    const minting = this.minting?.get(uri)
    if (minting !== undefined) {
      return {
        result: minting.then(({ id }) => {
          this.deps.onIngest(true)
          return { id, uri, deduplicated: true }
        }),
      }
    }
    const existing = await this.deps.storage.requestUris.getIdByUri(this.name, uri).catch((error: unknown) => {
      if (error instanceof NotFoundError) return undefined
      throw error
    })
    if (existing !== undefined) return { result: this.reuse(existing, uri) }
    this.checkOpen() // stopped or failed while looking: no number is taken
    // The entry is dropped in `finally`, before `result` settles, so no later turn joins a settled mint.
    const result = this.mint(uri, this.deps.writer.write([{ op: 'counter.next', queue: this.name }])).finally(() => {
      this.minting?.delete(uri)
      if (this.minting?.size === 0) this.minting = undefined
    })
    ;(this.minting ??= new Map()).set(uri, result)
    return { result }
  }

  /** A head that already has a request: heal its row if a crash left only the mapping. */
  private async reuse(id: string, uri: string): Promise<IngestResult> {
    await this.heal(id, uri)
    this.deps.onIngest(true)
    return { id, uri, deduplicated: true }
  }

  /** Mints the request of a new head once its number is committed: the claim and the row, then the actor. */
  private async mint(uri: string, numbering: Promise<WriterResult[]>): Promise<IngestResult> {
    const [counter] = await numbering
    if (counter?.status !== 'ok' || counter.value === undefined)
      throw writeFailure(counter ?? { status: 'not_found' }, `request number of ${this.name}`)
    const n = counter.value
    // Until the actor takes the request in (or its row is known not to be there), the
    // snapshot cannot say it settled: a crash may leave its row to be resumed and recorded.
    this.numbered(n)
    this.refuseIfFailed()
    const id = `request/${this.name}/${n}`
    const at = Math.max(0, Math.floor(this.deps.clock.now()))
    const record = this.newRecord(id, n, uri, at)
    // The (queue, uri) claim first, then the row: a lost race reuses the winner's request.
    const [claim, row] = await this.deps.writer.write(
      [
        { op: 'requestUri.create', mapping: { queue: this.name, uri, requestId: id } },
        { op: 'request.create', record },
      ],
      { atomic: true },
    )
    if (claim?.status === 'already_exists') {
      const winner = await this.deps.storage.requestUris.getIdByUri(this.name, uri)
      // The claim is ours when a retried commit had applied and only its acknowledgement was
      // lost (the row then reports already_exists too): go on as if it had been acknowledged.
      if (winner !== id) {
        // Another process claimed the head first (the claim and the row share a transaction,
        // not an outcome): the row just created must not be validated at the next start.
        if (row?.status !== 'ok' || (await this.retire(record, winner))) this.released(n)
        return this.reuse(winner, uri)
      }
    } else {
      if (claim?.status !== 'ok') throw writeFailure(claim ?? { status: 'not_found' }, `claim of ${uri}`)
      if (row?.status !== 'ok') throw writeFailure(row ?? { status: 'not_found' }, `request ${id}`)
    }
    // The queue failed meanwhile: its actor takes no requests; the row resumes at the next start.
    this.refuseIfFailed()
    // Stopped meanwhile: the request is stored (this ingest is acknowledged) and resumes at the next start.
    if (this.deps.stopped() === undefined) {
      this.actor.send({ type: 'request.accepted', id, n, uri, version: 0, createdAt: at, at })
      this.taken(n, id)
    }
    this.deps.onIngest(false)
    return { id, uri, deduplicated: false }
  }

  /** Ends a request row that lost the claim of its head: superseded by the winner's request. True once written. */
  private async retire(record: RequestRecord, winner: string): Promise<boolean> {
    const at = Math.max(0, Math.floor(this.deps.clock.now()))
    const { context } = record.data as unknown as { context: RequestContext }
    const ended = requestRecord({ ...context, supersededBy: winner, endedAt: at }, 'superseded', 'superseded', 1, at)
    const [result] = await this.deps.writer.write([{ op: 'request.update', record: ended, oldVersion: 0, newVersion: 1 }])
    if (result?.status === 'ok') return true
    this.deps.logger.error({ queue: this.name, requestId: record.id, winner }, 'a request that lost the claim of its head stays accepted')
    return false
  }

  private newRecord(id: string, n: number, uri: string, at: number): RequestRecord {
    const context = newRequestContext({ id, queue: this.name, uri, n, version: 0, createdAt: at, maxAttempts: this.config().maxAttempts })
    return requestRecord(context, 'accepted', 'accepted', 0, at)
  }

  /** A mapping whose row is missing (a crash between the two writes) gets its row. */
  private async heal(id: string, uri: string): Promise<void> {
    const row = await this.deps.storage.requests.get(id).catch((error: unknown) => {
      if (error instanceof NotFoundError) return undefined
      throw error
    })
    if (row !== undefined) return
    const n = parseRequestId(id, this.name)
    // An old number the stored snapshot may already call settled: store one that does not
    // before the row exists, or a crash after its green would leave recovery blind to it.
    this.numbered(n)
    this.persistSoon(this.actor.getSnapshot().context)
    await this.flush()
    if (this.dirty) throw new StorageUnavailableError(`the snapshot of queue ${this.name} could not be written before healing ${id}`)
    const at = Math.max(0, Math.floor(this.deps.clock.now()))
    const [result] = await this.deps.writer.write([{ op: 'request.create', record: this.newRecord(id, n, uri, at) }])
    if (result?.status !== 'ok' && result?.status !== 'already_exists')
      throw writeFailure(result ?? { status: 'not_found' }, `healing ${id}`)
    this.deps.logger.warn({ queue: this.name, requestId: id, uri }, 'healed a request whose row was missing')
    if (result.status === 'ok' && this.deps.stopped() === undefined) {
      this.actor.send({ type: 'request.accepted', id, n, uri, version: 0, createdAt: at, at })
      this.taken(n, id)
    }
  }

  async waitFor(id: string, state: RequestState = 'recorded'): Promise<RequestView> {
    parseRequestId(id, this.name)
    if (!['accepted', 'processing', 'recorded', 'superseded', 'cancelled'].includes(state)) {
      throw new InvalidInputError(`cannot wait for state ${state as string}`)
    }
    // Once the runtime stops, nothing would settle a new waiter (stop rejected those it found).
    const stopped = this.deps.stopped()
    if (stopped !== undefined) throw stopped
    let waiter: Waiter | undefined
    const waiting = new Promise<RequestView>((resolve, reject) => {
      waiter = { state, resolve, reject }
      this.waiters ??= new Map()
      this.waiters.set(id, [...(this.waiters.get(id) ?? []), waiter])
    })
    // Rejected while the row is read below, it may never be returned: not an unhandled rejection.
    waiting.catch(() => undefined)
    // Waiting for the end of a request in flight here: its end reaches the waiter through
    // notify(), with the row it committed (or read then), so the row read below could only
    // say "wait". (The queue drops a request only once it has ended, and it ends inside the
    // actor system, never between this check and the waiter's registration above.)
    if (FINAL_REQUEST_STATES.includes(state) && this.failure === undefined) {
      // A lost request ends only when its salvage succeeds (or at the next start): say so now.
      const lost = this.lost?.get(id)
      if (lost !== undefined) {
        this.dropWaiter(id, waiter)
        throw lost
      }
      if (this.actor.getSnapshot().context.requests[id] !== undefined) return waiting
    }
    try {
      const row = await this.deps.storage.requests.get(id)
      // A final row of a request still in flight here: its actor has yet to report to the
      // queue, so wait for that (notify), and last green and inFlight() are current on return.
      const reporting = FINAL_REQUEST_STATES.includes(row.state) && this.actor.getSnapshot().context.requests[id] !== undefined
      if (reached(row.state, state) && !(reporting && this.failure === undefined)) {
        this.dropWaiter(id, waiter)
        return describeRequest(row)
      }
      if (this.failure !== undefined) throw this.failure
      const lost = this.lost?.get(id)
      if (lost !== undefined) throw lost
    } catch (error) {
      this.dropWaiter(id, waiter)
      throw error
    }
    return waiting
  }

  /** Drops one waiter (its waitFor returned without it). */
  private dropWaiter(id: string, waiter: Waiter | undefined): void {
    const list = (this.waiters?.get(id) ?? []).filter((w) => w !== waiter)
    if (list.length > 0) this.waiters?.set(id, list)
    else this.forget(id)
  }

  /**
   * A request row of this queue was committed by the request's own step writes. Waiters it
   * satisfies are answered at once unless it is final; a final row is kept for
   * {@link notify}, which runs once the request reported to the queue (so last green and
   * inFlight() are current when a waiter for a final state resumes).
   */
  committed(row: RequestRecord): void {
    if (this.waiters?.has(row.id) !== true) return
    if (FINAL_REQUEST_STATES.includes(row.state)) (this.rows ??= new Map()).set(row.id, row)
    else this.settle(row.id, row)
  }

  /**
   * A request of this queue entered a state: when final, resolves who waits for it, with
   * the row as committed (the final row this host saw written, or else read from storage).
   * Waiters the row does not satisfy keep waiting.
   */
  notify(id: string, state: RequestState): void {
    // Non-final states are answered by committed(), at commit; a final one only here, once
    // the request has reported to the queue.
    if (!FINAL_REQUEST_STATES.includes(state)) return
    const list = this.waiters?.get(id)
    if (list === undefined || !list.some((w) => reached(state, w.state))) return
    const cached = this.rows?.get(id)
    const row = cached !== undefined && reached(cached.state, state) ? Promise.resolve(cached) : this.deps.storage.requests.get(id)
    row.then(
      (stored) => {
        this.settle(id, stored)
      },
      (error: unknown) => {
        this.failWaiters(id, error instanceof Error ? error : new StorageFailedError(String(error)), state)
      },
    )
  }

  /** Resolves the waiters of a request that `row` satisfies, each with a view of its own. */
  private settle(id: string, row: RequestRecord): void {
    const current = this.waiters?.get(id) ?? []
    const ready = current.filter((w) => reached(row.state, w.state))
    if (ready.length === 0) return
    const rest = current.filter((w) => !reached(row.state, w.state))
    if (rest.length > 0) this.waiters?.set(id, rest)
    else this.forget(id)
    // Rows kept from a write share objects with the request's context: each waiter gets a copy.
    const view = describeRequest(row)
    for (const w of ready) w.resolve(copyView(view))
  }

  /**
   * A request actor failed and could not be recorded: it leaves the queue's work uncounted
   * (holding its slot, if it had one, until the lease expires: see the queue machine), its
   * waiters are rejected, and so is any later wait for or cancel of it until its salvage,
   * tried again, succeeds ({@link found}) or the next start resumes it from its row.
   */
  lose(id: string, error: Error): void {
    ;(this.lost ??= new Map()).set(id, error)
    this.failWaiters(id, error)
    this.actor.send({ type: 'request.lost', id, at: Math.max(0, Math.floor(this.deps.clock.now())) })
  }

  /** Whether a request is lost (see {@link lose}). */
  isLost(id: string): boolean {
    return this.lost?.has(id) === true
  }

  /**
   * A lost request was recorded after all (its salvage succeeded): the actor hears its `end`,
   * and waits for it read its row again. Once the runtime stops or the queue failed, the
   * actor takes no more events: the request stays lost (held open, so the snapshot written at
   * stop does not call it settled), and the next start reads its row.
   */
  found(id: string, end: QueueEvent): void {
    if (!this.live()) return
    this.lost?.delete(id)
    if (this.lost?.size === 0) this.lost = undefined
    this.actor.send(end)
  }

  /** Rejects who waits for a request (those waiting for a state `state` reaches; all without `state`). */
  failWaiters(id: string, error: Error, state?: RequestState): void {
    const list = this.waiters?.get(id) ?? []
    const failed = list.filter((w) => state === undefined || reached(state, w.state))
    const rest = list.filter((w) => !failed.includes(w))
    if (rest.length > 0) this.waiters?.set(id, rest)
    else this.forget(id)
    for (const w of failed) w.reject(error)
  }

  /** Drops the waiters of a request and its kept row; the maps themselves once empty. */
  private forget(id: string): void {
    this.waiters?.delete(id)
    this.rows?.delete(id)
    if (this.waiters?.size === 0) this.waiters = undefined
    if (this.rows?.size === 0) this.rows = undefined
  }

  /** Rejects every waiter (the runtime stops). */
  rejectWaiters(error: Error): void {
    for (const list of this.waiters?.values() ?? []) for (const w of list) w.reject(error)
    this.waiters = undefined
    this.rows = undefined
  }

  async cancel(id: string): Promise<CancelResult> {
    parseRequestId(id, this.name)
    this.checkOpen()
    // A lost request is not cancelled: it is recorded once storage allows, or resumes at the next start.
    const lost = this.lost?.get(id)
    if (lost !== undefined) throw lost
    const row = await this.deps.storage.requests.get(id)
    const inFlight = this.actor.getSnapshot().context.requests[id]
    const step = (row.data as { step?: string } | undefined)?.step
    if (inFlight === undefined || FINAL_REQUEST_STATES.includes(row.state) || step === 'processing.recording') {
      return { id, cancelled: false, state: row.state }
    }
    const done = this.waitFor(id, 'cancelled')
    this.actor.send({ type: 'cancel', id, at: Math.max(0, Math.floor(this.deps.clock.now())) })
    const view = await done
    return { id, cancelled: view.state === 'cancelled', state: view.state }
  }
}
