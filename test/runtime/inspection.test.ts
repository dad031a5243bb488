/** The `inspect` option reaches the whole actor system. */
import { describe, expect, it } from 'vitest'
import type { InspectionEvent } from 'xstate'
import { stepLabel } from '../../src/runtime/index.js'
import { world } from '../support/runtime.js'

describe('inspection', () => {
  it("shows each request's transitions in the inspection stream", async () => {
    const seen = new Map<string, string[]>()
    const actors = new Map<string, string>()
    const inspect = (event: InspectionEvent): void => {
      if (event.type !== '@xstate.snapshot') return
      const snapshot = event.snapshot as unknown as { value: unknown; context?: { id?: unknown } }
      const id = snapshot.context?.id
      if (typeof id !== 'string' || !id.startsWith('request/')) return
      // Which actor it is: a child of its queue's actor, named by the request's number.
      const actor = event.actorRef as unknown as { id: string; _parent?: { id: string } }
      actors.set(id, `${actor._parent?.id ?? '(no parent)'} > ${actor.id}`)
      const label = stepLabel(snapshot.value)
      const labels = seen.get(id) ?? []
      if (label !== undefined && labels.at(-1) !== label) labels.push(label)
      seen.set(id, labels)
    }
    const w = await world({ runtime: { inspect } })
    const main = await w.run(w.sp.queue('main', { ref: 'main' }))
    for (const sha of ['a1', 'a2']) {
      w.sc.commit('main', sha)
      await w.run(main.waitFor((await w.run(main.ingest())).id))
    }
    const lifecycle = ['accepted', 'processing.planning', 'processing.building', 'processing.recording', 'recorded']
    expect(seen.get('request/main/1')).toEqual(lifecycle)
    expect(seen.get('request/main/2')).toEqual(lifecycle)
    expect(actors.get('request/main/1')).toBe('queue:main > 1')
    expect(actors.get('request/main/2')).toBe('queue:main > 2')
  })

  it('keeps working when the inspect observer throws', async () => {
    let calls = 0
    const w = await world({
      runtime: {
        inspect: {
          next: () => {
            calls++
            throw new Error('observer bug')
          },
        },
      },
    })
    const main = await w.run(w.sp.queue('main', { ref: 'main' }))
    w.sc.commit('main', 'a1')
    const done = await w.run(main.waitFor((await w.run(main.ingest())).id))
    expect(done.verdict).toBe('green')
    expect(calls).toBeGreaterThan(5)
  })
})
