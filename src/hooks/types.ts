/**
 * Hooks: code told about verdicts and last-green moves, at least once, from a persisted
 * outbox. Every notification carries an idempotency key, the same on every attempt, so a
 * receiver can drop the duplicates that at-least-once delivery allows.
 *
 * @module
 */
import type { Verdict } from '../machines/request.js'

/** What `onVerdict` receives: a request was recorded (plain JSON). */
export type VerdictPayload = {
  queue: string
  requestId: string
  /** The commit's URI. */
  uri: string
  verdict: Verdict
  /** 0 green … 1 fully broken; null when indeterminate. */
  degree: number | null
  /** Why the verdict is what it is (indeterminate reasons, an existing fact), or null. */
  reason: string | null
  /** When the verdict was recorded (epoch ms). */
  at: number
}

/** A queue's last green, as hooks see it. */
export type LastGreenRef = {
  uri: string
  requestId: string
  at: number
}

/** What `onLastGreen` receives: a queue's last green moved forward (plain JSON). */
export type LastGreenPayload = {
  queue: string
  /** The new last green's request. */
  requestId: string
  /** The new last green's URI. */
  uri: string
  /** The last green before this move, as last notified; null when there was none. */
  previous: LastGreenRef | null
  /** When the new last green's verdict was recorded (epoch ms). */
  at: number
}

/** What a hook call gets besides the payload. */
export interface HookContext {
  /** Aborted when the runtime stops or the call times out; stop work and reject. */
  signal: AbortSignal
  /** `<queue>:<requestId>:<kind>`: the same on every attempt of one notification. */
  idempotencyKey: string
  /** 1 for the first attempt, 2 for the first retry, … */
  attempt: number
}

/**
 * A hook. Either method may be omitted. A call that resolves counts as delivered; one that
 * rejects (or throws, or times out) is retried later with backoff, across restarts.
 */
export interface Hook {
  /** Unique among the runtime's hooks; `^[A-Za-z0-9._-]{1,128}$`. Part of the outbox key: keep it stable. */
  readonly name: string
  /** A request was recorded green, red or indeterminate. */
  onVerdict?: (payload: VerdictPayload, context: HookContext) => Promise<void>
  /** A queue's last green moved forward. */
  onLastGreen?: (payload: LastGreenPayload, context: HookContext) => Promise<void>
}

/** Retry policy and limits of hook delivery. */
export interface HookRetryOptions {
  /** Backoff ceiling after the first failed attempt, doubled after each (default 1000 ms). */
  baseDelayMs?: number
  /** Largest backoff ceiling (default 300 000 ms: 5 minutes). */
  maxDelayMs?: number
  /**
   * Attempts before a notification is given up (its `lastError` says so, an error is
   * logged, and it is never due again). Default: unlimited (`Infinity`).
   */
  maxAttempts?: number
  /** A hook call taking longer is aborted and counts as failed (default 60 000 ms). */
  timeoutMs?: number
  /** Hook calls under way at once, at most (default 8). */
  concurrency?: number
}
