/**
 * Runs the `stovepipe` command as a real process (through tsx, from the sources), for
 * end-to-end tests.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { join, resolve } from 'node:path'
import { pathToFileURL } from 'node:url'

const ROOT = resolve(import.meta.dirname, '..', '..')
const BIN = join(ROOT, 'src', 'cli', 'bin.ts')
const TSX = pathToFileURL(join(ROOT, 'node_modules', 'tsx', 'dist', 'loader.mjs')).href

/** A running `stovepipe` process. */
export interface CliProcess {
  readonly child: ChildProcess
  stdout(): string
  stderr(): string
  /** Resolves with the exit code (or 128 + signal number style code) once the process ends. */
  readonly exited: Promise<number>
  /** Resolves with the match once `pattern` appears in stdout+stderr; rejects after `timeoutMs`. */
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>
}

/**
 * Starts `stovepipe <args>` in `cwd`; with `asNobody` (and the tests running as root), as the
 * unprivileged user 65534 (through setpriv).
 */
export function startCli(args: readonly string[], options: { cwd: string; env?: Record<string, string>; asNobody?: boolean }): CliProcess {
  const command = [process.execPath, '--import', TSX, BIN, ...args]
  const [file = '', ...argv] =
    options.asNobody === true ? ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', ...command] : command
  const child = spawn(file, argv, {
    cwd: options.cwd,
    env: { ...process.env, NO_COLOR: '1', ...options.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let out = ''
  let err = ''
  const listeners = new Set<() => void>()
  child.stdout.on('data', (chunk: Buffer) => {
    out += chunk.toString()
    for (const l of listeners) l()
  })
  child.stderr.on('data', (chunk: Buffer) => {
    err += chunk.toString()
    for (const l of listeners) l()
  })
  const exited = new Promise<number>((done) => {
    child.on('close', (code, signal) => {
      done(code ?? (signal === null ? -1 : 128))
      for (const l of listeners) l()
    })
  })
  return {
    child,
    stdout: () => out,
    stderr: () => err,
    exited,
    waitFor: (pattern, timeoutMs = 30_000) =>
      new Promise((done, fail) => {
        const check = (): void => {
          const match = (out + err).match(pattern)
          if (match !== null) {
            cleanup()
            done(match)
          } else if (child.exitCode !== null) {
            cleanup()
            fail(new Error(`stovepipe exited (${child.exitCode}) before printing ${String(pattern)}\nstdout:\n${out}\nstderr:\n${err}`))
          }
        }
        const timer = setTimeout(() => {
          cleanup()
          fail(new Error(`timed out waiting for ${String(pattern)}\nstdout:\n${out}\nstderr:\n${err}`))
        }, timeoutMs)
        const cleanup = (): void => {
          clearTimeout(timer)
          listeners.delete(check)
        }
        listeners.add(check)
        check()
      }),
  }
}

/** Runs `stovepipe <args>` to completion. */
export async function runCli(
  args: readonly string[],
  options: { cwd: string; env?: Record<string, string>; asNobody?: boolean },
): Promise<{ code: number; stdout: string; stderr: string }> {
  const cli = startCli(args, options)
  const code = await cli.exited
  return { code, stdout: cli.stdout(), stderr: cli.stderr() }
}
