/**
 * SQLite schema, as numbered append-only migrations. Never edit a released migration: add
 * the next number.
 *
 * @internal
 * @module
 */

/** One schema step. */
export interface Migration {
  version: number
  name: string
  sql: string
}

/** Every SQLite migration, in order. */
export const SQLITE_MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'initial schema',
    sql: `
      CREATE TABLE requests (
        id TEXT NOT NULL PRIMARY KEY,
        queue TEXT NOT NULL,
        n INTEGER NOT NULL,
        uri TEXT NOT NULL,
        state TEXT NOT NULL,
        version INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        data TEXT,
        UNIQUE (queue, n)
      );
      CREATE INDEX requests_by_state ON requests (queue, state, n);
      CREATE TABLE request_uris (
        queue TEXT NOT NULL,
        uri TEXT NOT NULL,
        request_id TEXT NOT NULL,
        PRIMARY KEY (queue, uri)
      ) WITHOUT ROWID;
      CREATE TABLE queues (
        name TEXT NOT NULL PRIMARY KEY,
        version INTEGER NOT NULL,
        config TEXT NOT NULL,
        last_green TEXT,
        snapshot TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
      );
      CREATE TABLE facts (
        queue TEXT NOT NULL,
        uri TEXT NOT NULL,
        project TEXT NOT NULL,
        degree REAL NOT NULL,
        request_id TEXT NOT NULL,
        at INTEGER NOT NULL,
        PRIMARY KEY (queue, uri, project)
      ) WITHOUT ROWID;
      CREATE TABLE counters (
        queue TEXT NOT NULL PRIMARY KEY,
        value INTEGER NOT NULL
      ) WITHOUT ROWID;
      CREATE TABLE events (
        node_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        first_id INTEGER NOT NULL,
        last_id INTEGER NOT NULL,
        at INTEGER NOT NULL,
        payload TEXT,
        PRIMARY KEY (node_id, seq)
      ) WITHOUT ROWID;
      CREATE INDEX events_by_last_id ON events (node_id, last_id);
    `,
  },
  {
    version: 2,
    name: 'dead letters',
    sql: `
      CREATE TABLE dead_letters (
        n INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        at INTEGER NOT NULL,
        op TEXT NOT NULL,
        error_code TEXT NOT NULL,
        error_message TEXT NOT NULL,
        attempts INTEGER NOT NULL
      );
    `,
  },
  {
    version: 3,
    name: 'hook outbox',
    sql: `
      CREATE TABLE outbox (
        n INTEGER PRIMARY KEY AUTOINCREMENT,
        queue TEXT NOT NULL,
        request_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        hook TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        attempts INTEGER NOT NULL,
        next_attempt_at INTEGER NOT NULL,
        delivered_at INTEGER,
        last_error TEXT,
        UNIQUE (queue, request_id, kind, hook)
      );
      CREATE INDEX outbox_due ON outbox (next_attempt_at, created_at, n) WHERE delivered_at IS NULL;
      CREATE INDEX outbox_by_queue ON outbox (queue, n);
    `,
  },
]
