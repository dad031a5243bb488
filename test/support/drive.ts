/**
 * Driving code that waits on a simulated clock: let real I/O and promise chains run
 * (setImmediate), then advance the clock, until a condition holds.
 */
import type { SimulatedClock } from 'xstate'

/** Lets pending promise chains and I/O callbacks run. */
export async function settle(rounds = 3): Promise<void> {
  for (let i = 0; i < rounds; i++) await new Promise((resolve) => setImmediate(resolve))
}

/**
 * Alternates settling and advancing `clock` by `stepMs` until `done()` holds. While
 * `busy()` holds (real I/O under way, e.g. a MySQL commit) the clock stands still, so real
 * latency does not turn into simulated time.
 */
export async function driveUntil(
  clock: SimulatedClock,
  done: () => boolean,
  { stepMs = 1, realTimeoutMs = 30_000, busy = () => false }: { stepMs?: number; realTimeoutMs?: number; busy?: () => boolean } = {},
): Promise<void> {
  const started = Date.now()
  for (;;) {
    await settle()
    if (done()) return
    if (!busy()) clock.increment(stepMs)
    if (Date.now() - started > realTimeoutMs) throw new Error(`driveUntil: condition not met after ${realTimeoutMs} ms of real time`)
  }
}

/** Tracks a promise's outcome without awaiting it. */
export function track<T>(promise: Promise<T>): { readonly settled: boolean; readonly value: T | undefined; readonly error: unknown } {
  const state: { settled: boolean; value: T | undefined; error: unknown } = { settled: false, value: undefined, error: undefined }
  promise.then(
    (value) => {
      state.settled = true
      state.value = value
    },
    (error: unknown) => {
      state.settled = true
      state.error = error
    },
  )
  return state
}
