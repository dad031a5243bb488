/**
 * The side effects of the request machine, as the runtime provides them, in two callback
 * actors for the whole actor system: the step service, which persists a step (CAS through
 * the writer), plans (source control), records (fact and verdict) and writes final states;
 * and the build service, which runs every request's build and aborts it when the request
 * leaves its build step (cancel, deadline) or the service stops (the runtime stopped).
 *
 * @internal
 * @module
 */
import { isDeepStrictEqual } from 'node:util'
import type { Logger } from 'pino'
import { fromCallback, type AnyActorRef } from 'xstate'
import type { Clock } from '../actors/clock.js'
import { isRunning } from '../actors/running.js'
import type { WriterResult, Writer } from '../actors/writer.js'
import type { BuildResult, BuildRunner } from '../build/types.js'
import { truncateText } from '../hooks/outbox.js'
import type { VerdictPayload } from '../hooks/types.js'
import {
  stateOfStep,
  type BuildServiceEvent,
  type StepServiceEvent,
  type PersistInput,
  type PersistOutput,
  type PlanOutput,
  type RecordOutput,
  type RequestContext,
  type RequestEvent,
  type RequestStep,
  type StepInput,
  type Verdict,
} from '../machines/request.js'
import type { SourceControl } from '../sourcecontrol/types.js'
import {
  InvalidInputError,
  NotFoundError,
  StoppedError,
  StorageFailedError,
  StorageUnavailableError,
  UnavailableError,
  VersionMismatchError,
  type StovepipeError,
} from '../storage/errors.js'
import {
  FINAL_REQUEST_STATES,
  type Fact,
  type Json,
  type RequestRecord,
  type RequestState,
  type Storage,
  type WriteOp,
} from '../storage/types.js'

/** What the services need from the runtime. */
export interface RequestServiceDeps {
  storage: Storage
  writer: Writer
  builder: BuildRunner
  clock: Clock
  logger: Logger
  /** The source control of a queue. */
  sourceControlFor(queue: string): SourceControl
  /** Counts a planning fallback (last green unknown to source control). */
  onFallback(queue: string, reason: string): void
  /** True when some hook has `onVerdict`: the record step then reads the commit's fact first. */
  notifiesVerdicts: boolean
  /** The `outbox.put` ops announcing a verdict (one per hook with `onVerdict`; none without hooks). */
  verdictOutbox(payload: VerdictPayload): WriteOp[]
  /** Outbox entries were committed: wake the hook dispatcher. */
  outboxWritten(): void
  /** A request row was committed (whoever waits for the request is answered from it). */
  committed(record: RequestRecord): void
}

/** Longest verdict reason carried in a hook payload, in UTF-8 bytes. */
const MAX_PAYLOAD_REASON_BYTES = 4096

/** The payload of a request's verdict, for hooks. */
export function verdictPayload(
  context: Pick<RequestContext, 'queue' | 'id' | 'uri'>,
  outcome: { verdict: Verdict; degree: number | null; reason: string | null },
  at: number,
): VerdictPayload {
  const { verdict, degree, reason } = outcome
  const text = reason === null ? null : truncateText(reason, MAX_PAYLOAD_REASON_BYTES)
  return { queue: context.queue, requestId: context.id, uri: context.uri, verdict, degree, reason: text, at }
}

/**
 * Checks the outcomes of the outbox puts a write carried: wakes the dispatcher when one was
 * stored, logs loudly when one was dead-lettered (its change was recorded without it).
 */
export function outboxOutcome(
  deps: Pick<RequestServiceDeps, 'logger' | 'outboxWritten'>,
  results: readonly WriterResult[],
  what: string,
): void {
  // `already_exists`: stored by an earlier attempt whose acknowledgement was lost (the dispatcher may not know yet).
  if (results.some((result) => result.status === 'ok' || result.status === 'already_exists')) deps.outboxWritten()
  const lost = results.find((result) => result.status === 'dead_lettered')
  if (lost !== undefined)
    deps.logger.error({ err: writeFailure(lost, what) }, 'a hook notification was not stored; hooks will not hear of this change')
}

/**
 * The error a dead-lettered write stands for: retryable when storage was unavailable, a
 * StoppedError when the writer stopped before committing it (the runtime stops).
 */
export function writeFailure(result: WriterResult, what: string): StovepipeError {
  if (result.status !== 'dead_lettered') return new StorageFailedError(`${what}: unexpected ${result.status}`)
  const message = `${what} was not written: ${result.error.message}`
  if (result.error.code === 'STOPPED') return new StoppedError(message)
  return result.error.code === 'STORAGE_UNAVAILABLE' ? new StorageUnavailableError(message) : new StorageFailedError(message)
}

/** The request row for a context at a step. */
export function requestRecord(context: RequestContext, step: RequestStep, state: RequestState, version: number, at: number): RequestRecord {
  return {
    id: context.id,
    queue: context.queue,
    uri: context.uri,
    state,
    version,
    createdAt: context.createdAt,
    updatedAt: at,
    data: { step, context: { ...context, step, version } } as unknown as Json,
  }
}

/** True when `stored` is the row `record` describes (same version, state and data, as JSON stores them). */
function isThisWrite(stored: RequestRecord, record: RequestRecord): boolean {
  return (
    stored.version === record.version &&
    stored.state === record.state &&
    isDeepStrictEqual(stored.data, JSON.parse(JSON.stringify(record.data)) as unknown)
  )
}

/**
 * Writes the request at `step` with CAS from `context.version`, and resolves with the row as
 * stored. Only the request's own actor writes its row, so a mismatch can only come from its
 * own earlier write: this very write, applied once already (a lost acknowledgement: done),
 * or one the machine did not wait for (it left the state meanwhile): then the row is re-read
 * and the write redone on top, unless the row is already final. A final write that finds
 * the row already in that final state (an earlier attempt applied, its acknowledgement
 * lost) resolves with the stored row, whose outcome may differ from this write's.
 */
export function persistStep(
  deps: RequestServiceDeps,
  context: RequestContext,
  step: RequestStep,
  state: RequestState,
  extra: Partial<RequestContext> = {},
  outbox: readonly WriteOp[] = [],
): Promise<RequestRecord> {
  // A request's row writes run one at a time, in call order. A deadline or a cancel ends a
  // step while the step's own write may still be under way (the step service's or the build
  // service's): the final write must start from the row that write leaves. Nothing is kept
  // once a request has no write under way (and the usual write, with none before it, costs
  // a map entry and no extra promise).
  let writes = rowWrites.get(deps.writer)
  if (writes === undefined) rowWrites.set(deps.writer, (writes = new Map<string, Promise<RequestRecord>>()))
  const before = writes.get(context.id)
  const mine: { run?: Promise<RequestRecord> } = {}
  let run: Promise<RequestRecord>
  if (before === undefined) run = persistStepNow(deps, context, step, state, extra, outbox, writes, mine)
  else {
    const go = (): Promise<RequestRecord> => persistStepNow(deps, context, step, state, extra, outbox, writes, mine)
    run = before.then(go, go)
  }
  mine.run = run
  writes.set(context.id, run)
  return run
}

/** Per writer (one per runtime): the row write of each request under way, the last one asked for. */
const rowWrites = new WeakMap<Writer, Map<string, Promise<RequestRecord>>>()

async function persistStepNow(
  deps: RequestServiceDeps,
  context: RequestContext,
  step: RequestStep,
  state: RequestState,
  extra: Partial<RequestContext>,
  outbox: readonly WriteOp[],
  writes: Map<string, Promise<RequestRecord>>,
  mine: { run?: Promise<RequestRecord> },
): Promise<RequestRecord> {
  try {
    let oldVersion = context.version
    if (outbox.length > 0) {
      // Hook notifications are stored first writer wins, and a failed CAS does not roll back the
      // ops beside it: written from a stale version, they would be stored without the change
      // they announce, and a crash before the retry below would leave them to stand for another
      // outcome. So start from the row as stored: the machine may not know of a step its
      // services wrote (a deadline or a failure ended the step before their answer). A read
      // that fails fails the write (storage unavailable: retried), rather than guess.
      const stored = await deps.storage.requests.get(context.id)
      if (stored.version > oldVersion && !FINAL_REQUEST_STATES.includes(stored.state)) oldVersion = stored.version
    }
    for (let tries = 0; ; tries++) {
      const next = { ...context, ...extra }
      const record = requestRecord(next, step, state, oldVersion + 1, Math.max(0, Math.floor(deps.clock.now())))
      // Hook notifications first, in the same write: never a recorded change without its outbox entries.
      const results = await deps.writer.write([...outbox, { op: 'request.update', record, oldVersion, newVersion: oldVersion + 1 }], {
        atomic: true,
      })
      const result = results[results.length - 1]
      if (outbox.length > 0) outboxOutcome(deps, results.slice(0, -1), `hook notification of ${context.id}`)
      if (result === undefined) throw new StorageFailedError(`no result persisting ${context.id}`)
      if (result.status === 'ok') {
        deps.committed(record)
        return record
      }
      if (result.status === 'dead_lettered') throw writeFailure(result, `request ${context.id} at ${step}`)
      const stored = await deps.storage.requests.get(context.id).catch(() => undefined)
      // The commit applied but its acknowledgement was lost, and the writer's retry found the row
      // it had written: the write is done.
      if (stored !== undefined && isThisWrite(stored, record)) {
        deps.committed(stored)
        return stored
      }
      // An earlier attempt of this final write applied, and its acknowledgement was lost (the
      // writer then gave up on it, and the machine retried with a context changed since): the
      // request ended so. Only its own actor writes its row while it runs.
      if (stored !== undefined && stored.version > oldVersion && stored.state === state && FINAL_REQUEST_STATES.includes(state)) {
        deps.committed(stored)
        return stored
      }
      if (tries > 0 || stored === undefined || stored.version <= oldVersion || FINAL_REQUEST_STATES.includes(stored.state)) {
        throw new VersionMismatchError(
          `request ${context.id} could not move to ${step}: stored ${stored === undefined ? 'row is missing' : `at ${stored.state} v${stored.version}`}, expected v${oldVersion}`,
        )
      }
      oldVersion = stored.version
    }
  } finally {
    if (writes.get(context.id) === mine.run) writes.delete(context.id)
  }
}

/** The outcome a recorded row stores, or undefined when the row is not recorded. */
export function recordedOutput(row: RequestRecord): RecordOutput | undefined {
  const stored = (row.data as { context?: RequestContext } | undefined)?.context
  if (row.state !== 'recorded' || stored === undefined) return undefined
  const { verdict, degree, reason, factWritten, endedAt } = stored
  return {
    verdict: verdict ?? 'indeterminate',
    degree,
    reason,
    factWritten: factWritten ?? false,
    version: row.version,
    at: endedAt ?? row.updatedAt,
  }
}

/**
 * The row of a request recorded green whose commit's whole-repository fact is not green,
 * corrected as the fact says: red with the fact's degree, or indeterminate without a fact.
 * (A green row is written in one commit with its fact, but the fact may be an older
 * request's, first writer wins; the correction that follows may not have been written
 * before a crash, or before the request retried or failed.) Undefined without a context.
 */
export function correctedRecord(row: RequestRecord, fact: Fact | undefined, at: number): RequestRecord | undefined {
  const stored = (row.data as { context?: RequestContext } | undefined)?.context
  if (stored === undefined) return undefined
  const outcome =
    fact === undefined
      ? { verdict: 'indeterminate' as const, degree: null, reason: 'recorded green without a fact', factWritten: false }
      : {
          verdict: 'red' as const,
          degree: fact.degree,
          reason: fact.requestId === row.id ? stored.reason : `fact already recorded by ${fact.requestId}`,
          factWritten: fact.requestId === row.id,
        }
  return requestRecord({ ...stored, ...outcome }, 'recorded', 'recorded', row.version + 1, at)
}

/**
 * Writes the correction of a green row whose commit's fact disagrees (see
 * {@link correctedRecord}; CAS from the row's version), with a warning in the log. Resolves
 * with the row written and the write's result, or undefined when the row has no context to
 * correct (nothing written).
 */
export async function writeCorrection(
  deps: { writer: Writer; logger: Logger },
  row: RequestRecord,
  fact: Fact | undefined,
  at: number,
): Promise<{ record: RequestRecord; result: WriterResult | undefined } | undefined> {
  const record = correctedRecord(row, fact, at)
  if (record === undefined) return undefined
  deps.logger.warn({ requestId: row.id, uri: row.uri, fact }, "a request recorded green disagrees with its commit's fact; corrected")
  const [result] = await deps.writer.write([{ op: 'request.update', record, oldVersion: row.version, newVersion: row.version + 1 }])
  return { record, result }
}

/**
 * The outcome a recorded row stores, as its queue may count it, or undefined when the row is
 * not recorded. A green row is checked against its commit's fact first and, when they
 * disagree, corrected ({@link writeCorrection}): an outcome adopted from an earlier
 * attempt's write, or found by a salvage, never counts a commit green, nor moves last green
 * to it, unless its fact is green. Tells `committed` of the row it returns the outcome of.
 */
export async function checkedOutcome(
  deps: Pick<RequestServiceDeps, 'storage' | 'writer' | 'logger' | 'clock' | 'committed'>,
  row: RequestRecord,
): Promise<RecordOutput | undefined> {
  const output = recordedOutput(row)
  if (output === undefined) return undefined
  const fact = output.verdict === 'green' ? await existingFact(deps.storage, row.queue, row.uri) : undefined
  const correction =
    output.verdict === 'green' && fact?.degree !== 0
      ? await writeCorrection(deps, row, fact, Math.max(0, Math.floor(deps.clock.now())))
      : undefined
  if (correction === undefined) {
    deps.committed(row)
    return output
  }
  const { record, result } = correction
  if (result?.status === 'ok') {
    deps.committed(record)
    return recordedOutput(record)
  }
  // Written meanwhile (this correction, its acknowledgement lost; or another): check that row.
  const again = result?.status === 'version_mismatch' ? await deps.storage.requests.get(row.id).catch(() => undefined) : undefined
  if (again !== undefined && again.version > row.version) return checkedOutcome(deps, again)
  throw writeFailure(result ?? { status: 'not_found' }, `the corrected verdict of ${row.id}`)
}

/** The whole-repository fact of a commit, or undefined when none was written yet. */
export async function existingFact(storage: Storage, queue: string, uri: string): Promise<Fact | undefined> {
  try {
    return await storage.facts.get(queue, uri, '')
  } catch (error) {
    if (error instanceof NotFoundError) return undefined
    throw error
  }
}

/** The work of the step service (see {@link stepService}), one async function per kind. */
export function stepWork(deps: RequestServiceDeps): StepWorkers {
  const persist = async (input: PersistInput): Promise<PersistOutput> => {
    const { version } = await persistStep(deps, input.context, input.step, input.state)
    return { version, step: input.step }
  }

  /** Persists the step the actor works in (CAS), returning the request with its new version. */
  const enter = async ({ context, step, resumed = false }: StepInput): Promise<RequestContext> => {
    // A resumed request's row is already at its step (a restart of 100 000 requests would
    // otherwise rewrite every row before any work restarts).
    if (step === 'concluding' || resumed) return context
    const { version } = await persistStep(deps, context, step, stateOfStep(step))
    return { ...context, version, step }
  }

  const plan = async (input: StepInput): Promise<PlanOutput> => {
    const context = await enter(input)
    const { version, lastGreen } = context
    if (lastGreen === null) return { strategy: 'full', baseline: null, fallback: 'no last green yet', version }
    try {
      if (await deps.sourceControlFor(context.queue).isAncestor(lastGreen.uri, context.uri)) {
        return { strategy: 'incremental', baseline: lastGreen.uri, fallback: null, version }
      }
      return { strategy: 'full', baseline: null, fallback: `history rewritten: last green ${lastGreen.uri} is not an ancestor`, version }
    } catch (error) {
      // An unknown commit (garbage-collected, another clone) or one source control cannot
      // compare (e.g. the repository moved, so its URI names another path): build in full.
      if (!(error instanceof NotFoundError || error instanceof InvalidInputError)) throw error
      const reason =
        error instanceof NotFoundError
          ? `last green ${lastGreen.uri} is unknown to source control`
          : `last green ${lastGreen.uri} cannot be compared by source control (${error.message})`
      deps.onFallback(context.queue, reason)
      deps.logger.warn({ requestId: context.id, lastGreen: lastGreen.uri }, 'planning falls back to a full build')
      return { strategy: 'full', baseline: null, fallback: reason, version }
    }
  }

  /**
   * The outcome of a request whose row is already recorded (an earlier attempt of this step
   * committed it, its acknowledgement lost), or undefined when it is not.
   */
  const recordedBefore = async (id: string): Promise<RecordOutput | undefined> => {
    const row = await deps.storage.requests.get(id).catch(() => undefined)
    return row === undefined ? undefined : checkedOutcome(deps, row)
  }

  /** Writes the recorded row; resolves with the outcome as stored (an earlier attempt's, when it had applied). */
  const writeRecorded = async (
    context: RequestContext,
    extra: Partial<RequestContext> & Pick<RecordOutput, 'verdict' | 'degree' | 'reason' | 'factWritten'> & { endedAt: number },
    outbox: readonly WriteOp[] = [],
  ): Promise<RecordOutput> => {
    const row = await persistStep(deps, context, 'recorded', 'recorded', extra, outbox)
    const { verdict, degree, reason, factWritten, endedAt } = extra
    const stored = recordedOutput(row)
    if (stored === undefined) return { verdict, degree, reason, factWritten, version: row.version, at: endedAt }
    // This write, or an earlier attempt's that agrees with it: as written. Another outcome
    // (an earlier attempt's, adopted) is checked against the commit's fact first.
    if (stored.verdict === verdict && stored.degree === degree) return stored
    return (await checkedOutcome(deps, row)) ?? stored
  }

  const record = async (input: StepInput): Promise<RecordOutput> => {
    let context: RequestContext
    try {
      context = await enter(input)
    } catch (error) {
      const before = error instanceof VersionMismatchError ? await recordedBefore(input.context.id) : undefined
      if (before === undefined) throw error
      return before
    }
    const at = Math.max(0, Math.floor(deps.clock.now()))
    const verdict: Verdict = context.verdict ?? 'indeterminate'
    const degree = context.degree
    const reason = context.reason
    if (verdict === 'indeterminate' || degree === null) {
      const outcome = { verdict: 'indeterminate' as const, degree: null, reason }
      const outbox = deps.verdictOutbox(verdictPayload(context, outcome, at))
      // An earlier attempt that applied (its acknowledgement lost) may have recorded a verdict:
      // that one stands.
      return writeRecorded(context, { ...outcome, factWritten: false, endedAt: at }, outbox)
    }
    // The verdict an existing fact for this commit imposes (first writer wins).
    const judge = (existing: Fact | undefined): { verdict: Verdict; degree: number; reason: string | null; factWritten: boolean } => {
      if (existing === undefined) return { verdict, degree, reason, factWritten: true }
      const mine = existing.requestId === context.id // written by this request before a restart
      return {
        verdict: existing.degree === 0 ? 'green' : 'red',
        degree: existing.degree,
        reason: mine ? reason : `fact already recorded by ${existing.requestId}`,
        factWritten: mine,
      }
    }
    // Hooks get the verdict in the same write as the row, so it must be final before it:
    // read the commit's fact first (when hooks listen), which decides the verdict if it exists.
    const prior = deps.notifiesVerdicts ? await existingFact(deps.storage, context.queue, context.uri) : undefined
    const planned = judge(prior)
    // The facts, the hook notifications and the verdict in one write; the verdict is
    // corrected after it in the rare case a fact for this commit appeared meanwhile.
    const facts: Fact[] = [{ queue: context.queue, uri: context.uri, project: '', degree, requestId: context.id, at }]
    for (const [project, outcome] of Object.entries(context.build?.projects ?? {})) {
      facts.push({ queue: context.queue, uri: context.uri, project, degree: outcome === 'passed' ? 0 : 1, requestId: context.id, at })
    }
    const outbox = deps.verdictOutbox(verdictPayload(context, planned, at))
    const next = { ...context, ...planned, endedAt: at }
    const oldVersion = context.version
    const recorded = requestRecord(next, 'recorded', 'recorded', oldVersion + 1, at)
    const ops: WriteOp[] = [
      ...facts.map((fact): WriteOp => ({ op: 'fact.put', fact })),
      ...outbox,
      { op: 'request.update', record: recorded, oldVersion, newVersion: oldVersion + 1 },
    ]
    const results = await deps.writer.write(ops, { atomic: true })
    const whole = results[0]
    const row = results[results.length - 1]
    if (whole === undefined || row === undefined) throw new StorageFailedError(`no result recording ${context.id}`)
    if (outbox.length > 0) outboxOutcome(deps, results.slice(facts.length, -1), `hook notification of ${context.id}`)
    if (whole.status === 'dead_lettered') throw writeFailure(whole, `fact of ${context.id}`)
    const version = oldVersion + 1
    if (row.status === 'dead_lettered') throw writeFailure(row, `request ${context.id}`)
    const existing = whole.status === 'already_exists' ? whole.fact : undefined
    // Without a prior read (no hooks), or when a fact appeared between the read and the write.
    const late = existing !== undefined && prior === undefined
    const final = late ? judge(existing) : planned
    if (late && outbox.length > 0) {
      deps.logger.warn(
        { requestId: context.id, fact: existing },
        'a fact appeared while recording; hooks were told the verdict before correction',
      )
    }
    const extra = { ...final, endedAt: at }
    if (row.status !== 'ok') return writeRecorded(context, extra)
    if (late && (existing.requestId !== context.id || existing.degree !== context.degree)) return writeRecorded({ ...next, version }, extra)
    deps.committed(recorded)
    return { ...final, version, at }
  }

  return { persist, plan, record }
}

/** The work behind each `step.run` (see {@link stepWork}; tests give stubs). */
export interface StepWorkers {
  plan(input: StepInput): Promise<PlanOutput>
  record(input: StepInput): Promise<RecordOutput>
  persist(input: PersistInput): Promise<PersistOutput>
}

/**
 * The step service (system id `STEP_SERVICE`): for each `step.run`, does the work (each
 * persists its step first) and answers the request with `<work>.done` or `<work>.failed`.
 * One actor for the whole system rather than a promise actor per step: an actor costs
 * about 2 KB and a few microseconds to create, and each actor that stops makes XState scan
 * every timer of the system. A request that stopped meanwhile (the runtime stopped) is not
 * answered.
 */
export function stepService(deps: RequestServiceDeps) {
  const work = stepWork(deps)
  return fromCallback<StepServiceEvent>(({ receive }) => {
    receive((event) => {
      void stepAnswer(work, event).then((answer) => {
        if (isRunning(event.reply)) event.reply.send(answer)
      })
    })
  })
}

/** Does the work a `step.run` asks for; resolves with the answer: `<work>.done`, or `<work>.failed` with the error. */
export function stepAnswer(work: StepWorkers, event: StepServiceEvent): Promise<RequestEvent> {
  const done =
    event.work === 'plan'
      ? work.plan(event.input).then((output): RequestEvent => ({ type: 'plan.done', output }))
      : event.work === 'record'
        ? work.record(event.input).then((output): RequestEvent => ({ type: 'record.done', output }))
        : work.persist(event.input).then((output): RequestEvent => ({ type: 'persist.done', output }))
  return done.catch((error: unknown): RequestEvent => ({ type: `${event.work}.failed`, error }))
}

/** What the build service answers a request with. */
type BuildAnswer = Extract<RequestEvent, { type: 'build.done' | 'build.failed' }>

/**
 * One build in flight: which request, where to answer and how to abort it, in one object.
 * (The service's steps are plain functions of it rather than closures per build, and it
 * keeps the request's id and URI rather than its context: a build can run for an hour, and
 * every object it keeps alive costs heap per request in flight.)
 */
class RunningBuild {
  readonly controller = new AbortController()
  /** The version the build step was persisted at (null until it is). */
  version: number | null = null
  constructor(
    readonly id: string,
    readonly uri: string,
    readonly reply: AnyActorRef,
    /** The queue's projects (every one must be reported by a build that passed). */
    readonly projects: readonly string[] | null,
  ) {}
}

const OUTCOMES: readonly unknown[] = ['passed', 'failed', 'error']
const PROJECT_OUTCOMES: readonly unknown[] = ['passed', 'failed']

/** What makes `given` not a {@link BuildResult}, or undefined when it is one. */
function resultProblem(given: unknown): string | undefined {
  if (typeof given !== 'object' || given === null) return `${String(given)}, not an object`
  const { outcome, log, projects } = given as Record<string, unknown>
  if (!OUTCOMES.includes(outcome))
    return `outcome ${outcome === undefined ? 'missing' : JSON.stringify(outcome)}; expected passed, failed or error`
  if (log !== undefined && typeof log !== 'string') return 'log is not a string'
  if (projects === undefined) return undefined
  if (typeof projects !== 'object' || projects === null || Array.isArray(projects)) return 'projects is not an object'
  const bad = Object.entries(projects).find(([, value]) => !PROJECT_OUTCOMES.includes(value))
  return bad === undefined
    ? undefined
    : `project ${bad[0]} is ${typeof bad[1] === 'string' ? bad[1] : typeof bad[1]}; expected passed or failed`
}

/**
 * The build service (system id `BUILD_SERVICE`): for each `build.start`, persists the
 * request at `processing.building` (acknowledged before the build starts), runs the build,
 * and answers the request with `build.done` or `build.failed`; aborts a build on
 * `build.abort` or when the service stops. A build whose request left meanwhile is not
 * answered. An `error` outcome (the build infrastructure failed) is a retryable failure.
 */
export function buildService(deps: RequestServiceDeps) {
  return fromCallback<BuildServiceEvent>(({ receive }) => {
    const running = new Map<string, RunningBuild>()
    /** Answers the request, unless the build was aborted or replaced by a newer attempt. */
    const answer = (build: RunningBuild, event: BuildAnswer): void => {
      if (running.get(build.id) !== build) return
      running.delete(build.id)
      build.reply.send(event)
    }
    const failed = (build: RunningBuild, error: unknown): void => {
      if (!build.controller.signal.aborted) answer(build, { type: 'build.failed', error, version: build.version })
    }
    const built = (build: RunningBuild, result: BuildResult): void => {
      // A builder written in plain JavaScript can resolve anything: only a result is a verdict.
      const problem = resultProblem(result)
      if (problem !== undefined) {
        failed(build, new UnavailableError(`the builder gave no valid result for ${build.uri} (${problem})`))
        return
      }
      const unreported = result.outcome === 'passed' ? (build.projects ?? []).filter((p) => result.projects?.[p] === undefined) : []
      if (result.outcome === 'error') {
        const tail = result.log === undefined ? '' : `: ${result.log.slice(-500)}`
        failed(build, new UnavailableError(`build infrastructure failed for ${build.uri}${tail}`))
      } else if (unreported.length > 0) {
        // Not green (a project was not checked), and not red either (nothing failed): retried, then indeterminate.
        failed(
          build,
          new UnavailableError(`the build of ${build.uri} passed but reported no result for project(s) ${unreported.join(', ')}`),
        )
      } else answer(build, { type: 'build.done', result, version: build.version as number })
    }
    const run = (build: RunningBuild, context: RequestContext, version: number): void => {
      build.version = version
      if (build.controller.signal.aborted) return
      let building: Promise<BuildResult>
      try {
        building = deps.builder.run({
          queue: context.queue,
          requestId: context.id,
          uri: context.uri,
          strategy: context.strategy ?? 'full',
          ...(context.baseline === null ? {} : { baseline: context.baseline }),
          ...(context.projects === null ? {} : { projects: context.projects }),
          signal: build.controller.signal,
          clock: deps.clock,
        })
      } catch (error) {
        failed(build, error)
        return
      }
      // Promise callbacks rather than an async function: a suspended async function keeps
      // a generator and its registers for as long as the build runs. (Promise.resolve: a
      // builder in plain JavaScript may return a result, or anything, instead of a promise.)
      Promise.resolve(building).then(
        (result) => {
          try {
            built(build, result)
          } catch (error) {
            failed(build, error)
          }
        },
        (error: unknown) => {
          failed(build, error)
        },
      )
    }
    const start = (context: RequestContext, reply: AnyActorRef, resumed: boolean): void => {
      running.get(context.id)?.controller.abort()
      const build = new RunningBuild(context.id, context.uri, reply, context.projects)
      running.set(context.id, build)
      // A resumed request's row is already at the build step: build at once (after this
      // message, like any build: never inside the service's own step).
      const stored = resumed
        ? Promise.resolve(context.version)
        : persistStep(deps, context, 'processing.building', 'processing').then((row) => row.version)
      stored.then(
        (version) => {
          run(build, context, version)
        },
        (error: unknown) => {
          failed(build, error)
        },
      )
    }
    receive((event) => {
      if (event.type === 'build.start') start(event.context, event.reply, event.resumed)
      else {
        running.get(event.id)?.controller.abort()
        running.delete(event.id)
      }
    })
    return () => {
      for (const build of running.values()) build.controller.abort()
      running.clear()
    }
  })
}
