"""The outbox's tables and statements in SQLite, and the connection settings it needs.

- `domainbus_outbox`: one row per undelivered event (msgpack payload); a row is deleted once
  its event is delivered, so the table holds only the backlog. A unit of work writes its rows
  already claimed (`claim`, a random number per batch, and `claimed_at`), so they cost no
  write anywhere else.
- `domainbus_outbox_claims`: one row per batch a relay is delivering, covering the id range
  [first_id, last_id] of its rows. A claim is a single row however large the batch, which
  keeps claiming as cheap as reading. A row is free when no live relay claim covers it and its
  own claim is empty or older than the lease.
- `domainbus_dead_letters`: rows that could not be decoded or whose handlers kept failing.
- `domainbus_processed`: (handler key, event id) pairs that `idempotent` handlers have run.
"""

from __future__ import annotations

import sqlite3
from typing import Literal, get_args

from domainbus.outbox.store import OutboxError

__all__ = ["SYNCHRONOUS_LEVELS", "Synchronous", "configure", "create_tables"]

Synchronous = Literal["NORMAL", "FULL", "EXTRA"]
SYNCHRONOUS_LEVELS: tuple[str, ...] = get_args(Synchronous)
_SYNCHRONOUS_NAMES = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}

TABLES = (
    """CREATE TABLE IF NOT EXISTS domainbus_outbox (
        id INTEGER PRIMARY KEY,
        payload BLOB NOT NULL,
        claim INTEGER,
        claimed_at REAL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        traceparent TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS domainbus_outbox_claims (
        claim INTEGER PRIMARY KEY,
        owner INTEGER NOT NULL,
        first_id INTEGER NOT NULL,
        last_id INTEGER NOT NULL,
        claimed_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS domainbus_dead_letters (
        id INTEGER PRIMARY KEY,
        outbox_id INTEGER NOT NULL,
        payload BLOB NOT NULL,
        attempts INTEGER NOT NULL,
        error TEXT NOT NULL,
        failed_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS domainbus_processed (
        handler TEXT NOT NULL,
        event_id BLOB NOT NULL,
        processed_at REAL NOT NULL,
        PRIMARY KEY (handler, event_id)
    ) WITHOUT ROWID""",
)
TABLE_NAMES = (
    "domainbus_outbox",
    "domainbus_outbox_claims",
    "domainbus_dead_letters",
    "domainbus_processed",
)

INSERT_ONE = "INSERT INTO domainbus_outbox (payload, claim, claimed_at) VALUES (?, ?, ?)"
INSERT_CLAIM = "INSERT INTO domainbus_outbox_claims VALUES (?, ?, ?, ?, ?)"
DELETE_CLAIM = "DELETE FROM domainbus_outbox_claims WHERE claim = ?"
DELETE_STALE_CLAIMS = "DELETE FROM domainbus_outbox_claims WHERE claimed_at < ?"
DELETE_FOREIGN_CLAIMS = "DELETE FROM domainbus_outbox_claims WHERE owner != ?"
LIVE_CLAIMS = "SELECT first_id, last_id FROM domainbus_outbox_claims ORDER BY first_id"
_SELECT = "SELECT id, payload, attempts, claim, traceparent FROM domainbus_outbox"
SET_TRACEPARENT = "UPDATE domainbus_outbox SET traceparent = ? WHERE id = ?"
HAS_TRACEPARENT = (
    "SELECT count(*) FROM pragma_table_info('domainbus_outbox') WHERE name = 'traceparent'"
)
ADD_TRACEPARENT = "ALTER TABLE domainbus_outbox ADD COLUMN traceparent TEXT"
_FREE = "(claim IS NULL OR claimed_at < ?)"
SELECT_AFTER = f"{_SELECT} WHERE id > ? AND {_FREE} ORDER BY id LIMIT ?"
SELECT_BETWEEN = f"{_SELECT} WHERE id > ? AND id < ? AND {_FREE} ORDER BY id LIMIT ?"
DELETE_RANGE = "DELETE FROM domainbus_outbox WHERE id BETWEEN ? AND ?"
DELETE_OWN_RANGE = "DELETE FROM domainbus_outbox WHERE id BETWEEN ? AND ? AND claim = ?"
DELETE_OWN = "DELETE FROM domainbus_outbox WHERE id = ? AND claim = ?"
CLEAR_ROW_CLAIM = "UPDATE domainbus_outbox SET claim = NULL, claimed_at = NULL WHERE id = ?"
RELEASE_OWN_RANGE = (
    "UPDATE domainbus_outbox SET claim = NULL, claimed_at = NULL "
    "WHERE id BETWEEN ? AND ? AND claim = ?"
)
COUNT_FAILURE = (
    "UPDATE domainbus_outbox SET attempts = attempts + 1, last_error = ? WHERE id = ? "
    "RETURNING attempts"
)
COUNT_OWN_FAILURE = (
    "UPDATE domainbus_outbox SET attempts = attempts + 1, last_error = ? "
    "WHERE id = ? AND claim = ? RETURNING attempts"
)
DEAD_LETTER = (
    "INSERT INTO domainbus_dead_letters (outbox_id, payload, attempts, error, failed_at) "
    "SELECT id, payload, attempts, ?, ? FROM domainbus_outbox WHERE id = ?"
)
MARK_PROCESSED = "INSERT OR IGNORE INTO domainbus_processed VALUES (?, ?, ?)"
PRUNE_PROCESSED = "DELETE FROM domainbus_processed WHERE processed_at < ?"
COUNT_PENDING = "SELECT count(*) FROM domainbus_outbox"
LIST_DEAD_LETTERS = (
    "SELECT id, outbox_id, payload, attempts, error, failed_at FROM domainbus_dead_letters "
    "ORDER BY id"
)
REQUEUE = (
    "INSERT INTO domainbus_outbox (payload) SELECT payload FROM domainbus_dead_letters WHERE id = ?"
)
DELETE_DEAD_LETTER = "DELETE FROM domainbus_dead_letters WHERE id = ?"


def insert_many(count: int) -> str:
    """An INSERT of `count` (payload, claim, claimed_at) rows that returns the new ids."""
    values = ", ".join(["(?, ?, ?)"] * count)
    return f"INSERT INTO domainbus_outbox (payload, claim, claimed_at) VALUES {values} RETURNING id"


def delete_ids(count: int) -> str:
    """A DELETE of `count` rows by id."""
    return f"DELETE FROM domainbus_outbox WHERE id IN ({', '.join('?' * count)})"


def configure(connection: sqlite3.Connection, synchronous: str, busy_timeout: float) -> None:
    """WAL journal, the busy timeout, and the `synchronous` level, set explicitly.

    In WAL mode, NORMAL syncs at checkpoints only: a process crash loses nothing committed,
    a power loss or OS crash can lose the last transactions. FULL syncs every commit.
    """
    if sqlite3.sqlite_version_info < (3, 35, 0):
        raise OutboxError(f"the outbox needs SQLite 3.35 or newer, not {sqlite3.sqlite_version}")
    level = synchronous.upper() if isinstance(synchronous, str) else synchronous
    if level not in SYNCHRONOUS_LEVELS:
        raise ValueError(f"synchronous must be one of {SYNCHRONOUS_LEVELS}, not {synchronous!r}")
    if not isinstance(busy_timeout, int | float) or busy_timeout < 0:
        raise ValueError(f"busy_timeout must be a number of seconds >= 0, not {busy_timeout!r}")
    if connection.in_transaction:
        raise OutboxError(
            "the connection has an open transaction: commit it before opening the outbox"
        )
    connection.execute(f"PRAGMA busy_timeout = {round(busy_timeout * 1000)}")
    mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() not in ("wal", "memory"):
        raise OutboxError(f"could not switch the database to WAL: journal_mode is {mode!r}")
    connection.execute(f"PRAGMA synchronous = {level}")


def synchronous_level(connection: sqlite3.Connection) -> str:
    """The connection's `synchronous` level, by name."""
    value = connection.execute("PRAGMA synchronous").fetchone()[0]
    return _SYNCHRONOUS_NAMES.get(value, str(value))


def create_tables(connection: sqlite3.Connection) -> None:
    """Create the outbox's tables unless they all exist (then no write lock is taken)."""
    marks = ", ".join("?" * len(TABLE_NAMES))
    found = connection.execute(
        f"SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ({marks})",
        TABLE_NAMES,
    ).fetchone()[0]
    if found == len(TABLE_NAMES) and connection.execute(HAS_TRACEPARENT).fetchone()[0]:
        return
    connection.execute("BEGIN IMMEDIATE")
    try:
        for statement in TABLES:
            connection.execute(statement)
        # a database made before the traceparent column: add it (NULL in the existing rows)
        if not connection.execute(HAS_TRACEPARENT).fetchone()[0]:
            connection.execute(ADD_TRACEPARENT)
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def database_file(connection: sqlite3.Connection) -> str | None:
    """The path of the connection's main database file; None for an in-memory or temporary one."""
    for _seq, name, path in connection.execute("PRAGMA database_list").fetchall():
        if name == "main":
            return str(path) if path else None
    return None
