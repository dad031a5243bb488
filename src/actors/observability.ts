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

/** What each {@link sampledGauge} runs when its registry is read. */
const samplers = new WeakMap<Gauge, Set<() => void>>()

/**
 * A gauge registered once per registry whose values are taken when the registry is read
 * (prom-client's `collect`), not pushed on every change: each instance adds a sampler that
 * sets its own labelled value, so a hot path never calls prom-client (which hashes the
 * labels on every `set`), and a scrape always sees the current value. `sample` returns the
 * function that removes the sampler (the last value set stays).
 */
export function sampledGauge(
  registry: Registry,
  name: string,
  help: string,
  labelNames: LabelNames,
): { gauge: Gauge; sample: (sampler: () => void) => () => void } {
  const made = reuse(
    registry,
    name,
    () =>
      new Gauge({
        name,
        help,
        labelNames,
        registers: [registry],
        collect() {
          for (const sampler of samplers.get(this) ?? []) sampler()
        },
      }),
  )
  return {
    gauge: made,
    sample: (sampler) => {
      let set = samplers.get(made)
      if (set === undefined) samplers.set(made, (set = new Set()))
      set.add(sampler)
      return () => {
        set.delete(sampler)
      }
    },
  }
}

/** A histogram registered once per registry. */
export function histogram(registry: Registry, name: string, help: string, labelNames: LabelNames, buckets: number[]): Histogram {
  return reuse(registry, name, () => new Histogram({ name, help, labelNames, buckets, registers: [registry] }))
}

/** Hides credentials in the URLs a text quotes (`https://user:token@host` → `https://***@host`), for messages and logs. */
export function redactUrlCredentials(text: string): string {
  return text.replace(/(\/\/)[^/@\s]*@/g, '$1***@')
}
