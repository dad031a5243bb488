/**
 * `stovepipe/build/shell`: the real builder. Runs the user's build command with
 * `/bin/sh -c` in a detached git worktree at the commit, decides `passed`/`failed` by the
 * exit code, and keeps the last 64 KiB of output as the build's log.
 *
 * - The command text comes from the user's configuration, never from repository data; it
 *   is the one place a shell is used. Every git call is an argument array.
 * - The worktree is `<root>/<sanitized request id>` (`request/main/3` → `request-main-3`),
 *   created with `git worktree add --detach` and removed (`git worktree remove --force`
 *   and a recursive delete) before the build resolves. The default root is
 *   `<git common dir>/stovepipe-worktrees`. Before the first build of each repository the
 *   builder sweeps what a crashed run left in its root and runs `git worktree prune`.
 * - The command leads its own session and process group; cancel, deadline (the request's
 *   `AbortSignal`) and `timeoutMs` kill the whole group, and on Linux the processes of the
 *   session that made a group of their own (SIGTERM, then SIGKILL after `killGraceMs`).
 *   Processes the command leaves behind after it exits are killed too. A process that
 *   starts a session of its own (`setsid`) is beyond reach.
 * - `error` (infrastructure, retried by the runtime) is never a verdict on the commit: a
 *   URI that is not a git URI, a worktree that could not be made (unknown commit, git
 *   failure), a shell that could not start, a process killed by a signal Stovepipe did
 *   not send, an abort, a timeout.
 *
 * Builders may share a worktree root, in one process or several (two `stovepipe run` on
 * one clone): each request directory has an owner mark (`.owner-<name>`: process id and
 * host), and the sweep removes only directories no builder of this process is using whose
 * owner is gone (or unknown). A directory the sweep cannot delete is logged and left.
 *
 * @module
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import { mkdir } from 'node:fs/promises'
import { isAbsolute, join, normalize } from 'node:path'
import type { Logger } from 'pino'
import { MAX_TIMER_MS, systemClock, type Clock } from '../actors/clock.js'
import { silentLogger } from '../actors/observability.js'
import { parseGitUri } from '../sourcecontrol/git-exec.js'
import { InvalidInputError } from '../storage/errors.js'
import { LOG_TAIL_BYTES, LogTail } from './log-tail.js'
import type { BuildRequest, BuildResult, BuildRunner } from './types.js'
import {
  addWorktree,
  claimDir,
  defaultWorktreeRoot,
  ownedElsewhere,
  pruneRegistrations,
  releaseDir,
  removeWorktree,
  requestDirs,
  sanitizeRequestId,
} from './worktree.js'

/**
 * The processes of session `sid` (the build's: its command leads a session of its own)
 * outside the process group `sid`, not yet dead: those that left the build's group but not
 * its session, as coreutils `timeout` does. Read from `/proc` (Linux); none elsewhere. A
 * process that starts a session of its own (`setsid`) is beyond reach.
 */
function sessionStragglers(sid: number): number[] {
  let names: string[]
  try {
    names = readdirSync('/proc')
  } catch {
    return []
  }
  const found: number[] = []
  for (const name of names) {
    if (!/^[0-9]+$/.test(name)) continue
    let stat: string
    try {
      stat = readFileSync(`/proc/${name}/stat`, 'utf8')
    } catch {
      continue // gone meanwhile
    }
    // `pid (comm) state ppid pgrp session …`; comm may hold spaces and parentheses.
    const [state, , pgrp, session] = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    if (Number(session) === sid && Number(pgrp) !== sid && state !== 'Z' && state !== 'X') found.push(Number(name))
  }
  return found
}

/**
 * Per-directory chains, for every builder of this process: whatever touches a worktree
 * directory (a build, a sweep) runs alone, and a sweep skips a directory some builder holds.
 */
const locks = new Map<string, Promise<void>>()

/** Options of {@link createShellBuilder}. */
export interface ShellBuilderOptions {
  /**
   * The build: a command line run by `/bin/sh -c` in the worktree. Exit 0 passes. When
   * `projects` are given too, it runs first (a setup step or whole-repo check): if it
   * fails, the build fails and no project runs. Required unless `projects` are given.
   */
  command?: string
  /** Per-project commands, run one after another in the same worktree with `STOVEPIPE_PROJECT` set. */
  projects?: Record<string, string>
  /** Extra environment for the commands (over the process environment, under the `STOVEPIPE_*` variables). */
  env?: Record<string, string>
  /** Kills the build after this long (the whole build, worktree included): outcome `error`, `timed out after N ms`. Default: none. */
  timeoutMs?: number
  /** Wait between SIGTERM and SIGKILL when the build's process group is killed (default 5000 ms). */
  killGraceMs?: number
  /**
   * Where worktrees go, an absolute path (default: `stovepipe-worktrees` inside the
   * repository's git common dir). Entries named `request-…` in it belong to the builder
   * and are deleted when they are not in use.
   */
  worktreeRoot?: string
  /** Progress at debug level, cleanup trouble at warn (default: silent). */
  logger?: Logger
  /** Clock for `timeoutMs` and `killGraceMs` (default: the real clock; processes run in real time). */
  clock?: Clock
}

/** The shell builder. */
export interface ShellBuilder extends BuildRunner {
  /**
   * Sweeps what a crashed run left for `repo` (an absolute path): removes the request
   * directories in the worktree root that no build of this builder is using, then runs
   * `git worktree prune`. `run` does this once per repository before its first build.
   */
  prune(repo: string): Promise<{ removed: string[] }>
  /** Builds running now. */
  running(): number
}

/** The `/bin/sh` the commands run with. */
const SHELL = '/bin/sh'

/** Git variables that would point the build's own git commands at another repository than the worktree. */
const GIT_LOCATION_VARIABLES = new Set([
  'GIT_DIR',
  'GIT_WORK_TREE',
  'GIT_INDEX_FILE',
  'GIT_COMMON_DIR',
  'GIT_OBJECT_DIRECTORY',
  'GIT_ALTERNATE_OBJECT_DIRECTORIES',
  'GIT_NAMESPACE',
  'GIT_PREFIX',
])

type StopReason = { kind: 'aborted'; detail: string } | { kind: 'timeout'; ms: number }

/** How one command ended. */
type Ending =
  | { kind: 'exited'; code: number }
  | { kind: 'signalled'; signal: string }
  | { kind: 'stopped'; reason: StopReason }
  | { kind: 'spawn-failed'; error: Error }

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error)
}

function describeAbortReason(reason: unknown): string {
  if (reason === undefined) return 'the request was cancelled or passed its deadline'
  return message(reason)
}

function stopLine(reason: StopReason): string {
  return reason.kind === 'timeout' ? `[stovepipe] timed out after ${reason.ms} ms` : `[stovepipe] build aborted: ${reason.detail}`
}

function checkOptions(options: ShellBuilderOptions): void {
  const { command, projects, timeoutMs, killGraceMs, worktreeRoot, env } = options
  if (command !== undefined && (typeof command !== 'string' || command.trim() === '')) {
    throw new InvalidInputError('the build command must be a non-empty string')
  }
  if (projects !== undefined) {
    // Checked as what a JavaScript caller may pass, whatever the type says.
    const given: unknown = projects
    if (typeof given !== 'object' || given === null || Array.isArray(given))
      throw new InvalidInputError('projects must map project names to commands')
    for (const [name, projectCommand] of Object.entries(projects)) {
      if (name === '') throw new InvalidInputError('a project name must not be empty')
      if (typeof projectCommand !== 'string' || projectCommand.trim() === '') {
        throw new InvalidInputError(`the command of project ${JSON.stringify(name)} must be a non-empty string`)
      }
    }
  }
  if (command === undefined && Object.keys(projects ?? {}).length === 0) {
    throw new InvalidInputError('a shell builder needs a command, or projects with commands')
  }
  // Node's timers take at most 2^31 - 1 ms (about 24.8 days); a longer one would fire at once.
  if (timeoutMs !== undefined && (!Number.isFinite(timeoutMs) || timeoutMs <= 0 || timeoutMs > MAX_TIMER_MS)) {
    throw new InvalidInputError(`timeoutMs must be a positive number of milliseconds up to ${MAX_TIMER_MS}, got ${String(timeoutMs)}`)
  }
  if (killGraceMs !== undefined && (!Number.isFinite(killGraceMs) || killGraceMs < 0 || killGraceMs > MAX_TIMER_MS)) {
    throw new InvalidInputError(`killGraceMs must be a non-negative number of milliseconds, got ${String(killGraceMs)}`)
  }
  if (worktreeRoot !== undefined && (typeof worktreeRoot !== 'string' || !isAbsolute(worktreeRoot))) {
    throw new InvalidInputError(`worktreeRoot must be an absolute path, got ${JSON.stringify(worktreeRoot)}`)
  }
  for (const [key, value] of Object.entries(env ?? {})) {
    if (key === '' || key.includes('=') || key.includes('\0'))
      throw new InvalidInputError(`invalid environment variable name ${JSON.stringify(key)}`)
    if (typeof value !== 'string' || value.includes('\0')) throw new InvalidInputError(`env.${key} must be a string without NUL characters`)
  }
  for (const text of [command, ...Object.values(projects ?? {})]) {
    if (text?.includes('\0') === true) throw new InvalidInputError('a command must not contain NUL characters')
  }
}

/** The stop signal of one build: the request's AbortSignal or the builder's timeout, whichever comes first. */
class BuildStop {
  readonly controller = new AbortController()
  private reason: StopReason | null = null
  private readonly timer: unknown
  private readonly onAbort: () => void

  constructor(
    private readonly request: AbortSignal,
    timeoutMs: number | undefined,
    private readonly clock: Clock,
  ) {
    this.onAbort = () => {
      this.fire({ kind: 'aborted', detail: describeAbortReason(request.reason) })
    }
    if (request.aborted) this.onAbort()
    else request.addEventListener('abort', this.onAbort, { once: true })
    this.timer =
      timeoutMs === undefined
        ? undefined
        : clock.setTimeout(() => {
            this.fire({ kind: 'timeout', ms: timeoutMs })
          }, timeoutMs)
  }

  get signal(): AbortSignal {
    return this.controller.signal
  }

  /** Why the build was stopped, or null while it may go on. */
  why(): StopReason | null {
    return this.reason
  }

  private fire(reason: StopReason): void {
    if (this.reason !== null) return
    this.reason = reason
    this.controller.abort(new Error(stopLine(reason)))
  }

  dispose(): void {
    this.request.removeEventListener('abort', this.onAbort)
    if (this.timer !== undefined) this.clock.clearTimeout(this.timer)
  }
}

/** Options of one command run. */
interface CommandRun {
  command: string
  cwd: string
  env: NodeJS.ProcessEnv
  tail: LogTail
  stop: BuildStop
  killGraceMs: number
  clock: Clock
  logger: Logger
}

/**
 * Runs one command as the leader of its own process group and resolves when it has
 * exited, its output is closed and its group is gone. When the build is stopped, or when
 * the command exits, the whole group gets SIGTERM (nothing is left to receive it after a
 * clean exit), then SIGKILL after the grace if anything remains; if the output is still
 * held open after another grace (a process that left the group), the pipes are closed
 * from our side.
 */
function runCommand(run: CommandRun): Promise<Ending> {
  const { stop, clock, killGraceMs, logger, tail } = run
  return new Promise<Ending>((resolve) => {
    const already = stop.why()
    if (already !== null) {
      resolve({ kind: 'stopped', reason: already })
      return
    }
    let settled = false
    let exit: { code: number | null; signal: NodeJS.Signals | null } | null = null
    /** Set when the stop came before the command exited: its ending is then the stop, whatever the exit status. */
    let stoppedBy: StopReason | null = null
    let terminating = false
    let killed = false
    /** How the command ended, known once its output is closed. */
    let closed: Ending | null = null
    let poll: unknown
    const timers: unknown[] = []
    let child: ChildProcess | undefined

    const finish = (ending: Ending): void => {
      if (settled) return
      settled = true
      stop.signal.removeEventListener('abort', onStop)
      for (const timer of timers) clock.clearTimeout(timer)
      if (poll !== undefined) clock.clearTimeout(poll)
      resolve(ending)
    }

    const killGroup = (signal: NodeJS.Signals): void => {
      const pid = child?.pid
      if (pid === undefined) return
      try {
        process.kill(-pid, signal)
      } catch (error) {
        // ESRCH: the group has no process left, which is the point.
        if ((error as NodeJS.ErrnoException).code !== 'ESRCH')
          logger.warn({ pid, signal, err: error }, 'could not signal a build process group')
      }
      // Processes that made a group of their own inside the build's session (coreutils
      // `timeout` does) go too.
      for (const straggler of sessionStragglers(pid)) {
        try {
          process.kill(straggler, signal)
        } catch {
          // Gone meanwhile.
        }
      }
    }

    /** False while some process of the group (or the session) may still run (zombies count: they are waited for until SIGKILL). */
    const groupGone = (): boolean => {
      const pid = child?.pid
      if (pid === undefined) return true
      try {
        process.kill(-pid, 0)
        return false
      } catch {
        // ESRCH: no such group. EPERM: the id now names processes that are not ours.
        return sessionStragglers(pid).length === 0
      }
    }

    /** Once the output is closed: finishes when the group is gone, or once it has had SIGKILL. */
    const settle = (): void => {
      if (closed === null || settled) return
      if (killed || groupGone()) {
        finish(closed)
        return
      }
      if (poll !== undefined) clock.clearTimeout(poll)
      poll = clock.setTimeout(settle, 25)
    }

    const terminate = (): void => {
      if (terminating) return
      terminating = true
      killGroup('SIGTERM')
      timers.push(
        clock.setTimeout(() => {
          killGroup('SIGKILL')
          killed = true
          settle()
          timers.push(
            clock.setTimeout(() => {
              logger.warn({ pid: child?.pid }, 'build output still open after SIGKILL: closing it')
              child?.stdout?.destroy()
              child?.stderr?.destroy()
            }, killGraceMs),
          )
        }, killGraceMs),
      )
    }

    function onStop(): void {
      const reason = stop.why()
      if (exit === null && reason !== null) stoppedBy = reason
      logger.debug({ pid: child?.pid, reason }, 'stopping a build command')
      terminate()
    }

    try {
      child = spawn(SHELL, ['-c', run.command], { cwd: run.cwd, env: run.env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] })
    } catch (error) {
      finish({ kind: 'spawn-failed', error: error instanceof Error ? error : new Error(String(error)) })
      return
    }
    const started = child
    started.stdout?.on('data', (chunk: Buffer) => {
      tail.push(chunk)
    })
    started.stderr?.on('data', (chunk: Buffer) => {
      tail.push(chunk)
    })
    started.on('error', (error) => {
      if (started.pid === undefined) finish({ kind: 'spawn-failed', error })
      else logger.warn({ pid: started.pid, err: error }, 'build process error')
    })
    started.on('exit', (code, signal) => {
      exit = { code, signal }
      logger.debug({ pid: started.pid, code, signal }, 'build command exited')
      // Whatever it left running in its group goes too.
      terminate()
    })
    started.on('close', () => {
      if (stoppedBy !== null) closed = { kind: 'stopped', reason: stoppedBy }
      else if (exit?.code !== null && exit?.code !== undefined) closed = { kind: 'exited', code: exit.code }
      else closed = { kind: 'signalled', signal: exit?.signal ?? 'an unknown signal' }
      settle()
    })
    stop.signal.addEventListener('abort', onStop, { once: true })
    logger.debug({ pid: started.pid, cwd: run.cwd }, 'build command started')
  })
}

/** The promise `make()` gave for `key`, made once; a rejected one is forgotten, so the next call tries again. */
function once<T>(cache: Map<string, Promise<T>>, key: string, make: () => Promise<T>): Promise<T> {
  let promise = cache.get(key)
  if (promise === undefined) {
    promise = make()
    cache.set(key, promise)
    promise.catch(() => cache.delete(key))
  }
  return promise
}

/**
 * Creates the shell builder.
 *
 * @example
 * ```ts
 * import { createStovepipe } from 'stovepipe'
 * import { createShellBuilder } from 'stovepipe/build/shell'
 *
 * const builder = createShellBuilder({
 *   command: 'npm ci && npm test',
 *   env: { CI: '1' },
 *   timeoutMs: 30 * 60_000,
 * })
 * const sp = await createStovepipe({ storage, sourceControl, builder })
 * ```
 *
 * The command sees `STOVEPIPE_QUEUE`, `STOVEPIPE_REQUEST_ID`, `STOVEPIPE_URI`,
 * `STOVEPIPE_SHA`, `STOVEPIPE_STRATEGY` (`full` | `incremental`), `STOVEPIPE_BASELINE`
 * (the baseline's sha, empty when there is none) and `STOVEPIPE_PROJECT` (the project
 * name; empty for `command`), over the process environment (without the git variables
 * that would redirect its git commands) and `env`.
 *
 * @throws InvalidInputError when an option is invalid.
 */
export function createShellBuilder(options: ShellBuilderOptions): ShellBuilder {
  checkOptions(options)
  const logger = options.logger ?? silentLogger()
  const clock = options.clock ?? systemClock
  const killGraceMs = options.killGraceMs ?? 5_000
  const projectCommands = Object.entries(options.projects ?? {})
  const customRoot = options.worktreeRoot === undefined ? undefined : normalize(options.worktreeRoot)

  const roots = new Map<string, Promise<string>>()
  const sweeps = new Map<string, Promise<{ removed: string[] }>>()
  let running = 0

  const exclusive = <T>(dir: string, work: () => Promise<T>): Promise<T> => {
    const previous = locks.get(dir) ?? Promise.resolve()
    const result = previous.then(work)
    const done = result.then(
      () => undefined,
      () => undefined,
    )
    locks.set(dir, done)
    void done.then(() => {
      if (locks.get(dir) === done) locks.delete(dir)
    })
    return result
  }

  const rootFor = (repo: string): Promise<string> =>
    customRoot !== undefined ? Promise.resolve(customRoot) : once(roots, repo, () => defaultWorktreeRoot(repo))

  const prune = async (repo: string): Promise<{ removed: string[] }> => {
    const root = await rootFor(repo)
    const removed: string[] = []
    for (const dir of await requestDirs(root)) {
      // A directory some build or sweep of this process holds (or waits for), or that another
      // running process made, is not a leftover.
      if (locks.has(dir) || (await ownedElsewhere(dir))) continue
      try {
        await exclusive(dir, async () => {
          await removeWorktree(repo, dir, logger)
          await releaseDir(dir)
        })
        removed.push(dir)
      } catch (error) {
        // One directory that cannot go must not stop every build: it is tried again at the next start.
        logger.warn({ repo, dir, err: error }, 'could not remove a leftover worktree')
      }
    }
    await pruneRegistrations(repo)
    if (removed.length > 0) logger.debug({ repo, root, removed }, 'removed leftover worktrees')
    return { removed }
  }

  // A failed sweep is tried again by the next build.
  const sweepOnce = (repo: string): Promise<{ removed: string[] }> => once(sweeps, repo, () => prune(repo))

  const environment = (request: BuildRequest, sha: string, baselineSha: string): NodeJS.ProcessEnv => {
    const env: NodeJS.ProcessEnv = {}
    for (const [key, value] of Object.entries(process.env)) if (!GIT_LOCATION_VARIABLES.has(key)) env[key] = value
    return {
      ...env,
      ...options.env,
      STOVEPIPE_QUEUE: request.queue,
      STOVEPIPE_REQUEST_ID: request.requestId,
      STOVEPIPE_URI: request.uri,
      STOVEPIPE_SHA: sha,
      STOVEPIPE_STRATEGY: request.strategy,
      STOVEPIPE_BASELINE: baselineSha,
      STOVEPIPE_PROJECT: '',
    }
  }

  /** The commands of one build: `command` first, then the projects the request asks for (all, when it names none). */
  const stepsFor = (request: BuildRequest): { project: string | null; command: string }[] => {
    const steps: { project: string | null; command: string }[] = []
    if (options.command !== undefined) steps.push({ project: null, command: options.command })
    const wanted = request.projects === undefined ? undefined : new Set(request.projects)
    for (const [project, command] of projectCommands) {
      if (wanted === undefined || wanted.has(project)) steps.push({ project, command })
    }
    return steps
  }

  /** Runs the commands in a ready worktree. The log is the tail, read by `run` at the very end. */
  const runSteps = async (
    request: BuildRequest,
    dir: string,
    env: NodeJS.ProcessEnv,
    tail: LogTail,
    stop: BuildStop,
  ): Promise<BuildResult> => {
    const steps = stepsFor(request)
    const withProjects = steps.some((step) => step.project !== null)
    const skipped = (request.projects ?? []).filter((name) => !projectCommands.some(([known]) => known === name))
    if (skipped.length > 0) tail.line(`[stovepipe] no command for project(s) ${skipped.join(', ')}: not run`)
    if (steps.length === 0) {
      // Nothing checked is no verdict on the commit (and never a pass).
      tail.line('[stovepipe] no command to run for this request: no verdict')
      return { outcome: 'error' }
    }
    const results: Record<string, 'passed' | 'failed'> = {}
    let outcome: 'passed' | 'failed' = 'passed'
    for (const step of steps) {
      const what = step.project === null ? 'the build command' : `project ${step.project}`
      if (withProjects) tail.line(`[stovepipe] ${what}: ${step.command}`)
      logger.debug({ requestId: request.requestId, project: step.project }, 'running a build command')
      const ending = await runCommand({
        command: step.command,
        cwd: dir,
        env: { ...env, STOVEPIPE_PROJECT: step.project ?? '' },
        tail,
        stop,
        killGraceMs,
        clock,
        logger,
      })
      switch (ending.kind) {
        case 'spawn-failed':
          tail.line(`[stovepipe] could not start ${SHELL} for ${what}: ${ending.error.message}`)
          return { outcome: 'error' }
        case 'stopped':
          tail.line(stopLine(ending.reason))
          return { outcome: 'error' }
        case 'signalled':
          tail.line(`[stovepipe] ${what} was killed by ${ending.signal}, which Stovepipe did not send: no verdict on the commit`)
          return { outcome: 'error' }
        case 'exited':
          if (ending.code === 0) {
            if (step.project !== null) results[step.project] = 'passed'
            if (withProjects) tail.line(`[stovepipe] ${what} passed`)
            break
          }
          tail.line(`[stovepipe] ${what} exited with code ${ending.code}`)
          outcome = 'failed'
          // A failed setup command fails the build before any project runs.
          if (step.project === null) return { outcome }
          results[step.project] = 'failed'
      }
    }
    return Object.keys(results).length > 0 ? { outcome, projects: results } : { outcome }
  }

  const build = async (request: BuildRequest, tail: LogTail, stop: BuildStop): Promise<BuildResult> => {
    let repo: string
    let sha: string
    let baselineSha = ''
    let name: string
    try {
      ;({ repo, sha } = parseGitUri(request.uri))
      if (request.baseline !== undefined) baselineSha = parseGitUri(request.baseline).sha
      name = sanitizeRequestId(request.requestId)
    } catch (error) {
      tail.line(`[stovepipe] cannot build ${request.uri}: ${message(error)}`)
      return { outcome: 'error' }
    }
    const early = stop.why()
    if (early !== null) {
      tail.line(stopLine(early))
      return { outcome: 'error' }
    }
    let dir: string
    try {
      await sweepOnce(repo)
      const root = await rootFor(repo)
      await mkdir(root, { recursive: true })
      dir = join(root, name)
    } catch (error) {
      tail.line(`[stovepipe] could not prepare the worktree root for ${repo}: ${message(error)}`)
      return { outcome: 'error' }
    }
    return exclusive(dir, async () => {
      const log = { requestId: request.requestId, dir }
      try {
        const before = stop.why()
        if (before !== null) {
          tail.line(stopLine(before))
          return { outcome: 'error' }
        }
        try {
          logger.debug({ ...log, sha }, 'adding a worktree')
          await claimDir(dir)
          await addWorktree(repo, dir, sha, { signal: stop.signal, logger })
        } catch (error) {
          const reason = stop.why()
          tail.line(reason === null ? `[stovepipe] could not create a worktree at ${sha}: ${message(error)}` : stopLine(reason))
          return { outcome: 'error' }
        }
        return await runSteps(request, dir, environment(request, sha, baselineSha), tail, stop)
      } finally {
        try {
          await removeWorktree(repo, dir, logger)
          await releaseDir(dir)
          logger.debug(log, 'worktree removed')
        } catch (error) {
          // The verdict stands; the next sweep tries again.
          logger.warn({ ...log, err: error }, 'could not remove a build worktree')
          tail.line(`[stovepipe] warning: could not remove the worktree ${dir}: ${message(error)}`)
        }
      }
    })
  }

  return {
    prune,
    running: () => running,
    async run(request: BuildRequest): Promise<BuildResult> {
      const tail = new LogTail(LOG_TAIL_BYTES)
      const stop = new BuildStop(request.signal, options.timeoutMs, clock)
      running++
      const started = clock.now()
      try {
        const result: BuildResult = { ...(await build(request, tail, stop)), log: tail.text() }
        logger.debug(
          { requestId: request.requestId, uri: request.uri, outcome: result.outcome, ms: clock.now() - started },
          'shell build ended',
        )
        return result
      } finally {
        running--
        stop.dispose()
      }
    },
  }
}
