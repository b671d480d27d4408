"""Projections (read models) and the runner that keeps them up to date, exactly once.

    class Balances(Projection):
        name = "balances"

        @handles(Deposited)
        def deposited(self, event: Deposited) -> None:
            self.connection.execute("UPDATE balances SET ...")

    runner = ProjectionRunner(store, Balances(connection))
    runner.catch_up()              # every event after the tracked position, page by page
    runner.run(stop)               # then follow new events until `stop` is set

A projection writes through its own `connection` (sqlite3, or psycopg in autocommit mode):
each page of events is dispatched (`dispatch_batch`) inside one transaction on that
connection, and the projection's tracking record (its last position, in
`domainbus_tracking`) is written in the same transaction. After a crash at any moment the
committed read model and the tracked position agree, so the runner resumes exactly where the
committed state ends: no event missed, none applied twice. A handler that raises rolls the
whole page back (nothing of it is applied) and the runner stops with the exception.

Tracing: with `domainbus.observe` on, each event is stored with the traceparent of the code
that appended it, and the runner hands a page's traceparents to the instrumented dispatcher,
whose span continues that trace (one origin) or links each (several), as the relay does.

Following: on PostgreSQL the runner LISTENs for the store's notifications (each append sends
one at commit) and reads at once; a timeout of `poll_interval` covers events that were not
yet readable (see `domainbus.eventstore.postgres`). On SQLite it polls every `poll_interval`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import domainbus
from domainbus import _trace
from domainbus._log import log_failure
from domainbus.delivery import batch_index
from domainbus.eventstore._marks import marked_methods
from domainbus.eventstore.store import DEFAULT_PAGE_SIZE, EventStore, Page

__all__ = ["Projection", "ProjectionRunner", "handles"]

F = TypeVar("F", bound=Callable[..., Any])
_MARK = "_domainbus_handles"


def handles(*event_types: type) -> Callable[[F], F]:
    """Mark a projection method `(self, event)` as the handler of these event types."""
    if not event_types or not all(isinstance(t, type) for t in event_types):
        raise TypeError("handles() needs one or more event classes")

    def mark(method: F) -> F:
        setattr(method, _MARK, (*getattr(method, _MARK, ()), *event_types))
        return method

    return mark


def _tracking_for(connection: Any) -> Any:
    import sqlite3

    if isinstance(connection, sqlite3.Connection):
        from domainbus.eventstore.sqlite import SqliteTracking

        return SqliteTracking(connection)
    if type(connection).__module__.startswith("psycopg"):
        from domainbus.eventstore.postgres import PostgresTracking

        return PostgresTracking(connection)
    raise TypeError(
        "a projection needs a sqlite3.Connection or a psycopg.Connection, "
        f"not {type(connection).__qualname__}"
    )


_logger = logging.getLogger("domainbus.eventstore")


def _enter_trace(page: Page) -> Any:
    """When tracing is on (`domainbus.observe`), hand the page's stored traceparents to the
    dispatcher (its span continues or links the traces that appended the events)."""
    if _trace.capture is None:
        return None
    traceparents = page.traceparents
    return _trace.incoming.set(traceparents) if any(traceparents) else None


class Projection:
    """A read model: handlers (methods marked `@handles`) plus a tracking record.

    `connection` is where the projection writes (its tables and its tracking record); `name`
    (a class attribute, or the argument) keys the tracking record: keep it stable.
    Override `reset()` to empty the read model for a rebuild from scratch (it runs in the
    same transaction as the tracking record's reset).
    """

    name: ClassVar[str | None] = None

    def __init__(self, connection: Any, *, name: str | None = None) -> None:
        chosen = name or type(self).name or f"{type(self).__module__}.{type(self).__qualname__}"
        if not isinstance(chosen, str):
            raise TypeError(f"a projection name must be a str, not {chosen!r}")
        self.projection_name = chosen
        self.connection = connection
        self.tracking = _tracking_for(connection)
        self.dispatcher = domainbus.Dispatcher()
        for attribute, event_type, _ in marked_methods(type(self), _MARK):
            self.dispatcher.register_handler(event_type, getattr(self, attribute))

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} {self.projection_name!r}>"

    def position(self) -> int:
        """The position of the last event applied (0: none)."""
        return int(self.tracking.position(self.projection_name))

    def reset(self) -> None:
        """Empty the read model (called by `ProjectionRunner.reset`, in its transaction)."""

    def flush(self) -> None:
        """Called after each page's handlers, in the page's transaction: write what the
        handlers buffered (one `executemany` per page instead of a statement per event)."""

    def discard(self) -> None:
        """Called when a page is rolled back: forget what the handlers buffered."""


class ProjectionRunner:
    """Catches a projection up with a store, then follows it.

    `page_size`: events per page (one transaction each). `poll_interval`: seconds between
    polls on SQLite, and the LISTEN timeout on PostgreSQL.
    """

    def __init__(
        self,
        store: EventStore,
        projection: Projection,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        poll_interval: float = 0.2,
    ) -> None:
        if not isinstance(projection, Projection):
            raise TypeError(f"expected a Projection, not {type(projection).__qualname__}")
        if type(page_size) is not int or page_size < 1:
            raise ValueError(f"page_size must be an int >= 1, not {page_size!r}")
        if not isinstance(poll_interval, int | float) or poll_interval <= 0:
            raise ValueError(
                f"poll_interval must be a number of seconds > 0, not {poll_interval!r}"
            )
        self.store = store
        self.projection = projection
        self.page_size = page_size
        self.poll_interval = float(poll_interval)

    def reset(self) -> None:
        """Empty the read model and its tracking record, in one transaction."""
        projection = self.projection
        with projection.tracking.transaction():
            projection.reset()
            projection.tracking.set_position(projection.projection_name, 0)

    def catch_up(self, progress: Callable[[int], object] | None = None) -> int:
        """Apply every event after the tracked position; returns how many were applied.

        `progress(count)` is called after each committed page. Each page's transaction first
        checks, under the lock its transaction holds, that the tracked position is still the
        one this runner read: when another runner of the same projection moved it on, or a
        `reset` (`replay --from-scratch`) set it back, the page is not applied and the runner
        carries on from the tracked position (so two runners never apply a page twice, and a
        rebuild started meanwhile is completed, not clobbered).
        """
        tracking, name = self.projection.tracking, self.projection.projection_name
        applied = 0
        while True:
            position = tracking.position(name)
            count, moved_to = self._pages_from(position, progress)
            applied += count
            if moved_to is None:
                return applied
            _logger.info(
                "projection %r: its tracked position moved to %s (another runner, or a reset); "
                "carrying on from there", name, moved_to,
            )  # fmt: skip

    def _pages_from(
        self, position: int, progress: Callable[[int], object] | None
    ) -> tuple[int, int | None]:
        """Apply the pages after `position`: (events applied, None), or (events applied, the
        tracked position) when that moved away from this runner's."""
        projection = self.projection
        tracking, name = projection.tracking, projection.projection_name
        dispatch_batch = projection.dispatcher.dispatch_batch
        applied = 0
        for page in self.store.read_pages(position, self.page_size):
            try:
                with tracking.transaction():
                    tracked = tracking.locked_position(name)
                    if tracked != position:
                        return applied, tracked  # nothing written: the empty transaction ends
                    token = _enter_trace(page)
                    try:
                        dispatch_batch(page.events)
                    finally:
                        if token is not None:
                            _trace.incoming.reset(token)
                    projection.flush()
                    tracking.set_position(name, page.last_position)
            except BaseException as exc:
                projection.discard()
                if isinstance(exc, Exception):
                    index = batch_index(exc, len(page.events))
                    log_failure(
                        _logger, logging.ERROR,
                        "projection %r rolled back the page after position %s (%d events); "
                        "the runner stops, it resumes there", exc,
                        None if index is None else page.events[index],
                        name, position, len(page.events),
                    )  # fmt: skip
                exc.add_note(
                    f"domainbus: projection {name!r} rolled back the page after position "
                    f"{position} ({len(page.events)} events); it resumes there"
                )
                raise
            position = page.last_position
            applied += len(page.events)
            if progress is not None:
                progress(len(page.events))
        return applied, None

    def run(self, stop: threading.Event, *, on_page: Callable[[int], object] | None = None) -> int:
        """Catch up, then follow new events until `stop` is set; returns the events applied."""
        listener = getattr(self.store, "listener", None)
        waiter = listener() if callable(listener) else None
        applied = 0
        try:
            while not stop.is_set():
                applied += self.catch_up(on_page)
                if waiter is not None:
                    waiter.wait(self.poll_interval)
                else:
                    stop.wait(self.poll_interval)
        finally:
            if waiter is not None:
                waiter.close()
        return applied
