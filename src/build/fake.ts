/**
 * A scriptable builder for tests and demos: outcomes decided by a function, durations on
 * the injected clock, and the AbortSignal honoured.
 *
 * @module
 */
import { sleep, type Clock } from '../actors/clock.js'
import { UnavailableError } from '../storage/errors.js'
import type { BuildRequest, BuildResult, BuildRunner } from './types.js'

/** Options of {@link createFakeBuilder}. */
export interface FakeBuilderOptions {
  /** Decides each build: an outcome, or a whole result (per-project outcomes, log). Default: passed. */
  outcome?: (uri: string, request: BuildRequest) => BuildResult['outcome'] | BuildResult
  /** How long a build takes on the clock (default 0: it finishes at once). */
  durationMs?: number | ((uri: string, request: BuildRequest) => number)
  /** Clock for the duration (default: the runtime's, from the request). */
  clock?: Clock
}

/** A build as the fake saw it. */
export interface FakeBuild {
  requestId: string
  uri: string
  strategy: BuildRequest['strategy']
  baseline: string | undefined
  result: BuildResult | 'aborted' | 'running'
}

/** The fake builder, with what it did. */
export interface FakeBuilder extends BuildRunner {
  /** Every build started, in order. */
  readonly builds: FakeBuild[]
  /** Builds running right now. */
  running(): number
}

/** Creates a fake builder. */
export function createFakeBuilder(options: FakeBuilderOptions = {}): FakeBuilder {
  const builds: FakeBuild[] = []
  let running = 0
  return {
    builds,
    running: () => running,
    async run(request) {
      const build: FakeBuild = {
        requestId: request.requestId,
        uri: request.uri,
        strategy: request.strategy,
        baseline: request.baseline,
        result: 'running',
      }
      builds.push(build)
      const duration = typeof options.durationMs === 'function' ? options.durationMs(request.uri, request) : (options.durationMs ?? 0)
      if (duration > 0) {
        running++
        try {
          const pause = sleep(options.clock ?? request.clock, duration)
          const abort = (): void => {
            pause.cancel()
          }
          request.signal.addEventListener('abort', abort, { once: true })
          await pause.done
          request.signal.removeEventListener('abort', abort)
        } finally {
          running--
        }
      }
      if (request.signal.aborted) {
        build.result = 'aborted'
        throw new UnavailableError(`build of ${request.uri} aborted`)
      }
      const decided = options.outcome?.(request.uri, request) ?? 'passed'
      const result = typeof decided === 'string' ? { outcome: decided } : decided
      build.result = result
      return result
    },
  }
}
