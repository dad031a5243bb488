/**
 * The machines on their own: pure XState machines driven with stub actors and XState's
 * SimulatedClock, no runtime, no storage.
 */
import { describe, expect, it } from 'vitest'
import { SimulatedClock, createActor, fromCallback, setup, type AnyActorLogic } from 'xstate'
import { queueMachine, requestActorId, type QueueContext } from '../../src/machines/queue.js'
import {
  BUILD_SERVICE,
  STEP_SERVICE,
  newRequestContext,
  requestMachine,
  type BuildServiceEvent,
  type RequestContext,
  type RequestEvent,
  type StepInput,
  type StepServiceEvent,
} from '../../src/machines/request.js'
import { stepAnswer, type StepWorkers } from '../../src/runtime/request-services.js'
import { settle } from '../support/drive.js'
import { leases, startQueue } from '../support/queue.js'

/**
 * The request machine (with its provided actions and delays untouched) and a step service
 * whose stub work notes the step each one was asked to persist into `persisted`, and every
 * message it gets into `told`. `overrides` replace some of the work.
 */
function stubbedRequest(overrides: Partial<StepWorkers> = {}) {
  const persisted: string[] = []
  const told: StepServiceEvent[] = []
  const note = ({ context, step }: StepInput): number => {
    persisted.push(step)
    return context.version + 1
  }
  const work: StepWorkers = {
    plan: (input) => Promise.resolve({ strategy: 'full', baseline: null, fallback: null, version: note(input) }),
    record: (input) =>
      Promise.resolve({
        verdict: input.context.verdict ?? 'indeterminate',
        degree: input.context.degree,
        factWritten: true,
        reason: input.context.reason,
        version: note(input),
        at: 1,
      }),
    persist: (input) => {
      persisted.push(input.step)
      return Promise.resolve({ version: input.context.version + 1, step: input.step })
    },
    ...overrides,
  }
  const steps = fromCallback<StepServiceEvent>(({ receive }) => {
    receive((event) => {
      told.push(event)
      void stepAnswer(work, event).then((answer) => {
        event.reply.send(answer)
      })
    })
  })
  return { machine: requestMachine, persisted, steps, told }
}

/**
 * A build service that "persists" the build step (noted into `persisted`, version + 1) and
 * answers with `answer` (default: the build passed); `answer` returning undefined holds
 * the build. Every message it gets is noted into `told`.
 */
function stubBuilds(
  persisted: string[],
  told: string[] = [],
  answer: (version: number) => RequestEvent | undefined = (version) => ({ type: 'build.done', result: { outcome: 'passed' }, version }),
) {
  return fromCallback<BuildServiceEvent>(({ receive }) => {
    receive((event) => {
      told.push(event.type)
      if (event.type !== 'build.start') return
      // A resumed request's row is already at the build step: nothing to persist.
      if (!event.resumed) persisted.push('processing.building')
      const reply = answer(event.context.version + (event.resumed ? 0 : 1))
      if (reply !== undefined) event.reply.send(reply)
    })
  })
}

/** Runs a request machine under a parent (it reports to its parent when it ends), next to a step and a build service. */
function underParent(machine: AnyActorLogic, childInput: unknown, clock: SimulatedClock, builds: AnyActorLogic, steps: AnyActorLogic) {
  const reports: unknown[] = []
  const parent = setup({ actors: { child: machine, builds, steps } }).createMachine({
    invoke: [
      { src: 'builds', id: 'builds', systemId: BUILD_SERVICE },
      { src: 'steps', id: 'steps', systemId: STEP_SERVICE },
      { src: 'child', id: 'request', input: childInput as never },
    ],
    on: { '*': { actions: ({ event }) => reports.push(event) } },
  })
  const actor = createActor(parent, { clock }).start()
  const child = actor.getSnapshot().children.request as unknown as {
    getSnapshot(): { value: unknown; status: string; context: RequestContext; children: Record<string, unknown> }
    send(event: unknown): void
  }
  return { child, reports }
}

const input = {
  kind: 'new' as const,
  id: 'request/main/1',
  queue: 'main',
  uri: 'fake://a1',
  n: 1,
  version: 0,
  createdAt: 0,
  maxAttempts: 3,
}
const start = { type: 'START' as const, at: 0, deadlineAt: 60_000, lastGreen: null, projects: null }

describe('request machine', () => {
  it('persists each step before working in it and ends recorded green', async () => {
    const { machine, persisted, steps } = stubbedRequest()
    const clock = new SimulatedClock()
    const told: string[] = []
    const { child: actor, reports } = underParent(machine, input, clock, stubBuilds(persisted, told), steps)
    expect(actor.getSnapshot().value).toBe('accepted')
    actor.send(start)
    await settle()
    expect(actor.getSnapshot().status).toBe('done')
    expect(reports).toContainEqual({ type: 'request.recorded', id: 'request/main/1', n: 1, uri: 'fake://a1', verdict: 'green', at: 1 })
    expect(actor.getSnapshot().value).toBe('recorded')
    expect(persisted).toEqual(['processing.planning', 'processing.building', 'processing.recording'])
    // The build's own answer ended the step: nothing to abort.
    expect(told).toEqual(['build.start'])
    expect(actor.getSnapshot().context).toMatchObject({ verdict: 'green', degree: 0, strategy: 'full', version: 3 })
  })

  it('retries a transient failure after the backoff delay on the clock, then gives up indeterminate', async () => {
    let builds = 0
    const { machine, persisted, steps } = stubbedRequest()
    const failing = stubBuilds(persisted, [], (version) => {
      builds++
      return { type: 'build.failed', error: Object.assign(new Error('runner offline'), { retryable: true }), version }
    })
    const clock = new SimulatedClock()
    const { child: actor } = underParent(machine, input, clock, failing, steps)
    actor.send(start)
    await settle()
    expect(builds).toBe(1)
    clock.increment(999)
    await settle()
    expect(builds).toBe(1)
    clock.increment(1) // first retry after 1000 ms
    await settle()
    expect(builds).toBe(2)
    clock.increment(2000) // second retry after 2000 ms
    await settle()
    expect(builds).toBe(3)
    expect(actor.getSnapshot().value).toBe('recorded')
    expect(actor.getSnapshot().context).toMatchObject({
      verdict: 'indeterminate',
      reason: expect.stringContaining('gave up after 3 attempt(s)') as string,
    })
    // Each attempt had the step persisted again (versions 2, 3, 4), and the verdict was recorded on top.
    expect(persisted.filter((step) => step === 'processing.building')).toHaveLength(3)
    expect(actor.getSnapshot().context.version).toBe(5)
  })

  it('has the build service persist the step and build, and tells it to abort when cancelled', async () => {
    const told: string[] = []
    const { machine, persisted, steps } = stubbedRequest()
    const held = stubBuilds(persisted, told, () => undefined)
    const { child: actor, reports } = underParent(machine, input, new SimulatedClock(), held, steps)
    actor.send(start)
    await settle()
    expect(persisted).toEqual(['processing.planning', 'processing.building'])
    expect(told).toEqual(['build.start'])
    expect(actor.getSnapshot().value).toEqual({ processing: { building: 'running' } })
    // Steps and builds are messages to the services: a request in flight holds no actor of its own.
    expect(actor.getSnapshot().children).toEqual({})
    actor.send({ type: 'CANCEL', at: 5 })
    await settle()
    expect(told).toEqual(['build.start', 'build.abort'])
    expect(actor.getSnapshot().value).toBe('cancelled')
    expect(reports).toContainEqual({ type: 'request.ended', id: 'request/main/1', n: 1, state: 'cancelled', at: 5 })
  })

  it('asks the step service for each step, and ignores an answer that comes after the request left the step', async () => {
    const held = new Map<string, () => void>()
    const hold = <T>(name: string, output: T): Promise<T> =>
      new Promise((resolve) => {
        held.set(name, () => {
          resolve(output)
        })
      })
    const { machine, persisted, steps, told } = stubbedRequest({
      plan: (input) => hold('plan', { strategy: 'full', baseline: null, fallback: null, version: input.context.version + 1 }),
      persist: (input) => hold('persist', { version: input.context.version + 1, step: input.step }),
    })
    const { child: actor, reports } = underParent(machine, input, new SimulatedClock(), stubBuilds(persisted), steps)
    actor.send(start)
    await settle()
    expect(told.map((t) => [t.work, t.input.step])).toEqual([['plan', 'processing.planning']])
    expect(told[0]?.reply).toBe(actor)
    expect(actor.getSnapshot().value).toEqual({ processing: { planning: 'running' } })
    actor.send({ type: 'CANCEL', at: 5 })
    await settle()
    expect(actor.getSnapshot().value).toEqual({ cancelling: 'running' })
    expect(told.map((t) => [t.work, t.input.step])).toEqual([
      ['plan', 'processing.planning'],
      ['persist', 'cancelled'],
    ])
    // The plan's answer arrives while the request waits for its final write: it changes nothing.
    held.get('plan')?.()
    await settle()
    expect(actor.getSnapshot().value).toEqual({ cancelling: 'running' })
    expect(actor.getSnapshot().context).toMatchObject({ strategy: null, version: 0 })
    held.get('persist')?.()
    await settle()
    expect(actor.getSnapshot().value).toBe('cancelled')
    expect(actor.getSnapshot().context).toMatchObject({ strategy: null, version: 1, step: 'cancelled' })
    expect(reports.filter((r) => (r as { type: string }).type.startsWith('request.'))).toEqual([
      { type: 'request.ended', id: 'request/main/1', n: 1, state: 'cancelled', at: 5 },
    ])
  })

  it('records indeterminate through the step service when the plan fails for good, and escalates a final write that fails for good', async () => {
    const { machine, persisted, steps, told } = stubbedRequest({
      plan: () => Promise.reject(new Error('bad plan')),
    })
    const { child: actor } = underParent(machine, input, new SimulatedClock(), stubBuilds(persisted), steps)
    actor.send(start)
    await settle()
    expect(told.map((t) => [t.work, t.input.step])).toEqual([
      ['plan', 'processing.planning'],
      ['record', 'concluding'],
    ])
    expect(actor.getSnapshot().value).toBe('recorded')
    expect(actor.getSnapshot().context).toMatchObject({ verdict: 'indeterminate', reason: 'gave up after 1 attempt(s): Error: bad plan' })

    const failing = stubbedRequest({ persist: () => Promise.reject(new Error('disk on fire')) })
    const { child: superseded, reports } = underParent(failing.machine, input, new SimulatedClock(), stubBuilds([]), failing.steps)
    superseded.send({ type: 'SUPERSEDE', by: 'request/main/2', at: 3 })
    await settle()
    expect(superseded.getSnapshot().status).toBe('error')
    expect(reports).toContainEqual(expect.objectContaining({ type: 'xstate.error.actor.request' }))
  })

  it('resumes at the persisted step: a context at processing.building does not plan again', async () => {
    let plans = 0
    const { machine, steps, persisted } = stubbedRequest({
      plan: () => ((plans += 1), Promise.resolve({ strategy: 'full', baseline: null, fallback: null, version: 3 })),
    })
    const context: RequestContext = {
      ...newRequestContext(input),
      step: 'processing.building',
      version: 2,
      strategy: 'full',
      startedAt: 0,
      deadlineAt: 60_000,
    }
    const told: string[] = []
    const { child: actor } = underParent(machine, { kind: 'resume', context }, new SimulatedClock(), stubBuilds(persisted, told), steps)
    await settle()
    expect(plans).toBe(0)
    expect(actor.getSnapshot().value).toBe('recorded')
    // The row was already at the build step: the build restarted without writing it again.
    expect(told).toEqual(['build.start'])
    expect(persisted).toEqual(['processing.recording'])
    expect(actor.getSnapshot().context.version).toBe(3)
  })
})

/**
 * A queue (maxConcurrent 1) whose requests never finish and note every event they are sent
 * into `events`, on a SimulatedClock.
 */
function stuckQueue(events: { id: string; type: string }[]) {
  // A request that never finishes and remembers what it was told.
  interface StuckInput {
    id?: string
    context?: { id: string }
  }
  const types: { input: StuckInput; context: { id: string } } = { input: {}, context: { id: '' } }
  const stuck = setup({ types }).createMachine({
    context: ({ input }) => ({ id: input.id ?? input.context?.id ?? '?' }),
    on: { '*': { actions: ({ context, event }) => events.push({ id: context.id, type: event.type }) } },
  })
  const clock = new SimulatedClock()
  const queue = queueMachine.provide({ actors: { request: stuck as never } })
  const context: QueueContext = {
    name: 'main',
    config: { ref: 'main', maxConcurrent: 1, maxValidationMs: 1_000, leaseGraceMs: 500, maxAttempts: 3 },
    lastGreen: null,
    requests: {},
    dueAt: null,
    expiredAt: 0,
    stats: { accepted: 0, superseded: 0, cancelled: 0, green: 0, red: 0, indeterminate: 0, leaseExpiries: 0 },
  }
  const { actor } = startQueue(queue, { context }, clock)
  /** Request n of queue main (URI fake://a<n>) was accepted. */
  const accepted = (n: number): void => {
    actor.send({ type: 'request.accepted', id: `request/main/${n}`, n, uri: `fake://a${n}`, version: 0, createdAt: 0, at: 0 })
  }
  return { actor, clock, accepted }
}

describe('queue machine', () => {
  it('expires a slot lease at its deadline, cancels its request and starts the next one', () => {
    const events: { id: string; type: string }[] = []
    const { actor, clock } = stuckQueue(events)
    actor.send({ type: 'request.accepted', id: 'request/main/1', n: 1, uri: 'fake://a1', version: 0, createdAt: 0, at: 0 })
    actor.send({ type: 'request.accepted', id: 'request/main/2', n: 2, uri: 'fake://a2', version: 0, createdAt: 0, at: 0 })
    expect(leases(actor.getSnapshot().context)).toEqual({ 'request/main/1': 1_500 })
    clock.increment(1_499)
    expect(actor.getSnapshot().context.stats.leaseExpiries).toBe(0)
    clock.increment(1)
    const after = actor.getSnapshot().context
    expect(after.stats.leaseExpiries).toBe(1)
    expect(events).toContainEqual({ id: 'request/main/1', type: 'CANCEL' })
    // The freed slot went to the waiting request.
    expect(Object.keys(leases(after))).toEqual(['request/main/2'])
    expect(events).toContainEqual({ id: 'request/main/2', type: 'START' })
  })

  it('coalesces by number, not arrival: an older head accepted after a newer one that waits is superseded at once', () => {
    const events: { id: string; type: string }[] = []
    const { actor, accepted } = stuckQueue(events)
    accepted(1) // holds the only slot
    accepted(3) // waits
    accepted(2) // older than the waiting one
    const { requests } = actor.getSnapshot().context
    expect(requests['request/main/2']?.state).toBe('superseding')
    expect(requests['request/main/3']?.state).toBe('accepted')
    expect(events).toContainEqual({ id: 'request/main/2', type: 'SUPERSEDE' })
    expect(events).not.toContainEqual({ id: 'request/main/3', type: 'SUPERSEDE' })
    // Counted once it has ended so.
    expect(actor.getSnapshot().context.stats.superseded).toBe(0)
    actor.send({ type: 'request.ended', id: 'request/main/2', n: 2, state: 'superseded', at: 0 })
    expect(actor.getSnapshot().context.stats).toMatchObject({ superseded: 1, cancelled: 0 })
  })

  it('counts a request told SUPERSEDE while it was being cancelled once, as it ended (cancelled)', () => {
    const events: { id: string; type: string }[] = []
    const { actor, accepted } = stuckQueue(events)
    accepted(1) // holds the only slot
    accepted(2) // waits
    actor.send({ type: 'cancel', id: 'request/main/2', at: 0 })
    accepted(3) // supersedes 2, which is still writing its cancel
    expect(events).toContainEqual({ id: 'request/main/2', type: 'SUPERSEDE' })
    actor.send({ type: 'request.ended', id: 'request/main/2', n: 2, state: 'cancelled', at: 0 })
    expect(actor.getSnapshot().context.stats).toMatchObject({ accepted: 3, superseded: 0, cancelled: 1 })
  })

  it("names each request's actor by its number among the queue's children, and stops it when it ends", () => {
    const events: { id: string; type: string }[] = []
    const { actor } = stuckQueue(events)
    for (const n of [1, 2]) {
      actor.send({ type: 'request.accepted', id: `request/main/${n}`, n, uri: `fake://a${n}`, version: 0, createdAt: 0, at: 0 })
    }
    expect(requestActorId('request/main/17')).toBe('17')
    expect(Object.keys(actor.getSnapshot().children).sort()).toEqual(['1', '2'])
    // Events for a request reach its actor by that name (START went to 1, which holds the slot).
    expect(events).toContainEqual({ id: 'request/main/1', type: 'START' })
    actor.send({ type: 'request.ended', id: 'request/main/1', n: 1, state: 'cancelled', at: 0 })
    expect(Object.keys(actor.getSnapshot().children)).toEqual(['2'])
    expect(events).toContainEqual({ id: 'request/main/2', type: 'START' })
  })
})
