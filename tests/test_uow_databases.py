"""UnitOfWork on every kind of transaction handle: psycopg 3 connections, SQLAlchemy Sessions and
Connections (on SQLite and on PostgreSQL), and AsyncSession on postgresql+psycopg; with the
outbox of the matching store bound to the handle's own transaction."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from outbox_support import Db, make_db

pytest.importorskip("sqlalchemy")

from sqlalchemy import create_engine, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from domainbus import AggregateRoot, DomainEvent
from domainbus.codec import EventCodec
from domainbus.outbox import Outbox, RelayResult, SqliteOutbox, idempotent
from domainbus.uow import AsyncUnitOfWork, UnitOfWork


class Renamed(DomainEvent):
    account_id: int
    name: str


CODEC = EventCodec(Renamed)


class Base(DeclarativeBase):
    pass


class Account(AggregateRoot, Base):
    """A SQLAlchemy-mapped aggregate."""

    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]

    def rename(self, name: str) -> None:
        self.name = name
        self.record(Renamed(account_id=self.id, name=name))


# handle kinds: (store, library)
KINDS = {
    "psycopg": "postgres",
    "psycopg-autocommit": "postgres",
    "session-postgres": "postgres",
    "connection-postgres": "postgres",
    "session-sqlite": "sqlite",
    "connection-sqlite": "sqlite",
}


class Setup:
    """A database, its outbox, and a way to open user handles of one kind on it."""

    def __init__(self, kind: str, db: Db) -> None:
        self.kind, self.db = kind, db
        self.outbox = db.open()
        db.execute("CREATE TABLE users (n INTEGER PRIMARY KEY)")
        db.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        db.execute("CREATE TABLE seen (n INTEGER)")
        self.engine: Any = None
        if kind.startswith(("session", "connection")):
            self.engine = create_engine(db.sqlalchemy_url())
        self._handles: list[Any] = []

    def handle(self) -> Any:
        if self.kind == "psycopg":
            handle = self.db.connect()
        elif self.kind == "psycopg-autocommit":
            import psycopg

            handle = psycopg.connect(self.db.target, autocommit=True)
        elif self.kind.startswith("session"):
            handle = Session(self.engine)
        else:
            handle = self.engine.connect()
        self._handles.append(handle)
        return handle

    def run(self, handle: Any, statement: str, **params: Any) -> None:
        """A statement through the user's handle, as the user would write it."""
        if self.kind.startswith("psycopg"):
            names = {name: f"%({name})s" for name in params}
            handle.execute(statement.format(**names), params)
        else:
            handle.execute(text(statement.format(**{n: f":{n}" for n in params})), params)

    def close(self) -> None:
        for handle in self._handles:
            handle.close()
        if self.engine is not None:
            self.engine.dispose()


@pytest.fixture(params=list(KINDS))
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    for db in make_db(request, tmp_path, KINDS[request.param], CODEC):
        ready = Setup(request.param, db)
        yield ready
        ready.close()


def test_commit_then_dispatch_through_the_handle(backend: ModuleType, setup: Setup) -> None:
    dispatcher = backend.Dispatcher()
    seen: list[tuple[str, int]] = []
    dispatcher.register_handler(
        Renamed, lambda e: seen.append((e.name, setup.db.count("SELECT count(*) FROM users")))
    )
    handle = setup.handle()
    with UnitOfWork(dispatcher, handle, outbox=setup.outbox) as uow:
        setup.run(handle, "INSERT INTO users VALUES ({n})", n=1)
        uow.record(Renamed(account_id=1, name="a"))
        assert setup.db.count("SELECT count(*) FROM domainbus_outbox") == 0  # not yet committed
    assert seen == [("a", 1)]  # dispatched after the commit, which stored the event too
    assert setup.db.count("SELECT count(*) FROM domainbus_outbox") == 1  # deleted lazily
    assert uow.connection is handle
    setup.outbox.flush()
    assert setup.outbox.pending() == 0


def test_a_rolled_back_unit_of_work_leaves_no_outbox_row(backend: ModuleType, setup: Setup) -> None:
    dispatcher = backend.Dispatcher()
    log: list[Any] = []
    dispatcher.register_handler(Renamed, log.append)
    handle = setup.handle()
    with pytest.raises(ValueError, match="boom"):
        with UnitOfWork(dispatcher, handle, outbox=setup.outbox) as uow:
            setup.run(handle, "INSERT INTO users VALUES ({n})", n=1)
            uow.record(Renamed(account_id=1, name="lost"))
            raise ValueError("boom")
    assert log == []
    assert setup.db.count("SELECT count(*) FROM users") == 0
    assert setup.db.count("SELECT count(*) FROM domainbus_outbox") == 0
    assert setup.outbox.pending() == 0


def test_handler_writes_commit_with_the_round_and_failures_go_to_the_relay(
    backend: ModuleType, setup: Setup
) -> None:
    dispatcher = backend.Dispatcher()
    handle = setup.handle()

    def write(event: Renamed) -> None:
        setup.run(handle, "INSERT INTO seen VALUES ({n})", n=event.account_id)
        if event.account_id == 2:
            raise RuntimeError("second fails")

    dispatcher.register_handler(Renamed, write)
    with pytest.raises(RuntimeError, match="second fails") as info:
        with UnitOfWork(dispatcher, handle, outbox=setup.outbox) as uow:
            setup.run(handle, "INSERT INTO users VALUES ({n})", n=1)
            uow.record(Renamed(account_id=1, name="a"))
            uow.record(Renamed(account_id=2, name="b"))
    assert "the unit of work was committed" in "\n".join(info.value.__notes__)
    assert setup.db.count("SELECT count(*) FROM users") == 1
    autocommit = setup.kind == "psycopg-autocommit"
    assert setup.db.count("SELECT count(*) FROM seen") == (2 if autocommit else 0)
    left = 1 if autocommit else 2  # autocommit: the first event's delivery stood alone too
    assert setup.outbox.pending() == left
    dispatcher.clear()
    log: list[Any] = []
    dispatcher.register_handler(Renamed, log.append)
    assert setup.outbox.relay(dispatcher) == RelayResult(delivered=left)
    assert [e.account_id for e in log] == [1, 2][-left:]
    assert setup.outbox.pending() == 0


def test_idempotent_and_relay_through_a_bound_session(backend: ModuleType, setup: Setup) -> None:
    """A view of the outbox on the user's handle: the handler's writes and its idempotency
    record commit together, in the handle's transaction."""
    handle = setup.handle()
    view = setup.outbox.bind(handle)
    dispatcher = backend.Dispatcher()

    def write(event: Renamed) -> None:
        setup.run(handle, "INSERT INTO seen VALUES ({n})", n=event.account_id)

    dispatcher.register_handler(Renamed, idempotent(write, view, key="write"))
    event = Renamed(account_id=7, name="x")
    setup.outbox.begin()
    setup.outbox.append([CODEC.encode(event), CODEC.encode(event)], claimed=False)  # twice
    setup.outbox.commit()
    assert view.relay(dispatcher) == RelayResult(delivered=2)
    assert setup.db.count("SELECT count(*) FROM seen") == 1
    assert setup.db.count("SELECT count(*) FROM domainbus_processed") == 1
    assert view.pending() == 0


# -- SQLAlchemy ORM: sessions and tracking their aggregates ----------------------------------


ORM_KINDS = [kind for kind in KINDS if kind.startswith("session")]


@pytest.fixture(params=ORM_KINDS)
def orm(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    for db in make_db(request, tmp_path, KINDS[request.param], CODEC):
        ready = Setup(request.param, db)
        yield ready
        ready.close()


def test_track_session_collects_loaded_and_added_aggregates(
    backend: ModuleType, orm: Setup
) -> None:
    with Session(orm.engine) as session, session.begin():
        session.add_all([Account(id=1, name="a"), Account(id=2, name="b")])
    dispatcher = backend.Dispatcher()
    log: list[Any] = []
    dispatcher.register_handler(Renamed, log.append)
    session = orm.handle()
    with UnitOfWork(dispatcher, session, outbox=orm.outbox, track_session=True):
        second = session.get(Account, 2)
        first = session.get(Account, 1)
        assert first is not None and second is not None
        second.rename("b2")  # no uow.track() anywhere
        first.rename("a2")
        session.add(new := Account(id=3, name="c"))
        new.rename("c2")
    assert [(e.account_id, e.name) for e in log] == [(2, "b2"), (1, "a2"), (3, "c2")]
    assert orm.db.rows("SELECT id, name FROM accounts ORDER BY id") == [
        (1, "a2"),
        (2, "b2"),
        (3, "c2"),
    ]


def test_without_track_session_only_tracked_aggregates_count(
    backend: ModuleType, orm: Setup
) -> None:
    with Session(orm.engine) as session, session.begin():
        session.add_all([Account(id=1, name="a"), Account(id=2, name="b")])
    dispatcher = backend.Dispatcher()
    log: list[Any] = []
    dispatcher.register_handler(Renamed, log.append)
    session = orm.handle()
    with UnitOfWork(dispatcher, session, outbox=orm.outbox) as uow:
        loaded = session.get(Account, 1)
        tracked = uow.track(session.get(Account, 2))
        assert loaded is not None and tracked is not None
        loaded.rename("untracked")
        tracked.rename("tracked")
    assert [e.name for e in log] == ["tracked"]
    assert loaded.pull_events() != []  # left pending on the untracked aggregate


def test_a_rolled_back_session_leaves_no_outbox_row(backend: ModuleType, orm: Setup) -> None:
    """An ORM write that fails at flush (duplicate key) rolls everything back, events included."""
    with Session(orm.engine) as session, session.begin():
        session.add(Account(id=1, name="a"))
    session = orm.handle()
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        with UnitOfWork(backend.Dispatcher(), session, outbox=orm.outbox, track_session=True):
            session.add(account := Account(id=1, name="again"))
            account.rename("again")
    assert orm.db.count("SELECT count(*) FROM domainbus_outbox") == 0
    assert orm.db.rows("SELECT id, name FROM accounts") == [(1, "a")]
    assert account.pull_events() == []  # discarded with the rollback


def test_misuse_is_reported(backend: ModuleType, orm: Setup) -> None:
    with pytest.raises(TypeError, match="track_session=True needs a SQLAlchemy Session"):
        UnitOfWork(backend.Dispatcher(), track_session=True)
    with pytest.raises(TypeError, match="track_session must be a bool"):
        UnitOfWork(backend.Dispatcher(), orm.handle(), track_session=1)  # type: ignore[arg-type]
    if orm.db.kind == "postgres":  # the other way round is the next test
        other: Outbox = SqliteOutbox(":memory:", CODEC)
        with pytest.raises(TypeError, match="SqliteOutbox cannot be bound to a postgresql"):
            UnitOfWork(backend.Dispatcher(), orm.handle(), outbox=other)


def test_a_postgres_outbox_refuses_a_sqlite_handle(
    backend: ModuleType, tmp_path: Path, postgres_dsn: str
) -> None:
    from domainbus.outbox import PostgresOutbox

    box = PostgresOutbox(postgres_dsn, CODEC)
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with Session(engine) as session:
        with pytest.raises(TypeError, match="PostgresOutbox cannot be bound to a sqlite handle"):
            box.bind(session)
    box.close()
    with pytest.raises(TypeError, match=r"expected a sqlite3\.Connection, a psycopg Connection"):
        UnitOfWork(backend.Dispatcher(), object())


# -- AsyncSession on postgresql+psycopg ------------------------------------------------------


@pytest.fixture
def pg(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    pytest.importorskip("greenlet", reason="SQLAlchemy's asyncio needs greenlet")
    for db in make_db(request, tmp_path, "postgres", CODEC):
        ready = Setup("session-postgres", db)
        yield ready
        ready.close()


def test_async_session_unit_of_work(backend: ModuleType, pg: Setup) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    dispatcher = backend.Dispatcher()
    log: list[Any] = []

    async def handler(event: Renamed) -> None:
        await asyncio.sleep(0)
        log.append(event.name)

    dispatcher.register_handler(Renamed, handler)

    async def main() -> None:
        engine = create_async_engine(pg.db.sqlalchemy_url(asynchronous=True))
        async with AsyncSession(engine) as session:
            session.add(Account(id=1, name="a"))
            await session.commit()
        async with AsyncSession(engine) as session:
            async with AsyncUnitOfWork(
                dispatcher, session, outbox=pg.outbox, track_session=True
            ) as uow:
                account = await session.get(Account, 1)
                assert account is not None
                account.rename("a2")
                uow.record(Renamed(account_id=0, name="own"))
        async with AsyncSession(engine) as session:
            with pytest.raises(ValueError, match="boom"):
                async with AsyncUnitOfWork(dispatcher, session, outbox=pg.outbox) as uow:
                    await session.execute(text("INSERT INTO users VALUES (5)"))
                    uow.record(Renamed(account_id=5, name="lost"))
                    raise ValueError("boom")
        await engine.dispose()

    asyncio.run(main())
    assert log == ["a2", "own"]
    assert pg.db.rows("SELECT name FROM accounts") == [("a2",)]
    assert pg.db.count("SELECT count(*) FROM users") == 0
    pg.outbox.flush()
    assert pg.outbox.pending() == 0


def test_an_async_session_needs_the_async_unit_of_work(backend: ModuleType, pg: Setup) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    engine = create_async_engine(pg.db.sqlalchemy_url(asynchronous=True))
    with pytest.raises(TypeError, match="needs AsyncUnitOfWork"):
        UnitOfWork(backend.Dispatcher(), AsyncSession(engine))
    asyncio.run(engine.dispose())


def test_async_connection_unit_of_work(backend: ModuleType, pg: Setup) -> None:
    """SQLAlchemy Core's AsyncConnection: the outbox row commits with the user's row, or not at
    all."""
    from sqlalchemy.ext.asyncio import create_async_engine

    dispatcher = backend.Dispatcher()
    log: list[Any] = []
    dispatcher.register_handler(Renamed, log.append)

    async def main() -> None:
        engine = create_async_engine(pg.db.sqlalchemy_url(asynchronous=True))
        async with engine.connect() as connection:
            async with AsyncUnitOfWork(dispatcher, connection, outbox=pg.outbox) as uow:
                await connection.execute(text("INSERT INTO users VALUES (1)"))
                uow.record(Renamed(account_id=1, name="kept"))
            with pytest.raises(ValueError, match="boom"):
                async with AsyncUnitOfWork(dispatcher, connection, outbox=pg.outbox) as uow:
                    await connection.execute(text("INSERT INTO users VALUES (2)"))
                    uow.record(Renamed(account_id=2, name="lost"))
                    raise ValueError("boom")
        await engine.dispose()

    asyncio.run(main())
    assert [e.name for e in log] == ["kept"]
    assert pg.db.rows("SELECT n FROM users") == [(1,)]
    pg.outbox.flush()
    assert pg.outbox.pending() == 0
