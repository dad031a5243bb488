/**
 * Detached git worktrees for builds: one directory per request under a worktree root,
 * created at the commit with `git worktree add --detach`, removed with
 * `git worktree remove --force` plus a recursive delete, and swept after a crash. Every git
 * call goes through {@link git} (argument arrays, never a shell).
 *
 * @module
 */
import { lstat, readdir, rm } from 'node:fs/promises'
import { join, resolve } from 'node:path'
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
    await git(repo, ['worktree', 'remove', '--force', dir], { timeoutMs: GIT_WORKTREE_TIMEOUT_MS })
  } catch (error) {
    registrationLeft = true
    logger?.debug({ repo, dir, err: error }, 'git worktree remove failed; deleting the directory and pruning')
  }
  await rm(dir, { recursive: true, force: true, maxRetries: 3 })
  if (registrationLeft) await pruneRegistrations(repo)
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
  await git(repo, ['worktree', 'add', '--force', '--detach', dir, sha], {
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
