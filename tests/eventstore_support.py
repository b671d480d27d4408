"""Shared pieces of the event store tests: events, codecs, and a `store` fixture that is a
`SqliteEventStore` on a temporary file or a `PostgresEventStore` on a fresh database of the
real server from tests/servers.py (`make_store` opens more stores on the same database)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from domainbus import DomainEvent
from domainbus.codec import EventCodec

STORES = ("sqlite", "postgres")


class Opened(DomainEvent):
    account_id: str
    owner: str


class Deposited(DomainEvent):
    account_id: str
    amount: int


class Withdrawn(DomainEvent):
    account_id: str
    amount: int


class Closed(DomainEvent):
    account_id: str


CODEC = EventCodec(Opened, Deposited, Withdrawn, Closed)


def deposits(count: int, account_id: str = "acc-1", start: int = 0) -> list[Deposited]:
    return [Deposited(account_id=account_id, amount=start + n) for n in range(count)]


def open_store(url: str, codec: EventCodec = CODEC, **options: Any) -> Any:
    if url.startswith("sqlite:///"):
        from domainbus.eventstore import SqliteEventStore

        return SqliteEventStore(url.removeprefix("sqlite:///"), codec, **options)
    from domainbus.eventstore import PostgresEventStore

    return PostgresEventStore(url, codec, **options)


if "pytest" in sys.modules:  # the test session; the subprocesses tests start skip this
    import pytest

    def store_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
        """A URL for a fresh store of this kind (sqlite:///path or the test's database)."""
        if kind == "sqlite":
            return f"sqlite:///{tmp_path / 'events.db'}"
        dsn: str = request.getfixturevalue("postgres_dsn")
        return dsn

    @pytest.fixture(params=STORES)
    def store_kind(request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture
    def store_url_of(store_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
        return store_url(store_kind, tmp_path, request)

    @pytest.fixture
    def make_store(store_url_of: str) -> Iterator[Callable[..., Any]]:
        """Open a store (another connection) on the test's database; all closed afterwards."""
        opened: list[Any] = []

        def make(codec: EventCodec = CODEC, **options: Any) -> Any:
            store = open_store(store_url_of, codec, **options)
            opened.append(store)
            return store

        yield make
        for store in opened:
            store.close()

    @pytest.fixture
    def store(make_store: Callable[..., Any]) -> Any:
        return make_store()


def raw_insert(store: Any, stream_id: str, version: int, payload: bytes) -> None:
    """Write a row behind the store's back (a corrupt or foreign record)."""
    if store.__class__.__name__ == "SqliteEventStore":
        with store.transaction():
            store.connection.execute(
                "INSERT INTO domainbus_events (stream_id, version, payload) VALUES (?, ?, ?)",
                (stream_id, version, payload),
            )
        return
    with store.connection.transaction():
        store.connection.execute(
            "INSERT INTO domainbus_streams VALUES (%s, %s) "
            "ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version",
            (stream_id, version),
        )
        store.connection.execute(
            "INSERT INTO domainbus_events (stream_id, version, payload) VALUES (%s, %s, %s)",
            (stream_id, version, payload),
        )


# -- a projection the tests (and their subprocesses) run -----------------------------------------

from domainbus.eventstore import Projection, handles  # noqa: E402


class Ledger(Projection):
    """Writes one row per applied event (no unique key: a repeat would show as a duplicate),
    buffered and written once per page by `flush`. `pause` seconds of sleep per page let a
    test kill the runner in the middle of its work."""

    name = "ledger"

    def __init__(self, connection: Any, *, pause: float = 0.0) -> None:
        super().__init__(connection)
        self.sqlite = type(connection).__module__ == "sqlite3"
        self.mark = "?" if self.sqlite else "%s"
        self.pause = pause
        self.rows: list[tuple[str, int]] = []
        connection.execute(
            "CREATE TABLE IF NOT EXISTS applied (event_id TEXT NOT NULL, amount INTEGER)"
        )
        if self.sqlite:
            connection.commit()

    @handles(Deposited)
    def deposited(self, event: Deposited) -> None:
        self.rows.append((str(event.event_id), event.amount))

    @handles(Withdrawn)
    def withdrawn(self, event: Withdrawn) -> None:
        self.rows.append((str(event.event_id), -event.amount))

    def flush(self) -> None:
        rows, self.rows = self.rows, []
        sql = f"INSERT INTO applied VALUES ({self.mark}, {self.mark})"
        if self.sqlite:
            self.connection.executemany(sql, rows)
        else:
            with self.connection.cursor() as cursor:
                cursor.executemany(sql, rows)
        if self.pause:
            import time

            time.sleep(self.pause)

    def discard(self) -> None:
        self.rows = []

    def reset(self) -> None:
        self.connection.execute("DELETE FROM applied")

    def totals(self) -> tuple[int, int, int]:
        """(rows, distinct event ids, sum of amounts)."""
        row = self.connection.execute(
            "SELECT count(*), count(DISTINCT event_id), coalesce(sum(amount), 0) FROM applied"
        ).fetchone()
        return int(row[0]), int(row[1]), int(row[2])


def ledger(store: Any) -> Ledger:
    """The factory `domainbus replay --projection eventstore_support:ledger` calls."""
    return Ledger(store.connection)


codec = CODEC  # what `domainbus replay` picks up from this module
