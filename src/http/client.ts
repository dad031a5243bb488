/**
 * The HTTP client: the {@link StatusReader} read model over a Stovepipe server, so the CLI
 * reads `--url` and `--db` the same way, plus ingest and {@link followEvents} (the
 * `/events` stream, resumed after a dropped connection from the last id received).
 *
 * Error responses become the typed errors the server had (`NotFoundError`,
 * `InvalidInputError`, …; others an `HttpError` with status and code); a server that
 * cannot be reached is an `UnavailableError`.
 *
 * @module
 */
import type { LogEntry } from '../actors/event-log.js'
import type { IngestResult } from '../runtime/queue-host.js'
import type { RequestView } from '../runtime/views.js'
import { InvalidInputError, NotFoundError, UnavailableError } from '../storage/errors.js'
import type { EventRow, Page } from '../storage/types.js'
import type {
  EventsOptions,
  Explanation,
  LastGreenInfo,
  PageOptions,
  QueueSummary,
  RequestsOptions,
  StatusReader,
} from '../status/types.js'
import { fromResponse } from './errors.js'
import { SseParser, type SseEntryData } from './sse.js'

/** Options of {@link createHttpClient}. */
export interface HttpClientOptions {
  /** The server's base URL, e.g. `http://127.0.0.1:8080`. */
  url: string
  /** Sent as `Authorization: Bearer <token>` (needed for POSTs when the server has one). */
  token?: string
  /** Gives up on a request after this long (default 30 000 ms; not applied to event streams). */
  timeoutMs?: number
  /** The fetch to use (default the global one). */
  fetch?: typeof fetch
}

/** Options of {@link followEvents}. */
export interface FollowEventsOptions {
  /** The server's base URL. */
  url: string
  /** First logical id (inclusive); only new events when omitted. */
  from?: number
  token?: string
  /**
   * Reconnect after a dropped connection, resuming after the last id received (default
   * true). The first connection must succeed: a server that cannot be reached then rejects.
   */
  reconnect?: boolean
  /** Called before each reconnection attempt, with why the connection was lost and the wait. */
  onReconnect?: (error: unknown, delayMs: number) => void
  fetch?: typeof fetch
}

/** Receives each entry of the stream and its rendered text; a returned promise is awaited. */
export type EventListener = (entry: LogEntry, text: string) => void | Promise<void>

/** The read model over HTTP, plus what only a server can do. */
export interface HttpClient extends StatusReader {
  readonly url: string
  /** Ingests the queue's head (`POST /queues/:q/ingest`). */
  ingest(queue: string): Promise<IngestResult>
  /** `GET /healthz`. */
  health(): Promise<{ status: string; readOnly: boolean }>
  /** `GET /metrics` (Prometheus text). */
  metrics(): Promise<string>
  /** Follows `/events` until `signal` aborts (see {@link followEvents}). */
  followEvents(options: { from?: number }, onEntry: EventListener, signal?: AbortSignal): Promise<void>
}

function baseUrl(url: string): string {
  let parsed: URL
  try {
    parsed = new URL(url)
  } catch {
    throw new InvalidInputError(`not a URL: ${JSON.stringify(url)}`)
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
    throw new InvalidInputError(`the server URL must be http:// or https://, got ${JSON.stringify(url)}`)
  }
  return parsed.href.replace(/\/+$/, '')
}

const unreachable = (url: string, error: unknown): UnavailableError =>
  new UnavailableError(
    `cannot reach ${url}: ${error instanceof Error ? ((error.cause as Error | undefined)?.message ?? error.message) : String(error)}`,
    {
      cause: error,
    },
  )

const query = (params: Record<string, string | number | undefined>): string => {
  const search = new URLSearchParams()
  for (const [key, value] of Object.entries(params)) if (value !== undefined) search.set(key, String(value))
  const text = search.toString()
  return text === '' ? '' : `?${text}`
}

const q = (queue: string): string => encodeURIComponent(queue)

/** Creates a client of the Stovepipe server at `options.url`. */
export function createHttpClient(options: HttpClientOptions): HttpClient {
  const url = baseUrl(options.url)
  const doFetch = options.fetch ?? fetch
  const timeoutMs = options.timeoutMs ?? 30_000
  const auth: Record<string, string> = options.token === undefined ? {} : { Authorization: `Bearer ${options.token}` }

  const call = async (method: 'GET' | 'POST', path: string, accept = 'application/json'): Promise<Response> => {
    let res: Response
    try {
      res = await doFetch(url + path, {
        method,
        headers: { Accept: accept, ...auth, ...(method === 'POST' ? { 'Content-Type': 'application/json' } : {}) },
        ...(method === 'POST' ? { body: '{}' } : {}),
        signal: AbortSignal.timeout(timeoutMs),
      })
    } catch (error) {
      throw unreachable(url, error)
    }
    if (!res.ok) {
      const body: unknown = await res.json().catch((): unknown => null)
      throw fromResponse(res.status, body)
    }
    return res
  }
  const getJson = async <T>(path: string): Promise<T> => {
    const res = await call('GET', path)
    try {
      return (await res.json()) as T
    } catch (error) {
      throw new UnavailableError(`${url}${path} did not answer JSON: is the URL a Stovepipe server?`, { cause: error })
    }
  }

  const client: HttpClient = {
    url,
    queues: () => getJson<QueueSummary[]>('/queues'),
    queue: (name) => getJson<QueueSummary>(`/queues/${q(name)}`),
    lastGreen: async (name) => {
      try {
        return await getJson<LastGreenInfo>(`/queues/${q(name)}/last-green`)
      } catch (error) {
        if (!(error instanceof NotFoundError)) throw error
        // 404 means "no green yet" or "no such queue": ask which.
        await client.queue(name)
        return null
      }
    },
    history: (name, page: PageOptions = {}) =>
      getJson<Page<RequestView>>(`/queues/${q(name)}/history${query({ cursor: page.cursor, limit: page.limit })}`),
    requests: (name, page: RequestsOptions = {}) =>
      getJson<Page<RequestView>>(
        `/queues/${q(name)}/requests${query({ cursor: page.cursor, limit: page.limit, states: page.states?.join(','), order: page.order })}`,
      ),
    request: (id) => getJson<RequestView>(`/requests/${encodeURIComponent(id)}`),
    events: (page: EventsOptions = {}) =>
      getJson<EventRow[]>(`/events.json${query({ from: page.from, limit: page.limit, node: page.nodeId })}`),
    nodes: () => getJson<string[]>('/nodes'),
    why: (queue, commit) => getJson<Explanation>(`/queues/${q(queue)}/commits/${encodeURIComponent(commit)}`),
    ingest: async (queue) => (await (await call('POST', `/queues/${q(queue)}/ingest`)).json()) as IngestResult,
    health: () => getJson<{ status: string; readOnly: boolean }>('/healthz'),
    metrics: async () => (await call('GET', '/metrics', 'text/plain')).text(),
    followEvents: (followOptions, onEntry, signal) =>
      followEvents(
        {
          url,
          ...followOptions,
          ...(options.token === undefined ? {} : { token: options.token }),
          ...(options.fetch === undefined ? {} : { fetch: options.fetch }),
        },
        onEntry,
        signal,
      ),
  }
  return client
}

const sleep = (ms: number, signal: AbortSignal | undefined): Promise<void> =>
  new Promise((resolve) => {
    const timer = setTimeout(done, ms)
    function done(): void {
      clearTimeout(timer)
      signal?.removeEventListener('abort', done)
      resolve()
    }
    signal?.addEventListener('abort', done, { once: true })
  })

/** Carries an error the listener threw out of the stream loop, so it is not taken for a dropped connection. */
class ListenerFailure extends Error {
  constructor(override readonly cause: unknown) {
    super('listener failed')
  }
}

/** Splits a message's data back into the entry and its rendered text. */
function entryOf(data: string): { entry: LogEntry; text: string } {
  const parsed = JSON.parse(data) as SseEntryData
  const { text, ...entry } = parsed
  return { entry, text }
}

/** The `from` of an `event: position` message; undefined when it holds none. */
function positionOf(data: string): number | undefined {
  const from = (JSON.parse(data) as { from?: unknown }).from
  return typeof from === 'number' && Number.isSafeInteger(from) && from >= 0 ? from : undefined
}

/**
 * Follows a server's `/events` stream: calls `onEntry` for each transition, gap and
 * (unreadable) lag range in id order, until `signal` aborts (then resolves). A dropped
 * connection is reopened after a short backoff from the id after the last one received
 * (without `from`, from where the server said the stream started), so nothing is missed or
 * repeated; an error response (4xx, 5xx) rejects.
 */
export async function followEvents(options: FollowEventsOptions, onEntry: EventListener, signal?: AbortSignal): Promise<void> {
  const url = baseUrl(options.url)
  const doFetch = options.fetch ?? fetch
  const reconnect = options.reconnect ?? true
  if (options.from !== undefined && (!Number.isSafeInteger(options.from) || options.from < 0)) {
    throw new InvalidInputError(`from must be a non-negative integer, got ${String(options.from)}`)
  }
  const aborted = (): boolean => signal?.aborted === true
  let next = options.from
  let failures = 0
  let connected = false
  const retry = async (error: unknown): Promise<void> => {
    const delayMs = Math.min(10_000, 250 * 2 ** failures++)
    options.onReconnect?.(error, delayMs)
    await sleep(delayMs, signal)
  }
  while (!aborted()) {
    let res: Response
    try {
      res = await doFetch(`${url}/events${query({ from: next })}`, {
        headers: { Accept: 'text/event-stream', ...(options.token === undefined ? {} : { Authorization: `Bearer ${options.token}` }) },
        ...(signal === undefined ? {} : { signal }),
      })
    } catch (error) {
      if (aborted()) return
      if (!reconnect || !connected) throw unreachable(url, error)
      await retry(error)
      continue
    }
    if (!res.ok) {
      const body: unknown = await res.json().catch((): unknown => null)
      const error = fromResponse(res.status, body)
      // Once connected, a server restarting (503) or a proxy in front of it (502, 504) is
      // waited out like a dropped connection; the first connection, and a 4xx, reject.
      if (connected && reconnect && res.status >= 502 && res.status <= 504) {
        await retry(error)
        continue
      }
      throw error
    }
    if (!(res.headers.get('content-type') ?? '').startsWith('text/event-stream')) {
      await res.body?.cancel().catch(() => undefined)
      throw new UnavailableError(`${url}/events is not an event stream: is the URL a Stovepipe server?`)
    }
    connected = true
    let lost: unknown = new UnavailableError('the server ended the event stream')
    const parser = new SseParser()
    const decoder = new TextDecoder()
    try {
      if (res.body === null) throw new UnavailableError('the event stream has no body')
      for await (const chunk of res.body) {
        for (const message of parser.push(decoder.decode(chunk as Uint8Array, { stream: true }))) {
          // Where a stream without `from` starts: resume from there if it drops before an entry.
          if (message.event === 'position') {
            next ??= positionOf(message.data)
            continue
          }
          if (message.event !== 'message' && message.event !== 'gap') continue
          const { entry, text } = entryOf(message.data)
          next = (entry.kind === 'event' ? entry.id : entry.toId) + 1
          failures = 0
          try {
            await onEntry(entry, text)
          } catch (error) {
            throw new ListenerFailure(error)
          }
        }
      }
    } catch (error) {
      if (error instanceof ListenerFailure) throw error.cause
      if (aborted()) return
      if (error instanceof SyntaxError) throw new UnavailableError(`the event stream sent data that is not JSON: ${error.message}`)
      if (!reconnect) throw unreachable(url, error)
      lost = error
    }
    if (aborted()) return
    if (!reconnect) return
    await retry(lost)
  }
}
