/**
 * Commit shas inside URIs, for people: the read model shows `abc1234`, not a whole URI.
 * URIs stay opaque everywhere else; this only recognizes the two forms Stovepipe mints
 * (`git+file://<repo>#<sha>` and the fake's `fake://<sha>`) and anything ending in `#<sha>`.
 *
 * @module
 */

/** Characters a sha may have (git's hex, and the fake source control's names). */
const SHA = /^[A-Za-z0-9._-]{1,64}$/
/** A sha prefix long enough to look up: 7 to 64 hex characters (SHA-1 or SHA-256 object names). */
const HEX_PREFIX = /^[0-9a-f]{7,64}$/i

/**
 * The sha of a commit URI: what follows the last `#` (git URIs), or what follows `://` when
 * the URI has no `#` (fake URIs). Undefined when the URI has neither form.
 */
export function shaOf(uri: string): string | undefined {
  const hash = uri.lastIndexOf('#')
  if (hash >= 0) {
    const sha = uri.slice(hash + 1)
    return SHA.test(sha) ? sha : undefined
  }
  const scheme = uri.indexOf('://')
  if (scheme < 0) return undefined
  const sha = uri.slice(scheme + 3)
  return SHA.test(sha) ? sha : undefined
}

/** The first 7 characters of a URI's sha, or the whole URI when it has no sha. */
export function shortSha(uri: string): string {
  return shaOf(uri)?.slice(0, 7) ?? uri
}

/** True when `input` is a sha prefix long enough to look up (7 to 64 hex characters). */
export function isShaPrefix(input: string): boolean {
  return HEX_PREFIX.test(input)
}

/**
 * Whether the commit `uri` is what `commit` names: the same URI, the same sha, or (for 7
 * or more hex characters) a prefix of its sha, compared without regard to case.
 */
export function matchesCommit(uri: string, commit: string): boolean {
  if (uri === commit) return true
  const sha = shaOf(uri)
  if (sha === undefined) return false
  if (sha === commit) return true
  return isShaPrefix(commit) && sha.toLowerCase().startsWith(commit.toLowerCase())
}
