/**
 * Event feeds: what the HTTP server streams as server-sent events. A running runtime's
 * event log is one (`sp.events`: replay from storage, then live). With no runtime (the
 * CLI serving a database read-only), {@link pollEvents} follows the stored rows by
 * polling storage.
 *
 * @module
 */
import type { Logger } from 'pino'
import { sleep, systemClock, type Clock } from '../actors/clock.js'
import type { LogEntry, SubscribeOptions, Subscription } from '../actors/event-log.js'
import { silentLogger } from '../actors/observability.js'
import { InvalidInputError } from '../storage/errors.js'
import type { EventRow, Storage } from '../storage/types.js'
import { assertNodeId } from '../storage/validation.js'

/** A source of event-log entries that can resume from a logical id (an `EventLog` is one). */
export interface EventFeed {
  /** Delivers entries from `from` (inclusive; live only when omitted), in id order, with no duplicate. */
  subscribe(listener: (entry: LogEntry) => void | Promise<void>, options?: SubscribeOptions): Subscription
  /** Reads persisted rows from a logical id; used to fill in what a lag notice says was skipped. */
  read?(options: { nodeId?: string; from?: number; limit?: number }): Promise<EventRow[]>
  /**
   * The id a live-only subscription made now would start at, so that a client told it can
   * resume from there after losing its connection before its first entry.
   */
  position?(): number | Promise<number>
}

/** Options of {@link pollEvents}. */
export interface PollEventsOptions {
  /** The node whose log to follow (default `local`). */
  nodeId?: string
  /** Time between polls once caught up (default 1000 ms). */
  intervalMs?: number
  clock?: Clock
  logger?: Logger
}

/** The last logical id a row covers. */
export const lastIdOf = (row: EventRow | LogEntry): number => (row.kind === 'event' ? row.id : row.toId)

const PAGE = 500

/** An {@link EventFeed} that follows a node's stored event rows by polling storage. */
export function pollEvents(storage: Storage, options: PollEventsOptions = {}): EventFeed {
  const nodeId = options.nodeId ?? 'local'
  assertNodeId(nodeId)
  const intervalMs = options.intervalMs ?? 1000
  if (!Number.isSafeInteger(intervalMs) || intervalMs < 1) throw new InvalidInputError(`intervalMs must be a positive integer`)
  const clock = options.clock ?? systemClock
  const logger = (options.logger ?? silentLogger()).child({ component: 'event-poller', nodeId })

  const read = (readOptions: { nodeId?: string; from?: number; limit?: number }): Promise<EventRow[]> =>
    storage.events.read({ nodeId: readOptions.nodeId ?? nodeId, fromId: readOptions.from ?? 0, limit: readOptions.limit ?? PAGE })

  const subscribe = (listener: (entry: LogEntry) => void | Promise<void>, subscribeOptions: SubscribeOptions = {}): Subscription => {
    const { from } = subscribeOptions
    if (from !== undefined && (!Number.isSafeInteger(from) || from < 0)) {
      throw new InvalidInputError(`from must be a non-negative integer, got ${String(from)}`)
    }
    let closed = false
    const isClosed = (): boolean => closed
    let pause: { done: Promise<void>; cancel: () => void } | undefined
    let markLive: () => void = () => undefined
    const live = new Promise<void>((resolve) => {
      markLive = resolve
    })
    const wait = async (): Promise<void> => {
      pause = sleep(clock, intervalMs)
      await pause.done
      pause = undefined
    }
    const run = async (): Promise<void> => {
      let next = from
      while (next === undefined && !closed) {
        try {
          const last = await storage.events.last(nodeId)
          next = last === undefined ? 0 : lastIdOf(last) + 1
        } catch (error) {
          logger.warn({ err: error }, 'could not read the event log; retrying')
          await wait()
        }
      }
      while (!closed && next !== undefined) {
        let rows: EventRow[]
        try {
          rows = await read({ from: next, limit: PAGE })
        } catch (error) {
          logger.warn({ err: error }, 'could not read the event log; retrying')
          await wait()
          continue
        }
        for (const row of rows) {
          if (isClosed()) return
          if (lastIdOf(row) < next) continue
          next = lastIdOf(row) + 1
          try {
            await listener(row)
          } catch (error) {
            logger.error({ err: error }, 'event feed listener threw; continuing')
          }
        }
        if (rows.length < PAGE) {
          markLive()
          await wait()
        }
      }
    }
    void run().then(markLive, (error: unknown) => {
      logger.error({ err: error }, 'event feed stopped')
      markLive()
    })
    return {
      live,
      unsubscribe: () => {
        closed = true
        pause?.cancel()
      },
    }
  }

  const position = async (): Promise<number> => {
    const last = await storage.events.last(nodeId)
    return last === undefined ? 0 : lastIdOf(last) + 1
  }

  return { subscribe, read, position }
}
