/**
 * Last green after crashes and restarts, against storage: one queue through random workloads
 * (mixed outcomes and build durations, overlapping ingests, bursts, red streaks past the
 * every-100 snapshot write, config changes, cancels, queue snapshot writes dropped, request
 * creations held, crashes and graceful restarts; in the second property storage faults,
 * outages and failing final writes too). After every crash or restart, and at the end, the
 * queue's last green is the newest request storage shows recorded green over a green fact,
 * and every last green that was in effect reached the hooks. This is what the snapshot's
 * `settledThrough` must never break: recovery reads only the rows above it.
 *
 * LAST_GREEN_RUNS=n for a longer hunt; every source of randomness is seeded, so a failure
 * replays from the seed and path fast-check prints.
 */
import fc from 'fast-check'
import { describe, it } from 'vitest'
import { check, type O, type Setup, type Step } from '../support/last-green-harness.js'

const RUNS = process.env.LAST_GREEN_RUNS === undefined ? undefined : Number(process.env.LAST_GREEN_RUNS)

const outcome = fc.constantFrom<O>('p', 'p', 'f', 'f', 'e')
const duration = fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 3_000 }))

/** The steps of both properties; `faults` adds storage faults, outages and failing final writes. */
function steps(faults: boolean): fc.Arbitrary<Step[]> {
  const kinds: fc.WeightedArbitrary<Step>[] = [
    { weight: 3, arbitrary: fc.record({ kind: fc.constant('push' as const), o: outcome, dur: duration }) },
    { weight: 3, arbitrary: fc.record({ kind: fc.constant('ingest' as const), wait: fc.boolean() }) },
    { weight: 5, arbitrary: fc.record({ kind: fc.constant('pushIngest' as const), o: outcome, dur: duration, wait: fc.boolean() }) },
    {
      weight: 2,
      arbitrary: fc.record({ kind: fc.constant('burst' as const), os: fc.array(outcome, { minLength: 2, maxLength: 5 }), dur: duration }),
    },
    {
      weight: 1,
      arbitrary: fc.record({
        kind: fc.constant('redStreak' as const),
        count: fc.integer({ min: 30, max: 120 }),
        style: fc.constantFrom<'seq' | 'burst'>('seq', 'burst'),
      }),
    },
    {
      weight: 4,
      arbitrary: fc.record({
        kind: fc.constant('tick' as const),
        ms: fc.oneof(fc.integer({ min: 1, max: 50 }), fc.integer({ min: 1, max: 3_500 })),
      }),
    },
    {
      weight: 2,
      arbitrary: fc.record({ kind: fc.constant('config' as const), maxConcurrent: fc.integer({ min: 1, max: 3 }), wait: fc.boolean() }),
    },
    { weight: 2, arbitrary: fc.record({ kind: fc.constant('cancel' as const), pick: fc.nat(60), wait: fc.boolean() }) },
    { weight: 3, arbitrary: fc.record({ kind: fc.constant('drop' as const), on: fc.boolean() }) },
    { weight: faults ? 1 : 2, arbitrary: fc.constant({ kind: 'hold' as const }) },
    { weight: faults ? 1 : 2, arbitrary: fc.constant({ kind: 'release' as const }) },
    { weight: 2, arbitrary: fc.record({ kind: fc.constant('crash' as const), downMs: fc.integer({ min: 0, max: 3_000 }) }) },
    { weight: 2, arbitrary: fc.constant({ kind: 'restart' as const }) },
  ]
  if (faults) {
    kinds.push(
      { weight: 3, arbitrary: fc.record({ kind: fc.constant('faults' as const), rate: fc.constantFrom(0, 0.05, 0.2, 0.4) }) },
      { weight: 2, arbitrary: fc.record({ kind: fc.constant('outage' as const), ms: fc.integer({ min: 10, max: 3_000 }) }) },
      { weight: 3, arbitrary: fc.record({ kind: fc.constant('poison' as const), ms: fc.integer({ min: 10, max: 3_000 }) }) },
    )
  }
  // Most steps leave dropping as it is; some switch it on or off first.
  const step = fc
    .tuple(fc.oneof(...kinds), fc.option(fc.boolean(), { nil: undefined, freq: 3 }))
    .map(([s, drop]): Step => (drop === undefined ? s : { ...s, drop }))
  return fc.array(step, { minLength: 5, maxLength: 40, size: 'max' })
}

function setup(faults: boolean): fc.Arbitrary<Setup> {
  return fc.record({
    maxConcurrent: fc.integer({ min: 1, max: 3 }),
    maxValidationMs: fc.option(fc.integer({ min: 1_000, max: 5_000 }), { nil: null, freq: 3 }),
    leaseGraceMs: fc.integer({ min: 0, max: 500 }),
    hooks: fc.boolean(),
    ...(faults
      ? { faults: fc.constant(true), maxAttempts: fc.integer({ min: 1, max: 3 }), writerAttempts: fc.integer({ min: 1, max: 3 }) }
      : {}),
  })
}

describe('last green after crashes and restarts, against storage', () => {
  it('with dropped snapshot writes and held request creations', async () => {
    await fc.assert(
      fc.asyncProperty(setup(false), steps(false), async (cfg, run) => {
        await check(cfg, run)
      }),
      { numRuns: RUNS ?? 200 },
    )
  }, 600_000)

  it('with storage faults, outages and failing final writes too (lost requests and their salvage)', async () => {
    await fc.assert(
      fc.asyncProperty(setup(true), steps(true), async (cfg, run) => {
        await check(cfg, run)
      }),
      { numRuns: RUNS ?? 100 },
    )
  }, 600_000)
})
