/**
 * The source-control contract. A {@link SourceControl} is bound to one queue (one
 * repository and ref); URIs are opaque commit identities that only the backend interprets.
 *
 * @module
 */
import type { Page } from '../storage/types.js'

/** Source control for one queue. */
export interface SourceControl {
  /** URI of the ref's head; `NotFoundError` if the ref does not exist. */
  latest(): Promise<string>
  /** Whether `ancestor` is an ancestor of (or equal to) `descendant`; `NotFoundError` if a URI is unknown. */
  isAncestor(ancestor: string, descendant: string): Promise<boolean>
  /** URIs of the ref's history, newest first, paged with an opaque cursor. */
  history(cursor?: string, limit?: number): Promise<Page<string>>
}

/** What a queue tells source control about itself. */
export interface SourceControlTarget {
  queue: string
  /** Repository location (meaning depends on the backend; the fake ignores it). */
  repo?: string
  ref: string
}

/** Gives each queue its bound {@link SourceControl}. */
export interface SourceControlProvider {
  forQueue(target: SourceControlTarget): SourceControl
}

/** True when `value` is a provider rather than a bound source control. */
export function isSourceControlProvider(value: SourceControl | SourceControlProvider): value is SourceControlProvider {
  return typeof (value as Partial<SourceControlProvider>).forQueue === 'function'
}
