/**
 * The HTTP API on a real server (port 0) over a runtime with the fake source control and
 * builder: every route's answers and error shapes, auth, limits, the event stream
 * (history then live, resume, gaps, lag filled in), metrics.
 */
import { EventEmitter } from 'node:events'
import type { ServerResponse } from 'node:http'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { silentLogger } from '../../src/actors/observability.js'
import { UnavailableError } from '../../src/storage/errors.js'
import { streamEvents } from '../../src/http/sse.js'
import type { LogEntry } from '../../src/actors/event-log.js'
import { createHttpServer, type ListeningServer } from '../../src/http/index.js'
import type { QueueHandle } from '../../src/index.js'
import { createMemoryStorage } from '../../src/storage/memory/index.js'
import { sampleQueue } from '../../src/testing/index.js'
import type { EventRow } from '../../src/storage/index.js'
import { createStatusReader, pollEvents, type EventFeed } from '../../src/status/index.js'
import { rawRequest, readSse, startRuntime, type Live } from './helpers.js'

const A = 'a'.repeat(40)
const B = 'b'.repeat(40)
const C = 'c'.repeat(40)
const TOKEN = 's3cret-token'

const get = async (url: string): Promise<{ status: number; body: unknown; headers: Headers }> => {
  const res = await fetch(url)
  const text = await res.text()
  return { status: res.status, body: text === '' ? undefined : (JSON.parse(text) as unknown), headers: res.headers }
}

const post = async (url: string, init: { token?: string; body?: string; headers?: Record<string, string> } = {}) => {
  const res = await fetch(url, {
    method: 'POST',
    headers: {
      ...(init.token === undefined ? {} : { Authorization: `Bearer ${init.token}` }),
      ...(init.body === undefined ? {} : { 'Content-Type': 'application/json' }),
      ...init.headers,
    },
    ...(init.body === undefined ? {} : { body: init.body }),
  })
  const body: unknown = await res.json()
  return { status: res.status, body, headers: res.headers }
}

const errorOf = (code: string, message?: string | RegExp): { error: { code: string; message: unknown } } => ({
  error: {
    code,
    message:
      message === undefined
        ? (expect.any(String) as unknown)
        : typeof message === 'string'
          ? message
          : (expect.stringMatching(message) as unknown),
  },
})

describe('HTTP API', () => {
  let live: Live
  let main: QueueHandle
  let server: ListeningServer
  let url: string

  beforeAll(async () => {
    live = await startRuntime({ builder: { outcome: (uri) => (uri.includes('b') ? 'failed' : 'passed') } })
    main = await live.sp.queue('main', { ref: 'main' })
    await live.sp.queue('empty', { ref: 'empty' })
    await live.push(main, A)
    await live.push(main, B)
    server = await createHttpServer({
      reader: createStatusReader(live.storage, { runtime: live.sp }),
      sp: live.sp,
      token: TOKEN,
      keepAliveMs: 100,
    }).listen({ port: 0 })
    url = server.url
  })

  afterAll(async () => {
    await server.close()
    await live.stop()
  })

  it('binds 127.0.0.1 and answers /healthz', async () => {
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/)
    expect(await get(`${url}/healthz`)).toMatchObject({ status: 200, body: { status: 'ok', readOnly: false } })
  })

  it('lists queues and shows one', async () => {
    const queues = await get(`${url}/queues`)
    expect(queues.status).toBe(200)
    expect(queues.headers.get('content-type')).toBe('application/json; charset=utf-8')
    expect((queues.body as { name: string }[]).map((q) => q.name)).toEqual(['empty', 'main'])
    expect(await get(`${url}/queues/main`)).toMatchObject({
      status: 200,
      body: { name: 'main', lastGreen: { sha: A, requestId: 'request/main/1' }, counts: { total: 2, green: 1, red: 1 } },
    })
    expect(await get(`${url}/queues/nope`)).toEqual({
      status: 404,
      body: errorOf('NOT_FOUND', 'queue nope does not exist'),
      headers: expect.anything() as Headers,
    })
    expect(await get(`${url}/queues/bad%20name`)).toMatchObject({ status: 400, body: errorOf('INVALID_INPUT') })
  })

  it('answers last green, and 404 when a queue has none', async () => {
    expect(await get(`${url}/queues/main/last-green`)).toMatchObject({
      status: 200,
      body: { uri: `fake://${A}`, sha: A, requestId: 'request/main/1', at: expect.any(Number) as number },
    })
    expect(await get(`${url}/queues/empty/last-green`)).toMatchObject({
      status: 404,
      body: errorOf('NOT_FOUND', 'queue empty has no green commit yet'),
    })
    expect(await get(`${url}/queues/nope/last-green`)).toMatchObject({
      status: 404,
      body: errorOf('NOT_FOUND', 'queue nope does not exist'),
    })
  })

  it('pages requests and history, with filters', async () => {
    const first = await get(`${url}/queues/main/requests?limit=1`)
    expect(first).toMatchObject({
      status: 200,
      body: { items: [{ id: 'request/main/2', verdict: 'red' }], nextCursor: expect.any(String) as string },
    })
    const cursor = (first.body as { nextCursor: string }).nextCursor
    expect(await get(`${url}/queues/main/requests?limit=1&cursor=${cursor}`)).toMatchObject({ body: { items: [{ id: 'request/main/1' }] } })
    expect(await get(`${url}/queues/main/requests?order=asc&states=recorded,cancelled`)).toMatchObject({
      body: { items: [{ id: 'request/main/1' }, { id: 'request/main/2' }] },
    })
    expect(await get(`${url}/queues/main/history`)).toMatchObject({ body: { items: [{ n: 2 }, { n: 1 }] } })
    for (const bad of ['limit=0', 'limit=1001', 'limit=abc', 'states=bogus', 'order=up', 'cursor=xyz']) {
      expect(await get(`${url}/queues/main/requests?${bad}`), bad).toMatchObject({ status: 400, body: errorOf('INVALID_INPUT') })
    }
    expect(await get(`${url}/queues/nope/history`)).toMatchObject({ status: 404, body: errorOf('NOT_FOUND') })
  })

  it('shows a request by id, encoded or as raw path segments', async () => {
    const encoded = await get(`${url}/requests/${encodeURIComponent('request/main/2')}`)
    expect(encoded).toMatchObject({ status: 200, body: { id: 'request/main/2', queue: 'main', state: 'recorded', verdict: 'red' } })
    expect((await get(`${url}/requests/request/main/2`)).body).toEqual(encoded.body)
    expect(await get(`${url}/requests/request/main/99`)).toMatchObject({
      status: 404,
      body: errorOf('NOT_FOUND', 'request request/main/99 does not exist'),
    })
    expect(await get(`${url}/requests/garbage`)).toMatchObject({ status: 400, body: errorOf('INVALID_INPUT') })
    expect(await get(`${url}/requests/%E0%A4%A`)).toMatchObject({ status: 400, body: errorOf('INVALID_INPUT', /malformed/) })
  })

  it('explains a commit by sha, prefix or URI', async () => {
    expect(await get(`${url}/queues/main/commits/${B}`)).toMatchObject({
      status: 200,
      body: { status: 'red', uri: `fake://${B}`, summary: expect.stringMatching(/^bbbbbbb is red: request\/main\/2 built it/) as string },
    })
    expect(await get(`${url}/queues/main/commits/aaaaaaa`)).toMatchObject({ body: { status: 'green', isLastGreen: true } })
    expect(await get(`${url}/queues/main/commits/${encodeURIComponent(`fake://${A}`)}`)).toMatchObject({ body: { status: 'green' } })
    expect(await get(`${url}/queues/main/commits/fake://${A}`)).toMatchObject({ body: { status: 'green' } })
    expect(await get(`${url}/queues/main/commits/${'9'.repeat(40)}`)).toMatchObject({ body: { status: 'unknown', uri: null } })
    expect(await get(`${url}/queues/nope/commits/${A}`)).toMatchObject({ status: 404, body: errorOf('NOT_FOUND') })
  })

  it('ingests with the token, and refuses without it', async () => {
    live.sc.commit('main', C)
    const denied = await post(`${url}/queues/main/ingest`)
    expect(denied).toMatchObject({ status: 401, body: errorOf('UNAUTHORIZED') })
    expect(denied.headers.get('www-authenticate')).toBe('Bearer')
    expect(await post(`${url}/queues/main/ingest`, { token: 'wrong' })).toMatchObject({ status: 401 })
    expect(await post(`${url}/queues/main/ingest`, { token: TOKEN.slice(0, -1) })).toMatchObject({ status: 401 })
    const ok = await post(`${url}/queues/main/ingest`, { token: TOKEN })
    expect(ok).toEqual({
      status: 200,
      body: { id: 'request/main/3', uri: `fake://${C}`, deduplicated: false },
      headers: expect.anything() as Headers,
    })
    expect(await post(`${url}/queues/main/ingest`, { token: TOKEN, body: '{}' })).toMatchObject({
      status: 200,
      body: { id: 'request/main/3', deduplicated: true },
    })
    await main.waitFor('request/main/3')
    await live.sp.events.flush()
  })

  it('refuses bad POSTs: unknown queue, bad JSON, a body that is not an object, 100 KiB, another origin', async () => {
    expect(await post(`${url}/queues/nope/ingest`, { token: TOKEN })).toMatchObject({ status: 404, body: errorOf('NOT_FOUND') })
    // A queue stored (by another process, say) but not run here is not opened by an ingest.
    await live.storage.commit([{ op: 'queue.create', record: sampleQueue('elsewhere', { config: { ref: 'main' } }) }])
    expect(await post(`${url}/queues/elsewhere/ingest`, { token: TOKEN })).toMatchObject({
      status: 404,
      body: errorOf('NOT_FOUND', /^queue elsewhere is not run by this server \(it runs main, empty\)$/),
    })
    expect(live.sp.queues().map((q) => q.name)).not.toContain('elsewhere')
    expect(await post(`${url}/queues/${'x'.repeat(200)}/ingest`, { token: TOKEN })).toMatchObject({ status: 400 })
    expect(await post(`${url}/queues/main/ingest`, { token: TOKEN, body: '{"oops":' })).toMatchObject({
      status: 400,
      body: errorOf('INVALID_INPUT', /not valid JSON/),
    })
    expect(await post(`${url}/queues/main/ingest`, { token: TOKEN, body: '[1]' })).toMatchObject({
      status: 400,
      body: errorOf('INVALID_INPUT'),
    })
    const big = JSON.stringify({ pad: 'x'.repeat(100 * 1024) })
    expect(await post(`${url}/queues/main/ingest`, { token: TOKEN, body: big })).toMatchObject({
      status: 413,
      body: errorOf('PAYLOAD_TOO_LARGE'),
    })
    // Chunked (no declared length): refused once the limit is passed.
    const chunked = await rawRequest(`${url}/queues/main/ingest`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${TOKEN}`, 'Transfer-Encoding': 'chunked' },
      body: big,
    })
    expect(chunked.status).toBe(413)
    expect(await post(`${url}/queues/main/ingest`, { token: TOKEN, headers: { Origin: 'http://evil.example' } })).toMatchObject({
      status: 403,
      body: errorOf('FORBIDDEN'),
    })
    // The server still answers afterwards.
    expect((await get(`${url}/healthz`)).status).toBe(200)
  })

  it('answers 404 for an unknown route and 405 for a wrong method', async () => {
    expect(await get(`${url}/nope`)).toMatchObject({ status: 404, body: errorOf('NOT_FOUND', /no such route/) })
    expect(await get(`${url}/queues/main/nope`)).toMatchObject({ status: 404 })
    const wrong = await fetch(`${url}/queues`, { method: 'DELETE' })
    expect(wrong.status).toBe(405)
    expect(wrong.headers.get('allow')).toBe('GET, HEAD')
    expect(await wrong.json()).toEqual(errorOf('METHOD_NOT_ALLOWED'))
    const getIngest = await get(`${url}/queues/main/ingest`)
    expect(getIngest).toMatchObject({ status: 405, body: errorOf('METHOD_NOT_ALLOWED') })
    expect(getIngest.headers.get('allow')).toBe('POST')
    // The event stream is not served to HEAD, and its 405 says so.
    const headEvents = await fetch(`${url}/events`, { method: 'HEAD' })
    expect(headEvents.status).toBe(405)
    expect(headEvents.headers.get('allow')).toBe('GET')
  })

  it('refuses to listen on a port in use with UnavailableError (not a raw EADDRINUSE)', async () => {
    const second = createHttpServer({ reader: createStatusReader(createMemoryStorage()) })
    const error = await second.listen({ port: Number(new URL(url).port) }).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(UnavailableError)
    expect((error as Error).message).toMatch(/is already in use/)
  })

  it('answers only loopback Host names while bound to loopback', async () => {
    const port = new URL(url).port
    expect((await rawRequest(`${url}/healthz`, { headers: { Host: `localhost:${port}` } })).status).toBe(200)
    const rebound = await rawRequest(`${url}/healthz`, { headers: { Host: `attacker.example:${port}` } })
    expect(rebound.status).toBe(403)
    expect(JSON.parse(rebound.body)).toEqual(errorOf('FORBIDDEN'))
  })

  it('serves Prometheus metrics with the runtime and HTTP series', async () => {
    const res = await fetch(`${url}/metrics`)
    expect(res.status).toBe(200)
    expect(res.headers.get('content-type')).toMatch(/^text\/plain/)
    const text = await res.text()
    expect(text).toMatch(/^stovepipe_ingests_total\{deduplicated="false"\} \d+$/m)
    expect(text).toContain('stovepipe_verdicts_total{queue="main",verdict="green"}')
    expect(text).toContain('stovepipe_event_log_events_total')
    expect(text).toMatch(/stovepipe_http_requests_total\{method="GET",route="\/queues\/:queue",status="200"\} \d+/)
  })

  it('streams event history then live events, with ids, and no duplicate', async () => {
    const before = await live.sp.events.read({ limit: 10_000 })
    const lastId = before.length - 1
    const D = 'd'.repeat(40)
    const got = await readSse(
      `${url}/events?from=0`,
      (messages) => messages.some((m) => m.data.includes(`"to":"recorded"`) && m.data.includes('request/main/4')),
      {
        onOpen: async () => {
          await live.push(main, D)
        },
      },
    )
    expect(got.status).toBe(200)
    expect(got.contentType).toBe('text/event-stream; charset=utf-8')
    const ids = got.messages.map((m) => Number(m.id))
    expect(ids).toEqual(ids.map((_, i) => i))
    expect(ids.length).toBeGreaterThan(lastId + 1)
    const first = JSON.parse(got.messages[0]?.data ?? '{}') as LogEntry & { text: string }
    expect(first).toMatchObject({ kind: 'event', id: 0, nodeId: 'local', payload: { queue: 'main', requestId: 'request/main/1' } })
    expect(first.text).toMatch(/^#0 .* request\/main\/1 new -> accepted/)
    expect(got.messages.every((m) => m.event === 'message')).toBe(true)
  })

  it('resumes after Last-Event-ID with the rest: no duplicate, no hole', async () => {
    const rows = await live.sp.events.read({ limit: 10_000 })
    const total = rows.length
    const resumeAfter = 4
    const got = await readSse(`${url}/events?from=0`, (messages) => messages.length >= total - resumeAfter - 1, {
      headers: { 'Last-Event-ID': String(resumeAfter) },
    })
    expect(got.messages.map((m) => Number(m.id))).toEqual(Array.from({ length: total - resumeAfter - 1 }, (_, i) => resumeAfter + 1 + i))
    // ?from= alone starts there; a bad id is refused before streaming.
    const fromTwo = await readSse(`${url}/events?from=2`, (messages) => messages.length >= 1)
    expect(fromTwo.messages[0]?.id).toBe('2')
    expect((await readSse(`${url}/events`, () => true, { headers: { 'Last-Event-ID': 'x' } })).status).toBe(400)
    expect((await readSse(`${url}/events?from=-1`, () => true)).status).toBe(400)
  })

  it('unsubscribes from the event log when a client goes away', async () => {
    await readSse(`${url}/events?from=0`, (messages) => messages.length >= 1)
    const deadline = Date.now() + 5000
    while (live.sp.events.stats().subscribers > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10))
    expect(live.sp.events.stats().subscribers).toBe(0)
    expect(await (await fetch(`${url}/metrics`)).text()).toMatch(/^stovepipe_http_event_streams 0$/m)
  })

  it('sends keep-alive comments on an idle stream', async () => {
    // Only the position it starts at (no entry: nothing happens).
    const got = await readSse(`${url}/events`, () => false, { timeoutMs: 400 }).catch((error: unknown) => error)
    expect(String(got)).toMatch(/timed out with 1 messages/)
    await live.sp.events.flush()
    const total = (await live.sp.events.read({ limit: 10_000 })).length
    const start = await readSse(`${url}/events`, (messages) => messages.length > 0)
    expect(start.messages).toEqual([{ event: 'position', data: JSON.stringify({ from: total }), id: String(total - 1) }])
    const idle = await readSse(`${url}/events`, (_, comments) => comments.some((c) => c.includes('keep-alive')), { timeoutMs: 1000 })
    const comments = idle.comments.map((c) => `${c}\n`)
    expect(comments).toContain(': keep-alive\n')
  })
})

describe('event stream edge cases', () => {
  it('delivers a persisted gap row as an event: gap message', async () => {
    const storage = createMemoryStorage()
    const at = 1_700_000_000_000
    await storage.events.append([
      {
        kind: 'event',
        nodeId: 'local',
        seq: 0,
        id: 0,
        at,
        payload: { queue: 'main', requestId: 'request/main/1', from: 'new', to: 'accepted', event: 'INIT' },
      },
      { kind: 'gap', nodeId: 'local', seq: 1, fromId: 1, toId: 3, at },
    ])
    const live = await startRuntime({ storage })
    const main = await live.sp.queue('main', { ref: 'main' })
    const server = await createHttpServer({ reader: createStatusReader(storage), sp: live.sp }).listen({ port: 0 })
    try {
      await live.push(main, 'a'.repeat(40))
      const got = await readSse(`${server.url}/events?from=0`, (messages) => messages.length >= 3)
      expect(got.messages[0]).toMatchObject({ event: 'message', id: '0' })
      expect(got.messages[1]).toMatchObject({ event: 'gap', id: '3' })
      expect(JSON.parse(got.messages[1]?.data ?? '{}')).toEqual({
        kind: 'gap',
        nodeId: 'local',
        seq: 1,
        fromId: 1,
        toId: 3,
        at,
        text: 'events between 1 and 3 were dropped',
      })
      expect(got.messages[2]).toMatchObject({ event: 'message', id: '4' })
    } finally {
      await server.close()
      await live.stop()
    }
  })

  it('fills in what a lag notice skipped from storage, or sends it as a gap when it cannot', async () => {
    const row = (id: number): EventRow => ({ kind: 'event', nodeId: 'n1', seq: id, id, at: id, payload: { n: id } })
    let readFails = false
    const feed: EventFeed = {
      subscribe: (listener) => {
        void (async () => {
          await listener(row(0))
          await listener({ kind: 'lag', nodeId: 'n1', fromId: 1, toId: 3 })
          await listener(row(4))
        })()
        return { live: Promise.resolve(), unsubscribe: () => undefined }
      },
      read: ({ from = 0, limit = 500 }) => {
        if (readFails) return Promise.reject(new Error('storage down'))
        return Promise.resolve(
          [1, 2, 3, 4, 5]
            .filter((id) => id >= from)
            .slice(0, limit)
            .map(row),
        )
      },
    }
    const server = await createHttpServer({ reader: createStatusReader(createMemoryStorage()), events: feed }).listen({ port: 0 })
    try {
      const filled = await readSse(`${server.url}/events`, (messages) => messages.length >= 5)
      expect(filled.messages.map((m) => [m.event, m.id])).toEqual([
        ['message', '0'],
        ['message', '1'],
        ['message', '2'],
        ['message', '3'],
        ['message', '4'],
      ])
      readFails = true
      const gapped = await readSse(`${server.url}/events`, (messages) => messages.length >= 3)
      expect(gapped.messages.map((m) => [m.event, m.id])).toEqual([
        ['message', '0'],
        ['gap', '3'],
        ['message', '4'],
      ])
      expect(JSON.parse(gapped.messages[1]?.data ?? '{}')).toMatchObject({
        kind: 'lag',
        fromId: 1,
        toId: 3,
        text: expect.stringMatching(/missed events between 1 and 3/) as string,
      })
    } finally {
      await server.close()
    }
  })

  it('serves a database read-only: ingest 503, events by polling storage', async () => {
    const live = await startRuntime()
    const main = await live.sp.queue('main', { ref: 'main' })
    await live.push(main, 'a'.repeat(40))
    const server = await createHttpServer({
      reader: createStatusReader(live.storage),
      events: pollEvents(live.storage, { intervalMs: 20 }),
    }).listen({ port: 0 })
    try {
      expect(await get(`${server.url}/healthz`)).toMatchObject({ body: { readOnly: true } })
      expect(await post(`${server.url}/queues/main/ingest`)).toMatchObject({ status: 503, body: errorOf('READ_ONLY') })
      const known = (await live.sp.events.read()).length
      const got = await readSse(`${server.url}/events?from=0`, (messages) => messages.length >= known + 2, {
        onOpen: async () => {
          await live.push(main, 'b'.repeat(40))
        },
      })
      expect(got.messages.map((m) => Number(m.id))).toEqual(Array.from({ length: got.messages.length }, (_, i) => i))
      // Without from: it starts after the last stored row, and says so.
      await live.sp.events.flush()
      const total = (await live.sp.events.read({ limit: 10_000 })).length
      const now = await readSse(`${server.url}/events`, (messages) => messages.length > 0)
      expect(now.messages[0]).toEqual({ event: 'position', data: JSON.stringify({ from: total }), id: String(total - 1) })
      expect((await fetch(`${server.url}/metrics`)).status).toBe(200)
    } finally {
      await server.close()
      await live.stop()
    }
  })

  it('answers 503 for /events without an event feed, and closes open streams on close()', async () => {
    const live = await startRuntime()
    const bare = await createHttpServer({ reader: createStatusReader(live.storage) }).listen({ port: 0 })
    expect(await get(`${bare.url}/events`)).toMatchObject({ status: 503, body: errorOf('UNAVAILABLE') })
    await bare.close()
    const server = await createHttpServer({ reader: createStatusReader(live.storage), sp: live.sp }).listen({ port: 0 })
    const res = await fetch(`${server.url}/events`)
    expect(res.status).toBe(200)
    const started = Date.now()
    await server.close()
    expect(Date.now() - started).toBeLessThan(2000)
    await live.stop()
  })
})

describe('SSE backpressure', () => {
  it('a stalled client holds one drain and one close listener, not a pair per keep-alive', async () => {
    // A response whose socket buffer is full: write() returns false and 'drain' never comes.
    const res = new EventEmitter() as EventEmitter & Partial<ServerResponse>
    Object.assign(res, { writableEnded: false, writeHead: () => res, write: () => false, end: () => res })
    const feed = { subscribe: () => ({ live: Promise.resolve(), unsubscribe: () => undefined }) }
    const stream = streamEvents(res as unknown as ServerResponse, { feed, from: undefined, keepAliveMs: 5, logger: silentLogger() })
    const baseline = res.listenerCount('close') // the stream's own close handler
    await new Promise((resolve) => setTimeout(resolve, 200))
    const listeners = { drain: res.listenerCount('drain'), close: res.listenerCount('close') - baseline }
    stream.close()
    expect(listeners).toEqual({ drain: 1, close: 1 })
  })
})
