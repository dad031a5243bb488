/**
 * Argument parsing for the `stovepipe` command: one spec per subcommand (options, positionals,
 * help text), parsed with `node:util` `parseArgs` in strict mode so a typo is an error, not
 * a silently ignored flag.
 *
 * @module
 */
import { parseArgs } from 'node:util'
import { InvalidInputError } from '../storage/errors.js'

/** One option of a subcommand. */
export interface OptionSpec {
  type: 'string' | 'boolean'
  /** One-letter alias. */
  short?: string
  /** Placeholder in the help text, e.g. `<path>`. */
  value?: string
  description: string
  /** Shown as `(default …)` in the help text. */
  defaultText?: string
}

/** A subcommand: its options, positionals and help. */
export interface CommandSpec {
  name: string
  summary: string
  /** Positional arguments, e.g. `['<queue>']`; a trailing `?` marks optional ones. */
  positionals: string[]
  options: Record<string, OptionSpec>
  /** Extra help paragraphs (examples). */
  details?: string
}

/** Parsed arguments. */
export interface Parsed {
  values: Record<string, string | boolean | undefined>
  positionals: string[]
}

/** Options every subcommand takes. */
export const COMMON_OPTIONS: Record<string, OptionSpec> = {
  help: { type: 'boolean', short: 'h', description: 'show this help' },
  'log-level': {
    type: 'string',
    value: '<level>',
    description: 'pino log level on stderr: fatal, error, warn, info, debug, trace, silent',
    defaultText: 'warn',
  },
}

/** Options of the commands that read state. */
export const READ_OPTIONS: Record<string, OptionSpec> = {
  db: { type: 'string', value: '<path>', description: 'read the SQLite database directly', defaultText: './stovepipe.db' },
  mysql: { type: 'string', value: '<uri>', description: 'read a MySQL database directly (mysql://user:pass@host:port/db)' },
  url: { type: 'string', value: '<http://host:port>', description: 'ask a running `stovepipe run` server instead' },
  token: { type: 'string', value: '<secret>', description: 'bearer token for --url (or STOVEPIPE_TOKEN)' },
  json: { type: 'boolean', description: 'print JSON instead of text' },
}

/** Parses `argv` (after the subcommand) against `spec`; InvalidInputError with the reason on a bad flag. */
export function parse(spec: CommandSpec, argv: readonly string[]): Parsed {
  const options: Record<string, { type: 'string' | 'boolean'; short?: string }> = {}
  for (const [name, option] of Object.entries({ ...spec.options, ...COMMON_OPTIONS })) {
    options[name] = option.short === undefined ? { type: option.type } : { type: option.type, short: option.short }
  }
  let parsed: ReturnType<typeof parseArgs>
  try {
    parsed = parseArgs({ args: [...argv], options, allowPositionals: true, strict: true })
  } catch (error) {
    // Node's text, on one line: its first sentence, and how to pass a value starting with a dash.
    const message = error instanceof Error ? error.message : String(error)
    const first = (message.split('\n')[0] ?? '').replace(/\. To specify a positional.*$/s, '').replace(/\.$/, '')
    const dash = /starting with a dash use '([^']+)'/.exec(message)?.[1]
    const hint = dash === undefined ? '' : ` (for a value starting with a dash, write ${dash})`
    throw new InvalidInputError(`${first}${hint}. See \`stovepipe ${spec.name} --help\`.`, { cause: error })
  }
  const values = parsed.values as Record<string, string | boolean | undefined>
  if (values.help === true) return { values, positionals: parsed.positionals }
  const required = spec.positionals.filter((p) => !p.endsWith('?'))
  if (parsed.positionals.length < required.length) {
    throw new InvalidInputError(`missing ${required.slice(parsed.positionals.length).join(' ')}. Usage: ${usage(spec)}`)
  }
  if (parsed.positionals.length > spec.positionals.length) {
    throw new InvalidInputError(`unexpected argument ${JSON.stringify(parsed.positionals[spec.positionals.length])}. Usage: ${usage(spec)}`)
  }
  return { values, positionals: parsed.positionals }
}

/** The one-line usage of a subcommand. */
export function usage(spec: CommandSpec): string {
  const positionals = spec.positionals.map((p) => (p.endsWith('?') ? `[${p.slice(0, -1)}]` : p))
  return ['stovepipe', spec.name, ...positionals, '[options]'].join(' ')
}

/** The help text of a subcommand. */
export function helpText(spec: CommandSpec): string {
  const rows = Object.entries({ ...spec.options, ...COMMON_OPTIONS }).map(([name, option]) => {
    const flag = `${option.short === undefined ? '    ' : `-${option.short}, `}--${name}${option.value === undefined ? '' : ` ${option.value}`}`
    return [flag, option.description + (option.defaultText === undefined ? '' : ` (default ${option.defaultText})`)] as const
  })
  const width = Math.max(...rows.map(([flag]) => flag.length))
  const lines = [
    `Usage: ${usage(spec)}`,
    '',
    spec.summary,
    '',
    'Options:',
    ...rows.map(([flag, text]) => `  ${flag.padEnd(width)}  ${text}`),
  ]
  if (spec.details !== undefined) lines.push('', spec.details)
  return lines.join('\n') + '\n'
}

/** A string option, or undefined. */
export function stringOption(parsed: Parsed, name: string): string | undefined {
  const value = parsed.values[name]
  return typeof value === 'string' ? value : undefined
}

/** Parses a duration: `500ms`, `5s`, `2m`, `1h`, or a bare number of milliseconds. */
export function parseDuration(text: string, what: string): number {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(text.trim())
  if (match === null) throw new InvalidInputError(`${what} must be a duration like 500ms, 5s, 2m or 1h, got ${JSON.stringify(text)}`)
  const scale = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[match[2] ?? 'ms'] ?? 1
  const ms = Math.round(Number(match[1]) * scale)
  if (!Number.isSafeInteger(ms) || ms <= 0) throw new InvalidInputError(`${what} must be positive, got ${JSON.stringify(text)}`)
  return ms
}

/** Parses a positive integer option. */
export function parsePositiveInt(text: string, what: string): number {
  if (!/^\d+$/.test(text) || Number(text) < 1 || !Number.isSafeInteger(Number(text))) {
    throw new InvalidInputError(`${what} must be a positive integer, got ${JSON.stringify(text)}`)
  }
  return Number(text)
}

/** Parses `host:port` (port 0 picks a free one). */
export function parseListen(text: string): { host: string; port: number } {
  const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(text)
  const port = Number(match?.[3])
  if (match === null || port > 65_535)
    throw new InvalidInputError(`--http must be host:port like 127.0.0.1:8080, got ${JSON.stringify(text)}`)
  return { host: match[1] ?? match[2] ?? '127.0.0.1', port }
}
