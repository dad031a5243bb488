/**
 * The storage contract as a vitest suite. Run it against any backend (ours or yours):
 *
 * ```ts
 * describeStorageContract('my backend', async () => {
 *   const storage = await openMine()
 *   return { storage, reopen: () => openMine(), destroy: () => storage.close() }
 * })
 * ```
 *
 * @module
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import {
  AlreadyExistsError,
  InvalidInputError,
  NotFoundError,
  StorageClosedError,
  VersionMismatchError,
  type StovepipeError,
} from '../storage/errors.js'
import {
  OUTBOX_NEVER,
  type DeadLetter,
  type EventRow,
  type Fact,
  type OutboxEntry,
  type OutboxKey,
  type QueueRecord,
  type RequestRecord,
  type Storage,
  type WriteOp,
} from '../storage/types.js'

/** A fresh, empty storage plus the means to reopen and discard it. */
export interface StorageFixture {
  /** An open, migrated, empty storage. */
  storage: Storage
  /** Closes `storage` if still open and opens the same database again. */
  reopen(): Promise<Storage>
  /** Closes every handle and discards the database. */
  destroy(): Promise<void>
}

/** A request record for tests: `request/<queue>/<n>` at `fake://<n>`, version 0. */
export function sampleRequest(queue: string, n: number, overrides: Partial<RequestRecord> = {}): RequestRecord {
  return {
    id: `request/${queue}/${n}`,
    queue,
    uri: `fake://${queue}/${n}`,
    state: 'accepted',
    version: 0,
    createdAt: 1_000 + n,
    updatedAt: 1_000 + n,
    ...overrides,
  }
}

/** A queue record for tests, version 0. */
export function sampleQueue(name: string, overrides: Partial<QueueRecord> = {}): QueueRecord {
  return {
    name,
    version: 0,
    config: { repo: '/srv/repo', ref: 'refs/heads/main', maxConcurrent: 1 },
    createdAt: 5,
    updatedAt: 5,
    ...overrides,
  }
}

/** A fact for tests: green, whole repo. */
export function sampleFact(queue: string, n: number, overrides: Partial<Fact> = {}): Fact {
  return { queue, uri: `fake://${queue}/${n}`, project: '', degree: 0, requestId: `request/${queue}/${n}`, at: 2_000 + n, ...overrides }
}

/** An outbox entry for tests: the verdict of `request/<queue>/<n>` for hook `hook`, pending. */
export function sampleOutbox(queue: string, n: number, overrides: Partial<OutboxEntry> = {}): OutboxEntry {
  return {
    queue,
    requestId: `request/${queue}/${n}`,
    kind: 'verdict',
    hook: 'webhook',
    payload: {
      queue,
      requestId: `request/${queue}/${n}`,
      uri: `fake://${queue}/${n}`,
      verdict: 'green',
      degree: 0,
      reason: null,
      at: 3_000 + n,
    },
    createdAt: 3_000 + n,
    attempts: 0,
    nextAttemptAt: 3_000 + n,
    deliveredAt: null,
    lastError: null,
    ...overrides,
  }
}

const keyOf = (entry: OutboxEntry): OutboxKey => ({ queue: entry.queue, requestId: entry.requestId, kind: entry.kind, hook: entry.hook })

const eventRow = (nodeId: string, seq: number, id: number): EventRow => ({
  kind: 'event',
  nodeId,
  seq,
  id,
  at: 10 + seq,
  payload: { queue: 'main', requestId: `request/main/${id + 1}`, from: 'accepted', to: 'processing', event: 'START' },
})
const gapRow = (nodeId: string, seq: number, fromId: number, toId: number): EventRow => ({
  kind: 'gap',
  nodeId,
  seq,
  fromId,
  toId,
  at: 10 + seq,
})

async function rejection(promise: Promise<unknown>): Promise<StovepipeError> {
  try {
    await promise
  } catch (error) {
    return error as StovepipeError
  }
  throw new Error('expected the call to reject, it resolved')
}

/** One rule of the input validation table: the call, and what must not have been written. */
interface BadInput {
  rule: string
  call: (s: Storage) => Promise<unknown>
}

const LONG_URI = `fake://${'x'.repeat(2042)}` // 2049 bytes
const TWO_BYTE_URI = `fake://${'é'.repeat(1021)}` // 7 + 2042 = 2049 bytes

/** Every input rule, each a call that must fail with InvalidInputError and write nothing. */
export const BAD_INPUTS: readonly BadInput[] = [
  { rule: 'queue name with a space', call: (s) => s.requests.create(sampleRequest('main', 1, { queue: 'ma in', id: 'request/ma in/1' })) },
  { rule: 'queue name with a slash', call: (s) => s.queues.create(sampleQueue('a/b')) },
  { rule: 'empty queue name', call: (s) => s.queues.create(sampleQueue('')) },
  { rule: 'queue name of 129 characters', call: (s) => s.queues.create(sampleQueue('q'.repeat(129))) },
  { rule: 'queue name with non-ASCII letters', call: (s) => s.counters.next('grün') },
  { rule: 'empty uri', call: (s) => s.requests.create(sampleRequest('main', 1, { uri: '' })) },
  { rule: 'uri over 2048 bytes', call: (s) => s.requestUris.create({ queue: 'main', uri: LONG_URI, requestId: 'request/main/1' }) },
  { rule: 'uri over 2048 bytes in UTF-8', call: (s) => s.requests.create(sampleRequest('main', 1, { uri: TWO_BYTE_URI })) },
  { rule: 'uri with a NUL', call: (s) => s.requests.create(sampleRequest('main', 1, { uri: 'fake://a\u0000b' })) },
  { rule: 'uri with a lone surrogate', call: (s) => s.requests.create(sampleRequest('main', 1, { uri: 'fake://\ud800' })) },
  { rule: 'negative version', call: (s) => s.requests.create(sampleRequest('main', 1, { version: -1 })) },
  { rule: 'fractional version', call: (s) => s.queues.create(sampleQueue('main', { version: 1.5 })) },
  { rule: 'negative oldVersion', call: (s) => s.requests.update(sampleRequest('main', 1), -1, 1) },
  { rule: 'newVersion equal to oldVersion', call: (s) => s.requests.update(sampleRequest('main', 1), 3, 3) },
  { rule: 'newVersion below oldVersion', call: (s) => s.queues.update(sampleQueue('main'), 3, 2) },
  { rule: 'degree above 1', call: (s) => s.facts.put(sampleFact('main', 1, { degree: 1.5 })) },
  { rule: 'degree below 0', call: (s) => s.facts.put(sampleFact('main', 1, { degree: -0.1 })) },
  { rule: 'degree NaN', call: (s) => s.facts.put(sampleFact('main', 1, { degree: Number.NaN })) },
  { rule: 'request id of another queue', call: (s) => s.requests.create(sampleRequest('main', 1, { id: 'request/other/1' })) },
  { rule: 'request id without a number', call: (s) => s.requests.create(sampleRequest('main', 1, { id: 'request/main/x' })) },
  { rule: 'request id numbered 0', call: (s) => s.requestUris.create({ queue: 'main', uri: 'fake://1', requestId: 'request/main/0' }) },
  { rule: 'unknown request state', call: (s) => s.requests.create(sampleRequest('main', 1, { state: 'done' as RequestRecord['state'] })) },
  { rule: 'data with undefined inside', call: (s) => s.requests.create(sampleRequest('main', 1, { data: { a: undefined } as never })) },
  { rule: 'data with Infinity', call: (s) => s.requests.create(sampleRequest('main', 1, { data: { a: Number.POSITIVE_INFINITY } })) },
  { rule: 'data with a Date', call: (s) => s.requests.create(sampleRequest('main', 1, { data: { at: new Date(0) } as never })) },
  { rule: 'negative timestamp', call: (s) => s.requests.create(sampleRequest('main', 1, { createdAt: -5 })) },
  { rule: 'config that is not an object', call: (s) => s.queues.create(sampleQueue('main', { config: [] as never })) },
  { rule: 'gap with toId < fromId', call: (s) => s.events.append([gapRow('node-a', 0, 5, 3)]) },
  { rule: 'event with a bad node id', call: (s) => s.events.append([eventRow('node a', 0, 0)]) },
  { rule: 'unknown op in a batch', call: (s) => s.commit([{ op: 'request.delete' } as unknown as WriteOp]) },
  {
    rule: 'one bad op after good ones in a batch',
    call: (s) =>
      s.commit([
        { op: 'request.create', record: sampleRequest('main', 1) },
        { op: 'counter.next', queue: 'main' },
        { op: 'fact.put', fact: sampleFact('main', 1, { degree: 2 }) },
      ]),
  },
  { rule: 'page limit of 0', call: (s) => s.requests.listByQueue('main', { limit: 0 }) },
  { rule: 'empty states filter', call: (s) => s.requests.listByQueue('main', { states: [] }) },
  {
    rule: 'dead letter with a bad id',
    call: (s) => s.deadLetters.put({ id: 'a b', at: 1, op: null, error: { code: 'X', message: '' }, attempts: 1 }),
  },
  {
    rule: 'dead letter op that is not JSON',
    call: (s) => s.deadLetters.put({ id: 'w:1', at: 1, op: { f: () => 1 } as never, error: { code: 'X', message: '' }, attempts: 1 }),
  },
  { rule: 'a cursor this store never issued', call: (s) => s.requests.listByQueue('main', { cursor: 'abc' }) },
  { rule: 'outbox entry of an unknown kind', call: (s) => s.outbox.put(sampleOutbox('main', 1, { kind: 'merged' as never })) },
  { rule: 'outbox entry with a bad hook name', call: (s) => s.outbox.put(sampleOutbox('main', 1, { hook: 'web hook' })) },
  { rule: 'outbox entry with an empty hook name', call: (s) => s.outbox.put(sampleOutbox('main', 1, { hook: '' })) },
  {
    rule: 'outbox entry for a request of another queue',
    call: (s) => s.outbox.put(sampleOutbox('main', 1, { requestId: 'request/other/1' })),
  },
  { rule: 'outbox payload that is not an object', call: (s) => s.outbox.put(sampleOutbox('main', 1, { payload: [1] as never })) },
  {
    rule: 'outbox payload with undefined inside',
    call: (s) => s.outbox.put(sampleOutbox('main', 1, { payload: { a: undefined } as never })),
  },
  {
    rule: 'outbox payload over 64 KiB',
    call: (s) => s.outbox.put(sampleOutbox('main', 1, { payload: { log: 'x'.repeat(64 * 1024) } })),
  },
  { rule: 'outbox entry with negative attempts', call: (s) => s.outbox.put(sampleOutbox('main', 1, { attempts: -1 })) },
  { rule: 'outbox entry with a fractional deliveredAt', call: (s) => s.outbox.put(sampleOutbox('main', 1, { deliveredAt: 1.5 })) },
  {
    rule: 'outbox lastError over 4096 bytes',
    call: (s) => s.outbox.put(sampleOutbox('main', 1, { lastError: 'é'.repeat(2049) })),
  },
  {
    rule: 'outbox settle with a missing nextAttemptAt',
    call: (s) =>
      s.commit([{ op: 'outbox.settle', key: keyOf(sampleOutbox('main', 1)), attempts: 1, deliveredAt: null, lastError: null } as never]),
  },
  {
    rule: 'outbox settle with a bad key',
    call: (s) =>
      s.outbox.settle(
        { ...keyOf(sampleOutbox('main', 1)), queue: 'ma in' },
        { attempts: 1, nextAttemptAt: 1, deliveredAt: null, lastError: null },
      ),
  },
  { rule: 'outbox due with a negative time', call: (s) => s.outbox.due({ before: -1 }) },
  { rule: 'outbox due with a limit of 0', call: (s) => s.outbox.due({ before: 1, limit: 0 }) },
  { rule: 'outbox list with a bad queue name', call: (s) => s.outbox.list({ queue: 'a/b' }) },
  { rule: 'outbox list with a cursor this store never issued', call: (s) => s.outbox.list({ cursor: '-1' }) },
  { rule: 'outbox get with an unknown kind', call: (s) => s.outbox.get({ ...keyOf(sampleOutbox('main', 1)), kind: 'x' as never }) },
]

/** Checks that none of the rows the bad inputs aimed at exist. */
async function expectNothingWritten(storage: Storage): Promise<void> {
  expect((await storage.requests.listByQueue('main')).items).toEqual([])
  expect(await storage.queues.list()).toEqual([])
  expect(await storage.events.read()).toEqual([])
  expect((await storage.deadLetters.list()).items).toEqual([])
  expect((await storage.outbox.list()).items).toEqual([])
  await expect(storage.facts.get('main', 'fake://main/1')).rejects.toBeInstanceOf(NotFoundError)
  await expect(storage.requestUris.getIdByUri('main', 'fake://1')).rejects.toBeInstanceOf(NotFoundError)
  expect(await storage.counters.next('main')).toBe(1)
}

/**
 * Registers the storage contract suite for one backend. `openFresh` gives each test its
 * own empty database.
 */
export function describeStorageContract(name: string, openFresh: () => Promise<StorageFixture>): void {
  describe(`storage contract: ${name}`, () => {
    let fixture: StorageFixture
    let storage: Storage

    beforeEach(async () => {
      fixture = await openFresh()
      storage = fixture.storage
    })
    afterEach(async () => {
      await fixture.destroy()
    })

    describe('requests', () => {
      it('creates and gets a request, data included, as plain JSON', async () => {
        const record = sampleRequest('main', 1, { data: { machine: { value: 'accepted', n: [1, 2.5, null, true] }, note: 'é 🚀' } })
        const created = await storage.requests.create(record)
        expect(created).toEqual(record)
        const got = await storage.requests.get(record.id)
        expect(got).toEqual(record)
        expect(JSON.parse(JSON.stringify(got))).toEqual(got)
        expect(got).not.toBe(created)
      })

      it('omits data when none was stored', async () => {
        await storage.requests.create(sampleRequest('main', 1))
        const got = await storage.requests.get('request/main/1')
        expect('data' in got).toBe(false)
      })

      it('refuses a duplicate id and keeps the first row', async () => {
        await storage.requests.create(sampleRequest('main', 1))
        const error = await rejection(storage.requests.create(sampleRequest('main', 1, { uri: 'fake://other' })))
        expect(error).toBeInstanceOf(AlreadyExistsError)
        expect(error.code).toBe('ALREADY_EXISTS')
        expect((await storage.requests.get('request/main/1')).uri).toBe('fake://main/1')
      })

      it('gives NotFoundError for a missing id', async () => {
        const error = await rejection(storage.requests.get('request/main/9'))
        expect(error).toBeInstanceOf(NotFoundError)
        expect(error.code).toBe('NOT_FOUND')
      })

      it('updates the mutable fields when the version matches', async () => {
        const record = sampleRequest('main', 1, { data: { a: 1 } })
        await storage.requests.create(record)
        const next = { ...record, state: 'processing' as const, updatedAt: 3_000, data: { a: 2 }, uri: 'fake://ignored', createdAt: 1 }
        const updated = await storage.requests.update(next, 0, 1)
        const expected = { ...record, state: 'processing', version: 1, updatedAt: 3_000, data: { a: 2 } }
        expect(updated).toEqual(expected)
        expect(await storage.requests.get(record.id)).toEqual(expected)
        const { data: _dropped, ...withoutData } = expected
        const third = await storage.requests.update({ ...withoutData, state: 'recorded', updatedAt: 4_000 }, 1, 5)
        expect(third.version).toBe(5)
        expect('data' in third).toBe(false)
      })

      it('refuses a stale version and changes nothing', async () => {
        const record = sampleRequest('main', 1)
        await storage.requests.create(record)
        await storage.requests.update({ ...record, state: 'processing' }, 0, 1)
        const error = await rejection(storage.requests.update({ ...record, state: 'cancelled' }, 0, 1))
        expect(error).toBeInstanceOf(VersionMismatchError)
        expect(error.code).toBe('VERSION_MISMATCH')
        const stored = await storage.requests.get(record.id)
        expect(stored.state).toBe('processing')
        expect(stored.version).toBe(1)
      })

      it('refuses an update of a missing row with VersionMismatchError', async () => {
        const error = await rejection(storage.requests.update(sampleRequest('main', 1), 0, 1))
        expect(error).toBeInstanceOf(VersionMismatchError)
        await expect(storage.requests.get('request/main/1')).rejects.toBeInstanceOf(NotFoundError)
      })

      it('lists a queue by request number, filtered and paged, isolated from other queues', async () => {
        for (const n of [3, 1, 12, 2, 10]) {
          await storage.requests.create(sampleRequest('main', n, { state: n % 2 === 0 ? 'recorded' : 'accepted' }))
        }
        await storage.requests.create(sampleRequest('other', 4))
        const all = await storage.requests.listByQueue('main')
        expect(all.items.map((r) => r.id)).toEqual([1, 2, 3, 10, 12].map((n) => `request/main/${n}`))
        expect(all.nextCursor).toBeUndefined()
        const desc = await storage.requests.listByQueue('main', { order: 'desc' })
        expect(desc.items.map((r) => r.id)).toEqual([12, 10, 3, 2, 1].map((n) => `request/main/${n}`))
        const open = await storage.requests.listByQueue('main', { states: ['accepted', 'processing'] })
        expect(open.items.map((r) => r.id)).toEqual(['request/main/1', 'request/main/3'])
        for (const order of ['asc', 'desc'] as const) {
          const seen: string[] = []
          let cursor: string | undefined
          do {
            const page = await storage.requests.listByQueue('main', { limit: 2, order, ...(cursor === undefined ? {} : { cursor }) })
            expect(page.items.length).toBeLessThanOrEqual(2)
            seen.push(...page.items.map((r) => r.id))
            cursor = page.nextCursor
          } while (cursor !== undefined)
          expect(seen).toEqual((order === 'asc' ? all : desc).items.map((r) => r.id))
        }
        expect((await storage.requests.listByQueue('empty')).items).toEqual([])
      })
    })

    describe('request uris', () => {
      it('maps (queue, uri) to a request id and back', async () => {
        await storage.requestUris.create({ queue: 'main', uri: 'fake://abc', requestId: 'request/main/1' })
        expect(await storage.requestUris.getIdByUri('main', 'fake://abc')).toBe('request/main/1')
      })

      it('gives NotFoundError for an unknown uri', async () => {
        const error = await rejection(storage.requestUris.getIdByUri('main', 'fake://nope'))
        expect(error).toBeInstanceOf(NotFoundError)
      })

      it('refuses a duplicate (queue, uri) and keeps the first mapping: the dedup signal', async () => {
        await storage.requestUris.create({ queue: 'main', uri: 'fake://abc', requestId: 'request/main/1' })
        const error = await rejection(storage.requestUris.create({ queue: 'main', uri: 'fake://abc', requestId: 'request/main/2' }))
        expect(error).toBeInstanceOf(AlreadyExistsError)
        expect(await storage.requestUris.getIdByUri('main', 'fake://abc')).toBe('request/main/1')
      })

      it('keeps queues apart: the same uri maps independently per queue', async () => {
        await storage.requestUris.create({ queue: 'main', uri: 'fake://abc', requestId: 'request/main/1' })
        await storage.requestUris.create({ queue: 'release', uri: 'fake://abc', requestId: 'request/release/7' })
        expect(await storage.requestUris.getIdByUri('main', 'fake://abc')).toBe('request/main/1')
        expect(await storage.requestUris.getIdByUri('release', 'fake://abc')).toBe('request/release/7')
        await expect(storage.requestUris.getIdByUri('other', 'fake://abc')).rejects.toBeInstanceOf(NotFoundError)
      })

      it('treats uris as exact bytes (case and Unicode kept)', async () => {
        await storage.requestUris.create({ queue: 'main', uri: 'fake://ABC', requestId: 'request/main/1' })
        await storage.requestUris.create({ queue: 'main', uri: 'fake://abc', requestId: 'request/main/2' })
        await storage.requestUris.create({ queue: 'main', uri: 'fake://é🚀', requestId: 'request/main/3' })
        expect(await storage.requestUris.getIdByUri('main', 'fake://ABC')).toBe('request/main/1')
        expect(await storage.requestUris.getIdByUri('main', 'fake://abc')).toBe('request/main/2')
        expect(await storage.requestUris.getIdByUri('main', 'fake://é🚀')).toBe('request/main/3')
      })
    })

    describe('queues', () => {
      it('creates, gets and lists queues by name', async () => {
        await storage.queues.create(sampleQueue('zeta'))
        const alpha = sampleQueue('alpha', { snapshot: { status: 'active', context: { inFlight: [] } } })
        expect(await storage.queues.create(alpha)).toEqual(alpha)
        expect(await storage.queues.get('alpha')).toEqual(alpha)
        expect((await storage.queues.list()).map((q) => q.name)).toEqual(['alpha', 'zeta'])
        await expect(storage.queues.get('nope')).rejects.toBeInstanceOf(NotFoundError)
        await expect(storage.queues.create(sampleQueue('alpha'))).rejects.toBeInstanceOf(AlreadyExistsError)
      })

      it('updates with CAS: last green, snapshot and config move; name and createdAt stay', async () => {
        const queue = sampleQueue('main')
        await storage.queues.create(queue)
        const lastGreen = { uri: 'fake://main/3', requestId: 'request/main/3', at: 77 }
        const next = { ...queue, lastGreen, snapshot: { s: 1 }, config: { maxConcurrent: 2 }, updatedAt: 9, createdAt: 1 }
        const updated = await storage.queues.update(next, 0, 1)
        expect(updated).toEqual({ ...queue, version: 1, lastGreen, snapshot: { s: 1 }, config: { maxConcurrent: 2 }, updatedAt: 9 })
        await expect(storage.queues.update(next, 0, 1)).rejects.toBeInstanceOf(VersionMismatchError)
        await expect(storage.queues.update(sampleQueue('ghost'), 0, 1)).rejects.toBeInstanceOf(VersionMismatchError)
        const cleared = await storage.queues.update({ ...queue, updatedAt: 10 }, 1, 2)
        expect(cleared.lastGreen).toBeUndefined()
        expect(cleared.snapshot).toBeUndefined()
        expect(await storage.queues.get('main')).toEqual(cleared)
      })
    })

    describe('facts', () => {
      it('writes the first fact and keeps it: the first writer wins', async () => {
        const first = sampleFact('main', 1, { degree: 0 })
        expect(await storage.facts.put(first)).toEqual({ written: true, fact: first })
        const second = sampleFact('main', 1, { degree: 1, requestId: 'request/main/2', at: 9_999 })
        expect(await storage.facts.put(second)).toEqual({ written: false, fact: first })
        expect(await storage.facts.get('main', first.uri)).toEqual(first)
        expect(await storage.facts.get('main', first.uri, '')).toEqual(first)
      })

      it('keeps facts per project and per queue, and degrees exactly', async () => {
        const whole = sampleFact('main', 1, { degree: 1 / 3 })
        const api = sampleFact('main', 1, { project: 'services/api', degree: 0.1 + 0.2 })
        const other = sampleFact('other', 1, { uri: whole.uri, requestId: 'request/other/1', degree: 1 })
        for (const fact of [whole, api, other]) expect((await storage.facts.put(fact)).written).toBe(true)
        expect(await storage.facts.get('main', whole.uri, 'services/api')).toEqual(api)
        expect(await storage.facts.listByUri('main', whole.uri)).toEqual([whole, api])
        expect(await storage.facts.get('other', whole.uri)).toEqual(other)
        await expect(storage.facts.get('main', whole.uri, 'web')).rejects.toBeInstanceOf(NotFoundError)
        await expect(storage.facts.get('main', 'fake://none')).rejects.toBeInstanceOf(NotFoundError)
      })
    })

    describe('counters', () => {
      it('counts 1, 2, 3 per queue, independently', async () => {
        expect(await storage.counters.next('main')).toBe(1)
        expect(await storage.counters.next('main')).toBe(2)
        expect(await storage.counters.next('other')).toBe(1)
        expect(await storage.counters.next('main')).toBe(3)
      })

      it('never repeats a value under concurrent callers', async () => {
        const values = await Promise.all(Array.from({ length: 50 }, () => storage.counters.next('main')))
        expect([...values].sort((a, b) => a - b)).toEqual(Array.from({ length: 50 }, (_, i) => i + 1))
      })
    })

    describe('events', () => {
      it('appends events and gaps and reads them by (nodeId, seq)', async () => {
        const rows = [eventRow('node-b', 0, 0), eventRow('node-a', 0, 0), gapRow('node-a', 1, 1, 4), eventRow('node-a', 2, 5)]
        await storage.events.append(rows)
        const all = await storage.events.read()
        expect(all).toEqual([rows[1], rows[2], rows[3], rows[0]])
        expect(await storage.events.read({ nodeId: 'node-a', fromSeq: 1 })).toEqual([rows[2], rows[3]])
        expect(await storage.events.read({ nodeId: 'node-a', fromId: 3 })).toEqual([rows[2], rows[3]])
        expect(await storage.events.read({ nodeId: 'node-a', fromId: 5 })).toEqual([rows[3]])
        expect(await storage.events.read({ limit: 2 })).toEqual([rows[1], rows[2]])
        expect(await storage.events.last('node-a')).toEqual(rows[3])
        expect(await storage.events.last('node-c')).toBeUndefined()
      })

      it('lists the nodes with rows, in the order read gives them', async () => {
        expect(await storage.events.nodes()).toEqual([])
        const nodes = ['node-b', 'a.1', 'Z9', 'node-a', '_x']
        await storage.events.append(nodes.map((node) => eventRow(node, 0, 0)))
        await storage.events.append([eventRow('node-a', 1, 1)])
        const listed = await storage.events.nodes()
        expect(listed).toEqual(['Z9', '_x', 'a.1', 'node-a', 'node-b'])
        expect(listed).toEqual([...new Set((await storage.events.read()).map((row) => row.nodeId))])
      })

      it('refuses a duplicate (nodeId, seq) and appends nothing of that call', async () => {
        await storage.events.append([eventRow('node-a', 0, 0)])
        const error = await rejection(storage.events.append([eventRow('node-a', 1, 1), eventRow('node-a', 0, 9)]))
        expect(error).toBeInstanceOf(AlreadyExistsError)
        expect(await storage.events.read()).toEqual([eventRow('node-a', 0, 0)])
      })
    })

    describe('dead letters', () => {
      it('stores letters once by id and lists them in storage order, paged', async () => {
        const letter = (i: number): DeadLetter => ({
          id: `writer-a:${i}`,
          at: 100 + i,
          op: { op: 'fact.put', fact: { queue: 'main', uri: `fake://${i}`, degree: 0.5, nested: [i, null] } },
          error: { code: 'STORAGE_FAILED', message: `poison ${i} é` },
          attempts: i,
        })
        for (const i of [3, 1, 2]) await storage.deadLetters.put(letter(i))
        await storage.deadLetters.put({ ...letter(1), attempts: 99 })
        const first = await storage.deadLetters.list({ limit: 2 })
        expect(first.items).toEqual([letter(3), letter(1)])
        expect(first.nextCursor).toBeDefined()
        const second = await storage.deadLetters.list({ limit: 2, cursor: first.nextCursor ?? '' })
        expect(second).toEqual({ items: [letter(2)] })
        const results = await storage.commit([
          { op: 'deadLetter.put', letter: letter(4) },
          { op: 'deadLetter.put', letter: letter(2) },
        ])
        expect(results).toEqual([{ status: 'ok' }, { status: 'already_exists' }])
        expect((await storage.deadLetters.list()).items.map((l) => l.id)).toEqual(['writer-a:3', 'writer-a:1', 'writer-a:2', 'writer-a:4'])
      })
    })

    describe('dead letter attempts', () => {
      it('keeps attempts past 32 bits, like every other count', async () => {
        const letter: DeadLetter = { id: 'writer-a:1', at: 1, op: null, error: { code: 'STORAGE_FAILED', message: 'x' }, attempts: 2 ** 40 }
        await storage.deadLetters.put(letter)
        expect((await storage.deadLetters.list()).items).toEqual([letter])
      })
    })

    describe('outbox', () => {
      it('puts and gets an entry as plain JSON; the first writer wins', async () => {
        const entry = sampleOutbox('main', 1, { payload: { nested: { list: [1, 2.5, null, true], note: 'é 🚀' } } })
        expect(await storage.outbox.put(entry)).toEqual({ written: true, entry })
        const got = await storage.outbox.get(keyOf(entry))
        expect(got).toEqual(entry)
        expect(JSON.parse(JSON.stringify(got))).toEqual(got)
        const again = await storage.outbox.put({ ...entry, payload: { other: 1 }, createdAt: 9, attempts: 4 })
        expect(again).toEqual({ written: false, entry })
        expect(await storage.outbox.get(keyOf(entry))).toEqual(entry)
        await expect(storage.outbox.get({ ...keyOf(entry), hook: 'other' })).rejects.toBeInstanceOf(NotFoundError)
      })

      it('keeps one entry per (queue, requestId, kind, hook)', async () => {
        const base = sampleOutbox('main', 1)
        const variants = [
          base,
          sampleOutbox('main', 1, { hook: 'slack' }),
          sampleOutbox('main', 1, { kind: 'lastGreen' }),
          sampleOutbox('main', 2),
          sampleOutbox('other', 1),
        ]
        for (const entry of variants) expect((await storage.outbox.put(entry)).written).toBe(true)
        for (const entry of variants) expect(await storage.outbox.get(keyOf(entry))).toEqual(entry)
        expect((await storage.outbox.list()).items).toEqual(variants)
      })

      it('settles a pending entry: a failure moves it on, a delivery ends it', async () => {
        const entry = sampleOutbox('main', 1)
        await storage.outbox.put(entry)
        const failed = { attempts: 1, nextAttemptAt: 5_000, deliveredAt: null, lastError: 'HTTP 500 é' }
        expect(await storage.outbox.settle(keyOf(entry), failed)).toEqual({ ...entry, ...failed })
        const delivered = { attempts: 2, nextAttemptAt: 5_000, deliveredAt: 5_001, lastError: null }
        expect(await storage.outbox.settle(keyOf(entry), delivered)).toEqual({ ...entry, ...delivered })
        const error = await rejection(storage.outbox.settle(keyOf(entry), failed))
        expect(error).toBeInstanceOf(VersionMismatchError)
        expect(await storage.outbox.get(keyOf(entry))).toEqual({ ...entry, ...delivered })
        await expect(storage.outbox.settle(keyOf(sampleOutbox('main', 9)), failed)).rejects.toBeInstanceOf(NotFoundError)
      })

      it('lists due entries: undelivered, due by the given time, longest waiting first, limited', async () => {
        const a = sampleOutbox('main', 1, { nextAttemptAt: 300, createdAt: 10 })
        const b = sampleOutbox('main', 2, { nextAttemptAt: 100, createdAt: 30 })
        const c = sampleOutbox('main', 3, { nextAttemptAt: 300, createdAt: 5 })
        const d = sampleOutbox('other', 4, { nextAttemptAt: 300, createdAt: 5, hook: 'z' })
        const later = sampleOutbox('main', 5, { nextAttemptAt: 1_000 })
        const delivered = sampleOutbox('main', 6, { nextAttemptAt: 0, deliveredAt: 7 })
        const givenUp = sampleOutbox('main', 7, { nextAttemptAt: OUTBOX_NEVER, attempts: 9, lastError: 'gave up' })
        for (const entry of [a, b, c, d, later, delivered, givenUp]) await storage.outbox.put(entry)
        expect(await storage.outbox.due({ before: 300 })).toEqual([b, c, d, a])
        expect(await storage.outbox.due({ before: 300, limit: 2 })).toEqual([b, c])
        expect(await storage.outbox.due({ before: 99 })).toEqual([])
        expect(await storage.outbox.due({ before: OUTBOX_NEVER - 1 })).toEqual([b, c, d, a, later])
        expect(await storage.outbox.due({ before: OUTBOX_NEVER })).toEqual([b, c, d, a, later, givenUp])
        await storage.outbox.settle(keyOf(b), { attempts: 1, nextAttemptAt: 400, deliveredAt: null, lastError: 'down' })
        await storage.outbox.settle(keyOf(c), { attempts: 1, nextAttemptAt: 300, deliveredAt: 350, lastError: null })
        expect((await storage.outbox.due({ before: 500 })).map((e) => e.requestId)).toEqual([d, a, b].map((e) => e.requestId))
      })

      it('lists entries in storage order, by queue, paged', async () => {
        const entries = [
          sampleOutbox('main', 3),
          sampleOutbox('other', 1),
          sampleOutbox('main', 1),
          sampleOutbox('main', 2, { kind: 'lastGreen' }),
        ]
        for (const entry of entries) await storage.outbox.put(entry)
        expect((await storage.outbox.list()).items).toEqual(entries)
        expect((await storage.outbox.list({ queue: 'main' })).items).toEqual([entries[0], entries[2], entries[3]])
        const seen: OutboxEntry[] = []
        let cursor: string | undefined
        do {
          const page = await storage.outbox.list({ queue: 'main', limit: 2, ...(cursor === undefined ? {} : { cursor }) })
          expect(page.items.length).toBeLessThanOrEqual(2)
          seen.push(...page.items)
          cursor = page.nextCursor
        } while (cursor !== undefined)
        expect(seen).toEqual([entries[0], entries[2], entries[3]])
        expect((await storage.outbox.list({ queue: 'empty' })).items).toEqual([])
      })

      it('commits puts and settles with the other ops, each reporting its own outcome', async () => {
        const entry = sampleOutbox('main', 1)
        await storage.outbox.put(sampleOutbox('main', 2, { deliveredAt: 5 }))
        const settle = { attempts: 1, nextAttemptAt: 9_000, deliveredAt: null, lastError: 'refused' }
        const results = await storage.commit([
          { op: 'fact.put', fact: sampleFact('main', 1) },
          { op: 'outbox.put', entry },
          { op: 'outbox.put', entry: { ...entry, payload: {} } },
          { op: 'outbox.settle', key: keyOf(entry), ...settle },
          { op: 'outbox.settle', key: keyOf(sampleOutbox('main', 2)), ...settle },
          { op: 'outbox.settle', key: keyOf(sampleOutbox('main', 3)), ...settle },
          { op: 'request.create', record: sampleRequest('main', 1) },
        ])
        expect(results).toEqual([
          { status: 'ok' },
          { status: 'ok' },
          { status: 'already_exists' },
          { status: 'ok' },
          { status: 'version_mismatch' },
          { status: 'not_found' },
          { status: 'ok' },
        ])
        expect(await storage.outbox.get(keyOf(entry))).toEqual({ ...entry, ...settle })
        expect((await storage.outbox.get(keyOf(sampleOutbox('main', 2)))).deliveredAt).toBe(5)
        await expect(storage.outbox.get(keyOf(sampleOutbox('main', 3)))).rejects.toBeInstanceOf(NotFoundError)
      })
    })

    describe('commit', () => {
      it('reports each op and keeps the ops whose conditions held, in one transaction', async () => {
        await storage.requests.create(sampleRequest('main', 1))
        await storage.requests.create(sampleRequest('main', 2))
        await storage.facts.put(sampleFact('main', 1))
        const results = await storage.commit([
          { op: 'request.create', record: sampleRequest('main', 3) },
          { op: 'request.create', record: sampleRequest('main', 1) },
          { op: 'request.update', record: sampleRequest('main', 2, { state: 'processing' }), oldVersion: 7, newVersion: 8 },
          { op: 'request.update', record: sampleRequest('main', 9), oldVersion: 0, newVersion: 1 },
          { op: 'request.update', record: sampleRequest('main', 3, { state: 'processing' }), oldVersion: 0, newVersion: 1 },
          { op: 'requestUri.create', mapping: { queue: 'main', uri: 'fake://main/3', requestId: 'request/main/3' } },
          { op: 'fact.put', fact: sampleFact('main', 1, { degree: 1 }) },
          { op: 'fact.put', fact: sampleFact('main', 3) },
          { op: 'counter.next', queue: 'main' },
          { op: 'counter.next', queue: 'main' },
          { op: 'queue.create', record: sampleQueue('main') },
          {
            op: 'queue.update',
            record: sampleQueue('main', { lastGreen: { uri: 'fake://main/3', requestId: 'request/main/3', at: 1 } }),
            oldVersion: 0,
            newVersion: 1,
          },
          { op: 'event.append', row: eventRow('node-a', 0, 0) },
          { op: 'event.append', row: eventRow('node-a', 0, 0) },
        ])
        expect(results).toEqual([
          { status: 'ok' },
          { status: 'already_exists' },
          { status: 'version_mismatch' },
          { status: 'not_found' },
          { status: 'ok' },
          { status: 'ok' },
          { status: 'already_exists', fact: sampleFact('main', 1) },
          { status: 'ok' },
          { status: 'ok', value: 1 },
          { status: 'ok', value: 2 },
          { status: 'ok' },
          { status: 'ok' },
          { status: 'ok' },
          { status: 'already_exists' },
        ])
        expect((await storage.requests.get('request/main/3')).state).toBe('processing')
        expect((await storage.requests.get('request/main/2')).state).toBe('accepted')
        await expect(storage.requests.get('request/main/9')).rejects.toBeInstanceOf(NotFoundError)
        expect(await storage.requestUris.getIdByUri('main', 'fake://main/3')).toBe('request/main/3')
        expect((await storage.facts.get('main', 'fake://main/1')).degree).toBe(0)
        expect(await storage.facts.get('main', 'fake://main/3')).toEqual(sampleFact('main', 3))
        expect(await storage.counters.next('main')).toBe(3)
        expect((await storage.queues.get('main')).lastGreen?.requestId).toBe('request/main/3')
        expect(await storage.events.read()).toEqual([eventRow('node-a', 0, 0)])
      })

      it('returns nothing for an empty batch', async () => {
        expect(await storage.commit([])).toEqual([])
      })
    })

    describe('bad input', () => {
      it.each(BAD_INPUTS)('rejects $rule with InvalidInputError and writes nothing', async ({ call }) => {
        const error = await rejection(call(storage))
        expect(error).toBeInstanceOf(InvalidInputError)
        expect(error.code).toBe('INVALID_INPUT')
        expect(error.message.length).toBeGreaterThan(10)
        await expectNothingWritten(storage)
      })
    })

    describe('durability', () => {
      it('keeps every kind of row across close and reopen, and counters continue', async () => {
        await storage.requests.create(sampleRequest('main', 1, { data: { keep: true } }))
        await storage.requestUris.create({ queue: 'main', uri: 'fake://main/1', requestId: 'request/main/1' })
        await storage.queues.create(sampleQueue('main', { snapshot: { a: [1] } }))
        await storage.facts.put(sampleFact('main', 1))
        await storage.events.append([eventRow('node-a', 0, 0), gapRow('node-a', 1, 1, 2)])
        const letter: DeadLetter = {
          id: 'w:1',
          at: 3,
          op: { op: 'counter.next', queue: 'main' },
          error: { code: 'E', message: 'm' },
          attempts: 2,
        }
        await storage.deadLetters.put(letter)
        const pending = sampleOutbox('main', 1, { kind: 'lastGreen', payload: { previous: null, n: [1] } })
        const delivered = sampleOutbox('main', 1, { attempts: 3, deliveredAt: 4_000, nextAttemptAt: 3_500 })
        await storage.outbox.put(pending)
        await storage.outbox.put(delivered)
        expect(await storage.counters.next('main')).toBe(1)
        expect(await storage.counters.next('main')).toBe(2)
        await storage.close()
        const reopened = await fixture.reopen()
        expect(await reopened.requests.get('request/main/1')).toEqual(sampleRequest('main', 1, { data: { keep: true } }))
        expect(await reopened.requestUris.getIdByUri('main', 'fake://main/1')).toBe('request/main/1')
        expect(await reopened.queues.get('main')).toEqual(sampleQueue('main', { snapshot: { a: [1] } }))
        expect(await reopened.facts.get('main', 'fake://main/1')).toEqual(sampleFact('main', 1))
        expect(await reopened.events.read()).toEqual([eventRow('node-a', 0, 0), gapRow('node-a', 1, 1, 2)])
        expect((await reopened.deadLetters.list()).items).toEqual([letter])
        expect((await reopened.outbox.list()).items).toEqual([pending, delivered])
        expect(await reopened.outbox.due({ before: OUTBOX_NEVER - 1 })).toEqual([pending])
        expect(await reopened.counters.next('main')).toBe(3)
        expect(await reopened.migrate()).toEqual([])
      })

      it('refuses calls on a closed handle with StorageClosedError; close is idempotent', async () => {
        await storage.close()
        await storage.close()
        const error = await rejection(storage.requests.get('request/main/1'))
        expect(error).toBeInstanceOf(StorageClosedError)
        expect(error.retryable).toBe(false)
        await expect(storage.commit([{ op: 'counter.next', queue: 'main' }])).rejects.toBeInstanceOf(StorageClosedError)
      })
    })
  })
}
