/**
 * Server-sent events: the `/events` stream (server side) and a parser for it (client side).
 *
 * The stream: each event-log row is one SSE message whose `id:` is its logical id, so a
 * client resumes with `Last-Event-ID` (or `?from=`) and gets the rest with no duplicate
 * and no hole. Transitions are unnamed messages (`onmessage`); persisted gap sentinels are
 * `event: gap` messages. Data is the row as JSON plus `text`, its rendered line. When the
 * feed says this client fell behind (a lag notice), the skipped rows are read back from
 * storage and sent in order; only if that read fails is the range sent as `event: gap`
 * with `kind: 'lag'`. A comment line every `keepAliveMs` keeps proxies from timing out.
 *
 * A stream asked for no `from` starts where the feed is now, and says so first with an
 * `event: position` message (data `{ "from": N }`, and `id: N-1` when N > 0): a client that
 * loses its connection before the first entry resumes from N instead of live only.
 *
 * @module
 */
import type { ServerResponse } from 'node:http'
import type { Logger } from 'pino'
import type { LogEntry, Subscription } from '../actors/event-log.js'
import { renderEntry } from '../actors/event-log.js'
import { lastIdOf, type EventFeed } from '../status/feed.js'

/** One parsed server-sent event. */
export interface SseMessage {
  /** `message` when the stream named none. */
  event: string
  data: string
  /** The last `id:` seen (SSE's "last event ID"), if any. */
  id: string | undefined
}

/** What a message's data holds: the row (or lag notice) plus its rendered text. */
export type SseEntryData = LogEntry & { text: string }

const firstIdOf = (entry: LogEntry): number => (entry.kind === 'event' ? entry.id : entry.fromId)

/** The SSE text of one entry. */
export function formatSse(entry: LogEntry, text: string = renderEntry(entry)): string {
  const data = JSON.stringify({ ...entry, text })
  const name = entry.kind === 'event' ? '' : 'event: gap\n'
  return `${name}id: ${lastIdOf(entry)}\ndata: ${data}\n\n`
}

/** Options of {@link streamEvents}. */
export interface StreamEventsOptions {
  feed: EventFeed
  /** First logical id to send (inclusive); live only when undefined. */
  from: number | undefined
  keepAliveMs: number
  logger: Logger
  /** Called once when the stream ends, however it ends. */
  onClose?: () => void
}

/** A running event stream. */
export interface EventStream {
  /** Ends the response (the server is closing). */
  close(): void
}

/** Streams the feed to `res` as server-sent events until the client goes away or {@link EventStream.close}. */
export function streamEvents(res: ServerResponse, options: StreamEventsOptions): EventStream {
  const { feed, logger } = options
  let closed = false
  let next = options.from
  let subscription: Subscription | undefined
  const liveOnly = next === undefined

  res.writeHead(200, {
    'Content-Type': 'text/event-stream; charset=utf-8',
    'Cache-Control': 'no-store',
    Connection: 'keep-alive',
    'X-Accel-Buffering': 'no',
    'X-Content-Type-Options': 'nosniff',
  })
  res.write(`retry: 2000\n: stovepipe events${next === undefined ? '' : ` from ${next}`}\n\n`)

  /** While the client is not reading (the socket's buffer is full): resolves once it drains or closes. */
  let draining: Promise<void> | undefined
  const write = (chunk: string): Promise<void> => {
    if (closed || res.writableEnded) return Promise.resolve()
    if (res.write(chunk)) return draining ?? Promise.resolve()
    // One pair of listeners however many writes wait (a stalled client would otherwise gather
    // a pair per keep-alive).
    draining ??= new Promise((resolve) => {
      const done = (): void => {
        res.off('drain', done)
        res.off('close', done)
        draining = undefined
        resolve()
      }
      res.on('drain', done)
      res.on('close', done)
    })
    return draining
  }

  const send = async (entry: LogEntry): Promise<void> => {
    if (next !== undefined && lastIdOf(entry) < next) return
    next = lastIdOf(entry) + 1
    await write(formatSse(entry))
  }

  /** Reads the rows a lag notice says were skipped and sends them; a range it cannot read goes out as a gap. */
  const fillIn = async (lag: Extract<LogEntry, { kind: 'lag' }>): Promise<void> => {
    let cursor = Math.max(lag.fromId, next ?? lag.fromId)
    if (feed.read !== undefined) {
      try {
        while (cursor <= lag.toId && !closed) {
          const rows = await feed.read({ nodeId: lag.nodeId, from: cursor, limit: 500 })
          const wanted = rows.filter((row) => lastIdOf(row) >= cursor && firstIdOf(row) <= lag.toId)
          if (wanted.length === 0) break
          for (const row of wanted) {
            await send(row)
            cursor = lastIdOf(row) + 1
          }
        }
      } catch (error) {
        logger.warn({ err: error }, 'could not read back the events a slow client missed')
      }
    }
    if (cursor <= lag.toId && !closed) await send({ ...lag, fromId: cursor })
  }

  const keepAlive = setInterval(() => {
    // A client that is not reading needs no keep-alive (its connection is busy, not idle).
    if (draining === undefined) void write(': keep-alive\n\n')
  }, options.keepAliveMs)
  keepAlive.unref()

  const cleanup = (): void => {
    if (closed) return
    closed = true
    clearInterval(keepAlive)
    subscription?.unsubscribe()
    options.onClose?.()
  }
  // The response closes when the client goes away (or the stream ends).
  res.on('close', cleanup)

  const subscribe = (): void => {
    if (closed) return
    try {
      subscription = feed.subscribe(
        async (entry) => {
          if (closed) return
          if (entry.kind === 'lag') await fillIn(entry)
          else await send(entry)
        },
        next === undefined ? {} : { from: next },
      )
      subscription.live.catch((error: unknown) => {
        logger.error({ err: error }, 'event stream failed; closing it')
        res.end()
      })
    } catch (error) {
      logger.error({ err: error }, 'could not subscribe to the event feed')
      res.end()
    }
  }

  if (liveOnly && feed.position !== undefined) {
    // Start where the feed is now, and say where: the subscription resumes from there.
    Promise.resolve()
      .then(() => (feed.position as () => number | Promise<number>)())
      .then(async (from) => {
        next = from
        await write(`event: position\n${from > 0 ? `id: ${from - 1}\n` : ''}data: ${JSON.stringify({ from })}\n\n`)
        subscribe()
      })
      .catch((error: unknown) => {
        logger.error({ err: error }, 'could not read where the event feed is; closing the stream')
        res.end()
      })
  } else subscribe()

  return {
    close: () => {
      cleanup()
      res.end()
    },
  }
}

/** An incremental parser of a `text/event-stream` body. */
export class SseParser {
  private buffer = ''
  private data: string[] = []
  private event = ''
  /** The stream's last event ID so far. */
  lastEventId: string | undefined
  /** The reconnection delay the server asked for, if any (ms). */
  retry: number | undefined

  /** Feeds decoded text; returns the messages it completed. */
  push(text: string): SseMessage[] {
    this.buffer += text
    const out: SseMessage[] = []
    const terminator = /\r\n|\r|\n/g
    let start = 0
    for (let match = terminator.exec(this.buffer); match !== null; match = terminator.exec(this.buffer)) {
      // A lone \r at the end may be the first half of \r\n: wait for more.
      if (match[0] === '\r' && match.index === this.buffer.length - 1) break
      this.line(this.buffer.slice(start, match.index), out)
      start = match.index + match[0].length
    }
    this.buffer = this.buffer.slice(start)
    return out
  }

  private line(line: string, out: SseMessage[]): void {
    if (line === '') {
      if (this.data.length > 0)
        out.push({ event: this.event === '' ? 'message' : this.event, data: this.data.join('\n'), id: this.lastEventId })
      this.data = []
      this.event = ''
      return
    }
    if (line.startsWith(':')) return
    const colon = line.indexOf(':')
    const field = colon < 0 ? line : line.slice(0, colon)
    let value = colon < 0 ? '' : line.slice(colon + 1)
    if (value.startsWith(' ')) value = value.slice(1)
    switch (field) {
      case 'data':
        this.data.push(value)
        break
      case 'event':
        this.event = value
        break
      case 'id':
        if (!value.includes('\u0000')) this.lastEventId = value
        break
      case 'retry':
        if (/^[0-9]+$/.test(value)) this.retry = Number(value)
        break
    }
  }
}
