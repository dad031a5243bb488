/**
 * Queue configuration: defaults and validation.
 *
 * @module
 */
import { MAX_TIMER_MS } from '../actors/clock.js'
import type { QueueConfig } from '../machines/queue.js'
import { InvalidInputError } from '../storage/errors.js'
import { assertProject } from '../storage/validation.js'

/** Queue configuration as a caller gives it; omitted fields take their defaults. */
export interface QueueConfigInput {
  /** Repository location (backend-specific). */
  repo?: string
  /** The ref to validate, e.g. `refs/heads/main` or `main`. */
  ref: string
  /** Requests validated at once (default 1). */
  maxConcurrent?: number
  /** Longest validation before it is recorded indeterminate and its build aborted (default 1 hour). */
  maxValidationMs?: number
  /** Grace after a deadline before a slot lease expires (default 60 000 ms). */
  leaseGraceMs?: number
  /** Attempts per step for transient failures (default 3). */
  maxAttempts?: number
  /** Projects validated separately. */
  projects?: string[]
}

export const DEFAULT_QUEUE_CONFIG = { maxConcurrent: 1, maxValidationMs: 3_600_000, leaseGraceMs: 60_000, maxAttempts: 3 } as const

function integer(value: unknown, what: string, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min || value > max) {
    throw new InvalidInputError(`${what} must be an integer from ${min} to ${max}, got ${String(value)}`)
  }
  return value
}

/** Validates a queue configuration and fills in defaults. */
export function normalizeQueueConfig(input: unknown): QueueConfig {
  if (typeof input !== 'object' || input === null || Array.isArray(input)) throw new InvalidInputError('queue config must be an object')
  const raw = input as Record<string, unknown>
  const { ref, repo, projects } = raw
  if (typeof ref !== 'string' || ref.length === 0 || ref.length > 1024)
    throw new InvalidInputError('queue config ref must be a non-empty string')
  if (repo !== undefined && (typeof repo !== 'string' || repo.length === 0))
    throw new InvalidInputError('queue config repo must be a non-empty string')
  const config: QueueConfig = {
    ref,
    maxConcurrent: integer(raw.maxConcurrent ?? DEFAULT_QUEUE_CONFIG.maxConcurrent, 'maxConcurrent', 1, 1000),
    maxValidationMs: integer(raw.maxValidationMs ?? DEFAULT_QUEUE_CONFIG.maxValidationMs, 'maxValidationMs', 1, MAX_TIMER_MS),
    leaseGraceMs: integer(raw.leaseGraceMs ?? DEFAULT_QUEUE_CONFIG.leaseGraceMs, 'leaseGraceMs', 0, MAX_TIMER_MS),
    maxAttempts: integer(raw.maxAttempts ?? DEFAULT_QUEUE_CONFIG.maxAttempts, 'maxAttempts', 1, 100),
  }
  if (typeof repo === 'string') config.repo = repo
  if (projects !== undefined) {
    if (!Array.isArray(projects) || projects.length === 0) throw new InvalidInputError('queue config projects must be a non-empty array')
    for (const project of projects) {
      assertProject(project)
      if (project === '') throw new InvalidInputError('a project name must not be empty ("" is the whole repository)')
    }
    if (new Set(projects).size !== projects.length) throw new InvalidInputError('queue config projects must be distinct')
    config.projects = [...(projects as string[])]
  }
  return config
}
