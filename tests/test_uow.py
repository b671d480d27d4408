"""UnitOfWork: commit then dispatch in order, roll back and discard, nested recording (FIFO)."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domainbus import DomainEvent
from domainbus.aggregate import AggregateRoot
from domainbus.uow import AsyncUnitOfWork, UnitOfWork


class Happened(DomainEvent):
    what: str


@dataclasses.dataclass
class Account(AggregateRoot):
    name: str

    def act(self, what: str) -> None:
        self.record(Happened(what=what))


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """A connection in the sqlite3 module's default (legacy transaction) mode."""
    connection = sqlite3.connect(tmp_path / "app.db")
    connection.execute("CREATE TABLE rows (value TEXT)")
    yield connection
    connection.close()


def reader(connection: sqlite3.Connection) -> sqlite3.Connection:
    """A second connection to the same file: it sees committed rows only."""
    path = connection.execute("PRAGMA database_list").fetchone()[2]
    return sqlite3.connect(path)


def whats(log: list[Any]) -> list[str]:
    return [event.what for event in log]


def test_commit_then_dispatch_in_source_order(backend: ModuleType, db: sqlite3.Connection) -> None:
    dispatcher = backend.Dispatcher()
    log: list[Any] = []
    dispatcher.register_handler(Happened, log.append)
    first, second = Account("a"), Account("b")
    with UnitOfWork(dispatcher, db) as uow:
        uow.track(first)
        first.act("a1")
        uow.record(Happened(what="own1"))
        uow.track(second)
        second.act("b1")
        first.act("a2")
        uow.record(Happened(what="own2"))
        assert log == []  # nothing is dispatched before the commit
    assert whats(log) == ["a1", "a2", "own1", "own2", "b1"]
    assert first.pull_events() == [] and second.pull_events() == []


def test_handlers_see_the_committed_state(backend: ModuleType, db: sqlite3.Connection) -> None:
    dispatcher = backend.Dispatcher()
    seen: list[int] = []
    other = reader(db)
    dispatcher.register_handler(
        Happened, lambda e: seen.append(other.execute("SELECT count(*) FROM rows").fetchone()[0])
    )
    with UnitOfWork(dispatcher, db) as uow:
        db.execute("INSERT INTO rows VALUES ('x')")
        uow.record(Happened(what="x"))
    assert seen == [1]
    other.close()


def test_exception_rolls_back_and_discards_events(
    backend: ModuleType, db: sqlite3.Connection
) -> None:
    dispatcher = backend.Dispatcher()
    log: list[Any] = []
    dispatcher.register_handler(Happened, log.append)
    account = Account("a")
    with pytest.raises(ValueError, match="boom"), UnitOfWork(dispatcher, db) as uow:
        db.execute("INSERT INTO rows VALUES ('x')")
        uow.track(account)
        account.act("lost")
        uow.record(Happened(what="lost too"))
        raise ValueError("boom")
    assert log == []
    assert account.pull_events() == []
    assert db.execute("SELECT count(*) FROM rows").fetchone()[0] == 0
    assert not db.in_transaction


def test_nested_recording_is_dispatched_fifo(backend: ModuleType) -> None:
    """Events recorded by handlers go after those already queued, breadth first."""
    dispatcher = backend.Dispatcher()
    log: list[str] = []
    uow = UnitOfWork(dispatcher)
    first, second = Account("a"), Account("b")
    late = Account("late")

    def react(event: Happened) -> None:
        log.append(event.what)
        if event.what == "a1":
            second.act("b-from-a1")  # a tracked aggregate
            uow.record(Happened(what="own-from-a1"))
        elif event.what == "a2":
            uow.track(late).act("late-from-a2")  # tracked during the dispatch
        elif event.what == "b-from-a1":
            first.act("a-from-b")  # a third generation

    dispatcher.register_handler(Happened, react)
    with uow:
        uow.track(first)
        uow.track(second)
        first.act("a1")
        first.act("a2")
    assert log == ["a1", "a2", "b-from-a1", "own-from-a1", "late-from-a2", "a-from-b"]


def test_works_without_a_connection(backend: ModuleType) -> None:
    dispatcher = backend.Dispatcher()
    log: list[Any] = []
    dispatcher.register_handler(Happened, log.append)
    with UnitOfWork(dispatcher) as uow:
        uow.record(Happened(what="x"))
    assert whats(log) == ["x"]


def test_handler_writes_are_committed(backend: ModuleType, db: sqlite3.Connection) -> None:
    dispatcher = backend.Dispatcher()
    dispatcher.register_handler(
        Happened, lambda e: db.execute("INSERT INTO rows VALUES (?)", (e.what,))
    )
    with UnitOfWork(dispatcher, db) as uow:
        uow.record(Happened(what="from-handler"))
    assert not db.in_transaction
    other = reader(db)
    assert other.execute("SELECT value FROM rows").fetchall() == [("from-handler",)]
    other.close()


def test_handler_failure_after_commit(backend: ModuleType, db: sqlite3.Connection) -> None:
    """The commit stands; the handler's own writes roll back; the note says what was lost."""
    dispatcher = backend.Dispatcher()

    def fail(event: Happened) -> None:
        db.execute("INSERT INTO rows VALUES ('half-done')")
        raise RuntimeError("handler broke")

    dispatcher.register_handler(Happened, fail)
    with pytest.raises(RuntimeError, match="handler broke") as info:
        with UnitOfWork(dispatcher, db) as uow:
            db.execute("INSERT INTO rows VALUES ('committed')")
            uow.record(Happened(what="1"))
            uow.record(Happened(what="2"))
    notes = "\n".join(info.value.__notes__)
    assert "1 later event(s) were not dispatched" in notes
    assert "rolled back" in notes
    assert db.execute("SELECT value FROM rows").fetchall() == [("committed",)]


def test_autocommit_handler_writes_stand_alone(backend: ModuleType, tmp_path: Path) -> None:
    """With isolation_level=None each handler statement commits by itself, even on failure."""
    db = sqlite3.connect(tmp_path / "auto.db", isolation_level=None)
    db.execute("CREATE TABLE rows (value TEXT)")
    dispatcher = backend.Dispatcher()

    def fail(event: Happened) -> None:
        db.execute("INSERT INTO rows VALUES ('written')")
        raise RuntimeError("handler broke")

    dispatcher.register_handler(Happened, fail)
    with pytest.raises(RuntimeError, match="handler broke"), UnitOfWork(dispatcher, db) as uow:
        uow.record(Happened(what="1"))
    assert db.execute("SELECT value FROM rows").fetchall() == [("written",)]
    db.close()


def test_misuse_is_reported(backend: ModuleType, db: sqlite3.Connection) -> None:
    dispatcher = backend.Dispatcher()
    uow = UnitOfWork(dispatcher, db)
    with pytest.raises(RuntimeError, match="before entering"):
        uow.record(Happened(what="x"))
    with uow:
        with pytest.raises(TypeError, match="pull_events"):
            uow.track(object())
        with pytest.raises(TypeError, match="not the class Happened"):
            uow.record(Happened)
    with pytest.raises(RuntimeError, match="after it finished"):
        uow.track(Account("a"))
    with pytest.raises(RuntimeError, match="one with block"):
        uow.__enter__()
    with pytest.raises(TypeError, match="dispatch"):
        UnitOfWork(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"sqlite3\.Connection"):
        UnitOfWork(dispatcher, "app.db")  # type: ignore[arg-type]


def test_refuses_a_connection_with_an_open_transaction(backend: ModuleType, tmp_path: Path) -> None:
    connection = sqlite3.connect(tmp_path / "legacy.db")  # legacy implicit transactions
    connection.execute("CREATE TABLE t (x)")
    connection.execute("INSERT INTO t VALUES (1)")  # opens a transaction implicitly
    with pytest.raises(RuntimeError, match="open transaction"):
        UnitOfWork(backend.Dispatcher(), connection).__enter__()
    connection.commit()
    with UnitOfWork(backend.Dispatcher(), connection):
        connection.execute("INSERT INTO t VALUES (2)")
    assert not connection.in_transaction
    assert connection.execute("SELECT count(*) FROM t").fetchone()[0] == 2
    connection.close()


def test_tracking_twice_collects_once(backend: ModuleType) -> None:
    dispatcher = backend.Dispatcher()
    log: list[Any] = []
    dispatcher.register_handler(Happened, log.append)
    account = Account("a")
    with UnitOfWork(dispatcher) as uow:
        assert uow.track(account) is account
        uow.track(account)
        account.act("once")
    assert whats(log) == ["once"]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.integers(min_value=-1, max_value=3), max_size=25))
def test_dispatch_order_matches_the_model(backend: ModuleType, program: list[int]) -> None:
    """Events come source by source, in the order the sources joined, each in recording order.

    `program` records one event per step: on aggregate k (tracked at its first use), or with
    uow.record for -1.
    """
    dispatcher = backend.Dispatcher()
    log: list[Any] = []
    dispatcher.register_handler(Happened, log.append)
    accounts = [Account(str(k)) for k in range(4)]
    joined: list[int] = []
    model: dict[int, list[str]] = {}
    with UnitOfWork(dispatcher) as uow:
        for step, source in enumerate(program):
            what = f"{source}:{step}"
            if source == -1:
                uow.record(Happened(what=what))
            else:
                uow.track(accounts[source]).act(what)
            if source not in joined:
                joined.append(source)
            model.setdefault(source, []).append(what)
    assert whats(log) == [what for source in joined for what in model[source]]


# -- AsyncUnitOfWork ---------------------------------------------------------------------------


def test_async_commit_then_dispatch_with_nested_fifo(
    backend: ModuleType, db: sqlite3.Connection
) -> None:
    dispatcher = backend.Dispatcher()
    log: list[str] = []
    seen_rows: list[int] = []
    other = reader(db)

    async def main() -> None:
        uow = AsyncUnitOfWork(dispatcher, db)

        async def react(event: Happened) -> None:
            await asyncio.sleep(0)
            seen_rows.append(other.execute("SELECT count(*) FROM rows").fetchone()[0])
            log.append(event.what)
            if event.what == "a1":
                uow.record(Happened(what="from-a1"))

        dispatcher.register_handler(Happened, react)
        account = Account("a")
        async with uow:
            db.execute("INSERT INTO rows VALUES ('x')")
            uow.track(account)
            account.act("a1")
            account.act("a2")
            assert log == []

    asyncio.run(main())
    assert log == ["a1", "a2", "from-a1"]
    assert seen_rows == [1, 1, 1]  # every handler ran after the commit
    other.close()


def test_async_exception_rolls_back_and_discards(
    backend: ModuleType, db: sqlite3.Connection
) -> None:
    dispatcher = backend.Dispatcher()
    log: list[Any] = []
    dispatcher.register_handler(Happened, log.append)
    account = Account("a")

    async def main() -> None:
        async with AsyncUnitOfWork(dispatcher, db) as uow:
            db.execute("INSERT INTO rows VALUES ('x')")
            uow.track(account).act("lost")
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        asyncio.run(main())
    assert log == [] and account.pull_events() == []
    assert db.execute("SELECT count(*) FROM rows").fetchone()[0] == 0


def test_async_concurrent_runs_one_events_handlers_together(backend: ModuleType) -> None:
    dispatcher = backend.Dispatcher()
    log: list[str] = []

    def handler(name: str) -> Any:
        async def run(event: Happened) -> None:
            log.append(f"{name}-start")
            await asyncio.sleep(0.001)
            log.append(f"{name}-end")

        return run

    dispatcher.register_handler(Happened, handler("a"))
    dispatcher.register_handler(Happened, handler("b"))

    async def main(concurrent: bool) -> None:
        async with AsyncUnitOfWork(dispatcher, concurrent=concurrent) as uow:
            uow.record(Happened(what="x"))

    asyncio.run(main(False))
    assert log == ["a-start", "a-end", "b-start", "b-end"]
    log.clear()
    asyncio.run(main(True))
    assert log[:2] == ["a-start", "b-start"]


def test_async_needs_dispatch_async() -> None:
    class SyncOnly:
        def dispatch(self, event: object) -> int:
            return 0

    with pytest.raises(TypeError, match="dispatch_async"):
        AsyncUnitOfWork(SyncOnly())  # type: ignore[arg-type]
