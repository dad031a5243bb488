/**
 * The git source control on real temporary repositories: history shapes (linear, merges,
 * rewrites), typed errors, hostile input, stable paging, fetching from a remote, and the
 * runtime end to end.
 */
import { existsSync, mkdtempSync, realpathSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, relative } from 'node:path'
import { afterEach, describe, expect, it, onTestFinished } from 'vitest'
import { createFakeBuilder } from '../../src/build/fake.js'
import { createStovepipe } from '../../src/index.js'
import { createGitSourceControl, createGitSourceControlProvider, fullRefName, type GitSourceControl } from '../../src/sourcecontrol/git.js'
import { createMemoryStorage } from '../../src/storage/memory/index.js'
import { InvalidInputError, isRetryable, NotFoundError, UnavailableError } from '../../src/storage/errors.js'
import { createTempRepo, type TempRepo, type TempRepoOptions } from '../support/git-repo.js'

const repos: TempRepo[] = []
async function newRepo(options: TempRepoOptions = {}): Promise<TempRepo> {
  const repo = await createTempRepo(options)
  repos.push(repo)
  return repo
}
afterEach(() => {
  for (const repo of repos.splice(0)) repo.remove()
})

/** Every URI of the ref's first-parent history, following cursors. */
async function allHistory(sc: GitSourceControl, limit?: number): Promise<string[]> {
  const uris: string[] = []
  let cursor: string | undefined
  do {
    const page = await sc.history(cursor, limit)
    uris.push(...page.items)
    cursor = page.nextCursor
  } while (cursor !== undefined)
  return uris
}

const ZERO_SHA = '0'.repeat(40)

describe('git source control: history shapes', () => {
  it('follows a linear history', async () => {
    const repo = await newRepo()
    const a = await repo.commit('a', { 'a.txt': 'a\n' })
    const b = await repo.commit('b', { 'b.txt': 'b\n' })
    const c = await repo.commit('c', { 'a.txt': null })
    const sc = createGitSourceControl({ repo: repo.dir, ref: 'main' })
    expect(sc.repo).toBe(repo.dir)
    expect(sc.ref).toBe('refs/heads/main')
    expect(sc.uri(c)).toBe(`git+file://${repo.dir}#${c}`)
    expect(await sc.latest()).toBe(repo.uri(c))
    expect(await sc.history()).toEqual({ items: [repo.uri(c), repo.uri(b), repo.uri(a)] })
    expect(await sc.isAncestor(repo.uri(a), repo.uri(c))).toBe(true)
    expect(await sc.isAncestor(repo.uri(b), repo.uri(b))).toBe(true)
    expect(await sc.isAncestor(repo.uri(c), repo.uri(a))).toBe(false)

    const full = createGitSourceControl({ repo: repo.dir, ref: 'refs/heads/main' })
    expect(await full.latest()).toBe(repo.uri(c))
    const next = await repo.commit('d')
    expect(await sc.latest()).toBe(repo.uri(next))
  })

  it('walks first parents through merges, and sees merged side commits as ancestors', async () => {
    const repo = await newRepo()
    const a = await repo.commit('a', { 'a.txt': 'a\n' })
    await repo.checkout('feature', { create: true })
    const f1 = await repo.commit('f1', { 'f.txt': '1\n' })
    const f2 = await repo.commit('f2', { 'f.txt': '2\n' })
    await repo.checkout('main')
    const b = await repo.commit('b', { 'b.txt': 'b\n' })
    const m = await repo.merge('feature')
    const sc = createGitSourceControl({ repo: repo.dir, ref: 'main' })
    expect(await sc.latest()).toBe(repo.uri(m))
    expect(await allHistory(sc, 1)).toEqual([m, b, a].map((sha) => repo.uri(sha)))
    expect(await sc.isAncestor(repo.uri(f1), repo.uri(m))).toBe(true)
    expect(await sc.isAncestor(repo.uri(f2), repo.uri(m))).toBe(true)
    expect(await sc.isAncestor(repo.uri(f2), repo.uri(b))).toBe(false)
    expect(await sc.isAncestor(repo.uri(b), repo.uri(f2))).toBe(false)
    // The side branch has its own first-parent line.
    const feature = createGitSourceControl({ repo: repo.dir, ref: 'feature' })
    expect(await allHistory(feature)).toEqual([f2, f1, a].map((sha) => repo.uri(sha)))
  })

  it('follows a force-push: the old head is no ancestor of the new one, history shows the new line', async () => {
    const repo = await newRepo()
    const a = await repo.commit('a', { 'x.txt': 'a\n' })
    await repo.commit('b', { 'x.txt': 'b\n' })
    const c = await repo.commit('c', { 'x.txt': 'c\n' })
    const sc = createGitSourceControl({ repo: repo.dir, ref: 'main' })
    expect(await sc.latest()).toBe(repo.uri(c))

    await repo.forcePush('main', a)
    const d = await repo.commit('d', { 'x.txt': 'd\n' })
    const e = await repo.commit('e', { 'x.txt': 'e\n' })
    expect(await sc.latest()).toBe(repo.uri(e))
    expect(await sc.isAncestor(repo.uri(c), repo.uri(e))).toBe(false)
    expect(await sc.isAncestor(repo.uri(a), repo.uri(e))).toBe(true)
    expect(await sc.history()).toEqual({ items: [e, d, a].map((sha) => repo.uri(sha)) })
    // The abandoned commit is still an object of the repository (not gc'd): known, not NotFound.
    expect(await sc.isAncestor(repo.uri(c), repo.uri(c))).toBe(true)
  })

  it('works on a bare repository and on a relative path', async () => {
    const source = await newRepo()
    const shas = await source.commits(3)
    const bare = await newRepo({ bare: true })
    await bare.git(['fetch', '--quiet', source.dir, '+refs/heads/main:refs/heads/main'])
    const sc = createGitSourceControl({ repo: bare.dir, ref: 'main' })
    expect(await sc.latest()).toBe(bare.uri(shas[2] ?? ''))
    const rel = createGitSourceControl({ repo: relative(process.cwd(), source.dir), ref: 'main' })
    expect(rel.repo).toBe(source.dir)
    expect(await rel.latest()).toBe(source.uri(shas[2] ?? ''))
  })
})

describe('git source control: errors', () => {
  it('gives NotFoundError for a missing ref and an unborn branch', async () => {
    const empty = await newRepo()
    const unborn = createGitSourceControl({ repo: empty.dir, ref: 'main' })
    await expect(unborn.latest()).rejects.toBeInstanceOf(NotFoundError)
    await expect(unborn.history()).rejects.toBeInstanceOf(NotFoundError)

    const repo = await newRepo()
    await repo.commit('a')
    const missing = createGitSourceControl({ repo: repo.dir, ref: 'nope' })
    await expect(missing.latest()).rejects.toThrow(/refs\/heads\/nope does not exist/)
    await expect(missing.latest()).rejects.toBeInstanceOf(NotFoundError)
    await expect(missing.history()).rejects.toBeInstanceOf(NotFoundError)
    const tag = createGitSourceControl({ repo: repo.dir, ref: 'refs/tags/v1' })
    await expect(tag.latest()).rejects.toBeInstanceOf(NotFoundError)
    await repo.git(['tag', '-a', '-m', 'v1', 'v1'])
    expect(await tag.latest()).toBe(repo.uri(await repo.head()))
  })

  it('gives NotFoundError for an unknown sha, in either position and as a cursor', async () => {
    const repo = await newRepo()
    const a = await repo.commit('a')
    const sc = createGitSourceControl({ repo: repo.dir, ref: 'main' })
    const unknown = repo.uri(ZERO_SHA)
    await expect(sc.isAncestor(unknown, repo.uri(a))).rejects.toBeInstanceOf(NotFoundError)
    await expect(sc.isAncestor(repo.uri(a), unknown)).rejects.toThrow(new RegExp(`${ZERO_SHA} is unknown`))
    await expect(sc.isAncestor(repo.uri(a), unknown)).rejects.toBeInstanceOf(NotFoundError)
    // A blob's sha is an object, but not a commit.
    const blob = (await repo.git(['hash-object', '-w', '--stdin'], { input: 'blob\n' })).trim()
    await expect(sc.isAncestor(repo.uri(blob), repo.uri(a))).rejects.toBeInstanceOf(NotFoundError)

    // A well-formed cursor from another repository names a commit this one does not have.
    const other = await newRepo()
    await other.commits(3)
    const page = await createGitSourceControl({ repo: other.dir, ref: 'main' }).history(undefined, 1)
    expect(page.nextCursor).toBeDefined()
    await expect(sc.history(page.nextCursor)).rejects.toBeInstanceOf(NotFoundError)
  })

  it('gives InvalidInputError for a URI of another repository or another scheme', async () => {
    const repo = await newRepo()
    const a = await repo.commit('a')
    const other = await newRepo()
    const o = await other.commit('o')
    const sc = createGitSourceControl({ repo: repo.dir, ref: 'main' })
    await expect(sc.isAncestor(other.uri(o), repo.uri(a))).rejects.toBeInstanceOf(InvalidInputError)
    await expect(sc.isAncestor(repo.uri(a), other.uri(a))).rejects.toThrow(/not of this source control's repository/)
    await expect(sc.isAncestor('fake://a1', repo.uri(a))).rejects.toBeInstanceOf(InvalidInputError)
    await expect(sc.isAncestor(repo.uri(a), `git+file://${repo.dir}#${a.toUpperCase()}`)).rejects.toBeInstanceOf(InvalidInputError)
  })

  it('checks the repository: missing, a file, not a repository, a subdirectory, a .git directory', async () => {
    const repo = await newRepo()
    await repo.commit('a', { 'sub/x.txt': 'x\n' })
    expect(() => createGitSourceControl({ repo: join(repo.dir, 'missing'), ref: 'main' })).toThrow(NotFoundError)
    expect(() => createGitSourceControl({ repo: join(repo.dir, 'sub/x.txt'), ref: 'main' })).toThrow(InvalidInputError)
    expect(() => createGitSourceControl({ repo: '', ref: 'main' })).toThrow(InvalidInputError)
    const sub = createGitSourceControl({ repo: join(repo.dir, 'sub'), ref: 'main' })
    await expect(sub.latest()).rejects.toThrow(/not its root/)
    await expect(sub.latest()).rejects.toBeInstanceOf(InvalidInputError)
    const gitDir = createGitSourceControl({ repo: join(repo.dir, '.git'), ref: 'main' })
    await expect(gitDir.latest()).rejects.toBeInstanceOf(InvalidInputError)

    // A directory outside any repository.
    const plain = realpathSync(mkdtempSync(join(tmpdir(), 'stovepipe-plain-')))
    onTestFinished(() => {
      rmSync(plain, { recursive: true, force: true })
    })
    const sc = createGitSourceControl({ repo: plain, ref: 'main' })
    await expect(sc.latest()).rejects.toBeInstanceOf(InvalidInputError)
    await expect(sc.history()).rejects.toThrow(/is not a git repository/)
  })

  it('rejects bad history limits and cursors before running git', async () => {
    const repo = await newRepo()
    await repo.commit('a')
    const sc = createGitSourceControl({ repo: repo.dir, ref: 'main' })
    for (const limit of [0, -1, 1001, 1.5, Number.NaN]) await expect(sc.history(undefined, limit)).rejects.toBeInstanceOf(InvalidInputError)
    const bad = ['', 'abc', ZERO_SHA, repo.uri(ZERO_SHA), Buffer.from(`v2:${ZERO_SHA}`).toString('base64url'), 'dj*']
    for (const cursor of bad) await expect(sc.history(cursor)).rejects.toBeInstanceOf(InvalidInputError)
  })
})

describe('git source control: hostile input', () => {
  const hostileRefs = [
    '--upload-pack=touch MARKER',
    '-x',
    'main..other',
    'a\u0000b',
    'a\nb',
    '../../etc',
    'refs/heads/../x',
    'refs/heads/x.lock',
    '.hidden',
    'a b',
    'a~1',
    'HEAD^',
    'main^{commit}',
    '@{-1}',
    '@',
    'HEAD',
    'a:b',
    'a\\b',
    'a*',
    'a?',
    'a[b',
    '/abs',
    'x/',
    'a//b',
    'x.',
    '',
    'x'.repeat(1025),
  ]

  it.each(hostileRefs)('rejects ref %j (as ref and as fetch.ref) with InvalidInputError and runs nothing', async (raw) => {
    const repo = await newRepo()
    await repo.commit('a')
    const marker = join(repo.dir, 'MARKER')
    const ref = raw.replace('MARKER', marker)
    expect(() => fullRefName(ref)).toThrow(InvalidInputError)
    expect(() => createGitSourceControl({ repo: repo.dir, ref })).toThrow(InvalidInputError)
    expect(() => createGitSourceControl({ repo: repo.dir, ref: 'main', fetch: { remote: repo.dir, ref } })).toThrow(InvalidInputError)
    expect(() => createGitSourceControlProvider().forQueue({ queue: 'q', repo: repo.dir, ref })).toThrow(InvalidInputError)
    expect(existsSync(marker)).toBe(false)
  })

  it('rejects hostile remotes, and refuses the ext transport', async () => {
    const repo = await newRepo({ bare: true })
    const marker = join(repo.dir, 'MARKER')
    for (const remote of [`--upload-pack=touch ${marker}`, '-x', `a\u0000b`, `a\nb`, '']) {
      expect(() => createGitSourceControl({ repo: repo.dir, ref: 'main', fetch: { remote } })).toThrow(InvalidInputError)
    }
    expect(() => createGitSourceControl({ repo: repo.dir, ref: 'main', fetch: { remote: '.', allowProtocols: ['ext::'] } })).toThrow(
      InvalidInputError,
    )
    const ext = createGitSourceControl({ repo: repo.dir, ref: 'main', fetch: { remote: `ext::sh -c touch% ${marker}` } })
    await expect(ext.latest()).rejects.toBeInstanceOf(UnavailableError)
    expect(existsSync(marker)).toBe(false)
  })

  it('rejects hostile URIs and cursors with InvalidInputError and runs nothing', async () => {
    const repo = await newRepo()
    const a = await repo.commit('a')
    const marker = join(repo.dir, 'MARKER')
    const sc = createGitSourceControl({ repo: repo.dir, ref: 'main' })
    const good = repo.uri(a)
    const hostile = [
      `git+file://${repo.dir}#--upload-pack=touch ${marker}`,
      `git+file://${repo.dir}#-x`,
      `git+file://${repo.dir}#${a}..HEAD`,
      `git+file://${repo.dir}#${a}\u0000`,
      `git+file://${repo.dir}#${a}\n`,
      `git+file://${repo.dir}/../..#${a}`,
      `git+file://${repo.dir}/sub/../#${a}`,
      `git+file://relative/path#${a}`,
      `git+file://${repo.dir}\n#${a}`,
      `git+file://${repo.dir}`,
      `--upload-pack=touch ${marker}`,
      '-x',
      a,
    ]
    for (const uri of hostile) {
      await expect(sc.isAncestor(uri, good), uri).rejects.toBeInstanceOf(InvalidInputError)
      await expect(sc.isAncestor(good, uri), uri).rejects.toBeInstanceOf(InvalidInputError)
    }
    for (const cursor of [`--upload-pack=touch ${marker}`, '-x', Buffer.from('v1:--upload-pack=touch x').toString('base64url')]) {
      await expect(sc.history(cursor)).rejects.toBeInstanceOf(InvalidInputError)
    }
    expect(existsSync(marker)).toBe(false)
  })
})

describe('git source control: paging', () => {
  it('pages through 250 commits with limit 100: every commit once, in order, while the ref moves', async () => {
    const repo = await newRepo()
    const shas = await repo.commits(250)
    const expected = [...shas].reverse().map((sha) => repo.uri(sha))
    const sc = createGitSourceControl({ repo: repo.dir, ref: 'main' })

    // The default page size is 100.
    expect(await sc.history()).toEqual(await sc.history(undefined, 100))
    const first = await sc.history(undefined, 100)
    expect(first.items).toEqual(expected.slice(0, 100))
    expect(first.nextCursor).toBeDefined()
    // The ref moves on between pages…
    await repo.commits(5, { prefix: 'later' })
    const second = await sc.history(first.nextCursor, 100)
    expect(second.items).toEqual(expected.slice(100, 200))
    // …and is even rewritten.
    await repo.forcePush('main', shas[9] ?? '')
    const rewritten = await repo.commit('rewritten')
    const third = await sc.history(second.nextCursor, 100)
    expect(third).toEqual({ items: expected.slice(200) })

    const all = [...first.items, ...second.items, ...third.items]
    expect(all).toEqual(expected)
    expect(new Set(all).size).toBe(250)
    // A fresh walk shows the rewritten line.
    expect((await sc.history()).items).toEqual([repo.uri(rewritten), ...expected.slice(240)])
    // An exact multiple of the limit ends without a cursor.
    const ten = await newRepo()
    await ten.commits(10)
    const tenSc = createGitSourceControl({ repo: ten.dir, ref: 'main' })
    expect((await tenSc.history(undefined, 10)).nextCursor).toBeUndefined()
    expect(await allHistory(tenSc, 5)).toHaveLength(10)
  })
})

describe('git source control: fetch', () => {
  it('fetches the ref from a remote before latest(), following new commits and rewrites', async () => {
    const upstream = await newRepo()
    const a = await upstream.commit('a', { 'x.txt': 'a\n' })
    const mirror = await newRepo({ bare: true })
    const sc = createGitSourceControl({ repo: mirror.dir, ref: 'main', fetch: { remote: upstream.dir } })
    expect(await sc.latest()).toBe(mirror.uri(a))
    const b = await upstream.commit('b', { 'x.txt': 'b\n' })
    expect(await sc.latest()).toBe(mirror.uri(b))
    expect(await sc.isAncestor(mirror.uri(a), mirror.uri(b))).toBe(true)
    await upstream.forcePush('main', a)
    const c = await upstream.commit('c', { 'x.txt': 'c\n' })
    // Concurrent calls serialize their fetches and agree.
    const heads = await Promise.all([sc.latest(), sc.latest(), sc.latest()])
    expect(heads).toEqual([mirror.uri(c), mirror.uri(c), mirror.uri(c)])
    expect(await sc.isAncestor(mirror.uri(b), mirror.uri(c))).toBe(false)
    expect(await sc.history()).toEqual({ items: [mirror.uri(c), mirror.uri(a)] })
    // No FETCH_HEAD, no tags.
    expect(existsSync(join(mirror.dir, 'FETCH_HEAD'))).toBe(false)
  })

  it('a ref deleted upstream is NotFoundError (a retry will not bring it back), not UnavailableError', async () => {
    const upstream = await newRepo()
    await upstream.commit('a')
    await upstream.branch('feature')
    const mirror = await newRepo({ bare: true })
    const sc = createGitSourceControl({ repo: mirror.dir, ref: 'feature', fetch: { remote: upstream.dir } })
    await sc.latest()
    await upstream.git(['branch', '-D', 'feature'])
    const error = await sc.latest().catch((e: unknown) => e)
    expect(error).toBeInstanceOf(NotFoundError)
    expect((error as Error).message).toContain('the remote has no refs/heads/feature')
  })

  it('refuses timeouts Node cannot arm (above 2^31 - 1 ms, which would fire at once)', async () => {
    const repo = await newRepo()
    await repo.commit('a')
    for (const options of [{ timeoutMs: 2 ** 31 }, { fetch: { remote: repo.dir, timeoutMs: 2 ** 31 } }]) {
      expect(() => createGitSourceControl({ repo: repo.dir, ref: 'main', ...options })).toThrow(InvalidInputError)
    }
    expect(() => createGitSourceControl({ repo: repo.dir, ref: 'main', timeoutMs: 2 ** 31 - 1 })).not.toThrow()
  })

  it('fetches a differently named remote ref, through a relative remote path', async () => {
    const upstream = await newRepo()
    await upstream.commit('a')
    await upstream.checkout('release', { create: true })
    const r = await upstream.commit('r')
    const mirror = await newRepo({ bare: true })
    const sc = createGitSourceControl({
      repo: mirror.dir,
      ref: 'refs/heads/validated',
      fetch: { remote: relative(mirror.dir, upstream.dir), ref: 'release' },
    })
    expect(await sc.latest()).toBe(mirror.uri(r))
    expect(await mirror.head('refs/heads/validated')).toBe(r)
  })

  it('gives a retryable UnavailableError when the remote is missing, and recovers when it appears', async () => {
    const mirror = await newRepo({ bare: true })
    const remote = `${mirror.dir}-upstream-missing`
    const sc = createGitSourceControl({ repo: mirror.dir, ref: 'main', fetch: { remote } })
    const error: unknown = await sc.latest().then(
      () => undefined,
      (e: unknown) => e,
    )
    expect(error).toBeInstanceOf(UnavailableError)
    expect(isRetryable(error)).toBe(true)
    expect((error as Error).message).toMatch(/fetching refs\/heads\/main from .*upstream-missing/)

    const upstream = await newRepo()
    const a = await upstream.commit('a')
    const later = createGitSourceControl({ repo: mirror.dir, ref: 'main', fetch: { remote: upstream.dir } })
    expect(await later.latest()).toBe(mirror.uri(a))
  })

  it('hides credentials of the remote in errors', async () => {
    const mirror = await newRepo({ bare: true })
    const sc = createGitSourceControl({
      repo: mirror.dir,
      ref: 'main',
      fetch: { remote: 'http://user:s3cret@127.0.0.1:9/repo.git', timeoutMs: 20_000 },
    })
    const error = (await sc.latest().then(
      () => undefined,
      (e: unknown) => e,
    )) as Error
    expect(error).toBeInstanceOf(UnavailableError)
    expect(error.message).not.toContain('s3cret')
    expect(error.cause).toBeUndefined()
  })

  it('refuses to fetch into a branch checked out in a working tree', async () => {
    const upstream = await newRepo()
    await upstream.commit('a')
    const clone = await newRepo()
    await clone.commit('local')
    const sc = createGitSourceControl({ repo: clone.dir, ref: 'main', fetch: { remote: upstream.dir } })
    await expect(sc.latest()).rejects.toThrow(/use a bare repository/)
    await expect(sc.latest()).rejects.toBeInstanceOf(InvalidInputError)
  })
})

describe('git source control provider', () => {
  it('binds each queue to its repo and ref, with per-queue fetch options', async () => {
    const one = await newRepo()
    const a = await one.commit('a')
    const two = await newRepo()
    await two.commit('t')
    await two.checkout('release', { create: true })
    const r = await two.commit('r')
    const upstream = await newRepo()
    const u = await upstream.commit('u')
    const mirror = await newRepo({ bare: true })
    const provider = createGitSourceControlProvider({
      repo: one.dir,
      fetch: (target) => (target.queue === 'mirrored' ? { remote: upstream.dir } : undefined),
    })
    expect(await provider.forQueue({ queue: 'one', ref: 'main' }).latest()).toBe(one.uri(a))
    expect(await provider.forQueue({ queue: 'two', repo: two.dir, ref: 'refs/heads/release' }).latest()).toBe(two.uri(r))
    expect(await provider.forQueue({ queue: 'mirrored', repo: mirror.dir, ref: 'main' }).latest()).toBe(mirror.uri(u))
    expect(() => createGitSourceControlProvider().forQueue({ queue: 'q', ref: 'main' })).toThrow(/names no repo/)
  })
})

describe('git source control in the runtime', () => {
  it('a queue naming a repository that does not exist is refused with nothing stored; one that moved since still opens and can be rebound', async () => {
    const repo = await newRepo()
    const a = await repo.commit('a')
    const storage = createMemoryStorage()
    const builder = createFakeBuilder({ durationMs: 0 })
    const sourceControl = createGitSourceControlProvider()
    const missing = join(repo.dir, 'no-such-clone')
    let sp = await createStovepipe({ storage, sourceControl, builder })
    await expect(sp.queue('main', { repo: missing, ref: 'main' })).rejects.toBeInstanceOf(NotFoundError)
    expect(await storage.queues.list()).toEqual([])
    await sp.stop()
    // A queue stored with a repository that has gone since (moved, deleted): the runtime still starts.
    await storage.queues.create({
      name: 'main',
      version: 0,
      config: { ref: 'main', repo: missing, maxConcurrent: 1, maxValidationMs: 60_000, leaseGraceMs: 0, maxAttempts: 1 },
      createdAt: 1,
      updatedAt: 1,
    })
    sp = await createStovepipe({ storage, sourceControl, builder })
    try {
      const stale = await sp.queue('main')
      await expect(stale.ingest()).rejects.toBeInstanceOf(NotFoundError)
      // Opened with its corrected config, it is bound afresh.
      const main = await sp.queue('main', { repo: repo.dir, ref: 'main' })
      expect((await main.ingest()).uri).toBe(repo.uri(a))
    } finally {
      await sp.stop()
    }
  })

  it('ingests real heads, records them green, and plans incrementally then fully after a rewrite', async () => {
    const repo = await newRepo()
    const a = await repo.commit('a', { 'x.txt': 'a\n' })
    const builder = createFakeBuilder({ durationMs: 0 })
    const sp = await createStovepipe({ storage: createMemoryStorage(), sourceControl: createGitSourceControlProvider(), builder })
    try {
      const main = await sp.queue('main', { repo: repo.dir, ref: 'main' })
      const first = await main.ingest()
      expect(first).toMatchObject({ uri: repo.uri(a), deduplicated: false })
      expect(await main.waitFor(first.id, 'recorded')).toMatchObject({ state: 'recorded', verdict: 'green', strategy: 'full' })
      expect(main.lastGreen()?.uri).toBe(repo.uri(a))
      expect(await main.ingest()).toMatchObject({ id: first.id, deduplicated: true })

      const b = await repo.commit('b', { 'x.txt': 'b\n' })
      const second = await main.ingest()
      expect(await main.waitFor(second.id, 'recorded')).toMatchObject({ verdict: 'green', strategy: 'incremental', baseline: repo.uri(a) })
      expect(main.lastGreen()?.uri).toBe(repo.uri(b))

      await repo.forcePush('main', a)
      const c = await repo.commit('c', { 'x.txt': 'c\n' })
      const third = await main.ingest()
      expect(third.uri).toBe(repo.uri(c))
      const view = await main.waitFor(third.id, 'recorded')
      expect(view).toMatchObject({ verdict: 'green', strategy: 'full' })
      expect(view.fallback).toMatch(/not an ancestor/)
      expect(main.lastGreen()?.uri).toBe(repo.uri(c))
      expect(builder.builds.map((build) => build.uri)).toEqual([a, b, c].map((sha) => repo.uri(sha)))
    } finally {
      await sp.stop()
    }
  })

  it('fails an ingest of a missing ref with NotFoundError', async () => {
    const repo = await newRepo()
    await repo.commit('a')
    const sp = await createStovepipe({
      storage: createMemoryStorage(),
      sourceControl: createGitSourceControl({ repo: repo.dir, ref: 'missing' }),
      builder: createFakeBuilder(),
    })
    try {
      const queue = await sp.queue('missing', { ref: 'missing' })
      await expect(queue.ingest()).rejects.toBeInstanceOf(NotFoundError)
    } finally {
      await sp.stop()
    }
  })
})
