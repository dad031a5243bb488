/**
 * Source control: the contract. Backends: `stovepipe/sourcecontrol/fake`, `…/git`.
 * @module
 */
export { isSourceControlProvider } from './types.js'
export type { SourceControl, SourceControlProvider, SourceControlTarget } from './types.js'
