/**
 * The read model's shapes: what `stovepipe status`, the HTTP API and the status page show.
 * Everything is plain JSON (timestamps in epoch milliseconds), so the same objects travel
 * over HTTP unchanged.
 *
 * @module
 */
import type { EventRow, Fact, Page, RequestState } from '../storage/types.js'
import type { QueueConfig } from '../machines/queue.js'
import type { RequestView } from '../runtime/views.js'

/** The last green commit of a queue. */
export interface LastGreenInfo {
  uri: string
  /** The commit's sha when the URI has one (see `shaOf`), else null. */
  sha: string | null
  requestId: string
  /** When it was recorded green (epoch ms). */
  at: number
}

/** A request that has not ended. */
export interface InFlightRequest {
  id: string
  n: number
  uri: string
  /**
   * `accepted` or `processing`; live readers only: `superseding` while the queue coalesces it,
   * `lost` when its actor failed and its end could not be stored (it holds its slot until its
   * lease expires or its end is stored, retried; else it resumes at the next start).
   */
  state: string
  /** The step persisted, e.g. `processing.building`; null when not known, and for a `lost` request. */
  step: string | null
}

/** How many requests of a queue are where. */
export interface QueueCounts {
  /** Requests stored for the queue. */
  total: number
  inFlight: number
  green: number
  red: number
  indeterminate: number
  superseded: number
  cancelled: number
}

/** One queue at a glance. */
export interface QueueSummary {
  name: string
  config: QueueConfig
  lastGreen: LastGreenInfo | null
  /** Requests not ended yet, oldest first. */
  inFlight: InFlightRequest[]
  counts: QueueCounts
  createdAt: number
  updatedAt: number
}

/** Paging of a queue's requests. */
export interface PageOptions {
  /** `nextCursor` of the previous page. */
  cursor?: string
  /** 1 to 1000 (default 100). */
  limit?: number
}

/** Options of {@link StatusReader.requests}. */
export interface RequestsOptions extends PageOptions {
  /** Only requests in these states. */
  states?: readonly RequestState[]
  /** By request number: `desc` (newest first, the default) or `asc`. */
  order?: 'asc' | 'desc'
}

/** Options of {@link StatusReader.events}. */
export interface EventsOptions {
  /** First logical id (inclusive, default 0). */
  from?: number
  /** 1 to 10 000 (default 1000). */
  limit?: number
  /**
   * Only this node's rows (default: every node, ordered by node then seq). Ids are
   * contiguous per node: to page through several nodes, page each one (see `nodes()`).
   */
  nodeId?: string
}

/** Where a commit stands in a queue. */
export type CommitStatus = 'green' | 'red' | 'indeterminate' | 'in-flight' | 'superseded' | 'cancelled' | 'unknown'

/** Whether a commit is green in a queue, and why (or why not). */
export interface Explanation {
  queue: string
  /** The commit's URI; null when a sha or prefix matched nothing the queue ingested. */
  uri: string | null
  /** The commit's sha when known (from the URI, or the sha asked about). */
  sha: string | null
  status: CommitStatus
  isLastGreen: boolean
  /** The commit's greenness facts (whole repo `""` and per project). */
  facts: Fact[]
  /** The request that validated (or is validating) the commit. */
  request: RequestView | null
  /** The request that superseded it, when it was superseded. */
  supersededBy: RequestView | null
  lastGreen: LastGreenInfo | null
  /** One English sentence saying all of the above. */
  summary: string
}

/**
 * The read model. {@link createStatusReader} reads it from storage; `createHttpClient`
 * (`src/http/client.ts`) reads it from a Stovepipe server. Errors are typed: unknown queues
 * and requests are `NotFoundError`, bad arguments `InvalidInputError`.
 */
export interface StatusReader {
  /** Every queue, by name. */
  queues(): Promise<QueueSummary[]>
  /** One queue; `NotFoundError` when it does not exist. */
  queue(name: string): Promise<QueueSummary>
  /** The queue's last green commit, or null when none was recorded. */
  lastGreen(name: string): Promise<LastGreenInfo | null>
  /** Recorded requests, newest first: the greenness history. */
  history(name: string, options?: PageOptions): Promise<Page<RequestView>>
  /** A queue's requests, newest first unless asked otherwise. */
  requests(name: string, options?: RequestsOptions): Promise<Page<RequestView>>
  /** One request; `NotFoundError` when it does not exist. */
  request(id: string): Promise<RequestView>
  /** Event-log rows (transitions and gaps), ordered by node then seq. */
  events(options?: EventsOptions): Promise<EventRow[]>
  /** The nodes whose event logs have rows (each process sharing a database is one), by name. */
  nodes(): Promise<string[]>
  /**
   * Explains a commit: `commit` is a URI, a sha, or a sha prefix of at least 7 hex
   * characters. `InvalidInputError` when a prefix is ambiguous.
   */
  why(queue: string, commit: string): Promise<Explanation>
}
