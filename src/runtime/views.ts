/**
 * How requests look from outside: the stored row, with the machine's context unpacked.
 *
 * @module
 */
import type { RequestContext, RequestStep, Verdict } from '../machines/request.js'
import type { RequestRecord, RequestState } from '../storage/types.js'

/** A request as the API, CLI and HTTP show it. */
export interface RequestView {
  id: string
  queue: string
  n: number
  uri: string
  state: RequestState
  /** The persisted step, e.g. `processing.building`. */
  step: RequestStep | null
  verdict: Verdict | null
  /** 0 green … 1 fully broken. */
  degree: number | null
  strategy: 'full' | 'incremental' | null
  baseline: string | null
  /** Why the strategy is full although a last green exists. */
  fallback: string | null
  /** Why the verdict is what it is (indeterminate reasons, an existing fact). */
  reason: string | null
  /** Whether this request wrote the commit's fact (false: an earlier one had). */
  factWritten: boolean | null
  supersededBy: string | null
  build: { outcome: 'passed' | 'failed'; projects: Record<string, 'passed' | 'failed'> | null; log: string | null } | null
  createdAt: number
  updatedAt: number
  startedAt: number | null
  deadlineAt: number | null
  endedAt: number | null
  version: number
}

/** Unpacks a stored request row. */
export function describeRequest(row: RequestRecord): RequestView {
  const data = (row.data ?? {}) as { step?: RequestStep; context?: Partial<RequestContext> }
  const c = data.context ?? {}
  return {
    id: row.id,
    queue: row.queue,
    n: c.n ?? Number(row.id.slice(row.id.lastIndexOf('/') + 1)),
    uri: row.uri,
    state: row.state,
    step: data.step ?? null,
    verdict: c.verdict ?? null,
    degree: c.degree ?? null,
    strategy: c.strategy ?? null,
    baseline: c.baseline ?? null,
    fallback: c.fallback ?? null,
    reason: c.reason ?? null,
    factWritten: c.factWritten ?? null,
    supersededBy: c.supersededBy ?? null,
    build: c.build ?? null,
    createdAt: row.createdAt,
    updatedAt: row.updatedAt,
    startedAt: c.startedAt ?? null,
    deadlineAt: c.deadlineAt ?? null,
    endedAt: c.endedAt ?? null,
    version: row.version,
  }
}

/**
 * A copy of `view` that shares no object with it (its only nested members are the build
 * summary and its projects; the rest are strings, numbers and null): views handed to
 * callers are theirs to change, and rows kept from a write share objects with the
 * request's context.
 */
export function copyView(view: RequestView): RequestView {
  const { build } = view
  return {
    ...view,
    build: build === null ? null : { ...build, projects: build.projects === null ? null : { ...build.projects } },
  }
}
