/**
 * What a command talks to: its output streams, environment and working directory, injected
 * so tests run commands in-process and the binary wires in the real process.
 *
 * @module
 */
import { pino, type Logger } from 'pino'
import { Writable } from 'node:stream'
import { InvalidInputError } from '../storage/errors.js'

/** A command's surroundings. */
export interface CliIo {
  /** Results (the thing a script pipes somewhere). */
  stdout: { write(text: string): unknown; isTTY?: boolean }
  /** Logs, progress and errors. */
  stderr: { write(text: string): unknown; isTTY?: boolean }
  env: Record<string, string | undefined>
  cwd: string
  /** Aborted on SIGINT/SIGTERM (long-running commands stop gracefully). */
  signal: AbortSignal
}

/**
 * The process's own surroundings; `signal` aborts on the first SIGINT or SIGTERM, or when
 * the reader of stdout or stderr goes away (EPIPE: `| head`), and `brokenPipe()` then says
 * so (the binary exits 141, as a process killed by SIGPIPE would).
 */
export function processIo(): CliIo & { brokenPipe(): boolean } {
  const controller = new AbortController()
  const onSignal = (name: NodeJS.Signals): void => {
    if (controller.signal.aborted) {
      process.stderr.write(`stovepipe: ${name} again, exiting now\n`)
      process.exit(130)
    }
    controller.abort(new Error(`received ${name}`))
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  // A reader that went away (`stovepipe events | head`): stop as on a signal (`run` stops its
  // builds and drains its writes) and write nothing more there.
  const broken = new Set<NodeJS.WriteStream>()
  const quiet = (stream: NodeJS.WriteStream): CliIo['stdout'] => {
    stream.on('error', (error: NodeJS.ErrnoException) => {
      if (error.code !== 'EPIPE' && !broken.has(stream)) throw error
      broken.add(stream)
      if (!controller.signal.aborted) controller.abort(new Error('the reader of the output went away'))
    })
    return {
      write: (text: string) => (broken.has(stream) ? true : stream.write(text)),
      get isTTY() {
        return stream.isTTY
      },
    }
  }
  return {
    stdout: quiet(process.stdout),
    stderr: quiet(process.stderr),
    env: process.env,
    cwd: process.cwd(),
    signal: controller.signal,
    brokenPipe: () => broken.size > 0,
  }
}

const LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']

/** A pino logger writing JSON lines to the command's stderr (level from `--log-level`, default warn). */
export function cliLogger(io: CliIo, level: string | undefined): Logger {
  const chosen = level ?? io.env.STOVEPIPE_LOG_LEVEL ?? 'warn'
  if (!LEVELS.includes(chosen))
    throw new InvalidInputError(`--log-level must be one of ${LEVELS.join(', ')}, got ${JSON.stringify(chosen)}`)
  const sink = new Writable({
    write(chunk: Buffer | string, _encoding, callback) {
      io.stderr.write(chunk.toString())
      callback()
    },
  })
  return pino({ level: chosen, base: { pid: process.pid } }, sink)
}

/** Epoch milliseconds as `YYYY-MM-DD HH:MM:SS` (UTC). */
export function formatTime(at: number | null | undefined): string {
  if (at === null || at === undefined) return '-'
  return new Date(at).toISOString().replace('T', ' ').slice(0, 19)
}

/** Renders rows as aligned columns. */
export function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  // Widths as seen: colour codes take no room on the screen.
  // eslint-disable-next-line no-control-regex -- matching the escape character is the point
  const seen = (cell: string): number => cell.replace(/\u001b\[\d+m/g, '').length
  const widths = header.map((h, i) => Math.max(seen(h), ...rows.map((r) => seen(r[i] ?? ''))))
  const line = (cells: readonly string[]): string =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c + ' '.repeat(Math.max(0, (widths[i] ?? 0) - seen(c)))))
      .join('  ')
      .trimEnd()
  return [line(header), ...rows.map(line)].join('\n') + '\n'
}

/** Colours for a TTY; identity when the stream is not one (plain output for pipes and files). */
export function painter(stream: { isTTY?: boolean }, env: Record<string, string | undefined>) {
  const on = stream.isTTY === true && env.NO_COLOR === undefined
  const wrap =
    (code: number) =>
    (text: string): string =>
      on ? `\u001b[${code}m${text}\u001b[0m` : text
  return { green: wrap(32), red: wrap(31), yellow: wrap(33), dim: wrap(2), bold: wrap(1), enabled: on }
}
