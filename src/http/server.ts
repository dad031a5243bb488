/**
 * `createHttpServer`: the JSON API, the `/events` stream, `/metrics` and the status page
 * on `node:http`.
 *
 * - Binds `127.0.0.1` unless told otherwise. While bound to a loopback address it answers
 *   only requests whose `Host` is a loopback name (`localhost`, `127.x.y.z`, `[::1]`) or
 *   one of `allowedHosts`, so a web page cannot reach it through DNS rebinding.
 * - With `token`, every POST needs `Authorization: Bearer <token>` (compared in constant
 *   time); 401 otherwise. A POST from a browser page of another origin is refused (403).
 * - Bodies are JSON of at most `maxBodyBytes` (64 KiB): 413 beyond (a declared length is
 *   refused before reading; the connection is then closed), 400 for bad JSON.
 * - Errors are `{ error: { code, message } }`: InvalidInputError 400, NotFoundError 404,
 *   StoppedError and unavailable storage 503, anything unexpected 500 (and logged).
 *
 * @module
 */
import { createHash, timingSafeEqual } from 'node:crypto'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { Logger } from 'pino'
import { Registry } from 'prom-client'
import { counter, gauge, silentLogger } from '../actors/observability.js'
import type { IngestResult } from '../runtime/queue-host.js'
import { InvalidInputError, NotFoundError, UnavailableError } from '../storage/errors.js'
import { assertQueueName } from '../storage/validation.js'
import type { EventFeed } from '../status/feed.js'
import type { StatusReader } from '../status/types.js'
import { HttpError, toResponse } from './errors.js'
import { statusPage } from './page.js'
import { createRoutes, findRoute, type Reply, type RouteContext } from './routes.js'
import { streamEvents, type EventStream } from './sse.js'

/** The part of a runtime the server uses (a `Stovepipe` is one). */
export interface HttpRuntime {
  /** The queues this runtime runs: `POST /queues/:q/ingest` ingests only into one of them. */
  queues(): readonly { readonly name: string; ingest(): Promise<IngestResult> }[]
  readonly registry?: Registry
  readonly events?: EventFeed
}

/** Options of {@link createHttpServer}. */
export interface HttpServerOptions {
  /** The read model every GET answers from. */
  reader: StatusReader
  /** The running runtime; without it the server is read-only (ingest answers 503). */
  sp?: HttpRuntime
  /** What `/events` streams (default `sp.events`; see `pollEvents` for a database without a runtime). */
  events?: EventFeed
  /** The prom-client registry `/metrics` shows (default `sp.registry`, else a new one); HTTP metrics are added to it. */
  registry?: Registry
  /** When set, every POST needs `Authorization: Bearer <token>`. */
  token?: string
  logger?: Logger
  /** Comment lines on idle event streams, this often (default 15 000 ms). */
  keepAliveMs?: number
  /** Largest request body (default 65 536 bytes). */
  maxBodyBytes?: number
  /** More `Host` names to accept while bound to loopback (`*` accepts any). */
  allowedHosts?: readonly string[]
}

/** Where {@link HttpServer.listen} binds. */
export interface ListenOptions {
  /** Default `127.0.0.1`. */
  host?: string
  /** Default 8080; 0 picks a free port. */
  port?: number
}

/** A listening server. */
export interface ListeningServer {
  /** e.g. `http://127.0.0.1:8080`. */
  readonly url: string
  readonly port: number
  /** Ends event streams, closes every connection and stops listening. */
  close(): Promise<void>
}

/** The server, before and after it listens. */
export interface HttpServer {
  readonly server: Server
  /** The request handler, to mount on another server. */
  readonly handler: (req: IncomingMessage, res: ServerResponse) => void
  listen(options?: ListenOptions): Promise<ListeningServer>
}

/** Default largest request body. */
export const MAX_BODY_BYTES = 64 * 1024

const LOOPBACK_NAMES = new Set(['localhost', '::1', '[::1]'])
const isLoopbackName = (name: string): boolean =>
  LOOPBACK_NAMES.has(name.toLowerCase()) || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(name) || name.toLowerCase().endsWith('.localhost')

/** The hostname of a Host header (no port). */
function hostnameOf(host: string): string {
  if (host.startsWith('[')) return host.slice(0, host.indexOf(']') + 1)
  const colon = host.lastIndexOf(':')
  return colon < 0 ? host : host.slice(0, colon)
}

/** Whether a browser's Origin header names this server (`null` and unparsable origins do not). */
function sameOrigin(origin: string, host: string | undefined): boolean {
  try {
    return host !== undefined && new URL(origin).host === host
  } catch {
    return false
  }
}

const digest = (text: string): Buffer => createHash('sha256').update(text, 'utf8').digest()

/** Reads a body of at most `max` bytes; 413 beyond (refused before reading when the length is declared). */
function readBody(req: IncomingMessage, max: number): Promise<Buffer> {
  const tooLarge = (): HttpError =>
    new HttpError(413, 'PAYLOAD_TOO_LARGE', `the request body is larger than ${max} bytes`, { Connection: 'close' })
  const declared = req.headers['content-length']
  if (declared !== undefined && Number(declared) > max) return Promise.reject(tooLarge())
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    let size = 0
    const cleanup = (): void => {
      req.off('data', onData)
      req.off('end', onEnd)
      req.off('error', onError)
    }
    const onData = (chunk: Buffer): void => {
      size += chunk.length
      if (size > max) {
        cleanup()
        req.pause()
        reject(tooLarge())
        return
      }
      chunks.push(chunk)
    }
    const onEnd = (): void => {
      cleanup()
      resolve(Buffer.concat(chunks))
    }
    const onError = (error: Error): void => {
      cleanup()
      reject(error)
    }
    req.on('data', onData)
    req.on('end', onEnd)
    req.on('error', onError)
  })
}

function parseJson(body: Buffer): unknown {
  if (body.length === 0) return undefined
  try {
    return JSON.parse(body.toString('utf8')) as unknown
  } catch (error) {
    throw new InvalidInputError(`the request body is not valid JSON: ${error instanceof Error ? error.message : String(error)}`)
  }
}

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Readonly<Record<string, string>> = {}): void {
  const text = JSON.stringify(body)
  res.writeHead(status, {
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': Buffer.byteLength(text),
    'Cache-Control': 'no-store',
    'X-Content-Type-Options': 'nosniff',
    ...headers,
  })
  res.end(text)
}

/** Where `/events` starts: after `Last-Event-ID` (a reconnect), else at `?from=`, else live. */
function streamStart(req: IncomingMessage, query: URLSearchParams): number | undefined {
  const header = req.headers['last-event-id']
  const last = Array.isArray(header) ? header[0] : header
  if (last !== undefined && last.trim() !== '') {
    if (!/^[0-9]{1,16}$/.test(last.trim())) throw new InvalidInputError(`Last-Event-ID must be an event id, got ${JSON.stringify(last)}`)
    const id = Number(last.trim())
    if (!Number.isSafeInteger(id)) throw new InvalidInputError(`Last-Event-ID is too large`)
    return id + 1
  }
  const from = query.get('from')
  if (from === null || from === '') return undefined
  if (!/^[0-9]{1,16}$/.test(from)) throw new InvalidInputError(`from must be a non-negative integer, got ${JSON.stringify(from)}`)
  const value = Number(from)
  if (!Number.isSafeInteger(value)) throw new InvalidInputError(`from is too large`)
  return value
}

/** Creates the HTTP server (not listening yet: call `listen`). */
export function createHttpServer(options: HttpServerOptions): HttpServer {
  const { reader, sp } = options
  if (typeof reader !== 'object' || typeof reader.queues !== 'function') throw new InvalidInputError('createHttpServer needs a reader')
  const logger = (options.logger ?? silentLogger()).child({ component: 'http' })
  const registry = options.registry ?? sp?.registry ?? new Registry()
  const feed = options.events ?? sp?.events
  const keepAliveMs = options.keepAliveMs ?? 15_000
  const maxBody = options.maxBodyBytes ?? MAX_BODY_BYTES
  if (!Number.isSafeInteger(keepAliveMs) || keepAliveMs < 1) throw new InvalidInputError('keepAliveMs must be a positive integer')
  if (!Number.isSafeInteger(maxBody) || maxBody < 0) throw new InvalidInputError('maxBodyBytes must be a non-negative integer')
  if (options.token !== undefined && (typeof options.token !== 'string' || !/^\S+$/.test(options.token))) {
    throw new InvalidInputError('token must be a non-empty string without spaces')
  }
  const tokenDigest = options.token === undefined ? undefined : digest(options.token)
  const extraHosts = new Set((options.allowedHosts ?? []).map((h) => h.toLowerCase()))
  let loopbackOnly = false

  const metrics = {
    requests: counter(registry, 'stovepipe_http_requests_total', 'HTTP requests answered', ['method', 'route', 'status']),
    streams: gauge(registry, 'stovepipe_http_event_streams', 'Open /events streams', []),
  }

  const streams = new Set<EventStream>()
  const openStream = (ctx: RouteContext): void => {
    if (feed === undefined) throw new HttpError(503, 'UNAVAILABLE', 'this server has no event feed')
    const from = streamStart(ctx.req, ctx.query)
    metrics.streams.inc()
    const stream = streamEvents(ctx.res, {
      feed,
      from,
      keepAliveMs,
      logger,
      onClose: () => {
        streams.delete(stream)
        metrics.streams.dec()
      },
    })
    streams.add(stream)
  }

  const routes = createRoutes({
    reader,
    ingest:
      sp === undefined
        ? undefined
        : async (name) => {
            assertQueueName(name)
            const running = sp.queues()
            const queue = running.find((q) => q.name === name)
            if (queue === undefined) {
              // Never open a queue here: another process may run it (and this one has no config for it).
              const names = running.map((q) => q.name).join(', ')
              throw new NotFoundError(`queue ${name} is not run by this server${names === '' ? '' : ` (it runs ${names})`}`)
            }
            return queue.ingest()
          },
    registry,
    page: statusPage,
    events: openStream,
  })

  const checkHost = (req: IncomingMessage): void => {
    if (!loopbackOnly || extraHosts.has('*')) return
    const name = hostnameOf(req.headers.host ?? '').toLowerCase()
    if (isLoopbackName(name) || extraHosts.has(name)) return
    throw new HttpError(403, 'FORBIDDEN', `host ${JSON.stringify(name)} is not served here (the server is bound to loopback)`)
  }

  const checkPost = (req: IncomingMessage): void => {
    const origin = req.headers.origin
    if (origin !== undefined && !sameOrigin(origin, req.headers.host))
      throw new HttpError(403, 'FORBIDDEN', 'cross-origin POSTs are refused')
    if (tokenDigest === undefined) return
    const match = /^Bearer[ ]+(\S+)\s*$/i.exec(req.headers.authorization ?? '')
    const given = match?.[1]
    if (given === undefined || !timingSafeEqual(digest(given), tokenDigest)) {
      throw new HttpError(401, 'UNAUTHORIZED', 'this POST needs Authorization: Bearer <token>', { 'WWW-Authenticate': 'Bearer' })
    }
  }

  const reply = (res: ServerResponse, answer: Reply): void => {
    switch (answer.kind) {
      case 'handled':
        return
      case 'json':
        sendJson(res, answer.status ?? 200, answer.body)
        return
      case 'text':
        res.writeHead(answer.status ?? 200, {
          'Content-Type': answer.contentType,
          'Content-Length': Buffer.byteLength(answer.body),
          'Cache-Control': 'no-store',
          'X-Content-Type-Options': 'nosniff',
          ...answer.headers,
        })
        res.end(answer.body)
    }
  }

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const method = req.method ?? 'GET'
    let label = 'unmatched'
    try {
      const raw = req.url ?? '/'
      const q = raw.indexOf('?')
      const path = q < 0 ? raw : raw.slice(0, q)
      const query = new URLSearchParams(q < 0 ? '' : raw.slice(q + 1))
      checkHost(req)
      const found = findRoute(routes, method, path)
      if (found === undefined) throw new HttpError(404, 'NOT_FOUND', `no such route: ${method} ${path}`)
      if ('allow' in found) {
        throw new HttpError(405, 'METHOD_NOT_ALLOWED', `${method} is not allowed here; use ${found.allow.join(', ')}`, {
          Allow: found.allow.join(', '),
        })
      }
      label = found.route.path
      let body: unknown
      if (found.route.method === 'POST') {
        checkPost(req)
        body = parseJson(await readBody(req, maxBody))
      }
      reply(res, await found.route.handle({ req, res, params: found.params, query, body }))
    } catch (error) {
      const answer = toResponse(error)
      if (answer.expected) logger.debug({ err: error, method, url: req.url }, 'request refused')
      else logger.error({ err: error, method, url: req.url }, 'request failed')
      if (res.headersSent) res.end()
      else {
        sendJson(res, answer.status, answer.body, answer.headers)
        if (answer.status === 413) {
          // The rest of the body is not read; give the response a moment to leave, then drop the connection.
          res.on('finish', () => {
            setTimeout(() => req.socket.destroy(), 1000).unref()
          })
        }
      }
    } finally {
      metrics.requests.inc({ method, route: label, status: String(res.statusCode) })
    }
  }

  const handler = (req: IncomingMessage, res: ServerResponse): void => {
    handle(req, res).catch((error: unknown) => {
      logger.error({ err: error }, 'request handler failed')
      if (!res.headersSent) res.writeHead(500)
      res.end()
    })
  }

  const server = createServer(handler)

  const listen = async (listenOptions: ListenOptions = {}): Promise<ListeningServer> => {
    const host = listenOptions.host ?? '127.0.0.1'
    const port = listenOptions.port ?? 8080
    if (!Number.isSafeInteger(port) || port < 0 || port > 65_535) throw new InvalidInputError(`port must be 0 to 65535, got ${port}`)
    loopbackOnly = isLoopbackName(host)
    await new Promise<void>((resolve, reject) => {
      const onError = (error: NodeJS.ErrnoException): void => {
        // A port in use, or an address this host does not have: typed, with what to do.
        if (error.code === 'EADDRINUSE') reject(new UnavailableError(`${host}:${port} is already in use`, { cause: error }))
        else if (error.code === 'EADDRNOTAVAIL' || error.code === 'EACCES')
          reject(new InvalidInputError(`cannot listen on ${host}:${port} (${error.code})`, { cause: error }))
        else reject(error)
      }
      server.once('error', onError)
      server.listen(port, host, () => {
        server.off('error', onError)
        resolve()
      })
    })
    const address = server.address() as AddressInfo
    const shown = address.family === 'IPv6' || address.address.includes(':') ? `[${address.address}]` : address.address
    const url = `http://${shown}:${address.port}`
    logger.info({ url }, 'listening')
    let closing: Promise<void> | undefined
    return {
      url,
      port: address.port,
      close: () => {
        closing ??= new Promise<void>((resolve, reject) => {
          for (const stream of [...streams]) stream.close()
          server.close((error) => {
            if (error === undefined) resolve()
            else reject(error)
          })
          server.closeAllConnections()
        })
        return closing
      },
    }
  }

  return { server, handler, listen }
}
