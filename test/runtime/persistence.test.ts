/**
 * Persistence: every request state change is a CAS write through the writer, committed
 * before the machine works in the new state; the queue persists its snapshot with CAS; and
 * every persisted shape survives a JSON round trip.
 */
import { describe, expect, it } from 'vitest'
import type { AnyActorRef } from 'xstate'
import type { Storage, WriteOp } from '../../src/index.js'
import type { QueueActor } from '../../src/machines/queue.js'
import { persistedWithoutChildren } from '../../src/runtime/queue-host.js'
import { world } from '../support/runtime.js'

/** Records, in order, the request steps whose CAS write has committed. */
function committedSteps(inner: Storage, log: { id: string; step: string; oldVersion: number; newVersion: number }[]): Storage {
  return {
    ...inner,
    commit: async (ops: readonly WriteOp[]) => {
      const results = await inner.commit(ops)
      ops.forEach((op, i) => {
        if (op.op === 'request.update' && results[i]?.status === 'ok') {
          const step = (op.record.data as { step: string }).step
          log.push({ id: op.record.id, step, oldVersion: op.oldVersion, newVersion: op.newVersion })
        }
      })
      return results
    },
  }
}

const roundTrip = (value: unknown): unknown => JSON.parse(JSON.stringify(value))

describe('persistence', () => {
  it('commits each step of a request (CAS, versions in order) before working in it', async () => {
    const committed: { id: string; step: string; oldVersion: number; newVersion: number }[] = []
    const violations: string[] = []
    const w = await world({ builder: { durationMs: 100 }, wrap: (s) => committedSteps(s, committed) })
    // The build of a request may only start once its building step is committed.
    const run = w.builder.run.bind(w.builder)
    w.builder.run = (request) => {
      if (!committed.some((c) => c.id === request.requestId && c.step === 'processing.building'))
        violations.push(`${request.requestId} built before its step was committed`)
      return run(request)
    }
    const main = await w.run(w.sp.queue('main', ref()))
    w.sc.commit('main', 'a1')
    const { id } = await w.run(main.ingest())
    w.sc.commit('main', 'a2')
    const second = await w.run(main.ingest())
    w.sc.commit('main', 'a3')
    const third = await w.run(main.ingest())
    await w.run(main.waitFor(third.id))
    expect(violations).toEqual([])
    expect(committed.filter((c) => c.id === id).map((c) => [c.step, c.oldVersion, c.newVersion])).toEqual([
      ['processing.planning', 0, 1],
      ['processing.building', 1, 2],
      ['processing.recording', 2, 3],
      ['recorded', 3, 4],
    ])
    expect(committed.filter((c) => c.id === second.id).map((c) => c.step)).toEqual(['superseded'])
    expect((await w.storage.requests.get(id)).version).toBe(4)
  })

  it('persists the queue snapshot (context, no children) with CAS on every durable change', async () => {
    const w = await world()
    const main = await w.run(w.sp.queue('main', ref()))
    for (const sha of ['a1', 'a2']) {
      w.sc.commit('main', sha)
      await w.run(main.waitFor((await w.run(main.ingest())).id))
    }
    await w.run(w.sp.stop())
    const row = await w.storage.queues.get('main')
    // Durable changes (config, last green) are each a CAS write; in-flight state is rebuilt from request rows.
    expect(row.version).toBe(2) // created at 0; last green moved twice
    const snapshot = row.snapshot as { context: unknown; children: unknown; status: string }
    const actor = w.sp.system.get('queue:main') as { getSnapshot(): { context: unknown } } | undefined
    expect(snapshot.children).toEqual({})
    expect(snapshot.status).toBe('active')
    expect(snapshot.context).toMatchObject({
      name: 'main',
      lastGreen: { uri: 'fake://a2', requestId: 'request/main/2' },
      requests: {},
      dueAt: null,
    })
    expect(row.lastGreen).toMatchObject({ uri: 'fake://a2', requestId: 'request/main/2' })
    if (actor !== undefined) expect(snapshot.context).toEqual(roundTrip(actor.getSnapshot().context))
  })

  it("persists the queue snapshot in XState's format without persisting the requests in flight", async () => {
    const w = await world({ builder: { durationMs: 1000 } })
    const main = await w.run(w.sp.queue('main', { ref: 'main', maxConcurrent: 2 }))
    for (const sha of ['a1', 'a2', 'a3']) {
      w.sc.commit('main', sha)
      await w.run(main.ingest())
    }
    const actor = w.sp.system.get('queue:main') as QueueActor
    const { context } = actor.getSnapshot()
    expect(Object.keys(context.requests)).toHaveLength(3)
    const persistedChildren: string[] = []
    for (const child of Object.values(actor.getSnapshot().children) as AnyActorRef[]) {
      const own = child.getPersistedSnapshot.bind(child)
      child.getPersistedSnapshot = () => {
        persistedChildren.push(child.id)
        return own()
      }
    }
    const snapshot = persistedWithoutChildren(actor, context)
    expect(persistedChildren).toEqual([])
    // What XState's getPersistedSnapshot gives, with the children dropped, as plain JSON.
    const expected = roundTrip({ ...(actor.getPersistedSnapshot() as Record<string, unknown>), children: {} })
    expect(persistedChildren).toHaveLength(3)
    expect(snapshot).toEqual(expected)
    expect(JSON.stringify(snapshot)).toBe(JSON.stringify(expected))
  })

  it('keeps every persisted shape identical through a JSON round trip', async () => {
    const w = await world({ builder: { outcome: () => ({ outcome: 'passed', projects: { api: 'passed' }, log: 'ok\n' }) } })
    const main = await w.run(w.sp.queue('main', { ref: 'main', projects: ['api'] }))
    w.sc.commit('main', 'a1')
    const { id } = await w.run(main.ingest())
    const view = await w.run(main.waitFor(id))
    const persisted = (w.sp.system.get('queue:main') as { getPersistedSnapshot(): unknown }).getPersistedSnapshot()
    await w.run(w.sp.stop()) // flushes the queue snapshot
    const row = await w.storage.requests.get(id)
    const queue = await w.storage.queues.get('main')
    for (const shape of [row, row.data, queue, queue.snapshot, view, await w.storage.facts.listByUri('main', 'fake://a1')]) {
      expect(roundTrip(shape)).toEqual(shape)
    }
    const { children: _children, ...rest } = persisted as { children: unknown }
    expect(roundTrip(rest)).toEqual(rest)
  })
})

function ref(): { ref: string } {
  return { ref: 'main' }
}
