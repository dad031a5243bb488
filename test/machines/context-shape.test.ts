/**
 * A request's context stays a fast-mode object when XState copies it.
 *
 * XState's `assign` copies the context with `Object.assign({}, context, update)`. In a fresh
 * process V8 turns that copy of a 23-field object literal into a dictionary, about 1.3 KB
 * more per request in flight, unless `newRequestContext` returns a spread copy (see there).
 * The check needs V8's natives syntax, so it runs in a child process of its own: in this
 * one, other tests may already have laid down the hidden classes that hide the problem.
 */
import { execFile } from 'node:child_process'
import { resolve } from 'node:path'
import { promisify } from 'node:util'
import { describe, expect, it } from 'vitest'

const run = promisify(execFile)
const ROOT = resolve(import.meta.dirname, '../..')

describe('request context shape', () => {
  it('a context copied by XState assign keeps fast properties in a fresh process', async () => {
    const { stdout } = await run(
      process.execPath,
      ['--allow-natives-syntax', '--import', 'tsx', 'test/machines/fixtures/context-shape.ts'],
      {
        cwd: ROOT,
        timeout: 60_000,
      },
    )
    const result = JSON.parse(stdout.trim()) as { copied: boolean; startedAt: number | null; fast: boolean }
    expect(result.copied).toBe(true)
    expect(result.startedAt).toBeTypeOf('number')
    expect(result.fast).toBe(true)
  }, 60_000)
})
