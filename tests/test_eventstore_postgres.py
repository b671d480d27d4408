"""PostgreSQL only: transactions that commit out of position order never make a catch-up
reader skip an event, appends join the caller's psycopg transaction, NOTIFY on append."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest

from eventstore_support import CODEC, deposits

psycopg = pytest.importorskip("psycopg")

from domainbus.eventstore import PostgresEventStore  # noqa: E402


@pytest.fixture
def pg(postgres_dsn: str) -> Any:
    store = PostgresEventStore(postgres_dsn, CODEC)
    yield store
    store.close()


def test_a_later_position_committed_first_is_not_read_before_the_earlier_one(
    pg: Any, postgres_dsn: str
) -> None:
    """A takes position 1 and stays open, B takes position 2 and commits: a reader must not
    return 2 yet (a naive `position > last` reader would, then never see 1)."""
    slow = psycopg.connect(postgres_dsn)
    slow_store = PostgresEventStore(slow, CODEC)
    try:
        with slow.transaction():
            slow_store.append("slow", deposits(1, "slow"), expected_version=0)
            pg.append("fast", deposits(1, "fast"), expected_version=0)
            committed = pg.connection.execute("SELECT position FROM domainbus_events").fetchall()
            assert committed == [(2,)]  # B is visible to plain SELECTs...
            assert list(pg.read_all()) == []  # ...but held back while A may still commit
        seen = list(pg.read_all())
        assert [(s.stream_id, s.position) for s in seen] == [("slow", 1), ("fast", 2)]
        assert list(pg.read_all(after=seen[0].position)) == seen[1:]
        assert list(pg.read_all(after=seen[1].position)) == []
    finally:
        slow_store.close()
        slow.close()


def test_a_rolled_back_append_leaves_a_gap_that_readers_pass(pg: Any, postgres_dsn: str) -> None:
    other = PostgresEventStore(psycopg.connect(postgres_dsn), CODEC)
    with pytest.raises(RuntimeError), other.connection.transaction():
        other.append("gone", deposits(2, "gone"), expected_version=0)
        raise RuntimeError("roll back")
    pg.append("kept", deposits(1, "kept"), expected_version=0)
    assert [(s.stream_id, s.position) for s in pg.read_all()] == [("kept", 3)]
    other.connection.close()


def test_concurrent_appenders_never_make_a_catch_up_reader_skip(pg: Any, postgres_dsn: str) -> None:
    """Writers in threads append in transactions of random length (so commits land out of
    position order); a reader follows read_all the whole time. It must see every committed
    event exactly once, and the run must actually have produced out-of-order commits."""
    stop = threading.Event()
    errors: list[BaseException] = []
    appended = [0] * 4

    def write(index: int) -> None:
        rng = random.Random(index)
        connection = psycopg.connect(postgres_dsn)
        store = PostgresEventStore(connection, CODEC, notify=False)
        versions: dict[str, int] = {}
        try:
            while not stop.is_set():
                stream = f"w{index}-{rng.randrange(5)}"
                with connection.transaction():
                    for _ in range(rng.randint(1, 3)):
                        batch = deposits(rng.randint(1, 4), stream)
                        version = versions.get(stream, 0)
                        versions[stream] = store.append(stream, batch, expected_version=version)
                        appended[index] += len(batch)
                    time.sleep(rng.random() * 0.01)
                if rng.random() < 0.2:  # and some that roll back
                    with pytest.raises(RuntimeError), connection.transaction():
                        store.append(f"x{index}", deposits(2), expected_version=0)
                        raise RuntimeError
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    seen: list[int] = []
    out_of_order = 0
    after = 0
    deadline = time.monotonic() + 3
    try:
        while time.monotonic() < deadline:
            page = list(pg.read_all(after=after))
            if page:
                highest = max(seen, default=0)
                out_of_order += sum(1 for s in page if s.position < highest)
                seen.extend(s.position for s in page)
                after = page[-1].position
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not errors, errors
    seen.extend(s.position for s in pg.read_all(after=after))
    committed = [row[0] for row in pg.connection.execute("SELECT position FROM domainbus_events")]
    assert len(seen) == len(set(seen)) == sum(appended)
    assert sorted(seen) == sorted(committed)
    assert out_of_order > 0  # the situation a naive reader gets wrong did happen


def test_appends_join_a_psycopg_transaction_with_the_users_rows(postgres_dsn: str) -> None:
    connection = psycopg.connect(postgres_dsn, autocommit=True)
    store = PostgresEventStore(connection, CODEC)
    connection.execute("CREATE TABLE users (id text PRIMARY KEY)")
    with pytest.raises(RuntimeError), connection.transaction():
        connection.execute("INSERT INTO users VALUES ('u1')")
        store.append("u1", deposits(2, "u1"), expected_version=0)
        raise RuntimeError("roll back both")
    assert connection.execute("SELECT count(*) FROM users").fetchone() == (0,)
    assert store.version("u1") == 0
    with connection.transaction():
        connection.execute("INSERT INTO users VALUES ('u1')")
        store.append("u1", deposits(2, "u1"), expected_version=0)
    assert connection.execute("SELECT count(*) FROM users").fetchone() == (1,)
    assert store.version("u1") == 2
    connection.close()


def test_a_non_autocommit_connection_gets_its_own_transaction_per_append(
    postgres_dsn: str,
) -> None:
    connection = psycopg.connect(postgres_dsn)  # autocommit=False, idle
    store = PostgresEventStore(connection, CODEC)
    store.append("a", deposits(1, "a"), expected_version=0)
    assert connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with psycopg.connect(postgres_dsn) as other:
        assert other.execute("SELECT count(*) FROM domainbus_events").fetchone() == (1,)
    connection.close()


def test_each_append_notifies_listeners(pg: Any) -> None:
    listener = pg.listener()
    try:
        assert listener.wait(0.05) is False
        pg.append("a", deposits(1, "a"), expected_version=0)
        assert listener.wait(5) is True
    finally:
        listener.close()
    assert pg.synchronous_commit in ("on", "off", "local", "remote_write", "remote_apply")


def test_read_all_after_an_unknown_position_is_an_error(pg: Any) -> None:
    pg.append("a", deposits(1, "a"), expected_version=0)
    with pytest.raises(ValueError, match="no event at position 99"):
        list(pg.read_all(after=99))


def test_a_connection_with_another_row_factory_is_read_as_tuples(postgres_dsn: str) -> None:
    """A user's `dict_row` connection changes what their own queries return, not the store's."""
    from psycopg.rows import dict_row

    from domainbus.eventstore.postgres import PostgresTracking

    connection = psycopg.connect(postgres_dsn, autocommit=True, row_factory=dict_row)
    store = PostgresEventStore(connection, CODEC)
    store.append("a", deposits(3, "a"), expected_version=0)
    assert store.version("a") == 3
    assert [stored.version for stored in store.read("a")] == [1, 2, 3]
    assert len(list(store.read_all())) == 3
    assert store.synchronous_commit == "on"
    tracking = PostgresTracking(connection)
    assert tracking.position("p") == 0
    with tracking.transaction():
        assert tracking.locked_position("p") == 0
        tracking.set_position("p", 3)
    assert tracking.position("p") == 3
    assert connection.execute("SELECT 1 AS one").fetchone() == {"one": 1}  # theirs: unchanged
    connection.close()
