"""The outbox against hand-written sqlite3 floors, side by side in one run, WAL, NORMAL and FULL.

- write: 10,000 units of work, each inserting one user row and recording one event (stored in
  the outbox in the same transaction, then dispatched to one no-op handler), against plain
  sqlite3 doing the same two INSERTs in one transaction each, the event pre-encoded with
  msgspec. Two floors: the outbox table with a partial index on undelivered rows (the floor of
  shared/notes/durability.md, what a hand-written outbox needs to find its backlog) and the
  bare table (no index at all). Target: within 1.3x of the floor.
- relay: 100,000 stored events relayed in batches of 1,000 to one no-op handler, against the
  floor: select 1,000 rows by id, decode them with one reused msgspec decoder, call the
  handler, mark them done with one UPDATE. Target: within 1.25x.

Every round starts from a fresh database file (its set-up is not timed). The ratios of the
medians are printed at the end of the run:

    pytest benches/test_outbox.py --benchmark-group-by=group
"""

from __future__ import annotations

import collections
import itertools
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, Union

import msgspec
import pytest

import domainbus
from domainbus import DomainEvent
from domainbus.codec import EventCodec
from domainbus.outbox import SqliteOutbox
from domainbus.uow import UnitOfWork

WRITES = 10_000
STORED = 100_000
BATCH = 1_000
LEVELS = ("NORMAL", "FULL")
TARGETS = {"write": 1.3, "relay": 1.25}


class UserRegistered(DomainEvent):
    user_id: str
    username: str
    email: str


class UserRenamed(DomainEvent):
    user_id: str
    username: str


CODEC = EventCodec(UserRegistered, UserRenamed)
USERS = "CREATE TABLE users (id INTEGER PRIMARY KEY, username TEXT NOT NULL)"
FLOOR_OUTBOX = (
    "CREATE TABLE outbox (id INTEGER PRIMARY KEY, payload BLOB NOT NULL, "
    "delivered INTEGER NOT NULL DEFAULT 0)"
)
FLOOR_INDEX = "CREATE INDEX outbox_undelivered ON outbox (id) WHERE delivered = 0"

MEDIANS: dict[tuple[str, str, str], float] = {}  # (bench, level, system) -> s per unit
MINIMA: dict[tuple[str, str, str], float] = {}


def noop(event: object) -> None:
    """The one handler."""


def make_events(count: int) -> list[UserRegistered]:
    return [
        UserRegistered(user_id=f"u{n}", username=f"user{n}", email=f"user{n}@example.com")
        for n in range(count)
    ]


def connect(path: Path, level: str) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None)
    assert connection.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal"
    connection.execute(f"PRAGMA synchronous = {level}")
    connection.execute("PRAGMA busy_timeout = 5000")
    return connection


class Files:
    """A fresh database path for every round."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.numbers = itertools.count()

    def new(self) -> Path:
        return self.root / f"round{next(self.numbers)}.db"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    return Files(tmp_path_factory.mktemp("outbox-bench"))


class RatioReport:
    """A plugin registered at run time: prints the ratios in the terminal summary."""

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not MEDIANS:
            return
        write = terminalreporter.write_line
        terminalreporter.section("outbox ratios, domainbus / floor (this run)")
        write(f"WAL, SQLite {sqlite3.sqlite_version}; median of the rounds, best round in brackets")
        for bench, level in itertools.product(TARGETS, LEVELS):
            unit = "transaction" if bench == "write" else "event"
            ours = (bench, level, "domainbus")
            for floor in ("floor", "floor-noindex"):
                base = (bench, level, floor)
                if ours not in MEDIANS or base not in MEDIANS:
                    continue
                ratio = MEDIANS[ours] / MEDIANS[base]
                best = MINIMA[ours] / MINIMA[base]
                verdict = "met" if ratio <= TARGETS[bench] else "MISSED"
                write(
                    f"{bench} synchronous={level}: domainbus {MEDIANS[ours] * 1e6:.2f} us, "
                    f"{floor} {MEDIANS[base] * 1e6:.2f} us per {unit}: {ratio:.3f}x "
                    f"[{best:.3f}x] (target <= {TARGETS[bench]}) {verdict}"
                )


@pytest.fixture(scope="module", autouse=True)
def report_ratios(request: pytest.FixtureRequest) -> None:
    """Have the ratios printed at the end of the run (test modules cannot hook the summary)."""
    manager = request.config.pluginmanager
    if not manager.has_plugin("domainbus-outbox-ratios"):
        manager.register(RatioReport(), "domainbus-outbox-ratios")


def measure(
    benchmark: Any,
    key: tuple[str, str, str],
    setup: Callable[[], tuple[tuple[Any, ...], dict[str, Any]]],
    run: Callable[..., object],
    units: int,
    rounds: int,
) -> None:
    benchmark.group = f"outbox {key[0]}: synchronous={key[1]}"
    benchmark.extra_info.update(journal_mode="wal", synchronous=key[1], units=units)
    benchmark.pedantic(run, setup=setup, rounds=rounds, iterations=1)
    stats = getattr(benchmark, "stats", None)
    if stats:
        MEDIANS[key] = stats.stats.median / units
        MINIMA[key] = stats.stats.min / units
        benchmark.extra_info["us_per_unit"] = MEDIANS[key] * 1e6


# -- write -----------------------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("system", ["domainbus", "floor", "floor-noindex"])
def test_write(benchmark: Any, files: Files, level: str, system: str) -> None:
    events = make_events(WRITES)
    rounds = 5 if level == "NORMAL" else 3
    opened: list[Any] = []

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        for thing in opened:
            thing.close()
        connection = connect(files.new(), level)
        connection.execute(USERS)
        opened[:] = [connection]
        if system == "domainbus":
            outbox = SqliteOutbox(connection, CODEC, synchronous=level)  # type: ignore[arg-type]
            assert outbox.synchronous == level and outbox.journal_mode == "wal"
            dispatcher = domainbus.Dispatcher()
            dispatcher.register_handler(UserRegistered, noop)
            return (connection, outbox, dispatcher), {}
        connection.execute(FLOOR_OUTBOX)
        if system == "floor":
            connection.execute(FLOOR_INDEX)
        return (connection, [msgspec.msgpack.encode(e) for e in events]), {}

    def run_domainbus(
        connection: sqlite3.Connection, outbox: SqliteOutbox, dispatcher: Any
    ) -> None:
        cursor = connection.cursor()
        for n, event in enumerate(events):
            with UnitOfWork(dispatcher, connection, outbox=outbox) as uow:
                cursor.execute("INSERT INTO users VALUES (?, ?)", (n, event.username))
                uow.record(event)

    def run_floor(connection: sqlite3.Connection, payloads: list[bytes]) -> None:
        cursor = connection.cursor()
        for n, (event, payload) in enumerate(zip(events, payloads, strict=True)):
            cursor.execute("BEGIN")
            cursor.execute("INSERT INTO users VALUES (?, ?)", (n, event.username))
            cursor.execute("INSERT INTO outbox (payload) VALUES (?)", (payload,))
            cursor.execute("COMMIT")

    run = run_domainbus if system == "domainbus" else run_floor
    measure(benchmark, ("write", level, system), setup, run, WRITES, rounds)
    for thing in opened:
        thing.close()


# -- relay -----------------------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("system", ["domainbus", "floor"])
def test_relay(benchmark: Any, files: Files, level: str, system: str) -> None:
    payloads = [(msgspec.msgpack.encode(e),) for e in make_events(STORED)]
    opened: list[Any] = []

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        for thing in opened:
            thing.close()
        connection = connect(files.new(), level)
        opened[:] = [connection]
        if system == "domainbus":
            outbox = SqliteOutbox(connection, CODEC, synchronous=level)  # type: ignore[arg-type]
            connection.execute("BEGIN")
            connection.executemany("INSERT INTO domainbus_outbox (payload) VALUES (?)", payloads)
            connection.execute("COMMIT")
            dispatcher = domainbus.Dispatcher()
            dispatcher.register_handler(UserRegistered, noop)
            return (outbox, dispatcher), {}
        connection.execute(FLOOR_OUTBOX)
        connection.execute(FLOOR_INDEX)
        connection.execute("BEGIN")
        connection.executemany("INSERT INTO outbox (payload) VALUES (?)", payloads)
        connection.execute("COMMIT")
        return (connection,), {}

    def run_domainbus(outbox: SqliteOutbox, dispatcher: Any) -> None:
        assert outbox.relay(dispatcher, batch_size=BATCH).delivered == STORED

    decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(
        Union[UserRegistered, UserRenamed]  # noqa: UP007
    )

    def run_floor(connection: sqlite3.Connection) -> None:
        cursor = connection.cursor()
        decode = decoder.decode
        last, delivered = 0, 0
        while rows := cursor.execute(
            "SELECT id, payload FROM outbox WHERE delivered = 0 AND id > ? ORDER BY id LIMIT ?",
            (last, BATCH),
        ).fetchall():
            events = [decode(payload) for _, payload in rows]
            collections.deque(map(noop, events), maxlen=0)
            ids = [row_id for row_id, _ in rows]
            marks = ", ".join("?" * len(ids))
            cursor.execute(f"UPDATE outbox SET delivered = 1 WHERE id IN ({marks})", ids)
            last, delivered = ids[-1], delivered + len(ids)
        assert delivered == STORED

    run = run_domainbus if system == "domainbus" else run_floor
    measure(benchmark, ("relay", level, system), setup, run, STORED, 5)
    for thing in opened:
        thing.close()
