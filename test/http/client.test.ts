/**
 * The HTTP client against a real server: it reads the same as the storage reader, turns
 * error responses back into typed errors, ingests with the token, and follows `/events`
 * across a dropped connection with no duplicate and no hole.
 */
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { LogEntry } from '../../src/actors/event-log.js'
import { createHttpClient, createHttpServer, followEvents, HttpError, type ListeningServer } from '../../src/http/index.js'
import type { QueueHandle } from '../../src/index.js'
import { InvalidInputError, NotFoundError, UnavailableError } from '../../src/storage/errors.js'
import { createStatusReader, type StatusReader } from '../../src/status/index.js'
import { startRuntime, type Live } from './helpers.js'

const A = 'a'.repeat(40)
const B = 'b'.repeat(40)
const TOKEN = 'token-1'
const lastId = (entry: LogEntry): number => (entry.kind === 'event' ? entry.id : entry.toId)

describe('HTTP client', () => {
  let live: Live
  let main: QueueHandle
  let server: ListeningServer
  let reader: StatusReader

  beforeAll(async () => {
    live = await startRuntime({ builder: { outcome: (uri) => (uri === `fake://${B}` ? 'failed' : 'passed') } })
    main = await live.sp.queue('main', { ref: 'main' })
    await live.sp.queue('empty', { ref: 'empty' })
    await live.push(main, A)
    await live.push(main, B)
    reader = createStatusReader(live.storage)
    server = await createHttpServer({ reader, sp: live.sp, token: TOKEN }).listen({ port: 0 })
  })

  afterAll(async () => {
    await server.close()
    await live.stop()
  })

  it('reads exactly what the storage reader reads', async () => {
    const client = createHttpClient({ url: `${server.url}/` })
    expect(await client.queues()).toEqual(await reader.queues())
    expect(await client.queue('main')).toEqual(await reader.queue('main'))
    expect(await client.lastGreen('main')).toEqual(await reader.lastGreen('main'))
    expect(await client.lastGreen('empty')).toBeNull()
    expect(await client.history('main', { limit: 1 })).toEqual(await reader.history('main', { limit: 1 }))
    const page = await client.history('main', { limit: 1 })
    expect(await client.history('main', { limit: 1, cursor: page.nextCursor as string })).toEqual(
      await reader.history('main', { limit: 1, cursor: page.nextCursor as string }),
    )
    expect(await client.requests('main', { states: ['recorded'], order: 'asc' })).toEqual(
      await reader.requests('main', { states: ['recorded'], order: 'asc' }),
    )
    expect(await client.request('request/main/2')).toEqual(await reader.request('request/main/2'))
    expect(await client.events({ from: 2, limit: 3 })).toEqual(await reader.events({ from: 2, limit: 3 }))
    expect(await client.events({ nodeId: 'local' })).toEqual(await reader.events({ nodeId: 'local' }))
    expect(await client.nodes()).toEqual(['local'])
    for (const commit of [A, 'bbbbbbb', `fake://${A}`, '1'.repeat(40)]) {
      expect(await client.why('main', commit)).toEqual(await reader.why('main', commit))
    }
    expect(await client.health()).toEqual({ status: 'ok', readOnly: false })
    expect(await client.metrics()).toContain('stovepipe_verdicts_total')
  })

  it('turns error responses back into typed errors', async () => {
    const client = createHttpClient({ url: server.url })
    await expect(client.queue('nope')).rejects.toBeInstanceOf(NotFoundError)
    await expect(client.queue('nope')).rejects.toThrow('queue nope does not exist')
    await expect(client.lastGreen('nope')).rejects.toBeInstanceOf(NotFoundError)
    await expect(client.request('garbage')).rejects.toBeInstanceOf(InvalidInputError)
    await expect(client.why('amb', 'x')).rejects.toBeInstanceOf(NotFoundError)
    const denied = await client.ingest('main').catch((error: unknown) => error)
    expect(denied).toBeInstanceOf(HttpError)
    expect(denied).toMatchObject({ status: 401, code: 'UNAUTHORIZED' })
    await expect(createHttpClient({ url: 'http://127.0.0.1:1' }).queues()).rejects.toBeInstanceOf(UnavailableError)
    expect(() => createHttpClient({ url: 'not a url' })).toThrow(InvalidInputError)
    expect(() => createHttpClient({ url: 'ftp://x' })).toThrow(InvalidInputError)
  })

  it('ingests with the token', async () => {
    const client = createHttpClient({ url: server.url, token: TOKEN })
    live.sc.commit('main', 'c'.repeat(40))
    const result = await client.ingest('main')
    expect(result).toEqual({ id: 'request/main/3', uri: `fake://${'c'.repeat(40)}`, deduplicated: false })
    await main.waitFor(result.id)
    await live.sp.events.flush()
  })

  it('follows events from an id and stops when aborted', async () => {
    const rows = await live.sp.events.read({ limit: 10_000 })
    const seen: { entry: LogEntry; text: string }[] = []
    const controller = new AbortController()
    await followEvents(
      { url: server.url, from: 1 },
      (entry, text) => {
        seen.push({ entry, text })
        if (lastId(entry) === rows.length - 1) controller.abort()
      },
      controller.signal,
    )
    expect(seen.map((s) => lastId(s.entry))).toEqual(rows.slice(1).map(lastId))
    expect(seen[0]?.entry).toEqual(rows[1])
    expect(seen[0]?.text).toBe(live.sp.events.render(rows[1] as LogEntry))
  })

  it('rejects with the listener error and with error responses', async () => {
    const boom = new Error('listener broke')
    await expect(
      followEvents({ url: server.url, from: 0 }, () => {
        throw boom
      }),
    ).rejects.toBe(boom)
    const bare = await createHttpServer({ reader }).listen({ port: 0 })
    try {
      await expect(followEvents({ url: bare.url }, () => undefined)).rejects.toBeInstanceOf(UnavailableError)
    } finally {
      await bare.close()
    }
    await expect(followEvents({ url: server.url, from: -1 }, () => undefined)).rejects.toBeInstanceOf(InvalidInputError)
  })

  it('without from, resumes from where the stream started when it drops before its first event', async () => {
    const first = await createHttpServer({ reader, sp: live.sp }).listen({ port: 0 })
    const port = first.port
    const start = (await live.sp.events.read({ limit: 10_000 })).length
    const ids: number[] = []
    const controller = new AbortController()
    let resolvePositioned: () => void = () => undefined
    const positioned = new Promise<void>((resolve) => {
      resolvePositioned = resolve
    })
    // Tells when the first response's body has said where the stream starts.
    const watching: typeof fetch = async (input, init) => {
      const res = await fetch(input, init)
      if (res.body === null) return res
      const [mine, theirs] = res.body.tee()
      void (async () => {
        let text = ''
        for await (const chunk of mine) {
          text += new TextDecoder().decode(chunk as Uint8Array)
          if (text.includes('event: position')) resolvePositioned()
        }
      })().catch(() => undefined)
      return new Response(theirs, { status: res.status, headers: res.headers })
    }
    const following = followEvents(
      { url: first.url, fetch: watching },
      (entry) => {
        ids.push(lastId(entry))
      },
      controller.signal,
    )
    await positioned
    await first.close()
    // Events happen while the follower is disconnected, before it ever received one.
    await live.push(main, 'e'.repeat(40))
    const total = (await live.sp.events.read({ limit: 10_000 })).length
    expect(total).toBeGreaterThan(start)
    const second = await createHttpServer({ reader, sp: live.sp }).listen({ port })
    try {
      const deadline = Date.now() + 10_000
      while (ids.length < total - start && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20))
      expect(ids).toEqual(Array.from({ length: total - start }, (_, i) => start + i))
    } finally {
      controller.abort()
      await following
      await second.close()
    }
  })

  it('tells a URL that is not a Stovepipe server (UnavailableError), and one that cannot be reached for follow', async () => {
    const other = createServer((req, res) => {
      if (req.url === '/queues') res.writeHead(200, { 'Content-Type': 'text/html' }).end('<html>hello</html>')
      else res.writeHead(req.url === '/events' ? 200 : 502, { 'Content-Type': 'text/html' }).end('<html>bad gateway</html>')
    })
    await new Promise<void>((done) => other.listen(0, '127.0.0.1', done))
    const otherUrl = `http://127.0.0.1:${(other.address() as AddressInfo).port}`
    try {
      const client = createHttpClient({ url: otherUrl })
      await expect(client.queues()).rejects.toThrow(/did not answer JSON: is the URL a Stovepipe server/)
      await expect(client.queue('main')).rejects.toThrow(/HTTP 502 without a Stovepipe error body/)
      await expect(client.queue('main')).rejects.toBeInstanceOf(UnavailableError)
      await expect(followEvents({ url: otherUrl }, () => undefined)).rejects.toThrow(/is not an event stream/)
    } finally {
      await new Promise((done) => other.close(done))
    }
    // Reconnecting is for a connection that was made: a first one that fails rejects.
    await expect(followEvents({ url: 'http://127.0.0.1:1' }, () => undefined)).rejects.toBeInstanceOf(UnavailableError)
  })

  it('once connected, waits out a proxy or a restarting server (502, 503, 504) as a dropped connection', async () => {
    let calls = 0
    const row = {
      kind: 'event',
      nodeId: 'local',
      seq: 5,
      id: 5,
      at: 1,
      payload: { queue: 'main', requestId: 'request/main/1', from: 'new', to: 'accepted', event: 'INIT' },
    }
    const flaky = createServer((req, res) => {
      calls++
      if (calls === 1) {
        res.writeHead(200, { 'Content-Type': 'text/event-stream' })
        res.end('event: position\nid: 4\ndata: {"from":5}\n\n') // then the server goes away
      } else if (calls === 2) res.writeHead(502, { 'Content-Type': 'text/html' }).end('<html>502 Bad Gateway</html>')
      else if (calls === 3)
        res.writeHead(503, { 'Content-Type': 'application/json' }).end('{"error":{"code":"STOPPED","message":"stopping"}}')
      else {
        res.writeHead(200, { 'Content-Type': 'text/event-stream' })
        res.write(`id: 5\ndata: ${JSON.stringify(row)}\n\n`)
      }
    })
    await new Promise<void>((done) => flaky.listen(0, '127.0.0.1', done))
    const controller = new AbortController()
    const got: number[] = []
    const waits: string[] = []
    try {
      await followEvents(
        {
          url: `http://127.0.0.1:${(flaky.address() as AddressInfo).port}`,
          onReconnect: (error) => waits.push(error instanceof Error ? error.message : String(error)),
        },
        (entry) => {
          got.push(lastId(entry))
          controller.abort()
        },
        controller.signal,
      )
      expect(got).toEqual([5])
      expect(waits).toHaveLength(3)
      expect(waits[1]).toMatch(/HTTP 502 without a Stovepipe error body/)
    } finally {
      controller.abort()
      flaky.closeAllConnections()
      await new Promise((done) => flaky.close(done))
    }
  })

  it('resumes after a dropped connection with no duplicate and no hole', async () => {
    const first = await createHttpServer({ reader, sp: live.sp }).listen({ port: 0 })
    const port = first.port
    const ids: number[] = []
    const controller = new AbortController()
    let dropped = false
    let resolveDropped: () => void = () => undefined
    const droppedOnce = new Promise<void>((resolve) => {
      resolveDropped = resolve
    })
    const client = createHttpClient({ url: first.url })
    const following = client.followEvents(
      { from: 0 },
      (entry) => {
        ids.push(lastId(entry))
        if (!dropped && ids.length === 3) {
          dropped = true
          resolveDropped()
        }
      },
      controller.signal,
    )
    await droppedOnce
    await first.close()
    // Events happen while the follower is disconnected.
    await live.push(main, 'd'.repeat(40))
    const total = (await live.sp.events.read({ limit: 10_000 })).length
    const second = await createHttpServer({ reader, sp: live.sp }).listen({ port })
    try {
      const deadline = Date.now() + 10_000
      while (ids.length < total && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20))
      controller.abort()
      await following
      expect(ids).toEqual(Array.from({ length: total }, (_, i) => i))
    } finally {
      controller.abort()
      await second.close()
    }
  })
})
