/**
 * The `stovepipe` command: dispatches to a subcommand and turns errors into a message and an
 * exit code. `main(argv, io)` runs in-process (tests); `bin.ts` wires in the real process.
 *
 * Exit codes: 0 success; 1 a negative answer (`last-green` with no green commit, `why` for a
 * commit that is not green); 2 bad usage or input; 3 not found; 4 unavailable (storage, server,
 * git); 5 `run` stopped by itself; 70 an unexpected internal error; 141 stdout's reader went away.
 *
 * @module
 */
import { readFileSync } from 'node:fs'
import { StovepipeError } from '../storage/errors.js'
import { helpText, parse, type CommandSpec, type Parsed } from './args.js'
import { DEMO, demoCommand } from './demo.js'
import type { CliIo } from './io.js'
import {
  EVENTS,
  HISTORY,
  LAST_GREEN,
  STATUS,
  WHY,
  eventsCommand,
  historyCommand,
  lastGreenCommand,
  statusCommand,
  whyCommand,
} from './read.js'
import { RUN, runCommand } from './run.js'

interface Command {
  spec: CommandSpec
  run(parsed: Parsed, io: CliIo): Promise<number>
}

const COMMANDS: Command[] = [
  { spec: RUN, run: runCommand },
  { spec: DEMO, run: demoCommand },
  { spec: STATUS, run: statusCommand },
  { spec: LAST_GREEN, run: lastGreenCommand },
  { spec: HISTORY, run: historyCommand },
  { spec: EVENTS, run: eventsCommand },
  { spec: WHY, run: whyCommand },
]

function version(): string {
  const manifest = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }
  return manifest.version
}

/** The top-level help. */
export function topHelp(): string {
  const width = Math.max(...COMMANDS.map((c) => c.spec.name.length))
  return [
    'stovepipe: which commit of your branch is the last known green, and why.',
    '',
    'Usage: stovepipe <command> [options]',
    '',
    'Commands:',
    ...COMMANDS.map((c) => `  ${c.spec.name.padEnd(width)}  ${c.spec.summary}`),
    '',
    'Run `stovepipe <command> --help` for its options.',
    '',
  ].join('\n')
}

/**
 * Exit code of an error of `command`: 5 (the runtime stopped by itself) only for `run`; for
 * the read commands a stopped server is unavailable (4), as is any storage error.
 */
export function exitCodeOf(error: unknown, command?: string): number {
  if (!(error instanceof StovepipeError)) return 70
  switch (error.code) {
    case 'INVALID_INPUT':
      return 2
    case 'NOT_FOUND':
      return 3
    case 'STOPPED':
      return command === 'run' ? 5 : 4
    default:
      return error.retryable || error.code.startsWith('STORAGE_') ? 4 : 70
  }
}

/** Runs the command line `argv` (without node and the script); resolves with the exit code. */
export async function main(argv: readonly string[], io: CliIo): Promise<number> {
  const [name, ...rest] = argv
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    io.stdout.write(topHelp())
    return name === undefined ? 2 : 0
  }
  if (name === '--version' || name === '-v') {
    io.stdout.write(`${version()}\n`)
    return 0
  }
  const command = COMMANDS.find((c) => c.spec.name === name)
  if (command === undefined) {
    io.stderr.write(`stovepipe: unknown command ${JSON.stringify(name)}\n\n${topHelp()}`)
    return 2
  }
  try {
    const parsed = parse(command.spec, rest)
    if (parsed.values.help === true) {
      io.stdout.write(helpText(command.spec))
      return 0
    }
    return await command.run(parsed, io)
  } catch (error) {
    const code = exitCodeOf(error, name)
    const message = error instanceof Error ? error.message : String(error)
    // The cause's message, unless the message already says its first sentence.
    const said = error instanceof Error && error.cause instanceof Error ? error.cause.message : ''
    const cause = said === '' || message.includes((said.split(/\n|\. /)[0] ?? '').replace(/\.$/, '')) ? '' : ` (${said})`
    io.stderr.write(`stovepipe ${name}: ${message}${cause}\n`)
    if (code === 70 && error instanceof Error && error.stack !== undefined) io.stderr.write(`${error.stack}\n`)
    return code
  }
}
