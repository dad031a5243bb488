/**
 * The runtime: `createStovepipe` and the handles it gives out.
 * @module
 */
export { DEFAULT_QUEUE_CONFIG, normalizeQueueConfig } from './config.js'
export type { QueueConfigInput } from './config.js'
export type { CancelResult, IngestResult, LastGreenView, QueueHandle } from './queue-host.js'
export { createStovepipe, stepLabel } from './stovepipe.js'
export type { StopReport, Stovepipe, StovepipeOptions } from './stovepipe.js'
export { describeRequest } from './views.js'
export type { RequestView } from './views.js'
