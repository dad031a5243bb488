/**
 * A scriptable, in-memory source control for tests and demos: commit graphs per ref,
 * force-pushes, forgotten commits and injected failures. URIs are `fake://<sha>`.
 *
 * @module
 */
import { InvalidInputError, NotFoundError, UnavailableError } from '../storage/errors.js'
import type { Page } from '../storage/types.js'
import type { SourceControl, SourceControlProvider, SourceControlTarget } from './types.js'

const SHA = /^[A-Za-z0-9._-]{1,64}$/
const PREFIX = 'fake://'

/** The fake, usable directly as the runtime's `sourceControl` option. */
export interface FakeSourceControl extends SourceControlProvider {
  /** Adds commit `sha` on `ref` (parents default to the ref's head) and moves the ref to it. Returns its URI. */
  commit(ref: string, sha: string, parents?: readonly string[]): string
  /** Rewrites `ref` to the linear history `shas` (oldest first) and returns the new head's URI. */
  forcePush(ref: string, shas: readonly string[]): string
  /** Forgets a commit, as after garbage collection: its URI becomes unknown. */
  forget(sha: string): void
  /** The next `n` calls fail with `error` (default: a retryable UnavailableError). */
  failNext(n: number, error?: Error): void
  /** The URI of a sha. */
  uri(sha: string): string
  /** Every call made, in order, as `method(args)`. */
  readonly calls: string[]
}

const asError = (error: unknown): Error => (error instanceof Error ? error : new Error(String(error)))

function shaOf(uri: string): string {
  if (!uri.startsWith(PREFIX) || !SHA.test(uri.slice(PREFIX.length))) throw new InvalidInputError(`not a fake:// URI: ${uri}`)
  return uri.slice(PREFIX.length)
}

/** Creates an empty fake source control. */
export function createFakeSourceControl(): FakeSourceControl {
  const parents = new Map<string, string[]>()
  const refs = new Map<string, string>()
  const failures: Error[] = []
  const calls: string[] = []

  const checkSha = (sha: string): void => {
    if (!SHA.test(sha)) throw new InvalidInputError(`a fake sha must match ${String(SHA)}, got ${JSON.stringify(sha)}`)
  }
  const known = (sha: string, uri: string): void => {
    if (!parents.has(sha)) throw new NotFoundError(`commit ${uri} is unknown to source control`)
  }
  const enter = (call: string): void => {
    calls.push(call)
    const failure = failures.shift()
    if (failure !== undefined) throw failure
  }

  const fake: FakeSourceControl = {
    calls,
    uri: (sha) => {
      checkSha(sha)
      return PREFIX + sha
    },
    commit(ref, sha, commitParents) {
      checkSha(sha)
      const head = refs.get(ref)
      const ps = commitParents === undefined ? (head === undefined ? [] : [head]) : [...commitParents]
      for (const p of ps) if (!parents.has(p)) throw new InvalidInputError(`parent ${p} of ${sha} is not a known commit`)
      parents.set(sha, ps)
      refs.set(ref, sha)
      return PREFIX + sha
    },
    forcePush(ref, shas) {
      if (shas.length === 0) throw new InvalidInputError('forcePush needs at least one commit')
      let previous: string | undefined
      for (const sha of shas) {
        checkSha(sha)
        if (!parents.has(sha)) parents.set(sha, previous === undefined ? [] : [previous])
        previous = sha
      }
      refs.set(ref, previous as string)
      return PREFIX + (previous as string)
    },
    forget(sha) {
      parents.delete(sha)
    },
    failNext(n, error) {
      for (let i = 0; i < n; i++) failures.push(error ?? new UnavailableError('injected source-control failure'))
    },
    forQueue(target: SourceControlTarget): SourceControl {
      const { ref } = target
      return {
        latest: () => {
          try {
            enter(`latest(${ref})`)
            const head = refs.get(ref)
            if (head === undefined) throw new NotFoundError(`ref ${ref} does not exist`)
            return Promise.resolve(PREFIX + head)
          } catch (error) {
            return Promise.reject(asError(error))
          }
        },
        isAncestor: (ancestorUri, descendantUri) => {
          try {
            enter(`isAncestor(${ancestorUri}, ${descendantUri})`)
            const ancestor = shaOf(ancestorUri)
            const descendant = shaOf(descendantUri)
            known(ancestor, ancestorUri)
            known(descendant, descendantUri)
            const seen = new Set<string>()
            const stack = [descendant]
            for (let sha = stack.pop(); sha !== undefined; sha = stack.pop()) {
              if (sha === ancestor) return Promise.resolve(true)
              if (seen.has(sha)) continue
              seen.add(sha)
              stack.push(...(parents.get(sha) ?? []))
            }
            return Promise.resolve(false)
          } catch (error) {
            return Promise.reject(asError(error))
          }
        },
        history: (cursor, limit = 100) => {
          try {
            enter(`history(${ref}, ${cursor ?? ''}, ${limit})`)
            let sha = cursor === undefined ? refs.get(ref) : shaOf(cursor)
            if (sha === undefined) throw new NotFoundError(`ref ${ref} does not exist`)
            const items: string[] = []
            while (sha !== undefined && items.length < limit) {
              items.push(PREFIX + sha)
              sha = parents.get(sha)?.[0]
            }
            const page: Page<string> = sha === undefined ? { items } : { items, nextCursor: PREFIX + sha }
            return Promise.resolve(page)
          } catch (error) {
            return Promise.reject(asError(error))
          }
        },
      }
    },
  }
  return fake
}
