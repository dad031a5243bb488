/**
 * The `stovepipe` command in-process: exit codes, text and `--json` output of the read
 * commands on a database written by a runtime, and clear errors for bad flags.
 */
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import { createConnection } from 'mysql2/promise'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { parseDuration, parseListen } from '../../src/cli/args.js'
import { painter, table } from '../../src/cli/io.js'
import { exitCodeOf, main } from '../../src/cli/main.js'
import { maskPassword } from '../../src/cli/read.js'
import { StorageClosedError, StorageFailedError, StoppedError, UnavailableError } from '../../src/storage/errors.js'
import { createFakeBuilder } from '../../src/build/fake.js'
import { createStovepipe } from '../../src/index.js'
import { createFakeSourceControl } from '../../src/sourcecontrol/fake.js'
import { openMysqlStorage } from '../../src/storage/mysql/index.js'
import { openSqliteStorage } from '../../src/storage/sqlite/index.js'
import type { EventRow } from '../../src/storage/types.js'
import { createMysqlDatabase, describeMysql } from '../support/mysql.js'
import { sampleQueue, sampleRequest } from '../../src/testing/index.js'
import { tempDir } from '../support/sqlite.js'

const dir = tempDir('stovepipe-cli-')
const db = join(dir.dir, 'state.db')

async function cli(...argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = ''
  let stderr = ''
  const code = await main(argv, {
    stdout: { write: (text: string) => (stdout += text) },
    stderr: { write: (text: string) => (stderr += text) },
    env: {},
    cwd: dir.dir,
    signal: new AbortController().signal,
  })
  return { code, stdout, stderr }
}

beforeAll(async () => {
  // A database as `stovepipe run` would leave it: main has a green, a red and a newer green; docs has nothing green.
  const storage = await openSqliteStorage({ filename: db })
  const sourceControl = createFakeSourceControl()
  const sp = await createStovepipe({
    storage,
    sourceControl,
    builder: createFakeBuilder({ outcome: (uri) => (uri.includes('bad') ? 'failed' : 'passed'), durationMs: 0 }),
  })
  const main = await sp.queue('main', { ref: 'main' })
  const docs = await sp.queue('docs', { ref: 'docs' })
  for (const sha of ['aaaaaaa1', 'bad0002', 'ccccccc3']) {
    sourceControl.commit('main', sha)
    await main.waitFor((await main.ingest()).id)
  }
  sourceControl.commit('docs', 'bad0004')
  await docs.waitFor((await docs.ingest()).id)
  await sp.stop()
  await storage.close()
}, 30_000)

afterAll(() => {
  dir.remove()
})

describe('stovepipe read commands', () => {
  it('last-green prints sha and URI and exits 0, or exits 1 when there is none', async () => {
    expect(await cli('last-green', 'main', '--db', db)).toEqual({ code: 0, stdout: 'ccccccc3 fake://ccccccc3\n', stderr: '' })
    expect((await cli('last-green', 'main', '--db', db, '--sha')).stdout).toBe('ccccccc3\n')
    const none = await cli('last-green', 'docs', '--db', db)
    expect(none.code).toBe(1)
    expect(none.stdout).toBe('')
    expect(none.stderr).toContain('queue docs has no green commit yet')
    const json = await cli('last-green', 'main', '--db', db, '--json')
    expect(JSON.parse(json.stdout)).toMatchObject({ uri: 'fake://ccccccc3', requestId: 'request/main/3' })
  })

  it('an unknown queue exits 3 with a clear message', async () => {
    const result = await cli('last-green', 'nope', '--db', db)
    expect(result.code).toBe(3)
    expect(result.stderr).toMatch(/stovepipe last-green: .*nope/)
  })

  it('last-green of a commit whose URI has no sha: the URI alone; --sha refuses rather than print null', async () => {
    const path = join(dir.dir, 'svn.db')
    const storage = await openSqliteStorage({ filename: path })
    const lastGreen = { uri: 'svn://host/repo/trunk@123', requestId: 'request/svn/1', at: 5 }
    await storage.commit([{ op: 'queue.create', record: sampleQueue('svn', { config: { ref: 'trunk' }, lastGreen }) }])
    await storage.close()
    expect(await cli('last-green', 'svn', '--db', path)).toEqual({ code: 0, stdout: 'svn://host/repo/trunk@123\n', stderr: '' })
    const sha = await cli('last-green', 'svn', '--db', path, '--sha')
    expect(sha).toMatchObject({ code: 2, stdout: '' })
    expect(sha.stderr).toContain('has no sha (svn://host/repo/trunk@123); ask without --sha')
  })

  it("history shows one line per request, a multi-line reason's first line only", async () => {
    const path = join(dir.dir, 'reasons.db')
    const storage = await openSqliteStorage({ filename: path })
    const reason = 'gave up after 3 attempts: git fetch failed\nfatal: unable to access\nremote: denied'
    await storage.commit([
      { op: 'queue.create', record: sampleQueue('q', { config: { ref: 'main' } }) },
      {
        op: 'request.create',
        record: sampleRequest('q', 1, { state: 'recorded', data: { step: 'recorded', context: { verdict: 'indeterminate', reason } } }),
      },
    ])
    await storage.close()
    const lines = (await cli('history', 'q', '--db', path)).stdout.trim().split('\n')
    expect(lines).toHaveLength(2)
    expect(lines[1]).toMatch(/indeterminate .*gave up after 3 attempts: git fetch failed$/)
    const json = JSON.parse((await cli('history', 'q', '--db', path, '--json')).stdout) as { items: { reason: string }[] }
    expect(json.items[0]?.reason).toBe(reason)
  })

  it('history lists recorded requests newest first, as text and JSON', async () => {
    const text = await cli('history', 'main', '--db', db)
    expect(text.code).toBe(0)
    const lines = text.stdout.trim().split('\n')
    expect(lines[0]).toMatch(/^REQUEST\s+SHA\s+VERDICT\s+STRATEGY\s+ENDED\s+REASON$/)
    expect(lines.slice(1).map((l) => l.split(/\s+/).slice(0, 3))).toEqual([
      ['request/main/3', 'ccccccc', 'green'],
      ['request/main/2', 'bad0002', 'red'],
      ['request/main/1', 'aaaaaaa', 'green'],
    ])
    const page = JSON.parse((await cli('history', 'main', '--db', db, '--json', '--limit', '2')).stdout) as {
      items: { id: string }[]
      nextCursor?: string
    }
    expect(page.items.map((r) => r.id)).toEqual(['request/main/3', 'request/main/2'])
    expect(page.nextCursor).toBeDefined()
    const rest = JSON.parse((await cli('history', 'main', '--db', db, '--json', '--cursor', page.nextCursor ?? '')).stdout) as {
      items: { id: string }[]
    }
    expect(rest.items.map((r) => r.id)).toEqual(['request/main/1'])
  })

  it("history's hint for the next page repeats the source flags, so it can be run as printed", async () => {
    const first = await cli('history', 'main', '--db', db, '--limit', '2')
    const hint = /^more: (stovepipe history .*)$/m.exec(first.stdout)?.[1] ?? ''
    expect(hint).toMatch(/^stovepipe history main --cursor \S+ --limit 2 --db \S+$/)
    const argv = hint
      .split(' ')
      .slice(1)
      .map((word) => word.replace(/^'(.*)'$/, '$1'))
    const next = await cli(...argv)
    expect(next.code).toBe(0)
    expect(next.stdout).toMatch(/^request\/main\/1\s+aaaaaaa\s+green/m)
    expect(next.stdout).not.toContain('more:')
  })

  it('why explains a red commit (exit 1) and a green one (exit 0), by short sha', async () => {
    const red = await cli('why', 'main', 'bad0002', '--db', db)
    expect(red.code).toBe(1)
    expect(red.stdout).toContain('is red')
    expect(red.stdout).toContain('request/main/2')
    const green = await cli('why', 'main', 'ccccccc3', '--db', db, '--json')
    expect(green.code).toBe(0)
    expect(JSON.parse(green.stdout)).toMatchObject({ status: 'green', isLastGreen: true })
    const unknown = await cli('why', 'main', 'fake://nowhere', '--db', db)
    expect(unknown.code).toBe(1)
    expect(unknown.stdout).toContain('never')
  })

  it('status shows every queue; events renders the log', async () => {
    const status = await cli('status', '--db', db)
    expect(status.stdout).toContain('main  main')
    expect(status.stdout).toContain('last green  ccccccc (request/main/3')
    expect(status.stdout).toContain('docs  docs')
    const events = await cli('events', '--db', db, '--from', '0', '--limit', '3')
    const lines = events.stdout.trim().split('\n')
    expect(lines).toHaveLength(4)
    expect(lines[0]).toMatch(/^#0 .* request\/main\/1 new -> accepted \(INIT\)$/)
    expect(lines[3]).toBe(`more: stovepipe events --node local --from 3 --limit 3 --db ${db}`)
  })
})

describe('stovepipe events with several nodes', () => {
  const nodesDb = join(dir.dir, 'nodes.db')
  const row = (nodeId: string, seq: number): EventRow => ({
    kind: 'event',
    nodeId,
    seq,
    id: seq,
    at: 1_000 + seq,
    payload: { queue: 'main', requestId: `request/main/${seq + 1}`, from: 'new', to: 'accepted', event: 'INIT' },
  })

  beforeAll(async () => {
    // Two processes' logs in one database: node a wrote 5 events, node b 3, each numbered from 0.
    const storage = await openSqliteStorage({ filename: nodesDb })
    await storage.events.append([0, 1, 2, 3, 4].map((seq) => row('a', seq)))
    await storage.events.append([0, 1, 2].map((seq) => row('b', seq)))
    await storage.close()
  })

  const ids = (stdout: string): string[] =>
    stdout
      .trim()
      .split('\n')
      .filter((line) => !line.startsWith('more:'))
      .map((line) => `${line.split(' #')[0] ?? ''} #${/#(\d+)/.exec(line)?.[1] ?? '?'}`)

  it('prints every node, each line with its node; --node picks one', async () => {
    const all = await cli('events', '--db', nodesDb)
    expect(all.code).toBe(0)
    expect(ids(all.stdout)).toEqual(['a  #0', 'a  #1', 'a  #2', 'a  #3', 'a  #4', 'b  #0', 'b  #1', 'b  #2'])
    const b = await cli('events', '--db', nodesDb, '--node', 'b', '--from', '1')
    expect(
      b.stdout
        .trim()
        .split('\n')
        .map((line) => /^#(\d+) /.exec(line)?.[1]),
    ).toEqual(['1', '2'])
    const json = await cli('events', '--db', nodesDb, '--json')
    expect(
      json.stdout
        .trim()
        .split('\n')
        .map((line) => (JSON.parse(line) as EventRow).nodeId),
    ).toEqual(['a', 'a', 'a', 'a', 'a', 'b', 'b', 'b'])
    expect((await cli('events', '--db', nodesDb, '--node', 'no such')).code).toBe(2)
    expect((await cli('events', '--db', nodesDb, '--limit', '10001')).code).toBe(2)
  })

  it('pages each node with a position of its own, and says how to go on', async () => {
    const first = await cli('events', '--db', nodesDb, '--limit', '2')
    expect(ids(first.stdout)).toEqual(['a  #0', 'a  #1', 'b  #0', 'b  #1'])
    const hints = first.stdout.split('\n').filter((line) => line.startsWith('more: '))
    expect(hints).toEqual([
      `more: stovepipe events --node a --from 2 --limit 2 --db ${nodesDb}`,
      `more: stovepipe events --node b --from 2 --limit 2 --db ${nodesDb}`,
    ])
    const rest = await cli(...(hints[1] ?? '').slice('more: stovepipe '.length).split(' '))
    expect(
      rest.stdout
        .trim()
        .split('\n')
        .map((line) => /^#(\d+) /.exec(line)?.[1]),
    ).toEqual(['2'])
  })

  it('--follow goes on with each node from its own position, and picks up a new node', async () => {
    let stdout = ''
    const abort = new AbortController()
    const io = {
      stdout: { write: (text: string) => (stdout += text) },
      stderr: { write: () => true },
      env: {},
      cwd: dir.dir,
      signal: abort.signal,
    }
    const following = main(['events', '--db', nodesDb, '--follow'], io)
    const until = async (lines: number): Promise<void> => {
      for (let i = 0; i < 100 && stdout.trim().split('\n').length < lines; i++) await new Promise((done) => setTimeout(done, 50))
    }
    await until(8)
    const storage = await openSqliteStorage({ filename: nodesDb })
    try {
      // Node a's next event has id 5, below nothing b printed; node c is new.
      await storage.events.append([row('a', 5), row('c', 0)])
      await until(10)
    } finally {
      abort.abort()
      await following
      await storage.close()
    }
    expect(ids(stdout).slice(8)).toEqual(['a  #5', 'c  #0'])
  })
})

describe('read commands never write', () => {
  const copy = (name: string): string => {
    const path = join(dir.dir, name)
    copyFileSync(db, path)
    return path
  }

  it('read a database without changing a byte of it, and without its write lock', async () => {
    const path = copy('gate.db')
    const before = readFileSync(path)
    // Another process holds a write transaction: a reader still reads, at once.
    const writer = new Database(path)
    writer.exec('BEGIN IMMEDIATE')
    try {
      const started = Date.now()
      expect(await cli('last-green', 'main', '--db', path, '--sha')).toEqual({ code: 0, stdout: 'ccccccc3\n', stderr: '' })
      expect(Date.now() - started).toBeLessThan(2_000)
    } finally {
      writer.exec('ROLLBACK')
      writer.close()
    }
    for (const argv of [['status'], ['history', 'main'], ['events'], ['why', 'main', 'bad0002']]) await cli(...argv, '--db', path)
    expect(readFileSync(path).equals(before)).toBe(true)
  })

  it('refuse a file that is not a Stovepipe database (exit 3) or not a database (exit 2), and add nothing to it', async () => {
    const empty = join(dir.dir, 'empty.db')
    writeFileSync(empty, '')
    const foreign = join(dir.dir, 'app.db')
    const app = new Database(foreign)
    app.exec('CREATE TABLE users (id INTEGER PRIMARY KEY)')
    app.close()
    const foreignBefore = readFileSync(foreign)
    const text = join(dir.dir, 'notes.txt')
    writeFileSync(text, 'not a database, but long enough to have a header that is not SQLite\n'.repeat(10))
    const onEmpty = await cli('status', '--db', empty)
    expect(onEmpty).toMatchObject({ code: 3, stderr: expect.stringContaining('no Stovepipe database at') as string })
    expect(readFileSync(empty).length).toBe(0)
    expect((await cli('status', '--db', foreign)).code).toBe(3)
    expect(readFileSync(foreign).equals(foreignBefore)).toBe(true)
    const onText = await cli('status', '--db', text)
    expect(onText.code).toBe(2)
    expect(onText.stderr).toMatch(/is not a SQLite database/)
    expect(onText.stderr).not.toContain('    at ')
  })

  it('refuse a database a newer or an older Stovepipe wrote (exit 2), and migrate neither', async () => {
    const newer = copy('newer.db')
    const raw = new Database(newer)
    raw.prepare('INSERT INTO stovepipe_migrations (version, name, applied_at) VALUES (?, ?, ?)').run(99, 'from the future', 1)
    raw.close()
    const refused = await cli('status', '--db', newer)
    expect(refused.code).toBe(2)
    expect(refused.stderr).toContain('was written by a newer Stovepipe (schema version 99; this one knows up to 3)')
    // `run` (a writer) refuses it too, before anything is written.
    await expect(openSqliteStorage({ filename: newer })).rejects.toThrow(/newer Stovepipe/)
    const older = copy('older.db')
    const old = new Database(older)
    old.exec('DELETE FROM stovepipe_migrations WHERE version > 1; DROP TABLE outbox; DROP TABLE dead_letters')
    old.close()
    const stale = await cli('last-green', 'main', '--db', older, '--sha')
    expect(stale.code).toBe(2)
    expect(stale.stderr).toContain("has schema version 1, older than this Stovepipe's 3; a read does not migrate it")
    const check = new Database(older, { readonly: true })
    expect(check.prepare('SELECT MAX(version) AS v FROM stovepipe_migrations').get()).toEqual({ v: 1 })
    check.close()
  })
})

describe('stovepipe arguments', () => {
  it('rejects bad flags and values with exit 2 and nothing written', async () => {
    expect((await cli('run', '--repo', dir.dir)).stderr).toContain('--build "<command>" is required')
    expect((await cli('run', '--build', 'true', '--poll', 'soon')).stderr).toContain('--poll must be a duration')
    expect((await cli('run', '--build', 'true', '--http', 'localhost')).code).toBe(2)
    expect((await cli('run', '--build', 'true', '--queue', 'no spaces')).code).toBe(2)
    expect((await cli('history', 'main', '--db', db, '--limit', '0')).code).toBe(2)
    expect((await cli('why', 'main')).stderr).toContain('missing <sha>')
    expect((await cli('status', 'extra', '--db', db)).stderr).toContain('unexpected argument "extra"')
    expect((await cli('frobnicate')).code).toBe(2)
    const notRepo = await cli('run', '--repo', dir.dir, '--build', 'true', '--http', 'off', '--db', join(dir.dir, 'run.db'))
    expect(notRepo.code).toBe(2)
    expect(notRepo.stderr).toMatch(/stovepipe run: .*git/i)
    expect((await cli('status', '--db', db, '--url', 'http://127.0.0.1:1')).code).toBe(2)
  })

  it('never echoes a MySQL password in a hint', () => {
    expect(maskPassword('mysql://ci:s3cret@db:3306/sp')).toBe('mysql://ci:***@db:3306/sp')
    expect(maskPassword('mysql://ci@db/sp?password=s3cret&ssl=1')).toBe('mysql://ci@db/sp?password=***&ssl=1')
    expect(maskPassword('mysql://root@127.0.0.1/test')).toBe('mysql://root@127.0.0.1/test')
  })

  it('says a parse error once, on one line', async () => {
    for (const [argv, text] of [
      [['status', '--nope'], "stovepipe status: Unknown option '--nope'. See `stovepipe status --help`.\n"],
      [['run', '--build', 'true', '--poll'], "stovepipe run: Option '--poll <value>' argument missing. See `stovepipe run --help`.\n"],
      [
        ['events', '--from', '-1'],
        "stovepipe events: Option '--from' argument is ambiguous (for a value starting with a dash, write --from=-XYZ). See `stovepipe events --help`.\n",
      ],
    ] as const) {
      expect(await cli(...argv)).toEqual({ code: 2, stdout: '', stderr: text })
    }
  })

  it('is strict about --from, --log-level and mixing --url with --db', async () => {
    for (const from of ['', '1e1', '0x10', ' 3 ', '-0', '1.5']) expect((await cli('events', '--db', db, `--from=${from}`)).code).toBe(2)
    expect((await cli('events', '--db', db, '--from', '007', '--limit', '1')).stdout).toMatch(/^#7 /)
    const level = await cli('status', '--db', db, '--log-level', 'bogus')
    expect(level).toMatchObject({ code: 2, stderr: expect.stringContaining('--log-level must be one of') as string })
    expect((await cli('events', '--follow', '--url', 'http://127.0.0.1:1', '--db', db)).code).toBe(2)
  })

  it('maps errors to exit codes: a stopped runtime is 5 only for run; storage and unavailable are 4', () => {
    expect(exitCodeOf(new StoppedError('stopped'), 'run')).toBe(5)
    expect(exitCodeOf(new StoppedError('stopped'), 'status')).toBe(4)
    expect(exitCodeOf(new StorageFailedError('disk'), 'status')).toBe(4)
    expect(exitCodeOf(new StorageClosedError('closed'), 'last-green')).toBe(4)
    expect(exitCodeOf(new UnavailableError('down'), 'why')).toBe(4)
    expect(exitCodeOf(new Error('bug'), 'status')).toBe(70)
  })

  it('lines a coloured table up by what shows on the screen', () => {
    const paint = painter({ isTTY: true }, {})
    const lines = table(
      ['A', 'B'],
      [
        [paint.green('green'), 'x'],
        ['red', 'y'],
      ],
    ).split('\n')
    const strip = (line: string): string => line.replaceAll('\u001b[32m', '').replaceAll('\u001b[0m', '')
    expect(lines.slice(0, 3).map(strip)).toEqual(['A      B', 'green  x', 'red    y'])
  })

  it('parses durations and listen addresses', () => {
    expect(parseDuration('500ms', 'x')).toBe(500)
    expect(parseDuration('5s', 'x')).toBe(5000)
    expect(parseDuration('2m', 'x')).toBe(120_000)
    expect(parseDuration('250', 'x')).toBe(250)
    expect(() => parseDuration('0s', 'x')).toThrow(/positive/)
    expect(parseListen('127.0.0.1:8080')).toEqual({ host: '127.0.0.1', port: 8080 })
    expect(parseListen('[::1]:0')).toEqual({ host: '::1', port: 0 })
    expect(() => parseListen('127.0.0.1:70000')).toThrow(/host:port/)
  })

  it('--url to a server that is not there exits 4 (unavailable)', async () => {
    const result = await cli('status', '--url', 'http://127.0.0.1:9')
    expect(result.code).toBe(4)
    expect(result.stderr).toContain('127.0.0.1:9')
  })
})

describeMysql('stovepipe read commands on MySQL', () => {
  it('last-green, history and why read a MySQL database with --mysql', async () => {
    const database = await createMysqlDatabase()
    try {
      const storage = await openMysqlStorage({ uri: database.url })
      const sourceControl = createFakeSourceControl()
      const sp = await createStovepipe({
        storage,
        sourceControl,
        builder: createFakeBuilder({ outcome: (uri) => (uri.includes('bad') ? 'failed' : 'passed'), durationMs: 0 }),
      })
      const queue = await sp.queue('main', { ref: 'main' })
      for (const sha of ['good001', 'bad0002']) {
        sourceControl.commit('main', sha)
        await queue.waitFor((await queue.ingest()).id)
      }
      await sp.stop()
      await storage.close()
      expect(await cli('last-green', 'main', '--mysql', database.url)).toEqual({ code: 0, stdout: 'good001 fake://good001\n', stderr: '' })
      const history = JSON.parse((await cli('history', 'main', '--mysql', database.url, '--json')).stdout) as {
        items: { verdict: string }[]
      }
      expect(history.items.map((r) => r.verdict)).toEqual(['red', 'green'])
      expect((await cli('why', 'main', 'bad0002', '--mysql', database.url)).code).toBe(1)
    } finally {
      await database.drop()
    }
  }, 60_000)

  it('a read of a MySQL database without Stovepipe tables exits 3 and creates none', async () => {
    const database = await createMysqlDatabase()
    const connection = await createConnection(database.url)
    try {
      await connection.query('CREATE TABLE app_users (id INT PRIMARY KEY)')
      const result = await cli('status', '--mysql', database.url)
      expect(result.code).toBe(3)
      expect(result.stderr).toContain('no Stovepipe database in MySQL database')
      const [tables] = await connection.query('SHOW TABLES')
      expect((tables as Record<string, string>[]).map((row) => Object.values(row)[0])).toEqual(['app_users'])
    } finally {
      await connection.end()
      await database.drop()
    }
  }, 60_000)
})
