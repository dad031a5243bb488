/**
 * A tour of the storage contract on the embedded default (SQLite in a temp file):
 * dedup on (queue, uri), CAS updates, first-writer-wins facts, durable counters, and what
 * survives a reopen. Run: `npm run demo:storage`.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { AlreadyExistsError, VersionMismatchError, type RequestRecord } from 'stovepipe'
import { openSqliteStorage } from 'stovepipe/storage/sqlite'

const dir = mkdtempSync(join(tmpdir(), 'stovepipe-tour-'))
const filename = join(dir, 'stovepipe.db')
const say = (line: string): void => {
  console.log(line)
}

try {
  let storage = await openSqliteStorage({ filename })
  say(`opened ${filename} (SQLite, WAL, migrated)`)

  // Ingest: claim (queue, uri) first, then write the request row.
  const uri = 'git+file:///srv/repo#0123456789abcdef0123456789abcdef01234567'
  const n = await storage.counters.next('main')
  const id = `request/main/${n}`
  await storage.requestUris.create({ queue: 'main', uri, requestId: id })
  const request: RequestRecord = { id, queue: 'main', uri, state: 'accepted', version: 0, createdAt: Date.now(), updatedAt: Date.now() }
  await storage.requests.create(request)
  say(`ingested ${uri.slice(-8)} as ${id}`)

  // The same head reported again resolves to the request already minted for it.
  try {
    await storage.requestUris.create({ queue: 'main', uri, requestId: 'request/main/99' })
  } catch (error) {
    if (!(error instanceof AlreadyExistsError)) throw error
    say(`re-reported head deduplicated to ${await storage.requestUris.getIdByUri('main', uri)}`)
  }

  // CAS: the first writer at version 0 wins, a stale writer is refused.
  await storage.requests.update({ ...request, state: 'processing', updatedAt: Date.now() }, 0, 1)
  try {
    await storage.requests.update({ ...request, state: 'cancelled', updatedAt: Date.now() }, 0, 1)
  } catch (error) {
    if (!(error instanceof VersionMismatchError)) throw error
    say(`stale update refused: ${error.message}`)
  }

  // Facts are immutable: the first verdict for a commit stays.
  const first = await storage.facts.put({ queue: 'main', uri, project: '', degree: 0, requestId: id, at: Date.now() })
  const second = await storage.facts.put({ queue: 'main', uri, project: '', degree: 1, requestId: 'request/main/2', at: Date.now() })
  say(`fact written: ${first.written}; second writer kept out: ${!second.written} (degree stays ${second.fact.degree})`)

  // Group commit: several ops, one transaction, one result each.
  const results = await storage.commit([
    { op: 'request.update', record: { ...request, state: 'recorded', updatedAt: Date.now() }, oldVersion: 1, newVersion: 2 },
    { op: 'counter.next', queue: 'main' },
    { op: 'request.create', record: request },
  ])
  say(`one commit, three results: ${results.map((r) => r.status).join(', ')}`)

  await storage.close()
  storage = await openSqliteStorage({ filename })
  const again = await storage.requests.get(id)
  say(`after reopen: ${id} is ${again.state} at version ${again.version}; next number is ${await storage.counters.next('main')}`)
  await storage.close()
} finally {
  rmSync(dir, { recursive: true, force: true })
}
