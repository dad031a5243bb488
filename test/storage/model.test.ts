/**
 * Model test: random sequences of storage calls, conflicts and reopens included, run
 * against a backend and against the memory backend (the reference model); every result
 * and every error code must be the same.
 */
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import {
  OUTBOX_NEVER,
  StovepipeError,
  type EventRow,
  type Fact,
  type Json,
  type OutboxEntry,
  type OutboxKey,
  type OutboxSettlement,
  type QueueRecord,
  type RequestRecord,
  type RequestState,
  type Storage,
  type WriteOp,
} from '../../src/storage/index.js'
import type { StorageFixture } from '../../src/testing/index.js'
import { openMemoryFixture } from '../support/memory.js'
import { describeMysql, openMysqlFixture } from '../support/mysql.js'
import { openSqliteFixture } from '../support/sqlite.js'

interface Side {
  fixture: StorageFixture
  storage: Storage
}

type Outcome = { ok: unknown } | { error: string }

async function outcome(call: () => Promise<unknown>): Promise<Outcome> {
  try {
    return { ok: await call() }
  } catch (error) {
    if (error instanceof StovepipeError) return { error: error.code }
    throw error
  }
}

/** One call, made on both sides and compared. */
class Call implements fc.AsyncCommand<Side, Side> {
  constructor(
    private readonly label: string,
    private readonly call: (storage: Storage) => Promise<unknown>,
  ) {}
  check(): boolean {
    return true
  }
  async run(model: Side, real: Side): Promise<void> {
    const expected = await outcome(() => this.call(model.storage))
    const actual = await outcome(() => this.call(real.storage))
    expect(actual, this.label).toEqual(expected)
  }
  toString(): string {
    return this.label
  }
}

/** Closes and reopens both sides: nothing may change. */
class Reopen implements fc.AsyncCommand<Side, Side> {
  check(): boolean {
    return true
  }
  async run(model: Side, real: Side): Promise<void> {
    model.storage = await model.fixture.reopen()
    real.storage = await real.fixture.reopen()
  }
  toString(): string {
    return 'reopen()'
  }
}

const queueName = fc.constantFrom('main', 'rel')
const number = fc.integer({ min: 1, max: 4 })
const uri = fc.constantFrom('fake://a', 'fake://b', 'fake://C', 'fake://é')
const version = fc.integer({ min: 0, max: 3 })
const state = fc.constantFrom<RequestState>('accepted', 'processing', 'recorded', 'superseded', 'cancelled')
const time = fc.integer({ min: 0, max: 2 ** 41 })
const jsonValue = (maxDepth: number): fc.Arbitrary<Json> => fc.jsonValue({ maxDepth }).map((value) => value as Json)
const json = fc.option(jsonValue(2), { nil: undefined })
const project = fc.constantFrom('', 'api', 'web/é')
const node = fc.constantFrom('n1', 'n2')

const request = fc
  .record({ queue: queueName, n: number, uri, state, version, createdAt: time, updatedAt: time, data: json })
  .map(({ queue, n, data, ...rest }): RequestRecord => ({
    id: `request/${queue}/${n}`,
    queue,
    ...rest,
    ...(data === undefined ? {} : { data }),
  }))
const versions = fc.tuple(version, fc.integer({ min: 1, max: 2 })).map(([old, step]) => [old, old + step] as const)
const queueRecord = fc
  .record({
    name: queueName,
    version,
    config: fc.dictionary(fc.constantFrom('maxConcurrent', 'ref'), jsonValue(1), { maxKeys: 2 }),
    lastGreen: fc.option(fc.record({ uri, n: number, at: time }), { nil: undefined }),
    snapshot: json,
    createdAt: time,
    updatedAt: time,
  })
  .map(({ lastGreen, snapshot, ...rest }): QueueRecord => ({
    ...rest,
    ...(lastGreen === undefined
      ? {}
      : { lastGreen: { uri: lastGreen.uri, requestId: `request/${rest.name}/${lastGreen.n}`, at: lastGreen.at } }),
    ...(snapshot === undefined ? {} : { snapshot }),
  }))
const fact = fc
  .record({ queue: queueName, uri, project, degree: fc.double({ min: 0, max: 1, noNaN: true }), n: number, at: time })
  .map(({ n, ...rest }): Fact => ({ ...rest, requestId: `request/${rest.queue}/${n}` }))
const eventRow = fc.oneof(
  fc.record({ kind: fc.constant('event' as const), nodeId: node, seq: version, id: fc.nat(20), at: time, payload: jsonValue(2) }),
  fc
    .record({ kind: fc.constant('gap' as const), nodeId: node, seq: version, fromId: fc.nat(20), span: fc.nat(5), at: time })
    .map(({ span, ...rest }): EventRow => ({ ...rest, toId: rest.fromId + span })),
)
const mapping = fc
  .record({ queue: queueName, uri, n: number })
  .map(({ queue, uri: u, n }) => ({ queue, uri: u, requestId: `request/${queue}/${n}` }))

const deadLetter = fc
  .record({
    n: fc.integer({ min: 1, max: 3 }),
    at: time,
    op: jsonValue(2),
    code: fc.constantFrom('STORAGE_FAILED', 'X'),
    attempts: fc.nat(5),
  })
  .map(({ n, code, ...rest }) => ({ id: `w:${n}`, error: { code, message: `failed ${n}` }, ...rest }))

// Few keys and close times, so puts collide and due() orders ties.
const outboxKey = fc
  .record({
    queue: queueName,
    n: fc.integer({ min: 1, max: 3 }),
    kind: fc.constantFrom('verdict' as const, 'lastGreen' as const),
    hook: fc.constantFrom('h1', 'h.2'),
  })
  .map(({ queue, n, ...rest }): OutboxKey => ({ queue, requestId: `request/${queue}/${n}`, ...rest }))
const smallTime = fc.integer({ min: 0, max: 2 })
const settlement: fc.Arbitrary<OutboxSettlement> = fc.record({
  attempts: fc.nat(4),
  nextAttemptAt: fc.oneof({ arbitrary: smallTime, weight: 5 }, { arbitrary: fc.constant(OUTBOX_NEVER), weight: 1 }),
  deliveredAt: fc.oneof({ arbitrary: fc.constant(null), weight: 4 }, { arbitrary: smallTime, weight: 1 }),
  lastError: fc.option(fc.constantFrom('HTTP 500', 'é 🚀', ''), { nil: null }),
})
const outboxEntry = fc
  .record({
    key: outboxKey,
    payload: fc.record({ verdict: fc.constantFrom('green', 'red'), note: jsonValue(1) }),
    createdAt: fc.integer({ min: 0, max: 1 }),
    state: settlement,
  })
  .map(({ key, payload, createdAt, state }): OutboxEntry => ({ ...key, payload, createdAt, ...state }))

async function listOutbox(storage: Storage, queue: string | undefined, limit: number): Promise<unknown> {
  const pages: unknown[] = []
  let cursor: string | undefined
  do {
    const page = await storage.outbox.list({
      limit,
      ...(queue === undefined ? {} : { queue }),
      ...(cursor === undefined ? {} : { cursor }),
    })
    pages.push(page.items)
    cursor = page.nextCursor
  } while (cursor !== undefined && pages.length < 20)
  return pages
}

const writeOp: fc.Arbitrary<WriteOp> = fc.oneof(
  outboxEntry.map((entry): WriteOp => ({ op: 'outbox.put', entry })),
  fc.tuple(outboxKey, settlement).map(([key, state]): WriteOp => ({ op: 'outbox.settle', key, ...state })),
  deadLetter.map((letter): WriteOp => ({ op: 'deadLetter.put', letter })),
  request.map((record): WriteOp => ({ op: 'request.create', record })),
  fc
    .tuple(request, versions)
    .map(([record, [oldVersion, newVersion]]): WriteOp => ({ op: 'request.update', record, oldVersion, newVersion })),
  mapping.map((m): WriteOp => ({ op: 'requestUri.create', mapping: m })),
  queueRecord.map((record): WriteOp => ({ op: 'queue.create', record })),
  fc
    .tuple(queueRecord, versions)
    .map(([record, [oldVersion, newVersion]]): WriteOp => ({ op: 'queue.update', record, oldVersion, newVersion })),
  fact.map((f): WriteOp => ({ op: 'fact.put', fact: f })),
  queueName.map((queue): WriteOp => ({ op: 'counter.next', queue })),
  eventRow.map((row): WriteOp => ({ op: 'event.append', row })),
)

async function listAll(
  storage: Storage,
  queue: string,
  options: { states?: RequestState[]; limit: number; order: 'asc' | 'desc' },
): Promise<unknown> {
  const pages: unknown[] = []
  let cursor: string | undefined
  do {
    const page = await storage.requests.listByQueue(queue, { ...options, ...(cursor === undefined ? {} : { cursor }) })
    pages.push(page.items)
    cursor = page.nextCursor
  } while (cursor !== undefined && pages.length < 20)
  return pages
}

async function listLetters(storage: Storage, limit: number): Promise<unknown> {
  const pages: unknown[] = []
  let cursor: string | undefined
  do {
    const page = await storage.deadLetters.list({ limit, ...(cursor === undefined ? {} : { cursor }) })
    pages.push(page.items)
    cursor = page.nextCursor
  } while (cursor !== undefined && pages.length < 20)
  return pages
}

const show = (value: unknown): string => JSON.stringify(value)

const outboxPut = outboxEntry.map((e) => new Call(`outbox.put(${show(e)})`, (s) => s.outbox.put(e)))
const outboxDue = fc
  .record({ before: fc.oneof(smallTime, fc.constant(OUTBOX_NEVER)), limit: fc.integer({ min: 1, max: 4 }) })
  .map((o) => new Call(`outbox.due(${show(o)})`, (s) => s.outbox.due(o)))

const outboxPutOp = outboxEntry.map((entry): WriteOp => ({ op: 'outbox.put', entry }))
const outboxSettleOp = fc.tuple(outboxKey, settlement).map(([key, state]): WriteOp => ({ op: 'outbox.settle', key, ...state }))
const outboxCalls = [
  outboxPut,
  outboxDue,
  fc.tuple(outboxKey, settlement).map(([k, st]) => new Call(`outbox.settle(${show(k)}, ${show(st)})`, (s) => s.outbox.settle(k, st))),
  outboxKey.map((k) => new Call(`outbox.get(${show(k)})`, (s) => s.outbox.get(k))),
  fc
    .tuple(fc.option(queueName, { nil: undefined }), fc.integer({ min: 1, max: 3 }))
    .map(([q, limit]) => new Call(`outbox.list(${q ?? '*'}, ${limit})`, (s) => listOutbox(s, q, limit))),
]

const commands = [
  request.map((r) => new Call(`requests.create(${show(r)})`, (s) => s.requests.create(r))),
  fc.tuple(request, versions).map(([r, [o, n]]) => new Call(`requests.update(${show(r)}, ${o}, ${n})`, (s) => s.requests.update(r, o, n))),
  fc.tuple(queueName, number).map(([q, n]) => new Call(`requests.get(${q}/${n})`, (s) => s.requests.get(`request/${q}/${n}`))),
  fc
    .record({
      queue: queueName,
      states: fc.option(fc.subarray<RequestState>(['accepted', 'processing', 'recorded']), { nil: undefined }),
      limit: fc.integer({ min: 1, max: 3 }),
      order: fc.constantFrom<'asc' | 'desc'>('asc', 'desc'),
    })
    .map(
      ({ queue, states, ...rest }) =>
        new Call(`listByQueue(${queue}, ${show({ states, ...rest })})`, (s) =>
          listAll(s, queue, { ...rest, ...(states === undefined ? {} : { states }) }),
        ),
    ),
  mapping.map((m) => new Call(`requestUris.create(${show(m)})`, (s) => s.requestUris.create(m))),
  fc.tuple(queueName, uri).map(([q, u]) => new Call(`getIdByUri(${q}, ${u})`, (s) => s.requestUris.getIdByUri(q, u))),
  queueRecord.map((r) => new Call(`queues.create(${show(r)})`, (s) => s.queues.create(r))),
  fc.tuple(queueRecord, versions).map(([r, [o, n]]) => new Call(`queues.update(${show(r)}, ${o}, ${n})`, (s) => s.queues.update(r, o, n))),
  queueName.map((q) => new Call(`queues.get(${q})`, (s) => s.queues.get(q))),
  fc.constant(new Call('queues.list()', (s) => s.queues.list())),
  fact.map((f) => new Call(`facts.put(${show(f)})`, (s) => s.facts.put(f))),
  fc.tuple(queueName, uri, project).map(([q, u, p]) => new Call(`facts.get(${q}, ${u}, ${p})`, (s) => s.facts.get(q, u, p))),
  fc.tuple(queueName, uri).map(([q, u]) => new Call(`facts.listByUri(${q}, ${u})`, (s) => s.facts.listByUri(q, u))),
  queueName.map((q) => new Call(`counters.next(${q})`, (s) => s.counters.next(q))),
  fc.array(eventRow, { minLength: 1, maxLength: 3 }).map((rows) => new Call(`events.append(${show(rows)})`, (s) => s.events.append(rows))),
  fc
    .record({ nodeId: fc.option(node, { nil: undefined }), fromSeq: fc.nat(4), fromId: fc.nat(25), limit: fc.integer({ min: 1, max: 5 }) })
    .map(
      (o) =>
        new Call(`events.read(${show(o)})`, (s) =>
          s.events.read({ fromSeq: o.fromSeq, fromId: o.fromId, limit: o.limit, ...(o.nodeId === undefined ? {} : { nodeId: o.nodeId }) }),
        ),
    ),
  node.map((n) => new Call(`events.last(${n})`, (s) => s.events.last(n))),
  fc.array(writeOp, { minLength: 1, maxLength: 8 }).map((ops) => new Call(`commit(${show(ops)})`, (s) => s.commit(ops))),
  deadLetter.map((l) => new Call(`deadLetters.put(${show(l)})`, (s) => s.deadLetters.put(l))),
  fc.integer({ min: 1, max: 3 }).map((limit) => new Call(`deadLetters.list(${limit})`, (s) => listLetters(s, limit))),
  ...outboxCalls,
  fc.constant(new Reopen()),
]

/** The outbox alone, so its calls meet often enough to order ties in due(). */
const outboxCommands = [
  outboxPut,
  outboxPut,
  outboxDue,
  fc
    .array(fc.oneof(outboxPutOp, outboxSettleOp), { minLength: 1, maxLength: 4 })
    .map((ops) => new Call(`commit(${show(ops)})`, (s) => s.commit(ops))),
  ...outboxCalls,
  fc.constant(new Reopen()),
]

function modelTest(name: string, open: () => Promise<StorageFixture>, numRuns: number, only?: 'outbox'): void {
  const what = only === undefined ? 'random call sequences' : `random ${only} call sequences`
  it(`${name} behaves exactly like the memory model over ${what}`, async () => {
    await fc.assert(
      fc.asyncProperty(fc.commands(only === undefined ? commands : outboxCommands, { maxCommands: 40 }), async (cmds) => {
        const model = await openMemoryFixture()
        const real = await open()
        try {
          await fc.asyncModelRun(
            () => ({ model: { fixture: model, storage: model.storage }, real: { fixture: real, storage: real.storage } }),
            cmds,
          )
        } finally {
          await model.destroy()
          await real.destroy()
        }
      }),
      { numRuns, verbose: fc.VerbosityLevel.Verbose },
    )
  }, 300_000)
}

describe('storage model test', () => {
  modelTest('sqlite', () => openSqliteFixture(), 100)
  modelTest('sqlite', () => openSqliteFixture(), 60, 'outbox')
})

describeMysql('storage model test (mysql)', () => {
  modelTest('mysql', openMysqlFixture, 40)
  modelTest('mysql', openMysqlFixture, 20, 'outbox')
})
