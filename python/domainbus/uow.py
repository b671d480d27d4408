"""`UnitOfWork`: commit the user's changes, then dispatch the events they caused.

    with UnitOfWork(dispatcher, connection, outbox=outbox) as uow:
        connection.execute("INSERT INTO users ...")
        uow.track(user)                    # an AggregateRoot (anything with pull_events())
        uow.record(SomethingHappened())    # or an event recorded directly

On a clean exit the transaction commits first; only then are the events collected and
dispatched, so a handler never sees an event whose change was rolled back. On an exception the
transaction rolls back, every pending event is discarded and the exception propagates.

Order: events come from their sources in the order the sources joined the unit of work (a
tracked aggregate joins at `track`, the unit of work's own list at the first `record`), each
source's events in recording order. Handlers may record more events during the dispatch (on a
tracked aggregate, on a newly tracked one, or with `uow.record`): those are dispatched after
the events already queued, first in first out, until none are left.

Without an outbox the events are dispatched from memory: a crash between commit and dispatch
loses them. With an outbox (`domainbus.outbox`) they are stored in the same transaction as the
user's writes and the dispatch is backed by the outbox: at-least-once, even across crashes.

Writes that handlers make through the unit of work's connection while it dispatches, and that
leave a transaction open (the sqlite3 module's default, legacy mode opens one before an INSERT),
are committed after each round of events (with the outbox, together with the rows that record
the round as delivered), or rolled back if a handler raises. On a connection in autocommit mode
(`isolation_level=None`) each such statement commits on its own.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar

if TYPE_CHECKING:
    from domainbus.outbox.store import Batch, OutboxStore

__all__ = ["EventSource", "SqliteTransaction", "UnitOfWork"]

A = TypeVar("A", bound="EventSource")


class EventSource(Protocol):
    """What `track` accepts: an object that hands over its pending events (an AggregateRoot)."""

    def pull_events(self) -> list[Any]: ...


class DispatcherLike(Protocol):
    def dispatch(self, event: object) -> int: ...


class Transaction(Protocol):
    """The transaction control a unit of work needs from its store."""

    @property
    def in_transaction(self) -> bool: ...
    def begin(self) -> None: ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...


class SqliteTransaction:
    """Explicit transactions on a user's `sqlite3.Connection` (legacy or autocommit mode).

    `begin` issues BEGIN IMMEDIATE: the write lock is taken at once, so a busy database makes
    the caller wait (up to the busy timeout) instead of failing when a read turns into a write.
    Connections opened with `autocommit=False` (Python 3.12+) always hold a transaction open
    and are refused.
    """

    __slots__ = ("_cursor", "connection")

    def __init__(self, connection: sqlite3.Connection) -> None:
        if not isinstance(connection, sqlite3.Connection):
            raise TypeError(f"expected a sqlite3.Connection, not {type(connection).__qualname__}")
        if getattr(connection, "autocommit", None) is False:
            raise ValueError(
                "connections opened with autocommit=False are not supported: open it with "
                "autocommit=True or leave the default (the legacy isolation_level)"
            )
        self.connection = connection
        self._cursor = connection.cursor()

    @property
    def in_transaction(self) -> bool:
        return self.connection.in_transaction

    def begin(self) -> None:
        """Start a write transaction (BEGIN IMMEDIATE)."""
        self._cursor.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self._cursor.execute("COMMIT")

    def rollback(self) -> None:
        """Roll back the open transaction, if there is one."""
        if self.connection.in_transaction:
            self._cursor.execute("ROLLBACK")


class _OwnEvents:
    """The unit of work's own list of events recorded with `uow.record`."""

    __slots__ = ("events",)

    def __init__(self) -> None:
        self.events: list[Any] = []

    def pull_events(self) -> list[Any]:
        events, self.events = self.events, []
        return events


_NEW, _OPEN, _DISPATCHING, _CLOSED = range(4)  # the life of a unit of work


class UnitOfWork:
    """A transaction plus the domain events it causes; used once, as a `with` block.

    `dispatcher`: a `Dispatcher` of either backend (anything with `dispatch(event)`).
    `connection`: the user's `sqlite3.Connection`; the unit of work begins, commits and rolls
    back its transaction. `outbox`: an outbox store (e.g. `SqliteOutbox`) on that same
    connection; the events are then stored with the user's writes and delivered at least once.
    With neither, there is no transaction and the events are dispatched on a clean exit.

    A failure while dispatching (after the commit) propagates with a note saying what was
    committed and what became of the remaining events.
    """

    def __init__(
        self,
        dispatcher: DispatcherLike,
        connection: sqlite3.Connection | None = None,
        *,
        outbox: OutboxStore | None = None,
    ) -> None:
        try:
            self._dispatch = dispatcher.dispatch
        except AttributeError:
            raise TypeError(
                f"dispatcher must have a dispatch() method, not {type(dispatcher).__qualname__}"
            ) from None
        self._outbox = outbox
        self._tx: Transaction | None
        if outbox is not None:
            if connection is not None and connection is not outbox.connection:
                raise ValueError("the outbox must be opened on the unit of work's connection")
            self._tx = outbox
        elif connection is not None:
            self._tx = SqliteTransaction(connection)
        else:
            self._tx = None
        self._sources: list[EventSource] = []  # in the order they joined
        self._source_ids: set[int] = set()
        self._own: _OwnEvents | None = None
        self._state = _NEW
        self._accepting = False  # inside the with block or its dispatch

    @property
    def connection(self) -> sqlite3.Connection | None:
        """The connection whose transaction this unit of work controls, if any."""
        if self._outbox is not None:
            return self._outbox.connection
        return self._tx.connection if isinstance(self._tx, SqliteTransaction) else None

    # -- collecting events ---------------------------------------------------------------------

    def track(self, aggregate: A) -> A:
        """Collect `aggregate`'s events when this unit of work commits; returns the aggregate."""
        if not self._accepting:
            raise self._misuse("track")
        if not callable(getattr(aggregate, "pull_events", None)):
            raise TypeError(
                f"track() needs an aggregate with pull_events() (an AggregateRoot), "
                f"not {type(aggregate).__qualname__}"
            )
        if id(aggregate) not in self._source_ids:
            self._source_ids.add(id(aggregate))
            self._sources.append(aggregate)
        return aggregate

    def record(self, event: object) -> None:
        """Record an event that belongs to no tracked aggregate."""
        if not self._accepting:
            raise self._misuse("record")
        if isinstance(event, type):
            raise TypeError(f"record() needs an event instance, not the class {event.__qualname__}")
        own = self._own
        if own is None:
            own = self._own = _OwnEvents()
            self._sources.append(own)
        own.events.append(event)

    def _misuse(self, what: str) -> RuntimeError:
        when = "before entering its with block" if self._state == _NEW else "after it finished"
        return RuntimeError(f"UnitOfWork.{what}() called {when}")

    def _collect(self) -> list[Any]:
        """Take the pending events of every source, in source order."""
        sources = self._sources
        if len(sources) == 1:
            return sources[0].pull_events()
        events: list[Any] = []
        for source in sources:
            events.extend(source.pull_events())
        return events

    # -- the with block ----------------------------------------------------------------------

    def __enter__(self) -> Self:
        if self._state != _NEW:
            raise RuntimeError("a UnitOfWork is used for one with block only; create a new one")
        if self._tx is not None:
            if self._tx.in_transaction:
                raise RuntimeError(
                    "the connection already has an open transaction: commit or roll it back "
                    "before entering the UnitOfWork"
                )
            self._tx.begin()
        self._state = _OPEN
        self._accepting = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self._abandon()
            return
        batch: Batch | None = None
        try:
            events = self._collect()
            if self._outbox is not None and events:
                payloads = [self._outbox.encode(event) for event in events]
                batch = self._outbox.append(payloads)
            if self._tx is not None:
                self._tx.commit()
        except BaseException:
            self._abandon()
            raise
        self._state = _DISPATCHING
        try:
            if events:
                self._dispatch_rounds(events, batch)
        finally:
            self._state = _CLOSED
            self._accepting = False

    def _abandon(self) -> None:
        """Roll back and discard every pending event."""
        self._state = _CLOSED
        self._accepting = False
        try:
            if self._tx is not None:
                self._tx.rollback()
        finally:
            self._collect()

    # -- after the commit ------------------------------------------------------------------

    def _dispatch_rounds(self, events: list[Any], batch: Batch | None) -> None:
        """Dispatch committed events, then those handlers record, round after round (FIFO)."""
        dispatch = self._dispatch
        outbox = self._outbox
        while events:
            queued: list[Any] = []
            payloads: list[bytes] = []
            for index, event in enumerate(events):
                try:
                    dispatch(event)
                    new = self._collect()
                    if outbox is not None and new:
                        payloads.extend(outbox.encode(e) for e in new)
                except BaseException as exc:
                    self._collect()  # what the failing handler recorded goes with its writes
                    self._fail(exc, events, index, queued, payloads, batch)
                    raise
                queued.extend(new)
            batch = self._finish_round(batch, payloads, bool(queued))
            events = queued

    def _finish_round(self, batch: Batch | None, payloads: list[bytes], more: bool) -> Batch | None:
        """Record the round as delivered and store the next one; returns the next batch."""
        tx, outbox = self._tx, self._outbox
        if tx is None:
            return None
        if outbox is None or batch is None:
            if tx.in_transaction:  # writes the handlers made through the connection
                tx.commit()
            return None
        if not more and not tx.in_transaction:
            outbox.hold(batch)  # marked delivered by the next commit on this outbox
            return None
        if not tx.in_transaction:
            tx.begin()
        try:
            outbox.settle(batch, delivered=batch.ids)
            next_batch = outbox.append(payloads) if payloads else None
            tx.commit()
        except BaseException as exc:
            tx.rollback()
            exc.add_note(
                "domainbus: the unit of work was committed, but storing what its handlers did "
                "failed; this round's events stay claimed in the outbox until the lease runs "
                "out, then relay() delivers them again"
            )
            raise
        return next_batch

    def _fail(
        self,
        exc: BaseException,
        events: Sequence[Any],
        index: int,
        queued: list[Any],
        payloads: list[bytes],
        batch: Batch | None,
    ) -> None:
        """Put the store in order after a handler raised while dispatching `events[index]`."""
        tx, outbox = self._tx, self._outbox
        if outbox is None or batch is None:
            left = len(events) - index - 1 + len(queued)
            if tx is not None and tx.in_transaction:
                tx.rollback()
                exc.add_note("domainbus: the handlers' uncommitted writes were rolled back")
            exc.add_note(
                f"domainbus: the unit of work was committed; {left} later event(s) were not "
                "dispatched (use an outbox to have them delivered later)"
            )
            return
        delivered = index
        if tx is not None and tx.in_transaction:
            # The handlers wrote through the connection: this round's writes are undone
            # together, so the whole round goes back to the outbox.
            tx.rollback()
            delivered, payloads = 0, []
        failed = [(batch.ids[index], describe_error(exc))] if isinstance(exc, Exception) else []
        try:
            outbox.begin()
            dead = outbox.settle(batch, delivered=batch.ids[:delivered], failed=failed)
            if payloads:
                outbox.append(payloads, claimed=False)
            outbox.commit()
        except Exception as store_exc:
            outbox.rollback()
            exc.add_note(
                f"domainbus: recording the failure in the outbox failed too ({store_exc!r}); "
                "the events stay claimed until the lease runs out, then relay() retries them"
            )
            return
        where = "moved to the dead-letter table" if dead else "stays in the outbox"
        exc.add_note(
            f"domainbus: the unit of work was committed; outbox row {batch.ids[index]} {where}, "
            f"{len(events) - delivered - 1} other event(s) of this round stay in the outbox "
            "for relay()"
        )


def describe_error(exc: BaseException) -> str:
    """`TypeName: message`, as stored with a failed outbox row."""
    return f"{type(exc).__qualname__}: {exc}"
