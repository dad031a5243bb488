/**
 * The git source control (`stovepipe/sourcecontrol/git`): the git CLI on a local repository,
 * run through `execFile` with argument arrays, never a shell. Commits are named by URIs of
 * the form `git+file://<absolute repo path>#<40-hex sha>`.
 *
 * - `latest()` resolves the ref to a commit (`rev-parse`), after fetching it from a remote
 *   when `fetch` is configured (for a mirror kept up to date by Stovepipe).
 * - `isAncestor()` asks `merge-base --is-ancestor`.
 * - `history()` walks first parents (`rev-list --first-parent`) newest first, in bounded
 *   pages; the cursor pins the commit the next page starts at, so paging is stable while
 *   the ref moves (even through a force-push).
 *
 * Refs are checked as `git check-ref-format` would (plus: no leading `-`), URIs must be
 * this repository's, and `--end-of-options` is passed to every command, so nothing a
 * caller gives can be read as an option or reach outside the repository.
 *
 * @example
 * ```ts
 * import { createStovepipe } from 'stovepipe'
 * import { openSqliteStorage } from 'stovepipe/storage/sqlite'
 * import { createGitSourceControl } from 'stovepipe/sourcecontrol/git'
 *
 * // A bare mirror that follows the upstream's main on every ingest.
 * const sourceControl = createGitSourceControl({
 *   repo: '/srv/stovepipe/app.git',
 *   ref: 'main',
 *   fetch: { remote: 'https://git.example.com/app.git' },
 * })
 * const sp = await createStovepipe({ storage: await openSqliteStorage({ filename: 'stovepipe.db' }), sourceControl, builder })
 * const main = await sp.queue('main', { ref: 'main' })
 * const { id } = await main.ingest() // fetches, then mints a request for the head
 * ```
 *
 * @module
 */
import { realpathSync, statSync } from 'node:fs'
import { realpath } from 'node:fs/promises'
import { normalize, resolve } from 'node:path'
import { MAX_TIMER_MS } from '../actors/clock.js'
import { redactUrlCredentials } from '../actors/observability.js'
import { InvalidInputError, NotFoundError, UnavailableError } from '../storage/errors.js'
import type { Page } from '../storage/types.js'
import { assertRepoPath, assertSha, git, GitCommandError, gitUri, notFoundFor, parseGitUri, type GitResult } from './git-exec.js'
import type { SourceControl, SourceControlProvider, SourceControlTarget } from './types.js'

/** Default page size of {@link GitSourceControl.history}. */
export const GIT_HISTORY_DEFAULT_LIMIT = 100
/** Largest page size of {@link GitSourceControl.history}. */
export const GIT_HISTORY_MAX_LIMIT = 1000

const MAX_REF_LENGTH = 1024
const DEFAULT_TIMEOUT_MS = 60_000
const DEFAULT_FETCH_TIMEOUT_MS = 300_000
const DEFAULT_PROTOCOLS = ['file', 'git', 'http', 'https', 'ssh'] as const
const CURSOR_VERSION = 'v1:'
// eslint-disable-next-line no-control-regex -- rejecting control characters is the point
const CONTROL = /[\u0000-\u001f\u007f]/

/** Keeps the local repository up to date from a remote before each {@link SourceControl.latest}. */
export interface GitFetchOptions {
  /**
   * Where to fetch from: a URL, a path (a relative path is relative to the repository) or
   * the name of a configured remote. Must not start with `-`.
   */
  remote: string
  /** The ref on the remote, full (`refs/heads/main`) or a branch name; default: the source control's ref. */
  ref?: string
  /** Transports fetch may use (git's `GIT_ALLOW_PROTOCOL`); default `file`, `git`, `http`, `https`, `ssh`. */
  allowProtocols?: readonly string[]
  /** Kills a fetch that takes longer (default 300 000 ms). */
  timeoutMs?: number
}

/** Options of {@link createGitSourceControl}. */
export interface GitSourceControlOptions {
  /**
   * The repository: the root of a working tree, or a bare repository (a mirror). A relative
   * path is resolved against the process's working directory; symlinks are resolved, and
   * the real path is what URIs carry.
   */
  repo: string
  /** The ref to follow: a full ref (`refs/heads/main`, `refs/remotes/origin/main`) or a branch name (`main`). */
  ref: string
  /**
   * Fetch `fetch.ref` from `fetch.remote` into `ref` (forced, so rewrites follow) before
   * each `latest()`. The local ref must not be checked out in a working tree: use a bare
   * repository, or a ref that is not a checked-out branch.
   */
  fetch?: GitFetchOptions
  /** Kills a git command (other than fetch) that takes longer (default 60 000 ms). */
  timeoutMs?: number
}

/** A {@link SourceControl} bound to one ref of one git repository. */
export interface GitSourceControl extends SourceControl {
  /** The repository's absolute real path, as URIs carry it. */
  readonly repo: string
  /** The followed ref, as a full ref (`main` becomes `refs/heads/main`). */
  readonly ref: string
  /** The URI of commit `sha` (40 lowercase hex) of this repository. */
  uri(sha: string): string
}

/** Options of {@link createGitSourceControlProvider}. */
export interface GitSourceControlProviderOptions {
  /** Repository of queues whose configuration names none. */
  repo?: string
  /** Fetch options for every queue, or per queue (return `undefined` for no fetch). */
  fetch?: GitFetchOptions | ((target: SourceControlTarget) => GitFetchOptions | undefined)
  /** As {@link GitSourceControlOptions.timeoutMs}. */
  timeoutMs?: number
}

/** Gives each queue a {@link GitSourceControl} on its configured `repo` and `ref`. */
export interface GitSourceControlProvider extends SourceControlProvider {
  forQueue(target: SourceControlTarget): GitSourceControl
}

/** Why `ref` is not a valid ref name (the rules of `git check-ref-format --allow-onelevel`, plus no leading `-`). */
function refFormatProblem(ref: string): string | undefined {
  if (ref.startsWith('-')) return 'it must not start with "-"'
  // eslint-disable-next-line no-control-regex -- rejecting control characters is the point
  if (/[\u0000-\u0020\u007f~^:?*[\\]/.test(ref)) return 'it must not contain control characters, spaces, or any of ~ ^ : ? * [ \\'
  if (ref.includes('..')) return 'it must not contain ".."'
  if (ref.includes('@{')) return 'it must not contain "@{"'
  if (ref === '@') return 'it must not be "@"'
  if (ref.startsWith('/') || ref.endsWith('/') || ref.includes('//')) return 'it must not start or end with "/" or contain "//"'
  if (ref.endsWith('.')) return 'it must not end with "."'
  for (const component of ref.split('/')) {
    if (component.startsWith('.')) return 'no "/"-separated component may start with "."'
    if (component.endsWith('.lock')) return 'no "/"-separated component may end with ".lock"'
  }
  return undefined
}

/**
 * Checks a ref name as `git check-ref-format` would (and rejects a leading `-`), and returns
 * it as a full ref: names starting with `refs/` are full refs, anything else is a branch
 * (`main` → `refs/heads/main`). InvalidInputError otherwise.
 */
export function fullRefName(ref: string): string {
  if (typeof ref !== 'string' || ref === '') throw new InvalidInputError('a git ref must be a non-empty string')
  if (ref.length > MAX_REF_LENGTH) throw new InvalidInputError(`a git ref must be at most ${MAX_REF_LENGTH} characters`)
  const problem = refFormatProblem(ref)
  if (problem !== undefined) throw new InvalidInputError(`invalid git ref ${JSON.stringify(ref)}: ${problem}`)
  if (ref.startsWith('refs/')) return ref
  if (ref === 'HEAD')
    throw new InvalidInputError('"HEAD" is not a branch: name the branch (e.g. main) or give a full ref (refs/heads/main)')
  return `refs/heads/${ref}`
}

function checkRemote(remote: unknown): string {
  if (typeof remote !== 'string' || remote === '') throw new InvalidInputError('fetch.remote must be a non-empty string')
  if (remote.startsWith('-')) throw new InvalidInputError(`fetch.remote must not start with "-": ${JSON.stringify(remote)}`)
  if (CONTROL.test(remote)) throw new InvalidInputError('fetch.remote must not contain control characters')
  return remote
}

function checkTimeout(value: number | undefined, what: string, fallback: number): number {
  if (value === undefined) return fallback
  if (!Number.isSafeInteger(value) || value < 1 || value > MAX_TIMER_MS) {
    throw new InvalidInputError(`${what} must be a positive integer up to ${MAX_TIMER_MS} (ms), got ${String(value)}`)
  }
  return value
}

/** Resolves the repository path synchronously: it must exist and be a directory. */
function resolveRepoDir(repo: unknown): string {
  if (typeof repo !== 'string' || repo === '') throw new InvalidInputError('the git source control needs a repository path (repo)')
  if (CONTROL.test(repo)) throw new InvalidInputError('a repository path must not contain control characters')
  const absolute = resolve(repo)
  let real: string
  try {
    real = realpathSync(absolute)
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code
    if (code === 'ENOENT' || code === 'ENOTDIR') throw new NotFoundError(`git repository ${absolute} does not exist`, { cause: error })
    throw new UnavailableError(`cannot resolve git repository path ${absolute}: ${(error as Error).message}`, { cause: error })
  }
  if (!statSync(real).isDirectory()) throw new InvalidInputError(`git repository ${absolute} is not a directory`)
  assertRepoPath(real)
  return real
}

/** Encodes the opaque history cursor: the commit the next page starts at. */
function encodeCursor(sha: string): string {
  return Buffer.from(CURSOR_VERSION + sha, 'utf8').toString('base64url')
}

function decodeCursor(cursor: unknown): string {
  const bad = (): InvalidInputError => new InvalidInputError(`not a git history cursor: ${JSON.stringify(cursor)}`)
  if (typeof cursor !== 'string' || !/^[A-Za-z0-9_-]{1,200}$/.test(cursor)) throw bad()
  const text = Buffer.from(cursor, 'base64url').toString('utf8')
  if (!text.startsWith(CURSOR_VERSION) || encodeCursor(text.slice(CURSOR_VERSION.length)) !== cursor) throw bad()
  const sha = text.slice(CURSOR_VERSION.length)
  if (!/^[0-9a-f]{40}$/.test(sha)) throw bad()
  return sha
}

function checkLimit(limit: unknown): number {
  if (limit === undefined) return GIT_HISTORY_DEFAULT_LIMIT
  if (typeof limit !== 'number' || !Number.isSafeInteger(limit) || limit < 1 || limit > GIT_HISTORY_MAX_LIMIT) {
    throw new InvalidInputError(
      `history limit must be an integer from 1 to ${GIT_HISTORY_MAX_LIMIT}, got ${typeof limit === 'number' ? String(limit) : typeof limit}`,
    )
  }
  return limit
}

/** Runs tasks one after another (fetches into one repository must not race on its ref locks). */
type Serializer = <T>(task: () => Promise<T>) => Promise<T>

function serializer(): Serializer {
  let tail: Promise<unknown> = Promise.resolve()
  return <T>(task: () => Promise<T>): Promise<T> => {
    const result = tail.then(task)
    // The chain only orders the tasks; each task's error reaches its caller through `result`.
    tail = result.then(
      () => undefined,
      () => undefined,
    )
    return result
  }
}

const asError = (error: unknown): Error => (error instanceof Error ? error : new Error(String(error)))

function create(options: GitSourceControlOptions, serializers: Map<string, Serializer>): GitSourceControl {
  if (typeof (options as unknown) !== 'object' || (options as unknown) === null) {
    throw new InvalidInputError('createGitSourceControl needs options { repo, ref }')
  }
  const ref = fullRefName(options.ref)
  if (options.fetch !== undefined && (typeof (options.fetch as unknown) !== 'object' || (options.fetch as unknown) === null)) {
    throw new InvalidInputError('fetch must be an object { remote, ref? }')
  }
  const timeoutMs = checkTimeout(options.timeoutMs, 'timeoutMs', DEFAULT_TIMEOUT_MS)
  const fetchSpec =
    options.fetch === undefined
      ? undefined
      : {
          remote: checkRemote(options.fetch.remote),
          ref: options.fetch.ref === undefined ? ref : fullRefName(options.fetch.ref),
          protocols: checkProtocols(options.fetch.allowProtocols),
          timeoutMs: checkTimeout(options.fetch.timeoutMs, 'fetch.timeoutMs', DEFAULT_FETCH_TIMEOUT_MS),
        }
  const dir = resolveRepoDir(options.repo)
  const given = normalize(resolve(options.repo))
  let serialize = serializers.get(dir)
  if (serialize === undefined) {
    serialize = serializer()
    serializers.set(dir, serialize)
  }
  const run = (args: readonly string[], allow?: readonly number[]): Promise<GitResult> =>
    git(dir, args, { timeoutMs, ...(allow === undefined ? {} : { allow }) })

  /** Checks once (until it fails) that `dir` is the root of a sha1 git repository. */
  let ready: Promise<void> | undefined
  const checkRepository = async (): Promise<void> => {
    let lines: string[]
    try {
      const out = await run(['rev-parse', '--is-bare-repository', '--is-inside-git-dir', '--absolute-git-dir', '--show-object-format'])
      lines = out.stdout.split('\n')
    } catch (error) {
      if (error instanceof GitCommandError && /not a git repository|dubious ownership/i.test(error.stderr)) {
        throw new InvalidInputError(`${dir} is not a git repository: ${error.stderr.trim()}`, { cause: error })
      }
      throw error
    }
    const [bare, insideGitDir, gitDir = '', format] = lines
    if (format !== 'sha1') throw new InvalidInputError(`${dir} uses object format ${String(format)}; only sha1 repositories are supported`)
    let root: string
    if (bare === 'true') {
      root = gitDir
    } else if (insideGitDir === 'true') {
      throw new InvalidInputError(`${dir} is inside the git directory ${gitDir} of a working tree; give the working tree's root`)
    } else {
      root = (await run(['rev-parse', '--show-toplevel'])).stdout.trim()
    }
    const realRoot = await realpath(root)
    if (realRoot !== dir) throw new InvalidInputError(`${dir} is inside the git repository ${realRoot}, not its root; give ${realRoot}`)
  }
  const whenReady = (): Promise<void> => {
    ready ??= checkRepository().catch((error: unknown) => {
      ready = undefined
      throw asError(error)
    })
    return ready
  }

  const uri = (sha: string): string => gitUri(dir, sha)

  /** The sha of a URI of this repository; InvalidInputError for anything else. */
  const shaOf = (value: string): string => {
    const parsed = parseGitUri(value)
    const repo = normalize(parsed.repo)
    if (repo !== dir && repo !== given) {
      throw new InvalidInputError(`${value} names a commit of ${parsed.repo}, not of this source control's repository ${dir}`)
    }
    return parsed.sha
  }

  const resolveHead = async (): Promise<string> => {
    const out = await run(['rev-parse', '--verify', '--quiet', '--end-of-options', `${ref}^{commit}`], [1])
    if (out.code === 1) throw new NotFoundError(`ref ${ref} does not exist in ${dir} (or does not point to a commit)`)
    const sha = out.stdout.trim()
    assertSha(sha)
    return sha
  }

  const fetchRef = async (spec: NonNullable<typeof fetchSpec>): Promise<void> => {
    const args = [
      'fetch',
      '--quiet',
      '--no-tags',
      '--no-write-fetch-head',
      '--recurse-submodules=no',
      '--end-of-options',
      spec.remote,
      `+${spec.ref}:${ref}`,
    ]
    try {
      await git(dir, args, { timeoutMs: spec.timeoutMs, env: { GIT_ALLOW_PROTOCOL: spec.protocols } })
    } catch (error) {
      if (!(error instanceof GitCommandError)) throw error
      const stderr = redactUrlCredentials(error.stderr.trim())
      const what = `fetching ${spec.ref} from ${redactUrlCredentials(spec.remote)} into ${ref} of ${dir}`
      // Keep the cause (it names the whole command) unless the remote carries credentials.
      const cause = redactUrlCredentials(spec.remote) === spec.remote ? { cause: error } : {}
      if (/refusing to fetch into/i.test(stderr)) {
        throw new InvalidInputError(
          `${what} is refused because ${ref} is checked out in a working tree; use a bare repository (a mirror) or a ref that is not checked out: ${stderr}`,
          cause,
        )
      }
      // The ref is gone upstream (deleted, or never there): not something a retry fixes.
      if (/couldn't find remote ref/i.test(stderr)) throw new NotFoundError(`${what}: the remote has no ${spec.ref}: ${stderr}`, cause)
      throw new UnavailableError(`${what} failed: ${stderr === '' ? `exit code ${String(error.exitCode)}` : stderr}`, cause)
    }
  }

  return {
    repo: dir,
    ref,
    uri,
    async latest() {
      await whenReady()
      if (fetchSpec !== undefined) await serialize(() => fetchRef(fetchSpec))
      return uri(await resolveHead())
    },
    async isAncestor(ancestor, descendant) {
      const a = shaOf(ancestor)
      const d = shaOf(descendant)
      await whenReady()
      try {
        const out = await run(['merge-base', '--is-ancestor', '--end-of-options', a, d], [1])
        return out.code === 0
      } catch (error) {
        const unknown = error instanceof GitCommandError && error.stderr.includes(a) ? ancestor : descendant
        throw notFoundFor(error, `commit ${unknown}`)
      }
    },
    async history(cursor, limit) {
      const size = checkLimit(limit)
      const start = cursor === undefined ? undefined : decodeCursor(cursor)
      await whenReady()
      const from = start ?? (await resolveHead())
      let out: GitResult
      try {
        out = await run(['rev-list', '--first-parent', `--max-count=${size + 1}`, '--end-of-options', from])
      } catch (error) {
        throw notFoundFor(error, `history cursor commit ${from}`)
      }
      const shas = out.stdout.split('\n').filter((line) => line !== '')
      if (shas[0] !== from) throw new NotFoundError(`history cursor commit ${from} is not a commit known to git in ${dir}`)
      const items = shas.slice(0, size).map(uri)
      const next = shas[size]
      const page: Page<string> = next === undefined ? { items } : { items, nextCursor: encodeCursor(next) }
      return page
    },
  }
}

function checkProtocols(protocols: readonly string[] | undefined): string {
  const list = protocols ?? DEFAULT_PROTOCOLS
  if (!Array.isArray(list) || list.length === 0) throw new InvalidInputError('fetch.allowProtocols must be a non-empty array')
  for (const protocol of list) {
    if (typeof protocol !== 'string' || !/^[a-z][a-z0-9+.-]*$/.test(protocol)) {
      throw new InvalidInputError(`fetch.allowProtocols has an invalid protocol name: ${JSON.stringify(protocol)}`)
    }
  }
  return list.join(':')
}

/**
 * A git source control on one ref of one local repository. Checks the options at once
 * (InvalidInputError for a bad ref or remote, NotFoundError for a missing repository
 * directory); that the directory is the root of a git repository is checked on first use
 * (InvalidInputError otherwise).
 *
 * Errors: NotFoundError for a missing ref or an unknown commit; InvalidInputError for a URI
 * of another repository, a bad cursor or limit; a retryable UnavailableError when git
 * fails otherwise (a fetch that fails, a timeout).
 *
 * @example
 * ```ts
 * const sc = createGitSourceControl({ repo: '/path/to/clone', ref: 'main' })
 * const head = await sc.latest()                  // 'git+file:///path/to/clone#3f2a…'
 * const page = await sc.history(undefined, 50)    // newest first
 * const more = page.nextCursor === undefined ? undefined : await sc.history(page.nextCursor, 50)
 * ```
 */
export function createGitSourceControl(options: GitSourceControlOptions): GitSourceControl {
  return create(options, new Map())
}

/**
 * A provider giving each queue a {@link GitSourceControl} on the queue's `repo` (or the
 * provider's `repo`) and `ref`, so one runtime serves several repositories. Fetches into
 * the same repository are serialized.
 *
 * @example
 * ```ts
 * const sp = await createStovepipe({ storage, builder, sourceControl: createGitSourceControlProvider() })
 * await sp.queue('app', { repo: '/srv/git/app', ref: 'main' })
 * await sp.queue('lib', { repo: '/srv/git/lib', ref: 'refs/heads/release' })
 * ```
 */
export function createGitSourceControlProvider(options: GitSourceControlProviderOptions = {}): GitSourceControlProvider {
  const serializers = new Map<string, Serializer>()
  return {
    forQueue(target) {
      const repo = target.repo ?? options.repo
      if (repo === undefined) {
        throw new InvalidInputError(
          `queue ${target.queue} names no repo; the git source control needs one (queue config or provider option)`,
        )
      }
      const fetch = typeof options.fetch === 'function' ? options.fetch(target) : options.fetch
      return create(
        {
          repo,
          ref: target.ref,
          ...(fetch === undefined ? {} : { fetch }),
          ...(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }),
        },
        serializers,
      )
    },
  }
}
