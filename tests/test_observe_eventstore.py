"""Trace context through the event store (SQLite and PostgreSQL, both backends): an append
stores the traceparent of the code that made it, the projection runner's dispatch span
continues that trace; old databases get the `traceparent` column added."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import domainbus
import eventstore_support as support
from domainbus.eventstore import ProjectionRunner, Repository
from domainbus.observe import instrument
from eventstore_support import CODEC, Ledger, deposits
from observe_support import Traces, traces_fixture  # noqa: F401
from test_eventstore_aggregates import Account  # an aggregate of these events

store_kind, store_url_of = support.store_kind, support.store_url_of
make_store, store = support.make_store, support.store


@pytest.fixture(autouse=True)
def use_backend(backend: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(domainbus, "Dispatcher", backend.Dispatcher)


def traced_ledger(store: Any, traces: Traces) -> Ledger:
    projection = Ledger(store.connection)
    projection.dispatcher = instrument(projection.dispatcher, traces.provider)
    return projection


def stored_traceparents(store: Any) -> list[Any]:
    rows = store.connection.execute(
        "SELECT traceparent FROM domainbus_events ORDER BY position"
    ).fetchall()
    return [row[0] for row in rows]


def test_an_append_then_a_catch_up_is_one_trace(store: Any, traces: Traces) -> None:
    projection = traced_ledger(store, traces)  # turns propagation on
    with traces.tracer.start_as_current_span("POST /deposits") as request:
        store.append("acc-1", deposits(3), expected_version=0)
    request_ctx = request.get_span_context()
    assert ProjectionRunner(store, projection).catch_up() == 3
    (span,) = traces.spans("process Deposited")
    assert span.context.trace_id == request_ctx.trace_id
    assert span.parent is not None and span.parent.span_id == request_ctx.span_id
    assert span.attributes["messaging.batch.message_count"] == 3
    prefix = f"00-{request_ctx.trace_id:032x}-{request_ctx.span_id:016x}-"
    assert [t[: len(prefix)] for t in stored_traceparents(store)] == [prefix] * 3


def test_a_page_of_many_origins_links_each(store: Any, traces: Traces) -> None:
    projection = traced_ledger(store, traces)
    origins = []
    for n in range(3):
        with traces.tracer.start_as_current_span(f"request {n}") as request:
            origins.append(request.get_span_context())
            store.append(f"acc-{n}", deposits(2, f"acc-{n}"), expected_version=0)
    from domainbus.observe import disable_propagation

    disable_propagation()
    store.append("untraced", deposits(1, "untraced"), expected_version=0)
    projection.dispatcher = instrument(projection.dispatcher.dispatcher, traces.provider)
    assert ProjectionRunner(store, projection).catch_up() == 7
    (span,) = traces.spans("process Deposited")
    assert span.parent is None  # several requests: no one parent, a link to each
    assert [link.context.span_id for link in span.links] == [o.span_id for o in origins]
    assert stored_traceparents(store)[-1] is None


def test_a_repository_save_stores_the_context_of_its_caller(store: Any, traces: Traces) -> None:
    projection = traced_ledger(store, traces)
    with traces.tracer.start_as_current_span("POST /accounts") as request:
        account = Account.open("acc-9", "ada")
        account.deposit(5)
        Repository(store, Account).save(account)
    assert ProjectionRunner(store, projection).catch_up() == 2
    (span,) = traces.spans("process batch")  # Opened and Deposited
    assert span.parent is not None and span.parent.span_id == request.get_span_context().span_id


def test_without_tracing_nothing_is_stored_and_nothing_is_read(store: Any) -> None:
    from domainbus.observe import disable_propagation

    disable_propagation()
    store.append("acc-1", deposits(2), expected_version=0)
    assert stored_traceparents(store) == [None, None]
    pages = list(store.read_pages())
    assert ProjectionRunner(store, Ledger(store.connection)).catch_up() == 2
    assert pages[0].traceparents == [None, None]


def test_an_old_sqlite_database_gets_the_column(tmp_path: Path) -> None:
    import sqlite3

    from domainbus.eventstore import SqliteEventStore

    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(
        """CREATE TABLE domainbus_events (position INTEGER PRIMARY KEY,
        stream_id TEXT NOT NULL, version INTEGER NOT NULL, payload BLOB NOT NULL,
        UNIQUE (stream_id, version));"""
    )
    old.execute(
        "INSERT INTO domainbus_events (stream_id, version, payload) VALUES ('a', 1, ?)",
        (CODEC.encode(deposits(1, "a")[0]),),
    )
    old.commit()
    old.close()
    with SqliteEventStore(path, CODEC) as store:
        assert [(s.stream_id, s.version) for s in store.read_all()] == [("a", 1)]
        assert store.append("a", deposits(1, "a"), expected_version=1) == 2
        columns = [
            row[1] for row in store.connection.execute("PRAGMA table_info(domainbus_events)")
        ]
        assert columns[-1] == "traceparent"
        assert next(iter(store.read_pages())).traceparents == [None, None]


def test_an_old_postgres_database_gets_the_column(postgres_dsn: str) -> None:
    import psycopg

    from domainbus.eventstore import PostgresEventStore

    with psycopg.connect(postgres_dsn, autocommit=True) as old:
        old.execute(
            """CREATE TABLE domainbus_events (
                position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                stream_id text NOT NULL, version bigint NOT NULL, payload bytea NOT NULL,
                tx xid8 NOT NULL DEFAULT pg_current_xact_id(), UNIQUE (stream_id, version))"""
        )
        old.execute("CREATE TABLE domainbus_streams (stream_id text PRIMARY KEY, version bigint)")
        old.execute("INSERT INTO domainbus_streams VALUES ('a', 1)")
        old.execute(
            "INSERT INTO domainbus_events (stream_id, version, payload) VALUES ('a', 1, %s)",
            (CODEC.encode(deposits(1, "a")[0]),),
        )
    with PostgresEventStore(postgres_dsn, CODEC) as store:
        assert store.append("a", deposits(1, "a"), expected_version=1) == 2
        assert [(s.stream_id, s.version) for s in store.read_all()] == [("a", 1), ("a", 2)]
        assert next(iter(store.read_pages())).traceparents == [None, None]
