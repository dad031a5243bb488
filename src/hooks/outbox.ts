/**
 * Turning notifications into outbox entries: the idempotency key, the `outbox.put` ops a
 * write carries (one per hook that wants the kind), and the validation of a hook list.
 *
 * @module
 */
import { InvalidInputError } from '../storage/errors.js'
import type { JsonObject, OutboxKey, OutboxKind, WriteOp } from '../storage/types.js'
import { HOOK_NAME_PATTERN, MAX_OUTBOX_ERROR_BYTES } from '../storage/validation.js'
import type { Hook, LastGreenPayload, VerdictPayload } from './types.js'

/**
 * The idempotency key of a notification: `<queue>:<requestId>:<kind>`, e.g.
 * `main:request/main/3:verdict`. The same for every attempt and every hook.
 */
export function outboxIdempotencyKey(key: Pick<OutboxKey, 'queue' | 'requestId' | 'kind'>): string {
  return `${key.queue}:${key.requestId}:${key.kind}`
}

/** Whether a hook wants notifications of a kind (it has the method). */
export function hookWants(hook: Hook, kind: OutboxKind): boolean {
  return typeof (kind === 'verdict' ? hook.onVerdict : hook.onLastGreen) === 'function'
}

/** Checks a hook list: objects with a valid, unique name and at least one method. Returns a copy. */
export function validateHooks(hooks: unknown): Hook[] {
  if (!Array.isArray(hooks)) throw new InvalidInputError('hooks must be an array')
  const names = new Set<string>()
  return hooks.map((hook: unknown, i) => {
    if (typeof hook !== 'object' || hook === null) throw new InvalidInputError(`hooks[${i}] must be an object`)
    const { name, onVerdict, onLastGreen } = hook as Record<string, unknown>
    if (typeof name !== 'string' || !HOOK_NAME_PATTERN.test(name)) {
      throw new InvalidInputError(
        `hooks[${i}].name must match ${String(HOOK_NAME_PATTERN)}, got ${typeof name === 'string' ? JSON.stringify(name) : String(name)}`,
      )
    }
    if (names.has(name)) throw new InvalidInputError(`two hooks are named ${name}; hook names must be unique`)
    names.add(name)
    for (const [what, method] of [
      ['onVerdict', onVerdict],
      ['onLastGreen', onLastGreen],
    ] as const) {
      if (method !== undefined && typeof method !== 'function') throw new InvalidInputError(`hook ${name}: ${what} must be a function`)
    }
    if (onVerdict === undefined && onLastGreen === undefined) {
      throw new InvalidInputError(`hook ${name} has neither onVerdict nor onLastGreen`)
    }
    return hook as Hook
  })
}

/** Cuts a text to at most `maxBytes` UTF-8 bytes (whole characters), marking the cut. */
export function truncateText(text: string, maxBytes: number = MAX_OUTBOX_ERROR_BYTES): string {
  if (text.length * 3 <= maxBytes || Buffer.byteLength(text, 'utf8') <= maxBytes) return text
  let out = ''
  let bytes = 0
  for (const char of text) {
    const size = Buffer.byteLength(char, 'utf8')
    if (bytes + size > maxBytes - 3) break
    out += char
    bytes += size
  }
  return `${out}…`
}

/**
 * The `outbox.put` ops for one notification: one per hook that wants `kind`, pending and
 * due at `at`. Put them in the same write as the change they report.
 */
export function outboxPuts(hooks: readonly Hook[], kind: 'verdict', payload: VerdictPayload, at: number): WriteOp[]
export function outboxPuts(hooks: readonly Hook[], kind: 'lastGreen', payload: LastGreenPayload, at: number): WriteOp[]
export function outboxPuts(hooks: readonly Hook[], kind: OutboxKind, payload: VerdictPayload | LastGreenPayload, at: number): WriteOp[] {
  const body: JsonObject = { ...payload }
  return hooks
    .filter((hook) => hookWants(hook, kind))
    .map((hook): WriteOp => ({
      op: 'outbox.put',
      entry: {
        queue: payload.queue,
        requestId: payload.requestId,
        kind,
        hook: hook.name,
        payload: body,
        createdAt: at,
        attempts: 0,
        nextAttemptAt: at,
        deliveredAt: null,
        lastError: null,
      },
    }))
}
