"""Both outbox stores (SQLite and PostgreSQL, one suite): events stored with the user's writes,
relayed at least once, never lost.

Crash safety and concurrency run real processes: one is SIGKILLed after its commit and before
dispatching, one during a relay, and several relay the same database at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec
import pytest

from domainbus import DomainEvent
from domainbus.codec import EventCodec
from domainbus.outbox import Outbox, OutboxError, RelayResult, SqliteOutbox, idempotent
from domainbus.uow import AsyncUnitOfWork, UnitOfWork
from outbox_support import STORES, Db, execute, make_db


class Registered(DomainEvent):
    n: int


class Welcomed(DomainEvent):
    n: int


class Unknown(DomainEvent):
    n: int


CODEC = EventCodec(Registered, Welcomed)


@pytest.fixture(params=STORES)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Db]:
    """The database of the store under test: SQLite on a file, or PostgreSQL on a real server."""
    yield from make_db(request, tmp_path, request.param, CODEC)


@pytest.fixture
def pg(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Db]:
    """A PostgreSQL database, for what only PostgreSQL has."""
    yield from make_db(request, tmp_path, "postgres", CODEC)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "app.db"


@pytest.fixture
def outbox(db: Db) -> Outbox:
    box = db.open()
    db.execute("CREATE TABLE users (n INTEGER PRIMARY KEY)")
    db.execute("CREATE TABLE handled (n INTEGER, pid INTEGER)")
    return box


def store_free(outbox: Outbox, events: Iterable[Any]) -> None:
    """Put rows in the outbox as a crashed process would leave them: stored, unclaimed."""
    outbox.begin()
    outbox.append([CODEC.encode(e) for e in events], claimed=False)
    outbox.commit()


def numbers(log: list[Any]) -> list[int]:
    return [event.n for event in log]


# -- the unit of work with an outbox ---------------------------------------------------------


def test_events_are_stored_with_the_writes_and_delivered(
    backend: ModuleType, outbox: Outbox, db: Db
) -> None:
    dispatcher = backend.Dispatcher()
    log: list[Any] = []
    dispatcher.register_handler(Registered, log.append)
    with UnitOfWork(dispatcher, outbox=outbox) as uow:
        execute(outbox, db, "INSERT INTO users VALUES (1)")
        uow.record(Registered(n=1))
        uow.record(Registered(n=2))
        assert outbox.pending() == 0  # stored at commit, in the same transaction
    assert numbers(log) == [1, 2]
    assert outbox.pending() == 2  # delivered; deleted with the next commit
    outbox.flush()
    assert outbox.pending() == 0


def test_rollback_stores_nothing(backend: ModuleType, outbox: Outbox, db: Db) -> None:
    dispatcher = backend.Dispatcher()
    log: list[Any] = []
    dispatcher.register_handler(Registered, log.append)
    with pytest.raises(ValueError, match="boom"), UnitOfWork(dispatcher, outbox=outbox) as uow:
        execute(outbox, db, "INSERT INTO users VALUES (1)")
        uow.record(Registered(n=1))
        raise ValueError("boom")
    assert log == []
    assert outbox.pending() == 0
    assert db.count("SELECT count(*) FROM users") == 0


def test_an_event_the_codec_cannot_encode_rolls_back(
    backend: ModuleType, outbox: Outbox, db: Db
) -> None:
    with pytest.raises(TypeError, match="cannot encode events of type Unknown"):
        with UnitOfWork(backend.Dispatcher(), outbox=outbox) as uow:
            execute(outbox, db, "INSERT INTO users VALUES (1)")
            uow.record(Unknown(n=1))
    assert db.count("SELECT count(*) FROM users") == 0
    assert outbox.pending() == 0


def test_delivered_rows_are_deleted_by_the_next_unit_of_work(
    backend: ModuleType, outbox: Outbox
) -> None:
    dispatcher = backend.Dispatcher()
    dispatcher.register_handler(Registered, lambda e: None)
    for n in range(5):
        with UnitOfWork(dispatcher, outbox=outbox) as uow:
            uow.record(Registered(n=n))
        assert outbox.pending() == 1


def test_nested_events_are_stored_and_delivered_fifo(backend: ModuleType, outbox: Outbox) -> None:
    dispatcher = backend.Dispatcher()
    log: list[str] = []
    uow = UnitOfWork(dispatcher, outbox=outbox)

    def on_registered(event: Registered) -> None:
        log.append(f"registered {event.n}")
        assert outbox.pending() == 2  # the committed round is stored
        uow.record(Welcomed(n=event.n))

    dispatcher.register_handler(Registered, on_registered)
    dispatcher.register_handler(Welcomed, lambda e: log.append(f"welcomed {e.n}"))
    with uow:
        uow.record(Registered(n=1))
        uow.record(Registered(n=2))
    assert log == ["registered 1", "registered 2", "welcomed 1", "welcomed 2"]
    outbox.flush()
    assert outbox.pending() == 0


def test_handler_failure_leaves_the_event_for_the_relay(
    backend: ModuleType, outbox: Outbox, db: Db
) -> None:
    dispatcher = backend.Dispatcher()
    log: list[Any] = []
    broken = [True]

    def flaky(event: Registered) -> None:
        if broken[0] and event.n == 2:
            raise RuntimeError("mail server down")
        log.append(event)

    dispatcher.register_handler(Registered, flaky)
    with pytest.raises(RuntimeError, match="mail server down") as info:
        with UnitOfWork(dispatcher, outbox=outbox) as uow:
            execute(outbox, db, "INSERT INTO users VALUES (1)")
            for n in (1, 2, 3):
                uow.record(Registered(n=n))
    notes = "\n".join(info.value.__notes__)
    assert "the unit of work was committed" in notes
    assert "stays in the outbox" in notes
    assert db.count("SELECT count(*) FROM users") == 1
    assert numbers(log) == [1]
    assert outbox.pending() == 2  # 2 (failed once) and 3 (never dispatched)
    assert db.count("SELECT max(attempts) FROM domainbus_outbox") == 1
    broken[0] = False
    assert outbox.relay(dispatcher) == RelayResult(delivered=2)
    assert numbers(log) == [1, 2, 3]


def test_live_claims_are_not_relayed_by_another_outbox(
    backend: ModuleType, outbox: Outbox, db: Db
) -> None:
    """While one unit of work delivers its events, another process's relay leaves them be."""
    other = db.open()
    dispatcher = backend.Dispatcher()
    results: list[RelayResult] = []
    dispatcher.register_handler(Registered, lambda e: results.append(other.relay(dispatcher)))
    with UnitOfWork(dispatcher, outbox=outbox) as uow:
        uow.record(Registered(n=1))
    assert results == [RelayResult()]
    assert other.relay(dispatcher) == RelayResult()  # delivered, held until the next commit


def wait_until_swept(db: Db, seconds: float = 30) -> float:
    """Seconds until the outbox table is empty (counted through the test's own connection)."""
    start = time.monotonic()
    while db.count("SELECT count(*) FROM domainbus_outbox"):
        assert time.monotonic() - start < seconds, "the delivered rows were never deleted"
        time.sleep(0.01)
    return time.monotonic() - start


def test_delivered_rows_no_commit_takes_are_swept_before_the_lease(
    backend: ModuleType, db: Db
) -> None:
    """A unit of work's delivered rows wait for the outbox's next commit; when none comes, the
    sweeper deletes them, so that no relay takes them for abandoned once the lease is over."""
    outbox = db.open(lease=0.4)
    assert outbox.sweep_after == pytest.approx(0.1)
    log: list[Any] = []
    dispatcher = backend.Dispatcher()
    dispatcher.register_handler(Registered, log.append)
    with UnitOfWork(dispatcher, outbox=outbox) as uow:
        uow.record(Registered(n=1))
    assert numbers(log) == [1]
    wait_until_swept(db)
    time.sleep(0.5)  # past the lease
    assert db.open(lease=0.4).relay(dispatcher) == RelayResult()
    assert numbers(log) == [1]


def test_the_sweeper_waits_while_the_connection_is_in_use(backend: ModuleType, db: Db) -> None:
    """The user's connection in a transaction (PostgreSQL: the outbox's own connection is not
    idle; SQLite: another writer holds the lock): the rows stay until it ends."""
    connection = db.connect()
    outbox = db.open(connection, lease=0.2)
    dispatcher = backend.Dispatcher()
    dispatcher.register_handler(Registered, lambda event: None)
    with UnitOfWork(dispatcher, connection, outbox=outbox) as uow:
        uow.record(Registered(n=1))
    if db.kind == "postgres":
        connection.execute("SELECT 1")  # psycopg opens a transaction
    else:
        connection.execute("BEGIN IMMEDIATE")
    time.sleep(0.5)
    assert db.count("SELECT count(*) FROM domainbus_outbox") == 1
    connection.rollback()
    wait_until_swept(db)


def test_delivered_rows_are_deleted_at_exit(backend: ModuleType, db: Db, tmp_path: Path) -> None:
    """A process that ends without closing its outbox deletes what it delivered: on PostgreSQL
    its session's end would otherwise free the rows for every relay at once."""
    child = spawn(
        tmp_path,
        backend,
        db,
        """
        dispatcher.register_handler(Registered, lambda event: print("handled", event.n))
        with UnitOfWork(dispatcher, outbox=outbox) as uow:
            uow.record(Registered(n=7))
        """,
    )
    returncode, output = finish(child)
    assert returncode == 0, output
    assert "handled 7" in output
    assert db.count("SELECT count(*) FROM domainbus_outbox") == 0


def test_a_round_whose_handlers_wrote_goes_back_whole(backend: ModuleType, db: Db) -> None:
    """Handler writes through the connection and the round's delivery commit together."""
    connection = db.connect()  # a handler's INSERT opens a transaction
    outbox = db.open(connection)
    db.execute("CREATE TABLE seen (n INTEGER)")
    dispatcher = backend.Dispatcher()
    insert = db.sql("INSERT INTO seen VALUES (?)")

    def handler(event: Registered) -> None:
        connection.execute(insert, (event.n,))
        if event.n == 2:
            raise RuntimeError("second fails")

    dispatcher.register_handler(Registered, handler)
    with pytest.raises(RuntimeError, match="second fails"):
        with UnitOfWork(dispatcher, connection, outbox=outbox) as uow:
            uow.record(Registered(n=1))
            uow.record(Registered(n=2))
    assert db.count("SELECT count(*) FROM seen") == 0
    assert outbox.pending() == 2
    dispatcher.clear()
    dispatcher.register_handler(Registered, lambda e: connection.execute(insert, (e.n,)))
    assert outbox.relay(dispatcher) == RelayResult(delivered=2)
    assert db.count("SELECT count(*) FROM seen") == 2


def test_nested_events_of_a_failing_round(backend: ModuleType, outbox: Outbox) -> None:
    """Follow-ups recorded before the failure are kept; the failing handler's are dropped."""
    dispatcher = backend.Dispatcher()
    uow = UnitOfWork(dispatcher, outbox=outbox)
    welcomed: list[int] = []

    def on_registered(event: Registered) -> None:
        uow.record(Welcomed(n=event.n))
        if event.n == 2:
            raise RuntimeError("fails after recording")

    dispatcher.register_handler(Registered, on_registered)
    dispatcher.register_handler(Welcomed, lambda e: welcomed.append(e.n))
    with pytest.raises(RuntimeError, match="fails after recording"), uow:
        for n in (1, 2, 3):
            uow.record(Registered(n=n))
    assert welcomed == []  # the round failed before its follow-ups were dispatched
    dispatcher.clear()
    log: list[Any] = []
    dispatcher.register_handler(DomainEvent, log.append)
    assert outbox.relay(dispatcher) == RelayResult(delivered=3)  # Registered 2 and 3, Welcomed 1
    assert sorted((type(e).__name__, e.n) for e in log) == [
        ("Registered", 2),
        ("Registered", 3),
        ("Welcomed", 1),
    ]


def test_large_units_of_work_are_stored_in_chunks(backend: ModuleType, outbox: Outbox) -> None:
    dispatcher = backend.Dispatcher()
    log: list[Any] = []
    dispatcher.register_handler(Registered, log.append)
    with UnitOfWork(dispatcher, outbox=outbox) as uow:
        for n in range(2500):
            uow.record(Registered(n=n))
    assert numbers(log) == list(range(2500))
    outbox.flush()
    assert outbox.pending() == 0


def test_an_abandoned_claim_is_relayed_after_the_lease(
    backend: ModuleType, outbox: Outbox, db: Db
) -> None:
    """Rows a unit of work claimed are free for another outbox once the lease has run out."""
    dispatcher = backend.Dispatcher()
    outbox.begin()
    outbox.append([CODEC.encode(Registered(n=1))])  # claimed, as by a process that then died
    outbox.commit()
    patient = db.open(lease=3600)
    assert patient.relay(dispatcher) == RelayResult()
    hasty = db.open(lease=0)
    log: list[Any] = []
    dispatcher.register_handler(Registered, log.append)
    assert hasty.relay(dispatcher) == RelayResult(delivered=1)
    assert numbers(log) == [1]


def test_rows_taken_over_are_settled_by_their_new_owner_only(
    backend: ModuleType, outbox: Outbox, db: Db
) -> None:
    """Once a relay takes a unit of work's row over, the unit of work no longer deletes it, so
    its id cannot be reused under the relay's claim (which would lose the new row)."""
    dispatcher = backend.Dispatcher()
    log: list[Any] = []
    dispatcher.register_handler(Registered, log.append)
    with UnitOfWork(dispatcher, outbox=outbox) as uow:
        uow.record(Registered(n=1))  # delivered; its row is deleted with the next commit
    hasty = db.open(lease=0)  # takes the row over at once
    relay_dispatcher = backend.Dispatcher()

    def meanwhile(event: Registered) -> None:
        log.append(event)
        if event.n == 1:
            outbox.flush()  # the unit of work's deferred delete: must leave the row alone
            store_free(outbox, [Registered(n=2)])  # a new row (id 1 again, had it been deleted)

    relay_dispatcher.register_handler(Registered, meanwhile)
    assert hasty.relay(relay_dispatcher) == RelayResult(delivered=2)
    assert numbers(log) == [1, 1, 2]  # at least once: the taken-over event came twice
    assert outbox.pending() == 0


def test_async_unit_of_work_with_the_outbox(backend: ModuleType, outbox: Outbox, db: Db) -> None:
    """Stored with the writes, delivered with dispatch_async; a cancelled dispatch leaves the
    rest to the relay, without counting a failed attempt."""
    dispatcher = backend.Dispatcher()
    log: list[int] = []

    async def handler(event: Registered) -> None:
        log.append(event.n)
        if event.n == 2:
            await asyncio.sleep(3600)  # cancelled below

    dispatcher.register_handler(Registered, handler)

    async def main() -> None:
        async with AsyncUnitOfWork(dispatcher, outbox=outbox) as uow:
            execute(outbox, db, "INSERT INTO users VALUES (1)")
            for n in (1, 2, 3):
                uow.record(Registered(n=n))

    async def cancel_it() -> None:
        task = asyncio.create_task(main())
        while 2 not in log:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_it())
    assert log == [1, 2]
    assert db.count("SELECT count(*) FROM users") == 1
    assert outbox.pending() == 2
    assert db.count("SELECT sum(attempts) FROM domainbus_outbox") == 0
    dispatcher.clear()
    dispatcher.register_handler(Registered, lambda e: log.append(e.n))
    assert outbox.relay(dispatcher) == RelayResult(delivered=2)
    assert log == [1, 2, 2, 3]


# -- relaying --------------------------------------------------------------------------------


class SpyDispatcher:
    """Delegates to a real dispatcher and records the size of each dispatch_batch call."""

    on_error = "raise"

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.batches: list[int] = []

    def dispatch(self, event: object) -> int:
        return int(self.inner.dispatch(event))

    def dispatch_batch(self, events: Iterable[object]) -> int:
        batch = list(events)
        self.batches.append(len(batch))
        return int(self.inner.dispatch_batch(batch))


def test_relay_delivers_in_order_in_batches(backend: ModuleType, outbox: Outbox) -> None:
    store_free(outbox, [Registered(n=n) for n in range(25)])
    dispatcher = backend.Dispatcher()
    log: list[Any] = []
    dispatcher.register_handler(Registered, log.append)
    spy = SpyDispatcher(dispatcher)
    assert outbox.relay(spy, batch_size=10) == RelayResult(delivered=25)
    assert spy.batches == [10, 10, 5]
    assert numbers(log) == list(range(25))
    assert outbox.pending() == 0
    assert outbox.relay(spy) == RelayResult()


def test_corrupt_rows_go_to_the_dead_letter_table(
    backend: ModuleType, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    dispatcher = backend.Dispatcher()
    log: list[Any] = []
    dispatcher.register_handler(Registered, log.append)
    outbox.begin()
    outbox.append([CODEC.encode(Registered(n=1))], claimed=False)
    garbage = outbox.append([b"\xc1"], claimed=False).ids[0]
    wrong = outbox.append([msgspec.msgpack.encode({"type": "Nope"})], claimed=False).ids[0]
    outbox.append([CODEC.encode(Registered(n=2))], claimed=False)
    outbox.commit()
    with caplog.at_level(logging.ERROR, logger="domainbus.outbox"):
        result = outbox.relay(dispatcher)
    assert result == RelayResult(delivered=2, dead_lettered=(garbage, wrong))
    assert numbers(log) == [1, 2]
    assert f"outbox row {garbage} moved to the dead-letter table" in caplog.text
    assert f"outbox row {wrong} moved to the dead-letter table" in caplog.text
    letters = outbox.dead_letters()
    assert [(d.outbox_id, d.payload[:1]) for d in letters] == [(garbage, b"\xc1"), (wrong, b"\x81")]
    assert "undecodable" in letters[0].error
    assert "unknown-tag" in letters[1].error
    assert outbox.pending() == 0
    assert outbox.relay(dispatcher) == RelayResult()  # no crash loop
    assert outbox.requeue([d.id for d in letters]) == 2
    assert outbox.dead_letters() == []
    assert len(outbox.relay(dispatcher).dead_lettered) == 2  # still corrupt


def test_failing_handler_retries_then_dead_letters(backend: ModuleType, db: Db) -> None:
    outbox = db.open(max_attempts=2)
    store_free(outbox, [Registered(n=n) for n in range(5)])
    dispatcher = backend.Dispatcher()
    log: list[int] = []

    def handler(event: Registered) -> None:
        log.append(event.n)
        if event.n == 2:
            raise RuntimeError("poison")

    dispatcher.register_handler(Registered, handler)
    with pytest.raises(RuntimeError, match="poison") as first:
        outbox.relay(dispatcher)
    assert "which stays pending; 2 other event(s) of the batch were delivered" in "\n".join(
        first.value.__notes__
    )
    assert log == [0, 1, 2]
    assert outbox.pending() == 3
    with pytest.raises(RuntimeError, match="poison") as second:
        outbox.relay(dispatcher)
    assert "moved to the dead-letter table" in "\n".join(second.value.__notes__)
    assert outbox.relay(dispatcher) == RelayResult(delivered=2)
    assert log == [0, 1, 2, 2, 3, 4]
    [letter] = outbox.dead_letters()
    assert letter.attempts == 2
    assert "RuntimeError: poison (failed 2 times)" in letter.error


def test_failure_rolls_back_handler_writes_and_releases_the_batch(
    backend: ModuleType, db: Db
) -> None:
    connection = db.connect()  # the INSERT opens a transaction
    outbox = db.open(connection)
    db.execute("CREATE TABLE seen (n INTEGER)")
    store_free(outbox, [Registered(n=n) for n in range(4)])
    dispatcher = backend.Dispatcher()
    insert = db.sql("INSERT INTO seen VALUES (?)")

    def handler(event: Registered) -> None:
        connection.execute(insert, (event.n,))
        if event.n == 2:
            raise RuntimeError("half way")

    dispatcher.register_handler(Registered, handler)
    with pytest.raises(RuntimeError, match="half way"):
        outbox.relay(dispatcher)
    assert db.count("SELECT count(*) FROM seen") == 0
    assert outbox.pending() == 4
    dispatcher.clear()
    dispatcher.register_handler(Registered, lambda e: connection.execute(insert, (e.n,)))
    assert outbox.relay(dispatcher) == RelayResult(delivered=4)
    assert db.count("SELECT count(*) FROM seen") == 4  # committed with the delivery


def test_a_failing_batch_whose_handlers_wrote_counts_its_attempt(
    backend: ModuleType, pg: Db
) -> None:
    """PostgreSQL: the handlers' writes are rolled back to the batch's savepoint while its rows
    stay locked (another relay meanwhile finds nothing), and the failing row's attempt counts."""
    db = pg
    connection = db.connect()
    outbox = db.open(connection)
    other = db.open()
    db.execute("CREATE TABLE seen (n INTEGER)")
    store_free(outbox, [Registered(n=n) for n in range(3)])
    dispatcher = backend.Dispatcher()
    insert = db.sql("INSERT INTO seen VALUES (?)")
    meanwhile: list[RelayResult] = []

    def handler(event: Registered) -> None:
        connection.execute(insert, (event.n,))
        if event.n == 1:
            meanwhile.append(other.relay(backend.Dispatcher()))
            raise RuntimeError("second fails")

    dispatcher.register_handler(Registered, handler)
    with pytest.raises(RuntimeError, match="second fails"):
        outbox.relay(dispatcher)
    assert meanwhile == [RelayResult()]
    assert db.count("SELECT count(*) FROM seen") == 0
    assert outbox.pending() == 3
    assert db.rows("SELECT id, attempts FROM domainbus_outbox ORDER BY id")[1][1] == 1
    assert db.count("SELECT sum(attempts) FROM domainbus_outbox") == 1


def test_collect_mode_counts_each_failing_row(backend: ModuleType, outbox: Outbox, db: Db) -> None:
    store_free(outbox, [Registered(n=n) for n in range(5)])
    dispatcher = backend.Dispatcher(on_error="collect")
    log: list[int] = []

    def handler(event: Registered) -> None:
        log.append(event.n)
        if event.n in (1, 3):
            raise RuntimeError(f"bad {event.n}")

    dispatcher.register_handler(Registered, handler)
    with pytest.raises(ExceptionGroup) as info:
        outbox.relay(dispatcher)
    assert len(info.value.exceptions) == 2
    assert log == [0, 1, 2, 3, 4]
    assert outbox.pending() == 2
    assert db.count("SELECT sum(attempts) FROM domainbus_outbox") == 2


def test_relay_async_awaits_coroutine_handlers(backend: ModuleType, outbox: Outbox) -> None:
    store_free(outbox, [Registered(n=n) for n in range(25)])
    dispatcher = backend.Dispatcher()
    log: list[int] = []

    async def handler(event: Registered) -> None:
        await asyncio.sleep(0)
        if event.n == 12 and 12 not in log:
            log.append(event.n)
            raise RuntimeError("once")
        log.append(event.n)

    dispatcher.register_handler(Registered, handler)
    with pytest.raises(RuntimeError, match="once") as info:
        asyncio.run(outbox.relay_async(dispatcher, batch_size=10))
    assert "which stays pending; 2 other event(s)" in "\n".join(info.value.__notes__)
    assert outbox.pending() == 13
    result = asyncio.run(outbox.relay_async(dispatcher, batch_size=10))
    assert result == RelayResult(delivered=13)
    assert log == [*range(13), *range(12, 25)]


def test_relay_checks_its_arguments(backend: ModuleType, outbox: Outbox) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        outbox.relay(backend.Dispatcher(), batch_size=0)
    with pytest.raises(TypeError, match="dispatch_batch"):
        outbox.relay(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="dispatch_batch_async"):
        asyncio.run(outbox.relay_async(object()))  # type: ignore[arg-type]


# -- idempotent handlers ---------------------------------------------------------------------


def test_idempotent_runs_once_per_event(backend: ModuleType, outbox: Outbox) -> None:
    dispatcher = backend.Dispatcher()
    calls: list[int] = []

    def remember(event: Registered) -> None:
        calls.append(event.n)

    dispatcher.register_handler(Registered, idempotent(remember, outbox))
    dispatcher.register_handler(Registered, idempotent(remember, outbox, key="second-consumer"))
    event = Registered(n=7)
    dispatcher.dispatch(event)
    dispatcher.dispatch(event)
    dispatcher.dispatch(Registered(n=8))
    assert calls == [7, 7, 8, 8]


def test_idempotent_failure_records_nothing(backend: ModuleType, outbox: Outbox, db: Db) -> None:
    """The handler's writes and the record commit or roll back together."""
    attempts: list[int] = []

    def write_then_fail(event: Registered) -> None:
        execute(outbox, db, "INSERT INTO handled VALUES (?, 0)", (event.n,))
        attempts.append(event.n)
        if len(attempts) == 1:
            raise RuntimeError("first try fails")

    handler = idempotent(write_then_fail, outbox, key="writer")
    event = Registered(n=1)
    with pytest.raises(RuntimeError, match="first try"):
        handler(event)
    assert db.count("SELECT count(*) FROM handled") == 0
    handler(event)
    handler(event)
    assert attempts == [1, 1]
    assert db.count("SELECT count(*) FROM handled") == 1


def test_idempotent_rejects_what_it_cannot_key(outbox: Outbox) -> None:
    with pytest.raises(ValueError, match="pass key="):
        idempotent(lambda e: None, outbox)
    with pytest.raises(TypeError, match="synchronous"):

        async def handler(event: object) -> None: ...

        idempotent(handler, outbox)
    with pytest.raises(TypeError, match="run_once"):
        idempotent(print, object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"uuid\.UUID event_id"):
        idempotent(print, outbox)(object())


# -- the store's API -----------------------------------------------------------------------


def test_append_checks_its_argument(outbox: Outbox) -> None:
    """A str (or one bytes object) is not a list of payloads: no row per character."""
    outbox.begin()
    with pytest.raises(TypeError, match="not a str; wrap a single payload in a list"):
        outbox.append("some text")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not a bytes; wrap"):
        outbox.append(CODEC.encode(Registered(n=1)))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"outbox\.encode\(event\)\), not str"):
        outbox.append([CODEC.encode(Registered(n=1)), "x"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="not Registered"):
        outbox.append([Registered(n=1)])  # type: ignore[list-item]
    outbox.commit()
    assert outbox.pending() == 0


def test_prune_processed_forgets_old_records_only(
    backend: ModuleType, outbox: Outbox, db: Db
) -> None:
    calls: list[int] = []
    handler = idempotent(lambda e: calls.append(e.n), outbox, key="k")
    event = Registered(n=1)
    handler(event)
    assert outbox.prune_processed(3600) == 0  # recorded a moment ago: kept
    handler(event)
    assert calls == [1]
    assert db.count("SELECT count(*) FROM domainbus_processed") == 1
    time.sleep(0.01)
    assert outbox.prune_processed(0) == 1
    handler(event)  # forgotten: a redelivery now runs again
    assert calls == [1, 1]
    with pytest.raises(ValueError, match="older_than"):
        outbox.prune_processed(-1)


def test_wait_returns_on_a_commit_from_elsewhere(outbox: Outbox, db: Db) -> None:
    listener = db.open()
    assert listener.wait(0) is False
    store_free(outbox, [Registered(n=1)])
    assert listener.wait(60) is True  # the commit wakes it long before the timeout
    with pytest.raises(ValueError, match="timeout"):
        listener.wait(-1)


def test_serve_delivers_what_commits_announce(backend: ModuleType, outbox: Outbox, db: Db) -> None:
    """A serving relay wakes on the commit (NOTIFY on PostgreSQL, data_version on SQLite): with a
    poll interval of an hour, only the wake-up can deliver within the test's wait."""
    dispatcher = backend.Dispatcher()
    got: list[int] = []
    arrived = threading.Event()

    def handler(event: Registered) -> None:
        got.append(event.n)
        if len(got) == 3:
            arrived.set()

    dispatcher.register_handler(Registered, handler)
    stop = threading.Event()
    results: list[RelayResult] = []
    ready = threading.Event()

    def serve() -> None:
        server = db.open()  # in its thread: a sqlite3 connection stays on its own thread
        ready.set()
        results.append(server.serve(dispatcher, poll_interval=3600, stop=stop))

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        assert ready.wait(30)
        store_free(outbox, [Registered(n=1), Registered(n=2)])
        store_free(outbox, [Registered(n=3)])
        assert arrived.wait(30), "the commit did not wake the relay"
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert sorted(got) == [1, 2, 3]
    assert results == [RelayResult(delivered=3)]


# -- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize("level", ["NORMAL", "FULL"])
def test_sqlite_wal_busy_timeout_and_synchronous_are_set(path: Path, level: Any) -> None:
    with SqliteOutbox(path, CODEC, synchronous=level, busy_timeout=2.5) as outbox:
        assert outbox.journal_mode == "wal"
        assert outbox.synchronous == level
        assert outbox.connection.execute("PRAGMA busy_timeout").fetchone()[0] == 2500


def test_sqlite_bad_settings_are_reported(path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous must be one of"):
        SqliteOutbox(path, CODEC, synchronous="OFF")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_attempts"):
        SqliteOutbox(path, CODEC, max_attempts=0)
    with pytest.raises(TypeError, match="EventCodec"):
        SqliteOutbox(path, object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"path or a sqlite3\.Connection"):
        SqliteOutbox(42, CODEC)  # type: ignore[arg-type]
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE t (x)")
    connection.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(OutboxError, match="open transaction"):
        SqliteOutbox(connection, CODEC)
    connection.close()


def test_postgres_settings(pg: Db) -> None:
    import psycopg

    from domainbus.outbox import PostgresOutbox

    assert pg.open().synchronous_commit == "on"  # the default, set explicitly
    assert pg.open(synchronous_commit="off").synchronous_commit == "off"
    sqlalchemy_url = pg.target.replace("postgresql://", "postgresql+psycopg://")
    assert PostgresOutbox(sqlalchemy_url, CODEC).pending() == 0
    with pytest.raises(ValueError, match="synchronous_commit must be one of"):
        pg.open(synchronous_commit="maybe")
    with pytest.raises(ValueError, match="max_attempts"):
        pg.open(max_attempts=0)
    with pytest.raises(ValueError, match="lease"):
        pg.open(lease=-1)
    with pytest.raises(TypeError, match="EventCodec"):
        PostgresOutbox(pg.target, object())
    with pytest.raises(TypeError, match="connection string or a psycopg Connection"):
        PostgresOutbox(42, CODEC)
    connection = pg.connect()
    connection.execute("SELECT 1")  # autocommit off: a transaction is open
    with pytest.raises(OutboxError, match="open transaction"):
        PostgresOutbox(connection, CODEC)
    connection.rollback()
    box = PostgresOutbox(connection, CODEC)
    assert connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert box.pending() == 0
    assert connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_postgres_connection_with_another_row_factory(backend: ModuleType, pg: Db) -> None:
    """A user's `dict_row` connection: the outbox reads its own rows as tuples all the same."""
    import psycopg
    from psycopg.rows import dict_row

    connection = psycopg.connect(pg.target, row_factory=dict_row)
    outbox = pg.open(connection)
    log: list[Any] = []
    dispatcher = backend.Dispatcher()
    dispatcher.register_handler(Registered, log.append)
    with UnitOfWork(dispatcher, connection, outbox=outbox) as uow:
        uow.record(Registered(n=1))
    store_free(outbox, [Registered(n=2)])
    assert outbox.relay(dispatcher) == RelayResult(delivered=1)
    assert numbers(log) == [1, 2]
    assert outbox.synchronous_commit == "on"
    outbox.flush()
    assert outbox.pending() == 0
    assert connection.execute("SELECT 1 AS one").fetchone() == {"one": 1}
    connection.close()


def test_postgres_tables_are_created_once_under_concurrency(pg: Db) -> None:
    """Concurrent CREATE TABLE IF NOT EXISTS can fail: set-up is serialised by a lock."""
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            pg.open()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


# -- crashes and concurrent relays, in real processes ----------------------------------------

PRELUDE = """
import importlib, os, random, signal, sys, time
from domainbus import DomainEvent
from domainbus.codec import EventCodec
from domainbus.outbox import SqliteOutbox, idempotent
from domainbus.uow import AsyncUnitOfWork, UnitOfWork

backend = importlib.import_module(sys.argv[1])
target = sys.argv[2]
POSTGRES = target.startswith("postgresql://")


class Registered(DomainEvent):
    n: int


class Welcomed(DomainEvent):
    n: int


def q(statement):
    return statement.replace("?", "%s") if POSTGRES else statement


def open_outbox(connection=None):
    codec = EventCodec(Registered, Welcomed)
    if POSTGRES:
        from domainbus.outbox import PostgresOutbox

        return PostgresOutbox(connection or target, codec)
    return SqliteOutbox(connection or target, codec)


outbox = open_outbox()
dispatcher = backend.Dispatcher()
if POSTGRES:  # the parent waits for this session to end after the kill
    print("backend", outbox.connection.info.backend_pid, flush=True)


def kill_myself():
    os.kill(os.getpid(), signal.SIGKILL)
"""


def spawn(tmp_path: Path, backend: ModuleType, db: Db, body: str, *args: str) -> Any:
    script = tmp_path / f"child_{time.monotonic_ns()}.py"
    script.write_text(PRELUDE + textwrap.dedent(body))
    command = [sys.executable, str(script), backend.__name__, db.target, *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: Any) -> tuple[int, str]:
    out, err = process.communicate(timeout=300)
    return process.returncode, out + err


def killed(db: Db, process: Any) -> str:
    """Wait for a child that kills itself; on PostgreSQL, until its server session is gone too
    (a killed client's session ends as soon as the server sees the socket close)."""
    returncode, output = finish(process)
    assert returncode == -signal.SIGKILL, output
    if db.kind == "postgres":
        pid = int(output.split("backend ", 1)[1].split()[0])
        deadline = time.monotonic() + 30
        while db.count("SELECT count(*) FROM pg_stat_activity WHERE pid = ?", (pid,)):
            assert time.monotonic() < deadline, "the killed client's session did not end"
            time.sleep(0.01)
    return output


def exactly_once_handler(outbox: Outbox, db: Db) -> Any:
    """An idempotent handler writing one row per event through the outbox's connection."""
    insert = db.sql("INSERT INTO handled VALUES (?, ?)")

    def handle(event: Registered) -> None:
        outbox.connection.execute(insert, (event.n, os.getpid()))

    return idempotent(handle, outbox, key="handle")


def assert_each_handled_once(outbox: Outbox, db: Db, total: int) -> None:
    assert db.count("SELECT count(*) FROM handled") == total
    assert db.count("SELECT count(DISTINCT n) FROM handled") == total
    assert outbox.pending() == 0
    assert outbox.dead_letters() == []


def recover(outbox: Outbox, db: Db, dispatcher: Any) -> RelayResult:
    """What a restarted process does: relay. SQLite must take the dead claims over (or wait
    for the lease); PostgreSQL sees that their owner's session is gone and needs neither."""
    return outbox.relay(dispatcher, take_over=db.kind == "sqlite")


def test_killed_after_commit_before_dispatch(
    backend: ModuleType, outbox: Outbox, db: Db, tmp_path: Path
) -> None:
    total = 50
    child = spawn(
        tmp_path,
        backend,
        db,
        f"""
        dispatcher.register_handler(Registered, lambda event: kill_myself())
        with UnitOfWork(dispatcher, outbox=outbox) as uow:
            outbox.connection.execute("INSERT INTO users VALUES (1)")
            for n in range({total}):
                uow.record(Registered(n=n))
        """,
    )
    killed(db, child)
    assert db.count("SELECT count(*) FROM users") == 1
    assert outbox.pending() == total
    dispatcher = backend.Dispatcher()
    dispatcher.register_handler(Registered, exactly_once_handler(outbox, db))
    if db.kind == "sqlite":
        assert outbox.relay(dispatcher) == RelayResult()  # still claimed: the lease runs
    assert recover(outbox, db, dispatcher) == RelayResult(delivered=total)
    assert recover(outbox, db, dispatcher) == RelayResult()
    assert_each_handled_once(outbox, db, total)


def test_killed_between_commit_and_relay_20_times(
    backend: ModuleType, outbox: Outbox, db: Db, tmp_path: Path
) -> None:
    """20 processes each commit a user row and 5 events, then die by SIGKILL somewhere between
    the commit and the end of their own dispatch (before it, or after 0-4 events handled); after
    each, a relay recovers. Every committed event reaches the idempotent handler exactly once."""
    per_run, runs = 5, 20
    for run in range(runs):
        kill_at = run % (per_run + 1) - 1  # -1: before any handler ran
        child = spawn(
            tmp_path,
            backend,
            db,
            f"""
            insert = q("INSERT INTO handled VALUES (?, ?)")

            def handle(event):
                outbox.connection.execute(insert, (event.n, os.getpid()))

            def maybe_die(event):
                if event.n % {per_run} == {kill_at}:
                    kill_myself()

            if {kill_at} < 0:
                dispatcher.register_handler(Registered, lambda event: kill_myself())
            dispatcher.register_handler(Registered, idempotent(handle, outbox, key="handle"))
            dispatcher.register_handler(Registered, maybe_die)
            with UnitOfWork(dispatcher, outbox=outbox) as uow:
                outbox.connection.execute(q("INSERT INTO users VALUES (?)"), ({run},))
                for n in range({run * per_run}, {(run + 1) * per_run}):
                    uow.record(Registered(n=n))
            """,
        )
        killed(db, child)
        assert db.count("SELECT count(*) FROM handled") == run * per_run + kill_at + 1
        dispatcher = backend.Dispatcher()
        dispatcher.register_handler(Registered, exactly_once_handler(outbox, db))
        assert recover(outbox, db, dispatcher) == RelayResult(delivered=per_run)
    assert db.count("SELECT count(*) FROM users") == runs
    assert_each_handled_once(outbox, db, runs * per_run)


def test_killed_during_relay(backend: ModuleType, outbox: Outbox, db: Db, tmp_path: Path) -> None:
    total, kill_at = 100, 35
    store_free(outbox, [Registered(n=n) for n in range(total)])
    child = spawn(
        tmp_path,
        backend,
        db,
        f"""
        handled = []
        insert = q("INSERT INTO handled VALUES (?, ?)")

        def handle(event):
            outbox.connection.execute(insert, (event.n, os.getpid()))
            handled.append(event.n)
            if len(handled) == {kill_at}:
                kill_myself()  # inside the handler's transaction: its row is rolled back

        dispatcher.register_handler(Registered, idempotent(handle, outbox, key="handle"))
        outbox.relay(dispatcher, batch_size=10)
        """,
    )
    killed(db, child)
    # SQLite commits each idempotent run on its own (the claim committed before the dispatch);
    # PostgreSQL runs a batch in the claim's transaction: the fourth batch's runs died with it.
    handled = kill_at - 1 if db.kind == "sqlite" else 30
    assert db.count("SELECT count(*) FROM handled") == handled
    assert outbox.pending() == total - 30  # three batches settled, the fourth was claimed
    dispatcher = backend.Dispatcher()
    dispatcher.register_handler(Registered, exactly_once_handler(outbox, db))
    result = recover(outbox, db, dispatcher)
    assert result == RelayResult(delivered=total - 30)  # redelivered, skipped where handled
    assert_each_handled_once(outbox, db, total)


RELAY_BODY = """
    connection = None
    if POSTGRES:  # autocommit off: the handler's rows commit with the batch's settlement
        import psycopg

        connection = psycopg.connect(target)
        outbox = open_outbox(connection)
    else:
        import sqlite3

        connection = sqlite3.connect(target)  # legacy mode: the same, on SQLite
        outbox = open_outbox(connection)
    insert = q("INSERT INTO deliveries VALUES (?, ?)")

    def count_delivery(event):  # not idempotent: would show any double dispatch
        connection.execute(insert, (event.n, os.getpid()))

    dispatcher.register_handler(Registered, count_delivery)
    open(sys.argv[3], "w").close()
    while not os.path.exists(sys.argv[4]):
        time.sleep(0.002)
    print("delivered", outbox.relay(dispatcher, batch_size=int(sys.argv[5])).delivered)
"""


def relay_in_processes(
    backend: ModuleType, db: Db, tmp_path: Path, total: int, processes: int, batch_size: int
) -> None:
    """`processes` relays started together over `total` free rows: none lost, none twice."""
    db.execute("CREATE TABLE deliveries (n INTEGER, pid INTEGER)")
    feeder = db.open()
    for start in range(0, total, 10_000):
        store_free(feeder, [Registered(n=n) for n in range(start, min(total, start + 10_000))])
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{k}" for k in range(processes)]
    children = [
        spawn(tmp_path, backend, db, RELAY_BODY, str(flag), str(go), str(batch_size))
        for flag in ready
    ]
    deadline = time.monotonic() + 120
    while not all(flag.exists() for flag in ready) and time.monotonic() < deadline:
        time.sleep(0.005)
    go.touch()
    results = [finish(child) for child in children]
    for returncode, output in results:
        assert returncode == 0, output
    counts = [int(output.split("delivered ")[1].split()[0]) for _, output in results]
    assert sum(counts) == total
    assert db.count("SELECT count(*) FROM deliveries") == total
    assert db.count("SELECT count(DISTINCT n) FROM deliveries") == total
    assert feeder.pending() == 0
    assert feeder.dead_letters() == []
    if processes > 1 and db.kind == "postgres":  # SKIP LOCKED shared the work out
        assert db.count("SELECT count(DISTINCT pid) FROM deliveries") > 1


def test_two_processes_relay_the_same_outbox(
    backend: ModuleType, outbox: Outbox, db: Db, tmp_path: Path
) -> None:
    relay_in_processes(backend, db, tmp_path, 3000, 2, 25)


def test_four_relay_processes(backend: ModuleType, pg: Db, tmp_path: Path) -> None:
    """PostgreSQL, FOR UPDATE SKIP LOCKED: four relays share 20,000 rows, none lost, none twice
    (the 100,000-row run is the slow variant below)."""
    relay_in_processes(backend, pg, tmp_path, 20_000, 4, 500)


@pytest.mark.slow
def test_four_relay_processes_over_100_000_events(
    backend: ModuleType, pg: Db, tmp_path: Path
) -> None:
    """PostgreSQL, FOR UPDATE SKIP LOCKED: four relays share 100,000 rows, none lost, none twice."""
    relay_in_processes(backend, pg, tmp_path, 100_000, 4, 500)


def test_postgres_connection_closed_before_its_rows_were_swept_is_reported(
    backend: ModuleType, pg: Db, caplog: pytest.LogCaptureFixture
) -> None:
    """The user closes the outbox's connection without closing the outbox: the sweeper can no
    longer delete the delivered rows, and says that they will be delivered again."""
    connection = pg.connect()
    outbox = pg.open(connection, lease=0.2)
    dispatcher = backend.Dispatcher()
    dispatcher.register_handler(Registered, lambda event: None)
    with UnitOfWork(dispatcher, connection, outbox=outbox) as uow:
        uow.record(Registered(n=1))
    with caplog.at_level(logging.WARNING, logger="domainbus.outbox"):
        connection.close()
        deadline = time.monotonic() + 30
        while "was closed before the rows of 1 delivered event(s)" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.01)
    assert pg.count("SELECT count(*) FROM domainbus_outbox") == 1
