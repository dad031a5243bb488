/**
 * The HTTP side: the server (JSON API, `/events` server-sent events, `/metrics`, the
 * status page) and its client.
 * @module
 */
export { createHttpClient, followEvents } from './client.js'
export type { EventListener, FollowEventsOptions, HttpClient, HttpClientOptions } from './client.js'
export { HttpError, fromResponse, toResponse } from './errors.js'
export type { ErrorBody } from './errors.js'
export { TIMELINE_LENGTH, statusPage } from './page.js'
export { MAX_BODY_BYTES, createHttpServer } from './server.js'
export type { HttpRuntime, HttpServer, HttpServerOptions, ListenOptions, ListeningServer } from './server.js'
export { SseParser, formatSse, streamEvents } from './sse.js'
export type { EventStream, SseEntryData, SseMessage, StreamEventsOptions } from './sse.js'
