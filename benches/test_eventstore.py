"""The event store against eventsourcing 9.5.6 and raw floors, side by side in one run.

Systems, on the same database each time:
- "domainbus": `SqliteEventStore` / `PostgresEventStore`, `Repository.get`, `read_all`,
  `ProjectionRunner.catch_up`.
- "floor": sqlite3 or psycopg + msgspec running the same statements by hand (for appends:
  the same version check and INSERT, or on PostgreSQL the very statement the store sends),
  events encoded and decoded with one reused msgspec encoder/decoder, folded by a direct call.
- "floor-insert" (appends only): a bare INSERT per transaction, no version check at all.
- "floor-joined" (read_all and catch-up): the straightforward floor's work done the way the
  store does it, by hand: a page of rows fetched as one row (`group_concat` of the payloads)
  and decoded with one msgspec call; no order check, no positions beyond the last one.
- "eventsourcing": eventsourcing 9.5.6 with its SQLite or PostgreSQL persistence module.

Durability, stated: SQLite in WAL with synchronous=NORMAL for every system (eventsourcing's
connections get the same PRAGMA; it leaves FULL otherwise); PostgreSQL 13+ started here with
fsync=on and synchronous_commit=on (its default), over TCP on loopback.

Workloads: append one event per transaction to a new stream; rebuild aggregates of 100 events
(`repository.get`); `read_all` (SQLite) of every event, decoded; projection catch-up (SQLite)
of every event, pages of 1,000 each committed with the tracking record. Targets: append
<= 1.3x the floor, rebuild >= 20x faster than eventsourcing and <= 1.5x the floor, read_all
>= 1,000,000 events/s, catch-up of 1,000,000 events >= 500,000 events/s.

    pytest benches/test_eventstore.py --benchmark-group-by=group     # the full run
    pytest benches/test_eventstore.py --benchmark-disable -q         # quick check (seconds)

The ratios and rates are printed at the end of the run. PostgreSQL workloads start their own
server (tests/servers.py) and are skipped when PostgreSQL is not installed (outside CI).
"""

from __future__ import annotations

import collections
import functools
import importlib.util
import itertools
import sqlite3
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import msgspec
import pytest

from domainbus import DomainEvent
from domainbus.codec import EventCodec
from domainbus.eventstore import (
    Aggregate,
    Projection,
    ProjectionRunner,
    Repository,
    SqliteEventStore,
    applies,
    handles,
)

ROOT = Path(__file__).resolve().parent.parent


class Opened(DomainEvent):
    account_id: str
    owner: str


class Deposited(DomainEvent):
    account_id: str
    amount: int


CODEC = EventCodec(Opened, Deposited)
ENCODER = msgspec.msgpack.Encoder()
DECODER: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(
    Union[Opened, Deposited]  # noqa: UP007 (the floor decodes the same union)
)
EVENTS_PER_AGGREGATE = 100


@dataclass(frozen=True)
class Sizes:
    appends_sqlite: int
    appends_pg: int
    aggregates: int
    stored: int  # events for read_all and catch-up
    rounds: int


FULL = Sizes(appends_sqlite=1000, appends_pg=200, aggregates=100, stored=1_000_000, rounds=3)
QUICK = Sizes(appends_sqlite=20, appends_pg=10, aggregates=3, stored=3000, rounds=1)


@pytest.fixture(scope="module")
def sizes(request: pytest.FixtureRequest) -> Sizes:
    """FULL, or QUICK under --benchmark-disable or with a small --bench-events (a trial)."""
    small = (request.config.getoption("--bench-events", None) or 10**9) < 100_000
    return QUICK if small or request.config.getoption("benchmark_disable", False) else FULL


# -- the aggregates, three ways ----------------------------------------------------------------


class Account(Aggregate):
    owner: str
    balance: int

    @applies(Opened)
    def _opened(self, event: Opened) -> None:
        self.owner, self.balance = event.owner, 0

    @applies(Deposited)
    def _deposited(self, event: Deposited) -> None:
        self.balance += event.amount


FLOOR_FOLD: dict[type, Callable[[Any, Any], None]] = {
    Opened: Account._opened,
    Deposited: Account._deposited,
}


def history(account_id: str) -> list[DomainEvent]:
    return [
        Opened(account_id=account_id, owner="ada"),
        *(Deposited(account_id=account_id, amount=n) for n in range(EVENTS_PER_AGGREGATE - 1)),
    ]


@functools.cache
def es_classes() -> tuple[Any, Any]:
    """eventsourcing's Application and an Account aggregate written its way (skipped when
    eventsourcing is not installed: it is not one of the bench extras)."""
    pytest.importorskip("eventsourcing", reason="eventsourcing 9.5.6 is not installed")
    from eventsourcing.application import Application
    from eventsourcing.domain import Aggregate as EsAggregate
    from eventsourcing.domain import event

    class EsAccount(EsAggregate):  # type: ignore[misc]
        @event("Opened")
        def __init__(self, owner: str) -> None:
            self.owner = owner
            self.balance = 0

        @event("Deposited")
        def deposit(self, amount: int) -> None:
            self.balance += amount

    return Application, EsAccount


_ES_PATCHED = False


def es_sqlite_normal() -> None:
    """eventsourcing's SQLite connections get synchronous=NORMAL, like the others."""
    global _ES_PATCHED
    if _ES_PATCHED:
        return
    from eventsourcing.sqlite import SQLiteConnectionPool

    create = SQLiteConnectionPool._create_connection

    def create_normal(self: Any) -> Any:
        connection = create(self)
        connection._sqlite_conn.execute("PRAGMA synchronous = NORMAL")
        return connection

    SQLiteConnectionPool._create_connection = create_normal  # type: ignore[method-assign]
    _ES_PATCHED = True


# -- the results and their report ----------------------------------------------------------------


@dataclass
class Results:
    medians: dict[str, float] = field(default_factory=dict)  # "workload:system" -> s per unit
    turns: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # s per turn
    facts: list[str] = field(default_factory=list)

    def turn_ratio(self, top: str, bottom: str) -> tuple[float, int] | None:
        """The median of the per-turn ratios top/bottom ("workload:system" keys), and the
        number of turns; None unless both ran in turns."""
        workload, top_system = top.split(":")
        bottom_workload, bottom_system = bottom.split(":")
        times = self.turns.get(workload)
        if workload != bottom_workload or times is None:
            return None
        if top_system not in times or bottom_system not in times:
            return None
        pairs = [a / b for a, b in zip(times[top_system], times[bottom_system], strict=True)]
        return statistics.median(pairs), len(pairs)


RESULTS = Results()
TARGETS: tuple[tuple[str, str, str, float, bool], ...] = (
    # (label, numerator, denominator, bound, at_most)
    ("append sqlite, domainbus / floor", "append-sqlite:domainbus", "append-sqlite:floor", 1.3,
     True),
    ("append sqlite, domainbus / floor-insert", "append-sqlite:domainbus",
     "append-sqlite:floor-insert", 1.3, True),
    ("append sqlite, eventsourcing / domainbus", "append-sqlite:eventsourcing",
     "append-sqlite:domainbus", 0.0, False),
    ("append postgres, domainbus / floor", "append-pg:domainbus", "append-pg:floor", 1.3, True),
    ("append postgres, domainbus / floor-insert", "append-pg:domainbus",
     "append-pg:floor-insert", 1.3, True),
    ("append postgres, eventsourcing / domainbus", "append-pg:eventsourcing",
     "append-pg:domainbus", 0.0, False),
    ("rebuild sqlite, domainbus / floor", "rebuild-sqlite:domainbus", "rebuild-sqlite:floor",
     1.5, True),
    ("rebuild sqlite, eventsourcing / domainbus", "rebuild-sqlite:eventsourcing",
     "rebuild-sqlite:domainbus", 20.0, False),
    ("rebuild postgres, domainbus / floor", "rebuild-pg:domainbus", "rebuild-pg:floor", 1.5,
     True),
    ("rebuild postgres, eventsourcing / domainbus", "rebuild-pg:eventsourcing",
     "rebuild-pg:domainbus", 20.0, False),
    ("read_all sqlite, domainbus / floor", "read_all-sqlite:domainbus", "read_all-sqlite:floor",
     0.0, True),
    ("catch-up sqlite, domainbus / floor", "catchup-sqlite:domainbus", "catchup-sqlite:floor",
     0.0, True),
    ("read_all sqlite, domainbus / floor-joined", "read_all-sqlite:domainbus",
     "read_all-sqlite:floor-joined", 0.0, True),
    ("catch-up sqlite, domainbus / floor-joined", "catchup-sqlite:domainbus",
     "catchup-sqlite:floor-joined", 0.0, True),
)  # fmt: skip
RATES = (("read_all sqlite", "read_all-sqlite:domainbus", 1_000_000),
         ("catch-up sqlite", "catchup-sqlite:domainbus", 500_000))  # fmt: skip


class Report:
    """Registered at run time: prints the ratios and rates in the terminal summary."""

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        medians = RESULTS.medians
        if not medians:
            return
        write = terminalreporter.write_line
        terminalreporter.section("event store ratios (medians, this run)")
        for fact in RESULTS.facts:
            write(fact)
        for key, seconds in sorted(medians.items()):
            write(f"{key}: {seconds * 1e6:.2f} us per unit ({1 / seconds:,.0f} per second)")
        for label, top, bottom, bound, at_most in TARGETS:
            parts = []
            if top in medians and bottom in medians:
                parts.append(f"medians {medians[top] / medians[bottom]:.2f}x")
            paired = RESULTS.turn_ratio(top, bottom)
            if paired is not None:
                parts.append(f"in turns {paired[0]:.2f}x over {paired[1]} turns")
            if not parts:
                continue
            ratio = paired[0] if paired is not None else medians[top] / medians[bottom]
            verdict = "no target"
            if bound:
                met = ratio <= bound if at_most else ratio >= bound
                sign = "<=" if at_most else ">="
                verdict = f"target {sign} {bound}: {'met' if met else 'MISSED'}"
            write(f"{label}: {'; '.join(parts)} ({verdict})")
        for label, key, target in RATES:
            if key in medians:
                rate = 1 / medians[key]
                floor = medians.get(key.replace("domainbus", "floor"))
                than = f"; the floor: {1 / floor:,.0f} events/s" if floor else ""
                verdict = "met" if rate >= target else "MISSED"
                write(f"{label}: {rate:,.0f} events/s (target >= {target:,}: {verdict}){than}")


@pytest.fixture(scope="module", autouse=True)
def report(request: pytest.FixtureRequest) -> None:
    manager = request.config.pluginmanager
    if not manager.has_plugin("domainbus-eventstore-ratios"):
        manager.register(Report(), "domainbus-eventstore-ratios")
        RESULTS.facts.append(
            f"SQLite {sqlite3.sqlite_version} WAL synchronous=NORMAL; PostgreSQL fsync=on, "
            "synchronous_commit=on; CPython "
            f"{sys.version.split()[0]}; eventsourcing {version_of('eventsourcing')}"
        )


def version_of(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def timed(
    benchmark: Any, key: str, units: int, setup: Callable[[], Callable[[], object]], rounds: int
) -> None:
    """Time `setup()`'s run over `rounds` fresh set-ups; record the median per unit."""
    workload, _system = key.split(":")
    benchmark.group = f"eventstore {workload}"
    benchmark.extra_info["units"] = units
    benchmark.pedantic(lambda run: run(), setup=lambda: ((setup(),), {}), rounds=rounds)
    stats = getattr(benchmark, "stats", None)
    if stats:
        RESULTS.medians[key] = stats.stats.median / units
        benchmark.extra_info["us_per_unit"] = stats.stats.median / units * 1e6


# -- SQLite ------------------------------------------------------------------------------------


class Files:
    """Fresh database files under one folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.numbers = itertools.count()
        self.closing: list[Callable[[], object]] = []

    def new(self) -> Path:
        for close in self.closing:
            close()
        self.closing.clear()
        return self.root / f"db{next(self.numbers)}.sqlite"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Files]:
    made = Files(tmp_path_factory.mktemp("eventstore-bench"))
    yield made
    made.new()


def sqlite_connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = NORMAL")
    return connection


def es_app_sqlite(path: Path) -> Any:
    es_sqlite_normal()
    application, _ = es_classes()
    return application(env={"PERSISTENCE_MODULE": "eventsourcing.sqlite",
                            "SQLITE_DBNAME": str(path)})  # fmt: skip


APPEND_SYSTEMS = ("domainbus", "floor", "floor-insert", "eventsourcing")
REBUILD_SYSTEMS = ("domainbus", "floor", "eventsourcing")
READ_SYSTEMS = ("domainbus", "floor", "floor-joined")
JOINED_PAGE = (
    "SELECT count(*), max(position), CAST(group_concat(payload, x'') AS BLOB) FROM "
    "(SELECT position, payload FROM domainbus_events WHERE position > ? ORDER BY position "
    "LIMIT ?)"
)
LIST_DECODER: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(
    list[Union[Opened, Deposited]]  # noqa: UP007
)


def joined_pages(cursor: sqlite3.Cursor) -> Iterator[tuple[int, list[Any]]]:
    """(last position, events) of each page of 1,000, fetched and decoded at once."""
    after, decode = 0, LIST_DECODER.decode
    while True:
        count, last, joined = cursor.execute(JOINED_PAGE, (after, 1000)).fetchone()
        if not count:
            return
        yield last, decode(b"\xdd" + count.to_bytes(4, "big") + joined)
        after = last


Run = Callable[[], object]


def prepare_append_sqlite(files: Files, sizes: Sizes, system: str) -> Run:
    """A fresh database; the run appends one event to each of `appends_sqlite` new streams."""
    count = sizes.appends_sqlite
    events = [Opened(account_id=f"a{n}", owner="ada") for n in range(count)]
    path = files.new()
    if system == "domainbus":
        store = SqliteEventStore(path, CODEC)
        assert store.synchronous == "NORMAL"
        files.closing.append(store.close)
        append = store.append
        return lambda: [append(e.account_id, [e], expected_version=0) for e in events]
    if system == "eventsourcing":
        _, es_account = es_classes()
        app = es_app_sqlite(path)
        files.closing.append(app.close)
        return lambda: [app.save(es_account(owner="ada")) for _ in range(count)]
    SqliteEventStore(path, CODEC).close()  # the same schema, then used by hand
    connection = sqlite_connect(path)
    files.closing.append(connection.close)
    cursor, encode = connection.cursor(), ENCODER.encode
    from domainbus.eventstore.sqlite import INSERT, STREAM_VERSION

    def floor() -> None:
        for event in events:
            cursor.execute("BEGIN IMMEDIATE")
            if cursor.execute(STREAM_VERSION, (event.account_id,)).fetchone()[0]:
                raise AssertionError("a new stream")
            cursor.execute(INSERT, (event.account_id, 1, encode(event)))
            cursor.execute("COMMIT")

    def floor_insert() -> None:
        for event in events:
            cursor.execute("BEGIN")
            cursor.execute(INSERT, (event.account_id, 1, encode(event)))
            cursor.execute("COMMIT")

    return floor if system == "floor" else floor_insert


def es_rebuild(app: Any, es_account: Any, count: int) -> Run:
    """Save `count` eventsourcing accounts of 100 events; the run gets each."""
    es_ids = []
    for _ in range(count):
        account = es_account(owner="ada")
        for n in range(EVENTS_PER_AGGREGATE - 1):
            account.deposit(n)
        app.save(account)
        es_ids.append(account.id)
    get = app.repository.get

    def run_es() -> None:
        for account_id in es_ids:
            assert get(account_id).balance == 4851

    return run_es


def fold_rebuild(store: Any, cursor: Any, select: str, ids: list[str]) -> Run:
    """The floor: select the payloads, decode each, fold with a direct call."""
    decode = DECODER.decode

    def run() -> None:
        for account_id in ids:
            rows = cursor.execute(select, (account_id, 1, 2**62, 1000)).fetchall()
            account = Account._blank(account_id)
            for (payload,) in rows:
                event = decode(payload)
                FLOOR_FOLD[type(event)](account, event)
            assert account.balance == 4851

    return run


def repository_rebuild(store: Any, ids: list[str]) -> Run:
    repository = Repository(store, Account)

    def run() -> None:
        for account_id in ids:
            assert repository.get(account_id).balance == 4851

    return run


def prepare_rebuild_sqlite(files: Files, sizes: Sizes, system: str) -> Run:
    """A fresh database of `aggregates` accounts of 100 events; the run rebuilds each."""
    ids = [f"acc-{n}" for n in range(sizes.aggregates)]
    path = files.new()
    if system == "eventsourcing":
        _, es_account = es_classes()
        app = es_app_sqlite(path)
        files.closing.append(app.close)
        return es_rebuild(app, es_account, len(ids))
    store = SqliteEventStore(path, CODEC)
    files.closing.append(store.close)
    for account_id in ids:
        store.append(account_id, history(account_id), expected_version=0)
    if system == "domainbus":
        return repository_rebuild(store, ids)
    from domainbus.eventstore.sqlite import SELECT_STREAM

    return fold_rebuild(store, store.connection.cursor(), SELECT_STREAM, ids)


@pytest.fixture(scope="module")
def stored_db(tmp_path_factory: pytest.TempPathFactory, sizes: Sizes) -> Path:
    """A database of `sizes.stored` events in 1,000 streams, filled by hand (fast)."""
    path = tmp_path_factory.mktemp("eventstore-stored") / "stored.sqlite"
    SqliteEventStore(path, CODEC).close()
    connection = sqlite_connect(path)
    per_stream = max(1, sizes.stored // 1000)
    rows = (
        (f"s{n % 1000}", n // 1000 + 1,
         ENCODER.encode(Deposited(account_id="x", amount=n, event_id=uuid.UUID(int=n + 1))))
        for n in range(per_stream * 1000)
    )  # fmt: skip
    connection.execute("BEGIN")
    connection.executemany(
        "INSERT INTO domainbus_events (stream_id, version, payload) VALUES (?, ?, ?)", rows
    )
    connection.execute("COMMIT")
    connection.close()
    return path


class Stored:
    """The stored database, opened once, and what read_all and catch-up run on it."""

    def __init__(self, path: Path) -> None:
        self.store = SqliteEventStore(path, CODEC)
        self.total = self.store.count_after(0)
        self.counter = Counter(self.store.connection)
        self.runner = ProjectionRunner(self.store, self.counter, page_size=1000)

    def prepare_read_all(self, system: str) -> Run:
        store, total = self.store, self.total
        if system == "domainbus":
            return lambda: sum(1 for _ in store.read_all()) == total or pytest.fail("missed")
        cursor, decode = store.connection.cursor(), DECODER.decode
        from domainbus.eventstore.sqlite import SELECT_ALL

        def floor() -> None:
            after, seen = 0, 0
            while rows := cursor.execute(SELECT_ALL, (after, 1000)).fetchall():
                events = [(row[0], decode(row[3])) for row in rows]
                seen += len(events)
                after = rows[-1][0]
            assert seen == total

        def floor_joined() -> None:
            assert sum(len(events) for _, events in joined_pages(cursor)) == total

        return floor if system == "floor" else floor_joined

    def prepare_catch_up(self, system: str) -> Run:
        total = self.total
        if system == "domainbus":
            self.runner.reset()
            return lambda: self.runner.catch_up() == total or pytest.fail("missed events")
        cursor, decode = self.store.connection.cursor(), DECODER.decode
        handler = FloorCounter().seen
        from domainbus.eventstore.sqlite import SELECT_ALL

        def floor() -> None:
            after, seen = 0, 0
            while rows := cursor.execute(SELECT_ALL, (after, 1000)).fetchall():
                events = [decode(row[3]) for row in rows]
                cursor.execute("BEGIN IMMEDIATE")
                collections.deque(map(handler, events), maxlen=0)
                after = rows[-1][0]
                cursor.execute(
                    "INSERT OR REPLACE INTO domainbus_tracking VALUES ('floor', ?)", (after,)
                )
                cursor.execute("COMMIT")
                seen += len(events)
            assert seen == total

        def floor_joined() -> None:
            seen = 0
            for after, events in joined_pages(cursor):
                cursor.execute("BEGIN IMMEDIATE")
                collections.deque(map(handler, events), maxlen=0)
                cursor.execute(
                    "INSERT OR REPLACE INTO domainbus_tracking VALUES ('floor', ?)", (after,)
                )
                cursor.execute("COMMIT")
                seen += len(events)
            assert seen == total

        return floor if system == "floor" else floor_joined


class Counter(Projection):
    """A projection whose handler counts (the cost of the runner, not of a read model)."""

    name = "counter"
    count = 0

    @handles(DomainEvent)
    def seen(self, event: DomainEvent) -> None:
        self.count += 1


class FloorCounter:
    """The floor's handler: the same work as Counter's."""

    count = 0

    def seen(self, event: DomainEvent) -> None:
        self.count += 1


@pytest.fixture(scope="module")
def stored(stored_db: Path) -> Iterator[Stored]:
    opened = Stored(stored_db)
    yield opened
    opened.store.close()


@pytest.mark.parametrize("system", APPEND_SYSTEMS)
def test_append_sqlite(benchmark: Any, files: Files, sizes: Sizes, system: str) -> None:
    prepare = functools.partial(prepare_append_sqlite, files, sizes, system)
    timed(benchmark, f"append-sqlite:{system}", sizes.appends_sqlite, prepare, sizes.rounds)


@pytest.mark.parametrize("system", REBUILD_SYSTEMS)
def test_rebuild_sqlite(benchmark: Any, files: Files, sizes: Sizes, system: str) -> None:
    prepare = functools.partial(prepare_rebuild_sqlite, files, sizes, system)
    units = sizes.aggregates * EVENTS_PER_AGGREGATE
    timed(benchmark, f"rebuild-sqlite:{system}", units, prepare, sizes.rounds)


@pytest.mark.parametrize("system", READ_SYSTEMS)
def test_read_all_sqlite(benchmark: Any, stored: Stored, sizes: Sizes, system: str) -> None:
    prepare = functools.partial(stored.prepare_read_all, system)
    timed(benchmark, f"read_all-sqlite:{system}", stored.total, prepare, sizes.rounds)


@pytest.mark.parametrize("system", READ_SYSTEMS)
def test_catch_up_sqlite(benchmark: Any, stored: Stored, sizes: Sizes, system: str) -> None:
    prepare = functools.partial(stored.prepare_catch_up, system)
    timed(benchmark, f"catchup-sqlite:{system}", stored.total, prepare, sizes.rounds)


# -- PostgreSQL --------------------------------------------------------------------------------


def _servers() -> Any:
    spec = importlib.util.spec_from_file_location(
        "domainbus_bench_servers", ROOT / "tests" / "servers.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pg_server(sizes: Sizes) -> Iterator[Any]:
    """The bench's own server: fsync=on, except in quick mode (which times nothing)."""
    pytest.importorskip("psycopg")
    with _servers().running_postgres(fsync=sizes is FULL) as server:
        yield server


class Databases:
    """A fresh database per round on the bench's server."""

    def __init__(self, server: Any) -> None:
        import psycopg

        self.server = server
        self.admin = psycopg.connect(server.dsn(), autocommit=True)
        self.numbers = itertools.count()
        self.closing: list[Callable[[], object]] = []

    def new(self) -> str:
        for close in self.closing:
            close()
        self.closing.clear()
        name = f"bench{next(self.numbers)}"
        self.admin.execute(f"CREATE DATABASE {name}")
        return str(self.server.dsn(name))

    def es_app(self, dsn: str) -> Any:
        application, _ = es_classes()
        pytest.importorskip("psycopg_pool", reason="eventsourcing.postgres needs psycopg-pool")
        server = self.server
        app = application(env={
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": dsn.rsplit("/", 1)[1], "POSTGRES_HOST": "127.0.0.1",
            "POSTGRES_PORT": str(server.port), "POSTGRES_USER": server.user,
            "POSTGRES_PASSWORD": "unused (trust)",
        })  # fmt: skip
        self.closing.append(app.close)
        return app


@pytest.fixture(scope="module")
def databases(pg_server: Any) -> Iterator[Databases]:
    made = Databases(pg_server)
    yield made
    for close in made.closing:
        close()
    made.admin.close()


def prepare_append_pg(databases: Databases, sizes: Sizes, system: str) -> Run:
    """A fresh database; the run appends one event to each of `appends_pg` new streams."""
    import psycopg

    from domainbus.eventstore.postgres import PostgresEventStore

    count = sizes.appends_pg
    events = [Opened(account_id=f"a{n}", owner="ada") for n in range(count)]
    dsn = databases.new()
    if system == "eventsourcing":
        _, es_account = es_classes()
        app = databases.es_app(dsn)
        return lambda: [app.save(es_account(owner="ada")) for _ in range(count)]
    store = PostgresEventStore(dsn, CODEC)
    databases.closing.append(store.close)
    if system == "domainbus":
        assert store.synchronous_commit == "on"
        append = store.append
        return lambda: [append(e.account_id, [e], expected_version=0) for e in events]
    connection = psycopg.connect(dsn, autocommit=True)
    databases.closing.append(connection.close)
    cursor, encode = connection.cursor(binary=True), ENCODER.encode
    same = store._append_new  # the very statement the store sends

    def floor() -> None:
        for event in events:
            params = {"stream": event.account_id, "expected": 0, "n": 1,
                      "payloads": [encode(event)]}  # fmt: skip
            row = cursor.execute(same, params).fetchone()
            assert row is not None and row[0] == 1

    def floor_insert() -> None:
        sql = "INSERT INTO domainbus_events (stream_id, version, payload) VALUES (%s, 1, %s)"
        for event in events:
            cursor.execute(sql, (event.account_id, encode(event)))

    return floor if system == "floor" else floor_insert


def prepare_rebuild_pg(databases: Databases, sizes: Sizes, system: str) -> Run:
    """A fresh database of `aggregates` accounts of 100 events; the run rebuilds each."""
    from domainbus.eventstore.postgres import SELECT_STREAM, PostgresEventStore

    ids = [f"acc-{n}" for n in range(sizes.aggregates)]
    dsn = databases.new()
    if system == "eventsourcing":
        _, es_account = es_classes()
        return es_rebuild(databases.es_app(dsn), es_account, len(ids))
    store = PostgresEventStore(dsn, CODEC)
    databases.closing.append(store.close)
    for account_id in ids:
        store.append(account_id, history(account_id), expected_version=0)
    if system == "domainbus":
        return repository_rebuild(store, ids)
    return fold_rebuild(store, store.connection.cursor(binary=True), SELECT_STREAM, ids)


@pytest.mark.parametrize("system", APPEND_SYSTEMS)
def test_append_postgres(benchmark: Any, databases: Databases, sizes: Sizes, system: str) -> None:
    prepare = functools.partial(prepare_append_pg, databases, sizes, system)
    timed(benchmark, f"append-pg:{system}", sizes.appends_pg, prepare, sizes.rounds)


@pytest.mark.parametrize("system", REBUILD_SYSTEMS)
def test_rebuild_postgres(benchmark: Any, databases: Databases, sizes: Sizes, system: str) -> None:
    prepare = functools.partial(prepare_rebuild_pg, databases, sizes, system)
    units = sizes.aggregates * EVENTS_PER_AGGREGATE
    timed(benchmark, f"rebuild-pg:{system}", units, prepare, sizes.rounds)


# -- the systems in turns ------------------------------------------------------------------------


def in_turns(
    request: pytest.FixtureRequest, workload: str, systems: tuple[str, ...],
    prepare: Callable[[str], Run], turns: int,
) -> None:  # fmt: skip
    """Run the systems one after the other, `turns` times, the order reversed every turn (so
    no place is favoured); keep each turn's times for the per-turn ratios."""
    if request.config.getoption("benchmark_disable", False):
        turns = 1
    times: dict[str, list[float]] = {system: [] for system in systems}
    for turn in range(turns):
        for system in systems if turn % 2 == 0 else systems[::-1]:
            run = prepare(system)
            start = time.perf_counter()
            run()
            times[system].append(time.perf_counter() - start)
    RESULTS.turns[workload] = times


def test_in_turns_append_sqlite(request: pytest.FixtureRequest, files: Files, sizes: Sizes) -> None:
    prepare = functools.partial(prepare_append_sqlite, files, sizes)
    in_turns(request, "append-sqlite", APPEND_SYSTEMS, prepare, 6)


def test_in_turns_rebuild_sqlite(
    request: pytest.FixtureRequest, files: Files, sizes: Sizes
) -> None:
    prepare = functools.partial(prepare_rebuild_sqlite, files, sizes)
    in_turns(request, "rebuild-sqlite", REBUILD_SYSTEMS, prepare, 4)


def test_in_turns_read_sqlite(request: pytest.FixtureRequest, stored: Stored) -> None:
    in_turns(request, "read_all-sqlite", READ_SYSTEMS, stored.prepare_read_all, 2)
    in_turns(request, "catchup-sqlite", READ_SYSTEMS, stored.prepare_catch_up, 2)


def test_in_turns_postgres(
    request: pytest.FixtureRequest, databases: Databases, sizes: Sizes
) -> None:
    in_turns(request, "append-pg", APPEND_SYSTEMS,
             functools.partial(prepare_append_pg, databases, sizes), 4)  # fmt: skip
    in_turns(request, "rebuild-pg", REBUILD_SYSTEMS,
             functools.partial(prepare_rebuild_pg, databases, sizes), 4)  # fmt: skip
