/**
 * `stovepipe/testing`: suites and fixtures for testing backends and apps built on
 * Stovepipe. Imports vitest.
 * @module
 */
export { BAD_INPUTS, describeStorageContract, sampleFact, sampleOutbox, sampleQueue, sampleRequest } from './storage-contract.js'
export type { StorageFixture } from './storage-contract.js'
export { createFaultyStorage } from './faulty-storage.js'
export type { FaultControls, FaultOptions, FaultStats, FaultyStorage } from './faulty-storage.js'
