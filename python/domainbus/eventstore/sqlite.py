"""`SqliteEventStore`: the embedded event store, in the application's own SQLite file.

Global order: the `position` is the table's rowid. SQLite has one writer at a time and a
transaction's rows become visible at its commit, all at once, so positions commit in order:
reading `position > after` never skips an event (a rolled-back append leaves no gap that a
later commit fills below a position already read: rowids are max + 1).

Optimistic concurrency: `append` reads the stream's version under the write lock (BEGIN
IMMEDIATE, or the caller's transaction) and inserts only when it matches; the unique index on
(stream_id, version) backs this up. A stale writer gets `ConcurrencyError` before any row is
written. Inside a caller's transaction, begin it with BEGIN IMMEDIATE (the unit of work does):
in a deferred transaction that another connection wrote after, SQLite refuses the insert
("database is locked") rather than let a stale check through.

Durability: WAL, with `synchronous` set explicitly: "NORMAL" (default; a process crash loses
nothing committed, a power loss or OS crash can lose the last transactions) or "FULL".
"""

from __future__ import annotations

import itertools
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

from domainbus.codec import EventCodec
from domainbus.errors import ConcurrencyError
from domainbus.events import DomainEvent
from domainbus.eventstore.store import (
    DEFAULT_PAGE_SIZE,
    Page,
    Snapshot,
    StoredEvent,
    check_append,
    check_page,
    check_range,
    decode_rows,
    page_to_stored,
)

__all__ = ["SqliteEventStore", "SqliteTracking"]

Synchronous = Literal["NORMAL", "FULL", "EXTRA"]
_LEVELS = ("NORMAL", "FULL", "EXTRA")
_LEVEL_NAMES = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS domainbus_events (
        position INTEGER PRIMARY KEY,
        stream_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        payload BLOB NOT NULL,
        UNIQUE (stream_id, version)
    )""",
    """CREATE TABLE IF NOT EXISTS domainbus_snapshots (
        stream_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        topic TEXT NOT NULL,
        class_version INTEGER NOT NULL,
        state BLOB NOT NULL,
        PRIMARY KEY (stream_id, version)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS domainbus_tracking (
        name TEXT PRIMARY KEY,
        position INTEGER NOT NULL
    ) WITHOUT ROWID""",
)
STREAM_VERSION = "SELECT max(version) FROM domainbus_events WHERE stream_id = ?"
INSERT = "INSERT INTO domainbus_events (stream_id, version, payload) VALUES (?, ?, ?)"
SELECT_ALL = (
    "SELECT position, stream_id, version, payload FROM domainbus_events "
    "WHERE position > ? ORDER BY position LIMIT ?"
)
SELECT_STREAM = (
    "SELECT payload FROM domainbus_events WHERE stream_id = ? AND version >= ? AND version <= ? "
    "ORDER BY version LIMIT ?"
)
SELECT_STREAM_ROWS = (
    "SELECT position, payload FROM domainbus_events "
    "WHERE stream_id = ? AND version >= ? AND version <= ? ORDER BY version"
)
COUNT_AFTER = "SELECT count(*) FROM domainbus_events WHERE position > ?"
SAVE_SNAPSHOT = "INSERT OR REPLACE INTO domainbus_snapshots VALUES (?, ?, ?, ?, ?)"
LOAD_SNAPSHOT = (
    "SELECT version, topic, class_version, state FROM domainbus_snapshots "
    "WHERE stream_id = ? AND version <= ? ORDER BY version DESC LIMIT 1"
)
_NO_LIMIT = 2**62


def configure(connection: sqlite3.Connection, synchronous: str, busy_timeout: float) -> None:
    """WAL journal, the busy timeout, and `synchronous`, set explicitly (see the module)."""
    level = synchronous.upper() if isinstance(synchronous, str) else synchronous
    if level not in _LEVELS:
        raise ValueError(f"synchronous must be one of {_LEVELS}, not {synchronous!r}")
    if not isinstance(busy_timeout, int | float) or busy_timeout < 0:
        raise ValueError(f"busy_timeout must be a number of seconds >= 0, not {busy_timeout!r}")
    if connection.in_transaction:
        raise ValueError("the connection has an open transaction: commit it first")
    connection.execute(f"PRAGMA busy_timeout = {round(busy_timeout * 1000)}")
    mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() not in ("wal", "memory"):
        raise ValueError(f"could not switch the database to WAL: journal_mode is {mode!r}")
    connection.execute(f"PRAGMA synchronous = {level}")


def create_tables(connection: sqlite3.Connection) -> None:
    connection.execute("BEGIN IMMEDIATE")
    try:
        for statement in SCHEMA:
            connection.execute(statement)
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


class SqliteEventStore:
    """Event streams in one SQLite database (see the module for the guarantees).

    `target`: a path (the store opens and owns a connection in autocommit mode) or the user's
    `sqlite3.Connection` (shared with the unit of work and the outbox: an append made while
    that connection has a transaction open joins it). `codec`: the `EventCodec` of the events.
    A store is used by one thread at a time (its own connection may move between threads).
    """

    def __init__(
        self,
        target: str | os.PathLike[str] | sqlite3.Connection,
        codec: EventCodec,
        *,
        synchronous: Synchronous = "NORMAL",
        busy_timeout: float = 5.0,
    ) -> None:
        if not isinstance(codec, EventCodec):
            raise TypeError(f"codec must be an EventCodec, not {type(codec).__qualname__}")
        if isinstance(target, sqlite3.Connection):
            if getattr(target, "autocommit", None) is False:
                raise ValueError("connections opened with autocommit=False are not supported")
            connection, self._owns = target, False
        elif isinstance(target, str | os.PathLike):
            connection = sqlite3.connect(
                target, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            self._owns = True
        else:
            raise TypeError(
                f"target must be a path or a sqlite3.Connection, not {type(target).__qualname__}"
            )
        try:
            configure(connection, synchronous, busy_timeout)
            create_tables(connection)
        except BaseException:
            if self._owns:
                connection.close()
            raise
        self.connection = connection
        self.codec = codec
        self._cursor = connection.cursor()
        self._encode = codec.encode

    def __repr__(self) -> str:
        return f"<SqliteEventStore {self.codec!r} synchronous={self.synchronous}>"

    @property
    def synchronous(self) -> str:
        """The connection's `synchronous` level, read from SQLite."""
        value = self.connection.execute("PRAGMA synchronous").fetchone()[0]
        return _LEVEL_NAMES.get(value, str(value))

    # -- writing ---------------------------------------------------------------------------

    def append(
        self, stream_id: str, events: Sequence[DomainEvent], *, expected_version: int
    ) -> int:
        """Append atomically if the stream is at `expected_version`; returns the new version.

        Joins the connection's open transaction (nothing is committed then), else runs in
        its own (BEGIN IMMEDIATE ... COMMIT).
        """
        batch = check_append(stream_id, events, expected_version)
        encode = self._encode
        payloads = [encode(event) for event in batch]  # TypeError before anything is written
        cursor = self._cursor
        own = not self.connection.in_transaction
        if own:
            cursor.execute("BEGIN IMMEDIATE")
        try:
            actual = cursor.execute(STREAM_VERSION, (stream_id,)).fetchone()[0] or 0
            if actual != expected_version:
                raise ConcurrencyError(stream_id, expected_version, actual)
            if len(payloads) == 1:
                cursor.execute(INSERT, (stream_id, expected_version + 1, payloads[0]))
            else:
                versions = range(expected_version + 1, expected_version + len(payloads) + 1)
                cursor.executemany(INSERT, zip(itertools.repeat(stream_id), versions, payloads))
            if own:
                cursor.execute("COMMIT")
        except BaseException:
            if own and self.connection.in_transaction:
                cursor.execute("ROLLBACK")
            raise
        return expected_version + len(payloads)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on an exception); joins an open transaction."""
        if self.connection.in_transaction:
            yield
            return
        cursor = self._cursor
        cursor.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self.connection.in_transaction:
                cursor.execute("ROLLBACK")
            raise
        cursor.execute("COMMIT")

    # -- reading ---------------------------------------------------------------------------

    def version(self, stream_id: str) -> int:
        return int(self._cursor.execute(STREAM_VERSION, (stream_id,)).fetchone()[0] or 0)

    def read(
        self, stream_id: str, from_version: int = 1, to_version: int | None = None
    ) -> list[StoredEvent]:
        check_range(from_version, to_version)
        last = _NO_LIMIT if to_version is None else to_version
        rows = self.connection.execute(SELECT_STREAM_ROWS, (stream_id, from_version, last))
        positions, payloads = _columns(rows.fetchall(), 2)
        events = decode_rows(self.codec, payloads, stream_id, from_version, positions)
        versions = range(from_version, from_version + len(events))
        return [
            StoredEvent(position, stream_id, version, event)
            for position, version, event in zip(positions, versions, events, strict=True)
        ]

    def read_stream_pages(
        self,
        stream_id: str,
        from_version: int = 1,
        to_version: int | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> Iterator[list[DomainEvent]]:
        check_range(from_version, to_version)
        last = _NO_LIMIT if to_version is None else to_version
        cursor, codec, version = self.connection.cursor(), self.codec, from_version
        while version <= last:
            rows = cursor.execute(SELECT_STREAM, (stream_id, version, last, page_size)).fetchall()
            if not rows:
                return
            events = decode_rows(codec, [row[0] for row in rows], stream_id, version)
            yield events
            if len(rows) < page_size:
                return
            version += len(rows)

    def read_pages(
        self, after: int = 0, page_size: int = DEFAULT_PAGE_SIZE, limit: int | None = None
    ) -> Iterator[Page]:
        check_page(after, page_size, limit)
        cursor, codec = self.connection.cursor(), self.codec
        left = _NO_LIMIT if limit is None else limit
        while left > 0:
            size = min(page_size, left)
            rows = cursor.execute(SELECT_ALL, (after, size)).fetchall()
            if not rows:
                return
            positions, stream_ids, versions, payloads = _columns(rows, 4)
            events = decode_rows(codec, payloads, stream_ids, versions, positions)
            yield Page(positions, stream_ids, versions, events)  # type: ignore[arg-type]
            if len(rows) < size:
                return
            after, left = positions[-1], left - len(rows)

    def read_all(self, after: int = 0, limit: int | None = None) -> Iterator[StoredEvent]:
        for page in self.read_pages(after, DEFAULT_PAGE_SIZE, limit):
            yield from page_to_stored(page)

    def count_after(self, after: int = 0) -> int:
        return int(self._cursor.execute(COUNT_AFTER, (after,)).fetchone()[0])

    # -- snapshots -------------------------------------------------------------------------

    def save_snapshot(self, snapshot: Snapshot) -> None:
        row = (snapshot.stream_id, snapshot.version, snapshot.topic, snapshot.class_version,
               snapshot.state)  # fmt: skip
        if self.connection.in_transaction:
            self._cursor.execute(SAVE_SNAPSHOT, row)
        else:
            with self.transaction():
                self._cursor.execute(SAVE_SNAPSHOT, row)

    def load_snapshot(self, stream_id: str, max_version: int | None = None) -> Snapshot | None:
        bound = _NO_LIMIT if max_version is None else max_version
        row = self._cursor.execute(LOAD_SNAPSHOT, (stream_id, bound)).fetchone()
        return None if row is None else Snapshot(stream_id, row[0], row[1], row[2], row[3])

    def close(self) -> None:
        """Close the connection if the store opened it."""
        if self._owns:
            self.connection.close()

    def __enter__(self) -> SqliteEventStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[Sequence[Any]]:
    """The columns of `rows` (tuples), or `width` empty ones."""
    return list(zip(*rows, strict=True)) if rows else [()] * width


class SqliteTracking:
    """A projection's tracking records (its last position) in a SQLite database, and the
    transactions the projection's writes and its tracking record commit in together."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        if connection.in_transaction:
            raise ValueError("the connection has an open transaction: commit it first")
        self.connection = connection
        self._cursor = connection.cursor()
        self._cursor.execute(SCHEMA[2])

    def position(self, name: str) -> int:
        sql = "SELECT position FROM domainbus_tracking WHERE name = ?"
        row = self._cursor.execute(sql, (name,)).fetchone()
        return 0 if row is None else int(row[0])

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on an exception."""
        cursor = self._cursor
        cursor.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self.connection.in_transaction:
                cursor.execute("ROLLBACK")
            raise
        cursor.execute("COMMIT")

    def set_position(self, name: str, position: int) -> None:
        """Record the position, in the open transaction."""
        self._cursor.execute(
            "INSERT INTO domainbus_tracking VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET position = excluded.position",
            (name, position),
        )
