"""`PostgresOutbox`: the transactional outbox in the application's PostgreSQL database (psycopg 3).

The same public API as `SqliteOutbox` (`domainbus.outbox.store.Outbox`): a unit of work stores
its events in the user's transaction, already claimed, and delivers them itself after the
commit; `relay()` delivers what is left.

Two kinds of claim. A unit of work's is written into its rows (it dispatches after its commit)
with the outbox's owner number; each outbox holds a session-level advisory lock on that number,
so the rows of a process that died are free at once, and a claim older than `lease` is free
too (for a host that vanished without closing its connection). A relay's claim is row locks:
one transaction per batch locks the rows (`SELECT ... FOR UPDATE SKIP LOCKED`), dispatches
them in a savepoint, deletes those delivered and commits; other relays skip the locked rows,
so any number of relay processes share the backlog without waiting on each other or
delivering a row twice, and a relay that crashes or loses its connection frees its batch as
its transaction aborts. While a batch is dispatched:

- what the handlers write through the outbox's connection (an `idempotent` handler's record
  included) commits with the batch's deletion; after a failure it is rolled back to the
  savepoint, and the rows stay locked while the failure is counted;
- handlers must not commit or roll back the outbox's connection (that would end the claim;
  the batch is then settled as well as can be, at least once), nor write the batch's outbox
  rows through another connection (it would wait for the relay's locks: a deadlock);
- the transaction stays open as long as the dispatch takes: keep `batch_size` times a
  handler's time short (seconds, not minutes). A long-open transaction holds back vacuum, and
  a server's `idle_in_transaction_session_timeout` shorter than a batch aborts it (the batch
  is then delivered again).

A unit of work's delivered rows are deleted by the outbox's next commit, or by the sweeper
(`domainbus.outbox.sweeper`) through the outbox's own connection while it is idle, when no
commit comes within `sweep_after` seconds: the advisory lock and the lease only ever free rows
that were not delivered (or whose process crashed before deleting them).

Rows that become free (stored free, released after a failure, requeued) are announced with
`NOTIFY domainbus_outbox` in their transaction; `wait()` and `serve()` listen for it, so a relay
wakes milliseconds after the commit, polling as the fallback (rows freed by a relay that died
are found by the next poll).

Durability: `synchronous_commit` is set explicitly on the outbox's connection, "on" by default
(a commit returns once its WAL is flushed: a crash of the server loses nothing committed).
"off" returns before the flush: a server crash can lose the last few hundred milliseconds of
commits (rows and events together, never one without the other).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import domainbus.outbox.postgres_schema as sql
from domainbus.outbox.base import OutboxBase
from domainbus.outbox.postgres_schema import SYNCHRONOUS_COMMIT_LEVELS, SynchronousCommit
from domainbus.outbox.store import Outbox, OutboxBatch, OutboxError, check_payloads
from domainbus.transactions import PsycopgTransaction, tuple_cursor

__all__ = ["PostgresOutbox"]

logger = logging.getLogger("domainbus.outbox")


class PostgresOutbox(OutboxBase):
    """Outbox, relay and idempotency records in one PostgreSQL database.

    `target`: a libpq connection string or URL ("postgresql://user@host/db"; a SQLAlchemy URL
    such as "postgresql+psycopg://..." is accepted too), from which the outbox opens and owns a
    connection in autocommit mode, or the user's psycopg `Connection` (autocommit on or off;
    left idle after set-up). `codec`: the `EventCodec` of the events stored here.

    `synchronous_commit` ("on" by default) is set on that connection; transactions on other
    handles (`bind`, a unit of work on a SQLAlchemy session) use their own session's setting,
    the server's default unless set where those connections are made. `lease`: seconds after
    which a claim whose owner still seems alive is taken to be abandoned. `max_attempts`:
    failed deliveries after which a row goes to the dead-letter table.

    Like a psycopg connection, an outbox belongs to one thread at a time; `bind` gives each
    thread (each request's session) its own view.
    """

    def __init__(
        self,
        target: str | Any,
        codec: Any,
        *,
        synchronous_commit: SynchronousCommit = "on",
        lease: float = 60.0,
        max_attempts: int = 5,
    ) -> None:
        import psycopg

        self._check(codec, lease, max_attempts)
        if synchronous_commit not in SYNCHRONOUS_COMMIT_LEVELS:
            raise ValueError(
                f"synchronous_commit must be one of {SYNCHRONOUS_COMMIT_LEVELS}, "
                f"not {synchronous_commit!r}"
            )
        if isinstance(target, psycopg.Connection):
            connection, self._owns_connection = target, False
        elif isinstance(target, str):
            connection = psycopg.connect(_libpq_conninfo(target), autocommit=True)
            self._owns_connection = True
        else:
            raise TypeError(
                "target must be a connection string or a psycopg Connection, "
                f"not {type(target).__qualname__}"
            )
        try:
            tx = PsycopgTransaction(connection)
            if tx.in_transaction:
                raise OutboxError(
                    "the connection has an open transaction: commit it before opening the outbox"
                )
            self._set_up(tx, codec, lease, max_attempts)
            self._owner = self._rng.getrandbits(62) + 1
            self._prepare(connection, synchronous_commit)
        except BaseException:
            if self._owns_connection:
                connection.close()
            raise
        self._own_connection = connection
        self._listening = False

    def _prepare(self, connection: Any, synchronous_commit: str) -> None:
        """synchronous_commit, the owner's advisory lock, the tables; leaves the connection idle."""
        cursor = tuple_cursor(connection)
        try:
            cursor.execute(sql.SET_SYNCHRONOUS_COMMIT, (synchronous_commit,))
            cursor.execute(sql.ADVISORY_LOCK, (self._owner,))
            cursor.execute(sql.TABLES_EXIST, (list(sql.TABLE_NAMES),))
            found = cursor.fetchone()
            if found is None or found[0] != len(sql.TABLE_NAMES) + 1:  # + traceparent
                if connection.autocommit:
                    cursor.execute("BEGIN")
                # concurrent CREATE TABLE IF NOT EXISTS can fail: one process at a time
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", (sql.SCHEMA_LOCK,))
                for statement in sql.TABLES:
                    cursor.execute(statement)
            connection.commit()
        except BaseException:
            connection.rollback()
            raise

    def __repr__(self) -> str:
        return f"<PostgresOutbox {self.codec!r} synchronous_commit={self.synchronous_commit}>"

    # -- connection and transactions -------------------------------------------------------

    _sql = sql
    dialect = "postgresql"

    @property
    def synchronous_commit(self) -> str:
        """The outbox connection's `synchronous_commit` setting, read from the server."""
        return str(self._read(sql.SHOW_SYNCHRONOUS_COMMIT)[0][0])

    def _settle_held(self) -> None:
        held = self._held.take()
        self._settled += held
        cursor = self._cursor
        for batch in held:
            if len(batch.ids) == 1:
                cursor.execute(sql.DELETE_OWN_ONE, (batch.ids[0], batch.claim))
            else:
                cursor.execute(sql.DELETE_OWN, (batch.ids, batch.claim))

    def _delete_swept(self, batches: list[OutboxBatch]) -> bool:
        """Through the outbox's own connection, while it is idle: the sweeper holds the
        connection's lock, so no other thread sends anything meanwhile, and a single statement
        on an idle session is a transaction of its own."""
        import psycopg

        connection = self._own_connection
        if connection.closed or connection.broken:  # (outbox.close() deletes them first)
            _lost(batches, "closed" if connection.closed else "lost")
            return True
        if not connection.lock.acquire(blocking=False):
            return False
        try:
            pgconn = connection.pgconn
            if (
                pgconn.transaction_status != psycopg.pq.TransactionStatus.IDLE
                or pgconn.pipeline_status != psycopg.pq.PipelineStatus.OFF
            ):
                return False  # in use: the transaction's commit (or a later sweep) deletes them
            statement = sql.SWEEP.format(
                ids=",".join(str(i) for batch in batches for i in batch.ids),
                claims=",".join(str(batch.claim) for batch in batches),
            )  # integers only: nothing to quote
            result = pgconn.exec_(statement.encode())
            if result.status != psycopg.pq.ExecStatus.COMMAND_OK:
                if pgconn.status != psycopg.pq.ConnStatus.OK:
                    _lost(batches, "lost")
                    return True
                message = (result.error_message or b"").decode(errors="replace").strip()
                raise OutboxError(f"deleting delivered outbox rows failed: {message}")
            return True
        finally:
            connection.lock.release()

    # -- writing and claiming --------------------------------------------------------------

    def append(
        self, payloads: Sequence[bytes], *, claimed: bool = True, traceparent: str | None = None
    ) -> OutboxBatch:
        """Insert encoded events in the current transaction, claimed by this outbox or free
        (then the relays are notified when the transaction commits)."""
        if type(payloads) is not list or len(payloads) != 1 or type(payloads[0]) is not bytes:
            check_payloads(payloads)  # (one payload in a list: a unit of work's, checked here)
        cursor = self._cursor
        if claimed:
            claim: int | None = self._rng.getrandbits(62) + 1
            tail: tuple[object, ...] = (claim, self._owner)
            statements = sql.INSERT_CLAIMED
        else:
            claim, tail, statements = None, (), sql.INSERT_FREE
        held = self._held.take() if self._held.batches else None
        deleting: tuple[object, ...] = ()
        one, many = statements[0]
        if held:  # delete delivered batches in the same statement: no extra round trip
            self._settled += held
            if len(held) == 1 and len(held[0].ids) == 1:  # the common case: no arrays to parse
                deleting = (held[0].ids[0], held[0].claim)
                one, many = statements[1]
            else:
                deleting = ([i for batch in held for i in batch.ids], [b.claim for b in held])
                one, many = statements[2]
        try:
            if len(payloads) == 1:
                cursor.execute(one, (*deleting, payloads[0], *tail))
                ids = [cursor.fetchone()[0]]
            else:
                cursor.execute(many, (*deleting, *tail, list(payloads)))
                ids = sorted(row[0] for row in cursor.fetchall())
        except BaseException:
            if held:  # not deleted: held again (the caller rolls back)
                self._held.restore(held)
                del self._settled[-len(held) :]
            raise
        if traceparent is not None:  # tracing on (domainbus.observe): one more statement
            cursor.execute(sql.SET_TRACEPARENT, (traceparent, ids))
        if not claimed and payloads:
            cursor.execute(sql.NOTIFY)
        return OutboxBatch(claim or 0, ids, [], [], in_rows=True)

    claim_locks = True
    """A relay's claim is row locks held by the open transaction (see `claim`)."""

    def claim(self, limit: int, *, take_over: bool = False, after: int = 0) -> OutboxBatch | None:
        """Lock up to `limit` of the oldest free rows in the current transaction, skipping rows
        other relays hold (SKIP LOCKED), and open the savepoint the batch is dispatched in;
        the rows stay claimed until that transaction ends (settle them before it commits).

        Free: unclaimed, or claimed by an outbox whose session is gone, or longer ago than the
        lease; with `take_over`, every row, whoever claimed it (at start-up, when no other
        process relays this database; never from inside a handler). Rows with ids above
        `after` come first (a relay resumes past its last batch); when there are none, the
        oldest. Rows taken over from another claim lose it first, in a transaction of its own
        (committed here), so that their unit of work no longer touches them.
        """
        cursor = self._cursor
        self._settle_held()  # this outbox's delivered rows must not be claimed again
        params = {"limit": limit, "lease": self.lease, "after": after}
        statement = sql.CLAIM_TAKING_OVER if take_over else sql.CLAIM
        while True:
            cursor.execute(statement, params)
            rows = cursor.fetchall()
            if not rows and params["after"]:
                params["after"] = 0  # none past the last batch: from the oldest
                continue
            taken = [row[0] for row in rows if row[4] is not None]
            if not taken:
                break
            cursor.execute(sql.CLEAR_CLAIMS, (taken,))
            self.commit()
            self.begin()
        if not rows:
            return None
        cursor.execute(sql.BATCH_SAVEPOINT)
        batch = OutboxBatch(
            0,
            [row[0] for row in rows],
            [row[1] for row in rows],
            [row[2] for row in rows],
            traceparents=[row[3] for row in rows],
        )
        self._locking = batch
        return batch

    def discard_handler_writes(self, batch: OutboxBatch) -> bool:
        """Roll back what the handlers wrote through this connection while `batch` was
        dispatched; True if they wrote anything. A relay's batch (row locks) rolls back to its
        savepoint, keeping the locks: written is what got the savepoint a transaction id."""
        if batch.in_rows or self._locking is not batch:
            return super().discard_handler_writes(batch)
        if not self.in_transaction:  # a handler ended the claim's transaction: locks gone
            self._locking = None
            return True
        cursor = self._cursor
        cursor.execute(sql.WROTE)
        row = cursor.fetchone()
        if row is None or not row[0]:
            return False
        cursor.execute(sql.ROLLBACK_TO_BATCH)
        return True

    def settle(
        self,
        batch: OutboxBatch,
        *,
        delivered: Sequence[int] = (),
        failed: Sequence[tuple[int, str]] = (),
        dead: Sequence[tuple[int, str]] = (),
    ) -> list[int]:
        """Settle a claimed batch in the current transaction (see `OutboxStore.settle`).

        A relay's batch is held by row locks: its rows are deleted or counted by id (locked
        again first, skipping rows another relay took, if the locks were lost). A unit of
        work's batch is claimed in its rows: only rows still carrying that claim are touched,
        since a claim that was taken over belongs to the relay that took it.
        """
        if batch.in_rows:
            return self._settle_own_rows(batch, delivered, failed, dead)
        cursor, ids = self._cursor, batch.ids
        if self._locking is not batch:  # the claim's transaction ended: lock what is left
            cursor.execute(sql.RELOCK, (ids,))
            held = {row[0] for row in cursor.fetchall()}
            delivered = [i for i in delivered if i in held]
            failed = [(i, error) for i, error in failed if i in held]
            dead = [(i, error) for i, error in dead if i in held]
        if not failed and not dead:
            if delivered:
                cursor.execute(sql.DELETE, (list(delivered),))
            if len(delivered) < len(ids):
                cursor.execute(sql.NOTIFY)  # the rest is free again once this commits
            return []
        moved = self._count_failures(sql.COUNT_FAILURE, sql.DEAD_LETTER, failed, dead, ())
        removed = [*delivered, *moved]
        if removed:
            cursor.execute(sql.DELETE, (removed,))
        if len(removed) < len(ids):
            cursor.execute(sql.NOTIFY)
        return moved

    def _settle_own_rows(
        self,
        batch: OutboxBatch,
        delivered: Sequence[int],
        failed: Sequence[tuple[int, str]],
        dead: Sequence[tuple[int, str]],
    ) -> list[int]:
        """Settle a unit of work's batch: only rows still carrying its claim are touched."""
        cursor, claim = self._cursor, batch.claim
        if not failed and not dead and len(delivered) == len(batch.ids):
            cursor.execute(sql.DELETE_OWN, (batch.ids, claim))
            return []
        moved = self._count_failures(
            sql.COUNT_OWN_FAILURE, sql.DEAD_LETTER_OWN, failed, dead, (claim,)
        )
        removed = [*delivered, *moved]
        if removed:
            cursor.execute(sql.DELETE_OWN, (removed, claim))
        cursor.execute(sql.RELEASE_OWN, (batch.ids, claim))
        if cursor.rowcount:
            cursor.execute(sql.NOTIFY)
        return moved

    def _count_failures(
        self,
        count: str,
        dead_letter: str,
        failed: Sequence[tuple[int, str]],
        dead: Sequence[tuple[int, str]],
        extra: tuple[object, ...],
    ) -> list[int]:
        """Count an attempt for each failed row; copy those at `max_attempts`, and the `dead`
        ones, to the dead-letter table. Returns the ids copied (the caller deletes them)."""
        cursor = self._cursor
        moved = []
        for row_id, error in self._count_attempts(count, failed, dead, extra):
            cursor.execute(dead_letter, (error, row_id, *extra))
            if cursor.rowcount:
                moved.append(row_id)
                logger.error("outbox row %d moved to the dead-letter table: %s", row_id, error)
        return moved

    # -- relaying (`relay`, `relay_async`, `serve`: `OutboxBase`) ----------------------------

    def wait(self, timeout: float) -> bool:
        """Block until a commit announces free rows (NOTIFY) or `timeout` seconds pass; True
        when notified. Listens on the outbox's own connection, which must be idle;
        announcements that came while it was busy count (psycopg keeps them)."""
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0:
            raise ValueError(f"timeout must be a number of seconds >= 0, not {timeout!r}")
        connection = self._own_connection
        if not self._listening:
            connection.execute(sql.LISTEN)
            if not connection.autocommit:
                connection.commit()
            self._listening = True
        notified = False
        for _notify in connection.notifies(timeout=timeout, stop_after=1):
            notified = True
        if notified:  # one wake-up for every announcement already received
            for _notify in connection.notifies(timeout=0):
                pass
        return notified

    # -- what differs from SQLite's ----------------------------------------------------------

    def _processed_params(self, key: str, event_id: uuid.UUID) -> tuple[object, ...]:
        return (key, event_id)

    def _prune_params(self, seconds: float) -> tuple[object, ...]:
        return (seconds,)

    def _announce(self) -> None:
        self._cursor.execute(sql.NOTIFY)


def _lost(batches: list[OutboxBatch], how: str) -> None:
    """Nothing can delete these delivered rows any more: say so once (at least once delivery
    then delivers them again)."""
    count = sum(len(batch.ids) for batch in batches)
    logger.warning(
        "the outbox's connection was %s before the rows of %d delivered event(s) were "
        "deleted (close or flush the outbox first): relay() will deliver them again",
        how,
        count,
    )


def _libpq_conninfo(target: str) -> str:
    """A libpq conninfo from a libpq one or a SQLAlchemy URL ("postgresql+psycopg://...")."""
    scheme, sep, rest = target.partition("://")
    if sep and scheme.startswith(("postgresql+", "postgres+")):
        return f"postgresql://{rest}"
    return target


if TYPE_CHECKING:

    def _follows_the_protocol(outbox: PostgresOutbox) -> Outbox:
        return outbox  # mypy checks that PostgresOutbox has the whole `Outbox` API
