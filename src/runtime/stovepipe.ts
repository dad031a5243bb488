/**
 * `createStovepipe`: the runtime. One XState actor system: a root actor, one queue actor
 * per queue (spawned programmatically, into groups of up to 32 under the root: see
 * `queueGroupMachine`), one request actor per request in flight (children of their queue),
 * the event log, the writer, and three services the actors share: steps
 * (planning, recording), builds and timers. Every durable change goes through the writer;
 * every request transition goes to the event log.
 *
 * Started on storage left by a stopped or crashed runtime, it resumes every request that
 * had not ended, at the step it had persisted, with its deadline re-armed from the stored
 * absolute time.
 *
 * @module
 */
import type { Logger } from 'pino'
import { Counter, Registry } from 'prom-client'
import {
  createActor,
  enqueueActions,
  fromCallback,
  setup,
  type ActorRefFrom,
  type AnyActorRef,
  type InspectionEvent,
  type Observer,
} from 'xstate'
import { backoffDelay, sleep, systemClock, type Clock } from '../actors/clock.js'
import { createEventLog, eventLogActor, type EventLog, type EventLogOptions, type EventLogStopReport } from '../actors/event-log.js'
import { silentLogger } from '../actors/observability.js'
import { TIMER_SERVICE, timerService } from '../actors/timer-service.js'
import { createWriter, type DrainReport, type Writer, type WriterOptions } from '../actors/writer.js'
import type { BuildRunner } from '../build/types.js'
import { createOutboxDispatcher, type OutboxDispatcher } from '../hooks/outbox-dispatcher.js'
import { hookWants, outboxPuts, validateHooks } from '../hooks/outbox.js'
import type { Hook, HookRetryOptions, LastGreenRef } from '../hooks/types.js'
import {
  newQueueContext,
  queueMachine,
  requestIdOf,
  type QueueActor,
  type QueueConfig,
  type QueueContext,
  type QueueLastGreen,
} from '../machines/queue.js'
import { QUEUES_PER_GROUP, queueGroupId, queueGroupMachine } from '../machines/queue-group.js'
import {
  BUILD_SERVICE,
  STEP_SERVICE,
  newRequestContext,
  requestMachine,
  type RequestContext,
  type RequestStep,
} from '../machines/request.js'
import { isSourceControlProvider, type SourceControl, type SourceControlProvider } from '../sourcecontrol/types.js'
import { InvalidInputError, NotFoundError, StoppedError, StorageFailedError } from '../storage/errors.js'
import { FINAL_REQUEST_STATES, type Fact, type QueueRecord, type RequestRecord, type RequestState, type Storage } from '../storage/types.js'
import { assertQueueName, parseRequestId } from '../storage/validation.js'
import { normalizeQueueConfig, type QueueConfigInput } from './config.js'
import { QueueHost, storedSettledThrough, type HostKnown, type QueueHandle, type QueueHostDeps } from './queue-host.js'
import {
  buildService,
  existingFact,
  checkedOutcome,
  outboxOutcome,
  requestRecord,
  stepService,
  verdictPayload,
  writeCorrection,
  type RequestServiceDeps,
} from './request-services.js'
import { describeRequest, type RequestView } from './views.js'

/** Options of {@link createStovepipe}. */
export interface StovepipeOptions {
  storage: Storage
  /** Source control: one bound to a single ref, or a provider giving each queue its own. */
  sourceControl: SourceControl | SourceControlProvider
  builder: BuildRunner
  /** Time for everything (XState's SimulatedClock fits). Default: the real clock. */
  clock?: Clock
  logger?: Logger
  /** Receives the actor system's inspection events (e.g. `createBrowserInspector().inspect`). */
  inspect?: Observer<InspectionEvent> | ((event: InspectionEvent) => void)
  /** This process's id in the event log (default `local`). */
  nodeId?: string
  /** prom-client registry for every metric (default: a new one, see {@link Stovepipe.registry}). */
  registry?: Registry
  /** Writer tuning (capacity, maxBatch, lingerMs (default 0 here: next tick), retry). */
  writer?: Omit<WriterOptions, 'storage' | 'clock' | 'logger' | 'registry'>
  /** Event-log tuning (capacity, policy, batchSize). */
  eventLog?: Omit<EventLogOptions, 'storage' | 'writer' | 'clock' | 'logger' | 'registry' | 'nodeId'>
  /** Backoff between attempts of a failed step (defaults 1000 ms, doubling, capped at 30 000 ms). */
  retry?: { baseDelayMs?: number; maxDelayMs?: number }
  /**
   * Randomness for every backoff jitter of the runtime: request retries, hook deliveries, and
   * the writer's and event log's retries unless their own options set one (default
   * Math.random). A seeded one makes a run on a SimulatedClock repeatable.
   */
  random?: () => number
  /**
   * Told of every verdict (`onVerdict`) and every move of a queue's last green
   * (`onLastGreen`), at least once: each notification is stored in the outbox in the same
   * write as the change, and delivered (retried with backoff, across restarts) by a
   * dispatcher running in the runtime. Names must be unique and stay stable.
   */
  hooks?: readonly Hook[]
  /** Retry policy of hook delivery (defaults: 1000 ms doubling to 5 min, unlimited attempts, 60 s per call). */
  hookRetry?: HookRetryOptions
}

/** What {@link Stovepipe.stop} did. */
export interface StopReport {
  writer: DrainReport
  eventLog: EventLogStopReport
}

/** The runtime. */
export interface Stovepipe {
  /** Opens a queue; creates it when `config` is given and it does not exist (a changed config is applied). */
  queue(name: string, config?: QueueConfigInput): Promise<QueueHandle>
  /** The queues open in this runtime. */
  queues(): QueueHandle[]
  /** A request, from storage. */
  request(id: string): Promise<RequestView>
  readonly events: EventLog
  readonly writer: Writer
  /** The actor system (queues, requests, event log, writer). */
  readonly system: AnyActorRef['system']
  /** The root actor of the system. */
  readonly root: AnyActorRef
  readonly registry: Registry
  /** Refuses new work, stops the actors (aborting builds), flushes the event log and drains the writer. */
  stop(options?: { deadlineMs?: number }): Promise<StopReport>
}

type RootEvent =
  /** Spawn queue group `index` (see {@link queueGroupMachine}). */
  | { type: 'group.open'; index: number }
  /** A child actor failed (XState relays a child's error to its parent). */
  | { type: `xstate.error.actor.${string}`; error: unknown }

/** A stable, user-facing label of a request snapshot value, or undefined for transient states. */
export function stepLabel(value: unknown): string | undefined {
  if (typeof value === 'string') return value === 'boot' ? undefined : value
  if (typeof value !== 'object' || value === null) return undefined
  const [top, inner] = Object.entries(value)[0] ?? []
  if (top === undefined) return undefined
  if (top === 'processing' && typeof inner === 'object' && inner !== null) {
    const [stepName] = Object.keys(inner as object)
    return stepName === undefined ? top : `processing.${stepName}`
  }
  return top
}

const topState = (label: string): RequestState =>
  label.startsWith('processing') || label === 'concluding' || label === 'cancelling'
    ? 'processing'
    : label === 'superseding'
      ? 'accepted'
      : (label as RequestState)

/** The event that moved a request, as the event log names it: a service's answer DONE or FAILED, a delay TIMEOUT. */
function shortEvent(type: string): string {
  if (type.startsWith('xstate.done.actor') || type.endsWith('.done')) return 'DONE'
  if (type.startsWith('xstate.error.actor') || type.endsWith('.failed')) return 'FAILED'
  if (type.startsWith('xstate.after')) return 'TIMEOUT'
  if (type === 'xstate.init') return 'INIT'
  return type
}

async function allRows(storage: Storage, queue: string, states: RequestState[]): Promise<RequestRecord[]> {
  const rows: RequestRecord[] = []
  let cursor: string | undefined
  do {
    const page = await storage.requests.listByQueue(queue, { states, limit: 1000, ...(cursor === undefined ? {} : { cursor }) })
    rows.push(...page.items)
    cursor = page.nextCursor
  } while (cursor !== undefined)
  return rows
}

/**
 * The moves of a queue's last green that storage shows past the stored one (`above`, its
 * request number), oldest first, for recovery: the runtime crashed before the queue's
 * snapshot recorded them (or its writes failed). Each green request above `above` that was
 * newer than every green recorded before it moved last green; the last move is the newest
 * green. A row is trusted only when its commit's fact agrees: without hooks, the recording
 * commit writes the row with the request's own verdict, and corrects it in a second write
 * when a fact of another request was there first; a crash in between leaves a green row
 * over a red fact. Such a row is corrected here (and skipped).
 *
 * Only rows above the snapshot's `settledThrough` are read (every request up to it had
 * ended and been taken into the snapshot when it was written), so a queue whose last green
 * is old, or that never had one, is not read through its whole history at every start.
 * `highest`: the highest request number read; `uncorrected`: the numbers of rows whose
 * correction failed (the queue keeps them unsettled, so that the next start reads them again).
 */
async function greenMoves(
  deps: { storage: Storage; writer: Writer; logger: Logger; now: () => number },
  queue: string,
  above: number,
  settledThrough: number,
): Promise<{ moves: QueueLastGreen[]; highest: number; uncorrected: number[] }> {
  const { storage } = deps
  const greens: QueueLastGreen[] = []
  const uncorrected: number[] = []
  let highest = 0
  let cursor: string | undefined
  scan: do {
    const page = await storage.requests.listByQueue(queue, {
      states: ['recorded'],
      order: 'desc',
      limit: 200,
      ...(cursor === undefined ? {} : { cursor }),
    })
    for (const row of page.items) {
      const view = describeRequest(row)
      highest = Math.max(highest, view.n)
      if (view.n <= above || view.n <= settledThrough) break scan
      if (view.verdict !== 'green') continue
      const fact = await existingFact(storage, queue, row.uri)
      if (fact?.degree === 0) greens.push({ uri: row.uri, requestId: row.id, n: view.n, at: view.endedAt ?? row.updatedAt })
      else if (!(await correctVerdict(deps, row, fact))) uncorrected.push(view.n)
    }
    cursor = page.nextCursor
  } while (cursor !== undefined)
  // In the order they were recorded: a slow older green recorded after a newer one moved nothing.
  greens.sort((a, b) => a.at - b.at || a.n - b.n)
  const moves: QueueLastGreen[] = []
  for (const green of greens) if (green.n > (moves.at(-1)?.n ?? above)) moves.push(green)
  return { moves, highest, uncorrected }
}

/**
 * Rewrites a green row whose commit's fact is not green with the fact's verdict (none:
 * indeterminate). False when the write failed (logged): the next start tries again.
 */
async function correctVerdict(
  deps: { writer: Writer; logger: Logger; now: () => number },
  row: RequestRecord,
  fact: Fact | undefined,
): Promise<boolean> {
  const correction = await writeCorrection(deps, row, fact, deps.now())
  if (correction === undefined || correction.result?.status === 'ok') return true
  deps.logger.error(
    { requestId: row.id, status: correction.result?.status },
    'the corrected verdict was not written; tried again at the next start',
  )
  return false
}

/** Starts a runtime on a storage, resuming whatever a previous runtime left in flight. */
export async function createStovepipe(options: StovepipeOptions): Promise<Stovepipe> {
  const { storage, builder } = options
  if (typeof storage !== 'object' || typeof storage.commit !== 'function') throw new InvalidInputError('createStovepipe needs a storage')
  if (typeof builder !== 'object' || typeof builder.run !== 'function')
    throw new InvalidInputError('createStovepipe needs a builder with run()')
  if (typeof options.sourceControl !== 'object') throw new InvalidInputError('createStovepipe needs a sourceControl')
  const clock = options.clock ?? systemClock
  const logger = (options.logger ?? silentLogger()).child({ component: 'stovepipe' })
  const random = options.random ?? Math.random
  const registry = options.registry ?? new Registry()
  const retryBase = options.retry?.baseDelayMs ?? 1000
  const retryMax = options.retry?.maxDelayMs ?? 30_000
  const now = (): number => Math.max(0, Math.floor(clock.now()))
  const nodeId = options.nodeId ?? 'local'
  const hooks = options.hooks === undefined ? [] : validateHooks(options.hooks)

  const writer = createWriter({
    // The runtime's writes come in chains (each request step waits for its write), so a
    // linger would add its delay to every step; writes issued in the same tick still share
    // a commit with lingerMs 0 (the batch closes on the next turn of the event loop).
    lingerMs: 0,
    random,
    ...options.writer,
    storage,
    clock,
    logger,
    registry,
    name: options.writer?.name ?? `writer-${nodeId.replace(/[^A-Za-z0-9._-]/g, '-')}`,
  })
  const events = await createEventLog({ random, ...options.eventLog, storage, writer, clock, logger, registry, nodeId })
  // Hooks: delivered from the outbox by a dispatcher, started once recovery is done.
  const dispatcher: OutboxDispatcher | undefined =
    hooks.length === 0
      ? undefined
      : createOutboxDispatcher({
          storage,
          writer,
          hooks,
          clock,
          logger,
          random,
          registry,
          ...(options.hookRetry === undefined ? {} : { retry: options.hookRetry }),
        })
  const outboxWritten = (): void => {
    dispatcher?.wake()
  }

  const metrics = {
    ingests: new Counter({ name: 'stovepipe_ingests_total', help: 'Heads ingested', labelNames: ['deduplicated'], registers: [registry] }),
    fallbacks: new Counter({
      name: 'stovepipe_planning_fallbacks_total',
      help: 'Full builds because the last green was unknown to source control',
      labelNames: ['queue'],
      registers: [registry],
    }),
    verdicts: new Counter({
      name: 'stovepipe_verdicts_total',
      help: 'Requests recorded, by verdict',
      labelNames: ['queue', 'verdict'],
      registers: [registry],
    }),
    childFailures: new Counter({
      name: 'stovepipe_request_failures_total',
      help: 'Request actors that failed and were salvaged',
      labelNames: ['queue'],
      registers: [registry],
    }),
  }

  /** Each queue's source control, or why it could not be had (a repository moved or gone since the queue was stored). */
  const sourceControls = new Map<string, SourceControl | Error>()
  const sourceControlFor = (queue: string): SourceControl => {
    const found = sourceControls.get(queue)
    if (found === undefined) throw new NotFoundError(`no source control for queue ${queue}`)
    if (found instanceof Error) throw found
    return found
  }
  /** The source control a queue config names (throws, e.g. for a repository that does not exist). */
  const sourceControlOf = (name: string, config: QueueConfig): SourceControl => {
    const sc = options.sourceControl
    return isSourceControlProvider(sc)
      ? sc.forQueue({ queue: name, ref: config.ref, ...(config.repo === undefined ? {} : { repo: config.repo }) })
      : sc
  }
  const bindSourceControl = (name: string, config: QueueConfig): void => {
    sourceControls.set(name, sourceControlOf(name, config))
  }

  const hosts = new Map<string, QueueHost>()
  let stopping = false
  /** Set when an actor the runtime cannot do without failed: what waiters are rejected with. */
  let fatal: StoppedError | undefined
  /**
   * Something the runtime cannot do without failed (`why`, e.g. "its event log failed"): log
   * it, keep the cause for every waiter and caller, and stop (after the current transition).
   */
  const failRuntime = (why: string, error: unknown): void => {
    logger.fatal({ err: error }, `the runtime stops: ${why}`)
    fatal ??= new StoppedError(`the runtime stopped: ${why}`, { cause: error })
    queueMicrotask(() => {
      void stopOnce(10_000)
    })
  }

  const serviceDeps: RequestServiceDeps = {
    storage,
    writer,
    builder,
    clock,
    logger,
    sourceControlFor,
    onFallback: (queue) => {
      metrics.fallbacks.inc({ queue })
    },
    notifiesVerdicts: hooks.some((hook) => hookWants(hook, 'verdict')),
    verdictOutbox: (payload) => outboxPuts(hooks, 'verdict', payload, now()),
    outboxWritten,
    committed: (record) => {
      hosts.get(record.queue)?.committed(record)
    },
  }
  const request = requestMachine.provide({
    actions: {
      entered: ({ context, event }, params: { step: string }) => {
        try {
          onTransition(context, params.step, event.type)
        } catch (error) {
          logger.error({ err: error }, 'transition hook failed')
        }
      },
    },
    delays: {
      retry: ({ context }) => backoffDelay(context.attempt, retryBase, retryMax, random),
    },
  })

  /** Salvages waiting to be tried again (cancelled at stop). */
  const salvageRetries = new Set<() => void>()
  /**
   * A request actor failed for good (its final write was refused): log it and record it
   * indeterminate, unless its row has ended already (then the queue hears that end). When
   * that cannot be written or read either, the request is lost (it keeps its slot, its
   * waiters are rejected) and the salvage is tried again with backoff until it succeeds, which
   * frees the slot, or the runtime stops (the next start resumes the request from its row).
   */
  const salvage = async (queue: string, id: string, error: unknown, attempt = 0): Promise<void> => {
    if (attempt === 0) {
      metrics.childFailures.inc({ queue })
      logger.error({ err: error, queue, requestId: id }, 'request actor failed; recording it indeterminate')
    }
    const host = hosts.get(queue)
    try {
      const row = await storage.requests.get(id)
      const n = parseRequestId(id, queue)
      if (!FINAL_REQUEST_STATES.includes(row.state)) {
        const stored = (row.data as { context?: RequestContext } | undefined)?.context
        const base =
          stored ?? newRequestContext({ id, queue, uri: row.uri, n, version: row.version, createdAt: row.createdAt, maxAttempts: 1 })
        const context: RequestContext = {
          ...base,
          verdict: 'indeterminate',
          degree: null,
          reason: `request actor failed: ${String(error)}`,
          endedAt: now(),
        }
        const record = requestRecord(context, 'recorded', 'recorded', row.version + 1, now())
        const outbox = outboxPuts(
          hooks,
          'verdict',
          verdictPayload(context, { verdict: 'indeterminate', degree: null, reason: context.reason }, now()),
          now(),
        )
        const results = await writer.write(
          [...outbox, { op: 'request.update', record, oldVersion: row.version, newVersion: row.version + 1 }],
          { atomic: true },
        )
        if (outbox.length > 0) outboxOutcome({ logger, outboxWritten }, results.slice(0, -1), `hook notification of ${id}`)
        const result = results[results.length - 1]
        if (result?.status !== 'ok') throw new Error(`salvage write: ${result?.status ?? 'no result'}`)
        host?.found(id, { type: 'request.salvaged', id, n, uri: row.uri, at: now() })
        host?.notify(id, 'recorded')
        return
      }
      // The row had ended already (an earlier write applied, or someone else ended it): the
      // queue hears the end the row stores (a green one checked against the commit's fact).
      if (row.state === 'recorded') {
        const recorded = await checkedOutcome(serviceDeps, row)
        host?.found(id, {
          type: 'request.recorded',
          id,
          n,
          uri: row.uri,
          verdict: recorded?.verdict ?? 'indeterminate',
          at: recorded?.at ?? now(),
        })
      } else {
        host?.found(id, { type: 'request.ended', id, n, state: row.state as 'superseded' | 'cancelled', at: now() })
      }
      host?.notify(id, row.state)
    } catch (salvageError) {
      if (attempt === 0) {
        logger.error(
          { err: salvageError, queue, requestId: id },
          'could not salvage a failed request; tried again until it can be recorded (or at the next start)',
        )
        const why = `request ${id} failed and could not be recorded; it is recorded once storage allows, or resumes at the next start`
        host?.lose(id, new StorageFailedError(why, { cause: salvageError }))
      } else logger.debug({ err: salvageError, queue, requestId: id, attempt }, 'salvage failed again')
      salvageLater(queue, id, error, attempt + 1)
    }
  }

  /** Tries a failed salvage again after a backoff, while the request is still lost and the runtime runs. */
  const salvageLater = (queue: string, id: string, error: unknown, attempt: number): void => {
    if (stopping || hostDeps.stopped() !== undefined) return
    const pause = sleep(clock, Math.max(1, backoffDelay(attempt, retryBase, retryMax, random)))
    salvageRetries.add(pause.cancel)
    void pause.done.then(() => {
      salvageRetries.delete(pause.cancel)
      if (stopping || hostDeps.stopped() !== undefined || hosts.get(queue)?.isLost(id) !== true) return
      void salvage(queue, id, error, attempt)
    })
  }

  const queue = queueMachine.provide({
    actors: { request },
    actions: {
      changed: ({ context }) => {
        hosts.get(context.name)?.changed(context)
      },
      childFailed: ({ context, event }) => {
        const n = Number(event.type.slice('xstate.error.actor.'.length))
        void salvage(context.name, requestIdOf(context.name, n), (event as { error?: unknown }).error)
      },
    },
  })

  const root = setup({
    types: { events: {} as RootEvent },
    actions: {
      childFailed: ({ event }) => {
        if (event.type === 'group.open') return
        const actor = event.type.slice('xstate.error.actor.'.length)
        if (!actor.startsWith('queue:')) {
          // The event log, writer, hooks actor or a queue group (which a queue's failure
          // reaches the root through): the runtime cannot go on without it. It stops
          // (not by failing the root, which would leave the queues and their builds running).
          failRuntime(`its ${actor} actor failed`, event.error)
          return
        }
        logger.error({ err: event.error, actor }, 'queue actor failed; its requests are cancelled and it takes no more work')
        hosts.get(actor.slice('queue:'.length))?.fail(event.error)
      },
    },
    actors: {
      group: queueGroupMachine.provide({ actors: { queue } }),
      eventLog: eventLogActor(events),
      writer: fromCallback(() => undefined),
      // The dispatcher lives as long as the actor system: stopping the root (or abandoning it) halts it.
      hooks: fromCallback(() => () => {
        dispatcher?.halt()
      }),
      builds: buildService(serviceDeps),
      steps: stepService(serviceDeps),
      timers: timerService(clock),
    },
  }).createMachine({
    id: 'stovepipe',
    invoke: [
      { src: 'eventLog', id: 'eventLog', systemId: 'eventLog' },
      { src: 'writer', id: 'writer', systemId: 'writer' },
      { src: 'hooks', id: 'hooks', systemId: 'hooks' },
      { src: 'builds', id: 'builds', systemId: BUILD_SERVICE },
      { src: 'steps', id: 'steps', systemId: STEP_SERVICE },
      { src: 'timers', id: 'timers', systemId: TIMER_SERVICE },
    ],
    on: {
      // A failed queue is stopped by XState and fails alone (QueueHost.fail); a failed event
      // log, writer or hooks actor stops the runtime.
      'xstate.error.actor.*': { actions: 'childFailed' },
      // Queue actors are spawned into groups of QUEUES_PER_GROUP (see queueGroupMachine), not here.
      'group.open': {
        actions: enqueueActions(({ enqueue, event }) => {
          const id = queueGroupId(event.index)
          enqueue.spawnChild('group', { id, systemId: id })
        }),
      },
    },
  })

  // Every request transition goes to the event log, and wakes whoever waits for it.
  const labels = new Map<string, string>()
  /** A request entered a step (the machine's `entered` action): log the transition, wake waiters. */
  const onTransition = (context: RequestContext, step: string, eventType: string): void => {
    const id = context.id
    const previous = labels.get(id)
    if (step === previous) return
    if (['recorded', 'superseded', 'cancelled'].includes(step)) labels.delete(id)
    else labels.set(id, step)
    const detail =
      step === 'recorded'
        ? { verdict: context.verdict ?? 'indeterminate', degree: context.degree, strategy: context.strategy, reason: context.reason }
        : step === 'processing.building'
          ? { strategy: context.strategy, baseline: context.baseline }
          : undefined
    if (!stopping) {
      try {
        events.send({
          at: now(),
          queue: context.queue,
          requestId: id,
          from: previous ?? 'new',
          to: step,
          event: shortEvent(eventType),
          ...(detail === undefined ? {} : { detail }),
        })
      } catch (error) {
        logger.error({ err: error }, 'transition not logged')
      }
    }
    hosts.get(context.queue)?.notify(id, topState(step))
    if (step === 'recorded') metrics.verdicts.inc({ queue: context.queue, verdict: context.verdict ?? 'indeterminate' })
  }
  const userInspect = options.inspect
  const inspect =
    userInspect === undefined
      ? undefined
      : (event: InspectionEvent): void => {
          try {
            if (typeof userInspect === 'function') userInspect(event)
            else userInspect.next?.(event)
          } catch (error) {
            logger.warn({ err: error }, 'the inspect observer threw; ignoring')
          }
        }

  const rootActor = createActor(root, inspect === undefined ? { clock } : { clock, inspect })
  rootActor.start()

  /** What every queue host needs: one object for all of them (a queue costs memory for as long as it is open). */
  const hostDeps: QueueHostDeps = {
    storage,
    writer,
    clock,
    logger,
    sourceControlFor,
    stopped: () => (stopping ? (fatal ?? new StoppedError('the runtime is stopped; it takes no more work')) : undefined),
    onIngest: (deduplicated) => {
      metrics.ingests.inc({ deduplicated: String(deduplicated) })
    },
    lastGreenOutbox: (payload) => outboxPuts(hooks, 'lastGreen', payload, now()),
    outboxWritten,
  }

  /** Queue actors spawned so far (they fill the groups in order). */
  let queuesSpawned = 0
  const spawnQueue = (
    name: string,
    context: QueueContext,
    version: number,
    storedLastGreen: LastGreenRef | null,
    recovered: readonly QueueLastGreen[] = [],
    known?: HostKnown,
  ): QueueHost => {
    try {
      bindSourceControl(name, context.config)
    } catch (error) {
      // The queue still opens (its history stays readable, and opening it with a corrected
      // config binds it afresh); its ingests and plans fail with this error meanwhile.
      logger.error({ err: error, queue: name }, 'queue source control unavailable; open the queue with a corrected config')
      sourceControls.set(name, error instanceof Error ? error : new Error(String(error)))
    }
    // Into the newest group while it has room, else into a new one.
    const index = Math.floor(queuesSpawned / QUEUES_PER_GROUP)
    if (queuesSpawned % QUEUES_PER_GROUP === 0) rootActor.send({ type: 'group.open', index })
    queuesSpawned++
    const group = rootActor.system.get(queueGroupId(index)) as ActorRefFrom<typeof queueGroupMachine> | undefined
    if (group === undefined) throw new Error(`queue group ${index} did not start`)
    group.send({ type: 'queue.open', name, context })
    const actor = rootActor.system.get(`queue:${name}`) as QueueActor | undefined
    if (actor === undefined) throw new Error(`queue actor ${name} did not start`)
    const host = new QueueHost(name, actor, version, hostDeps, storedLastGreen, recovered, known)
    hosts.set(name, host)
    return host
  }

  // A failed event log (another process writes this node's log) refuses every transition:
  // the runtime stops rather than validate on with no log.
  events.onFailure((error) => {
    failRuntime('its event log failed', error)
  })

  let stopReport: Promise<StopReport> | undefined
  /** Stops once: later calls get the first stop's report. */
  const stopOnce = (deadlineMs: number): Promise<StopReport> => {
    stopReport ??= stop(deadlineMs)
    return stopReport
  }
  const stop = async (deadlineMs: number): Promise<StopReport> => {
    stopping = true
    // One deadline for the whole stop: storage that hangs (a connection that died silently)
    // must not hold it, so every wait below ends by then.
    const started = clock.now()
    const left = (): number => Math.max(1, Math.ceil(deadlineMs - (clock.now() - started)))
    // Hook calls under way are aborted; what they did not deliver stays in the outbox for the next start.
    await dispatcher?.stop({ deadlineMs })
    for (const cancel of salvageRetries) cancel()
    salvageRetries.clear()
    rootActor.stop()
    for (const host of hosts.values()) host.rejectWaiters(fatal ?? new StoppedError('the runtime stopped'))
    const snapshotsLeft = sleep(clock, left())
    // A runtime that stopped itself (another process writes its node's log, say) may not be
    // the only one running its queues: it writes nothing more of theirs.
    const settled = [...hosts.values()].map((host) => (fatal === undefined ? host.persistFinal() : host.flush()))
    await Promise.race([Promise.all(settled), snapshotsLeft.done])
    snapshotsLeft.cancel()
    const eventLog = await events.stop({ deadlineMs: left() })
    const drained = await writer.stop({ deadlineMs: left() })
    return { writer: drained, eventLog }
  }

  // Recovery: every queue, with its requests that had not ended.
  const recover = async (): Promise<void> => {
    for (const record of await storage.queues.list()) {
      const stopped = hostDeps.stopped() // a runtime actor failed meanwhile (set by a callback)
      if (stopped !== undefined) throw stopped
      let config: QueueConfig
      try {
        config = normalizeQueueConfig(record.config)
      } catch (error) {
        logger.error({ err: error, queue: record.name }, 'queue has an invalid stored config; not started')
        continue
      }
      const rows = await allRows(storage, record.name, ['accepted', 'processing'])
      const contexts = rows.map((row): RequestContext => {
        const data = (row.data ?? {}) as { step?: RequestStep; context?: RequestContext }
        const n = parseRequestId(row.id, record.name)
        const base =
          data.context ??
          newRequestContext({
            id: row.id,
            queue: record.name,
            uri: row.uri,
            n,
            version: row.version,
            createdAt: row.createdAt,
            maxAttempts: config.maxAttempts,
          })
        return {
          ...base,
          id: row.id,
          queue: record.name,
          uri: row.uri,
          n,
          version: row.version,
          step: data.step ?? 'accepted',
          createdAt: row.createdAt,
        }
      })
      const persisted = (record.snapshot as { context?: Partial<QueueContext> } | undefined)?.context
      const storedLastGreen: QueueLastGreen | null =
        record.lastGreen === undefined ? null : { ...record.lastGreen, n: parseRequestId(record.lastGreen.requestId, record.name) }
      // The snapshot may lag the facts: never start from an older last green than storage shows.
      const settledThrough = storedSettledThrough(record.snapshot)
      const { moves, highest, uncorrected } = await greenMoves(
        { storage, writer, logger, now },
        record.name,
        storedLastGreen?.n ?? 0,
        settledThrough,
      )
      const scanned = moves.at(-1) ?? null
      const fresh = newQueueContext(record.name, config)
      const context: QueueContext = {
        ...fresh,
        lastGreen: scanned ?? storedLastGreen,
        stats: { ...fresh.stats, ...(persisted?.stats ?? {}) },
      }
      // A newer green found by the scan moves last green: the host persists it with its hook notifications.
      const resuming = contexts.map((c) => c.n)
      const highWater = resuming.reduce((max, n) => Math.max(max, n), Math.max(settledThrough, storedLastGreen?.n ?? 0, highest))
      const host = spawnQueue(record.name, context, record.version, record.lastGreen ?? null, moves, { highWater, resuming, uncorrected })
      if (contexts.length > 0) {
        logger.info({ queue: record.name, requests: contexts.length }, 'resuming requests in flight')
        host.resume(contexts, now())
      }
    }
  }
  try {
    await recover()
    const stopped = hostDeps.stopped() // failed while the last queue was resumed
    if (stopped !== undefined) throw stopped
  } catch (error) {
    // A recovery that failed (storage) or was cut short (a runtime actor failed meanwhile)
    // leaves nothing running: the queues resumed so far would build on with no caller.
    await stopOnce(10_000)
    throw fatal ?? error
  }
  dispatcher?.start()

  const openQueue = async (name: string, input: QueueConfigInput | undefined): Promise<QueueHandle> => {
    assertQueueName(name)
    const stopped = hostDeps.stopped()
    if (stopped !== undefined) throw stopped
    // A queue this process is creating right now: wait for it, then treat it as existing.
    const creation = creating.get(name)
    if (creation !== undefined) {
      await creation.catch(() => undefined)
      const stoppedMeanwhile = hostDeps.stopped()
      if (stoppedMeanwhile !== undefined) throw stoppedMeanwhile
    }
    const existing = hosts.get(name)
    if (existing !== undefined) {
      if (input !== undefined) {
        const config = normalizeQueueConfig(input)
        // Resolved once stored: a crash right after it must not bring back the old config.
        if (JSON.stringify(config) !== JSON.stringify(existing.config())) {
          bindSourceControl(name, config)
          existing.actor.send({ type: 'config', config, at: now() })
          await existing.configStored()
        } else {
          // In effect already, but maybe not stored (the write that carried it failed).
          await existing.storedAgain()
        }
      }
      return existing
    }
    if (input === undefined) throw new NotFoundError(`queue ${name} does not exist; pass its config to create it`)
    const created = createQueue(name, input)
    creating.set(name, created)
    try {
      return await created
    } finally {
      creating.delete(name)
    }
  }

  /** Queues being created by this process, by name (a second open of one waits for the first). */
  const creating = new Map<string, Promise<QueueHandle>>()
  const createQueue = async (name: string, input: QueueConfigInput): Promise<QueueHandle> => {
    const config = normalizeQueueConfig(input)
    // Before anything is written: a repository that does not exist is refused, not stored.
    sourceControlOf(name, config)
    const context = newQueueContext(name, config)
    const at = now()
    const [result] = await writer.write([
      {
        op: 'queue.create',
        record: { name, version: 0, config: config as unknown as QueueRecord['config'], createdAt: at, updatedAt: at },
      },
    ])
    if (result?.status === 'already_exists') {
      throw new InvalidInputError(`queue ${name} was created by another process; restart this runtime to load it`)
    }
    if (result?.status !== 'ok') throw new StoppedError(`queue ${name} could not be created (${result?.status ?? 'no result'})`)
    // Stopped while the row was written: it is stored (and opens at the next start), but no actor starts now.
    const stopped = hostDeps.stopped()
    if (stopped !== undefined) throw stopped
    return hosts.get(name) ?? spawnQueue(name, context, 0, null)
  }

  const api: Stovepipe = {
    queue: openQueue,
    queues: () => [...hosts.values()],
    request: async (id) => {
      parseRequestId(id)
      return describeRequest(await storage.requests.get(id))
    },
    events,
    writer,
    system: rootActor.system,
    root: rootActor,
    registry,
    stop: (stopOptions = {}) => stopOnce(stopOptions.deadlineMs ?? 10_000),
  }
  return api
}
