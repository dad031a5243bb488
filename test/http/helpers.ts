/**
 * Shared set-up of the HTTP tests: a runtime on the real clock (the server does real I/O)
 * with the fake source control and builder, and a reader of raw server-sent events.
 */
import { request as httpRequest } from 'node:http'
import { createFakeBuilder, type FakeBuilderOptions } from '../../src/build/fake.js'
import { createStovepipe, type QueueHandle, type RequestView, type Stovepipe } from '../../src/index.js'
import { createFakeSourceControl, type FakeSourceControl } from '../../src/sourcecontrol/fake.js'
import { createMemoryStorage } from '../../src/storage/memory/index.js'
import type { Storage } from '../../src/storage/index.js'
import { SseParser, type SseMessage } from '../../src/http/index.js'

/** A runtime on the real clock. */
export interface Live {
  storage: Storage
  sc: FakeSourceControl
  sp: Stovepipe
  builder: ReturnType<typeof createFakeBuilder>
  /** Commits `sha` on the queue's ref, ingests it and waits for its verdict. */
  push(queue: QueueHandle, sha: string): Promise<RequestView>
  stop(): Promise<void>
}

export async function startRuntime(
  options: { builder?: FakeBuilderOptions; storage?: Storage; subscriberBuffer?: number } = {},
): Promise<Live> {
  const storage = options.storage ?? createMemoryStorage()
  const sc = createFakeSourceControl()
  const builder = createFakeBuilder(options.builder ?? {})
  const sp = await createStovepipe({
    storage,
    sourceControl: sc,
    builder,
    retry: { baseDelayMs: 10, maxDelayMs: 50 },
    ...(options.subscriberBuffer === undefined ? {} : { eventLog: { subscriberBuffer: options.subscriberBuffer } }),
  })
  return {
    storage,
    sc,
    sp,
    builder,
    async push(queue, sha) {
      sc.commit(queue.config().ref, sha)
      const { id } = await queue.ingest()
      const view = await queue.waitFor(id)
      await sp.events.flush()
      return view
    },
    async stop() {
      await sp.stop()
      await storage.close()
    },
  }
}

/**
 * Reads `/events` (raw SSE) until `until` holds for the messages so far, then disconnects.
 * Rejects after `timeoutMs` with what it got.
 */
export async function readSse(
  url: string,
  until: (messages: SseMessage[], comments: string[]) => boolean,
  { headers = {}, timeoutMs = 5000, onOpen }: { headers?: Record<string, string>; timeoutMs?: number; onOpen?: () => Promise<void> } = {},
): Promise<{ messages: SseMessage[]; comments: string[]; status: number; contentType: string | null }> {
  const controller = new AbortController()
  const timer = setTimeout(() => {
    controller.abort()
  }, timeoutMs)
  const messages: SseMessage[] = []
  const comments: string[] = []
  try {
    const res = await fetch(url, { headers: { Accept: 'text/event-stream', ...headers }, signal: controller.signal })
    const contentType = res.headers.get('content-type')
    if (!res.ok || res.body === null) return { messages, comments, status: res.status, contentType }
    const parser = new SseParser()
    const decoder = new TextDecoder()
    await onOpen?.()
    try {
      for await (const chunk of res.body) {
        const text = decoder.decode(chunk as Uint8Array, { stream: true })
        for (const line of text.split('\n')) if (line.startsWith(':')) comments.push(line)
        messages.push(...parser.push(text))
        if (until(messages, comments)) break
      }
    } catch (error) {
      if (!controller.signal.aborted) throw error
      throw new Error(`SSE read timed out with ${messages.length} messages: ${JSON.stringify(messages.map((m) => m.id))}`)
    }
    return { messages, comments, status: res.status, contentType }
  } finally {
    clearTimeout(timer)
    controller.abort()
  }
}

/** A raw HTTP request (for headers fetch will not let us set, like Host). */
export function rawRequest(
  url: string,
  options: { method?: string; headers?: Record<string, string>; body?: string | Buffer } = {},
): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { method: options.method ?? 'GET', headers: options.headers ?? {} }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (chunk: Buffer) => chunks.push(chunk))
      res.on('end', () => {
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') })
      })
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end(options.body)
  })
}
