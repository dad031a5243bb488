/**
 * A builder written in plain JavaScript can resolve anything. Only a result with an outcome
 * of passed, failed or error is a verdict: anything else is retried like an infrastructure
 * failure, then recorded indeterminate, with no fact, no unhandled rejection and no request
 * left hanging until its deadline.
 */
import { afterEach, beforeEach, expect, it } from 'vitest'
import { SimulatedClock } from 'xstate'
import type { BuildRunner } from '../../src/build/types.js'
import { createStovepipe } from '../../src/index.js'
import { createFakeSourceControl } from '../../src/sourcecontrol/fake.js'
import { createMemoryStorage } from '../../src/storage/memory/index.js'
import { driveUntil, track } from '../support/drive.js'

const unhandled: unknown[] = []
const onUnhandled = (error: unknown): void => {
  unhandled.push(error)
}
beforeEach(() => {
  unhandled.length = 0
  process.on('unhandledRejection', onUnhandled)
})
afterEach(() => {
  process.off('unhandledRejection', onUnhandled)
})

const builders: [string, BuildRunner['run']][] = [
  ['resolves undefined', () => Promise.resolve(undefined as never)],
  ['resolves null', () => Promise.resolve(null as never)],
  ['resolves a string', () => Promise.resolve('passed' as never)],
  ['resolves an outcome that is not passed, failed or error', () => Promise.resolve({ outcome: 'bogus' } as never)],
  ['resolves a log that is not a string', () => Promise.resolve({ outcome: 'error', log: 42 } as never)],
  ['resolves projects that are not results', () => Promise.resolve({ outcome: 'passed', projects: { api: 'maybe' } } as never)],
  [
    'throws instead of rejecting',
    () => {
      throw new Error('no build today')
    },
  ],
]

for (const [name, run] of builders) {
  it(`a builder whose run() ${name} ends indeterminate after its retries, with no fact`, async () => {
    const clock = new SimulatedClock()
    clock.set(1_700_000_000_000)
    const sourceControl = createFakeSourceControl()
    sourceControl.commit('main', 'a1')
    const storage = createMemoryStorage()
    const builder: BuildRunner = { run }
    const sp = await createStovepipe({ storage, sourceControl, builder, clock, retry: { baseDelayMs: 10, maxDelayMs: 10 } })
    try {
      const main = await sp.queue('main', { ref: 'main', maxAttempts: 3 }) // maxValidationMs: 1 h by default
      const { id } = await main.ingest()
      const view = track(main.waitFor(id))
      await driveUntil(clock, () => view.settled || clock.now() > 1_700_000_060_000, { stepMs: 100 })
      expect(view.settled).toBe(true)
      const request = await sp.request(id)
      expect(request).toMatchObject({ state: 'recorded', verdict: 'indeterminate' })
      expect(request.reason).toMatch(name.startsWith('throws') ? /no build today/ : /the builder gave no valid result for fake:\/\/a1/)
      expect(await storage.facts.listByUri('main', 'fake://a1')).toEqual([])
      expect(unhandled).toEqual([])
    } finally {
      await sp.stop()
    }
  })
}

it('a builder whose run() returns a result instead of a promise is taken at its word', async () => {
  const clock = new SimulatedClock()
  clock.set(1_700_000_000_000)
  const sourceControl = createFakeSourceControl()
  sourceControl.commit('main', 'a1')
  const builder: BuildRunner = { run: () => ({ outcome: 'failed', log: 'sync' }) as never }
  const sp = await createStovepipe({ storage: createMemoryStorage(), sourceControl, builder, clock })
  try {
    const main = await sp.queue('main', { ref: 'main' })
    const { id } = await main.ingest()
    const view = track(main.waitFor(id))
    await driveUntil(clock, () => view.settled, { stepMs: 100 })
    expect(await sp.request(id)).toMatchObject({ state: 'recorded', verdict: 'red' })
    expect(unhandled).toEqual([])
  } finally {
    await sp.stop()
  }
})
