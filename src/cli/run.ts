/**
 * `stovepipe run`: polls a ref, ingests each new head, validates it with the shell builder in
 * a worktree, records verdicts, and serves the HTTP API and status page. SIGINT/SIGTERM stop
 * it gracefully: polling stops, builds are killed, the writer drains; the state resumes on
 * the next start.
 *
 * @module
 */
import { resolve } from 'node:path'
import { createShellBuilder } from '../build/shell.js'
import { createWebhookHook } from '../hooks/index.js'
import { createHttpServer } from '../http/index.js'
import { createStovepipe } from '../runtime/stovepipe.js'
import { createGitSourceControlProvider } from '../sourcecontrol/git.js'
import { createStatusReader } from '../status/index.js'
import { EventLogConflictError } from '../actors/event-log.js'
import { InvalidInputError, StoppedError, StovepipeError } from '../storage/errors.js'
import { assertNodeId, assertQueueName } from '../storage/validation.js'
import { parseDuration, parseListen, parsePositiveInt, stringOption, type CommandSpec, type Parsed } from './args.js'
import { cliLogger, type CliIo } from './io.js'
import { DEFAULT_DB, openState } from './storage.js'
import { Timeline } from './timeline.js'

/** The `run` subcommand. */
export const RUN: CommandSpec = {
  name: 'run',
  summary: 'Poll a ref, validate each new head in a git worktree, record verdicts and serve the HTTP API and status page.',
  positionals: [],
  options: {
    repo: { type: 'string', value: '<path>', description: 'the git repository (a local clone)', defaultText: '.' },
    ref: { type: 'string', value: '<ref>', description: 'the branch or ref to follow, e.g. main or refs/heads/main', defaultText: 'main' },
    build: { type: 'string', value: '"<command>"', description: 'the command that validates a commit (run by /bin/sh in the worktree)' },
    queue: { type: 'string', value: '<name>', description: 'the queue name', defaultText: 'the ref name, e.g. main' },
    db: { type: 'string', value: '<path>', description: 'SQLite database file', defaultText: `./${DEFAULT_DB}` },
    mysql: { type: 'string', value: '<uri>', description: 'use a MySQL database instead (several processes share queues)' },
    'node-id': {
      type: 'string',
      value: '<id>',
      description: "this process's name in the event log; give each process sharing a database its own",
      defaultText: 'local',
    },
    poll: { type: 'string', value: '<duration>', description: 'how often to look at the ref', defaultText: '5s' },
    'max-concurrent': { type: 'string', value: '<n>', description: 'builds at once', defaultText: '1' },
    'build-timeout': {
      type: 'string',
      value: '<duration>',
      description: 'longest validation before it is indeterminate',
      defaultText: '1h',
    },
    http: {
      type: 'string',
      value: '<host:port|off>',
      description: 'where to serve the API and status page',
      defaultText: '127.0.0.1:8080',
    },
    token: { type: 'string', value: '<secret>', description: 'require this bearer token on POSTs (or STOVEPIPE_TOKEN)' },
    webhook: { type: 'string', value: '<url>', description: 'POST each verdict and last-green move here, signed (at least once)' },
    'webhook-secret': {
      type: 'string',
      value: '<secret>',
      description: 'HMAC-SHA256 key for the x-stovepipe-signature header (or STOVEPIPE_WEBHOOK_SECRET)',
    },
  },
  details: [
    'Examples:',
    '  stovepipe run --repo . --ref main --build "npm ci && npm test"',
    '  stovepipe run --repo ~/src/app --ref release --build "make check" --http 0.0.0.0:8080 --token "$TOKEN"',
    '',
    'Verdicts: exit code 0 is green, anything else red; a build that cannot start, times out or is',
    'killed is indeterminate (never green). Gate a deploy with `stovepipe last-green <queue> && ./deploy`.',
  ].join('\n'),
}

function shortRef(ref: string): string {
  return ref.replace(/^refs\/(heads|tags|remotes)\//, '').replace(/[^A-Za-z0-9._-]/g, '-')
}

/** Waits `ms` or until `signal` aborts. */
function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((done) => {
    if (signal.aborted) {
      done()
      return
    }
    const timer = setTimeout(finish, ms)
    function finish(): void {
      clearTimeout(timer)
      signal.removeEventListener('abort', finish)
      done()
    }
    signal.addEventListener('abort', finish, { once: true })
  })
}

/** Runs `stovepipe run`; resolves with the exit code once stopped by a signal. */
export async function runCommand(parsed: Parsed, io: CliIo): Promise<number> {
  const logger = cliLogger(io, stringOption(parsed, 'log-level'))
  const command = stringOption(parsed, 'build')
  if (command === undefined || command.trim() === '')
    throw new InvalidInputError('--build "<command>" is required: the command that validates a commit')
  const repo = resolve(io.cwd, stringOption(parsed, 'repo') ?? '.')
  const ref = stringOption(parsed, 'ref') ?? 'main'
  const queueName = stringOption(parsed, 'queue') ?? shortRef(ref)
  assertQueueName(queueName)
  const pollMs = parseDuration(stringOption(parsed, 'poll') ?? '5s', '--poll')
  const maxConcurrent = parsePositiveInt(stringOption(parsed, 'max-concurrent') ?? '1', '--max-concurrent')
  const maxValidationMs = parseDuration(stringOption(parsed, 'build-timeout') ?? '1h', '--build-timeout')
  const httpText = stringOption(parsed, 'http') ?? '127.0.0.1:8080'
  const listen = httpText === 'off' ? undefined : parseListen(httpText)
  const token = stringOption(parsed, 'token') ?? io.env.STOVEPIPE_TOKEN
  const webhook = stringOption(parsed, 'webhook')
  const webhookSecret = stringOption(parsed, 'webhook-secret') ?? io.env.STOVEPIPE_WEBHOOK_SECRET
  if (webhook !== undefined && (webhookSecret === undefined || webhookSecret === '')) {
    throw new InvalidInputError('--webhook needs --webhook-secret (or STOVEPIPE_WEBHOOK_SECRET) to sign its requests')
  }
  const hooks = webhook === undefined ? [] : [createWebhookHook({ url: webhook, secret: webhookSecret ?? '' })]

  const nodeId = stringOption(parsed, 'node-id') ?? 'local'
  assertNodeId(nodeId)
  const storage = await openState({ db: stringOption(parsed, 'db'), mysql: stringOption(parsed, 'mysql') }, io.cwd)
  const progress = (text: string): void => {
    io.stderr.write(`stovepipe: ${text}\n`)
  }
  let sp: Awaited<ReturnType<typeof createStovepipe>> | undefined
  let server: { url: string; close(): Promise<void> } | undefined
  const timeline = new Timeline(io, Date.now)
  try {
    const sourceControl = createGitSourceControlProvider()
    const builder = createShellBuilder({ command, logger })
    sp = await createStovepipe({ storage, sourceControl, builder, logger, hooks, nodeId })
    const runtime = sp
    const queue = await runtime.queue(queueName, { repo, ref, maxConcurrent, maxValidationMs })
    timeline.follow({
      events: runtime.events,
      request: (id) => runtime.request(id),
      lastGreenOf: (name) =>
        runtime
          .queues()
          .find((q) => q.name === name)
          ?.lastGreen(),
    })
    if (listen !== undefined) {
      const http = createHttpServer({
        reader: createStatusReader(storage),
        sp: runtime,
        events: runtime.events,
        registry: runtime.registry,
        logger,
        ...(token === undefined ? {} : { token }),
      })
      server = await http.listen(listen)
      progress(`serving ${server.url} (status page, API, /events, /metrics)`)
    }
    progress(`following ${ref} in ${repo} as queue ${queueName}, every ${pollMs} ms; Ctrl-C stops`)

    let lastHead = ''
    let lastProblem = ''
    const stopped = (): boolean => io.signal.aborted
    while (!stopped()) {
      try {
        const result = await queue.ingest()
        if (result.uri !== lastHead) {
          lastHead = result.uri
          timeline.ingested(queueName, result)
        }
        lastProblem = ''
      } catch (error) {
        if (stopped()) break
        // The runtime stopped by itself (an actor it cannot do without failed): so does the command.
        if (error instanceof StoppedError) {
          if (error.cause instanceof EventLogConflictError) {
            progress(`another process writes this database's event log as node "${nodeId}": give each process its own --node-id`)
          }
          throw error
        }
        // Bad configuration (not a git repository, a hostile ref) will not fix itself: stop.
        if (error instanceof InvalidInputError) throw error
        const message = error instanceof Error ? error.message : String(error)
        // Say it once per distinct problem, not once per poll.
        if (message !== lastProblem) {
          lastProblem = message
          const code = error instanceof StovepipeError ? error.code : 'ERROR'
          // The line below says it for people; a typed error (a missing ref, storage down) needs no
          // stack on stderr at the default level, an unexpected one does.
          if (error instanceof StovepipeError) logger.info({ err: error, queue: queueName }, 'polling failed')
          else logger.warn({ err: error, queue: queueName }, 'polling failed')
          progress(`cannot read ${ref} (${code}): ${message}; retrying every ${pollMs} ms`)
        }
      }
      await pause(pollMs, io.signal)
    }
    progress('stopping: killing builds, draining writes')
    return 0
  } finally {
    await server?.close()
    await timeline.close()
    if (sp !== undefined) {
      const report = await sp.stop({ deadlineMs: 10_000 })
      if (report.writer.deadLettered > 0) progress(`${report.writer.deadLettered} writes could not be made durable (see dead letters)`)
      if (report.writer.inFlight > 0)
        progress(`${report.writer.inFlight} writes were still in flight at the deadline (storage did not answer); their outcome is unknown`)
    }
    await storage.close()
  }
}
