/**
 * Logging and metrics plumbing shared by the actors: a silent default logger (Stovepipe is
 * quiet unless given a pino logger) and prom-client metrics that several instances can
 * share in one registry, told apart by a label.
 *
 * @module
 */
import { pino, type Logger } from 'pino'
import { Counter, Gauge, Histogram, type Registry } from 'prom-client'

/** The logger used when none is given: pino at level `silent`. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' })
}

type LabelNames = readonly string[]

function reuse<T>(registry: Registry, name: string, make: () => T): T {
  return (registry.getSingleMetric(name) as T | undefined) ?? make()
}

/** A counter registered once per registry. */
export function counter(registry: Registry, name: string, help: string, labelNames: LabelNames): Counter {
  return reuse(registry, name, () => new Counter({ name, help, labelNames, registers: [registry] }))
}

/** A gauge registered once per registry. */
export function gauge(registry: Registry, name: string, help: string, labelNames: LabelNames): Gauge {
  return reuse(registry, name, () => new Gauge({ name, help, labelNames, registers: [registry] }))
}

/** A histogram registered once per registry. */
export function histogram(registry: Registry, name: string, help: string, labelNames: LabelNames, buckets: number[]): Histogram {
  return reuse(registry, name, () => new Histogram({ name, help, labelNames, buckets, registers: [registry] }))
}
