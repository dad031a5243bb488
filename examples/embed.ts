/**
 * A host app embedding Stovepipe: two queues on SQLite, spawned programmatically, each
 * ingesting a head, waiting for its verdict and printing its last green.
 *
 * Run: `npx tsx examples/embed.ts`. Uses the fake source control and builder so it needs
 * no repository; swap in `stovepipe/sourcecontrol/git` and `stovepipe/build/shell` for a
 * real one.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createStovepipe } from 'stovepipe'
import { createFakeBuilder } from 'stovepipe/build/fake'
import { createFakeSourceControl } from 'stovepipe/sourcecontrol/fake'
import { openSqliteStorage } from 'stovepipe/storage/sqlite'

const dir = mkdtempSync(join(tmpdir(), 'stovepipe-embed-'))
try {
  const storage = await openSqliteStorage({ filename: join(dir, 'stovepipe.db') })
  const sourceControl = createFakeSourceControl()
  // Commits whose sha starts with "bad" fail their build.
  const builder = createFakeBuilder({ outcome: (uri) => (uri.includes('bad') ? 'failed' : 'passed'), durationMs: 20 })
  const sp = await createStovepipe({ storage, sourceControl, builder })

  const main = await sp.queue('main', { ref: 'refs/heads/main' })
  const release = await sp.queue('release', { ref: 'refs/heads/release', maxConcurrent: 2 })

  sourceControl.commit('refs/heads/main', 'a1')
  sourceControl.commit('refs/heads/release', 'r1')
  sourceControl.commit('refs/heads/release', 'bad2')

  for (const queue of [main, release]) {
    const { id, uri } = await queue.ingest()
    const request = await queue.waitFor(id, 'recorded')
    console.log(`${queue.name}: ${id} ${uri} ${request.verdict} (${request.strategy})`)
    const green = queue.lastGreen()
    console.log(`${queue.name}: last green ${green === undefined ? 'none' : `${green.uri} from ${green.requestId}`}`)
  }

  const report = await sp.stop()
  console.log(`stopped: ${report.writer.committed} ops committed while draining, ${report.writer.deadLettered} dead-lettered`)
  await storage.close()
} finally {
  rmSync(dir, { recursive: true, force: true })
}
