/**
 * Throwaway git repositories for tests: a real repository in its own temporary directory,
 * with helpers to commit, branch, merge and rewrite history (as a force-push would).
 *
 * Every git command runs with an argument array (no shell), isolated from the user's and
 * the system's git configuration (`GIT_CONFIG_GLOBAL=/dev/null`, `GIT_CONFIG_NOSYSTEM=1`),
 * with `user.name`/`user.email` configured locally in the repository. Commit dates come
 * from a per-repository counter, so every commit gets a distinct sha even when message,
 * tree and parent repeat (e.g. after a rewrite), and runs are reproducible.
 *
 * @example
 * ```ts
 * const repo = await createTempRepo()
 * const a = await repo.commit('first', { 'README.md': 'hello\n' })
 * await repo.checkout('feature', { create: true })
 * const f = await repo.commit('feature work')
 * await repo.checkout('main')
 * const m = await repo.merge('feature') // a merge commit (--no-ff)
 * await repo.forcePush('main', a)       // rewrite: main is back at `a`
 * repo.uri(m)                           // 'git+file:///tmp/…#<sha>'
 * repo.remove()
 * ```
 *
 * @module
 */
import { execFile } from 'node:child_process'
import { mkdirSync, mkdtempSync, realpathSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'

/** Options of {@link createTempRepo}. */
export interface TempRepoOptions {
  /** A bare repository (no working tree; `commit`, `checkout` and `merge` are unavailable). Default false. */
  bare?: boolean
  /** The initial branch (default `main`). */
  branch?: string
  /** Prefix of the temporary directory's name (default `stovepipe-git-`). */
  prefix?: string
}

/** A temporary git repository; see {@link createTempRepo}. */
export interface TempRepo {
  /** The repository's absolute real path (its working tree, or the git directory when bare). */
  readonly dir: string
  readonly bare: boolean
  /** Runs `git <args…>` in the repository and resolves with its stdout (not trimmed); rejects with git's stderr. */
  git(args: readonly string[], options?: { input?: string; env?: Record<string, string> }): Promise<string>
  /**
   * Commits on the checked-out branch and returns the new commit's 40-hex sha. `files` maps
   * paths (relative to the working tree) to contents; `null` deletes the file. With no
   * files the commit is empty (same tree as its parent).
   */
  commit(message: string, files?: Record<string, string | null>): Promise<string>
  /**
   * Appends `count` empty commits to `ref` (default: the checked-out branch) in one
   * `git fast-import` run; fast for long histories. Returns their shas, oldest first.
   * Works in bare repositories too.
   */
  commits(count: number, options?: { ref?: string; prefix?: string }): Promise<string[]>
  /** The sha of `rev` (default `HEAD`), peeled to a commit. */
  head(rev?: string): Promise<string>
  /** The checked-out branch's short name. */
  currentBranch(): Promise<string>
  /** Creates branch `name` at `from` (default `HEAD`) without switching to it. */
  branch(name: string, from?: string): Promise<void>
  /** Switches to branch `name`; with `create`, creates it first at `from` (default `HEAD`). */
  checkout(name: string, options?: { create?: boolean; from?: string }): Promise<void>
  /** Merges `branch` into the checked-out branch with a merge commit (`--no-ff`); returns the merge's sha. */
  merge(branch: string, message?: string): Promise<string>
  /**
   * Moves `ref` (a branch name or a full ref) to `sha` unconditionally, as a force-push
   * would. When it is the checked-out branch the working tree follows (`reset --hard`),
   * so the next {@link TempRepo.commit} builds on `sha`.
   */
  forcePush(ref: string, sha: string): Promise<void>
  /** Deletes `ref` (a branch name or a full ref). */
  deleteRef(ref: string): Promise<void>
  /** The `git+file://<dir>#<sha>` URI of a commit of this repository. */
  uri(sha: string): string
  /** Deletes the repository and its temporary directory. */
  remove(): void
}

const BASE_TIME = 1_700_000_000

/** The environment of the helper's git commands: no inherited GIT_* variables, no user or system config. */
function isolatedEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [key, value] of Object.entries(process.env)) if (!key.startsWith('GIT_')) env[key] = value
  return { ...env, GIT_CONFIG_GLOBAL: '/dev/null', GIT_CONFIG_NOSYSTEM: '1', GIT_TERMINAL_PROMPT: '0', LC_ALL: 'C', ...extra }
}

function runGit(cwd: string, args: readonly string[], options: { input?: string; env?: Record<string, string> } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    // git may exit without reading its input (an error, or no input wanted): a broken pipe
    // then only matters when git reports success.
    let stdinError: Error | undefined
    const child = execFile(
      'git',
      [...args],
      { cwd, env: isolatedEnv(options.env), encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 },
      (error, stdout, stderr) => {
        if (error !== null) reject(new Error(`git ${args.join(' ')} failed in ${cwd}: ${stderr.trim() || error.message}`, { cause: error }))
        else if (stdinError !== undefined)
          reject(new Error(`git ${args.join(' ')} in ${cwd} did not take its input`, { cause: stdinError }))
        else resolve(stdout)
      },
    )
    child.stdin?.on('error', (error) => {
      stdinError = error
    })
    if (options.input === undefined) child.stdin?.end()
    else child.stdin?.end(options.input)
  })
}

const fullRef = (ref: string): string => (ref.startsWith('refs/') ? ref : `refs/heads/${ref}`)

/** Creates a repository (`git init -b <branch>`) in a new temporary directory. */
export async function createTempRepo(options: TempRepoOptions = {}): Promise<TempRepo> {
  const bare = options.bare ?? false
  const dir = realpathSync(mkdtempSync(join(tmpdir(), options.prefix ?? 'stovepipe-git-')))
  let tick = 0
  const stamp = (): Record<string, string> => {
    tick++
    const date = `@${BASE_TIME + tick} +0000`
    return { GIT_AUTHOR_DATE: date, GIT_COMMITTER_DATE: date }
  }
  const git = (args: readonly string[], opts: { input?: string; env?: Record<string, string> } = {}): Promise<string> =>
    runGit(dir, args, opts)
  const needWorkTree = (what: string): void => {
    if (bare) throw new Error(`${what} needs a working tree; ${dir} is a bare repository`)
  }

  try {
    await git(['init', '--quiet', ...(bare ? ['--bare'] : []), '-b', options.branch ?? 'main'])
    await git(['config', 'user.name', 'Stovepipe Test'])
    await git(['config', 'user.email', 'test@stovepipe.invalid'])
    await git(['config', 'commit.gpgsign', 'false'])
    await git(['config', 'gc.auto', '0'])
  } catch (error) {
    rmSync(dir, { recursive: true, force: true })
    throw error
  }

  const repo: TempRepo = {
    dir,
    bare,
    git,
    async commit(message, files = {}) {
      needWorkTree('commit')
      for (const [path, content] of Object.entries(files)) {
        const file = join(dir, path)
        if (content === null) {
          rmSync(file, { force: true })
        } else {
          mkdirSync(dirname(file), { recursive: true })
          writeFileSync(file, content)
        }
      }
      if (Object.keys(files).length > 0) await git(['add', '--all'])
      await git(['commit', '--quiet', '--allow-empty', '--no-verify', '-m', message], { env: stamp() })
      return repo.head()
    },
    async commits(count, opts = {}) {
      if (!Number.isSafeInteger(count) || count < 1) throw new Error(`commits(count) needs a positive integer, got ${count}`)
      const ref = fullRef(opts.ref ?? (await repo.currentBranch()))
      const prefix = opts.prefix ?? 'commit'
      const parent = (await git(['rev-parse', '--verify', '--quiet', `${ref}^{commit}`]).catch(() => '')).trim()
      const lines: string[] = []
      for (let i = 1; i <= count; i++) {
        tick++
        const message = `${prefix} ${i}\n`
        lines.push(`commit ${ref}`, `mark :${i}`, `committer Stovepipe Test <test@stovepipe.invalid> ${BASE_TIME + tick} +0000`)
        lines.push(`data ${Buffer.byteLength(message)}`, message.slice(0, -1))
        if (i === 1 && parent !== '') lines.push(`from ${parent}`)
        lines.push('')
      }
      await git(['fast-import', '--quiet'], { input: lines.join('\n') + '\n' })
      const shas = (await git(['rev-list', '--first-parent', `--max-count=${count}`, ref])).trim().split('\n')
      return shas.reverse()
    },
    async head(rev = 'HEAD') {
      return (await git(['rev-parse', '--verify', `${rev}^{commit}`])).trim()
    },
    async currentBranch() {
      return (await git(['symbolic-ref', '--short', 'HEAD'])).trim()
    },
    async branch(name, from = 'HEAD') {
      await git(['branch', name, from])
    },
    async checkout(name, opts = {}) {
      needWorkTree('checkout')
      if (opts.create === true) await git(['checkout', '--quiet', '-b', name, opts.from ?? 'HEAD'])
      else await git(['checkout', '--quiet', name])
    },
    async merge(branch, message = `Merge ${branch}`) {
      needWorkTree('merge')
      await git(['merge', '--quiet', '--no-ff', '--no-verify', '-m', message, branch], { env: stamp() })
      return repo.head()
    },
    async forcePush(ref, sha) {
      const full = fullRef(ref)
      const current = bare ? '' : (await git(['symbolic-ref', '--quiet', 'HEAD']).catch(() => '')).trim()
      if (current === full) await git(['reset', '--quiet', '--hard', sha])
      else await git(['update-ref', full, sha])
    },
    async deleteRef(ref) {
      await git(['update-ref', '-d', fullRef(ref)])
    },
    uri(sha) {
      return `git+file://${dir}#${sha}`
    },
    remove() {
      rmSync(dir, { recursive: true, force: true })
    },
  }
  return repo
}
