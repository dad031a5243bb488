/** Every example runs to completion (they are typechecked with the rest of the project). */
import { execFile } from 'node:child_process'
import { resolve } from 'node:path'
import { promisify } from 'node:util'
import { describe, expect, it } from 'vitest'
import { createTempRepo } from './support/git-repo.js'
import { tempDir } from './support/sqlite.js'

const run = promisify(execFile)
const ROOT = resolve(import.meta.dirname, '..')

async function example(name: string, args: string[] = [], env: Record<string, string> = {}): Promise<string> {
  const { stdout } = await run(process.execPath, ['--import', 'tsx', `examples/${name}`, ...args], {
    cwd: ROOT,
    timeout: 60_000,
    env: { ...process.env, ...env },
  })
  return stdout
}

describe('examples', () => {
  it('storage-tour.ts shows dedup, CAS, facts and durability on SQLite', async () => {
    const out = await example('storage-tour.ts')
    expect(out).toContain('re-reported head deduplicated to request/main/1')
    expect(out).toContain('stale update refused')
    expect(out).toContain('one commit, three results: ok, ok, already_exists')
    expect(out).toContain('after reopen: request/main/1 is recorded at version 2; next number is 3')
  }, 60_000)

  it('embed.ts spawns two queues on SQLite, validates a head in each and prints last green', async () => {
    const out = await example('embed.ts')
    expect(out).toContain('main: request/main/1 fake://a1 green (full)')
    expect(out).toContain('main: last green fake://a1 from request/main/1')
    expect(out).toContain('release: request/release/1 fake://bad2 red (full)')
    expect(out).toContain('release: last green none')
  }, 60_000)

  it('inspect.ts streams the statecharts to the Stately inspector bridge', async () => {
    const port = String(20_000 + Math.floor(Math.random() * 20_000))
    const out = await example('inspect.ts', ['--once'], { INSPECT_PORT: port })
    expect(out).toContain('request/main/3 fake://c3 red; last green fake://c2')
    const relayed = Number(/relayed (\d+) inspection events/.exec(out)?.[1])
    expect(relayed).toBeGreaterThan(10)
  }, 60_000)

  it('real-repo.ts (the README example) validates a real repository head with git and the shell builder', async () => {
    const repo = await createTempRepo()
    const state = tempDir('stovepipe-example-')
    try {
      const sha = await repo.commit('first', { 'check.sh': 'echo checked\n' })
      const env = { STOVEPIPE_DB: `${state.dir}/stovepipe.db` }
      const out = await example('real-repo.ts', [repo.dir, 'main', 'sh ./check.sh'], env)
      expect(out).toContain(`request/main/1 ${repo.uri(sha)}: green (full)`)
      expect(out).toContain(`last green: ${repo.uri(sha)} (request/main/1)`)
      const again = await example('real-repo.ts', [repo.dir, 'main', 'sh ./check.sh'], env)
      expect(again).toContain(`request/main/1 ${repo.uri(sha)} (seen before): green (full)`)
      // With no arguments it builds nothing (it would run `npm test` on this checkout): usage, exit 2.
      const bare = await example('real-repo.ts', [], env).then(
        () => ({ code: 0, stderr: '' }),
        (error: unknown) => error as { code: number; stderr: string },
      )
      expect(bare.code).toBe(2)
      expect(bare.stderr).toContain('usage: npx tsx examples/real-repo.ts <repo path>')
    } finally {
      repo.remove()
      state.remove()
    }
  }, 60_000)
})
