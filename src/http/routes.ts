/**
 * The HTTP API's routes: a table of `METHOD /path` patterns and their handlers. Patterns
 * have `:name` segments (one path segment, URL-decoded) and a trailing `*` (the rest of the
 * path, URL-decoded as a whole, so `/requests/request/main/3` and
 * `/requests/request%2Fmain%2F3` name the same request).
 *
 * @module
 */
import { randomBytes } from 'node:crypto'
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Registry } from 'prom-client'
import type { IngestResult } from '../runtime/queue-host.js'
import { InvalidInputError, NotFoundError } from '../storage/errors.js'
import { REQUEST_STATES, type RequestState } from '../storage/types.js'
import type { StatusReader } from '../status/types.js'
import { HttpError } from './errors.js'

/** What a handler answers. */
export type Reply =
  | { kind: 'json'; status?: number; body: unknown }
  | { kind: 'text'; status?: number; body: string; contentType: string; headers?: Record<string, string> }
  /** The handler wrote the response itself (the event stream). */
  | { kind: 'handled' }

/** What a handler gets. */
export interface RouteContext {
  req: IncomingMessage
  res: ServerResponse
  params: Readonly<Record<string, string>>
  query: URLSearchParams
  /** The parsed JSON body of a POST (undefined when empty). */
  body: unknown
}

/** One route. */
export interface Route {
  method: 'GET' | 'POST'
  /** e.g. `/queues/:queue/commits/*`; also the route's label in metrics. */
  path: string
  handle(ctx: RouteContext): Promise<Reply>
}

/** What the routes need. */
export interface RouteDeps {
  reader: StatusReader
  /** Ingests a queue's head; undefined when the server is read-only. */
  ingest: ((queue: string) => Promise<IngestResult>) | undefined
  registry: Registry
  /** The status page, given a CSP nonce. */
  page(nonce: string): string
  /** Starts the event stream on the response (it writes the response itself). */
  events(ctx: RouteContext): void
}

const json = (body: unknown, status = 200): Reply => ({ kind: 'json', status, body })

/** An integer query parameter within bounds, or undefined when absent. */
export function intParam(query: URLSearchParams, name: string, min: number, max: number): number | undefined {
  const raw = query.get(name)
  if (raw === null || raw === '') return undefined
  if (!/^-?[0-9]{1,16}$/.test(raw))
    throw new InvalidInputError(`${name} must be an integer from ${min} to ${max}, got ${JSON.stringify(raw)}`)
  const value = Number(raw)
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new InvalidInputError(`${name} must be an integer from ${min} to ${max}, got ${raw}`)
  }
  return value
}

const pageOf = (query: URLSearchParams): { cursor?: string; limit?: number } => {
  const cursor = query.get('cursor')
  const limit = intParam(query, 'limit', 1, 1000)
  return { ...(cursor === null || cursor === '' ? {} : { cursor }), ...(limit === undefined ? {} : { limit }) }
}

function statesOf(query: URLSearchParams): RequestState[] | undefined {
  const raw = query.get('states') ?? query.get('state')
  if (raw === null || raw === '') return undefined
  const states = raw.split(',').map((s) => s.trim())
  for (const state of states) {
    if (!(REQUEST_STATES as readonly string[]).includes(state)) {
      throw new InvalidInputError(`states must be a comma-separated list of ${REQUEST_STATES.join(', ')}, got ${JSON.stringify(state)}`)
    }
  }
  return states as RequestState[]
}

function orderOf(query: URLSearchParams): 'asc' | 'desc' | undefined {
  const raw = query.get('order')
  if (raw === null || raw === '') return undefined
  if (raw !== 'asc' && raw !== 'desc') throw new InvalidInputError(`order must be asc or desc, got ${JSON.stringify(raw)}`)
  return raw
}

const param = (ctx: RouteContext, name: string): string => {
  const value = ctx.params[name]
  if (value === undefined) throw new Error(`route parameter ${name} missing`)
  return value
}

/** The API's routes. */
export function createRoutes(deps: RouteDeps): Route[] {
  const { reader } = deps
  return [
    {
      method: 'GET',
      path: '/',
      handle: () => {
        const nonce = randomBytes(16).toString('base64')
        return Promise.resolve({
          kind: 'text',
          body: deps.page(nonce),
          contentType: 'text/html; charset=utf-8',
          headers: {
            'Content-Security-Policy': `default-src 'none'; script-src 'nonce-${nonce}'; style-src 'nonce-${nonce}'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'`,
            'Referrer-Policy': 'no-referrer',
          },
        })
      },
    },
    { method: 'GET', path: '/healthz', handle: () => Promise.resolve(json({ status: 'ok', readOnly: deps.ingest === undefined })) },
    {
      method: 'GET',
      path: '/metrics',
      handle: async () => ({ kind: 'text', body: await deps.registry.metrics(), contentType: deps.registry.contentType }),
    },
    {
      method: 'GET',
      path: '/events',
      handle: (ctx) => {
        deps.events(ctx)
        return Promise.resolve({ kind: 'handled' })
      },
    },
    {
      method: 'GET',
      path: '/events.json',
      handle: async ({ query }) => {
        const from = intParam(query, 'from', 0, Number.MAX_SAFE_INTEGER)
        const limit = intParam(query, 'limit', 1, 10_000)
        const nodeId = query.get('node')
        return json(
          await reader.events({
            ...(from === undefined ? {} : { from }),
            ...(limit === undefined ? {} : { limit }),
            ...(nodeId === null || nodeId === '' ? {} : { nodeId }),
          }),
        )
      },
    },
    { method: 'GET', path: '/nodes', handle: async () => json(await reader.nodes()) },
    { method: 'GET', path: '/queues', handle: async () => json(await reader.queues()) },
    { method: 'GET', path: '/queues/:queue', handle: async (ctx) => json(await reader.queue(param(ctx, 'queue'))) },
    {
      method: 'GET',
      path: '/queues/:queue/last-green',
      handle: async (ctx) => {
        const queue = param(ctx, 'queue')
        const green = await reader.lastGreen(queue)
        if (green === null) throw new NotFoundError(`queue ${queue} has no green commit yet`)
        return json(green)
      },
    },
    {
      method: 'GET',
      path: '/queues/:queue/requests',
      handle: async (ctx) => {
        const states = statesOf(ctx.query)
        const order = orderOf(ctx.query)
        return json(
          await reader.requests(param(ctx, 'queue'), {
            ...pageOf(ctx.query),
            ...(states === undefined ? {} : { states }),
            ...(order === undefined ? {} : { order }),
          }),
        )
      },
    },
    {
      method: 'GET',
      path: '/queues/:queue/history',
      handle: async (ctx) => json(await reader.history(param(ctx, 'queue'), pageOf(ctx.query))),
    },
    {
      method: 'GET',
      path: '/queues/:queue/commits/*',
      handle: async (ctx) => json(await reader.why(param(ctx, 'queue'), param(ctx, '*'))),
    },
    {
      method: 'POST',
      path: '/queues/:queue/ingest',
      handle: async (ctx) => {
        if (deps.ingest === undefined) {
          throw new HttpError(503, 'READ_ONLY', 'this server reads a database without running Stovepipe; it cannot ingest')
        }
        if (ctx.body !== undefined && (typeof ctx.body !== 'object' || ctx.body === null || Array.isArray(ctx.body))) {
          throw new InvalidInputError('the ingest body must be a JSON object (or empty)')
        }
        return json(await deps.ingest(param(ctx, 'queue')))
      },
    },
    { method: 'GET', path: '/requests/*', handle: async (ctx) => json(await reader.request(param(ctx, '*'))) },
  ]
}

const decode = (text: string): string => {
  try {
    return decodeURIComponent(text)
  } catch {
    throw new InvalidInputError(`the path has a malformed %-escape: ${JSON.stringify(text)}`)
  }
}

/** Matches a raw (still %-encoded) path against a pattern; the decoded parameters, or undefined. */
export function matchPath(pattern: string, path: string): Record<string, string> | undefined {
  const want = pattern.split('/').slice(1)
  const got = path.split('/').slice(1)
  const params: Record<string, string> = {}
  for (let i = 0; i < want.length; i++) {
    const w = want[i] as string
    if (w === '*') {
      const rest = got.slice(i).join('/')
      if (rest === '') return undefined
      params['*'] = decode(rest)
      return params
    }
    const g = got[i]
    if (g === undefined) return undefined
    if (w.startsWith(':')) {
      if (g === '') return undefined
      params[w.slice(1)] = decode(g)
    } else if (w !== g) return undefined
  }
  return got.length === want.length ? params : undefined
}

/** The route for a request, or why there is none (404, or 405 with the methods allowed). */
export function findRoute(
  routes: readonly Route[],
  method: string,
  path: string,
): { route: Route; params: Record<string, string> } | { allow: string[] } | undefined {
  const allow: string[] = []
  for (const route of routes) {
    const params = matchPath(route.path, path)
    if (params === undefined) continue
    if (route.method === method || (method === 'HEAD' && route.method === 'GET' && route.path !== '/events')) return { route, params }
    // HEAD is served for every GET but the event stream (which has no end to measure).
    allow.push(route.method === 'GET' && route.path !== '/events' ? 'GET, HEAD' : route.method)
  }
  return allow.length > 0 ? { allow } : undefined
}
