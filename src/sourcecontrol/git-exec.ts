/**
 * Shared plumbing of the git backends (`stovepipe/sourcecontrol/git`, `stovepipe/build/shell`):
 * running the git CLI through `execFile` with argument arrays (never a shell), the
 * `git+file://<absolute repo path>#<40-hex sha>` URI form, and the input checks that keep
 * refs and URIs from being read as options or reaching outside the repository.
 *
 * @module
 */
import { execFile } from 'node:child_process'
import { isAbsolute, normalize } from 'node:path'
import { InvalidInputError, NotFoundError, UnavailableError, type StovepipeErrorOptions } from '../storage/errors.js'

/** The scheme of git URIs. */
export const GIT_URI_PREFIX = 'git+file://'

const SHA = /^[0-9a-f]{40}$/

/** What a git command printed, and how it ended. */
export interface GitResult {
  stdout: string
  stderr: string
  /** The exit code (0 on success). */
  code: number
}

/** Options of {@link git}. */
export interface GitOptions {
  /** Exit codes other than 0 that are answers, not failures (e.g. 1 for `merge-base --is-ancestor`). */
  allow?: readonly number[]
  /** Extra environment (merged over a sanitized copy of the process environment). */
  env?: Record<string, string>
  signal?: AbortSignal
  /** Kills git after this long (default 60 s). */
  timeoutMs?: number
}

/** A git command failed for a reason that is not an answer (spawn failure, timeout, unexpected exit). */
export class GitCommandError extends UnavailableError {
  constructor(
    message: string,
    /** git's exit code, or null when it did not exit (spawn failure, timeout, abort). */
    readonly exitCode: number | null,
    /** What git printed on stderr. */
    readonly stderr: string,
    options: StovepipeErrorOptions = {},
  ) {
    super(message, options)
  }
}

/** The environment git runs with: the process environment without variables that redirect git. */
function gitEnv(extra: Record<string, string> | undefined): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [key, value] of Object.entries(process.env)) {
    if (!key.startsWith('GIT_')) env[key] = value
  }
  return { ...env, GIT_TERMINAL_PROMPT: '0', LC_ALL: 'C', ...extra }
}

/**
 * Runs `git -C <cwd> <args…>` with an argument array (no shell). Resolves with the output
 * when the exit code is 0 or listed in `allow`; rejects with {@link GitCommandError} otherwise.
 */
export function git(cwd: string, args: readonly string[], options: GitOptions = {}): Promise<GitResult> {
  return new Promise((resolve, reject) => {
    execFile(
      'git',
      ['-C', cwd, ...args],
      {
        env: gitEnv(options.env),
        maxBuffer: 64 * 1024 * 1024,
        timeout: options.timeoutMs ?? 60_000,
        ...(options.signal === undefined ? {} : { signal: options.signal }),
        encoding: 'utf8',
      },
      (error, stdout, stderr) => {
        if (error === null) {
          resolve({ stdout, stderr, code: 0 })
          return
        }
        const code = typeof error.code === 'number' ? error.code : null
        if (code !== null && options.allow?.includes(code) === true) {
          resolve({ stdout, stderr, code })
          return
        }
        const what = `git ${args.join(' ')}`
        const detail = stderr.trim() === '' ? error.message : stderr.trim()
        reject(new GitCommandError(`${what} failed in ${cwd}: ${detail}`, code, stderr, { cause: error }))
      },
    )
  })
}

/** Checks a sha is 40 lowercase hex characters. */
export function assertSha(sha: string): void {
  if (!SHA.test(sha)) throw new InvalidInputError(`a git sha must be 40 lowercase hex characters, got ${JSON.stringify(sha)}`)
}

/** Checks a repository path is absolute and has nothing that could be read as an option or a control character. */
export function assertRepoPath(repo: string): void {
  if (typeof repo !== 'string' || repo === '') throw new InvalidInputError('a repository path must be a non-empty string')
  if (!isAbsolute(repo)) throw new InvalidInputError(`a repository path must be absolute, got ${JSON.stringify(repo)}`)
  // eslint-disable-next-line no-control-regex -- rejecting control characters is the point
  if (/[\u0000-\u001f\u007f]/.test(repo)) throw new InvalidInputError(`a repository path must not contain control characters`)
  if (repo.split('/').includes('..')) throw new InvalidInputError(`a repository path must not contain "..": ${JSON.stringify(repo)}`)
}

/** The URI of commit `sha` in the repository at `repo` (an absolute path). */
export function gitUri(repo: string, sha: string): string {
  assertRepoPath(repo)
  assertSha(sha)
  return `${GIT_URI_PREFIX}${normalize(repo)}#${sha}`
}

/** Splits a `git+file://<absolute repo path>#<sha>` URI; InvalidInputError for anything else. */
export function parseGitUri(uri: string): { repo: string; sha: string } {
  if (typeof uri !== 'string' || !uri.startsWith(GIT_URI_PREFIX)) {
    throw new InvalidInputError(`not a git URI (expected ${GIT_URI_PREFIX}<absolute path>#<sha>): ${JSON.stringify(uri)}`)
  }
  const rest = uri.slice(GIT_URI_PREFIX.length)
  const hash = rest.lastIndexOf('#')
  if (hash < 0) throw new InvalidInputError(`a git URI must end with #<sha>: ${JSON.stringify(uri)}`)
  const repo = rest.slice(0, hash)
  const sha = rest.slice(hash + 1)
  assertRepoPath(repo)
  assertSha(sha)
  return { repo, sha }
}

/** Translates "unknown revision" answers of git into NotFoundError, and passes everything else through. */
export function notFoundFor(error: unknown, what: string): unknown {
  if (
    error instanceof GitCommandError &&
    /unknown revision|bad revision|not a valid object|not a valid commit name|not a commit|Needed a single revision|bad object/i.test(
      error.stderr,
    )
  ) {
    return new NotFoundError(`${what} is unknown to git`, { cause: error })
  }
  return error
}
