/**
 * `stovepipe demo`: the whole flow with no setup. Creates a throwaway git repository with a
 * green commit, a broken one, a fix, two pushes during a build (coalesced) and a force-push,
 * then validates each head with the real git backend, the shell builder and SQLite, printing
 * a timeline as it goes.
 *
 * @module
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createShellBuilder } from '../build/shell.js'
import { createStovepipe } from '../runtime/stovepipe.js'
import type { IngestResult, QueueHandle } from '../runtime/queue-host.js'
import { createGitSourceControlProvider } from '../sourcecontrol/git.js'
import { git } from '../sourcecontrol/git-exec.js'
import { createStatusReader } from '../status/index.js'
import { openSqliteStorage } from '../storage/sqlite/index.js'
import { stringOption, type CommandSpec, type Parsed } from './args.js'
import { shortSha } from '../status/index.js'
import { cliLogger, painter, type CliIo } from './io.js'
import { Timeline } from './timeline.js'

/** The `demo` subcommand. */
export const DEMO: CommandSpec = {
  name: 'demo',
  summary: 'Run the whole flow on a throwaway git repository: green, broken and fixed commits, coalesced pushes and a force-push.',
  positionals: [],
  options: {
    keep: { type: 'boolean', description: 'keep the temporary repository and database and print where they are' },
  },
  details: 'Needs git on the PATH and nothing else. Takes a few seconds.',
}

/** The check the demo repository runs: passes unless the file `status` says otherwise; sleeps `delay` seconds first. */
const CHECK_SCRIPT = `#!/bin/sh
sleep "$(cat delay 2>/dev/null || echo 0)"
status="$(cat status)"
if [ "$status" = ok ]; then echo "checks passed at $STOVEPIPE_SHA ($STOVEPIPE_STRATEGY)"; exit 0; fi
echo "checks failed at $STOVEPIPE_SHA: $status"
exit 1
`

class DemoRepo {
  constructor(readonly path: string) {}

  static async create(path: string): Promise<DemoRepo> {
    const repo = new DemoRepo(path)
    await git(path, ['init', '--quiet', '--initial-branch=main'])
    await git(path, ['config', 'user.name', 'Stovepipe Demo'])
    await git(path, ['config', 'user.email', 'demo@stovepipe.invalid'])
    await git(path, ['config', 'commit.gpgsign', 'false'])
    writeFileSync(join(path, 'check.sh'), CHECK_SCRIPT, { mode: 0o755 })
    return repo
  }

  /** Commits `status` (and an optional build delay in seconds) and returns the subject. */
  async commit(subject: string, status: string, delaySeconds = 0): Promise<string> {
    writeFileSync(join(this.path, 'status'), `${status}\n`)
    writeFileSync(join(this.path, 'delay'), `${delaySeconds}\n`)
    writeFileSync(join(this.path, 'CHANGELOG'), `${subject}\n`, { flag: 'a' })
    await git(this.path, ['add', '--all'])
    await git(this.path, ['commit', '--quiet', '--message', subject])
    return subject
  }

  /** Moves main back to `rev` (a force-push rewriting history). */
  async resetTo(rev: string): Promise<void> {
    await git(this.path, ['reset', '--quiet', '--hard', rev])
  }
}

/** Runs the demo; resolves with 0 when every step showed what it should. */
export async function demoCommand(parsed: Parsed, io: CliIo): Promise<number> {
  const logger = cliLogger(io, stringOption(parsed, 'log-level'))
  const keep = parsed.values.keep === true
  const paint = painter(io.stdout, io.env)
  const dir = mkdtempSync(join(tmpdir(), 'stovepipe-demo-'))
  const repoPath = join(dir, 'repo')
  const dbPath = join(dir, 'stovepipe.db')
  const out = (text: string): void => {
    io.stdout.write(`${text}\n`)
  }
  const storage = await openSqliteStorage({ filename: dbPath })
  const timeline = new Timeline(io, Date.now)
  let sp: Awaited<ReturnType<typeof createStovepipe>> | undefined
  try {
    mkdirSync(repoPath)
    const repo = await DemoRepo.create(repoPath)
    sp = await createStovepipe({
      storage,
      sourceControl: createGitSourceControlProvider(),
      builder: createShellBuilder({ command: 'sh ./check.sh', logger }),
      logger,
    })
    const runtime = sp
    const queue = await runtime.queue('main', { repo: repoPath, ref: 'refs/heads/main' })
    timeline.follow({
      events: runtime.events,
      request: (id) => runtime.request(id),
      lastGreenOf: () => queue.lastGreen(),
    })

    out(paint.bold(`Stovepipe demo: a throwaway repository at ${repoPath}, state in ${dbPath}`))
    out(`Build command: sh ./check.sh (passes while the file "status" says ok)\n`)

    const push = async (subject: string, status: string, delay = 0): Promise<IngestResult> => {
      await repo.commit(subject, status, delay)
      const result = await queue.ingest()
      timeline.ingested('main', result, subject)
      return result
    }
    const settle = async (q: QueueHandle, id: string): Promise<void> => {
      await q.waitFor(id, 'recorded')
      await timeline.printedEnd(id)
    }

    out(paint.bold('1. A first commit: nothing is green yet, so it is built in full.'))
    const first = await push('Add the service', 'ok')
    await settle(queue, first.id)

    out(paint.bold('\n2. A broken commit: built incrementally since the last green, and red.'))
    const broken = await push('Break the parser', 'broken: parser test fails')
    await settle(queue, broken.id)

    out(paint.bold('\n3. The fix: green again; last green moves forward.'))
    const fix = await push('Fix the parser', 'ok')
    await settle(queue, fix.id)

    out(paint.bold('\n4. Three pushes while a slow build runs: only the newest waiting head is validated.'))
    const slow = await push('Slow migration', 'ok', 1)
    const middle = await push('Tweak logging', 'ok')
    const newest = await push('Update docs', 'ok')
    await settle(queue, slow.id)
    await queue.waitFor(middle.id, 'superseded')
    await timeline.printedEnd(middle.id)
    await settle(queue, newest.id)

    out(paint.bold('\n5. A force-push rewrites main: the last green is no longer in its history, so the new head is built in full.'))
    await repo.resetTo('HEAD~5')
    const rewritten = await push('Rewrite: squash the release', 'ok')
    await settle(queue, rewritten.id)

    const reader = createStatusReader(storage)
    const why = await reader.why('main', broken.uri)
    const green = queue.lastGreen()
    out(paint.bold('\nWhy is the broken commit not green?'))
    out(`  ${why.summary}`)
    out(paint.bold('\nLast green of main: ') + (green === undefined ? 'none' : `${shortSha(green.uri)} (${green.requestId})`))
    const stats = queue.stats()
    out(`Requests: ${stats.green} green, ${stats.red} red, ${stats.indeterminate} indeterminate, ${stats.superseded} superseded.`)
    if (keep) {
      out(`\nKept. Try: stovepipe status --db ${dbPath}`)
      out(`           stovepipe why main ${shortSha(broken.uri)} --db ${dbPath}`)
    }
    const expected = stats.green === 5 && stats.red === 1 && stats.superseded === 1 && green?.requestId === rewritten.id
    if (!expected) {
      io.stderr.write('stovepipe demo: the run did not end as expected (see the timeline above)\n')
      return 1
    }
    return 0
  } finally {
    await timeline.close()
    await sp?.stop()
    await storage.close()
    if (!keep) rmSync(dir, { recursive: true, force: true })
  }
}
