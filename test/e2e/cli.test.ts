/**
 * The `stovepipe` command end to end, with no fakes: real temp git repositories, real shell
 * builds in worktrees, SQLite, the CLI spawned as a process, HTTP queried, SIGTERM then a
 * restart that resumes.
 */
import { chmodSync, writeFileSync, rmSync, existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { startCli, runCli, type CliProcess } from '../support/cli.js'
import { createTempRepo, type TempRepo } from '../support/git-repo.js'
import { verifyWebhookSignature } from '../../src/hooks/index.js'
import { tempDir } from '../support/sqlite.js'
import { openSqliteStorage } from '../../src/storage/sqlite/index.js'

/** Passes unless the file `status` says otherwise; sleeps while the marker file named by SLOW_MARKER exists. */
const CHECK = `#!/bin/sh
if [ -n "$SLOW_MARKER" ] && [ -f "$SLOW_MARKER" ]; then sleep 30; fi
status="$(cat status)"
echo "checking $STOVEPIPE_SHA ($STOVEPIPE_STRATEGY, baseline '$STOVEPIPE_BASELINE')"
[ "$status" = ok ] || { echo "status: $status"; exit 1; }
`

const cleanups: (() => Promise<void> | void)[] = []
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

async function setup(): Promise<{ repo: TempRepo; dir: string; db: string }> {
  const repo = await createTempRepo()
  const state = tempDir('stovepipe-e2e-')
  cleanups.push(() => {
    repo.remove()
    state.remove()
  })
  return { repo, dir: state.dir, db: join(state.dir, 'stovepipe.db') }
}

function start(args: string[], cwd: string, env: Record<string, string> = {}): CliProcess {
  const cli = startCli(args, { cwd, env })
  cleanups.push(async () => {
    if (cli.child.exitCode === null) {
      cli.child.kill('SIGKILL')
      await cli.exited
    }
  })
  return cli
}

const short = (sha: string): string => sha.slice(0, 7)

/** A webhook receiver that checks signatures and refuses every first attempt with 500. */
async function webhookReceiver(secret: string): Promise<{ url: string; received: string[]; badSignatures: number }> {
  const state = { url: '', received: [] as string[], badSignatures: 0 }
  const attempts = new Map<string, number>()
  const server = createServer((req, res) => {
    let body = ''
    req.on('data', (chunk: Buffer) => (body += chunk.toString()))
    req.on('end', () => {
      const signature = req.headers['x-stovepipe-signature']
      if (typeof signature !== 'string' || !verifyWebhookSignature(body, signature, secret)) {
        state.badSignatures++
        res.writeHead(401).end()
        return
      }
      const key = String(req.headers['x-stovepipe-idempotency-key'])
      const attempt = (attempts.get(key) ?? 0) + 1
      attempts.set(key, attempt)
      if (attempt === 1) {
        res.writeHead(500).end()
        return
      }
      if (!state.received.includes(key)) state.received.push(key)
      res.writeHead(204).end()
    })
  })
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done))
  state.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`
  cleanups.push(
    () =>
      new Promise<void>((done) =>
        server.close(() => {
          done()
        }),
      ),
  )
  return state
}

describe('stovepipe (end to end)', () => {
  it('prints help for every subcommand and fails clearly on a bad flag', async () => {
    const dir = tempDir('stovepipe-help-')
    cleanups.push(() => {
      dir.remove()
    })
    const top = await runCli(['--help'], { cwd: dir.dir })
    expect(top.code).toBe(0)
    for (const command of ['run', 'demo', 'status', 'last-green', 'history', 'events', 'why']) {
      expect(top.stdout).toContain(`  ${command}`)
      const help = await runCli([command, '--help'], { cwd: dir.dir })
      expect(help.code, help.stderr).toBe(0)
      expect(help.stdout).toContain(`Usage: stovepipe ${command}`)
      expect(help.stdout).toContain('--log-level')
    }
    const bad = await runCli(['status', '--nope'], { cwd: dir.dir })
    expect(bad.code).toBe(2)
    expect(bad.stderr).toContain("Unknown option '--nope'")
    const missing = await runCli(['last-green', 'main'], { cwd: dir.dir })
    expect(missing.code).toBe(3)
    expect(missing.stderr).toContain('no Stovepipe database at')
    expect(existsSync(join(dir.dir, 'stovepipe.db'))).toBe(false)
  }, 60_000)

  it('demo runs the whole flow on a throwaway repository and exits 0', async () => {
    const dir = tempDir('stovepipe-demo-cwd-')
    cleanups.push(() => {
      dir.remove()
    })
    const demo = await runCli(['demo'], { cwd: dir.dir })
    expect(demo.code, demo.stdout + demo.stderr).toBe(0)
    const out = demo.stdout
    expect(out).toMatch(/building [0-9a-f]{7} \(request\/main\/1\): full/)
    expect(out).toMatch(/is red \(request\/main\/2, incremental\)/)
    expect(out).toMatch(/superseded by request\/main\/6 \(request\/main\/5\)/)
    expect(out).toMatch(/building [0-9a-f]{7} \(request\/main\/7\): full \(.+\)/)
    expect(out).toMatch(/Last green of main: [0-9a-f]{7} \(request\/main\/7\)/)
    expect(out).toContain('Requests: 5 green, 1 red, 0 indeterminate, 1 superseded.')
  }, 90_000)

  it('run follows a real repository through linear pushes, a merge and a force-push; read commands and HTTP agree', async () => {
    const { repo, dir, db } = await setup()
    const first = await repo.commit('first', { 'check.sh': CHECK, status: 'ok\n' })
    const hook = await webhookReceiver('s3cret')
    const cli = start(
      [
        'run',
        '--repo',
        repo.dir,
        '--ref',
        'main',
        '--build',
        'sh ./check.sh',
        '--db',
        db,
        '--poll',
        '100ms',
        '--http',
        '127.0.0.1:0',
        '--webhook',
        hook.url,
        '--webhook-secret',
        's3cret',
      ],
      dir,
    )
    const [, url = ''] = await cli.waitFor(/serving (http:\/\/127\.0\.0\.1:\d+)/)
    await cli.waitFor(new RegExp(`${short(first)} is green \\(request/main/1, full\\)`))

    const gate = await runCli(['last-green', 'main', '--db', db], { cwd: dir })
    expect(gate.code).toBe(0)
    expect(gate.stdout.trim()).toBe(`${first} ${repo.uri(first)}`)

    const broken = await repo.commit('break it', { status: 'broken\n' })
    await cli.waitFor(new RegExp(`${short(broken)} is red \\(request/main/2, incremental\\)`))
    const why = await runCli(['why', 'main', short(broken), '--db', db], { cwd: dir })
    expect(why.code).toBe(1)
    expect(why.stdout).toContain('red')
    expect(why.stdout).toContain('request/main/2')
    expect(why.stdout).toContain('status: broken') // the end of the build log

    // A merge commit: the fix lands through a side branch; the merge is validated incrementally.
    await repo.checkout('fix', { create: true })
    await repo.commit('fix it', { status: 'ok\n' })
    await repo.checkout('main')
    const merge = await repo.merge('fix', 'merge the fix')
    await cli.waitFor(new RegExp(`${short(merge)} is green \\(request/main/3, incremental\\)`))

    // A force-push rewrites main: the last green is not in the new history, so a full build.
    await repo.forcePush('refs/heads/main', first)
    await repo.git(['reset', '--hard', first])
    const rewritten = await repo.commit('rewritten', { status: 'ok\n', extra: 'x\n' })
    await cli.waitFor(new RegExp(`${short(rewritten)} is green \\(request/main/4, full\\)`))

    // HTTP and the read commands (direct and through --url) agree.
    const lastGreen = (await (await fetch(`${url}/queues/main/last-green`)).json()) as { uri: string }
    expect(lastGreen.uri).toBe(repo.uri(rewritten))
    const viaUrl = await runCli(['last-green', 'main', '--url', url, '--sha'], { cwd: dir })
    expect(viaUrl.code, viaUrl.stderr).toBe(0)
    expect(viaUrl.stdout.trim()).toBe(rewritten)
    const commit = (await (await fetch(`${url}/queues/main/commits/${broken}`)).json()) as { status: string }
    expect(commit.status).toBe('red')
    const history = await runCli(['history', 'main', '--db', db, '--json'], { cwd: dir })
    const page = JSON.parse(history.stdout) as { items: { id: string; verdict: string }[] }
    expect(page.items.map((r) => [r.id, r.verdict])).toEqual([
      ['request/main/4', 'green'],
      ['request/main/3', 'green'],
      ['request/main/2', 'red'],
      ['request/main/1', 'green'],
    ])
    const events = await runCli(['events', '--db', db], { cwd: dir })
    expect(events.stdout).toMatch(/request\/main\/4 processing\.recording -> recorded \(DONE\) green/)
    const status = await runCli(['status', '--url', url], { cwd: dir })
    expect(status.stdout).toContain(`last green  ${short(rewritten)} (request/main/4`)
    const metrics = await (await fetch(`${url}/metrics`)).text()
    expect(metrics).toContain('stovepipe_verdicts_total')

    // Every verdict and every last-green move reached the webhook, signed, after a refused first attempt.
    const expected = [
      'main:request/main/1:verdict',
      'main:request/main/2:verdict',
      'main:request/main/3:verdict',
      'main:request/main/4:verdict',
      'main:request/main/1:lastGreen',
      'main:request/main/3:lastGreen',
      'main:request/main/4:lastGreen',
    ]
    for (let i = 0; i < 100 && expected.some((key) => !hook.received.includes(key)); i++) await new Promise((done) => setTimeout(done, 100))
    expect([...hook.received].sort()).toEqual([...expected].sort())
    expect(hook.badSignatures).toBe(0)

    cli.child.kill('SIGTERM')
    expect(await cli.exited).toBe(0)
  }, 120_000)

  it('leaves quietly (141, as SIGPIPE would) when whoever reads its output goes away', async () => {
    const dir = tempDir('stovepipe-pipe-')
    cleanups.push(() => {
      dir.remove()
    })
    const cli = start(['--help'], dir.dir)
    cli.child.stdout?.destroy()
    expect(await cli.exited).toBe(141)
    expect(cli.stderr()).not.toContain('EPIPE')
    expect(cli.stderr()).toBe('')
  }, 30_000)

  it('reads a database as a user who cannot write its directory while a writer has it open, and says why not otherwise', async () => {
    const asRoot = process.getuid?.() === 0
    const dir = tempDir('stovepipe-reader-')
    cleanups.push(() => {
      chmodSync(dir.dir, 0o755)
      dir.remove()
    })
    chmodSync(dir.dir, 0o755)
    const db = join(dir.dir, 'stovepipe.db')
    await (await openSqliteStorage({ filename: db })).close()
    // Root ignores permissions: the reader runs as nobody; anyone else loses write access to the directory.
    const read = async (): Promise<{ code: number; stdout: string; stderr: string }> => {
      if (!asRoot) chmodSync(dir.dir, 0o555)
      try {
        return await runCli(['status', '--db', db], { cwd: tmpdir(), asNobody: asRoot })
      } finally {
        chmodSync(dir.dir, 0o755)
      }
    }
    const closed = await read()
    expect(closed.code).toBe(4)
    expect(closed.stderr).toContain('cannot read SQLite database')
    expect(closed.stderr).toContain('exist only while a writer (`stovepipe run`) has it open')
    const writer = await openSqliteStorage({ filename: db })
    try {
      await writer.counters.next('main')
      expect(await read()).toMatchObject({ code: 0, stdout: 'no queues yet (start one with `stovepipe run`)\n' })
    } finally {
      await writer.close()
    }
  }, 60_000)

  it('run whose output reader goes away stops gracefully (builds stopped, writes drained), then exits 141', async () => {
    const { repo, dir, db } = await setup()
    await repo.commit('one', { 'check.sh': CHECK, status: 'ok\n' })
    const cli = start(['run', '--repo', repo.dir, '--build', 'sh ./check.sh', '--db', db, '--poll', '50ms', '--http', 'off'], dir)
    cli.child.stdout?.destroy()
    expect(await cli.exited).toBe(141)
    expect(cli.stderr()).toContain('stopping: killing builds, draining writes')
    expect(cli.stderr()).not.toContain('EPIPE')
  }, 60_000)

  it('run on a ref that does not exist says so in one line per problem, without a log stack, and keeps polling', async () => {
    const { repo, dir, db } = await setup()
    await repo.commit('one', { 'check.sh': CHECK, status: 'ok\n' })
    const cli = start(['run', '--repo', repo.dir, '--ref', 'nope', '--build', 'true', '--db', db, '--poll', '50ms', '--http', 'off'], dir)
    await cli.waitFor(/cannot read nope \(NOT_FOUND\): ref refs\/heads\/nope does not exist/)
    // Several polls later: still one line, and nothing from the logger at the default level.
    await new Promise((done) => setTimeout(done, 300))
    cli.child.kill('SIGTERM')
    expect(await cli.exited).toBe(0)
    expect(cli.stderr().match(/cannot read nope/g)).toHaveLength(1)
    expect(cli.stderr()).not.toContain('"level"')
    expect(cli.stderr()).not.toContain('    at ')
  }, 60_000)

  it('two run processes on one database need their own --node-id: the one that finds the other in its log stops (exit 5)', async () => {
    const { repo, dir, db } = await setup()
    const hold = join(dir, 'hold')
    writeFileSync(hold, '')
    // Builds wait while the file `hold` exists.
    const check = `#!/bin/sh\nwhile [ -f "${hold}" ]; do sleep 0.05; done\nexit 0\n`
    const head = await repo.commit('one', { 'check.sh': check })
    const args = (queue: string, ...more: string[]): string[] => [
      'run',
      '--repo',
      repo.dir,
      '--build',
      'sh ./check.sh',
      '--db',
      db,
      '--poll',
      '100ms',
      '--http',
      'off',
      '--queue',
      queue,
      ...more,
    ]
    const one = start(args('one'), dir)
    await one.waitFor(new RegExp(`building ${short(head)} \\(request/one/1\\)`))
    // Both default to node "local": the second continues the first's log from the same seq.
    const two = start(args('two'), dir)
    await two.waitFor(new RegExp(`building ${short(head)} \\(request/two/1\\)`))
    rmSync(hold)
    expect(await one.exited).toBe(5)
    expect(one.stderr()).toContain('the runtime stopped: its event log failed')
    expect(one.stderr()).toContain('give each process its own --node-id')
    await two.waitFor(new RegExp(`${short(head)} is green \\(request/two/1, full\\)`))
    // Restarted under a node id of its own, the first records its request (unless it had
    // before it stopped: it stops after the transition its log refused) next to the second.
    const again = start(args('one', '--node-id', 'one'), dir)
    await again.waitFor(/as queue one/)
    let gate = await runCli(['last-green', 'one', '--db', db, '--sha'], { cwd: dir })
    for (let i = 0; i < 100 && gate.code !== 0; i++) {
      await new Promise((done) => setTimeout(done, 100))
      gate = await runCli(['last-green', 'one', '--db', db, '--sha'], { cwd: dir })
    }
    expect(gate.stdout.trim()).toBe(head)
    for (const cli of [again, two]) {
      cli.child.kill('SIGTERM')
      expect(await cli.exited).toBe(0)
    }
    const bad = await runCli(['run', '--build', 'true', '--node-id', 'no spaces'], { cwd: dir })
    expect(bad.code).toBe(2)
  }, 120_000)

  it('SIGTERM during a build stops gracefully; a restart resumes the same request and records it', async () => {
    const { repo, dir, db } = await setup()
    const marker = join(dir, 'slow')
    writeFileSync(marker, '')
    const head = await repo.commit('slow one', { 'check.sh': CHECK, status: 'ok\n' })
    const args = ['run', '--repo', repo.dir, '--build', 'sh ./check.sh', '--db', db, '--poll', '100ms', '--http', 'off']
    const first = start(args, dir, { SLOW_MARKER: marker })
    await first.waitFor(new RegExp(`building ${short(head)} \\(request/main/1\\)`))
    first.child.kill('SIGTERM')
    expect(await first.exited).toBe(0)
    expect(first.stderr()).toContain('stopping')

    // Down: the request is still in flight, persisted mid-build.
    const down = await runCli(['status', '--db', db, '--json'], { cwd: dir })
    const queues = JSON.parse(down.stdout) as { name: string; inFlight: { id: string }[] }[]
    expect(queues[0]?.inFlight.map((r) => r.id)).toEqual(['request/main/1'])

    rmSync(marker)
    const second = start(args, dir, { SLOW_MARKER: marker })
    await second.waitFor(new RegExp(`${short(head)} is green \\(request/main/1, full\\)`))
    second.child.kill('SIGTERM')
    expect(await second.exited).toBe(0)
    const gate = await runCli(['last-green', 'main', '--db', db, '--sha'], { cwd: dir })
    expect(gate.stdout.trim()).toBe(head)
  }, 120_000)
})
