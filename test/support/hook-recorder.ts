/**
 * A hook for model properties: one hook object per start of the runtime (all named
 * `recorder`), recording every call; calls fail, hang until aborted, or take a while, at
 * seeded random; a call made by a runtime already gone (stopped, crashed) is a violation.
 */
import type { SimulatedClock } from 'xstate'
import { seededRandom } from '../../src/actors/index.js'
import type { Hook, HookContext, LastGreenPayload, VerdictPayload } from '../../src/hooks/index.js'
import type { WorldOptions } from './runtime.js'

/** One call the recorder received. */
export interface RecordedCall {
  kind: 'verdict' | 'lastGreen'
  payload: VerdictPayload | LastGreenPayload
  key: string
  /** Which start of the runtime made it. */
  generation: number
  outcome: 'delivered' | 'failed' | 'hung' | 'pending'
}

/** How calls go: the share that fail, that hang until aborted, and the longest delay of the others. */
export interface HookBehaviour {
  failRate: number
  hangRate: number
  delayMs: number
}

export interface HookRecorder {
  readonly calls: RecordedCall[]
  /** Calls made by a runtime already gone, or with a signal already aborted. */
  readonly violations: string[]
  behaviour: HookBehaviour
  /** The hook for one start of the runtime. */
  hookFor(generation: number): Hook
  /** That start of the runtime is gone: it must make no more calls. */
  gone(generation: number): void
  delivered(): RecordedCall[]
}

export function hookRecorder(clock: SimulatedClock, behaviour: HookBehaviour, seed: number): HookRecorder {
  const random = seededRandom(seed)
  const calls: RecordedCall[] = []
  const violations: string[] = []
  const goneGenerations = new Set<number>()
  const handle =
    (kind: RecordedCall['kind'], generation: number) =>
    async (payload: VerdictPayload | LastGreenPayload, context: HookContext): Promise<void> => {
      const call: RecordedCall = { kind, payload: structuredClone(payload), key: context.idempotencyKey, generation, outcome: 'pending' }
      calls.push(call)
      if (goneGenerations.has(generation)) violations.push(`${call.key} called by runtime ${generation} after it was gone`)
      if (context.signal.aborted) violations.push(`${call.key} called with its signal already aborted`)
      const r = random()
      const { failRate, hangRate, delayMs } = recorder.behaviour
      if (r < hangRate) {
        call.outcome = 'hung'
        await new Promise<void>((_, reject) => {
          context.signal.addEventListener(
            'abort',
            () => {
              reject(new Error('aborted'))
            },
            { once: true },
          )
        })
      }
      if (r < hangRate + failRate) {
        call.outcome = 'failed'
        throw new Error('refused')
      }
      const delay = Math.floor(random() * (delayMs + 1))
      if (delay > 0) await new Promise<void>((resolve) => clock.setTimeout(resolve, delay))
      call.outcome = 'delivered'
    }
  const recorder: HookRecorder = {
    calls,
    violations,
    behaviour,
    hookFor: (generation) => ({ name: 'recorder', onVerdict: handle('verdict', generation), onLastGreen: handle('lastGreen', generation) }),
    gone: (generation) => {
      goneGenerations.add(generation)
    },
    delivered: () => calls.filter((c) => c.outcome === 'delivered'),
  }
  return recorder
}

/** The `world` options that give each start of the runtime the recorder's hook (and tell it when that start is gone). */
export function recorderWorldOptions(hooks: HookRecorder | undefined): Pick<WorldOptions, 'perStart' | 'onGone'> {
  if (hooks === undefined) return {}
  return {
    perStart: (generation: number) => ({ hooks: [hooks.hookFor(generation)] }),
    onGone: (generation: number) => {
      hooks.gone(generation)
    },
  }
}
