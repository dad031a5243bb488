/**
 * Source control: the contract. Backends: `stovepipe/sourcecontrol/fake`, `…/git`.
 * @module
 */
// The git backend is the subpath export `stovepipe/sourcecontrol/git` (src/sourcecontrol/git.ts), not re-exported here.
export { isSourceControlProvider } from './types.js'
export type { SourceControl, SourceControlProvider, SourceControlTarget } from './types.js'
