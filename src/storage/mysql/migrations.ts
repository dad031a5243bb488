/**
 * MySQL/MariaDB schema, as numbered append-only migrations. MySQL commits DDL implicitly,
 * so each step is a list of idempotent statements (`IF NOT EXISTS`), safe to re-run after a
 * crash between a step and its record. Never edit a released migration: add the next one.
 *
 * @internal
 * @module
 */

/** One schema step. */
export interface MysqlMigration {
  version: number
  name: string
  statements: readonly string[]
}

const ASCII = 'CHARACTER SET ascii COLLATE ascii_bin'
const TEXT = 'CHARACTER SET utf8mb4 COLLATE utf8mb4_bin'
const TABLE = `ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin`

/** Every MySQL migration, in order. */
export const MYSQL_MIGRATIONS: readonly MysqlMigration[] = [
  {
    version: 1,
    name: 'initial schema',
    statements: [
      `CREATE TABLE IF NOT EXISTS requests (
        id VARCHAR(160) ${ASCII} NOT NULL,
        queue VARCHAR(128) ${ASCII} NOT NULL,
        n BIGINT NOT NULL,
        uri VARBINARY(2048) NOT NULL,
        state VARCHAR(32) ${ASCII} NOT NULL,
        version BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        data LONGTEXT ${TEXT} NULL,
        PRIMARY KEY (id),
        UNIQUE KEY requests_by_number (queue, n),
        KEY requests_by_state (queue, state, n)
      ) ${TABLE}`,
      `CREATE TABLE IF NOT EXISTS request_uris (
        queue VARCHAR(128) ${ASCII} NOT NULL,
        uri VARBINARY(2048) NOT NULL,
        request_id VARCHAR(160) ${ASCII} NOT NULL,
        PRIMARY KEY (queue, uri)
      ) ${TABLE}`,
      `CREATE TABLE IF NOT EXISTS queues (
        name VARCHAR(128) ${ASCII} NOT NULL,
        version BIGINT NOT NULL,
        config LONGTEXT ${TEXT} NOT NULL,
        last_green TEXT ${TEXT} NULL,
        snapshot LONGTEXT ${TEXT} NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        PRIMARY KEY (name)
      ) ${TABLE}`,
      `CREATE TABLE IF NOT EXISTS facts (
        queue VARCHAR(128) ${ASCII} NOT NULL,
        uri VARBINARY(2048) NOT NULL,
        project VARBINARY(256) NOT NULL,
        degree DOUBLE NOT NULL,
        request_id VARCHAR(160) ${ASCII} NOT NULL,
        at BIGINT NOT NULL,
        PRIMARY KEY (queue, uri, project)
      ) ${TABLE}`,
      `CREATE TABLE IF NOT EXISTS counters (
        queue VARCHAR(128) ${ASCII} NOT NULL,
        value BIGINT NOT NULL,
        PRIMARY KEY (queue)
      ) ${TABLE}`,
      `CREATE TABLE IF NOT EXISTS events (
        node_id VARCHAR(128) ${ASCII} NOT NULL,
        seq BIGINT NOT NULL,
        kind VARCHAR(8) ${ASCII} NOT NULL,
        first_id BIGINT NOT NULL,
        last_id BIGINT NOT NULL,
        at BIGINT NOT NULL,
        payload LONGTEXT ${TEXT} NULL,
        PRIMARY KEY (node_id, seq),
        KEY events_by_last_id (node_id, last_id)
      ) ${TABLE}`,
    ],
  },
  {
    version: 2,
    name: 'dead letters',
    statements: [
      `CREATE TABLE IF NOT EXISTS dead_letters (
        n BIGINT NOT NULL AUTO_INCREMENT,
        id VARCHAR(200) ${ASCII} NOT NULL,
        at BIGINT NOT NULL,
        op LONGTEXT ${TEXT} NOT NULL,
        error_code VARCHAR(64) ${TEXT} NOT NULL,
        error_message TEXT ${TEXT} NOT NULL,
        attempts INT NOT NULL,
        PRIMARY KEY (n),
        UNIQUE KEY dead_letters_by_id (id)
      ) ${TABLE}`,
    ],
  },
  {
    version: 3,
    name: 'hook outbox',
    statements: [
      `CREATE TABLE IF NOT EXISTS outbox (
        n BIGINT NOT NULL AUTO_INCREMENT,
        queue VARCHAR(128) ${ASCII} NOT NULL,
        request_id VARCHAR(160) ${ASCII} NOT NULL,
        kind VARCHAR(16) ${ASCII} NOT NULL,
        hook VARCHAR(128) ${ASCII} NOT NULL,
        payload MEDIUMTEXT ${TEXT} NOT NULL,
        created_at BIGINT NOT NULL,
        attempts BIGINT NOT NULL,
        next_attempt_at BIGINT NOT NULL,
        delivered_at BIGINT NULL,
        last_error TEXT ${TEXT} NULL,
        PRIMARY KEY (n),
        UNIQUE KEY outbox_by_key (queue, request_id, kind, hook),
        KEY outbox_due (delivered_at, next_attempt_at, created_at, n),
        KEY outbox_by_queue (queue, n)
      ) ${TABLE}`,
    ],
  },
  {
    version: 4,
    name: 'dead letter attempts as BIGINT',
    // Attempts are counts like every other; INT refused more than 2^31 - 1. Re-running is harmless.
    statements: ['ALTER TABLE dead_letters MODIFY attempts BIGINT NOT NULL'],
  },
]
