/**
 * `stovepipe/storage/memory`: the in-memory backend, the reference model of the contract.
 * @module
 */
export { createMemoryDatabase, createMemoryStorage } from './memory-storage.js'
export type { MemoryDatabase, MemoryStorageOptions } from './memory-storage.js'
