/**
 * The backends every property runs against: memory and SQLite always, MySQL where it
 * answers (and always under CI=true, where an unreachable server fails the suite).
 */
import { describe } from 'vitest'
import type { Storage, WriteOp } from '../../src/storage/index.js'
import type { StorageFixture } from '../../src/testing/index.js'
import { openMemoryFixture } from './memory.js'
import { describeMysql, openMysqlFixture } from './mysql.js'
import { openSqliteFixture } from './sqlite.js'

export interface Backend {
  name: string
  open: () => Promise<StorageFixture>
  /** fast-check runs per property on this backend. */
  runs: number
}

/** Registers `body` once per backend, in a describe block named after it. */
export function describeBackends(title: string, body: (backend: Backend) => void): void {
  describe(`${title} (memory)`, () => {
    body({ name: 'memory', open: openMemoryFixture, runs: 60 })
  })
  describe(`${title} (sqlite)`, () => {
    body({ name: 'sqlite', open: () => openSqliteFixture(), runs: 25 })
  })
  describeMysql(`${title} (mysql)`, () => {
    body({ name: 'mysql', open: openMysqlFixture, runs: 8 })
  })
}

/** A commit as seen from outside the writer: when, what, and whether it threw. */
export interface CommitRecord {
  at: number
  ops: readonly WriteOp[]
  ok: boolean
}

/** A storage that records its commits and knows whether one is under way. */
export type RecordingStorage = Storage & { commits: CommitRecord[]; busy: () => boolean }

/** Wraps a storage to record every commit call with the clock time it was made. */
export function recordCommits(inner: Storage, now: () => number): RecordingStorage {
  const commits: CommitRecord[] = []
  let inFlight = 0
  return {
    ...inner,
    commits,
    busy: () => inFlight > 0,
    commit: async (ops) => {
      const record: CommitRecord = { at: now(), ops, ok: false }
      commits.push(record)
      inFlight++
      try {
        const results = await inner.commit(ops)
        record.ok = true
        return results
      } finally {
        inFlight--
      }
    },
  }
}
