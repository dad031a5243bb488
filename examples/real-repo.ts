/**
 * The README's programmatic-use example: validate the head of a real repository with the
 * git backend and the shell builder, on SQLite, and print its last green.
 *
 * Run: `npx tsx examples/real-repo.ts <repo path> [ref] [build command]`
 * e.g. `npx tsx examples/real-repo.ts . main "npm test"`.
 */
import { resolve } from 'node:path'
import { createStovepipe } from 'stovepipe'
import { createShellBuilder } from 'stovepipe/build/shell'
import { createGitSourceControlProvider } from 'stovepipe/sourcecontrol/git'
import { openSqliteStorage } from 'stovepipe/storage/sqlite'

if (process.argv.length < 3) {
  // Nothing is built by surprise: `npm test` on a whole checkout can take minutes.
  console.error('usage: npx tsx examples/real-repo.ts <repo path> [ref (main)] [build command ("npm test")]')
  process.exit(2)
}
const [repoArg = '.', ref = 'main', command = 'npm test'] = process.argv.slice(2)
const repo = resolve(repoArg)

const storage = await openSqliteStorage({ filename: process.env.STOVEPIPE_DB ?? './stovepipe.db' })
const sp = await createStovepipe({
  storage,
  sourceControl: createGitSourceControlProvider(), // each queue's repo and ref come from its config
  builder: createShellBuilder({ command }), // runs in a detached worktree at the commit
})

const queue = await sp.queue('main', { repo, ref, maxValidationMs: 30 * 60_000 })
const { id, uri, deduplicated } = await queue.ingest() // the ref's head becomes a request (or finds its old one)
const request = await queue.waitFor(id, 'recorded')
console.log(`${id} ${uri}${deduplicated ? ' (seen before)' : ''}: ${request.verdict} (${request.strategy})`)
if (request.verdict !== 'green') console.log(`why: ${request.reason ?? request.build?.log?.slice(-500) ?? 'see the build log'}`)

const green = queue.lastGreen()
console.log(green === undefined ? 'no green commit yet' : `last green: ${green.uri} (${green.requestId})`)

await sp.stop() // drains writes; requests still in flight resume on the next start
await storage.close()
