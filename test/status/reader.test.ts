/**
 * The read model against a runtime on memory storage (simulated clock, fake source control
 * and builder): every status `why` can give, with its sentence; summaries, counts, history
 * paging; the live reader; errors.
 */
import { beforeAll, describe, expect, it } from 'vitest'
import { InvalidInputError, NotFoundError } from '../../src/storage/errors.js'
import {
  createLiveStatusReader,
  createStatusReader,
  isShaPrefix,
  matchesCommit,
  shaOf,
  shortSha,
  type StatusReader,
} from '../../src/status/index.js'
import type { QueueHandle } from '../../src/runtime/index.js'
import { createMemoryStorage } from '../../src/storage/memory/index.js'
import type { WriteOp } from '../../src/storage/index.js'
import { sampleQueue, sampleRequest } from '../../src/testing/index.js'
import { driveUntil } from '../support/drive.js'
import { world, type World } from '../support/runtime.js'

const A = 'a'.repeat(40)
const B = 'b'.repeat(40)
const C = 'c'.repeat(40)
const D = 'd'.repeat(40)
const E = 'e'.repeat(40)
const F = 'f'.repeat(40)

describe('shaOf and friends', () => {
  it('finds the sha of git and fake URIs, and nothing in other URIs', () => {
    expect(shaOf(`git+file:///srv/repo#${A}`)).toBe(A)
    expect(shaOf('fake://a1')).toBe('a1')
    expect(shaOf('https://example.com/x y')).toBeUndefined()
    expect(shaOf('no-scheme')).toBeUndefined()
    expect(shortSha(`git+file:///srv/repo#${A}`)).toBe('aaaaaaa')
    expect(shortSha('opaque')).toBe('opaque')
    expect(isShaPrefix('abc1234')).toBe(true)
    expect(isShaPrefix('abc123')).toBe(false)
    expect(isShaPrefix('xyz1234')).toBe(false)
    expect(matchesCommit(`git+file:///srv/repo#${A}`, 'AAAAAAA')).toBe(true)
    expect(matchesCommit(`git+file:///srv/repo#${A}`, 'aaaaaa')).toBe(false)
    // SHA-256 repositories: prefixes up to 64 characters.
    const sha256 = `${'ab'.repeat(31)}cd`
    expect(matchesCommit(`git+file:///srv/repo#${sha256}`, sha256.slice(0, 50))).toBe(true)
    expect(isShaPrefix('a'.repeat(65))).toBe(false)
    expect(matchesCommit('fake://a1', 'a1')).toBe(true)
  })
})

describe('status reader', () => {
  let w: World
  let main: QueueHandle
  let reader: StatusReader
  const failing = new Set<string>([`fake://${B}`])
  const erroring = new Set<string>([`fake://${C}`])
  const slow = new Set<string>([`fake://${D}`])
  const ids: Record<string, string> = {}
  /** Snapshots taken while requests were in flight. */
  const midway: { whyD?: Awaited<ReturnType<StatusReader['why']>>; whyE?: Awaited<ReturnType<StatusReader['why']>>; summary?: unknown } = {}

  const ingest = async (sha: string): Promise<string> => {
    w.sc.commit('main', sha)
    const { id } = await w.run(main.ingest())
    ids[sha] = id
    return id
  }

  beforeAll(async () => {
    w = await world({
      builder: {
        outcome: (uri) => (failing.has(uri) ? 'failed' : erroring.has(uri) ? 'error' : 'passed'),
        durationMs: (uri) => (slow.has(uri) ? 600_000 : 0),
      },
    })
    reader = createStatusReader(w.storage)
    main = await w.run(w.sp.queue('main', { ref: 'main', maxAttempts: 1 }))
    for (const sha of [A, B, C]) await w.run(main.waitFor(await ingest(sha)))
    // D builds for a long while; E waits for the slot and is superseded by F.
    await ingest(D)
    await driveUntil(w.clock, () => w.builder.running() === 1, { stepMs: 10 })
    await ingest(E)
    await ingest(F)
    await w.run(main.waitFor(ids[E] as string, 'superseded'))
    midway.whyD = await w.run(reader.why('main', D))
    midway.whyE = await w.run(reader.why('main', E))
    midway.summary = await w.run(reader.queue('main'))
    await w.run(main.cancel(ids[D] as string))
    await w.run(main.waitFor(ids[F] as string))
    // A second queue whose two heads share a 7-character prefix.
    const amb = await w.run(w.sp.queue('amb', { ref: 'amb' }))
    for (const sha of ['abcdef1' + '0'.repeat(33), 'abcdef1' + '1'.repeat(33)]) {
      w.sc.commit('amb', sha)
      await w.run(amb.waitFor((await w.run(amb.ingest())).id))
    }
    await w.run(w.sp.events.flush())
  })

  it('explains a green commit that is the last green', async () => {
    const why = await w.run(reader.why('main', F))
    expect(why).toMatchObject({ queue: 'main', uri: `fake://${F}`, sha: F, status: 'green', isLastGreen: true, supersededBy: null })
    expect(why.request).toMatchObject({ id: 'request/main/6', verdict: 'green' })
    expect(why.facts).toEqual([expect.objectContaining({ project: '', degree: 0, requestId: 'request/main/6' })])
    expect(why.summary).toBe(
      'fffffff is green: request/main/6 built it (incremental since aaaaaaa) and the build passed; it is the last green.',
    )
  })

  it('explains a green commit that is no longer the last green, by full URI', async () => {
    const why = await w.run(reader.why('main', `fake://${A}`))
    expect(why).toMatchObject({ status: 'green', isLastGreen: false, lastGreen: { requestId: 'request/main/6', sha: F } })
    expect(why.summary).toBe(
      'aaaaaaa is green: request/main/1 built it (full) and the build passed; last green is fffffff (request/main/6).',
    )
  })

  it('explains a red commit', async () => {
    const why = await w.run(reader.why('main', B))
    expect(why).toMatchObject({ status: 'red', isLastGreen: false })
    expect(why.facts).toEqual([expect.objectContaining({ degree: 1 })])
    expect(why.summary).toBe(
      'bbbbbbb is red: request/main/2 built it (incremental since aaaaaaa) and the build failed; last green is fffffff (request/main/6).',
    )
  })

  it('explains an indeterminate commit, which has no fact and is not green', async () => {
    const why = await w.run(reader.why('main', C))
    expect(why).toMatchObject({ status: 'indeterminate', facts: [] })
    expect(why.summary).toMatch(
      /^ccccccc is indeterminate: request\/main\/3 could not establish whether it is green \(gave up after 1 attempt/,
    )
    expect(why.summary).toMatch(/so it does not count as green; last green is fffffff \(request\/main\/6\)\.$/)
  })

  it('explained a commit in flight while it was building', () => {
    expect(midway.whyD).toMatchObject({ status: 'in-flight', request: { id: 'request/main/4', step: 'processing.building' } })
    expect(midway.whyD?.summary).toBe(
      'ddddddd is still in flight (processing.building) as request/main/4; last green is aaaaaaa (request/main/1).',
    )
  })

  it('explains a superseded commit, naming the request that superseded it', async () => {
    const why = await w.run(reader.why('main', E))
    expect(why).toMatchObject({ status: 'superseded', supersededBy: { id: 'request/main/6', uri: `fake://${F}` } })
    expect(why.summary).toBe('eeeeeee was superseded by request/main/6 before it was built; last green is fffffff (request/main/6).')
    expect(midway.whyE?.status).toBe('superseded')
  })

  it('explains a cancelled commit', async () => {
    const why = await w.run(reader.why('main', D))
    expect(why).toMatchObject({ status: 'cancelled', facts: [], request: { state: 'cancelled' } })
    expect(why.summary).toBe(
      'ddddddd was cancelled as request/main/4 before a verdict, so nothing is known about it; last green is fffffff (request/main/6).',
    )
  })

  it('explains a commit the queue never ingested', async () => {
    const sha = '0123456789abcdef0123456789abcdef01234567'
    const why = await w.run(reader.why('main', sha))
    expect(why).toMatchObject({ status: 'unknown', uri: null, sha, request: null, facts: [], isLastGreen: false })
    expect(why.summary).toBe('0123456 was never ingested by queue main; last green is fffffff (request/main/6).')
    const byUri = await w.run(reader.why('main', 'fake://zzz'))
    expect(byUri).toMatchObject({ status: 'unknown', uri: 'fake://zzz', sha: 'zzz' })
  })

  it('resolves a sha prefix of 7 characters, and refuses an ambiguous one', async () => {
    const why = await w.run(reader.why('main', 'bbbbbbb'))
    expect(why).toMatchObject({ uri: `fake://${B}`, status: 'red' })
    expect((await w.run(reader.why('main', 'BBBBBBBBBB'))).uri).toBe(`fake://${B}`)
    await expect(w.run(reader.why('amb', 'abcdef1'))).rejects.toThrow(/ambiguous in queue amb: it matches/)
    await expect(w.run(reader.why('amb', 'abcdef1'))).rejects.toBeInstanceOf(InvalidInputError)
    expect((await w.run(reader.why('amb', 'abcdef11'))).uri).toBe(`fake://abcdef1${'1'.repeat(33)}`)
    // Shorter than 7: only an exact sha matches.
    expect((await w.run(reader.why('main', 'bbbbbb'))).status).toBe('unknown')
  })

  it('refuses bad input with typed errors', async () => {
    await expect(w.run(reader.why('nope', A))).rejects.toBeInstanceOf(NotFoundError)
    await expect(w.run(reader.why('main', ''))).rejects.toBeInstanceOf(InvalidInputError)
    await expect(w.run(reader.why('main', 'a b'))).rejects.toBeInstanceOf(InvalidInputError)
    await expect(w.run(reader.queue('nope'))).rejects.toThrow('queue nope does not exist')
    await expect(w.run(reader.queue('bad name'))).rejects.toBeInstanceOf(InvalidInputError)
    await expect(w.run(reader.request('request/main/99'))).rejects.toThrow('request request/main/99 does not exist')
    await expect(w.run(reader.request('nope'))).rejects.toBeInstanceOf(InvalidInputError)
    await expect(w.run(reader.history('main', { limit: 0 }))).rejects.toBeInstanceOf(InvalidInputError)
    await expect(w.run(reader.history('nope'))).rejects.toBeInstanceOf(NotFoundError)
  })

  it('summarized the queue while requests were in flight', () => {
    expect(midway.summary).toMatchObject({
      name: 'main',
      config: { ref: 'main', maxAttempts: 1, maxConcurrent: 1 },
      lastGreen: { uri: `fake://${A}`, sha: A, requestId: 'request/main/1' },
      inFlight: [
        { id: 'request/main/4', n: 4, uri: `fake://${D}`, state: 'processing', step: 'processing.building' },
        { id: 'request/main/6', n: 6, uri: `fake://${F}`, state: 'accepted', step: 'accepted' },
      ],
      counts: { total: 6, inFlight: 2, green: 1, red: 1, indeterminate: 1, superseded: 1, cancelled: 0 },
    })
  })

  it('summarizes every queue with last green, nothing in flight and counts', async () => {
    const queues = await w.run(reader.queues())
    expect(queues.map((q) => q.name)).toEqual(['amb', 'main'])
    expect(queues[1]).toMatchObject({
      lastGreen: { uri: `fake://${F}`, sha: F, requestId: 'request/main/6' },
      inFlight: [],
      counts: { total: 6, inFlight: 0, green: 2, red: 1, indeterminate: 1, superseded: 1, cancelled: 1 },
    })
    expect(await w.run(reader.lastGreen('main'))).toEqual(queues[1]?.lastGreen)
    // A fresh reader (no cache) counts the same.
    expect((await w.run(createStatusReader(w.storage).queue('main'))).counts).toEqual(queues[1]?.counts)
  })

  it('pages the history newest first, recorded requests only', async () => {
    const first = await w.run(reader.history('main', { limit: 2 }))
    expect(first.items.map((r) => r.id)).toEqual(['request/main/6', 'request/main/3'])
    expect(first.nextCursor).toBeDefined()
    const second = await w.run(reader.history('main', { limit: 2, cursor: first.nextCursor as string }))
    expect(second.items.map((r) => [r.id, r.verdict])).toEqual([
      ['request/main/2', 'red'],
      ['request/main/1', 'green'],
    ])
    const rest = second.nextCursor === undefined ? [] : (await w.run(reader.history('main', { cursor: second.nextCursor }))).items
    expect(rest).toEqual([])
  })

  it('lists requests by state and order, and reads one request', async () => {
    const ended = await w.run(reader.requests('main', { states: ['superseded', 'cancelled'], order: 'asc' }))
    expect(ended.items.map((r) => [r.id, r.state])).toEqual([
      ['request/main/4', 'cancelled'],
      ['request/main/5', 'superseded'],
    ])
    const all = await w.run(reader.requests('main'))
    expect(all.items.map((r) => r.n)).toEqual([6, 5, 4, 3, 2, 1])
    expect(await w.run(reader.request('request/main/5'))).toMatchObject({ state: 'superseded', supersededBy: 'request/main/6' })
  })

  it('reads event rows from an id', async () => {
    const rows = await w.run(reader.events({ from: 3, limit: 4 }))
    expect(rows.map((r) => (r.kind === 'event' ? r.id : -1))).toEqual([3, 4, 5, 6])
    expect(rows[0]).toMatchObject({ kind: 'event', nodeId: 'local', payload: { queue: 'main' } })
  })

  it('with a running runtime, takes last green and requests in flight from the live queues', async () => {
    const live = createLiveStatusReader(w.sp, w.storage)
    const [fromLive] = (await w.run(live.queues())).filter((q) => q.name === 'main')
    expect(fromLive).toEqual((await w.run(reader.queues())).find((q) => q.name === 'main'))
    // A runtime whose pointer is ahead of storage wins (as right after a verdict, before the queue row is written).
    const ahead = {
      queues: () => [
        {
          ...main,
          name: 'main',
          lastGreen: () => ({ uri: 'fake://next', requestId: 'request/main/7', at: 1 }),
          inFlight: () => [{ id: 'request/main/7', n: 7, uri: 'fake://next', state: 'superseding' }],
        } as unknown as QueueHandle,
      ],
    }
    const summary = await w.run(createStatusReader(w.storage, { runtime: ahead }).queue('main'))
    expect(summary.lastGreen).toEqual({ uri: 'fake://next', sha: 'next', requestId: 'request/main/7', at: 1 })
    expect(summary.inFlight).toEqual([{ id: 'request/main/7', n: 7, uri: 'fake://next', state: 'superseding', step: null }])
  })

  it('sees a green request as last green before the queue row records it', async () => {
    // Storage alone: a queue row lagging behind its newest green request.
    const record = await w.storage.queues.get('main')
    const stale = { ...record, lastGreen: { uri: `fake://${A}`, requestId: 'request/main/1', at: 5 } }
    await w.storage.queues.update({ ...stale, version: record.version + 1 }, record.version, record.version + 1)
    expect(await w.run(createStatusReader(w.storage).lastGreen('main'))).toMatchObject({ requestId: 'request/main/6', sha: F })
  })
})

describe('why on a git queue', () => {
  it('refuses what cannot name a git commit (InvalidInputError), and looks up shas, prefixes and URIs', async () => {
    const storage = createMemoryStorage()
    await storage.commit([{ op: 'queue.create', record: sampleQueue('git') }])
    const reader = createStatusReader(storage)
    for (const bad of ['zzz', 'abc', 'abcdef', 'main', 'v1.0.0', 'g123456'])
      await expect(reader.why('git', bad)).rejects.toThrow(/is not a commit of queue git: give a sha or a sha prefix of at least 7 hex/)
    await expect(reader.why('git', 'zzz')).rejects.toBeInstanceOf(InvalidInputError)
    expect(await reader.why('git', 'ABCDEF1')).toMatchObject({ status: 'unknown', sha: 'abcdef1' })
    expect(await reader.why('git', 'a'.repeat(64))).toMatchObject({ status: 'unknown' })
    expect(await reader.why('git', 'git+file:///srv/repo#zzz')).toMatchObject({ status: 'unknown', sha: 'zzz' })
  })
})

describe('status reader at scale', () => {
  it('summarizes a queue with 200 000 ended requests (no spread of every request number)', async () => {
    const storage = createMemoryStorage()
    await storage.commit([{ op: 'queue.create', record: sampleQueue('big') }])
    const total = 200_000
    for (let start = 1; start <= total; start += 10_000) {
      const ops: WriteOp[] = []
      for (let n = start; n < start + 10_000; n++)
        ops.push({ op: 'request.create', record: sampleRequest('big', n, { state: 'cancelled' }) })
      await storage.commit(ops)
    }
    const summary = await createStatusReader(storage).queue('big')
    expect(summary.counts.cancelled).toBe(total)
  }, 60_000)
})
