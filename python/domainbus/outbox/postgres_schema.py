"""The outbox's tables and statements in PostgreSQL (psycopg's `%s` parameters).

- `domainbus_outbox`: one row per undelivered event. A unit of work's claim is written into
  its rows (`claim`, a random number per batch; `owner`, the outbox that claimed it;
  `claimed_at`), since it dispatches after its commit. Such a row is free again when its claim
  is older than the lease or when its owner's session is gone: each outbox holds a
  session-level advisory lock keyed by its owner number, so a killed process frees its rows at
  once. A relay's claim is the row locks of `FOR UPDATE SKIP LOCKED`, held by the transaction
  that dispatches and deletes the batch: nothing is written to claim.
- `domainbus_dead_letters`, `domainbus_processed`: as in SQLite (`domainbus.outbox.schema`).

Times are the server's, in seconds since the epoch.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["SYNCHRONOUS_COMMIT_LEVELS", "SynchronousCommit"]

SynchronousCommit = Literal["on", "off", "local", "remote_write", "remote_apply"]
SYNCHRONOUS_COMMIT_LEVELS: tuple[str, ...] = get_args(SynchronousCommit)

CHANNEL = "domainbus_outbox"  # NOTIFY channel: rows became free
SCHEMA_LOCK = 0x646F6D61696E  # pg_advisory_xact_lock key serialising CREATE TABLE
NOW = "extract(epoch from clock_timestamp())"

TABLES = (
    """CREATE TABLE IF NOT EXISTS domainbus_outbox (
        id bigserial PRIMARY KEY,
        payload bytea NOT NULL,
        claim bigint,
        owner bigint,
        claimed_at double precision,
        attempts integer NOT NULL DEFAULT 0,
        last_error text,
        traceparent text
    )""",
    # a database made before the traceparent column: add it (NULL in the existing rows)
    "ALTER TABLE domainbus_outbox ADD COLUMN IF NOT EXISTS traceparent text",
    """CREATE TABLE IF NOT EXISTS domainbus_dead_letters (
        id bigserial PRIMARY KEY,
        outbox_id bigint NOT NULL,
        payload bytea NOT NULL,
        attempts integer NOT NULL,
        error text NOT NULL,
        failed_at double precision NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS domainbus_processed (
        handler text NOT NULL,
        event_id uuid NOT NULL,
        processed_at double precision NOT NULL,
        PRIMARY KEY (handler, event_id)
    )""",
)
TABLE_NAMES = ("domainbus_outbox", "domainbus_dead_letters", "domainbus_processed")
TABLES_EXIST = (
    "SELECT count(to_regclass(name)) + (SELECT count(*) FROM information_schema.columns "
    "WHERE table_schema = current_schema() AND table_name = 'domainbus_outbox' "
    "AND column_name = 'traceparent') FROM unnest(%s::text[]) AS name"  # NULL when missing
)
SET_TRACEPARENT = "UPDATE domainbus_outbox SET traceparent = %s WHERE id = ANY(%s::bigint[])"

# Inserts: claimed by this outbox (a unit of work's rows: payload(s), claim, owner) or free.
_INSERT_ONE_CLAIMED = (
    "INSERT INTO domainbus_outbox (payload, claim, owner, claimed_at) "
    f"VALUES (%s, %s, %s, {NOW}) RETURNING id"
)
_INSERT_MANY_CLAIMED = (
    "INSERT INTO domainbus_outbox (payload, claim, owner, claimed_at) "
    f"SELECT payload, %s, %s, {NOW} FROM unnest(%s::bytea[]) AS payload RETURNING id"
)
_INSERT_ONE_FREE = "INSERT INTO domainbus_outbox (payload) VALUES (%s) RETURNING id"
_INSERT_MANY_FREE = "INSERT INTO domainbus_outbox (payload) SELECT unnest(%s::bytea[]) RETURNING id"
# The deferred delete of delivered batches, riding along with the next append (one round trip).
_DELETE_HELD = (
    "WITH delivered AS (DELETE FROM domainbus_outbox "
    "WHERE id = ANY(%s::bigint[]) AND claim = ANY(%s::bigint[])) "
)
# One held row (a unit of work of one event): plain parameters, several times cheaper for the
# server than an array of one.
_DELETE_HELD_ONE = "WITH delivered AS (DELETE FROM domainbus_outbox WHERE id = %s AND claim = %s) "


def _inserts(one: str, many: str) -> tuple[tuple[str, str], ...]:
    """(one payload, many) plain, deleting one held row, deleting held batches."""
    return (
        (one, many),
        (_DELETE_HELD_ONE + one, _DELETE_HELD_ONE + many),
        (_DELETE_HELD + one, _DELETE_HELD + many),
    )


INSERT_CLAIMED = _inserts(_INSERT_ONE_CLAIMED, _INSERT_MANY_CLAIMED)
INSERT_FREE = _inserts(_INSERT_ONE_FREE, _INSERT_MANY_FREE)
# Owners whose session still holds its advisory lock (a bigint key: classid high, objid low).
_LIVE_OWNERS = (
    "SELECT (classid::bigint << 32) | objid::bigint FROM pg_locks "
    "WHERE locktype = 'advisory' AND objsubid = 1 AND granted "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)
# A relay's claim: the oldest free rows past `after`, locked by the open transaction (skipping
# rows other relays hold), which stays open while they are dispatched and settled.
_CLAIM = (
    "SELECT id, payload, attempts, traceparent, claim FROM domainbus_outbox "
    "WHERE id > %(after)s AND ({free}) ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED"
)
CLAIM = _CLAIM.format(
    free=f"claim IS NULL OR claimed_at < {NOW} - %(lease)s OR owner NOT IN ({_LIVE_OWNERS})"
)
# take_over: every row not locked by another relay (as SQLite's take_over)
CLAIM_TAKING_OVER = _CLAIM.format(free="true")
# Rows a relay takes over from another claim (a unit of work's that ran out, or with take_over)
# lose that claim in a transaction of their own, committed before they are dispatched: the unit
# of work's deferred delete then no longer matches them, instead of waiting for the relay's lock.
CLEAR_CLAIMS = (
    "UPDATE domainbus_outbox SET claim = NULL, owner = NULL, claimed_at = NULL "
    "WHERE id = ANY(%s::bigint[])"
)
# Rows of a batch whose locks were lost (the transaction rolled back): locked again if no one
# else took them meanwhile.
RELOCK = (
    "SELECT id FROM domainbus_outbox WHERE id = ANY(%s::bigint[]) ORDER BY id "
    "FOR UPDATE SKIP LOCKED"
)
# A relay's batch is dispatched in a savepoint: what the handlers write through the relay's
# connection can be rolled back while the claim's row locks stay.
BATCH_SAVEPOINT = "SAVEPOINT domainbus_batch"
ROLLBACK_TO_BATCH = "ROLLBACK TO SAVEPOINT domainbus_batch"
# Whether anything was written since that savepoint: the claim's row locks gave the transaction
# its id; the savepoint gets one of its own (and holds a lock on it until it ends) only when
# something inside it writes, directly or in a nested savepoint.
WROTE = (
    "SELECT count(*) > 1 FROM pg_locks WHERE pid = pg_backend_pid() "
    "AND locktype = 'transactionid' AND mode = 'ExclusiveLock' AND granted"
)
DELETE = "DELETE FROM domainbus_outbox WHERE id = ANY(%s::bigint[])"
COUNT_FAILURE = (
    "UPDATE domainbus_outbox SET attempts = attempts + 1, last_error = %s "
    "WHERE id = %s RETURNING attempts"
)
DEAD_LETTER = (
    "INSERT INTO domainbus_dead_letters (outbox_id, payload, attempts, error, failed_at) "
    f"SELECT id, payload, attempts, %s, {NOW} FROM domainbus_outbox WHERE id = %s"
)
DELETE_OWN = "DELETE FROM domainbus_outbox WHERE id = ANY(%s::bigint[]) AND claim = %s"
# The sweeper's deletion of delivered batches (domainbus.outbox.sweeper), sent as one simple
# query on an idle session: an implicit transaction, which a lock held by a transaction still
# open elsewhere (one that deletes these rows too) cannot stall for long.
SWEEP = (
    "SET LOCAL lock_timeout = '200ms'; "
    "DELETE FROM domainbus_outbox WHERE id = ANY('{{{ids}}}'::bigint[]) "
    "AND claim = ANY('{{{claims}}}'::bigint[])"
)
DELETE_OWN_ONE = "DELETE FROM domainbus_outbox WHERE id = %s AND claim = %s"
RELEASE_OWN = (
    "UPDATE domainbus_outbox SET claim = NULL, owner = NULL, claimed_at = NULL "
    "WHERE id = ANY(%s::bigint[]) AND claim = %s"
)
COUNT_OWN_FAILURE = (
    "UPDATE domainbus_outbox SET attempts = attempts + 1, last_error = %s "
    "WHERE id = %s AND claim = %s RETURNING attempts"
)
DEAD_LETTER_OWN = (
    "INSERT INTO domainbus_dead_letters (outbox_id, payload, attempts, error, failed_at) "
    f"SELECT id, payload, attempts, %s, {NOW} FROM domainbus_outbox WHERE id = %s AND claim = %s"
)
NOTIFY = f"SELECT pg_notify('{CHANNEL}', '')"
LISTEN = f"LISTEN {CHANNEL}"
MARK_PROCESSED = f"INSERT INTO domainbus_processed VALUES (%s, %s, {NOW}) ON CONFLICT DO NOTHING"
PRUNE_PROCESSED = f"DELETE FROM domainbus_processed WHERE processed_at < {NOW} - %s"
COUNT_PENDING = "SELECT count(*) FROM domainbus_outbox"
COUNT_FREE = "SELECT count(*) FROM domainbus_outbox WHERE claim IS NULL"
LIST_DEAD_LETTERS = (
    "SELECT id, outbox_id, payload, attempts, error, failed_at FROM domainbus_dead_letters "
    "ORDER BY id"
)
REQUEUE = (
    "INSERT INTO domainbus_outbox (payload) "
    "SELECT payload FROM domainbus_dead_letters WHERE id = %s"
)
DELETE_DEAD_LETTER = "DELETE FROM domainbus_dead_letters WHERE id = %s"
ADVISORY_LOCK = "SELECT pg_advisory_lock(%s)"
SET_SYNCHRONOUS_COMMIT = "SELECT set_config('synchronous_commit', %s, false)"
SHOW_SYNCHRONOUS_COMMIT = "SHOW synchronous_commit"
