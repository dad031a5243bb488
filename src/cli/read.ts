/**
 * The read commands: `status`, `last-green`, `history`, `events` and `why`. Each reads the
 * state directly (`--db`, `--mysql`) or asks a running server (`--url`), prints text (plain
 * when not a TTY) or `--json`.
 *
 * @module
 */
import { renderEntry, type LogEntry } from '../actors/event-log.js'
import { createHttpClient, followEvents } from '../http/index.js'
import { createStatusReader, lastIdOf, shortSha, type StatusReader } from '../status/index.js'
import { InvalidInputError } from '../storage/errors.js'
import { assertNodeId } from '../storage/validation.js'
import type { Storage } from '../storage/types.js'
import { READ_OPTIONS, parsePositiveInt, stringOption, type CommandSpec, type Parsed } from './args.js'
import { cliLogger, formatTime, painter, table, type CliIo } from './io.js'
import { openState } from './storage.js'

const spec = (name: string, summary: string, positionals: string[], extra: CommandSpec['options'] = {}, details?: string): CommandSpec => ({
  name,
  summary,
  positionals,
  options: { ...extra, ...READ_OPTIONS },
  ...(details === undefined ? {} : { details }),
})

/** Lines of a build log `why` shows for a commit that is not green. */
const LOG_LINES = 20

/** `stovepipe status`. */
export const STATUS = spec('status', 'Show every queue: last green, requests in flight, counts.', [])
/** `stovepipe last-green`. */
export const LAST_GREEN = spec(
  'last-green',
  'Print the last green commit of a queue (sha and URI); exit code 1 when there is none.',
  ['<queue>'],
  {},
  'Gate a deploy on it:\n  stovepipe last-green main && ./deploy.sh "$(stovepipe last-green main --sha)"',
)
LAST_GREEN.options.sha = { type: 'boolean', description: 'print only the sha' }
/** `stovepipe history`. */
export const HISTORY = spec('history', 'List the recorded requests of a queue, newest first: the greenness history.', ['<queue>'], {
  limit: { type: 'string', value: '<n>', description: 'how many', defaultText: '20' },
  cursor: { type: 'string', value: '<cursor>', description: 'continue from a previous page' },
})
/** `stovepipe events`. */
export const EVENTS = spec(
  'events',
  'Print the event log (every request transition); gaps are shown as text.',
  [],
  {
    node: { type: 'string', value: '<id>', description: "only this node's log (each process sharing a database is a node)" },
    from: { type: 'string', value: '<id>', description: 'start at this logical event id (of each node)', defaultText: '0' },
    follow: { type: 'boolean', short: 'f', description: 'keep printing new events until interrupted' },
    limit: { type: 'string', value: '<n>', description: 'at most this many per node (without --follow)', defaultText: '1000' },
  },
  'Each node numbers its events from 0. With several nodes, each line starts with its node, and\n' +
    "--follow with --url streams the server's own node unless --node names another.",
)
/** `stovepipe why`. */
export const WHY = spec(
  'why',
  'Explain whether a commit is green and, if not, why: fact, verdict, request, superseded by, still in flight.',
  ['<queue>', '<sha>'],
  {},
  'The sha may be abbreviated (at least 7 characters) or a full URI. Exit code 0 when green, 1 otherwise.\n' +
    'For a red commit it also prints the end of its build log (the whole last 64 KiB is in --json and GET /requests/:id).',
)

interface Source {
  reader: StatusReader
  storage?: Storage
  close(): Promise<void>
}

async function openSource(parsed: Parsed, io: CliIo): Promise<Source> {
  const url = stringOption(parsed, 'url')
  const db = stringOption(parsed, 'db')
  const mysql = stringOption(parsed, 'mysql')
  if (url !== undefined) {
    const token = stringOption(parsed, 'token') ?? io.env.STOVEPIPE_TOKEN
    return { reader: createHttpClient({ url, ...(token === undefined ? {} : { token }) }), close: () => Promise.resolve() }
  }
  const storage = await openState({ db, mysql }, io.cwd, { readOnly: true })
  return { reader: createStatusReader(storage), storage, close: () => storage.close() }
}

/** Refuses what no read command takes: --url with --db/--mysql, a bad --log-level (they log nothing, but it is still bad input). */
function checkSourceFlags(parsed: Parsed, io: CliIo): void {
  if (
    stringOption(parsed, 'url') !== undefined &&
    (stringOption(parsed, 'db') !== undefined || stringOption(parsed, 'mysql') !== undefined)
  ) {
    throw new InvalidInputError('give either --url or --db/--mysql, not both')
  }
  cliLogger(io, stringOption(parsed, 'log-level'))
}

/** A word for a shell command line, quoted when it needs to be. */
const shellWord = (word: string): string => (/^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replaceAll("'", `'\\''`)}'`)

/** A MySQL URI with its password (user info or `password=` parameter) shown as `***`. */
export const maskPassword = (uri: string): string =>
  uri.replace(/(\/\/[^/:@\s]*):[^/@\s]*@/, '$1:***@').replace(/([?&]password=)[^&#]*/gi, '$1***')

/**
 * The source flags given (`--db`, `--mysql`, `--url`) as they would be typed again, for the
 * commands the read commands suggest. A MySQL password is shown as `***` (never echoed), and
 * a token stays in its flag or STOVEPIPE_TOKEN.
 */
function sourceArgs(parsed: Parsed): string {
  const words: string[] = []
  for (const name of ['db', 'mysql', 'url'] as const) {
    const value = stringOption(parsed, name)
    if (value !== undefined) words.push(`--${name}`, shellWord(name === 'mysql' ? maskPassword(value) : value))
  }
  return words.length === 0 ? '' : ` ${words.join(' ')}`
}

async function withSource(parsed: Parsed, io: CliIo, work: (source: Source) => Promise<number>): Promise<number> {
  checkSourceFlags(parsed, io)
  const source = await openSource(parsed, io)
  try {
    return await work(source)
  } finally {
    await source.close()
  }
}

const json = (io: CliIo, value: unknown): void => {
  io.stdout.write(`${JSON.stringify(value, null, 2)}\n`)
}

/** Runs `stovepipe status`. */
export function statusCommand(parsed: Parsed, io: CliIo): Promise<number> {
  return withSource(parsed, io, async ({ reader }) => {
    const queues = await reader.queues()
    if (parsed.values.json === true) {
      json(io, queues)
      return 0
    }
    if (queues.length === 0) {
      io.stdout.write('no queues yet (start one with `stovepipe run`)\n')
      return 0
    }
    const paint = painter(io.stdout, io.env)
    for (const q of queues) {
      const green =
        q.lastGreen === null
          ? paint.yellow('none')
          : `${paint.green(shortSha(q.lastGreen.uri))} (${q.lastGreen.requestId}, ${formatTime(q.lastGreen.at)})`
      io.stdout.write(`${paint.bold(q.name)}  ${q.config.ref}${q.config.repo === undefined ? '' : ` in ${q.config.repo}`}\n`)
      io.stdout.write(`  last green  ${green}\n`)
      if (q.inFlight.length === 0) io.stdout.write('  in flight   none\n')
      for (const r of q.inFlight) io.stdout.write(`  in flight   ${r.id}  ${shortSha(r.uri)}  ${r.step ?? r.state}\n`)
    }
    return 0
  })
}

/** Runs `stovepipe last-green <queue>`: exit 0 with the commit, 1 when there is none. */
export function lastGreenCommand(parsed: Parsed, io: CliIo): Promise<number> {
  const [queue = ''] = parsed.positionals
  return withSource(parsed, io, async ({ reader }) => {
    const green = await reader.lastGreen(queue)
    if (parsed.values.json === true) json(io, green)
    else if (green === null) io.stderr.write(`queue ${queue} has no green commit yet\n`)
    else if (parsed.values.sha === true) {
      // Never print "null" where a deploy script expects a sha.
      if (green.sha === null) throw new InvalidInputError(`the last green commit of ${queue} has no sha (${green.uri}); ask without --sha`)
      io.stdout.write(`${green.sha}\n`)
    } else io.stdout.write(green.sha === null ? `${green.uri}\n` : `${green.sha} ${green.uri}\n`)
    return green === null ? 1 : 0
  })
}

/** Runs `stovepipe history <queue>`. */
export function historyCommand(parsed: Parsed, io: CliIo): Promise<number> {
  const [queue = ''] = parsed.positionals
  const limit = parsePositiveInt(stringOption(parsed, 'limit') ?? '20', '--limit')
  const cursor = stringOption(parsed, 'cursor')
  return withSource(parsed, io, async ({ reader }) => {
    const page = await reader.history(queue, { limit, ...(cursor === undefined ? {} : { cursor }) })
    if (parsed.values.json === true) {
      json(io, page)
      return 0
    }
    const paint = painter(io.stdout, io.env)
    const rows = page.items.map((r) => [
      r.id,
      shortSha(r.uri),
      r.verdict === 'green' ? paint.green('green') : r.verdict === 'red' ? paint.red('red') : paint.yellow(r.verdict ?? r.state),
      r.strategy ?? '-',
      formatTime(r.endedAt ?? r.updatedAt),
      // One line per row: a reason can carry a command's stderr (the whole of it is in --json).
      (r.reason ?? '').split('\n', 1)[0] ?? '',
    ])
    io.stdout.write(
      rows.length === 0
        ? `no recorded requests in ${queue} yet\n`
        : table(['REQUEST', 'SHA', 'VERDICT', 'STRATEGY', 'ENDED', 'REASON'], rows),
    )
    if (page.nextCursor !== undefined) {
      const size = stringOption(parsed, 'limit') === undefined ? '' : ` --limit ${limit}`
      io.stdout.write(`more: stovepipe history ${queue} --cursor ${shellWord(page.nextCursor)}${size}${sourceArgs(parsed)}\n`)
    }
    return 0
  })
}

/** Runs `stovepipe events [--node id] [--follow] [--from id]`. */
export function eventsCommand(parsed: Parsed, io: CliIo): Promise<number> {
  const fromText = stringOption(parsed, 'from') ?? '0'
  const from = /^\d{1,16}$/.test(fromText) ? Number(fromText) : Number.NaN
  if (!Number.isSafeInteger(from)) throw new InvalidInputError(`--from must be a non-negative integer, got ${JSON.stringify(fromText)}`)
  const limit = parsePositiveInt(stringOption(parsed, 'limit') ?? '1000', '--limit')
  if (limit > 10_000) throw new InvalidInputError(`--limit must be at most 10000, got ${limit}`)
  const node = stringOption(parsed, 'node')
  if (node !== undefined) assertNodeId(node)
  const follow = parsed.values.follow === true
  // Once rows of two nodes were printed, every line says its node.
  let tagged = false
  const print = (entry: LogEntry): void => {
    if (parsed.values.json === true) io.stdout.write(`${JSON.stringify(entry)}\n`)
    else io.stdout.write(`${tagged ? `${entry.nodeId}  ` : ''}${renderEntry(entry)}\n`)
  }
  const url = stringOption(parsed, 'url')
  if (follow && url !== undefined && node === undefined) {
    checkSourceFlags(parsed, io)
    const token = stringOption(parsed, 'token') ?? io.env.STOVEPIPE_TOKEN
    const onReconnect = (error: unknown, delayMs: number): void => {
      io.stderr.write(
        `stovepipe events: lost ${url} (${error instanceof Error ? error.message : String(error)}); reconnecting in ${delayMs} ms\n`,
      )
    }
    return followEvents({ url, from, onReconnect, ...(token === undefined ? {} : { token }) }, print, io.signal).then(() => 0)
  }
  return withSource(parsed, io, async ({ reader }) => {
    // Ids are contiguous per node, so each node is read with a position of its own.
    const next = new Map<string, number>()
    for (;;) {
      const nodes = node === undefined ? await reader.nodes() : [node]
      tagged ||= nodes.length > 1
      let printed = 0
      for (const nodeId of nodes) {
        const position = next.get(nodeId) ?? from
        const rows = await reader.events({ nodeId, from: position, limit: follow ? 1000 : limit })
        for (const row of rows) {
          print(row)
          next.set(nodeId, lastIdOf(row) + 1)
        }
        printed += rows.length
        const last = rows.at(-1)
        if (!follow && rows.length === limit && last !== undefined) {
          const more = `stovepipe events --node ${nodeId} --from ${lastIdOf(last) + 1} --limit ${limit}${sourceArgs(parsed)}`
          ;(parsed.values.json === true ? io.stderr : io.stdout).write(`more: ${more}\n`)
        }
      }
      if (!follow || io.signal.aborted) return 0
      if (printed === 0) await new Promise((done) => setTimeout(done, 500))
    }
  })
}

/** Runs `stovepipe why <queue> <sha>`: exit 0 when green, 1 otherwise. */
export function whyCommand(parsed: Parsed, io: CliIo): Promise<number> {
  const [queue = '', commit = ''] = parsed.positionals
  return withSource(parsed, io, async ({ reader }) => {
    const why = await reader.why(queue, commit)
    if (parsed.values.json === true) json(io, why)
    else {
      io.stdout.write(`${why.summary}\n`)
      const log = why.request?.build?.log
      if (why.status !== 'green' && typeof log === 'string' && log.trim() !== '') {
        const lines = log.trimEnd().split('\n').slice(-LOG_LINES)
        io.stdout.write(`\nlast ${lines.length} line(s) of the build log of ${why.request?.id ?? 'the request'}:\n`)
        io.stdout.write(lines.map((line) => `  ${line}\n`).join(''))
      }
    }
    return why.status === 'green' ? 0 : 1
  })
}
