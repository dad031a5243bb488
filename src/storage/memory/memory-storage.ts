/**
 * The in-memory backend: the reference model of the storage contract. Every write op's
 * meaning comes from the shared `applyOp`; a batch is applied to an overlay and merged only
 * when it is complete, so a batch is all-or-nothing like a database transaction.
 *
 * @module
 */
import { applyOp, outboxKeyText, type TableView } from '../apply.js'
import { createStorageFacade, type StorageBackend } from '../facade.js'
import { deadLetterOf, eventOf, outboxOf, queueOf, requestOf } from '../rows.js'
import type {
  DeadLetter,
  EventRow,
  Fact,
  OutboxEntry,
  OutboxKey,
  QueueRecord,
  RequestRecord,
  RequestUriMapping,
  Storage,
  WriteResult,
} from '../types.js'
import type {
  PreparedDeadLetter,
  PreparedEvent,
  PreparedListOptions,
  PreparedOp,
  PreparedOutbox,
  PreparedQueue,
  PreparedReadOptions,
  PreparedRequest,
} from '../validation.js'

/**
 * The data behind memory storages. Keep it to "reopen" the same data with a new
 * {@link createMemoryStorage} after closing one, as a process restart would.
 */
export interface MemoryDatabase {
  /** @internal */
  readonly tables: MemoryTables
}

interface MemoryTables {
  requests: Map<string, PreparedRequest>
  /** Per queue, request numbers in ascending order. */
  requestNumbers: Map<string, number[]>
  mappings: Map<string, string>
  queues: Map<string, PreparedQueue>
  facts: Map<string, Fact>
  counters: Map<string, number>
  /** Per node, rows in ascending seq order. */
  events: Map<string, PreparedEvent[]>
  /** Dead letters by id, and in storage order. */
  deadLetterIds: Set<string>
  deadLetters: PreparedDeadLetter[]
  /** Outbox entries in storage order (position = index + 1), their index by key, and the undelivered ones. */
  outbox: PreparedOutbox[]
  outboxIndex: Map<string, number>
  outboxPending: Set<number>
}

/** Options of {@link createMemoryStorage}. */
export interface MemoryStorageOptions {
  /** Data to use; a new empty database when omitted. */
  database?: MemoryDatabase
}

/** A new, empty {@link MemoryDatabase}. */
export function createMemoryDatabase(): MemoryDatabase {
  return {
    tables: {
      requests: new Map(),
      requestNumbers: new Map(),
      mappings: new Map(),
      queues: new Map(),
      facts: new Map(),
      counters: new Map(),
      events: new Map(),
      deadLetterIds: new Set(),
      deadLetters: [],
      outbox: [],
      outboxIndex: new Map(),
      outboxPending: new Set(),
    },
  }
}

const SEP = '\n' // never part of a queue name, URI or project (validated)
const mappingKey = (queue: string, uri: string): string => `${queue}${SEP}${uri}`
const factKey = (queue: string, uri: string, project: string): string => `${queue}${SEP}${uri}${SEP}${project}`

/** Index of the first element of a sorted array that is >= value. */
function lowerBound<T>(items: readonly T[], value: number, key: (item: T) => number): number {
  let lo = 0
  let hi = items.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if (key(items[mid] as T) < value) lo = mid + 1
    else hi = mid
  }
  return lo
}

function insertSorted<T>(items: T[], item: T, key: (item: T) => number): void {
  const value = key(item)
  const last = items[items.length - 1]
  if (last === undefined || key(last) < value) items.push(item)
  else items.splice(lowerBound(items, value, key), 0, item)
}

const identity = (n: number): number => n
const bySeq = (event: PreparedEvent): number => event.seq

/** A transaction: reads fall through to the tables, writes wait in the overlay until merged. */
class Overlay implements TableView {
  readonly requests = new Map<string, PreparedRequest>()
  readonly mappings = new Map<string, string>()
  readonly queues = new Map<string, PreparedQueue>()
  readonly facts = new Map<string, Fact>()
  readonly counters = new Map<string, number>()
  readonly events = new Map<string, PreparedEvent>()
  readonly deadLetters = new Map<string, PreparedDeadLetter>()
  readonly outbox = new Map<string, PreparedOutbox>()

  constructor(private readonly tables: MemoryTables) {}

  getRequest(id: string): PreparedRequest | undefined {
    return this.requests.get(id) ?? this.tables.requests.get(id)
  }
  putRequest(request: PreparedRequest): void {
    this.requests.set(request.record.id, request)
  }
  getMapping(queue: string, uri: string): string | undefined {
    const key = mappingKey(queue, uri)
    return this.mappings.get(key) ?? this.tables.mappings.get(key)
  }
  putMapping(mapping: RequestUriMapping): void {
    this.mappings.set(mappingKey(mapping.queue, mapping.uri), mapping.requestId)
  }
  getQueue(name: string): PreparedQueue | undefined {
    return this.queues.get(name) ?? this.tables.queues.get(name)
  }
  putQueue(queue: PreparedQueue): void {
    this.queues.set(queue.record.name, queue)
  }
  getFact(queue: string, uri: string, project: string): Fact | undefined {
    const key = factKey(queue, uri, project)
    return this.facts.get(key) ?? this.tables.facts.get(key)
  }
  putFact(fact: Fact): void {
    this.facts.set(factKey(fact.queue, fact.uri, fact.project), fact)
  }
  getCounter(queue: string): number {
    return this.counters.get(queue) ?? this.tables.counters.get(queue) ?? 0
  }
  putCounter(queue: string, value: number): void {
    this.counters.set(queue, value)
  }
  hasEvent(nodeId: string, seq: number): boolean {
    if (this.events.has(`${nodeId}${SEP}${seq}`)) return true
    const rows = this.tables.events.get(nodeId) ?? []
    return rows[lowerBound(rows, seq, bySeq)]?.seq === seq
  }
  putEvent(event: PreparedEvent): void {
    this.events.set(`${event.nodeId}${SEP}${event.seq}`, event)
  }

  hasDeadLetter(id: string): boolean {
    return this.deadLetters.has(id) || this.tables.deadLetterIds.has(id)
  }
  putDeadLetter(letter: PreparedDeadLetter): void {
    this.deadLetters.set(letter.letter.id, letter)
  }

  getOutbox(key: OutboxKey): PreparedOutbox | undefined {
    const text = outboxKeyText(key)
    const written = this.outbox.get(text)
    if (written !== undefined) return written
    const index = this.tables.outboxIndex.get(text)
    return index === undefined ? undefined : this.tables.outbox[index]
  }
  putOutbox(entry: PreparedOutbox): void {
    this.outbox.set(outboxKeyText(entry.entry), entry)
  }

  /** Makes the transaction's writes visible. */
  merge(): void {
    const t = this.tables
    for (const [id, request] of this.requests) {
      if (!t.requests.has(id)) {
        let numbers = t.requestNumbers.get(request.record.queue)
        if (numbers === undefined) t.requestNumbers.set(request.record.queue, (numbers = []))
        insertSorted(numbers, request.n, identity)
      }
      t.requests.set(id, request)
    }
    for (const [key, id] of this.mappings) t.mappings.set(key, id)
    for (const [name, queue] of this.queues) t.queues.set(name, queue)
    for (const [key, fact] of this.facts) t.facts.set(key, fact)
    for (const [queue, value] of this.counters) t.counters.set(queue, value)
    for (const event of this.events.values()) {
      let rows = t.events.get(event.nodeId)
      if (rows === undefined) t.events.set(event.nodeId, (rows = []))
      insertSorted(rows, event, bySeq)
    }
    for (const [id, letter] of this.deadLetters) {
      t.deadLetterIds.add(id)
      t.deadLetters.push(letter)
    }
    for (const [key, entry] of this.outbox) {
      let index = t.outboxIndex.get(key)
      if (index === undefined) {
        index = t.outbox.length
        t.outboxIndex.set(key, index)
      }
      t.outbox[index] = entry
      if (entry.entry.deliveredAt === null) t.outboxPending.add(index)
      else t.outboxPending.delete(index)
    }
  }
}

class MemoryBackend implements StorageBackend {
  readonly kind = 'memory'
  private readonly tables: MemoryTables

  constructor(database: MemoryDatabase) {
    this.tables = database.tables
  }

  commit(ops: PreparedOp[], atomic: boolean): Promise<WriteResult[]> {
    const overlay = new Overlay(this.tables)
    const results = ops.map((op) => applyOp(op, overlay))
    if (!atomic || results.every((result) => result.status === 'ok')) overlay.merge()
    return Promise.resolve(results)
  }

  getRequest(id: string): Promise<RequestRecord | undefined> {
    const request = this.tables.requests.get(id)
    return Promise.resolve(request === undefined ? undefined : requestOf(request))
  }

  listRequests(queue: string, options: PreparedListOptions): Promise<RequestRecord[]> {
    const numbers = this.tables.requestNumbers.get(queue) ?? []
    const states = options.states === undefined ? undefined : new Set<string>(options.states)
    const out: RequestRecord[] = []
    const step = options.order === 'asc' ? 1 : -1
    let i: number
    if (options.order === 'asc') i = options.after === undefined ? 0 : lowerBound(numbers, options.after + 1, identity)
    else i = (options.after === undefined ? numbers.length : lowerBound(numbers, options.after, identity)) - 1
    for (; i >= 0 && i < numbers.length && out.length <= options.limit; i += step) {
      const request = this.tables.requests.get(`request/${queue}/${numbers[i] ?? 0}`)
      if (request !== undefined && (states === undefined || states.has(request.record.state))) out.push(requestOf(request))
    }
    return Promise.resolve(out)
  }

  getRequestIdByUri(queue: string, uri: string): Promise<string | undefined> {
    return Promise.resolve(this.tables.mappings.get(mappingKey(queue, uri)))
  }

  getQueue(name: string): Promise<QueueRecord | undefined> {
    const queue = this.tables.queues.get(name)
    return Promise.resolve(queue === undefined ? undefined : queueOf(queue))
  }

  listQueues(): Promise<QueueRecord[]> {
    const names = [...this.tables.queues.keys()].sort(compareText)
    return Promise.resolve(names.map((name) => queueOf(this.tables.queues.get(name) as PreparedQueue)))
  }

  getFact(queue: string, uri: string, project: string): Promise<Fact | undefined> {
    const fact = this.tables.facts.get(factKey(queue, uri, project))
    return Promise.resolve(fact === undefined ? undefined : { ...fact })
  }

  listFacts(queue: string, uri: string): Promise<Fact[]> {
    const prefix = mappingKey(queue, uri) + SEP
    const facts = [...this.tables.facts.entries()]
      .filter(([key]) => key.startsWith(prefix))
      .map(([, fact]) => ({ ...fact }))
      .sort((a, b) => compareText(a.project, b.project))
    return Promise.resolve(facts)
  }

  readEvents(options: PreparedReadOptions): Promise<EventRow[]> {
    const nodes = options.nodeId === undefined ? [...this.tables.events.keys()].sort(compareText) : [options.nodeId]
    const out: EventRow[] = []
    for (const node of nodes) {
      const rows = this.tables.events.get(node) ?? []
      for (let i = lowerBound(rows, options.fromSeq, bySeq); i < rows.length && out.length < options.limit; i++) {
        const event = rows[i] as PreparedEvent
        if (event.lastId >= options.fromId) out.push(eventOf(event))
      }
    }
    return Promise.resolve(out)
  }

  eventNodes(): Promise<string[]> {
    const nodes = [...this.tables.events].filter(([, rows]) => rows.length > 0).map(([node]) => node)
    return Promise.resolve(nodes.sort(compareText))
  }

  lastEvent(nodeId: string): Promise<EventRow | undefined> {
    const rows = this.tables.events.get(nodeId) ?? []
    const last = rows[rows.length - 1]
    return Promise.resolve(last === undefined ? undefined : eventOf(last))
  }

  listDeadLetters(after: number, limit: number): Promise<{ position: number; letter: DeadLetter }[]> {
    // Positions are 1-based indexes into the append-only list.
    const slice = this.tables.deadLetters.slice(after, after + limit)
    return Promise.resolve(slice.map((letter, i) => ({ position: after + i + 1, letter: deadLetterOf(letter) })))
  }

  getOutbox(key: OutboxKey): Promise<OutboxEntry | undefined> {
    const index = this.tables.outboxIndex.get(outboxKeyText(key))
    const entry = index === undefined ? undefined : this.tables.outbox[index]
    return Promise.resolve(entry === undefined ? undefined : outboxOf(entry))
  }

  dueOutbox(before: number, limit: number): Promise<OutboxEntry[]> {
    const due: { index: number; entry: PreparedOutbox }[] = []
    for (const index of this.tables.outboxPending) {
      const entry = this.tables.outbox[index]
      if (entry !== undefined && entry.entry.nextAttemptAt <= before) due.push({ index, entry })
    }
    due.sort(
      (a, b) =>
        a.entry.entry.nextAttemptAt - b.entry.entry.nextAttemptAt || a.entry.entry.createdAt - b.entry.entry.createdAt || a.index - b.index,
    )
    return Promise.resolve(due.slice(0, limit).map(({ entry }) => outboxOf(entry)))
  }

  listOutbox(queue: string | undefined, after: number, limit: number): Promise<{ position: number; entry: OutboxEntry }[]> {
    const out: { position: number; entry: OutboxEntry }[] = []
    for (let i = after; i < this.tables.outbox.length && out.length < limit; i++) {
      const entry = this.tables.outbox[i]
      if (entry !== undefined && (queue === undefined || entry.entry.queue === queue)) out.push({ position: i + 1, entry: outboxOf(entry) })
    }
    return Promise.resolve(out)
  }

  migrate(): Promise<number[]> {
    return Promise.resolve([])
  }

  close(): Promise<void> {
    return Promise.resolve()
  }
}

/** Orders strings by their UTF-8 bytes, as the SQL backends' binary collations do. */
export function compareText(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'))
}

/**
 * Opens an in-memory storage: fast, exact, gone with the process. Pass the same
 * `database` to a new storage after `close()` to model a restart.
 */
export function createMemoryStorage(options: MemoryStorageOptions = {}): Storage {
  return createStorageFacade(new MemoryBackend(options.database ?? createMemoryDatabase()))
}
