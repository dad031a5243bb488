/**
 * Builders: the contract. Backends: `stovepipe/build/fake`, `…/shell`.
 * @module
 */
export type { BuildRequest, BuildResult, BuildRunner, Strategy } from './types.js'
