/** A runtime on a simulated clock with the fake source control and builder, for tests. */
import { SimulatedClock } from 'xstate'
import { createFakeBuilder, type FakeBuilderOptions } from '../../src/build/fake.js'
import { createStovepipe, type Stovepipe, type StovepipeOptions } from '../../src/index.js'
import { createFakeSourceControl, type FakeSourceControl } from '../../src/sourcecontrol/fake.js'
import { createMemoryDatabase, createMemoryStorage, type MemoryDatabase } from '../../src/storage/memory/index.js'
import type { Storage } from '../../src/storage/index.js'
import { driveUntil, track } from './drive.js'

export interface World {
  clock: SimulatedClock
  database: MemoryDatabase
  storage: Storage
  sc: FakeSourceControl
  builder: ReturnType<typeof createFakeBuilder>
  sp: Stovepipe
  /** Drives the clock until the promise settles; returns its value or throws its error. */
  run<T>(promise: Promise<T>, stepMs?: number): Promise<T>
  /**
   * Abandons the runtime as a crash would (nothing more reaches storage), lets `downMs`
   * pass on the clock, and starts a new runtime on the same data.
   */
  crash(downMs?: number): Promise<Stovepipe>
  /** Stops the runtime gracefully and starts a new one on the same data. */
  restart(): Promise<Stovepipe>
}

export interface WorldOptions {
  builder?: FakeBuilderOptions
  runtime?: Partial<Omit<StovepipeOptions, 'storage' | 'sourceControl' | 'builder' | 'clock'>>
  clock?: SimulatedClock
  sc?: FakeSourceControl
  database?: MemoryDatabase
  /** Wraps each storage handle the runtime gets (to record or fault it). */
  wrap?: (storage: Storage) => Storage
  /** Opens the storage (each start of the runtime); default: memory on `database`. */
  openStorage?: () => Promise<Storage>
  /** Options for each start of the runtime (its generation: 0, 1, …), over `runtime`. */
  perStart?: (generation: number) => Partial<Omit<StovepipeOptions, 'storage' | 'sourceControl' | 'builder' | 'clock'>>
  /** Called once a runtime is gone (stopped, or abandoned by a crash), with its generation. */
  onGone?: (generation: number) => void
}

export async function world(options: WorldOptions = {}): Promise<World> {
  const clock = options.clock ?? new SimulatedClock()
  if (options.clock === undefined) clock.set(1_700_000_000_000)
  const database = options.database ?? createMemoryDatabase()
  const sc = options.sc ?? createFakeSourceControl()
  const builder = createFakeBuilder(options.builder ?? {})
  let generation = 0
  const open = async (): Promise<{ storage: Storage; sp: Stovepipe }> => {
    const started = generation++
    const raw = options.openStorage === undefined ? createMemoryStorage({ database }) : await options.openStorage()
    const storage = (options.wrap ?? ((x: Storage) => x))(raw)
    const sp = await createStovepipe({
      storage,
      sourceControl: sc,
      builder,
      clock,
      retry: { baseDelayMs: 100, maxDelayMs: 1000 },
      ...options.runtime,
      ...(options.perStart?.(started) ?? {}),
    })
    return { storage, sp }
  }
  const first = await open()
  const w: World = {
    clock,
    database,
    sc,
    builder,
    storage: first.storage,
    sp: first.sp,
    async run<T>(promise: Promise<T>, stepMs = 10): Promise<T> {
      const state = track(promise)
      await driveUntil(clock, () => state.settled, { stepMs })
      if (state.error !== undefined) throw state.error instanceof Error ? state.error : new Error(JSON.stringify(state.error))
      return state.value as T
    },
    async crash(downMs = 0) {
      await w.storage.close()
      w.sp.root.stop()
      options.onGone?.(generation - 1)
      if (downMs > 0) clock.increment(downMs)
      const next = await open()
      w.storage = next.storage
      w.sp = next.sp
      return next.sp
    },
    async restart() {
      await w.run(w.sp.stop())
      options.onGone?.(generation - 1)
      await w.storage.close()
      const next = await open()
      w.storage = next.storage
      w.sp = next.sp
      return next.sp
    },
  }
  return w
}

/**
 * `commit` of `inner`, except that while `dropping()` holds, queue snapshot writes
 * "succeed" without reaching storage (reported ok, never applied): a snapshot that lags,
 * as a crash right before its write leaves it.
 */
export function droppingQueueWrites(inner: Storage, dropping: () => boolean): Storage['commit'] {
  return async (ops) => {
    if (!dropping()) return inner.commit(ops)
    const kept = ops.filter((op) => op.op !== 'queue.update')
    const results = kept.length === 0 ? [] : await inner.commit(kept)
    let k = 0
    return ops.map((op) => (op.op === 'queue.update' ? { status: 'ok' as const } : (results[k++] ?? { status: 'ok' as const })))
  }
}
