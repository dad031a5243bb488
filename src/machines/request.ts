/**
 * The request machine: one validation of one queue at one URI.
 *
 * ```
 * accepted ──START──▶ processing.planning ──▶ processing.building ──▶ processing.recording ──▶ recorded
 *    ├──SUPERSEDE──▶ superseded          (planning or building) ──CANCEL / DEADLINE──▶ cancelled / recorded (indeterminate)
 * ```
 *
 * Pure: every side effect is a message to one of two service actors of the actor system,
 * or a provided action (`entered`) or delay (`retry`), swapped in by the runtime
 * (`machine.provide`) and by tests:
 *
 * - the step service (system id {@link STEP_SERVICE}) does the work of planning,
 *   recording and the final writes: the request sends `step.run` and hears `<work>.done`
 *   or `<work>.failed`;
 * - the build service (system id {@link BUILD_SERVICE}) runs builds: a request entering
 *   `building` sends `build.start`; the service persists the step, runs the builder and
 *   answers `build.done` or `build.failed` (with the row version it wrote); the request
 *   sends `build.abort` when it leaves the step (cancel, deadline).
 *
 * Shared services rather than an actor invoked per step: an invoked actor costs about 2 KB
 * of heap and a few microseconds to create (a build can run for an hour, and its actor
 * would live as long), and every actor that stops makes XState scan every timer of the
 * system. So a request actor has no children. The deadline (`deadlineAt`, absolute) is
 * kept by the queue, which sends `DEADLINE` when it passes (the queues share one timer, the
 * timer service's): a request holds no timer of its own.
 * Every durable step first persists its state (a CAS write the machine waits for), then
 * works; so a restarted runtime resumes a request at its last persisted step, where the
 * step's work starts again without writing the row first (it is already at that step).
 * Transient failures retry with backoff (`retry` delay) up to `maxAttempts`; then, or when
 * the deadline passes, the request is recorded `indeterminate` (fail closed: never green).
 *
 * @module
 */
import {
  assign,
  enqueueActions,
  not,
  sendParent,
  sendTo,
  setup,
  stateIn,
  type ActorRefFrom,
  type AnyActorRef,
  type SnapshotFrom,
} from 'xstate'
import type { BuildResult, Strategy } from '../build/types.js'
import type { RequestState } from '../storage/types.js'

/** A request's verdict: green and red are facts about the commit; indeterminate is not. */
export type Verdict = 'green' | 'red' | 'indeterminate'

/** The steps a request persists, as stored in `RequestRecord.data.step`. */
export type RequestStep =
  'accepted' | 'processing.planning' | 'processing.building' | 'processing.recording' | 'recorded' | 'superseded' | 'cancelled'

/** What a build left behind, kept with the request (plain JSON). */
export interface BuildSummary {
  outcome: 'passed' | 'failed'
  projects: Record<string, 'passed' | 'failed'> | null
  /** The last 64 KiB of the build's output. */
  log: string | null
}

/** The request machine's context: plain JSON, persisted as is. */
export interface RequestContext {
  id: string
  queue: string
  uri: string
  /** The request number (`request/<queue>/<n>`). */
  n: number
  /** CAS version of the stored row. */
  version: number
  /** The step last persisted (where a restarted runtime resumes). */
  step: RequestStep
  createdAt: number
  /** Attempts a step gets before the request is recorded indeterminate. */
  maxAttempts: number
  projects: string[] | null
  /** The queue's last green when processing started. */
  lastGreen: { uri: string; requestId: string } | null
  startedAt: number | null
  /** Absolute deadline (epoch ms); re-armed after a restart. */
  deadlineAt: number | null
  strategy: Strategy | null
  baseline: string | null
  /** Why the strategy is full when a last green exists. */
  fallback: string | null
  /** Failed attempts of the current step. */
  attempt: number
  build: BuildSummary | null
  verdict: Verdict | null
  /** 0 green … 1 fully broken; null when indeterminate. */
  degree: number | null
  /** Why the verdict is what it is (indeterminate reasons, existing facts). */
  reason: string | null
  /** Whether this request wrote the fact (false when one existed: first writer wins). */
  factWritten: boolean | null
  supersededBy: string | null
  endedAt: number | null
}

/** Input of a new request, or of one resumed from storage. */
export type RequestInput =
  | { kind: 'new'; id: string; queue: string; uri: string; n: number; version: number; createdAt: number; maxAttempts: number }
  /**
   * `at`: when the request resumes. A request resumed in planning or building whose deadline
   * passed by then (the runtime was down, or its end was not stored before a stop) concludes
   * at once, indeterminate, without starting its build again: see {@link pastDeadlineAt}.
   */
  | { kind: 'resume'; context: RequestContext; at?: number }

/** The reason of a request whose deadline passed. */
const DEADLINE_REASON = 'maxValidationMs passed'

/** The steps a passed deadline interrupts (recording is too late to interrupt). */
const deadlineInterrupts = (step: RequestStep): boolean => step === 'processing.planning' || step === 'processing.building'

/**
 * Whether a request resumed at `at` is past its deadline in a step the deadline interrupts
 * (planning or building). The queue does not tell it `DEADLINE` (the request concludes as it
 * resumes), and its build does not start again: its slot may have been given to another
 * request meanwhile (the lease expired), so a new build would exceed `maxConcurrent`.
 */
export function pastDeadlineAt(context: RequestContext, at: number): boolean {
  return deadlineInterrupts(context.step) && context.deadlineAt !== null && context.deadlineAt <= at
}

/** The context a request starts from: new, or resumed (past its deadline: concluding indeterminate). */
function initialContext(input: RequestInput): RequestContext {
  if (input.kind === 'new') return newRequestContext(input)
  if (input.at === undefined || !pastDeadlineAt(input.context, input.at)) return input.context
  return { ...input.context, verdict: 'indeterminate', degree: null, reason: DEADLINE_REASON, attempt: 0 }
}

/** Events a request accepts. */
export type RequestEvent =
  | {
      type: 'START'
      at: number
      deadlineAt: number
      lastGreen: { uri: string; requestId: string } | null
      projects: string[] | null
    }
  | { type: 'SUPERSEDE'; by: string; at: number }
  | { type: 'CANCEL'; at: number }
  /** `deadlineAt` passed (sent by the queue): planning or building ends indeterminate. */
  | { type: 'DEADLINE'; at: number }
  /** From the build service: the step is persisted at `version` and the build ended (an `error` outcome comes as `build.failed`). */
  | { type: 'build.done'; result: BuildResult; version: number }
  /** From the build service: the step could not be persisted (`version` null), or the build could not run or its infrastructure failed. */
  | { type: 'build.failed'; error: unknown; version: number | null }
  /** From the step service: the planning step is persisted and planned. */
  | { type: 'plan.done'; output: PlanOutput }
  /** From the step service: the recording step is persisted and the verdict recorded. */
  | { type: 'record.done'; output: RecordOutput }
  /** From the step service: the final state (superseded or cancelled) is persisted. */
  | { type: 'persist.done'; output: PersistOutput }
  /** From the step service: the work failed (`error`: retryable or not). */
  | { type: 'plan.failed' | 'record.failed' | 'persist.failed'; error: unknown }

/** System id of the build service (see the module comment). */
export const BUILD_SERVICE = 'builds'

/** Messages the build service takes. */
export type BuildServiceEvent =
  /** Persist `context` at `processing.building` (CAS from its version) unless `resumed`, run its build, answer `reply`. */
  | {
      type: 'build.start'
      context: RequestContext
      reply: AnyActorRef
      /** The request resumed at this step after a restart: its row is already at `processing.building` (no write needed before the build). */
      resumed: boolean
    }
  /** Stop the build of request `id`, if it runs; no answer. */
  | { type: 'build.abort'; id: string }

/** System id of the step service (see the module comment). */
export const STEP_SERVICE = 'steps'

/** The work the step service does for a request. */
export type StepWork =
  /** Persist `input.step`, then plan the build (strategy and baseline). */
  | { work: 'plan'; input: StepInput }
  /** Persist `input.step` (unless `concluding`), then write the fact (unless one exists) and the verdict. */
  | { work: 'record'; input: StepInput }
  /** Persist `input.step` (a final state other than recorded). */
  | { work: 'persist'; input: PersistInput }

/**
 * Messages the step service takes: do `work` for the request `reply`, then answer it with
 * `<work>.done` (with the work's output) or `<work>.failed` (with the error).
 */
export type StepServiceEvent = StepWork & { type: 'step.run'; reply: AnyActorRef }

/** What a request tells its queue when it ends. */
export type RequestReport =
  | { type: 'request.recorded'; id: string; n: number; uri: string; verdict: Verdict; at: number }
  | { type: 'request.ended'; id: string; n: number; state: 'superseded' | 'cancelled'; at: number }

/** The context of a request just accepted (also what ingest stores in its row). */
export function newRequestContext(input: Omit<Extract<RequestInput, { kind: 'new' }>, 'kind'>): RequestContext {
  const { id, queue, uri, n, version, createdAt, maxAttempts } = input
  // Returned as a spread copy of the literal, on purpose. XState's `assign` copies a context
  // with `Object.assign({}, context, update)`, and V8 turns such a copy of a 23-field object
  // literal into a dictionary (about 1.6 KB instead of about 0.3 KB, and slower to read)
  // unless an object with these fields was once built by a spread or JSON.parse, which lays
  // down the hidden classes the copy then follows. Measured by `npm run bench:runtime`
  // (heap per request in flight, bare XState).
  const context: RequestContext = {
    id,
    queue,
    uri,
    n,
    version,
    step: 'accepted',
    createdAt,
    maxAttempts,
    projects: null,
    lastGreen: null,
    startedAt: null,
    deadlineAt: null,
    strategy: null,
    baseline: null,
    fallback: null,
    attempt: 0,
    build: null,
    verdict: null,
    degree: null,
    reason: null,
    factWritten: null,
    supersededBy: null,
    endedAt: null,
  }
  return { ...context }
}

/** Input of the `persist` work: write the context as `step` (CAS from `context.version`). */
export interface PersistInput {
  context: RequestContext
  step: RequestStep
  state: RequestState
}
/** Output of `persist`: the stored version and step. */
export interface PersistOutput {
  version: number
  step: RequestStep
}
/** Input of the `plan` and `record` work: persist `step`, then do the work. */
export interface StepInput {
  context: RequestContext
  /** The step to persist first (`concluding` records without persisting a step of its own). */
  step: RequestStep | 'concluding'
  /**
   * The request resumed at this step after a restart (it entered it on `xstate.init`): its
   * row is already at `step`, so the work starts without writing it again.
   */
  resumed?: boolean
}
/** Output of `plan`: the strategy, and the row version after persisting the step. */
export interface PlanOutput {
  strategy: Strategy
  baseline: string | null
  fallback: string | null
  version: number
}
/** Output of `record`: the verdict as stored (an existing fact wins), and the row version. */
export interface RecordOutput {
  verdict: Verdict
  degree: number | null
  factWritten: boolean
  reason: string | null
  version: number
  at: number
}

/** A failure the runtime may retry (storage or infrastructure unavailable). */
function isRetryable(error: unknown): boolean {
  return typeof error === 'object' && error !== null && 'retryable' in error && error.retryable === true
}

function describe(error: unknown): string {
  return error instanceof Error ? `${error.name}: ${error.message}` : String(error)
}

/** The top-level state of a step, as stored in the row's `state` column. */
export function stateOfStep(step: RequestStep): RequestState {
  return step.startsWith('processing.') ? 'processing' : (step as RequestState)
}

/** What a failed step does: retries after a backoff while it may, else records indeterminate. */
const retryOrConclude = [
  { guard: 'canRetry' as const, target: 'waiting', actions: 'failedAttempt' as const },
  { target: '#request.concluding', actions: 'gaveUp' as const },
]
/** What a failed final write does: retries while storage is unavailable, else escalates to the queue. */
/**
 * The per-project results a build's facts are written from: of the queue's projects, those
 * the builder reported (another project it names is none of this queue's); without queue
 * projects, whatever the builder reported.
 */
function projectResults(
  configured: readonly string[] | null,
  reported: Record<string, 'passed' | 'failed'> | undefined,
): Record<string, 'passed' | 'failed'> | null {
  if (reported === undefined) return null
  if (configured === null) return { ...reported }
  const kept: Record<string, 'passed' | 'failed'> = {}
  for (const project of configured) {
    const outcome = reported[project]
    if (outcome !== undefined) kept[project] = outcome
  }
  return Object.keys(kept).length > 0 ? kept : null
}

/**
 * The degree of a build: the fraction of `names` (the projects) that did not pass (a project
 * the builder did not report did not pass), or without projects 0 when it passed and 1 when
 * it failed. A failed build is never degree 0: when every project passed, something outside
 * them broke, and the whole repository counts as broken.
 */
function degreeOf(outcome: 'passed' | 'failed', names: readonly string[], projects: Record<string, 'passed' | 'failed'> | null): number {
  const fraction = names.length === 0 ? 1 : names.filter((name) => projects?.[name] !== 'passed').length / names.length
  if (outcome === 'failed') return fraction === 0 ? 1 : fraction
  return names.length === 0 ? 0 : fraction
}

const retryOrEscalate = [
  { guard: 'retryable' as const, target: 'waiting', actions: 'failedAttempt' as const },
  { actions: 'escalate' as const },
]

/**
 * Whether a step was entered by the actor's start, which only a resumed request does (its
 * `boot` state routes it to the step it had persisted, on `xstate.init`).
 */
const resumedBy = (event: { type: string }): boolean => event.type === 'xstate.init'

/** Parameters of `runStep`: the work asked of the step service, and the step it persists. */
type RunStep = { work: 'plan' | 'record'; step: RequestStep | 'concluding' } | { work: 'persist'; step: 'superseded' | 'cancelled' }

/** The request machine. */
export const requestMachine = setup({
  types: {
    context: {} as RequestContext,
    events: {} as RequestEvent,
    input: {} as RequestInput,
  },
  delays: {
    /** Backoff before the next attempt of a step (the runtime provides jitter and its clock). */
    retry: ({ context }) => Math.min(30_000, 1000 * 2 ** Math.max(0, context.attempt - 1)),
  },
  guards: {
    canRetry: ({ context, event }) => isRetryable((event as { error?: unknown }).error) && context.attempt + 1 < context.maxAttempts,
    retryable: ({ event }) => isRetryable((event as { error?: unknown }).error),
  },
  actions: {
    /** The request entered a step: the runtime logs the transition and wakes waiters. */
    entered: (_, _params: { step: string }) => undefined,
    started: assign(({ event }) => {
      if (event.type !== 'START') return {}
      return { startedAt: event.at, deadlineAt: event.deadlineAt, lastGreen: event.lastGreen, projects: event.projects, attempt: 0 }
    }),
    planned: assign(({ event }) => {
      if (event.type !== 'plan.done') return {}
      const { strategy, baseline, fallback, version } = event.output
      return { strategy, baseline, fallback, version, step: 'processing.planning' as const, attempt: 0 }
    }),
    /** Asks the step service to do a step's work (it answers `<work>.done` or `<work>.failed`). */
    runStep: sendTo(
      ({ system }) => system.get(STEP_SERVICE) as AnyActorRef,
      ({ context, self, event }, params: RunStep): StepServiceEvent =>
        params.work === 'persist'
          ? { type: 'step.run', work: 'persist', input: { context, step: params.step, state: params.step }, reply: self }
          : {
              type: 'step.run',
              work: params.work,
              input: { context, step: params.step, resumed: resumedBy(event) },
              reply: self,
            },
    ),
    /** Asks the build service to run this request's build. */
    startBuild: sendTo(
      ({ system }) => system.get(BUILD_SERVICE) as AnyActorRef,
      ({ context, self, event }): BuildServiceEvent => ({ type: 'build.start', context, reply: self, resumed: resumedBy(event) }),
    ),
    /**
     * Tells the build service to stop this request's build, unless the build's own answer
     * is what ends the step (the service has already let it go).
     */
    abortBuild: enqueueActions(({ enqueue, context, event, system }) => {
      if (event.type === 'build.done' || event.type === 'build.failed') return
      enqueue.sendTo(system.get(BUILD_SERVICE) as AnyActorRef, { type: 'build.abort', id: context.id } satisfies BuildServiceEvent)
    }),
    /** The build service persisted the build step before the build failed: keep the row version. */
    buildStored: assign(({ event }) =>
      event.type === 'build.failed' && event.version !== null ? { version: event.version, step: 'processing.building' as const } : {},
    ),
    built: assign(({ context, event }) => {
      if (event.type !== 'build.done') return {}
      const { result, version } = event
      const outcome = result.outcome === 'passed' ? ('passed' as const) : ('failed' as const)
      const projects = projectResults(context.projects, result.projects)
      const build: BuildSummary = { outcome, projects, log: result.log === undefined ? null : result.log.slice(-64 * 1024) }
      const degree = degreeOf(outcome, context.projects ?? Object.keys(projects ?? {}), projects)
      const verdict = degree === 0 ? ('green' as const) : ('red' as const)
      return { build, degree, verdict, version, step: 'processing.building' as const, attempt: 0 }
    }),
    recorded: assign(({ event }) => {
      if (event.type !== 'record.done') return {}
      const out = event.output
      return {
        verdict: out.verdict,
        degree: out.degree,
        factWritten: out.factWritten,
        reason: out.reason,
        version: out.version,
        step: 'recorded' as const,
        endedAt: out.at,
      }
    }),
    failedAttempt: assign(({ context }) => ({ attempt: context.attempt + 1 })),
    gaveUp: assign(({ context, event }) => ({
      verdict: 'indeterminate' as const,
      degree: null,
      reason: `gave up after ${context.attempt + 1} attempt(s): ${describe((event as { error?: unknown }).error)}`,
      attempt: 0,
    })),
    deadlinePassed: assign({ verdict: 'indeterminate' as const, degree: null, reason: DEADLINE_REASON, attempt: 0 }),
    superseded: assign(({ event }) => (event.type === 'SUPERSEDE' ? { supersededBy: event.by, endedAt: event.at } : {})),
    cancelled: assign(({ event }) => (event.type === 'CANCEL' ? { endedAt: event.at, reason: 'cancelled' } : {})),
    ended: assign(({ event }) => {
      if (event.type !== 'persist.done') return {}
      const { version, step } = event.output
      return { version, step }
    }),
    reportRecorded: sendParent(({ context }): RequestReport => ({
      type: 'request.recorded',
      id: context.id,
      n: context.n,
      uri: context.uri,
      verdict: context.verdict ?? 'indeterminate',
      at: context.endedAt ?? 0,
    })),
    /** Tells the queue the request ended without a verdict (`state`: superseded or cancelled). */
    reportEnded: sendParent(({ context }, params: { state: 'superseded' | 'cancelled' }): RequestReport => ({
      type: 'request.ended',
      id: context.id,
      n: context.n,
      state: params.state,
      at: context.endedAt ?? 0,
    })),
    /** A final write failed for good: escalate to the queue, which salvages and logs. */
    escalate: ({ event }) => {
      const { error } = event as { error?: unknown }
      throw error instanceof Error ? error : new Error(describe(error))
    },
  },
}).createMachine({
  id: 'request',
  context: ({ input }) => initialContext(input),
  initial: 'boot',
  states: {
    /**
     * Routes a resumed request to the step it had persisted (or, past its deadline in planning
     * or building, to concluding: see {@link initialContext}); new requests go to accepted.
     */
    boot: {
      always: [
        {
          guard: ({ context }) => context.verdict === 'indeterminate' && deadlineInterrupts(context.step),
          target: '#request.concluding',
        },
        { guard: ({ context }) => context.step === 'processing.planning', target: '#request.processing.planning' },
        { guard: ({ context }) => context.step === 'processing.building', target: '#request.processing.building' },
        { guard: ({ context }) => context.step === 'processing.recording', target: '#request.processing.recording' },
        { target: 'accepted' },
      ],
    },
    accepted: {
      entry: { type: 'entered', params: { step: 'accepted' } },
      on: {
        START: { target: 'processing', actions: 'started' },
        SUPERSEDE: { target: 'superseding', actions: 'superseded' },
        CANCEL: { target: 'cancelling', actions: 'cancelled' },
      },
    },
    processing: {
      initial: 'planning',
      // The deadline covers planning and building; recording is too late to interrupt.
      on: {
        DEADLINE: { guard: not(stateIn('#request.processing.recording')), target: '#request.concluding', actions: 'deadlinePassed' },
      },
      states: {
        /** Persists the step, then plans: full, or incremental since last green. */
        planning: {
          initial: 'running',
          entry: { type: 'entered', params: { step: 'processing.planning' } },
          on: { CANCEL: { target: '#request.cancelling', actions: 'cancelled' } },
          states: {
            running: {
              entry: { type: 'runStep', params: { work: 'plan', step: 'processing.planning' } },
              on: { 'plan.done': { target: '#request.processing.building', actions: 'planned' }, 'plan.failed': retryOrConclude },
            },
            waiting: { after: { retry: 'running' } },
          },
        },
        /** The build service persists the step, then runs the build. */
        building: {
          initial: 'running',
          entry: { type: 'entered', params: { step: 'processing.building' } },
          on: { CANCEL: { target: '#request.cancelling', actions: 'cancelled' } },
          states: {
            running: {
              entry: 'startBuild',
              exit: 'abortBuild',
              on: {
                'build.done': { target: '#request.processing.recording', actions: 'built' },
                'build.failed': [
                  { guard: 'canRetry', target: 'waiting', actions: ['buildStored', 'failedAttempt'] },
                  { target: '#request.concluding', actions: ['buildStored', 'gaveUp'] },
                ],
              },
            },
            waiting: { after: { retry: 'running' } },
          },
        },
        /** Persists the build result, then writes the fact (unless one exists) and the verdict. */
        recording: {
          initial: 'running',
          entry: { type: 'entered', params: { step: 'processing.recording' } },
          states: {
            running: {
              entry: { type: 'runStep', params: { work: 'record', step: 'processing.recording' } },
              on: { 'record.done': { target: '#request.recorded', actions: 'recorded' }, 'record.failed': retryOrConclude },
            },
            waiting: { after: { retry: 'running' } },
          },
        },
      },
    },
    /** Records an indeterminate verdict (no fact). Retries while storage is unavailable. */
    concluding: {
      entry: { type: 'entered', params: { step: 'concluding' } },
      initial: 'running',
      states: {
        running: {
          entry: { type: 'runStep', params: { work: 'record', step: 'concluding' } },
          on: { 'record.done': { target: '#request.recorded', actions: 'recorded' }, 'record.failed': retryOrEscalate },
        },
        waiting: { after: { retry: 'running' } },
      },
    },
    superseding: { ...terminal('superseded'), entry: { type: 'entered', params: { step: 'superseding' } } },
    cancelling: { ...terminal('cancelled'), entry: { type: 'entered', params: { step: 'cancelling' } } },
    recorded: { type: 'final', entry: [{ type: 'entered', params: { step: 'recorded' } }, 'reportRecorded'] },
    superseded: {
      type: 'final',
      entry: [
        { type: 'entered', params: { step: 'superseded' } },
        { type: 'reportEnded', params: { state: 'superseded' } },
      ],
    },
    cancelled: {
      type: 'final',
      entry: [
        { type: 'entered', params: { step: 'cancelled' } },
        { type: 'reportEnded', params: { state: 'cancelled' } },
      ],
    },
  },
})

/** Persists a final state other than recorded, then enters it. */
function terminal(final: 'superseded' | 'cancelled') {
  return {
    initial: 'running' as const,
    states: {
      running: {
        entry: { type: 'runStep' as const, params: { work: 'persist' as const, step: final } },
        on: {
          'persist.done': { target: `#request.${final}`, actions: 'ended' as const },
          'persist.failed': retryOrEscalate,
        },
      },
      waiting: { after: { retry: 'running' } },
    },
  }
}

/** The request machine's actor type. */
export type RequestActor = ActorRefFrom<typeof requestMachine>
/** A request machine snapshot. */
export type RequestSnapshot = SnapshotFrom<typeof requestMachine>
