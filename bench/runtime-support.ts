/**
 * Helpers of `bench/runtime.ts`: the bare XState baseline (the same machines with stub
 * services, no persistence), a builder that holds every build until the runtime stops, a
 * stateless source control, request rows in the shape the runtime writes, and heap probes.
 */
import { PerformanceObserver, type PerformanceEntry } from 'node:perf_hooks'
import { createActor, enqueueActions, fromCallback, setup, type AnyActorRef } from 'xstate'
import { TIMER_SERVICE, timerService } from '../src/actors/timer-service.js'
import {
  BUILD_SERVICE,
  STEP_SERVICE,
  type BuildServiceEvent,
  newQueueContext,
  newRequestContext,
  QUEUES_PER_GROUP,
  queueGroupId,
  queueGroupMachine,
  queueMachine,
  requestMachine,
  type QueueConfig,
  type RequestContext,
  type RequestEvent,
  type StepInput,
  type StepServiceEvent,
} from '../src/machines/index.js'
import {
  DEFAULT_QUEUE_CONFIG,
  type BuildResult,
  type BuildRunner,
  type RequestRecord,
  type SourceControl,
  type SourceControlProvider,
} from '../src/index.js'

/** Milliseconds since `start` (a `performance.now()` reading). */
export const since = (start: number): number => performance.now() - start

const benchStart = performance.now()

/** A progress line on stderr (stdout holds the results), stamped with the seconds since the bench started. */
export function progress(line: string): void {
  process.stderr.write(`  ${((performance.now() - benchStart) / 1000).toFixed(1).padStart(6)} s  ${line}\n`)
}

/** A queue configuration as `normalizeQueueConfig` fills it in. */
export function queueConfig(ref: string, maxConcurrent = 1): QueueConfig {
  return { ref, ...DEFAULT_QUEUE_CONFIG, maxConcurrent }
}

/** Options of {@link stubRequestMachine}. */
export interface StubOptions {
  /** Called on every step the machine enters (the runtime's `entered` action). */
  onStep?: (context: RequestContext, step: string) => void
  /**
   * For request actors without services in their system (each its own root): the request
   * asks no service for anything, so the step it is in (its build) stays in flight.
   */
  standalone?: boolean
}

/**
 * The request machine with a fixed retry delay and an `entered` action that calls
 * `onStep`; standalone, it asks no service for anything (each step stays in flight).
 */
export function stubRequestMachine(options: StubOptions = {}) {
  const { onStep, standalone = false } = options
  return requestMachine.provide({
    actions: {
      entered: ({ context }, params: { step: string }) => {
        onStep?.(context, params.step)
      },
      ...(standalone ? { runStep: () => undefined, startBuild: () => undefined, abortBuild: () => undefined } : {}),
    },
    delays: {
      retry: () => 1000,
    },
  })
}

/**
 * The step service, stubbed: answers at once what the runtime's would (each step "persisted",
 * version + 1; the plan full or incremental; the verdict as the build left it).
 */
export const stubSteps = fromCallback<StepServiceEvent>(({ receive }) => {
  const next = (input: StepInput): number => (input.step === 'concluding' ? input.context.version : input.context.version + 1)
  receive((event) => {
    let answer: RequestEvent
    if (event.work === 'persist') {
      answer = { type: 'persist.done', output: { version: event.input.context.version + 1, step: event.input.step } }
    } else if (event.work === 'plan') {
      const { context } = event.input
      const version = next(event.input)
      answer = {
        type: 'plan.done',
        output:
          context.lastGreen === null
            ? { strategy: 'full', baseline: null, fallback: 'no last green yet', version }
            : { strategy: 'incremental', baseline: context.lastGreen.uri, fallback: null, version },
      }
    } else {
      const { context } = event.input
      answer = {
        type: 'record.done',
        output: {
          verdict: context.verdict ?? 'indeterminate',
          degree: context.degree,
          factWritten: context.verdict !== 'indeterminate',
          reason: context.reason,
          version: next(event.input) + 1,
          at: Date.now(),
        },
      }
    }
    event.reply.send(answer)
  })
})

/**
 * The bare baseline: one actor system shaped like the runtime's (a root spawning queue
 * groups, each spawning up to QUEUES_PER_GROUP queue actors, request actors as their
 * children), the real queue and request machines
 * with stub step and build services answering at once and the runtime's timer service, no
 * storage, no writer, no event log.
 */
export class BareSystem {
  private readonly waiters = new Map<string, () => void>()
  private readonly counters = new Map<string, number>()
  private readonly root: AnyActorRef
  /** Requests that entered `processing.building`. */
  building = 0

  constructor(options: { holdBuilds?: boolean } = {}) {
    const holdBuilds = options.holdBuilds ?? false
    const request = stubRequestMachine({
      onStep: (context, step) => {
        if (step === 'processing.building') this.building++
        if (step !== 'recorded') return
        const wake = this.waiters.get(context.id)
        if (wake === undefined) return
        this.waiters.delete(context.id)
        wake()
      },
    })
    const queue = queueMachine.provide({ actors: { request } })
    // The build service, stubbed: the step "persisted" (version + 1) and the build passed at once, or in flight.
    const builds = fromCallback<BuildServiceEvent>(({ receive }) => {
      receive((event) => {
        if (event.type === 'build.start' && !holdBuilds)
          event.reply.send({ type: 'build.done', result: { outcome: 'passed' }, version: event.context.version + 1 })
      })
    })
    const group = queueGroupMachine.provide({ actors: { queue } })
    const root = setup({
      types: { events: {} as { type: 'group.open'; index: number } },
      actors: { group, builds, steps: stubSteps, timers: timerService({ now: () => Date.now() }) },
    }).createMachine({
      id: 'bare',
      invoke: [
        { src: 'builds', id: 'builds', systemId: BUILD_SERVICE },
        { src: 'steps', id: 'steps', systemId: STEP_SERVICE },
        { src: 'timers', id: 'timers', systemId: TIMER_SERVICE },
      ],
      on: {
        'group.open': {
          actions: enqueueActions(({ enqueue, event }) => {
            const id = queueGroupId(event.index)
            enqueue.spawnChild('group', { id, systemId: id })
          }),
        },
      },
    })
    this.root = createActor(root).start()
  }

  /** Spawns a queue actor. */
  open(name: string, maxConcurrent = 1): void {
    const context = newQueueContext(name, queueConfig(name, maxConcurrent))
    const index = Math.floor(this.counters.size / QUEUES_PER_GROUP)
    if (this.counters.size % QUEUES_PER_GROUP === 0) this.root.send({ type: 'group.open', index })
    ;(this.root.system.get(queueGroupId(index)) as AnyActorRef).send({ type: 'queue.open', name, context })
    this.counters.set(name, 0)
  }

  /** Mints a request on a queue; resolves when it is recorded. */
  lifecycle(name: string): Promise<void> {
    const id = this.nextId(name)
    const done = new Promise<void>((resolve) => {
      this.waiters.set(id, resolve)
    })
    this.accept(name, id)
    return done
  }

  /** Mints a request on a queue without waiting for it (it stays in flight with held builds). */
  mint(name: string): void {
    this.accept(name, this.nextId(name))
  }

  private nextId(name: string): string {
    const n = (this.counters.get(name) ?? 0) + 1
    this.counters.set(name, n)
    return `request/${name}/${n}`
  }

  private accept(name: string, id: string): void {
    const n = Number(id.slice(id.lastIndexOf('/') + 1))
    const at = Date.now()
    const queue = this.root.system.get(`queue:${name}`) as AnyActorRef | undefined
    if (queue === undefined) throw new Error(`bare queue ${name} is not open`)
    queue.send({ type: 'request.accepted', id, n, uri: `fake://${name}-${n}`, version: 0, createdAt: at, at })
  }

  stop(): void {
    this.root.stop()
  }
}

/** A builder whose builds run until the runtime aborts them (on stop). */
export interface HeldBuilder extends BuildRunner {
  /** Builds started so far. */
  started(): number
}

/** Creates a {@link HeldBuilder}. */
export function createHeldBuilder(): HeldBuilder {
  let started = 0
  return {
    started: () => started,
    run(request) {
      started++
      return new Promise<BuildResult>((_resolve, reject) => {
        request.signal.addEventListener('abort', () => {
          reject(new Error(`build of ${request.uri} aborted`))
        })
      })
    },
  }
}

/**
 * A source control that keeps nothing: each `latest()` is a new head `fake://<queue>-<k>`
 * (a ref that moves on every look, as under a stream of pushes), every commit descends
 * from every other. Lifecycle clients can ingest at once without racing for heads, and
 * heap figures do not count the fake's commit graph as the runtime's.
 */
export function createStatelessSourceControl(): SourceControlProvider {
  return {
    forQueue: ({ queue }): SourceControl => {
      let k = 0
      return {
        latest: () => Promise.resolve(`fake://${queue}-${++k}`),
        isAncestor: () => Promise.resolve(true),
        history: () => Promise.resolve({ items: [] }),
      }
    },
  }
}

/**
 * The row of a request that persisted `processing.building`, in the shape the runtime
 * writes it (`requestRecord` of `src/runtime/request-services.ts`): state `processing`,
 * `data = { step, context }` with the context at that step and version 2 (created at 0,
 * planning 1, building 2).
 */
export function buildingRow(queue: string, n: number, at: number, config: QueueConfig): RequestRecord {
  const id = `request/${queue}/${n}`
  const uri = `fake://${queue}-${n}`
  const step = 'processing.building' as const
  const version = 2
  const context: RequestContext = {
    ...newRequestContext({ id, queue, uri, n, version, createdAt: at, maxAttempts: config.maxAttempts }),
    step,
    startedAt: at,
    deadlineAt: at + config.maxValidationMs,
    strategy: 'full',
    baseline: null,
    fallback: 'no last green yet',
  }
  return { id, queue, uri, state: 'processing', version, createdAt: at, updatedAt: at, data: { step, context } as never }
}

/** The sorted key paths of a JSON value (to compare row shapes, not values). */
export function shapeOf(value: unknown, prefix = ''): string[] {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return [prefix]
  return Object.entries(value as Record<string, unknown>)
    .flatMap(([key, inner]) => shapeOf(inner, prefix === '' ? key : `${prefix}.${key}`))
    .sort()
}

/**
 * Sums the time V8's collector paused the main thread (the `gc` performance entries that
 * start between the call and `stop()`); `stop()` resolves to milliseconds. Used to
 * show how much of a lifecycle goes to collecting garbage, which grows with the lifecycles
 * in flight (more young objects survive each scavenge).
 */
export function gcMeter(): { stop(): Promise<number> } {
  const since = performance.now()
  let until = Number.POSITIVE_INFINITY
  let ms = 0
  const add = (entries: readonly PerformanceEntry[]): void => {
    for (const entry of entries) if (entry.startTime >= since && entry.startTime < until) ms += entry.duration
  }
  const observer = new PerformanceObserver((list) => {
    add(list.getEntries())
  })
  observer.observe({ entryTypes: ['gc'] })
  return {
    stop: async () => {
      until = performance.now()
      // V8 reports a collection to observers from a task of its own: a run made only of
      // promise jobs has had none, so let those tasks run before taking what is left.
      for (let i = 0; i < 3; i++) await new Promise((resolve) => setImmediate(resolve))
      add(observer.takeRecords())
      observer.disconnect()
      return ms
    },
  }
}

/** Forces full collections and returns the heap in use, in bytes. Needs `--expose-gc`. */
export async function settledHeap(): Promise<number> {
  const gc = (globalThis as { gc?: () => void }).gc
  if (gc === undefined) throw new Error('run with node --expose-gc (bench/runtime.ts re-executes itself with it)')
  for (let i = 0; i < 4; i++) {
    gc()
    await new Promise((resolve) => setImmediate(resolve))
  }
  return process.memoryUsage().heapUsed
}

/** Waits (polling every 5 ms) until `done()` holds, or fails after `timeoutMs`. */
export async function until(done: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = performance.now() + timeoutMs
  while (!done()) {
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
}
