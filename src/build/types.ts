/**
 * The builder contract: validate one commit, fully or incrementally since a baseline.
 *
 * @module
 */
import type { Clock } from '../actors/clock.js'

/** How a request validates its commit. */
export type Strategy = 'full' | 'incremental'

/** What the runtime asks a builder to do. */
export interface BuildRequest {
  queue: string
  requestId: string
  uri: string
  strategy: Strategy
  /** The last green URI an incremental build compares against. */
  baseline?: string
  /** The queue's projects, when it has any. */
  projects?: readonly string[]
  /** Aborted when the request is cancelled or its deadline passes: stop the build. */
  signal: AbortSignal
  /** The runtime's clock. */
  clock: Clock
}

/**
 * What a build found. `passed`/`failed` is a verdict on the commit; `error` means the build
 * infrastructure failed (retried, then `indeterminate`), never that the commit is broken.
 */
export interface BuildResult {
  outcome: 'passed' | 'failed' | 'error'
  /** Per-project results, when the queue has projects. */
  projects?: Record<string, 'passed' | 'failed'>
  /** The build's output (the runtime keeps the last 64 KiB). */
  log?: string
}

/** Runs builds. */
export interface BuildRunner {
  run(request: BuildRequest): Promise<BuildResult>
}
