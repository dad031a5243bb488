import { describe, expect, it } from 'vitest'
import { world } from '../support/runtime.js'

describe('runtime smoke', () => {
  it('ingests a head, validates it and moves last green', async () => {
    const w = await world()
    w.sc.commit('main', 'a1')
    const main = await w.run(w.sp.queue('main', { ref: 'main' }))
    const { id, deduplicated } = await w.run(main.ingest())
    expect(deduplicated).toBe(false)
    const done = await w.run(main.waitFor(id, 'recorded'))
    expect(done).toMatchObject({ state: 'recorded', verdict: 'green', strategy: 'full' })
    expect(main.lastGreen()).toMatchObject({ uri: 'fake://a1', requestId: id })
    await w.run(w.sp.events.flush())
    const events = await w.run(w.sp.events.read())
    console.log(events.map((e) => w.sp.events.render(e)).join('\n'))
    await w.run(w.sp.stop())
  })
})
