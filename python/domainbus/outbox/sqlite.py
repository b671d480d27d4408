"""`SqliteOutbox`: the transactional outbox in the application's own SQLite file.

A unit of work stores its events here in the same transaction as the user's writes, already
claimed by this outbox, and delivers them itself right after the commit. Rows it could not
deliver (the process died, a handler raised) are delivered by `relay()`, which claims free
rows in batches, dispatches them with `dispatch_batch` and deletes them: at-least-once.

Delivered rows are deleted lazily: after a unit of work delivers its events, the delete rides
along with the next transaction this outbox commits (or `flush()`/`close()`), which keeps the
write path at one transaction per unit of work. When no commit comes within `sweep_after`
seconds (a quarter of the lease, at most one), the sweeper (`domainbus.outbox.sweeper`) deletes
them through a connection of its own, and at interpreter exit, so that another process's relay
never takes them for abandoned. Only a crash before that re-delivers those events.

`outbox.bind(handle)` is the same outbox seen through another handle on the same file (a
SQLAlchemy `Session` or `Connection` on SQLite, another sqlite3 connection): its rows are
written in that handle's transactions. Views share the outbox's settings and its deferred
deletes.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import domainbus.outbox.schema as sql
from domainbus.codec import EventCodec
from domainbus.outbox.base import OutboxBase
from domainbus.outbox.schema import Synchronous
from domainbus.outbox.store import Outbox, OutboxBatch, check_payloads
from domainbus.transactions import SqliteTransaction

__all__ = ["SqliteOutbox"]

logger = logging.getLogger("domainbus.outbox")

_MAX_ROWS_PER_INSERT = 1000  # 3 parameters a row; SQLite 3.32+ allows 32,766
_MAX_IDS_PER_DELETE = 5000
_SWEEP_BUSY_TIMEOUT = 0.2  # seconds the sweeper waits for the write lock before trying later


class SqliteOutbox(OutboxBase):
    """Outbox, relay and idempotency records in one SQLite database.

    `target`: a path (the outbox opens and owns a connection in autocommit mode) or the
    user's `sqlite3.Connection` (used as it is, after the settings below). `codec`: the
    `EventCodec` of the events stored here.

    The connection is put in WAL mode with `busy_timeout` seconds of waiting for locks and
    `synchronous` set explicitly: "NORMAL" (default; in WAL a process crash loses nothing
    committed, a power loss or OS crash may lose the last transactions) or "FULL" (every
    commit is synced; several times slower per transaction).

    `lease`: seconds after which a claim is taken to be abandoned (its owner died) and its rows
    are delivered again; it must exceed the time a batch takes to dispatch. `max_attempts`:
    failed deliveries after which a row goes to the dead-letter table.

    `bind(handle)` does not change the handle's connection settings: set WAL, busy_timeout
    and synchronous where the handle's connections are made. `begin` issues BEGIN IMMEDIATE.

    Like a sqlite3 connection, an outbox belongs to one thread at a time.
    """

    def __init__(
        self,
        target: str | os.PathLike[str] | sqlite3.Connection,
        codec: EventCodec,
        *,
        synchronous: Synchronous = "NORMAL",
        busy_timeout: float = 5.0,
        lease: float = 60.0,
        max_attempts: int = 5,
    ) -> None:
        self._check(codec, lease, max_attempts)
        if isinstance(target, sqlite3.Connection):
            connection, self._owns_connection = target, False
        elif isinstance(target, str | os.PathLike):
            connection = sqlite3.connect(target, timeout=busy_timeout, isolation_level=None)
            self._owns_connection = True
        else:
            raise TypeError(
                f"target must be a path or a sqlite3.Connection, not {type(target).__qualname__}"
            )
        try:
            tx = SqliteTransaction(connection)
            self._own_connection = connection
            sql.configure(connection, synchronous, busy_timeout)
            sql.create_tables(connection)
        except BaseException:
            if self._owns_connection:
                connection.close()
            raise
        self._set_up(tx, codec, lease, max_attempts)
        self._owner = self._rng.getrandbits(63)
        self._data_version = connection.execute("PRAGMA data_version").fetchone()[0]
        self._sweep_path = sql.database_file(connection)  # None: in memory, this process only
        self._sweep_connection: sqlite3.Connection | None = None

    def __repr__(self) -> str:
        return f"<SqliteOutbox {self.codec!r} synchronous={self.synchronous}>"

    # -- connection and transactions (the rest: `OutboxBase`) --------------------------------

    _sql = sql
    dialect = "sqlite"

    @property
    def synchronous(self) -> str:
        """The connection's `synchronous` level ("NORMAL", "FULL", ...), read from SQLite."""
        return sql.synchronous_level(self.connection)

    @property
    def journal_mode(self) -> str:
        """The database's journal mode ("wal"; "memory" for in-memory databases)."""
        return str(self.connection.execute("PRAGMA journal_mode").fetchone()[0])

    def _settle_held(self) -> None:
        """Delete the rows of held batches in the current transaction (kept for a rollback)."""
        held = self._held.take()
        self._settled += held
        for batch in held:
            if batch.in_rows:  # the common case, a unit of work's batch: one statement
                params = (batch.ids[0], batch.ids[-1], batch.claim)
                self._cursor.execute(sql.DELETE_OWN_RANGE, params)
            else:
                self.settle(batch, delivered=batch.ids)

    def _delete_swept(self, batches: list[OutboxBatch]) -> bool:
        """Through a connection of the sweeper's own to the same file (the user's belongs to
        its thread), waiting at most a moment for the write lock."""
        if self._sweep_path is None:
            return True  # an in-memory database: no other process can relay these rows
        if not all(batch.in_rows for batch in batches):
            return False  # not a unit of work's: left to the next commit
        connection = self._sweep_connection
        if connection is None:
            connection = self._sweep_connection = sqlite3.connect(
                self._sweep_path,
                timeout=_SWEEP_BUSY_TIMEOUT,
                isolation_level=None,
                check_same_thread=False,
            )
        try:
            connection.execute("BEGIN IMMEDIATE")
            for batch in batches:
                params = (batch.ids[0], batch.ids[-1], batch.claim)
                connection.execute(sql.DELETE_OWN_RANGE, params)
            connection.execute("COMMIT")
        except sqlite3.OperationalError:  # busy: the next sweep tries again
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            return False
        return True

    def _close_sweeping(self) -> None:
        if self._sweep_connection is not None:
            self._sweep_connection.close()
            self._sweep_connection = None

    # -- writing and claiming --------------------------------------------------------------

    def append(
        self, payloads: Sequence[bytes], *, claimed: bool = True, traceparent: str | None = None
    ) -> OutboxBatch:
        """Insert encoded events in the current transaction, claimed by this outbox or free.

        The claim is written into the rows (no other table is touched), as a random number
        for this batch and the time.
        """
        check_payloads(payloads)
        cursor = self._cursor
        claim = self._rng.getrandbits(63) if claimed else None
        now = time.time() if claimed else None
        if len(payloads) == 1:
            ids = [cursor.execute(sql.INSERT_ONE, (payloads[0], claim, now)).lastrowid or 0]
        else:
            ids = []
            for start in range(0, len(payloads), _MAX_ROWS_PER_INSERT):
                chunk = payloads[start : start + _MAX_ROWS_PER_INSERT]
                values = [value for payload in chunk for value in (payload, claim, now)]
                ids.extend(row[0] for row in cursor.execute(sql.insert_many(len(chunk)), values))
            ids.sort()  # RETURNING gives no order; ids grow in insertion order
        if traceparent is not None:  # tracing on (domainbus.observe): one more statement
            cursor.executemany(sql.SET_TRACEPARENT, [(traceparent, i) for i in ids])
        return OutboxBatch(claim or 0, ids, [], [], in_rows=True)

    claim_locks = False
    """A claim is a row of the claims table, committed before its batch is dispatched."""

    def claim(self, limit: int, *, take_over: bool = False, after: int = 0) -> OutboxBatch | None:
        """Claim up to `limit` of the oldest free rows, in the current transaction.

        Claims older than the lease are void; with `take_over`, so is every claim that is not
        this outbox's (use it at start-up when no other process relays this file, never from
        inside a handler). `after` is ignored: the oldest free rows always come first.
        """
        cursor = self._cursor
        now = time.time()
        self._settle_held()  # this outbox's delivered rows must not be claimed again
        if take_over:
            cursor.execute(sql.DELETE_FOREIGN_CLAIMS, (self._owner,))
            stale = math.inf
        else:
            stale = now - self.lease
            cursor.execute(sql.DELETE_STALE_CLAIMS, (stale,))
        rows = self._first_free_rows(limit, stale)
        if not rows:
            return None
        ids = [row[0] for row in rows]
        claim = self._rng.getrandbits(63)
        cursor.execute(sql.INSERT_CLAIM, (claim, self._owner, ids[0], ids[-1], now))
        # Rows taken over from a unit of work lose its claim, so that it can no longer settle
        # them: from now on only this batch deletes them.
        taken = [(row[0],) for row in rows if row[3] is not None]
        if taken:
            cursor.executemany(sql.CLEAR_ROW_CLAIM, taken)
        return OutboxBatch(
            claim,
            ids,
            [row[1] for row in rows],
            [row[2] for row in rows],
            traceparents=[row[4] for row in rows],
        )

    def _first_free_rows(self, limit: int, stale: float) -> list[tuple[int, bytes, int, Any, Any]]:
        """The oldest free rows in the first gap between live relay claims that has any."""
        cursor: sqlite3.Cursor = self._cursor
        after = 0
        for first_id, last_id in cursor.execute(sql.LIVE_CLAIMS).fetchall():
            if first_id > after + 1:
                rows = cursor.execute(sql.SELECT_BETWEEN, (after, first_id, stale, limit))
                found = rows.fetchall()
                if found:
                    return found
            after = max(after, last_id)
        return cursor.execute(sql.SELECT_AFTER, (after, stale, limit)).fetchall()

    def settle(
        self,
        batch: OutboxBatch,
        *,
        delivered: Sequence[int] = (),
        failed: Sequence[tuple[int, str]] = (),
        dead: Sequence[tuple[int, str]] = (),
    ) -> list[int]:
        """Settle a claimed batch in the current transaction (see `OutboxStore.settle`).

        A claim that was taken over (its lease ran out) belongs to the relay that took it: the
        rows it covers are then left alone, so nothing else ever deletes a row under a live
        claim (and no row id can be reused under one).
        """
        if batch.in_rows:
            return self._settle_own_rows(batch, delivered, failed, dead)
        cursor = self._cursor
        if cursor.execute(sql.DELETE_CLAIM, (batch.claim,)).rowcount == 0:
            return []
        dead = self._count_failures(sql.COUNT_FAILURE, failed, dead, ())
        removed = [*delivered, *(row_id for row_id, _ in dead)]
        first, last = batch.ids[0], batch.ids[-1]
        if len(removed) == len(batch.ids) == last - first + 1 and not failed:
            cursor.execute(sql.DELETE_RANGE, (first, last))  # every id in the range is ours
        else:
            for start in range(0, len(removed), _MAX_IDS_PER_DELETE):
                chunk = removed[start : start + _MAX_IDS_PER_DELETE]
                cursor.execute(sql.delete_ids(len(chunk)), chunk)
        return [row_id for row_id, _ in dead]

    def _settle_own_rows(
        self,
        batch: OutboxBatch,
        delivered: Sequence[int],
        failed: Sequence[tuple[int, str]],
        dead: Sequence[tuple[int, str]],
    ) -> list[int]:
        """Settle a unit of work's batch: only rows still carrying its claim are touched."""
        cursor = self._cursor
        claim = batch.claim
        first, last = batch.ids[0], batch.ids[-1]
        if not failed and not dead and len(delivered) == len(batch.ids):
            cursor.execute(sql.DELETE_OWN_RANGE, (first, last, claim))
            return []
        dead = self._count_failures(sql.COUNT_OWN_FAILURE, failed, dead, (claim,))
        removed = [*delivered, *(row_id for row_id, _ in dead)]
        cursor.executemany(sql.DELETE_OWN, [(row_id, claim) for row_id in removed])
        cursor.execute(sql.RELEASE_OWN_RANGE, (first, last, claim))
        return [row_id for row_id, _ in dead]

    def _count_failures(
        self,
        statement: str,
        failed: Sequence[tuple[int, str]],
        dead: Sequence[tuple[int, str]],
        extra: tuple[object, ...],
    ) -> list[tuple[int, str]]:
        """Count an attempt for each failed row; dead-letter those at `max_attempts`, and the
        `dead` ones. Returns every (row id, error) dead-lettered (the caller deletes them)."""
        dead = self._count_attempts(statement, failed, dead, extra)
        self._dead_letter(dead)
        return dead

    def _dead_letter(self, dead: Sequence[tuple[int, str]]) -> None:
        """Copy rows into the dead-letter table (the caller deletes them), and log each."""
        now = time.time()
        for row_id, error in dead:
            self._cursor.execute(sql.DEAD_LETTER, (error, now, row_id))
            logger.error("outbox row %d moved to the dead-letter table: %s", row_id, error)

    # -- relaying --------------------------------------------------------------------------

    def wait(self, timeout: float) -> bool:
        """Block until another connection has committed to the database since this outbox last
        looked, or `timeout` seconds pass; True on a commit. SQLite has no notifications: this
        polls `PRAGMA data_version` every 10 ms."""
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0:
            raise ValueError(f"timeout must be a number of seconds >= 0, not {timeout!r}")
        connection = self._own_connection
        deadline = time.monotonic() + timeout
        while True:
            version = connection.execute("PRAGMA data_version").fetchone()[0]
            if version != self._data_version:
                self._data_version = version
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, 0.01))

    # -- what differs from PostgreSQL's ------------------------------------------------------

    def _processed_params(self, key: str, event_id: uuid.UUID) -> tuple[object, ...]:
        return (key, event_id.bytes, time.time())

    def _prune_params(self, seconds: float) -> tuple[object, ...]:
        return (time.time() - seconds,)

    def _connection_in_transaction(self) -> bool:
        return bool(self.connection.in_transaction)

    def _read(self, statement: str, params: Sequence[object] = ()) -> list[Any]:
        """Rows of a read (sqlite3 begins no transaction for one)."""
        cursor: sqlite3.Cursor = self._cursor
        return cursor.execute(statement, params).fetchall()


if TYPE_CHECKING:

    def _follows_the_protocol(outbox: SqliteOutbox) -> Outbox:
        return outbox  # mypy checks that SqliteOutbox has the whole `Outbox` API
