/** Hooks for tests: an in-memory hook that records its calls and fails on demand, and a log sink. */
import { Writable } from 'node:stream'
import { pino, type Logger } from 'pino'
import type { Clock } from '../../src/actors/clock.js'
import type { Hook, HookContext, LastGreenPayload, VerdictPayload } from '../../src/hooks/index.js'

/** One call a recording hook received. */
export interface HookCall {
  kind: 'verdict' | 'lastGreen'
  payload: VerdictPayload | LastGreenPayload
  idempotencyKey: string
  attempt: number
  /** Clock time of the call. */
  at: number
  signal: AbortSignal
  outcome: 'delivered' | 'failed' | 'pending'
}

/** A hook that records every call; `failFirst` calls fail, `hang` keeps calls pending until aborted. */
export interface RecordingHook extends Hook {
  readonly calls: HookCall[]
  /** Calls that resolved. */
  delivered(): HookCall[]
  /** How many of the next calls fail. */
  failNext: number
  /** While true, calls never resolve (until their signal aborts). */
  hang: boolean
}

export function recordingHook(
  clock: Clock,
  options: { name?: string; failFirst?: number; kinds?: readonly ('verdict' | 'lastGreen')[] } = {},
): RecordingHook {
  const calls: HookCall[] = []
  const kinds = options.kinds ?? ['verdict', 'lastGreen']
  const hook: RecordingHook = {
    name: options.name ?? 'recorder',
    calls,
    failNext: options.failFirst ?? 0,
    hang: false,
    delivered: () => calls.filter((c) => c.outcome === 'delivered'),
  }
  const handle = (kind: 'verdict' | 'lastGreen') => async (payload: VerdictPayload | LastGreenPayload, context: HookContext) => {
    const call: HookCall = { kind, payload, ...context, at: clock.now(), outcome: 'pending' }
    calls.push(call)
    if (hook.hang) {
      await new Promise<void>((_, reject) => {
        context.signal.addEventListener('abort', () => {
          reject(new Error('aborted'))
        })
      })
    }
    if (hook.failNext > 0) {
      hook.failNext--
      call.outcome = 'failed'
      throw new Error(`refused call ${calls.length}`)
    }
    call.outcome = 'delivered'
  }
  if (kinds.includes('verdict')) hook.onVerdict = handle('verdict')
  if (kinds.includes('lastGreen')) hook.onLastGreen = handle('lastGreen')
  return hook
}

/** A pino logger whose JSON lines land in `lines`. */
export function capturingLogger(level: pino.Level = 'warn'): { logger: Logger; lines: () => { level: number; msg: string }[] } {
  const chunks: string[] = []
  const stream = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      chunks.push(chunk.toString('utf8'))
      callback()
    },
  })
  const logger = pino({ level }, stream)
  return {
    logger,
    lines: () =>
      chunks
        .join('')
        .split('\n')
        .filter((line) => line.length > 0)
        .map((line) => JSON.parse(line) as { level: number; msg: string }),
  }
}
