/**
 * The statecharts: pure XState machines, side effects provided by the runtime.
 * @module
 */
export { QUEUES_PER_GROUP, queueGroupId, queueGroupMachine } from './queue-group.js'
export type { QueueGroupEvent } from './queue-group.js'
export { newQueueContext, nextDueAt, queueMachine, requestActorId } from './queue.js'
export type { InFlight, QueueActor, QueueConfig, QueueContext, QueueEvent, QueueInput, QueueLastGreen, QueueSnapshot } from './queue.js'
export { BUILD_SERVICE, STEP_SERVICE, newRequestContext, requestMachine, stateOfStep } from './request.js'
export type {
  BuildServiceEvent,
  BuildSummary,
  PersistInput,
  PersistOutput,
  PlanOutput,
  RecordOutput,
  RequestActor,
  RequestContext,
  RequestEvent,
  RequestInput,
  RequestReport,
  RequestSnapshot,
  RequestStep,
  StepInput,
  StepServiceEvent,
  StepWork,
  Verdict,
} from './request.js'
