/**
 * Time, injected. Everything in Stovepipe that waits or reads the time goes through a
 * {@link Clock}, so XState's `SimulatedClock` (which has exactly this shape) drives tests
 * with no real sleeps.
 *
 * @module
 */

/** The clock shape Stovepipe needs: XState's `Clock` plus `now()`. */
export interface Clock {
  /** Epoch milliseconds (simulated clocks start where they are set). */
  now(): number
  setTimeout(fn: () => void, ms: number): unknown
  clearTimeout(id: unknown): void
}

/** The longest delay Node's timers take (about 24.8 days); a longer one fires at once. */
export const MAX_TIMER_MS = 2 ** 31 - 1

/** The real clock. */
export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (id) => {
    clearTimeout(id as ReturnType<typeof setTimeout>)
  },
}

/** A promise resolving after `ms` on `clock`; `cancel()` resolves it at once. */
export function sleep(clock: Clock, ms: number): { done: Promise<void>; cancel: () => void } {
  let wake: () => void = () => undefined
  const done = new Promise<void>((resolve) => {
    wake = resolve
  })
  const id = clock.setTimeout(wake, ms)
  return {
    done,
    cancel: () => {
      clock.clearTimeout(id)
      wake()
    },
  }
}

/**
 * Exponential backoff with full jitter: a uniformly random delay in
 * `[0, min(maxDelayMs, baseDelayMs * 2^(attempt - 1)))`, for attempt 1, 2, 3, …
 */
export function backoffDelay(attempt: number, baseDelayMs: number, maxDelayMs: number, random: () => number): number {
  const ceiling = Math.min(maxDelayMs, baseDelayMs * 2 ** Math.max(0, attempt - 1))
  return Math.floor(random() * ceiling)
}

/** A small seeded PRNG (mulberry32): the same seed gives the same sequence. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}
