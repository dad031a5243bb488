/**
 * The readable timeline `stovepipe run` and `stovepipe demo` print while they work: one line
 * per head ingested, per build started and per request ended, built from the event log.
 *
 * @module
 */
import type { EventLog, Subscription } from '../actors/event-log.js'
import type { RequestView } from '../runtime/views.js'
import { shortSha } from '../status/index.js'
import { formatTime, painter, type CliIo } from './io.js'

/** What the timeline needs from the runtime. */
export interface TimelineSource {
  events: EventLog
  request(id: string): Promise<RequestView>
  lastGreenOf(queue: string): { uri: string; requestId: string } | undefined
}

/** Replaces every `scheme://…#<sha>` URI in a sentence with its short sha. */
function shortenUris(text: string): string {
  return text.replace(/\b[a-z][a-z0-9+.-]*:\/\/\S*?#([0-9a-f]{7})[0-9a-f]*/g, '$1')
}

/** Prints timeline lines to `io.stdout`. */
export class Timeline {
  private readonly paint
  private subscription: Subscription | undefined
  private chain: Promise<void> = Promise.resolve()
  private readonly ended = new Set<string>()
  private readonly enders = new Map<string, (() => void)[]>()

  constructor(
    private readonly io: CliIo,
    private readonly now: () => number,
  ) {
    this.paint = painter(io.stdout, io.env)
  }

  private line(text: string): void {
    this.io.stdout.write(`${this.paint.dim(formatTime(this.now()).slice(11))}  ${text}\n`)
  }

  /** A head was ingested. */
  ingested(queue: string, result: { id: string; uri: string; deduplicated: boolean }, subject?: string): void {
    const about = subject === undefined ? '' : `  ${this.paint.dim(subject)}`
    if (result.deduplicated) this.line(`${queue}  head ${shortSha(result.uri)} already known as ${result.id}${about}`)
    else this.line(`${queue}  new head ${this.paint.bold(shortSha(result.uri))} -> ${result.id}${about}`)
  }

  /** Follows the event log from now on and prints builds starting and requests ending. */
  follow(source: TimelineSource): void {
    this.subscription = source.events.subscribe((entry) => {
      if (entry.kind !== 'event') return
      const p = entry.payload
      if (typeof p !== 'object' || p === null || Array.isArray(p)) return
      const { requestId, to, queue } = p
      if (typeof requestId !== 'string' || typeof to !== 'string' || typeof queue !== 'string') return
      if (to !== 'processing.building' && to !== 'recorded' && to !== 'superseded' && to !== 'cancelled') return
      // Keep lines in event order even though each needs a read.
      this.chain = this.chain.then(async () => {
        try {
          this.printTransition(queue, to, await source.request(requestId), source.lastGreenOf(queue))
        } catch {
          this.line(`${queue}  ${requestId} -> ${to}`)
        }
        if (to !== 'processing.building') this.markEnded(requestId)
      })
    })
  }

  private printTransition(queue: string, to: string, view: RequestView, lastGreen: { uri: string } | undefined): void {
    const sha = shortSha(view.uri)
    if (to === 'processing.building') {
      const how =
        view.strategy === 'incremental' && view.baseline !== null
          ? `incremental since ${shortSha(view.baseline)}`
          : `full${view.fallback === null ? '' : ` (${shortenUris(view.fallback)})`}`
      this.line(`${queue}  building ${sha} (${view.id}): ${how}`)
      return
    }
    const green = lastGreen === undefined ? 'none' : shortSha(lastGreen.uri)
    if (to === 'recorded') {
      const verdict = view.verdict ?? 'indeterminate'
      const coloured =
        verdict === 'green' ? this.paint.green(verdict) : verdict === 'red' ? this.paint.red(verdict) : this.paint.yellow(verdict)
      const reason = view.reason === null ? '' : `  ${this.paint.dim(view.reason)}`
      this.line(`${queue}  ${sha} is ${coloured} (${view.id}, ${view.strategy ?? '-'})  last green ${this.paint.bold(green)}${reason}`)
      return
    }
    const by = view.supersededBy === null ? '' : ` by ${view.supersededBy}`
    this.line(`${queue}  ${sha} ${to}${by} (${view.id})  last green ${green}`)
  }

  private markEnded(id: string): void {
    this.ended.add(id)
    for (const resolve of this.enders.get(id) ?? []) resolve()
    this.enders.delete(id)
  }

  /** Resolves once the line saying how request `id` ended has been printed. */
  printedEnd(id: string): Promise<void> {
    if (this.ended.has(id)) return Promise.resolve()
    return new Promise((resolve) => {
      this.enders.set(id, [...(this.enders.get(id) ?? []), resolve])
    })
  }

  /** Waits for the lines already due, then stops following. */
  async close(): Promise<void> {
    this.subscription?.unsubscribe()
    await this.chain
  }
}
