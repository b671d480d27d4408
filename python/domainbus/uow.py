"""`UnitOfWork`: commit the user's changes, then dispatch the events they caused.

    with UnitOfWork(dispatcher, connection, outbox=outbox) as uow:
        connection.execute("INSERT INTO users ...")
        uow.track(user)                    # an AggregateRoot (anything with pull_events())
        uow.record(SomethingHappened())    # or an event recorded directly

`AsyncUnitOfWork` is the same as an `async with` block, dispatching with `dispatch_async`.

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

The transaction is the user's own handle: a `sqlite3` connection, a psycopg 3 connection, a
SQLAlchemy `Session` or `Connection` (and `AsyncSession` / `AsyncConnection` for the async twin);
`domainbus.transactions` adapts each. With an outbox on another connection than the handle (a
`PostgresOutbox` next to a SQLAlchemy session), the outbox rows go through the handle's own
transaction (`outbox.bind(handle)`). `track_session=True` (SQLAlchemy sessions) collects the
events of every aggregate the session has loaded or added, without a `track` call for each: an
aggregate joins when the unit of work first finds it in the session (looked at in every `track`
and `record` call, at the commit, and after each event its handlers dispatch).

Inside an outermost call of a `nested="queue"` dispatcher (a command's `execute`, or an event
handler of an outermost `dispatch`), dispatching only appends the events to the call's FIFO.
With an outbox their rows are then settled as delivered once that FIFO has dispatched them (the
dispatcher's `_after_drain` hook), and stay claimed for `relay()` when the call fails first (the
command handler, a later event's handler, or a failure collected meanwhile under "collect").
Their handlers run after the unit of work has closed: events they record belong to their own
unit of work.

Writes that handlers make through the unit of work's connection while it dispatches, and that
leave a transaction open (the sqlite3 module's legacy mode opens one before an INSERT, psycopg
with autocommit off before any statement, a SQLAlchemy session at its first use), are committed
after each round of events (with the outbox, together with the rows that record the round as
delivered), or rolled back if a handler raises. On a connection in autocommit mode
(`isolation_level=None`, psycopg `autocommit=True`) each such statement commits on its own.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
from collections.abc import Callable, Coroutine, Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar

from domainbus._async import after_drain
from domainbus._log import log_failure
from domainbus._trace import current_traceparent
from domainbus.outbox.failures import settle_after_failure
from domainbus.transactions import (
    AsyncSqlAlchemyTransaction,
    SqlAlchemyTransaction,
    SqliteTransaction,
    Transaction,
    describe_error,
    transaction_for,
)

if TYPE_CHECKING:
    from domainbus.outbox.store import OutboxBatch, OutboxStore

__all__ = [
    "AsyncUnitOfWork",
    "DispatcherLike",
    "EventSource",
    "SqliteTransaction",
    "Transaction",
    "UnitOfWork",
    "describe_error",
]

A = TypeVar("A", bound="EventSource")


_logger = logging.getLogger("domainbus.uow")


class EventSource(Protocol):
    """What `track` accepts: an object that hands over its pending events (an AggregateRoot)."""

    def pull_events(self) -> list[Any]: ...


class DispatcherLike(Protocol):
    def dispatch(self, event: object) -> int: ...


class AsyncDispatcherLike(Protocol):
    def dispatch_async(
        self, event: object, *, concurrent: bool = False
    ) -> Coroutine[Any, Any, int]: ...


class _Control(Protocol):
    """The transaction control the unit of work uses: a `Transaction`, or an outbox store."""

    @property
    def in_transaction(self) -> bool: ...
    def begin(self) -> None: ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...


class _OwnEvents:
    """The unit of work's own list of events recorded with `uow.record`."""

    __slots__ = ("events",)

    def __init__(self) -> None:
        self.events: list[Any] = []

    def pull_events(self) -> list[Any]:
        events, self.events = self.events, []
        return events


_NEW, _OPEN, _DISPATCHING, _CLOSED = range(4)  # the life of a unit of work


class _Round:
    """One round of dispatch: its events, their outbox batch, and what handlers recorded."""

    __slots__ = ("batch", "events", "payloads", "queued")

    def __init__(self, events: list[Any], batch: OutboxBatch | None) -> None:
        self.events = events
        self.batch = batch
        self.queued: list[Any] = []  # recorded by this round's handlers: the next round
        self.payloads: list[bytes] = []  # their encodings, when there is an outbox


class _UnitOfWorkBase:
    """What the sync and async units of work share: everything but how they dispatch."""

    def __init__(
        self,
        connection: object | None = None,
        *,
        outbox: OutboxStore | None = None,
        track_session: bool = False,
    ) -> None:
        if not isinstance(track_session, bool):
            raise TypeError(f"track_session must be a bool, not {type(track_session).__qualname__}")
        self._handle = connection
        self._outbox = outbox
        self._tx: _Control | None
        adapter: Transaction | None = None
        if connection is not None and not (
            # the common case, the outbox on this very connection: nothing to adapt
            outbox is not None
            and connection is getattr(outbox, "handle", None)
            and _is_plain_connection(connection)
            and not track_session
        ):
            adapter = transaction_for(connection)
        if outbox is not None:
            if adapter is not None:
                outbox = self._outbox = _bind(outbox, adapter, connection)
            self._tx = outbox
        else:
            self._tx = adapter
        # an AsyncSession's steps run in its greenlet; everything else runs as it is
        self._async_tx = adapter if isinstance(adapter, AsyncSqlAlchemyTransaction) else None
        self._session: Any = None
        if track_session:
            if not isinstance(adapter, SqlAlchemyTransaction) or not adapter._is_session:
                raise TypeError("track_session=True needs a SQLAlchemy Session or AsyncSession")
            self._session = adapter.handle
        self._sources: list[EventSource] = []  # in the order they joined
        self._source_ids: set[int] = set()
        self._own: _OwnEvents | None = None
        self._state = _NEW
        self._accepting = False  # inside the with block or its dispatch
        # how to ask the dispatcher to call back once its "queue" FIFO has drained (set by
        # the twins), and the outbox batches waiting for that while the events are queued
        self._defer: Callable[[Callable[[BaseException | None], object]], bool] | None = None
        self._deferred: list[OutboxBatch] | None = None

    @property
    def connection(self) -> Any:
        """The handle whose transaction this unit of work controls (or the outbox's connection)."""
        if self._handle is None and self._outbox is not None:
            return self._outbox.connection
        return self._handle

    # -- collecting events ---------------------------------------------------------------------

    def track(self, aggregate: A) -> A:
        """Collect `aggregate`'s events when this unit of work commits; returns the aggregate."""
        if not self._accepting:
            raise self._misuse("track")
        if self._session is not None:
            self._track_session_objects()
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
        if self._session is not None:
            self._track_session_objects()
        own = self._own
        if own is None:
            own = self._own = _OwnEvents()
            self._sources.append(own)
        own.events.append(event)

    def _misuse(self, what: str) -> RuntimeError:
        when = "before entering its with block" if self._state == _NEW else "after it finished"
        return RuntimeError(f"{type(self).__name__}.{what}() called {when}")

    def _collect(self) -> list[Any]:
        """Take the pending events of every source, in source order."""
        if self._session is not None:
            self._track_session_objects()
        sources = self._sources
        if len(sources) == 1:
            own = self._own
            if own is not None:  # only `record`ed events: no call needed
                recorded, own.events = own.events, []
                return recorded
            return sources[0].pull_events()
        events: list[Any] = []
        for source in sources:
            events.extend(source.pull_events())
        return events

    def _track_session_objects(self) -> None:
        """Track every aggregate the session holds (loaded, then added), in the order it saw
        them, as cosmic-python's repositories keep their "seen" set."""
        session = self._session
        known = self._source_ids
        for objects in (session.identity_map.values(), session.new):
            for obj in objects:
                if id(obj) not in known and callable(getattr(type(obj), "pull_events", None)):
                    known.add(id(obj))
                    self._sources.append(obj)

    # -- the block ---------------------------------------------------------------------------

    def _open(self) -> None:
        if self._state != _NEW:
            raise RuntimeError(
                f"a {type(self).__name__} is used for one with block only; create a new one"
            )
        if self._tx is not None:
            if self._tx.in_transaction:
                raise RuntimeError(
                    "the connection already has an open transaction: commit or roll it back "
                    f"before entering the {type(self).__name__}"
                )
            self._tx.begin()
        self._state = _OPEN
        self._accepting = True

    def _commit(self) -> _Round:
        """Collect the events, store them in the outbox (if any), commit: the first round."""
        batch: OutboxBatch | None = None
        try:
            events = self._collect()
            outbox = self._outbox
            if outbox is not None and events:
                encode = outbox.encode
                if len(events) == 1:  # the common case, in as few calls as can be: every
                    payloads = [encode(events[0])]  # step here runs while the server waits
                else:
                    payloads = [encode(event) for event in events]
                batch = outbox.append(payloads, traceparent=current_traceparent())
            if self._tx is not None:
                self._tx.commit()
        except BaseException:
            self._abandon()
            raise
        self._state = _DISPATCHING
        return _Round(events, batch)

    def _abandon(self) -> None:
        """Roll back and discard every pending event."""
        self._close()
        try:
            if self._tx is not None:
                self._tx.rollback()
        finally:
            self._collect()

    def _close(self) -> None:
        self._state = _CLOSED
        self._accepting = False

    # -- after the commit ------------------------------------------------------------------

    def _follow_ups(self, round_: _Round) -> None:
        """Queue what the handlers of the event just dispatched recorded (encoded, if stored)."""
        new = self._collect()
        if new:
            if self._outbox is not None:
                round_.payloads.extend(self._outbox.encode(event) for event in new)
            round_.queued.extend(new)

    def _next_round(self, round_: _Round) -> _Round | None:
        """Record the round as delivered and store the next one; None when nothing is left."""
        tx, outbox, batch = self._tx, self._outbox, round_.batch
        following = _Round(round_.queued, None) if round_.queued else None
        if tx is None:
            return following
        if outbox is None or batch is None:
            if tx.in_transaction:  # writes the handlers made through the connection
                tx.commit()
            return following
        deferred = self._deferred  # the events were only queued: settled by `_drained`
        if following is None and not tx.in_transaction:
            if deferred is not None:
                deferred.append(batch)
            else:
                outbox.hold(batch)  # marked delivered by the next commit on this outbox
            return None
        if not tx.in_transaction:
            tx.begin()
        try:
            if deferred is not None:
                deferred.append(batch)
            else:
                outbox.settle(batch, delivered=batch.ids)
            if following is not None:
                following.batch = outbox.append(round_.payloads, traceparent=current_traceparent())
            tx.commit()
        except BaseException as exc:
            tx.rollback()
            exc.add_note(
                "domainbus: the unit of work was committed, but storing what its handlers did "
                "failed; this round's events stay claimed in the outbox until the lease runs "
                "out, then relay() delivers them again"
            )
            raise
        return following

    def _fail(self, exc: BaseException, round_: _Round, index: int) -> None:
        """Put the store in order after a handler raised while dispatching event `index`."""
        self._collect()  # what the failing handler recorded goes with its writes
        tx, outbox, batch, events = self._tx, self._outbox, round_.batch, round_.events
        if self._deferred is not None and batch is not None:
            self._deferred = None  # the events already queued run, but nothing is settled
            exc.add_note(
                f"domainbus: the unit of work was committed; its outbox rows {batch.ids[0]}-"
                f"{batch.ids[-1]} stay claimed until the lease runs out, then relay() "
                "delivers them again"
            )
            return
        if outbox is None or batch is None:
            left = len(events) - index - 1 + len(round_.queued)
            if tx is not None and tx.in_transaction:
                tx.rollback()
                exc.add_note("domainbus: the handlers' uncommitted writes were rolled back")
            exc.add_note(
                f"domainbus: the unit of work was committed; {left} later event(s) were not "
                "dispatched (use an outbox to have them delivered later)"
            )
            return
        try:
            settled = settle_after_failure(
                outbox, batch, batch.ids, index, [(index, exc)], follow_ups=round_.payloads
            )
        except Exception as store_exc:
            exc.add_note(
                f"domainbus: recording the failure in the outbox failed too ({store_exc!r}); "
                "the events stay claimed until the lease runs out, then relay() retries them"
            )
            return
        where = "moved to the dead-letter table" if settled.dead_lettered else "stays in the outbox"
        if isinstance(exc, Exception):
            log_failure(
                _logger, logging.WARNING,
                "unit of work committed, but dispatching its events failed: outbox row %d %s; "
                "%d other event(s) of this round stay in the outbox for relay()",
                exc, events[index], batch.ids[index], where,
                len(events) - len(settled.delivered) - 1,
            )  # fmt: skip
        exc.add_note(
            f"domainbus: the unit of work was committed; outbox row {batch.ids[index]} {where}, "
            f"{len(events) - len(settled.delivered) - 1} other event(s) of this round stay in "
            "the outbox for relay()"
        )

    # -- the one core of both twins ----------------------------------------------------------

    def _steps(self, round_: _Round | None) -> Generator[tuple[int, Any], Any, None]:
        """The life of the block after its commit (`_commit`, which the driver runs first and
        which made `round_`, with events to dispatch), as steps for a driver to run.

        Yields (`_STORE`, step): the driver runs `step()` (in the session's greenlet for an
        AsyncSession) and sends back its result; (`_DISPATCH`, event): the driver dispatches it
        and sends back None, or the exception the dispatch raised.
        """
        if round_ is not None and round_.batch is not None and self._defer is not None:
            if self._defer(self._drained):  # inside a "queue"-mode call: dispatch only queues
                self._deferred = []
        while round_ is not None and round_.events:
            for index, event in enumerate(round_.events):
                failure: BaseException | None = yield _DISPATCH, event
                if failure is None:
                    try:
                        self._follow_ups(round_)
                    except BaseException as exc:
                        failure = exc
                if failure is not None:
                    yield _STORE, functools.partial(self._fail, failure, round_, index)
                    raise failure
            round_ = yield _STORE, functools.partial(self._next_round, round_)

    def _drained(self, failure: BaseException | None) -> None:
        """The dispatcher's FIFO, to which this unit of work's events were only appended, has
        dispatched them (`failure` None): their rows are delivered, with the next commit on
        the outbox. Or `failure` stopped it first (or was collected meanwhile): the rows stay
        claimed until the lease runs out, then relay() delivers them again (at least once)."""
        batches, self._deferred = self._deferred, None
        if not batches or self._outbox is None:
            return
        if failure is None:
            for batch in batches:
                self._outbox.hold(batch)
            return
        rows = ", ".join(f"{b.ids[0]}-{b.ids[-1]}" for b in batches)
        failure.add_note(
            f"domainbus: a unit of work committed in this call queued its events; its outbox "
            f"rows {rows} stay claimed until the lease runs out, then relay() delivers them again"
        )


_STORE, _DISPATCH = 0, 1  # the kinds of step of `_UnitOfWorkBase._steps`


def _is_plain_connection(handle: object) -> bool:
    """A sqlite3 or psycopg connection (not a SQLAlchemy handle, whose async kinds need their
    greenlet): an outbox on it already holds its adapter. Known per type (once per unit of
    work, before its transaction)."""
    kind = type(handle)
    plain = _PLAIN_TYPES.get(kind)
    if plain is None:
        plain = _PLAIN_TYPES[kind] = issubclass(
            kind, sqlite3.Connection
        ) or kind.__module__.startswith("psycopg")
    return plain


_PLAIN_TYPES: dict[type, bool] = {}


def _bind(outbox: OutboxStore, adapter: Transaction, handle: object) -> OutboxStore:
    """The outbox as seen through the unit of work's own transaction."""
    own = getattr(outbox, "handle", None)  # what the store's transactions run on
    if handle is (outbox.connection if own is None else own):
        return outbox
    bind: Callable[[object], OutboxStore] | None = getattr(outbox, "bind", None)
    if bind is None:
        raise ValueError("the outbox must be opened on the unit of work's connection")
    return bind(adapter)


class UnitOfWork(_UnitOfWorkBase):
    """A transaction plus the domain events it causes; used once, as a `with` block.

    `dispatcher`: a `Dispatcher` of either backend (anything with `dispatch(event)`).
    `connection`: the user's `sqlite3.Connection`, psycopg `Connection`, or SQLAlchemy
    `Session` / `Connection`; the unit of work begins, commits and rolls back its transaction.
    `outbox`: an outbox store (`SqliteOutbox`, `PostgresOutbox`); the events are then stored
    with the user's writes, through the same transaction, and delivered at least once.
    With neither, there is no transaction and the events are dispatched on a clean exit.
    `track_session=True` (SQLAlchemy sessions only) also collects the events of every aggregate
    in the session's identity map and of every object added to it.

    A failure while dispatching (after the commit) propagates with a note saying what was
    committed and what became of the remaining events.
    """

    def __init__(
        self,
        dispatcher: DispatcherLike,
        connection: object | None = None,
        *,
        outbox: OutboxStore | None = None,
        track_session: bool = False,
    ) -> None:
        try:
            self._dispatch = dispatcher.dispatch
        except AttributeError:
            raise TypeError(
                f"dispatcher must have a dispatch() method, not {type(dispatcher).__qualname__}"
            ) from None
        super().__init__(connection, outbox=outbox, track_session=track_session)
        if self._async_tx is not None:
            raise TypeError("an AsyncSession or AsyncConnection needs AsyncUnitOfWork")
        self._defer = getattr(dispatcher, "_after_drain", None)

    def __enter__(self) -> Self:
        self._open()
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
        try:
            round_ = self._commit()  # straight away: no step to set up before the COMMIT
            if not round_.events:
                return
            dispatch = self._dispatch
            steps = self._steps(round_)
            kind, value = next(steps)
            while True:
                if kind == _STORE:
                    reply = value()
                else:
                    try:
                        dispatch(value)
                        reply = None
                    except BaseException as failure:
                        reply = failure
                kind, value = steps.send(reply)
        except StopIteration:
            pass
        finally:
            self._close()


class AsyncUnitOfWork(_UnitOfWorkBase):
    """`UnitOfWork` as an `async with` block: the events are dispatched with `dispatch_async`.

    Handlers may be coroutine functions (each is awaited before the next, as `dispatch_async`
    does). `connection` may also be a SQLAlchemy `AsyncSession` or `AsyncConnection`: the
    transaction steps then run in its greenlet; other handles (sqlite3, psycopg, a sync
    session) stay synchronous and run on the event loop's thread.
    `concurrent=True` runs the handlers of one event together (`dispatch_async(concurrent=True)`).
    """

    def __init__(
        self,
        dispatcher: AsyncDispatcherLike,
        connection: object | None = None,
        *,
        outbox: OutboxStore | None = None,
        concurrent: bool = False,
        track_session: bool = False,
    ) -> None:
        try:
            self._dispatch_async = dispatcher.dispatch_async
        except AttributeError:
            raise TypeError(
                "dispatcher must have a dispatch_async() method, "
                f"not {type(dispatcher).__qualname__}"
            ) from None
        if not isinstance(concurrent, bool):
            raise TypeError(f"concurrent must be a bool, not {type(concurrent).__qualname__}")
        self._concurrent = concurrent
        super().__init__(connection, outbox=outbox, track_session=track_session)
        self._defer = functools.partial(after_drain, dispatcher)

    async def _run(self, step: Callable[[], Any]) -> Any:
        if self._async_tx is None:
            return step()
        return await self._async_tx.run(step)

    async def __aenter__(self) -> Self:
        await self._run(self._open)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            await self._run(self._abandon)
            return
        try:
            round_ = await self._run(self._commit)
            if not round_.events:
                return
            dispatch_async, concurrent = self._dispatch_async, self._concurrent
            steps = self._steps(round_)
            kind, value = next(steps)
            while True:
                if kind == _STORE:
                    reply = await self._run(value)
                else:
                    try:
                        await dispatch_async(value, concurrent=concurrent)
                        reply = None
                    except BaseException as failure:
                        reply = failure
                kind, value = steps.send(reply)
        except StopIteration:
            pass
        finally:
            self._close()
