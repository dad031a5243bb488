/**
 * The webhook hook: POSTs each notification as JSON, signed with HMAC-SHA256.
 *
 * Request: `POST <url>` with body `{"kind":…,"idempotencyKey":…,"payload":…}` and headers
 * - `content-type: application/json`
 * - `x-stovepipe-signature: sha256=<hex HMAC-SHA256 of the raw body, keyed with the secret>`
 * - `x-stovepipe-idempotency-key: <queue>:<requestId>:<kind>` (the same on every attempt)
 * - `x-stovepipe-kind: verdict | lastGreen`
 *
 * A 2xx answer is a delivery; any other status, a network error or the timeout is a
 * failure the dispatcher retries with backoff. Receivers check the signature with
 * {@link verifyWebhookSignature} on the raw body, and drop repeated idempotency keys.
 *
 * @module
 */
import { redactUrlCredentials } from '../actors/observability.js'
import { createHmac, timingSafeEqual } from 'node:crypto'
import { InvalidInputError, UnavailableError } from '../storage/errors.js'
import type { OutboxKind } from '../storage/types.js'
import { HOOK_NAME_PATTERN } from '../storage/validation.js'
import type { Hook, HookContext, LastGreenPayload, VerdictPayload } from './types.js'

/** Header carrying the body's signature, `sha256=<hex>`. */
export const WEBHOOK_SIGNATURE_HEADER = 'x-stovepipe-signature'
/** Header carrying the notification's idempotency key. */
export const WEBHOOK_IDEMPOTENCY_HEADER = 'x-stovepipe-idempotency-key'
/** Header carrying the notification's kind. */
export const WEBHOOK_KIND_HEADER = 'x-stovepipe-kind'

/** Options of {@link createWebhookHook}. */
export interface WebhookHookOptions {
  /** Where to POST: an `http:` or `https:` URL. */
  url: string
  /** The HMAC-SHA256 key the receiver shares; never logged or sent. */
  secret: string
  /** The hook's name (default `webhook`); unique per runtime and part of the outbox key. */
  name?: string
  /** A request taking longer is aborted and retried later (default 10 000 ms). */
  timeoutMs?: number
  /** The fetch to use (default the global one). */
  fetch?: typeof fetch
}

/** The JSON body a webhook receives. */
export type WebhookBody =
  | { kind: 'verdict'; idempotencyKey: string; payload: VerdictPayload }
  | { kind: 'lastGreen'; idempotencyKey: string; payload: LastGreenPayload }

/** `sha256=<hex>` of a body keyed with a secret: the value of the signature header. */
export function signWebhookBody(body: string | Uint8Array, secret: string): string {
  return `sha256=${createHmac('sha256', secret).update(body).digest('hex')}`
}

/**
 * Checks a webhook's signature header against its raw body (timing-safe). False for a
 * missing, malformed or wrong signature.
 */
export function verifyWebhookSignature(body: string | Uint8Array, header: string | null | undefined, secret: string): boolean {
  if (typeof header !== 'string' || typeof secret !== 'string' || secret.length === 0) return false
  const match = /^sha256=([0-9a-f]{64})$/i.exec(header.trim())
  if (match === null) return false
  const expected = createHmac('sha256', secret).update(body).digest()
  const given = Buffer.from((match[1] as string).toLowerCase(), 'hex')
  return given.length === expected.length && timingSafeEqual(given, expected)
}

function checkUrl(url: unknown): string {
  if (typeof url !== 'string') throw new InvalidInputError('webhook url must be a string')
  let parsed: URL
  try {
    parsed = new URL(url)
  } catch (error) {
    throw new InvalidInputError(`webhook url is not a URL: ${url}`, { cause: error })
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
    throw new InvalidInputError(`webhook url must be http: or https:, got ${parsed.protocol}`)
  }
  // fetch refuses URLs with credentials (every call would fail), and they would end up in logs.
  if (parsed.username !== '' || parsed.password !== '') {
    throw new InvalidInputError(
      'webhook url must not carry a user name or password (fetch refuses such URLs; the receiver authenticates requests by their signature)',
    )
  }
  return parsed.toString()
}

/** Where a URL points, without credentials, path or query (for messages). */
function origin(url: string): string {
  return new URL(url).origin
}

/** A hook POSTing verdicts and last-green moves to `url`, signed with `secret`. */
export function createWebhookHook(options: WebhookHookOptions): Hook {
  const url = checkUrl(options.url)
  const { secret, name = 'webhook', timeoutMs = 10_000 } = options
  if (typeof secret !== 'string' || secret.length === 0) throw new InvalidInputError('webhook secret must be a non-empty string')
  if (typeof name !== 'string' || !HOOK_NAME_PATTERN.test(name)) {
    throw new InvalidInputError(`webhook name must match ${String(HOOK_NAME_PATTERN)}, got ${JSON.stringify(name)}`)
  }
  if (!Number.isSafeInteger(timeoutMs) || timeoutMs < 1) {
    throw new InvalidInputError(`webhook timeoutMs must be a positive integer, got ${String(timeoutMs)}`)
  }
  const doFetch = options.fetch ?? globalThis.fetch
  const where = origin(url)

  const send = async (kind: OutboxKind, payload: VerdictPayload | LastGreenPayload, context: HookContext): Promise<void> => {
    const body = JSON.stringify({ kind, idempotencyKey: context.idempotencyKey, payload })
    const signal = AbortSignal.any([context.signal, AbortSignal.timeout(timeoutMs)])
    let response: Response
    try {
      response = await doFetch(url, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          [WEBHOOK_SIGNATURE_HEADER]: signWebhookBody(body, secret),
          [WEBHOOK_IDEMPOTENCY_HEADER]: context.idempotencyKey,
          [WEBHOOK_KIND_HEADER]: kind,
        },
        body,
        signal,
        redirect: 'error',
      })
    } catch (error) {
      if (context.signal.aborted) throw error
      const why = signal.aborted
        ? `no answer within ${timeoutMs} ms`
        : redactUrlCredentials(error instanceof Error ? error.message : String(error))
      throw new UnavailableError(`webhook ${name} at ${where} failed: ${why}`, { cause: error })
    }
    // Read (and drop) the body, so the connection is released.
    const text = await response.text().catch(() => '')
    if (!response.ok) {
      const detail = text.length === 0 ? '' : `: ${text.slice(0, 200)}`
      throw new UnavailableError(`webhook ${name} at ${where} answered ${response.status}${detail}`)
    }
  }

  return {
    name,
    onVerdict: (payload, context) => send('verdict', payload, context),
    onLastGreen: (payload, context) => send('lastGreen', payload, context),
  }
}
