/** SQLite files for tests, each in its own temporary directory. */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { openSqliteStorage, type SqliteStorageOptions } from '../../src/storage/sqlite/index.js'
import type { Storage } from '../../src/storage/index.js'
import type { StorageFixture } from '../../src/testing/index.js'

/** A new empty directory under the system temp dir, and its remover. */
export function tempDir(prefix = 'stovepipe-'): { dir: string; remove: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix))
  return {
    dir,
    remove: () => {
      rmSync(dir, { recursive: true, force: true })
    },
  }
}

/** A contract fixture on a fresh SQLite file, deleted on destroy. */
export async function openSqliteFixture(options: Omit<SqliteStorageOptions, 'filename'> = {}): Promise<StorageFixture> {
  const { dir, remove } = tempDir()
  const filename = join(dir, 'stovepipe.db')
  const handles: Storage[] = []
  const open = async (): Promise<Storage> => {
    const storage = await openSqliteStorage({ ...options, filename })
    handles.push(storage)
    return storage
  }
  const storage = await open()
  return {
    storage,
    reopen: async () => {
      await Promise.all(handles.map((h) => h.close()))
      return open()
    },
    destroy: async () => {
      await Promise.all(handles.map((h) => h.close()))
      remove()
    },
  }
}
