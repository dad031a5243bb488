/**
 * The published package: `npm pack` produces a tarball whose subpath exports load (JS and
 * types) from a scratch project, and importing `stovepipe` or `stovepipe/storage/sqlite`
 * never loads mysql2 (the scratch project does not even have it).
 */
import { execFile } from 'node:child_process'
import { mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { tempDir } from './support/sqlite.js'

const run = promisify(execFile)
const ROOT = resolve(import.meta.dirname, '..')
const scratch = tempDir('stovepipe-pack-')
const modules = join(scratch.dir, 'node_modules')
let tarball = ''

function link(name: string): void {
  const target = join(modules, name)
  mkdirSync(join(target, '..'), { recursive: true })
  symlinkSync(join(ROOT, 'node_modules', name), target, 'dir')
}

async function node(script: string): Promise<string> {
  writeFileSync(join(scratch.dir, 'check.mjs'), script)
  const { stdout } = await run(process.execPath, ['check.mjs'], { cwd: scratch.dir })
  return stdout.trim()
}

beforeAll(async () => {
  const { stdout } = await run('npm', ['pack', '--json', '--pack-destination', scratch.dir], { cwd: ROOT, maxBuffer: 16 * 1024 * 1024 })
  const [{ filename }] = JSON.parse(stdout.slice(stdout.indexOf('['))) as [{ filename: string }]
  tarball = join(scratch.dir, filename)
  mkdirSync(join(modules, 'stovepipe'), { recursive: true })
  await run('tar', ['-xzf', tarball, '-C', join(modules, 'stovepipe'), '--strip-components=1'])
  writeFileSync(join(scratch.dir, 'package.json'), JSON.stringify({ name: 'scratch', type: 'module', private: true }))
  // The runtime dependencies (as npm would install them), and vitest for stovepipe/testing. Not mysql2.
  const manifest = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { dependencies: Record<string, string> }
  for (const name of Object.keys(manifest.dependencies)) link(name)
  link('vitest')
}, 120_000)

afterAll(() => {
  scratch.remove()
})

describe('npm pack', () => {
  it('ships built JS and types only', async () => {
    const { stdout } = await run('tar', ['-tzf', tarball])
    const files = stdout.split('\n').filter(Boolean)
    expect(files).toContain('package/dist/index.js')
    expect(files).toContain('package/dist/index.d.ts')
    expect(files.some((f) => f.startsWith('package/src/') || f.startsWith('package/test/'))).toBe(false)
  })

  it('loads stovepipe, memory, sqlite and testing without mysql2 installed', async () => {
    const out = await node(`
      const root = await import('stovepipe')
      const { createMemoryStorage } = await import('stovepipe/storage/memory')
      const { openSqliteStorage } = await import('stovepipe/storage/sqlite')
      const testing = await import('stovepipe/testing')
      const storage = await openSqliteStorage({ filename: ':memory:' })
      const n = await storage.counters.next('main')
      await storage.close()
      const memory = createMemoryStorage()
      let mysqlError = ''
      try { await import('stovepipe/storage/mysql') } catch (e) { mysqlError = e.code + ' ' + e.message }
      console.log(JSON.stringify({
        errors: typeof root.VersionMismatchError, n, memory: memory.kind,
        contract: typeof testing.describeStorageContract, mysqlError,
      }))
    `)
    const result = JSON.parse(out) as Record<string, unknown>
    expect(result).toMatchObject({ errors: 'function', n: 1, memory: 'memory', contract: 'function' })
    expect(result.mysqlError).toMatch(/ERR_MODULE_NOT_FOUND.*mysql2/)
  }, 60_000)

  it('loads stovepipe/storage/mysql once mysql2 is installed', async () => {
    link('mysql2')
    const out = await node(`
      const { openMysqlStorage } = await import('stovepipe/storage/mysql')
      console.log(typeof openMysqlStorage)
    `)
    expect(out).toBe('function')
  }, 60_000)

  it('resolves the types of every subpath for a TypeScript consumer', async () => {
    writeFileSync(
      join(scratch.dir, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: { module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, noEmit: true, skipLibCheck: true, types: [] },
        files: ['use.ts'],
      }),
    )
    writeFileSync(
      join(scratch.dir, 'use.ts'),
      `import { VersionMismatchError, type Storage } from 'stovepipe'
       import { createMemoryStorage } from 'stovepipe/storage/memory'
       import { openSqliteStorage } from 'stovepipe/storage/sqlite'
       import { openMysqlStorage } from 'stovepipe/storage/mysql'
       import { describeStorageContract } from 'stovepipe/testing'
       import { createGitSourceControl } from 'stovepipe/sourcecontrol/git'
       import { createFakeSourceControl } from 'stovepipe/sourcecontrol/fake'
       import { createShellBuilder } from 'stovepipe/build/shell'
       import { createFakeBuilder } from 'stovepipe/build/fake'
       const s: Storage = createMemoryStorage()
       const code: 'VERSION_MISMATCH' = new VersionMismatchError('x').code
       export { s, code, openSqliteStorage, openMysqlStorage, describeStorageContract }
       export { createGitSourceControl, createFakeSourceControl, createShellBuilder, createFakeBuilder }
      `,
    )
    const tsc = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc')
    const stdout = await run(process.execPath, [tsc, '-p', 'tsconfig.json'], { cwd: scratch.dir }).then(
      (result) => result.stdout,
      (error: unknown) => String((error as { stdout?: unknown }).stdout),
    )
    expect(stdout).toBe('')
  }, 60_000)

  it('ships the stovepipe command, which runs from the tarball', async () => {
    const manifest = JSON.parse(readFileSync(join(modules, 'stovepipe', 'package.json'), 'utf8')) as { bin: Record<string, string> }
    const bin = join(modules, 'stovepipe', manifest.bin.stovepipe ?? '')
    const { stdout } = await run(process.execPath, [bin, '--help'], { cwd: scratch.dir })
    expect(stdout).toContain('Usage: stovepipe <command> [options]')
    const version = await run(process.execPath, [bin, '--version'], { cwd: scratch.dir })
    expect(version.stdout.trim()).toBe((JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version)
    expect(readFileSync(bin, 'utf8').startsWith('#!/usr/bin/env node')).toBe(true)
  }, 60_000)
})
