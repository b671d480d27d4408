"""Event sourcing: an event store on SQLite and PostgreSQL, aggregates, projections.

    store = SqliteEventStore("app.db", codec)             # or PostgresEventStore(url, codec)
    version = store.append("account-1", [Opened(...)], expected_version=0)
    repository = Repository(store, Account, snapshot_every=100)
    account = repository.get("account-1")                  # rebuilt through the batch loop
    ProjectionRunner(store, projection).catch_up()         # read models, exactly once

`PostgresEventStore` (psycopg 3) is imported on first use: `import domainbus.eventstore`
does not import psycopg.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from domainbus.errors import ConcurrencyError
from domainbus.eventstore.aggregate import (
    Aggregate,
    AggregateNotFound,
    Repository,
    applies,
)
from domainbus.eventstore.projection import Projection, ProjectionRunner, handles
from domainbus.eventstore.sqlite import SqliteEventStore
from domainbus.eventstore.store import (
    EventStore,
    Page,
    Snapshot,
    StoredDecodeError,
    StoredEvent,
)

if TYPE_CHECKING:
    from domainbus.eventstore.postgres import PostgresEventStore

__all__ = [
    "Aggregate",
    "AggregateNotFound",
    "ConcurrencyError",
    "EventStore",
    "Page",
    "PostgresEventStore",
    "Projection",
    "ProjectionRunner",
    "Repository",
    "Snapshot",
    "SqliteEventStore",
    "StoredDecodeError",
    "StoredEvent",
    "applies",
    "handles",
    "open_store",
]


def __getattr__(name: str) -> Any:
    if name == "PostgresEventStore":
        from domainbus.eventstore.postgres import PostgresEventStore

        return PostgresEventStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_store(url: str, codec: Any, **options: Any) -> EventStore:
    """A store from a URL: `sqlite:///path/to.db` or `postgresql://...` (or `postgres://`)."""
    if not isinstance(url, str):
        raise TypeError(f"the store URL must be a str, not {type(url).__qualname__}")
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if not path:
            raise ValueError("sqlite:/// URL without a path")
        return SqliteEventStore(path, codec, **options)
    if url.startswith(("postgresql://", "postgres://")):
        from domainbus.eventstore.postgres import PostgresEventStore

        return PostgresEventStore(url, codec, **options)
    raise ValueError(f"unknown store URL {url!r}: expected sqlite:///PATH or postgresql://...")
