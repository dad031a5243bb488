/** Shared bench helpers: medians and the closing `target` lines. */

/** One goal of a benchmark: `value` must reach `goal` (at least, or at most with `atMost`). */
export interface Target {
  name: string
  value: number
  goal: number
  /** The value must stay at or below the goal (latencies, bytes) instead of reaching it. */
  atMost?: boolean
  /** Unit printed after numbers, e.g. `x` or ` KiB`. */
  unit?: string
}

/** Median of a non-empty list. */
export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? (sorted[mid] ?? Number.NaN) : ((sorted[mid - 1] ?? 0) + (sorted[mid] ?? 0)) / 2
}

/** The p-th percentile (0..100) of a non-empty list, nearest rank. */
export function percentile(values: readonly number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b)
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))
  return sorted[rank] ?? Number.NaN
}

function format(value: number): string {
  if (Number.isNaN(value)) return 'n/a'
  return Math.abs(value) >= 100 ? String(Math.round(value)) : value.toFixed(2)
}

/** Prints `target <name>: <value> (goal <goal>) ok|short`, one line per target. */
export function printTargets(targets: readonly Target[]): void {
  for (const t of targets) {
    const unit = t.unit ?? ''
    const met = !Number.isNaN(t.value) && (t.atMost === true ? t.value <= t.goal : t.value >= t.goal)
    console.log(
      `target ${t.name}: ${format(t.value)}${unit} (goal ${t.atMost === true ? '<=' : '>='} ${format(t.goal)}${unit}) ${met ? 'ok' : 'short'}`,
    )
  }
}
