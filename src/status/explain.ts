/**
 * `why`: whether a commit is green in a queue and, if not, why — as data and as one
 * English sentence. Pure: the reader gathers the request, facts and last green; this
 * decides the status and words it.
 *
 * @module
 */
import type { RequestView } from '../runtime/views.js'
import type { Fact } from '../storage/types.js'
import { shortSha } from './sha.js'
import type { CommitStatus, Explanation, LastGreenInfo } from './types.js'

/** What {@link explainCommit} needs: everything storage knows about one commit of one queue. */
export interface CommitEvidence {
  queue: string
  /** The commit's URI, or null when nothing the queue ingested matched. */
  uri: string | null
  /** The commit's sha (from the URI, or as asked). */
  sha: string | null
  /** What the caller asked about, for the sentence when there is no sha. */
  asked: string
  request: RequestView | null
  supersededBy: RequestView | null
  facts: Fact[]
  lastGreen: LastGreenInfo | null
}

/** The status of a commit from its request (or, without one, its whole-repo fact). */
export function commitStatus(request: RequestView | null, facts: readonly Fact[]): CommitStatus {
  if (request !== null) {
    switch (request.state) {
      case 'accepted':
      case 'processing':
        return 'in-flight'
      case 'superseded':
        return 'superseded'
      case 'cancelled':
        return 'cancelled'
      case 'recorded':
        return request.verdict ?? 'indeterminate'
    }
  }
  const whole = facts.find((f) => f.project === '')
  if (whole !== undefined) return whole.degree === 0 ? 'green' : 'red'
  return 'unknown'
}

const strategyOf = (request: RequestView): string =>
  request.strategy === 'incremental' && request.baseline !== null
    ? `incremental since ${shortSha(request.baseline)}`
    : (request.strategy ?? 'strategy unknown')

function buildOutcome(request: RequestView, status: 'green' | 'red'): string {
  const projects = request.build?.projects
  if (projects !== null && projects !== undefined) {
    const names = Object.keys(projects).sort()
    const failed = names.filter((p) => projects[p] === 'failed')
    if (failed.length === 0) return `all ${names.length} projects passed`
    return `${failed.length} of ${names.length} projects failed (${failed.join(', ')})`
  }
  if (request.build === null) return status === 'green' ? 'the commit is green' : 'the commit is red'
  return request.build.outcome === 'passed' ? 'the build passed' : 'the build failed'
}

function lastGreenClause(lastGreen: LastGreenInfo | null, isLastGreen: boolean): string {
  if (isLastGreen) return 'it is the last green.'
  if (lastGreen === null) return 'there is no green commit yet.'
  return `last green is ${shortSha(lastGreen.uri)} (${lastGreen.requestId}).`
}

/** Decides the commit's status and words the explanation. */
export function explainCommit(evidence: CommitEvidence): Explanation {
  const { queue, uri, sha, request, supersededBy, facts, lastGreen, asked } = evidence
  const status = commitStatus(request, facts)
  const isLastGreen = uri !== null && lastGreen !== null && lastGreen.uri === uri
  const name = sha?.slice(0, 7) ?? (uri === null ? asked : shortSha(uri))
  const tail = lastGreenClause(lastGreen, isLastGreen)
  let summary: string
  switch (status) {
    case 'green':
    case 'red': {
      if (request === null) {
        const fact = facts.find((f) => f.project === '')
        summary = `${name} is ${status}: its fact was recorded by ${fact?.requestId ?? 'an earlier request'}; ${tail}`
        break
      }
      const earlier = request.factWritten === false && request.reason !== null ? ` (${request.reason})` : ''
      summary = `${name} is ${status}: ${request.id} built it (${strategyOf(request)}) and ${buildOutcome(request, status)}${earlier}; ${tail}`
      break
    }
    case 'indeterminate': {
      const id = request?.id ?? 'its request'
      const reason = request?.reason ?? 'no reason recorded'
      summary = `${name} is indeterminate: ${id} could not establish whether it is green (${reason}), so it does not count as green; ${tail}`
      break
    }
    case 'in-flight':
      summary = `${name} is still in flight (${request?.step ?? request?.state ?? 'accepted'}) as ${request?.id ?? 'a request'}; ${tail}`
      break
    case 'superseded': {
      const by = supersededBy?.id ?? request?.supersededBy ?? 'a newer head'
      summary = `${name} was superseded by ${by} before it was built; ${tail}`
      break
    }
    case 'cancelled':
      summary = `${name} was cancelled as ${request?.id ?? 'its request'} before a verdict, so nothing is known about it; ${tail}`
      break
    case 'unknown':
      summary = `${name} was never ingested by queue ${queue}; ${tail}`
      break
  }
  return { queue, uri, sha, status, isLastGreen, facts, request, supersededBy, lastGreen, summary }
}
