/** Memory-storage fixtures: "reopening" hands the same database to a new storage. */
import { createMemoryDatabase, createMemoryStorage } from '../../src/storage/memory/index.js'
import type { Storage } from '../../src/storage/index.js'
import type { StorageFixture } from '../../src/testing/index.js'

export function openMemoryFixture(): Promise<StorageFixture> {
  const database = createMemoryDatabase()
  const handles: Storage[] = []
  const open = (): Storage => {
    const storage = createMemoryStorage({ database })
    handles.push(storage)
    return storage
  }
  const storage = open()
  return Promise.resolve({
    storage,
    reopen: async () => {
      await Promise.all(handles.map((h) => h.close()))
      return open()
    },
    destroy: async () => {
      await Promise.all(handles.map((h) => h.close()))
    },
  })
}
