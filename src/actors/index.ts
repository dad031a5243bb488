/**
 * The runtime's actors: the group-commit writer, the lag-aware event log, the timer
 * service the queues share, and the clock they all take.
 * @module
 */
export { backoffDelay, seededRandom, sleep, systemClock } from './clock.js'
export type { Clock } from './clock.js'
export { createEventLog, EventLogConflictError, eventLogActor, renderEntry } from './event-log.js'
export type {
  EventAck,
  EventLog,
  EventLogActorEvent,
  EventLogOptions,
  EventLogStats,
  EventLogStopReport,
  LagNotice,
  LogEntry,
  SubscribeOptions,
  Subscription,
  TransitionEvent,
} from './event-log.js'
export { TIMER_SERVICE, timerService } from './timer-service.js'
export type { TimerDueEvent, TimerServiceEvent } from './timer-service.js'
export { createWriter } from './writer.js'
export type { DrainReport, RetryOptions, Writer, WriterOptions, WriterResult, WriterStats } from './writer.js'
