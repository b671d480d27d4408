"""Trace context through the outbox (SQLite and PostgreSQL, both backends): the unit of work
stores the request's traceparent with its rows, the relay's dispatch span continues that trace;
old databases get the `traceparent` column added."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from domainbus import DomainEvent
from domainbus.codec import EventCodec
from domainbus.observe import instrument
from domainbus.uow import UnitOfWork
from observe_support import Traces, traces_fixture  # noqa: F401
from outbox_support import STORES, Db, make_db


class Ordered(DomainEvent):
    n: int


CODEC = EventCodec(Ordered)


@pytest.fixture(params=STORES)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Db]:
    yield from make_db(request, tmp_path, request.param, CODEC)


def test_uow_commit_then_relay_is_one_trace(
    db: Db, make_dispatcher: Callable[..., Any], traces: Traces
) -> None:
    """The request's handler fails after the commit, so the event stays in the outbox for the
    relay: the relay's dispatch span is a child of the request's span (one trace)."""
    seen: list[int] = []
    down = [True]

    def ship(event: Ordered) -> None:
        if down[0]:
            raise ConnectionError("warehouse down")
        seen.append(event.n)

    bus = instrument(make_dispatcher(), traces.provider)
    bus.register_handler(Ordered, ship)
    connection = db.connect()
    with traces.tracer.start_as_current_span("POST /orders") as request:
        with (
            pytest.raises(ConnectionError),
            UnitOfWork(bus, connection, outbox=db.open(connection)) as uow,
        ):
            uow.record(Ordered(n=1))
    down[0] = False
    assert db.open().relay(bus).delivered == 1 and seen == [1]
    request_ctx = request.get_span_context()
    in_request, relayed = traces.spans("process Ordered")
    assert in_request.parent.span_id == request_ctx.span_id  # the uow's own dispatch
    assert relayed.context.trace_id == request_ctx.trace_id
    assert relayed.parent is not None and relayed.parent.span_id == request_ctx.span_id
    assert relayed.attributes["messaging.batch.message_count"] == 1
    (stored,) = db.rows("SELECT count(*) FROM domainbus_outbox")
    assert stored == (0,)


def test_a_batch_of_many_origins_links_each(
    db: Db, make_dispatcher: Callable[..., Any], traces: Traces
) -> None:
    bus = instrument(make_dispatcher(), traces.provider)
    bus.register_handler(Ordered, lambda e: None)
    outbox = db.open()
    origins = []
    for n in range(3):
        with traces.tracer.start_as_current_span(f"request {n}") as request:
            origins.append(request.get_span_context())
            outbox.begin()
            outbox.append([CODEC.encode(Ordered(n=n))], claimed=False,
                          traceparent=_traceparent(request))  # fmt: skip
            outbox.commit()
    outbox.begin()
    outbox.append([CODEC.encode(Ordered(n=9))], claimed=False)  # recorded without tracing
    outbox.commit()
    assert db.open().relay(bus).delivered == 4
    (span,) = traces.spans("process Ordered")
    assert span.parent is None  # a batch of many requests has no one parent: links instead
    assert [link.context.span_id for link in span.links] == [o.span_id for o in origins]
    assert {link.context.trace_id for link in span.links} == {o.trace_id for o in origins}


def test_without_tracing_nothing_is_stored(db: Db, make_dispatcher: Callable[..., Any]) -> None:
    from domainbus.observe import disable_propagation

    disable_propagation()
    connection = db.connect()
    with UnitOfWork(make_dispatcher(), connection, outbox=db.open(connection)) as uow:
        uow.record(Ordered(n=1))
    outbox = db.open()
    outbox.begin()
    outbox.append([CODEC.encode(Ordered(n=2))], claimed=False)
    outbox.commit()
    stored = db.rows("SELECT traceparent FROM domainbus_outbox")
    assert stored and all(row == (None,) for row in stored)


def test_an_old_database_gets_the_column(
    tmp_path: Path, make_dispatcher: Callable[..., Any]
) -> None:
    import sqlite3

    from domainbus.outbox import SqliteOutbox

    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(
        """CREATE TABLE domainbus_outbox (id INTEGER PRIMARY KEY, payload BLOB NOT NULL,
        claim INTEGER, claimed_at REAL, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT);"""
    )
    old.execute("INSERT INTO domainbus_outbox (payload) VALUES (?)", (CODEC.encode(Ordered(n=5)),))
    old.commit()
    old.close()
    seen: list[int] = []
    dispatcher = make_dispatcher()
    dispatcher.register_handler(Ordered, lambda e: seen.append(e.n))
    with SqliteOutbox(path, CODEC) as outbox:
        assert outbox.relay(dispatcher).delivered == 1
    assert seen == [5]
    check = sqlite3.connect(path)
    columns = [row[1] for row in check.execute("PRAGMA table_info(domainbus_outbox)")]
    check.close()
    assert columns[-1] == "traceparent"


def test_an_old_postgres_database_gets_the_column(postgres_dsn: str) -> None:
    import psycopg

    from domainbus.outbox import PostgresOutbox

    with psycopg.connect(postgres_dsn, autocommit=True) as old:
        old.execute(
            "CREATE TABLE domainbus_outbox (id bigserial PRIMARY KEY, payload bytea NOT NULL, "
            "claim bigint, owner bigint, claimed_at double precision, "
            "attempts integer NOT NULL DEFAULT 0, last_error text)"
        )
        old.execute(
            "INSERT INTO domainbus_outbox (payload) VALUES (%s)", (CODEC.encode(Ordered(n=5)),)
        )
    seen: list[int] = []
    from domainbus.pure import Dispatcher

    dispatcher = Dispatcher()
    dispatcher.register_handler(Ordered, lambda e: seen.append(e.n))
    with PostgresOutbox(postgres_dsn, CODEC) as outbox:
        assert outbox.relay(dispatcher).delivered == 1
    assert seen == [5]


def _traceparent(span: Any) -> str:
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-01"


def test_relay_async_restores_the_context_too(
    db: Db, make_dispatcher: Callable[..., Any], traces: Traces
) -> None:
    import asyncio

    seen: list[int] = []

    async def ship(event: Ordered) -> None:
        seen.append(event.n)

    bus = instrument(make_dispatcher(), traces.provider)
    bus.register_handler(Ordered, ship)
    outbox = db.open()
    with traces.tracer.start_as_current_span("request") as request:
        outbox.begin()
        outbox.append([CODEC.encode(Ordered(n=4))], claimed=False,
                      traceparent=_traceparent(request))  # fmt: skip
        outbox.commit()
    assert asyncio.run(db.open().relay_async(bus)).delivered == 1 and seen == [4]
    (span,) = traces.spans("process Ordered")
    assert span.attributes["messaging.operation.name"] == "dispatch_batch_async"
    assert span.parent is not None and span.parent.span_id == request.get_span_context().span_id
