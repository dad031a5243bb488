/**
 * Detached git worktrees for builds: one directory per request under a worktree root,
 * created at the commit with `git worktree add --detach`, removed with
 * `git worktree remove --force` plus a recursive delete, and swept after a crash. Every git
 * call goes through {@link git} (argument arrays, never a shell).
 *
 * @module
 */
import { chmod, lstat, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { hostname } from 'node:os'
import { basename, dirname, join, resolve } from 'node:path'
import type { Logger } from 'pino'
import { git, GitCommandError } from '../sourcecontrol/git-exec.js'
import { InvalidInputError } from '../storage/errors.js'

/** The name of the default worktree root, inside the repository's git common dir. */
export const WORKTREE_ROOT_NAME = 'stovepipe-worktrees'

/** Names of the per-request directories a builder owns in its worktree root (sanitized runtime request ids). */
export const REQUEST_DIR_PATTERN = /^request-[A-Za-z0-9._-]+$/

/** How long one worktree git command may take (a checkout of a large tree is slow). */
const GIT_WORKTREE_TIMEOUT_MS = 10 * 60_000

/**
 * The directory name of a request's worktree: every run of characters outside
 * `[A-Za-z0-9._-]` becomes `-`, and leading dots and dashes are dropped
 * (`request/main/3` → `request-main-3`).
 */
export function sanitizeRequestId(requestId: string): string {
  const name = requestId
    .replace(/[^A-Za-z0-9._-]+/g, '-')
    .replace(/^[.-]+/, '')
    .slice(0, 200)
  if (name === '') throw new InvalidInputError(`request id ${JSON.stringify(requestId)} gives no usable directory name`)
  return name
}

/** The default worktree root of a repository: `<git common dir>/stovepipe-worktrees`. */
export async function defaultWorktreeRoot(repo: string, signal?: AbortSignal): Promise<string> {
  const { stdout } = await git(repo, ['rev-parse', '--git-common-dir'], signal === undefined ? {} : { signal })
  const commonDir = stdout.trim()
  if (commonDir === '') throw new GitCommandError(`git rev-parse --git-common-dir printed nothing in ${repo}`, 0, '')
  return join(resolve(repo, commonDir), WORKTREE_ROOT_NAME)
}

async function exists(path: string): Promise<boolean> {
  try {
    await lstat(path)
    return true
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return false
    throw error
  }
}

/**
 * Removes a worktree: `git worktree remove --force`, then a recursive delete of whatever is
 * left, then (only when git could not remove it) `git worktree prune` so its registration
 * goes too. Rejects only when the directory could not be deleted.
 */
export async function removeWorktree(repo: string, dir: string, logger?: Logger): Promise<void> {
  let registrationLeft = false
  try {
    // Twice --force: also a worktree git left locked (a crash while it was being added).
    await git(repo, ['worktree', 'remove', '--force', '--force', dir], { timeoutMs: GIT_WORKTREE_TIMEOUT_MS })
  } catch (error) {
    registrationLeft = true
    logger?.debug({ repo, dir, err: error }, 'git worktree remove failed; deleting the directory and pruning')
  }
  await removeTree(dir)
  if (registrationLeft) await pruneRegistrations(repo)
}

/**
 * Deletes a directory tree; when that is refused (a build left read-only directories, as
 * Go's module cache does), makes the tree writable and tries again.
 */
async function removeTree(dir: string): Promise<void> {
  try {
    await rm(dir, { recursive: true, force: true, maxRetries: 3 })
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code
    if (code !== 'EACCES' && code !== 'EPERM') throw error
    await makeWritable(dir)
    await rm(dir, { recursive: true, force: true, maxRetries: 3 })
  }
}

/** Adds owner write and search permission to every directory of a tree (not following links). */
async function makeWritable(dir: string): Promise<void> {
  const stat = await lstat(dir).catch(() => undefined)
  if (stat?.isDirectory() !== true) return
  await chmod(dir, (stat.mode & 0o7777) | 0o700)
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    if (entry.isDirectory()) await makeWritable(join(dir, entry.name))
  }
}

/** Who made a request directory: a process of a host. */
interface Owner {
  pid: number
  host: string
}

/** The owner file of a request directory: `.owner-<name>` beside it (not itself a request directory name). */
function ownerFile(dir: string): string {
  return join(dirname(dir), `.owner-${basename(dir)}`)
}

/** Marks a request directory as this process's (before its worktree is made). */
export async function claimDir(dir: string): Promise<void> {
  const owner: Owner = { pid: process.pid, host: hostname() }
  await writeFile(ownerFile(dir), `${JSON.stringify(owner)}\n`)
}

/** Drops the owner mark of a request directory (after its worktree is gone). */
export async function releaseDir(dir: string): Promise<void> {
  await rm(ownerFile(dir), { force: true })
}

/**
 * True when a request directory belongs to another process that is still running on this
 * host (or to a process of another host, whose liveness cannot be told): the sweep leaves
 * it alone. A directory without an owner mark, or whose owner is gone, is a leftover.
 */
export async function ownedElsewhere(dir: string): Promise<boolean> {
  let owner: Partial<Owner>
  try {
    owner = JSON.parse(await readFile(ownerFile(dir), 'utf8')) as Partial<Owner>
  } catch {
    return false
  }
  if (typeof owner.pid !== 'number' || typeof owner.host !== 'string') return false
  if (owner.host !== hostname()) return true
  if (owner.pid === process.pid) return false
  try {
    process.kill(owner.pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/** Options of {@link addWorktree}. */
export interface AddWorktreeOptions {
  signal?: AbortSignal
  logger?: Logger
}

/**
 * Creates a detached worktree of `repo` at commit `sha` in `dir` (absolute). A leftover
 * directory at `dir` is removed first; `--force` lets git reuse a path still registered
 * from a crashed run.
 */
export async function addWorktree(repo: string, dir: string, sha: string, options: AddWorktreeOptions = {}): Promise<void> {
  if (await exists(dir)) {
    options.logger?.debug({ repo, dir }, 'removing a leftover worktree directory')
    await removeWorktree(repo, dir, options.logger)
  }
  // Twice --force: also over a registration git left locked (a crash while it was being added).
  await git(repo, ['worktree', 'add', '--force', '--force', '--detach', dir, sha], {
    timeoutMs: GIT_WORKTREE_TIMEOUT_MS,
    ...(options.signal === undefined ? {} : { signal: options.signal }),
  })
}

/**
 * The entries of `root` named like request directories ({@link REQUEST_DIR_PATTERN}),
 * sorted: the candidates for the sweep after a crash. Entries with other names are never
 * listed, so a root shared with other files loses nothing else. A missing root has none.
 */
export async function requestDirs(root: string): Promise<string[]> {
  try {
    const names = await readdir(root)
    return names
      .filter((name) => REQUEST_DIR_PATTERN.test(name))
      .sort()
      .map((name) => join(root, name))
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return []
    throw error
  }
}

/** `git worktree prune`: drops the registrations of worktrees whose directory is gone. */
export async function pruneRegistrations(repo: string): Promise<void> {
  await git(repo, ['worktree', 'prune'])
}
