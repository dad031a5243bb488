/**
 * Queue actors live in groups of up to QUEUES_PER_GROUP under the root actor, so that no
 * spawn or stop copies a record of children larger than a group's (XState copies a parent's
 * record on each): the grouping, and that a runtime with several groups behaves as one.
 * How opening, restarting and stopping scale is measured by `npm run bench:runtime`
 * (`BENCH_RUNTIME_PARTS=queues`).
 */
import { describe, expect, it } from 'vitest'
import type { AnyActorRef } from 'xstate'
import { StoppedError } from '../../src/index.js'
import { QUEUES_PER_GROUP, queueGroupId } from '../../src/machines/index.js'
import { world, type World } from '../support/runtime.js'

/** Three groups: two full ones and one with two queues. */
const COUNT = 2 * QUEUES_PER_GROUP + 2
const names = Array.from({ length: COUNT }, (_, i) => `q${i}`)

type Actor = AnyActorRef & { _parent?: { id: string } }
const childrenOf = (actor: AnyActorRef): Record<string, AnyActorRef | undefined> =>
  (actor.getSnapshot() as { children: Record<string, AnyActorRef | undefined> }).children

/** The group each queue actor is a child of, by queue name, read from the actor tree. */
function groups(w: World): Map<string, string[]> {
  const byGroup = new Map<string, string[]>()
  for (const [id, child] of Object.entries(childrenOf(w.sp.root))) {
    if (child === undefined || !id.startsWith('queues:')) continue
    byGroup.set(
      id,
      Object.keys(childrenOf(child)).map((queue) => queue.slice('queue:'.length)),
    )
  }
  return byGroup
}

async function openAll(w: World): Promise<void> {
  for (const name of names) await w.run(w.sp.queue(name, { ref: name }))
}

async function validate(w: World, queue: string, sha: string): Promise<void> {
  w.sc.commit(queue, sha)
  const handle = await w.run(w.sp.queue(queue))
  const { id } = await w.run(handle.ingest())
  expect(await w.run(handle.waitFor(id))).toMatchObject({ state: 'recorded', verdict: 'green' })
  expect(handle.lastGreen()?.uri).toBe(`fake://${sha}`)
}

describe('many queues', () => {
  it('puts queue actors in groups of QUEUES_PER_GROUP under the root, in the order they open', async () => {
    const w = await world()
    await openAll(w)
    const expected = new Map([
      [queueGroupId(0), names.slice(0, QUEUES_PER_GROUP)],
      [queueGroupId(1), names.slice(QUEUES_PER_GROUP, 2 * QUEUES_PER_GROUP)],
      [queueGroupId(2), names.slice(2 * QUEUES_PER_GROUP)],
    ])
    expect(groups(w)).toEqual(expected)
    // The root holds the groups and the runtime's services, not the queues.
    expect(Object.keys(childrenOf(w.sp.root)).filter((id) => id.startsWith('queue:'))).toEqual([])
    // Queue actors keep their system ids, whatever group holds them.
    const last = w.sp.system.get(`queue:${names.at(-1)}`) as Actor | undefined
    expect(last?._parent?.id).toBe(queueGroupId(2))
    // After a restart, and after a crash, every queue opens again, grouped the same way
    // (in the order storage lists them).
    const sizes = [...expected.values()].map((group) => group.length)
    for (const reopen of [() => w.restart(), () => w.crash()]) {
      await reopen()
      expect(w.sp.queues().map((q) => q.name)).toEqual([...names].sort())
      const reopened = groups(w)
      expect([...reopened.keys()]).toEqual([...expected.keys()])
      expect([...reopened.values()].map((group) => group.length)).toEqual(sizes)
      expect([...reopened.values()].flat()).toEqual([...names].sort())
    }
    await w.run(w.sp.stop())
  })

  it('validates in every group, fails a queue alone, and keeps last green across a restart', async () => {
    const w = await world()
    await openAll(w)
    const [first, neighbour, failing] = [names[0], names.at(-2), names.at(-1)] as [string, string, string]
    await validate(w, first, 'a1')
    await validate(w, failing, 'f1')
    // A bug in a queue of the last group, simulated as in the semantics suite: the actor fails.
    const failingActor = w.sp.system.get(`queue:${failing}`) as AnyActorRef | undefined
    failingActor?.send({ type: 'resume', requests: null, at: 0 })
    expect(w.sp.system.get(`queue:${failing}`)).toBeUndefined()
    w.sc.commit(failing, 'f2')
    const failingHandle = await w.run(w.sp.queue(failing))
    await expect(w.run(failingHandle.ingest())).rejects.toThrow(new RegExp(`queue ${failing} failed`))
    // Its group and its neighbour in it go on; so does the runtime.
    await validate(w, neighbour, 'n1')
    await validate(w, first, 'a2')
    await w.restart()
    expect((await w.run(w.sp.queue(first))).lastGreen()?.uri).toBe('fake://a2')
    expect((await w.run(w.sp.queue(neighbour))).lastGreen()?.uri).toBe('fake://n1')
    // The failed queue starts afresh at the next start, with the last green it had.
    expect((await w.run(w.sp.queue(failing))).lastGreen()?.uri).toBe('fake://f1')
    await validate(w, failing, 'f3')
    await w.run(w.sp.stop())
    await expect(w.run(w.sp.queue(first))).rejects.toBeInstanceOf(StoppedError)
  })
})
