"""The PostgreSQL outbox against hand-written psycopg / SQLAlchemy floors, side by side in one run.

A private PostgreSQL server (Debian's binaries, started by tests/servers.py's `running_postgres`
with fsync on, so that commits cost what they cost) runs for the module; without the binaries
the module is skipped (failed under CI=true).

- write: units of work each inserting one user row and recording one event (stored in the
  outbox in the same transaction, then dispatched to one no-op handler), on a psycopg
  connection and on SQLAlchemy sessions, against the same two INSERTs by hand in one
  transaction (the floor's outbox table has a partial index on undelivered rows, as a
  hand-written outbox needs; it encodes each event with msgspec, as any outbox must).
  synchronous_commit on and off. Target: within 1.3x. `test_paired` runs both on one set of
  tables in 40 blocks of 50 units, taking turns block by block (the machine's load comes in
  bursts of seconds), and reports the median ratio of adjacent blocks, the ratio of the totals
  and this process's CPU per unit (the part the library decides: the server's is the same
  SQL, give or take the deferred delete):

    pytest benches/test_outbox_postgres.py -k "paired and write" -s
- relay: 100,000 stored events relayed in batches of 1,000 to one no-op handler, against the
  floor: select 1,000 undelivered rows by id, decode them with one msgspec decoder, call the
  handler, mark them delivered with one UPDATE ... WHERE id = ANY(ids), commit. Target: 1.25x.
- relays: the same 100,000 events drained by 1 relay process and by 4 (the speed-up; this
  machine has 2 cores, shared).
- latency: commit-to-handler delay with a relay process waiting on LISTEN/NOTIFY (`serve`):
  median and p99.

    pytest benches/test_outbox_postgres.py --benchmark-group-by=group

Under `--benchmark-disable` (CI's quick pass) the counts shrink to a handful: seconds.
"""

from __future__ import annotations

import functools
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

psycopg = pytest.importorskip("psycopg")
sqlalchemy = pytest.importorskip("sqlalchemy")

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

import domainbus  # noqa: E402
from domainbus import DomainEvent  # noqa: E402
from domainbus.codec import EventCodec  # noqa: E402
from domainbus.outbox import PostgresOutbox  # noqa: E402
from domainbus.uow import UnitOfWork  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from servers import running_postgres  # noqa: E402

LEVELS = ("on", "off")
TARGETS = {"write": 1.3, "relay": 1.25}
BATCH = 1_000


class UserRegistered(DomainEvent):
    user_id: str
    username: str
    email: str


class Stamped(DomainEvent):
    n: int


CODEC = EventCodec(UserRegistered, Stamped)
DECODER: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(UserRegistered | Stamped)
USERS = "CREATE TABLE IF NOT EXISTS users (id bigint PRIMARY KEY, username text NOT NULL)"
FLOOR_OUTBOX = (
    "CREATE TABLE IF NOT EXISTS outbox (id bigserial PRIMARY KEY, payload bytea NOT NULL, "
    "delivered boolean NOT NULL DEFAULT false)"
)
FLOOR_INDEX = "CREATE INDEX IF NOT EXISTS outbox_undelivered ON outbox (id) WHERE NOT delivered"


def noop(event: object) -> None:
    """The one handler."""


def make_events(count: int) -> list[UserRegistered]:
    return [
        UserRegistered(user_id=f"u{n}", username=f"user{n}", email=f"user{n}@example.com")
        for n in range(count)
    ]


class Results:
    """Per-unit medians, paired ratios and the notes printed at the end of the run."""

    def __init__(self) -> None:
        self.medians: dict[tuple[str, str, str], float] = {}
        self.paired: dict[tuple[str, str, str], list[float]] = {}
        self.lines: list[str] = []


RESULTS = Results()


class Report:
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not (RESULTS.medians or RESULTS.paired or RESULTS.lines):
            return
        write = terminalreporter.write_line
        terminalreporter.section("PostgreSQL outbox ratios, domainbus / floor (this run)")
        for (bench, level, system), ours in sorted(RESULTS.medians.items()):
            if system.startswith("floor"):
                continue
            floor = RESULTS.medians.get((bench, level, f"floor-{system}"))
            if floor is None:
                continue
            ratio = ours / floor
            verdict = "met" if ratio <= TARGETS[bench] else "MISSED"
            write(
                f"{bench} {system} synchronous_commit={level}, medians of separate rounds: "
                f"{ours * 1e6:.1f} / {floor * 1e6:.1f} us = {ratio:.3f}x "
                f"(target <= {TARGETS[bench]}: {verdict})"
            )
        for (bench, level, system), ratios in sorted(RESULTS.paired.items()):
            ratio = statistics.median(ratios)
            verdict = "met" if ratio <= TARGETS[bench] else "MISSED"
            write(
                f"{bench} {system} synchronous_commit={level}, paired (median of {len(ratios)} "
                f"turns, systems in alternating order): {ratio:.3f}x "
                f"(target <= {TARGETS[bench]}: {verdict}); per turn "
                + ", ".join(f"{r:.2f}" for r in ratios)
            )
        for line in RESULTS.lines:
            write(line)


@pytest.fixture(scope="module", autouse=True)
def report(request: pytest.FixtureRequest) -> None:
    manager = request.config.pluginmanager
    if not manager.has_plugin("domainbus-pg-outbox-ratios"):
        manager.register(Report(), "domainbus-pg-outbox-ratios")


@pytest.fixture(scope="module")
def quick(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("benchmark_disable", False))


@pytest.fixture(scope="module")
def server(quick: bool) -> Iterator[Any]:
    """fsync on for the timings; off in the quick pass, which only checks that every path runs."""
    with running_postgres(fsync=not quick) as running:
        yield running


@pytest.fixture(scope="module")
def dsn(server: Any) -> str:
    """One database for the module (CREATE DATABASE syncs the copy: seconds with fsync on);
    each benchmark starts by dropping the tables it uses."""
    with psycopg.connect(server.dsn(), autocommit=True) as admin:
        admin.execute("CREATE DATABASE bench")
    url: str = server.dsn("bench")
    return url


def drop_tables(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(
            "DROP TABLE IF EXISTS users, outbox, domainbus_outbox, domainbus_dead_letters, "
            "domainbus_processed CASCADE"
        )


def record(benchmark: Any, key: tuple[str, str, str], units: int) -> None:
    stats = getattr(benchmark, "stats", None)
    if stats:
        RESULTS.medians[key] = stats.stats.median / units
        benchmark.extra_info["us_per_unit"] = stats.stats.median / units * 1e6


# -- write ---------------------------------------------------------------------------------------


def make_write_tables(dsn: str) -> None:
    drop_tables(dsn)
    with psycopg.connect(dsn, autocommit=True) as setup:
        setup.execute(USERS)
        setup.execute(FLOOR_OUTBOX)
        setup.execute(FLOOR_INDEX)


Writer = Callable[[int, int], None]  # writes units start..stop-1 (user ids offset..)


def write_runner(
    system: str, dsn: str, level: str, events: list[UserRegistered], offset: int = 0
) -> tuple[Writer, Any]:
    """(a writer of units `start:stop` of `events`, what to close), on tables that exist: one
    transaction per unit, of one user row (id `offset + n`) and one event."""
    encode = msgspec.msgpack.Encoder().encode  # a hand-written outbox encodes its events too
    dispatcher = domainbus.Dispatcher()
    dispatcher.register_handler(UserRegistered, noop)
    insert_user = "INSERT INTO users VALUES (%s, %s)"
    if system in ("psycopg", "floor-psycopg"):
        connection = psycopg.connect(dsn)  # autocommit off, as applications run it
        connection.execute("SELECT set_config('synchronous_commit', %s, false)", (level,))
        connection.commit()
        if system == "psycopg":
            outbox = PostgresOutbox(connection, CODEC, synchronous_commit=level)  # type: ignore[arg-type]

            def run_ours(start: int, stop: int) -> None:
                for n in range(start, stop):
                    event = events[n]
                    with UnitOfWork(dispatcher, connection, outbox=outbox) as uow:
                        connection.execute(insert_user, (offset + n, event.username))
                        uow.record(event)

            return run_ours, connection

        def run_floor(start: int, stop: int) -> None:
            for n in range(start, stop):
                event = events[n]
                connection.execute(insert_user, (offset + n, event.username))
                connection.execute("INSERT INTO outbox (payload) VALUES (%s)", (encode(event),))
                connection.commit()
                noop(event)

        return run_floor, connection
    url = dsn.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = create_engine(url, connect_args={"options": f"-c synchronous_commit={level}"})
    insert_user_sa = text("INSERT INTO users VALUES (:id, :name)")
    if system == "sqlalchemy":
        box = PostgresOutbox(dsn, CODEC, synchronous_commit=level)  # type: ignore[arg-type]

        def run_ours_sa(start: int, stop: int) -> None:
            for n in range(start, stop):
                event = events[n]
                with Session(engine) as session:
                    with UnitOfWork(dispatcher, session, outbox=box) as uow:
                        session.execute(insert_user_sa, {"id": offset + n, "name": event.username})
                        uow.record(event)

        def close_both() -> None:
            box.close()
            engine.dispose()

        return run_ours_sa, _Closer(close_both)
    insert_event_sa = text("INSERT INTO outbox (payload) VALUES (:payload)")

    def run_floor_sa(start: int, stop: int) -> None:
        for n in range(start, stop):
            event = events[n]
            with Session(engine) as session:
                session.execute(insert_user_sa, {"id": offset + n, "name": event.username})
                session.execute(insert_event_sa, {"payload": encode(event)})
                session.commit()
            noop(event)

    return run_floor_sa, _Closer(engine.dispose)


def prepare_write(system: str, dsn: str, level: str, count: int) -> tuple[Callable[[], None], Any]:
    """(what to time, what to close): `count` transactions of one user row and one event, on
    fresh tables."""
    make_write_tables(dsn)
    write, closer = write_runner(system, dsn, level, make_events(count))
    return functools.partial(write, 0, count), closer


class _Closer:
    def __init__(self, close: Callable[[], None]) -> None:
        self.close = close


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("system", ["psycopg", "floor-psycopg", "sqlalchemy", "floor-sqlalchemy"])
def test_write(benchmark: Any, dsn: str, quick: bool, level: str, system: str) -> None:
    count = 5 if quick else 1_000
    opened: list[Any] = []

    def setup() -> tuple[tuple[Callable[[], None]], dict[str, Any]]:
        for thing in opened:
            thing.close()
        opened.clear()
        run, closer = prepare_write(system, dsn, level, count)
        opened.append(closer)
        return (run,), {}

    benchmark.group = f"pg outbox write: synchronous_commit={level}"
    benchmark.extra_info.update(units=count, synchronous_commit=level)
    benchmark.pedantic(lambda run: run(), setup=setup, rounds=1 if quick else 5, iterations=1)
    for thing in opened:
        thing.close()
    kind = system.removeprefix("floor-")
    record(benchmark, ("write", level, system if system == kind else f"floor-{kind}"), count)


# -- relay ---------------------------------------------------------------------------------------


def seed(dsn: str, table: str, payloads: list[bytes]) -> None:
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(f"TRUNCATE {table}")
        for start in range(0, len(payloads), 20_000):
            connection.execute(
                f"INSERT INTO {table} (payload) SELECT unnest(%s::bytea[])",
                (payloads[start : start + 20_000],),
            )
        connection.execute(f"VACUUM ANALYZE {table}")


def prepare_relay(system: str, dsn: str, payloads: list[bytes]) -> tuple[Callable[[], None], Any]:
    total = len(payloads)
    if system == "domainbus":
        outbox = PostgresOutbox(dsn, CODEC)
        seed(dsn, "domainbus_outbox", payloads)
        dispatcher = domainbus.Dispatcher()
        dispatcher.register_handler(UserRegistered, noop)

        def run_ours() -> None:
            assert outbox.relay(dispatcher, batch_size=BATCH).delivered == total

        return run_ours, outbox
    with psycopg.connect(dsn, autocommit=True) as setup:
        setup.execute(FLOOR_OUTBOX)
        setup.execute(FLOOR_INDEX)
    seed(dsn, "outbox", payloads)
    connection = psycopg.connect(dsn)
    decode = DECODER.decode
    select = "SELECT id, payload FROM outbox WHERE NOT delivered AND id > %s ORDER BY id LIMIT %s"
    update = "UPDATE outbox SET delivered = true WHERE id = ANY(%s)"

    def run_floor() -> None:
        last, delivered = 0, 0
        while rows := connection.execute(select, (last, BATCH)).fetchall():
            for event in [decode(payload) for _, payload in rows]:
                noop(event)
            ids = [row_id for row_id, _ in rows]
            connection.execute(update, (ids,))
            connection.commit()
            last, delivered = ids[-1], delivered + len(ids)
        assert delivered == total

    return run_floor, connection


@pytest.mark.parametrize("system", ["domainbus", "floor-domainbus"])
def test_relay(benchmark: Any, dsn: str, quick: bool, system: str) -> None:
    total = 200 if quick else 100_000
    payloads = [msgspec.msgpack.encode(event) for event in make_events(total)]
    drop_tables(dsn)
    opened: list[Any] = []

    def setup() -> tuple[tuple[Callable[[], None]], dict[str, Any]]:
        for thing in opened:
            thing.close()
        opened.clear()
        run, closer = prepare_relay(system, dsn, payloads)
        opened.append(closer)
        return (run,), {}

    benchmark.group = "pg outbox relay"
    benchmark.extra_info.update(units=total)
    benchmark.pedantic(lambda run: run(), setup=setup, rounds=1 if quick else 5, iterations=1)
    for thing in opened:
        thing.close()
    record(benchmark, ("relay", "on", system), total)


# -- paired: ours and the floor in turns, so that a burst of load hits both alike -----------


def timed_once(prepare: Callable[[], tuple[Callable[[], None], Any]]) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of one run."""
    run, closer = prepare()
    try:
        start, used = time.perf_counter(), time.process_time()
        run()
        return time.perf_counter() - start, time.process_time() - used
    finally:
        closer.close()


@pytest.mark.parametrize(
    ("bench", "system", "level"),
    [
        ("write", "psycopg", "on"),
        ("write", "sqlalchemy", "on"),
        ("write", "psycopg", "off"),
        ("write", "sqlalchemy", "off"),
        ("relay", "domainbus", "on"),
    ],
)
def test_paired(dsn: str, quick: bool, bench: str, system: str, level: str) -> None:
    """The ratio of each turn's times, ours / the floor, the order swapped every turn."""
    if bench == "write":
        paired_write_blocks(dsn, quick, system, level)
        return
    count = 200 if quick else 100_000
    payloads = [msgspec.msgpack.encode(event) for event in make_events(count)]

    def prepare(which: str) -> tuple[Callable[[], None], Any]:
        drop_tables(dsn)
        return prepare_relay(which, dsn, payloads)

    ratios: list[float] = []
    for turn in range(1 if quick else 3):
        order = (system, f"floor-{system}") if turn % 2 == 0 else (f"floor-{system}", system)
        times = {which: timed_once(functools.partial(prepare, which)) for which in order}
        ratios.append(times[system][0] / times[f"floor-{system}"][0])
    RESULTS.paired[bench, level, system] = ratios


WRITE_BLOCK, WRITE_BLOCKS = 50, 40  # units per block, blocks per system


def paired_write_blocks(dsn: str, quick: bool, system: str, level: str) -> None:
    """Ours and the floor on the same tables and server, writing blocks of units in turn (the
    order swapped every block), after a warm-up block each: a burst of load on the shared
    machine hits both alike. The paired ratio is per pair of adjacent blocks."""
    block, blocks = (2, 2) if quick else (WRITE_BLOCK, WRITE_BLOCKS)
    total = block * (blocks + 1)
    events = make_events(total)
    make_write_tables(dsn)
    ours, ours_closer = write_runner(system, dsn, level, events)
    floor, floor_closer = write_runner(f"floor-{system}", dsn, level, events, offset=total)
    wall: dict[str, list[float]] = {"ours": [], "floor": []}
    cpu: dict[str, list[float]] = {"ours": [], "floor": []}  # this process's CPU
    try:
        ours(0, block)
        floor(0, block)
        for k in range(1, blocks + 1):
            turn = [("ours", ours), ("floor", floor)]
            for name, write in turn if k % 2 else reversed(turn):
                start, used = time.perf_counter(), time.process_time()
                write(k * block, (k + 1) * block)
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - used)
    finally:
        ours_closer.close()
        floor_closer.close()
    RESULTS.paired["write", level, system] = [
        a / b for a, b in zip(wall["ours"], wall["floor"], strict=True)
    ]
    units = block * blocks
    ours_wall, floor_wall = sum(wall["ours"]) / units, sum(wall["floor"]) / units
    ours_cpu, floor_cpu = sum(cpu["ours"]) / units, sum(cpu["floor"]) / units
    RESULTS.lines.append(
        f"write {system} synchronous_commit={level}, {blocks} blocks of {block} units each: "
        f"total wall {ours_wall / floor_wall:.3f}x; per unit ours {ours_wall * 1e6:.0f} us, "
        f"floor {floor_wall * 1e6:.0f} us; client CPU ours {ours_cpu * 1e6:.0f} us, floor "
        f"{floor_cpu * 1e6:.0f} us ({ours_cpu / floor_cpu:.2f}x)"
    )


# -- relay processes, and the commit-to-handler latency --------------------------------------

CHILD = """
import sys, time
import domainbus
from domainbus import DomainEvent
from domainbus.codec import EventCodec
from domainbus.outbox import PostgresOutbox


class UserRegistered(DomainEvent):
    user_id: str
    username: str
    email: str


class Stamped(DomainEvent):
    n: int


outbox = PostgresOutbox(sys.argv[1], EventCodec(UserRegistered, Stamped))
dispatcher = domainbus.Dispatcher()
"""

RELAY_CHILD = """
import os
dispatcher.register_handler(UserRegistered, lambda event: None)
open(sys.argv[2], "w").close()
while not os.path.exists(sys.argv[3]):
    time.sleep(0.001)
print(outbox.relay(dispatcher, batch_size=1000).delivered, flush=True)
"""

LISTEN_CHILD = """
import os, threading
received = {}
dispatcher.register_handler(Stamped, lambda event: received.setdefault(event.n, time.time_ns()))
stop = threading.Event()
expected = int(sys.argv[3])


def watch():
    while len(received) < expected:
        time.sleep(0.01)
    stop.set()


threading.Thread(target=watch, daemon=True).start()
open(sys.argv[2], "w").close()
outbox.serve(dispatcher, poll_interval=10.0, stop=stop)
print(" ".join(f"{n}:{t}" for n, t in sorted(received.items())), flush=True)
"""


def spawn(tmp_path: Path, body: str, *args: str) -> subprocess.Popen[str]:
    script = tmp_path / f"child_{time.monotonic_ns()}.py"
    script.write_text(CHILD + textwrap.dedent(body))
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(paths: list[Path]) -> None:
    deadline = time.monotonic() + 120
    while not all(path.exists() for path in paths):
        assert time.monotonic() < deadline, "the relay processes did not start"
        time.sleep(0.005)


class Relays:
    """`processes` relay processes, started and waiting for their go file."""

    def __init__(self, processes: int, dsn: str, tmp_path: Path) -> None:
        stamp = time.monotonic_ns()
        ready = [tmp_path / f"ready-{processes}-{k}-{stamp}" for k in range(processes)]
        self.go = tmp_path / f"go-{processes}-{stamp}"
        self.ready = ready
        self.children = [
            spawn(tmp_path, RELAY_CHILD, dsn, str(flag), str(self.go)) for flag in ready
        ]

    def drain(self, total: int) -> float:
        """Seconds from go to the last relay done; checks that they delivered `total` events."""
        wait_for(self.ready)
        start = time.perf_counter()
        self.go.touch()
        outputs = [child.communicate(timeout=600) for child in self.children]
        elapsed = time.perf_counter() - start
        for child, (_out, err) in zip(self.children, outputs, strict=True):
            assert child.returncode == 0, err
        assert sum(int(out.split()[-1]) for out, _ in outputs) == total
        return elapsed


def test_four_relays_vs_one(dsn: str, quick: bool, tmp_path: Path) -> None:
    total = 200 if quick else 100_000
    payloads = [msgspec.msgpack.encode(event) for event in make_events(total)]
    drop_tables(dsn)
    PostgresOutbox(dsn, CODEC).close()
    times: dict[int, list[float]] = {1: [], 4: []}
    for turn in range(1 if quick else 3):
        relays = {n: Relays(n, dsn, tmp_path) for n in (1, 4)}  # all started at once
        for processes in (1, 4) if turn % 2 == 0 else (4, 1):
            seed(dsn, "domainbus_outbox", payloads)
            times[processes].append(relays[processes].drain(total))
    one, four = statistics.median(times[1]), statistics.median(times[4])
    RESULTS.lines.append(
        f"relay processes, {total:,} events: 1 relay {one:.2f} s ({total / one:,.0f}/s), "
        f"4 relays {four:.2f} s ({total / four:,.0f}/s): speed-up {one / four:.2f}x "
        "(2 shared cores; server in the same machine)"
    )


def test_commit_to_handler_latency(dsn: str, quick: bool, tmp_path: Path) -> None:
    count = 5 if quick else 300
    drop_tables(dsn)
    producer = PostgresOutbox(dsn, CODEC)
    ready = tmp_path / "listening"
    child = spawn(tmp_path, LISTEN_CHILD, dsn, str(ready), str(count))
    wait_for([ready])
    time.sleep(0.05 if quick else 0.2)  # let it reach its first wait
    before: dict[int, int] = {}  # just before COMMIT: includes the commit's own WAL flush
    after: dict[int, int] = {}  # once COMMIT returned: the NOTIFY went out with it
    for n in range(count):
        producer.begin()
        producer.append([CODEC.encode(Stamped(n=n))], claimed=False)
        before[n] = time.time_ns()
        producer.commit()
        after[n] = time.time_ns()
        time.sleep(0.005)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    producer.close()
    received = dict((int(n), int(t)) for n, t in (pair.split(":") for pair in out.split()))
    assert sorted(received) == list(range(count))
    for label, sent in (("from COMMIT returned", after), ("from before COMMIT", before)):
        delays = sorted((received[n] - sent[n]) / 1e6 for n in range(count))
        median = statistics.median(delays)
        p99 = delays[min(len(delays) - 1, round(0.99 * (len(delays) - 1)))]
        RESULTS.lines.append(
            f"commit-to-handler latency {label}, LISTEN/NOTIFY, synchronous_commit=on, "
            f"{count} events 5 ms apart: median {median:.2f} ms, p99 {p99:.2f} ms, "
            f"max {delays[-1]:.2f} ms (poll fallback 10 s)"
        )
