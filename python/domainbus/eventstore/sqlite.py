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

Reading a page at once: a page of rows comes back as ONE row, the payloads joined by
`group_concat(payload, x'')` (byte for byte: in a UTF-8 database a BLOB passes through
group_concat unchanged, NUL bytes included) and the positions (and, when asked for, stream ids
and versions) as JSON arrays, so the rows cost one step and one decode call instead of one each
(about twice as fast). SQLite before 3.44 does not promise the order in which an aggregate
sees its rows, so the positions come back in the same aggregate and are checked: a page is
used only if they are the page's rows in increasing order. Any doubt falls back to reading
the page row by row: a database in UTF-16 (group_concat would re-encode the bytes), a SQLite
without JSON functions, a page longer than SQLite's length limit, positions out of order, or a
page that does not decode (the row-by-row decode then names the bad row's stream and version).

Durability: WAL, with `synchronous` set explicitly: "NORMAL" (default; a process crash loses
nothing committed, a power loss or OS crash can lose the last transactions) or "FULL".
"""

from __future__ import annotations

import itertools
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any, Literal

import msgspec

from domainbus._trace import current_traceparent
from domainbus.codec import EventCodec
from domainbus.errors import ConcurrencyError
from domainbus.events import DomainEvent
from domainbus.eventstore.store import (
    DEFAULT_PAGE_SIZE,
    Meta,
    Page,
    Snapshot,
    StoredEvent,
    check_append,
    check_page,
    check_range,
    decode_joined,
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
        traceparent TEXT,
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
INSERT_TRACED = (
    "INSERT INTO domainbus_events (stream_id, version, payload, traceparent) VALUES (?, ?, ?, ?)"
)
HAS_TRACEPARENT = (
    "SELECT count(*) FROM pragma_table_info('domainbus_events') WHERE name = 'traceparent'"
)
ADD_TRACEPARENT = "ALTER TABLE domainbus_events ADD COLUMN traceparent TEXT"
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
SELECT_ALL_META = (
    "SELECT position, stream_id, version, traceparent FROM domainbus_events "
    "WHERE position > ? ORDER BY position LIMIT ?"
)
# A page at once (see the module): the rows from the first position after ?1 to that plus
# ?2 - 1 (positions are rowids, so at most ?2 rows, and the next ones), aggregated straight from
# the table (a LIMIT subquery would copy every row once more), and the last position of all (a
# short page is the end only when it holds that one; else it stopped at a gap).
_RANGE = (
    "FROM domainbus_events WHERE position > ?1 AND position < "
    "(SELECT min(position) FROM domainbus_events WHERE position > ?1) + ?2"
)
_JOINED = (
    "count(*), CAST(group_concat(payload, x'') AS BLOB), json_group_array(position), "
    "(SELECT max(position) FROM domainbus_events)"
)
_META = "json_group_array(stream_id), json_group_array(version)"
PAGE_EVENTS = f"SELECT {_JOINED} {_RANGE}"
PAGE_STORED = f"SELECT {_JOINED}, {_META} {_RANGE}"
PAGE_META = (
    f"SELECT count(*), json_group_array(position), {_META}, json_group_array(traceparent) "
    "FROM (SELECT position, stream_id, version, traceparent FROM domainbus_events "
    "WHERE position > ? ORDER BY position LIMIT ?)"
)
STREAM_PAGE = (  # versions ?2 to ?3 (a page's worth: a stream's versions have no gaps)
    "SELECT count(*), CAST(group_concat(payload, x'') AS BLOB), json_group_array(version) "
    "FROM domainbus_events WHERE stream_id = ?1 AND version >= ?2 AND version <= ?3"
)
COUNT_AFTER = "SELECT count(*) FROM domainbus_events WHERE position > ?"
SAVE_SNAPSHOT = "INSERT OR REPLACE INTO domainbus_snapshots VALUES (?, ?, ?, ?, ?)"
LOAD_SNAPSHOT = (
    "SELECT version, topic, class_version, state FROM domainbus_snapshots "
    "WHERE stream_id = ? AND version <= ? ORDER BY version DESC LIMIT 1"
)
_NO_LIMIT = 2**62
_NONE: tuple[None, bool] = (None, False)


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


_INTS = msgspec.json.Decoder(list[int])
_STRS = msgspec.json.Decoder(list[str])
_OPTIONAL_STRS = msgspec.json.Decoder(list[str | None])


def joins_pages(connection: sqlite3.Connection) -> bool:
    """Whether pages can be read at once here: a UTF-8 database and SQLite's JSON functions."""
    if str(connection.execute("PRAGMA encoding").fetchone()[0]).upper() != "UTF-8":
        return False
    try:
        connection.execute("SELECT json_group_array(1)").fetchone()
    except sqlite3.OperationalError:
        return False
    return True


def ascending(values: list[int], count: int, first: int | None = None) -> bool:
    """Whether `values` (distinct: positions, or versions of one stream) are `count` ints in
    increasing order, starting at `first` when given: the order the page's rows were asked in."""
    if len(values) != count or not count or (first is not None and values[0] != first):
        return False
    return values == sorted(values)


def create_tables(connection: sqlite3.Connection) -> None:
    connection.execute("BEGIN IMMEDIATE")
    try:
        for statement in SCHEMA:
            connection.execute(statement)
        # a database made before the traceparent column: add it (NULL in the existing rows)
        if not connection.execute(HAS_TRACEPARENT).fetchone()[0]:
            connection.execute(ADD_TRACEPARENT)
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
        self._joins = joins_pages(connection)

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
        traceparent = current_traceparent()  # None unless tracing is on (domainbus.observe)
        cursor = self._cursor
        own = not self.connection.in_transaction
        if own:
            cursor.execute("BEGIN IMMEDIATE")
        try:
            actual = cursor.execute(STREAM_VERSION, (stream_id,)).fetchone()[0] or 0
            if actual != expected_version:
                raise ConcurrencyError(stream_id, expected_version, actual)
            if traceparent is not None:
                versions = range(expected_version + 1, expected_version + len(payloads) + 1)
                rows = zip(itertools.repeat(stream_id), versions, payloads,
                           itertools.repeat(traceparent))  # fmt: skip
                cursor.executemany(INSERT_TRACED, rows)
            elif len(payloads) == 1:
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
        cursor, version = self.connection.cursor(), from_version
        while version <= last:
            events = self._stream_page(cursor, stream_id, version, last, page_size)
            if not events:
                return
            yield events
            if len(events) < page_size:
                return
            version += len(events)

    def _stream_page(
        self, cursor: sqlite3.Cursor, stream_id: str, version: int, last: int, size: int
    ) -> list[DomainEvent]:
        """Up to `size` events of the stream from `version`: at once, else row by row."""
        params = (stream_id, version, last, size)
        if self._joins:
            bounds = (stream_id, version, min(last, version + size - 1))
            try:
                count, joined, versions = cursor.execute(STREAM_PAGE, bounds).fetchone()
            except sqlite3.DataError:  # longer than SQLite's length limit
                count = -1
            if count == 0:
                return []
            if count > 0 and ascending(_INTS.decode(versions), count, version):
                events = decode_joined(self.codec, count, joined)
                if events is not None:
                    return events
        rows = cursor.execute(SELECT_STREAM, params).fetchall()
        return decode_rows(self.codec, [row[0] for row in rows], stream_id, version)

    def read_pages(
        self, after: int = 0, page_size: int = DEFAULT_PAGE_SIZE, limit: int | None = None
    ) -> Iterator[Page]:
        """Pages whose stream ids and versions are read only when first asked for."""
        return self._pages(after, page_size, limit, stored=False)

    def read_all(self, after: int = 0, limit: int | None = None) -> Iterator[StoredEvent]:
        for page in self._pages(after, DEFAULT_PAGE_SIZE, limit, stored=True):
            yield from page_to_stored(page)

    def _pages(self, after: int, page_size: int, limit: int | None, stored: bool) -> Iterator[Page]:
        check_page(after, page_size, limit)
        cursor = self.connection.cursor()
        left = _NO_LIMIT if limit is None else limit
        while left > 0:
            size = min(page_size, left)
            page, more = self._joined_page(cursor, after, size, stored) if self._joins else _NONE
            if page is None:
                page = self._row_page(cursor, after, size)
                more = len(page.events) == size
            if not page.events:
                return
            yield page
            if not more:
                return
            after, left = page.last_position, left - len(page.events)

    def _joined_page(
        self, cursor: sqlite3.Cursor, after: int, size: int, stored: bool
    ) -> tuple[Page | None, bool]:
        """The page after `after` read at once (see the module), and whether more follow; or
        (None, _): read it by rows. `stored`: with its stream ids and versions, else those
        are read if asked for."""
        try:
            row = cursor.execute(PAGE_STORED if stored else PAGE_EVENTS, (after, size)).fetchone()
        except sqlite3.DataError:  # longer than SQLite's length limit
            return _NONE
        count = row[0]
        if not count:
            return Page([], [], [], []), False
        try:
            positions = _INTS.decode(row[2])
            if not ascending(positions, count):
                return _NONE
            events = decode_joined(self.codec, count, row[1])
            if events is None:
                return _NONE
            more = positions[-1] < row[3]
            load = partial(self._meta, after, positions)
            if not stored:
                return Page(positions, None, None, events, load), more
            stream_ids, versions = _STRS.decode(row[4]), _INTS.decode(row[5])
        except msgspec.MsgspecError:  # a stream id or version that is not one (set by hand)
            return _NONE
        if len(stream_ids) != count or len(versions) != count:
            return _NONE
        return Page(positions, stream_ids, versions, events, load), more

    def _meta(self, after: int, positions: Sequence[int]) -> Meta:
        """The stream ids, versions and traceparents of the page after `after` that has
        these positions."""
        cursor, count = self.connection.cursor(), len(positions)
        if self._joins:
            row = cursor.execute(PAGE_META, (after, count)).fetchone()
            try:
                if row[0] == count and _INTS.decode(row[1]) == positions:
                    return (_STRS.decode(row[2]), _INTS.decode(row[3]),
                            _OPTIONAL_STRS.decode(row[4]))  # fmt: skip
            except msgspec.MsgspecError:
                pass
        rows = cursor.execute(SELECT_ALL_META, (after, count)).fetchall()
        if [row[0] for row in rows] != list(positions):
            raise RuntimeError(f"the events after position {after} changed since they were read")
        return [row[1] for row in rows], [row[2] for row in rows], [row[3] for row in rows]

    def _row_page(self, cursor: sqlite3.Cursor, after: int, size: int) -> Page:
        """The page after `after`, read and decoded row by row (names a bad row)."""
        rows = cursor.execute(SELECT_ALL, (after, size)).fetchall()
        positions, stream_ids, versions, payloads = _columns(rows, 4)
        events = decode_rows(self.codec, payloads, stream_ids, versions, positions)
        load = partial(self._meta, after, positions)
        return Page(positions, stream_ids, versions, events, load)  # type: ignore[arg-type]

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

    def locked_position(self, name: str) -> int:
        """The position, read in the open transaction (BEGIN IMMEDIATE: no other writer can
        change it before this transaction ends)."""
        return self.position(name)

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
