/**
 * The webhook hook against a real HTTP server on 127.0.0.1 (real clock: the thing under
 * test is real I/O): signed JSON bodies, retries after 5xx with a stable idempotency key,
 * and signature verification for receivers.
 */
import { createServer, type IncomingMessage, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { afterEach, describe, expect, it } from 'vitest'
import { systemClock } from '../../src/actors/clock.js'
import { createWriter } from '../../src/actors/writer.js'
import {
  createOutboxDispatcher,
  createWebhookHook,
  signWebhookBody,
  verifyWebhookSignature,
  type HookContext,
  type VerdictPayload,
  type WebhookBody,
} from '../../src/hooks/index.js'
import { InvalidInputError, UnavailableError } from '../../src/index.js'
import { createMemoryStorage } from '../../src/storage/memory/index.js'

const SECRET = 'correct horse battery staple'

interface Received {
  body: string
  headers: IncomingMessage['headers']
  status: number
}

/** A server answering the first `refuse` requests with 500 and the rest with 204. */
async function receiver(refuse: number): Promise<{ url: string; received: Received[]; server: Server }> {
  const received: Received[] = []
  const server = createServer((request, response) => {
    const chunks: Buffer[] = []
    request.on('data', (chunk: Buffer) => chunks.push(chunk))
    request.on('end', () => {
      const status = received.length < refuse ? 500 : 204
      received.push({ body: Buffer.concat(chunks).toString('utf8'), headers: request.headers, status })
      response.statusCode = status
      response.end(status === 500 ? 'try again later' : undefined)
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  servers.push(server)
  const { port } = server.address() as AddressInfo
  return { url: `http://127.0.0.1:${port}/hooks/stovepipe?token=x`, received, server }
}

const servers: Server[] = []
afterEach(async () => {
  for (const server of servers.splice(0)) {
    server.closeAllConnections()
    await new Promise((resolve) => server.close(resolve))
  }
})

const payload: VerdictPayload = {
  queue: 'main',
  requestId: 'request/main/7',
  uri: 'git+file:///srv/repo#0123',
  verdict: 'green',
  degree: 0,
  reason: null,
  at: 1_700_000_000_000,
}
const context = (key = 'main:request/main/7:verdict'): HookContext => ({
  signal: new AbortController().signal,
  idempotencyKey: key,
  attempt: 1,
})

async function waitFor(condition: () => boolean, timeoutMs = 10_000): Promise<void> {
  const started = Date.now()
  while (!condition()) {
    if (Date.now() - started > timeoutMs) throw new Error('condition not met in time')
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
}

describe('webhook hook', () => {
  it('is retried after two 500s, then delivered: signed, with the same idempotency key each time', async () => {
    const { url, received } = await receiver(2)
    const storage = createMemoryStorage()
    const writer = createWriter({ storage, clock: systemClock })
    const hook = createWebhookHook({ url, secret: SECRET, name: 'ci-bot' })
    const dispatcher = createOutboxDispatcher({
      storage,
      writer,
      hooks: [hook],
      clock: systemClock,
      retry: { baseDelayMs: 20, maxDelayMs: 50 },
    })
    const at = Date.now()
    await storage.outbox.put({
      queue: 'main',
      requestId: 'request/main/7',
      kind: 'verdict',
      hook: 'ci-bot',
      payload,
      createdAt: at,
      attempts: 0,
      nextAttemptAt: at,
      deliveredAt: null,
      lastError: null,
    })
    dispatcher.start()
    await waitFor(() => dispatcher.stats().delivered === 1)
    await dispatcher.stop()
    await writer.stop()

    expect(received.map((r) => r.status)).toEqual([500, 500, 204])
    for (const request of received) {
      expect(request.headers['content-type']).toBe('application/json')
      expect(request.headers['x-stovepipe-kind']).toBe('verdict')
      expect(request.headers['x-stovepipe-idempotency-key']).toBe('main:request/main/7:verdict')
      expect(verifyWebhookSignature(request.body, request.headers['x-stovepipe-signature'] as string, SECRET)).toBe(true)
      expect(JSON.parse(request.body)).toEqual({
        kind: 'verdict',
        idempotencyKey: 'main:request/main/7:verdict',
        payload,
      } satisfies WebhookBody)
    }
    const stored = await storage.outbox.get({ queue: 'main', requestId: 'request/main/7', kind: 'verdict', hook: 'ci-bot' })
    expect(stored.attempts).toBe(3)
    expect(stored.deliveredAt).not.toBeNull()
    expect(stored.lastError).toBeNull()
  })

  it('throws UnavailableError on a non-2xx answer, naming the status and not the secret', async () => {
    const { url } = await receiver(1)
    const hook = createWebhookHook({ url, secret: SECRET })
    const error = await hook.onVerdict?.(payload, context()).then(
      () => undefined,
      (e: unknown) => e,
    )
    expect(error).toBeInstanceOf(UnavailableError)
    expect(String(error)).toMatch(/answered 500: try again later/)
    expect(String(error)).not.toContain(SECRET)
    expect(String(error)).not.toContain('token=x')
    await expect(hook.onLastGreen?.({ ...payload, previous: null }, context('main:request/main/7:lastGreen'))).resolves.toBeUndefined()
  })

  it('throws UnavailableError when nothing listens, and when the answer is slower than timeoutMs', async () => {
    const { url, server } = await receiver(0)
    server.close()
    server.closeAllConnections()
    await new Promise((resolve) => setTimeout(resolve, 20))
    await expect(createWebhookHook({ url, secret: SECRET }).onVerdict?.(payload, context())).rejects.toBeInstanceOf(UnavailableError)

    const slow = createServer(() => undefined) // never answers
    await new Promise<void>((resolve) => slow.listen(0, '127.0.0.1', resolve))
    servers.push(slow)
    const slowUrl = `http://127.0.0.1:${(slow.address() as AddressInfo).port}/`
    const started = Date.now()
    await expect(createWebhookHook({ url: slowUrl, secret: SECRET, timeoutMs: 200 }).onVerdict?.(payload, context())).rejects.toThrow(
      /no answer within 200 ms/,
    )
    expect(Date.now() - started).toBeLessThan(5_000)
  })

  it('stops a request when its signal aborts', async () => {
    const slow = createServer(() => undefined)
    await new Promise<void>((resolve) => slow.listen(0, '127.0.0.1', resolve))
    servers.push(slow)
    const controller = new AbortController()
    const call = createWebhookHook({ url: `http://127.0.0.1:${(slow.address() as AddressInfo).port}/`, secret: SECRET }).onVerdict?.(
      payload,
      { signal: controller.signal, idempotencyKey: 'k', attempt: 1 },
    )
    setTimeout(() => {
      controller.abort(new Error('stopping'))
    }, 50)
    await expect(call).rejects.toThrow()
  })

  it('verifyWebhookSignature accepts only the right signature of the exact body', () => {
    const body = JSON.stringify({ kind: 'verdict', idempotencyKey: 'k', payload })
    const good = signWebhookBody(body, SECRET)
    expect(good).toMatch(/^sha256=[0-9a-f]{64}$/)
    expect(verifyWebhookSignature(body, good, SECRET)).toBe(true)
    expect(verifyWebhookSignature(Buffer.from(body), good.toUpperCase().replace('SHA256=', 'sha256='), SECRET)).toBe(true)
    expect(verifyWebhookSignature(body, good, 'another secret')).toBe(false)
    expect(verifyWebhookSignature(`${body} `, good, SECRET)).toBe(false)
    const flipped = `${good.slice(0, -1)}${good.endsWith('0') ? '1' : '0'}`
    expect(verifyWebhookSignature(body, flipped, SECRET)).toBe(false)
    expect(verifyWebhookSignature(body, 'sha256=abc', SECRET)).toBe(false)
    expect(verifyWebhookSignature(body, good.replace('sha256=', 'sha1='), SECRET)).toBe(false)
    expect(verifyWebhookSignature(body, undefined, SECRET)).toBe(false)
    expect(verifyWebhookSignature(body, good, '')).toBe(false)
  })

  it('refuses bad options with InvalidInputError', () => {
    expect(() => createWebhookHook({ url: 'not a url', secret: SECRET })).toThrow(InvalidInputError)
    expect(() => createWebhookHook({ url: 'ftp://example.com/', secret: SECRET })).toThrow(/http: or https:/)
    expect(() => createWebhookHook({ url: 'http://127.0.0.1/', secret: '' })).toThrow(/secret/)
    expect(() => createWebhookHook({ url: 'http://127.0.0.1/', secret: SECRET, name: 'a b' })).toThrow(/name/)
    expect(() => createWebhookHook({ url: 'http://127.0.0.1/', secret: SECRET, timeoutMs: 0 })).toThrow(/timeoutMs/)
    // fetch refuses URLs with credentials (every delivery would fail), and the password would reach logs.
    const withCredentials = (() => {
      try {
        createWebhookHook({ url: 'http://alice:hunter2@127.0.0.1/', secret: SECRET })
        return undefined
      } catch (error) {
        return error
      }
    })()
    expect(withCredentials).toBeInstanceOf(InvalidInputError)
    expect((withCredentials as Error).message).not.toContain('hunter2')
    expect(createWebhookHook({ url: 'http://127.0.0.1/', secret: SECRET }).name).toBe('webhook')
  })
})
