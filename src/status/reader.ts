/**
 * The read model from storage alone: queues with their last green, requests in flight and
 * counts; histories; requests; event rows; and `why` for a commit. The CLI reads a
 * database with no runtime running through it, and the HTTP server serves it.
 *
 * Freshness: the queue row's last green is written by the runtime shortly after a request
 * is recorded; the reader also looks at the newest recorded requests above it, so a green
 * verdict shows as last green as soon as its request row is recorded. Given a running
 * runtime (`createStatusReader(storage, { runtime })` or {@link createLiveStatusReader}),
 * last green is the newest of those and the live queue's pointer, and the requests in
 * flight are the live queue's (with their persisted step).
 *
 * Cost: counts scan a queue's requests once, then only those above the highest request
 * number below which every request has ended (ended requests never change), so repeated
 * calls are cheap. `why` with a sha prefix scans the queue's requests in pages.
 *
 * @module
 */
import type { QueueConfig } from '../machines/queue.js'
import { normalizeQueueConfig } from '../runtime/config.js'
import type { Stovepipe } from '../runtime/stovepipe.js'
import { describeRequest, type RequestView } from '../runtime/views.js'
import { gitUri } from '../sourcecontrol/git-exec.js'
import { InvalidInputError, NotFoundError } from '../storage/errors.js'
import { FINAL_REQUEST_STATES, type EventRow, type Page, type QueueRecord, type RequestRecord, type Storage } from '../storage/types.js'
import { MAX_URI_BYTES, assertQueueName, parseRequestId } from '../storage/validation.js'
import { explainCommit } from './explain.js'
import { isShaPrefix, matchesCommit, shaOf } from './sha.js'
import type {
  EventsOptions,
  Explanation,
  InFlightRequest,
  LastGreenInfo,
  PageOptions,
  QueueCounts,
  QueueSummary,
  RequestsOptions,
  StatusReader,
} from './types.js'

/** Options of {@link createStatusReader}. */
export interface StatusReaderOptions {
  /**
   * A runtime running on the same storage. When given, last green is the newest of storage
   * and the live queue's pointer, and requests in flight come from the live queues.
   */
  runtime?: Pick<Stovepipe, 'queues'>
}

/** Rows per storage page while scanning. */
const PAGE = 500
/** Recorded requests above the stored last green looked at for a newer green. */
const GREEN_SCAN_ROWS = 200

type FinalCounts = Omit<QueueCounts, 'total' | 'inFlight'>
const zeroFinals = (): FinalCounts => ({ green: 0, red: 0, indeterminate: 0, superseded: 0, cancelled: 0 })

/** Counts of ended requests with numbers up to `watermark` (every request up to it has ended). */
interface FinalTally {
  watermark: number
  counts: FinalCounts
}

function tally(counts: FinalCounts, view: RequestView): void {
  if (view.state === 'superseded') counts.superseded++
  else if (view.state === 'cancelled') counts.cancelled++
  else if (view.state === 'recorded') counts[view.verdict ?? 'indeterminate']++
}

const addCounts = (a: FinalCounts, b: FinalCounts): FinalCounts => ({
  green: a.green + b.green,
  red: a.red + b.red,
  indeterminate: a.indeterminate + b.indeterminate,
  superseded: a.superseded + b.superseded,
  cancelled: a.cancelled + b.cancelled,
})

const orNull = <T>(promise: Promise<T>): Promise<T | null> =>
  promise.catch((error: unknown) => {
    if (error instanceof NotFoundError) return null
    throw error
  })

const lastGreenInfo = (lastGreen: { uri: string; requestId: string; at: number }): LastGreenInfo => ({
  uri: lastGreen.uri,
  sha: shaOf(lastGreen.uri) ?? null,
  requestId: lastGreen.requestId,
  at: lastGreen.at,
})

const requestNumber = (id: string): number => {
  try {
    return parseRequestId(id)
  } catch {
    return 0
  }
}

function configOf(record: QueueRecord): QueueConfig {
  try {
    return normalizeQueueConfig(record.config)
  } catch {
    // A config this version cannot read is still shown as stored.
    return record.config as unknown as QueueConfig
  }
}

function assertCommit(commit: unknown): asserts commit is string {
  if (typeof commit !== 'string' || commit.length === 0 || Buffer.byteLength(commit) > MAX_URI_BYTES) {
    throw new InvalidInputError(`a commit must be a URI, a sha or a sha prefix of at least 7 hex characters, got ${JSON.stringify(commit)}`)
  }
  // eslint-disable-next-line no-control-regex -- rejecting control characters and spaces is the point
  if (/[\u0000-\u0020\u007f]/.test(commit)) throw new InvalidInputError(`a commit must not contain spaces or control characters`)
}

class StorageStatusReader implements StatusReader {
  private readonly finals = new Map<string, FinalTally>()

  constructor(
    private readonly storage: Storage,
    private readonly runtime: Pick<Stovepipe, 'queues'> | undefined,
  ) {}

  async queues(): Promise<QueueSummary[]> {
    const records = await this.storage.queues.list()
    return Promise.all(records.map((record) => this.summarize(record)))
  }

  async queue(name: string): Promise<QueueSummary> {
    return this.summarize(await this.record(name))
  }

  async lastGreen(name: string): Promise<LastGreenInfo | null> {
    return this.lastGreenOf(await this.record(name))
  }

  history(name: string, options: PageOptions = {}): Promise<Page<RequestView>> {
    return this.requests(name, { ...options, states: ['recorded'], order: 'desc' })
  }

  async requests(name: string, options: RequestsOptions = {}): Promise<Page<RequestView>> {
    await this.record(name)
    const { cursor, limit, states, order = 'desc' } = options
    const page = await this.storage.requests.listByQueue(name, {
      order,
      ...(cursor === undefined ? {} : { cursor }),
      ...(limit === undefined ? {} : { limit }),
      ...(states === undefined ? {} : { states }),
    })
    return { ...page, items: page.items.map(describeRequest) }
  }

  async request(id: string): Promise<RequestView> {
    parseRequestId(id)
    try {
      return describeRequest(await this.storage.requests.get(id))
    } catch (error) {
      if (error instanceof NotFoundError) throw new NotFoundError(`request ${id} does not exist`, { cause: error })
      throw error
    }
  }

  events(options: EventsOptions = {}): Promise<EventRow[]> {
    const { from = 0, limit = 1000, nodeId } = options
    return this.storage.events.read({ fromId: from, limit, ...(nodeId === undefined ? {} : { nodeId }) })
  }

  nodes(): Promise<string[]> {
    return this.storage.events.nodes()
  }

  async why(queue: string, commit: string): Promise<Explanation> {
    assertCommit(commit)
    const record = await this.record(queue)
    // A git queue's commits are hex shas: anything else is a typo, not a commit never ingested.
    // (The fake source control names commits freely, so a queue without a repo takes any name.)
    if (configOf(record).repo !== undefined && !commit.includes('://') && !isShaPrefix(commit)) {
      throw new InvalidInputError(
        `${JSON.stringify(commit)} is not a commit of queue ${queue}: give a sha or a sha prefix of at least 7 hex characters, or a commit URI`,
      )
    }
    const lastGreen = await this.lastGreenOf(record)
    const uri = await this.resolve(record, commit, lastGreen)
    const sha = uri === null ? (isShaPrefix(commit) ? commit.toLowerCase() : null) : (shaOf(uri) ?? null)
    if (uri === null) {
      return explainCommit({ queue, uri, sha, asked: commit, request: null, supersededBy: null, facts: [], lastGreen })
    }
    const [requestId, facts] = await Promise.all([
      orNull(this.storage.requestUris.getIdByUri(queue, uri)),
      this.storage.facts.listByUri(queue, uri),
    ])
    const row = requestId === null ? null : await orNull(this.storage.requests.get(requestId))
    const request = row === null ? null : describeRequest(row)
    const supersededRow = request?.supersededBy == null ? null : await orNull(this.storage.requests.get(request.supersededBy))
    const supersededBy = supersededRow === null ? null : describeRequest(supersededRow)
    return explainCommit({ queue, uri, sha, asked: commit, request, supersededBy, facts, lastGreen })
  }

  /** The queue's row; `NotFoundError` naming the queue when it does not exist. */
  private async record(name: string): Promise<QueueRecord> {
    assertQueueName(name)
    try {
      return await this.storage.queues.get(name)
    } catch (error) {
      if (error instanceof NotFoundError) throw new NotFoundError(`queue ${name} does not exist`, { cause: error })
      throw error
    }
  }

  private liveQueue(name: string): ReturnType<Stovepipe['queues']>[number] | undefined {
    return this.runtime?.queues().find((handle) => handle.name === name)
  }

  private async summarize(record: QueueRecord): Promise<QueueSummary> {
    const [lastGreen, inFlight] = await Promise.all([this.lastGreenOf(record), this.inFlight(record.name)])
    const finals = await this.finalCounts(record.name)
    const ended = finals.green + finals.red + finals.indeterminate + finals.superseded + finals.cancelled
    return {
      name: record.name,
      config: configOf(record),
      lastGreen,
      inFlight,
      counts: { total: ended + inFlight.length, inFlight: inFlight.length, ...finals },
      createdAt: record.createdAt,
      updatedAt: record.updatedAt,
    }
  }

  /** The newest of: the queue row's last green, a newer green among the newest recorded requests, the live pointer. */
  private async lastGreenOf(record: QueueRecord): Promise<LastGreenInfo | null> {
    const candidates: LastGreenInfo[] = []
    if (record.lastGreen !== undefined) candidates.push(lastGreenInfo(record.lastGreen))
    const live = this.liveQueue(record.name)?.lastGreen()
    if (live !== undefined) candidates.push(lastGreenInfo(live))
    const above = Math.max(0, ...candidates.map((c) => requestNumber(c.requestId)))
    let cursor: string | undefined
    let scanned = 0
    scan: do {
      const page = await this.storage.requests.listByQueue(record.name, {
        states: ['recorded'],
        order: 'desc',
        limit: Math.min(PAGE, GREEN_SCAN_ROWS - scanned),
        ...(cursor === undefined ? {} : { cursor }),
      })
      for (const row of page.items) {
        const view = describeRequest(row)
        if (view.n <= above) break scan
        if (view.verdict === 'green') {
          candidates.push(lastGreenInfo({ uri: row.uri, requestId: row.id, at: view.endedAt ?? row.updatedAt }))
          break scan
        }
      }
      scanned += page.items.length
      cursor = page.nextCursor
    } while (cursor !== undefined && scanned < GREEN_SCAN_ROWS)
    let best: LastGreenInfo | null = null
    for (const c of candidates) if (best === null || requestNumber(c.requestId) > requestNumber(best.requestId)) best = c
    return best
  }

  private async inFlight(queue: string): Promise<InFlightRequest[]> {
    const rows: RequestRecord[] = []
    let cursor: string | undefined
    do {
      const page = await this.storage.requests.listByQueue(queue, {
        states: ['accepted', 'processing'],
        limit: PAGE,
        ...(cursor === undefined ? {} : { cursor }),
      })
      rows.push(...page.items)
      cursor = page.nextCursor
    } while (cursor !== undefined)
    const stored = new Map(rows.map((row) => [row.id, describeRequest(row)]))
    const live = this.liveQueue(queue)
    if (live !== undefined) {
      // A lost request's row is at a step it is no longer in (it resumes from there at the next start).
      return live
        .inFlight()
        .map((r) => ({ id: r.id, n: r.n, uri: r.uri, state: r.state, step: r.state === 'lost' ? null : (stored.get(r.id)?.step ?? null) }))
    }
    return [...stored.values()].map((v) => ({ id: v.id, n: v.n, uri: v.uri, state: v.state, step: v.step }))
  }

  /** Counts of ended requests, from the cache plus a scan of the requests above its watermark. */
  private async finalCounts(queue: string): Promise<FinalCounts> {
    const cached = this.finals.get(queue) ?? { watermark: 0, counts: zeroFinals() }
    const views: RequestView[] = []
    let cursor: string | undefined
    scan: do {
      const page = await this.storage.requests.listByQueue(queue, {
        order: 'desc',
        limit: PAGE,
        ...(cursor === undefined ? {} : { cursor }),
      })
      for (const row of page.items) {
        const view = describeRequest(row)
        if (view.n <= cached.watermark) break scan
        views.push(view)
      }
      cursor = page.nextCursor
    } while (cursor !== undefined)
    // Loops, not Math.min(...all): a spread of 100 000+ numbers overflows the stack.
    let oldestOpen = Number.POSITIVE_INFINITY
    let newest = cached.watermark
    for (const view of views) {
      if (!FINAL_REQUEST_STATES.includes(view.state)) oldestOpen = Math.min(oldestOpen, view.n)
      newest = Math.max(newest, view.n)
    }
    const watermark = oldestOpen === Number.POSITIVE_INFINITY ? newest : oldestOpen - 1
    const folded = zeroFinals()
    const above = zeroFinals()
    for (const view of views) tally(view.n <= watermark ? folded : above, view)
    const next: FinalTally = { watermark, counts: addCounts(cached.counts, folded) }
    if ((this.finals.get(queue)?.watermark ?? -1) < next.watermark) this.finals.set(queue, next)
    return addCounts(next.counts, above)
  }

  /** The URI `commit` names in the queue, or null when nothing the queue ingested matches. */
  private async resolve(record: QueueRecord, commit: string, lastGreen: LastGreenInfo | null): Promise<string | null> {
    if (commit.includes('://')) return commit
    if (lastGreen !== null && shaOf(lastGreen.uri) === commit) return lastGreen.uri
    // The URIs the usual backends would mint for a full sha: one lookup each.
    const direct = [`fake://${commit}`]
    const repo = configOf(record).repo
    if (repo !== undefined && /^[0-9a-f]{40}$/.test(commit)) {
      try {
        direct.push(gitUri(repo, commit))
      } catch {
        // Not an absolute local path: the scan below still finds it.
      }
    }
    for (const uri of direct) {
      if ((await orNull(this.storage.requestUris.getIdByUri(record.name, uri))) !== null) return uri
    }
    // Scan the queue's requests, newest first: an exact sha wins; a prefix must be unambiguous.
    const prefixMatches = new Map<string, string>()
    let cursor: string | undefined
    do {
      const page = await this.storage.requests.listByQueue(record.name, {
        order: 'desc',
        limit: PAGE,
        ...(cursor === undefined ? {} : { cursor }),
      })
      for (const row of page.items) {
        if (!matchesCommit(row.uri, commit)) continue
        const sha = shaOf(row.uri) ?? row.uri
        if (row.uri === commit || sha === commit) return row.uri
        if (!prefixMatches.has(sha)) prefixMatches.set(sha, row.uri)
      }
      cursor = page.nextCursor
    } while (cursor !== undefined)
    if (prefixMatches.size > 1) {
      const shas = [...prefixMatches.keys()].slice(0, 5).join(', ')
      throw new InvalidInputError(`sha prefix ${commit} is ambiguous in queue ${record.name}: it matches ${shas}; give more characters`)
    }
    return prefixMatches.values().next().value ?? null
  }
}

/** A read model over `storage` (see the module notes for freshness and cost). */
export function createStatusReader(storage: Storage, options: StatusReaderOptions = {}): StatusReader {
  if (typeof storage !== 'object' || typeof storage.queues !== 'object') throw new InvalidInputError('createStatusReader needs a storage')
  return new StorageStatusReader(storage, options.runtime)
}

/**
 * A read model over a running runtime's storage, with last green and requests in flight
 * from its live queues: `createStatusReader(storage, { runtime: sp })`.
 */
export function createLiveStatusReader(sp: Pick<Stovepipe, 'queues'>, storage: Storage): StatusReader {
  return createStatusReader(storage, { runtime: sp })
}
