"""`PostgresEventStore`: the event store on PostgreSQL 13+ (psycopg 3, imported lazily).

**The out-of-order commit problem, and how this store avoids it.** Positions come from an
identity column, allocated when a row is inserted, but transactions commit in any order: a
reader that has read "everything up to position 11" may later find position 10 appear, whose
transaction started first and committed last. A catch-up reader that resumed after 11 would
skip it. eventsourcing serialises all appenders with a table lock; this store lets appends run
concurrently instead:

- every row records the transaction that wrote it (`tx xid8 DEFAULT pg_current_xact_id()`,
  the top-level transaction id);
- `read_all` orders events by `(tx, position)` and returns only rows with
  `tx < pg_snapshot_xmin(pg_current_snapshot())`: every transaction below the oldest one still
  in progress has finished, so the set of such rows is final. A transaction that commits later
  has a larger id than anything already returned, so it can only add events after the
  reader's cursor, never before it.

The cost: positions are unique but do not increase across transactions in the global order
(use them as cursors, not as counters; `read_all(after=p)` resumes after the event at `p`),
and a long-running transaction anywhere on the server (an idle-in-transaction session, a
dump) holds readers back until it ends: they are delayed, they never skip.

**Optimistic concurrency.** `domainbus_streams` holds each stream's version. An append is one
statement: it moves the stream's row from the expected version to the new one (or inserts it,
for a new stream) and inserts the events only if that succeeded. A concurrent writer of the
same stream waits on the row lock, then finds the version changed and inserts nothing, so the
stale writer's transaction is never aborted (a joined unit of work can still roll back
cleanly) and it gets `ConcurrencyError` with the actual version. The unique key on
(stream_id, version) backs this up.

**Transactions.** An append joins the connection's open transaction; otherwise, on an
autocommit connection (the store's own), it is a single statement, atomic on its own: one
round trip per append. `notify=True` sends `NOTIFY domainbus_events` with each append (at
commit), which the projection runner LISTENs for. Durability follows the server's
`synchronous_commit` (the `synchronous_commit` property reads it; set it on the server or
with `options="-c synchronous_commit=..."` in the conninfo).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from domainbus._trace import current_traceparent
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
    decode_joined,
    decode_rows,
    page_to_stored,
)
from domainbus.transactions import tuple_cursor

if TYPE_CHECKING:
    import psycopg

__all__ = ["CHANNEL", "PostgresEventStore", "PostgresTracking"]

CHANNEL = "domainbus_events"
_NO_LIMIT = 2**62

SCHEMA = (
    "SELECT pg_advisory_xact_lock(7126030751122018)",  # concurrent set-ups take turns
    """CREATE TABLE IF NOT EXISTS domainbus_streams (
        stream_id text PRIMARY KEY,
        version bigint NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS domainbus_events (
        position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        stream_id text NOT NULL,
        version bigint NOT NULL,
        payload bytea NOT NULL,
        tx xid8 NOT NULL DEFAULT pg_current_xact_id(),
        traceparent text,
        UNIQUE (stream_id, version)
    )""",
    "CREATE INDEX IF NOT EXISTS domainbus_events_order ON domainbus_events (tx, position)",
    """CREATE TABLE IF NOT EXISTS domainbus_snapshots (
        stream_id text NOT NULL,
        version bigint NOT NULL,
        topic text NOT NULL,
        class_version integer NOT NULL,
        state bytea NOT NULL,
        PRIMARY KEY (stream_id, version)
    )""",
    TRACKING_TABLE := """CREATE TABLE IF NOT EXISTS domainbus_tracking (
        name text PRIMARY KEY,
        position bigint NOT NULL
    )""",
)

_INSERT_EVENTS = """
    ins AS (
        INSERT INTO domainbus_events (stream_id, version, payload{traced})
        SELECT %(stream)s, %(expected)s + t.ord, t.payload{traced_value}
        FROM s, unnest(%(payloads)s::bytea[]) WITH ORDINALITY AS t(payload, ord)
        ORDER BY t.ord
        RETURNING 1
    )
    SELECT count(*){notify} FROM ins
"""
_NEW_STREAM = """
    WITH s AS (
        INSERT INTO domainbus_streams (stream_id, version) VALUES (%(stream)s, %(n)s)
        ON CONFLICT (stream_id) DO NOTHING RETURNING version
    ),
"""
_NEXT_VERSION = """
    WITH s AS (
        UPDATE domainbus_streams SET version = %(expected)s + %(n)s
        WHERE stream_id = %(stream)s AND version = %(expected)s RETURNING version
    ),
"""
_NOTIFY = f", pg_notify('{CHANNEL}', '')"
_TRACED = {"traced": ", traceparent", "traced_value": ", %(traceparent)s::text"}
_UNTRACED = {"traced": "", "traced_value": ""}
HAS_TRACEPARENT = (
    "SELECT count(*) FROM pg_attribute WHERE attrelid = 'domainbus_events'::regclass "
    "AND attname = 'traceparent' AND NOT attisdropped"
)
ADD_TRACEPARENT = "ALTER TABLE domainbus_events ADD COLUMN IF NOT EXISTS traceparent text"
STREAM_VERSION = "SELECT version FROM domainbus_streams WHERE stream_id = %s"
TX_OF = "SELECT tx::text FROM domainbus_events WHERE position = %s"
_VISIBLE = "tx < pg_snapshot_xmin(pg_current_snapshot())"
SELECT_ALL = (
    "SELECT position, stream_id, version, payload, tx::text AS tx_text, traceparent "
    "FROM domainbus_events "
    f"WHERE (tx, position) > (%s::xid8, %s) AND {_VISIBLE} ORDER BY tx, position LIMIT %s"
)
COUNT_AFTER = "SELECT count(*) FROM domainbus_events WHERE (tx, position) > (%s::xid8, %s)"
SELECT_STREAM = (
    "SELECT payload FROM domainbus_events WHERE stream_id = %s AND version >= %s "
    "AND version <= %s ORDER BY version LIMIT %s"
)
STREAM_PAGE = (  # a page at once: ORDER BY inside the aggregate is PostgreSQL's promise
    "SELECT count(*), string_agg(payload, ''::bytea ORDER BY version) FROM (SELECT version, "
    "payload FROM domainbus_events WHERE stream_id = %s AND version >= %s AND version <= %s "
    "ORDER BY version LIMIT %s) AS page"
)
SELECT_STREAM_ROWS = (
    "SELECT position, payload FROM domainbus_events WHERE stream_id = %s AND version >= %s "
    "AND version <= %s ORDER BY version"
)
SAVE_SNAPSHOT = (
    "INSERT INTO domainbus_snapshots VALUES (%s, %s, %s, %s, %s) "
    "ON CONFLICT (stream_id, version) DO UPDATE SET topic = excluded.topic, "
    "class_version = excluded.class_version, state = excluded.state"
)
LOAD_SNAPSHOT = (
    "SELECT version, topic, class_version, state FROM domainbus_snapshots "
    "WHERE stream_id = %s AND version <= %s ORDER BY version DESC LIMIT 1"
)


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "PostgresEventStore needs psycopg 3: pip install 'domainbus[postgres]'"
        ) from exc
    return psycopg


def _run_schema(connection: psycopg.Connection[Any]) -> None:
    cursor = tuple_cursor(connection)
    with connection.transaction():
        for statement in SCHEMA:
            cursor.execute(statement)
        # a database made before the traceparent column: add it (NULL in the existing rows)
        found = cursor.execute(HAS_TRACEPARENT).fetchone()
        if found is None or not found[0]:
            cursor.execute(ADD_TRACEPARENT)


class PostgresEventStore:
    """Event streams in PostgreSQL (see the module for the guarantees).

    `target`: a conninfo string or URL (the store opens and owns an autocommit connection),
    or the user's `psycopg.Connection` (shared with a unit of work: an append made while that
    connection is in a transaction joins it). `codec`: the `EventCodec` of the events.
    A store (like its connection) should be used by one thread at a time.
    """

    def __init__(
        self,
        target: str | psycopg.Connection[Any],
        codec: EventCodec,
        *,
        notify: bool = True,
    ) -> None:
        pg = _psycopg()
        if not isinstance(codec, EventCodec):
            raise TypeError(f"codec must be an EventCodec, not {type(codec).__qualname__}")
        if isinstance(target, str):
            connection = pg.connect(target, autocommit=True)
            self._owns, self.conninfo = True, target
        elif isinstance(target, pg.Connection):
            connection, self._owns, self.conninfo = target, False, target.info.dsn
        else:
            raise TypeError(
                f"target must be a conninfo string or a psycopg.Connection, "
                f"not {type(target).__qualname__}"
            )
        try:
            if connection.info.server_version < 130000:
                raise ValueError("PostgresEventStore needs PostgreSQL 13 or newer (xid8)")
            if connection.info.transaction_status != pg.pq.TransactionStatus.IDLE:
                raise ValueError("the connection has an open transaction: commit it first")
            _run_schema(connection)
        except BaseException:
            if self._owns:
                connection.close()
            raise
        self.connection: psycopg.Connection[Any] = connection
        self.codec = codec
        self.notify = bool(notify)
        notify_sql = _NOTIFY if notify else ""
        self._append_new = _NEW_STREAM + _INSERT_EVENTS.format(notify=notify_sql, **_UNTRACED)
        self._append_next = _NEXT_VERSION + _INSERT_EVENTS.format(notify=notify_sql, **_UNTRACED)
        self._append_traced = (  # tracing on (domainbus.observe): the traceparent too
            _NEW_STREAM + _INSERT_EVENTS.format(notify=notify_sql, **_TRACED),
            _NEXT_VERSION + _INSERT_EVENTS.format(notify=notify_sql, **_TRACED),
        )
        self._idle = pg.pq.TransactionStatus.IDLE
        self._intrans = pg.pq.TransactionStatus.INTRANS
        self._cursor = tuple_cursor(connection, binary=True)
        self._encode = codec.encode

    def __repr__(self) -> str:
        return f"<PostgresEventStore {self.codec!r} notify={self.notify}>"

    @property
    def synchronous_commit(self) -> str:
        """The session's `synchronous_commit` setting, read from the server."""
        row = self._cursor.execute("SHOW synchronous_commit").fetchone()
        return str(row[0]) if row is not None else "unknown"

    # -- writing ---------------------------------------------------------------------------

    def append(
        self, stream_id: str, events: Sequence[DomainEvent], *, expected_version: int
    ) -> int:
        """Append atomically if the stream is at `expected_version`; returns the new version.

        Joins the connection's open transaction, else is one atomic statement (on an
        autocommit connection) or a transaction of its own.
        """
        batch = check_append(stream_id, events, expected_version)
        encode = self._encode
        payloads = [encode(event) for event in batch]
        params = {"stream": stream_id, "expected": expected_version, "n": len(payloads),
                  "payloads": payloads}  # fmt: skip
        sql = self._append_next if expected_version else self._append_new
        traceparent = current_traceparent()  # None unless tracing is on (domainbus.observe)
        if traceparent is not None:
            params["traceparent"] = traceparent
            sql = self._append_traced[1 if expected_version else 0]
        connection = self.connection
        status = connection.info.transaction_status
        if status == self._intrans or (status == self._idle and connection.autocommit):
            row = self._cursor.execute(sql, params).fetchone()
        elif status == self._idle:
            with connection.transaction():
                row = self._cursor.execute(sql, params).fetchone()
        else:
            raise ValueError(
                f"cannot append to {stream_id!r}: the connection's transaction has failed "
                "(roll it back first)"
            )
        if row is None or row[0] != len(payloads):
            raise ConcurrencyError(stream_id, expected_version, self.version(stream_id))
        return expected_version + len(payloads)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """A transaction on the store's connection (a savepoint inside an open one)."""
        with self.connection.transaction():
            yield

    # -- reading ---------------------------------------------------------------------------

    def version(self, stream_id: str) -> int:
        row = self._cursor.execute(STREAM_VERSION, (stream_id,)).fetchone()
        return 0 if row is None else int(row[0])

    def read(
        self, stream_id: str, from_version: int = 1, to_version: int | None = None
    ) -> list[StoredEvent]:
        check_range(from_version, to_version)
        last = _NO_LIMIT if to_version is None else to_version
        rows = self._cursor.execute(SELECT_STREAM_ROWS, (stream_id, from_version, last)).fetchall()
        positions = [row[0] for row in rows]
        payloads = [row[1] for row in rows]
        events = decode_rows(self.codec, payloads, stream_id, from_version, positions)
        return [
            StoredEvent(position, stream_id, from_version + index, event)
            for index, (position, event) in enumerate(zip(positions, events, strict=True))
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
        cursor, codec, version = (
            tuple_cursor(self.connection, binary=True),
            self.codec,
            from_version,
        )
        while version <= last:
            params = (stream_id, version, last, page_size)
            row = cursor.execute(STREAM_PAGE, params).fetchone()
            count = 0 if row is None else row[0]
            if not count:
                return
            events = decode_joined(codec, count, row[1])
            if events is None:  # a bad row: found and named row by row
                rows = cursor.execute(SELECT_STREAM, params).fetchall()
                events = decode_rows(codec, [row[0] for row in rows], stream_id, version)
            yield events
            if len(events) < page_size:
                return
            version += len(events)

    def _tx_of(self, position: int) -> str:
        if position == 0:
            return "0"
        row = self._cursor.execute(TX_OF, (position,)).fetchone()
        if row is None:
            raise ValueError(f"no event at position {position}: pass a position read_all gave")
        return str(row[0])

    def read_pages(
        self, after: int = 0, page_size: int = DEFAULT_PAGE_SIZE, limit: int | None = None
    ) -> Iterator[Page]:
        check_page(after, page_size, limit)
        tx = self._tx_of(after)
        cursor, codec = tuple_cursor(self.connection, binary=True), self.codec
        left = _NO_LIMIT if limit is None else limit
        while left > 0:
            size = min(page_size, left)
            rows = cursor.execute(SELECT_ALL, (tx, after, size)).fetchall()
            if not rows:
                return
            positions, stream_ids, versions, payloads, txs, traceparents = map(
                list, zip(*rows, strict=True)
            )
            events = decode_rows(codec, payloads, stream_ids, versions, positions)
            yield Page(positions, stream_ids, versions, events, traceparents=traceparents)
            if len(rows) < size:
                return
            tx, after, left = txs[-1], positions[-1], left - len(rows)

    def read_all(self, after: int = 0, limit: int | None = None) -> Iterator[StoredEvent]:
        for page in self.read_pages(after, DEFAULT_PAGE_SIZE, limit):
            yield from page_to_stored(page)

    def count_after(self, after: int = 0) -> int:
        row = self._cursor.execute(COUNT_AFTER, (self._tx_of(after), after)).fetchone()
        return int(row[0]) if row is not None else 0

    # -- snapshots -------------------------------------------------------------------------

    def save_snapshot(self, snapshot: Snapshot) -> None:
        row = (snapshot.stream_id, snapshot.version, snapshot.topic, snapshot.class_version,
               snapshot.state)  # fmt: skip
        self._cursor.execute(SAVE_SNAPSHOT, row)

    def load_snapshot(self, stream_id: str, max_version: int | None = None) -> Snapshot | None:
        bound = _NO_LIMIT if max_version is None else max_version
        row = self._cursor.execute(LOAD_SNAPSHOT, (stream_id, bound)).fetchone()
        return None if row is None else Snapshot(stream_id, row[0], row[1], row[2], bytes(row[3]))

    # -- following -------------------------------------------------------------------------

    def listener(self) -> Listener:
        """A connection LISTENing for appends (for the projection runner)."""
        return Listener(self.conninfo)

    def close(self) -> None:
        """Close the connection if the store opened it."""
        if self._owns:
            self.connection.close()

    def __enter__(self) -> PostgresEventStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Listener:
    """`LISTEN domainbus_events` on a connection of its own; `wait(timeout)` until one comes."""

    def __init__(self, conninfo: str) -> None:
        self.connection = _psycopg().connect(conninfo, autocommit=True)
        self.connection.execute(f"LISTEN {CHANNEL}")
        self._lock = threading.Lock()

    def wait(self, timeout: float) -> bool:
        """True when an append was notified within `timeout` seconds (drains what came)."""
        with self._lock:
            got = False
            for _ in self.connection.notifies(timeout=timeout, stop_after=1):
                got = True
            return got

    def close(self) -> None:
        self.connection.close()


class PostgresTracking:
    """A projection's tracking records in PostgreSQL, and the transactions its writes and its
    tracking record commit in together (on the projection's connection)."""

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        if not connection.autocommit:
            raise ValueError("a projection's psycopg connection must be in autocommit mode")
        self.connection = connection
        self._cursor = tuple_cursor(connection)
        with connection.transaction():
            self._cursor.execute(SCHEMA[0])
            self._cursor.execute(TRACKING_TABLE)

    def position(self, name: str) -> int:
        sql = "SELECT position FROM domainbus_tracking WHERE name = %s"
        row = self._cursor.execute(sql, (name,)).fetchone()
        return 0 if row is None else int(row[0])

    def locked_position(self, name: str) -> int:
        """The position, read in the open transaction with the record locked until it ends
        (one statement: made if missing, else "updated" to itself, which takes the lock)."""
        row = self._cursor.execute(
            "INSERT INTO domainbus_tracking VALUES (%s, 0) ON CONFLICT (name) "
            "DO UPDATE SET position = domainbus_tracking.position RETURNING position",
            (name,),
        ).fetchone()
        return 0 if row is None else int(row[0])

    def transaction(self) -> Any:
        return self.connection.transaction()

    def set_position(self, name: str, position: int) -> None:
        """Record the position, in the open transaction."""
        self._cursor.execute(
            "INSERT INTO domainbus_tracking VALUES (%s, %s) "
            "ON CONFLICT (name) DO UPDATE SET position = excluded.position",
            (name, position),
        )
