import { execFile, spawn } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { chmod, chown, lstat, mkdir, mkdtemp, readdir, realpath, rm, writeFile } from 'node:fs/promises'
import { hostname, tmpdir } from 'node:os'
import { promisify } from 'node:util'
import { pathToFileURL } from 'node:url'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { systemClock } from '../../src/actors/clock.js'
import { LogTail } from '../../src/build/log-tail.js'
import { createShellBuilder, type ShellBuilderOptions } from '../../src/build/shell.js'
import type { BuildRequest } from '../../src/build/types.js'
import { sanitizeRequestId } from '../../src/build/worktree.js'
import { createStovepipe } from '../../src/index.js'
import { git, gitUri, parseGitUri } from '../../src/sourcecontrol/git-exec.js'
import type { SourceControl } from '../../src/sourcecontrol/types.js'
import { InvalidInputError } from '../../src/storage/errors.js'
import { createMemoryStorage } from '../../src/storage/memory/index.js'

// ---------------------------------------------------------------------------------------
// A small local helper for throwaway git repositories.

const temps: string[] = []

afterAll(async () => {
  await Promise.all(temps.map((dir) => rm(dir, { recursive: true, force: true })))
})

async function tempDir(prefix: string): Promise<string> {
  const dir = await realpath(await mkdtemp(join(tmpdir(), prefix)))
  temps.push(dir)
  return dir
}

interface Repo {
  dir: string
  /** Writes (string) or deletes (null) files, commits them, and returns the new sha. */
  commit(files: Record<string, string | null>, message?: string): Promise<string>
  uri(sha: string): string
  /** `git worktree list --porcelain` paths. */
  worktrees(): Promise<string[]>
}

async function makeRepo(): Promise<Repo> {
  const dir = await tempDir('stovepipe-shell-')
  await git(dir, ['init', '-q', '-b', 'main'])
  await git(dir, ['config', 'user.email', 'test@example.com'])
  await git(dir, ['config', 'user.name', 'Test'])
  await git(dir, ['config', 'commit.gpgsign', 'false'])
  let n = 0
  return {
    dir,
    async commit(files, message) {
      for (const [name, content] of Object.entries(files)) {
        if (content === null) await git(dir, ['rm', '-q', '--', name])
        else {
          await writeFile(join(dir, name), content)
          await git(dir, ['add', '--', name])
        }
      }
      await git(dir, ['commit', '-q', '--allow-empty', '-m', message ?? `commit ${++n}`])
      return (await git(dir, ['rev-parse', 'HEAD'])).stdout.trim()
    },
    uri: (sha) => gitUri(dir, sha),
    async worktrees() {
      const { stdout } = await git(dir, ['worktree', 'list', '--porcelain'])
      return stdout
        .split('\n')
        .filter((line) => line.startsWith('worktree '))
        .map((line) => line.slice('worktree '.length))
    },
  }
}

function buildRequest(uri: string, overrides: Partial<BuildRequest> = {}): BuildRequest {
  return {
    queue: 'main',
    requestId: 'request/main/1',
    uri,
    strategy: 'full',
    signal: new AbortController().signal,
    clock: systemClock,
    ...overrides,
  }
}

/** Lines `KEY=value` printed by a command, as an object. */
function parseLines(log: string): Record<string, string> {
  const out: Record<string, string> = {}
  for (const line of log.split('\n')) {
    const eq = line.indexOf('=')
    if (eq > 0) out[line.slice(0, eq)] = line.slice(eq + 1)
  }
  return out
}

/** True while `pid` is a running process (a zombie, dead but not reaped, counts as gone). */
function isRunning(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3)
    return state !== 'Z' && state !== 'X'
  } catch {
    try {
      process.kill(pid, 0)
      return true
    } catch {
      return false
    }
  }
}

async function until(check: () => boolean, timeoutMs = 5000): Promise<void> {
  const end = Date.now() + timeoutMs
  while (!check()) {
    if (Date.now() > end) throw new Error('condition not met in time')
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

const execFileAsync = promisify(execFile)

/** Gives a tree to a user (and makes its top reachable: temp directories are 0700). */
async function chownTree(dir: string, uid: number): Promise<void> {
  await chown(dir, uid, uid)
  if ((await lstat(dir)).isDirectory()) {
    await chmod(dir, 0o755)
    for (const name of await readdir(dir)) await chownTree(join(dir, name), uid)
  }
}

function builder(options: ShellBuilderOptions) {
  return createShellBuilder({ killGraceMs: 500, ...options })
}

// ---------------------------------------------------------------------------------------

describe('LogTail', () => {
  it('keeps the last bytes and starts on a UTF-8 character boundary', () => {
    const tail = new LogTail(10)
    tail.push('abc')
    expect(tail.text()).toBe('abc')
    tail.push('€€€€') // 12 bytes: the first euro sign is cut in the middle
    expect(tail.bytes).toBe(10)
    expect(tail.text()).toBe('€€€')
    tail.push('0123456789ABCDEF')
    expect(tail.text()).toBe('6789ABCDEF')
    expect(() => new LogTail(0)).toThrow(InvalidInputError)
  })

  it('stays bounded under many tiny writes', () => {
    const tail = new LogTail(100)
    let all = ''
    for (let i = 0; i < 5000; i++) {
      const piece = String(i % 10)
      tail.push(piece)
      all += piece
    }
    expect(tail.text()).toBe(all.slice(-100))
    expect(tail.dropped).toBe(4900)
  })
})

describe('sanitizeRequestId', () => {
  it('makes a directory name of a request id', () => {
    expect(sanitizeRequestId('request/main/3')).toBe('request-main-3')
    expect(sanitizeRequestId('../../etc')).toBe('etc')
    expect(() => sanitizeRequestId('/..')).toThrow(InvalidInputError)
  })
})

describe('createShellBuilder options', () => {
  it('rejects invalid options with a typed error', () => {
    expect(() => createShellBuilder({})).toThrow(InvalidInputError)
    expect(() => createShellBuilder({ command: ' ' })).toThrow(InvalidInputError)
    expect(() => createShellBuilder({ command: 'true', timeoutMs: 0 })).toThrow(InvalidInputError)
    expect(() => createShellBuilder({ command: 'true', killGraceMs: -1 })).toThrow(InvalidInputError)
    expect(() => createShellBuilder({ command: 'true', worktreeRoot: 'relative/dir' })).toThrow(InvalidInputError)
    expect(() => createShellBuilder({ command: 'true', env: { A: 'x\0y' } })).toThrow(InvalidInputError)
    expect(() => createShellBuilder({ projects: { api: '' } })).toThrow(InvalidInputError)
    expect(() => createShellBuilder({ projects: { api: 'true' } })).not.toThrow()
    expect(() => createShellBuilder({ projects: null as unknown as Record<string, string> })).toThrow(InvalidInputError)
    // Node's timers take at most 2^31 - 1 ms: a longer timeout would fire at once.
    expect(() => createShellBuilder({ command: 'true', timeoutMs: 2 ** 31 })).toThrow(InvalidInputError)
    expect(() => createShellBuilder({ command: 'true', timeoutMs: 2 ** 31 - 1 })).not.toThrow()
  })
})

describe('shell builder', () => {
  it('passes on exit 0 and fails on exit 1, with the output in the log', async () => {
    const repo = await makeRepo()
    const sha = await repo.commit({ 'README.md': 'hello\n' })
    const pass = await builder({ command: 'echo all good; echo to stderr >&2' }).run(buildRequest(repo.uri(sha)))
    expect(pass.outcome).toBe('passed')
    expect(pass.log).toContain('all good\n')
    expect(pass.log).toContain('to stderr\n')
    expect(pass.projects).toBeUndefined()

    const fail = await builder({ command: 'echo something broke; exit 1' }).run(
      buildRequest(repo.uri(sha), { requestId: 'request/main/2' }),
    )
    expect(fail.outcome).toBe('failed')
    expect(fail.log).toContain('something broke\n')
    expect(fail.log).toContain('exited with code 1')
  })

  it('sets the STOVEPIPE_* variables, over the process environment and env', async () => {
    const repo = await makeRepo()
    const first = await repo.commit({ 'a.txt': 'a' })
    const second = await repo.commit({ 'b.txt': 'b' })
    const command = [
      'echo QUEUE=$STOVEPIPE_QUEUE',
      'echo SHA=$STOVEPIPE_SHA',
      'echo URI=$STOVEPIPE_URI',
      'echo STRATEGY=$STOVEPIPE_STRATEGY',
      'echo BASELINE=$STOVEPIPE_BASELINE',
      'echo REQUEST_ID=$STOVEPIPE_REQUEST_ID',
      'echo PROJECT=$STOVEPIPE_PROJECT',
      'echo EXTRA=$EXTRA',
      'echo PATH_SET=${PATH:+yes}',
      'echo PWD=$(pwd)',
    ].join('; ')
    const shell = builder({ command, env: { EXTRA: 'from options' } })

    const full = await shell.run(buildRequest(repo.uri(first), { queue: 'q1', requestId: 'request/q1/7' }))
    expect(full.outcome).toBe('passed')
    expect(parseLines(full.log ?? '')).toEqual({
      QUEUE: 'q1',
      SHA: first,
      URI: repo.uri(first),
      STRATEGY: 'full',
      BASELINE: '',
      REQUEST_ID: 'request/q1/7',
      PROJECT: '',
      EXTRA: 'from options',
      PATH_SET: 'yes',
      PWD: join(repo.dir, '.git', 'stovepipe-worktrees', 'request-q1-7'),
    })

    const incremental = await shell.run(
      buildRequest(repo.uri(second), { queue: 'q1', requestId: 'request/q1/8', strategy: 'incremental', baseline: repo.uri(first) }),
    )
    expect(incremental.outcome).toBe('passed')
    expect(parseLines(incremental.log ?? '')).toMatchObject({
      SHA: second,
      URI: repo.uri(second),
      STRATEGY: 'incremental',
      BASELINE: first,
      REQUEST_ID: 'request/q1/8',
    })
  })

  it("builds the commit's tree, not the main checkout", async () => {
    const repo = await makeRepo()
    const withMarker = await repo.commit({ 'marker.txt': 'only in this commit\n' })
    const withoutMarker = await repo.commit({ 'marker.txt': null })
    await writeFile(join(repo.dir, 'uncommitted.txt'), 'not committed\n')
    const shell = builder({ command: 'if [ -e marker.txt ]; then cat marker.txt; else echo no marker; fi; test ! -e uncommitted.txt' })

    const old = await shell.run(buildRequest(repo.uri(withMarker)))
    expect(old.outcome).toBe('passed')
    expect(old.log).toContain('only in this commit')

    const head = await shell.run(buildRequest(repo.uri(withoutMarker), { requestId: 'request/main/2' }))
    expect(head.outcome).toBe('passed')
    expect(head.log).toContain('no marker')
  })

  it('removes the worktree after the build', async () => {
    const repo = await makeRepo()
    const sha = await repo.commit({ 'a.txt': 'a' })
    const dir = join(repo.dir, '.git', 'stovepipe-worktrees', 'request-main-1')
    const shell = builder({ command: 'pwd; touch build-artifact; test -e a.txt' })
    const result = await shell.run(buildRequest(repo.uri(sha)))
    expect(result.outcome).toBe('passed')
    expect(result.log).toContain(dir)
    expect(existsSync(dir)).toBe(false)
    expect(await repo.worktrees()).toEqual([repo.dir])
    expect(shell.running()).toBe(0)
  })

  it('sweeps what a crashed run left when a new builder starts', async () => {
    const repo = await makeRepo()
    const sha = await repo.commit({ 'a.txt': 'a' })
    const root = join(repo.dir, '.git', 'stovepipe-worktrees')
    const leftover = join(root, 'request-main-9')
    await mkdir(root, { recursive: true })
    await git(repo.dir, ['worktree', 'add', '-q', '--detach', leftover, sha])
    await writeFile(join(leftover, 'half-built'), 'x')
    const unrelated = join(root, 'not-a-request-dir')
    await mkdir(unrelated)
    expect(await repo.worktrees()).toEqual([repo.dir, leftover])

    const result = await builder({ command: 'true' }).run(buildRequest(repo.uri(sha), { requestId: 'request/main/10' }))
    expect(result.outcome).toBe('passed')
    expect(existsSync(leftover)).toBe(false)
    expect(existsSync(unrelated)).toBe(true)
    expect(await repo.worktrees()).toEqual([repo.dir])
  })

  it("shares a worktree root: a builder's sweep leaves the running builds of another builder, and of another live process, alone", async () => {
    const repo = await makeRepo()
    const sha = await repo.commit({ 'a.txt': 'a' })
    const root = join(repo.dir, '.git', 'stovepipe-worktrees')
    const scratch = await tempDir('stovepipe-scratch-')
    const started = join(scratch, 'started')
    // Another process's build in progress: a live process (here a child) marked its directory.
    const other = spawn('sleep', ['30'], { stdio: 'ignore' })
    const foreign = join(root, 'request-release-4')
    await mkdir(foreign, { recursive: true })
    await writeFile(join(root, '.owner-request-release-4'), JSON.stringify({ pid: other.pid, host: hostname() }))
    // This process: two builders (two queues) on one clone, the second starting while the first builds.
    const first = builder({ command: `touch ${started}; sleep 1; cat a.txt` }).run(buildRequest(repo.uri(sha)))
    await until(() => existsSync(started))
    const second = await builder({ command: 'true' }).run(buildRequest(repo.uri(sha), { queue: 'docs', requestId: 'request/docs/1' }))
    expect(second.outcome).toBe('passed')
    const result = await first
    expect(result.log).toContain('a')
    expect(result.outcome).toBe('passed')
    expect(existsSync(foreign)).toBe(true)
    // Once its owner is gone, the directory is a leftover for the next builder's sweep.
    other.kill('SIGKILL')
    await until(() => !isRunning(other.pid as number))
    await builder({ command: 'true' }).run(buildRequest(repo.uri(sha), { requestId: 'request/main/2' }))
    expect(await readdir(root)).toEqual([])
  })

  it('resumes a request whose worktree git left locked (a crash while it was being added)', async () => {
    const repo = await makeRepo()
    const sha = await repo.commit({ 'a.txt': 'a' })
    const root = join(repo.dir, '.git', 'stovepipe-worktrees')
    const dir = join(root, 'request-main-7')
    await mkdir(root, { recursive: true })
    await git(repo.dir, ['worktree', 'add', '-q', '--detach', '--lock', dir, sha])
    await rm(dir, { recursive: true, force: true }) // the checkout never finished
    const result = await builder({ command: 'cat a.txt' }).run(buildRequest(repo.uri(sha), { requestId: 'request/main/7' }))
    expect(result.log).toContain('a')
    expect(result.outcome).toBe('passed')
    expect(await repo.worktrees()).toEqual([repo.dir])
  })

  it('deletes a worktree in which the build left read-only directories; a leftover the sweep cannot delete does not stop builds', async () => {
    const repo = await makeRepo()
    const sha = await repo.commit({ 'a.txt': 'a' })
    const root = await tempDir('stovepipe-root-')
    const home = await tempDir('stovepipe-home-')
    // Root ignores permissions, and this is about them: as root, the scenario runs as nobody,
    // who owns the repository and the worktree root but not a leftover found there.
    const asRoot = process.getuid?.() === 0
    let stuck = ''
    if (asRoot) {
      for (const dir of [repo.dir, root, home]) await chownTree(dir, 65534)
      stuck = join(root, 'request-main-9')
      await mkdir(stuck)
      await writeFile(join(stuck, 'f'), 'x')
    }
    const script = join(import.meta.dirname, '..', 'support', 'readonly-build.ts')
    const tsx = pathToFileURL(join(import.meta.dirname, '..', '..', 'node_modules', 'tsx', 'dist', 'loader.mjs')).href
    const node = [process.execPath, '--import', tsx, script, repo.dir, sha, root, stuck]
    const [file = '', ...args] = asRoot ? ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', ...node] : node
    const { stdout } = await execFileAsync(file, args, { env: { ...process.env, HOME: home }, timeout: 60_000 })
    expect(JSON.parse(stdout)).toEqual({ first: 'passed', leftAfterFirst: [], second: 'passed', stuckLeft: asRoot })
  })

  it('resumes a request whose worktree a crash left behind (same directory, still registered)', async () => {
    const repo = await makeRepo()
    const sha = await repo.commit({ 'a.txt': 'a' })
    const root = await tempDir('stovepipe-root-')
    const shell = builder({ command: 'cat a.txt', worktreeRoot: root })
    // The sweep has run (first build); then a crash-like leftover appears for the next request.
    expect((await shell.run(buildRequest(repo.uri(sha)))).outcome).toBe('passed')
    await git(repo.dir, ['worktree', 'add', '-q', '--detach', join(root, 'request-main-2'), sha])
    const again = await shell.run(buildRequest(repo.uri(sha), { requestId: 'request/main/2' }))
    expect(again.outcome).toBe('passed')
    expect(await readdir(root)).toEqual([])
    expect(await repo.worktrees()).toEqual([repo.dir])
  })

  it('kills the whole process group on abort and resolves promptly with error', async () => {
    const repo = await makeRepo()
    const sha = await repo.commit({ 'a.txt': 'a' })
    const scratch = await tempDir('stovepipe-pids-')
    const shellPidFile = join(scratch, 'shell.pid')
    const childPidFile = join(scratch, 'child.pid')
    const shell = builder({
      command: 'echo $$ > "$SHELL_PID"; sleep 30 & echo $! > "$CHILD_PID"; echo started; wait',
      env: { SHELL_PID: shellPidFile, CHILD_PID: childPidFile },
      killGraceMs: 300,
    })
    const controller = new AbortController()
    const running = shell.run(buildRequest(repo.uri(sha), { signal: controller.signal }))
    await until(() => existsSync(childPidFile) && readFileSync(childPidFile, 'utf8').endsWith('\n'))
    const shellPid = Number(readFileSync(shellPidFile, 'utf8'))
    const childPid = Number(readFileSync(childPidFile, 'utf8'))
    expect(isRunning(shellPid)).toBe(true)
    expect(isRunning(childPid)).toBe(true)

    const abortedAt = Date.now()
    controller.abort(new Error('request cancelled'))
    const result = await running
    expect(Date.now() - abortedAt).toBeLessThan(3000)
    expect(result.outcome).toBe('error')
    expect(result.log).toContain('started')
    expect(result.log).toMatch(/build aborted: request cancelled/)
    expect(isRunning(shellPid)).toBe(false)
    expect(isRunning(childPid)).toBe(false)
    expect(await repo.worktrees()).toEqual([repo.dir])
  })

  it('kills, on abort, a step that left the process group but not the session (coreutils timeout)', async () => {
    const repo = await makeRepo()
    const sha = await repo.commit({ 'a.txt': 'a' })
    const scratch = await tempDir('stovepipe-pids-')
    const pidFile = join(scratch, 'inner.pid')
    // `timeout` puts itself and its command in a process group of their own.
    const shell = builder({
      command: `timeout 600 sh -c 'echo $$ > "$INNER_PID"; exec sleep 600'`,
      env: { INNER_PID: pidFile },
      killGraceMs: 300,
    })
    const controller = new AbortController()
    const running = shell.run(buildRequest(repo.uri(sha), { signal: controller.signal }))
    await until(() => existsSync(pidFile) && readFileSync(pidFile, 'utf8').endsWith('\n'))
    const inner = Number(readFileSync(pidFile, 'utf8'))
    expect(isRunning(inner)).toBe(true)
    controller.abort(new Error('request cancelled'))
    expect((await running).outcome).toBe('error')
    await until(() => !isRunning(inner), 3000)
  })

  it('an already aborted request builds nothing', async () => {
    const repo = await makeRepo()
    const sha = await repo.commit({ 'a.txt': 'a' })
    const controller = new AbortController()
    controller.abort()
    const result = await builder({ command: 'echo should not run' }).run(buildRequest(repo.uri(sha), { signal: controller.signal }))
    expect(result.outcome).toBe('error')
    expect(result.log).not.toContain('should not run')
    expect(result.log).toContain('aborted')
  })

  it('times out after timeoutMs with error, not a verdict', async () => {
    const repo = await makeRepo()
    const sha = await repo.commit({ 'a.txt': 'a' })
    const started = Date.now()
    const result = await builder({ command: 'echo working; sleep 10', timeoutMs: 400, killGraceMs: 200 }).run(buildRequest(repo.uri(sha)))
    expect(Date.now() - started).toBeLessThan(4000)
    expect(result.outcome).toBe('error')
    expect(result.log).toContain('working')
    expect(result.log).toContain('timed out after 400 ms')
    expect(await repo.worktrees()).toEqual([repo.dir])
  })

  it('an unknown commit, or a URI that is not a git URI, gives error and throws nothing', async () => {
    const repo = await makeRepo()
    await repo.commit({ 'a.txt': 'a' })
    const shell = builder({ command: 'echo should not run' })
    const unknown = await shell.run(buildRequest(repo.uri('deadbeef'.repeat(5))))
    expect(unknown.outcome).toBe('error')
    expect(unknown.log).toContain('could not create a worktree at deadbeefdeadbeef')
    expect(unknown.log).not.toContain('should not run')
    expect(await repo.worktrees()).toEqual([repo.dir])

    const foreign = await shell.run(buildRequest('fake://a1'))
    expect(foreign.outcome).toBe('error')
    expect(foreign.log).toContain('not a git URI')

    const missingRepo = await shell.run(buildRequest(gitUri(join(repo.dir, 'nope'), 'a'.repeat(40))))
    expect(missingRepo.outcome).toBe('error')
  })

  it('a process killed by a signal Stovepipe did not send gives error', async () => {
    const repo = await makeRepo()
    const sha = await repo.commit({ 'a.txt': 'a' })
    const result = await builder({ command: 'echo about to die; kill -KILL $$' }).run(buildRequest(repo.uri(sha)))
    expect(result.outcome).toBe('error')
    expect(result.log).toContain('about to die')
    expect(result.log).toContain('killed by SIGKILL')
  })

  it('a shell that cannot start gives error', async () => {
    const repo = await makeRepo()
    const sha = await repo.commit({ 'a.txt': 'a' })
    // One environment string over Linux's MAX_ARG_STRLEN (128 KiB): execve fails with E2BIG.
    const result = await builder({ command: 'true', env: { HUGE: 'x'.repeat(256 * 1024) } }).run(buildRequest(repo.uri(sha)))
    expect(result.outcome).toBe('error')
    expect(result.log).toContain('could not start /bin/sh')
    expect(await repo.worktrees()).toEqual([repo.dir])
  })

  it('keeps exactly the last 64 KiB of 1 MiB of output', async () => {
    const repo = await makeRepo()
    const sha = await repo.commit({ 'a.txt': 'a' })
    // 65536 lines of 16 bytes: 1 MiB, half on stdout and half on stderr is not needed; stdout only keeps the order exact.
    const result = await builder({ command: `awk 'BEGIN { for (i = 0; i < 65536; i++) printf "%015d\\n", i }'` }).run(
      buildRequest(repo.uri(sha)),
    )
    expect(result.outcome).toBe('passed')
    let expected = ''
    for (let i = 65536 - 4096; i < 65536; i++) expected += `${String(i).padStart(15, '0')}\n`
    expect(Buffer.byteLength(expected)).toBe(64 * 1024)
    expect(result.log).toBe(expected)
  })

  it('runs per-project commands and reports each', async () => {
    const repo = await makeRepo()
    const sha = await repo.commit({ 'a.txt': 'a' })
    const shell = builder({
      command: 'echo setup for $STOVEPIPE_SHA',
      projects: {
        api: 'echo project=$STOVEPIPE_PROJECT; test -e a.txt',
        web: 'echo project=$STOVEPIPE_PROJECT; exit 3',
        docs: 'echo project=$STOVEPIPE_PROJECT',
      },
    })
    const some = await shell.run(buildRequest(repo.uri(sha), { projects: ['api', 'web', 'mobile'] }))
    expect(some.outcome).toBe('failed')
    expect(some.projects).toEqual({ api: 'passed', web: 'failed' })
    expect(some.log).toContain(`setup for ${sha}`)
    expect(some.log).toContain('project=api')
    expect(some.log).toContain('project=web')
    expect(some.log).not.toContain('project=docs')
    expect(some.log).toContain('project web exited with code 3')
    expect(some.log).toContain('no command for project(s) mobile')

    const passing = await shell.run(buildRequest(repo.uri(sha), { requestId: 'request/main/2', projects: ['api', 'docs'] }))
    expect(passing).toMatchObject({ outcome: 'passed', projects: { api: 'passed', docs: 'passed' } })

    const all = await shell.run(buildRequest(repo.uri(sha), { requestId: 'request/main/3' }))
    expect(all).toMatchObject({ outcome: 'failed', projects: { api: 'passed', web: 'failed', docs: 'passed' } })

    const brokenSetup = await builder({ command: 'exit 2', projects: { api: 'echo project ran' } }).run(
      buildRequest(repo.uri(sha), { requestId: 'request/main/4' }),
    )
    expect(brokenSetup.outcome).toBe('failed')
    expect(brokenSetup.projects).toBeUndefined()
    expect(brokenSetup.log).not.toContain('project ran')
    expect(await repo.worktrees()).toEqual([repo.dir])
  })

  it('a builder with only projects, asked for none it has a command for, gives error (nothing checked is no pass)', async () => {
    const repo = await makeRepo()
    const sha = await repo.commit({ 'a.txt': 'a' })
    const shell = builder({ projects: { api: 'true' } })
    for (const projects of [['web'], []]) {
      const result = await shell.run(buildRequest(repo.uri(sha), { projects }))
      expect(result.outcome).toBe('error')
      expect(result.log).toContain('no command to run for this request')
    }
  })

  it('runs concurrent builds of different requests on one repository without interference', async () => {
    const repo = await makeRepo()
    const one = await repo.commit({ 'which.txt': 'one\n' })
    const two = await repo.commit({ 'which.txt': 'two\n' })
    const scratch = await tempDir('stovepipe-sync-')
    const shell = builder({
      // Each build waits until both have started, so they really overlap.
      command: `echo started > "${scratch}/$STOVEPIPE_SHA"; while [ "$(ls "${scratch}" | wc -l)" -lt 2 ]; do sleep 0.05; done; echo "content=$(cat which.txt)"; echo "dir=$(pwd)"`,
      timeoutMs: 10_000,
    })
    const [a, b] = await Promise.all([
      shell.run(buildRequest(repo.uri(one), { requestId: 'request/main/1' })),
      shell.run(buildRequest(repo.uri(two), { requestId: 'request/main/2' })),
    ])
    expect(a.outcome).toBe('passed')
    expect(b.outcome).toBe('passed')
    expect(parseLines(a.log ?? '')).toEqual({ content: 'one', dir: join(repo.dir, '.git', 'stovepipe-worktrees', 'request-main-1') })
    expect(parseLines(b.log ?? '')).toEqual({ content: 'two', dir: join(repo.dir, '.git', 'stovepipe-worktrees', 'request-main-2') })
    expect(await repo.worktrees()).toEqual([repo.dir])
  })
})

describe('shell builder in the runtime', () => {
  it('records green for a passing commit and red for a failing one, with the output as the log', async () => {
    const repo = await makeRepo()
    await repo.commit({ 'status.txt': 'pass\n' })
    const headUri = async (): Promise<string> => repo.uri((await git(repo.dir, ['rev-parse', 'HEAD'])).stdout.trim())
    const sourceControl: SourceControl = {
      latest: headUri,
      async isAncestor(ancestor, descendant) {
        const { code } = await git(repo.dir, ['merge-base', '--is-ancestor', parseGitUri(ancestor).sha, parseGitUri(descendant).sha], {
          allow: [1],
        })
        return code === 0
      },
      history: () => Promise.resolve({ items: [] }),
    }
    const sp = await createStovepipe({
      storage: createMemoryStorage(),
      sourceControl,
      builder: createShellBuilder({ command: 'echo "status is $(cat status.txt)"; test "$(cat status.txt)" = pass', killGraceMs: 500 }),
    })
    try {
      const main = await sp.queue('main', { repo: repo.dir, ref: 'refs/heads/main' })
      const green = await main.ingest()
      const greenView = await main.waitFor(green.id, 'recorded')
      expect(greenView).toMatchObject({ state: 'recorded', verdict: 'green', strategy: 'full' })
      expect(greenView.build?.log).toContain('status is pass')
      expect(main.lastGreen()?.uri).toBe(green.uri)

      await repo.commit({ 'status.txt': 'fail\n' })
      const red = await main.ingest()
      const redView = await main.waitFor(red.id, 'recorded')
      expect(redView).toMatchObject({ state: 'recorded', verdict: 'red', strategy: 'incremental', baseline: green.uri })
      expect(redView.build?.log).toContain('status is fail')
      expect((await sp.request(red.id)).build?.outcome).toBe('failed')
      expect(main.lastGreen()?.uri).toBe(green.uri)
      expect(await repo.worktrees()).toEqual([repo.dir])
    } finally {
      await sp.stop()
    }
  })
})
