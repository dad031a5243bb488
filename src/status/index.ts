/**
 * The read model: what the CLI, the HTTP API and the status page show, read from storage
 * (no runtime needed) or from a running runtime.
 * @module
 */
export { commitStatus, explainCommit } from './explain.js'
export type { CommitEvidence } from './explain.js'
export { lastIdOf, pollEvents } from './feed.js'
export type { EventFeed, PollEventsOptions } from './feed.js'
export { createLiveStatusReader, createStatusReader } from './reader.js'
export type { StatusReaderOptions } from './reader.js'
export { isShaPrefix, matchesCommit, shaOf, shortSha } from './sha.js'
export type {
  CommitStatus,
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
