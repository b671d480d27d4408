"""`OutboxBase`: what `SqliteOutbox` and `PostgresOutbox` do alike, written once.

Transactions with deferred deletes, views bound to other handles, the relay entry points,
idempotency records, and inspection and repair of the dead-letter table. Each store supplies its
statements (a module of the same names: `MARK_PROCESSED`, `REQUEUE`, ...) as `_sql`, and the
few steps that differ (`_settle_held`, `_delete_swept`, `_processed_params`, `_prune_params`,
`_announce`).
"""

from __future__ import annotations

import os
import random
import threading
import uuid
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, Self, cast

from domainbus.outbox.relay import AsyncBatchDispatcher, BatchDispatcher
from domainbus.outbox.relay import relay as relay_batches
from domainbus.outbox.relay import relay_async as relay_batches_async
from domainbus.outbox.serve import serve
from domainbus.outbox.store import (
    DeadLetter,
    HeldBatches,
    OutboxBatch,
    RelayResult,
    check_age,
    check_codec,
    check_settings,
)
from domainbus.outbox.sweeper import sweep_delay, watch
from domainbus.transactions import Transaction, transaction_for

if TYPE_CHECKING:
    from domainbus.outbox.store import OutboxStore

__all__ = ["OutboxBase"]


class _CurrentCursor:
    """`outbox._cursor`: the cursor of the transaction's current connection, looked up on each
    use (a view bound to a SQLAlchemy session); a plain connection's is stored on the instance,
    which this non-data descriptor lets win."""

    def __get__(self, outbox: OutboxBase, owner: type | None = None) -> Any:
        return outbox._tx.cursor()


class OutboxBase:
    """The shared part of both outbox stores (see the module doc)."""

    _sql: ModuleType
    _tx: Transaction
    _own_connection: Any
    _owns_connection: bool
    dialect: str
    _locking: OutboxBatch | None = None  # a relay batch the open transaction locks (PostgreSQL)
    _cursor = _CurrentCursor()  # an instance attribute instead, on a plain connection

    def _set_up(self, tx: Transaction, codec: Any, lease: float, max_attempts: int) -> None:
        """The settings and state both stores keep (`codec` and the settings checked before)."""
        self._tx = tx
        self._plain_tx = type(tx)
        self._cursor = tx.cursor()
        self.codec = codec
        self.lease = float(lease)
        self.max_attempts = max_attempts
        self._rng = random.Random(os.urandom(16))
        self._held = HeldBatches()  # delivered; their rows go with the next commit
        self._root = self  # the outbox its views were bound from: the one the sweeper watches
        self._sweep_lock = threading.Lock()  # one sweep at a time, and not during close()
        self._settled: list[OutboxBatch] = []  # held batches the open transaction deletes
        self.encode: Callable[[Any], bytes] = codec.encode
        self.decode: Callable[[bytes], Any] = codec.decode

    @staticmethod
    def _check(codec: object, lease: object, max_attempts: object) -> None:
        check_codec(codec)
        check_settings(lease, max_attempts)

    # -- connection and transactions -------------------------------------------------------

    def bind(self, handle: object) -> Self:
        """This outbox seen through `handle` (a SQLAlchemy Session or Connection, or another
        DB-API connection of the store's kind to the same database): its reads and writes go
        through the handle's transactions. The view shares this outbox's codec, settings and
        deferred deletes (see the store's own doc)."""
        tx = transaction_for(handle)
        if tx.dialect != self.dialect:
            raise TypeError(f"a {type(self).__name__} cannot be bound to a {tx.dialect} handle")
        # one view per unit of work on a session: a shallow copy, sharing the random claims
        # (random.Random is thread-safe), the codec, settings and held batches
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        view._tx, view._owns_connection, view._settled, view._locking = tx, False, [], None
        if isinstance(tx, self._plain_tx):
            view._cursor = tx.cursor()
        else:  # a session may change connections between transactions: follow it
            view.__dict__.pop("_cursor", None)
        return view

    @property
    def connection(self) -> Any:
        """The DB-API connection this outbox (or view) uses for its current transaction."""
        return self._cursor.connection

    @property
    def handle(self) -> object:
        """What this outbox's transactions run on: its connection, or the handle it is bound to."""
        return self._tx.user_handle

    def cursor(self) -> Any:
        """The DB-API cursor of this outbox's transaction (as `Transaction.cursor`)."""
        return self._cursor

    @property
    def in_transaction(self) -> bool:
        return self._tx.in_transaction

    def begin(self) -> None:
        self._tx.begin()

    def commit(self) -> None:
        """Commit, deleting in the same transaction the rows of batches delivered meanwhile."""
        if self._held.batches:
            self._settle_held()
        self._tx.commit()
        self._settled.clear()
        self._locking = None

    def rollback(self) -> None:
        """Roll back the open transaction, if any (held batches stay held)."""
        self._locking = None
        self._tx.rollback()
        self._held.restore(self._settled)
        self._settled.clear()

    def _settle_held(self) -> None:
        """Delete the rows of held batches in the current transaction (kept for a rollback)."""
        raise NotImplementedError

    def flush(self) -> None:
        """Delete the rows of delivered batches now instead of with the next commit."""
        if self._held:
            self._in_own_transaction(lambda: None)

    def close(self) -> None:
        """Flush, then close the connection if the outbox opened it."""
        with self._sweep_lock:
            try:
                self.flush()
            finally:
                if self._root is self:
                    self._close_sweeping()
                if self._owns_connection:
                    self._own_connection.close()

    # -- the sweeper (`domainbus.outbox.sweeper`) ------------------------------------------

    @property
    def sweep_after(self) -> float:
        """Seconds delivered rows wait for a commit on this outbox before the sweeper deletes
        them: a quarter of the lease, at most one second."""
        return sweep_delay(self.lease)

    def _sweep(self, held_since: float) -> bool:
        """Delete the held rows (in the sweeper's thread) if they have been held since
        `held_since` or before; True when nothing is held any more."""
        with self._sweep_lock:
            batches = self._held.take_if_held_since(held_since)
            if batches:
                deleted = False
                try:
                    deleted = self._delete_swept(batches)
                finally:
                    if not deleted:
                        self._held.restore(batches)
            return self._held.unwatch_if_empty()

    def _delete_swept(self, batches: list[OutboxBatch]) -> bool:
        """Delete delivered batches' rows from the sweeper's thread, committed, through a
        connection no other thread is using; False (nothing done) when there is none now."""
        raise NotImplementedError

    def _close_sweeping(self) -> None:
        """Release what `_delete_swept` opened."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _in_own_transaction(self, step: Callable[[], Any]) -> Any:
        """`step()` in a transaction of its own, committed (rolled back if it raises)."""
        self.begin()
        try:
            result = step()
            self.commit()
        except BaseException:
            self.rollback()
            raise
        return result

    def _read(self, statement: str, params: Sequence[object] = ()) -> list[Any]:
        """Rows of a read, leaving the connection as idle as it was (psycopg with autocommit
        off, and a SQLAlchemy session, begin a transaction at the first statement)."""
        idle = not self.in_transaction
        cursor = self._cursor
        cursor.execute(statement, params)
        rows: list[Any] = cursor.fetchall()
        if idle and self.in_transaction:
            self._tx.commit()
        return rows

    # -- settling --------------------------------------------------------------------------

    def discard_handler_writes(self, batch: OutboxBatch) -> bool:
        """Roll back the transaction the handlers' writes opened, if any (True then)."""
        if not self.in_transaction:
            return False
        self.rollback()
        return True

    def _count_attempts(
        self,
        count: str,
        failed: Sequence[tuple[int, str]],
        dead: Sequence[tuple[int, str]],
        extra: tuple[object, ...],
    ) -> list[tuple[int, str]]:
        """Count an attempt for each failed row (`count` returns its attempts); returns `dead`
        and the rows that reached `max_attempts`: what goes to the dead-letter table."""
        cursor = self._cursor
        dead = list(dead)
        for row_id, error in failed:
            row = cursor.execute(count, (error, row_id, *extra)).fetchone()
            if row is not None and row[0] >= self.max_attempts:
                dead.append((row_id, f"{error} (failed {row[0]} times)"))
        return dead

    def hold(self, batch: OutboxBatch) -> None:
        """Mark `batch` delivered with the next commit on this outbox (or one of its views), or
        by the sweeper if that commit does not come within `sweep_after` seconds."""
        if self._held.add(batch):
            watch(self._root)

    # -- relaying --------------------------------------------------------------------------

    @property
    def _store(self) -> OutboxStore:
        """This outbox as the `OutboxStore` the relay drives (each store has the whole API)."""
        return cast("OutboxStore", self)

    def relay(
        self, dispatcher: BatchDispatcher, batch_size: int = 1000, *, take_over: bool = False
    ) -> RelayResult:
        """Deliver every free row, oldest first, in batches, with `dispatch_batch`.

        Run it at start-up and whenever rows may be left over; see the store's doc for
        `take_over` and `domainbus.outbox.relay` for failures.
        """
        return relay_batches(self._store, dispatcher, batch_size=batch_size, take_over=take_over)

    async def relay_async(
        self,
        dispatcher: AsyncBatchDispatcher,
        batch_size: int = 1000,
        *,
        take_over: bool = False,
        concurrent: bool = False,
    ) -> RelayResult:
        """`relay` with `dispatch_batch_async`, for coroutine handlers (see `relay_async`)."""
        return await relay_batches_async(
            self._store,
            dispatcher,
            batch_size=batch_size,
            take_over=take_over,
            concurrent=concurrent,
        )

    def serve(
        self,
        dispatcher: BatchDispatcher,
        batch_size: int = 1000,
        *,
        poll_interval: float = 1.0,
        stop: threading.Event | None = None,
    ) -> RelayResult:
        """Relay whenever rows may be free, until `stop` is set (see `domainbus.outbox.serve`)."""
        return serve(
            cast(Any, self),
            dispatcher,
            batch_size=batch_size,
            poll_interval=poll_interval,
            stop=stop,
        )

    # -- idempotency -----------------------------------------------------------------------

    def run_once(self, key: str, event_id: uuid.UUID, call: Callable[[], object]) -> bool:
        """Run `call()` unless (key, event_id) is recorded, recording it in the same transaction.

        A transaction of its own, or a savepoint inside the caller's: what `call` writes
        through this connection commits or rolls back with the record.
        """
        if not isinstance(event_id, uuid.UUID):
            raise TypeError(f"event_id must be a uuid.UUID, not {type(event_id).__qualname__}")
        nested = self.in_transaction
        if nested:
            self._cursor.execute("SAVEPOINT domainbus_once")
        else:
            self._tx.begin()
        try:
            cursor = self._cursor
            cursor.execute(self._sql.MARK_PROCESSED, self._processed_params(key, event_id))
            first_time = bool(cursor.rowcount == 1)
            if first_time:
                call()
        except BaseException:
            if nested:
                if self._connection_in_transaction():
                    self._cursor.execute("ROLLBACK TO SAVEPOINT domainbus_once")
                    self._cursor.execute("RELEASE SAVEPOINT domainbus_once")
            else:
                self._tx.rollback()
            raise
        if nested:
            if self._connection_in_transaction():  # unless `call` ended the transaction itself
                self._cursor.execute("RELEASE SAVEPOINT domainbus_once")
        elif self.in_transaction:
            self._tx.commit()
        return first_time

    def _processed_params(self, key: str, event_id: uuid.UUID) -> tuple[object, ...]:
        raise NotImplementedError

    def _connection_in_transaction(self) -> bool:
        return self.in_transaction

    def prune_processed(self, older_than: float) -> int:
        """Forget the idempotency records of events handled more than `older_than` seconds ago;
        returns how many went. Keep them longer than an event can take to be redelivered (the
        lease, plus however long a relay may be down), or a late redelivery runs again."""
        params = self._prune_params(check_age(older_than))

        def prune() -> int:
            cursor = self._cursor
            cursor.execute(self._sql.PRUNE_PROCESSED, params)
            return int(cursor.rowcount)

        removed: int = self._in_own_transaction(prune)
        return removed

    def _prune_params(self, seconds: float) -> tuple[object, ...]:
        raise NotImplementedError

    # -- inspection and repair -------------------------------------------------------------

    def pending(self) -> int:
        """Rows not yet delivered (claimed or free)."""
        return int(self._read(self._sql.COUNT_PENDING)[0][0])

    def dead_letters(self) -> list[DeadLetter]:
        """The dead-letter table, oldest first."""
        return [
            DeadLetter(row[0], row[1], bytes(row[2]), row[3], row[4], row[5])
            for row in self._read(self._sql.LIST_DEAD_LETTERS)
        ]

    def requeue(self, dead_letter_ids: Sequence[int]) -> int:
        """Move dead letters back into the outbox (as new rows); returns how many moved."""

        def move() -> int:
            moved = 0
            cursor = self._cursor
            for dead_id in dead_letter_ids:
                cursor.execute(self._sql.REQUEUE, (dead_id,))
                if cursor.rowcount:
                    cursor.execute(self._sql.DELETE_DEAD_LETTER, (dead_id,))
                    moved += 1
            if moved:
                self._announce()
            return moved

        moved: int = self._in_own_transaction(move)
        return moved

    def _announce(self) -> None:
        """Rows became free in the current transaction: tell waiting relays, if the store can."""
