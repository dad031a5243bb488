/**
 * Watch the statecharts live in the Stately inspector.
 *
 *   npx tsx examples/inspect.ts          # opens http://localhost:8090 and keeps pushing commits
 *   npx tsx examples/inspect.ts --once   # one short run, no browser (what the tests run)
 *
 * A local bridge (`@statelyai/inspect/server`) relays the runtime's inspection events to
 * the Stately inspector UI, which the page at http://localhost:8090 embeds (your browser
 * needs to reach stately.ai). Set INSPECT_PORT to use another port (8090 by default, next to `stovepipe run`'s 8080).
 */
import { createWebSocketInspector } from '@statelyai/inspect'
import { createInspectorServer } from '@statelyai/inspect/server'
import { createStovepipe } from 'stovepipe'
import { createFakeBuilder } from 'stovepipe/build/fake'
import { createFakeSourceControl } from 'stovepipe/sourcecontrol/fake'
import { createMemoryStorage } from 'stovepipe/storage/memory'
import WebSocket from 'ws'

const once = process.argv.includes('--once')
const port = Number(process.env.INSPECT_PORT ?? 8090)
const server = createInspectorServer({ port, autoOpen: !once })
const inspector = createWebSocketInspector({ url: `ws://localhost:${port}` })

// A second client of the bridge, as the browser page is: counts what reaches the inspector.
let relayed = 0
const viewer = new WebSocket(`ws://localhost:${port}`)
viewer.on('message', () => {
  relayed++
})
await new Promise((resolve) => viewer.once('open', resolve))

const sourceControl = createFakeSourceControl()
const builder = createFakeBuilder({ durationMs: once ? 50 : 1500, outcome: (uri) => (uri.endsWith('3') ? 'failed' : 'passed') })
const sp = await createStovepipe({ storage: createMemoryStorage(), sourceControl, builder, inspect: inspector.inspect })
const main = await sp.queue('main', { ref: 'main' })
console.log(once ? `inspector bridge on ws://localhost:${port}` : `watch the statecharts at http://localhost:${port} (Ctrl-C to stop)`)

for (let n = 1; once ? n <= 3 : true; n++) {
  sourceControl.commit('main', `c${n}`)
  const { id } = await main.ingest()
  const request = await main.waitFor(id)
  console.log(`${id} ${request.uri} ${request.verdict ?? request.state}; last green ${main.lastGreen()?.uri ?? 'none'}`)
  if (!once) await new Promise((resolve) => setTimeout(resolve, 2000))
}

await sp.stop()
await new Promise((resolve) => setTimeout(resolve, 200))
console.log(`relayed ${relayed} inspection events to the inspector`)
viewer.close()
inspector.stop()
server.stop()
