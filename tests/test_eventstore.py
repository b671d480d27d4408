"""The event store on SQLite and on a real PostgreSQL server: one suite, both stores."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

import eventstore_support as support
from domainbus import ConcurrencyError, DecodeError, DomainEvent
from domainbus.codec import EventCodec
from domainbus.eventstore import Snapshot, StoredDecodeError, StoredEvent, open_store
from eventstore_support import CODEC, Deposited, Opened, deposits, raw_insert

# the fixtures: each test runs on a SqliteEventStore and on a PostgresEventStore
store_kind, store_url_of = support.store_kind, support.store_url_of
make_store, store = support.make_store, support.store

ROOT = Path(__file__).resolve().parent.parent


def versions_of(events: list[StoredEvent]) -> list[int]:
    return [stored.version for stored in events]


def test_append_returns_the_new_version_and_read_gives_the_events_back(store: Any) -> None:
    first = [Opened(account_id="a", owner="ada"), *deposits(2, "a")]
    assert store.append("a", first, expected_version=0) == 3
    assert store.append("a", deposits(2, "a", start=10), expected_version=3) == 5
    assert store.version("a") == 5 and store.version("nobody") == 0
    stored = store.read("a")
    assert versions_of(stored) == [1, 2, 3, 4, 5]
    assert [s.event for s in stored[:3]] == first  # equal after the round trip, ids included
    assert all(s.stream_id == "a" for s in stored)
    assert versions_of(store.read("a", from_version=2, to_version=4)) == [2, 3, 4]
    assert versions_of(store.read("a", from_version=5)) == [5]
    assert store.read("a", from_version=6) == [] and store.read("nobody") == []
    pages = list(store.read_stream_pages("a", 2, None, page_size=2))
    assert [len(page) for page in pages] == [2, 2]
    assert [event.amount for page in pages for event in page] == [0, 1, 10, 11]  # type: ignore[attr-defined]


def test_a_stale_writer_gets_concurrency_error_and_writes_nothing(store: Any) -> None:
    store.append("a", deposits(2, "a"), expected_version=0)
    for expected in (0, 1, 3, 7):
        with pytest.raises(ConcurrencyError) as caught:
            store.append("a", deposits(3, "a", start=100), expected_version=expected)
        assert (caught.value.stream_id, caught.value.expected, caught.value.actual) == (
            "a",
            expected,
            2,
        )
        assert "'a' is at version 2, not the expected" in str(caught.value)
    with pytest.raises(ConcurrencyError) as caught:
        store.append("new", deposits(1, "new"), expected_version=1)
    assert caught.value.actual == 0
    assert versions_of(store.read("a")) == [1, 2]
    assert store.version("new") == 0
    assert [s.version for s in store.read_all()] == [1, 2]


def test_two_writers_with_the_same_expected_version_exactly_one_wins(
    make_store: Callable[..., Any],
) -> None:
    first = make_store()
    first.append("a", deposits(1, "a"), expected_version=0)
    writers = [make_store() for _ in range(4)]
    barrier = threading.Barrier(len(writers))
    outcomes: list[object] = [None] * len(writers)

    def write(index: int) -> None:
        barrier.wait()
        try:
            outcomes[index] = writers[index].append(
                "a", deposits(3, "a", start=100 * (index + 1)), expected_version=1
            )
        except ConcurrencyError as exc:
            outcomes[index] = exc

    threads = [threading.Thread(target=write, args=(n,)) for n in range(len(writers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [n for n, outcome in enumerate(outcomes) if outcome == 4]
    assert len(winners) == 1, outcomes
    losers = [o for o in outcomes if isinstance(o, ConcurrencyError)]
    assert len(losers) == len(writers) - 1
    assert all((e.expected, e.actual) == (1, 4) for e in losers)
    amounts = [s.event.amount for s in first.read("a")]  # type: ignore[attr-defined]
    start = 100 * (winners[0] + 1)
    assert amounts == [0, start, start + 1, start + 2]  # the winner's batch, whole


def test_a_writer_that_waits_on_an_open_transaction_loses_cleanly(
    make_store: Callable[..., Any],
) -> None:
    """One writer's transaction is open when the other appends with the same version: the
    second waits for it and then gets ConcurrencyError (its own transaction intact)."""
    holder, other = make_store(), make_store()
    holder.append("a", deposits(1, "a"), expected_version=0)
    result: list[object] = []
    with holder.transaction():
        holder.append("a", deposits(1, "a", start=1), expected_version=1)

        def append_other() -> None:
            try:
                result.append(other.append("a", deposits(1, "a", 9), expected_version=1))
            except ConcurrencyError as exc:
                result.append(exc)

        thread = threading.Thread(target=append_other)
        thread.start()
        thread.join(0.3)
        assert thread.is_alive()  # waiting for the holder's commit (lock / busy timeout)
    thread.join()
    assert isinstance(result[0], ConcurrencyError) and result[0].actual == 2
    assert other.append("a", deposits(1, "a", 9), expected_version=2) == 3


def test_read_all_gives_every_event_once_in_one_order(store: Any) -> None:
    store.append("a", deposits(3, "a"), expected_version=0)
    store.append("b", deposits(2, "b"), expected_version=0)
    store.append("a", deposits(1, "a", 3), expected_version=3)
    everything = list(store.read_all())
    assert [(s.stream_id, s.version) for s in everything] == [
        ("a", 1), ("a", 2), ("a", 3), ("b", 1), ("b", 2), ("a", 4),
    ]  # fmt: skip
    positions = [s.position for s in everything]
    assert len(set(positions)) == 6
    for index, stored in enumerate(everything):  # resuming after any event gives the rest
        assert list(store.read_all(after=stored.position)) == everything[index + 1 :]
    assert list(store.read_all(after=positions[1], limit=2)) == everything[2:4]
    assert list(store.read_all(limit=0)) == []
    pages = list(store.read_pages(0, page_size=4))
    assert [len(page.events) for page in pages] == [4, 2]
    assert pages[0].last_position == positions[3]
    assert store.count_after(0) == 6 and store.count_after(positions[3]) == 2


def test_bad_arguments_are_refused_before_anything_is_written(store: Any) -> None:
    event = deposits(1)[0]
    with pytest.raises(TypeError, match="wrap a single event in a list"):
        store.append("a", event, expected_version=0)
    with pytest.raises(ValueError, match="at least one event"):
        store.append("a", [], expected_version=0)
    with pytest.raises(TypeError, match="stream_id"):
        store.append("", [event], expected_version=0)
    with pytest.raises(TypeError, match="expected_version"):
        store.append("a", [event], expected_version=-1)
    with pytest.raises(TypeError, match="expected_version"):
        store.append("a", [event], expected_version=True)

    class Unknown(DomainEvent):
        pass

    with pytest.raises(TypeError, match="cannot encode events of type"):
        store.append("a", [event, Unknown()], expected_version=0)
    with pytest.raises(ValueError, match="from_version"):
        store.read("a", from_version=0)
    with pytest.raises(ValueError, match="after"):
        list(store.read_all(after=-1))
    assert list(store.read_all()) == []


def test_old_versions_are_upcast_when_read(make_store: Callable[..., Any]) -> None:
    class Renamed(DomainEvent, tag="Renamed"):
        name: str

    class RenamedV2(DomainEvent, tag="Renamed.v2"):
        first: str
        last: str

    old = make_store(EventCodec(Renamed, Deposited))
    old.append("p", [Renamed(name="Ada Lovelace"), *deposits(1, "p")], expected_version=0)
    codec = EventCodec(RenamedV2, Deposited)

    @codec.upcaster("Renamed", from_version=1)
    def split_name(fields: dict[str, Any]) -> dict[str, Any]:
        first, last = fields.pop("name").split(" ", 1)
        return {**fields, "first": first, "last": last}

    new = make_store(codec)
    new.append("p", [RenamedV2(first="Alan", last="Turing")], expected_version=2)
    events = [s.event for s in new.read("p")]
    assert isinstance(events[0], RenamedV2) and (events[0].first, events[0].last) == (
        "Ada",
        "Lovelace",
    )
    assert isinstance(events[1], Deposited) and events[2] == RenamedV2(
        first="Alan", last="Turing", event_id=events[2].event_id, occurred_on=events[2].occurred_on
    )
    assert [type(s.event) for s in new.read_all()] == [RenamedV2, Deposited, RenamedV2]


def test_a_row_that_cannot_be_decoded_is_a_decode_error_naming_stream_and_version(
    store: Any,
) -> None:
    store.append("good", deposits(2, "good"), expected_version=0)
    store.append("bad", deposits(2, "bad"), expected_version=0)
    raw_insert(store, "bad", 3, b"\xc1 not msgpack")
    raw_insert(store, "odd", 1, msgspec.msgpack.encode({"type": "Nope", "x": 1}))
    for read in (
        lambda: store.read("bad"),
        lambda: [e for page in store.read_stream_pages("bad") for e in page],
        lambda: list(store.read_all()),
    ):
        with pytest.raises(DecodeError) as caught:
            read()
        error = caught.value
        assert isinstance(error, StoredDecodeError)
        assert (error.stream_id, error.version, error.reason) == ("bad", 3, "garbage")
        assert str(error).startswith("stream 'bad' version 3: garbage")
    with pytest.raises(StoredDecodeError, match="stream 'odd' version 1: unknown-tag") as odd:
        store.read("odd")
    assert odd.value.position > 0
    assert versions_of(store.read("bad", to_version=2)) == [1, 2]  # the good rows still read
    assert len(list(store.read_all(limit=4))) == 4


def test_snapshots_are_stored_and_found_by_version(store: Any) -> None:
    assert store.load_snapshot("a") is None
    for version in (10, 20):
        store.save_snapshot(Snapshot("a", version, "m.Account", 1, b"state%d" % version))
    assert store.load_snapshot("a").state == b"state20"
    assert store.load_snapshot("a", 19).version == 10
    assert store.load_snapshot("a", 9) is None
    store.save_snapshot(Snapshot("a", 20, "m.Account", 2, b"again"))
    assert store.load_snapshot("a") == Snapshot("a", 20, "m.Account", 2, b"again")


def test_an_append_joins_the_callers_transaction(store: Any) -> None:
    with pytest.raises(RuntimeError, match="undo"):
        with store.transaction():
            store.append("a", deposits(2, "a"), expected_version=0)
            assert store.version("a") == 2  # visible inside the transaction
            raise RuntimeError("undo")
    assert store.version("a") == 0 and list(store.read_all()) == []
    with store.transaction():
        store.append("a", deposits(2, "a"), expected_version=0)
        store.append("b", deposits(1, "b"), expected_version=0)
    assert [s.stream_id for s in store.read_all()] == ["a", "a", "b"]


def test_open_store_reads_urls(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'x.db'}", CODEC)
    assert type(store).__name__ == "SqliteEventStore"
    store.close()
    with pytest.raises(ValueError, match="unknown store URL"):
        open_store("mysql://x", CODEC)


def test_sqlite_store_states_its_durability(tmp_path: Path) -> None:
    from domainbus.eventstore import SqliteEventStore

    assert SqliteEventStore(tmp_path / "n.db", CODEC).synchronous == "NORMAL"
    assert SqliteEventStore(tmp_path / "f.db", CODEC, synchronous="FULL").synchronous == "FULL"
    with pytest.raises(ValueError, match="synchronous"):
        SqliteEventStore(tmp_path / "o.db", CODEC, synchronous="OFF")  # type: ignore[arg-type]


# -- crashes ------------------------------------------------------------------------------------

APPENDER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from eventstore_support import deposits, open_store
    store = open_store({url!r})
    events = deposits({count}, "big")
    print("appending", flush=True)
    store.append("big", events, expected_version=1)
    print("done", flush=True)
    """
)


def _wait_until_appending(url: str, child: subprocess.Popen[str], folder: Path) -> None:
    """Until the child's big INSERT is under way (its WAL grows, or its query is active)."""
    assert child.stdout is not None and child.stdout.readline().strip() == "appending"
    deadline = time.monotonic() + 30
    if url.startswith("sqlite"):
        wal = folder / "events.db-wal"
        start = wal.stat().st_size if wal.exists() else 0
        while time.monotonic() < deadline and (wal.stat().st_size if wal.exists() else 0) <= start:
            time.sleep(0.002)
        return
    import psycopg

    with psycopg.connect(url, autocommit=True) as watcher:
        while time.monotonic() < deadline:
            active = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                "AND query LIKE '%%domainbus_events%%' AND pid <> pg_backend_pid()"
            ).fetchone()
            if active and active[0]:
                return
            time.sleep(0.002)


def test_sigkill_in_the_middle_of_an_append_leaves_nothing_partial(
    store: Any, store_url_of: str, tmp_path: Path
) -> None:
    store.append("big", deposits(1, "big"), expected_version=0)
    count = 200_000
    script = APPENDER.format(tests=str(ROOT / "tests"), url=store_url_of, count=count)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "python"), *sys.path])}
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        _wait_until_appending(store_url_of, child, tmp_path)
        time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    versions = versions_of(store.read("big"))
    # all or nothing: the statement or transaction either committed whole or not at all
    assert versions in ([1], list(range(1, count + 2))), (len(versions), versions[-3:])
    assert store.version("big") == len(versions)
    assert (
        store.append("big", deposits(1, "big"), expected_version=len(versions)) == len(versions) + 1
    )
