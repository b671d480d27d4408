"""SQLite reads a page of rows at once (group_concat of the payloads, JSON arrays of the
positions): the bytes come back exactly, the order is checked, and every doubt falls back to
reading row by row with the same results."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import msgspec
import pytest

from domainbus import DomainEvent
from domainbus.codec import EventCodec
from domainbus.eventstore import SqliteEventStore, StoredDecodeError
from domainbus.eventstore import sqlite as sqlite_store
from eventstore_support import CODEC, Deposited, deposits


class Blob(DomainEvent):
    data: bytes
    text: str


BLOBS = EventCodec(Blob, Deposited)
AWKWARD = [
    bytes(range(256)),
    b"\x00" * 7,
    b"\xff\xfe\x00\x00",  # a UTF-16 / UTF-32 byte order mark and NULs
    b"\xc3\x28\xa0\xa1\xe2\x28\xa1\xf0\x28\x8c\xbc",  # invalid UTF-8
    b"",
]


def blob_events() -> list[Blob]:
    return [Blob(data=data, text=f"a\x00b{n}\u00e9\U0001f600") for n, data in enumerate(AWKWARD)]


def everything_read(store: SqliteEventStore, stream_id: str) -> list[list[Any]]:
    """The events of every read path, page sizes that split the rows too."""
    return [
        [s.event for s in store.read_all()],
        [e for page in store.read_pages(page_size=2) for e in page.events],
        [e for page in store.read_stream_pages(stream_id, page_size=3) for e in page],
        [s.event for s in store.read(stream_id)],
    ]


def test_group_concat_gives_the_payloads_back_byte_for_byte(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "events.db", BLOBS)
    events = blob_events()
    store.append("blobs", events, expected_version=0)
    assert store._joins  # a UTF-8 database: pages are read at once
    payloads = [row[0] for row in store.connection.execute(
        "SELECT payload FROM domainbus_events ORDER BY position")]  # fmt: skip
    row = store.connection.execute(sqlite_store.PAGE_EVENTS, (0, 100)).fetchone()
    assert row[0] == len(events) and row[1] == b"".join(payloads)
    assert msgspec.json.decode(row[2]) == [1, 2, 3, 4, 5]
    for read in everything_read(store, "blobs"):
        assert read == events
    store.close()


def test_a_utf16_database_is_read_row_by_row(tmp_path: Path) -> None:
    path = tmp_path / "utf16.db"
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA encoding = 'UTF-16le'")
    connection.execute("CREATE TABLE made_first (x)")  # the encoding is fixed now
    connection.close()
    store = SqliteEventStore(path, BLOBS)
    events = blob_events()
    store.append("blobs", events, expected_version=0)
    assert not store._joins
    # why: group_concat reads a BLOB as text in the database's encoding and re-encodes it
    row = store.connection.execute(sqlite_store.PAGE_EVENTS, (0, 100)).fetchone()
    payloads = b"".join(BLOBS.encode(event) for event in events)
    assert row[1] != payloads
    for read in everything_read(store, "blobs"):
        assert read == events
    store.close()


def test_a_page_longer_than_the_length_limit_is_read_row_by_row(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "events.db", CODEC)
    events = deposits(50, "s")
    store.append("s", events, expected_version=0)
    one = len(CODEC.encode(events[0]))
    store.connection.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, one * 10)  # one row fits, 50 do not
    with pytest.raises(sqlite3.DataError):
        store.connection.execute(sqlite_store.PAGE_EVENTS, (0, 50)).fetchone()
    for read in everything_read(store, "s"):
        assert read == events
    store.close()


def test_positions_out_of_order_are_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert sqlite_store.ascending([3, 4, 9], 3) and sqlite_store.ascending([5, 6, 7], 3, 5)
    assert not sqlite_store.ascending([4, 3, 9], 3)  # not in the order asked for
    assert not sqlite_store.ascending([3, 4], 3)  # not the count
    assert not sqlite_store.ascending([], 0)
    assert not sqlite_store.ascending([6, 7, 8], 3, 5)  # not from the first version asked for
    store = SqliteEventStore(tmp_path / "events.db", CODEC)
    events = deposits(10, "a") + deposits(10, "b")
    store.append("a", events[:10], expected_version=0)
    store.append("b", events[10:], expected_version=0)
    checked: list[list[int]] = []

    def never(values: list[int], count: int, first: int | None = None) -> bool:
        checked.append(values)
        return False  # as if SQLite had aggregated the rows in another order

    monkeypatch.setattr(sqlite_store, "ascending", never)
    stored = list(store.read_all())
    assert [s.event for s in stored] == events and checked  # the fallback read them
    assert [(s.stream_id, s.version) for s in stored][9:11] == [("a", 10), ("b", 1)]
    assert [e for page in store.read_stream_pages("b", page_size=4) for e in page] == events[10:]
    store.close()


def test_pages_read_their_stream_ids_and_versions_when_asked(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "events.db", CODEC)
    for n in range(5):
        store.append(f"s{n}", deposits(3, f"s{n}"), expected_version=0)
    pages = list(store.read_pages(after=2, page_size=4))
    assert [len(page.events) for page in pages] == [4, 4, 4, 1]
    assert pages[0]._stream_ids is None  # not read yet
    assert pages[0].stream_ids == ["s0", "s1", "s1", "s1"] and pages[0].versions == [3, 1, 2, 3]
    assert [p.positions for p in pages][-1] == [15]
    assert [(s.stream_id, s.version) for s in store.read_all(after=12)] == [
        ("s4", 1),
        ("s4", 2),
        ("s4", 3),
    ]
    store.close()


def test_a_bad_row_in_a_page_read_at_once_is_named_and_old_rows_upcast(tmp_path: Path) -> None:
    class Renamed(DomainEvent, tag="Renamed"):
        name: str

    class RenamedV2(DomainEvent, tag="Renamed.v2"):
        first: str

    path = tmp_path / "events.db"
    SqliteEventStore(path, EventCodec(Renamed, Deposited)).append(
        "p", [Renamed(name="Ada Lovelace"), *deposits(3, "p")], expected_version=0
    )
    codec = EventCodec(RenamedV2, Deposited)

    @codec.upcaster("Renamed", from_version=1)
    def first_name(fields: dict[str, Any]) -> dict[str, Any]:
        return {**fields, "first": fields.pop("name").split(" ")[0]}

    store = SqliteEventStore(path, codec)
    for read in everything_read(store, "p"):
        assert [type(e) for e in read] == [RenamedV2, Deposited, Deposited, Deposited]
        assert read[0].first == "Ada"
    store.connection.execute(
        "INSERT INTO domainbus_events (stream_id, version, payload) VALUES ('p', 5, ?)",
        (CODEC.encode(deposits(1)[0])[:-3],),  # truncated
    )
    for read_bad, position in (
        (lambda: list(store.read_all()), 5),
        (lambda: [page.events for page in store.read_pages()], 5),
        (lambda: list(store.read_stream_pages("p")), 0),  # a stream's pages know no positions
    ):
        with pytest.raises(StoredDecodeError, match="stream 'p' version 5: truncated") as caught:
            read_bad()
        assert (caught.value.stream_id, caught.value.version) == ("p", 5)
        assert caught.value.position == position
    store.close()


def test_read_all_and_a_catch_up_send_one_statement_per_page(tmp_path: Path) -> None:
    from domainbus.eventstore import ProjectionRunner
    from eventstore_support import Ledger

    store = SqliteEventStore(tmp_path / "events.db", CODEC)
    store.append("s", deposits(25, "s"), expected_version=0)
    statements: list[str] = []  # each statement up to its WHERE (the trace has the values)
    store.connection.set_trace_callback(lambda sql: statements.append(sql.split(" WHERE ")[0]))
    page_stored, page_events, page_meta = (
        sql.split(" WHERE ")[0]
        for sql in (sqlite_store.PAGE_STORED, sqlite_store.PAGE_EVENTS, sqlite_store.PAGE_META)
    )
    assert len(list(store.read_all())) == 25
    assert statements == [page_stored]  # no second query for the page's details
    statements.clear()
    projection = Ledger(store.connection)
    ProjectionRunner(store, projection, page_size=10).catch_up()
    assert statements.count(page_events) == 3
    assert page_meta not in statements  # tracing is off: no traceparents read
    store.close()


def test_gaps_in_the_positions_do_not_end_a_read(tmp_path: Path) -> None:
    """Rows deleted by hand leave gaps (one wider than a page): every remaining row is read."""
    from domainbus.eventstore import ProjectionRunner
    from eventstore_support import Ledger

    store = SqliteEventStore(tmp_path / "events.db", CODEC)
    for n in range(6):
        store.append(f"s{n}", deposits(10, f"s{n}"), expected_version=0)
    store.connection.execute(
        "DELETE FROM domainbus_events WHERE position IN (3, 4, 10) OR position BETWEEN 15 AND 40"
    )
    left = [row[0] for row in store.connection.execute(
        "SELECT position FROM domainbus_events ORDER BY position")]  # fmt: skip
    assert [s.position for s in store.read_all()] == left
    assert [s.position for s in store.read_all(after=3, limit=9)] == left[2:11]
    for size in (1, 4, 10, 100):
        pages = list(store.read_pages(page_size=size))
        assert [p for page in pages for p in page.positions] == left
        assert all(len(page.events) <= size for page in pages)
        assert [v for page in pages for v in page.versions] == [s.version for s in store.read_all()]
    runner = ProjectionRunner(store, Ledger(store.connection), page_size=7)
    assert runner.catch_up() == len(left)
    store.close()
