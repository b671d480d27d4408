"""The outbox against hand-written sqlite3 floors, side by side in one run, WAL, NORMAL and FULL.

- write: 10,000 units of work, each inserting one user row and recording one event (stored in
  the outbox in the same transaction, then dispatched to one no-op handler), against plain
  sqlite3 doing the same two INSERTs in one transaction each, the event pre-encoded with
  msgspec. Two floors: "floor", the outbox table with a partial index on undelivered rows (as
  in shared/notes/durability.md: what a hand-written outbox needs to find its backlog), and
  "floor-noindex", the bare table. Target: within 1.3x of the floor.
- relay: 100,000 stored events relayed in batches of 1,000 to one no-op handler, against the
  floor: select 1,000 rows by id, decode them with one reused msgspec decoder, call the
  handler, mark them done with one UPDATE. Target: within 1.25x.

Every round starts from a fresh database file (not timed). The pytest-benchmark tests time
each system in rounds of its own; on a shared machine a burst of someone else's disk or CPU
use lands on one system's rounds only, so the `paired` tests also run the systems in turns
(the order swapped every turn, since the second place pays for the first's disk writes) and
take the median of the per-turn ratios. Both kinds of
ratio are printed at the end of the run:

    pytest benches/test_outbox.py --benchmark-group-by=group

Add `--benchmark-timer time.process_time` to compare CPU time instead (both kinds follow it):
steadier on a busy machine, but blind to the time spent waiting for fsync.
"""

from __future__ import annotations

import collections
import itertools
import os
import sqlite3
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
SYSTEMS = {"write": ("domainbus", "floor", "floor-noindex"), "relay": ("domainbus", "floor")}
PAIRS = {"NORMAL": 6, "FULL": 4}  # rounds of the paired tests, in turns


class UserRegistered(DomainEvent):
    user_id: str
    username: str
    email: str


class UserRenamed(DomainEvent):
    user_id: str
    username: str


CODEC = EventCodec(UserRegistered, UserRenamed)
DECODER: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(
    Union[UserRegistered, UserRenamed]  # noqa: UP007 (the floor decodes the same union)
)
USERS = "CREATE TABLE users (id INTEGER PRIMARY KEY, username TEXT NOT NULL)"
FLOOR_OUTBOX = (
    "CREATE TABLE outbox (id INTEGER PRIMARY KEY, payload BLOB NOT NULL, "
    "delivered INTEGER NOT NULL DEFAULT 0)"
)
FLOOR_INDEX = "CREATE INDEX outbox_undelivered ON outbox (id) WHERE delivered = 0"
SELECT_BATCH = "SELECT id, payload FROM outbox WHERE delivered = 0 AND id > ? ORDER BY id LIMIT ?"


def noop(event: object) -> None:
    """The one handler."""


def make_events(count: int) -> list[UserRegistered]:
    return [
        UserRegistered(user_id=f"u{n}", username=f"user{n}", email=f"user{n}@example.com")
        for n in range(count)
    ]


EVENTS = make_events(STORED)
PAYLOADS = [msgspec.msgpack.encode(event) for event in EVENTS]


def connect(path: Path, level: str) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None)
    assert connection.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal"
    connection.execute(f"PRAGMA synchronous = {level}")
    connection.execute("PRAGMA busy_timeout = 5000")
    return connection


def new_dispatcher() -> Any:
    dispatcher = domainbus.Dispatcher()
    dispatcher.register_handler(UserRegistered, noop)
    return dispatcher


def new_outbox(connection: sqlite3.Connection, level: str) -> SqliteOutbox:
    outbox = SqliteOutbox(connection, CODEC, synchronous=level)  # type: ignore[arg-type]
    assert outbox.synchronous == level and outbox.journal_mode == "wal"
    return outbox


# -- the systems: each prepares a fresh database and returns what to time ---------------------


def prepare_write(system: str, connection: sqlite3.Connection, level: str) -> Callable[[], None]:
    connection.execute(USERS)
    events = EVENTS[:WRITES]
    cursor = connection.cursor()
    if system == "domainbus":
        outbox, dispatcher = new_outbox(connection, level), new_dispatcher()

        def run_domainbus() -> None:
            for n, event in enumerate(events):
                with UnitOfWork(dispatcher, connection, outbox=outbox) as uow:
                    cursor.execute("INSERT INTO users VALUES (?, ?)", (n, event.username))
                    uow.record(event)

        return run_domainbus
    connection.execute(FLOOR_OUTBOX)
    if system == "floor":
        connection.execute(FLOOR_INDEX)
    rows = list(zip(range(WRITES), events, PAYLOADS, strict=False))

    def run_floor() -> None:
        for n, event, payload in rows:
            cursor.execute("BEGIN")
            cursor.execute("INSERT INTO users VALUES (?, ?)", (n, event.username))
            cursor.execute("INSERT INTO outbox (payload) VALUES (?)", (payload,))
            cursor.execute("COMMIT")

    return run_floor


def prepare_relay(system: str, connection: sqlite3.Connection, level: str) -> Callable[[], None]:
    rows = [(payload,) for payload in PAYLOADS]
    if system == "domainbus":
        outbox, dispatcher = new_outbox(connection, level), new_dispatcher()
        connection.execute("BEGIN")
        connection.executemany("INSERT INTO domainbus_outbox (payload) VALUES (?)", rows)
        connection.execute("COMMIT")

        def run_domainbus() -> None:
            assert outbox.relay(dispatcher, batch_size=BATCH).delivered == STORED

        return run_domainbus
    connection.execute(FLOOR_OUTBOX)
    connection.execute(FLOOR_INDEX)
    connection.execute("BEGIN")
    connection.executemany("INSERT INTO outbox (payload) VALUES (?)", rows)
    connection.execute("COMMIT")
    cursor = connection.cursor()
    decode = DECODER.decode

    def run_floor() -> None:
        last, delivered = 0, 0
        while batch := cursor.execute(SELECT_BATCH, (last, BATCH)).fetchall():
            events = [decode(payload) for _, payload in batch]
            collections.deque(map(noop, events), maxlen=0)
            ids = [row_id for row_id, _ in batch]
            marks = ", ".join("?" * len(ids))
            cursor.execute(f"UPDATE outbox SET delivered = 1 WHERE id IN ({marks})", ids)
            last, delivered = ids[-1], delivered + len(ids)
        assert delivered == STORED

    return run_floor


PREPARE = {"write": prepare_write, "relay": prepare_relay}
UNITS = {"write": WRITES, "relay": STORED}


class Rounds:
    """Fresh databases, one per round; the previous round's connection is closed first."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.numbers = itertools.count()
        self.open: sqlite3.Connection | None = None

    def prepare(self, bench: str, system: str, level: str) -> Callable[[], None]:
        self.close()
        self.open = connect(self.root / f"round{next(self.numbers)}.db", level)
        run = PREPARE[bench](system, self.open, level)
        # Write back what earlier rounds and this set-up left in the page cache, so that the
        # kernel does not flush it during the timed run.
        os.sync()
        return run

    def close(self) -> None:
        if self.open is not None:
            self.open.close()
            self.open = None


@pytest.fixture(scope="module")
def rounds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rounds]:
    fresh = Rounds(tmp_path_factory.mktemp("outbox-bench"))
    yield fresh
    fresh.close()


# -- the report --------------------------------------------------------------------------------


@dataclass
class Results:
    medians: dict[tuple[str, str, str], float]  # (bench, level, system) -> s per unit
    paired: dict[tuple[str, str, str], list[float]]  # (bench, level, floor) -> ratios


RESULTS = Results({}, {})


class RatioReport:
    """A plugin registered at run time: prints the ratios in the terminal summary."""

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not (RESULTS.medians or RESULTS.paired):
            return
        write = terminalreporter.write_line
        terminalreporter.section("outbox ratios, domainbus / floor (this run)")
        write(f"WAL, SQLite {sqlite3.sqlite_version}, CPython, Rust dispatcher")
        for bench, level in itertools.product(TARGETS, LEVELS):
            unit = "transaction" if bench == "write" else "event"
            ours = RESULTS.medians.get((bench, level, "domainbus"))
            for floor in SYSTEMS[bench][1:]:
                base = RESULTS.medians.get((bench, level, floor))
                pairs = RESULTS.paired.get((bench, level, floor), [])
                parts = []
                if ours is not None and base is not None:
                    parts.append(
                        f"medians {ours * 1e6:.2f} / {base * 1e6:.2f} us per {unit} "
                        f"= {ours / base:.3f}x"
                    )
                if pairs:
                    ratio = statistics.median(pairs)
                    verdict = "met" if ratio <= TARGETS[bench] else "MISSED"
                    parts.append(
                        f"paired {ratio:.3f}x over {len(pairs)} pairs "
                        f"(target <= {TARGETS[bench]}: {verdict})"
                    )
                if parts:
                    write(f"{bench} synchronous={level} vs {floor}: {'; '.join(parts)}")


@pytest.fixture(scope="module", autouse=True)
def report_ratios(request: pytest.FixtureRequest) -> None:
    """Have the ratios printed at the end of the run (test modules cannot hook the summary)."""
    manager = request.config.pluginmanager
    if not manager.has_plugin("domainbus-outbox-ratios"):
        manager.register(RatioReport(), "domainbus-outbox-ratios")


# -- the benchmarks ----------------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("system", SYSTEMS["write"])
def test_write(benchmark: Any, rounds: Rounds, level: str, system: str) -> None:
    timed("write", benchmark, rounds, level, system, 5 if level == "NORMAL" else 3)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("system", SYSTEMS["relay"])
def test_relay(benchmark: Any, rounds: Rounds, level: str, system: str) -> None:
    timed("relay", benchmark, rounds, level, system, 5)


def timed(bench: str, benchmark: Any, rounds: Rounds, level: str, system: str, count: int) -> None:
    benchmark.group = f"outbox {bench}: synchronous={level}"
    benchmark.extra_info.update(journal_mode="wal", synchronous=level, units=UNITS[bench])
    benchmark.pedantic(
        lambda run: run(),
        setup=lambda: ((rounds.prepare(bench, system, level),), {}),
        rounds=count,
        iterations=1,
    )
    stats = getattr(benchmark, "stats", None)
    if stats:
        per_unit = stats.stats.median / UNITS[bench]
        RESULTS.medians[bench, level, system] = per_unit
        benchmark.extra_info["us_per_unit"] = per_unit * 1e6


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("bench", list(TARGETS))
def test_paired(request: pytest.FixtureRequest, rounds: Rounds, bench: str, level: str) -> None:
    """The systems in turn, round after round; the ratio of each round's times."""
    disabled = request.config.getoption("benchmark_disable", False)
    timer = request.config.getoption("benchmark_timer", None)  # follows --benchmark-timer
    clock: Callable[[], float] = timer if callable(timer) else time.perf_counter
    times: dict[str, list[float]] = {system: [] for system in SYSTEMS[bench]}
    for turn in range(1 if disabled else PAIRS[level]):
        order = SYSTEMS[bench] if turn % 2 == 0 else SYSTEMS[bench][::-1]  # no place is favoured
        for system in order:
            run = rounds.prepare(bench, system, level)
            start = clock()
            run()
            times[system].append(clock() - start)
    for floor in SYSTEMS[bench][1:]:
        RESULTS.paired[bench, level, floor] = [
            ours / base for ours, base in zip(times["domainbus"], times[floor], strict=True)
        ]
